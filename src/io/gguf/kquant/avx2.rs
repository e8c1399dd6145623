//! The per-group searches where nearly all of a 7B GGUF merge's quantization time goes, written
//! in AVX2 registers: `Q4_K`/`Q5_K`'s ([`super::reference::make_qkx2_quants`] with weights
//! `sqrt(mean(x²)) + |x|`, `use_mad = false`; one `__m256` holds the same element of the eight
//! 32-value groups of a super-block, and `B` super-blocks (one or two) are searched side by side
//! so that two independent chains of additions overlap) and `Q6_K`'s
//! ([`super::reference::make_qx_quants`]; the sixteen 16-value groups in two registers).
//!
//! Each lane performs the scalar transcription's operations in its order, as
//! [`super::lanes`] does (`(w * v) * l`, no fused multiply-add, sums over `i` ascending, the
//! same `<`/`>`/`==` comparisons, so a NaN compares as in C), and the selects are the scalar
//! branches: `_mm256_min_ps(a, b)` is exactly `if a < b { a } else { b }` (NaN and signed zeros
//! included) and `_mm256_max_ps(a, b)` is `if a > b { a } else { b }`. It exists because LLVM's
//! code for the portable `[f32; N]` lanes spent a third more instructions per element (perf
//! annotate of the AVX2 copy: a three-instruction clamp, the bit trick's integer round trip,
//! loop-invariant operands reloaded from the stack) in the loops that are ~64 % of the search.
//!
//! One step differs in *how*, not *what*: `nearest_int(p).clamp(lo, hi) as f32` is
//! `min(max(p + M, M + lo), M + hi) - M` (`M = 1.5·2²³`) computed in floats, without the integer
//! round trip, wherever `|p| ≤ 2²⁰`: there `p + M` lies in `[2²³, 2²⁴)`, where the `f32` spacing
//! is 1, so it is `M + round_ties_even(p)` exactly, and ggml's `(bits & 0x7fffff) - 0x400000` is
//! that same integer (the `Q4_K`/`Q5_K` steps, whose `lo` is 0, round with `vroundps` instead,
//! the same integer in one instruction fewer: [`level_fast0`]). Each step of the search checks the bound for all lanes at once before its
//! loop (`Q6_K`: before each candidate scale's): `x - min` is monotone in `x` and `iscale · d`
//! monotone in `d` (rounding is monotone), so
//! the step's largest `|p|` is at the group's smallest or largest `x`, computed with the loop's
//! own operations; a group with a NaN or an infinity, or a step where any lane's bound fails
//! (or is NaN), takes ggml's bit arithmetic instead. `kquant::tests` checks the bits against
//! [`super::reference`] on random and adversarial super-blocks.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::reference::{Fit, GROUP_MAX_EPS};

/// `1.5 · 2²³`, `nearest_int`'s magic number.
pub(super) const MAGIC: f32 = 12_582_912.0;

/// The largest `|p|` rounded in floats (see the module doc): far inside the `2²² - 1` where
/// `p + MAGIC` stops being in `[2²³, 2²⁴)`.
pub(super) const FAST_BOUND: f32 = 1_048_576.0;

