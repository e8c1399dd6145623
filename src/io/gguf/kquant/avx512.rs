//! The `Q4_K`/`Q5_K` group search ([`super::reference::make_qkx2_quants`] with weights
//! `sqrt(mean(x²)) + |x|`, `use_mad = false`) and `Q6_K`'s
//! ([`super::reference::make_qx_quants`]) in AVX-512 registers: [`super::avx2::kx_fits`] and
//! `avx2::q6_fit` at twice the width. For `Q4_K`/`Q5_K` one `__m512` holds the same element of
//! the eight 32-value groups of two consecutive super-blocks (lanes 0–7 the first, 8–15 the
//! second), for `Q6_K` of one super-block's sixteen 16-value groups; several such registers are
//! searched side by side so that independent chains of additions overlap. Must not: change a
//! bit of what [`super::reference`] computes, or use an instruction beyond AVX-512F.
//!
//! Each lane performs the operations of [`super::avx2`] (and so of the scalar transcription)
//! in the same order: `(w * v) * l`, no fused multiply-add, sums over `i` ascending, the same
//! `<`/`>`/`==` comparisons (now into mask registers: `_mm512_cmp_ps_mask` with the same
//! ordered predicates, a NaN comparing false as in C), `_mm512_min_ps(a, b)` exactly
//! `if a < b { a } else { b }` and `_mm512_max_ps(a, b)` `if a > b { a } else { b }` (NaN and
//! signed zeros included), and the scalar branches as `_mm512_mask_blend_ps`. The level is
//! rounded in floats (`min(max(round(p), lo), hi)`, [`level_fast`]) only where each step's bound
//! check ([`within_bound`], the one of [`super::avx2`]'s module doc) proves every `|p| ≤ 2²⁰`,
//! with ggml's bit arithmetic elsewhere. Only AVX-512F instructions are used (bitwise float
//! operations go through the integer `_mm512_*_si512` ones, which AVX-512F has), so
//! [`crate::backend::simd::Level::Avx512`] is enough. `kquant::tests` checks the bits against
//! [`super::reference`] on random and adversarial super-blocks.

use std::arch::x86_64::*;

use super::avx2::{FAST_BOUND, MAGIC};
use super::reference::Fit;

