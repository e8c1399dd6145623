//! The fifth hostile round (`fuzz/hostile_round.py`, `fuzz/hostile_cases_round5.py`: Phi-3 GGUF
//! bases and adapters, split sets, GGUF parts, Flux/Wan layouts, quantized configs): each test is
//! one violation that round found, failing before its fix. Inputs are the committed fixtures
//! with one lie written into a copy, by byte surgery (same-length renames, values in place) or
//! by editing the JSON.

use super::common::*;
use std::path::{Path, PathBuf};

const PHI3_BASE: &str = "gguf/llamacpp/hf_phi3_base.f32.gguf";
const PHI3_LORA: &str = "gguf/llamacpp/phi3_lora.gguf";

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A copy of fixture `rel` named `name` in `dir`, with `edit` applied to its bytes.
fn edited(dir: &Path, rel: &str, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = std::fs::read(fixture(rel)).unwrap();
    edit(&mut b);
    let p = dir.join(name);
    std::fs::write(&p, b).unwrap();
    p
}

/// The offset of the one occurrence of `what` in `b`.
fn find_once(b: &[u8], what: &[u8]) -> usize {
    let hits: Vec<usize> = b
        .windows(what.len())
        .enumerate()
        .filter(|(_, w)| *w == what)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "{}", String::from_utf8_lossy(what));
    hits[0]
}

/// Replaces the one occurrence of `old` by `new` (the same length: offsets stay valid).
fn rename(b: &mut [u8], old: &str, new: &str) {
    assert_eq!(old.len(), new.len());
    let at = find_once(b, old.as_bytes());
    b[at..at + new.len()].copy_from_slice(new.as_bytes());
}

/// Runs `argv` in `dir`, expecting a one-line refusal (exit 2) that mentions `parts`, and
/// nothing changed in `dir`.
fn refused(dir: &Path, argv: &[&str], parts: &[&str]) {
    let before = snapshot(dir);
    let line = one_line_error(&run_exit(argv, 2));
    assert_mentions(&line, parts);
    assert_eq!(snapshot(dir), before, "something was written: {line}");
}

/// [`refused`] for a merge ([`merge_args`]) of `adapter` into `base` writing `dir/o.gguf`.
fn merge_refused_in(dir: &Path, base: &Path, adapter: &Path, parts: &[&str]) {
    let argv = merge_args(base, adapter, &dir.join("o.gguf"), &[]);
    refused(
        dir,
        &argv.iter().map(String::as_str).collect::<Vec<_>>(),
        parts,
    );
}

/// `adapter.lora.alpha` NaN or infinite (a FLOAT32 value overwritten in place): the merge
/// blamed the *output* ("o.gguf: tensor `blk.0.ffn_down.weight`: … merged value at [0, 0] is
/// not finite"), naming neither the adapter nor the key.
#[test]
fn a_non_finite_gguf_adapter_alpha_is_refused_naming_the_key() {
    for (what, v) in [("NaN", f32::NAN), ("inf", f32::INFINITY)] {
        let dir = tempfile::tempdir().unwrap();
        let a = edited(dir.path(), PHI3_LORA, "a.gguf", |b| {
            let key = b"adapter.lora.alpha";
            let at = find_once(b, key) + key.len();
            assert_eq!(b[at..at + 4], 6u32.to_le_bytes(), "FLOAT32");
            b[at + 4..at + 8].copy_from_slice(&v.to_le_bytes());
        });
        merge_refused_in(
            dir.path(),
            &fixture(PHI3_BASE),
            &a,
            &["a.gguf", "adapter.lora.alpha", what],
        );
    }
}

/// A `lora_b` whose `lora_a` is missing (renamed to a `*_norm.weight` tensor, which llama.cpp
/// and lorakit skip) was skipped too: the merge wrote the model without the module. llama.cpp
/// refuses the file ("LoRA tensor pair for '…' is missing one component").
#[test]
fn a_gguf_lora_b_without_its_lora_a_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = edited(dir.path(), PHI3_LORA, "a.gguf", |b| {
        rename(
            b,
            "blk.0.attn_qkv.weight.lora_a",
            "blk.0.attn_qkvxx_norm.weight",
        );
    });
    merge_refused_in(
        dir.path(),
        &fixture(PHI3_BASE),
        &a,
        &["a.gguf", "blk.0.attn_qkv.weight.lora_b", "lora_a"],
    );
}

/// A GGUF base without `general.architecture` (the key renamed) was refused as "GGUF
/// architecture ``", as if the file named an empty architecture.
#[test]
fn a_gguf_base_without_an_architecture_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let b = edited(dir.path(), PHI3_BASE, "b.gguf", |b| {
        rename(b, "general.architecture", "general.architecturx");
    });
    merge_refused_in(
        dir.path(),
        &b,
        &fixture("gguf/hf_phi3/lora"),
        &["b.gguf", "no general.architecture string"],
    );
}

