//! The PEFT tuners and variants closed on branch gaps12 (fixtures/gen/gaps12_fixtures.py), each
//! against PEFT 0.21.2's own reload + `merge_and_unload` of a tiny seeded adapter: RoAd (three
//! variants, the bias turned too), `use_qalora` on a float base (plain LoRA in PEFT), HRA and
//! BOFT on Conv2d layers, OSF (against the same merge in f64), T5's `shared` tie; bad RoAd files
//! and a group-pooled QALoRA `lora_A` are refused naming the tensor; serving loaders' `check`
//! refuses RoAd and OSF and `inspect` names them.

use super::common::*;
/// `check ADAPTER --target TARGET --json`: the report.
use super::gaps10::peft_type_refused_by_loaders;

/// RoAd `road_1` (g = 8: each half-group's 4 angles shared by both halves), `road_2` (one angle
/// per row) and `road_4` (g = 4: separate cosine and sine parameters): `W' = R·W0` on q_proj,
/// v_proj and down_proj. Before: "is `ROAD`; lorakit reads … (not `ROAD` yet)".
#[test]
fn road_merges_as_peft_in_each_variant() {
    for case in ["road1", "road2", "road4"] {
        assert_eq!(
            merge_matches_peft_fixture(&format!("gaps12/{case}"), "llama/base_attn_bias", &[]),
            6,
            "{case}"
        );
    }
}

/// RoAd turns the bias as PEFT's merge does (`b' = R·b0`): TinyConvNet's fc, whose bias is not
/// zero (the Llama bases' are), weight and bias both changed.
#[test]
fn road_turns_the_bias_as_peft() {
    assert_eq!(
        merge_matches_peft_fixture("gaps12/road_bias", "conv/base", &[]),
        2
    );
}

/// `use_qalora` on a float Llama: PEFT takes the QALoRA variant only on GPTQ layers, so the
/// saved LoRA is plain (A [4, 64]) and `merge_and_unload` merges it. Before: refused as
/// "QALoRA (`use_qalora`) applies A to group-pooled inputs". A QALoRA `lora_A` over pooled
/// inputs ([r, in/16]) fits no base weight and is refused naming the module and both shapes.
#[test]
fn qalora_on_a_float_base_merges_as_plain_lora_and_pooled_factors_are_refused() {
    assert_eq!(
        merge_matches_peft_fixture("gaps12/qalora_float", "llama/base", &[]),
        6
    );
    let dir = tempfile::tempdir().unwrap();
    let pooled = dir.path().join("pooled");
    copy_dir(&fixture("gaps12/qalora_float/adapter"), &pooled);
    let file = pooled.join("adapter_model.safetensors");
    let mut t = read(&file);
    for (k, v) in t.iter_mut() {
        if k.ends_with(".lora_A.weight") {
            // [r, in] → [r, in/16]: the first in/16 columns of each row.
            let (r, i) = (v.shape[0], v.shape[1]);
            let g = i / 16;
            v.data = (0..r)
                .flat_map(|row| v.data[row * i * 4..(row * i + g) * 4].to_vec())
                .collect();
            v.shape = vec![r, g];
        }
    }
    write_tensors(&file, &t);
    let (_o, out) = scratch("out");
    let err = merge_refused(&fixture("llama/base"), &pooled, &out, &[]);
    assert_mentions(
        &err,
        &["model.layers.0.self_attn.q_proj", "[64, 64]", "[64, 4]"],
    );
}

/// PEFT's `HRAConv2d` and BOFT `Conv2d`: the reflection or butterfly rotation acts on the weight
/// viewed as [out, in·kh·kw] (conv1 3×3: 36 inputs; conv2 1×1), BOFT's `boft_s` saved [1, out]
/// on conv; the Linear fc beside them. Before: HRA "base tensor `conv1.weight` has shape
/// [8, 4, 3, 3], the adapter needs [0, 36]", BOFT "shape [1, 8] is not [out, 1]".
#[test]
fn hra_and_boft_on_conv2d_merge_as_peft() {
    for case in ["hra_conv", "boft_conv"] {
        assert_eq!(
            merge_matches_peft_fixture(&format!("gaps12/{case}"), "conv/base", &[]),
            3,
            "{case}"
        );
    }
}

