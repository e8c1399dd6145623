//! One merged GGUF tensor, stored: a [`Kind::Weight`] target's f32 merge `W0 + Σ terms`
//! quantized to the type [`super::gguf`] chose. On the CPU with plain terms, fused row chunks:
//! each parallel task dequantizes a few rows of the base, merges them in place
//! ([`cpu::merge_f32_in_place`]) and quantizes them. Where a term is DoRA or the engine is the
//! GPU, row bands through [`Engine::merge`] (the safetensors merge's code), each quantized over
//! the cores. DoRA norms per output row are one row's, so the bands stay; a norm per column
//! takes the tensor as one band.
//!
//! Must not write or choose types: [`super::gguf`] plans and writes.

use super::gguf_model::{GgufMergePlan, Kind, Scratch, Target};
use crate::adapter::DoraRule;
use crate::backend::profile::{self, Stage};
use crate::backend::{cpu, Dora, Engine, MergeError, MergeJob, NormAxis, Term};
use crate::dtype::Dtype;
use crate::error::InputError;
use crate::io::gguf::names;
use crate::io::gguf::quant;
use crate::io::gguf::GgmlType;
use anyhow::Result;

impl GgufMergePlan {
    /// The f32 merge of one target, in the GGUF tensor's layout, through the backend's merge
    /// (the arithmetic every safetensors merge uses: `acc = Σₖ b·a` in f32, `w + scale·acc`),
    /// stored in `ty` (whole blocks per row): the bytes and the
    /// [`quant::StoredError`] of the stored values against the f32 merge. On the CPU with plain
    /// terms each parallel task takes a few rows through the dequantizer, the merge and the
    /// quantizer while they are in cache, so that no stage waits for the slowest thread of
    /// the one before (issue #17: the three stages per band, each ending in a barrier, kept
    /// the cores 85 % busy). The bytes are those of the stages run one after the other; the
    /// error sums are added per chunk, so they may differ from a band path's (the GPU's, or
    /// DoRA's) in the last bits of their f64 order.
    pub(super) fn merged_stored(
        &self,
        t: &Target,
        engine: &Engine,
        scratch: &mut Scratch,
        ty: GgmlType,
    ) -> Result<(Vec<u8>, quant::StoredError)> {
        // The whole stored tensor is reserved at once (bands would regrow it).
        let values: usize = self
            .base
            .get(&t.tensor)
            .map_or(0, |(_, info)| info.shape().iter().product());
        let mut stored = Stored {
            ty,
            bytes: Vec::with_capacity(values / ty.block_size() * ty.type_size()),
            err: quant::StoredError::default(),
        };
        self.merged_in_bands(t, engine, scratch, 1 << 20, Out::Stored(&mut stored))?;
        Ok((stored.bytes, stored.err))
    }

