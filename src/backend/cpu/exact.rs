//! Correctly rounded merges ([`Rounding::Exact`](crate::backend::Rounding::Exact)).
//!
//! Contract: element `(i, j)` of the output is the real number
//! `X = W0[i,j] + Σₜ sₜ·Σₖ Bₜ[i,k]·Aₜ[k,j]` (or `+ sₜ·Dₜ[i,j]` for a dense term), its operands the
//! decoded base, the f32 factors and the f32 scales exactly as given, rounded once to nearest,
//! ties to even, into the output dtype (bf16, f16 or f32). The result is a function of those
//! operands alone: not of the thread count, the SIMD width, or an order of summation. A value
//! past the dtype's largest finite one is an error ([`MergeError::NonFinite`]), as in the f32
//! path; an exact zero keeps the sign the f64 evaluation below gives it when that evaluation is
//! zero too, `+0` otherwise. DoRA terms (a norm, a square root and a division) and f64 outputs
//! are outside this contract and refused.
//!
//! Two paths per element:
//!
//! 1. **f64 with an error bound.** Each product of two f32 is exact in f64 (24 + 24 ≤ 53
//!    significant bits), and so is `s·d` for a dense value `d`. The remaining operations are
//!    `N = Σₜ (rankₜ + 1)` additions and multiplications by `s` (`rankₜ = 0` for a dense term),
//!    each rounded with relative error ≤ `u = 2⁻⁵³`, so the computed `v` satisfies
//!    `|v − X| ≤ γ_N·T`, `γ_N = N·u/(1 − N·u)`, `T = |W0| + Σₜ |sₜ|·Σₖ |Bₜ[i,k]·Aₜ[k,j]|`
//!    (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1, Lemma 3.1 and the
//!    recursive-summation bound (4.4)). The kernel bounds `T` from above by
//!    `T̂ = |W0| + Σₜ |sₜ|·maxₖ|Bₜ[i,k]|·Σₖ|Aₜ[k,j]|` and takes `E = 2·(N + 2)·u·T̂`: the factor 2
//!    covers `γ_N`'s denominator and the roundings inside `T̂`, the `+ 2` the two roundings in
//!    forming `v ± E`. So `fl(v − E) ≤ X ≤ fl(v + E)`, and when both ends round to the same
//!    value of the output dtype, so does `X` (rounding is monotonic): that value is stored.
//! 2. **Exact.** Otherwise `X` lies within `E` of a rounding boundary (on random data about
//!    one element in 10⁶ for a bf16 output; tensors built on midpoints take it every time), and
//!    the element is recomputed exactly: `X` as a nonoverlapping expansion of f64 components
//!    (Shewchuk 1997, "Adaptive precision floating-point arithmetic and fast robust geometric
//!    predicates", Discrete Comput. Geom. 18: Two-Sum, Grow-Expansion; `s·(b·a)` split into two
//!    f64 exactly with a fused multiply-add, Two-Product). The sign of an expansion is the sign
//!    of its largest component, so `sign(X − m)` is exact for any midpoint `m` (representable in
//!    f64, since the output dtypes have ≤ 24 bits): a candidate is accepted when `X` lies
//!    between the midpoints around it, and a tie goes to the even neighbour.
//!
//! Must not decide when it runs (`--exact-rounding` is the caller's choice, made once in
//! [`crate::backend`]) nor approximate: a result that is not the correctly rounded value is a bug.

use super::super::job::{MergeError, MergeJob};
use crate::dtype::{self, Dtype};
use rayon::prelude::*;

/// Rows per parallel block, as in the f32 kernel.
const BLOCK_ELEMS: usize = 1 << 16;

/// Columns per register block of the f64 low-rank sum.
const COL_BLOCK: usize = 16;

/// `u = 2⁻⁵³`, the unit roundoff of f64.
const U: f64 = 1.0 / 9_007_199_254_740_992.0;

/// A binary output format: `p` significant bits, least normal exponent `emin`, largest finite
/// value `max`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Format {
    p: i32,
    emin: i32,
    max: f64,
}

impl Format {
    /// The format of `dtype`, or `None` for a dtype exact rounding does not cover.
    pub(crate) fn of(dtype: Dtype) -> Option<Format> {
        match dtype {
            Dtype::BF16 => Some(Format {
                p: 8,
                emin: -126,
                max: f32::from_bits(0x7f7f_0000) as f64,
            }),
            Dtype::F16 => Some(Format {
                p: 11,
                emin: -14,
                max: 65504.0,
            }),
            Dtype::F32 => Some(Format {
                p: 24,
                emin: -126,
                max: f32::MAX as f64,
            }),
            _ => None,
        }
    }

