//! What `fixtures/gen/check_diffusers_formats_sweep.py` found, on files written the way their
//! trainers write them (`fixtures/gen/diffusers_formats_fixtures.py`, `fixtures/diffusers_formats/`),
//! merged into the diffusers layout of the model and compared with diffusers 0.42.1's own fused
//! weights (`load_lora_weights` + `fuse_lora`):
//!
//! - a kohya sd-scripts Flux module on BFL's fused `img_attn.qkv` lands on diffusers' separate
//!   `to_q`/`to_k`/`to_v`, each the matching rows of lora_up times the shared lora_down (also the
//!   block-diagonal `split_qkv` layout, and `single_blocks.N.linear1` over q, k, v and `proj_mlp`);
//! - the other way, ai-toolkit's diffusers names on a BFL single file land on their rows of the
//!   fused `img_attn.qkv` / `linear1`, as diffusers' split reads them;
//! - XLabs-AI x-flux's processor keys are read as the layers they adapt;
//! - musubi-tuner's Wan names land on diffusers' Wan names;
//! - `check --target diffusers` says diffusers applies these files (it flagged every kohya Flux
//!   module as a lost UNet key) and names the kohya Flux modules outside the blocks diffusers drops.

use super::check::check_json;
use super::common::*;
use super::conventions_common::{
    converted_merges_as_original, manifest_of, merge_alike, merges_as_reference_in,
};
use std::path::Path;

fn manifest() -> serde_json::Value {
    manifest_of("diffusers_formats")
}

/// [`merges_as_reference_in`] on `diffusers_formats/`: `{adapter}` merged into `{base_name}`
/// against `{adapter}_reference`, the tensors diffusers changed (MANIFEST.json).
fn merges_as_reference(base_name: &str, adapter: &str) {
    merges_as_reference_in("diffusers_formats", base_name, adapter)
}

/// kohya's `final_layer.adaLN_modulation.1` (BFL: shift rows, then scale) lands on diffusers'
/// `norm_out.linear` (scale, then shift) with lora_up's halves swapped, as diffusers' own
/// converter and ComfyUI's `flux_to_diffusers` swap them (`fixtures/gen/flux_final_layer_fixtures.py`;
/// diffusers 0.42.1 itself drops the module, so its reference is the converter's arithmetic in
/// f64, and the block module beside it is diffusers' fuse).
#[test]
fn kohya_flux_final_modulation_lands_on_norm_out_with_its_halves_swapped() {
    let m = manifest_of("flux_final");
    assert_eq!(
        m["kohya"]["reference_f64"],
        serde_json::json!(["norm_out.linear.weight", "proj_out.weight"])
    );
    merges_as_reference_in("flux_final", "base.safetensors", "kohya");
}

/// The other way: ai-toolkit's `transformer.norm_out.linear` on a BFL single file lands on
/// `final_layer.adaLN_modulation.1` with its halves swapped back; the reference is diffusers'
/// fuse on the diffusers layout brought to BFL's.
#[test]
fn ai_toolkit_norm_out_lands_on_bfl_final_modulation_with_its_halves_swapped() {
    merges_as_reference_in("flux_final", "bfl_base.safetensors", "aitk");
}

/// `convert --base` renames each module to the base tensor it lands on; a module whose rows that
/// tensor holds in another order (kohya's BFL `final_layer.adaLN_modulation.1` on diffusers'
/// `norm_out.linear`, halves swapped) is written with its lora_up's rows in the tensor's order
/// (it was refused, rev16c F7): the converted adapter merges as the original does.
#[test]
fn convert_onto_a_base_reorders_a_module_with_swapped_halves() {
    let (conv, _) = converted_merges_as_original(
        &fixture("flux_final/base.safetensors"),
        &fixture("flux_final/kohya.safetensors"),
    );
    assert!(
        conv.contains_key("base_model.model.norm_out.linear.lora_B.weight"),
        "{:?}",
        conv.keys().collect::<Vec<_>>()
    );
}

