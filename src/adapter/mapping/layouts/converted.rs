//! The rows of [`super::TABLES`] for transformers that diffusers 0.42.1 maps from their original
//! module names only in its LoRA converters (no single-file checkpoint converter: the models ship
//! in diffusers' layout): Anima (Cosmos-Predict2's DiT), Krea 2, Ideogram 4, ACE-Step 1.5 and
//! MiniMax-H3, transcribed from `loaders/lora_conversion_utils.py`. Data only: must not match
//! names.

use super::table::Rows;

/// Anima on `CosmosTransformer3DModel`: `_convert_non_diffusers_anima_lora_to_diffusers`' `rename_dict`
/// (`blocks.` → `transformer_blocks.`, the attention and MLP names, the three adaLN
/// modulations per block and the final one, `t_embedder.1`, `x_embedder.proj.1`). The final
/// modulation keeps its `(shift, scale)` order in diffusers' `CosmosAdaLayerNorm`: no swap.
pub(super) const ANIMA: Rows = &[
    (
        "blocks.#.self_attn.q_proj",
        &["transformer_blocks.#.attn1.to_q"],
    ),
    (
        "blocks.#.self_attn.k_proj",
        &["transformer_blocks.#.attn1.to_k"],
    ),
    (
        "blocks.#.self_attn.v_proj",
        &["transformer_blocks.#.attn1.to_v"],
    ),
    (
        "blocks.#.self_attn.output_proj",
        &["transformer_blocks.#.attn1.to_out.0"],
    ),
    (
        "blocks.#.cross_attn.q_proj",
        &["transformer_blocks.#.attn2.to_q"],
    ),
    (
        "blocks.#.cross_attn.k_proj",
        &["transformer_blocks.#.attn2.to_k"],
    ),
    (
        "blocks.#.cross_attn.v_proj",
        &["transformer_blocks.#.attn2.to_v"],
    ),
    (
        "blocks.#.cross_attn.output_proj",
        &["transformer_blocks.#.attn2.to_out.0"],
    ),
    (
        "blocks.#.mlp.layer1",
        &["transformer_blocks.#.ff.net.0.proj"],
    ),
    ("blocks.#.mlp.layer2", &["transformer_blocks.#.ff.net.2"]),
    (
        "blocks.#.adaln_modulation_self_attn.1",
        &["transformer_blocks.#.norm1.linear_1"],
    ),
    (
        "blocks.#.adaln_modulation_self_attn.2",
        &["transformer_blocks.#.norm1.linear_2"],
    ),
    (
        "blocks.#.adaln_modulation_cross_attn.1",
        &["transformer_blocks.#.norm2.linear_1"],
    ),
    (
        "blocks.#.adaln_modulation_cross_attn.2",
        &["transformer_blocks.#.norm2.linear_2"],
    ),
    (
        "blocks.#.adaln_modulation_mlp.1",
        &["transformer_blocks.#.norm3.linear_1"],
    ),
    (
        "blocks.#.adaln_modulation_mlp.2",
        &["transformer_blocks.#.norm3.linear_2"],
    ),
    ("final_layer.adaln_modulation.1", &["norm_out.linear_1"]),
    ("final_layer.adaln_modulation.2", &["norm_out.linear_2"]),
    ("final_layer.linear", &["proj_out"]),
    ("t_embedder.1.linear_1", &["time_embed.t_embedder.linear_1"]),
    ("t_embedder.1.linear_2", &["time_embed.t_embedder.linear_2"]),
    ("x_embedder.proj.1", &["patch_embed.proj"]),
];

