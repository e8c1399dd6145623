//! Thin Householder QR of a tall, narrow matrix (`m×n`, `m ≥ n`, `n ≤` [`MAX_COLS`]): the
//! re-orthonormalisation step of the randomized range finder (Halko, Martinsson & Tropp 2011,
//! Alg. 4.4), run `2q + 1` times per module on `m×(r+p)` blocks.
//!
//! LAPACK's unblocked `geqr2` + `org2r` (Golub & Van Loan, *Matrix Computations*, 4th ed.,
//! §5.2.2 and §5.1.6), on a column-major copy so that every reflector is applied with long
//! contiguous dot products and `axpy`s. For a few dozen columns that beats a blocked QR, whose
//! packing, block reflectors and layout copies cost more than the arithmetic at this size
//! (on the development machine faer's sequential QR of an 11008×26 block takes 6.7 ms, this
//! one 2.5 ms).
//! Householder reflections keep `Q` orthonormal to working precision even when the block is
//! rank-deficient (an exactly low-rank `ΔW`), which Cholesky- or Gram–Schmidt-based QRs do not.
//!
//! Sequential: the result does not depend on the thread count. On x86-64 it needs FMA (AVX2 or
//! AVX-512 machines); elsewhere there it declines and the caller's blocked QR runs.
//!
//! Must not fail on a shape it does not serve: it declines (`None`) and the caller's blocked QR
//! runs; must not depend on the thread count.

use super::skinny::Isa;
use ndarray::{Array2, ArrayView2};

/// Widest matrix handled here; wider ones go to a blocked QR.
pub const MAX_COLS: usize = 128;

/// `(Q, R)` with `Q` `m×n` (orthonormal columns) and `R` `n×n` upper triangular, `A = Q·R`;
/// or `None` when `m < n`, `n = 0`, `n >` [`MAX_COLS`] or (x86-64) the CPU lacks FMA (callers use
/// a general QR then).
pub fn qr_thin(a: ArrayView2<f32>) -> Option<(Array2<f32>, Array2<f32>)> {
    let (m, n) = a.dim();
    if n == 0 || n > MAX_COLS || m < n {
        return None;
    }
    let isa = isa()?;
    // Column j at c[j·m .. (j+1)·m].
    let mut c = vec![0f32; m * n];
    for (i, row) in a.rows().into_iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            c[j * m + i] = *v;
        }
    }
    let r = match isa {
        // SAFETY: `isa` detected the features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { qr_in_place_avx512(&mut c, m, n) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { qr_in_place_avx2(&mut c, m, n) },
        Isa::Portable => qr_in_place(&mut c, m, n),
    };
    let mut q = Array2::<f32>::zeros((m, n));
    for (i, row) in q.rows_mut().into_iter().enumerate() {
        for (j, v) in row.into_iter().enumerate() {
            *v = c[j * m + i];
        }
    }
    Some((q, r))
}

/// [`skinny`](super::skinny)'s instruction set, or `None` on x86-64 without FMA, where `mul_add`
/// is a slow software routine (callers use a blocked QR there). Elsewhere (e.g. aarch64)
/// `mul_add` is a hardware FMA and the portable copy serves.
fn isa() -> Option<Isa> {
    match super::skinny::isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Portable => None,
        isa => Some(isa),
    }
}

