//! The CPU backend: the reference implementation of every op.
//!
//! Merges run over blocks of rows in parallel (rayon); each row is decoded from the stored
//! dtype, updated in f32 and encoded straight into the output buffer in one pass while it is in
//! cache (four rows at a time, so that the low-rank product reads `A` once per group), so the working memory is the output tensor plus eight rows per thread. The per-element arithmetic order is the one documented on
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

/// Rows per group of [`low_rank_rows`].
const ROW_GROUP: usize = 4;

/// Columns per register block of [`low_rank_rows`]: `ROW_GROUP × ROW_COL_BLOCK` sums (4 AVX-512
/// or 8 AVX2 registers) stay in registers through the rank loop.
const ROW_COL_BLOCK: usize = 16;

/// [`low_rank_row`] of the `R` rows `row .. row + R` into `acc` (`R × cols`, row-major): each
/// element's sum is the same sequence of roundings (`0 + b₀a₀ + b₁a₁ + …`, no fused
/// multiply-add), so the bits are [`low_rank_row`]'s; every load of `A` serves `R` rows.
/// One row at a time re-read all of `A` (r·cols values, 256 KiB at r = 16, cols = 4096) from L2
/// per row, which bounded the product below the arithmetic (issue #17: 10 % of a 7B GGUF merge).
#[inline(always)]
fn low_rank_rows<const R: usize>(t: &Term, cols: usize, row: usize, acc: &mut [f32]) {
    if t.dense.is_some() {
        for (r, out) in acc.chunks_exact_mut(cols).take(R).enumerate() {
            low_rank_row(t, cols, row + r, out);
        }
        return;
    }
    let b = &t.b[row * t.rank..(row + R) * t.rank];
    let full = cols / ROW_COL_BLOCK * ROW_COL_BLOCK;
    for j0 in (0..full).step_by(ROW_COL_BLOCK) {
        let mut s = [[0f32; ROW_COL_BLOCK]; R];
        for k in 0..t.rank {
            let a: &[f32; ROW_COL_BLOCK] = t.a[k * cols + j0..k * cols + j0 + ROW_COL_BLOCK]
                .try_into()
                .expect("block");
            for (r, sr) in s.iter_mut().enumerate() {
                let bk = b[r * t.rank + k];
                for (x, &y) in sr.iter_mut().zip(a) {
                    *x += bk * y;
                }
            }
        }
        for (r, sr) in s.iter().enumerate() {
            acc[r * cols + j0..r * cols + j0 + ROW_COL_BLOCK].copy_from_slice(sr);
        }
    }
    for r in 0..R {
        for j in full..cols {
            let mut x = 0f32;
            for k in 0..t.rank {
                x += b[r * t.rank + k] * t.a[k * cols + j];
            }
            acc[r * cols + j] = x;
        }
    }
}