/// `convert --to diffusers --base` of sd-scripts' Flux file (`lora_unet_double_blocks_…`): its
/// modules go under `transformer.`, the component `FluxPipeline` loads (they went under `unet.`,
/// which its loader leaves unread), each fused qkv split onto the diffusers layout's
/// to_q/to_k/to_v, and the file merges bit for bit as the original does. Onto the BFL single
/// file, whose module names no diffusers pipeline uses, it is refused and nothing written.
#[test]
fn kohya_flux_converts_to_diffusers_under_the_transformer() {
    let src = fixture("diffusers_formats/flux_kohya.safetensors");
    converts_under_the_transformer(
        "diffusers_formats/flux_base.safetensors",
        &src,
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
    );
    let dir = tempfile::tempdir().unwrap();
    // The modules the BFL fixture holds tensors for.
    let mut on_bfl = read(&src);
    on_bfl.retain(|k, _| k.contains("_attn_"));
    let on_bfl_src = dir.path().join("on_bfl.safetensors");
    write_tensors(&on_bfl_src, &on_bfl);
    let bfl = fixture("diffusers_formats/flux_bfl_base.safetensors");
    let refused_out = dir.path().join("bfl.safetensors");
    let line = refused(
        convert_args(&on_bfl_src, "diffusers", &refused_out, &["--base", s(&bfl)]),
        &refused_out,
    );
    assert!(
        line.contains("holds `double_blocks.0.") && line.contains("original single-file layout"),
        "{line}"
    );
}

/// A musubi-tuner Qwen-Image file (`lora_unet_img_in`, `lora_unet_txt_in`: BFL Flux's original
/// names, and Qwen-Image's own diffusers ones) converts onto its diffusers base under
/// `transformer.` and merges as the original (rev19 review: refused as an original layout).
#[test]
fn qwen_image_modules_named_as_bfl_originals_convert_to_diffusers() {
    converts_under_the_transformer(
        "diffusion8/qwen_image/base.safetensors",
        &fixture("diffusion8/qwen_image/kohya.safetensors"),
        "transformer.img_in.lora_A.weight",
    );
}

/// `convert --to diffusers --base {base}` (under `fixtures/`) of `src`: every key under
/// `transformer.`, `key` among them, and the file merges bit for bit as `src` does.
fn converts_under_the_transformer(base: &str, src: &Path, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture(base);
    let out = dir.path().join("diffusers.safetensors");
    run_ok(convert_args(
        src,
        "diffusers",
        &out,
        &["--base", s(&base), "--quiet"],
    ));
    let conv = read(&out);
    assert!(
        conv.contains_key(key) && conv.keys().all(|k| k.starts_with("transformer.")),
        "{:?}",
        conv.keys().collect::<Vec<_>>()
    );
    merge_alike(&base, src, &out);
}

#[test]
fn kohya_flux_fused_qkv_lands_on_diffusers_split_weights() {
    merges_as_reference("flux_base.safetensors", "flux_kohya");
}

#[test]
fn kohya_flux_split_qkv_layout_lands_on_diffusers_split_weights() {
    merges_as_reference("flux_base.safetensors", "flux_kohya_split");
}

#[test]
fn kohya_flux_linear1_splits_over_q_k_v_and_the_mlp() {
    merges_as_reference("flux_base.safetensors", "flux_linear1");
}

#[test]
fn xlabs_flux_processors_land_on_their_layers() {
    merges_as_reference("flux_base.safetensors", "flux_xlabs");
}

#[test]
fn ai_toolkit_flux_names_land_on_rows_of_bfl_fused_weights() {
    merges_as_reference("flux_bfl_base.safetensors", "flux_aitk");
}

#[test]
fn musubi_wan_names_land_on_diffusers_wan_names() {
    merges_as_reference("wan_base.safetensors", "wan_musubi");
}

