//! One merged tensor: its W0 (the base's, a modules_to_save override, a dequantized quantized
//! weight, or dequant(Q(W)) as trained on), every term's factors in the stored orientation, the
//! engine call with the plan's rounding, and the QLoRA stray-term report. Must not write: the
//! bytes go to the caller's sink, whole or (streamed from the GPU) in row-major pieces.

use super::model::*;
use crate::adapter::DoraRule;
use crate::backend::{self, Dora, MergeError, MergeJob, NormAxis, Piece, Term};
use crate::dtype::{self, Dtype};
use crate::error::{InputError, InputResult};
use crate::io::Checkpoint;
use anyhow::Result;

impl MergePlan {
    /// Base tensor `name` as the merge starts from it: the base's, or the copy the adapter saved
    /// (`base_layer.weight`/`.bias`, a resized vocabulary's `token_adapter.base_layer.weight`),
    /// loaded into the base's dtype as PEFT loads it.
    pub(super) fn w0_f32(&self, name: &str) -> InputResult<Vec<f32>> {
        match self.base_override.get(name) {
            Some(&(ai, fi)) => {
                let a = &self.adapters[ai].adapter;
                let v = a.values(&a.full_tensors[fi].data)?;
                Ok(match self.base.info(name) {
                    Some(i) => dtype::decode(i.dtype, &dtype::encode(i.dtype, &v)),
                    None => v.to_vec(),
                })
            }
            None => self.base.read_f32(name),
        }
    }

    /// A bias of modules with `lora_B.bias`, `terms` applied in order (PEFT IA3 scales it, RoAd
    /// turns it),
    /// to the base's bias or to the trained one the adapter saved (`base_layer.bias`, loaded
    /// into the base's dtype as PEFT loads it).
    pub(super) fn biased(&self, name: &str, terms: &[(usize, usize)]) -> Result<Vec<f32>> {
        let mut v = self.w0_f32(name)?;
        let b0 = v.clone();
        for &(ai, mi) in terms {
            let wa = &self.adapters[ai];
            let m = &wa.adapter.modules[mi];
            let bias = wa.adapter.values(m.bias.as_ref().expect("has bias"))?;
            if let crate::adapter::Factors::Hadamard {
                tuner: crate::adapter::algo::HadamardTuner::Glora,
                ..
            } = m.factors
            {
                // PEFT GLoRA: b' = b0 + b0·D + E + W0·C, from the original b0 and W0 (the
                // weight beside this bias), blended by the weight as the matrix is.
                let wname = format!("{}.weight", name.strip_suffix(".bias").unwrap_or(name));
                let info = self.base.info(&wname).ok_or_else(|| {
                    InputError::invalid(
                        &wa.adapter.path,
                        format!(
                            "module `{}`: no base tensor `{wname}` beside `{name}`",
                            m.name
                        ),
                    )
                })?;
                let (d, k) = (
                    info.shape.first().copied().unwrap_or(0),
                    info.shape.iter().skip(1).product(),
                );
                let w0 = self.base.read_f32(&wname)?;
                let delta =
                    crate::adapter::algo::glora_bias_delta(&bias, &b0, &w0, (d, k), wa.weight)
                        .map_err(|why| {
                            InputError::invalid(
                                &wa.adapter.path,
                                format!("module `{}` on `{name}`: {why}", m.name),
                            )
                        })?;
                for (x, d) in v.iter_mut().zip(delta) {
                    *x += d;
                }
                continue;
            }
            // Its rows of a module split over several tensors or with swapped halves.
            let bias = match self.splits.get(&(ai, mi)).and_then(|p| p.get(name)) {
                Some(part) => std::sync::Arc::new(part.gather(&bias, 1)),
                None => bias,
            };
            if let crate::adapter::Factors::Road { cos, sin, group } = &m.factors {
                // PEFT RoAd: b' = R·b0 (`Linear.merge`), blended by the weight as the matrix is.
                let (c, s) = (wa.adapter.values(cos)?, wa.adapter.values(sin)?);
                let d =
                    crate::adapter::algo::road_delta(&c, &s, &v, (v.len(), 1), *group, wa.weight);
                for (x, d) in v.iter_mut().zip(d) {
                    *x += d;
                }
                continue;
            }
            if let crate::adapter::Factors::Ia3 {
                rule: crate::adapter::Ia3Rule::Peft,
                ..
            } = m.factors
            {
                // PEFT IA3: b' = b0 ⊙ l, blended by the weight as the matrix is.
                for (x, l) in v.iter_mut().zip(bias.iter()) {
                    let d = *x as f64 * (*l as f64 - 1.0) * wa.weight;
                    *x = (*x as f64 + d) as f32;
                }
                continue;
            }
            let s = self.signed(wa.weight * m.scale) as f32;
            for (x, b) in v.iter_mut().zip(bias.iter()) {
                *x += b * s;
            }
        }
        Ok(v)
    }