/// The group fits ([`super::reference::kx_fit`]) of `B` consecutive super-blocks (`x` holds
/// `256 B` values) with `make_qkx2_quants(32, nmax, …, rmin, 0.1, nstep, false)`.
/// Panics unless `x.len()` is `256 B`, before any load.
///
/// A safe `#[target_feature]` function: calling it is `unsafe` where AVX2 is not enabled, and
/// the caller's `SAFETY` comment states that [`crate::backend::simd::level`] (capped by the
/// detected features) is at least AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) fn kx_fits<const B: usize>(x: &[f32], nmax: i32, rmin: f32, nstep: i32) -> [Fit; B] {
    assert_eq!(x.len(), 256 * B);
    let xt: [[__m256; B]; 32] = transpose::<B, 32>(x);
    let zero = _mm256_setzero_ps();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    // Weights `av_x + |x|`, `av_x = sqrt(Σ x² / 32)`; the group's data min and max (`<`, `>`
    // against the running value as the scalar loop compares: `_mm256_min_ps(x, min)`), its
    // `Σ w`, `Σ w x`, and whether every value is finite (`Σ (x - x)` stays 0).
    let mut w = [[zero; B]; 32];
    let (mut min, mut max, mut sum_w, mut sum_x) = ([zero; B], [zero; B], [zero; B], [zero; B]);
    let mut finite = [zero; B];
    for k in 0..B {
        let mut sum_x2 = zero;
        for xi in &xt {
            sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(xi[k], xi[k]));
        }
        let av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.0)));
        for (wi, xi) in w.iter_mut().zip(&xt) {
            wi[k] = _mm256_add_ps(av_x, _mm256_and_ps(xi[k], abs_mask));
        }
        (min[k], max[k]) = (xt[0][k], xt[0][k]);
        sum_w[k] = w[0][k];
        sum_x[k] = _mm256_mul_ps(sum_w[k], xt[0][k]);
        let mut nan = _mm256_sub_ps(xt[0][k], xt[0][k]);
        for (xi, wi) in xt.iter().zip(&w).skip(1) {
            min[k] = _mm256_min_ps(xi[k], min[k]);
            max[k] = _mm256_max_ps(xi[k], max[k]);
            sum_w[k] = _mm256_add_ps(sum_w[k], wi[k]);
            sum_x[k] = _mm256_add_ps(sum_x[k], _mm256_mul_ps(wi[k], xi[k]));
            nan = _mm256_add_ps(nan, _mm256_sub_ps(xi[k], xi[k]));
        }
        finite[k] = _mm256_cmp_ps::<_CMP_EQ_OQ>(nan, zero);
    }
    let data_min = min;
    let nmax_f = _mm256_set1_ps(nmax as f32);
    let (mut flat, mut iscale, mut scale, mut best_error) =
        ([zero; B], [zero; B], [zero; B], [zero; B]);
    for k in 0..B {
        // `if min > 0 { min = 0 }`: `_mm256_min_ps(0, min)` is `if 0 < min { 0 } else { min }`.
        min[k] = _mm256_min_ps(zero, min[k]);
        flat[k] = _mm256_cmp_ps::<_CMP_EQ_OQ>(max[k], min[k]);
        iscale[k] = _mm256_div_ps(nmax_f, _mm256_sub_ps(max[k], min[k]));
        scale[k] = _mm256_div_ps(_mm256_set1_ps(1.0), iscale[k]);
    }
    let min0 = min;
    for (xi, wi) in xt.iter().zip(&w) {
        for k in 0..B {
            let l = level_exact(
                _mm256_mul_ps(iscale[k], _mm256_sub_ps(xi[k], min[k])),
                0,
                nmax,
            );
            let d = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale[k], l), min[k]), xi[k]);
            best_error[k] = _mm256_add_ps(best_error[k], _mm256_mul_ps(wi[k], _mm256_mul_ps(d, d)));
        }
    }
    // As in `lanes::make_qkx2_quants`: the inverse scale and min of the best `L` are kept, and
    // `L` is computed once at the end.
    let (mut l_iscale, mut l_min) = (iscale, min);
    let mut laux = [[zero; B]; 32];
    for is in 0..=nstep {
        let top = _mm256_set1_ps(rmin + 0.1 * is as f32 + nmax as f32);
        let mut fast = true;
        for k in 0..B {
            iscale[k] = _mm256_div_ps(top, _mm256_sub_ps(max[k], min[k]));
            fast &= within_bound(iscale[k], min[k], data_min[k], max[k], finite[k]) == 0xff;
        }
        let (sum_l, sum_l2, sum_xl) = if fast {
            step_sums::<B, true>(&xt, &w, &mut laux, iscale, min, nmax)
        } else {
            step_sums::<B, false>(&xt, &w, &mut laux, iscale, min, nmax)
        };
        let (mut this_scale, mut this_min, mut ok) = ([zero; B], [zero; B], [zero; B]);
        for k in 0..B {
            let d = _mm256_sub_ps(
                _mm256_mul_ps(sum_w[k], sum_l2[k]),
                _mm256_mul_ps(sum_l[k], sum_l[k]),
            );
            ok[k] = _mm256_cmp_ps::<_CMP_GT_OQ>(d, zero);
            let s = _mm256_div_ps(
                _mm256_sub_ps(
                    _mm256_mul_ps(sum_w[k], sum_xl[k]),
                    _mm256_mul_ps(sum_x[k], sum_l[k]),
                ),
                d,
            );
            let m = _mm256_div_ps(
                _mm256_sub_ps(
                    _mm256_mul_ps(sum_l2[k], sum_x[k]),
                    _mm256_mul_ps(sum_l[k], sum_xl[k]),
                ),
                d,
            );
            let s0 = _mm256_div_ps(sum_xl[k], sum_l2[k]);
            // `if m > 0 { (0, s0) } else { (m, s) }`.
            this_scale[k] = _mm256_blendv_ps(s, s0, _mm256_cmp_ps::<_CMP_GT_OQ>(m, zero));
            this_min[k] = _mm256_min_ps(zero, m);
        }
        let mut cur_error = [zero; B];
        for ((a, xi), wi) in laux.iter().zip(&xt).zip(&w) {
            for k in 0..B {
                let d = _mm256_sub_ps(
                    _mm256_add_ps(_mm256_mul_ps(this_scale[k], a[k]), this_min[k]),
                    xi[k],
                );
                cur_error[k] =
                    _mm256_add_ps(cur_error[k], _mm256_mul_ps(wi[k], _mm256_mul_ps(d, d)));
            }
        }
        for k in 0..B {
            let better = _mm256_and_ps(
                ok[k],
                _mm256_cmp_ps::<_CMP_LT_OQ>(cur_error[k], best_error[k]),
            );
            best_error[k] = _mm256_blendv_ps(best_error[k], cur_error[k], better);
            scale[k] = _mm256_blendv_ps(scale[k], this_scale[k], better);
            l_iscale[k] = _mm256_blendv_ps(l_iscale[k], iscale[k], better);
            l_min[k] = _mm256_blendv_ps(l_min[k], min[k], better);
            min[k] = _mm256_blendv_ps(min[k], this_min[k], better);
        }
    }
    let mut fits = [Fit::default(); B];
    let sign = _mm256_set1_ps(-0.0);
    for (k, fit) in fits.iter_mut().enumerate() {
        let mut l = [[0f32; 8]; 32];
        for (li, xi) in l.iter_mut().zip(&xt) {
            let q = level_exact(
                _mm256_mul_ps(l_iscale[k], _mm256_sub_ps(xi[k], l_min[k])),
                0,
                nmax,
            );
            // SAFETY: eight f32 inside `li`.
            unsafe { _mm256_storeu_ps(li.as_mut_ptr(), _mm256_andnot_ps(flat[k], q)) };
        }
        for (i, li) in l.iter().enumerate() {
            for (j, &v) in li.iter().enumerate() {
                fit.l[32 * j + i] = v as u8;
            }
        }
        let neg_min = _mm256_xor_ps(_mm256_blendv_ps(min[k], min0[k], flat[k]), sign);
        // SAFETY: eight f32 inside the first eight of sixteen.
        unsafe {
            _mm256_storeu_ps(fit.scales.as_mut_ptr(), _mm256_andnot_ps(flat[k], scale[k]));
            _mm256_storeu_ps(fit.mins.as_mut_ptr(), neg_min);
        }
    }
    fits
}

