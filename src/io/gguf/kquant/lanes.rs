//! The per-group searches of [`super::reference`] evaluated for all groups of a super-block at
//! once, one group per lane.
//!
//! A group's search reads only that group's values, so the groups of a super-block (8 of 32 for
//! `Q4_K`/`Q5_K`, 16 of 16 for `Q2_K`/`Q3_K`/`Q6_K`) are independent: here lane `j` of every
//! `[f32; N]` holds group `j`, the values are transposed so that element `i` of all groups is
//! one array, and each lane performs exactly the scalar transcription's operations in its order
//! (`(w * v) * l`, never fused, sums accumulated over `i` ascending). Where the scalar code
//! branches on data (`if v < min`, `if cur_error < best_error`, an early return for a flat or an
//! all-zero group) every lane computes both sides and keeps the one the scalar code would take,
//! with the same comparison (`<`, `>`, `!=` on `f32`, so a NaN compares as in C). A lane whose
//! result is discarded may compute infinities or NaNs; they never reach the kept values.
//!
//! The arrays are fixed-length, so LLVM turns every lane loop into vector instructions of the
//! width the enclosing [`crate::backend::simd::multiversion!`] copy is compiled for; the
//! functions here are `#[inline(always)]` so that they are compiled inside those copies. They
//! compute the same bits as [`super::reference`] at every level, which
//! `kquant::tests` checks on random and adversarial super-blocks.

use super::reference::{Fit, GROUP_MAX_EPS};

