//! The tables of [`super`]: for each diffusion transformer, its original module paths (`#` a
//! block index) and the diffusers module paths each one is, in row order, transcribed from
//! diffusers 0.42.1's `loaders/single_file_utils.py` checkpoint converters; and the modules whose
//! two row halves the layouts store in the other order. Data only: must not match names.

/// A model whose layouts [`super::TABLES`] maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Model {
    Flux,
    /// ComfyUI's Flux names no checkpoint has ([`FLUX_COMFY`]).
    FluxComfy,
    /// Tencent's HunyuanVideo names on ComfyUI's layout (`video::HUNYUAN_VIDEO_COMFY`).
    HunyuanVideoComfy,
    Wan,
    Sd3,
    Flux2,
    HunyuanVideo,
    ZImage,
    Lumina2,
    LtxVideo,
    Ltx2,
    Flux3,
    Anima,
    Krea2,
    Ideogram4,
    AceStep,
    MiniMaxH3,
}

impl Model {
    /// Whether the right side of this model's rows is diffusers' layout (for
    /// [`Model::HunyuanVideoComfy`] it is ComfyUI's).
    pub(super) fn rows_name_diffusers(self) -> bool {
        self != Model::HunyuanVideoComfy
    }

    /// Whether this model's rows are a checkpoint converter's (its original single files have
    /// these names), not only a LoRA converter's renames.
    pub(super) fn checkpoint_layout(self) -> bool {
        matches!(
            self,
            Model::Flux
                | Model::Wan
                | Model::Sd3
                | Model::Flux2
                | Model::HunyuanVideo
                | Model::ZImage
                | Model::Lumina2
                | Model::LtxVideo
        )
    }

    /// Whether diffusers' own LoRA loader for this model converts names in its original layout
    /// (what `check --target diffusers` asks, `super::targets`): `FluxLoraLoaderMixin` and
    /// `WanLoraLoaderMixin` do (`lora_pipeline.py` 0.42.1, their `lora_state_dict`);
    /// `SD3LoraLoaderMixin.lora_state_dict` converts nothing, so a kohya SD3 file is read as
    /// diffusers names and its modules land nowhere. `Flux2LoraLoaderMixin`,
    /// `HunyuanVideoLoraLoaderMixin` and `ZImageLoraLoaderMixin` convert their own files with
    /// their own tables, which `check` transcribes apart (`ops/check/diffusers_keys.rs`
    /// `pipeline_findings`), so these rows serve the merge only.
    pub(super) fn diffusers_converts_lora(self) -> bool {
        match self {
            Model::Flux | Model::Wan => true,
            Model::FluxComfy
            | Model::HunyuanVideoComfy
            | Model::Sd3
            | Model::Flux2
            | Model::HunyuanVideo
            | Model::ZImage
            | Model::Lumina2
            | Model::LtxVideo
            | Model::Ltx2
            | Model::Flux3
            | Model::Anima
            | Model::Krea2
            | Model::Ideogram4
            | Model::AceStep
            | Model::MiniMaxH3 => false,
        }
    }
}

/// One model's rows: original module path → the diffusers module paths it is, in row order.
pub(super) type Rows = &'static [(&'static str, &'static [&'static str])];

/// When a module of [`SWAPPED_HALVES`] has its halves swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Swap {
    /// Always (a path with no block index).
    Always,
    /// Only in the model's last block (the `#` of the path the highest index the base holds).
    InLastBlock,
}

