//! What a PEFT LoRA config's initialisation and variant fields mean for its merge: which
//! adapters were trained against a base PEFT rewrote (`init_lora_weights` = `pissa`, `olora`;
//! `kasa_config`), which PEFT cannot merge or reload onto the original base (Arrow, CorDA,
//! LoftQ, LoRA-GA, randomized PiSSA), and which extra tensors are training state that PEFT's
//! merge ignores (VeLoRA, MonteCLoRA). Read from PEFT 0.21.2 `tuners/lora/layer.py`
//! (`LoraLayer.update_layer` and the `*_init` methods) and `tuners/lora/variants.py`. Only reads
//! the config, except [`kasa_fold`], which folds KaSA's saved diagonal into B; the residual
//! itself is computed by the merge (`ops::merge::residual`).
//!
//! Must not: merge or compute that residual, nor read tensors beyond the `lora_diag` and `B` that
//! [`kasa_fold`] folds.

use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use serde_json::Value;

/// A base weight PEFT rewrites when it builds the adapter's layer, on `get_peft_model` and
/// again on `PeftModel.from_pretrained` (`LoraLayer.update_layer` runs the init on the
/// checkpoint's weight each time), so the adapter's `ΔW` is added to this residual, not to the
/// checkpoint's weight. Linear layers only (Embedding and Conv layers never run these inits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseResidual {
    /// `pissa_init` (`init_lora_weights="pissa"`): `W − U_r·S_r·V_rᵀ`, the top `r` singular
    /// triplets of the f32 weight (`torch.linalg.svd`) removed, cast back to the base dtype.
    Pissa,
    /// `olora_init`: `W − s·Q_r·R_r` from `torch.linalg.qr(W)` of the weight as stored (no
    /// `fan_in_fan_out` transpose; `s` the module's scaling, which PiSSA divides out and OLoRA
    /// does not), cast back to the base dtype.
    Olora,
    /// `KasaLinearVariant._truncate_base_weight` (`kasa_config`): the `r` smallest singular
    /// triplets removed, `U_p·S_p·V_pᵀ` over the other `min(d, k) − r`, cast back.
    Kasa,
}

impl BaseResidual {
    /// The config value that selects it, for messages.
    pub fn label(self) -> &'static str {
        match self {
            BaseResidual::Pissa => "init_lora_weights = \"pissa\"",
            BaseResidual::Olora => "init_lora_weights = \"olora\"",
            BaseResidual::Kasa => "kasa_config",
        }
    }
}

/// Whether config field `k` is present and not null/false/empty.
pub(super) fn is_set(config: &Value, k: &str) -> bool {
    config.get(k).is_some_and(|v| match v {
        Value::Null | Value::Bool(false) => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty() || k.ends_with("_config"),
        _ => true,
    })
}

/// The residual rule of a PEFT LoRA config, if any.
pub fn base_residual(config: &Value) -> Option<BaseResidual> {
    if is_set(config, "kasa_config") {
        return Some(BaseResidual::Kasa);
    }
    match config.get("init_lora_weights").and_then(Value::as_str) {
        Some("pissa") => Some(BaseResidual::Pissa),
        Some(s) if s.eq_ignore_ascii_case("olora") => Some(BaseResidual::Olora),
        _ => None,
    }
}

/// Why a LoRA config's initialisation or variant leaves no well-defined merge into the
/// checkpoint it names, or `None`:
/// - `arrow_config`: a router over several LoRA experts per token; `ArrowLinearVariant.merge_*`
///   raises.
/// - `init_lora_weights = "corda"`: the residual needs `preprocess_corda`'s covariance
///   eigenvectors, which are not saved; `corda_init` raises when PEFT reloads it.
/// - `"loftq"`: trained against LoftQ's quantized-and-corrected base, which `loftq_init` rebuilds
///   with its own quantizer; lorakit does not.
/// - `"lora_ga"`: trained against `W − s·B₀A₀` from gradients that are not saved; PEFT's reload
///   falls back to a plain init (`lora_ga_init`) and so means something else than training did.
/// - `"pissa_niter_N"`: the residual comes from `torch.svd_lowrank`'s random sketch, which no
///   reload reproduces.
/// - any other string PEFT does not know (`reset_lora_parameters` raises on it).
///
/// PEFT converts all of these to plain LoRA adapters for the original base when saving with
/// `path_initial_model_for_weight_conversion`; the messages say so.
pub fn init_refusal(config: &Value) -> Option<String> {
    const CONVERT: &str = "save it with PEFT's `save_pretrained(..., path_initial_model_for_weight_conversion=...)`, which writes a plain LoRA for the original base";
    if is_set(config, "arrow_config") {
        return Some("Arrow (`arrow_config`) routes each token among several LoRA experts, which no merged weight can do; PEFT refuses to merge it (ArrowLinearVariant.merge_safe) and so does lorakit".into());
    }
    let init = config.get("init_lora_weights")?;
    let s = match init {
        Value::Bool(_) | Value::Null => return None,
        Value::String(s) => s.as_str(),
        other => {
            return Some(format!(
                "`init_lora_weights` is {other}; PEFT takes true, false or a method name"
            ))
        }
    };
    let known_plain = ["gaussian", "eva", "orthogonal", "mica", "pissa", "olora"];
    if known_plain.iter().any(|k| s.eq_ignore_ascii_case(k)) {
        return None;
    }
    Some(match s {
        _ if s.starts_with("pissa_niter_") => format!(
            "`init_lora_weights` is \"{s}\": the adapter was trained against a base with a randomized SVD's top singular triplets removed (torch.svd_lowrank), which no reload reproduces; {CONVERT}"
        ),
        _ if s.starts_with("corda") => format!(
            "`init_lora_weights` is \"{s}\": the adapter was trained against a base with CorDA's context-oriented components removed, computed from calibration data that is not saved (PEFT's own reload raises in corda_init); {CONVERT}"
        ),
        "loftq" => format!(
            "`init_lora_weights` is \"loftq\": the adapter was trained against LoftQ's quantized base (loftq_init), not the checkpoint's weights; {CONVERT}"
        ),
        "lora_ga" => format!(
            "`init_lora_weights` is \"lora_ga\": the adapter was trained against W − s·B₀A₀ with B₀, A₀ from gradients that are not saved (PEFT's reload falls back to a plain init and so changes its meaning); {CONVERT}"
        ),
        _ => format!(
            "`init_lora_weights` is \"{s}\", which PEFT 0.21.2 does not know (it takes true, false, gaussian, eva, orthogonal, mica, pissa, pissa_niter_N, olora, corda, loftq, lora_ga); lorakit cannot tell whether it rewrote the base"
        ),
    })
}

