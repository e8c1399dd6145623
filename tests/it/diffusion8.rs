//! Diffusion families whose trainers' files diffusers 0.42.1 converts itself and lorakit had no
//! case of (`fixtures/diffusion8/`, `fixtures/gen/diffusion8_fixtures.py`): Qwen-Image (kohya,
//! ComfyUI, diffusion-pipe and PEFT `default` names), LTX-Video (ComfyUI names, and the original
//! checkpoint's `patchify_proj`/`adaln_single`), HiDream (experts included), Lumina 2 (its
//! original names, q/k/v of unequal widths), fal's Flux Kontext (`base_model.model.` on BFL's
//! layout) and a kohya file of names BFL Flux and HunyuanVideo share.
//!
//! Merges are compared with the f64 reference the generator wrote (the base plus each ΔW on the
//! tensors the model's checkpoint converter maps the module to; diffusers' own fuse agreed with
//! it wherever diffusers loaded the module, MANIFEST `fuse_max_diff`). `check --target diffusers`
//! is compared with what diffusers' loader did with each file (MANIFEST `diffusers`): raised →
//! refused, loaded → the modules it applied nothing of named, the others not.

use super::check::{check_json, fired};
use super::common::*;
use super::conventions_common::{manifest_of, merges_as_reference_in};
use serde_json::Value;
use std::collections::BTreeSet;

/// Every case of a folder with a base, merged into it as its reference says.
fn merges_every_case_of(folder: &str) {
    let m = manifest_of(&format!("diffusion8/{folder}"));
    let cases: Vec<&String> = m
        .as_object()
        .unwrap()
        .keys()
        .filter(|c| *c != "sha256")
        .collect();
    assert!(!cases.is_empty());
    for case in cases {
        merges_as_reference_in(&format!("diffusion8/{folder}"), "base.safetensors", case);
    }
}

#[test]
fn qwen_image_trainer_files_merge_as_the_f64_reference() {
    merges_every_case_of("qwen_image");
}

/// The original checkpoint's `patchify_proj` / `adaln_single.linear` land on `proj_in` /
/// `time_embed.linear` (`convert_ltx_transformer_checkpoint_to_diffusers`), which diffusers' own
/// LoRA converter does not rename (MANIFEST: loaded, those two not applied).
#[test]
fn ltx_video_files_merge_their_original_names_as_the_checkpoint_converter_maps_them() {
    let m = manifest_of("diffusion8/ltx_video");
    assert_eq!(
        m["original"]["not_applied"],
        serde_json::json!([
            "diffusion_model.adaln_single.linear",
            "diffusion_model.patchify_proj"
        ])
    );
    assert!(m["original"]["changed"]
        .as_array()
        .unwrap()
        .contains(&"proj_in.weight".into()));
    merges_every_case_of("ltx_video");
}

#[test]
fn hidream_files_merge_as_the_f64_reference() {
    merges_every_case_of("hidream");
}

/// Lumina 2's original names on its diffusers layout: the fused `qkv` over q (16 rows), k and v
/// (8 each: GQA), `out` → `to_out.0`, `w1..3` → `linear_1..3`, the final layer's two modules and
/// the embedders. diffusers raises on this tiny model (its converters split at 2304/768/768).
#[test]
fn lumina2_original_names_merge_onto_the_diffusers_layout() {
    let m = manifest_of("diffusion8/lumina2");
    assert!(m["comfy"]["diffusers"]
        .as_str()
        .unwrap()
        .starts_with("RuntimeError: split_with_sizes"));
    merges_every_case_of("lumina2");
}

/// fal's Kontext names (`base_model.model.double_blocks.0.img_attn.qkv`) land on the split
/// diffusers tensors as BFL's checkpoint converter splits them.
#[test]
fn fal_flux_kontext_files_merge_onto_the_diffusers_layout() {
    merges_every_case_of("flux_kontext");
}

/// lorakit's diffusers verdict on `file` (with `extra` arguments): (report target, the modules
/// its silent findings name).
fn verdict(file: &std::path::Path, extra: &[&str]) -> (Value, BTreeSet<String>) {
    let (_, r) = check_json(file, &[&["--target", "diffusers"], extra].concat());
    let t = r["targets"][0].clone();
    let named = silent_modules(&t);
    (t, named)
}

/// Where `check` disagrees with diffusers on `case` of `folder`, judged with `extra` (`None`:
/// it agrees).
fn disagreement(folder: &str, case: &str, rec: &Value, extra: &[&str]) -> Option<String> {
    let file = fixture(&format!("diffusion8/{folder}/{case}.safetensors"));
    let (t, named) = verdict(&file, extra);
    let did = rec["diffusers"].as_str().unwrap();
    let at = format!("{folder}/{case} {extra:?}");
    if did != "loaded" {
        return (t["loads"] != false).then(|| format!("{at}: diffusers raised {did}; {t}"));
    }
    let not_applied = str_set(&rec["not_applied"]);
    let agrees =
        t["loads"] == true && named == not_applied && t["applies_all"] == not_applied.is_empty();
    (!agrees).then(|| format!("{at}: diffusers did not apply {not_applied:?}; {t}"))
}