/// The group fits ([`super::reference::kx_fit`]) of `2 B` consecutive super-blocks (`x` holds
/// `512 B` values) with `make_qkx2_quants(32, nmax, …, rmin, 0.1, nstep, false)`, into `fits`
/// in the order of `x`. Panics unless `x.len()` is `512 B` and `fits.len()` is `2 B`, before
/// any load.
///
/// A safe `#[target_feature]` function: calling it is `unsafe` where AVX-512F is not enabled,
/// and the caller's `SAFETY` comment states that [`crate::backend::simd::level`] (capped by the
/// detected features) is [`crate::backend::simd::Level::Avx512`].
#[target_feature(enable = "avx512f")]
pub(super) fn kx_fits<const B: usize>(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    fits: &mut [Fit],
) {
    assert_eq!((x.len(), fits.len()), (512 * B, 2 * B));
    let xt: [[__m512; B]; 32] = transpose16::<B, 32>(x);
    let zero = _mm512_setzero_ps();
    // Weights `av_x + |x|`, `av_x = sqrt(Σ x² / 32)`; the group's data min and max, its `Σ w`,
    // `Σ w x`, and whether every value is finite (`Σ (x - x)` stays 0), as in `avx2::kx_fits`.
    let mut w = [[zero; B]; 32];
    let (mut min, mut max, mut sum_w, mut sum_x) = ([zero; B], [zero; B], [zero; B], [zero; B]);
    let mut finite = [0 as __mmask16; B];
    for k in 0..B {
        let mut sum_x2 = zero;
        for xi in &xt {
            sum_x2 = _mm512_add_ps(sum_x2, _mm512_mul_ps(xi[k], xi[k]));
        }
        let av_x = _mm512_sqrt_ps(_mm512_div_ps(sum_x2, _mm512_set1_ps(32.0)));
        for (wi, xi) in w.iter_mut().zip(&xt) {
            // `_mm512_abs_ps` clears the sign bit, as `fabsf` does.
            wi[k] = _mm512_add_ps(av_x, _mm512_abs_ps(xi[k]));
        }
        (min[k], max[k]) = (xt[0][k], xt[0][k]);
        sum_w[k] = w[0][k];
        sum_x[k] = _mm512_mul_ps(sum_w[k], xt[0][k]);
        let mut nan = _mm512_sub_ps(xt[0][k], xt[0][k]);
        for (xi, wi) in xt.iter().zip(&w).skip(1) {
            min[k] = _mm512_min_ps(xi[k], min[k]);
            max[k] = _mm512_max_ps(xi[k], max[k]);
            sum_w[k] = _mm512_add_ps(sum_w[k], wi[k]);
            sum_x[k] = _mm512_add_ps(sum_x[k], _mm512_mul_ps(wi[k], xi[k]));
            nan = _mm512_add_ps(nan, _mm512_sub_ps(xi[k], xi[k]));
        }
        finite[k] = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(nan, zero);
    }
    let data_min = min;
    let nmax_f = _mm512_set1_ps(nmax as f32);
    let (mut iscale, mut scale, mut best_error) = ([zero; B], [zero; B], [zero; B]);
    let mut flat = [0 as __mmask16; B];
    for k in 0..B {
        // `if min > 0 { min = 0 }`: `_mm512_min_ps(0, min)` is `if 0 < min { 0 } else { min }`.
        min[k] = _mm512_min_ps(zero, min[k]);
        flat[k] = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(max[k], min[k]);
        iscale[k] = _mm512_div_ps(nmax_f, _mm512_sub_ps(max[k], min[k]));
        scale[k] = _mm512_div_ps(_mm512_set1_ps(1.0), iscale[k]);
    }
    let min0 = min;
    for (xi, wi) in xt.iter().zip(&w) {
        for k in 0..B {
            let l = level_exact(
                _mm512_mul_ps(iscale[k], _mm512_sub_ps(xi[k], min[k])),
                0,
                nmax,
            );
            let d = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(scale[k], l), min[k]), xi[k]);
            best_error[k] = _mm512_add_ps(best_error[k], _mm512_mul_ps(wi[k], _mm512_mul_ps(d, d)));
        }
    }
    // The inverse scale and min of the best `L` are kept, and `L` is computed once at the end.
    let (mut l_iscale, mut l_min) = (iscale, min);
    let mut laux = [[zero; B]; 32];
    for is in 0..=nstep {
        let top = _mm512_set1_ps(rmin + 0.1 * is as f32 + nmax as f32);
        let mut fast = true;
        for k in 0..B {
            iscale[k] = _mm512_div_ps(top, _mm512_sub_ps(max[k], min[k]));
            fast &= within_bound(iscale[k], min[k], data_min[k], max[k], finite[k]) == 0xffff;
        }
        let (sum_l, sum_l2, sum_xl) = if fast {
            step_sums::<B, true>(&xt, &w, &mut laux, iscale, min, nmax)
        } else {
            step_sums::<B, false>(&xt, &w, &mut laux, iscale, min, nmax)
        };
        let (mut this_scale, mut this_min) = ([zero; B], [zero; B]);
        let mut ok = [0 as __mmask16; B];
        for k in 0..B {
            let d = _mm512_sub_ps(
                _mm512_mul_ps(sum_w[k], sum_l2[k]),
                _mm512_mul_ps(sum_l[k], sum_l[k]),
            );
            ok[k] = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(d, zero);
            let s = _mm512_div_ps(
                _mm512_sub_ps(
                    _mm512_mul_ps(sum_w[k], sum_xl[k]),
                    _mm512_mul_ps(sum_x[k], sum_l[k]),
                ),
                d,
            );
            let m = _mm512_div_ps(
                _mm512_sub_ps(
                    _mm512_mul_ps(sum_l2[k], sum_x[k]),
                    _mm512_mul_ps(sum_l[k], sum_xl[k]),
                ),
                d,
            );
            let s0 = _mm512_div_ps(sum_xl[k], sum_l2[k]);
            // `if m > 0 { (0, s0) } else { (m, s) }`.
            let clamp = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, zero);
            this_scale[k] = _mm512_mask_blend_ps(clamp, s, s0);
            this_min[k] = _mm512_min_ps(zero, m);
        }
        let mut cur_error = [zero; B];
        for ((a, xi), wi) in laux.iter().zip(&xt).zip(&w) {
            for k in 0..B {
                let d = _mm512_sub_ps(
                    _mm512_add_ps(_mm512_mul_ps(this_scale[k], a[k]), this_min[k]),
                    xi[k],
                );
                cur_error[k] =
                    _mm512_add_ps(cur_error[k], _mm512_mul_ps(wi[k], _mm512_mul_ps(d, d)));
            }
        }
        for k in 0..B {
            // `ok && cur_error < best_error`.
            let better = _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(ok[k], cur_error[k], best_error[k]);
            best_error[k] = _mm512_mask_blend_ps(better, best_error[k], cur_error[k]);
            scale[k] = _mm512_mask_blend_ps(better, scale[k], this_scale[k]);
            l_iscale[k] = _mm512_mask_blend_ps(better, l_iscale[k], iscale[k]);
            l_min[k] = _mm512_mask_blend_ps(better, l_min[k], min[k]);
            min[k] = _mm512_mask_blend_ps(better, min[k], this_min[k]);
        }
    }
    let sign = _mm512_set1_epi32(i32::MIN);
    for k in 0..B {
        // A flat group's levels and scale are 0 (`maskz` writes +0.0 where the mask is clear).
        let keep = !flat[k];
        let mut l = [[0f32; 16]; 32];
        for (li, xi) in l.iter_mut().zip(&xt) {
            let q = level_exact(
                _mm512_mul_ps(l_iscale[k], _mm512_sub_ps(xi[k], l_min[k])),
                0,
                nmax,
            );
            // SAFETY: sixteen f32 inside `li`.
            unsafe { _mm512_storeu_ps(li.as_mut_ptr(), _mm512_maskz_mov_ps(keep, q)) };
        }
        let neg_min = _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(_mm512_mask_blend_ps(flat[k], min[k], min0[k])),
            sign,
        ));
        let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
        // SAFETY: sixteen f32 inside `scales` and `mins`.
        unsafe {
            _mm512_storeu_ps(scales.as_mut_ptr(), _mm512_maskz_mov_ps(keep, scale[k]));
            _mm512_storeu_ps(mins.as_mut_ptr(), neg_min);
        }
        for (h, fit) in fits[2 * k..2 * k + 2].iter_mut().enumerate() {
            // Every field written: eight groups, the other eight scales and mins 0.
            *fit = Fit::default();
            fit.scales[..8].copy_from_slice(&scales[8 * h..8 * h + 8]);
            fit.mins[..8].copy_from_slice(&mins[8 * h..8 * h + 8]);
            for (i, li) in l.iter().enumerate() {
                for j in 0..8 {
                    fit.l[32 * j + i] = li[8 * h + j] as u8;
                }
            }
        }
    }
}

