//! The CPU backend: the reference implementation of every op.
//!
//! Merges run over blocks of rows in parallel (rayon); each row is decoded from the stored
//! dtype, updated in f32 and encoded straight into the output buffer in one pass while it is in
//! cache (four rows at a time, so that the low-rank product reads `A` once per group), so the working memory is the output tensor plus eight rows per thread. The per-element arithmetic order is the one documented on
//! [`MergeJob`], which the GPU kernels follow too.
//!
//! It must not choose a device (that is [`crate::backend::Engine`]'s one switch) nor read or
//! write files: it takes decoded jobs and fills caller-owned buffers.

pub mod exact;

use super::job::{MergeError, MergeJob, NormAxis, Term};
use super::profile::{self, Stage};
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

/// The product of the `n ≤ ROW_GROUP` rows from `row` into `acc` (`n × cols`): a whole group
/// through [`low_rank_rows`], the last, shorter one row by row; the same bits either way.
#[inline(always)]
fn low_rank_group(t: &Term, cols: usize, row: usize, n: usize, acc: &mut [f32]) {
    if n == ROW_GROUP {
        low_rank_rows::<ROW_GROUP>(t, cols, row, acc);
    } else {
        for (r, out) in acc.chunks_exact_mut(cols).take(n).enumerate() {
            low_rank_row(t, cols, row + r, out);
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
    if job.out_dtype == dtype::Dtype::F64
        && job
            .terms
            .iter()
            .all(|t| t.dora.is_none() && t.delta_dtype.is_none())
    {
        return merge_f64(job);
    }
    merge_scaled(job, dora_factors(job))
}

/// An F64 output (an f64 checkpoint): each row of W0 decoded exactly into f64, each term's
/// `Σₖ b·a` summed in f64 in ascending k ([`exact::low_rank_row_f64`]: every product of two f32
/// is exact) and added as `w + scale·(B·A)`, the order of PEFT's merge on an f64 model, which
/// casts the adapter to f64 (`_move_adapter_to_device_of_base_layer`) and adds
/// `(B @ A) * scaling` to the weight. The f32 path rounded W0 and the sums to f32 (hostile round
/// 18: up to 1.1e-8 off PEFT's f64 merge). The scale is the term's f32; DoRA terms and 16-bit
/// deltas keep the f32 path.
fn merge_f64(job: &MergeJob) -> Result<Vec<u8>, MergeError> {
    let (rows, cols) = (job.rows, job.cols);
    let mut out = vec![0u8; rows * cols * 8];
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    // Two row buffers per rayon task, reused across its rows.
    let first = out
        .par_chunks_mut(cols * 8)
        .enumerate()
        .map_init(
            || (vec![0f64; cols], vec![0f64; cols]),
            |(w, acc), (i, out_row)| merge_f64_row(job, i, w, acc, out_row),
        )
        .flatten()
        .min_by_key(|e| match e {
            MergeError::NonFinite { row, col, .. } => (*row, *col),
            _ => (0, 0),
        });
    match first {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Row `i` of [`merge_f64`] into `out_row`, with the caller's buffers `w` and `acc` (`cols`
/// each); the first non-finite value is the error.
fn merge_f64_row(
    job: &MergeJob,
    i: usize,
    w: &mut [f64],
    acc: &mut [f64],
    out_row: &mut [u8],
) -> Option<MergeError> {
    let (cols, in_size) = (job.cols, job.in_dtype.bitsize() / 8);
    dtype::decode_f64_into(
        job.in_dtype,
        &job.w0[i * cols * in_size..(i + 1) * cols * in_size],
        w,
    );
    for t in job.terms {
        let s = f64::from(t.scale);
        match t.dense {
            Some(d) => {
                for (x, &y) in w.iter_mut().zip(&d[i * cols..(i + 1) * cols]) {
                    *x += s * f64::from(y);
                }
            }
            None => {
                exact::low_rank_row_f64(&t.b[i * t.rank..(i + 1) * t.rank], t.a, cols, acc);
                for (x, &y) in w.iter_mut().zip(acc.iter()) {
                    *x += s * y;
                }
            }
        }
    }
    if let Some(j) = w.iter().position(|x| !x.is_finite()) {
        return Some(MergeError::NonFinite {
            row: i,
            col: j,
            value: w[j] as f32,
        });
    }
    for (o, x) in out_row.chunks_exact_mut(8).zip(w.iter()) {
        o.copy_from_slice(&x.to_le_bytes());
    }
    None
}

/// [`merge`] with each DoRA term's norms given (`norms[t]`, as [`dora_norms`] returns them) rather
/// than taken from `job`'s own weight: PEFT takes a DoRA adapter's norm from the unmerged base
/// weight (`_unmerged_base_weight`), while the weight it scales already holds the adapters
/// merged before it (`eval` attaching several adapters to one layer).
pub fn merge_with_norms(job: &MergeJob, norms: &[Option<Vec<f32>>]) -> Result<Vec<u8>, MergeError> {
    job.validate()?;
    merge_scaled(job, dora_factors_from(job, norms))
}

/// The merge of a validated `job` with its DoRA terms' scale factors.
fn merge_scaled(job: &MergeJob, factors: Vec<Option<Vec<f32>>>) -> Result<Vec<u8>, MergeError> {
    let (rows, cols) = (job.rows, job.cols);
    let out_size = job.out_dtype.bitsize() / 8;
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
                low_rank_group(t, cols, i0, n, &mut acc);
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
                    _ => match t.delta_dtype {
                        None => {
                            for (x, &a) in rows.iter_mut().zip(acc.iter()) {
                                *x += t.scale * a;
                            }
                        }
                        Some(d) => {
                            for (x, &a) in rows.iter_mut().zip(acc.iter()) {
                                *x += dtype::round_to(d, t.scale * a);
                            }
                        }
                    },
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

/// [`merge`] of an f32 tensor into its own buffer, on the calling thread, for a caller that
/// holds the f32 base, needs the f32 merge once and spreads its rows over the cores itself (the
/// GGUF merge's fused row chunks, `ops::merge::gguf_band`): `w` (`rows × cols`) becomes
/// `w + Σₜ scaleₜ·Bₜ·Aₜ` with [`MergeJob`]'s arithmetic, so the bits are those of [`merge`] with
/// `in_dtype = out_dtype = F32` (whose decode and encode are copies), without its output buffer
/// and the two copies (issue #17: ~4 % of a 7B GGUF merge's CPU time in memmove). DoRA terms
/// (whose norms read the whole base first) are refused. The error is the first non-finite value
/// in row order; after it `w` holds a partial merge, to be discarded.
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
    add_block(terms, cols, 0, w).map_or(Ok(()), Err)
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
                low_rank_group(t, cols, i0, n, &mut acc);
                match t.delta_dtype {
                    None => {
                        for (x, &a) in group.iter_mut().zip(acc.iter()) {
                            *x += t.scale * a;
                        }
                    }
                    Some(d) => {
                        for (x, &a) in group.iter_mut().zip(acc.iter()) {
                            *x += dtype::round_to(d, t.scale * a);
                        }
                    }
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
/// blocks of `NORM_COL_BLOCK` columns, one task walking all rows). The GPU computes the same
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
pub(crate) mod tests;
