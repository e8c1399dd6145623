//! What `fixtures/gen/check_diffusers_sweep.py` found, on fixtures the real diffusers 0.42.1
//! wrote (`fixtures/gen/diffusers_sweep_fixtures.py`, `fixtures/diffusers_sweep/`):
//!
//! - a diffusers file's `transformer.context_embedder.time_text_embed.…` (HunyuanVideo, whose
//!   token refiner holds its own `time_text_embed`) lands on that module, as diffusers' fuse does,
//!   not "ambiguous" with the top-level `time_text_embed.…`.

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
