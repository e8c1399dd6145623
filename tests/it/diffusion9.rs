//! Diffusion LoRA families lorakit refused or mis-judged after diffusion8 (`fixtures/diffusion9/`,
//! `fixtures/gen/diffusion9_fixtures.py`): BFL's Flux control LoRAs (FLUX.1 Depth/Canny "-lora":
//! BFL names with `lora_B.bias`, the q/k RMSNorm scales as whole tensors, and an `img_in` twice
//! the model's input width), LTX-2 (the original checkpoint's audio and audio-video adaLN names
//! under `diffusion_model.`), Flux.3 (its original block names), and Lumina 2 vs Z-Image without
//! a base.
//!
//! Merges are compared with the f64 reference the generator wrote (the base plus each ΔW and
//! `lora_B.bias` on the tensors BFL's checkpoint converter maps the module to, the norm scales
//! as given). diffusers' own loader, run with its converter's FLUX.1 constants set to the tiny
//! model's, fused the same within 6e-8 (MANIFEST `diffusers_tiny`) except where its converter
//! also swaps the final modulation's `lora_A` rows; unpatched it raises KeyError on the tiny file,
//! which `check --target diffusers` must say.

use super::check::{check_json, fired};
use super::common::*;
use super::conventions_common::{manifest_of, merges_as_reference_in};

const FOLDER: &str = "diffusion9/flux_control";

/// On a base whose `x_embedder` is already at the control width (`[W0 | 0]`, as diffusers leaves
/// it), every module, bias and norm scale lands as the reference says: qkv and `linear1` split
/// with their bias rows, the final modulation's halves swapped, the norm scales replacing the
/// model's.
#[test]
fn bfl_flux_control_merges_into_a_base_at_the_control_width() {
    let m = manifest_of(FOLDER);
    let tiny = &m["bfl"]["diffusers_tiny"];
    assert_eq!(tiny["x_embedder"], serde_json::json!([16, 8]));
    assert!(tiny["fuse_max_diff"].as_f64().unwrap() < 1e-6, "{tiny}");
    let changed = m["bfl"]["changed"].as_array().unwrap();
    for t in [
        "transformer_blocks.0.attn.to_k.bias",
        "single_transformer_blocks.0.proj_mlp.bias",
        "norm_out.linear.bias",
        "transformer_blocks.0.attn.norm_added_q.weight",
        "x_embedder.weight",
    ] {
        assert!(changed.contains(&t.into()), "{t}");
    }
    merges_as_reference_in(FOLDER, "base_wide.safetensors", "bfl");
}

/// On the model as saved (`x_embedder` at 4 input channels, the LoRA's `img_in` reads 8), the
/// merge is refused in one line naming the file and the tensor, and writes nothing.
#[test]
fn bfl_flux_control_into_an_unwidened_base_is_refused_naming_x_embedder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let err = merge_fixtures_refused(
        &format!("{FOLDER}/base.safetensors"),
        &format!("{FOLDER}/bfl.safetensors"),
        &out,
        &["--quiet"],
    );
    assert!(err.contains("bfl.safetensors"), "{err}");
    assert!(
        err.contains("`img_in`: base tensor `x_embedder.weight` has shape [16, 4], the adapter needs [16, 8]"),
        "{err}"
    );
}

/// diffusers raised KeyError on the tiny file (its converter needs FLUX.1's 19 + 38 blocks):
/// `check --target diffusers` refuses it with the control converter's rule, with or without the
/// base, and no longer fails to read it.
#[test]
fn check_says_diffusers_refuses_a_tiny_bfl_control_file() {
    let m = manifest_of(FOLDER);
    assert!(m["bfl"]["diffusers"]
        .as_str()
        .unwrap()
        .starts_with("KeyError: 'double_blocks.1."));
    let file = fixture(&format!("{FOLDER}/bfl.safetensors"));
    let base = fixture(&format!("{FOLDER}/base_wide.safetensors"));
    for extra in [&[][..], &["--base", s(&base)][..]] {
        let (_, r) = check_json(&file, &[&["--target", "diffusers"][..], extra].concat());
        let t = &r["targets"][0];
        assert_eq!(t["loads"], false, "{t}");
        let rules = fired(t);
        assert!(
            rules.contains(&"diffusers.flux_control_refused".to_owned()),
            "{t}"
        );
        assert!(!rules.contains(&"diffusers.prefix".to_owned()), "{t}");
    }
}