/// The first non-finite value of merged row `i`, as the merge's error.
#[inline(always)]
fn non_finite(row: &[f32], i: usize) -> Option<MergeError> {
    // NaN or ±∞ (all-ones exponent), or'ed so the scan vectorises.
    let bad = row
        .iter()
        .fold(false, |b, v| b | (v.to_bits() & 0x7f80_0000 == 0x7f80_0000));
    let col = bad.then(|| row.iter().position(|v| !v.is_finite()))??;
    Some(MergeError::NonFinite {
        row: i,
        col,
        value: row[col],
    })
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
        let mut rows = vec![0f32; ROW_GROUP * cols];
        let mut acc = vec![0f32; ROW_GROUP * cols];
        // Rows in groups of ROW_GROUP, so that the product reads A once per group
        // ([`low_rank_rows`]); each row's arithmetic is unchanged.
        for (gi, out_group) in out_block.chunks_mut(ROW_GROUP * cols * out_size).enumerate() {
            let i0 = r0 + gi * ROW_GROUP;
            let n = out_group.len() / (cols * out_size);
            let rows = &mut rows[..n * cols];
            let t = profile::time(Stage::Decode);
            dtype::decode_into(
                job.in_dtype,
                &job.w0[i0 * cols * in_size..(i0 + n) * cols * in_size],
                rows,
            );
            drop(t);
            let t = profile::time(Stage::Product);
            for (ti, t) in job.terms.iter().enumerate() {
                if n == ROW_GROUP {
                    low_rank_rows::<ROW_GROUP>(t, cols, i0, &mut acc);
                } else {
                    for (r, out) in acc.chunks_exact_mut(cols).take(n).enumerate() {
                        low_rank_row(t, cols, i0 + r, out);
                    }
                }
                match (&t.dora, factors.get(ti).and_then(|n| n.as_ref())) {
                    (Some(d), Some(f)) => {
                        let blend = d.strength != 1.0;
                        for (r, (row, acc)) in rows.chunks_exact_mut(cols).zip(acc.chunks_exact(cols)).enumerate() {
                            let i = i0 + r;
                            for (j, (x, &a)) in row.iter_mut().zip(acc.iter()).enumerate() {
                                let f = match d.axis {
                                    NormAxis::Rows => f[i],
                                    NormAxis::Cols => f[j],
                                };
                                let y = f * (*x + t.scale * a);
                                *x = if blend { *x + d.strength * (y - *x) } else { y };
                            }
                        }
                    }
                    _ => {
                        for (x, &a) in rows.iter_mut().zip(acc.iter()) {
                            *x += t.scale * a;
                        }
                    }
                }
            }
            drop(t);
            let _t = profile::time(Stage::Encode);
            for (r, row) in rows.chunks_exact(cols).enumerate() {
                if let Some(e) = non_finite(row, i0 + r) {
                    return Some(e);
                }
            }
            dtype::encode_to_slice(job.out_dtype, rows, out_group);
        }
        None
    }
}