/// `nearest_int` of each lane (see [`super::reference::nearest_int`]: the same bit arithmetic).
#[inline(always)]
fn nearest_int<const N: usize>(f: [f32; N]) -> [i32; N] {
    let mut r = [0i32; N];
    for j in 0..N {
        let val = f[j] + 12_582_912.0;
        r[j] = (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000;
    }
    r
}

/// `nearest_int(a * b).clamp(lo, hi)` as an `f32` per lane (the values are small integers, so
/// the conversion is exact, as C's conversion of the `int` is).
#[inline(always)]
fn quant<const N: usize>(a: [f32; N], b: [f32; N], lo: i32, hi: i32) -> [f32; N] {
    let mut p = [0f32; N];
    for j in 0..N {
        p[j] = a[j] * b[j];
    }
    level(p, lo, hi)
}

/// `nearest_int(f).clamp(lo, hi)` as an `f32` per lane.
#[inline(always)]
fn level<const N: usize>(f: [f32; N], lo: i32, hi: i32) -> [f32; N] {
    let q = nearest_int(f);
    let mut r = [0f32; N];
    for j in 0..N {
        r[j] = q[j].clamp(lo, hi) as f32;
    }
    r
}

/// `if m { a } else { b }` per lane, as bit masks: no branch, so no lane's data decides the
/// path (LLVM would otherwise branch around a division it considers costly).
#[inline(always)]
fn sel<const N: usize>(m: [bool; N], a: [f32; N], b: [f32; N]) -> [f32; N] {
    let mut r = [0f32; N];
    for j in 0..N {
        let mask = (m[j] as u32).wrapping_neg();
        r[j] = f32::from_bits((a[j].to_bits() & mask) | (b[j].to_bits() & !mask));
    }
    r
}

/// `x[G * j + i]` at `[i][j]`: element `i` of every group as one array.
#[inline(always)]
fn transpose<const N: usize, const G: usize>(x: &[f32]) -> [[f32; N]; G] {
    let mut t = [[0f32; N]; G];
    for (j, g) in x.chunks_exact(G).take(N).enumerate() {
        for (i, &v) in g.iter().enumerate() {
            t[i][j] = v;
        }
    }
    t
}

/// Writes lane results `l[i][j]` (small non-negative integers held as `f32`) plus `offset` into
/// the super-block's values at `G * j + i`.
#[inline(always)]
fn store<const N: usize, const G: usize>(l: &[[f32; N]; G], offset: i32, out: &mut [u8; 256]) {
    for (i, li) in l.iter().enumerate() {
        for (j, &v) in li.iter().enumerate() {
            out[G * j + i] = (v as i32 + offset) as u8;
        }
    }
}

/// The error of one value: `|d|` or `d²`.
#[inline(always)]
fn err(d: f32, use_mad: bool) -> f32 {
    if use_mad {
        d.abs()
    } else {
        d * d
    }
}

/// [`super::reference::make_qkx2_quants`] for `N` groups of `G` (`x` and `w` transposed), lane
/// `j` being group `j`. Returns `(scale, the_min)` per lane and leaves `L` in `l_out`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn make_qkx2_quants<const N: usize, const G: usize>(
    nmax: i32,
    x: &[[f32; N]; G],
    w: &[[f32; N]; G],
    l_out: &mut [[f32; N]; G],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> ([f32; N], [f32; N]) {
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = [0f32; N];
    for j in 0..N {
        sum_x[j] = sum_w[j] * x[0][j];
    }
    for (xi, wi) in x.iter().zip(w).skip(1) {
        let (mut lt, mut gt) = ([false; N], [false; N]);
        for j in 0..N {
            lt[j] = xi[j] < min[j];
            gt[j] = xi[j] > max[j];
            sum_w[j] += wi[j];
            sum_x[j] += wi[j] * xi[j];
        }
        min = sel(lt, *xi, min);
        max = sel(gt, *xi, max);
    }
    let (mut pos, mut flat) = ([false; N], [false; N]);
    for j in 0..N {
        pos[j] = min[j] > 0.0;
    }
    min = sel(pos, [0.0; N], min);
    for j in 0..N {
        flat[j] = max[j] == min[j];
    }
    let min0 = min;
    let mut iscale = [0f32; N];
    let mut scale = [0f32; N];
    for j in 0..N {
        iscale[j] = nmax as f32 / (max[j] - min[j]);
        scale[j] = 1.0 / iscale[j];
    }
    let mut best_error = [0f32; N];
    for (xi, wi) in x.iter().zip(w) {
        let mut d = [0f32; N];
        for j in 0..N {
            d[j] = xi[j] - min[j];
        }
        let l = quant(iscale, d, 0, nmax);
        for j in 0..N {
            best_error[j] += wi[j] * err(scale[j] * l[j] + min[j] - xi[j], use_mad);
        }
    }
    // `L` is not copied at each improvement: the inverse scale and min it was computed with
    // are kept, and it is computed once at the end (the same operations on the same values).
    let (mut l_iscale, mut l_min) = (iscale, min);
    let mut laux = [[0f32; N]; G];
    for is in 0..=nstep {
        // As in ggml, `min` is the best fit's so far: both the range and the offset move with it.
        let top = rmin + rdelta * is as f32 + nmax as f32;
        for j in 0..N {
            iscale[j] = top / (max[j] - min[j]);
        }
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; N], [0f32; N], [0f32; N]);
        for ((a, xi), wi) in laux.iter_mut().zip(x).zip(w) {
            let mut d = [0f32; N];
            for j in 0..N {
                d[j] = xi[j] - min[j];
            }
            *a = quant(iscale, d, 0, nmax);
            for j in 0..N {
                let wl = wi[j] * a[j];
                sum_l[j] += wl;
                sum_l2[j] += wl * a[j];
                sum_xl[j] += wl * xi[j];
            }
        }
        let (mut s, mut m, mut ok, mut clamp, mut s0) =
            ([0f32; N], [0f32; N], [false; N], [false; N], [0f32; N]);
        for j in 0..N {
            let d = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            ok[j] = d > 0.0;
            s[j] = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / d;
            m[j] = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / d;
            clamp[j] = m[j] > 0.0;
            s0[j] = sum_xl[j] / sum_l2[j];
        }
        let this_min = sel(clamp, [0.0; N], m);
        let this_scale = sel(clamp, s0, s);
        let mut cur_error = [0f32; N];
        for (a, (xi, wi)) in laux.iter().zip(x.iter().zip(w)) {
            for j in 0..N {
                cur_error[j] += wi[j] * err(this_scale[j] * a[j] + this_min[j] - xi[j], use_mad);
            }
        }
        let mut better = [false; N];
        for j in 0..N {
            better[j] = ok[j] & (cur_error[j] < best_error[j]);
        }
        best_error = sel(better, cur_error, best_error);
        scale = sel(better, this_scale, scale);
        l_iscale = sel(better, iscale, l_iscale);
        l_min = sel(better, min, l_min);
        min = sel(better, this_min, min);
    }
    for (o, xi) in l_out.iter_mut().zip(x) {
        let mut d = [0f32; N];
        for j in 0..N {
            d[j] = xi[j] - l_min[j];
        }
        *o = sel(flat, [0.0; N], quant(l_iscale, d, 0, nmax));
    }
    let mut neg_min = sel(flat, min0, min);
    for m in neg_min.iter_mut() {
        *m = -*m;
    }
    (sel(flat, [0.0; N], scale), neg_min)
}