/// The `Q6_K` group fits ([`super::reference::q6_fit`]): `make_qx_quants(16, 32, …, 1, NULL)`
/// for the sixteen 16-value groups of one super-block in two registers, lane `j` of register
/// `h` being group `8 h + j`, with [`super::lanes`]' operations per lane in its order (`w = x·x`
/// and `w·x` computed once per value instead of once per candidate scale: the same products of
/// the same operands, so the same bits). Panics unless `x.len()` is 256, before any load.
///
/// A safe `#[target_feature]` function, called as [`kx_fits`] is.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) fn q6_fit(x: &[f32]) -> Fit {
    const NMAX: i32 = 32;
    assert_eq!(x.len(), 256);
    let xt: [[__m256; 2]; 16] = transpose::<2, 16>(x);
    let zero = _mm256_setzero_ps();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let (mut w, mut wx) = ([[zero; 2]; 16], [[zero; 2]; 16]);
    let (mut max, mut amax) = ([zero; 2], [zero; 2]);
    let (mut data_min, mut data_max, mut finite) = ([zero; 2], [zero; 2], [zero; 2]);
    for k in 0..2 {
        (data_min[k], data_max[k]) = (xt[0][k], xt[0][k]);
        let mut nan = zero;
        for ((xi, wi), wxi) in xt.iter().zip(&mut w).zip(&mut wx) {
            // `max_abs`: `if |x| > amax { amax = |x|; max = x }`.
            let a = _mm256_and_ps(xi[k], abs_mask);
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(a, amax[k]);
            amax[k] = _mm256_blendv_ps(amax[k], a, gt);
            max[k] = _mm256_blendv_ps(max[k], xi[k], gt);
            data_min[k] = _mm256_min_ps(xi[k], data_min[k]);
            data_max[k] = _mm256_max_ps(xi[k], data_max[k]);
            nan = _mm256_add_ps(nan, _mm256_sub_ps(xi[k], xi[k]));
            wi[k] = _mm256_mul_ps(xi[k], xi[k]);
            wxi[k] = _mm256_mul_ps(wi[k], xi[k]);
        }
        finite[k] = _mm256_cmp_ps::<_CMP_EQ_OQ>(nan, zero);
    }
    // The sums `Σ (w x) l`, `Σ (w l) l` of the levels of `iscale` in both registers.
    let sums = |iscale: [__m256; 2]| {
        let mut fast = true;
        for k in 0..2 {
            fast &= within_bound(iscale[k], zero, data_min[k], data_max[k], finite[k]) == 0xff;
        }
        let magic = _mm256_set1_ps(MAGIC);
        let bottom = _mm256_set1_ps(MAGIC - NMAX as f32);
        let top = _mm256_set1_ps(MAGIC + (NMAX - 1) as f32);
        let (mut sumlx, mut suml2) = ([zero; 2], [zero; 2]);
        for ((xi, wi), wxi) in xt.iter().zip(&w).zip(&wx) {
            for k in 0..2 {
                let p = _mm256_mul_ps(iscale[k], xi[k]);
                let l = if fast {
                    level_fast(p, magic, bottom, top)
                } else {
                    level_exact(p, -NMAX, NMAX - 1)
                };
                sumlx[k] = _mm256_add_ps(sumlx[k], _mm256_mul_ps(wxi[k], l));
                suml2[k] = _mm256_add_ps(suml2[k], _mm256_mul_ps(_mm256_mul_ps(wi[k], l), l));
            }
        }
        (sumlx, suml2)
    };
    let mut iscale = [zero; 2];
    for k in 0..2 {
        iscale[k] = _mm256_div_ps(_mm256_set1_ps(-(NMAX as f32)), max[k]);
    }
    let (sumlx, suml2) = sums(iscale);
    let (mut scale, mut best) = ([zero; 2], [zero; 2]);
    for k in 0..2 {
        // `if suml2 != 0 { sumlx / suml2 } else { 0 }` (`!=` is true for a NaN).
        let nz = _mm256_cmp_ps::<_CMP_NEQ_UQ>(suml2[k], zero);
        scale[k] = _mm256_and_ps(nz, _mm256_div_ps(sumlx[k], suml2[k]));
        best[k] = _mm256_mul_ps(scale[k], sumlx[k]);
    }
    let mut l_iscale = iscale;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let top = _mm256_set1_ps(-(NMAX as f32 + 0.1 * is as f32));
        for k in 0..2 {
            iscale[k] = _mm256_div_ps(top, max[k]);
        }
        let (sumlx, suml2) = sums(iscale);
        for k in 0..2 {
            let better = _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(suml2[k], zero),
                _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_mul_ps(sumlx[k], sumlx[k]),
                    _mm256_mul_ps(best[k], suml2[k]),
                ),
            );
            let s = _mm256_div_ps(sumlx[k], suml2[k]);
            scale[k] = _mm256_blendv_ps(scale[k], s, better);
            best[k] = _mm256_blendv_ps(best[k], _mm256_mul_ps(s, sumlx[k]), better);
            l_iscale[k] = _mm256_blendv_ps(l_iscale[k], iscale[k], better);
        }
    }
    let mut fit = Fit::default();
    for k in 0..2 {
        // The scalar code stores `l + nmax`, and 0 (a level of `-nmax`) for an all-zero group.
        let zero_group = _mm256_cmp_ps::<_CMP_LT_OQ>(amax[k], _mm256_set1_ps(GROUP_MAX_EPS));
        let mut l = [[0f32; 8]; 16];
        for (li, xi) in l.iter_mut().zip(&xt) {
            let q = level_exact(_mm256_mul_ps(l_iscale[k], xi[k]), -NMAX, NMAX - 1);
            let q = _mm256_blendv_ps(q, _mm256_set1_ps(-(NMAX as f32)), zero_group);
            // SAFETY: eight f32 inside `li`.
            unsafe { _mm256_storeu_ps(li.as_mut_ptr(), q) };
        }
        for (i, li) in l.iter().enumerate() {
            for (j, &v) in li.iter().enumerate() {
                fit.l[16 * (8 * k + j) + i] = (v as i32 + NMAX) as u8;
            }
        }
        // SAFETY: eight f32 inside `fit.scales[8 k..]`.
        unsafe {
            _mm256_storeu_ps(
                fit.scales.as_mut_ptr().add(8 * k),
                _mm256_andnot_ps(zero_group, scale[k]),
            )
        };
    }
    fit
}

