//! The peer-correctness gaps closed on branch gaps7 (fixtures/gen/gaps7_fixtures.py), each
//! against the real library's own output: DoRA on an embedding, `fan_in_fan_out` as PEFT sets
//! it per layer type (in `check` and `merge`), an `lm_head` LoRA on a tied base, and the
//! `bytes_written` of a `--part I/N` run.

use super::common::*;
use lorakit::io::gguf::{names, GgufModel};
use std::path::Path;

/// The `check --base BASE --json` report of `adapter`.
fn check_json(adapter: &Path, base: &Path) -> serde_json::Value {
    let out = bin()
        .args(check_args(adapter, &["--base", s(base), "--json"]))
        .output()
        .expect("spawn lorakit");
    serde_json::from_slice(&out.stdout).expect("check --json prints JSON")
}

/// Every module of a `check` report lands on its exact base tensor.
#[track_caller]
fn assert_all_exact(v: &serde_json::Value) {
    let modules = v["modules"].as_array().expect("modules");
    assert!(!modules.is_empty());
    for m in modules {
        assert_eq!(m["status"], "exact", "{m}");
    }
}

/// The verdict of loader `target` in a `check` report.
fn verdict<'v>(v: &'v serde_json::Value, target: &str) -> &'v serde_json::Value {
    let t = v["targets"].as_array().expect("targets");
    &t.iter().find(|t| t["target"] == target).expect(target)["verdict"]
}

/// [`merge_matches_peft_fixture`] of `fixtures/gaps7/{case}`.
fn merge_matches_peft(case: &str, base: &str, extra: &[&str]) -> usize {
    merge_matches_peft_fixture(&format!("gaps7/{case}"), base, extra)
}

/// DoRA on `embed_tokens` (PEFT 0.21.2 `DoraEmbeddingVariant`: the norm of `(W0 + ΔW)ᵀ` per
/// embedding dimension, a column of the stored `[vocab, dim]` weight, and the columns scaled)
/// merges as PEFT's merge_and_unload, beside DoRA q_proj; before the fix lorakit refused the
/// file ("DoRA on embedding layers is not supported"). `check` says PEFT loads it.
#[test]
fn dora_on_an_embedding_merges_as_peft() {
    assert_eq!(merge_matches_peft("dora_embed", "llama/base", &[]), 3);
    let v = check_json(&fixture("gaps7/dora_embed/adapter"), &fixture("llama/base"));
    assert_all_exact(&v);
    assert_eq!(verdict(&v, "peft"), "loads");
}

/// The same DoRA embedding merged into the GGUF conversion of the same base
/// (`fixtures/gguf/llama_f32.gguf`): `token_embd` and the q rows (the converter's permutation
/// undone) equal PEFT's merged tensors within 1e-6 relative.
#[test]
fn dora_on_an_embedding_merges_into_a_gguf_base_as_peft() {
    let (_dir, out) = scratch("m.gguf");
    run_ok(merge_args(
        &fixture("gguf/llama_f32.gguf"),
        &fixture("gaps7/dora_embed/adapter"),
        &out,
        &["--device", "cpu", "--quiet"],
    ));
    let peft = read(&fixture("gaps7/dora_embed/merged.safetensors"));
    let m = GgufModel::open(&out).unwrap();
    let (mut compared, mut worst) = (0, 0f32);
    for (f, t) in m.tensors() {
        let hf = names::hf_name(&t.name).unwrap();
        let Some(want) = peft.get(&hf) else {
            continue;
        };
        let shape = t.shape();
        let mut v = f.dequantize(t).unwrap();
        if t.name.ends_with("attn_q.weight") {
            v = names::unpermute_rows(&v, shape[0], shape[1], 4);
        }
        let want = want.f32();
        let e = rel_err(&v, &want);
        assert!(e <= 1e-6, "{hf}: relative error {e:e}");
        let d = v
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        worst = worst.max(d);
        compared += 1;
    }
    assert_eq!(compared, 3);
    eprintln!("dora_embed into GGUF: max |lorakit − PEFT| = {worst:e}");
}