/// The largest magnitude of each lane and the value that has it (the first one on a tie, as
/// `>` keeps it), as `make_qx_quants` and `make_q3_quants` begin.
#[inline(always)]
fn max_abs<const N: usize, const G: usize>(x: &[[f32; N]; G]) -> ([f32; N], [f32; N]) {
    let (mut max, mut amax) = ([0f32; N], [0f32; N]);
    for xi in x {
        let (mut a, mut gt) = ([0f32; N], [false; N]);
        for j in 0..N {
            a[j] = xi[j].abs();
            gt[j] = a[j] > amax[j];
        }
        amax = sel(gt, a, amax);
        max = sel(gt, *xi, max);
    }
    (max, amax)
}

/// `make_qx_quants`' sums `Σ x²·x·l` and `Σ x²·l²` for the levels of `iscale`.
#[inline(always)]
fn qx_sums<const N: usize, const G: usize>(
    nmax: i32,
    x: &[[f32; N]; G],
    iscale: [f32; N],
) -> ([f32; N], [f32; N]) {
    let (mut sumlx, mut suml2) = ([0f32; N], [0f32; N]);
    for xi in x {
        let l = quant(iscale, *xi, -nmax, nmax - 1);
        for j in 0..N {
            let w = xi[j] * xi[j];
            sumlx[j] += w * xi[j] * l[j];
            suml2[j] += w * l[j] * l[j];
        }
    }
    (sumlx, suml2)
}

/// The opening [`make_qx_quants`] and [`make_q3_quants`] share, as ggml's do: per lane the value
/// of largest magnitude, whether the group counts as zero (`amax < GROUP_MAX_EPS`), and the
/// first inverse scale `-nmax / max`.
#[inline(always)]
fn first_iscale<const N: usize, const G: usize>(
    nmax: i32,
    x: &[[f32; N]; G],
) -> ([f32; N], [bool; N], [f32; N]) {
    let (max, amax) = max_abs(x);
    let mut zero = [false; N];
    let mut iscale = [0f32; N];
    for j in 0..N {
        zero[j] = amax[j] < GROUP_MAX_EPS;
        iscale[j] = -(nmax as f32) / max[j];
    }
    (max, zero, iscale)
}

/// [`super::reference::make_qx_quants`] (`rmse_type = 1`, no weights) for `N` groups of `G`,
/// lane `j` being group `j`. Returns the scale per lane and leaves `L` (without the `+ nmax`)
/// in `l_out`.
#[inline(always)]
fn make_qx_quants<const N: usize, const G: usize>(
    nmax: i32,
    x: &[[f32; N]; G],
    l_out: &mut [[f32; N]; G],
) -> [f32; N] {
    let (max, zero, mut iscale) = first_iscale(nmax, x);
    let (sumlx, suml2) = qx_sums(nmax, x, iscale);
    let (mut nz, mut q) = ([false; N], [0f32; N]);
    for j in 0..N {
        nz[j] = suml2[j] != 0.0;
        q[j] = sumlx[j] / suml2[j];
    }
    let mut scale = sel(nz, q, [0.0; N]);
    let mut best = [0f32; N];
    for j in 0..N {
        best[j] = scale[j] * sumlx[j];
    }
    // As in `make_qkx2_quants`: the inverse scale of the kept `L`, which is computed once.
    let mut l_iscale = iscale;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let top = -(nmax as f32 + 0.1 * is as f32);
        for j in 0..N {
            iscale[j] = top / max[j];
        }
        let (sumlx, suml2) = qx_sums(nmax, x, iscale);
        let (mut better, mut s, mut b) = ([false; N], [0f32; N], [0f32; N]);
        for j in 0..N {
            better[j] = (suml2[j] > 0.0) & (sumlx[j] * sumlx[j] > best[j] * suml2[j]);
            s[j] = sumlx[j] / suml2[j];
            b[j] = s[j] * sumlx[j];
        }
        scale = sel(better, s, scale);
        best = sel(better, b, best);
        l_iscale = sel(better, iscale, l_iscale);
    }
    for (o, xi) in l_out.iter_mut().zip(x) {
        // The scalar code stores `l + nmax`, and 0 for an all-zero group.
        *o = sel(
            zero,
            [-(nmax as f32); N],
            quant(l_iscale, *xi, -nmax, nmax - 1),
        );
    }
    sel(zero, [0.0; N], scale)
}

