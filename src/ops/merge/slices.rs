//! Merging modules that update row slices of one base tensor (q, k and v of OpenCLIP's fused
//! `in_proj_weight`, [`crate::adapter::mapping::RowSlice`]), alone or beside whole-tensor
//! modules, in one pass over the tensor: each row is read once and written once.
//!
//! The other direction uses the same bands: a module on a fused tensor of a model's original
//! layout merged into its diffusers layout (BFL Flux `img_attn.qkv` onto `to_q`/`to_k`/`to_v`,
//! `crate::adapter::mapping` `layouts`) is a term on each split tensor that brings only its
//! part of the module's rows (`MergePlan::splits`): `(B·A)[part] = B[part]·A`, the row split of
//! lora_up with lora_down shared that diffusers' `_convert_to_ai_toolkit_cat` makes. A module on
//! a tensor that holds its rows in another order (the final adaLN of BFL Flux, SD3 and
//! HunyuanVideo, whose two halves diffusers swaps) brings them in the tensor's order.
//!
//! The tensor is cut at every slice's first and last row into bands; each band is merged as its
//! own `rows × cols` [`MergeJob`] with the terms that cover it, a whole-tensor or wider term
//! restricted to the band's rows (`(B·A)[r] = B[r]·A`, a dense ΔW's rows), in the order a
//! whole-tensor merge applies them. The engine computes every element from its own row of the
//! terms ([`MergeJob`]: ascending rank, no fused multiply-add, on every backend), so a band's
//! bytes are the ones a merge of the whole tensor with those terms would give, on the CPU and
//! the GPU alike: overlapping slices (two adapters' q of one layer) are combined exactly, as
//! ComfyUI's `calculate_weight` (`comfy/lora.py` @41444b5) adds each patch to its `narrow`ed view
//! in turn. A band no term covers is copied byte for byte when the dtype is kept.
//!
//! Refused when the plan is made (one line naming the base file and tensor, nothing written):
//! a slice past the tensor's rows, and on a tensor with a slice every term whose update is not a
//! function of its own rows — DoRA (its norm spans the rows), base-dependent OFT/BOFT/IA3/GLoRA,
//! PEFT's residual rewrites, fused-MoE experts, a transposed layout — and a W0 computed on the
//! host (a quantized base, a `modules_to_save` override, `--as-trained-on`). Must not write.

use super::model::*;
use super::tensor::{PieceSink, TensorMerge};
use crate::adapter::mapping::{Part, RowSlice};
use crate::backend::{MergeError, MergeJob, Piece, Term};
use crate::error::InputError;
use anyhow::Result;

impl MergePlan {
    /// Whether any of `terms` updates a row slice (then [`Self::merge_slices`] merges them).
    pub(super) fn slice_terms(&self, terms: &[(usize, usize)]) -> bool {
        terms
            .iter()
            .any(|t| self.rows.contains_key(t) || self.splits.contains_key(t))
    }

    /// The rows of module `(ai, mi)`'s ΔW that tensor `name` receives, in its order, when they
    /// are not all of them in order (a module split over several tensors, or swapped halves).
    fn part_of(&self, name: &str, t: (usize, usize)) -> Option<&Part> {
        self.splits.get(&t).and_then(|p| p.get(name))
    }