/// [`merge`] of an f32 tensor into its own buffer, for a caller that holds the f32 base and
/// needs the f32 merge once (the GGUF merge's row bands): `w` (`rows × cols`) becomes
/// `w + Σₜ scaleₜ·Bₜ·Aₜ` with [`MergeJob`]'s arithmetic, so the bits are those of [`merge`] with
/// `in_dtype = out_dtype = F32` (whose decode and encode are copies), without its output buffer
/// and the two copies (issue #17: ~4 % of a 7B GGUF merge's CPU time in memmove). DoRA terms
/// (whose norms read the whole base first) are refused. After an error `w` holds a partial
/// merge, to be discarded.
pub fn merge_f32_in_place(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    terms: &[Term],
) -> Result<(), MergeError> {
    if terms.iter().any(|t| t.dora.is_some()) {
        return Err(MergeError::Shape(
            "an in-place merge takes no DoRA term".into(),
        ));
    }
    let job = MergeJob::new(
        bytemuck::cast_slice(w),
        crate::dtype::Dtype::F32,
        (rows, cols),
        terms,
        crate::dtype::Dtype::F32,
    );
    job.validate()?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let block_rows = (BLOCK_ELEMS / cols).max(1);
    let errors: Vec<MergeError> = w
        .par_chunks_mut(block_rows * cols)
        .enumerate()
        .filter_map(|(bi, block)| add_block(terms, cols, bi * block_rows, block))
        .collect();
    match errors.into_iter().min_by_key(|e| match e {
        MergeError::NonFinite { row, col, .. } => (*row, *col),
        _ => (0, 0),
    }) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

super::simd::multiversion! {
    /// Rows `r0..` of [`merge_f32_in_place`] (whole rows of `block`): [`merge_block`]'s product
    /// and check for plain terms, in place.
    fn add_block(terms: &[Term], cols: usize, r0: usize, block: &mut [f32]) -> Option<MergeError> {
        let _t = profile::time(Stage::Product);
        let mut acc = vec![0f32; ROW_GROUP * cols];
        for (gi, group) in block.chunks_mut(ROW_GROUP * cols).enumerate() {
            let i0 = r0 + gi * ROW_GROUP;
            let n = group.len() / cols;
            for t in terms {
                if n == ROW_GROUP {
                    low_rank_rows::<ROW_GROUP>(t, cols, i0, &mut acc);
                } else {
                    for (r, out) in acc.chunks_exact_mut(cols).take(n).enumerate() {
                        low_rank_row(t, cols, i0 + r, out);
                    }
                }
                for (x, &a) in group.iter_mut().zip(acc.iter()) {
                    *x += t.scale * a;
                }
            }
            for (r, row) in group.chunks_exact(cols).enumerate() {
                if let Some(e) = non_finite(row, i0 + r) {
                    return Some(e);
                }
            }
        }
        None
    }
}

/// For each DoRA term, the multiplier `m / (‖W0 + δₜ‖ + eps)` per row (`Rows`) or per column
/// (`Cols`, a group's value repeated over its columns), divided in f32 as PEFT divides its f32
/// norm; one entry per term, `None` for plain terms. Both backends apply these.
pub fn dora_factors(job: &MergeJob) -> Vec<Option<Vec<f32>>> {
    dora_factors_from(job, &dora_norms(job))
}

/// [`dora_factors`] from norms already computed (by [`dora_norms`] or the GPU's twin): the
/// division both backends share.
pub fn dora_factors_from(job: &MergeJob, norms: &[Option<Vec<f32>>]) -> Vec<Option<Vec<f32>>> {
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
/// for plain terms. Empty when no term is DoRA. See [`dora_sums`] for the order of the sums.
pub fn dora_norms(job: &MergeJob) -> Vec<Option<Vec<f32>>> {
    dora_norms_from(job, dora_sums(job))
}

/// [`dora_norms`] from sums already computed (by [`dora_sums`] or the GPU's twin), term by term
/// with [`norms_from_sums`].
pub fn dora_norms_from(job: &MergeJob, sums: Vec<Option<Vec<f64>>>) -> Vec<Option<Vec<f32>>> {
    sums.into_iter()
        .zip(job.terms)
        .map(|(s, t)| Some(norms_from_sums(t.dora?.axis, t.dora?.group, &s?)))
        .collect()
}

/// Columns per parallel task of the `Cols` sums in [`dora_sums`] (the result does not depend
/// on it: every column is summed by one task, over the rows in order).
const NORM_COL_BLOCK: usize = 64;

/// `v²` for the f32 `v = x + s·a` of a DoRA norm, in f64: exact (two 24-bit significands make
/// at most 48 bits, and the square of any finite f32, subnormals included, lies in f64's normal
/// range), so only the additions of [`dora_sums`] round.
#[inline(always)]
pub fn dora_square(v: f32) -> f64 {
    (v as f64).powi(2)
}

/// For each DoRA term, the f64 sums of squares behind [`dora_norms`], one per row (`Rows`) or
/// per column (`Cols`, before the columns of a group are added); `None` for plain terms, empty
/// when no term is DoRA. Each element is `v = x + scale·acc` in f32 (`x` the decoded base, `acc`
/// the term's `Σₖ b·a` as the merge computes it), squared exactly ([`dora_square`]).
///
/// The order of the f64 additions is fixed, so the bits do not depend on the thread count:
/// a row's sum runs over its columns `0, 1, …, cols−1`, a column's over its rows
/// `0, 1, …, rows−1`, each starting from `+0` (rows are summed in parallel by row, columns by
/// blocks of [`NORM_COL_BLOCK`] columns, one task walking all rows). The GPU computes the same
/// sums in the same order with a software f64 addition (`shaders/f64.wgsl`), so the norms, and
/// therefore DoRA merges, are bit-identical across backends.
pub fn dora_sums(job: &MergeJob) -> Vec<Option<Vec<f64>>> {
    if job.terms.iter().all(|t| t.dora.is_none()) {
        return Vec::new();
    }
    let (rows, cols) = (job.rows, job.cols);
    let in_size = job.in_dtype.bitsize() / 8;
    job.terms
        .iter()
        .map(|t| {
            let d = t.dora.as_ref()?;
            Some(match d.axis {
                NormAxis::Rows => (0..rows)
                    .into_par_iter()
                    .map_init(
                        || (vec![0f32; cols], vec![0f32; cols]),
                        |(w, acc), i| {
                            dtype::decode_into(
                                job.in_dtype,
                                &job.w0[i * cols * in_size..(i + 1) * cols * in_size],
                                w,
                            );
                            low_rank_row(t, cols, i, acc);
                            w.iter()
                                .zip(acc.iter())
                                .fold(0f64, |s, (&x, &a)| s + dora_square(x + t.scale * a))
                        },
                    )
                    .collect(),
                NormAxis::Cols => {
                    let mut sums = vec![0f64; cols];
                    sums.par_chunks_mut(NORM_COL_BLOCK)
                        .enumerate()
                        .for_each(|(bi, block)| {
                            let j0 = bi * NORM_COL_BLOCK;
                            let n = block.len();
                            let (mut w, mut acc) = (vec![0f32; n], vec![0f32; n]);
                            for i in 0..rows {
                                let at = (i * cols + j0) * in_size;
                                dtype::decode_into(
                                    job.in_dtype,
                                    &job.w0[at..at + n * in_size],
                                    &mut w,
                                );
                                low_rank_cols(t, cols, i, j0, &mut acc);
                                for ((s, &x), &a) in block.iter_mut().zip(&w).zip(&acc) {
                                    *s += dora_square(x + t.scale * a);
                                }
                            }
                        });
                    sums
                }
            })
        })
        .collect()
}

/// The norms of one DoRA term from its [`dora_sums`]: `√sum` rounded to f32, per row; per
/// column group, the group's column sums added first in column order (from `+0`).
pub fn norms_from_sums(axis: NormAxis, group: usize, sums: &[f64]) -> Vec<f32> {
    match axis {
        NormAxis::Rows => sums.iter().map(|s| s.sqrt() as f32).collect(),
        NormAxis::Cols => sums
            .chunks_exact(group.max(1))
            .map(|g| g.iter().fold(0f64, |s, &x| s + x).sqrt() as f32)
            .collect(),
    }
}

/// `acc[j − j0] = Σₖ b[row,k]·a[k,j]` for the columns `j0 .. j0 + acc.len()`, each element
/// rounded exactly as [`low_rank_row`] rounds it (ascending k from `+0`, no fused
/// multiply-add); a dense term's values as they are.
fn low_rank_cols(t: &Term, cols: usize, row: usize, j0: usize, acc: &mut [f32]) {
    let n = acc.len();
    if let Some(d) = t.dense {
        acc.copy_from_slice(&d[row * cols + j0..row * cols + j0 + n]);
        return;
    }
    acc.fill(0.0);
    for (k, &bk) in t.b[row * t.rank..(row + 1) * t.rank].iter().enumerate() {
        for (x, &y) in acc.iter_mut().zip(&t.a[k * cols + j0..k * cols + j0 + n]) {
            *x += bk * y;
        }
    }
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

    /// `dora_sums` written from its definition, one plain sequential loop per row or column:
    /// the reference both backends' sums must equal bit for bit.
    fn reference_sums(job: &MergeJob) -> Vec<Option<Vec<f64>>> {
        let (rows, cols) = (job.rows, job.cols);
        let w = dtype::decode(job.in_dtype, job.w0);
        let sq = |t: &Term, i: usize, j: usize| -> f64 {
            let mut acc = 0f32;
            for k in 0..t.rank {
                acc += t.b[i * t.rank + k] * t.a[k * cols + j];
            }
            let v = (w[i * cols + j] + t.scale * acc) as f64;
            v * v
        };
        job.terms
            .iter()
            .map(|t| {
                Some(match t.dora?.axis {
                    NormAxis::Rows => (0..rows)
                        .map(|i| (0..cols).fold(0f64, |s, j| s + sq(t, i, j)))
                        .collect(),
                    NormAxis::Cols => (0..cols)
                        .map(|j| (0..rows).fold(0f64, |s, i| s + sq(t, i, j)))
                        .collect(),
                })
            })
            .collect()
    }

    /// The one test body of the DoRA sums on every backend: `sums` (a backend's `dora_sums`)
    /// equals [`reference_sums`] bit for bit (NaN for NaN) on jobs built to make the f64
    /// additions round often: base values over a wide dynamic range (f32 subnormals to 2⁶⁰
    /// for F32 bases), infinities and NaNs, plain terms between DoRA terms of either axis,
    /// shapes not multiples of any block or workgroup. Returns how many sums it compared.
    pub(crate) fn assert_dora_sums_exact(
        sums: &dyn Fn(&MergeJob) -> Vec<Option<Vec<f64>>>,
        what: &str,
    ) -> usize {
        let mut seed = Rng::seed_from_u64(61);
        let mut compared = 0;
        // The last two: sums over 40 000 elements, longer than one GPU dispatch may walk.
        for &(rows, cols, rank) in &[
            (37usize, 53usize, 5usize),
            (1, 300, 1),
            (300, 1, 3),
            (67, 131, 20),
            (2, 40_000, 2),
            (40_000, 2, 2),
        ] {
            for in_dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                // Exponents the stored dtype holds (f16: 2⁻²⁴ .. 2¹⁵).
                let (lo, hi) = match in_dtype {
                    Dtype::F16 => (-24, 12),
                    _ => (-140, 60),
                };
                let mut w0: Vec<f32> = (0..rows * cols)
                    .map(|_| {
                        let e = lo + (seed.next_f64() * (hi - lo) as f64) as i32;
                        uniform(&mut seed) * 2f32.powi(e)
                    })
                    .collect();
                if rows * cols > 100 {
                    w0[7] = f32::INFINITY;
                    w0[rows * cols - 3] = f32::NAN;
                }
                let bytes = dtype::encode(in_dtype, &w0);
                let mk = |r: usize, seed: &mut Rng| -> (Vec<f32>, Vec<f32>) {
                    (
                        (0..rows * r).map(|_| uniform(seed)).collect(),
                        (0..r * cols).map(|_| uniform(seed) * 1e-3).collect(),
                    )
                };
                let (b1, a1) = mk(rank, &mut seed);
                let (b2, a2) = mk(rank + 2, &mut seed);
                let mag_r = vec![1f32; rows];
                let mag_c = vec![1f32; cols];
                let terms = [
                    Term::low_rank(&b1, &a1, rank, 0.7),
                    Term::low_rank(&b2, &a2, rank + 2, -1.3)
                        .with_dora(Dora::peft(&mag_r, NormAxis::Rows)),
                    Term::low_rank(&b1, &a1, rank, 3.0)
                        .with_dora(Dora::peft(&mag_c, NormAxis::Cols)),
                ];
                let job = MergeJob::new(&bytes, in_dtype, (rows, cols), &terms, Dtype::F32);
                let (got, want) = (sums(&job), reference_sums(&job));
                assert_eq!(got.len(), want.len(), "{what}: terms");
                for (ti, (g, w)) in got.iter().zip(&want).enumerate() {
                    let (g, w) = match (g, w) {
                        (None, None) => continue,
                        (Some(g), Some(w)) => (g, w),
                        _ => panic!("{what}: term {ti}: DoRA or not"),
                    };
                    assert_eq!(g.len(), w.len(), "{what}: term {ti}: sums");
                    for (f, (x, y)) in g.iter().zip(w).enumerate() {
                        assert!(
                            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                            "{what}: {rows}×{cols} r{rank} {in_dtype:?} term {ti} feature {f}: \
                             {x:e} ({:016x}) vs reference {y:e} ({:016x})",
                            x.to_bits(),
                            y.to_bits()
                        );
                    }
                    compared += g.len();
                }
            }
        }
        compared
    }

    /// The CPU's sums follow the reference order whatever the thread count (the `Cols` sums
    /// used to be split where rayon's work stealing split the rows).
    #[test]
    fn dora_sums_are_exact_and_thread_independent() {
        for threads in [1, 2, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let n = pool
                .install(|| assert_dora_sums_exact(&dora_sums, &format!("cpu, {threads} threads")));
            assert!(n > 1000, "{n} sums compared");
        }
    }

    #[test]
    fn non_finite_is_reported_with_position() {
        assert_reports_first_non_finite(&merge);
    }

    /// The in-place f32 merge as [`merge`] through an F32 job: same bits (plain, dense and
    /// several terms; blocks of rows split where [`BLOCK_ELEMS`] splits them), the same first
    /// non-finite position, and DoRA refused.
    #[test]
    fn in_place_f32_merge_is_the_f32_job_bit_for_bit() {
        let in_place = |job: &MergeJob| {
            let mut w = dtype::decode(Dtype::F32, job.w0);
            merge_f32_in_place(&mut w, job.rows, job.cols, job.terms)?;
            Ok(dtype::encode(Dtype::F32, &w))
        };
        assert_reports_first_non_finite(&in_place);
        let mut seed = Rng::seed_from_u64(11);
        let (rows, cols) = (300, 263);
        let mut vals = |n: usize| -> Vec<f32> { (0..n).map(|_| uniform(&mut seed)).collect() };
        let (w0, b1, a1, b2, a2, dense) = (
            vals(rows * cols),
            vals(rows * 3),
            vals(3 * cols),
            vals(rows * 16),
            vals(16 * cols),
            vals(rows * cols),
        );
        let plain = Term::low_rank(&b1, &a1, 3, 0.7);
        let neg = Term::low_rank(&b2, &a2, 16, -1.3);
        let dense = Term {
            dense: Some(&dense),
            scale: 0.3,
            ..plain
        };
        let bytes = dtype::encode(Dtype::F32, &w0);
        for terms in [vec![plain], vec![plain, neg, dense]] {
            let job = MergeJob::new(&bytes, Dtype::F32, (rows, cols), &terms, Dtype::F32);
            assert!(rows * cols > BLOCK_ELEMS);
            assert_eq!(in_place(&job).unwrap(), merge(&job).unwrap());
        }
        let mag = vec![1.0f32; rows];
        let dora = [plain.with_dora(Dora::peft(&mag, NormAxis::Rows))];
        let mut w = w0.clone();
        assert!(matches!(
            merge_f32_in_place(&mut w, rows, cols, &dora),
            Err(MergeError::Shape(_))
        ));
    }

    /// [`low_rank_rows`] is [`low_rank_row`] row by row, bit for bit: ranks 1, 3 and 16, widths
    /// with and without a tail past the last column block, and a dense term.
    #[test]
    fn grouped_rows_are_the_single_row_product_bit_for_bit() {
        let mut seed = Rng::seed_from_u64(5);
        for (rank, cols) in [(1, 16), (3, 37), (16, 4 * ROW_COL_BLOCK + 5), (16, 7)] {
            let rows = 2 * ROW_GROUP + 1;
            let b: Vec<f32> = (0..rows * rank).map(|_| uniform(&mut seed)).collect();
            let a: Vec<f32> = (0..rank * cols).map(|_| uniform(&mut seed)).collect();
            let d: Vec<f32> = (0..rows * cols).map(|_| uniform(&mut seed)).collect();
            let low = Term::low_rank(&b, &a, rank, 1.0);
            let dense = Term {
                dense: Some(&d),
                ..low
            };
            for t in [low, dense] {
                for row in [0, ROW_GROUP, ROW_GROUP + 1] {
                    let mut grouped = vec![f32::NAN; ROW_GROUP * cols];
                    low_rank_rows::<ROW_GROUP>(&t, cols, row, &mut grouped);
                    let mut single = vec![f32::NAN; cols];
                    for (r, g) in grouped.chunks_exact(cols).enumerate() {
                        low_rank_row(&t, cols, row + r, &mut single);
                        let (g, s): (Vec<u32>, Vec<u32>) = (
                            g.iter().map(|x| x.to_bits()).collect(),
                            single.iter().map(|x| x.to_bits()).collect(),
                        );
                        assert_eq!(g, s, "rank {rank}, cols {cols}, row {}", row + r);
                    }
                }
            }
        }
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