/// Rows of the tables (original path, first diffusers path: models share original paths that
/// only some swap, Z-Image's `final_layer.adaLN_modulation.1` is a scale alone) whose diffusers
/// tensor holds the same rows with the two halves swapped: the original is `(shift, scale)`, diffusers' `AdaLayerNormContinuous` reads
/// `(scale, shift)`. BFL Flux's, Flux.2's and SD3's final modulation (`norm_out.linear`:
/// `convert_flux_transformer_checkpoint_to_diffusers`, `convert_sd3_transformer_checkpoint_to_diffusers`
/// `swap_scale_shift`, `convert_flux2_transformer_checkpoint_to_diffusers`
/// `convert_ada_layer_norm_weights`; the LoRA converters' `swap_scale_shift` on `lora_up`; ComfyUI
/// `comfy/utils.py` `flux_to_diffusers`), and SD3's last joint block's context modulation
/// (`norm1_context.linear`, swapped by the SD3 converter for `i == num_layers - 1` only: that
/// block is `context_pre_only`, the others' `AdaLayerNormZero` keep the original order).
pub(super) const SWAPPED_HALVES: &[(&str, &str, Swap)] = &[
    (
        "final_layer.adaLN_modulation.1",
        "norm_out.linear",
        Swap::Always,
    ),
    (
        "joint_blocks.#.context_block.adaLN_modulation.1",
        "transformer_blocks.#.norm1_context.linear",
        Swap::InLastBlock,
    ),
    // MiniMax-H3's SwiGLU input, `[gate; value]` in the reference and `[value; gate]` in
    // diffusers (`_convert_non_diffusers_minimax_h3_lora_to_diffusers` swaps `lora_B`'s halves).
    (
        "blocks.#.mlp.fc1",
        "transformer_blocks.#.ff.net.0.proj",
        Swap::Always,
    ),
    (
        "token_refiner.blocks.#.mlp.fc1",
        "token_refiner.refiner_blocks.#.ff.net.0.proj",
        Swap::Always,
    ),
];

/// BFL Flux: `convert_flux_transformer_checkpoint_to_diffusers`; the final layer's
/// `adaLN_modulation.1` is `norm_out.linear` with its halves swapped ([`SWAPPED_HALVES`]).
pub(super) const FLUX: Rows = &[
    ("img_in", &["x_embedder"]),
    ("txt_in", &["context_embedder"]),
    (
        "time_in.in_layer",
        &["time_text_embed.timestep_embedder.linear_1"],
    ),
    (
        "time_in.out_layer",
        &["time_text_embed.timestep_embedder.linear_2"],
    ),
    (
        "vector_in.in_layer",
        &["time_text_embed.text_embedder.linear_1"],
    ),
    (
        "vector_in.out_layer",
        &["time_text_embed.text_embedder.linear_2"],
    ),
    (
        "guidance_in.in_layer",
        &["time_text_embed.guidance_embedder.linear_1"],
    ),
    (
        "guidance_in.out_layer",
        &["time_text_embed.guidance_embedder.linear_2"],
    ),
    ("final_layer.linear", &["proj_out"]),
    ("final_layer.adaLN_modulation.1", &["norm_out.linear"]),
    (
        "double_blocks.#.img_mod.lin",
        &["transformer_blocks.#.norm1.linear"],
    ),
    (
        "double_blocks.#.txt_mod.lin",
        &["transformer_blocks.#.norm1_context.linear"],
    ),
    (
        "double_blocks.#.img_attn.qkv",
        &[
            "transformer_blocks.#.attn.to_q",
            "transformer_blocks.#.attn.to_k",
            "transformer_blocks.#.attn.to_v",
        ],
    ),
    (
        "double_blocks.#.txt_attn.qkv",
        &[
            "transformer_blocks.#.attn.add_q_proj",
            "transformer_blocks.#.attn.add_k_proj",
            "transformer_blocks.#.attn.add_v_proj",
        ],
    ),
    (
        "double_blocks.#.img_attn.proj",
        &["transformer_blocks.#.attn.to_out.0"],
    ),
    (
        "double_blocks.#.txt_attn.proj",
        &["transformer_blocks.#.attn.to_add_out"],
    ),
    (
        "double_blocks.#.img_mlp.0",
        &["transformer_blocks.#.ff.net.0.proj"],
    ),
    (
        "double_blocks.#.img_mlp.2",
        &["transformer_blocks.#.ff.net.2"],
    ),
    (
        "double_blocks.#.txt_mlp.0",
        &["transformer_blocks.#.ff_context.net.0.proj"],
    ),
    (
        "double_blocks.#.txt_mlp.2",
        &["transformer_blocks.#.ff_context.net.2"],
    ),
    (
        "single_blocks.#.modulation.lin",
        &["single_transformer_blocks.#.norm.linear"],
    ),
    (
        "single_blocks.#.linear1",
        &[
            "single_transformer_blocks.#.attn.to_q",
            "single_transformer_blocks.#.attn.to_k",
            "single_transformer_blocks.#.attn.to_v",
            "single_transformer_blocks.#.proj_mlp",
        ],
    ),
    (
        "single_blocks.#.linear2",
        &["single_transformer_blocks.#.proj_out"],
    ),
];

