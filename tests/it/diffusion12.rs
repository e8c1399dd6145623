//! Diffusion LoRA cases after diffusion11 (`fixtures/diffusion12/`,
//! `fixtures/gen/diffusion12_fixtures.py`, diffusers 0.42.1 on tiny models it saves):
//!
//! - a Flux control LoRA (diffusers' own `train_control_lora_flux.py` names, `x_embedder`'s
//!   `lora_A` reading twice the model's channels) into the model as saved: `merge --expand-base`
//!   widens `x_embedder` with zero columns as diffusers' loader does and writes the config the
//!   widened weights need; ComfyUI leaves that weight unapplied (`comfy.shape`);
//! - LoKr files in Z-Image's loader: the one diffusers' `save_lora_weights` writes for a PEFT
//!   LoKr adapter (its LoKrConfig in `lora_adapter_metadata`: scale alpha/r, whole factors
//!   included), the same without metadata, and ai-toolkit's with a decomposed `lokr_w2`;
//! - loaders with no converter of their own (Helios, SkyReels-V2: Wan's only for non-diffusers
//!   keys) or one that renames prefixes only (ERNIE-Image: `base_model.model.`,
//!   `diffusion_model.` → `transformer.`), one file each in diffusers' names.
//!
//! Merges are compared with the f64 reference the generator wrote; diffusers' own fuse matched
//! it (MANIFEST `fuse_max_diff`), and `check --target diffusers` with the base must say what
//! diffusers did.

use super::check::{check_json, fired};
use super::common::*;
use super::conventions_common::{manifest_of, merges_as_reference_on};
use super::diffusion10::verdict_rules;

const CONTROL: &str = "diffusion12/flux_control";

/// Into the model as diffusers saves it (`x_embedder` [16, 4]), the control LoRA is refused
/// without `--expand-base`, naming the tensor and the flag, and nothing is written.
#[test]
fn flux_control_lora_is_refused_without_expand_base_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let err = merge_fixtures_refused(
        &format!("{CONTROL}/base"),
        &format!("{CONTROL}/diffusers.safetensors"),
        &out,
        &["--quiet"],
    );
    assert!(
        err.contains(
            "base tensor `x_embedder.weight` has shape [16, 4], the adapter needs [16, 8]"
        ),
        "{err}"
    );
    assert!(err.contains("--expand-base"), "{err}");
    assert!(!out.exists());
}

/// With `--expand-base`: `x_embedder` is `[W0 | 0] + B·A` (the f64 reference; diffusers' fuse
/// within 6e-8 of it), its bias and every other untouched tensor byte for byte the base's, and
/// config.json the base's with `in_channels` 8 and the null `out_channels` 4: the folder loads
/// (diffusers' own `save_pretrained` of its fused model keeps `in_channels` 4, which
/// `from_pretrained` refuses: MANIFEST). (The GPU's bytes equal these; not compared here, its
/// shader builds on lavapipe take seconds.)
#[test]
fn flux_control_lora_widens_x_embedder_as_diffusers_with_expand_base() {
    let m = &manifest_of(CONTROL)["diffusers"];
    assert_eq!(m["x_embedder"], serde_json::json!([16, 8]));
    assert!(m["fuse_max_diff"].as_f64().unwrap() < 1e-6, "{m}");
    assert_eq!(m["memory_in_channels"], 8);
    assert_eq!(m["saved_in_channels"], 4);
    assert!(
        m["saved_reload"]
            .as_str()
            .unwrap()
            .starts_with("ValueError: Cannot load"),
        "{m}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let (base_dir, adapter) = (
        format!("{CONTROL}/base"),
        format!("{CONTROL}/diffusers.safetensors"),
    );
    merge_fixtures(&base_dir, &adapter, &out, &["--quiet", "--expand-base"]);
    let weights = "diffusion_pytorch_model.safetensors";
    let got = read(&out.join(weights));
    let base = read(&fixture(&format!("{base_dir}/{weights}")));
    let want = read(&fixture(&format!(
        "{CONTROL}/diffusers_reference.safetensors"
    )));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>()
    );
    for (name, b) in &base {
        match want.get(name) {
            Some(w) => {
                assert_eq!(got[name].shape, w.shape, "{name}");
                // The base as the merge adds to it: [W0 | 0].
                let cols = w.shape[1];
                let mut padded = vec![0f32; w.shape[0] * cols];
                let old = b.shape[1];
                for (dst, src) in padded.chunks_mut(cols).zip(b.f32().chunks(old)) {
                    dst[..old].copy_from_slice(src);
                }
                assert_f32_close(name, &got[name].f32(), &w.f32(), &padded);
            }
            None => assert_eq!(got[name].data, b.data, "{name}: same bytes"),
        }
    }
    assert_eq!(base["x_embedder.weight"].shape, [16, 4]);
    let config = std::fs::read_to_string(fixture(&format!("{base_dir}/config.json"))).unwrap();
    let expected = config
        .replace("\"in_channels\": 4,", "\"in_channels\": 8,")
        .replace("\"out_channels\": null,", "\"out_channels\": 4,");
    assert_ne!(expected, config);
    assert_eq!(
        std::fs::read_to_string(out.join("config.json")).unwrap(),
        expected
    );
}

/// BFL's control LoRA (diffusion9's file: BFL names, `lora_B.bias`, norm scales) into the
/// un-widened lone file: with `--expand-base` it merges as the reference diffusion9 computed
/// on `[W0 | 0]`.
#[test]
fn bfl_control_lora_merges_into_the_unwidened_file_with_expand_base() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let folder = "diffusion9/flux_control";
    merge_fixtures(
        &format!("{folder}/base.safetensors"),
        &format!("{folder}/bfl.safetensors"),
        &out,
        &["--quiet", "--expand-base"],
    );
    let got = read(&out);
    let want = read(&fixture(&format!("{folder}/bfl_reference.safetensors")));
    let wide = read(&fixture(&format!("{folder}/base_wide.safetensors")));
    for (name, w) in &want {
        assert_f32_close(name, &got[name].f32(), &w.f32(), &wide[name].f32());
    }
    assert_eq!(got["x_embedder.weight"].shape, [16, 8]);
}

