//! `check --target diffusers` on the files diffusers 0.42.1's Flux.2, HunyuanVideo and Z-Image
//! loaders convert themselves (`Flux2LoraLoaderMixin`, `HunyuanVideoLoraLoaderMixin`,
//! `ZImageLoraLoaderMixin`), and on Qwen-Image files of only top-level modules
//! (`QwenImageLoraLoaderMixin`), against what diffusers did with each file: refused it, loaded
//! part of it (which modules not), or loaded all of it. The records are diffusers' own runs:
//! `fixtures/diffusers_loaders/MANIFEST.json` (fixtures/gen/diffusers_loaders_fixtures.py) and
//! the layout fixtures' MANIFEST.json (`fixtures/{flux2,hunyuan_video,z_image}_layout/`).

use super::{check_json, fired, fixture, read_json, s, silent_modules, str_set, target};
use serde_json::Value;
use std::collections::BTreeSet;

/// The rules that say diffusers' loader of one of these models raises.
const REFUSALS: &[&str] = &[
    "diffusers.flux2_invalid",
    "diffusers.hunyuan_video_refused",
    "diffusers.z_image_refused",
];

/// lorakit's diffusers verdict on `file`: (loads, the modules its silent findings name).
fn verdict(file: &str) -> (Value, BTreeSet<String>) {
    let (_, r) = check_json(&fixture(file), &["--target", "diffusers"]);
    let t = target(&r, "diffusers").clone();
    let named = silent_modules(&t);
    (t, named)
}

/// Every recorded case: where diffusers raised, lorakit says it refuses the file by one of
/// [`REFUSALS`]; where it loaded, lorakit names as not applied exactly the modules of which
/// diffusers loaded nothing (none: "loads"). The records hold all three outcomes.
#[test]
fn check_says_what_the_flux2_hunyuan_video_and_z_image_loaders_did() {
    let m = read_json(fixture("diffusers_loaders/MANIFEST.json"));
    let mut outcomes = BTreeSet::new();
    let mut compared = 0;
    for (case, rec) in m.as_object().unwrap() {
        if case == "sha256" {
            continue;
        }
        let file = format!("diffusers_loaders/{case}.safetensors");
        let (t, named) = verdict(&file);
        let did = rec["diffusers"].as_str().unwrap();
        if did == "loaded" {
            let not_applied = str_set(&rec["not_applied"]);
            assert_eq!(t["loads"], true, "{case}: diffusers loaded it; {t}");
            assert_eq!(named, not_applied, "{case}: {t}");
            let all = not_applied.is_empty();
            assert_eq!(t["applies_all"], all, "{case}: {t}");
            outcomes.insert(if all { "loads" } else { "partial" });
        } else {
            assert_eq!(t["loads"], false, "{case}: diffusers raised {did}; {t}");
            let rules = fired(&t);
            assert!(
                rules.iter().any(|r| REFUSALS.contains(&r.as_str())),
                "{case}: diffusers raised {did}; {rules:?}"
            );
            outcomes.insert("raised");
        }
        compared += 1;
    }
    assert!(compared >= 18, "only {compared} cases");
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
}

/// The layout fixtures that lorakit merges (fixtures/gen/{flux2,hunyuan_video,z_image}_layout_
/// fixtures.py): diffusers loaded Flux.2's kohya file but for the shared modulation and the final
/// `adaLN_modulation` (its kohya converter has no name for them), loaded all of Flux.2's
/// `diffusion_model.` file, raised on both HunyuanVideo files (0-d `.alpha` of a fused `qkv`
/// chunked), and loaded Z-Image's kohya file but for `x_embedder` and the final layer.
#[test]
fn check_says_what_diffusers_did_with_the_layout_fixtures() {
    let loaded = |dir: &str, file: &str| -> Value {
        read_json(fixture(&format!("{dir}/MANIFEST.json")))[file]["diffusers_loaded"].clone()
    };
    let lacks = |v: &Value, m: &str| !v.as_array().unwrap().iter().any(|x| x == m);
    // Flux.2 kohya: the two modules diffusers did not load, named.
    let d = loaded("flux2_layout", "kohya");
    assert!(lacks(&d, "double_stream_modulation_txt.linear") && lacks(&d, "norm_out.linear"));
    assert!(!lacks(&d, "proj_out"));
    let (t, named) = verdict("flux2_layout/kohya.safetensors");
    assert_eq!(t["loads"], true, "{t}");
    assert_eq!(
        named,
        BTreeSet::from([
            "lora_unet_double_stream_modulation_txt_lin".to_owned(),
            "lora_unet_final_layer_adaLN_modulation_1".to_owned(),
        ]),
        "{t}"
    );
    // Flux.2 diffusion_model.: every module loaded (10 modules, 14 diffusers modules).
    assert_eq!(
        loaded("flux2_layout", "comfy").as_array().unwrap().len(),
        14
    );
    // It loads all of it; the final modulation renamed without the model's swap is a warning
    // (diffusion10_fixtures.py measured its ΔW off).
    let (t, named) = verdict("flux2_layout/comfy.safetensors");
    assert_eq!(
        (t["loads"].as_bool(), t["applies_all"].as_bool()),
        (Some(true), Some(true)),
        "{t}"
    );
    assert_eq!(fired(&t), ["diffusers.flux2_final_unswapped"], "{t}");
    assert!(named.is_empty());
    // HunyuanVideo: both raised.
    for file in ["kohya", "comfy"] {
        let d = loaded("hunyuan_video_layout", file);
        assert!(
            d.as_str().unwrap().starts_with("RuntimeError: chunk"),
            "{d}"
        );
        let (t, _) = verdict(&format!("hunyuan_video_layout/{file}.safetensors"));
        assert_eq!(t["loads"], false, "{file}: {t}");
        assert_eq!(
            fired(&t),
            ["diffusers.hunyuan_video_refused"],
            "{file}: {t}"
        );
    }
    // Z-Image kohya: the embedder and the final layer not loaded.
    let d = loaded("z_image_layout", "kohya");
    assert!(lacks(&d, "all_x_embedder.2-1") && lacks(&d, "all_final_layer.2-1.linear"));
    let (t, named) = verdict("z_image_layout/kohya.safetensors");
    assert_eq!(t["loads"], true, "{t}");
    assert_eq!(
        named,
        BTreeSet::from([
            "lora_unet_final_layer_adaLN_modulation_1".to_owned(),
            "lora_unet_final_layer_linear".to_owned(),
            "lora_unet_x_embedder".to_owned(),
        ]),
        "{t}"
    );
}