/// The diffusers target's report on `fixtures/diffusers_formats/{file}`: (exit code, target).
fn diffusers_check(file: &str) -> (i32, serde_json::Value) {
    let (code, v) = check_json(
        &fixture(&format!("diffusers_formats/{file}")),
        &["--target", "diffusers"],
    );
    (code, v["targets"][0].clone())
}

#[test]
fn check_says_diffusers_applies_trainer_layouts_it_converts() {
    let m = manifest();
    for (file, case) in [
        ("flux_kohya.safetensors", "flux_kohya"),
        ("flux_kohya_split.safetensors", "flux_kohya_split"),
        ("flux_xlabs.safetensors", "flux_xlabs"),
        ("wan_musubi.safetensors", "wan_musubi"),
    ] {
        // diffusers loaded a LoRA layer on every tensor the reference shows changed.
        let loaded = m[case]["diffusers_loaded"].as_array().unwrap().len();
        assert_eq!(
            loaded,
            m[case]["changed"].as_array().unwrap().len(),
            "{case}"
        );
        let (code, t) = diffusers_check(file);
        assert_eq!(
            (code, &t["loads"], &t["applies_all"]),
            (0, &true.into(), &true.into()),
            "{file}: {t}"
        );
    }
}

#[test]
fn check_names_the_kohya_flux_modules_diffusers_drops() {
    let loaded = &manifest()["flux_kohya_global"]["diffusers_loaded"];
    assert_eq!(
        loaded,
        &serde_json::json!(["transformer_blocks.0.attn.to_out.0"])
    );
    let (code, t) = diffusers_check("flux_kohya_global.safetensors");
    assert_eq!(code, 1, "{t}");
    assert_eq!(t["applies_all"], false);
    let f = entry(&t["findings"], "rule", "diffusers.flux_kohya_global");
    assert_eq!(f["items"], serde_json::json!(["lora_unet_img_in"]));
}

/// A fused module whose split tensors are not all in the base (`to_v` missing) is refused by
/// module, naming the tensor it needs; nothing is written. Onto the whole base, `convert --to
/// peft` writes a split module as one module per tensor (`B`'s row bands over the shared `A`,
/// as diffusers' `_convert_to_ai_toolkit_cat` writes it; it was refused, rev16c F7), whose merge
/// equals the original's bit for bit.
#[test]
fn a_split_module_missing_a_part_is_refused_by_module() {
    let dir = tempfile::tempdir().unwrap();
    let base = read(&fixture("diffusers_formats/flux_base.safetensors"));
    let kept: Vec<(&str, safetensors::Dtype, &[usize], &[u8])> = base
        .iter()
        .filter(|(n, _)| n.as_str() != "transformer_blocks.0.attn.to_v.weight")
        .map(|(n, t)| (n.as_str(), t.dtype, t.shape.as_slice(), t.data.as_slice()))
        .collect();
    let partial = dir.path().join("partial.safetensors");
    write_views(&partial, &kept);
    let adapter = fixture("diffusers_formats/flux_kohya_split.safetensors");
    let out = dir.path().join("merged.safetensors");
    let err = merge_refused(&partial, &adapter, &out, &["--quiet"]);
    assert!(
        err.contains("lora_unet_double_blocks_0_img_attn_qkv")
            && err.contains("transformer_blocks.0.attn.to_v.weight"),
        "{err}"
    );
    let (conv, _) = converted_merges_as_original(
        &fixture("diffusers_formats/flux_base.safetensors"),
        &adapter,
    );
    let names: Vec<&String> = conv
        .keys()
        .filter(|k| k.contains("transformer_blocks.0.attn.to_") && k.ends_with("lora_B.weight"))
        .collect();
    assert!(names.len() >= 3, "{names:?}");
}