/// `check` says what each loader does with the control LoRA on its base: diffusers widens and
/// applies all of it; ComfyUI's `calculate_weight` fails to reshape `x_embedder`'s ΔW, logs it
/// and leaves the weight (MANIFEST `comfy`, that code run on the file): `comfy.shape`, silent.
#[test]
fn check_says_comfy_leaves_the_control_x_embedder_and_diffusers_widens_it() {
    let m = &manifest_of(CONTROL)["diffusers"];
    assert_eq!(m["diffusers"], "loaded");
    assert!(m["comfy"]["x_embedder"]
        .as_str()
        .unwrap()
        .starts_with("RuntimeError: shape '[16, 4]' is invalid"));
    assert_eq!(m["comfy"]["unchanged"], true);
    let file = fixture(&format!("{CONTROL}/diffusers.safetensors"));
    let base = fixture(&format!("{CONTROL}/base"));
    let (_, r) = check_json(&file, &["--target", "comfy", "--base", s(&base)]);
    let t = &r["targets"][0];
    assert_eq!(verdict_rules(t), vec!["comfy.shape".to_owned()], "{t}");
    assert_eq!(
        (&t["loads"], &t["applies_all"]),
        (&true.into(), &false.into())
    );
    let (_, r) = check_json(&file, &["--target", "diffusers", "--base", s(&base)]);
    let t = &r["targets"][0];
    assert!(verdict_rules(t).is_empty(), "{t}");
    assert_eq!(t["applies_all"], true, "{t}");
}

const Z_IMAGE: &str = "diffusion12/z_image_lokr";
const Z_CASES: [&str; 3] = ["saved", "saved_nometa", "aitk_w2ab"];

/// Every LoKr file merges as the f64 reference of its producer's scale (alpha/r from the
/// metadata for `saved`, 1 without it, alpha/r of the decomposed `lokr_w2` for ai-toolkit's),
/// and diffusers' fuse matched each.
#[test]
fn z_image_lokr_files_merge_with_the_scale_their_loader_applies() {
    let m = manifest_of(Z_IMAGE);
    for case in Z_CASES {
        let rec = &m[case];
        assert_eq!(rec["diffusers"], "loaded", "{case}: {rec}");
        assert_eq!(rec["not_applied"], serde_json::json!([]), "{case}");
        assert!(
            rec["fuse_max_diff"].as_f64().unwrap() < 1e-6,
            "{case}: {rec}"
        );
        merges_as_reference_on(Z_IMAGE, "base.safetensors", case, false);
    }
    // The metadata's scale is not the one without it: the two references differ.
    let a = read(&fixture(&format!("{Z_IMAGE}/saved_reference.safetensors")));
    let b = read(&fixture(&format!(
        "{Z_IMAGE}/saved_nometa_reference.safetensors"
    )));
    assert!(max_abs_diff(&a, &b) > 0.01);
}

/// With the Z-Image base, `check --target diffusers` says each LoKr file loads and applies all.
#[test]
fn check_with_the_z_image_base_says_the_lokr_files_apply() {
    let base = fixture(&format!("{Z_IMAGE}/base.safetensors"));
    for case in Z_CASES {
        let file = fixture(&format!("{Z_IMAGE}/{case}.safetensors"));
        let (_, r) = check_json(&file, &["--target", "diffusers", "--base", s(&base)]);
        let t = &r["targets"][0];
        assert!(verdict_rules(t).is_empty(), "{case}: {t}");
        assert_eq!(t["applies_all"], true, "{case}: {t}");
    }
}

/// (family under diffusion12/mixins, cases).
const MIXINS: [(&str, &[&str]); 3] = [
    ("helios", &["diffusers"]),
    ("skyreels_v2", &["diffusers"]),
    ("ernie_image", &["diffusers", "peft"]),
];

/// Loaders with no family in lorakit: each file merges as the reference and as diffusers fused
/// it, and `check --target diffusers` (with and without the base) says it applies all — an
/// ERNIE-Image file under `base_model.model.` included, which its loader renames (it was
/// `diffusers.prefix`, "nothing applied").
#[test]
fn converterless_loaders_merge_and_check_as_diffusers_did() {
    for (family, cases) in MIXINS {
        let folder = format!("diffusion12/mixins/{family}");
        let m = manifest_of(&folder);
        let base = fixture(&format!("{folder}/base.safetensors"));
        for case in cases.iter() {
            let rec = &m[case];
            assert_eq!(rec["diffusers"], "loaded", "{family}/{case}: {rec}");
            assert_eq!(rec["not_applied"], serde_json::json!([]));
            assert!(rec["fuse_max_diff"].as_f64().unwrap() < 1e-6, "{rec}");
            merges_as_reference_on(&folder, "base.safetensors", case, false);
            let file = fixture(&format!("{folder}/{case}.safetensors"));
            for extra in [&[][..], &["--base", s(&base)][..]] {
                let (_, r) = check_json(&file, &[&["--target", "diffusers"][..], extra].concat());
                let t = &r["targets"][0];
                assert!(verdict_rules(t).is_empty(), "{family}/{case}: {t}");
                assert_eq!(t["applies_all"], true, "{family}/{case}: {t}");
                assert!(!fired(t).contains(&"diffusers.prefix".to_owned()));
            }
        }
    }
}