/// The `Q6_K` group fits ([`super::reference::q6_fit`]) of `S` consecutive super-blocks (`x`
/// holds `256 S` values) into `fits`: `avx2::q6_fit` with one super-block's sixteen 16-value
/// groups in one `__m512` (lane `j` group `j`) instead of two `__m256`, and `S` super-blocks
/// side by side; the same operations per lane in the same order (`w = x·x` and `w·x` once per
/// value, the level rounded as `avx2`'s `min(max(p + M, M - 32), M + 31) - M` under the same
/// per-candidate bound check, ggml's bit arithmetic elsewhere). Panics unless `x.len()` is
/// `256 S` and `fits.len()` is `S`, before any load.
///
/// A safe `#[target_feature]` function, called as [`kx_fits`] is.
#[target_feature(enable = "avx512f")]
pub(super) fn q6_fits<const S: usize>(x: &[f32], fits: &mut [Fit]) {
    const NMAX: i32 = 32;
    assert_eq!((x.len(), fits.len()), (256 * S, S));
    let xt: [[__m512; S]; 16] = transpose16::<S, 16>(x);
    let zero = _mm512_setzero_ps();
    let (mut w, mut wx) = ([[zero; S]; 16], [[zero; S]; 16]);
    let (mut max, mut amax) = ([zero; S], [zero; S]);
    let (mut data_min, mut data_max) = ([zero; S], [zero; S]);
    let mut finite = [0 as __mmask16; S];
    for k in 0..S {
        (data_min[k], data_max[k]) = (xt[0][k], xt[0][k]);
        let mut nan = zero;
        for ((xi, wi), wxi) in xt.iter().zip(&mut w).zip(&mut wx) {
            // `max_abs`: `if |x| > amax { amax = |x|; max = x }`.
            let a = _mm512_abs_ps(xi[k]);
            let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, amax[k]);
            amax[k] = _mm512_mask_blend_ps(gt, amax[k], a);
            max[k] = _mm512_mask_blend_ps(gt, max[k], xi[k]);
            data_min[k] = _mm512_min_ps(xi[k], data_min[k]);
            data_max[k] = _mm512_max_ps(xi[k], data_max[k]);
            nan = _mm512_add_ps(nan, _mm512_sub_ps(xi[k], xi[k]));
            wi[k] = _mm512_mul_ps(xi[k], xi[k]);
            wxi[k] = _mm512_mul_ps(wi[k], xi[k]);
        }
        finite[k] = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(nan, zero);
    }
    let mut iscale = [zero; S];
    for k in 0..S {
        iscale[k] = _mm512_div_ps(_mm512_set1_ps(-(NMAX as f32)), max[k]);
    }
    let (sumlx, suml2) = q6_sums(&xt, &w, &wx, iscale, &data_min, &data_max, &finite);
    let (mut scale, mut best) = ([zero; S], [zero; S]);
    for k in 0..S {
        // `if suml2 != 0 { sumlx / suml2 } else { 0 }` (`!=` is true for a NaN).
        let nz = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(suml2[k], zero);
        scale[k] = _mm512_maskz_mov_ps(nz, _mm512_div_ps(sumlx[k], suml2[k]));
        best[k] = _mm512_mul_ps(scale[k], sumlx[k]);
    }
    let mut l_iscale = iscale;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let top = _mm512_set1_ps(-(NMAX as f32 + 0.1 * is as f32));
        for k in 0..S {
            iscale[k] = _mm512_div_ps(top, max[k]);
        }
        let (sumlx, suml2) = q6_sums(&xt, &w, &wx, iscale, &data_min, &data_max, &finite);
        for k in 0..S {
            // `suml2 > 0 && sumlx * sumlx > best * suml2`.
            let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(suml2[k], zero);
            let better = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(
                pos,
                _mm512_mul_ps(sumlx[k], sumlx[k]),
                _mm512_mul_ps(best[k], suml2[k]),
            );
            let s = _mm512_div_ps(sumlx[k], suml2[k]);
            scale[k] = _mm512_mask_blend_ps(better, scale[k], s);
            best[k] = _mm512_mask_blend_ps(better, best[k], _mm512_mul_ps(s, sumlx[k]));
            l_iscale[k] = _mm512_mask_blend_ps(better, l_iscale[k], iscale[k]);
        }
    }
    for (k, fit) in fits.iter_mut().enumerate() {
        // Every field written: no mins (a symmetric type), the levels and scales below.
        fit.mins = [0.0; 16];
        // The scalar code stores `l + nmax`, and 0 (a level of `-nmax`) for an all-zero group.
        let zero_group = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(
            amax[k],
            _mm512_set1_ps(super::reference::GROUP_MAX_EPS),
        );
        let mut l = [[0f32; 16]; 16];
        for (li, xi) in l.iter_mut().zip(&xt) {
            let q = level_exact(_mm512_mul_ps(l_iscale[k], xi[k]), -NMAX, NMAX - 1);
            let q = _mm512_mask_blend_ps(zero_group, q, _mm512_set1_ps(-(NMAX as f32)));
            // SAFETY: sixteen f32 inside `li`.
            unsafe { _mm512_storeu_ps(li.as_mut_ptr(), q) };
        }
        for (i, li) in l.iter().enumerate() {
            for (j, &v) in li.iter().enumerate() {
                fit.l[16 * j + i] = (v as i32 + NMAX) as u8;
            }
        }
        // SAFETY: sixteen f32 inside `fit.scales`.
        unsafe {
            _mm512_storeu_ps(
                fit.scales.as_mut_ptr(),
                _mm512_maskz_mov_ps(!zero_group, scale[k]),
            )
        };
    }
}

