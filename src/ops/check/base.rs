//! What `check` reads besides the adapter's tensors: the base's `config.json` facts, the
//! adapter's `added_tokens.json`, what the adapter is for, and where every module lands on the
//! base. Must not: evaluate rules or print.

use super::report::{BaseFacts, Placement};
use super::target::Kind;
use crate::adapter::formats::peft::tokens_module;
use crate::adapter::mapping::{self, Unmatched};
use crate::adapter::{Adapter, Format};
use crate::error::{InputError, InputResult};
use crate::io::Checkpoint;

/// Every module and full tensor with its placement.
pub(super) fn placements(
    a: &Adapter,
    r: &mapping::Resolution,
    base: &Checkpoint,
) -> Vec<Placement> {
    let mut out = Vec::new();
    // A tied base's lm_head (no lm_head tensor stored): PEFT wraps it, its weight the input
    // embedding, and merge lands it there with --tied-embeddings shared.
    let tied = crate::merge::tied_lm_head_resolution(a, base, r);
    let r = tied.as_ref().unwrap_or(r);
    let on_tie = |name: &str, tensor: &str| {
        tied.is_some()
            && crate::merge::is_lm_head_name(&format!(
                "{}.weight",
                name.trim_end_matches(".weight")
            ))
            && !crate::merge::is_lm_head_name(tensor)
    };
    for p in &r.modules {
        let m = &a.modules[p.module];
        if on_tie(&m.name, &p.weight) {
            out.push(Placement {
                module: m.name.clone(),
                status: "tied",
                base_tensor: Some(p.weight.clone()),
                detail: Some(TIED_HEAD.into()),
                not_applied_by: Vec::new(),
            });
            continue;
        }
        // An expert of a PEFT `target_parameters` module (`…experts.gate_up_proj[3/4]`) lands on
        // its parameter, or the per-expert tensor the checkpoint stores it as: PEFT's own
        // placement (`adapter::formats::peft::params`).
        let exact = p.weight == format!("{}.weight", m.name)
            || a.format == Format::Kohya
            || crate::adapter::formats::peft::params::parse_expert(&m.name).is_some();
        // q, k or v on its third of a fused `in_proj_weight` (adapter::mapping::openclip).
        let (status, detail) = match (p.rows, &p.part) {
            (Some(r), _) => (
                "row_slice",
                Some(format!(
                    "rows {}..{} of the base tensor (its fused q/k/v, as ComfyUI splits it)",
                    r.offset,
                    r.end()
                )),
            ),
            // A module of an original layout on a diffusers tensor (or back): its share of a
            // fused tensor, or halves the two layouts store swapped (`mapping::layouts`).
            (None, Some(part)) => (
                "module_rows",
                Some(format!(
                    "the module's {part} make this tensor's rows (the model's other layout)"
                )),
            ),
            (None, None) if exact => ("exact", None),
            (None, None) => ("suffix", None),
        };
        out.push(Placement {
            module: m.name.clone(),
            status,
            base_tensor: Some(p.weight.clone()),
            detail,
            not_applied_by: Vec::new(),
        });
    }
    for (i, t) in &r.full {
        let f = &a.full_tensors[*i];
        // Trainable-token rows (their indices read from the config) replace rows of `t`.
        let rows = f.rows.is_some() && tokens_module(&f.name).is_some();
        let tied_head = !rows && on_tie(&f.name, t);
        out.push(Placement {
            module: f.name.clone(),
            status: match () {
                _ if rows => "rows",
                _ if tied_head => "tied",
                _ if *t == f.name => "exact",
                _ => "suffix",
            },
            base_tensor: Some(t.clone()),
            detail: Some(if rows {
                TOKEN_ROWS.into()
            } else if tied_head {
                format!("full tensor; {TIED_HEAD}")
            } else {
                "full tensor".into()
            }),
            not_applied_by: Vec::new(),
        });
    }
    for u in &r.unmatched {
        let (module, status, base_tensor) = match u {
            Unmatched::NotFound { module, .. } => match tokens_module(module) {
                // Trainable-token rows replace rows of their module's weight.
                Some(m) if base.contains(&format!("{m}.weight")) => {
                    (module, "rows", Some(format!("{m}.weight")))
                }
                _ => (module, "not_found", None),
            },
            Unmatched::Ambiguous { module, .. } => (module, "ambiguous", None),
            Unmatched::ShapeMismatch { module, tensor, .. } => {
                (module, "shape_mismatch", Some(tensor.clone()))
            }
            Unmatched::NotFloat { module, tensor, .. } => {
                (module, "not_float", Some(tensor.clone()))
            }
            Unmatched::OtherComponent { module, .. } => (module, "other_component", None),
            Unmatched::NoGgufName { module, .. } => (module, "not_found", None),
            Unmatched::UnknownOrder { module, tensor, .. } => {
                (module, "unknown_order", Some(tensor.clone()))
            }
            Unmatched::WouldNotLoad { module, tensor, .. } => {
                (module, "would_not_load", Some(tensor.clone()))
            }
        };
        out.push(Placement {
            module: module.clone(),
            status,
            base_tensor,
            detail: Some(if status == "rows" {
                TOKEN_ROWS.into()
            } else {
                u.to_string()
            }),
            not_applied_by: Vec::new(),
        });
    }
    out.sort_by(|a, b| a.module.cmp(&b.module));
    out
}

const TIED_HEAD: &str = "lm_head is tied to this input embedding (tie_word_embeddings, no lm_head tensor stored): PEFT wraps lm_head with it as base weight; merge --tied-embeddings shared lands it there";

