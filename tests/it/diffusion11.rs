//! The diffusers 0.42.1 LoRA converters lorakit had no case of (`fixtures/diffusion11/`,
//! `fixtures/gen/diffusion11_fixtures.py`): Anima (Cosmos-Predict2's DiT), Z-Image LoKr, Krea 2,
//! Ideogram 4, ACE-Step 1.5 and MiniMax-H3, each in the trainer layouts its converter reads, plus
//! one diffusers-named file for a loader that converts nothing (Cosmos).
//!
//! Merges are compared with the f64 reference the generator wrote (the base plus each ΔW on the
//! tensors the module means: a fused qkv by row thirds, MiniMax-H3's `mlp.fc1` with its
//! `[gate; value]` halves swapped into `SwiGLU`'s `[value; gate]`). Where diffusers' own
//! `load_lora_weights` + `fuse_lora` applied a file, its fused weights equal the reference
//! (MANIFEST `fuse_max_diff`); `check --target diffusers` with the family's base must say what
//! diffusers did (MANIFEST `diffusers`: loaded, loaded with modules not applied, or the error).

use super::check::{check_json, fired};
use super::common::*;
use super::conventions_common::{manifest_of, merges_as_reference_on};
use super::diffusion10::verdict_rules;

/// (folder under fixtures/diffusion11, cases).
const FAMILIES: [(&str, &[&str]); 7] = [
    ("anima", &["peft", "comfy", "kohya"]),
    ("cosmos", &["diffusers"]),
    ("z_image_lokr", &["aitk", "bare", "lycoris", "qkv"]),
    ("krea2", &["comfy", "aitk", "alpha"]),
    ("ideogram4", &["kohya", "peft", "top"]),
    ("ace_step", &["peft"]),
    ("minimax_h3", &["aitk", "musubi"]),
];

/// The rule of `check --target diffusers` that must say what diffusers did with a case it did
/// not apply in full (`None`: diffusers applied it all).
fn expected_rule(family: &str, case: &str) -> Option<&'static str> {
    match (family, case) {
        ("anima", "comfy") | ("krea2", "alpha") | ("ideogram4", "top") => {
            Some("diffusers.converted_refused")
        }
        ("anima", "kohya") => Some("diffusers.converted_dropped"),
        ("z_image_lokr", "lycoris" | "qkv") => Some("diffusers.z_image_refused"),
        _ => None,
    }
}

/// Every case merges as its f64 reference, whatever diffusers did with it; where diffusers
/// loaded the file and applied every module, its fuse equals the reference too.
#[test]
fn converted_family_files_merge_as_the_f64_reference() {
    for (family, cases) in FAMILIES {
        let folder = format!("diffusion11/{family}");
        let m = manifest_of(&folder);
        for (i, case) in cases.iter().enumerate() {
            // The GPU's bytes are compared on each family's first file.
            merges_as_reference_on(&folder, "base.safetensors", case, i == 0);
            let rec = &m[case];
            if rec["diffusers"] == "loaded" && rec["not_applied"] == serde_json::json!([]) {
                let d = rec["fuse_max_diff"].as_f64().unwrap();
                assert!(d < 1e-6, "{family}/{case}: diffusers' fuse {d}");
            }
        }
    }
    // MiniMax-H3's `mlp.fc1` lands with its halves swapped, a fused qkv on q/k/v.
    let changed = &manifest_of("diffusion11/minimax_h3")["aitk"]["changed"];
    for t in [
        "transformer_blocks.0.ff.net.0.proj.weight",
        "transformer_blocks.0.attn.to_v.weight",
        "token_refiner.refiner_blocks.0.ff.net.0.proj.weight",
        "time_embedder.linear_1.weight",
    ] {
        assert!(changed.as_array().unwrap().contains(&t.into()), "{t}");
    }
}

/// With the family's base, `check --target diffusers` says what the family's loader did with
/// each file: applied all of it (no rule), applied none of a module (`diffusers.converted_dropped`,
/// silent) or raised (`diffusers.converted_refused`, `diffusers.z_image_refused`).
#[test]
fn check_with_the_base_says_what_each_loader_did() {
    for (family, cases) in FAMILIES {
        let folder = format!("diffusion11/{family}");
        let m = manifest_of(&folder);
        let base = fixture(&format!("{folder}/base.safetensors"));
        for case in cases {
            let rec = &m[case];
            let file = fixture(&format!("{folder}/{case}.safetensors"));
            let (_, r) = check_json(&file, &["--target", "diffusers", "--base", s(&base)]);
            let t = &r["targets"][0];
            let d = rec["diffusers"].as_str().unwrap();
            let all = d == "loaded" && rec["not_applied"] == serde_json::json!([]);
            match expected_rule(family, case) {
                None => {
                    assert!(all, "{family}/{case}: {rec}");
                    assert!(verdict_rules(t).is_empty(), "{family}/{case}: {t}");
                    assert_eq!(t["applies_all"], true, "{family}/{case}: {t}");
                }
                Some(rule) => {
                    assert!(!all, "{family}/{case}: {rec}");
                    assert_eq!(
                        verdict_rules(t),
                        vec![rule.to_owned()],
                        "{family}/{case}: {t}"
                    );
                    assert_eq!(t["loads"], d == "loaded", "{family}/{case}: {d} {t}");
                    assert_eq!(t["applies_all"], false, "{family}/{case}: {t}");
                }
            }
        }
    }
}

/// Without a base the names alone tell the loader wherever a name only that model's original
/// layout has is in the file: the verdict is the one with the base. Not told without a base
/// (diffusers' own names, or names another model shares): Z-Image's `bare` and `lycoris` LoKr
/// files (bare diffusers paths, LyCORIS' flattened names) and Ideogram 4's `top` (only the
/// fused `attention.qkv` Z-Image also has, and `final_layer.linear`).
#[test]
fn check_without_a_base_reads_each_family_by_its_own_names() {
    for (family, cases) in FAMILIES {
        let folder = format!("diffusion11/{family}");
        for case in cases.iter().copied() {
            if matches!(
                (family, case),
                ("z_image_lokr", "bare" | "lycoris") | ("ideogram4", "top")
            ) {
                continue;
            }
            let file = fixture(&format!("{folder}/{case}.safetensors"));
            let (_, r) = check_json(&file, &["--target", "diffusers"]);
            let t = &r["targets"][0];
            let want: Vec<String> = expected_rule(family, case)
                .into_iter()
                .map(Into::into)
                .collect();
            assert_eq!(verdict_rules(t), want, "{family}/{case}: {t}");
            if let Some(rule) = expected_rule(family, case) {
                assert!(fired(t).contains(&rule.to_owned()));
            }
        }
    }
    // The refusal names the key diffusers raised on.
    let file = fixture("diffusion11/anima/comfy.safetensors");
    let (_, r) = check_json(&file, &["--target", "diffusers"]);
    let text = r["targets"][0].to_string();
    assert!(
        text.contains("diffusion_model.blocks.0.self_attn.q_proj.alpha"),
        "{text}"
    );
}