/// `Q6_K`'s sums `Σ (w x) l`, `Σ (w l) l` over the levels of `iscale`, in floats where every
/// lane of every register passes the bound check, else through ggml's bit arithmetic.
#[target_feature(enable = "avx512f")]
#[inline]
fn q6_sums<const S: usize>(
    xt: &[[__m512; S]; 16],
    w: &[[__m512; S]; 16],
    wx: &[[__m512; S]; 16],
    iscale: [__m512; S],
    data_min: &[__m512; S],
    data_max: &[__m512; S],
    finite: &[__mmask16; S],
) -> ([__m512; S], [__m512; S]) {
    const NMAX: i32 = 32;
    let zero = _mm512_setzero_ps();
    let mut fast = true;
    for k in 0..S {
        fast &= within_bound(iscale[k], zero, data_min[k], data_max[k], finite[k]) == 0xffff;
    }
    let magic = _mm512_set1_ps(MAGIC);
    let bottom = _mm512_set1_ps(MAGIC - NMAX as f32);
    let top = _mm512_set1_ps(MAGIC + (NMAX - 1) as f32);
    let (mut sumlx, mut suml2) = ([zero; S], [zero; S]);
    for ((xi, wi), wxi) in xt.iter().zip(w).zip(wx) {
        for k in 0..S {
            let p = _mm512_mul_ps(iscale[k], xi[k]);
            let l = if fast {
                let v = _mm512_add_ps(p, magic);
                _mm512_sub_ps(_mm512_min_ps(_mm512_max_ps(v, bottom), top), magic)
            } else {
                level_exact(p, -NMAX, NMAX - 1)
            };
            sumlx[k] = _mm512_add_ps(sumlx[k], _mm512_mul_ps(wxi[k], l));
            suml2[k] = _mm512_add_ps(suml2[k], _mm512_mul_ps(_mm512_mul_ps(wi[k], l), l));
        }
    }
    (sumlx, suml2)
}

