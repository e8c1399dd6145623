//! The CPU backend: the reference implementation of every op.
//!
//! Merges run over blocks of rows in parallel (rayon); each row is decoded from the stored
//! dtype, updated in f32 and encoded straight into the output buffer in one pass while it is in
//! cache, so the working memory is the output tensor plus two rows per thread. The per-element arithmetic order is the one documented on
//! [`MergeJob`], which the GPU kernels follow too.

pub mod exact;

use super::profile::{self, Stage};
use super::{MergeError, MergeJob, NormAxis, Term};
use crate::dtype;
use rayon::prelude::*;

/// Rows per parallel block: enough work per task, few rows in flight.
const BLOCK_ELEMS: usize = 1 << 16;

/// Columns per register block of [`low_rank_row`]: this many f32 sums stay in registers (8
/// SSE or 4 AVX vectors) through the whole rank loop, where a loop over the full row would
/// load and store the row once per k.
const COL_BLOCK: usize = 32;

/// `acc[j] = Σₖ b[row,k]·a[k,j]` in ascending k, no fused multiply-add; a dense term's row as is.
/// Computed [`COL_BLOCK`] columns at a time; each element's sum is the same sequence of
/// roundings (`0 + b₀a₀ + b₁a₁ + …`) as a plain loop, so the result does not depend on it.
#[inline(always)]
fn low_rank_row(t: &Term, cols: usize, row: usize, acc: &mut [f32]) {
    if let Some(d) = t.dense {
        acc.copy_from_slice(&d[row * cols..(row + 1) * cols]);
        return;
    }
    let b_row = &t.b[row * t.rank..(row + 1) * t.rank];
    let full = cols / COL_BLOCK * COL_BLOCK;
    for (bi, out) in acc[..full].chunks_exact_mut(COL_BLOCK).enumerate() {
        let j0 = bi * COL_BLOCK;
        let mut s = [0f32; COL_BLOCK];
        for (k, &bk) in b_row.iter().enumerate() {
            let a: &[f32; COL_BLOCK] = t.a[k * cols + j0..k * cols + j0 + COL_BLOCK]
                .try_into()
                .expect("block");
            for (x, &y) in s.iter_mut().zip(a) {
                *x += bk * y;
            }
        }
        out.copy_from_slice(&s);
    }
    for (j, o) in acc.iter_mut().enumerate().skip(full) {
        let mut x = 0f32;
        for (k, &bk) in b_row.iter().enumerate() {
            x += bk * t.a[k * cols + j];
        }
        *o = x;
    }
}

