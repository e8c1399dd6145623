//! The PEFT tuners closed on branch gaps10 (fixtures/gen/gaps10_fixtures.py), each against
//! PEFT 0.21.2's own reload + `merge_and_unload` of a tiny seeded adapter on fixtures/llama/base:
//! VeRA, VB-LoRA (logits and `save_only_topk_weights`), LN tuning, HRA (with and without
//! Gram–Schmidt), BOFT and DeLoRA merge as PEFT does; FourierFT and VeRA without `save_projection`
//! (buffers PEFT regenerates from a seed with torch's generator) are refused naming the seed;
//! serving loaders' `check` refuses them all; GPT-2's `ensure_weight_tying` (PEFT's reload
//! does not re-tie a `wte`) is refused saying why.

use super::common::*;
use std::path::Path;

/// `check ADAPTER --target TARGET --json`: the report.
pub(super) fn check_json(adapter: &Path, target: &str) -> serde_json::Value {
    let out = bin()
        .args(check_args(adapter, &["--target", target, "--json"]))
        .output()
        .expect("spawn lorakit");
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// VeRA: the shared `vera_A` [4, 128] / `vera_B` [64, 4] sliced per layer (q_proj 64×64,
/// k_proj 32×64, down_proj 64×128) and the λ vectors folded in. Before: "no LoRA tensors
/// found".
#[test]
fn vera_merges_as_peft() {
    assert_eq!(
        merge_matches_peft_fixture("gaps10/vera", "llama/base", &[]),
        6
    );
}

/// VB-LoRA: factors rebuilt from the vector bank and each piece's top-k softmax, from the full
/// logits and from the saved top-k indices and weights (the same adapter).
#[test]
fn vblora_merges_as_peft_from_logits_and_from_topk_weights() {
    assert_eq!(
        merge_matches_peft_fixture("gaps10/vblora", "llama/base", &[]),
        6
    );
    assert_eq!(
        merge_matches_peft_fixture("gaps10/vblora_topk", "llama/base", &[]),
        6
    );
}

/// LN tuning: the trained copies of both norms of both layers replace the base's.
#[test]
fn ln_tuning_replaces_the_norms_as_peft() {
    assert_eq!(
        merge_matches_peft_fixture("gaps10/ln_tuning", "llama/base", &[]),
        4
    );
}

/// HRA: `W0·Π(I − 2ûûᵀ)` in PEFT's reflection order, and `W0·(I − 2UUᵀ)` with `apply_GS`.
#[test]
fn hra_merges_as_peft_with_and_without_gram_schmidt() {
    assert_eq!(
        merge_matches_peft_fixture("gaps10/hra", "llama/base", &[]),
        6
    );
    assert_eq!(
        merge_matches_peft_fixture("gaps10/hra_gs", "llama/base", &[]),
        6
    );
}

/// BOFT (one butterfly factor): the exact Cayley rotation of `(B − Bᵀ)/2` per block on the
/// input side, then `boft_s` per output row.
#[test]
fn boft_merges_as_peft() {
    assert_eq!(
        merge_matches_peft_fixture("gaps10/boft", "llama/base", &[]),
        6
    );
}

/// DeLoRA: `B·diag(λ / r / (‖Aᵢ‖·‖Bⁱ‖))·A` with each column times the saved base column norm.
#[test]
fn delora_merges_as_peft() {
    assert_eq!(
        merge_matches_peft_fixture("gaps10/delora", "llama/base", &[]),
        6
    );
}

/// Buffers PEFT regenerates from a seed with torch's generator cannot be rebuilt: the refusal
/// names the seed field, nothing is written. A BOFT file with two butterfly factors (CUDA
/// extension only) and a VeRA λ_b longer than vera_B are refused naming the tensor.
#[test]
fn seeded_buffers_and_bad_shapes_are_refused_naming_why() {
    let base = fixture("llama/base");
    let (_dir, out) = scratch("out");
    let err = merge_refused(&base, &fixture("gaps10/vera_noproj/adapter"), &out, &[]);
    assert_mentions(&err, &["projection_prng_key", "save_projection", "vera_A"]);
    let err = merge_refused(&base, &fixture("gaps10/fourierft/adapter"), &out, &[]);
    assert_mentions(
        &err,
        &["FOURIERFT", "random_loc_seed", "adapter_config.json"],
    );

    let dir = tempfile::tempdir().unwrap();
    let boft = dir.path().join("boft");
    copy_dir(&fixture("gaps10/boft/adapter"), &boft);
    let file = boft.join("adapter_model.safetensors");
    let mut t = read(&file);
    let key = "base_model.model.model.layers.0.self_attn.q_proj.boft_R";
    let r = t.get_mut(key).unwrap();
    r.shape = vec![2, 8, 4, 4];
    write_tensors(&file, &t);
    let err = merge_refused(&base, &boft, &out, &[]);
    assert_mentions(&err, &[key, "butterfly factors"]);

    let vera = dir.path().join("vera");
    copy_dir(&fixture("gaps10/vera/adapter"), &vera);
    let file = vera.join("adapter_model.safetensors");
    let mut t = read(&file);
    let key = "base_model.model.model.layers.0.self_attn.k_proj.vera_lambda_b";
    let lb = t.get_mut(key).unwrap();
    lb.shape = vec![96];
    lb.data = lb.data.repeat(3);
    write_tensors(&file, &t);
    let err = merge_refused(&base, &vera, &out, &[]);
    assert_mentions(&err, &[key, "vera_B's rows"]);

    // Other types, by what stops them (the same folder under another peft_type).
    for (ty, extra, why) in [
        (
            "RANDLORA",
            r#", "save_projection": false"#,
            "projection_prng_key",
        ),
        ("LILY", "", "NotImplementedError"),
        ("PREFIX_TUNING", "", "nothing to merge"),
        ("XLORA", "", "per input"),
    ] {
        let other = dir.path().join(format!("{ty}{}", extra.len()));
        copy_dir(&fixture("gaps10/hra/adapter"), &other);
        let cfg = other.join("adapter_config.json");
        std::fs::write(&cfg, format!(r#"{{"peft_type": "{ty}"{extra}}}"#)).unwrap();
        let err = merge_refused(&base, &other, &out, &[]);
        assert_mentions(&err, &[ty, why, "adapter_config.json"]);
    }

    // No kohya form for a base-dependent PEFT tuner.
    let err = refused(
        convert_args(&fixture("gaps10/hra/adapter"), "kohya", &out, &[]),
        &out,
    );
    assert_mentions(&err, &["hra", "no LyCORIS/kohya form"]);
}

/// Serving loaders read LoRA only: `check` refuses every new type by the existing
/// `*.peft_type` rules, and `inspect` names the type.
#[test]
fn loaders_refuse_and_inspect_names_the_new_types() {
    for (case, ty) in [
        ("vera", "VERA"),
        ("vblora", "VBLORA"),
        ("ln_tuning", "LN_TUNING"),
        ("hra", "HRA"),
        ("boft", "BOFT"),
        ("delora", "DELORA"),
    ] {
        peft_type_refused_by_loaders(&fixture(&format!("gaps10/{case}/adapter")), ty);
    }
    let v: serde_json::Value = serde_json::from_str(&run_ok(inspect_args(
        &fixture("gaps10/hra/adapter"),
        &["--json"],
    )))
    .unwrap();
    assert_eq!(v["modules"][0]["algo"], "hra");
}

/// GPT-2 with `LoraConfig(ensure_weight_tying=True, target_modules=["wte", "lm_head",
/// "c_attn"])`: PEFT saves lm_head's factors but its reload re-ties only a target named
/// `embed_tokens`/`lm_head`, so it drops them and merges E + ΔE (the trained model merged E +
/// 2ΔE). lorakit refuses the file, now saying why; the same file without the lm_head tensors
/// (what PEFT loads) merges into the tied `wte` and the Conv1D `c_attn` as PEFT does.
#[test]
fn gpt2_ensure_weight_tying_is_refused_saying_why_and_its_loaded_part_merges() {
    let base = fixture("gpt2/base");
    let adapter = fixture("gaps10/gpt2_ewt/adapter");
    let (_dir, out) = scratch("out");
    for extra in [&[][..], &["--tied-embeddings", "shared"][..]] {
        let err = merge_refused(&base, &adapter, &out, extra);
        assert_mentions(
            &err,
            &["lm_head", "ensure_weight_tying", "embed_tokens", "wte"],
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let loaded = dir.path().join("loaded");
    copy_dir(&adapter, &loaded);
    let file = loaded.join("adapter_model.safetensors");
    let mut t = read(&file);
    t.retain(|k, _| !k.starts_with("base_model.model.lm_head."));
    write_tensors(&file, &t);
    let merged = dir.path().join("merged");
    run_ok(merge_args(
        &base,
        &loaded,
        &merged,
        &["--tied-embeddings", "shared", "--quiet"],
    ));
    let n = assert_merged_matches(
        &merged,
        &base,
        &fixture("gaps10/gpt2_ewt/merged.safetensors"),
        1e-6,
    );
    assert_eq!(n, 3);
}

/// `check` fails `adapter` for vLLM, llama.cpp and SGLang by their `*.peft_type` rules (they
/// read LoRA only), and `inspect` names its `peft_type` `ty`; returns `inspect --json`.
pub(super) fn peft_type_refused_by_loaders(adapter: &Path, ty: &str) -> serde_json::Value {
    for target in ["vllm", "llama.cpp", "sglang"] {
        let v = check_json(adapter, target);
        let t = &v["targets"][0];
        assert_eq!(t["verdict"], "fails", "{adapter:?} {target}: {v:#}");
        let ids: Vec<&str> = t["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .filter_map(|f| f["rule"].as_str())
            .collect();
        assert!(
            ids.contains(&format!("{target}.peft_type").as_str()),
            "{adapter:?} {target}: {ids:?}"
        );
    }
    let v: serde_json::Value =
        serde_json::from_str(&run_ok(inspect_args(adapter, &["--json"]))).expect("JSON");
    assert_eq!(v["peft_type"], ty, "{v:#}");
    v
}
