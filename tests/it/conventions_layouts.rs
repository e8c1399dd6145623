//! LoRAs named in a diffusion transformer's original layout merged into the model saved by
//! diffusers, and diffusers-named LoRAs merged into the original single file, for the models
//! beyond Flux and Wan (`src/adapter/mapping/layouts/table.rs`). Each fixture folder's generator
//! (`fixtures/gen/<model>_layout_fixtures.py`) builds a tiny model with diffusers itself, saves it
//! in both layouts (diffusers' checkpoint converter read backwards, checked forwards) and gives
//! the reference: diffusers' own `load_lora_weights` + `fuse_lora` where diffusers loads the file,
//! else the converter's arithmetic in f64 (MANIFEST.json says which).
//!
//! - SD3 / SD3.5 (`fixtures/sd3_layout/`): kohya sd-scripts' `lora_unet_joint_blocks_N_…` and
//!   ComfyUI's `diffusion_model.joint_blocks.N.…` on the diffusers layout (fused `qkv` over
//!   `to_q/to_k/to_v`, `add_*_proj`, SD3.5's `attn2`; the last block's context modulation and the
//!   final one with their halves swapped, the other blocks' not), and ai-toolkit's
//!   `transformer.transformer_blocks.N.…` on the original layout.
//! - Flux.2 (`fixtures/flux2_layout/`): BFL names (`diffusion_model.` and `lora_unet_` files) on
//!   the diffusers layout, where Flux.2 names apart what Flux shares (`ff.linear_in`, a whole
//!   `to_qkv_mlp_proj`), and diffusers names on BFL's file; the final modulation swapped, against
//!   diffusers' LoRA converter (see the test).
//! - HunyuanVideo (`fixtures/hunyuan_video_layout/`): original names (`lora_unet_` and dotted) on
//!   the diffusers layout, the token refiner included, and diffusers names on the original file.
//! - Z-Image (`fixtures/z_image_layout/`): both directions, the fused `qkv` of the layers and
//!   refiners, and a final modulation that shares Flux's original name but is not swapped.

use super::check::check_json;
use super::common::*;
use super::conventions_common::{
    converted_merges_as_original, manifest_of, merges_as_reference_in,
};

/// kohya sd-scripts' SD3.5 file on the diffusers layout: every fused `qkv` split over its three
/// tensors, the renamed projections, MLPs, embedders and the 2×2 patch-embedding conv; block 0's
/// context modulation whole and in order, block 1's (the last, `context_pre_only`) and the final
/// one with lora_up's halves swapped. diffusers' SD3 loader converts none of these names (it
/// loaded nothing: MANIFEST.json), so the reference is its checkpoint converter run on the
/// original weights plus each ΔW in f64.
#[test]
fn kohya_sd3_lands_on_the_diffusers_layout_as_the_converter_splits_it() {
    let m = manifest_of("sd3_layout");
    assert_eq!(m["kohya"]["diffusers_loaded"], serde_json::json!([]));
    assert_eq!(m["kohya"]["changed"].as_array().unwrap().len(), 22);
    merges_as_reference_in("sd3_layout", "base.safetensors", "kohya");
}

/// ComfyUI's dotted names (`diffusion_model.joint_blocks.N.…`, lora_down/lora_up/alpha) on a
/// fused context `qkv` and the last block's swapped context modulation.
#[test]
fn comfyui_sd3_lands_on_the_diffusers_layout() {
    merges_as_reference_in("sd3_layout", "base.safetensors", "comfy");
}

/// The other way: ai-toolkit's diffusers names on the original single file land on their rows of
/// the fused `qkv` tensors and with the last block's and the final modulation's halves swapped
/// back; the reference is diffusers' own fuse (it loaded every module) brought to the original
/// layout.
#[test]
fn ai_toolkit_sd3_lands_on_the_original_layout() {
    let m = manifest_of("sd3_layout");
    assert_eq!(m["aitk"]["diffusers_loaded"].as_array().unwrap().len(), 9);
    merges_as_reference_in("sd3_layout", "orig_base.safetensors", "aitk");
}

