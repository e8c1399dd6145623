//! The GGUF merge's row bands: one [`Kind::Weight`] target's f32 merge `W0 + Σ terms`, the
//! base dequantized band by band and merged through the backend (in place on the CPU for plain
//! terms; [`Engine::merge`], the safetensors merge's code, where a term is DoRA or on the GPU),
//! handed to the caller's quantizer band by band. DoRA norms per output row are one row's, so
//! the bands stay; a norm per column takes the tensor as one band.
//!
//! Must not write or choose types: [`super::gguf`] plans and stores.

use super::gguf::{GgufMergePlan, Kind, Target};
use crate::adapter::DoraRule;
use crate::backend::profile::{self, Stage};
use crate::backend::{cpu, Dora, Engine, MergeError, MergeJob, NormAxis, Term};
use crate::dtype::Dtype;
use crate::error::InputError;
use crate::io::gguf::names;
use crate::io::gguf::quant;
use anyhow::Result;

impl GgufMergePlan {
    /// The f32 merge of one target, in the GGUF tensor's layout, through the backend's merge
    /// (the arithmetic every safetensors merge uses: `acc = Σₖ b·a` in f32, `w + scale·acc`),
    /// handed to `band` in bands of whole rows, in order.
    pub(super) fn merged(
        &self,
        t: &Target,
        engine: &Engine,
        scratch: &mut Scratch,
        band_out: impl FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        self.merged_in_bands(t, engine, scratch, 1 << 20, band_out)
    }