/// ComfyUI's own name for a Flux single block's q, k, v (`comfy/lora.py` `model_lora_keys_unet`,
/// Flux branch: `single_blocks.N.linear1_qkv` patches `linear1.weight.narrow(0, 0, 3·hidden)`;
/// `lora_convert.py` `convert_uso_lora` names USO's single-block `qkv_lora` so): `linear1`'s rows
/// without the MLP input, in the diffusers layout `to_q`/`to_k`/`to_v`. diffusers has no such
/// name ([`Model::FluxComfy`] is no model its loaders convert).
pub(super) const FLUX_COMFY: Rows = &[(
    "single_blocks.#.linear1_qkv",
    &[
        "single_transformer_blocks.#.attn.to_q",
        "single_transformer_blocks.#.attn.to_k",
        "single_transformer_blocks.#.attn.to_v",
    ],
)];

/// [`FLUX_COMFY`]'s rows on the original layout: the module's name, the fused tensor it takes the
/// first rows of (ComfyUI's offset `(0, 0, hidden_size * 3)`, `hidden_size` the tensor's columns).
pub(super) const ORIGINAL_HEADS: &[(&str, &str)] =
    &[("single_blocks.#.linear1_qkv", "single_blocks.#.linear1")];

/// BFL Flux's q/k RMSNorm scales, whole tensors (`convert_flux_transformer_checkpoint_to_
/// diffusers`, single_file_utils.py 0.42.1 lines 2398–2474): the diffusers tensor each is. A
/// Flux control LoRA carries them (`_convert_bfl_flux_control_lora_to_diffusers` renames them
/// the same way).
pub(super) const FLUX_NORMS: &[(&str, &str)] = &[
    (
        "double_blocks.#.img_attn.norm.query_norm.scale",
        "transformer_blocks.#.attn.norm_q.weight",
    ),
    (
        "double_blocks.#.img_attn.norm.key_norm.scale",
        "transformer_blocks.#.attn.norm_k.weight",
    ),
    (
        "double_blocks.#.txt_attn.norm.query_norm.scale",
        "transformer_blocks.#.attn.norm_added_q.weight",
    ),
    (
        "double_blocks.#.txt_attn.norm.key_norm.scale",
        "transformer_blocks.#.attn.norm_added_k.weight",
    ),
    (
        "single_blocks.#.norm.query_norm.scale",
        "single_transformer_blocks.#.attn.norm_q.weight",
    ),
    (
        "single_blocks.#.norm.key_norm.scale",
        "single_transformer_blocks.#.attn.norm_k.weight",
    ),
];

