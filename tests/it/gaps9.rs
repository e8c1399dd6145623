//! The peer-correctness gaps closed on branch gaps9 (fixtures/gen/gaps9_fixtures.py), each
//! against the real library's own output: PEFT's `ensure_weight_tying` (merge and `check`), a
//! tied `lm_head` LoRA merged into Q8_0 and K-quant GGUF output (a GGUF base and a Hugging Face
//! base), an `embed_tokens` LoRA on a tied GGUF base, made consistent with the safetensors merge,
//! and tiny Gemma3-text and Qwen3 bases.

use super::common::*;
use lorakit::io::gguf::GgufModel;
use std::path::Path;

const SHARED: [&str; 2] = ["--tied-embeddings", "shared"];

/// The one-line refusal of merging `adapter` into `base` (into `out`, a name in a fresh
/// folder) with `extra`; nothing is written.
fn refusal(base: &Path, adapter: &Path, out: &str, extra: &[&str]) -> String {
    let (_dir, out) = scratch(out);
    let err = merge_refused(base, adapter, &out, extra);
    assert!(!out.exists());
    err
}

/// `LoraConfig(ensure_weight_tying=True, target_modules=["embed_tokens", "lm_head", "q_proj"])`
/// on a tied Llama: PEFT moves lm_head out of the saved target_modules and wraps it with the
/// embedding LoRA's own factors (transposed), so merge_and_unload adds ΔE twice to the shared
/// tensor, E + 2·ΔE. lorakit refused the file ("module `lm_head` is not selected by
/// adapter_config.json"); now `--tied-embeddings shared` equals PEFT's merge; without the flag
/// the refusal names the tie; on an untied base (where PEFT drops lm_head silently) and with
/// lm_head factors that are not the embedding's, the refusal names `ensure_weight_tying`.
#[test]
fn ensure_weight_tying_merges_as_peft_e_plus_two_delta() {
    let adapter = fixture("gaps9/ewt_llama/adapter");
    assert_eq!(
        merge_matches_peft_fixture("gaps9/ewt_llama", "llama/tied", &SHARED),
        3
    );
    let err = refusal(&fixture("llama/tied"), &adapter, "out", &[]);
    assert_mentions(
        &err,
        &["ties lm_head to the input embedding", "--tied-embeddings"],
    );
    let err = refusal(&fixture("llama/base"), &adapter, "out", &[]);
    assert_mentions(&err, &["lm_head", "ensure_weight_tying", "does not tie"]);

    // lm_head's lora_A no longer the embedding's lora_embedding_Bᵀ: one value changed.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad");
    copy_dir(&adapter, &bad);
    let file = bad.join("adapter_model.safetensors");
    let mut t = read(&file);
    let a = t.get_mut("base_model.model.lm_head.lora_A.weight").unwrap();
    a.data[0] ^= 0x40;
    write_tensors(&file, &t);
    let err = refusal(&fixture("llama/tied"), &bad, "out", &SHARED);
    assert_mentions(
        &err,
        &["lm_head", "ensure_weight_tying", "lora_embedding_B"],
    );
}

/// `check --base --target peft` of the `ensure_weight_tying` folder on its tied base: PEFT
/// loads it with lm_head wrapped (lorakit called lm_head unselected, dropped by PEFT), so the
/// report places lm_head on the shared embedding as `tied`, none `not_found`.
#[test]
fn check_places_an_ensure_weight_tying_lm_head_on_the_embedding() {
    let out = bin()
        .args(check_args(
            &fixture("gaps9/ewt_llama/adapter"),
            &[
                "--base",
                s(&fixture("llama/tied")),
                "--target",
                "peft",
                "--json",
            ],
        ))
        .output()
        .expect("spawn lorakit");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["targets"][0]["verdict"], "loads", "{v:#}");
    let modules = v["modules"].as_array().expect("modules");
    let head: Vec<_> = modules
        .iter()
        .filter(|m| m["module"].as_str().unwrap().starts_with("lm_head"))
        .collect();
    assert!(!head.is_empty(), "{v:#}");
    for m in head {
        assert_eq!(m["status"], "tied", "{m}");
        assert_eq!(m["base_tensor"], "model.embed_tokens.weight", "{m}");
    }
    assert!(modules.iter().all(|m| m["status"] != "not_found"), "{v:#}");
}

/// The bytes of tensor `name` of `m`, and its type.
fn tensor_bytes(m: &GgufModel, name: &str) -> (String, Vec<u8>) {
    let (f, t) = m.get(name).unwrap_or_else(|| panic!("no tensor {name}"));
    (t.ty.to_string(), f.view(t).data.to_vec())
}

