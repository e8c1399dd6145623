//! The PEFT tuners closed on branch gaps13b (fixtures/gen/gaps13b_fixtures.py), each against
//! PEFT 0.21.2's own reload + `merge_and_unload` of a tiny seeded adapter: BEFT (bias added),
//! DEFT (relu, qr, PaRa, GPT-2 Conv1D), PEANuT, Super-Tuning (with and without its LoRA) and
//! AdaMSS with one subspace merge as PEFT does; AdaMSS with several subspaces, PSOFT and
//! ShadowPEFT are refused naming why (Super-Tuning without saved positions: gaps14); serving loaders' `check`
//! refuses them all and `inspect` names the type.
//! Before this branch each was "is `X`; lorakit reads … (not `X` yet)".

use super::common::*;
use super::gaps10::peft_type_refused_by_loaders;

/// BEFT: `beft_bias` added to the q/k/v biases (zero in this base) and to the TinyConvNet fc's
/// (not zero); the weights untouched. A base without biases is refused naming the bias PEFT's
/// merge raises on.
#[test]
fn beft_adds_its_bias_as_peft() {
    assert_eq!(
        merge_matches_peft_fixture("gaps13b/beft", "llama/base_attn_bias", &[]),
        6
    );
    assert_eq!(
        merge_matches_peft_fixture("gaps13b/beft_fc", "conv/base", &[]),
        1
    );
    let (_dir, out) = scratch("out");
    let err = merge_refused(
        &fixture("llama/base"),
        &fixture("gaps13b/beft/adapter"),
        &out,
        &[],
    );
    assert_mentions(
        &err,
        &[
            "model.layers.0.self_attn.q_proj.beft_bias",
            "no base tensor `model.layers.0.self_attn.q_proj.bias`",
        ],
    );
}

/// DEFT: `P·(alpha/r·R − relu(P)ᵀ·W0)`, `Q·(R − Qᵀ·W0)` with LAPACK's QR signs, PaRa's
/// `−P·relu(P)ᵀ·W0`, and qr on GPT-2's Conv1D `c_attn` (`fan_in_fan_out`, W0 stored [in, out]).
#[test]
fn deft_merges_as_peft_relu_qr_para_and_on_conv1d() {
    for (case, base, n) in [
        ("deft_relu", "llama/base", 6),
        ("deft_qr", "llama/base", 4),
        ("deft_para", "llama/base", 4),
        ("deft_gpt2", "gpt2/base", 2),
    ] {
        assert_eq!(
            merge_matches_peft_fixture(&format!("gaps13b/{case}"), base, &[]),
            n,
            "{case}"
        );
    }
}

/// PEANuT: the network over W0ᵀ (gelu, two encoders and decoders with their skips, scaling
/// 0.5), and the plain `relu(W0ᵀ·Aᵀ)·Bᵀ` of depth 0.
#[test]
fn peanut_merges_as_peft() {
    assert_eq!(
        merge_matches_peft_fixture("gaps13b/peanut", "llama/base", &[]),
        4
    );
    assert_eq!(
        merge_matches_peft_fixture("gaps13b/peanut_relu", "llama/base", &[]),
        4
    );
}

/// Super-Tuning: the values added at their saved flat positions, and with `r` the LoRA
/// `lora_alpha/r·B·A` too. (Without saved positions: gaps14, which recomputes them as PEFT.)
#[test]
fn supertuning_merges_as_peft() {
    assert_eq!(
        merge_matches_peft_fixture("gaps13b/super", "llama/base", &[]),
        4
    );
    assert_eq!(
        merge_matches_peft_fixture("gaps13b/supra", "llama/base", &[]),
        4
    );
}

/// AdaMSS with one subspace: `[ΔW | Δb] = B·A·newB`, the bias column into the base bias (the
/// fc's is not zero). With three subspaces the rows each covers are not saved: refused naming
/// the K-means; a newB with a bias column on a base without biases is refused naming it.
#[test]
fn adamss_one_subspace_merges_as_peft_and_more_are_refused() {
    assert_eq!(
        merge_matches_peft_fixture("gaps13b/adamss1", "llama/base_attn_bias", &[]),
        4
    );
    assert_eq!(
        merge_matches_peft_fixture("gaps13b/adamss1_fc", "conv/base", &[]),
        2
    );
    let (_dir, out) = scratch("out");
    let err = merge_refused(
        &fixture("llama/base_attn_bias"),
        &fixture("gaps13b/adamss3/adapter"),
        &out,
        &[],
    );
    assert_mentions(
        &err,
        &["3 subspaces", "scatter_index", "K-means", "random_seed"],
    );
    let err = merge_refused(
        &fixture("llama/base"),
        &fixture("gaps13b/adamss1/adapter"),
        &out,
        &[],
    );
    assert_mentions(
        &err,
        &[
            "model.layers.0.self_attn.q_proj.adamss_newB",
            "has shape [64], the adapter needs [65]",
        ],
    );
}

