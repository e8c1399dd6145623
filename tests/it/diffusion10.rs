//! LoKr files on Flux.2 (`fixtures/diffusion10/flux2_lokr/`, `fixtures/gen/diffusion10_fixtures.py`),
//! which diffusers 0.42.1 now loads: ai-toolkit's `diffusion_model.` + BFL names, LyCORIS'
//! `lycoris_transformer_blocks_0_attn_to_q` names and bare diffusers paths. diffusers applies
//! them exactly through PEFT's LoKr tuner (no lowering to LoRA), the fused qkv included (it
//! fuses the model's q/k/v first); it differs from the model where its converter renames the
//! final modulation without the swap, and where PEFT rebuilds a module with other factors than
//! the file's.
//!
//! Merges are compared with the f64 reference the generator wrote (the base plus
//! scale·(w1 ⊗ w2) on the tensors the module means); `check --target diffusers` with the Flux.2
//! base must say what `Flux2LoraLoaderMixin` did (MANIFEST `diffusers`), and without a base a
//! file no Flux.2-only name marks must be refused as FLUX.1's loader refused it
//! (MANIFEST `diffusers_flux1`).

use super::check::{check_json, fired};
use super::common::*;
use super::conventions_common::{manifest_of, merges_as_reference_on};

const FOLDER: &str = "diffusion10/flux2_lokr";
const CASES: [&str; 8] = [
    "aitk",
    "aitk_full",
    "aitk_final",
    "lycoris",
    "lycoris_top",
    "bare",
    "bare_rebuilt",
    "lycoris_rebuilt",
];

/// The rules of `t` that change a verdict (error or silent).
pub(super) fn verdict_rules(t: &serde_json::Value) -> Vec<String> {
    t["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("error" | "silent")))
        .map(|f| f["rule"].as_str().unwrap().to_owned())
        .collect()
}

/// Every case merges as its f64 reference, whatever diffusers did with it: a fused qkv lands
/// on q/k/v by rows, the final modulation with its halves swapped, a factor decomposed at any
/// rank as stored. Where diffusers loaded and applied the file, its fuse equals the reference.
#[test]
fn flux2_lokr_files_merge_as_the_f64_kronecker_reference() {
    let m = manifest_of(FOLDER);
    for (i, case) in CASES.iter().enumerate() {
        // The GPU's bytes are compared on the first file (lavapipe builds its shaders per run).
        merges_as_reference_on(FOLDER, "base.safetensors", case, i == 0);
        if ["aitk", "aitk_full", "lycoris", "bare"].contains(case) {
            assert_eq!(m[case]["diffusers"], "loaded", "{case}");
            assert!(m[case]["fuse_max_diff"].as_f64().unwrap() < 1e-6, "{case}");
        }
    }
    let changed = m["aitk"]["changed"].as_array().unwrap();
    for t in [
        "transformer_blocks.0.attn.to_k.weight",
        "transformer_blocks.0.attn.add_v_proj.weight",
        "single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight",
    ] {
        assert!(changed.contains(&t.into()), "{t}");
    }
}

/// With the Flux.2 base, `check --target diffusers` says what `Flux2LoraLoaderMixin` did with
/// each file: applied all of it (no rule); applied the final modulation with its halves
/// exchanged (0.37 off: the warning `diffusers.flux2_final_unswapped`); left a module PEFT
/// rebuilt with other factors unloaded (the fuse 0.05 off, or the forward raising:
/// `diffusers.flux2_lokr_rebuilt`, silent); or raised on a LyCORIS name outside its block table
/// (`diffusers.flux2_invalid`).
#[test]
fn check_with_the_flux2_base_says_what_diffusers_did_with_each_lokr_file() {
    let m = manifest_of(FOLDER);
    let base = fixture(&format!("{FOLDER}/base.safetensors"));
    for case in CASES {
        let rec = &m[case];
        let file = fixture(&format!("{FOLDER}/{case}.safetensors"));
        let (_, r) = check_json(&file, &["--target", "diffusers", "--base", s(&base)]);
        let t = &r["targets"][0];
        let rules = verdict_rules(t);
        let d = rec["diffusers"].as_str().unwrap();
        let exact = d == "loaded" && rec["fuse_max_diff"].as_f64().unwrap() < 1e-6;
        let (loads, applies, want, named) = match case {
            "lycoris_top" => {
                assert!(d.starts_with("ValueError: These keys are not LyCORIS Flux2 LoKr keys"));
                (
                    false,
                    false,
                    "diffusers.flux2_invalid",
                    "lycoris_x_embedder.lokr_w1_a",
                )
            }
            "aitk_final" => {
                // Loaded and applied, halves exchanged: a warning, the verdict stays "loads".
                assert!(d == "loaded" && !exact, "{case}: {rec}");
                assert!(rules.is_empty(), "{case}: {t}");
                assert_eq!(t["applies_all"], true, "{case}: {t}");
                let f = fired(t);
                assert_eq!(f, vec!["diffusers.flux2_final_unswapped".to_owned()], "{t}");
                assert!(t
                    .to_string()
                    .contains("diffusion_model.final_layer.adaLN_modulation.1"));
                continue;
            }
            "lycoris_rebuilt" | "bare_rebuilt" => {
                assert!(!exact, "{case}: {rec}");
                let module = match case {
                    "lycoris_rebuilt" => "lycoris_transformer_blocks_0_attn_to_q",
                    _ => "transformer_blocks.0.attn.to_v",
                };
                (true, false, "diffusers.flux2_lokr_rebuilt", module)
            }
            _ => {
                assert!(exact, "{case}: {rec}");
                assert!(rules.is_empty(), "{case}: {t}");
                assert_eq!(
                    (t["loads"].as_bool(), t["applies_all"].as_bool()),
                    (Some(true), Some(true)),
                    "{case}: {t}"
                );
                continue;
            }
        };
        assert_eq!(rules, vec![want.to_owned()], "{case}: {t}");
        assert_eq!(t["loads"], loads, "{case}: {t}");
        assert_eq!(t["applies_all"], applies, "{case}: {t}");
        assert!(t.to_string().contains(named), "{case}: {t}");
    }
}

/// Without a base: a file with a name only Flux.2's transformer has (its shared modulation,
/// `attn.to_qkv_mlp_proj`, `ff.linear_in`, a single block's `attn.to_out`) is judged by
/// Flux.2's loader, which applied all of it. Any other LoKr file is not said to apply: FLUX.1's
/// loader, like every loader without a LoKr converter, raised "Invalid LoRA checkpoint" on it
/// (`check` still says "loads, applies nothing" there: `diffusers.prefix`, the SD reading).
#[test]
fn check_without_a_base_reads_flux2_only_names_as_flux2_s() {
    let m = manifest_of(FOLDER);
    for case in CASES {
        assert!(
            m[case]["diffusers_flux1"]
                .as_str()
                .unwrap()
                .starts_with("ValueError: Invalid LoRA checkpoint"),
            "{case}"
        );
        let file = fixture(&format!("{FOLDER}/{case}.safetensors"));
        let (_, r) = check_json(&file, &["--target", "diffusers"]);
        let t = &r["targets"][0];
        let flux2 = ["aitk", "aitk_full", "lycoris", "bare"].contains(&case);
        assert_eq!(t["applies_all"], flux2, "{case}: {t}");
        if flux2 {
            assert_eq!(t["loads"], true, "{case}: {t}");
            assert!(verdict_rules(t).is_empty(), "{case}: {t}");
        }
    }
}