/// Wan: `convert_wan_transformer_to_diffusers`'s `TRANSFORMER_KEYS_RENAME_DICT`.
pub(super) const WAN: Rows = &[
    ("blocks.#.self_attn.q", &["blocks.#.attn1.to_q"]),
    ("blocks.#.self_attn.k", &["blocks.#.attn1.to_k"]),
    ("blocks.#.self_attn.v", &["blocks.#.attn1.to_v"]),
    ("blocks.#.self_attn.o", &["blocks.#.attn1.to_out.0"]),
    ("blocks.#.cross_attn.q", &["blocks.#.attn2.to_q"]),
    ("blocks.#.cross_attn.k", &["blocks.#.attn2.to_k"]),
    ("blocks.#.cross_attn.v", &["blocks.#.attn2.to_v"]),
    ("blocks.#.cross_attn.o", &["blocks.#.attn2.to_out.0"]),
    ("blocks.#.cross_attn.k_img", &["blocks.#.attn2.add_k_proj"]),
    ("blocks.#.cross_attn.v_img", &["blocks.#.attn2.add_v_proj"]),
    ("blocks.#.ffn.0", &["blocks.#.ffn.net.0.proj"]),
    ("blocks.#.ffn.2", &["blocks.#.ffn.net.2"]),
    (
        "text_embedding.0",
        &["condition_embedder.text_embedder.linear_1"],
    ),
    (
        "text_embedding.2",
        &["condition_embedder.text_embedder.linear_2"],
    ),
    (
        "time_embedding.0",
        &["condition_embedder.time_embedder.linear_1"],
    ),
    (
        "time_embedding.2",
        &["condition_embedder.time_embedder.linear_2"],
    ),
    ("time_projection.1", &["condition_embedder.time_proj"]),
    ("head.head", &["proj_out"]),
];

/// SD3 / SD3.5 (Stability's MMDiT names, kohya sd-scripts `networks/lora_sd3.py` @077f6a4 and
/// ComfyUI use them): `convert_sd3_transformer_checkpoint_to_diffusers`. Each fused `qkv` is
/// `torch.chunk`ed in three; SD3.5's second self-attention `x_block.attn2` is `attn2`; the last
/// block's context stream has only its modulation and `qkv` (no `proj`, no MLP); the final layer
/// is Flux's rows (`final_layer.linear`, `final_layer.adaLN_modulation.1`). `context_embedder` has
/// one name in both layouts (matched as any name is).
pub(super) const SD3: Rows = &[
    ("x_embedder.proj", &["pos_embed.proj"]),
    (
        "t_embedder.mlp.0",
        &["time_text_embed.timestep_embedder.linear_1"],
    ),
    (
        "t_embedder.mlp.2",
        &["time_text_embed.timestep_embedder.linear_2"],
    ),
    (
        "y_embedder.mlp.0",
        &["time_text_embed.text_embedder.linear_1"],
    ),
    (
        "y_embedder.mlp.2",
        &["time_text_embed.text_embedder.linear_2"],
    ),
    (
        "joint_blocks.#.x_block.attn.qkv",
        &[
            "transformer_blocks.#.attn.to_q",
            "transformer_blocks.#.attn.to_k",
            "transformer_blocks.#.attn.to_v",
        ],
    ),
    (
        "joint_blocks.#.context_block.attn.qkv",
        &[
            "transformer_blocks.#.attn.add_q_proj",
            "transformer_blocks.#.attn.add_k_proj",
            "transformer_blocks.#.attn.add_v_proj",
        ],
    ),
    (
        "joint_blocks.#.x_block.attn2.qkv",
        &[
            "transformer_blocks.#.attn2.to_q",
            "transformer_blocks.#.attn2.to_k",
            "transformer_blocks.#.attn2.to_v",
        ],
    ),
    (
        "joint_blocks.#.x_block.attn.proj",
        &["transformer_blocks.#.attn.to_out.0"],
    ),
    (
        "joint_blocks.#.context_block.attn.proj",
        &["transformer_blocks.#.attn.to_add_out"],
    ),
    (
        "joint_blocks.#.x_block.attn2.proj",
        &["transformer_blocks.#.attn2.to_out.0"],
    ),
    (
        "joint_blocks.#.x_block.adaLN_modulation.1",
        &["transformer_blocks.#.norm1.linear"],
    ),
    (
        "joint_blocks.#.context_block.adaLN_modulation.1",
        &["transformer_blocks.#.norm1_context.linear"],
    ),
    (
        "joint_blocks.#.x_block.mlp.fc1",
        &["transformer_blocks.#.ff.net.0.proj"],
    ),
    (
        "joint_blocks.#.x_block.mlp.fc2",
        &["transformer_blocks.#.ff.net.2"],
    ),
    (
        "joint_blocks.#.context_block.mlp.fc1",
        &["transformer_blocks.#.ff_context.net.0.proj"],
    ),
    (
        "joint_blocks.#.context_block.mlp.fc2",
        &["transformer_blocks.#.ff_context.net.2"],
    ),
    ("final_layer.linear", &["proj_out"]),
    ("final_layer.adaLN_modulation.1", &["norm_out.linear"]),
];