const TOKEN_ROWS: &str = "trainable-token rows (trainable_token_indices) of this base weight";

/// What the adapter is for: the base's architecture when known, else its module names.
pub(super) fn kind_of(a: &Adapter, base: Option<&BaseFacts>) -> Kind {
    if let Some(b) = base {
        if b.architectures
            .iter()
            .any(|x| x.ends_with("ForCausalLM") || x.ends_with("LMHeadModel"))
        {
            return Kind::Llm;
        }
        if !b.architectures.is_empty() {
            return Kind::Other;
        }
    }
    // No module read (`Plan::unread`): the config's task type says it.
    if a.modules.is_empty() {
        let task = a.config.as_ref().and_then(|c| c.get("task_type")?.as_str());
        return if task == Some("CAUSAL_LM") {
            Kind::Llm
        } else {
            Kind::Other
        };
    }
    const LLM_LEAVES: &[&str] = super::rules::LLAMA_LINEAR;
    // Decoder-only names (`model.layers.N.self_attn.q_proj`, `…mlp.gate_proj`, `lm_head`);
    // CLIP-style text encoders (`text_model.encoder.layers.N.self_attn.q_proj`) are not LLMs.
    let llm = matches!(a.format, Format::Peft | Format::Mlx)
        && a.modules.iter().any(|m| {
            let n = &m.name;
            !n.contains("encoder")
                && LLM_LEAVES.contains(&last_component(n))
                && (n.contains("layers.") || n == "lm_head" || n.ends_with(".embed_tokens"))
        });
    if llm {
        Kind::Llm
    } else {
        Kind::Other
    }
}

/// Reads the few `config.json` fields the rules need (any architecture).
pub(super) fn base_facts(b: &Checkpoint) -> InputResult<BaseFacts> {
    let mut f = BaseFacts {
        path: b.root.display().to_string(),
        has_lm_head: b.contains("lm_head.weight"),
        ..Default::default()
    };
    let cfg = b.folder().join("config.json");
    if !cfg.is_file() {
        return Ok(f);
    }
    let text = crate::io::read_json_file(&cfg)?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| InputError::invalid(&cfg, format!("not valid JSON: {e}")))?;
    // Multimodal configs keep the language model's fields in `text_config`.
    let get = |k: &str| {
        v.get(k)
            .or_else(|| v.get("text_config").and_then(|t| t.get(k)))
    };
    f.model_type = get("model_type")
        .and_then(|x| x.as_str())
        .map(str::to_owned);
    let names = |x: Option<&serde_json::Value>| -> Vec<String> {
        x.and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    f.architectures = names(v.get("architectures"));
    f.text_architectures = names(v.get("text_config").and_then(|t| t.get("architectures")));
    f.vocab_size = get("vocab_size")
        .and_then(|x| x.as_u64())
        .map(|x| x as usize);
    f.num_hidden_layers = get("num_hidden_layers")
        .or_else(|| get("n_layer"))
        .and_then(|x| x.as_u64())
        .map(|x| x as usize);
    // transformers' default is True when the key is absent.
    f.tie_word_embeddings = get("tie_word_embeddings")
        .and_then(|x| x.as_bool())
        .unwrap_or(true);
    Ok(f)
}

/// `added_tokens.json` of a PEFT folder (SGLang `LoRAConfig.get_added_tokens_config`).
pub(super) fn read_added_tokens(a: &Adapter) -> InputResult<Vec<(String, u64)>> {
    let dir = if a.path.is_dir() {
        a.path.clone()
    } else {
        return Ok(vec![]);
    };
    let p = dir.join("added_tokens.json");
    if !p.is_file() {
        return Ok(vec![]);
    }
    let text = crate::io::read_json_file(&p)?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| InputError::invalid(&p, format!("not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| InputError::invalid(&p, "not a JSON object of token → id"))?;
    let mut out = Vec::new();
    for (k, id) in obj {
        let id = id
            .as_u64()
            .ok_or_else(|| InputError::invalid(&p, format!("id of `{k}` is not an integer")))?;
        out.push((k.clone(), id));
    }
    out.sort_by_key(|(_, id)| *id);
    Ok(out)
}

/// The last dotted component of a module or tensor name (`lm_head`, `q_proj`).
/// The last name component of every Linear-like weight of `base`: each 2-D `….weight`, and each
/// quantized weight under its logical name (a GPTQ/AWQ `qweight`, a compressed-tensors
/// `weight_packed`: vLLM's `get_supported_lora_modules` lists every LinearBase module whatever its
/// quant_method, and serves LoRA on those bases).
pub(super) fn linear_names(base: &Checkpoint) -> std::collections::BTreeSet<String> {
    let quant = crate::io::quant::QuantMap::scan(base).ok();
    let quantized = quant.iter().flat_map(|q| q.iter()).map(|t| &t.name);
    base.names()
        .filter(|n| base.info(n).is_some_and(|i| i.shape.len() == 2))
        .chain(quantized.map(String::as_str))
        .filter_map(|n| n.strip_suffix(".weight"))
        .map(|m| last_component(m).to_string())
        .collect()
}

pub(super) fn last_component(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// An adapter bias PEFT adds to its layer's output in the forward, base bias or not: LoRA's
/// `lora_B.bias` (`lora_bias=True`) and BEFT's `beft_bias` (`tuners/beft/layer.py` `forward`;
/// only its `merge` raises "Base layer has no bias", and lorakit's merge refuses alike).
pub(super) fn output_bias(module: &str) -> bool {
    module.ends_with(".lora_B.bias") || module.ends_with(".beft_bias")
}
