//! ggml's reference K-quant quantizers (`Q2_K` … `Q6_K`, 256-value super-blocks), without an
//! importance matrix, transcribed scalar: the readable reference that the lane-parallel
//! [`super::lanes`] searches are tested against, and the code that packs their results.
//!
//! Each quantizer is split where ggml's is: a *fit* (the per-group scale searches of the first
//! pass, [`Fit`]) and a *pack* (the super-block scales quantized against the largest one, the
//! values requantized against the stored scales, the bytes laid out). The fits are where the
//! time goes; the packs are shared with the fast path.
//!
//! Each function transcribes `ggml/src/ggml-quants.c` (llama.cpp as vendored by
//! llama-cpp-python 0.3.36): `quantize_row_q{2,3,4,5,6}_K_ref` and their helpers
//! `nearest_int`, `make_qx_quants` (`rmse_type = 1`, no weights), `make_q3_quants`
//! (`do_rmse`), `make_qkx2_quants` and the `get_scale_min_k4` packing. `llama-quantize`
//! without `--imatrix` uses exactly these (`quantize_q4_K` calls the `_ref` function when
//! `quant_weights` is NULL). gguf-py (`quants.py`) has no K-quant quantizer.
//!
//! The contract is byte-exactness with ggml compiled without floating-point contraction (the
//! x86-64 baseline that `ggml-base` is built for): every product and sum is one `f32` rounding
//! in C's evaluation order (`w*x*l` is `(w*x)*l`, never a fused multiply-add), integer-to-float
//! conversions happen where C's usual arithmetic conversions put them, narrowing to
//! `int8_t`/`uint8_t` wraps as gcc does, and `f16` narrowing is ggml's
//! `ggml_compute_fp32_to_fp16` (round to nearest even; NaN becomes `0x7E00` with its sign).
//! `fixtures/gguf/kquant.gguf` holds ggml's own bytes for edge-case super-blocks
//! (generator: `fixtures/gen/gguf_kquant.py` with `fixtures/gen/kquant_ref.c`).

use half::f16;

