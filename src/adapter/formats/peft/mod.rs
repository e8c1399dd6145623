//! Hugging Face PEFT LoRA adapters: `adapter_model.safetensors` + `adapter_config.json`.
//!
//! Key names follow PEFT `utils/save_and_load.py` (`get_peft_model_state_dict`): the adapter
//! name is removed and keys carry the `base_model.model.` prefix —
//! `{module}.lora_A.weight` `[r, in]` (conv: `[r, in, kh, kw]`), `{module}.lora_B.weight`
//! `[out, r]` (conv: `[out, r, 1, 1]`), `{module}.lora_B.bias` (`lora_bias`),
//! `{module}.lora_embedding_A` `[r, vocab]`, `{module}.lora_embedding_B` `[dim, r]`,
//! `{module}.lora_magnitude_vector` (DoRA), and any other tensor a full replacement
//! (`modules_to_save`, trained biases, `{module}.base_layer.weight` of saved embeddings).
//!
//! Rank and alpha per module follow PEFT `tuners/lora/model.py` `_create_and_replace`:
//! `rank_pattern` / `alpha_pattern` keys are matched against the module name with
//! `re.match(rf"(.*\.)?({key})$", name)`, first match in the config's order wins
//! (`utils/other.py` `get_pattern_key`); scale is `alpha/r`, or `alpha/√r` with `use_rslora`
//! (`layer.py` `update_layer`).
//!
//! Must not: read or write tensors itself (its children do: `read.rs`, `write.rs`, …; this file
//! declares and re-exports them), nor know another format's key names.
use serde_json::Value;

mod adalora;
mod adamss;
mod assemble;
mod beft;
mod boft;
mod c3a;
pub(crate) mod config;
mod deft;
mod delora;
mod frod;
mod glora;
mod gralora;
mod hira;
mod hra;
mod init;
mod layout;
mod ln_tuning;
mod lycoris;
mod miss;
mod osf;
pub mod params;
mod peanut;
mod pvera;
mod randlora;
mod read;
mod road;
mod saved_layers;
mod shira;
mod supertuning;
pub mod targets;
#[cfg(test)]
mod tests;
mod tinylora;
mod tokens;
mod torch_rng;
mod unilora;
mod vblora;
mod vera;
mod write;

pub use config::{
    compile_pattern, first_match, token_indices, tokens_module, tuner_tensor, unread_weights,
    PatternKey, PeftConfig, PeftType, CONFIG_NAME, PICKLE_WEIGHTS_NAME, PREFIX, TOKENS_SUFFIX,
    WEIGHTS_NAME,
};
pub use init::{
    base_residual, ignored_training_tensor, init_refusal, variant_tensors, BaseResidual,
};
pub use layout::Peft;
pub use lycoris::{factorization, plan as lycoris_plan, LycorisPeft};
pub use read::read;
pub use write::{config_json, full_tensor_key, lycoris_config_json, write, write_with};
// Their public path stays `peft::…`: the writers of every format share them from one leaf.
pub use super::written::{encoded, factor_shapes, stored_shape};

/// Why an adapter cannot be merged into its base or run as plain low-rank updates, for the
/// config features whose LoRA PEFT itself refuses to merge (PEFT 0.21.2): `layer_replication`
/// (the trained model has more layers than the base; `LoraModel._check_merge_allowed`),
/// aLoRA's `alora_invocation_tokens` (the update applies only after the invocation tokens;
/// `ALoraLinearVariant.merge_unsafe` raises), and the initialisations and variants
/// [`init_refusal`] lists. `None` for anything else.
///
/// `use_qalora` is not refused here: PEFT 0.21.2 takes the QALoRA variant only on a GPTQ layer
/// (`lora/gptq.py` `resolve_lora_variant`); on any other Linear `lora/layer.py`'s variants do not
/// look at it, the LoRA is plain (`lora_A` [r, in]) and `merge_and_unload` merges it
/// (fixtures/gaps12/qalora_float). A QALoRA `lora_A` over group-pooled inputs ([r, in/group])
/// fits no base weight and is refused as unmatched, naming the shapes. On a GPTQ base see
/// [`qalora_group_size`].
pub fn merge_refusal(config: &Value) -> Option<String> {
    let set = |k: &str| {
        config.get(k).is_some_and(|v| match v {
            Value::Null | Value::Bool(false) => false,
            Value::Array(a) => !a.is_empty(),
            _ => true,
        })
    };
    if set("layer_replication") {
        Some("`layer_replication` trains a model with more layers than the base, so its modules do not map onto the base's; PEFT refuses to merge it (LoraModel._check_merge_allowed) and so does lorakit".into())
    } else if set("alora_invocation_tokens") {
        Some("aLoRA (`alora_invocation_tokens`) applies its update only after the invocation tokens, which no merged weight can do; PEFT refuses to merge it (ALoraLinearVariant.merge_unsafe) and so does lorakit".into())
    } else {
        init_refusal(config)
    }
}

/// `qalora_group_size` (PEFT's default 16) when the config sets `use_qalora`, else `None`. On a
/// GPTQ layer PEFT 0.21.2 always takes the QALoRA variant (`lora/gptq.py`
/// `resolve_lora_variant`), whose `lora_A` reads the inputs pooled by groups of this size
/// ([r, in/group], `lora/variants.py` `QALoraLinearVariant.init`) and which has no merge (its
/// `get_delta_weight`, `merge_safe` and `merge_unsafe` raise): `check` expects that width there
/// and `merge` refuses such a layer.
pub fn qalora_group_size(config: &Value) -> Option<usize> {
    if config.get("use_qalora") != Some(&Value::Bool(true)) {
        return None;
    }
    match config.get("qalora_group_size") {
        None | Some(Value::Null) => Some(16),
        Some(v) => Some(v.as_u64().map_or(0, |g| g as usize)),
    }
}

/// The target selection of a PEFT config (`None` where it is no object or does not parse), for
/// [`crate::adapter::Adapter::tie_only_modules`].
pub fn config_targets(config: &Value) -> Option<targets::Targets> {
    targets::Targets::parse(config.as_object()?).ok()
}