/// The lanes (bits of the mask) where every `p = iscale · (x - min)` of the step lies within
/// `±FAST_BOUND`: the group's values are finite (`finite` all ones) and `p` at its smallest and
/// largest value, computed as the step's loop computes it, is within the bound (a NaN is not).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn within_bound(
    iscale: __m256,
    min: __m256,
    data_min: __m256,
    data_max: __m256,
    finite: __m256,
) -> i32 {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let bound = _mm256_set1_ps(FAST_BOUND);
    let lo = _mm256_mul_ps(iscale, _mm256_sub_ps(data_min, min));
    let hi = _mm256_mul_ps(iscale, _mm256_sub_ps(data_max, min));
    let within = _mm256_and_ps(
        _mm256_cmp_ps::<_CMP_LE_OQ>(_mm256_and_ps(lo, abs_mask), bound),
        _mm256_cmp_ps::<_CMP_LE_OQ>(_mm256_and_ps(hi, abs_mask), bound),
    );
    _mm256_movemask_ps(_mm256_and_ps(within, finite))
}

/// One step's levels `L = nearest_int(iscale · (x - min)).clamp(0, nmax)` (into `laux`) and
/// their sums `Σ w l`, `Σ (w l) l`, `Σ (w l) x`; in floats where `FAST` (the caller has checked
/// the bound of the module doc), else through ggml's bit arithmetic.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn step_sums<const B: usize, const FAST: bool>(
    xt: &[[__m256; B]; 32],
    w: &[[__m256; B]; 32],
    laux: &mut [[__m256; B]; 32],
    iscale: [__m256; B],
    min: [__m256; B],
    nmax: i32,
) -> ([__m256; B], [__m256; B], [__m256; B]) {
    let zero = _mm256_setzero_ps();
    let (mut sum_l, mut sum_l2, mut sum_xl) = ([zero; B], [zero; B], [zero; B]);
    let top = _mm256_set1_ps(nmax as f32);
    for ((a, xi), wi) in laux.iter_mut().zip(xt).zip(w) {
        for k in 0..B {
            let p = _mm256_mul_ps(iscale[k], _mm256_sub_ps(xi[k], min[k]));
            a[k] = if FAST {
                level_fast0(p, zero, top)
            } else {
                level_exact(p, 0, nmax)
            };
            let wl = _mm256_mul_ps(wi[k], a[k]);
            sum_l[k] = _mm256_add_ps(sum_l[k], wl);
            sum_l2[k] = _mm256_add_ps(sum_l2[k], _mm256_mul_ps(wl, a[k]));
            sum_xl[k] = _mm256_add_ps(sum_xl[k], _mm256_mul_ps(wl, xi[k]));
        }
    }
    (sum_l, sum_l2, sum_xl)
}