/// Krea 2 on `Krea2Transformer2DModel`: `_convert_non_diffusers_krea2_lora_to_diffusers`'
/// `attn_map`, `ff_map` (main blocks and the text fusion's layerwise and refiner blocks) and
/// `standalone_map` (ai-toolkit's `nn.Sequential`-style names).
pub(super) const KREA2: Rows = &[
    ("blocks.#.attn.wq", &["transformer_blocks.#.attn.to_q"]),
    ("blocks.#.attn.wk", &["transformer_blocks.#.attn.to_k"]),
    ("blocks.#.attn.wv", &["transformer_blocks.#.attn.to_v"]),
    ("blocks.#.attn.wo", &["transformer_blocks.#.attn.to_out.0"]),
    ("blocks.#.attn.gate", &["transformer_blocks.#.attn.to_gate"]),
    ("blocks.#.mlp.gate", &["transformer_blocks.#.ff.gate"]),
    ("blocks.#.mlp.up", &["transformer_blocks.#.ff.up"]),
    ("blocks.#.mlp.down", &["transformer_blocks.#.ff.down"]),
    (
        "txtfusion.layerwise_blocks.#.attn.wq",
        &["text_fusion.layerwise_blocks.#.attn.to_q"],
    ),
    (
        "txtfusion.layerwise_blocks.#.attn.wk",
        &["text_fusion.layerwise_blocks.#.attn.to_k"],
    ),
    (
        "txtfusion.layerwise_blocks.#.attn.wv",
        &["text_fusion.layerwise_blocks.#.attn.to_v"],
    ),
    (
        "txtfusion.layerwise_blocks.#.attn.wo",
        &["text_fusion.layerwise_blocks.#.attn.to_out.0"],
    ),
    (
        "txtfusion.layerwise_blocks.#.attn.gate",
        &["text_fusion.layerwise_blocks.#.attn.to_gate"],
    ),
    (
        "txtfusion.layerwise_blocks.#.mlp.gate",
        &["text_fusion.layerwise_blocks.#.ff.gate"],
    ),
    (
        "txtfusion.layerwise_blocks.#.mlp.up",
        &["text_fusion.layerwise_blocks.#.ff.up"],
    ),
    (
        "txtfusion.layerwise_blocks.#.mlp.down",
        &["text_fusion.layerwise_blocks.#.ff.down"],
    ),
    (
        "txtfusion.refiner_blocks.#.attn.wq",
        &["text_fusion.refiner_blocks.#.attn.to_q"],
    ),
    (
        "txtfusion.refiner_blocks.#.attn.wk",
        &["text_fusion.refiner_blocks.#.attn.to_k"],
    ),
    (
        "txtfusion.refiner_blocks.#.attn.wv",
        &["text_fusion.refiner_blocks.#.attn.to_v"],
    ),
    (
        "txtfusion.refiner_blocks.#.attn.wo",
        &["text_fusion.refiner_blocks.#.attn.to_out.0"],
    ),
    (
        "txtfusion.refiner_blocks.#.attn.gate",
        &["text_fusion.refiner_blocks.#.attn.to_gate"],
    ),
    (
        "txtfusion.refiner_blocks.#.mlp.gate",
        &["text_fusion.refiner_blocks.#.ff.gate"],
    ),
    (
        "txtfusion.refiner_blocks.#.mlp.up",
        &["text_fusion.refiner_blocks.#.ff.up"],
    ),
    (
        "txtfusion.refiner_blocks.#.mlp.down",
        &["text_fusion.refiner_blocks.#.ff.down"],
    ),
    ("first", &["img_in"]),
    ("last.linear", &["final_layer.linear"]),
    ("tmlp.0", &["time_embed.linear_1"]),
    ("tmlp.2", &["time_embed.linear_2"]),
    ("tproj.1", &["time_mod_proj"]),
    ("txtmlp.1", &["txt_in.linear_1"]),
    ("txtmlp.3", &["txt_in.linear_2"]),
    ("txtfusion.projector", &["text_fusion.projector"]),
];

/// Ideogram 4 on `Ideogram4Transformer2DModel`, beyond Z-Image's rows it shares
/// (`layers.#.attention.qkv` split in q, k, v; `feed_forward.w1..3` are diffusers' own names):
/// `_convert_non_diffusers_ideogram4_lora_to_diffusers` (`attention.o` → `attention.to_out.0`,
/// `adaln_modulation` one-to-one).
pub(super) const IDEOGRAM4: Rows = &[("layers.#.attention.o", &["layers.#.attention.to_out.0"])];