/// Factors the column-major `c` and overwrites it with `Q`; returns `R`.
#[inline(always)]
fn qr_in_place(c: &mut [f32], m: usize, n: usize) -> Array2<f32> {
    let mut tau = vec![0f32; n];
    factor(c, m, n, &mut tau);
    let mut r = Array2::<f32>::zeros((n, n));
    for j in 0..n {
        for i in 0..=j {
            r[[i, j]] = c[j * m + i];
        }
    }
    form_q(c, m, n, &tau);
    r
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn qr_in_place_avx512(c: &mut [f32], m: usize, n: usize) -> Array2<f32> {
    qr_in_place(c, m, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn qr_in_place_avx2(c: &mut [f32], m: usize, n: usize) -> Array2<f32> {
    qr_in_place(c, m, n)
}

/// `geqr2`: on return `R` is on and above the diagonal of `c`, and below it column `k` holds
/// the reflector `vₖ` (implicit leading 1), `Hₖ = I − τₖ·vₖ·vₖᵀ`.
#[inline(always)]
fn factor(c: &mut [f32], m: usize, n: usize, tau: &mut [f32]) {
    for k in 0..n {
        let (head, tail) = c.split_at_mut((k + 1) * m);
        let x = &mut head[k * m + k..];
        let (t, beta) = reflector(x);
        tau[k] = t;
        if t == 0.0 {
            continue;
        }
        x[0] = 1.0;
        let v = &*x;
        for col in tail.chunks_exact_mut(m) {
            apply(v, t, &mut col[k..]);
        }
        x[0] = beta;
    }
}

/// `larfg`: turns `x` into `β·e₁` by `H = I − τ·v·vᵀ`, `v = (1, x[1..])`; stores `v[1..]` in
/// `x[1..]` and returns `(τ, β)` (`τ = 0`, `H = I` when `x[1..]` is already zero).
#[inline(always)]
fn reflector(x: &mut [f32]) -> (f32, f32) {
    let alpha = x[0];
    // Sum of squares in f64: no overflow or underflow for any finite f32 input.
    let xnorm = sum_sq(&x[1..]).sqrt();
    if xnorm == 0.0 {
        return (0.0, alpha);
    }
    let a = f64::from(alpha);
    let beta = -a.hypot(xnorm).copysign(a);
    let t = ((beta - a) / beta) as f32;
    let inv = 1.0 / (a - beta);
    let scale = inv as f32;
    if scale.is_finite() {
        for v in &mut x[1..] {
            *v *= scale;
        }
    } else {
        // A column below f32's normal range (|x| ≲ 3e-39): 1/(α − β) overflows f32, but each
        // quotient is at most 1 in magnitude, so divide in f64.
        for v in &mut x[1..] {
            *v = (f64::from(*v) * inv) as f32;
        }
    }
    (t, beta as f32)
}

/// `y ← (I − τ·v·vᵀ)·y`.
#[inline(always)]
fn apply(v: &[f32], t: f32, y: &mut [f32]) {
    let w = t * dot(v, y);
    axpy(-w, v, y);
}

/// `org2r`: overwrites the reflectors in `c` with the first `n` columns of
/// `Q = H₀·H₁·…·Hₙ₋₁`, applying them from the last to the first.
#[inline(always)]
fn form_q(c: &mut [f32], m: usize, n: usize, tau: &[f32]) {
    for k in (0..n).rev() {
        let (head, tail) = c.split_at_mut((k + 1) * m);
        let col = &mut head[k * m..];
        if k + 1 < n {
            col[k] = 1.0;
            let v = &col[k..];
            for y in tail.chunks_exact_mut(m) {
                apply(v, tau[k], &mut y[k..]);
            }
        }
        for x in &mut col[k + 1..] {
            *x *= -tau[k];
        }
        col[k] = 1.0 - tau[k];
        col[..k].fill(0.0);
    }
}

const LANES: usize = 16;

/// Four independent accumulators of 16 lanes, so the FMAs' latency overlaps.
#[inline(always)]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    const W: usize = 4 * LANES;
    let mut acc = [[0f32; LANES]; 4];
    let (xc, yc) = (x.chunks_exact(W), y.chunks_exact(W));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for u in 0..4 {
            for k in 0..LANES {
                acc[u][k] = a[u * LANES + k].mul_add(b[u * LANES + k], acc[u][k]);
            }
        }
    }
    let mut s = 0f32;
    for (a, b) in xr.iter().zip(yr) {
        s = a.mul_add(*b, s);
    }
    let mut sum = [0f32; LANES];
    for k in 0..LANES {
        sum[k] = (acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k]);
    }
    sum.iter().fold(s, |s, v| s + v)
}

#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (xv, yv) in x.iter().zip(y.iter_mut()) {
        *yv = a.mul_add(*xv, *yv);
    }
}