    /// The spacing of the format's values in the binade of `a` (> 0 or 0).
    #[inline(always)]
    fn quantum(self, a: f64) -> f64 {
        let e = ((a.to_bits() >> 52) as i32 - 1023).max(self.emin);
        pow2(e - self.p + 1)
    }

    /// `x` rounded to the format, nearest, ties to even; `±∞` past the largest finite value.
    /// Exact arithmetic throughout: `a / q` is a division by a power of two, adding and
    /// subtracting 2⁵² rounds a number in [0, 2⁵²) to an integer (ties to even), and the
    /// integer (≤ 2ᵖ) times `q` is representable.
    #[inline(always)]
    pub(crate) fn round(self, x: f64) -> f64 {
        const MAGIC: f64 = 4_503_599_627_370_496.0; // 2⁵²
        let a = x.abs();
        if !(a > 0.0 && a.is_finite()) {
            return x;
        }
        let q = self.quantum(a);
        let r = ((a / q + MAGIC) - MAGIC) * q;
        let r = if r > self.max { f64::INFINITY } else { r };
        r.copysign(x)
    }

    /// The next value of the format above `t` (finite, or the overflow marker `2^(emax+1)`).
    fn next_up(self, t: f64) -> f64 {
        if t >= 0.0 {
            t + self.quantum(t)
        } else {
            -self.next_down_mag(-t)
        }
    }

    fn next_down(self, t: f64) -> f64 {
        -self.next_up(-t)
    }

    /// The next value below `x > 0`: the spacing halves below a power of two (above the
    /// subnormal range).
    fn next_down_mag(self, x: f64) -> f64 {
        let q = self.quantum(x);
        let pow = x.to_bits() & ((1u64 << 52) - 1) == 0;
        let e = (x.to_bits() >> 52) as i32 - 1023;
        if pow && e > self.emin {
            x - q / 2.0
        } else {
            x - q
        }
    }
}

/// The rank of `t`'s `B·A`: 0 for a dense term, whose `rank` field is unused (it may still hold
/// the adapter's rank).
fn low_rank(t: &crate::backend::job::Term) -> usize {
    if t.dense.is_some() {
        0
    } else {
        t.rank
    }
}

/// 2ᵏ for k in the normal f64 range.
#[inline(always)]
fn pow2(k: i32) -> f64 {
    f64::from_bits(((k + 1023) as u64) << 52)
}

/// Merges `job` with exact rounding (see the module doc). Refuses DoRA terms and dtypes other
/// than bf16, f16 and f32 outputs.
pub fn merge(job: &MergeJob) -> Result<Vec<u8>, MergeError> {
    merge_counted(job).map(|(out, _)| out)
}

