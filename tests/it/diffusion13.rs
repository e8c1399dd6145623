//! ComfyUI key forms on Flux that lorakit refused after diffusion12 (`fixtures/diffusion13/`,
//! `fixtures/gen/diffusion13_fixtures.py`; reference: a float64 transcription of ComfyUI's
//! `model_lora_keys_unet` key map and `LoRAAdapter.calculate_weight` on a tiny Flux, since
//! ComfyUI cannot be installed here):
//!
//! - ComfyUI's own `diffusion_model.single_blocks.N.linear1_qkv` (rows `[0, 3·hidden)` of
//!   `linear1`, the weight narrowed by the key map's offset);
//! - USO's processors (`comfy/lora_convert.py` `convert_uso_lora`: the double blocks as XLabs',
//!   a single block's `qkv_lora` → `linear1_qkv`, `proj_lora` → `linear2`);
//! - OneTrainer's `lora_transformer_` and SimpleTuner's `lycoris_` diffusers paths on the BFL
//!   layout ComfyUI loads (its Flux branch maps them through `flux_to_diffusers`' rows).
//!
//! Each into the BFL layout and (the first two) into the same model as diffusers saves it; and
//! diffusion-pipe HunyuanVideo and original ACE-Step 1.5 files on ComfyUI's layouts of those models.

use super::conventions_common::merges_as_reference_on;

const BFL: &str = "diffusion13/flux_comfy_bfl";
const DIFFUSERS: &str = "diffusion13/flux_comfy_diffusers";

/// `linear1_qkv` lands on `linear1`'s first 3·hidden rows (its MLP rows keep their bytes), and
/// on a diffusers base on `to_q`/`to_k`/`to_v`.
#[test]
fn comfy_linear1_qkv_lands_on_the_q_k_v_rows() {
    merges_as_reference_on(BFL, "base.safetensors", "comfy_qkv", false);
    merges_as_reference_on(DIFFUSERS, "base.safetensors", "comfy_qkv", false);
}

/// USO's six processors land where `convert_uso_lora` renames them. (No GPU comparison: its
/// lavapipe shader builds took 5 s here, over these tests' CI share; row slices on the GPU are
/// compared in conventions_slices and diffusion9.)
#[test]
fn uso_processors_merge_as_comfy_renames_them() {
    merges_as_reference_on(BFL, "base.safetensors", "uso", false);
    merges_as_reference_on(DIFFUSERS, "base.safetensors", "uso", false);
}

/// `lora_transformer_…` and `lycoris_…` diffusers paths land on the BFL tensors' rows as ComfyUI's
/// Flux branch maps them (before, refused by module).
#[test]
fn onetrainer_and_lycoris_diffusers_paths_land_on_bfl_rows() {
    merges_as_reference_on(BFL, "base.safetensors", "onetrainer", false);
    merges_as_reference_on(BFL, "base.safetensors", "lycoris", false);
}

/// A diffusion-pipe HunyuanVideo file (`transformer.` + Tencent's names: `img_attn_qkv`,
/// `img_mod.linear`, `img_mlp.fc1`, the token refiner's `self_attn_qkv`, …) on ComfyUI's layout of
/// the model (`img_attn.qkv`, `img_mod.lin`, `img_mlp.0`): each module on the tensor ComfyUI's
/// HunyuanVideo key map renames it to (before, 8 of 9 refused).
#[test]
fn diffusion_pipe_hunyuan_video_lands_on_comfy_names() {
    merges_as_reference_on(
        "diffusion13/hunyuan_video_comfy",
        "base.safetensors",
        "dpipe",
        false,
    );
}

/// An original ACE-Step 1.5 PEFT file (`base_model.model.layers.0.self_attn.q_proj`) on ComfyUI's
/// layout (the decoder under `decoder.`, beside a lyric encoder with the same module path): each
/// module on `decoder.…` as ComfyUI's ACEStep15 key map puts it (before, every module refused).
#[test]
fn ace_step15_peft_lands_on_the_comfy_decoder() {
    merges_as_reference_on(
        "diffusion13/ace_step15_comfy",
        "base.safetensors",
        "peft",
        false,
    );
}