/// Every recorded case: diffusers raised → `check` refuses; loaded → it names exactly the modules
/// diffusers applied nothing of. Judged with `--base` (a tiny Lumina 2 file has Z-Image's names
/// at neither model's width: the base tells Lumina 2's loader), and the same without it except
/// for those.
#[test]
fn check_says_what_each_familys_loader_did() {
    let (mut outcomes, mut off) = (BTreeSet::new(), Vec::new());
    for folder in [
        "qwen_image",
        "ltx_video",
        "hidream",
        "lumina2",
        "flux_kontext",
    ] {
        let m = manifest_of(&format!("diffusion8/{folder}"));
        let base = fixture(&format!("diffusion8/{folder}/base.safetensors"));
        for (case, rec) in m.as_object().unwrap() {
            if case == "sha256" {
                continue;
            }
            off.extend(disagreement(folder, case, rec, &["--base", s(&base)]));
            if folder != "lumina2" {
                off.extend(disagreement(folder, case, rec, &[]));
            }
            let did = rec["diffusers"].as_str().unwrap();
            outcomes.insert(did.split(':').next().unwrap().to_owned());
        }
    }
    assert!(off.is_empty(), "{off:#?}");
    assert!(
        outcomes.contains("loaded") && outcomes.len() > 1,
        "{outcomes:?}"
    );
}

/// Lumina 2 files at Lumina-Image-2.0's widths, judged without a base: the complete
/// `lora_A/lora_B` file loads, an `.alpha`, a final-layer module or a missing `w3` makes
/// diffusers raise, kohya names apply nothing (MANIFEST: diffusers on a 2304-wide model).
#[test]
fn lumina2_width_files_get_lumina2_loader_verdicts() {
    let m = manifest_of("diffusion8/lumina2_wide");
    let mut rules = BTreeSet::new();
    for (case, rec) in m.as_object().unwrap() {
        if case == "sha256" {
            continue;
        }
        assert_eq!(disagreement("lumina2_wide", case, rec, &[]), None);
        let (t, _) = verdict(
            &fixture(&format!("diffusion8/lumina2_wide/{case}.safetensors")),
            &[],
        );
        rules.extend(
            fired(&t)
                .into_iter()
                .filter(|r| r.starts_with("diffusers.")),
        );
    }
    assert_eq!(
        rules,
        ["diffusers.lumina2_refused", "diffusers.lumina2_unconverted"]
            .map(String::from)
            .into()
    );
}

/// A kohya file of names BFL Flux and HunyuanVideo share merges into either model's diffusers
/// layout; diffusers' Flux loader applied it and HunyuanVideo's raised (MANIFEST). `check`
/// without `--base` judges it as Flux's and says so (`diffusers.flux_or_hunyuan_video`); with
/// `--base` it follows the base.
#[test]
fn names_flux_and_hunyuan_video_share_are_judged_by_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest_of("diffusion8/flux_hunyuan_video");
    let adapter = fixture("diffusion8/flux_hunyuan_video/kohya.safetensors");
    for fam in ["flux", "hunyuan_video"] {
        let out = dir.path().join(format!("{fam}.safetensors"));
        let base_rel = format!("diffusion8/flux_hunyuan_video/{fam}_base.safetensors");
        merge_fixtures(
            &base_rel,
            "diffusion8/flux_hunyuan_video/kohya.safetensors",
            &out,
            &["--quiet"],
        );
        let (got, base) = (read(&out), read(&fixture(&base_rel)));
        let want = read(&fixture(&format!(
            "diffusion8/flux_hunyuan_video/{fam}_reference.safetensors"
        )));
        assert_eq!(want.len(), m[fam]["changed"].as_array().unwrap().len());
        for (name, b) in &base {
            match want.get(name) {
                Some(w) => assert_f32_close(name, &got[name].f32(), &w.f32(), &b.f32()),
                None => assert_eq!(got[name].data, b.data, "{name}"),
            }
        }
        let (t, _) = verdict(&adapter, &["--base", s(&fixture(&base_rel))]);
        let loaded = m[fam]["diffusers"] == "loaded";
        assert_eq!(t["loads"], loaded, "{fam}: {t}");
        assert!(!fired(&t).contains(&"diffusers.flux_or_hunyuan_video".to_owned()));
    }
    let (t, _) = verdict(&adapter, &[]);
    assert_eq!(
        (&t["loads"], &t["applies_all"]),
        (&true.into(), &true.into()),
        "{t}"
    );
    assert!(
        fired(&t).contains(&"diffusers.flux_or_hunyuan_video".to_owned()),
        "{t}"
    );
}