    /// The plan-time checks of the module header for every tensor with a row slice.
    pub(super) fn check_slices(&self) -> Result<()> {
        let mut names: Vec<&String> = self
            .actions
            .iter()
            .filter(|(_, a)| matches!(a, Action::Merge(t) if self.slice_terms(t)))
            .map(|(n, _)| n)
            .collect();
        names.sort();
        for name in names {
            let Some(Action::Merge(terms)) = self.actions.get(name) else {
                continue;
            };
            let path = self
                .base
                .file_of(name)
                .map(|f| f.path().to_path_buf())
                .unwrap_or_else(|| self.base.root.clone());
            let refuse = |why: String| {
                anyhow::Error::new(InputError::invalid(
                    &path,
                    format!("tensor `{name}`: {why}"),
                ))
            };
            if self.quant.get(name).is_some() || self.base_override.contains_key(name) {
                return Err(refuse(
                    "row slices are merged into a stored float tensor, not a quantized or replaced one".into(),
                ));
            }
            if self.options.as_trained_on.is_some() {
                return Err(refuse(
                    "--as-trained-on is not supported on a tensor updated by row slices".into(),
                ));
            }
            let shape = &self.base.info(name).expect("base tensor").shape;
            let rows = shape.first().copied().unwrap_or(0);
            for &(ai, mi) in terms {
                let a = &self.adapters[ai].adapter;
                let m = &a.modules[mi];
                if let Some(p) = self.part_of(name, (ai, mi)) {
                    if shape.len() != 2 || p.rows() != rows || p.end() > m.out_features {
                        return Err(refuse(format!(
                            "module `{}` gives {p} of its {} to this tensor, whose shape is {shape:?}",
                            m.name, m.out_features
                        )));
                    }
                }
                if let Some(r) = self.rows.get(&(ai, mi)) {
                    if shape.len() != 2 || r.len == 0 || r.end() > rows {
                        return Err(refuse(format!(
                            "module `{}` updates rows {}..{}, the tensor's shape is {shape:?}",
                            m.name,
                            r.offset,
                            r.end()
                        )));
                    }
                }
                let why = if m.dora_magnitude.is_some() {
                    Some("a DoRA update (its weight norm spans the rows)")
                } else if m.factors.needs_base() {
                    Some("an update computed from the base weight")
                } else if a.residual_of(m).is_some() {
                    Some("PEFT's residual rewrite of the base")
                } else if crate::adapter::formats::peft::params::parse_expert(&m.name).is_some() {
                    Some("an expert of a fused MoE parameter")
                } else if m.base_transposed {
                    Some("a transposed (fan_in_fan_out) layout")
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(refuse(format!(
                        "module `{}` is {why}; on a tensor with row slices lorakit merges only updates made row by row (LoRA, LoHa, LoKr, full)",
                        m.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Merges `terms`, some on row slices, into base tensor `name` band by band (module header),
    /// handing the `out_dtype` bytes to `sink`: whole from the CPU, in row-major pieces from the GPU.
    pub(super) fn merge_slices(&self, merge: TensorMerge<'_>, sink: PieceSink<'_>) -> Result<()> {
        let name = merge.name;
        let (file, info) = self.base_tensor(name);
        let rows = info.shape.first().copied().unwrap_or(1);
        let cols = info.shape.iter().skip(1).product::<usize>();
        let in_size = info.dtype.bitsize() / 8;
        let view = file.view_info(info)?;
        let order = self.apply_order(merge.terms);
        // Every term as (rows it covers, B or dense ΔW with those rows, A, rank, scale, name).
        let mut stored = Vec::with_capacity(order.len());
        for &(ai, mi) in &order {
            let wa = &self.adapters[ai];
            let m = &wa.adapter.modules[mi];
            let span = self.rows.get(&(ai, mi)).copied().unwrap_or(RowSlice {
                offset: 0,
                len: rows,
            });
            let scale = self.signed(wa.weight * m.scale) as f32;
            let (mut b, a, rank, dense) = if m.factors.lora().is_some() {
                let (b, a) = wa.adapter.factors(m)?;
                (b.to_vec(), a.to_vec(), m.rank, false)
            } else {
                (wa.adapter.delta_unscaled(m)?, Vec::new(), cols, true)
            };
            // A split module brings only its part of the rows, swapped halves theirs in the
            // tensor's order (checked against the shapes when the plan was made).
            if let Some(p) = self.part_of(name, (ai, mi)) {
                b = p.gather(&b, if dense { cols } else { rank });
            }
            stored.push((span, b, a, rank, dense, scale, m.name.as_str()));
        }
        let mut cuts = vec![0, rows];
        for s in &stored {
            cuts.extend([s.0.offset, s.0.end()]);
        }
        cuts.sort_unstable();
        cuts.dedup();
        // On the GPU the bands stream on to the writer as they come back; on the CPU the tensor
        // is handed over whole, as every CPU merge is (the report counts streamed tensors).
        let streaming = merge.engine.is_gpu();
        let mut whole: Vec<u8> = Vec::new();
        if !streaming {
            whole.reserve(rows * cols * merge.out_dtype.bitsize() / 8);
        }
        let mut emit = |b: &[u8]| -> Result<()> {
            if streaming {
                sink(Piece::Part(b))
            } else {
                whole.extend_from_slice(b);
                Ok(())
            }
        };
        // The sink's own error (the writer's) is kept aside and returned as it was raised.
        let mut stopped = None;
        for band in cuts.windows(2) {
            let (lo, hi) = (band[0], band[1]);
            let w0 = &view.data[lo * cols * in_size..hi * cols * in_size];
            let mine: Vec<_> = stored
                .iter()
                .filter(|s| s.0.offset <= lo && hi <= s.0.end())
                .collect();
            if mine.is_empty() && merge.out_dtype == info.dtype {
                emit(w0)?;
                continue;
            }
            let list: Vec<Term> = mine
                .iter()
                .map(|s| {
                    // The band's rows of this term's B (or dense ΔW): B·A restricted to them.
                    let (from, to) = ((lo - s.0.offset) * s.3, (hi - s.0.offset) * s.3);
                    if s.4 {
                        Term {
                            dense: Some(&s.1[from..to]),
                            ..Term::low_rank(&[], &[], 0, s.5)
                        }
                    } else {
                        Term::low_rank(&s.1[from..to], &s.2, s.3, s.5)
                    }
                })
                .collect();
            let job = MergeJob {
                w0,
                in_dtype: info.dtype,
                rows: hi - lo,
                cols,
                terms: &list,
                out_dtype: merge.out_dtype,
            };
            let r = merge
                .engine
                .merge_to(&job, self.options.rounding, &mut |p| {
                    let r = match &p {
                        Piece::Whole(v) => emit(v),
                        Piece::Part(b) => emit(b),
                    };
                    r.map_err(|e| {
                        stopped = Some(e);
                        MergeError::SinkStopped
                    })
                });
            if let Some(e) = stopped {
                return Err(e);
            }
            r.map_err(|e| {
                let modules: Vec<&str> = mine.iter().map(|s| s.6).collect();
                anyhow::Error::new(InputError::invalid(
                    file.path(),
                    format!(
                        "tensor `{name}` rows {lo}..{hi}: merging {} gives an invalid result: {e}",
                        modules.join(" + ")
                    ),
                ))
            })?;
        }
        if streaming {
            Ok(())
        } else {
            sink(Piece::Whole(whole))
        }
    }
}
