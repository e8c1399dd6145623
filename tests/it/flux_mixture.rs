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
