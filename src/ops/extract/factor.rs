//! Per-module numerics: seeds, the randomized or exact SVD of one ΔW, the rank rule applied,
//! and residual norms. Must not read files or know module names beyond seeding.

use super::operators::{seq_matmul, BLOCK_ROWS, EXTRACT_DENSE};
use crate::linalg::{self, LinearOperator, RsvdOptions, Svd};
use crate::ops::rank::RankRule;
use ndarray::ArrayView2;
use rayon::prelude::*;

// ---------------------------------------------------------------------------
// Per-module numerics
// ---------------------------------------------------------------------------

/// Seed of a module's test matrix: SplitMix64 of `seed` xor the FNV-1a hash of `name`.
pub fn module_seed(seed: u64, name: &str) -> u64 {
    let h = linalg::rng::Fnv1a::new().feed(name.as_bytes()).finish();
    linalg::rng::SplitMix64::new(seed ^ h).next_u64()
}

/// Below this `‖ΔW − B·A‖²/‖ΔW‖²` (a relative error of 10 %), the error is computed explicitly.
pub const CLOSED_FORM_MIN_REL_SQ: f64 = 1e-2;

/// `‖ΔW − U_k·S_k·V_kᵀ‖_F² = ‖ΔW‖_F² − Σ_{i<k} sᵢ²` when that is accurate, else `None`.
///
/// For the randomized SVD, `U_k·S_k·V_kᵀ = Q·(QᵀΔW)_k` with `Q` orthonormal, so by Pythagoras
/// the residual is `‖ΔW − QQᵀΔW‖² + ‖QᵀΔW − (QᵀΔW)_k‖² = ‖ΔW‖² − Σ_{i<k} sᵢ²` (`sᵢ` the
/// singular values of `QᵀΔW`, i.e. the ones found). The difference cancels: with f32 factors
/// its absolute error is a few units of 10⁻⁶·‖ΔW‖², so it is used only when the residual is at
/// least [`CLOSED_FORM_MIN_REL_SQ`]·‖ΔW‖² (relative error ≲ 10⁻⁴ on the reported value); smaller
/// residuals — nearly exact low-rank deltas — are computed explicitly by [`residual_sq`], which
/// costs one more pass over `ΔW` and a `d×k·k×n` product. Factors rounded to f16/bf16 always
/// take the explicit path (the rounding is not in the spectrum).
pub fn closed_form_residual_sq(f: &Factorization, norm_sq: f64) -> Option<f64> {
    let kept: f64 = f
        .svd
        .s
        .iter()
        .take(f.rank)
        .map(|&x| x as f64 * x as f64)
        .sum();
    let r = norm_sq - kept;
    (r >= CLOSED_FORM_MIN_REL_SQ * norm_sq).then_some(r)
}

crate::backend::simd::multiversion! {
    /// `x ← x − y` and `(Σ (x−y)², Σ y²)` in f64. Eight fixed lanes (element `i` goes to lane
    /// `i mod 8`, lanes added in order at the end), so the loop vectorises and the sums are the
    /// same on every CPU and every compiled copy ([`crate::backend::simd`]).
    pub(super) fn sub_norms(x: &mut [f32], y: &[f32]) -> (f64, f64) {
        assert_eq!(x.len(), y.len());
        let (mut ns, mut bs) = ([0f64; 8], [0f64; 8]);
        let mut xc = x.chunks_exact_mut(8);
        let mut yc = y.chunks_exact(8);
        for (xs, ys) in (&mut xc).zip(&mut yc) {
            for l in 0..8 {
                let d = xs[l] - ys[l];
                xs[l] = d;
                ns[l] += d as f64 * d as f64;
                bs[l] += ys[l] as f64 * ys[l] as f64;
            }
        }
        for (l, (xv, &yv)) in xc
            .into_remainder()
            .iter_mut()
            .zip(yc.remainder())
            .enumerate()
        {
            let d = *xv - yv;
            *xv = d;
            ns[l] += d as f64 * d as f64;
            bs[l] += yv as f64 * yv as f64;
        }
        (ns.iter().sum(), bs.iter().sum())
    }
}