    /// Whether the merge changes base tensor `name`.
    pub fn changes(&self, name: &str) -> bool {
        !matches!(self.actions.get(name), None | Some(Action::Copy))
    }

    /// The merged value of base tensor `name` in f32, as the merge would store it before
    /// rounding to the output dtype (for writers of other formats: the GGUF output of a
    /// safetensors base). Quantized bases are not covered (the caller refuses them).
    pub fn merged_f32(&self, engine: &backend::Engine, name: &str) -> Result<Vec<f32>> {
        Ok(match self.actions.get(name).unwrap_or(&Action::Copy) {
            Action::Copy => self.base.read_f32(name)?,
            Action::Merge(terms) => self.merge_tensor_f32(engine, name, terms)?,
            Action::Bias(terms) => {
                let v = self.biased(name, terms)?;
                check_finite(&self.base, name, &v)?;
                v
            }
            Action::Replace(ai, fi) => {
                let a = &self.adapters[*ai].adapter;
                a.full_values(*fi, || self.w0_f32(name))?.to_vec()
            }
        })
    }

    /// Merges `terms` into base tensor `name` and hands the `out_dtype` bytes to `sink`.
    ///
    /// Streamed (pieces of at most one GPU chunk, [`backend::Engine::merge_to`]) when the GPU
    /// engine's kernel covers the job: a plain bf16/f16/f32 base tensor, read from the memory
    /// map, with low-rank terms (LoRA, LoCon, DoRA at strength 1) and F32 rounding. Handed over
    /// whole, as the CPU engine computes it, for everything else: the CPU engine; a W0 that is
    /// itself computed on the host (a modules_to_save override, a dequantized quantized weight,
    /// dequant(Q(W)) for `as_trained_on`, whose stray-term report needs the f32 result whole);
    /// dense terms (LoHa, LoKr, full, base-dependent OFT/IA3); blended DoRA; exact rounding;
    /// F64 tensors.
    pub(super) fn merge_tensor(
        &self,
        merge: TensorMerge<'_>,
        sink: PieceSink<'_>,
    ) -> Result<Option<QloraTensor>> {
        if self.expert_terms(merge.terms) {
            self.merge_experts(merge, sink)?;
            return Ok(None);
        }
        if self.slice_terms(merge.terms) {
            self.merge_slices(merge, sink)?;
            return Ok(None);
        }
        let (name, out_dtype) = (merge.name, merge.out_dtype);
        let stored = self.quant.get(name).map_or(name, |q| q.stored.as_str());
        let (file, info) = self.base_tensor(stored);
        // The logical shape (a quantized weight is stored packed).
        let shape = match self.quant.get(name) {
            Some(q) => q.shape.clone(),
            None => info.shape.clone(),
        };
        // `--expand-base`: W0 as stored, then widened with zero columns (below).
        let stored_cols = shape.iter().skip(1).product::<usize>();
        let shape = self.widened.get(name).cloned().unwrap_or(shape);
        let rows = shape.first().copied().unwrap_or(1);
        let cols = shape.iter().skip(1).product::<usize>();
        let view = file.view_info(info)?;
        let replaced;
        let mut in_dtype = info.dtype;
        let mut stray_norm = None;
        let w0: &[u8] = match (self.base_override.get(name), self.quant.get(name)) {
            (Some(&(ai, fi)), _) => {
                let a = &self.adapters[ai].adapter;
                replaced = dtype::encode(in_dtype, &a.values(&a.full_tensors[fi].data)?);
                &replaced
            }
            (None, Some(q)) => {
                // A quantized base: merge into what it dequantizes to. bitsandbytes 4-bit
                // dequantizes to its quant_state dtype (bitsandbytes 0.50.2 functional.py
                // `dequantize_4bit`: `out` in `quant_state.dtype`), and PEFT 0.21.2 merges into
                // that (peft/tuners/lora/bnb.py `Linear4bit.merge`: `dequantize_bnb_weight(…) +
                // get_delta_weight(…)`, an f32 sum when the adapter is f32): a 16-bit state's
                // dequantization is rounded to it first, as a 16-bit float base would be stored.
                let mut w0 = self.quant.dequantize(&self.base, q)?;
                if let crate::io::quant::Scheme::Bnb4(p) = &q.scheme {
                    if p.dtype != Dtype::F32 {
                        w0 = dtype::decode(p.dtype, &dtype::encode(p.dtype, &w0));
                    }
                }
                in_dtype = Dtype::F32;
                replaced = dtype::encode(in_dtype, &w0);
                &replaced
            }
            (None, None) => match (&self.options.as_trained_on, &self.qlora_scope) {
                (Some(t), Some(scope)) => {
                    // QLoRA: the adapter was trained against the weight as transformers loaded
                    // it: W in its load dtype, then dequant(Q(W)) where bitsandbytes quantizes
                    // the layer (bnb_scope.rs).
                    let w = view.to_f32();
                    let load_dtype = scope.load_dtype(name, view.dtype);
                    let wl = if load_dtype == Dtype::F32 {
                        w.clone()
                    } else {
                        dtype::decode(load_dtype, &dtype::encode(load_dtype, &w))
                    };
                    let first = merge
                        .terms
                        .first()
                        .map(|&(ai, mi)| &self.adapters[ai].adapter.modules[mi]);
                    let kind = merge
                        .terms
                        .iter()
                        .map(|&(ai, mi)| &self.adapters[ai].adapter.modules[mi].kind)
                        .find(|k| **k != crate::adapter::ModuleKind::Linear)
                        .or(first.map(|m| &m.kind))
                        .cloned()
                        .unwrap_or(crate::adapter::ModuleKind::Linear);
                    let why = scope.not_quantized(name, &kind, info.shape.len());
                    // transformers 5.24 quantizes a `Conv1D` weight (stored [in, out])
                    // transposed (integrations/bitsandbytes.py `Bnb4bitQuantize.convert`:
                    // `value = value.T` for Conv1D), so its 4-bit blocks run along the
                    // [out, in] rows: quantize Wᵀ and transpose the result back.
                    let conv1d = merge.terms.iter().any(|&(ai, mi)| {
                        let m = &self.adapters[ai].adapter.modules[mi];
                        m.base_transposed && m.kind == crate::adapter::ModuleKind::Linear
                    }) && shape.len() == 2;
                    let mut wq = if why.is_some() {
                        wl
                    } else {
                        let wq = if conv1d {
                            let wt = crate::adapter::transpose(&wl, rows, stored_cols);
                            quantize_dequantize(t, &wt)
                                .map(|q| crate::adapter::transpose(&q, stored_cols, rows))
                        } else {
                            quantize_dequantize(t, &wl)
                        };
                        wq.map_err(|m| {
                            anyhow::Error::new(InputError::invalid(
                                file.path(),
                                format!("tensor `{name}`: {m}"),
                            ))
                        })?
                    };
                    // bitsandbytes 0.50.2 `dequantize_4bit` returns the quant_state's dtype,
                    // the weight's as loaded (`QuantState(dtype=A.dtype)`): a 16-bit model trained
                    // on bf16(dequant), and PEFT's `Linear4bit.merge` adds ΔW to that.
                    if matches!(load_dtype, Dtype::BF16 | Dtype::F16) {
                        wq = dtype::decode(load_dtype, &dtype::encode(load_dtype, &wq));
                    }
                    stray_norm = Some((
                        w.iter()
                            .zip(&wq)
                            .map(|(a, b)| ((a - b) as f64).powi(2))
                            .sum::<f64>()
                            .sqrt(),
                        load_dtype,
                        why,
                    ));
                    in_dtype = Dtype::F32;
                    replaced = dtype::encode(in_dtype, &wq);
                    &replaced
                }
                _ => view.data,
            },
        };
        let padded;
        let w0: &[u8] = if cols != stored_cols {
            padded = super::widen::pad_columns(w0, in_dtype, rows, stored_cols, cols);
            &padded
        } else {
            w0
        };
        // PiSSA / OLoRA / KaSA: the adapter is added to the residual PEFT builds from W0 (one
        // term on such a tensor, checked by the plan), cast back to the weight's dtype as PEFT
        // does.
        let residual_bytes;
        let w0: &[u8] = match merge.terms.iter().find_map(|&(ai, mi)| {
            let a = &self.adapters[ai].adapter;
            let m = &a.modules[mi];
            Some((a.residual_of(m)?, m))
        }) {
            Some((rule, m)) => {
                let w = dtype::decode(in_dtype, w0);
                let res = super::residual::residual(rule, &w, (rows, cols), m.rank, m.scale)
                    .map_err(|why| {
                        anyhow::Error::new(InputError::invalid(
                            file.path(),
                            format!(
                                "tensor `{name}` (module `{}`, {}): {why}",
                                m.name,
                                rule.label()
                            ),
                        ))
                    })?;
                residual_bytes = dtype::encode(in_dtype, &res);
                &residual_bytes
            }
            None => w0,
        };
        // Factors in the stored orientation: a transposed base gets (B·A)ᵀ = Aᵀ·Bᵀ.
        let mut owned: Vec<StoredTerm> = Vec::new();
        let order = self.apply_order(merge.terms);
        // A base-dependent update after another term sees the weight as the terms before it
        // left it, as ComfyUI applies patches (`comfy/lora.py` `calculate_weight`: each
        // adapter's `calculate_weight` gets the previous result): `running` is W0 plus every
        // earlier term's ΔW, in f32 as ComfyUI's intermediate dtype holds it.
        let sequential = order
            .iter()
            .skip(1)
            .any(|&(ai, mi)| self.adapters[ai].adapter.modules[mi].factors.needs_base());
        let mut running: Option<Vec<f32>> = sequential.then(|| dtype::decode(in_dtype, w0));
        for &(ai, mi) in &order {
            let a = &self.adapters[ai].adapter;
            let m = &a.modules[mi];
            let (factors, dense) = if m.factors.needs_base() {
                // OFT / IA3: ΔW = f(W0) from the base as it is merged into (after a
                // modules_to_save override or dequantization), built with the user weight as
                // LyCORIS' multiplier ([`algo::delta_from_base`]); the term's scale is then 1.
                let w = match &running {
                    Some(r) => r.clone(),
                    None => dtype::decode(in_dtype, w0),
                };
                let (w, d, k) = if m.base_transposed {
                    (crate::adapter::transpose(&w, rows, cols), cols, rows)
                } else {
                    (w, rows, cols)
                };
                let delta =
                    a.delta_from_base(m, &w, (d, k), shape.len() > 2, self.adapters[ai].weight)?;
                let d = if m.base_transposed {
                    crate::adapter::transpose(&delta, d, k)
                } else {
                    delta
                };
                ((Vec::new(), Vec::new()), Some(d))
            } else if m.factors.lora().is_some() {
                let (b, av) = a.factors(m)?;
                let stored = if m.base_transposed {
                    (
                        crate::adapter::transpose(&av, m.rank, m.in_features),
                        crate::adapter::transpose(&b, m.out_features, m.rank),
                    )
                } else {
                    (b.to_vec(), av.to_vec())
                };
                (stored, None)
            } else {
                // LoHa, LoKr, Tucker and full modules: ΔW rebuilt whole (scale applied by the
                // term, so weights and unmerge act as on LoRA).
                let d = a.delta_unscaled(m)?;
                let d = if m.base_transposed {
                    crate::adapter::transpose(&d, m.out_features, m.in_features)
                } else {
                    d
                };
                ((Vec::new(), Vec::new()), Some(d))
            };
            let mag = m.dora_magnitude.as_ref().map(|d| a.values(d)).transpose()?;
            if let Some(v) = &mag {
                check_per_input_dora(a, m, v.len(), name, &shape)?;
            }
            if let Some(r) = running.as_mut() {
                if mag.is_some() {
                    return Err(anyhow::Error::new(InputError::invalid(
                        &a.path,
                        format!("module `{}`: a DoRA module before a base-dependent update on tensor `{name}` cannot be applied in sequence (its result is not a fixed ΔW)", m.name),
                    )));
                }
                let s = if m.factors.needs_base() {
                    1.0
                } else {
                    self.adapters[ai].weight * m.scale
                };
                super::sequence::accumulate(r, &factors, dense.as_deref(), m.rank, s);
            }
            owned.push(StoredTerm {
                b: factors.0,
                a: factors.1,
                dense,
                magnitude: mag,
            });
        }
        let term_list: Vec<Term> = order
            .iter()
            .zip(&owned)
            .map(|(&(ai, mi), st)| {
                let wa = &self.adapters[ai];
                let m = &wa.adapter.modules[mi];
                let axis = if m.base_transposed {
                    NormAxis::Cols
                } else {
                    NormAxis::Rows
                };
                // PEFT's DoRA scales δ by the user weight; LyCORIS' is blended by it as ComfyUI
                // does (see backend::Dora).
                let (scale, dora) = match (st.magnitude.as_ref(), m.dora_rule) {
                    (None, _) if m.factors.needs_base() => (1.0, None),
                    (None, _) => (wa.weight * m.scale, None),
                    (Some(v), DoraRule::Peft) => (wa.weight * m.scale, Some(Dora::peft(v, axis))),
                    (Some(v), DoraRule::Lycoris { per_input }) => (
                        m.scale,
                        Some(Dora {
                            magnitude: v.as_slice(),
                            axis: if per_input {
                                NormAxis::Cols
                            } else {
                                NormAxis::Rows
                            },
                            group: if per_input {
                                m.in_features / v.len().max(1)
                            } else {
                                1
                            },
                            eps: f32::EPSILON,
                            strength: wa.weight as f32,
                        }),
                    ),
                };
                // PEFT 0.21.2 `lora.Embedding.merge` adds `get_delta_weight().to(orig_dtype)`:
                // on a 16-bit embedding ΔW is rounded to the weight's dtype before the add
                // (`Linear.merge` adds the f32 ΔW). PEFT's LoRA only: other formats keep
                // their own rule.
                let delta_dtype = (wa.adapter.format == crate::adapter::Format::Peft
                    && m.kind == crate::adapter::ModuleKind::Embedding
                    && m.factors.lora().is_some()
                    && dora.is_none()
                    && matches!(in_dtype, Dtype::BF16 | Dtype::F16))
                .then_some(in_dtype);
                Term {
                    b: &st.b,
                    a: &st.a,
                    rank: m.rank,
                    dense: st.dense.as_deref(),
                    scale: self.signed(scale) as f32,
                    dora,
                    delta_dtype,
                }
            })
            .collect();
        let job = MergeJob {
            w0,
            in_dtype,
            rows,
            cols,
            terms: &term_list,
            // With a stray-term report the merged values are needed in f32; rounded below,
            // once, exactly as the engine rounds.
            out_dtype: if stray_norm.is_some() {
                Dtype::F32
            } else {
                out_dtype
            },
        };
        let invalid = |e: MergeError| {
            let modules: Vec<String> = order
                .iter()
                .map(|&(ai, mi)| self.adapters[ai].adapter.modules[mi].name.clone())
                .collect();
            anyhow::Error::new(InputError::invalid(
                file.path(),
                format!(
                    "tensor `{name}`: merging {} gives an invalid result: {e}",
                    modules.join(" + ")
                ),
            ))
        };
        let Some((stray_norm, load_dtype, not_quantized)) = stray_norm else {
            // The sink's own error (the writer's) is kept aside and returned as it was raised.
            let mut stopped = None;
            let r = merge
                .engine
                .merge_to(&job, self.options.rounding, &mut |p| {
                    sink(p).map_err(|e| {
                        stopped = Some(e);
                        MergeError::SinkStopped
                    })
                });
            if let Some(e) = stopped {
                return Err(e);
            }
            r.map_err(invalid)?;
            return Ok(None);
        };
        let result = merge
            .engine
            .merge_with(&job, self.options.rounding)
            .map_err(invalid)?;
        let merged = dtype::decode(Dtype::F32, &result);
        let w0 = dtype::decode(Dtype::F32, w0);
        let delta_norm = merged
            .iter()
            .zip(&w0)
            .map(|(m, w)| ((m - w) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let data = dtype::encode(out_dtype, &merged);
        if let Some(i) = dtype::first_non_finite(out_dtype, &data) {
            return Err(anyhow::Error::new(InputError::invalid(
                file.path(),
                format!(
                    "tensor `{name}`: merged value at {i} is {}",
                    dtype::non_finite_reason(out_dtype, &data, i)
                ),
            )));
        }
        sink(Piece::Whole(data))?;
        Ok(Some(QloraTensor {
            name: name.to_owned(),
            stray_norm,
            delta_norm,
            ratio: stray_norm / delta_norm.max(f64::MIN_POSITIVE),
            load_dtype: dtype::name(load_dtype),
            not_quantized,
        }))
    }

    /// [`Self::merge_tensor`] of base tensor `name` with `terms` into one host buffer, in f32
    /// (for a caller that needs the whole result: requantization, another format's writer).
    pub(super) fn merge_tensor_f32(
        &self,
        engine: &backend::Engine,
        name: &str,
        terms: &[(usize, usize)],
    ) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        let merge = TensorMerge::new(engine, name, terms, Dtype::F32);
        self.merge_tensor(merge, &mut |p| {
            match p {
                Piece::Whole(v) if out.is_empty() => out = v,
                Piece::Whole(v) => out.extend_from_slice(&v),
                Piece::Part(b) => out.extend_from_slice(b),
            }
            Ok(())
        })?;
        Ok(dtype::decode(Dtype::F32, &out))
    }

    /// `terms` in the order they apply: as given, or reversed when unmerging (the adapter added
    /// last comes off first). Every merge path (whole, row bands, experts) walks this order.
    pub(super) fn apply_order(&self, terms: &[(usize, usize)]) -> Vec<(usize, usize)> {
        let mut order = terms.to_vec();
        if self.options.unmerge {
            order.reverse();
        }
        order
    }

    /// The file holding base tensor `name` and its header entry. Every name a plan merges is a
    /// base tensor (planning resolved it), so a miss is a bug, not bad input.
    pub(super) fn base_tensor(
        &self,
        name: &str,
    ) -> (&crate::io::SafetensorsFile, &crate::io::header::TensorInfo) {
        let file = self.base.file_of(name).expect("base tensor");
        let info = self.base.info(name).expect("base tensor");
        (file, info)
    }
}

/// One base tensor to merge, as the three merge paths ([`MergePlan::merge_tensor`] whole,
/// [`MergePlan::merge_slices`] by row bands, [`MergePlan::merge_experts`] expert by expert)
/// take it: the engine that computes it, its name, the `(adapter, module)` terms that touch it
/// in the order they apply, and the dtype its bytes are stored in. One value, so the dispatch
/// hands it on unchanged and the three paths cannot drift in what they are given.
#[derive(Clone, Copy)]
pub(super) struct TensorMerge<'a> {
    pub engine: &'a backend::Engine,
    pub name: &'a str,
    pub terms: &'a [(usize, usize)],
    pub out_dtype: Dtype,
}