/// lorakit merges SD3's original names, but diffusers' SD3 pipeline does not convert them
/// (`SD3LoraLoaderMixin.lora_state_dict` has no converter): it loaded nothing of the kohya file
/// and refused the ComfyUI one (MANIFEST.json). `check --target diffusers` must not say it
/// applies either, nor read the kohya file as one the Flux converter takes (whose modules outside
/// the blocks it would then name as dropped).
#[test]
fn check_does_not_say_diffusers_applies_original_sd3_names() {
    let m = manifest_of("sd3_layout");
    assert!(m["comfy"]["diffusers_loaded"]
        .as_str()
        .is_some_and(|e| e.starts_with("ValueError")));
    for file in ["kohya", "comfy"] {
        let (_, v) = check_json(
            &fixture(&format!("sd3_layout/{file}.safetensors")),
            &["--target", "diffusers"],
        );
        let t = &v["targets"][0];
        assert_eq!(t["applies_all"], serde_json::json!(false), "{file}: {t}");
        let rules: Vec<&str> = t["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["rule"].as_str())
            .collect();
        assert!(
            !rules.contains(&"diffusers.flux_kohya_global"),
            "{file}: {t}"
        );
        // What diffusers did: the ComfyUI file (its `.alpha` keys lack `lora`) raised, so the
        // verdict is a refusal; the kohya file loaded nothing, so every module is named as not
        // applied (no SDXL key rule, which named 2 of its 16).
        let (rule, loads) = if file == "comfy" {
            ("diffusers.sd3_invalid", false)
        } else {
            ("diffusers.sd3_unconverted", true)
        };
        assert_eq!(rules, [rule], "{file}: {t}");
        assert_eq!(t["loads"], loads, "{file}: {t}");
        let named = t["findings"][0]["items"].as_array().unwrap().len();
        let inspected = inspect_json(&fixture(&format!("sd3_layout/{file}.safetensors")), &[]);
        assert_eq!(
            named,
            inspected["modules"].as_array().unwrap().len(),
            "{file}"
        );
    }
    assert_eq!(m["kohya"]["diffusers_loaded"], serde_json::json!([]));
}

/// Flux.2's `diffusion_model.` file (the names diffusers' `_convert_non_diffusers_flux2_lora_to_
/// diffusers` reads) on the diffusers layout: Flux's split `qkv`, but `img_mlp.0` on
/// `ff.linear_in`, `linear1` whole on `attn.to_qkv_mlp_proj`, `time_in` on `time_guidance_embed`,
/// a shared modulation, and the final modulation with its halves swapped.
///
/// On that last one diffusers' LoRA converter is wrong and lorakit does not follow it: the
/// converter renames `final_layer.adaLN_modulation.1` to `norm_out.linear` without the
/// `swap_scale_shift` its own checkpoint converter applies to the same tensor (BFL stores
/// (shift, scale); diffusers' `AdaLayerNormContinuous` reads (scale, shift)), so its fuse adds the
/// shift rows' ΔW to the scale rows. The generator measured it on the tiny model (MANIFEST.json
/// `diffusers_norm_out`): diffusers' fused `norm_out.linear` is the unswapped `W + B·A` to 3e-8
/// and 0.18 away from the checkpoint converter's `convert(W_bfl + B·A)`, the diffusers model of
/// the checkpoint the LoRA was trained to change. The reference for that tensor is the latter
/// (f64), for every other tensor diffusers' own fuse.
#[test]
fn flux2_original_names_land_on_the_diffusers_layout() {
    let m = manifest_of("flux2_layout");
    let ev = &m["comfy"]["diffusers_norm_out"];
    assert!(ev["diffusers_fuse_minus_unswapped"].as_f64().unwrap() < 1e-6);
    assert!(
        ev["diffusers_fuse_minus_checkpoint_converter"]
            .as_f64()
            .unwrap()
            > 1e-2
    );
    assert_eq!(
        m["comfy"]["reference_f64"],
        serde_json::json!(["norm_out.linear.weight"])
    );
    merges_as_reference_in("flux2_layout", "base.safetensors", "comfy");
}

/// Flux.2's `lora_unet_` file: diffusers' `_convert_kohya_flux2_lora_to_diffusers` loads the
/// blocks, `time_in` and `final_layer.linear` (diffusers' fuse is their reference) and drops the
/// shared modulation and the final modulation ("Unsupported keys"), which lorakit merges as the
/// checkpoint converter maps them (f64 reference).
#[test]
fn flux2_kohya_names_land_on_the_diffusers_layout() {
    let m = manifest_of("flux2_layout");
    assert_eq!(
        m["kohya"]["reference_f64"],
        serde_json::json!([
            "double_stream_modulation_txt.linear.weight",
            "norm_out.linear.weight"
        ])
    );
    merges_as_reference_in("flux2_layout", "base.safetensors", "kohya");
}

/// The other way: diffusers names on Flux.2's original single file, with the final modulation's
/// halves swapped back; the reference is diffusers' fuse brought to BFL's layout.
#[test]
fn flux2_diffusers_names_land_on_the_original_layout() {
    merges_as_reference_in("flux2_layout", "orig_base.safetensors", "aitk");
}

/// HunyuanVideo's original names (musubi-tuner / kohya `lora_unet_…`) on the diffusers layout:
/// the double block's fused `img_attn_qkv`/`txt_attn_qkv` and the token refiner's `self_attn_qkv`
/// split in three, `linear1` in q, k, v and the MLP input, the refiner's modulation renamed whole,
/// the final one swapped. diffusers 0.42.1's own loader raises on these files (its converter
/// `torch.chunk`s the scalar `.alpha` of a `qkv` module: MANIFEST.json), so the reference is its
/// checkpoint converter's arithmetic in f64.
#[test]
fn hunyuan_video_original_names_land_on_the_diffusers_layout() {
    let m = manifest_of("hunyuan_video_layout");
    for case in ["kohya", "comfy"] {
        assert!(
            m[case]["diffusers_loaded"]
                .as_str()
                .is_some_and(|e| e.starts_with("RuntimeError")),
            "{case}"
        );
    }
    assert_eq!(m["kohya"]["changed"].as_array().unwrap().len(), 27);
    merges_as_reference_in("hunyuan_video_layout", "base.safetensors", "kohya");
    // ComfyUI's dotted names: the underscored `img_attn_qkv` is HunyuanVideo's own row.
    merges_as_reference_in("hunyuan_video_layout", "base.safetensors", "comfy");
}

/// The other way: diffusers names on HunyuanVideo's original single file (the refiner's `to_k`
/// a row slice of its `self_attn_qkv`, `proj_mlp` the last rows of `linear1`); the reference is
/// diffusers' own fuse brought to the original layout.
#[test]
fn hunyuan_video_diffusers_names_land_on_the_original_layout() {
    merges_as_reference_in("hunyuan_video_layout", "orig_base.safetensors", "aitk");
}

/// Z-Image's original names (`lora_unet_layers_0_attention_qkv`, both refiners' `qkv`,
/// `attention.out`, `x_embedder`, the final layer) on the diffusers layout, against the
/// checkpoint converter in f64; diffusers' own fuse agrees on the block modules it loads (to 6e-8,
/// MANIFEST.json) and drops the others. Z-Image's final `adaLN_modulation.1` is a scale alone, on
/// `all_final_layer.2-1.adaLN_modulation.1` whole: the swap of Flux's row of the same original
/// path must not reach it.
#[test]
fn z_image_original_names_land_on_the_diffusers_layout() {
    let m = manifest_of("z_image_layout");
    assert!(m["kohya"]["diffusers_fuse_max_diff"].as_f64().unwrap() < 1e-6);
    assert_eq!(m["kohya"]["diffusers_loaded"].as_array().unwrap().len(), 10);
    merges_as_reference_in("z_image_layout", "base.safetensors", "kohya");
}

/// The other way: diffusers names on Z-Image's original single file (row slices of the fused
/// `qkv`, the renamed embedder and final modulation, unswapped); diffusers' own fuse brought to
/// the original layout.
#[test]
fn z_image_diffusers_names_land_on_the_original_layout() {
    merges_as_reference_in("z_image_layout", "orig_base.safetensors", "aitk");
}

/// `convert --to peft --base` of kohya's SD3.5 file (its fused `qkv` modules split over three
/// tensors, its final modulation's lora_up halves swapped): each such module written as one
/// module per tensor, `B`'s rows in the tensor's order over the shared `A` (refused before,
/// rev16c F7); the converted adapter's merge equals the original's bit for bit.
#[test]
fn kohya_sd3_converts_one_module_per_split_tensor() {
    let base = fixture("sd3_layout/base.safetensors");
    let (_, merged) = converted_merges_as_original(&base, &fixture("sd3_layout/kohya.safetensors"));
    let base = read(&base);
    let changed = merged
        .iter()
        .filter(|(k, t)| t.data != base[*k].data)
        .count();
    assert_eq!(changed, 22, "every tensor the kohya file changes");
}