/// Lumina 2 and Z-Image name their modules alike: a tiny Lumina 2 file (neither model's width)
/// is still read as Z-Image's without a base, and `check` now says it cannot tell
/// (`diffusers.lumina2_or_z_image`); with the Lumina 2 base it follows Lumina 2's loader, which
/// raised on it (MANIFEST), and a file at Lumina 2's width is decided by it.
#[test]
fn lumina2_or_z_image_is_said_where_neither_width_nor_base_decides() {
    const RULE: &str = "diffusers.lumina2_or_z_image";
    let file = fixture("diffusion8/lumina2/comfy.safetensors");
    let base = fixture("diffusion8/lumina2/base.safetensors");
    let (_, r) = check_json(&file, &["--target", "diffusers"]);
    assert!(fired(&r["targets"][0]).contains(&RULE.to_owned()), "{r}");
    let (_, r) = check_json(&file, &["--target", "diffusers", "--base", s(&base)]);
    let t = &r["targets"][0];
    assert!(!fired(t).contains(&RULE.to_owned()), "{t}");
    assert!(manifest_of("diffusion8/lumina2")["comfy"]["diffusers"]
        .as_str()
        .unwrap()
        .starts_with("RuntimeError"));
    assert_eq!(t["loads"], false, "{t}");
    let wide = fixture("diffusion8/lumina2_wide/complete.safetensors");
    let (_, r) = check_json(&wide, &["--target", "diffusers"]);
    assert!(!fired(&r["targets"][0]).contains(&RULE.to_owned()), "{r}");
}

/// Every case of `folder` merges as its f64 reference, and `check --target diffusers` (with and
/// without the base) says what diffusers did with it (MANIFEST): loaded, the modules it applied
/// nothing of named under `dropped_rule`, and LTX-Video's verdict never given.
fn merges_and_is_judged_as_diffusers_loaded_it(folder: &str, dropped_rule: &str) {
    let m = manifest_of(folder);
    let base = fixture(&format!("{folder}/base.safetensors"));
    for case in ["comfy", "mixed"] {
        let rec = &m[case];
        assert_eq!(rec["diffusers"], "loaded", "{case}");
        assert!(rec["fuse_max_diff"].as_f64().unwrap() < 1e-6, "{case}");
        let file = fixture(&format!("{folder}/{case}.safetensors"));
        let not_applied: Vec<String> = rec["not_applied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(not_applied.is_empty(), case == "comfy", "{case}");
        for extra in [&[][..], &["--base", s(&base)][..]] {
            let (_, r) = check_json(&file, &[&["--target", "diffusers"][..], extra].concat());
            let t = &r["targets"][0];
            assert_eq!(t["loads"], true, "{case}: {t}");
            assert_eq!(t["applies_all"], not_applied.is_empty(), "{case}: {t}");
            let rules = fired(t);
            assert_eq!(
                rules,
                if not_applied.is_empty() {
                    vec![]
                } else {
                    vec![dropped_rule.to_owned()]
                },
                "{case}: {t}"
            );
            let named = t.to_string();
            assert!(
                not_applied.iter().all(|n| named.contains(n.as_str())),
                "{t}"
            );
        }
        merges_as_reference_in(folder, "base.safetensors", case);
    }
}

/// LTX-2 files under `diffusion_model.`: the original names LTX-2's converter renames
/// (`patchify_proj`, `audio_patchify_proj`, `adaln_single`, `audio_adaln_single`,
/// `av_ca_*_adaln_single`) land where it puts them and the block names as they are; in `mixed`
/// the module under `transformer.` is dropped by diffusers (`diffusers.ltx2_dropped`).
#[test]
fn ltx2_files_merge_and_are_judged_as_diffusers_loaded_them() {
    let m = manifest_of("diffusion9/ltx2");
    assert!(m["comfy"]["changed"]
        .as_array()
        .unwrap()
        .contains(&"av_cross_attn_video_a2v_gate.linear.weight".into()));
    merges_and_is_judged_as_diffusers_loaded_it("diffusion9/ltx2", "diffusers.ltx2_dropped");
}

/// Flux.3 files under `diffusion_model.` (`content_mode_blocks.image.0.q_proj`,
/// `single_blocks.0.attn_out`, `txt_mode_blocks.0.mlp_in`) land where its converter's string
/// replacements put them; in `mixed` the module under `transformer.` lands nowhere in diffusers
/// (`diffusers.flux3_dropped`).
#[test]
fn flux3_files_merge_and_are_judged_as_diffusers_loaded_them() {
    let m = manifest_of("diffusion9/flux3");
    assert!(m["comfy"]["changed"]
        .as_array()
        .unwrap()
        .contains(&"mode_blocks.image_cond.0.ff.linear_out.weight".into()));
    merges_and_is_judged_as_diffusers_loaded_it("diffusion9/flux3", "diffusers.flux3_dropped");
}