/// Tensors of a LoRA module that PEFT saves but its merge does not read, for the variant that
/// adds them: VeLoRA's `lora_velora_embed` (`VeloraLinearVariant`: a training-time gradient
/// compression buffer; `merge_safe` adds `get_delta_weight`, i.e. plain `s·B·A`) and
/// MonteCLoRA's `lora_monteclora_sampler.*` (`MontecloraLinearVariant.merge_safe`: "we ignore
/// the MC sampling and just use the base LoRA weights"). `rel` is the key without the PEFT
/// prefix.
pub fn ignored_training_tensor(config: &Value, rel: &str) -> bool {
    (is_set(config, "velora_config") && rel.ends_with(".lora_velora_embed"))
        || (is_set(config, "monteclora_config") && rel.contains(".lora_monteclora_sampler."))
}

/// The stored tensors of a PEFT LoRA file that belong to a LoRA variant beyond `lora_A`/
/// `lora_B` (`.weight`, `.bias`), `lora_embedding_A/B` and DoRA's `lora_magnitude_vector`:
/// KaSA's `lora_diag`, VeLoRA's `lora_velora_embed`, MonteCLoRA's `lora_monteclora_sampler.*`
/// and any other `.lora_*` tensor. Serving stacks that parse only the plain names refuse or
/// skip them (`check`). Keys as stored.
pub fn variant_tensors<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<String> {
    const PLAIN: &[&str] = &[
        ".lora_A.weight",
        ".lora_B.weight",
        ".lora_B.bias",
        ".lora_embedding_A",
        ".lora_embedding_B",
        ".lora_magnitude_vector",
        ".lora_magnitude_vector.weight",
    ];
    keys.filter(|k| k.contains(".lora_") && !PLAIN.iter().any(|p| k.ends_with(p)))
        .map(str::to_owned)
        .collect()
}

/// KaSA (`KasaLinearVariant._get_delta_weight`): `ΔW = s·(B ⊙ diag)·A`, the learnable singular
/// values `lora_diag` scaling B's columns, in f32 as PEFT computes it on the CPU (`weight_B *
/// diag`, one rounding per element); folded into B here so the module is a plain LoRA on the
/// truncated base ([`super::BaseResidual::Kasa`]). Every Linear module of a KaSA adapter has
/// one; PEFT has no KaSA for embeddings.
pub(super) fn kasa_fold(
    file: &SafetensorsFile,
    m: &mut LoraModule,
    diag: Option<(String, Vec<usize>)>,
) -> InputResult<()> {
    let fpath = file.path();
    let Some((key, shape)) = diag else {
        return Err(InputError::invalid(
            fpath,
            format!(
                "module `{}`: the config sets kasa_config but the file has no `{}.lora_diag` (PEFT would start it at random)",
                m.name, m.name
            ),
        ));
    };
    if m.kind != ModuleKind::Linear || m.base_transposed {
        return Err(InputError::invalid(
            fpath,
            format!("tensor `{key}`: PEFT's KaSA covers nn.Linear layers only (no embeddings, convolutions or fan_in_fan_out)"),
        ));
    }
    if shape != [m.rank] {
        return Err(InputError::invalid(
            fpath,
            format!(
                "tensor `{key}`: shape {shape:?} is not [{}] (the rank)",
                m.rank
            ),
        ));
    }
    let Factors::Lora { b, .. } = &mut m.factors else {
        unreachable!("a PEFT LoRA module has LoRA factors");
    };
    let d = super::config::stored_f32(file, &key)?;
    let bv = match b {
        Data::Stored { key, .. } => super::config::stored_f32(file, key)?,
        Data::Owned(v) => v.to_vec(),
    };
    let folded: Vec<f32> = bv
        .chunks_exact(m.rank)
        .flat_map(|row| row.iter().zip(&d).map(|(x, y)| x * y))
        .collect();
    *b = Data::Owned(std::sync::Arc::new(folded));
    Ok(())
}