/// The lanes (bits of the mask) where every `p = iscale · (x - min)` of the step lies within
/// `±FAST_BOUND`: `avx2::within_bound` in sixteen lanes (the group's values finite, and `p` at
/// its smallest and largest value, computed as the step's loop computes it, within the bound;
/// a NaN is not).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn within_bound(
    iscale: __m512,
    min: __m512,
    data_min: __m512,
    data_max: __m512,
    finite: __mmask16,
) -> __mmask16 {
    let bound = _mm512_set1_ps(FAST_BOUND);
    let lo = _mm512_mul_ps(iscale, _mm512_sub_ps(data_min, min));
    let hi = _mm512_mul_ps(iscale, _mm512_sub_ps(data_max, min));
    let lo_in = _mm512_mask_cmp_ps_mask::<_CMP_LE_OQ>(finite, _mm512_abs_ps(lo), bound);
    _mm512_mask_cmp_ps_mask::<_CMP_LE_OQ>(lo_in, _mm512_abs_ps(hi), bound)
}

/// One step's levels `L = nearest_int(iscale · (x - min)).clamp(0, nmax)` (into `laux`) and
/// their sums `Σ w l`, `Σ (w l) l`, `Σ (w l) x`; in floats where `FAST` (the caller has checked
/// the bound), else through ggml's bit arithmetic.
#[target_feature(enable = "avx512f")]
#[inline]
fn step_sums<const B: usize, const FAST: bool>(
    xt: &[[__m512; B]; 32],
    w: &[[__m512; B]; 32],
    laux: &mut [[__m512; B]; 32],
    iscale: [__m512; B],
    min: [__m512; B],
    nmax: i32,
) -> ([__m512; B], [__m512; B], [__m512; B]) {
    let zero = _mm512_setzero_ps();
    let (mut sum_l, mut sum_l2, mut sum_xl) = ([zero; B], [zero; B], [zero; B]);
    let top = _mm512_set1_ps(nmax as f32);
    for ((a, xi), wi) in laux.iter_mut().zip(xt).zip(w) {
        for k in 0..B {
            let p = _mm512_mul_ps(iscale[k], _mm512_sub_ps(xi[k], min[k]));
            a[k] = if FAST {
                level_fast(p, zero, top)
            } else {
                level_exact(p, 0, nmax)
            };
            let wl = _mm512_mul_ps(wi[k], a[k]);
            sum_l[k] = _mm512_add_ps(sum_l[k], wl);
            sum_l2[k] = _mm512_add_ps(sum_l2[k], _mm512_mul_ps(wl, a[k]));
            sum_xl[k] = _mm512_add_ps(sum_xl[k], _mm512_mul_ps(wl, xi[k]));
        }
    }
    (sum_l, sum_l2, sum_xl)
}

