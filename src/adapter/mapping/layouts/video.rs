//! The video transformers' rows of [`super::TABLES`] (HunyuanVideo, LTX-Video, LTX-2): original module
//! paths and the diffusers module paths each one is, transcribed from diffusers 0.42.1's
//! checkpoint and LoRA converters. Data only: must not match names.

use super::table::Rows;

/// HunyuanVideo's Tencent names (diffusion-pipe's files) on ComfyUI's layout of the same model
/// (`comfy/ldm/hunyuan_video/model.py`: Flux's `img_attn.qkv`, `img_mod.lin`, `img_mlp.0`, the
/// token refiner's `self_attn.qkv`, `mlp.0`), whole tensors renamed: `comfy/lora.py`
/// `model_lora_keys_unet`, its HunyuanVideo branch (`_mod.lin.` → `_mod.linear.`, `_attn.qkv.` →
/// `_attn_qkv.`, `_attn.proj.` → `_attn_proj.`, `mlp.0.`/`mlp.2.` → `mlp.fc1.`/`mlp.fc2.`,
/// `.modulation.lin.` → `.modulation.linear.`). The "diffusers" side of these rows is ComfyUI's.
pub(super) const HUNYUAN_VIDEO_COMFY: Rows = &[
    (
        "double_blocks.#.img_mod.linear",
        &["double_blocks.#.img_mod.lin"],
    ),
    (
        "double_blocks.#.txt_mod.linear",
        &["double_blocks.#.txt_mod.lin"],
    ),
    (
        "double_blocks.#.img_attn_qkv",
        &["double_blocks.#.img_attn.qkv"],
    ),
    (
        "double_blocks.#.txt_attn_qkv",
        &["double_blocks.#.txt_attn.qkv"],
    ),
    (
        "double_blocks.#.img_attn_proj",
        &["double_blocks.#.img_attn.proj"],
    ),
    (
        "double_blocks.#.txt_attn_proj",
        &["double_blocks.#.txt_attn.proj"],
    ),
    (
        "double_blocks.#.img_mlp.fc1",
        &["double_blocks.#.img_mlp.0"],
    ),
    (
        "double_blocks.#.img_mlp.fc2",
        &["double_blocks.#.img_mlp.2"],
    ),
    (
        "double_blocks.#.txt_mlp.fc1",
        &["double_blocks.#.txt_mlp.0"],
    ),
    (
        "double_blocks.#.txt_mlp.fc2",
        &["double_blocks.#.txt_mlp.2"],
    ),
    (
        "single_blocks.#.modulation.linear",
        &["single_blocks.#.modulation.lin"],
    ),
    (
        "txt_in.individual_token_refiner.blocks.#.self_attn_qkv",
        &["txt_in.individual_token_refiner.blocks.#.self_attn.qkv"],
    ),
    (
        "txt_in.individual_token_refiner.blocks.#.self_attn_proj",
        &["txt_in.individual_token_refiner.blocks.#.self_attn.proj"],
    ),
    (
        "txt_in.individual_token_refiner.blocks.#.mlp.fc1",
        &["txt_in.individual_token_refiner.blocks.#.mlp.0"],
    ),
    (
        "txt_in.individual_token_refiner.blocks.#.mlp.fc2",
        &["txt_in.individual_token_refiner.blocks.#.mlp.2"],
    ),
];