/// A tied lm_head LoRA (fixtures/gaps8/qwen2_tied_head) with `--tied-embeddings shared` and
/// `--outtype q8_0`, from the tied Qwen2 GGUF (F32) and from its Hugging Face folder, against
/// `convert_hf_to_gguf.py --outtype q8_0` of PEFT's merge (gguf-py's Q8_0 quantizer): the
/// merged tensors (GGUF base; the others stay F32 there, copied) and every tensor (HF base)
/// byte for byte. The HF base into F32 GGUF equals the converter's F32 within 1e-6 relative.
#[test]
fn tied_lm_head_into_q8_0_gguf_equals_the_converter_byte_for_byte() {
    let adapter = fixture("gaps8/qwen2_tied_head/adapter");
    let want = GgufModel::open(fixture("gaps9/qwen2_tied_head/merged.q8_0.gguf")).unwrap();
    let (_dir, [from_gguf, from_hf, from_hf32]) = scratch_all(["g.gguf", "h.gguf", "h32.gguf"]);
    let q8 = [
        &SHARED[..],
        &["--outtype", "q8_0", "--device", "cpu", "--quiet"],
    ]
    .concat();
    let hf = ["--gguf-tokenizer-pre", "qwen2"];
    run_ok(merge_args(
        &fixture("gguf/peft_variants/qwen2.f32.gguf"),
        &adapter,
        &from_gguf,
        &q8,
    ));
    run_ok(merge_args(
        &fixture("gaps9/qwen2_base"),
        &adapter,
        &from_hf,
        &[&q8[..], &hf].concat(),
    ));
    let got = GgufModel::open(&from_gguf).unwrap();
    assert!(got.get("output.weight").is_none());
    for name in ["token_embd.weight", "blk.0.attn_q.weight"] {
        let (g, w) = (tensor_bytes(&got, name), tensor_bytes(&want, name));
        assert_eq!(g.0, "Q8_0", "{name}");
        assert!(
            g == w,
            "{name}: lorakit's Q8_0 differs from the converter's"
        );
    }
    let got = GgufModel::open(&from_hf).unwrap();
    let names = |m: &GgufModel| m.tensors().map(|(_, t)| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want));
    for name in names(&want) {
        assert!(
            tensor_bytes(&got, &name) == tensor_bytes(&want, &name),
            "{name}: differs from the converter's"
        );
    }
    run_ok(merge_args(
        &fixture("gaps9/qwen2_base"),
        &adapter,
        &from_hf32,
        &[&SHARED[..], &["--outtype", "f32", "--quiet"], &hf].concat(),
    ));
    let got = GgufModel::open(&from_hf32).unwrap();
    let want = GgufModel::open(fixture("gaps8/qwen2_tied_head/merged.f32.gguf")).unwrap();
    assert_eq!(names(&got), names(&want));
    let mut worst = 0f32;
    for name in names(&want) {
        let (g, w) = (
            got.dequantize(&name).unwrap(),
            want.dequantize(&name).unwrap(),
        );
        assert!(rel_err(&g, &w) <= 1e-6, "{name}");
        worst = g
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(worst, f32::max);
    }
    eprintln!("HF base → F32 GGUF: max |lorakit − converter(PEFT)| = {worst:e}");
}

/// An `embed_tokens` LoRA (with q_proj) on the tied Qwen2: PEFT's merge changes the shared
/// Parameter, so the head changes too. The safetensors merge refused it without
/// `--tied-embeddings shared` while the GGUF merge took it silently; now both refuse without
/// the flag, naming the tie and the flag, and with it the safetensors merge equals PEFT's and
/// the GGUF merge equals the converter's output of PEFT's merge (within 1e-6 relative).
#[test]
fn embed_tokens_lora_on_a_tied_base_needs_the_flag_in_both_paths_and_merges_as_peft() {
    let adapter = fixture("gaps9/qwen2_embed/adapter");
    let gguf = fixture("gguf/peft_variants/qwen2.f32.gguf");
    for (base, out) in [
        (fixture("gaps9/qwen2_base"), "out"),
        (gguf.clone(), "m.gguf"),
    ] {
        let err = refusal(&base, &adapter, out, &[]);
        assert_mentions(&err, &["ties", "--tied-embeddings shared", "embed_tokens"]);
    }
    assert_eq!(
        merge_matches_peft_fixture("gaps9/qwen2_embed", "gaps9/qwen2_base", &SHARED),
        2
    );
    let (_dir, out) = scratch("m.gguf");
    run_ok(merge_args(
        &gguf,
        &adapter,
        &out,
        &[&SHARED[..], &["--device", "cpu", "--quiet"]].concat(),
    ));
    let (worst, changed) =
        gguf_matches_reference(&out, &fixture("gaps9/qwen2_embed/merged.f32.gguf"), &gguf);
    let got = GgufModel::open(&out).unwrap();
    assert!(got.get("output.weight").is_none());
    assert_eq!(changed, ["token_embd.weight", "blk.0.attn_q.weight"]);
    eprintln!("embed_tokens into tied GGUF: max |lorakit − converter(PEFT)| = {worst:e}");
}