/// [`merge`], and how many elements took the exact path (for tests and the README's figure).
#[doc(hidden)]
pub fn merge_counted(job: &MergeJob) -> Result<(Vec<u8>, usize), MergeError> {
    job.validate()?;
    let fmt = Format::of(job.out_dtype).ok_or_else(|| {
        MergeError::Shape(format!(
            "exact rounding writes bf16, f16 or f32, not {:?}",
            job.out_dtype
        ))
    })?;
    if job.terms.iter().any(|t| t.dora.is_some()) {
        return Err(MergeError::Shape(
            "exact rounding covers W0 + Σ s·B·A, not DoRA terms".into(),
        ));
    }
    let (rows, cols) = (job.rows, job.cols);
    let out_size = job.out_dtype.bitsize() / 8;
    let mut out = vec![0u8; rows * cols * out_size];
    if rows == 0 || cols == 0 {
        return Ok((out, 0));
    }
    // Σₖ |A[k,j]| per low-rank term, for the bound.
    let col_abs: Vec<Vec<f64>> = job
        .terms
        .iter()
        .map(|t| {
            // A dense term (a full ΔW: OFT, VeRA, LoHa, …) has no A to sum, whatever its rank.
            let mut c = vec![0f64; if t.dense.is_some() { 0 } else { cols }];
            for k in 0..low_rank(t) {
                for (x, &a) in c.iter_mut().zip(&t.a[k * cols..(k + 1) * cols]) {
                    *x += (a as f64).abs();
                }
            }
            c
        })
        .collect();
    let n_ops: usize = job.terms.iter().map(|t| low_rank(t) + 1).sum();
    let c_err = 2.0 * (n_ops as f64 + 2.0) * U;
    let block_rows = (BLOCK_ELEMS / cols).max(1);
    let results: Vec<Result<usize, MergeError>> = out
        .par_chunks_mut(block_rows * cols * out_size)
        .enumerate()
        .map(|(bi, out_block)| exact_block(job, fmt, &col_abs, c_err, bi * block_rows, out_block))
        .collect();
    let mut slow = 0;
    let mut first: Option<MergeError> = None;
    for r in results {
        match r {
            Ok(n) => slow += n,
            // Blocks are in row order: the first error is the lowest (row, col).
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok((out, slow)),
    }
}

super::super::simd::multiversion! {
    /// Rows `r0..` into `out_block` (whole rows); the number of elements that took the exact
    /// path, or the first non-finite value. Compiled per CPU level ([`crate::backend::simd`]).
    fn exact_block(job: &MergeJob, fmt: Format, col_abs: &[Vec<f64>], c_err: f64, r0: usize, out_block: &mut [u8]) -> Result<usize, MergeError> {
        let (cols, in_size, out_size) = (job.cols, job.in_dtype.bitsize() / 8, job.out_dtype.bitsize() / 8);
        let mut v = vec![0f64; cols];
        let mut bound = vec![0f64; cols];
        let mut acc = vec![0f64; cols];
        let mut rounded = vec![0f32; cols];
        let mut slow = 0usize;
        for (li, out_row) in out_block.chunks_exact_mut(cols * out_size).enumerate() {
            let i = r0 + li;
            let w0 = &job.w0[i * cols * in_size..(i + 1) * cols * in_size];
            dtype::decode_f64_into(job.in_dtype, w0, &mut v);
            for (b, x) in bound.iter_mut().zip(&v) {
                *b = x.abs();
            }
            for (t, ca) in job.terms.iter().zip(col_abs) {
                let s = t.scale as f64;
                if let Some(d) = t.dense {
                    for ((x, b), &d) in v.iter_mut().zip(bound.iter_mut()).zip(&d[i * cols..]) {
                        let p = s * d as f64;
                        *x += p;
                        *b += p.abs();
                    }
                    continue;
                }
                let b_row = &t.b[i * t.rank..(i + 1) * t.rank];
                low_rank_row_f64(b_row, t.a, cols, &mut acc);
                let b_inf = b_row.iter().fold(0f64, |m, &b| m.max((b as f64).abs()));
                let sb = s.abs() * b_inf;
                for (((x, b), &a), &c) in v.iter_mut().zip(bound.iter_mut()).zip(&acc).zip(ca) {
                    *x += s * a;
                    *b += sb * c;
                }
            }
            for (j, ((r, &x), &b)) in rounded.iter_mut().zip(&v).zip(&bound).enumerate() {
                let e = c_err * b;
                let lo = fmt.round(x - e);
                let y = if lo.to_bits() == fmt.round(x + e).to_bits() {
                    lo
                } else if x.is_finite() {
                    slow += 1;
                    exact_element(job, fmt, i, j, x)
                } else {
                    x
                };
                if !y.is_finite() {
                    return Err(MergeError::NonFinite {
                        row: i,
                        col: j,
                        value: y as f32,
                    });
                }
                *r = y as f32;
            }
            dtype::encode_to_slice(job.out_dtype, &rounded, out_row);
        }
        Ok(slow)
    }
}

/// `acc[j] = Σₖ b[k]·a[k,j]` in f64, ascending k (the products are exact).
#[inline(always)]
pub(super) fn low_rank_row_f64(b_row: &[f32], a: &[f32], cols: usize, acc: &mut [f64]) {
    let full = cols / COL_BLOCK * COL_BLOCK;
    for (bi, out) in acc[..full].chunks_exact_mut(COL_BLOCK).enumerate() {
        let j0 = bi * COL_BLOCK;
        let mut s = [0f64; COL_BLOCK];
        for (k, &bk) in b_row.iter().enumerate() {
            let a: &[f32; COL_BLOCK] = a[k * cols + j0..k * cols + j0 + COL_BLOCK]
                .try_into()
                .expect("block");
            for (x, &y) in s.iter_mut().zip(a) {
                *x += bk as f64 * y as f64;
            }
        }
        out.copy_from_slice(&s);
    }
    for (j, o) in acc.iter_mut().enumerate().skip(full) {
        let mut x = 0f64;
        for (k, &bk) in b_row.iter().enumerate() {
            x += bk as f64 * a[k * cols + j] as f64;
        }
        *o = x;
    }
}

/// Element `(i, j)` rounded exactly; `approx` is the f64 evaluation (a starting guess only).
fn exact_element(job: &MergeJob, fmt: Format, i: usize, j: usize, approx: f64) -> f64 {
    let (cols, in_size) = (job.cols, job.in_dtype.bitsize() / 8);
    let mut w0 = [0f64];
    let p = (i * cols + j) * in_size;
    dtype::decode_f64_into(job.in_dtype, &job.w0[p..p + in_size], &mut w0);
    let mut x = Expansion::default();
    x.add(w0[0]);
    for t in job.terms {
        let s = t.scale as f64;
        match t.dense {
            Some(d) => x.add(s * d[i * cols + j] as f64),
            None => {
                for k in 0..t.rank {
                    let prod = t.b[i * t.rank + k] as f64 * t.a[k * cols + j] as f64;
                    let (hi, lo) = two_product(s, prod);
                    x.add(lo);
                    x.add(hi);
                }
            }
        }
    }
    if x.0.iter().any(|c| !c.is_finite()) {
        // Only an f64 base near f64's own limit gets here; its sum is past every output dtype.
        return f64::NAN;
    }
    if x.sign_minus(0.0) == 0 {
        return if approx == 0.0 { approx } else { 0.0 };
    }
    // Walk from the rounded guess (the compressed expansion's largest component, within an f64
    // ulp of X) to the value whose midpoints bracket X: two steps at most.
    let mut t = fmt.round(x.compressed_top());
    let top = pow2(((fmt.max.to_bits() >> 52) as i32 - 1023) + 1);
    for _ in 0..8 {
        if t.abs() > fmt.max {
            // The overflow marker ±2^(emax+1): X rounds there (to ±∞) unless it is below the
            // midpoint between it and ±max.
            let m = (t + fmt.max.copysign(t)) / 2.0;
            let toward_zero = x.sign_minus(m) * (t.signum() as i32) < 0;
            if toward_zero {
                t = fmt.max.copysign(t);
                continue;
            }
            return f64::INFINITY.copysign(t);
        }
        let below = (fmt.next_down(t).max(-top) + t) / 2.0;
        let above = (t + fmt.next_up(t).min(top)) / 2.0;
        match (x.sign_minus(below), x.sign_minus(above)) {
            (s, _) if s < 0 => t = fmt.next_down(t).max(-top),
            (_, s) if s > 0 => t = fmt.next_up(t).min(top),
            (0, _) => return fmt.round(below),
            (_, 0) => return fmt.round(above),
            _ => return t,
        }
    }
    unreachable!("the walk from an f64-accurate guess ends within two steps")
}

/// `a·b = hi + lo` exactly (no underflow: f32 operands keep every magnitude above 2⁻⁵⁰⁰).
#[inline]
fn two_product(a: f64, b: f64) -> (f64, f64) {
    let hi = a * b;
    (hi, a.mul_add(b, -hi))
}

/// `a + b = s + e` exactly (Knuth's Two-Sum).
#[inline]
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bv = s - a;
    let av = s - bv;
    (s, (a - av) + (b - bv))
}