/// `GROUP_MAX_EPS` of ggml-quants.c: a group whose largest magnitude is below it is all zero.
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// `nearest_int`: round to nearest (ties to even) through the `1.5 * 2^23` magic number, with
/// the same bit arithmetic, so out-of-range inputs give ggml's (meaningless but fixed) results.
#[inline(always)]
pub(super) fn nearest_int(f: f32) -> i32 {
    let val = f + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// `GGML_FP32_TO_FP16` as little-endian bytes.
fn f16_le(x: f32) -> [u8; 2] {
    if x.is_nan() {
        let sign = if x.is_sign_negative() { 0x8000u16 } else { 0 };
        return (sign | 0x7E00).to_le_bytes();
    }
    f16::from_f32(x).to_le_bytes()
}

/// `GGML_FP16_TO_FP32` of the two bytes at `b[at..]`.
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The first pass over a super-block's groups (8 of 32 or 16 of 16): each group's scale, its
/// min (the affine types; 0 elsewhere) and its values `L` as ggml stores them in `L[]` (with
/// the `+ nmax` offset of the symmetric types), in element order.
#[derive(Clone, Copy, Debug)]
pub(super) struct Fit {
    pub scales: [f32; 16],
    pub mins: [f32; 16],
    pub l: [u8; 256],
}

impl Default for Fit {
    fn default() -> Self {
        Fit {
            scales: [0.0; 16],
            mins: [0.0; 16],
            l: [0; 256],
        }
    }
}

/// Where a pack writes, when given one, the 256 values that ggml's dequantizer
/// (`dequantize_row_q*_K`, `super::super::quant`'s) reads back from the bytes it packs: the same
/// `d·sc` (and `dmin·m`) products from the same stored scales, then `d·sc · q − dmin·m` (or
/// `d·sc · (q − offset)`) per value, so every value has the dequantizer's bits and the merge's
/// error is measured without unpacking the bytes again (issue #17).
pub(super) type Back<'a> = Option<&'a mut [f32]>;

/// Group `j` of `G` values: `x`'s values and the levels.
#[inline(always)]
fn group<'x, 'l, T, const G: usize>(
    x: &'x [f32],
    l: &'l mut [T; 256],
    j: usize,
) -> (&'x [f32; G], &'l mut [T; G]) {
    (
        x[G * j..G * j + G].try_into().expect("a group"),
        (&mut l[G * j..G * j + G]).try_into().expect("a group"),
    )
}

/// The second pass of the affine types over one group: `nearest_int((x + dm) / dd)` clamped to
/// `0..=nmax`, over a fixed-size array so that it vectorises inside the fast path's per-CPU
/// copies (the division is IEEE, so each lane's quotient is the scalar one).
#[inline(always)]
fn requant_affine<const G: usize>(x: &[f32; G], dm: f32, dd: f32, nmax: i32, l: &mut [u8; G]) {
    for i in 0..G {
        l[i] = nearest_int((x[i] + dm) / dd).clamp(0, nmax) as u8;
    }
}

/// The second pass of the symmetric types (`Q3_K`: `off = 4`, `Q6_K`: `off = 32`) over the
/// sixteen groups of 16, after the stored scales are known: group `j`'s levels requantized
/// against `dd[j]` (`d · sc[j]` as ggml unpacks it) as
/// `nearest_int(x / dd).clamp(-off, off - 1) + off`, a group whose `dd` is 0 keeping its
/// first-pass levels (ggml's `if (!d) continue;`), and where `back` is given each group as the
/// dequantizer reads it back ([`back_sym`]). One loop for both types: `quantize_row_q3_K_ref`
/// and `quantize_row_q6_K_ref` run the same second pass and differ only in how they unpack
/// `sc[j]` and in `off`.
#[inline(always)]
fn requant_sym(x: &[f32], dd: &[f32; 16], off: i8, l: &mut [i8; 256], mut back: Back) {
    let o = i32::from(off);
    for (j, &dd) in dd.iter().enumerate() {
        let (xs, ls) = group::<_, 16>(x, l, j);
        if dd != 0.0 {
            for i in 0..16 {
                ls[i] = (nearest_int(xs[i] / dd).clamp(-o, o - 1) + o) as i8;
            }
        }
        if let Some(b) = back.as_deref_mut() {
            back_sym(ls, dd, off, &mut b[16 * j..16 * j + 16]);
        }
    }
}

/// The second pass of the affine types (`Q2_K`: 16 groups of 16, `Q4_K`/`Q5_K`: 8 of 32) over
/// group `j`, after the stored scales are known: its levels requantized against `dd = d·sc[j]`
/// and `dm = dmin·m[j]` ([`requant_affine`]; a group whose `dd` is 0 keeps its first-pass
/// levels, ggml's `if (!d) continue;`), and where `back` is given the group as the dequantizer
/// reads it back ([`back_affine`]).
#[inline(always)]
fn affine_group<const G: usize>(
    x: &[f32],
    l: &mut [u8; 256],
    j: usize,
    dd: f32,
    dm: f32,
    nmax: i32,
    back: &mut Back,
) {
    let (xs, ls) = group::<_, G>(x, l, j);
    if dd != 0.0 {
        requant_affine(xs, dm, dd, nmax, ls);
    }
    if let Some(b) = back.as_deref_mut() {
        back_affine(ls, dd, dm, &mut b[G * j..G * j + G]);
    }
}

/// An affine group as the dequantizer reads it back: `dd · q − dm`.
#[inline(always)]
fn back_affine<const G: usize>(l: &[u8; G], dd: f32, dm: f32, back: &mut [f32]) {
    let back: &mut [f32; G] = back.try_into().expect("a group");
    for i in 0..G {
        back[i] = dd * f32::from(l[i]) - dm;
    }
}

/// A symmetric group as the dequantizer reads it back: `dd · (q − off)`.
#[inline(always)]
fn back_sym<const G: usize>(l: &[i8; G], dd: f32, off: i8, back: &mut [f32]) {
    let back: &mut [f32; G] = back.try_into().expect("a group");
    for i in 0..G {
        back[i] = dd * f32::from(l[i] - off);
    }
}

/// The value of largest magnitude (the first one where several tie, as ggml's `>` keeps it;
/// 0 when all are 0) and that magnitude: the `max`/`amax` loop that opens `make_qx_quants` and
/// `make_q3_quants`, and the one over the group scales in `quantize_row_q3_K_ref` and
/// `quantize_row_q6_K_ref`.
#[inline(always)]
fn max_abs(v: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &x in v {
        if x.abs() > amax {
            amax = x.abs();
            max = x;
        }
    }
    (max, amax)
}

/// `make_qx_quants(n, nmax, x, L, 1, NULL)`: a symmetric scale for `x` by weighted least squares
/// (weights `x²`) over 19 candidate inverse scales; `L` gets `l + nmax`.
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let (max, amax) = max_abs(x);
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let q = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let l = q(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    for (o, &v) in l_out.iter_mut().zip(x) {
        *o = (q(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l_out.iter_mut().zip(x) {
                *o = (q(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants(n, nmax, x, L, true)`: a symmetric scale refined by up to five passes of
/// coordinate descent on the weighted (`x²`) error; `L` gets `l + nmax`.
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let (max, amax) = max_abs(x);
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    let mut l = [0i32; 16];
    for (li, &v) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        sumlx += w * v * *li as f32;
        suml2 += w * *li as f32 * *li as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let mut slx = sumlx - w * v * *li as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * *li as f32 * *li as f32;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *li {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for (o, li) in l_out.iter_mut().zip(l) {
        *o = (li + nmax) as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad)`:
/// an affine `scale * l - the_min` fit searched over `nstep + 1` inverse scales, each solved by
/// weighted least squares. Returns `(scale, the_min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for ((o, &v), &w) in l_out.iter_mut().zip(x).zip(weights) {
        *o = nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
        best_error += w * err(scale * f32::from(*o) + min - v);
    }
    let mut laux = [0u8; 32];
    let laux = &mut laux[..x.len()];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for ((a, &v), &w) in laux.iter_mut().zip(x).zip(weights) {
            let l = nearest_int(iscale * (v - min)).clamp(0, nmax);
            *a = l as u8;
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * v;
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for ((&a, &v), &w) in laux.iter().zip(x).zip(weights) {
                cur_error += w * err(this_scale * f32::from(a) + this_min - v);
            }
            if cur_error < best_error {
                l_out.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The largest of the first `n` scales and of the first `n` mins, 0 where none is positive (the
/// affine packs' `max_scale`, `max_min`: `>` against a start of 0).
#[inline(always)]
fn max_positive(fit: &Fit, n: usize) -> (f32, f32) {
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for (&s, &m) in fit.scales[..n].iter().zip(&fit.mins[..n]) {
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    (max_scale, max_min)
}

/// Packs 256 2-bit values as `q2_K`/`q3_K` do: byte `32h + l` of `qs` holds elements
/// `128h + l + 32s` in bits `2s..2s+2`.
#[inline(always)]
fn pack_2bit(l: &[u8; 256], out: &mut Vec<u8>) {
    for j in (0..256).step_by(128) {
        for i in 0..32 {
            out.push(l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6));
        }
    }
}

/// The first pass of `quantize_row_q2_K_ref` (see [`q2_pack`]).
pub(super) fn q2_fit(x: &[f32]) -> Fit {
    let mut fit = Fit::default();
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let mut w = [0f32; 16];
        for (wi, v) in w.iter_mut().zip(xs) {
            *wi = v.abs();
        }
        let l = &mut fit.l[16 * j..16 * j + 16];
        (fit.scales[j], fit.mins[j]) = make_qkx2_quants(3, xs, &w, l, -0.5, 0.1, 15, true);
    }
    fit
}

/// `quantize_row_q2_K_ref` for one super-block after its [`Fit`] ([`q2_fit`]): 16 groups of 16
/// with 4-bit scales and mins (`make_qkx2_quants(16, 3, …, |x|, -0.5, 0.1, 15, use_mad)`),
/// 2-bit values. Layout: `scales[16] qs[64] d dmin`.
#[inline(always)]
pub(super) fn q2_pack(x: &[f32], fit: Fit, out: &mut Vec<u8>, mut back: Back) {
    let (max_scale, max_min) = max_positive(&fit, 16);
    let (scales, mins, mut l) = (fit.scales, fit.mins, fit.l);
    // The scales go to the low nibbles of `sc`, then the mins to the high ones (ggml's `= l`
    // then `|= l << 4` on zeroed bytes), each quantized against its largest value, which is
    // stored as `d` or `dmin` (0 when none is positive).
    let mut sc = [0u8; 16];
    let mut nibbles = |values: [f32; 16], max: f32, shift: i32| {
        if max > 0.0 {
            let iscale = 15.0 / max;
            for (b, v) in sc.iter_mut().zip(values) {
                *b |= (nearest_int(iscale * v) << shift) as u8;
            }
            f16_le(max / 15.0)
        } else {
            f16_le(0.0)
        }
    };
    let d = nibbles(scales, max_scale, 0);
    let dmin = nibbles(mins, max_min, 4);
    let (df, dminf) = (f16_at(&d, 0), f16_at(&dmin, 0));
    for (j, &s) in sc.iter().enumerate() {
        let (dd, dm) = (df * f32::from(s & 0xF), dminf * f32::from(s >> 4));
        affine_group::<16>(x, &mut l, j, dd, dm, 3, &mut back);
    }
    out.extend_from_slice(&sc);
    pack_2bit(&l, out);
    out.extend_from_slice(&d);
    out.extend_from_slice(&dmin);
}

/// The scales of the 16 groups of 16 of a super-block (`quant(group, levels)` each, as
/// q3_K and q6_K compute them), with the levels (`l + nmax`, never negative) in `fit.l`.
fn group_fit(x: &[f32], quant: impl Fn(&[f32], &mut [i8]) -> f32) -> Fit {
    let mut fit = Fit::default();
    let mut l = [0i8; 256];
    for j in 0..16 {
        fit.scales[j] = quant(&x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
    }
    fit.l = l.map(|v| v as u8);
    fit
}

/// What the symmetric packs (`Q3_K`, `Q6_K`) start from: the 16 group scales, the first-pass
/// levels as ggml's `int8_t L[]`, and the scale of largest magnitude with that magnitude
/// ([`max_abs`]).
#[inline(always)]
fn sym_start(fit: Fit) -> ([f32; 16], [i8; 256], f32, f32) {
    let (max_scale, amax) = max_abs(&fit.scales);
    (fit.scales, fit.l.map(|v| v as i8), max_scale, amax)
}

/// The first pass of `quantize_row_q3_K_ref` (see [`q3_pack`]).
pub(super) fn q3_fit(x: &[f32]) -> Fit {
    group_fit(x, |x, l| make_q3_quants(4, x, l))
}

/// `quantize_row_q3_K_ref` for one super-block after its [`Fit`] ([`q3_fit`]): 16 groups of 16
/// with signed 6-bit scales (`make_q3_quants(16, 4, …, true)`), 3-bit values split into a
/// 2-bit `qs` and a high-bit mask. Layout: `hmask[32] qs[64] scales[12] d`.
#[inline(always)]
pub(super) fn q3_pack(x: &[f32], fit: Fit, out: &mut Vec<u8>, back: Back) {
    let (scales, mut l, max_scale, _) = sym_start(fit);
    let mut sc = [0u8; 12];
    let d = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (j, &s) in scales.iter().enumerate() {
            // `int8_t l = nearest_int(…)` wraps before the clamp.
            let q = (nearest_int(iscale * s) as i8 as i32).clamp(-32, 31) + 32;
            if j < 8 {
                sc[j] = (q & 0xF) as u8;
            } else {
                sc[j - 8] |= ((q & 0xF) << 4) as u8;
            }
            sc[j % 4 + 8] |= ((q >> 4) << (2 * (j / 4))) as u8;
        }
        f16_le(1.0 / iscale)
    } else {
        f16_le(0.0)
    };
    let df = f16_at(&d, 0);
    let mut dd = [0f32; 16];
    for (j, dd) in dd.iter_mut().enumerate() {
        let lo = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
        let s = (lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
        *dd = df * s as f32;
    }
    requant_sym(x, &dd, 4, &mut l, back);
    let mut hmask = [0u8; 32];
    let mut low = [0u8; 256];
    for (j, (&v, lo)) in l.iter().zip(low.iter_mut()).enumerate() {
        let mut v = v;
        if v > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            v -= 4;
        }
        *lo = v as u8;
    }
    out.extend_from_slice(&hmask);
    pack_2bit(&low, out);
    out.extend_from_slice(&sc);
    out.extend_from_slice(&d);
}

/// The `q4_K`/`q5_K` first pass: 8 groups of 32 fitted by `make_qkx2_quants(32, nmax, …)` with
/// weights `sqrt(mean(x²)) + |x|` (the first 8 scales and mins of the [`Fit`]).
pub(super) fn kx_fit(x: &[f32], nmax: i32, rmin: f32, nstep: i32) -> Fit {
    let mut fit = Fit::default();
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut w = [0f32; 32];
        for (wi, v) in w.iter_mut().zip(xs) {
            *wi = av_x + v.abs();
        }
        let l = &mut fit.l[32 * j..32 * j + 32];
        (fit.scales[j], fit.mins[j]) = make_qkx2_quants(nmax, xs, &w, l, rmin, 0.1, nstep, false);
    }
    fit
}

/// The `q4_K`/`q5_K` second pass: 6-bit scales and mins packed as `get_scale_min_k4` reads
/// them, `d` and `dmin`, and the values requantized against the stored scales. Returns the 16
/// header bytes (`d dmin scales[12]`) and the values.
#[inline(always)]
fn kx_pack(x: &[f32], nmax: i32, fit: Fit, mut back: Back) -> ([u8; 16], [u8; 256]) {
    let (max_scale, max_min) = max_positive(&fit, 8);
    let (scales, mins, mut l) = (fit.scales, fit.mins, fit.l);
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut head = [0u8; 16];
    {
        let sc = &mut head[4..16];
        for j in 0..8 {
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                sc[j] = ls;
                sc[j + 4] = lm;
            } else {
                sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                sc[j - 4] |= (ls >> 4) << 6;
                sc[j] |= (lm >> 4) << 6;
            }
        }
    }
    let (d, dmin) = (f16_le(max_scale / 63.0), f16_le(max_min / 63.0));
    head[..2].copy_from_slice(&d);
    head[2..4].copy_from_slice(&dmin);
    let (df, dminf) = (f16_at(&d, 0), f16_at(&dmin, 0));
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &head[4..16]);
        let dd = df * f32::from(sc);
        let dm = dminf * f32::from(m);
        affine_group::<32>(x, &mut l, j, dd, dm, nmax, &mut back);
    }
    (head, l)
}

/// `get_scale_min_k4(j, q, &d, &m)`.
#[inline(always)]
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `quantize_row_q4_K_ref` for one super-block after its [`Fit`]
/// ([`kx_fit`]`(x, 15, -1, 20)`, i.e. `make_qkx2_quants(32, 15, …, -1, 0.1, 20)`). Layout:
/// `d dmin scales[12] qs[128]`, byte `32c + l` holding elements `64c + l` (low nibble) and
/// `64c + 32 + l` (high nibble).
#[inline(always)]
pub(super) fn q4_pack(x: &[f32], fit: Fit, out: &mut Vec<u8>, back: Back) {
    let (head, l) = kx_pack(x, 15, fit, back);
    out.extend_from_slice(&head);
    for j in (0..256).step_by(64) {
        for i in 0..32 {
            out.push(l[j + i] | (l[j + i + 32] << 4));
        }
    }
}

/// `quantize_row_q5_K_ref` for one super-block after its [`Fit`]
/// ([`kx_fit`]`(x, 31, -0.5, 15)`, i.e. `make_qkx2_quants(32, 31, …, -0.5, 0.1, 15)`). Layout:
/// `d dmin scales[12] qh[32] qs[128]`; the fifth bit of elements `64c + l` and `64c + 32 + l`
/// goes to bits `2c` and `2c + 1` of `qh[l]`.
#[inline(always)]
pub(super) fn q5_pack(x: &[f32], fit: Fit, out: &mut Vec<u8>, back: Back) {
    let (head, l) = kx_pack(x, 31, fit, back);
    let mut qh = [0u8; 32];
    let mut ql = [0u8; 128];
    for c in 0..4 {
        for j in 0..32 {
            let (mut l1, mut l2) = (l[64 * c + j], l[64 * c + j + 32]);
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= 1 << (2 * c);
            }
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= 2 << (2 * c);
            }
            ql[32 * c + j] = l1 | (l2 << 4);
        }
    }
    out.extend_from_slice(&head);
    out.extend_from_slice(&qh);
    out.extend_from_slice(&ql);
}

/// The first pass of `quantize_row_q6_K_ref` (see [`q6_pack`]).
pub(super) fn q6_fit(x: &[f32]) -> Fit {
    group_fit(x, |x, l| make_qx_quants(32, x, l))
}

/// `quantize_row_q6_K_ref` for one super-block after its [`Fit`] ([`q6_fit`]): 16 groups of
/// 16 (`make_qx_quants(16, 32, …, 1)`) with signed 8-bit scales. A super-block whose scales
/// are all below `GROUP_MAX_EPS` is 210 zero bytes (read back as `0 · (0 − 32) = −0`). Layout:
/// `ql[128] qh[64] scales[16] d`.
#[inline(always)]
pub(super) fn q6_pack(x: &[f32], fit: Fit, out: &mut Vec<u8>, back: Back) {
    let (scales, mut l, max_scale, amax) = sym_start(fit);
    if amax < GROUP_MAX_EPS {
        out.extend_from_slice(&[0u8; 210]);
        if let Some(b) = back {
            b[..256].fill(-0.0);
        }
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16_le(1.0 / iscale);
    let mut sc = [0i8; 16];
    for (b, s) in sc.iter_mut().zip(scales) {
        *b = nearest_int(iscale * s).min(127) as i8;
    }
    let df = f16_at(&d, 0);
    let mut dd = [0f32; 16];
    for (dd, &s) in dd.iter_mut().zip(&sc) {
        *dd = df * f32::from(s);
    }
    requant_sym(x, &dd, 32, &mut l, back);
    let l = l.map(|v| v as u8);
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for h in 0..2 {
        let j = 128 * h;
        for i in 0..32 {
            let q = [l[j + i], l[j + i + 32], l[j + i + 64], l[j + i + 96]];
            ql[64 * h + i] = (q[0] & 0xF) | ((q[2] & 0xF) << 4);
            ql[64 * h + i + 32] = (q[1] & 0xF) | ((q[3] & 0xF) << 4);
            qh[32 * h + i] =
                (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend_from_slice(&sc.map(|v| v as u8));
    out.extend_from_slice(&d);
}