/// Code that reads a module's base weight as the module's own `[out, in]` — `check --fix
/// --dora-rank` (DoRA norms per output row) and `convert --base` of a PiSSA adapter (the
/// residual PEFT removed) — refuses a module whose rows the base tensor holds in another order
/// (ai-toolkit's `norm_out.linear` on BFL's swapped `final_layer.adaLN_modulation.1`), naming
/// it, instead of computing on misplaced rows; `check` reports the placement as `module_rows`.
#[test]
fn base_weight_readers_refuse_a_module_whose_rows_the_tensor_reorders() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("flux_final/bfl_base.safetensors");
    let (o, i, r) = (32usize, 16usize, 2usize);
    let vals = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|j| ((j as f32) * k).sin()).collect() };
    let m = "norm_out.linear";
    let mut tensors = vec![
        (
            format!("base_model.model.{m}.lora_A.weight"),
            vec![r, i],
            f32_bytes(&vals(r * i, 0.7)),
        ),
        (
            format!("base_model.model.{m}.lora_B.weight"),
            vec![o, r],
            f32_bytes(&vals(o * r, 0.3)),
        ),
    ];
    let plain = dir.path().join("plain");
    write_peft_adapter(
        &plain,
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["norm_out.linear"], "init_lora_weights": "pissa"}"#,
        &tensors,
    );
    tensors.push((
        format!("base_model.model.{m}.lora_magnitude_vector"),
        vec![o],
        f32_bytes(&vec![1.5; o]),
    ));
    let dora = dir.path().join("dora");
    write_peft_adapter(
        &dora,
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["norm_out.linear"], "use_dora": true}"#,
        &tensors,
    );
    let (_, report) = super::check::check_json(&dora, &["--base", s(&base)]);
    let p = &report["modules"][0];
    assert_eq!(
        (p["status"].as_str(), p["base_tensor"].as_str()),
        (
            Some("module_rows"),
            Some("final_layer.adaLN_modulation.1.weight")
        ),
        "{report}"
    );
    let fixed = dir.path().join("fixed");
    let o1 = bin()
        .args(check_fix_args(
            &dora,
            Some(&base),
            &fixed,
            &["--dora-rank", "4"],
        ))
        .output()
        .unwrap();
    let converted = dir.path().join("converted");
    let o2 = bin()
        .args(convert_args(
            &plain,
            "peft",
            &converted,
            &["--base", s(&base)],
        ))
        .output()
        .unwrap();
    for (o, out) in [(o1, &fixed), (o2, &converted)] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.lines().count() == 1
                && err.contains("`norm_out.linear`")
                && err.contains("rows 16..32, 0..16"),
            "{err}"
        );
        assert!(!out.exists());
    }
}

