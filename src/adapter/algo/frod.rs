//! The update of PEFT's FRoD ([`Factors::Frod`]) from the base weight `W0` (d×k, row-major, f32
//! as stored), PEFT 0.21.2 `tuners/frod/layer.py`: `U` from `W0` and the shared `V` (k×k) as
//! `_calculate_frod_u_and_lambda` computes it in f64 — `bi = W0·V⁻ᵀ` (`torch.linalg.solve(V,
//! W0ᵀ)ᵀ`), `U = bi / ‖bi‖` per column (0 where the norm is at most 1e-12), rounded to f32 as
//! PEFT stores it — and `ΔW = U·(S + diag λ)·Vᵀ − W0` (`get_delta_weight`), `S` the sparse k×k
//! matrix of the saved positions and values, `λ` the trained `frod_lambda_l`; times LyCORIS'
//! `multiplier`, accumulated in f64 and rounded once. A singular `V` (PEFT falls back to a
//! pseudo-inverse) gives NaN, which the merge refuses naming the tensor.
//!
//! This is PEFT's merge only on the base the adapter was trained on. PEFT's reload recomputes
//! the category's projection from the CURRENT base (`model.py` `_init_frod_projections`,
//! `_projection_from_weights`: a QR of the stacked weights and an `eigh`, or an SVD), builds
//! `frod_U` from that, and only then loads the saved `frod_V`: on another base (a quantized,
//! bf16 or fine-tuned copy) its `U` comes from a projection lorakit cannot reproduce (LAPACK's
//! signs and rotations of eigenvectors). So lorakit does not follow PEFT there: it refuses.
//! [`projection_mismatch`] tells whether the saved `V` is the projection of the weights at hand,
//! from what any such projection satisfies whatever its signs: for `n ≥ k` stacked rows
//! `V·Vᵀ = Rᵀ·E·Eᵀ·R = Σ Wᵀ·W` (`E` orthogonal), for fewer `Vᵀ·(Σ Wᵀ·W)·V` is diagonal (`V` the
//! right singular vectors).
//!
//! Must not know file layouts or key names.

use super::delta::Loaded;
use super::factors::Factors;
use faer::linalg::solvers::Solve;
use faer::Mat;

/// `m·(U·(S + diag λ)·Vᵀ − W0)` of a [`Factors::Frod`] module; `None` for any other algorithm.
pub fn delta(l: &Loaded, w0: &[f32], (d, k): (usize, usize), m: f64) -> Option<Vec<f32>> {
    let Factors::Frod { .. } = l.factors else {
        return None;
    };
    let (v, lambda, pos, vals) = (&l.values[0], &l.values[1], &l.values[2], &l.values[3]);
    let vm = Mat::<f64>::from_fn(k, k, |i, j| v[i * k + j] as f64);
    let rhs = Mat::<f64>::from_fn(k, d, |i, j| w0[j * k + i] as f64);
    let x = vm.as_ref().partial_piv_lu().solve(&rhs);
    // U (d×k) in f32, as PEFT keeps it.
    let mut u = vec![0f32; d * k];
    for j in 0..k {
        let norm = (0..d).map(|i| x[(j, i)] * x[(j, i)]).sum::<f64>().sqrt();
        let ok = norm > 1e-12 || !norm.is_finite();
        for i in 0..d {
            u[i * k + j] = if ok { (x[(j, i)] / norm) as f32 } else { 0.0 };
        }
    }
    let nnz = vals.len();
    let (rows, cols) = pos.split_at(nnz);
    let mut out = vec![0f32; d * k];
    let mut t = vec![0f64; k];
    for i in 0..d {
        let ui = &u[i * k..(i + 1) * k];
        for (o, (&x, &lam)) in t.iter_mut().zip(ui.iter().zip(lambda.iter())) {
            *o = x as f64 * lam as f64;
        }
        for n in 0..nnz {
            t[cols[n] as usize] += ui[rows[n] as usize] as f64 * vals[n] as f64;
        }
        for c in 0..k {
            let f: f64 = (0..k).map(|j| t[j] * v[c * k + j] as f64).sum();
            out[i * k + c] = (m * (f - w0[i * k + c] as f64)) as f32;
        }
    }
    Some(out)
}

/// The relative distance of `v` (k×k, row-major, a saved `frod_V`) from a projection PEFT's
/// `_projection_from_weights` could compute from `weights` (the category's base weights, each
/// `rows × k` row-major as PEFT reads them, `[out, in]`; see the module header), in f64:
/// `‖V·Vᵀ − G‖_F / ‖G‖_F` with `G = Σ Wᵀ·W` for at least k rows in all, else the off-diagonal
/// part of `Vᵀ·G·V` over `‖G‖_F`. About 1e-6 on the training base (f32 rounding of PEFT's V),
/// 1e-3 on its bf16 copy, 0.08 on an NVFP4 one. 0 for a zero `G`.
pub fn projection_mismatch(v: &[f32], k: usize, weights: &[(&[f32], usize)]) -> f64 {
    use faer::linalg::matmul::matmul;
    use faer::{Accum, Par};
    let mut g = Mat::<f64>::zeros(k, k);
    let mut n = 0usize;
    for &(w, rows) in weights {
        let wm = Mat::<f64>::from_fn(rows, k, |i, j| w[i * k + j] as f64);
        matmul(
            g.as_mut(),
            Accum::Add,
            wm.transpose(),
            wm.as_ref(),
            1.0,
            Par::rayon(0),
        );
        n += rows;
    }
    let gn = g.norm_l2();
    if gn == 0.0 {
        return 0.0;
    }
    let vm = Mat::<f64>::from_fn(k, k, |i, j| v[i * k + j] as f64);
    let mut off = 0f64;
    if n >= k {
        let mut vvt = Mat::<f64>::zeros(k, k);
        matmul(
            vvt.as_mut(),
            Accum::Replace,
            vm.as_ref(),
            vm.transpose(),
            1.0,
            Par::rayon(0),
        );
        for i in 0..k {
            for j in 0..k {
                off += (vvt[(i, j)] - g[(i, j)]).powi(2);
            }
        }
    } else {
        let mut gv = Mat::<f64>::zeros(k, k);
        matmul(
            gv.as_mut(),
            Accum::Replace,
            g.as_ref(),
            vm.as_ref(),
            1.0,
            Par::rayon(0),
        );
        let mut m = Mat::<f64>::zeros(k, k);
        matmul(
            m.as_mut(),
            Accum::Replace,
            vm.transpose(),
            gv.as_ref(),
            1.0,
            Par::rayon(0),
        );
        for i in 0..k {
            for j in (0..k).filter(|&j| j != i) {
                off += m[(i, j)].powi(2);
            }
        }
    }
    off.sqrt() / gn
}