/// HunyuanVideo (Tencent's names, `hyvideo/modules/models.py`): `convert_hunyuan_video_transformer_to_diffusers`
/// (its `TRANSFORMER_KEYS_RENAME_DICT` and the `txt_in` / `img_attn_qkv` / `txt_attn_qkv` remaps).
/// Rows Flux already has with the same diffusers paths (`vector_in.*`, `single_blocks.#.linear1`
/// split in q, k, v and the MLP input, `linear2`, the final layer with its modulation swapped)
/// are Flux's. The token refiner's modulation is renamed, not swapped (only the final layer's is).
pub(super) const HUNYUAN_VIDEO: Rows = &[
    ("img_in.proj", &["x_embedder.proj"]),
    (
        "time_in.mlp.0",
        &["time_text_embed.timestep_embedder.linear_1"],
    ),
    (
        "time_in.mlp.2",
        &["time_text_embed.timestep_embedder.linear_2"],
    ),
    (
        "guidance_in.mlp.0",
        &["time_text_embed.guidance_embedder.linear_1"],
    ),
    (
        "guidance_in.mlp.2",
        &["time_text_embed.guidance_embedder.linear_2"],
    ),
    ("txt_in.input_embedder", &["context_embedder.proj_in"]),
    (
        "txt_in.t_embedder.mlp.0",
        &["context_embedder.time_text_embed.timestep_embedder.linear_1"],
    ),
    (
        "txt_in.t_embedder.mlp.2",
        &["context_embedder.time_text_embed.timestep_embedder.linear_2"],
    ),
    (
        "txt_in.c_embedder.linear_1",
        &["context_embedder.time_text_embed.text_embedder.linear_1"],
    ),
    (
        "txt_in.c_embedder.linear_2",
        &["context_embedder.time_text_embed.text_embedder.linear_2"],
    ),
    (
        "txt_in.individual_token_refiner.blocks.#.self_attn_qkv",
        &[
            "context_embedder.token_refiner.refiner_blocks.#.attn.to_q",
            "context_embedder.token_refiner.refiner_blocks.#.attn.to_k",
            "context_embedder.token_refiner.refiner_blocks.#.attn.to_v",
        ],
    ),
    (
        "txt_in.individual_token_refiner.blocks.#.self_attn_proj",
        &["context_embedder.token_refiner.refiner_blocks.#.attn.to_out.0"],
    ),
    (
        "txt_in.individual_token_refiner.blocks.#.mlp.fc1",
        &["context_embedder.token_refiner.refiner_blocks.#.ff.net.0.proj"],
    ),
    (
        "txt_in.individual_token_refiner.blocks.#.mlp.fc2",
        &["context_embedder.token_refiner.refiner_blocks.#.ff.net.2"],
    ),
    (
        "txt_in.individual_token_refiner.blocks.#.adaLN_modulation.1",
        &["context_embedder.token_refiner.refiner_blocks.#.norm_out.linear"],
    ),
    (
        "double_blocks.#.img_attn_qkv",
        &[
            "transformer_blocks.#.attn.to_q",
            "transformer_blocks.#.attn.to_k",
            "transformer_blocks.#.attn.to_v",
        ],
    ),
    (
        "double_blocks.#.txt_attn_qkv",
        &[
            "transformer_blocks.#.attn.add_q_proj",
            "transformer_blocks.#.attn.add_k_proj",
            "transformer_blocks.#.attn.add_v_proj",
        ],
    ),
    (
        "double_blocks.#.img_attn_proj",
        &["transformer_blocks.#.attn.to_out.0"],
    ),
    (
        "double_blocks.#.txt_attn_proj",
        &["transformer_blocks.#.attn.to_add_out"],
    ),
    (
        "double_blocks.#.img_mod.linear",
        &["transformer_blocks.#.norm1.linear"],
    ),
    (
        "double_blocks.#.txt_mod.linear",
        &["transformer_blocks.#.norm1_context.linear"],
    ),
    (
        "double_blocks.#.img_mlp.fc1",
        &["transformer_blocks.#.ff.net.0.proj"],
    ),
    (
        "double_blocks.#.img_mlp.fc2",
        &["transformer_blocks.#.ff.net.2"],
    ),
    (
        "double_blocks.#.txt_mlp.fc1",
        &["transformer_blocks.#.ff_context.net.0.proj"],
    ),
    (
        "double_blocks.#.txt_mlp.fc2",
        &["transformer_blocks.#.ff_context.net.2"],
    ),
    (
        "single_blocks.#.modulation.linear",
        &["single_transformer_blocks.#.norm.linear"],
    ),
];

/// LTX-Video: `convert_ltx_transformer_checkpoint_to_diffusers` (`patchify_proj` → `proj_in`,
/// `adaln_single` → `time_embed`; every other name is diffusers' own). diffusers' LoRA converter
/// (`_convert_non_diffusers_ltxv_lora_to_diffusers`) strips `diffusion_model.` and renames
/// neither, so diffusers applies nothing of these two; the merge follows the checkpoint's map.
pub(super) const LTX_VIDEO: Rows = &[
    ("patchify_proj", &["proj_in"]),
    ("adaln_single.linear", &["time_embed.linear"]),
    (
        "adaln_single.emb.timestep_embedder.linear_1",
        &["time_embed.emb.timestep_embedder.linear_1"],
    ),
    (
        "adaln_single.emb.timestep_embedder.linear_2",
        &["time_embed.emb.timestep_embedder.linear_2"],
    ),
];