/// Flux.2 (BFL's names; diffusers' `diffusion_model.` and `lora_unet_` LoRA files use them):
/// `convert_flux2_transformer_checkpoint_to_diffusers`. The blocks' fused `qkv` split as Flux's;
/// what differs from Flux: the time/guidance embedders under `time_guidance_embed`, the MLPs
/// `ff.linear_in/linear_out`, a single block's `linear1` kept whole as `attn.to_qkv_mlp_proj`
/// and `linear2` as `attn.to_out`, and three shared modulations. The final layer is Flux's rows
/// (`adaLN_modulation.1` swapped, [`SWAPPED_HALVES`]), looked up there first.
pub(super) const FLUX2: Rows = &[
    (
        "time_in.in_layer",
        &["time_guidance_embed.timestep_embedder.linear_1"],
    ),
    (
        "time_in.out_layer",
        &["time_guidance_embed.timestep_embedder.linear_2"],
    ),
    (
        "guidance_in.in_layer",
        &["time_guidance_embed.guidance_embedder.linear_1"],
    ),
    (
        "guidance_in.out_layer",
        &["time_guidance_embed.guidance_embedder.linear_2"],
    ),
    (
        "double_stream_modulation_img.lin",
        &["double_stream_modulation_img.linear"],
    ),
    (
        "double_stream_modulation_txt.lin",
        &["double_stream_modulation_txt.linear"],
    ),
    (
        "single_stream_modulation.lin",
        &["single_stream_modulation.linear"],
    ),
    (
        "double_blocks.#.img_mlp.0",
        &["transformer_blocks.#.ff.linear_in"],
    ),
    (
        "double_blocks.#.img_mlp.2",
        &["transformer_blocks.#.ff.linear_out"],
    ),
    (
        "double_blocks.#.txt_mlp.0",
        &["transformer_blocks.#.ff_context.linear_in"],
    ),
    (
        "double_blocks.#.txt_mlp.2",
        &["transformer_blocks.#.ff_context.linear_out"],
    ),
    (
        "single_blocks.#.linear1",
        &["single_transformer_blocks.#.attn.to_qkv_mlp_proj"],
    ),
    (
        "single_blocks.#.linear2",
        &["single_transformer_blocks.#.attn.to_out"],
    ),
];

/// Z-Image (Tongyi's names): `convert_z_image_transformer_checkpoint_to_diffusers`, whose
/// `Z_IMAGE_KEYS_RENAME_DICT` moves the patch embedding and the final layer under the `2-1` patch
/// size's key, names `attention.out` `attention.to_out.0`, and chunks each fused
/// `attention.qkv` in three (main layers and both refiners). Every other module has one name in
/// both layouts. Its final `adaLN_modulation.1` is a scale alone: not swapped.
pub(super) const Z_IMAGE: Rows = &[
    ("x_embedder", &["all_x_embedder.2-1"]),
    ("final_layer.linear", &["all_final_layer.2-1.linear"]),
    (
        "final_layer.adaLN_modulation.1",
        &["all_final_layer.2-1.adaLN_modulation.1"],
    ),
    (
        "layers.#.attention.qkv",
        &[
            "layers.#.attention.to_q",
            "layers.#.attention.to_k",
            "layers.#.attention.to_v",
        ],
    ),
    ("layers.#.attention.out", &["layers.#.attention.to_out.0"]),
    (
        "noise_refiner.#.attention.qkv",
        &[
            "noise_refiner.#.attention.to_q",
            "noise_refiner.#.attention.to_k",
            "noise_refiner.#.attention.to_v",
        ],
    ),
    (
        "noise_refiner.#.attention.out",
        &["noise_refiner.#.attention.to_out.0"],
    ),
    (
        "context_refiner.#.attention.qkv",
        &[
            "context_refiner.#.attention.to_q",
            "context_refiner.#.attention.to_k",
            "context_refiner.#.attention.to_v",
        ],
    ),
    (
        "context_refiner.#.attention.out",
        &["context_refiner.#.attention.to_out.0"],
    ),
];

