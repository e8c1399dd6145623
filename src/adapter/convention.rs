//! What an adapter file's names say about who wrote it and for which model: the spelling of
//! its factors ([`super::formats::lycoris::Naming`]), the component prefixes of its module names, and the model family
//! where the names identify one. Reports only; nothing here changes how a module is applied.
//!
//! Prefixes are those ComfyUI maps (`comfy/lora.py` `model_lora_keys_unet` / `_clip`): kohya's
//! `lora_unet_`, `lora_prior_unet_`, `lora_te{,1,2,3}_`, `lora_transformer_` (OneTrainer),
//! `lycoris_` (SimpleTuner), and the dotted `unet.`, `transformer.`, `text_encoder(_2).`,
//! `text_encoders.`, `diffusion_model.` (ai-toolkit), `base_model.model.` (PEFT).

use super::formats::kohya;
use super::model::Adapter;

/// See the module doc.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Convention {
    /// `peft` for a PEFT folder; otherwise the spellings of the single file's factors.
    pub naming: Vec<String>,
    /// Component prefixes of the module names, each once, sorted.
    pub prefixes: Vec<String>,
    /// The model family the names identify, if any.
    pub family: Option<&'static str>,
}

/// Dotted first components that name a pipeline component rather than a layer.
const DOTTED: &[&str] = &[
    "unet",
    "transformer",
    "text_encoder",
    "text_encoder_2",
    "text_encoders",
    "diffusion_model",
    "base_model",
    "prior",
];

/// Families by the layer names only they have, checked in order on the module names with dots
/// turned into underscores (so kohya and dotted names read alike). Each entry: family, and
/// groups of which every group needs one of its substrings.
const FAMILIES: &[(&str, &[&[&str]])] = &[
    // BFL single-file names (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`) or
    // diffusers' FluxTransformer2DModel (`single_transformer_blocks`). Either kind of BFL block
    // alone is Flux: kohya sd-scripts' `lora_flux.py` trains only one with `train_blocks=double`
    // or `single` (@48d368fa), and the double blocks' `img_mlp`/`img_mod` are Qwen-Image's names
    // too, so Flux is decided first.
    (
        "Flux",
        &[&[
            "double_blocks",
            "single_blocks",
            "single_transformer_blocks",
        ]],
    ),
    // diffusers' QwenImageTransformerBlock (`transformer_blocks.N.img_mlp.net.0.proj`, `img_mod.1`).
    ("Qwen-Image", &[&["img_mlp", "txt_mlp", "img_mod"]]),
    ("Wan", &[&["cross_attn"], &["ffn_0", "ffn_2"]]),
    // SD3's MMDiT: `joint_blocks` (single file) or diffusers' `add_q_proj` beside `context_pre_only`.
    (
        "SD3",
        &[&["joint_blocks", "context_embedder", "add_k_proj"]],
    ),
    // SDXL's UNet has no attention in its first down/input block; SD1.x/2.x's has.
    (
        "SDXL",
        &[&[
            "input_blocks_4_1_transformer_blocks",
            "down_blocks_1_attentions_0_transformer_blocks_1",
            "lora_te2_",
            "text_encoder_2",
        ]],
    ),
    (
        "SD1.x/SD2.x",
        &[&["down_blocks_0_attentions", "input_blocks_1_1_"]],
    ),
    ("CLIP text encoder", &[&["text_model_encoder_layers"]]),
    // HF decoder LLMs (Llama, Mistral, Qwen2, …: `model.layers.N.self_attn.q_proj`).
    (
        "decoder LLM (Llama-style names)",
        &[
            &["model_layers_"],
            &[
                "self_attn_q_proj",
                "self_attn_k_proj",
                "self_attn_v_proj",
                "self_attn_o_proj",
                "mlp_gate_proj",
                "mlp_down_proj",
            ],
        ],
    ),
];

/// Describes `adapter`'s names.
pub fn describe(adapter: &Adapter) -> Convention {
    let naming = if adapter.format.layout().names_are_paths() {
        // Module paths, spelled as the format names its factors (`peft`, `mlx`).
        vec![adapter.format.to_string()]
    } else {
        adapter.namings.iter().map(|n| n.to_string()).collect()
    };
    let mut prefixes: Vec<String> = adapter
        .modules
        .iter()
        .map(|m| m.name.as_str())
        .chain(adapter.full_tensors.iter().map(|f| f.name.as_str()))
        .filter_map(prefix_of)
        .collect();
    prefixes.sort();
    prefixes.dedup();
    let flat: Vec<String> = adapter
        .modules
        .iter()
        .map(|m| m.name.replace('.', "_"))
        .collect();
    let has = |s: &str| flat.iter().any(|n| n.contains(s));
    let family = FAMILIES
        .iter()
        .find(|(_, groups)| groups.iter().all(|g| g.iter().any(|s| has(s))))
        .map(|(f, _)| *f);
    Convention {
        naming,
        prefixes,
        family,
    }
}

/// The component prefix of one module name.
fn prefix_of(name: &str) -> Option<String> {
    if let Some((p, _)) = kohya::split_prefix(name) {
        return Some(p.to_owned());
    }
    let first = name.split('.').next()?;
    if first == "base_model" && name.starts_with("base_model.model.") {
        return Some("base_model.model".to_owned());
    }
    (DOTTED.contains(&first) && name.contains('.')).then(|| first.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_of_every_convention() {
        for (name, want) in [
            (
                "lora_unet_down_blocks_0_attentions_0_proj_in",
                Some("lora_unet"),
            ),
            (
                "lora_te1_text_model_encoder_layers_0_mlp_fc1",
                Some("lora_te1"),
            ),
            ("lora_prior_unet_down_blocks_0", Some("lora_prior_unet")),
            (
                "lora_transformer_single_transformer_blocks_0_attn_to_q",
                Some("lora_transformer"),
            ),
            ("lycoris_down_blocks_0_conv_in", Some("lycoris")),
            ("unet.down_blocks.0.attentions.0.proj_in", Some("unet")),
            (
                "text_encoder_2.text_model.encoder.layers.0.mlp.fc1",
                Some("text_encoder_2"),
            ),
            (
                "diffusion_model.double_blocks.0.img_attn.qkv",
                Some("diffusion_model"),
            ),
            (
                "base_model.model.model.layers.0.self_attn.q_proj",
                Some("base_model.model"),
            ),
            ("model.layers.0.self_attn.q_proj", None),
        ] {
            assert_eq!(prefix_of(name).as_deref(), want, "{name}");
        }
    }
}