/// LTX-2 beyond LTX-Video's rows (`patchify_proj`, `adaln_single.…`, the same renames):
/// `_convert_non_diffusers_ltx2_lora_to_diffusers`' `rename_dict` (lora_conversion_utils.py
/// 0.42.1; the audio stream, the audio-video cross-attention adaLN embedders and LTX-2.3's
/// prompt adaLN) and its `audio_adaln_single.` → `audio_time_embed.`, on the modules
/// `LTX2VideoTransformer3DModel` has.
pub(super) const LTX2: Rows = &[
    ("audio_patchify_proj", &["audio_proj_in"]),
    ("audio_adaln_single.linear", &["audio_time_embed.linear"]),
    (
        "audio_adaln_single.emb.timestep_embedder.linear_1",
        &["audio_time_embed.emb.timestep_embedder.linear_1"],
    ),
    (
        "audio_adaln_single.emb.timestep_embedder.linear_2",
        &["audio_time_embed.emb.timestep_embedder.linear_2"],
    ),
    (
        "av_ca_video_scale_shift_adaln_single.linear",
        &["av_cross_attn_video_scale_shift.linear"],
    ),
    (
        "av_ca_video_scale_shift_adaln_single.emb.timestep_embedder.linear_1",
        &["av_cross_attn_video_scale_shift.emb.timestep_embedder.linear_1"],
    ),
    (
        "av_ca_video_scale_shift_adaln_single.emb.timestep_embedder.linear_2",
        &["av_cross_attn_video_scale_shift.emb.timestep_embedder.linear_2"],
    ),
    (
        "av_ca_a2v_gate_adaln_single.linear",
        &["av_cross_attn_video_a2v_gate.linear"],
    ),
    (
        "av_ca_a2v_gate_adaln_single.emb.timestep_embedder.linear_1",
        &["av_cross_attn_video_a2v_gate.emb.timestep_embedder.linear_1"],
    ),
    (
        "av_ca_a2v_gate_adaln_single.emb.timestep_embedder.linear_2",
        &["av_cross_attn_video_a2v_gate.emb.timestep_embedder.linear_2"],
    ),
    (
        "av_ca_audio_scale_shift_adaln_single.linear",
        &["av_cross_attn_audio_scale_shift.linear"],
    ),
    (
        "av_ca_audio_scale_shift_adaln_single.emb.timestep_embedder.linear_1",
        &["av_cross_attn_audio_scale_shift.emb.timestep_embedder.linear_1"],
    ),
    (
        "av_ca_audio_scale_shift_adaln_single.emb.timestep_embedder.linear_2",
        &["av_cross_attn_audio_scale_shift.emb.timestep_embedder.linear_2"],
    ),
    (
        "av_ca_v2a_gate_adaln_single.linear",
        &["av_cross_attn_audio_v2a_gate.linear"],
    ),
    (
        "av_ca_v2a_gate_adaln_single.emb.timestep_embedder.linear_1",
        &["av_cross_attn_audio_v2a_gate.emb.timestep_embedder.linear_1"],
    ),
    (
        "av_ca_v2a_gate_adaln_single.emb.timestep_embedder.linear_2",
        &["av_cross_attn_audio_v2a_gate.emb.timestep_embedder.linear_2"],
    ),
    ("prompt_adaln_single.linear", &["prompt_adaln.linear"]),
    (
        "prompt_adaln_single.emb.timestep_embedder.linear_1",
        &["prompt_adaln.emb.timestep_embedder.linear_1"],
    ),
    (
        "prompt_adaln_single.emb.timestep_embedder.linear_2",
        &["prompt_adaln.emb.timestep_embedder.linear_2"],
    ),
    (
        "audio_prompt_adaln_single.linear",
        &["audio_prompt_adaln.linear"],
    ),
    (
        "audio_prompt_adaln_single.emb.timestep_embedder.linear_1",
        &["audio_prompt_adaln.emb.timestep_embedder.linear_1"],
    ),
    (
        "audio_prompt_adaln_single.emb.timestep_embedder.linear_2",
        &["audio_prompt_adaln.emb.timestep_embedder.linear_2"],
    ),
];