/// Lumina 2 (Lumina-Image-2.0): `convert_lumina2_to_diffusers`. Its original names are Z-Image's
/// (`layers.N.attention.qkv`, `feed_forward.w1`); the diffusers names differ (`attn.to_q`,
/// `feed_forward.linear_1`, `norm1.linear`), so the base decides which row applies. The fused
/// `qkv` is q, k and v of unequal widths (24 heads over 8 kv heads: 2304, 768, 768, which the
/// converter hard-codes): merged onto a diffusers base each part takes its tensor's own rows; a
/// diffusers-named q/k/v onto the fused tensor is refused (the equal-thirds rule of
/// `place_on_original` does not hold). The final modulation is not swapped (`norm_out.linear_1`,
/// `LuminaLayerNormContinuous` reads the original order).
pub(super) const LUMINA2: Rows = &[
    ("final_layer.linear", &["norm_out.linear_2"]),
    ("final_layer.adaLN_modulation.1", &["norm_out.linear_1"]),
    ("cap_embedder.1", &["time_caption_embed.caption_embedder.1"]),
    (
        "t_embedder.mlp.0",
        &["time_caption_embed.timestep_embedder.linear_1"],
    ),
    (
        "t_embedder.mlp.2",
        &["time_caption_embed.timestep_embedder.linear_2"],
    ),
    (
        "layers.#.attention.qkv",
        &[
            "layers.#.attn.to_q",
            "layers.#.attn.to_k",
            "layers.#.attn.to_v",
        ],
    ),
    ("layers.#.attention.out", &["layers.#.attn.to_out.0"]),
    (
        "layers.#.feed_forward.w1",
        &["layers.#.feed_forward.linear_1"],
    ),
    (
        "layers.#.feed_forward.w2",
        &["layers.#.feed_forward.linear_2"],
    ),
    (
        "layers.#.feed_forward.w3",
        &["layers.#.feed_forward.linear_3"],
    ),
    ("layers.#.adaLN_modulation.1", &["layers.#.norm1.linear"]),
    (
        "noise_refiner.#.attention.qkv",
        &[
            "noise_refiner.#.attn.to_q",
            "noise_refiner.#.attn.to_k",
            "noise_refiner.#.attn.to_v",
        ],
    ),
    (
        "noise_refiner.#.attention.out",
        &["noise_refiner.#.attn.to_out.0"],
    ),
    (
        "noise_refiner.#.feed_forward.w1",
        &["noise_refiner.#.feed_forward.linear_1"],
    ),
    (
        "noise_refiner.#.feed_forward.w2",
        &["noise_refiner.#.feed_forward.linear_2"],
    ),
    (
        "noise_refiner.#.feed_forward.w3",
        &["noise_refiner.#.feed_forward.linear_3"],
    ),
    (
        "noise_refiner.#.adaLN_modulation.1",
        &["noise_refiner.#.norm1.linear"],
    ),
    (
        "context_refiner.#.attention.qkv",
        &[
            "context_refiner.#.attn.to_q",
            "context_refiner.#.attn.to_k",
            "context_refiner.#.attn.to_v",
        ],
    ),
    (
        "context_refiner.#.attention.out",
        &["context_refiner.#.attn.to_out.0"],
    ),
    (
        "context_refiner.#.feed_forward.w1",
        &["context_refiner.#.feed_forward.linear_1"],
    ),
    (
        "context_refiner.#.feed_forward.w2",
        &["context_refiner.#.feed_forward.linear_2"],
    ),
    (
        "context_refiner.#.feed_forward.w3",
        &["context_refiner.#.feed_forward.linear_3"],
    ),
];