/// Merges low-rank terms into one tensor (see [`MergeJob`] for the exact arithmetic).
///
/// One pass per row, in cache: the stored row is decoded, every term added, the result checked
/// and encoded straight into its place in the output; the output tensor is the only
/// whole-tensor buffer.
pub fn merge(job: &MergeJob) -> Result<Vec<u8>, MergeError> {
    job.validate()?;
    let (rows, cols) = (job.rows, job.cols);
    let out_size = job.out_dtype.bitsize() / 8;
    let factors = dora_factors(job);
    let block_rows = (BLOCK_ELEMS / cols.max(1)).max(1);
    let mut out = vec![0u8; rows * cols * out_size];
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    let errors: Vec<MergeError> = out
        .par_chunks_mut(block_rows * cols * out_size)
        .enumerate()
        .filter_map(|(bi, out_block)| merge_block(job, &factors, bi * block_rows, out_block))
        .collect();
    match errors.into_iter().min_by_key(|e| match e {
        MergeError::NonFinite { row, col, .. } => (*row, *col),
        _ => (0, 0),
    }) {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

super::simd::multiversion! {
    /// Rows `r0..` of the merge into `out_block` (whole rows), one pass per row; the first
    /// non-finite value stops the block. Compiled per CPU level ([`super::simd`]): decode,
    /// product and encode vectorise to the widest registers, with the same bits.
    fn merge_block(job: &MergeJob, factors: &[Option<Vec<f32>>], r0: usize, out_block: &mut [u8]) -> Option<MergeError> {
        let (cols, in_size, out_size) = (job.cols, job.in_dtype.bitsize() / 8, job.out_dtype.bitsize() / 8);
        let mut row = vec![0f32; cols];
        let mut acc = vec![0f32; cols];
        for (li, out_row) in out_block.chunks_exact_mut(cols * out_size).enumerate() {
            let i = r0 + li;
            let t = profile::time(Stage::Decode);
            dtype::decode_into(
                job.in_dtype,
                &job.w0[i * cols * in_size..(i + 1) * cols * in_size],
                &mut row,
            );
            drop(t);
            let t = profile::time(Stage::Product);
            for (ti, t) in job.terms.iter().enumerate() {
                low_rank_row(t, cols, i, &mut acc);
                match (&t.dora, factors.get(ti).and_then(|n| n.as_ref())) {
                    (Some(d), Some(f)) => {
                        let blend = d.strength != 1.0;
                        for (j, (x, &a)) in row.iter_mut().zip(acc.iter()).enumerate() {
                            let f = match d.axis {
                                NormAxis::Rows => f[i],
                                NormAxis::Cols => f[j],
                            };
                            let y = f * (*x + t.scale * a);
                            *x = if blend { *x + d.strength * (y - *x) } else { y };
                        }
                    }
                    _ => {
                        for (x, &a) in row.iter_mut().zip(acc.iter()) {
                            *x += t.scale * a;
                        }
                    }
                }
            }
            drop(t);
            let _t = profile::time(Stage::Encode);
            // NaN or ±∞ (all-ones exponent), or'ed so the scan vectorises.
            let bad = row
                .iter()
                .fold(false, |b, v| b | (v.to_bits() & 0x7f80_0000 == 0x7f80_0000));
            if bad {
                let col = row.iter().position(|v| !v.is_finite()).expect("found");
                return Some(MergeError::NonFinite {
                    row: i,
                    col,
                    value: row[col],
                });
            }
            dtype::encode_to_slice(job.out_dtype, &row, out_row);
        }
        None
    }
}

/// For each DoRA term, the multiplier `m / (‖W0 + δₜ‖ + eps)` per row (`Rows`) or per column
/// (`Cols`, a group's value repeated over its columns), divided in f32 as PEFT divides its f32
/// norm; one entry per term, `None` for plain terms. Both backends apply these.
pub fn dora_factors(job: &MergeJob) -> Vec<Option<Vec<f32>>> {
    let norms = dora_norms(job);
    job.terms
        .iter()
        .enumerate()
        .map(|(ti, t)| {
            let (norm, d) = (norms.get(ti)?.as_ref()?, t.dora?);
            let per_norm = d.magnitude.iter().zip(norm).map(|(m, n)| m / (n + d.eps));
            Some(match d.axis {
                NormAxis::Rows => per_norm.collect(),
                NormAxis::Cols => per_norm
                    .flat_map(|f| std::iter::repeat_n(f, d.group))
                    .collect(),
            })
        })
        .collect()
}

/// For each DoRA term, `‖W0 + δₜ‖` per normed feature (per row, or per group of `group`
/// columns), from f64 sums rounded to f32 as PEFT's f32 `torch.linalg.norm` result is; `None`
/// for plain terms. Empty when no term is DoRA.
pub fn dora_norms(job: &MergeJob) -> Vec<Option<Vec<f32>>> {
    if job.terms.iter().all(|t| t.dora.is_none()) {
        return Vec::new();
    }
    let (rows, cols) = (job.rows, job.cols);
    let in_size = job.in_dtype.bitsize() / 8;
    job.terms
        .iter()
        .map(|t| {
            let d = t.dora.as_ref()?;
            let sums: Vec<f64> = (0..rows)
                .into_par_iter()
                .fold(
                    || (vec![0f32; cols], vec![0f32; cols], Vec::new()),
                    |(mut w, mut acc, mut part): (Vec<f32>, Vec<f32>, Vec<(usize, f64)>), i| {
                        dtype::decode_into(
                            job.in_dtype,
                            &job.w0[i * cols * in_size..(i + 1) * cols * in_size],
                            &mut w,
                        );
                        low_rank_row(t, cols, i, &mut acc);
                        match d.axis {
                            NormAxis::Rows => {
                                let s: f64 = w
                                    .iter()
                                    .zip(&acc)
                                    .map(|(&x, &a)| ((x + t.scale * a) as f64).powi(2))
                                    .sum();
                                part.push((i, s));
                            }
                            NormAxis::Cols => {
                                if part.is_empty() {
                                    part = (0..cols).map(|j| (j, 0.0)).collect();
                                }
                                for (j, (&x, &a)) in w.iter().zip(&acc).enumerate() {
                                    part[j].1 += ((x + t.scale * a) as f64).powi(2);
                                }
                            }
                        }
                        (w, acc, part)
                    },
                )
                .map(|(_, _, part)| part)
                .reduce(Vec::new, |mut a, b| {
                    match d.axis {
                        NormAxis::Rows => a.extend(b),
                        NormAxis::Cols => {
                            if a.is_empty() {
                                return b;
                            }
                            for (x, y) in a.iter_mut().zip(b) {
                                x.1 += y.1;
                            }
                        }
                    }
                    a
                })
                .into_iter()
                .fold(
                    match d.axis {
                        NormAxis::Rows => vec![0f64; rows],
                        NormAxis::Cols => vec![0f64; cols / d.group.max(1)],
                    },
                    |mut v, (i, s)| {
                        match d.axis {
                            NormAxis::Rows => v[i] += s,
                            NormAxis::Cols => v[i / d.group.max(1)] += s,
                        }
                        v
                    },
                );
            Some(sums.into_iter().map(|s| s.sqrt() as f32).collect())
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backend::{Dora, Term};
    use crate::dtype::Dtype;
    use crate::linalg::rng::Xoshiro256PlusPlus as Rng;

    fn uniform(seed: &mut Rng) -> f32 {
        // Uniform on [-0.5, 0.5), from the one seeded generator (linalg::rng).
        (seed.next_f64() - 0.5) as f32
    }

    /// f64 reference of the same formula, written from its definition on [`Dora`] and [`Term`].
    fn reference(w0: &[f32], rows: usize, cols: usize, terms: &[Term]) -> Vec<f64> {
        let mut w: Vec<f64> = w0.iter().map(|&x| x as f64).collect();
        for t in terms {
            let delta: Vec<f64> = (0..rows * cols)
                .map(|p| {
                    let (i, j) = (p / cols, p % cols);
                    let v = match t.dense {
                        Some(d) => d[p] as f64,
                        None => (0..t.rank)
                            .map(|k| t.b[i * t.rank + k] as f64 * t.a[k * cols + j] as f64)
                            .sum::<f64>(),
                    };
                    v * t.scale as f64
                })
                .collect();
            match t.dora {
                None => w.iter_mut().zip(&delta).for_each(|(x, d)| *x += d),
                Some(d) => {
                    // The normed feature of element p.
                    let feat = |p: usize| match d.axis {
                        NormAxis::Rows => p / cols,
                        NormAxis::Cols => (p % cols) / d.group,
                    };
                    let mut norm = vec![0f64; d.magnitude.len()];
                    for p in 0..rows * cols {
                        norm[feat(p)] += (w0[p] as f64 + delta[p]).powi(2);
                    }
                    for p in 0..rows * cols {
                        let f = feat(p);
                        let y = d.magnitude[f] as f64 / (norm[f].sqrt() + d.eps as f64)
                            * (w[p] + delta[p]);
                        w[p] += d.strength as f64 * (y - w[p]);
                    }
                }
            }
        }
        w
    }

    #[test]
    fn merge_matches_f64_reference_for_every_variant() {
        let mut seed = Rng::seed_from_u64(7);
        let (rows, cols) = (37, 53);
        let w0: Vec<f32> = (0..rows * cols).map(|_| uniform(&mut seed)).collect();
        let mk = |r: usize, seed: &mut Rng| -> (Vec<f32>, Vec<f32>) {
            (
                (0..rows * r).map(|_| uniform(seed)).collect(),
                (0..r * cols).map(|_| uniform(seed)).collect(),
            )
        };
        let (b1, a1) = mk(3, &mut seed);
        let (b2, a2) = mk(5, &mut seed);
        let mag_r: Vec<f32> = (0..rows).map(|_| 1.0 + uniform(&mut seed)).collect();
        let mag_c: Vec<f32> = (0..cols).map(|_| 1.0 + uniform(&mut seed)).collect();
        let plain = Term::low_rank(&b1, &a1, 3, 0.7);
        let neg = Term::low_rank(&b2, &a2, 5, -1.3);
        let dora_r = neg.with_dora(Dora::peft(&mag_r, NormAxis::Rows));
        let dora_c = plain.with_dora(Dora::peft(&mag_c, NormAxis::Cols));
        // LyCORIS: a dense update (a LoHa/LoKr ΔW) with its DoRA norm per group of columns
        // (a conv's input channel over its kernel), eps, and a blend weight (ComfyUI strength).
        let dense: Vec<f32> = (0..rows * cols).map(|_| uniform(&mut seed)).collect();
        let (cols_g, group) = (cols - cols % 4, 4);
        let mag_g: Vec<f32> = (0..cols_g / group)
            .map(|_| 1.0 + uniform(&mut seed))
            .collect();
        let w0_g: Vec<f32> = (0..rows * cols_g).map(|_| uniform(&mut seed)).collect();
        let dense_g: Vec<f32> = (0..rows * cols_g).map(|_| uniform(&mut seed)).collect();
        let lyco = |magnitude, axis, group, strength| Dora {
            magnitude,
            axis,
            group,
            eps: f32::EPSILON,
            strength,
        };
        let dense_rows = Term {
            dense: Some(&dense),
            dora: Some(lyco(&mag_r, NormAxis::Rows, 1, 0.6)),
            ..plain
        };
        let dense_plain = Term {
            dense: Some(&dense),
            scale: 0.3,
            dora: None,
            ..plain
        };
        let grouped = Term {
            b: &[],
            a: &[],
            rank: 0,
            dense: Some(&dense_g),
            scale: 1.1,
            dora: Some(lyco(&mag_g, NormAxis::Cols, group, 1.0)),
        };
        let grouped_blend = Term {
            dora: Some(lyco(&mag_g, NormAxis::Cols, group, -0.4)),
            ..grouped
        };
        let cases: Vec<(&[f32], usize, Vec<Term>)> = vec![
            (&w0, cols, vec![plain]),
            (&w0, cols, vec![plain, neg]),
            (&w0, cols, vec![dora_r]),
            (&w0, cols, vec![plain, dora_c]),
            (&w0, cols, vec![dora_c, dora_r]),
            (&w0, cols, vec![dense_plain, dense_rows]),
            (&w0_g, cols_g, vec![grouped]),
            (&w0_g, cols_g, vec![grouped_blend]),
        ];
        for (w0, cols, terms) in cases {
            let bytes = dtype::encode(Dtype::F32, w0);
            let job = MergeJob::new(&bytes, Dtype::F32, (rows, cols), &terms, Dtype::F32);
            let got = dtype::decode(Dtype::F32, &merge(&job).unwrap());
            let want = reference(w0, rows, cols, &terms);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn bf16_output_is_rounded_f32_result() {
        let mut seed = Rng::seed_from_u64(3);
        let (rows, cols, r) = (130, 70, 4);
        let w0: Vec<f32> = (0..rows * cols).map(|_| uniform(&mut seed)).collect();
        let b: Vec<f32> = (0..rows * r).map(|_| uniform(&mut seed)).collect();
        let a: Vec<f32> = (0..r * cols).map(|_| uniform(&mut seed)).collect();
        let w0_bf = dtype::encode(Dtype::BF16, &w0);
        let terms = [Term::low_rank(&b, &a, r, 0.25)];
        let job = MergeJob::new(&w0_bf, Dtype::BF16, (rows, cols), &terms, Dtype::F32);
        let f32_out = merge(&job).unwrap();
        let bf_out = merge(&MergeJob {
            out_dtype: Dtype::BF16,
            ..job
        })
        .unwrap();
        let f32_vals = dtype::decode(Dtype::F32, &f32_out);
        let bf_vals = dtype::decode(Dtype::BF16, &bf_out);
        for (x, y) in f32_vals.iter().zip(&bf_vals) {
            assert_eq!(dtype::round_bf16_reference(*x).to_bits(), y.to_bits());
        }
    }

    #[test]
    fn non_finite_is_reported_with_position() {
        assert_reports_first_non_finite(&merge);
    }

    /// A 2×2 merge whose second row of B holds an infinity: `merge` (any backend's) must refuse
    /// it at (1, 0), the first non-finite value in row-major order.
    pub(crate) fn assert_reports_first_non_finite(
        merge: &dyn Fn(&MergeJob) -> Result<Vec<u8>, MergeError>,
    ) {
        let w0 = dtype::encode(Dtype::F32, &[1.0, 2.0, 3.0, 4.0]);
        let b = [1.0f32, f32::INFINITY];
        let a = [1.0f32, 1.0];
        let terms = [Term::low_rank(&b, &a, 1, 1.0)];
        let err = merge(&MergeJob::new(&w0, Dtype::F32, (2, 2), &terms, Dtype::F32)).unwrap_err();
        assert_eq!(
            err,
            MergeError::NonFinite {
                row: 1,
                col: 0,
                value: f32::INFINITY
            }
        );
    }
}