    /// [`Self::merged_stored`] in CPU bands (and fused chunks) of about `band_values` values (a
    /// test seam: the bits do not depend on it), or, for the tests, the f32 bands themselves.
    fn merged_in_bands(
        &self,
        t: &Target,
        engine: &Engine,
        scratch: &mut Scratch,
        band_values: usize,
        mut out: Out,
    ) -> Result<()> {
        if t.kind != Kind::Weight {
            return out.band(&self.whole(t)?);
        }
        let (f, info) = self.base.get(&t.tensor).expect("planned");
        let shape = info.shape();
        let (rows, cols) = (shape[0], shape[1]);
        // Rows are independent in the dequantizer, the merge (a DoRA norm per row is one row's:
        // PEFT's `get_weight_norm`, `dim=1` of `[out, in]`) and the quantizers (rows are whole
        // blocks), so chunks and bands give the bits of one whole-tensor job: no tensor-sized
        // f32 base or merge, no output buffer per band and no copies into and out of one
        // (issue #17). CPU DoRA merges run in bands of about `band_values` values (2²⁰); the
        // GPU, and a DoRA norm per column (LyCORIS' per-input `dora_scale`), take the tensor
        // whole.
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
                    delta_dtype: None,
                }
            })
            .collect();
        let name_err = |e: MergeError, r0: usize| {
            let e = match e {
                MergeError::NonFinite { row, col, value } => MergeError::NonFinite {
                    row: row + r0,
                    col,
                    value,
                },
                e => e,
            };
            // Named against the base file holding the tensor, as the safetensors merge does
            // (`tensor::check_finite`): a NaN stored in the base is its fault, not the output's.
            InputError::invalid(
                f.path(),
                format!(
                    "tensor `{}`: the merge gives an invalid result: {e}; nothing was written",
                    t.tensor
                ),
            )
        };
        if let (Out::Stored(st), false, false) = (&mut out, gpu, dora) {
            // Fused row chunks of about `PAR_VALUES` values, in order, in waves of sixteen bands
            // (2²⁴ values: one wait for the slowest thread per 256 chunks, and at most one
            // wave's stored bytes held beside the tensor's). `band_values` sets both where
            // smaller (a test seam, as for the bands).
            use rayon::prelude::*;
            let chunk = (quant::PAR_VALUES.min(band_values) / cols.max(1)).max(1);
            let wave = (band_values.saturating_mul(16) / cols.max(1)).max(chunk) / chunk * chunk;
            let ty = st.ty;
            for wave0 in (0..rows).step_by(wave) {
                let wave1 = (wave0 + wave).min(rows);
                let parts: Vec<Result<Part>> = (wave0..wave1)
                    .step_by(chunk)
                    .collect::<Vec<_>>()
                    .into_par_iter()
                    .map_init(
                        || (Vec::new(), Vec::new()),
                        |(w, back): &mut (Vec<f32>, Vec<f32>), r0| {
                            let r1 = (r0 + chunk).min(wave1);
                            // Every value is overwritten: zeroed only when the length changes.
                            if w.len() != (r1 - r0) * cols {
                                w.clear();
                                w.resize((r1 - r0) * cols, 0.0);
                            }
                            {
                                let _t = profile::time(Stage::Dequantize);
                                let ok = quant::dequantize_into(
                                    info.ty,
                                    &data[r0 * row_bytes..r1 * row_bytes],
                                    w,
                                );
                                assert!(ok, "planned: a dequantizable type");
                            }
                            cpu::merge_f32_in_place(
                                w,
                                r1 - r0,
                                cols,
                                &rows_of(&terms, r0, r1, cols),
                            )
                            .map_err(|e| name_err(e, r0))?;
                            let _t = profile::time(Stage::Quantize);
                            let (bytes, e) =
                                quant::quantize_part_measured(ty, w, back).expect("planned");
                            Ok((bytes, e, r0))
                        },
                    )
                    .collect();
                // The first failing chunk's error: the first non-finite value in row order.
                for p in parts {
                    let (bytes, e, r0) = p?;
                    st.bytes.extend_from_slice(&bytes);
                    st.err = st.err.then(e, r0 * cols);
                }
            }
            f.release(info);
            return Ok(());
        }
        // Every value is overwritten by the dequantization: zeroed only when the size changes
        // (zeroing 64 MB per 4096² tensor was ~2 % of a 7B merge's CPU time).
        let w0 = &mut scratch.w0;
        if w0.len() != band.min(rows) * cols {
            w0.clear();
            w0.resize(band.min(rows) * cols, 0.0);
        }
        for r0 in (0..rows).step_by(band) {
            let r1 = (r0 + band).min(rows);
            let band_terms = rows_of(&terms, r0, r1, cols);
            let name_err = |e: MergeError| name_err(e, r0);
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
                let merged = engine.merge(&job).map_err(name_err)?;
                match bytemuck::try_cast_slice::<u8, f32>(&merged) {
                    Ok(v) => out.band(v)?,
                    Err(_) => {
                        let v: Vec<f32> = bytemuck::pod_collect_to_vec(&merged);
                        out.band(&v)?
                    }
                }
            } else {
                // Plain CPU terms reach this only through `Out::Values` (the tests' f32 bands;
                // stored output takes the fused chunks above): in place in the dequantized base,
                // the same bits as the F32 job.
                cpu::merge_f32_in_place(w, r1 - r0, cols, &band_terms).map_err(name_err)?;
                out.band(w)?;
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

/// Rows `r0..r1` of `terms` (of a `rows × cols` tensor): B, dense updates and row magnitudes
/// sliced, A and column magnitudes whole.
fn rows_of<'a>(terms: &[Term<'a>], r0: usize, r1: usize, cols: usize) -> Vec<Term<'a>> {
    terms
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
        .collect()
}