/// [`super::reference::make_q3_quants`] (`do_rmse`) for `N` groups of `G`, lane `j` being group
/// `j`. Returns the scale per lane and leaves `L` (without the `+ nmax`) in `l_out`.
///
/// The coordinate descent runs its passes on all lanes until no lane changes (at most five): a
/// pass that changes nothing in a lane leaves that lane's state as it was, so running it again
/// changes nothing either, which is what the scalar code's early `break` skips.
#[inline(always)]
fn make_q3_quants<const N: usize, const G: usize>(
    nmax: i32,
    x: &[[f32; N]; G],
    l: &mut [[f32; N]; G],
) -> [f32; N] {
    let (_, zero, iscale) = first_iscale(nmax, x);
    let (mut sumlx, mut suml2) = ([0f32; N], [0f32; N]);
    for (xi, li) in x.iter().zip(l.iter_mut()) {
        *li = quant(iscale, *xi, -nmax, nmax - 1);
        for j in 0..N {
            let w = xi[j] * xi[j];
            sumlx[j] += w * xi[j] * li[j];
            suml2[j] += w * li[j] * li[j];
        }
    }
    for _ in 0..5 {
        let mut changed = [false; N];
        for (xi, li) in x.iter().zip(l.iter_mut()) {
            let (mut w, mut slx, mut sl2, mut q) = ([0f32; N], [0f32; N], [0f32; N], [0f32; N]);
            for j in 0..N {
                w[j] = xi[j] * xi[j];
                slx[j] = sumlx[j] - w[j] * xi[j] * li[j];
                sl2[j] = suml2[j] - w[j] * li[j] * li[j];
                // `nearest_int(x[i] * sl2 / slx)`: `(x[i] * sl2) / slx`, two roundings as in C.
                q[j] = xi[j] * sl2[j] / slx[j];
            }
            let new_l = level(q, -nmax, nmax - 1);
            let (mut take, mut nslx, mut nsl2) = ([false; N], [0f32; N], [0f32; N]);
            for j in 0..N {
                nslx[j] = slx[j] + w[j] * xi[j] * new_l[j];
                nsl2[j] = sl2[j] + w[j] * new_l[j] * new_l[j];
                take[j] = (slx[j] > 0.0)
                    & (new_l[j] != li[j])
                    & (nsl2[j] > 0.0)
                    & (nslx[j] * nslx[j] * suml2[j] > sumlx[j] * sumlx[j] * nsl2[j]);
                changed[j] |= take[j];
            }
            *li = sel(take, new_l, *li);
            sumlx = sel(take, nslx, sumlx);
            suml2 = sel(take, nsl2, suml2);
        }
        if !changed.contains(&true) {
            break;
        }
    }
    let (mut pos, mut q) = ([false; N], [0f32; N]);
    for j in 0..N {
        pos[j] = suml2[j] > 0.0;
        q[j] = sumlx[j] / suml2[j];
    }
    for o in l.iter_mut() {
        *o = sel(zero, [-(nmax as f32); N], *o);
    }
    sel(zero, [0.0; N], sel(pos, q, [0.0; N]))
}