/// `nearest_int(p).clamp(lo, hi) as f32` per lane for `|p| ≤ FAST_BOUND` (see the module doc):
/// `min(max(p + M, M + lo), M + hi) - M`, with `magic = M`, `bottom = M + lo`, `top = M + hi`
/// (exact for `|lo|, |hi| < 2²²`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn level_fast(p: __m256, magic: __m256, bottom: __m256, top: __m256) -> __m256 {
    let v = _mm256_add_ps(p, magic);
    _mm256_sub_ps(_mm256_min_ps(_mm256_max_ps(v, bottom), top), magic)
}

/// [`level_fast`] for `lo = 0` (`bottom = 0`, `top = hi`) in three instructions instead of four:
/// `min(max(round(p), 0), hi)` with `vroundps` to the nearest integer, ties to even, which is
/// ggml's `nearest_int` wherever `|p| < 2²²`, as `avx512`'s `level_fast` (a `-0` from
/// `round(p)` is made `+0` by `max(-0, 0)`, `if -0 > 0 { -0 } else { 0 }`; a negative `lo` would
/// let it through, so `Q6_K` keeps [`level_fast`]). One thread's CPU time,
/// `Q4_K` searches alone, A/B in one process on the loaded 2-core EPYC (AVX2 only), best of 15:
/// 107.2 → 117.2 and 109.4 → 114.1 Mvalues/s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn level_fast0(p: __m256, zero: __m256, top: __m256) -> __m256 {
    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p);
    _mm256_min_ps(_mm256_max_ps(r, zero), top)
}