/// One fused chunk stored: its bytes, their error, its first row.
type Part = (Vec<u8>, quant::StoredError, usize);

/// Where [`GgufMergePlan::merged_in_bands`] hands the merge: f32 bands to a callback, or stored
/// in a type.
enum Out<'o> {
    #[cfg(test)]
    Values(&'o mut dyn FnMut(&[f32]) -> Result<()>),
    Stored(&'o mut Stored),
}

/// The bytes and the measured error of a merge stored in `ty`.
struct Stored {
    ty: GgmlType,
    bytes: Vec<u8>,
    err: quant::StoredError,
}

impl Out<'_> {
    /// The next band of the merge, in order.
    fn band(&mut self, v: &[f32]) -> Result<()> {
        match self {
            #[cfg(test)]
            Out::Values(f) => f(v),
            Out::Stored(st) => {
                let _t = profile::time(Stage::Quantize);
                let at = st.bytes.len() / st.ty.type_size() * st.ty.block_size();
                let e = quant::quantize_par_measured(st.ty, v, &mut st.bytes).expect("planned");
                st.err = st.err.then(e, at);
                Ok(())
            }
        }
    }
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
                let mut keep = |b: &[f32]| {
                    v.extend_from_slice(b);
                    Ok(())
                };
                plan.merged_in_bands(
                    t,
                    &Engine::Cpu,
                    &mut scratch,
                    rows * cols,
                    Out::Values(&mut keep),
                )
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

    /// A plan of `adapters` (folders of `fixtures/gguf/peft_variants`, or paths) on the fixture
    /// Llama (Q8_0, 32 columns).
    fn llama_plan(adapters: &[&Path], out: &Path) -> GgufMergePlan {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gguf/peft_variants");
        let base_path = dir.join("llama.q8_0.gguf");
        let adapters = adapters
            .iter()
            .map(|a| WeightedAdapter {
                adapter: Adapter::open(dir.join(a)).unwrap(),
                weight: 0.7,
            })
            .collect();
        GgufMergePlan::new(
            &base_path,
            GgufModel::open(&base_path).unwrap(),
            adapters,
            out.to_path_buf(),
            GgufMergeOptions::default(),
        )
        .unwrap()
    }

    /// The fused CPU path (rows dequantized, merged and stored per parallel chunk) stores the
    /// bytes that `quantize_par_measured` stores of the f32 merge taken whole, with the same
    /// error sums (to the f64 rounding of their order) and maximum, in chunks of 1, 3 and all
    /// rows (chunks of 1 row come in waves of 16, so the 32-row `attn_q` takes two waves), for
    /// block types of 1 and 32 values.
    #[test]
    fn fused_chunks_store_the_bytes_of_the_whole_merge() {
        let tmp = tempfile::tempdir().unwrap();
        let plan = llama_plan(&[Path::new("llama_bias")], &tmp.path().join("m.gguf"));
        let mut checked = 0;
        for t in plan.targets.iter().filter(|t| t.kind == Kind::Weight) {
            let cols = plan.base.get(&t.tensor).unwrap().1.shape()[1];
            let mut whole = Vec::new();
            let mut keep = |b: &[f32]| {
                whole.extend_from_slice(b);
                Ok(())
            };
            let mut scratch = Scratch::default();
            plan.merged_in_bands(
                t,
                &Engine::Cpu,
                &mut scratch,
                1 << 20,
                Out::Values(&mut keep),
            )
            .unwrap();
            for ty in [
                GgmlType::Q8_0,
                GgmlType::Q4_1,
                GgmlType::Q5_0,
                GgmlType::F16,
            ] {
                let mut want = Vec::new();
                let want_err = quant::quantize_par_measured(ty, &whole, &mut want).unwrap();
                for rows in [1, 3, 1 << 20] {
                    let mut st = Stored {
                        ty,
                        bytes: Vec::new(),
                        err: quant::StoredError::default(),
                    };
                    plan.merged_in_bands(
                        t,
                        &Engine::Cpu,
                        &mut scratch,
                        rows * cols,
                        Out::Stored(&mut st),
                    )
                    .unwrap();
                    let what = format!("{} as {ty} in chunks of {rows} rows", t.tensor);
                    assert!(st.bytes == want, "{what}: bytes");
                    assert_eq!(st.err.max_abs, want_err.max_abs, "{what}");
                    assert_eq!(st.err.first_bad, want_err.first_bad, "{what}");
                    let rel = (st.err.sq_err - want_err.sq_err).abs() / want_err.sq_err;
                    assert!(
                        want_err.sq_err > 0.0 && rel < 1e-12,
                        "{what}: Σ e² off by {rel}"
                    );
                    assert!(
                        st.err.sq_val == want_err.sq_val
                            || (st.err.sq_val - want_err.sq_val).abs() < 1e-12 * want_err.sq_val,
                        "{what}"
                    );
                }
                checked += 1;
            }
        }
        assert!(
            checked >= 8,
            "every weight target of the fixture: {checked}"
        );
    }

    /// A v_proj PEFT adapter (rank 2, alpha 2) on the fixture Llama whose B rows `hot` are
    /// `[b, 0]` and the others `[0.01, 0]`, with A's first row all `a`: ΔW row `i` is `B[i][0]·a`.
    /// Its plan and the v target (16 × 32).
    fn v_adapter_plan(tmp: &Path, hot: &[usize], b: f32, a: f32) -> (GgufMergePlan, Target) {
        let dir = tmp.join("hot");
        std::fs::create_dir_all(&dir).unwrap();
        let (rank, rows, cols) = (2usize, 16usize, 32usize);
        let mut bv = vec![0f32; rows * rank];
        for r in 0..rows {
            bv[r * rank] = if hot.contains(&r) { b } else { 0.01 };
        }
        let mut av = vec![0f32; rank * cols];
        av[..cols].fill(a);
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let key = "base_model.model.model.layers.0.self_attn.v_proj";
        let (ab, bb) = (bytes(&av), bytes(&bv));
        let views = [
            (format!("{key}.lora_A.weight"), vec![rank, cols], &ab),
            (format!("{key}.lora_B.weight"), vec![rows, rank], &bb),
        ];
        let tensors: Vec<(String, safetensors::tensor::TensorView)> = views
            .iter()
            .map(|(n, shape, data)| {
                let v = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    data,
                )
                .unwrap();
                (n.clone(), v)
            })
            .collect();
        safetensors::serialize_to_file(tensors, None, &dir.join("adapter_model.safetensors"))
            .unwrap();
        std::fs::write(
            dir.join("adapter_config.json"),
            r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["v_proj"]}"#,
        )
        .unwrap();
        let plan = llama_plan(&[&dir], &tmp.join("m.gguf"));
        let t = plan
            .targets
            .iter()
            .find(|t| t.tensor == "blk.0.attn_v.weight")
            .unwrap()
            .clone();
        assert_eq!(
            plan.base.get(&t.tensor).unwrap().1.shape(),
            &[rows, cols][..]
        );
        (plan, t)
    }

    /// [`GgufMergePlan::merged_in_bands`] stored in `ty` in fused chunks of `chunk_rows` rows.
    fn stored_in_chunks(
        plan: &GgufMergePlan,
        t: &Target,
        ty: GgmlType,
        chunk_rows: usize,
    ) -> Result<Stored> {
        let mut st = Stored {
            ty,
            bytes: Vec::new(),
            err: quant::StoredError::default(),
        };
        let cols = plan.base.get(&t.tensor).unwrap().1.shape()[1];
        let mut scratch = Scratch::default();
        plan.merged_in_bands(
            t,
            &Engine::Cpu,
            &mut scratch,
            chunk_rows * cols,
            Out::Stored(&mut st),
        )?;
        Ok(st)
    }

    /// A merge that overflows f32 is refused by the fused path naming the first non-finite
    /// value by its row in the whole tensor, whichever chunk holds it: rows 9 and 12 overflow
    /// (3e38 · 3e38), row 9 in the 10th chunk of 1 row, the 4th of 3 rows (9..12, row 12 in the
    /// 5th) and the only chunk of all rows.
    #[test]
    fn fused_chunks_name_the_first_overflow_by_its_row_in_the_tensor() {
        let tmp = tempfile::tempdir().unwrap();
        let (plan, t) = v_adapter_plan(tmp.path(), &[9, 12], 3.0e38, 3.0e38);
        for chunk_rows in [1, 3, 1 << 20] {
            let e = match stored_in_chunks(&plan, &t, GgmlType::Q8_0, chunk_rows) {
                Ok(_) => panic!("chunks of {chunk_rows} rows: an overflow was stored"),
                Err(e) => e.to_string(),
            };
            assert!(
                e.contains("blk.0.attn_v.weight")
                    && e.contains("merged value at [9, 0] is not finite"),
                "chunks of {chunk_rows} rows: {e}"
            );
        }
    }

    /// A merge that is finite in f32 but overflows the stored F16 (ΔW = 0.01·… elsewhere,
    /// 1000 · 100 = 1e5 > 65504 on rows 11 and 13) reports its first stored value that is not
    /// finite by its index in the whole tensor (`11 · 32`), from whichever chunk holds it.
    #[test]
    fn fused_chunks_index_the_first_stored_overflow_in_the_tensor() {
        let tmp = tempfile::tempdir().unwrap();
        let (plan, t) = v_adapter_plan(tmp.path(), &[11, 13], 1000.0, 100.0);
        for chunk_rows in [1, 3, 1 << 20] {
            let st = stored_in_chunks(&plan, &t, GgmlType::F16, chunk_rows).unwrap();
            assert_eq!(
                st.err.first_bad,
                Some(11 * 32),
                "chunks of {chunk_rows} rows"
            );
            assert_eq!(st.bytes.len(), 16 * 32 * 2);
        }
    }

    /// A GGUF merge shows its progress in bytes of the tensors it writes: the bar's total is
    /// the output's tensor bytes, and every tensor, copied or merged, adds its size once.
    #[test]
    fn a_gguf_merge_counts_the_tensor_bytes_it_writes() {
        use std::sync::{Arc, Mutex};
        struct Count(Arc<Mutex<(u64, u64)>>);
        impl crate::progress::Progress for Count {
            fn inc(&self, n: u64) {
                self.0.lock().unwrap().1 += n;
            }
        }
        let seen = Arc::new(Mutex::new((0u64, 0u64)));
        let shared = seen.clone();
        let progress = crate::progress::Reporter::new(move |_, total, _| {
            shared.lock().unwrap().0 = total;
            Box::new(Count(shared.clone()))
        });
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gguf/peft_variants");
        let base_path = dir.join("llama.q8_0.gguf");
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("m.gguf");
        let plan = GgufMergePlan::new(
            &base_path,
            GgufModel::open(&base_path).unwrap(),
            vec![WeightedAdapter {
                adapter: Adapter::open(dir.join("llama_bias")).unwrap(),
                weight: 0.7,
            }],
            out.clone(),
            GgufMergeOptions {
                progress,
                ..Default::default()
            },
        )
        .unwrap();
        let report = plan.run(&Engine::Cpu).unwrap();
        assert!(report.run.tensors_merged_count > 0 && report.run.tensors_copied_count > 0);
        let written = GgufModel::open(&out).unwrap();
        let bytes: u64 = written
            .tensors()
            .map(|(f, t)| f.view(t).data.len() as u64)
            .sum();
        assert_eq!(*seen.lock().unwrap(), (bytes, bytes));
    }
}
