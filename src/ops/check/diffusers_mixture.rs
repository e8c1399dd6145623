//! How diffusers 0.42.1's Flux loader reads OneTrainer's Flux names (`lora_transformer_` + the
//! diffusers module path with `_`, what `convert --to kohya` writes for a Flux adapter and what
//! ComfyUI's `model_lora_keys_unet` maps), transcribed so that `check --target diffusers` judges
//! those files by the converter that reads them rather than by the SD/SDXL one.
//!
//! `FluxLoraLoaderMixin.lora_state_dict` sends a file with a `.lora_down.weight` key to
//! `_convert_kohya_flux_lora_to_diffusers`, which (no key under `transformer.`, some key starting
//! `lora_transformer_`) returns `_convert_mixture_state_dict_to_diffusers`: every key outside
//! `lora_unet_` must start `lora_transformer_` or `lora_te1_` (an `assert`); a module in
//! `transformer_blocks_N`/`single_transformer_blocks_N` is named after its block plus, for an
//! `attn_` key, `attn.to_out.0`, `attn.to_add_out` or `attn.` + what follows `attn_` (q, k, v and
//! the `add_*_proj` ones), so any other block module (`norm1_linear`, `ff_net_0_proj`, a single
//! block's `proj_mlp`/`proj_out`) is named as the block itself and loading raises on it
//! (`load_lora_weights`: KeyError on `transformer_blocks.0.weight`; `load_lora_into_transformer`
//! alone: PEFT's "Target module FluxTransformerBlock(…) is not supported"); a top-level module other than
//! `context_embedder`, `norm_out_linear`, `proj_out`, `x_embedder` and the three
//! `time_text_embed_*_embedder_linear_N` raises `NotImplementedError`; every module's `.alpha` is
//! popped (a missing one raises `KeyError`); a `lora_te1_` module outside
//! `text_model_encoder_layers_N`'s attention and MLP projections makes loading raise too; the
//! `lora_unet_` keys are dropped. The rest loads with each module's alpha folded in. Checked with
//! `fixtures/gen/flux_mixture_fixtures.py` (diffusers' own load of each case, MANIFEST.json).
//!
//! Must not read tensor data.

use crate::adapter::{Adapter, Format};
use crate::io::Checkpoint;

const PREFIX: &str = "lora_transformer_";

/// What diffusers' Flux loader does with `adapter` when it is a OneTrainer Flux file for a Flux
/// pipeline (`None` for any other file): the modules that make it raise, and the `lora_unet_`
/// ones it drops without a word. A Flux pipeline: the base is diffusers' Flux transformer
/// (`single_transformer_blocks.` with a `proj_mlp`, without Flux.2's or HunyuanVideo's marks),
/// or, without `--base`, the file has a single-stream block module (without a base, a file of
/// double-block modules alone is SD3's as much as Flux's, and stays with the SD reader's rule).
pub(super) fn flux_mixture(a: &Adapter, base: Option<&Checkpoint>) -> Option<Mixture> {
    judge(a, base, false)
}

/// Whether, without `--base`, `adapter` is a OneTrainer file whose verdict depends on the
/// pipeline: nothing in it marks Flux (no single-stream block module), Flux's loader would load
/// all of it, and SD3's (the same names) converts none of it.
pub(super) fn pipeline_dependent(a: &Adapter, base: Option<&Checkpoint>) -> bool {
    base.is_none()
        && flux_mixture(a, None).is_none()
        && judge(a, None, true).is_some_and(|m| m.refused.is_empty() && m.dropped.is_empty())
}

