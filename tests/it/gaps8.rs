//! The peer-correctness gaps closed on branch gaps8 (fixtures/gen/gaps8_fixtures.py), each
//! against the real library's own output: `embed_tokens` and `lm_head` LoRAs together on a
//! tied base, a tied `lm_head` LoRA merged into a GGUF base, `check` on a tied `lm_head`,
//! `nn.Linear` layers named like GPT-2's Conv1D (GPTBigCode) and GPT-2's Linear `lm_head`, and
//! `train --batch` past what memory can hold.

use super::common::*;
use lorakit::io::gguf::GgufModel;
use std::path::Path;

/// [`merge_matches_peft_fixture`] of `fixtures/gaps8/{case}`.
fn merge_matches_peft(case: &str, base: &str, extra: &[&str]) -> usize {
    merge_matches_peft_fixture(&format!("gaps8/{case}"), base, extra)
}

/// The one-line refusal of merging `fixtures/gaps8/{case}/adapter` into `base` without
/// `--tied-embeddings` (into `out`, a name in a fresh folder); nothing is written.
fn tied_refusal(case: &str, base: &Path, out: &str) -> String {
    let (_dir, out) = scratch(out);
    let err = merge_refused(base, &fixture(&format!("gaps8/{case}/adapter")), &out, &[]);
    assert!(!out.exists());
    err
}

/// `embed_tokens`, `lm_head` and q_proj LoRAs on a tied Llama: both LoRA layers' base weight is
/// the one shared Parameter, so PEFT's merge adds both ΔW to it in place (embed_tokens first,
/// module order) and the tie survives. lorakit refused ("two modules of this adapter land on
/// base tensor `model.embed_tokens.weight`") with or without `--tied-embeddings shared`; now
/// `shared` equals PEFT's merge, and without it the refusal names the tie and the flag.
#[test]
fn embed_tokens_and_lm_head_loras_on_a_tied_base_merge_as_peft() {
    assert_eq!(
        merge_matches_peft("tied_both", "llama/tied", &["--tied-embeddings", "shared"]),
        3
    );
    let err = tied_refusal("tied_both", &fixture("llama/tied"), "out");
    assert!(
        err.contains("ties lm_head to the input embedding") && err.contains("--tied-embeddings"),
        "{err}"
    );
}

/// Merges `fixtures/gaps8/{case}/adapter` into the tied Qwen2 GGUF (F32, no `output.weight`)
/// with `--tied-embeddings shared` and compares every tensor with llama.cpp's
/// `convert_hf_to_gguf.py` output of PEFT's merge (`merged.f32.gguf`): the same names and
/// types, values within 1e-6 relative. Returns the largest |difference|.
fn gguf_merge_matches_converter(case: &str) -> f32 {
    let (_dir, out) = scratch("m.gguf");
    run_ok(merge_args(
        &fixture("gguf/peft_variants/qwen2.f32.gguf"),
        &fixture(&format!("gaps8/{case}/adapter")),
        &out,
        &["--device", "cpu", "--quiet", "--tied-embeddings", "shared"],
    ));
    let got = GgufModel::open(&out).unwrap();
    let want = GgufModel::open(fixture(&format!("gaps8/{case}/merged.f32.gguf"))).unwrap();
    let names = |m: &GgufModel| m.tensors().map(|(_, t)| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want));
    assert!(got.get("output.weight").is_none());
    let (worst, changed) = gguf_matches_reference(
        &out,
        &fixture(&format!("gaps8/{case}/merged.f32.gguf")),
        &fixture("gguf/peft_variants/qwen2.f32.gguf"),
    );
    assert!(
        changed.contains(&"token_embd.weight".to_string()),
        "{changed:?}"
    );
    eprintln!("{case} into GGUF: max |lorakit − converter(PEFT)| = {worst:e}, changed {changed:?}");
    worst
}

/// An `lm_head` LoRA (with q_proj) on llama.cpp's tied Qwen2, which has no `output.weight`:
/// `--tied-embeddings shared` lands it on `token_embd.weight` as PEFT's merge lands it on the
/// shared embedding, equal to the converter's output of PEFT's merge. Before: refused ("llama.cpp
/// has no output.weight") with the flag too; without it the refusal still names the flag.
#[test]
fn tied_lm_head_lora_merges_into_token_embd_of_a_gguf_base_as_peft() {
    gguf_merge_matches_converter("qwen2_tied_head");
    let err = tied_refusal(
        "qwen2_tied_head",
        &fixture("gguf/peft_variants/qwen2.f32.gguf"),
        "m.gguf",
    );
    assert!(err.contains("--tied-embeddings"), "{err}");
}

/// `embed_tokens` and `lm_head` LoRAs together on the tied Qwen2 GGUF: both land on
/// `token_embd.weight`, as on the safetensors base.
#[test]
fn embed_tokens_and_lm_head_loras_merge_into_a_tied_gguf_base_as_peft() {
    gguf_merge_matches_converter("qwen2_tied");
}