/// [`level_fast0`] (for `lo = 0`) and [`level_exact`] of eight values, for the test of their
/// agreement.
#[cfg(all(test, target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
pub(super) fn level_fast0_exact(p: [f32; 8], hi: i32) -> ([f32; 8], [f32; 8]) {
    // SAFETY: eight f32 inside `p`, `fast` and `exact`.
    let v = unsafe { _mm256_loadu_ps(p.as_ptr()) };
    let (mut fast, mut exact) = ([0f32; 8], [0f32; 8]);
    let top = _mm256_set1_ps(hi as f32);
    unsafe {
        _mm256_storeu_ps(fast.as_mut_ptr(), level_fast0(v, _mm256_setzero_ps(), top));
        _mm256_storeu_ps(exact.as_mut_ptr(), level_exact(v, 0, hi));
    }
    (fast, exact)
}

/// [`level_fast`] and [`level_exact`] of eight values, for the test of their agreement.
#[cfg(all(test, target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
pub(super) fn level_fast_exact(p: [f32; 8], lo: i32, hi: i32) -> ([f32; 8], [f32; 8]) {
    // SAFETY: eight f32 inside `p`, `fast` and `exact`.
    let v = unsafe { _mm256_loadu_ps(p.as_ptr()) };
    let (mut fast, mut exact) = ([0f32; 8], [0f32; 8]);
    let magic = _mm256_set1_ps(MAGIC);
    let (bottom, top) = (
        _mm256_set1_ps(MAGIC + lo as f32),
        _mm256_set1_ps(MAGIC + hi as f32),
    );
    unsafe {
        _mm256_storeu_ps(fast.as_mut_ptr(), level_fast(v, magic, bottom, top));
        _mm256_storeu_ps(exact.as_mut_ptr(), level_exact(v, lo, hi));
    }
    (fast, exact)
}

/// `nearest_int(p).clamp(lo, hi) as f32` per lane with ggml's bit arithmetic
/// ([`super::reference::nearest_int`]), for any `p`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn level_exact(p: __m256, lo: i32, hi: i32) -> __m256 {
    let bits = _mm256_castps_si256(_mm256_add_ps(p, _mm256_set1_ps(MAGIC)));
    let q = _mm256_sub_epi32(
        _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)),
        _mm256_set1_epi32(0x0040_0000),
    );
    let q = _mm256_min_epi32(
        _mm256_max_epi32(q, _mm256_set1_epi32(lo)),
        _mm256_set1_epi32(hi),
    );
    _mm256_cvtepi32_ps(q)
}

/// `x[8 G k + G j + i]` at `[i][k]` lane `j`: element `i` of the eight `G`-value groups of set
/// `k` in one register, by 8×8 transposes of the rows `x[8 G k + G j + 8 b ..][..8]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn transpose<const B: usize, const G: usize>(x: &[f32]) -> [[__m256; B]; G] {
    let mut t = [[_mm256_setzero_ps(); B]; G];
    for k in 0..B {
        let sb = &x[8 * G * k..8 * G * (k + 1)];
        for b in 0..G / 8 {
            let mut r = [_mm256_setzero_ps(); 8];
            for (j, rj) in r.iter_mut().enumerate() {
                let row = &sb[G * j + 8 * b..G * j + 8 * b + 8];
                // SAFETY: eight f32 inside `row`.
                *rj = unsafe { _mm256_loadu_ps(row.as_ptr()) };
            }
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let c = &mut t[8 * b..8 * b + 8];
            c[0][k] = _mm256_permute2f128_ps::<0x20>(u0, u4);
            c[1][k] = _mm256_permute2f128_ps::<0x20>(u1, u5);
            c[2][k] = _mm256_permute2f128_ps::<0x20>(u2, u6);
            c[3][k] = _mm256_permute2f128_ps::<0x20>(u3, u7);
            c[4][k] = _mm256_permute2f128_ps::<0x31>(u0, u4);
            c[5][k] = _mm256_permute2f128_ps::<0x31>(u1, u5);
            c[6][k] = _mm256_permute2f128_ps::<0x31>(u2, u6);
            c[7][k] = _mm256_permute2f128_ps::<0x31>(u3, u7);
        }
    }
    t
}