    /// [`Self::merged`] in CPU bands of about `band_values` values (a test seam: the bits do
    /// not depend on it).
    fn merged_in_bands(
        &self,
        t: &Target,
        engine: &Engine,
        scratch: &mut Scratch,
        band_values: usize,
        mut band_out: impl FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        if t.kind != Kind::Weight {
            return band_out(&self.whole(t)?);
        }
        let (f, info) = self.base.get(&t.tensor).expect("planned");
        let shape = info.shape();
        let (rows, cols) = (shape[0], shape[1]);
        // The CPU merge runs in row bands of about `band_values` values (2²⁰), each dequantized, merged in
        // place and quantized while in cache: no tensor-sized f32 base or merge, no output
        // buffer per band and no copies into and out of one (issue #17). Rows are independent
        // in the dequantizer, the merge (a DoRA norm per row is one row's: PEFT's
        // `get_weight_norm`, `dim=1` of `[out, in]`) and the quantizers (rows are whole
        // blocks), so the bits are those of one whole-tensor job. The GPU, and a DoRA norm per
        // column (LyCORIS' per-input `dora_scale`), take the tensor whole.
        let gpu = engine.is_gpu();
        let (dora, by_cols) = t.terms.iter().fold((false, false), |(d, c), &(ai, mi)| {
            let m = &self.adapters[ai].adapter.modules[mi];
            let has = m.dora_magnitude.is_some();
            (d || has, c || (has && dora_axis(m) == NormAxis::Cols))
        });
        let band = if gpu || by_cols {
            rows.max(1)
        } else {
            (band_values / cols.max(1)).max(1)
        };
        // Every value is overwritten by the dequantization: zeroed only when the size changes
        // (zeroing 64 MB per 4096² tensor was ~2 % of a 7B merge's CPU time).
        let w0 = &mut scratch.w0;
        if w0.len() != band.min(rows) * cols {
            w0.clear();
            w0.resize(band.min(rows) * cols, 0.0);
        }
        f.prefetch(info);
        let data = f.view(info).data;
        let row_bytes = cols / info.ty.block_size() * info.ty.type_size();
        assert_eq!(
            row_bytes * rows,
            data.len(),
            "planned: a dequantizable type whose size the header validated"
        );
        let mut order = t.terms.clone();
        if self.options.unmerge {
            order.reverse();
        }
        // Factors in the stored layout: transposed for embeddings, q/k rows permuted.
        let mut owned = Vec::new();
        for &(ai, mi) in &order {
            let a = &self.adapters[ai].adapter;
            let m = &a.modules[mi];
            let (mut b, mut av, mut dense) = (Vec::new(), Vec::new(), None);
            if m.factors.lora().is_some() {
                let (fb, fa) = a.factors(m)?;
                (b, av) = if m.base_transposed {
                    (
                        crate::adapter::transpose(&fa, m.rank, m.in_features),
                        crate::adapter::transpose(&fb, m.out_features, m.rank),
                    )
                } else {
                    (fb.to_vec(), fa.to_vec())
                };
                if let Some(h) = t.permute {
                    b = names::permute_rows(&b, rows, m.rank, h);
                }
            } else {
                let mut d = a.delta_unscaled(m)?;
                if m.base_transposed {
                    d = crate::adapter::transpose(&d, m.out_features, m.in_features);
                }
                if let Some(h) = t.permute {
                    d = names::permute_rows(&d, rows, cols, h);
                }
                dense = Some(d);
            }
            // The magnitude of a row norm follows B's rows through the q/k permutation.
            let mut mag = match &m.dora_magnitude {
                Some(d) => Some(a.values(d)?.to_vec()),
                None => None,
            };
            if let (Some(v), Some(h), NormAxis::Rows) = (mag.as_mut(), t.permute, dora_axis(m)) {
                *v = names::permute_rows(v, rows, 1, h);
            }
            owned.push((b, av, dense, mag));
        }
        let terms: Vec<Term> = order
            .iter()
            .zip(&owned)
            .map(|(&(ai, mi), (b, a, dense, mag))| {
                let wa = &self.adapters[ai];
                let m = &wa.adapter.modules[mi];
                let (s, dora) = dora_term(m, wa.weight, mag.as_deref());
                Term {
                    b,
                    a,
                    rank: m.rank,
                    dense: dense.as_deref(),
                    scale: if self.options.unmerge { -s } else { s } as f32,
                    dora,
                }
            })
            .collect();
        for r0 in (0..rows).step_by(band) {
            let r1 = (r0 + band).min(rows);
            let band_terms: Vec<Term> = terms
                .iter()
                .map(|x| Term {
                    b: x.b.get(r0 * x.rank..r1 * x.rank).unwrap_or(&[]),
                    dense: x.dense.map(|d| &d[r0 * cols..r1 * cols]),
                    dora: x.dora.map(|d| match d.axis {
                        NormAxis::Rows => Dora {
                            magnitude: &d.magnitude[r0..r1],
                            ..d
                        },
                        NormAxis::Cols => d,
                    }),
                    ..*x
                })
                .collect();
            let name_err = |e: MergeError| {
                let e = match e {
                    MergeError::NonFinite { row, col, value } => MergeError::NonFinite {
                        row: row + r0,
                        col,
                        value,
                    },
                    e => e,
                };
                InputError::invalid(
                    &self.out,
                    format!(
                        "tensor `{}`: the merge gives an invalid result: {e}; nothing was written",
                        t.tensor
                    ),
                )
            };
            let w = &mut scratch.w0[..(r1 - r0) * cols];
            {
                let _t = profile::time(Stage::Dequantize);
                let ok = quant::dequantize_par(info.ty, &data[r0 * row_bytes..r1 * row_bytes], w);
                assert!(ok, "planned: a dequantizable type");
            }
            if gpu || dora {
                // The backend's merge, DoRA norms included (the safetensors merge's code).
                let job = MergeJob {
                    w0: bytemuck::cast_slice(w),
                    in_dtype: Dtype::F32,
                    rows: r1 - r0,
                    cols,
                    terms: &band_terms,
                    out_dtype: Dtype::F32,
                };
                let out = engine.merge(&job).map_err(name_err)?;
                match bytemuck::try_cast_slice::<u8, f32>(&out) {
                    Ok(v) => band_out(v)?,
                    Err(_) => {
                        let v: Vec<f32> = bytemuck::pod_collect_to_vec(&out);
                        band_out(&v)?
                    }
                }
            } else {
                // In place in the dequantized base, which is not read again: the same bits as
                // the F32 job, without its output buffer and the two copies into and out of it
                // (issue #17: ~4 % of a 7B merge's CPU time in memmove).
                cpu::merge_f32_in_place(w, r1 - r0, cols, &band_terms).map_err(name_err)?;
                band_out(w)?;
            }
        }
        f.release(info);
        Ok(())
    }
}