/// llama.cpp has no DoRA: `convert --to gguf` still refuses the file, naming DoRA and the
/// module, and writes nothing.
#[test]
fn dora_on_an_embedding_is_still_refused_for_llama_cpp() {
    let (_dir, out) = scratch("a.gguf");
    let err = one_line_error(&run_err(convert_args(
        &fixture("gaps7/dora_embed/adapter"),
        "gguf",
        &out,
        &["--base", s(&fixture("llama/base"))],
    )));
    assert!(
        err.contains("DoRA") && err.contains("model.embed_tokens"),
        "{err}"
    );
    assert!(!out.exists());
}

/// `fan_in_fan_out: true` on a Llama (no Conv1D layer): PEFT resets it on every nn.Linear, so
/// `check --base` sees v_proj's `[32, 64]` as it is (before the fix: `shape_mismatch`, and
/// every loader "fails") and `merge` equals PEFT's merge_and_unload.
#[test]
fn check_base_resets_fan_in_fan_out_on_a_linear_model() {
    let v = check_json(&fixture("gaps7/fifo_llama/adapter"), &fixture("llama/base"));
    assert_all_exact(&v);
    assert_eq!(verdict(&v, "peft"), "loads");
    assert_eq!(merge_matches_peft("fifo_llama", "llama/base", &[]), 4);
}

/// `fan_in_fan_out: false` on GPT-2's Conv1D layers: PEFT forces it to true ("Setting
/// fan_in_fan_out to True", `dispatch_default`) and merges `(B·A)ᵀ` into the stored `[in, out]`
/// weights. lorakit refused c_attn and mlp.c_proj (shape) and merged the square attn.c_proj
/// untransposed; now all six equal PEFT's merge, and `check --base` lands them all.
#[test]
fn conv1d_model_with_fan_in_fan_out_false_merges_as_peft() {
    assert_eq!(merge_matches_peft("gpt2_nofifo", "gpt2/base", &[]), 6);
    let v = check_json(&fixture("gaps7/gpt2_nofifo/adapter"), &fixture("gpt2/base"));
    assert_all_exact(&v);
}

/// A Conv1D family inside a composite (bert2gpt2, `fixtures/rev7/bert2gpt2`, made by PEFT):
/// the file says `fan_in_fan_out: true` (PEFT writes back what its last target, a Conv1D, set),
/// but PEFT merges the encoder's nn.Linear `query` untransposed. lorakit kept the file's flag on
/// every module not named as a Conv1D layer and merged that square `query` as `(B·A)ᵀ`
/// (relative error ≈ 1 before the fix); now all three tensors equal PEFT's merge.
#[test]
fn fan_in_fan_out_is_reset_on_a_linear_module_of_a_conv1d_family_base() {
    let (_dir, out) = scratch("out");
    let base = fixture("rev7/bert2gpt2/base");
    run_ok(merge_args(
        &base,
        &fixture("rev7/bert2gpt2/adapter"),
        &out,
        &["--device", "cpu", "--quiet"],
    ));
    let peft = read(&fixture("rev7/bert2gpt2/merged.safetensors"));
    let got = read_checkpoint(&out);
    assert_eq!(
        assert_matches_reference(&got, &read_checkpoint(&base), &peft, 1e-6),
        3
    );
    eprintln!(
        "bert2gpt2: max |lorakit − PEFT| = {:e}",
        max_abs_diff(&got, &peft)
    );
}

/// An `lm_head` LoRA on a tied Llama (no lm_head tensor): PEFT's merge adds its ΔW in place to
/// the one Parameter lm_head and embed_tokens share, so `--tied-embeddings shared` merges it
/// into `model.embed_tokens.weight` (and the saved `lm_head.base_layer.weight` loads into it).
/// Without the flag the refusal names the tie and the flag (before: an unmatched
/// `lm_head.weight`, with or without the flag), and nothing is written.
#[test]
fn lm_head_lora_on_a_tied_base_merges_into_the_shared_embedding_as_peft() {
    assert_eq!(
        merge_matches_peft(
            "tied_lm_head",
            "llama/tied",
            &["--tied-embeddings", "shared"]
        ),
        3
    );
    let (_dir, out) = scratch("out");
    let err = one_line_error(&run_err(merge_args(
        &fixture("llama/tied"),
        &fixture("gaps7/tied_lm_head/adapter"),
        &out,
        &[],
    )));
    assert!(
        err.contains("`lm_head` changes `model.embed_tokens.weight`")
            && err.contains("--tied-embeddings shared"),
        "{err}"
    );
    assert!(!out.exists());
}