/// `a + b = s + e` exactly when |a| ≥ |b| (Dekker's Fast-Two-Sum).
#[inline]
fn fast_two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    (s, b - (s - a))
}

/// A nonoverlapping expansion, components in increasing magnitude, zeros dropped.
#[derive(Debug, Default, Clone)]
struct Expansion(Vec<f64>);

impl Expansion {
    /// Grow-Expansion (Shewchuk 1997, Fig. 6) with zero elimination.
    fn add(&mut self, b: f64) {
        let mut q = b;
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &e in &self.0 {
            let (s, h) = two_sum(q, e);
            if h != 0.0 {
                out.push(h);
            }
            q = s;
        }
        if q != 0.0 {
            out.push(q);
        }
        self.0 = out;
    }

    /// An f64 within one ulp of the exact sum: the largest component after Shewchuk's Compress
    /// (1997, Fig. 15), which renormalises the expansion so that it dominates the rest.
    fn compressed_top(&self) -> f64 {
        let e = &self.0;
        let Some(&last) = e.last() else {
            return 0.0;
        };
        // Down: accumulate from the top, keeping each nonzero remainder.
        let mut g = Vec::with_capacity(e.len());
        let mut q = last;
        for &c in e.iter().rev().skip(1) {
            let (s, r) = fast_two_sum(q, c);
            if r != 0.0 {
                g.push(s);
                q = r;
            } else {
                q = s;
            }
        }
        g.push(q);
        // Up: from the smallest, carrying into the larger ones; the remainders are the
        // smaller components of the result, the final sum its largest.
        let mut q = g[g.len() - 1];
        for &c in g.iter().rev().skip(1) {
            q = fast_two_sum(c, q).0;
        }
        q
    }

    /// The sign of (the exact sum) − m: −1, 0 or 1.
    fn sign_minus(&self, m: f64) -> i32 {
        let mut e = self.clone();
        e.add(-m);
        match e.0.last() {
            None => 0,
            Some(&x) if x > 0.0 => 1,
            Some(_) => -1,
        }
    }
}

#[cfg(test)]
mod tests;