/// The stored-matrix axis of module `m`'s DoRA norm in a GGUF tensor, which has the PyTorch
/// layout: per output row, except for an embedding (`[vocab, dim]`, `base_transposed`), whose
/// PEFT norm is per column, and LyCORIS' per-input-channel `dora_scale`.
fn dora_axis(m: &crate::adapter::LoraModule) -> NormAxis {
    match m.dora_rule {
        DoraRule::Lycoris { per_input: true } => NormAxis::Cols,
        DoraRule::Lycoris { per_input: false } => NormAxis::Rows,
        DoraRule::Peft if m.base_transposed => NormAxis::Cols,
        DoraRule::Peft => NormAxis::Rows,
    }
}

/// The scale and DoRA of module `m` at user weight `w` with magnitude `mag`, as the
/// safetensors merge builds them (`tensor.rs`): PEFT's DoRA scales δ by the weight, LyCORIS'
/// is blended by it as ComfyUI's `weight_decompose` does (see [`Dora`]).
fn dora_term<'a>(
    m: &crate::adapter::LoraModule,
    w: f64,
    mag: Option<&'a [f32]>,
) -> (f64, Option<Dora<'a>>) {
    let axis = dora_axis(m);
    match (mag, m.dora_rule) {
        (None, _) => (w * m.scale, None),
        (Some(v), DoraRule::Peft) => (w * m.scale, Some(Dora::peft(v, axis))),
        (Some(v), DoraRule::Lycoris { per_input }) => (
            m.scale,
            Some(Dora {
                magnitude: v,
                axis,
                group: if per_input {
                    m.in_features / v.len().max(1)
                } else {
                    1
                },
                eps: f32::EPSILON,
                strength: w as f32,
            }),
        ),
    }
}

/// Whole-tensor buffers reused from one merged tensor to the next.
#[derive(Default)]
pub(super) struct Scratch {
    /// One row band of the base tensor dequantized (the GPU's band is the whole tensor).
    pub(super) w0: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::super::gguf::{GgufMergeOptions, GgufMergePlan};
    use super::super::WeightedAdapter;
    use super::*;
    use crate::adapter::Adapter;
    use crate::io::gguf::GgufModel;
    use std::path::Path;

    /// The f32 merge of every weight target of the fixture Llama (Q8_0, q/k permuted) with
    /// DoRA, then LoRA-with-bias adapters, in bands of 3 rows (bands cut through heads, the
    /// permuted magnitudes and B sliced per band) and of 1 row, is bit for bit the merge as one
    /// band: DoRA's per-row norms need no other row.
    #[test]
    fn dora_bands_give_the_bits_of_one_band() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gguf/peft_variants");
        let base_path = dir.join("llama.q8_0.gguf");
        let adapters = ["llama_dora", "llama_bias"]
            .iter()
            .map(|a| WeightedAdapter {
                adapter: Adapter::open(dir.join(a)).unwrap(),
                weight: 0.7,
            })
            .collect();
        let tmp = tempfile::tempdir().unwrap();
        let plan = GgufMergePlan::new(
            &base_path,
            GgufModel::open(&base_path).unwrap(),
            adapters,
            tmp.path().join("m.gguf"),
            GgufMergeOptions::default(),
        )
        .unwrap();
        let mut weights = 0;
        for t in plan.targets.iter().filter(|t| t.kind == Kind::Weight) {
            let values = |rows: usize| {
                let cols = plan.base.get(&t.tensor).unwrap().1.shape()[1];
                let mut v = Vec::new();
                let mut scratch = Scratch::default();
                plan.merged_in_bands(t, &Engine::Cpu, &mut scratch, rows * cols, |b| {
                    v.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
                v
            };
            let whole = values(1 << 20);
            let dora = t.terms.iter().any(|&(ai, mi)| {
                plan.adapters[ai].adapter.modules[mi]
                    .dora_magnitude
                    .is_some()
            });
            weights += usize::from(dora && t.permute.is_some());
            for rows in [3, 1] {
                let banded = values(rows);
                assert_eq!(whole.len(), banded.len());
                assert!(
                    whole
                        .iter()
                        .zip(&banded)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{} in bands of {rows} rows",
                    t.tensor
                );
            }
        }
        assert_eq!(weights, 2, "q and k: DoRA on permuted rows");
    }
}