/// The `Q4_K`/`Q5_K` group fits of `N / 8` consecutive super-blocks (`x` holds `32 N` values),
/// one 32-value group per lane: weights `sqrt(mean(x²)) + |x|`,
/// `make_qkx2_quants(32, nmax, …, rmin, 0.1, nstep, false)`. Returns the scales, the mins and
/// the levels `[i][lane]`.
#[inline(always)]
fn kx_lanes<const N: usize>(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> ([f32; N], [f32; N], [[f32; N]; 32]) {
    let xt: [[f32; N]; 32] = transpose(x);
    let mut sum_x2 = [0f32; N];
    for xi in &xt {
        for j in 0..N {
            sum_x2[j] += xi[j] * xi[j];
        }
    }
    let mut av_x = [0f32; N];
    for j in 0..N {
        av_x[j] = (sum_x2[j] / 32.0).sqrt();
    }
    let mut w = [[0f32; N]; 32];
    for (wi, xi) in w.iter_mut().zip(&xt) {
        for j in 0..N {
            wi[j] = av_x[j] + xi[j].abs();
        }
    }
    let mut l = [[0f32; N]; 32];
    let (s, m) = make_qkx2_quants(nmax, &xt, &w, &mut l, rmin, 0.1, nstep, false);
    (s, m, l)
}

/// The `Q4_K`/`Q5_K` group fits ([`super::reference::kx_fit`]) of one super-block, in eight
/// lanes.
#[inline(always)]
pub(super) fn kx_fit(x: &[f32], nmax: i32, rmin: f32, nstep: i32) -> Fit {
    let (s, m, l) = kx_lanes::<8>(x, nmax, rmin, nstep);
    let mut fit = Fit::default();
    fit.scales[..8].copy_from_slice(&s);
    fit.mins[..8].copy_from_slice(&m);
    store(&l, 0, &mut fit.l);
    fit
}

/// [`kx_fit`] of two consecutive super-blocks (512 values) in sixteen lanes: with AVX-512 one
/// register holds them all, where eight lanes leave LLVM pairing half-full registers.
#[inline(always)]
pub(super) fn kx_fit2(x: &[f32], nmax: i32, rmin: f32, nstep: i32) -> [Fit; 2] {
    let (s, m, l) = kx_lanes::<16>(x, nmax, rmin, nstep);
    let mut fits = [Fit::default(); 2];
    for (k, fit) in fits.iter_mut().enumerate() {
        fit.scales[..8].copy_from_slice(&s[8 * k..8 * k + 8]);
        fit.mins[..8].copy_from_slice(&m[8 * k..8 * k + 8]);
        for (i, li) in l.iter().enumerate() {
            for j in 0..8 {
                fit.l[32 * j + i] = li[8 * k + j] as u8;
            }
        }
    }
    fits
}

/// The `Q2_K` group fits ([`super::reference::q2_fit`]) in sixteen lanes: weights `|x|`,
/// `make_qkx2_quants(16, 3, …, -0.5, 0.1, 15, true)`.
#[inline(always)]
pub(super) fn q2_fit(x: &[f32]) -> Fit {
    let xt: [[f32; 16]; 16] = transpose(x);
    let mut w = [[0f32; 16]; 16];
    for (wi, xi) in w.iter_mut().zip(&xt) {
        for j in 0..16 {
            wi[j] = xi[j].abs();
        }
    }
    let mut l = [[0f32; 16]; 16];
    let (scales, mins) = make_qkx2_quants(3, &xt, &w, &mut l, -0.5, 0.1, 15, true);
    let mut fit = Fit {
        scales,
        mins,
        ..Fit::default()
    };
    store(&l, 0, &mut fit.l);
    fit
}

/// The `Q3_K` group fits ([`super::reference::q3_fit`]): `make_q3_quants(16, 4, …, true)` in
/// sixteen lanes.
#[inline(always)]
pub(super) fn q3_fit(x: &[f32]) -> Fit {
    symmetric_fit(x, 4, make_q3_quants)
}

/// The `Q6_K` group fits ([`super::reference::q6_fit`]): `make_qx_quants(16, 32, …, 1, NULL)`
/// in sixteen lanes.
#[inline(always)]
pub(super) fn q6_fit(x: &[f32]) -> Fit {
    symmetric_fit(x, 32, make_qx_quants)
}

/// The scale-only fits of [`q3_fit`] and [`q6_fit`]: sixteen groups of sixteen, one scale per
/// group from `quants(nmax, …)` (no mins), the levels in `[-nmax, nmax)` stored as `L + nmax`.
#[inline(always)]
fn symmetric_fit(
    x: &[f32],
    nmax: i32,
    quants: impl FnOnce(i32, &[[f32; 16]; 16], &mut [[f32; 16]; 16]) -> [f32; 16],
) -> Fit {
    let xt: [[f32; 16]; 16] = transpose(x);
    let mut l = [[0f32; 16]; 16];
    let scales = quants(nmax, &xt, &mut l);
    let mut fit = Fit {
        scales,
        ..Fit::default()
    };
    store(&l, nmax, &mut fit.l);
    fit
}