/// ACE-Step 1.5 on `AceStepTransformer1DModel`: `_convert_non_diffusers_ace_step_lora_to_diffusers`'
/// `_PROJ_RENAMES` on the decoder's self- and cross-attention (the MLP keeps its names).
pub(super) const ACE_STEP: Rows = &[
    ("layers.#.self_attn.q_proj", &["layers.#.self_attn.to_q"]),
    ("layers.#.self_attn.k_proj", &["layers.#.self_attn.to_k"]),
    ("layers.#.self_attn.v_proj", &["layers.#.self_attn.to_v"]),
    (
        "layers.#.self_attn.o_proj",
        &["layers.#.self_attn.to_out.0"],
    ),
    ("layers.#.cross_attn.q_proj", &["layers.#.cross_attn.to_q"]),
    ("layers.#.cross_attn.k_proj", &["layers.#.cross_attn.to_k"]),
    ("layers.#.cross_attn.v_proj", &["layers.#.cross_attn.to_v"]),
    (
        "layers.#.cross_attn.o_proj",
        &["layers.#.cross_attn.to_out.0"],
    ),
];

/// MiniMax-H3 on `MiniMaxH3Transformer3DModel`: `_convert_non_diffusers_minimax_h3_lora_to_diffusers`'
/// `standalone_renames` and `block_specs` (the fused `attn.qkv_proj` split in thirds; `mlp.fc1`
/// whole, its `[gate; value]` halves swapped to `SwiGLU`'s `[value; gate]`:
/// [`super::table::SWAPPED_HALVES`]). DiffSynth-Studio's per-head interleaved qkv (its
/// `.default.` files) is not this layout and is not mapped.
pub(super) const MINIMAX_H3: Rows = &[
    (
        "blocks.#.attn.qkv_proj",
        &[
            "transformer_blocks.#.attn.to_q",
            "transformer_blocks.#.attn.to_k",
            "transformer_blocks.#.attn.to_v",
        ],
    ),
    (
        "blocks.#.attn.out_proj",
        &["transformer_blocks.#.attn.to_out.0"],
    ),
    ("blocks.#.mlp.fc1", &["transformer_blocks.#.ff.net.0.proj"]),
    ("blocks.#.mlp.fc2", &["transformer_blocks.#.ff.net.2"]),
    (
        "blocks.#.adaln_proj.linear",
        &["transformer_blocks.#.adaln_proj.linear"],
    ),
    (
        "token_refiner.blocks.#.attn.qkv_proj",
        &[
            "token_refiner.refiner_blocks.#.attn.to_q",
            "token_refiner.refiner_blocks.#.attn.to_k",
            "token_refiner.refiner_blocks.#.attn.to_v",
        ],
    ),
    (
        "token_refiner.blocks.#.attn.out_proj",
        &["token_refiner.refiner_blocks.#.attn.to_out.0"],
    ),
    (
        "token_refiner.blocks.#.mlp.fc1",
        &["token_refiner.refiner_blocks.#.ff.net.0.proj"],
    ),
    (
        "token_refiner.blocks.#.mlp.fc2",
        &["token_refiner.refiner_blocks.#.ff.net.2"],
    ),
    ("video_patch_proj", &["proj_in"]),
    ("audio_patch_proj", &["audio_proj_in"]),
    ("condition_proj", &["context_embedder"]),
    ("time_embedder.proj_in", &["time_embedder.linear_1"]),
    ("time_embedder.proj_out", &["time_embedder.linear_2"]),
    ("final_layer.adaln_proj.linear", &["norm_out.linear"]),
    ("final_layer.video_out", &["proj_out"]),
    ("final_layer.audio_out", &["audio_proj_out"]),
];