/// Bases the audit found no PEFT-merge check for: a tiny Gemma3-text (q_norm/k_norm, scaled
/// word embedding, tied) with an rsLoRA `ensure_weight_tying` adapter on embed_tokens and every
/// projection (PEFT issue #2777's case: E + 2·ΔE on the shared embedding), and a tiny Qwen3
/// with a DoRA `all-linear` adapter (PEFT saves the resolved names, lm_head left out); each
/// equals PEFT's merge_and_unload.
#[test]
fn gemma3_ensure_weight_tying_and_qwen3_dora_all_linear_merge_as_peft() {
    assert_eq!(
        merge_matches_peft_fixture("gaps9/gemma3/ewt", "gaps9/gemma3/base", &SHARED),
        15
    );
    assert_eq!(
        merge_matches_peft_fixture("gaps9/qwen3/dora", "gaps9/qwen3/base", &[]),
        14
    );
}

/// A tied lm_head LoRA (dyadic factors, so ΔW is exact and PEFT's merge is one rounding; see
/// fixtures/gen/gaps9_fixtures.py `kquant`) on a tied Qwen2 whose rows are one K-quant
/// super-block: `--outtype q4_k` / `q6_k` from the Hugging Face folder and from its F32 GGUF
/// store `token_embd` byte for byte as ggml's `quantize_row_q{4,6}_K_ref` of PEFT's merged
/// embedding, and the converter's Q8_0 GGUF merged with `keep` as gguf-py's Q8_0 of its own
/// dequantized embedding + ΔW.
#[test]
fn tied_lm_head_into_k_quant_and_q8_0_base_equals_ggml_reference_bytes() {
    let root = fixture("gaps9/qwen2_k");
    let adapter = root.join("adapter");
    let want = read(&root.join("expected.safetensors"));
    let check = |out: &Path, key: &str, ty: &str| {
        let got = GgufModel::open(out).unwrap();
        assert!(got.get("output.weight").is_none());
        let (t, bytes) = tensor_bytes(&got, "token_embd.weight");
        assert_eq!(t, ty, "{key}");
        assert!(bytes == want[key].data, "{key}: differs from the reference");
    };
    let dir = tempfile::tempdir().unwrap();
    for (outtype, key, ty) in [
        ("q4_k", "token_embd.q4_K", "Q4_K"),
        ("q6_k", "token_embd.q6_K", "Q6_K"),
    ] {
        let flags = [&SHARED[..], &["--outtype", outtype, "--quiet"]].concat();
        let out = dir.path().join(format!("hf.{outtype}.gguf"));
        run_ok(merge_args(
            &root.join("base"),
            &adapter,
            &out,
            &[&flags[..], &["--gguf-tokenizer-pre", "qwen2"]].concat(),
        ));
        check(&out, key, ty);
        let out = dir.path().join(format!("gguf.{outtype}.gguf"));
        run_ok(merge_args(
            &root.join("base.f32.gguf"),
            &adapter,
            &out,
            &flags,
        ));
        check(&out, key, ty);
    }
    let out = dir.path().join("keep.gguf");
    run_ok(merge_args(
        &root.join("base.q8_0.gguf"),
        &adapter,
        &out,
        &[&SHARED[..], &["--quiet"]].concat(),
    ));
    check(&out, "token_embd.q8_0_keep", "Q8_0");
}

/// DoRA on the tied pair (`use_dora` + `ensure_weight_tying`, embed_tokens and lm_head on the
/// shared embedding): PEFT merges the second layer's DoRA from the weight the first already
/// changed, its norm included; lorakit's DoRA norm is over the base, so its merge differed from
/// PEFT's (max |Δ| 0.024 on the tied Llama, 0.019 without `ensure_weight_tying`, measured once
/// against PEFT 0.21.2). Now refused on safetensors and GGUF bases alike, naming DoRA and the
/// shared tensor; nothing is written.
#[test]
fn dora_on_a_tied_embedding_pair_is_refused_in_both_paths() {
    let adapter = fixture("gaps9/qwen2_dora_tied/adapter");
    for (base, out) in [
        (fixture("gaps9/qwen2_base"), "out"),
        (fixture("gguf/peft_variants/qwen2.f32.gguf"), "m.gguf"),
    ] {
        let err = refusal(&base, &adapter, out, &SHARED);
        assert_mentions(&err, &["is DoRA", "shared tied tensor"]);
    }
}