impl<'a> TensorMerge<'a> {
    pub fn new(
        engine: &'a backend::Engine,
        name: &'a str,
        terms: &'a [(usize, usize)],
        out_dtype: Dtype,
    ) -> Self {
        TensorMerge {
            engine,
            name,
            terms,
            out_dtype,
        }
    }
}

/// Where a merge hands the result's bytes: whole from the CPU engine, in row-major pieces from
/// the GPU engine ([`Piece`]).
pub(super) type PieceSink<'s> = &'s mut dyn FnMut(Piece<'_>) -> Result<()>;

/// `dequantize_4bit(quantize_4bit(W))` as bitsandbytes computes it on load
/// (`BitsAndBytesConfig(load_in_4bit=True)`): the weights a QLoRA adapter was trained against.
fn quantize_dequantize(t: &AsTrainedOn, w: &[f32]) -> Result<Vec<f32>, String> {
    use crate::io::quant::bnb4;
    if t.double_quant {
        return Ok(crate::io::quant::bnb4_dq::quantize_dequantize(
            t.kind,
            t.blocksize,
            w,
        ));
    }
    let (packed, absmax) = bnb4::quantize(t.kind, t.blocksize, w);
    let p = bnb4::Params {
        kind: t.kind,
        blocksize: t.blocksize,
        dtype: Dtype::F32,
        shape: vec![w.len()],
        nested: None,
    };
    let absmax = dtype::encode(Dtype::F32, &absmax);
    Ok(bnb4::dequantize(
        &p,
        &bnb4::Parts {
            packed: &packed,
            absmax: &absmax,
            nested_absmax: None,
            nested_code: None,
        },
    ))
}

/// One term's factors in the base tensor's stored orientation.
struct StoredTerm {
    b: Vec<f32>,
    a: Vec<f32>,
    dense: Option<Vec<f32>>,
    magnitude: Option<crate::adapter::Values>,
}

/// A merged tensor whose f32 values hold a NaN or ±inf is an error naming the base file and the
/// tensor (before anything of it is written).
pub(super) fn check_finite(base: &Checkpoint, name: &str, v: &[f32]) -> InputResult<()> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        let path = base
            .file_of(name)
            .map(|f| f.path().to_path_buf())
            .unwrap_or_default();
        return Err(InputError::invalid(
            path,
            format!(
                "tensor `{name}`: merged value at {i} is not finite ({})",
                v[i]
            ),
        ));
    }
    Ok(())
}