/// `nearest_int(p).clamp(lo, hi) as f32` per lane for `|p| ≤ FAST_BOUND` and `lo = 0`, with
/// `bottom = lo` and `top = hi` as floats: `min(max(round(p), lo), hi)`, where `round` is
/// `vrndscaleps` to the nearest integer, ties to even (exact for every finite `p`), and ggml's
/// `nearest_int` is the same integer wherever `|p| < 2²²`. Three instructions where `avx2`'s
/// `min(max(p + M, M + lo), M + hi) - M` takes four. Only for `lo = 0`: a `round(p)` of `-0` or
/// of a negative `p` above `-0.5` is `-0`, which `max(-0, 0)` (`if -0 > 0 { -0 } else { 0 }`)
/// makes `+0` as `cvtdq2ps(0)` is, where a negative `lo` would let the `-0` through.
#[target_feature(enable = "avx512f")]
#[inline]
fn level_fast(p: __m512, bottom: __m512, top: __m512) -> __m512 {
    let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p);
    _mm512_min_ps(_mm512_max_ps(r, bottom), top)
}

/// `nearest_int(p).clamp(lo, hi) as f32` per lane with ggml's bit arithmetic
/// ([`super::reference::nearest_int`]), for any `p`.
#[target_feature(enable = "avx512f")]
#[inline]
fn level_exact(p: __m512, lo: i32, hi: i32) -> __m512 {
    let bits = _mm512_castps_si512(_mm512_add_ps(p, _mm512_set1_ps(MAGIC)));
    let q = _mm512_sub_epi32(
        _mm512_and_si512(bits, _mm512_set1_epi32(0x007f_ffff)),
        _mm512_set1_epi32(0x0040_0000),
    );
    let q = _mm512_min_epi32(
        _mm512_max_epi32(q, _mm512_set1_epi32(lo)),
        _mm512_set1_epi32(hi),
    );
    _mm512_cvtepi32_ps(q)
}

