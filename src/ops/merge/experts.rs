//! Merging into a fused MoE parameter `[E, d1, d2]` (PEFT `target_parameters`,
//! [`crate::adapter::formats::peft::params`]): each term is one expert's `s·B_e·A_e`, added to
//! that expert's `d1 × d2` slice by the same engine call and arithmetic as any LoRA term (a
//! transposed layout gets `(B_e·A_e)ᵀ = A_eᵀ·B_eᵀ`, as `fan_in_fan_out` does), one expert at a
//! time: no ΔW is ever formed (the terms stay low-rank) and the working memory is the output
//! tensor, as for the CPU engine's whole-tensor merges, plus one expert's result. Must not write.
//!
//! A quantized expert tensor (MLX's `QuantizedSwitchLinear`) is merged into what it dequantizes
//! to. Refused here (one line naming the tensor): a `modules_to_save` override,
//! `--as-trained-on`, and terms that are not per-expert LoRA.

use super::model::*;
use super::tensor::{PieceSink, TensorMerge};
use crate::adapter::formats::peft::params;
use crate::backend::{MergeError, MergeJob, Piece, Term};
use crate::error::{InputError, Opt};
use anyhow::Result;

impl MergePlan {
    /// Whether `terms` are experts of a fused parameter (then [`Self::merge_experts`] merges them).
    pub(super) fn expert_terms(&self, terms: &[(usize, usize)]) -> bool {
        terms.iter().any(|&(ai, mi)| {
            params::parse_expert(&self.adapters[ai].adapter.modules[mi].name).is_some()
        })
    }

    /// Merges the expert `terms` into base tensor `name`, expert by expert (module header).
    pub(super) fn merge_experts(&self, merge: TensorMerge<'_>, sink: PieceSink<'_>) -> Result<()> {
        let name = merge.name;
        let (file, info) = self.base_tensor(name);
        let refuse = |why: &str| {
            anyhow::Error::new(InputError::invalid(
                file.path(),
                format!("tensor `{name}`: {why}"),
            ))
        };
        if self.base_override.contains_key(name) {
            return Err(refuse(
                "merging experts into a replaced expert tensor is not supported",
            ));
        }
        // A quantized expert tensor (MLX `QuantizedSwitchLinear`): merged into what it
        // dequantizes to, in its logical shape; the caller requantizes the f32 result.
        let quant = self.quant.get(name);
        if self.options.as_trained_on.is_some() {
            let name = name.to_owned();
            return Err(InputError::option(file.path(), move |o| {
                format!(
                    "tensor `{name}`: {} is not supported for expert tensors",
                    o.opt(Opt::AsTrainedOn)
                )
            })
            .into());
        }
        let shape = quant.map_or_else(|| info.shape.clone(), |q| q.shape.clone());
        let (n, d1, d2) = match shape.as_slice() {
            [n, d1, d2] => (*n, *d1, *d2),
            [d1, d2] => (1, *d1, *d2),
            s => return Err(refuse(&format!("shape {s:?} is not [experts, rows, cols]"))),
        };
        let order = self.apply_order(merge.terms);
        // (expert, b, a, rank, scale) in the stored orientation, one module per expert slice.
        let mut stored = Vec::with_capacity(order.len());
        for &(ai, mi) in &order {
            let wa = &self.adapters[ai];
            let m = &wa.adapter.modules[mi];
            let Some((_, e, _)) = params::parse_expert(&m.name) else {
                return Err(refuse(&format!(
                    "module `{}` is not an expert of this fused parameter, which also takes per-expert updates",
                    m.name
                )));
            };
            if m.factors.lora().is_none() || m.dora_magnitude.is_some() {
                return Err(refuse(&format!(
                    "module `{}`: only plain LoRA experts are merged",
                    m.name
                )));
            }
            let (b, a) = wa.adapter.factors(m)?;
            let (b, a) = if m.base_transposed {
                (
                    crate::adapter::transpose(&a, m.rank, m.in_features),
                    crate::adapter::transpose(&b, m.out_features, m.rank),
                )
            } else {
                (b.to_vec(), a.to_vec())
            };
            let scale = self.signed(wa.weight * m.scale) as f32;
            stored.push((e, b, a, m.rank, scale, m.name.clone()));
        }
        let view = file.view_info(info)?;
        let dequantized;
        let (w0, in_dtype) = match quant {
            Some(q) => {
                dequantized = crate::dtype::encode(
                    crate::dtype::Dtype::F32,
                    &self.quant.dequantize(&self.base, q)?,
                );
                (&dequantized[..], crate::dtype::Dtype::F32)
            }
            None => (view.data, info.dtype),
        };
        let slice = d1 * d2 * (in_dtype.bitsize() / 8);
        let mut out = Vec::with_capacity(n * d1 * d2 * merge.out_dtype.bitsize() / 8);
        for e in 0..n {
            let mine: Vec<_> = stored.iter().filter(|t| t.0 == e).collect();
            let term_list: Vec<Term> = mine
                .iter()
                .map(|t| Term::low_rank(&t.1, &t.2, t.3, t.4))
                .collect();
            let job = MergeJob {
                w0: &w0[e * slice..(e + 1) * slice],
                in_dtype,
                rows: d1,
                cols: d2,
                terms: &term_list,
                out_dtype: merge.out_dtype,
            };
            let bytes = merge
                .engine
                .merge_with(&job, self.options.rounding)
                .map_err(|err: MergeError| {
                    let modules: Vec<&str> = mine.iter().map(|t| t.5.as_str()).collect();
                    refuse(&format!(
                        "expert {e}: merging {} gives an invalid result: {err}",
                        modules.join(" + ")
                    ))
                })?;
            out.extend_from_slice(&bytes);
        }
        sink(Piece::Whole(out))
    }
}
