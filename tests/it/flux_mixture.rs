//! OneTrainer's Flux names (`lora_transformer_` + the diffusers path, what `convert --to kohya`
//! writes for a Flux adapter), judged by `check --target diffusers` against what diffusers
//! 0.42.1's Flux loader did with each file (`fixtures/gen/flux_mixture_fixtures.py`, MANIFEST
//! `diffusers`): its `_convert_mixture_state_dict_to_diffusers` loads the blocks' attention
//! projections and a few top-level modules with their alphas (fused within 5e-8 of the f64
//! ΔW), raises on any other block module or a module without `.alpha`, and drops `lora_unet_`
//! keys. check judged every such file by the SD reader ("nothing is applied"), so a file
//! diffusers loads whole was said to fail.

use super::check::{check_json, fired};
use super::common::*;
use super::conventions_common::manifest_of;

const CASES: [&str; 7] = [
    "attn",
    "norm",
    "single_mlp",
    "top",
    "no_alpha",
    "te",
    "unet",
];

#[test]
fn check_says_what_the_flux_loader_does_with_onetrainer_names() {
    let m = manifest_of("flux_mixture");
    let base = fixture("diffusers_formats/flux_base.safetensors");
    for case in CASES {
        let rec = &m[case];
        let raised = rec["diffusers"].as_str().unwrap().starts_with("raised");
        let applies_all = !raised
            && rec["whole"] == true
            && rec["loaded"] == rec["file_lora_tensors"]
            && rec["fuse_max_diff"].as_f64().unwrap() < 1e-6;
        let file = fixture(&format!("flux_mixture/{case}.safetensors"));
        // Every case has a single-block module, which marks Flux without a base; the text
        // encoder's modules are on no transformer base.
        let mut runs = vec![vec!["--target", "diffusers"]];
        if case != "te" {
            runs.push(vec!["--target", "diffusers", "--base", s(&base)]);
        }
        for args in runs {
            let (_, r) = check_json(&file, &args);
            let t = &r["targets"][0];
            let f = fired(t);
            assert_eq!(t["loads"], !raised, "{case} {args:?}: {rec} {t}");
            assert_eq!(t["applies_all"], applies_all, "{case} {args:?}: {rec} {t}");
            assert_eq!(
                f.contains(&"diffusers.flux_mixture".to_owned()),
                raised,
                "{case} {args:?}: {t}"
            );
            assert_eq!(
                f.contains(&"diffusers.flux_mixture_unet".to_owned()),
                case == "unet",
                "{case} {args:?}: {t}"
            );
            assert!(!f.contains(&"diffusers.prefix".to_owned()), "{case}: {t}");
        }
    }
}

/// AuraFlow names its blocks `single_transformer_blocks` too, without Flux's `proj_mlp`, and its
/// loader converts no OneTrainer names (rev19 review: check said "loads" on it): such a base is
/// no Flux pipeline, and the SD reader's rule stands.
#[test]
fn an_auraflow_base_is_no_flux_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let w = |shape: &[usize]| T {
        dtype: safetensors::Dtype::F32,
        shape: shape.to_vec(),
        data: vec![0; shape.iter().product::<usize>() * 4],
    };
    let base = dir.path().join("aura.safetensors");
    write_tensors(
        &base,
        &[(
            "single_transformer_blocks.0.attn.to_q.weight".to_owned(),
            w(&[8, 8]),
        )]
        .into(),
    );
    let file = dir.path().join("ot.safetensors");
    let m = "lora_transformer_single_transformer_blocks_0_attn_to_q";
    write_tensors(
        &file,
        &[
            (format!("{m}.lora_down.weight"), w(&[2, 8])),
            (format!("{m}.lora_up.weight"), w(&[8, 2])),
            (format!("{m}.alpha"), w(&[])),
        ]
        .into(),
    );
    let (_, r) = check_json(&file, &["--target", "diffusers", "--base", s(&base)]);
    let t = &r["targets"][0];
    let f = fired(t);
    assert!(f.contains(&"diffusers.prefix".to_owned()), "{t}");
    assert!(
        !f.iter().any(|r| r.starts_with("diffusers.flux_mixture")),
        "{t}"
    );
    assert_eq!(t["applies_all"], false, "{t}");
}

/// Without `--base`, a OneTrainer file of double-block attention modules alone is SD3's as much
/// as Flux's: Flux's loader would load it whole, SD3's converts none of it (rev19 review: check
/// quoted the SD reader's "nothing is applied"). The SD reader's rule is then not evaluated
/// (it needs `--base`); with the Flux base the file is judged by Flux's loader.
#[test]
fn double_block_attention_alone_needs_the_base_to_be_judged() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = read(&fixture("flux_mixture/attn.safetensors"));
    t.retain(|k, _| k.starts_with("lora_transformer_transformer_blocks_"));
    let file = dir.path().join("double.safetensors");
    write_tensors(&file, &t);
    let (_, r) = check_json(&file, &["--target", "diffusers"]);
    let t = &r["targets"][0];
    assert!(!fired(t).contains(&"diffusers.prefix".to_owned()), "{t}");
    // The SD reader's key rules wait for the base (as do the base-only rules).
    for rule in ["diffusers.prefix", "diffusers.key_without_lora"] {
        assert!(
            t["not_evaluated"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == rule),
            "{rule}: {t}"
        );
    }
    let base = fixture("diffusers_formats/flux_base.safetensors");
    let (_, r) = check_json(&file, &["--target", "diffusers", "--base", s(&base)]);
    let t = &r["targets"][0];
    assert_eq!(
        (&t["loads"], &t["applies_all"]),
        (&true.into(), &true.into()),
        "{t}"
    );
}