/// [`level_fast`] and [`level_exact`] of sixteen values, for the test of their agreement.
#[cfg(test)]
#[target_feature(enable = "avx512f")]
pub(super) fn level_fast_exact(p: [f32; 16], lo: i32, hi: i32) -> ([f32; 16], [f32; 16]) {
    let (mut fast, mut exact) = ([0f32; 16], [0f32; 16]);
    let (bottom, top) = (_mm512_set1_ps(lo as f32), _mm512_set1_ps(hi as f32));
    // SAFETY: sixteen f32 inside `p`, `fast` and `exact`.
    unsafe {
        let v = _mm512_loadu_ps(p.as_ptr());
        _mm512_storeu_ps(fast.as_mut_ptr(), level_fast(v, bottom, top));
        _mm512_storeu_ps(exact.as_mut_ptr(), level_exact(v, lo, hi));
    }
    (fast, exact)
}

/// `x[16 G m + G j + i]` at `[i][m]` lane `j`: element `i` of the sixteen `G`-value groups of
/// set `m` in one register (`Q4_K`'s: two super-blocks' eight groups, lanes 0–7 the first;
/// `Q6_K`'s: one super-block). `avx2::transpose`'s 8×8 transposes in both 256-bit halves at
/// once (the unpacks and shuffles work within 128-bit lanes, as their AVX2 forms do), its last
/// step (`permute2f128`) a `vpermt2ps` per register.
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16<const B: usize, const G: usize>(x: &[f32]) -> [[__m512; B]; G] {
    let mut t = [[_mm512_setzero_ps(); B]; G];
    // 128-bit lanes `a0 b0 a2 b2` and `a1 b1 a3 b3` of `a`, `b` (indices past 15 are `b`'s).
    let lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
    let hi = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    for (m, set) in x.chunks_exact(16 * G).enumerate() {
        let (first, second) = set.split_at(8 * G);
        for b in 0..G / 8 {
            let mut r = [_mm512_setzero_ps(); 8];
            for (j, rj) in r.iter_mut().enumerate() {
                let (p, q) = (
                    &first[G * j + 8 * b..G * j + 8 * b + 8],
                    &second[G * j + 8 * b..G * j + 8 * b + 8],
                );
                // SAFETY: eight f32 inside `p` and inside `q`.
                let (p, q) = unsafe { (_mm256_loadu_ps(p.as_ptr()), _mm256_loadu_ps(q.as_ptr())) };
                *rj = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                    _mm512_castpd256_pd512(_mm256_castps_pd(p)),
                    _mm256_castps_pd(q),
                ));
            }
            let t0 = _mm512_unpacklo_ps(r[0], r[1]);
            let t1 = _mm512_unpackhi_ps(r[0], r[1]);
            let t2 = _mm512_unpacklo_ps(r[2], r[3]);
            let t3 = _mm512_unpackhi_ps(r[2], r[3]);
            let t4 = _mm512_unpacklo_ps(r[4], r[5]);
            let t5 = _mm512_unpackhi_ps(r[4], r[5]);
            let t6 = _mm512_unpacklo_ps(r[6], r[7]);
            let t7 = _mm512_unpackhi_ps(r[6], r[7]);
            let u0 = _mm512_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm512_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm512_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm512_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm512_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm512_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm512_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm512_shuffle_ps::<0xEE>(t5, t7);
            let c = &mut t[8 * b..8 * b + 8];
            c[0][m] = _mm512_permutex2var_ps(u0, lo, u4);
            c[1][m] = _mm512_permutex2var_ps(u1, lo, u5);
            c[2][m] = _mm512_permutex2var_ps(u2, lo, u6);
            c[3][m] = _mm512_permutex2var_ps(u3, lo, u7);
            c[4][m] = _mm512_permutex2var_ps(u0, hi, u4);
            c[5][m] = _mm512_permutex2var_ps(u1, hi, u5);
            c[6][m] = _mm512_permutex2var_ps(u2, hi, u6);
            c[7][m] = _mm512_permutex2var_ps(u3, hi, u7);
        }
    }
    t
}