/// A `modules_to_save` lm_head on a tied Llama (`fixtures/rev7/tied_mts`, made by PEFT): PEFT's
/// merge_and_unload unties (the embedding kept, the trained copy saved as `lm_head.weight`,
/// `tie_word_embeddings: false`), which `--tied-embeddings shared` cannot write. lorakit wrote
/// the copy over `model.embed_tokens.weight` (0.37 off PEFT's embedding) and exited 0; now it is
/// refused in one line naming the tensor and the tie, and nothing is written.
#[test]
fn modules_to_save_lm_head_on_a_tied_base_is_refused() {
    let (_dir, out) = scratch("out");
    let err = one_line_error(&run_err(merge_args(
        &fixture("llama/tied"),
        &fixture("rev7/tied_mts/adapter"),
        &out,
        &["--tied-embeddings", "shared"],
    )));
    assert!(
        err.contains("`lm_head.weight`") && err.contains("tied to the input embedding"),
        "{err}"
    );
    assert!(!out.exists());
}

/// `merge --part 1/2` into a safetensors folder, into a GGUF file from a GGUF base and into a
/// GGUF file from a Hugging Face folder (`--outtype f32`): `bytes_written` is what the run wrote
/// to disk, its part manifest included, in all three (both GGUF merges left the manifest out).
#[test]
fn part_bytes_written_count_the_manifest_in_every_merge() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture Llama with a tokenizer, as a GGUF model needs one.
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    for src in ["llama/base", "gguf/hf_tokenizer"] {
        for f in std::fs::read_dir(fixture(src)).unwrap().flatten() {
            std::fs::copy(f.path(), hf.join(f.file_name())).unwrap();
        }
    }
    let adapter = fixture("llama/adapters/qv_r8");
    let cases = [
        (fixture("llama/base"), dir.path().join("st"), &[][..]),
        (
            fixture("gguf/llama_f32.gguf"),
            dir.path().join("g.gguf"),
            &[],
        ),
        (hf, dir.path().join("h.gguf"), &["--outtype", "f32"]),
    ];
    for (base, out, extra) in &cases {
        let flags = [
            "--part",
            "1/2",
            "--max-shard-size",
            "40KB",
            "--json",
            "--quiet",
        ];
        let v: serde_json::Value = serde_json::from_str(&run_ok(merge_args(
            base,
            &adapter,
            out,
            &[&flags[..], extra].concat(),
        )))
        .unwrap();
        // Everything the run left on disk: the output folder, or the `g-…`/`h-…` shards and
        // the `.g.gguf.lorakit-part-1-of-2.json` manifest beside a GGUF output.
        let (folder, stem) = if out.is_dir() {
            (out.as_path(), String::new())
        } else {
            let stem = out.file_stem().unwrap().to_string_lossy().into_owned();
            (dir.path(), stem)
        };
        let ours = |name: &str| {
            stem.is_empty()
                || name.starts_with(&format!("{stem}-"))
                || name.starts_with(&format!(".{stem}.gguf.lorakit-part-"))
        };
        let mut manifests = 0;
        let mut on_disk = 0;
        for e in std::fs::read_dir(folder).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ours(&name) && e.path().is_file() {
                manifests += usize::from(name.contains("lorakit-part-1-of-2"));
                on_disk += e.metadata().unwrap().len();
            }
        }
        assert_eq!(manifests, 1, "{}: one part manifest", base.display());
        assert_eq!(
            v["bytes_written"].as_u64(),
            Some(on_disk),
            "{}",
            base.display()
        );
    }
}