/// Lumina 2 names its modules as Z-Image does, but `Lumina2LoraLoaderMixin` converts them
/// (`_convert_non_diffusers_lumina2_lora_to_diffusers`, q/k/v split at its width 2304): a file
/// whose attention is that wide gets none of Z-Image's verdicts, while the same names at
/// Z-Image's width 3840 do (its `out` with an `.alpha` is refused, as the records above show).
#[test]
fn lumina2_width_files_are_not_judged_by_the_z_image_loader() {
    let dir = tempfile::tempdir().unwrap();
    for (width, z_image) in [(2304usize, false), (3840, true)] {
        let (r, qkv) = (4usize, width + 2 * 768);
        let zeros = |n: usize| vec![0u8; 4 * n];
        let (a, bq, bo, alpha) = (zeros(r * width), zeros(qkv * r), zeros(width * r), 4f32);
        let p = "diffusion_model.layers.0.attention";
        let f32 = safetensors::Dtype::F32;
        let names = [
            format!("{p}.qkv.lora_A.weight"),
            format!("{p}.qkv.lora_B.weight"),
            format!("{p}.out.lora_A.weight"),
            format!("{p}.out.lora_B.weight"),
            format!("{p}.out.alpha"),
        ];
        let alpha = alpha.to_le_bytes();
        let file = dir.path().join(format!("w{width}.safetensors"));
        crate::it::common::write_views(
            &file,
            &[
                (&names[0], f32, &[r, width], &a),
                (&names[1], f32, &[qkv, r], &bq),
                (&names[2], f32, &[r, width], &a),
                (&names[3], f32, &[width, r], &bo),
                (&names[4], f32, &[], &alpha),
            ],
        );
        let (_, rep) = check_json(&file, &["--target", "diffusers"]);
        let rules = super::fired(target(&rep, "diffusers"));
        let z = rules.iter().any(|r| r.starts_with("diffusers.z_image"));
        assert_eq!(z, z_image, "width {width}: {rules:?}");
    }
}

/// `check --target diffusers --base COMPONENT` (rev19 review: a module the base lacks passed)
/// against what `load_lora_weights` did with diffusers-named files on the tiny SD1 pipeline
/// (`fixtures/pipeline_sd1/MANIFEST.json` `diffusers_load`, fixtures/gen/pipeline_base_fixtures.py).
/// On the UNet folder, lorakit names as not applied exactly the modules whose keys diffusers
/// logged as unexpected; on either component's folder, a module of the other component is that
/// component's business and no finding (the clean file, which diffusers loads whole, loads).
#[test]
fn check_on_one_pipeline_component_names_the_modules_it_lacks() {
    let m = read_json(fixture("pipeline_sd1/MANIFEST.json"));
    let loads = m["diffusers_load"].as_object().unwrap();
    assert_eq!(loads.len(), 3);
    // `stray_te` (a text-encoder module, which transformers' loader drops without a log):
    // coverage.rs `a_text_encoder_module_the_encoder_base_lacks_is_not_in_base`.
    for (case, rec) in loads.iter().filter(|(c, _)| *c != "stray_te") {
        let file = fixture(&format!("pipeline_sd1/{case}.safetensors"));
        // diffusers' log lists `path.lora_A.weight, path.lora_B.weight`: the modules.
        let unexpected: BTreeSet<String> = rec["unexpected"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|l| {
                let l = l.as_str().unwrap();
                let keys = l.split_once("in the model: ").unwrap().1;
                keys.split(", ")
                    .map(|k| format!("unet.{}", k.trim().split(".lora_").next().unwrap()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let lost = rec["tensors"].as_u64().unwrap() - rec["loaded"].as_u64().unwrap();
        assert_eq!(lost as usize, 2 * unexpected.len(), "{case}: {rec}");
        for component in ["unet", "text_encoder"] {
            let base = fixture(&format!("pipeline_sd1/{component}"));
            let (_, r) = check_json(&file, &["--target", "diffusers", "--base", s(&base)]);
            let t = target(&r, "diffusers");
            let named = silent_modules(t);
            let want = match component {
                "unet" => unexpected.clone(),
                _ => BTreeSet::new(),
            };
            assert_eq!(named, want, "{case} on {component}: {t}");
            assert_eq!(t["loads"], true, "{case} on {component}: {t}");
            assert_eq!(
                t["applies_all"],
                want.is_empty(),
                "{case} on {component}: {t}"
            );
            let rule = fired(t).iter().any(|r| r == "diffusers.not_in_base");
            assert_eq!(rule, !want.is_empty(), "{case} on {component}: {t}");
        }
    }
}