/// Both part manifests of a GGUF merge edited to plan no output file: finalize panicked
/// ("index out of bounds: the len is 0"), now refuses naming a manifest and removes nothing.
#[test]
fn a_gguf_part_plan_without_files_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let base = fixture(PHI3_BASE);
    let adapter = fixture("gguf/hf_phi3/lora");
    for part in ["1/2", "2/2"] {
        run_exit(
            merge_args(&base, &adapter, &out, &["--part", part, "--quiet"]),
            0,
        );
    }
    let manifests: Vec<PathBuf> = walk(dir.path())
        .into_iter()
        .filter(|p| s(p).contains(".lorakit-part-"))
        .collect();
    assert_eq!(manifests.len(), 2);
    for m in &manifests {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
        v["plan"]["files"] = serde_json::json!([]);
        std::fs::write(m, serde_json::to_vec(&v).unwrap()).unwrap();
    }
    refused(
        dir.path(),
        &["finalize", s(&out)],
        &[".o.gguf.lorakit-part-", "no output file"],
    );
}

/// A copy of quantized fixture `fx` as `dir/base`, its config's `quantization_config`
/// edited by `edit`.
fn quant_copy(dir: &Path, fx: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let base = dir.join("base");
    copy_dir(&fixture(&format!("quant/{fx}")), &base);
    let cfg = base.join("config.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    edit(&mut j["quantization_config"]);
    std::fs::write(&cfg, serde_json::to_vec(&j).unwrap()).unwrap();
    base
}

/// compressed-tensors `strategy: block` with 32x32 blocks for a pack-quantized q_proj whose
/// stored scales are per-row groups of 32 (`[64, 2]`; the blocks make a 2x2 grid): the config
/// was not compared (only tensor, channel and group were), and the weight was read as groups.
#[test]
fn a_block_strategy_on_a_packed_weight_with_group_scales_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = quant_copy(dir.path(), "ct_pack", |q| {
        let w = &mut q["config_groups"]["group_q_proj"]["weights"];
        w["strategy"] = "block".into();
        w["block_structure"] = serde_json::json!([32, 32]);
    });
    let out = dir.path().join("out");
    refused(
        dir.path(),
        &["dequantize", s(&base), "--out", s(&out)],
        &[
            "config.json",
            "group_q_proj",
            "32x32 blocks",
            "weight_scale",
        ],
    );
}

/// compressed-tensors `num_bits: 4` for a weight stored as float8_e4m3fn: FP8 weights were
/// compared by strategy only, so the config's width was never read.
#[test]
fn a_config_giving_an_fp8_weight_four_bits_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = quant_copy(dir.path(), "ct_block128", |q| {
        q["config_groups"]["group_0"]["weights"]["num_bits"] = 4.into();
    });
    let out = dir.path().join("out");
    refused(
        dir.path(),
        &["dequantize", s(&base), "--out", s(&out)],
        &["config.json", "group_0", "4-bit weights", "FP8"],
    );
}

/// A recipe whose second step merges into a GGUF base with a lying adapter (alpha NaN): the
/// recipe's plan did not plan GGUF merge steps, so step 1 ran and wrote its output before
/// step 2 failed, and `--dry-run` planned step 2 as "run" with exit 0. Now the plan refuses
/// the recipe before any step runs, naming the step and the adapter's key.
#[test]
fn a_recipe_refuses_a_bad_gguf_merge_step_before_any_step_runs() {
    let dir = tempfile::tempdir().unwrap();
    edited(dir.path(), PHI3_LORA, "a.gguf", |b| {
        let key = b"adapter.lora.alpha";
        let at = find_once(b, key) + key.len();
        b[at + 4..at + 8].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let recipe = dir.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            "[[step]]\nname = \"first\"\ncommand = \"merge\"\nbase = \"{}\"\nadapter = [\"{}\"]\nout = \"one\"\n\n\
             [[step]]\nname = \"gguf\"\ncommand = \"merge\"\nbase = \"{}\"\nadapter = [\"a.gguf\"]\nout = \"two.gguf\"\n",
            s(&fixture("llama/base")),
            s(&fixture("llama/adapters/qv_r8")),
            s(&fixture(PHI3_BASE)),
        ),
    )
    .unwrap();
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut argv = vec!["run", s(&recipe)];
        argv.extend_from_slice(extra);
        refused(
            dir.path(),
            &argv,
            &["step `gguf`", "a.gguf", "adapter.lora.alpha"],
        );
    }
}
