//! The list of adapter formats lorakit reads and writes: the [`Format`] enum, data only. What
//! each one does is its [`super::Layout`], registered in `formats/mod.rs`
//! ([`Format::layout`]); its spelling in reports is [`super::Layout::name`].
//!
//! Must not: hold behaviour (this file stays below the adapter model, which records the format
//! of every adapter, so the model does not depend on the formats' code).

/// The file format an adapter was read from or is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Hugging Face PEFT: `adapter_model.safetensors` + `adapter_config.json`.
    Peft,
    /// kohya-ss sd-scripts: `lora_unet_…/lora_te_….lora_down.weight`, `.lora_up.weight`, `.alpha`.
    Kohya,
    /// Apple's mlx-lm: `adapters.safetensors` (`….lora_a` / `….lora_b`) + `adapter_config.json`
    /// (`lora_parameters`).
    Mlx,
}

impl Format {
    /// Every format, in the order messages offer them as alternatives.
    pub const ALL: &'static [Format] = &[Format::Peft, Format::Kohya, Format::Mlx];
}