/// Bad RoAd folders are refused naming the file and the field or tensor; nothing is written:
/// a variant PEFT does not know, an odd group size, a `road_theta` that turns no whole number of
/// groups, and only one of the pair.
#[test]
fn bad_road_folders_are_refused_naming_the_tensor() {
    let base = fixture("llama/base_attn_bias");
    let dir = tempfile::tempdir().unwrap();
    let edit_config = |name: &str, from: &str, to: &str| {
        let a = dir.path().join(name);
        copy_dir(&fixture("gaps12/road1/adapter"), &a);
        let cfg = a.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(&cfg, text.replace(from, to)).unwrap();
        a
    };
    for (name, from, to, words) in [
        (
            "variant",
            "\"variant\": \"road_1\"",
            "\"variant\": \"road_3\"",
            &["adapter_config.json", "variant", "road_3"][..],
        ),
        (
            "group",
            "\"group_size\": 8",
            "\"group_size\": 7",
            &["adapter_config.json", "group_size", "7"][..],
        ),
        (
            // v_proj's 16 road_1 values turn 32 rows, not a whole group of 64.
            "size",
            "\"group_size\": 8",
            "\"group_size\": 64",
            &[
                "model.layers.0.self_attn.v_proj",
                "road_theta [16]",
                "groups of 64",
            ][..],
        ),
    ] {
        let a = edit_config(name, from, to);
        let (_o, out) = scratch("out");
        let err = merge_refused(&base, &a, &out, &[]);
        assert_mentions(&err, words);
    }

    let one = dir.path().join("one");
    copy_dir(&fixture("gaps12/road1/adapter"), &one);
    let file = one.join("adapter_model.safetensors");
    let mut t = read(&file);
    let key = "base_model.model.model.layers.1.mlp.down_proj.road_alpha";
    t.remove(key).unwrap();
    write_tensors(&file, &t);
    let (_o, out) = scratch("out");
    let err = merge_refused(&base, &one, &out, &[]);
    assert_mentions(&err, &["model.layers.1.mlp.down_proj", "road_alpha"]);
}

/// Serving loaders read LoRA only: `check` refuses RoAd and OSF by the existing `*.peft_type` rules,
/// and `inspect` names the type and the algorithm.
#[test]
fn loaders_refuse_and_inspect_names_road_and_osf() {
    for (case, ty, algo) in [("road2", "ROAD", "road"), ("osf", "OSF", "osf")] {
        loaders_refuse_and_inspect_names(case, ty, algo);
    }
}

fn loaders_refuse_and_inspect_names(case: &str, ty: &str, algo: &str) {
    let v = peft_type_refused_by_loaders(&fixture(&format!("gaps12/{case}/adapter")), ty);
    assert_eq!(v["modules"][0]["algo"], algo, "{v:#}");
}

/// T5's tie is by `shared`, not `embed_tokens`/`lm_head` names: transformers 5.24 saves only
/// `shared.weight`, which is both stacks' `embed_tokens` and (`tie_word_embeddings`) lm_head. A
/// LoRA on `shared` is refused by default naming the tie, and with `--tied-embeddings shared`
/// merges into the one tensor as PEFT's `merge_and_unload` does (lm_head changes with it).
#[test]
fn t5_shared_tie_is_detected_and_merges_as_peft() {
    let base = fixture("gaps12/t5_shared/base");
    let (_o, out) = scratch("out");
    let err = merge_refused(&base, &fixture("gaps12/t5_shared/adapter"), &out, &[]);
    assert_mentions(&err, &["`shared`", "shared.weight", "tie_word_embeddings"]);
    assert_eq!(
        merge_matches_peft_fixture(
            "gaps12/t5_shared",
            "gaps12/t5_shared/base",
            &["--tied-embeddings", "shared"]
        ),
        4
    );
}

/// OSF: the saved low triplets `U_low·diag(S_low)·V_low` replace W0's own n smallest
/// singular triplets (PEFT rebuilds them from the base's SVD on reload). Held to the same
/// merge computed in f64 by torch (`osf/reference_f64.safetensors`) within 1e-6 relative;
/// PEFT's own merge takes W0's low part from an f32 SVD and lies up to 1.9e-6 (relative to
/// max |W|) from both, so it is compared at the 1e-5 its generator asserts against the f64
/// merge. Before: "is `OSF`; lorakit reads … (not `OSF` yet)".
#[test]
fn osf_merges_as_the_f64_merge_peft_rounds() {
    let base = fixture("llama/base");
    let (_o, out) = scratch("out");
    run_ok(merge_args(
        &base,
        &fixture("gaps12/osf/adapter"),
        &out,
        &["--device", "cpu", "--quiet"],
    ));
    let got = read_checkpoint(&out);
    let f64_ref = read(&fixture("gaps12/osf/reference_f64.safetensors"));
    let peft = read(&fixture("gaps12/osf/merged.safetensors"));
    let base = read_checkpoint(&base);
    assert_eq!(assert_matches_reference(&got, &base, &f64_ref, 1e-6), 6);
    assert_eq!(assert_matches_reference(&got, &base, &peft, 1e-5), 6);
    eprintln!(
        "osf: max |lorakit − f64| = {:e}, max |lorakit − PEFT| = {:e}",
        max_abs_diff(&got, &f64_ref),
        max_abs_diff(&got, &peft)
    );
}