/// [`flux_mixture`], taking the pipeline for Flux's where `assume_flux`.
fn judge(a: &Adapter, base: Option<&Checkpoint>, assume_flux: bool) -> Option<Mixture> {
    a.source.as_ref()?;
    let keys: Vec<&str> = a.adapter_keys();
    let mixture = a.format == Format::Kohya
        && keys.iter().any(|k| k.ends_with(".lora_down.weight"))
        && !keys.iter().any(|k| k.starts_with("transformer."))
        && keys.iter().any(|k| k.starts_with(PREFIX));
    let flux = match base {
        Some(b) => {
            let has = |mark: &str| b.names().any(|n| n.contains(mark));
            // Flux's single blocks have a `proj_mlp` (AuraFlow's, with the same block name,
            // do not, and its loader converts nothing).
            has("single_transformer_blocks.")
                && has(".proj_mlp.")
                && !has("token_refiner.")
                && !has("single_stream_modulation")
                && !has(".to_qkv_mlp_proj.")
        }
        None => a.modules.iter().any(|m| {
            m.name
                .starts_with("lora_transformer_single_transformer_blocks_")
        }),
    };
    if !mixture || !(flux || assume_flux) {
        return None;
    }
    let has_alpha = |m: &str| keys.iter().any(|k| k.strip_suffix(".alpha") == Some(m));
    let mut out = Mixture::default();
    for m in &a.modules {
        let why = if m.name.starts_with("lora_unet_") {
            out.dropped.push(m.name.clone());
            continue;
        } else if let Some(rest) = m.name.strip_prefix(PREFIX) {
            transformer_refusal(rest)
        } else if let Some(rest) = m.name.strip_prefix("lora_te1_") {
            te_refusal(rest)
        } else {
            Some("neither lora_transformer_ nor lora_te1_: the converter's assert fails")
        };
        if let Some(why) = why.or((!has_alpha(&m.name)).then_some("no .alpha: KeyError")) {
            out.refused.push(format!("{} ({why})", m.name));
        }
    }
    Some(out)
}

/// [`flux_mixture`]'s findings.
#[derive(Debug, Default)]
pub(super) struct Mixture {
    /// Modules that make the loader raise, each with why.
    pub refused: Vec<String>,
    /// `lora_unet_` modules it drops.
    pub dropped: Vec<String>,
}

/// Why the converter fails on module `lora_transformer_{rest}`, if it does.
fn transformer_refusal(rest: &str) -> Option<&'static str> {
    let in_block = ["single_transformer_blocks_", "transformer_blocks_"]
        .iter()
        .find_map(|b| rest.strip_prefix(b))
        .and_then(|r| r.split('_').next())
        .is_some_and(|i| i.parse::<u64>().is_ok());
    if in_block {
        let attn = rest.contains("attn_")
            && (rest.contains("_to_out_0")
                || rest.contains("_to_add_out")
                || ["to_q", "to_k", "to_v"].iter().any(|x| rest.contains(x))
                || ["add_q_proj", "add_k_proj", "add_v_proj"]
                    .iter()
                    .any(|x| rest.contains(x)));
        return (!attn).then_some(
            "named as its block: loading raises (KeyError on the block's weight, or PEFT's \"Target module … is not supported\")",
        );
    }
    let top = [
        "context_embedder",
        "norm_out_linear",
        "proj_out",
        "x_embedder",
    ]
    .iter()
    .any(|t| rest.starts_with(t))
        || ["guidance", "text", "timestep"].iter().any(|e| {
            rest.strip_prefix(&format!("time_text_embed_{e}_embedder_linear_"))
                .is_some_and(|i| i.parse::<i64>().is_ok())
        });
    (!top).then_some("a module it has no name for: NotImplementedError")
}

/// Why the converter fails on text-encoder module `lora_te1_{rest}`, if it does: it maps
/// `text_model_encoder_layers_N` attention (`q_proj`, `k_proj`, `v_proj`, `out_proj`) and MLP
/// (`fc1`, `fc2`) modules only; another is left in the state dict ("Expected an empty state
/// dict") or named as its layer, which PEFT cannot wrap.
fn te_refusal(rest: &str) -> Option<&'static str> {
    let layer = rest
        .strip_prefix("text_model_encoder_layers_")
        .and_then(|r| r.split('_').next())
        .is_some_and(|i| i.parse::<u64>().is_ok());
    let kind = if rest.contains("attn") {
        ["q_proj", "k_proj", "v_proj", "out_proj"]
            .iter()
            .any(|x| rest.contains(x))
    } else {
        rest.contains("mlp") && ["fc1", "fc2"].iter().any(|x| rest.contains(x))
    };
    (!(layer && kind)).then_some(
        "no layer's attention or MLP projection: left behind or named as its layer, and loading raises",
    )
}
