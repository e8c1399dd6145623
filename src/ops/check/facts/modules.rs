//! Per-module conditions of [`super::Facts`]: the scale a loader applies against PEFT's
//! ([`ScaleRule`]), module kinds present in only some decoder layers, and the decoder layers
//! PEFT's `layer_replication` adds. Owns: those item lists. Must not: decide a verdict or read
//! tensor data.

use super::super::names::{layer_kind, layers_index, short};
use super::super::rules::ScaleRule;
use super::Facts;
use crate::adapter::Format;
use std::collections::{BTreeMap, BTreeSet};

impl Facts<'_> {
    /// Modules whose scale in a loader differs from PEFT's (the adapter's own, per module).
    pub(super) fn scale_differs(&self, rule: ScaleRule) -> Vec<String> {
        let a = &self.plan.adapter;
        let mut out = Vec::new();
        for m in &a.modules {
            let loader = match rule {
                ScaleRule::GlobalAlphaGlobalRank { rslora } => {
                    let (Some(r), Some(alpha)) = (self.cfg_r, self.cfg_alpha) else {
                        continue;
                    };
                    if rslora && a.use_rslora {
                        alpha / (r as f64).sqrt()
                    } else {
                        alpha / r as f64
                    }
                }
                ScaleRule::GlobalAlphaModuleRank => {
                    let Some(alpha) = self.cfg_alpha else {
                        continue;
                    };
                    // llama.cpp `src/llama-adapter.h` `get_scale` (llama-cpp-python 0.3.36's
                    // vendor/llama.cpp): `alpha ? adapter_scale * alpha / rank : adapter_scale`,
                    // so `lora_alpha = 0` (PEFT's scale 0) is applied at scale 1.
                    if alpha == 0.0 {
                        1.0
                    } else {
                        alpha / m.rank as f64
                    }
                }
                ScaleRule::AlphaKeyOrOne => match a.format {
                    // A single file's `{module}.alpha` is read; without one lorakit's alpha is
                    // r (scale 1, the loader's 1) unless diffusers' `lora_adapter_metadata`
                    // gave another, which ComfyUI does not read.
                    Format::Kohya => {
                        let key = format!("{}.alpha", m.name);
                        if a.source.as_ref().is_some_and(|s| s.info(&key).is_some()) {
                            continue;
                        }
                        1.0
                    }
                    Format::Peft | Format::Mlx => 1.0,
                },
            };
            if m.factors.lora().is_none() {
                continue;
            }
            let tol = 1e-9 * m.scale.abs().max(1e-30);
            if (loader - m.scale).abs() > tol {
                out.push(format!(
                    "{}: scale {} instead of {}",
                    m.name,
                    short(loader),
                    short(m.scale)
                ));
            }
        }
        out
    }

    /// Module kinds (the name with its layer index replaced) present in fewer decoder layers
    /// than the model has (the base's `num_hidden_layers`, else every layer the adapter
    /// touches).
    pub(super) fn partial_layers(&self) -> Vec<String> {
        let a = &self.plan.adapter;
        let mut by_kind: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        let mut all: BTreeSet<usize> = BTreeSet::new();
        for m in &a.modules {
            if let Some((kind, idx)) = layer_kind(&m.name) {
                by_kind.entry(kind).or_default().insert(idx);
                all.insert(idx);
            }
        }
        let n = self
            .plan
            .base_facts
            .as_ref()
            .and_then(|b| b.num_hidden_layers)
            .unwrap_or(all.len());
        by_kind
            .into_iter()
            .filter(|(_, layers)| layers.len() < n)
            .map(|(kind, layers)| {
                format!(
                    "{kind} in {} of {n} layers ({})",
                    layers.len(),
                    layers
                        .iter()
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect()
    }

    /// Whether `module`, in a decoder layer the base lacks, is in the model PEFT builds with
    /// `layer_replication` (`[[start, end), …]`: the new layers are those ranges of the base's
    /// in order, `tuners_utils.py` `replicate_layers`), its base layer holding the tensor.
    pub(super) fn replicated_layer_found(&self, module: &str) -> bool {
        let a = &self.plan.adapter;
        let Some(ranges) = a
            .config
            .as_ref()
            .and_then(|c| c.get("layer_replication"))
            .and_then(|v| v.as_array())
        else {
            return false;
        };
        let mut order = Vec::new();
        for r in ranges {
            let pair = r
                .as_array()
                .map(|p| p.iter().map(|x| x.as_u64()).collect::<Vec<_>>());
            match pair.as_deref() {
                Some([Some(s), Some(e)]) if s <= e && e - s <= 1 << 16 => order.extend(*s..*e),
                _ => return false,
            }
        }
        let (Some(i), Some(base)) = (layers_index(module), self.plan.base.as_ref()) else {
            return false;
        };
        let Some(&orig) = order.get(i) else {
            return false;
        };
        let copy = module.replacen(&format!("layers.{i}."), &format!("layers.{orig}."), 1);
        base.info(&format!("{copy}.weight")).is_some()
    }
}