/// Flux.3: `_convert_non_diffusers_flux3_lora_to_diffusers` (lora_conversion_utils.py 0.42.1),
/// whose string replacements (`content_mode_blocks.` → `mode_blocks.`, `single_blocks.` →
/// `single_transformer_blocks.`, `.q_proj.` → `.attn.to_q.`, `.attn_out.` → `.attn.to_out.0.`,
/// `.mlp_in.` → `.ff.linear_in.`, …) give these rows on the blocks `Flux3Transformer2DModel` has
/// (its other modules keep their names).
pub(super) const FLUX3: Rows = &[
    (
        "content_mode_blocks.image.#.q_proj",
        &["mode_blocks.image.#.attn.to_q"],
    ),
    (
        "content_mode_blocks.image.#.k_proj",
        &["mode_blocks.image.#.attn.to_k"],
    ),
    (
        "content_mode_blocks.image.#.v_proj",
        &["mode_blocks.image.#.attn.to_v"],
    ),
    (
        "content_mode_blocks.image.#.attn_out",
        &["mode_blocks.image.#.attn.to_out.0"],
    ),
    (
        "content_mode_blocks.image.#.mlp_in",
        &["mode_blocks.image.#.ff.linear_in"],
    ),
    (
        "content_mode_blocks.image.#.mlp_out",
        &["mode_blocks.image.#.ff.linear_out"],
    ),
    (
        "content_mode_blocks.image_cond.#.q_proj",
        &["mode_blocks.image_cond.#.attn.to_q"],
    ),
    (
        "content_mode_blocks.image_cond.#.k_proj",
        &["mode_blocks.image_cond.#.attn.to_k"],
    ),
    (
        "content_mode_blocks.image_cond.#.v_proj",
        &["mode_blocks.image_cond.#.attn.to_v"],
    ),
    (
        "content_mode_blocks.image_cond.#.attn_out",
        &["mode_blocks.image_cond.#.attn.to_out.0"],
    ),
    (
        "content_mode_blocks.image_cond.#.mlp_in",
        &["mode_blocks.image_cond.#.ff.linear_in"],
    ),
    (
        "content_mode_blocks.image_cond.#.mlp_out",
        &["mode_blocks.image_cond.#.ff.linear_out"],
    ),
    ("txt_mode_blocks.#.q_proj", &["txt_mode_blocks.#.attn.to_q"]),
    ("txt_mode_blocks.#.k_proj", &["txt_mode_blocks.#.attn.to_k"]),
    ("txt_mode_blocks.#.v_proj", &["txt_mode_blocks.#.attn.to_v"]),
    (
        "txt_mode_blocks.#.attn_out",
        &["txt_mode_blocks.#.attn.to_out.0"],
    ),
    (
        "txt_mode_blocks.#.mlp_in",
        &["txt_mode_blocks.#.ff.linear_in"],
    ),
    (
        "txt_mode_blocks.#.mlp_out",
        &["txt_mode_blocks.#.ff.linear_out"],
    ),
    (
        "single_blocks.#.q_proj",
        &["single_transformer_blocks.#.attn.to_q"],
    ),
    (
        "single_blocks.#.k_proj",
        &["single_transformer_blocks.#.attn.to_k"],
    ),
    (
        "single_blocks.#.v_proj",
        &["single_transformer_blocks.#.attn.to_v"],
    ),
    (
        "single_blocks.#.attn_out",
        &["single_transformer_blocks.#.attn.to_out.0"],
    ),
    (
        "single_blocks.#.mlp_in",
        &["single_transformer_blocks.#.ff.linear_in"],
    ),
    (
        "single_blocks.#.mlp_out",
        &["single_transformer_blocks.#.ff.linear_out"],
    ),
];
