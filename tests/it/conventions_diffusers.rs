//! What `fixtures/gen/check_diffusers_sweep.py` found, on fixtures the real diffusers 0.42.1
//! wrote (`fixtures/gen/diffusers_sweep_fixtures.py`, `fixtures/diffusers_sweep/`):
//!
//! - a diffusers file's `transformer.context_embedder.time_text_embed.…` (HunyuanVideo, whose
//!   token refiner holds its own `time_text_embed`) lands on that module, as diffusers' fuse does,
//!   not "ambiguous" with the top-level `time_text_embed.…`;
//! - `check --target diffusers` names the kohya UNet modules diffusers' key conversion sends
//!   nowhere (SDXL `add_embedding.linear_1/2` in diffusers' own kohya form), as diffusers' loaded
//!   modules (MANIFEST.json) show.

use super::check::check_json;
use super::common::*;

/// f32: within 1e-5 of the largest update or 4 f32 ulps of the largest weight, elementwise — the
/// sweep's bound (diffusers/PEFT round B·A and the sum in their own order).
fn assert_f32_close(name: &str, got: &[f32], want: &[f32], base: &[f32]) {
    let upd = want
        .iter()
        .zip(base)
        .map(|(w, b)| (w - b).abs() as f64)
        .fold(0.0, f64::max);
    let big = want.iter().map(|w| w.abs() as f64).fold(0.0, f64::max);
    let lim = 1e-5 * upd + 4.0 * f32::EPSILON as f64 * big;
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() as f64)
        .fold(0.0, f64::max);
    assert!(
        worst <= lim,
        "{name}: max |lorakit − diffusers| {worst:e} > {lim:e}"
    );
}

#[test]
fn a_longer_root_lands_on_the_module_diffusers_fuses() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged.safetensors");
    merge_fixtures(
        "diffusers_sweep/hunyuan_base.safetensors",
        "diffusers_sweep/hunyuan_lora.safetensors",
        &out,
        &["--quiet"],
    );
    let got = read(&out);
    let want = read(&fixture("diffusers_sweep/hunyuan_reference.safetensors"));
    let base = read(&fixture("diffusers_sweep/hunyuan_base.safetensors"));
    let mut changed = 0;
    for (name, w) in &want {
        let (w, b) = (w.f32(), base[name].f32());
        changed += usize::from(w != b);
        assert_f32_close(name, &got[name].f32(), &w, &b);
    }
    // Both roots' linear_1 and linear_2 weights: the test sees the ambiguous pair.
    assert_eq!(changed, 4, "diffusers changed four weights");
}

#[test]
fn check_names_the_kohya_unet_modules_diffusers_reads_elsewhere() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("diffusers_sweep/MANIFEST.json")).unwrap())
            .unwrap();
    let case = &manifest["sdxl_kohya_add_embedding"];
    let dropped: Vec<String> = case["diffusers_dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("lora_unet_{}", m.as_str().unwrap().replace('.', "_")))
        .collect();
    assert!(!dropped.is_empty());
    let adapter = fixture("diffusers_sweep/sdxl_kohya_add_embedding.safetensors");
    let (code, v) = check_json(&adapter, &["--target", "diffusers"]);
    assert_eq!(code, 1, "diffusers did not apply every module");
    let t = &v["targets"][0];
    assert_eq!(t["applies_all"], false);
    let f = t["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "diffusers.unet_key")
        .expect("diffusers.unet_key fired");
    let mut named: Vec<&str> = f["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().split(' ').next().unwrap())
        .collect();
    named.sort();
    assert_eq!(named, dropped, "exactly the modules diffusers did not load");
    let n =
        case["file_modules"].as_u64().unwrap() - case["diffusers_loaded_modules"].as_u64().unwrap();
    assert_eq!(named.len() as u64, n);
}