/// PSOFT (A and B rebuilt from the base's SVD, whose signs the merge depends on) and ShadowPEFT
/// (an input-dependent shadow network) are refused by type, naming why; nothing is written.
#[test]
fn psoft_and_shadow_are_refused_naming_why() {
    let base = fixture("llama/base");
    let (_dir, out) = scratch("out");
    let err = merge_refused(&base, &fixture("gaps13b/psoft/adapter"), &out, &[]);
    assert_mentions(&err, &["PSOFT", "psoft_R", "SVD", "signs"]);
    let dir = tempfile::tempdir().unwrap();
    let shadow = dir.path().join("shadow");
    copy_dir(&fixture("gaps13b/psoft/adapter"), &shadow);
    let cfg = shadow.join("adapter_config.json");
    std::fs::write(&cfg, r#"{"peft_type": "SHADOW"}"#).unwrap();
    let err = merge_refused(&base, &shadow, &out, &[]);
    assert_mentions(&err, &["SHADOW", "per input", "adapter_config.json"]);
}

/// Files PEFT itself refuses to load (a DEFT rank other than the config's, a PEANuT with fewer
/// encoders than `depth`, a Super-Tuning value count other than `sparsity` gives, a position
/// past the weight) and an activation lorakit does not compute are refused naming the tensor
/// or field.
#[test]
fn bad_tuner_folders_are_refused_naming_the_tensor() {
    let base = fixture("llama/base");
    let (_dir, out) = scratch("out");
    let dir = tempfile::tempdir().unwrap();
    let edited = |case: &str, from: &str, to: &str| {
        let d = dir.path().join(format!("{case}{}", to.len()));
        copy_dir(&fixture(&format!("gaps13b/{case}/adapter")), &d);
        let cfg = d.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.contains(from), "{case}: {from}");
        std::fs::write(&cfg, text.replace(from, to)).unwrap();
        d
    };
    for (case, from, to, why) in [
        (
            "deft_qr",
            "\"r\": 4",
            "\"r\": 3",
            &[
                "base_model.model.model.layers.0.self_attn.q_proj.deft_P",
                "rank 4",
            ][..],
        ),
        (
            "peanut",
            "\"depth\": 2",
            "\"depth\": 3",
            &["peanut_encoders", "`depth` 3"][..],
        ),
        (
            "peanut",
            "\"act_fn\": \"gelu\"",
            "\"act_fn\": \"mish\"",
            &["`act_fn` \"mish\"", "adapter_config.json"][..],
        ),
        (
            "super",
            "\"sparsity\": 0.9",
            "\"sparsity\": 0.8",
            &[
                "model.layers.0.self_attn.q_proj",
                "supertuning_values holds 409 values",
                "= 819",
            ][..],
        ),
    ] {
        let err = merge_refused(&base, &edited(case, from, to), &out, &[]);
        assert_mentions(&err, why);
    }

    let sup = dir.path().join("sup");
    copy_dir(&fixture("gaps13b/super/adapter"), &sup);
    let file = sup.join("adapter_model.safetensors");
    let mut t = read(&file);
    let key = "base_model.model.model.layers.0.self_attn.v_proj.supertuning_indices";
    // The first position (int32) past v_proj's 32×64 weight.
    t.get_mut(key).unwrap().data[..4].copy_from_slice(&2048i32.to_le_bytes());
    write_tensors(&file, &t);
    let err = merge_refused(&base, &sup, &out, &[]);
    assert_mentions(
        &err,
        &[
            "model.layers.0.self_attn.v_proj",
            "supertuning_indices holds position 2048",
        ],
    );
}

/// Serving loaders read LoRA only: `check` refuses every new type by the existing
/// `*.peft_type` rules, and `inspect` names the type and the algorithm.
#[test]
fn loaders_refuse_and_inspect_names_the_new_types() {
    for (case, ty, algo) in [
        ("beft", "BEFT", "beft"),
        ("deft_qr", "DEFT", "deft"),
        ("peanut", "PEANUT", "peanut"),
        ("supra", "SUPERTUNING", "supertuning"),
        ("adamss1", "ADAMSS", "adamss"),
    ] {
        let v = peft_type_refused_by_loaders(&fixture(&format!("gaps13b/{case}/adapter")), ty);
        assert_eq!(v["modules"][0]["algo"], algo, "{v:#}");
    }
}