#[inline(always)]
fn sum_sq(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let c = x.chunks_exact(8);
    let r = c.remainder();
    for a in c {
        for k in 0..8 {
            let v = f64::from(a[k]);
            acc[k] += v * v;
        }
    }
    r.iter()
        .map(|v| f64::from(*v) * f64::from(*v))
        .chain(acc)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::gaussian_matrix;

    /// ‖QᵀQ − I‖_max and ‖Q·R − A‖_max / ‖A‖_max, both in f64.
    fn errors(a: &Array2<f32>, q: &Array2<f32>, r: &Array2<f32>) -> (f64, f64) {
        let (q, r, a) = (q.mapv(f64::from), r.mapv(f64::from), a.mapv(f64::from));
        let n = q.ncols();
        let qtq = q.t().dot(&q) - Array2::<f64>::eye(n);
        let orth = qtq.iter().fold(0f64, |m, v| m.max(v.abs()));
        let scale = a.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
        let rec = (q.dot(&r) - &a).iter().fold(0f64, |m, v| m.max(v.abs())) / scale;
        (orth, rec)
    }

    #[test]
    fn factors_random_tall_matrices() {
        for &(m, n) in &[
            (1usize, 1usize),
            (5, 5),
            (33, 7),
            (200, 26),
            (1000, 17),
            (517, 128),
        ] {
            let a = gaussian_matrix(m, n, 7);
            let (q, r) = qr_thin(a.view()).unwrap();
            assert_eq!((q.dim(), r.dim()), ((m, n), (n, n)));
            let (orth, rec) = errors(&a, &q, &r);
            let tol = 20.0 * (m as f64).sqrt() * f64::from(f32::EPSILON);
            assert!(orth < tol && rec < tol, "{m}×{n}: {orth:e} {rec:e}");
        }
    }

    /// Rank-deficient blocks (an exactly low-rank ΔW in the range finder) still give an
    /// orthonormal Q whose first columns span the range.
    #[test]
    fn rank_deficient_and_zero_columns_stay_orthonormal() {
        let (m, n, k) = (300, 20, 3);
        let a = gaussian_matrix(m, k, 1).dot(&gaussian_matrix(k, n, 2));
        let (q, r) = qr_thin(a.view()).unwrap();
        let (orth, rec) = errors(&a, &q, &r);
        assert!(orth < 1e-5 && rec < 1e-5, "{orth:e} {rec:e}");
        let mut z = gaussian_matrix(m, n, 3);
        z.column_mut(4).fill(0.0);
        let (q, r) = qr_thin(z.view()).unwrap();
        let (orth, rec) = errors(&z, &q, &r);
        assert!(orth < 1e-5 && rec < 1e-5, "{orth:e} {rec:e}");
        let zero = Array2::<f32>::zeros((50, 4));
        let (q, r) = qr_thin(zero.view()).unwrap();
        let (orth, _) = errors(&zero, &q, &r);
        assert!(orth < 1e-6 && r.iter().all(|v| *v == 0.0));
    }

    /// Columns far apart in scale (as in power iterations) and values near f32's range limits.
    #[test]
    fn graded_and_extreme_scales() {
        let (m, n) = (400, 26);
        let mut a = gaussian_matrix(m, n, 4);
        for (j, mut col) in a.columns_mut().into_iter().enumerate() {
            col.mapv_inplace(|v| v * 10f32.powi(-(j as i32) / 3));
        }
        let (q, r) = qr_thin(a.view()).unwrap();
        let (orth, _) = errors(&a, &q, &r);
        assert!(orth < 1e-5, "{orth:e}");
        // 1e-40 is below f32's normal range, where 1/(α − β) overflows f32; subnormal inputs
        // carry only a few significant digits, hence the looser reconstruction bound there.
        for (s, rec_tol) in [(1e30f32, 1e-5), (1e-30, 1e-5), (1e-40, 1e-3)] {
            let b = a.mapv(|v| v * s);
            let (q, r) = qr_thin(b.view()).unwrap();
            assert!(
                q.iter().chain(r.iter()).all(|v| v.is_finite()),
                "scale {s:e}"
            );
            let (orth, rec) = errors(&b, &q, &r);
            assert!(
                orth < 1e-5 && rec < rec_tol,
                "scale {s:e}: {orth:e} {rec:e}"
            );
        }
    }

    #[test]
    fn declines_wide_empty_and_too_wide() {
        assert!(qr_thin(gaussian_matrix(3, 5, 1).view()).is_none());
        assert!(qr_thin(Array2::<f32>::zeros((4, 0)).view()).is_none());
        assert!(qr_thin(gaussian_matrix(300, MAX_COLS + 1, 1).view()).is_none());
    }

    /// Same as LAPACK's convention up to column signs: compare with faer's QR.
    #[test]
    fn agrees_with_faer_up_to_signs() {
        let a = gaussian_matrix(240, 26, 9);
        let (q, r) = qr_thin(a.view()).unwrap();
        let (qf, rf) = crate::dense::with_faer(a.view(), |fa| {
            crate::dense::faer_qr(fa, Some(faer::Par::Seq))
        });
        for j in 0..26 {
            let s = (r[[j, j]] * rf[[j, j]]).signum();
            for i in 0..240 {
                assert!((q[[i, j]] - s * qf[[i, j]]).abs() < 1e-4);
            }
        }
    }
}