/// GPTBigCode (StarCoder) names its `nn.Linear` layers `c_attn`, `c_proj`, `c_fc` like GPT-2's
/// Conv1D: PEFT's adapter (`fan_in_fan_out: false`) and the same file with a hand-set
/// `fan_in_fan_out: true` (PEFT resets it on every nn.Linear with a warning) both merge
/// untransposed, as PEFT's merge_and_unload.
#[test]
fn gpt_bigcode_linear_layers_named_like_conv1d_merge_as_peft() {
    for case in ["bigcode/lora", "bigcode/fifo"] {
        assert_eq!(merge_matches_peft(case, "gaps8/bigcode/base", &[]), 8);
    }
}

/// GPT-2 (tied) with a LoRA on its `nn.Linear` lm_head beside Conv1D c_attn (the file says
/// `fan_in_fan_out: true`; PEFT resets it for lm_head), and one on the `wte` embedding beside
/// Conv1D c_fc: with `--tied-embeddings shared` both land on `transformer.wte.weight` as
/// PEFT's merge_and_unload.
#[test]
fn gpt2_lm_head_and_wte_loras_merge_as_peft() {
    for case in ["gpt2_head", "gpt2_wte"] {
        assert_eq!(
            merge_matches_peft(case, "gpt2/base", &["--tied-embeddings", "shared"]),
            3
        );
    }
}

/// The `check --base BASE --target peft --json` report of `adapter`: (module, status, base
/// tensor) per module, and PEFT's verdict.
fn check_peft(adapter: &Path, base: &Path) -> (Vec<(String, String, String)>, String) {
    let out = bin()
        .args(check_args(
            adapter,
            &["--base", s(base), "--target", "peft", "--json"],
        ))
        .output()
        .expect("spawn lorakit");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let modules = v["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .map(|m| {
            let f = |k: &str| m[k].as_str().unwrap_or("").to_owned();
            (f("module"), f("status"), f("base_tensor"))
        })
        .collect();
    (modules, v["targets"][0]["verdict"].as_str().unwrap().into())
}

/// `check --base` on a tied base (no lm_head tensor): PEFT wraps lm_head there (its weight the
/// embedding Parameter; `_check_tied_modules` only warns) and merge lands it on the embedding,
/// so the report places lm_head and the base-layer copy PEFT saves beside it on that tensor as
/// `tied` (before: `not_found`, no base tensor), for Llama's `model.embed_tokens.weight` and
/// GPT-2's `transformer.wte.weight`; PEFT loads each. A `modules_to_save` lm_head (which PEFT
/// unties) stays `not_found`.
#[test]
fn check_places_a_tied_lm_head_on_the_embedding_peft_wraps() {
    let cases = [
        (
            "gaps7/tied_lm_head",
            "llama/tied",
            "model.embed_tokens.weight",
        ),
        ("gaps8/tied_both", "llama/tied", "model.embed_tokens.weight"),
        ("gaps8/gpt2_head", "gpt2/base", "transformer.wte.weight"),
    ];
    for (adapter, base, emb) in cases {
        let (modules, peft) = check_peft(&fixture(&format!("{adapter}/adapter")), &fixture(base));
        assert_eq!(peft, "loads", "{adapter}");
        let heads: Vec<_> = modules
            .iter()
            .filter(|m| m.0.starts_with("lm_head"))
            .collect();
        assert_eq!(heads.len(), 2, "{adapter}: {modules:?}");
        for (module, status, tensor) in heads {
            assert_eq!(
                (status.as_str(), tensor.as_str()),
                ("tied", emb),
                "{adapter}: {module}"
            );
        }
        for (module, status, _) in &modules {
            assert!(!module.starts_with("lm_head") || status != "not_found");
            assert_ne!(status, "not_found", "{adapter}: {module}");
        }
    }
    let (modules, _) = check_peft(&fixture("rev7/tied_mts/adapter"), &fixture("llama/tied"));
    assert!(
        modules.contains(&("lm_head.weight".into(), "not_found".into(), String::new())),
        "{modules:?}"
    );
}

/// `train --batch 1000000000` (and `usize::MAX`, whose product with `--seq-len` overflows):
/// the process aborted on a failed allocation (hostile round 7's one known case). Now the
/// step's memory is estimated from the model's shapes before anything is allocated or read and
/// the run is refused in one line naming `--batch` and the estimate; nothing is written. A
/// batch that fits still trains.
#[test]
fn train_batch_past_memory_is_refused_with_an_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixture("text/tiny_ids.safetensors");
    let out = dir.path().join("ad");
    for batch in ["1000000000", "18446744073709551615"] {
        let argv = train_args(
            &fixture("llama/base"),
            &[
                "--data",
                s(&data),
                "--seq-len",
                "8",
                "--steps",
                "1",
                "--batch",
                batch,
                "--out",
                s(&out),
            ],
        );
        let line = one_line_error(&run_exit(&argv, 2));
        assert_mentions(&line, &["--batch", batch, "--seq-len", "GiB"]);
        assert!(!out.exists(), "{line}");
        assert_eq!(listing(dir.path()), Vec::<String>::new());
    }
    run_ok(one_step_train(
        &fixture("llama/base"),
        &data,
        &out,
        &["--quiet"],
    ));
    assert!(out.join("adapter_model.safetensors").exists());
}