/// A module split over several tensors is one module merged: `merge --json` counts modules
/// (`modules_merged` equals `inspect`'s module count), not the tensors they land on.
#[test]
fn a_split_module_counts_once_in_modules_merged() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("diffusers_formats/flux_kohya.safetensors");
    let base = fixture("diffusers_formats/flux_base.safetensors");
    let out = dir.path().join("m.safetensors");
    let o = bin()
        .args(merge_args(&base, &adapter, &out, &["--json"]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let inspected = inspect_json(&adapter, &[]);
    let modules = inspected["modules"].as_array().unwrap().len();
    assert_eq!(modules, 5);
    assert_eq!(report["adapters"][0]["modules_merged"], modules, "{report}");
    // Its two fused qkv modules land on three tensors each: 9 tensors merged.
    assert_eq!(report["tensors_merged_count"], 9, "{report}");
}

/// Writes `src` without the tensors whose names contain any of `drop`, as F32.
fn without(src: &std::path::Path, dst: &std::path::Path, drop: &[&str]) {
    let t = read(src);
    let mut names: Vec<&String> = t
        .keys()
        .filter(|n| !drop.iter().any(|d| n.contains(d)))
        .collect();
    names.sort();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .into_iter()
        .map(|n| (n.clone(), t[n].shape.clone(), f32_bytes(&t[n].f32())))
        .collect();
    write_all_as(dst, safetensors::Dtype::F32, &tensors, None);
}

/// The halves are swapped only on a base recognized as a model whose layouts swap them (Flux,
/// Flux.2, SD3, HunyuanVideo): OmniGen and CogVideoX map `final_layer.adaLN_modulation.1` to
/// `norm_out.linear` unswapped, so on a base with neither double/single-stream nor joint blocks
/// the module is refused by name (`unknown_order`), both ways. And a module whose path only ends
/// like `norm_out.linear` (HunyuanVideo's token refiner's) never lands on the final modulation.
#[test]
fn the_final_modulation_swaps_only_on_a_recognized_model() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.safetensors");
    without(
        &fixture("flux_final/base.safetensors"),
        &other,
        &["single_transformer_blocks."],
    );
    let other_orig = dir.path().join("other_orig.safetensors");
    without(
        &fixture("flux_final/bfl_base.safetensors"),
        &other_orig,
        &["double_blocks.", "single_blocks."],
    );
    let refiner = dir.path().join("refiner.safetensors");
    let (a, b) = (f32_bytes(&[0.5; 2 * 16]), f32_bytes(&[0.25; 32 * 2]));
    let m = "transformer.context_embedder.token_refiner.refiner_blocks.0.norm_out.linear";
    write_all_as(
        &refiner,
        safetensors::Dtype::F32,
        &[
            (format!("{m}.lora_A.weight"), vec![2, 16], a),
            (format!("{m}.lora_B.weight"), vec![32, 2], b),
        ],
        None,
    );
    let cases = [
        (
            other,
            fixture("flux_final/kohya.safetensors"),
            "lora_unet_final_layer_adaLN_modulation_1",
            true,
        ),
        (
            other_orig,
            fixture("flux_final/aitk.safetensors"),
            "transformer.norm_out.linear",
            true,
        ),
        (
            fixture("flux_final/bfl_base.safetensors"),
            refiner,
            m,
            false,
        ),
    ];
    for (i, (base, adapter, module, order)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("m{i}.safetensors"));
        let o = bin()
            .args(merge_args(base, adapter, &out, &[]))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{module}: {err}");
        assert!(err.contains(&format!("`{module}`")), "{err}");
        assert_eq!(err.contains("not recognized"), *order, "{err}");
        assert!(!out.exists());
    }
}

/// A diffusers `to_k` lands on the middle third of BFL's fused `img_attn.qkv` only when that
/// tensor is exactly three parts of its rows (q, k, v in equal thirds, as every converter splits
/// it): a fused tensor of 47 or 51 rows is refused by module, not written into rows 16..32.
#[test]
fn a_middle_part_needs_a_fused_tensor_of_exactly_three_parts() {
    let dir = tempfile::tempdir().unwrap();
    let src = read(&fixture("diffusers_formats/flux_bfl_base.safetensors"));
    for rows in [47usize, 51] {
        let mut names: Vec<&String> = src.keys().collect();
        names.sort();
        let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = names
            .into_iter()
            .map(|n| {
                let t = &src[n];
                if n == "double_blocks.0.img_attn.qkv.weight" {
                    let cols = t.shape[1];
                    let mut v = t.f32();
                    v.resize(rows * cols, 0.125);
                    (n.clone(), vec![rows, cols], f32_bytes(&v))
                } else {
                    (n.clone(), t.shape.clone(), f32_bytes(&t.f32()))
                }
            })
            .collect();
        let base = dir.path().join(format!("bfl{rows}.safetensors"));
        write_all_as(&base, safetensors::Dtype::F32, &tensors, None);
        let out = dir.path().join(format!("m{rows}.safetensors"));
        let aitk = fixture("diffusers_formats/flux_aitk.safetensors");
        let o = bin()
            .args(merge_args(&base, &aitk, &out, &[]))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{rows}: {err}");
        assert!(err.contains("transformer_blocks.0.attn.to_k"), "{err}");
        assert!(!out.exists());
    }
}