crate::backend::simd::multiversion! {
    /// `Σ (x − scale·y)²` in f64 over eight fixed lanes, like [`sub_norms`].
    pub(super) fn residual_block(x: &[f32], y: &[f32], scale: f32) -> f64 {
        assert_eq!(x.len(), y.len());
        let mut acc = [0f64; 8];
        let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
        let (xr, yr) = (xc.remainder(), yc.remainder());
        for (xs, ys) in xc.zip(yc) {
            for l in 0..8 {
                let r = xs[l] as f64 - (scale * ys[l]) as f64;
                acc[l] += r * r;
            }
        }
        for (l, (&xv, &yv)) in xr.iter().zip(yr).enumerate() {
            let r = xv as f64 - (scale * yv) as f64;
            acc[l] += r * r;
        }
        acc.iter().sum()
    }
}

/// A module's truncated SVD and the rank the rule picked.
#[derive(Debug, Clone)]
pub struct Factorization {
    /// Truncated to `rank` triplets.
    pub svd: Svd,
    pub rank: usize,
    /// `Σ_{i<rank} sᵢ² / ‖M‖_F²` (≤ 1 up to rounding).
    pub energy_kept: f64,
    /// The exact SVD was used (forced, or because sampling would not save anything).
    pub exact: bool,
    /// Power iterations the randomized SVD ran (0 when exact).
    pub power_iters: usize,
}

/// Factors the operator `M` (`‖M‖_F² = norm_sq`, known exactly) by the rule: randomized SVD of
/// rank `min(cap, m, n)` (HMT Alg. 4.4 + 5.1, with as many power iterations as the spectrum
/// needs, `rsvd.power_iters` to `max_power_iters`: see [`linalg::randomized_svd_adaptive_with`])
/// or, with `exact`, a full SVD; then the rank is chosen from the leading singular values and
/// the SVD truncated.
pub fn factorize(
    op: &dyn LinearOperator,
    norm_sq: f64,
    rule: &RankRule,
    exact: bool,
    rsvd: &RsvdOptions,
    max_power_iters: usize,
) -> Factorization {
    let (m, n) = (op.rows(), op.cols());
    let cap = rule.cap().min(m).min(n).max(1);
    let sampled = !exact && cap + rsvd.oversample < m.min(n);
    let (svd, power_iters) = if exact {
        // In f64: the f32 SVD moves a truncation at a 1–2 % singular-value gap ~2e-5 off the
        // exact one (sweep10, `linalg::exact_svd_f64`).
        let svd = match op.as_dense() {
            Some(a) => linalg::exact_svd_f64(a),
            None => linalg::exact_svd_f64(op.to_dense().view()),
        };
        (svd.truncate(cap), 0)
    } else {
        let stop = linalg::AdaptiveStop {
            max_power_iters,
            ..Default::default()
        };
        linalg::randomized_svd_adaptive_with(&EXTRACT_DENSE, op, cap, rsvd, &stop, norm_sq)
    };
    let rank = rule.choose(&svd.s, norm_sq, cap);
    let svd = svd.truncate(rank);
    let kept = linalg::energy(&svd.s);
    let energy_kept = if norm_sq > 0.0 {
        (kept / norm_sq).min(1.0)
    } else {
        1.0
    };
    Factorization {
        svd,
        rank,
        energy_kept,
        exact: !sampled,
        power_iters: if sampled { power_iters } else { 0 },
    }
}

/// `‖D − scale·B·A‖_F²` in f64 (`B·A` formed in f32), over blocks of [`BLOCK_ROWS`] rows in
/// parallel (no second `d×k` copy), block sums added in block order.
pub fn residual_sq(d: ArrayView2<f32>, b: ArrayView2<f32>, a: ArrayView2<f32>, scale: f32) -> f64 {
    let m = d.nrows();
    let blocks: Vec<(usize, usize)> = (0..m)
        .step_by(BLOCK_ROWS)
        .map(|r| (r, (r + BLOCK_ROWS).min(m)))
        .collect();
    let parts: Vec<f64> = blocks
        .into_par_iter()
        .map(|(r0, r1)| {
            let p = seq_matmul(b.slice(ndarray::s![r0..r1, ..]), a);
            let block = d.slice(ndarray::s![r0..r1, ..]);
            match (block.as_slice(), p.as_slice()) {
                // Contiguous rows (the usual case): 8 fixed lanes, so it vectorises and the
                // sum does not depend on anything but the shapes.
                (Some(x), Some(y)) => residual_block(x, y, scale),
                _ => block
                    .iter()
                    .zip(p.iter())
                    .map(|(&x, &y)| {
                        let r = x as f64 - (scale * y) as f64;
                        r * r
                    })
                    .sum::<f64>(),
            }
        })
        .collect();
    parts.iter().sum()
}
