//! Phi-3's rope settings as llama.cpp's `Phi3MiniModel` reads them from `config.json`
//! ([`phi3_rope`]): what `hparams.rs` writes as keys and `ops/merge/gguf_hf.rs` as the
//! long-rope factor tensors.
//!
//! Must not write GGUF keys or tensors.

use super::hf_config::{gemma_uint, uint, GUESS};
use crate::error::{InputError, InputResult};
use serde_json::Value as Json;
use std::path::Path;

/// Phi-3's rope settings as llama.cpp's `Phi3MiniModel` reads them (`conversion/phi.py`) from
/// the parameters transformers' `Phi3Config` leaves (`convert_rope_params_to_dict`,
/// `standardize_rope_params`): the rope dict is `rope_scaling` (when a non-empty object) or
/// `rope_parameters`, its type `rope_type` or `type` (`su` and `longrope` alike: the converter
/// gives both the same attention factor), `rope_theta` and `partial_rotary_factor` from the
/// dict or the top level (the factor 1.0 when absent: the converter's own default).
#[derive(Debug, Clone, PartialEq)]
pub struct Phi3Rope {
    /// `int(partial_rotary_factor * hidden_size) // num_attention_heads`.
    pub dims: u32,
    pub theta: f32,
    /// `original_max_position_embeddings`.
    pub original_context: u32,
    /// `n_positions` or `max_position_embeddings`.
    pub context: u32,
    /// The long-rope scaling: `rope.scaling.attn_factor` and the `rope_factors_long/short`
    /// tensors (`generate_extra_tensors`), when config.json has long factors.
    pub long: Option<LongRope>,
}

/// What `Phi3MiniModel.generate_extra_tensors` writes for long-rope scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    /// `sqrt(1 + ln(scale) / ln(original))` for `scale = context / original > 1`, else 1,
    /// computed in f64 as Python does and stored as f32.
    pub attn_factor: f32,
    /// `torch.tensor(long_factor, dtype=torch.float32)`, and the short one.
    pub long_factor: Vec<f32>,
    pub short_factor: Vec<f32>,
}

/// [`Phi3Rope`] of a `Phi3ForCausalLM` config.json, or the refusal naming the key where the
/// converter would fail (`KeyError`, `ValueError`, `NotImplementedError`) or where transformers'
/// AutoConfig would fill in or rewrite what lorakit reads raw (`GUESS`).
pub fn phi3_rope(config: &Json, path: &Path) -> InputResult<Phi3Rope> {
    let bad = |m: String| InputError::invalid(path, m);
    let nonempty = |k: &str| {
        config
            .get(k)
            .and_then(Json::as_object)
            .filter(|o| !o.is_empty())
    };
    let rope = match (nonempty("rope_scaling"), nonempty("rope_parameters")) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(
                "both `rope_scaling` and `rope_parameters`, and they differ: transformers takes the first, llama.cpp's converter reading config.json raw the second".into(),
            ))
        }
        (Some(r), _) | (None, Some(r)) => r.clone(),
        (None, None) => Default::default(),
    };
    if rope.contains_key("full_attention") || rope.contains_key("sliding_attention") {
        return Err(bad(
            "per-attention-type rope parameters: llama.cpp's Phi-3 converter does not read them"
                .into(),
        ));
    }
    let at = |k: &str| {
        rope.get(k)
            .filter(|v| !v.is_null())
            .or(config.get(k).filter(|v| !v.is_null()))
    };
    let need = |key: &str| gemma_uint(config, key, path);
    let theta = at("rope_theta")
        .and_then(Json::as_f64)
        .ok_or_else(|| bad(format!("`rope_theta` is missing or not a number ({GUESS})")))?;
    let partial = match at("partial_rotary_factor") {
        None => 1.0,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| bad("`partial_rotary_factor` is not a number".into()))?,
    };
    let original = need("original_max_position_embeddings")?;
    if let Some(v) = rope.get("original_max_position_embeddings") {
        if v.as_u64() != Some(u64::from(original)) {
            return Err(bad(format!(
                "the rope parameters' `original_max_position_embeddings` ({v}) differs from config.json's ({original}): transformers and llama.cpp's converter take different ones"
            )));
        }
    }
    let context = match uint(config, "n_positions") {
        Some(n) => n,
        None => need("max_position_embeddings")?,
    };
    let n_embd = need("hidden_size")?;
    let n_head = need("num_attention_heads")?;
    if n_head == 0 {
        return Err(bad("`num_attention_heads` is 0".into()));
    }
    let dims = ((partial * f64::from(n_embd)).floor() as u32) / n_head;
    let kind = rope
        .get("rope_type")
        .or(rope.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default")
        .to_lowercase();
    let factors = |k: &str| -> InputResult<Option<Vec<f32>>> {
        match rope.get(k) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Array(a)) if a.is_empty() => Ok(None),
            Some(Json::Array(a)) => a
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32))
                .collect::<Option<Vec<f32>>>()
                .map(Some)
                .ok_or_else(|| bad(format!("rope `{k}` is not a list of numbers"))),
            Some(_) => Err(bad(format!("rope `{k}` is not a list of numbers"))),
        }
    };
    let (long, short) = (factors("long_factor")?, factors("short_factor")?);
    let long = match (kind.as_str(), long) {
        ("default" | "longrope" | "su", None) => None,
        ("default", Some(_)) => {
            return Err(bad(
                "rope `long_factor` with rope type `default`: llama.cpp's converter raises NotImplementedError".into(),
            ))
        }
        ("longrope" | "su", Some(long_factor)) => {
            let short_factor = short.ok_or_else(|| {
                bad("long-rope scaling without `short_factor` (llama.cpp's converter raises KeyError)".into())
            })?;
            if long_factor.len() != short_factor.len() || 2 * long_factor.len() != dims as usize {
                return Err(bad(format!(
                    "rope long/short factors of {} and {}: llama.cpp's converter wants rope dimensions / 2 = {} of each",
                    long_factor.len(),
                    short_factor.len(),
                    f64::from(dims) / 2.0
                )));
            }
            let scale = f64::from(context) / f64::from(original);
            let attn = if scale > 1.0 {
                (1.0 + scale.ln() / f64::from(original).ln()).sqrt()
            } else {
                1.0
            };
            Some(LongRope {
                attn_factor: attn as f32,
                long_factor,
                short_factor,
            })
        }
        (t, _) => {
            return Err(bad(format!(
                "rope type `{t}`: lorakit writes Phi-3's default and long-rope (`longrope`, `su`) scaling only"
            )))
        }
    };
    Ok(Phi3Rope {
        dims,
        theta: theta as f32,
        original_context: original,
        context,
        long,
    })
}
