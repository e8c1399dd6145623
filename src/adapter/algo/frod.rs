//! The update of PEFT's FRoD ([`Factors::Frod`]) from the base weight `W0` (d×k, row-major, f32
//! as stored), PEFT 0.21.2 `tuners/frod/layer.py`: `U` from `W0` and the shared `V` (k×k) as
//! `_calculate_frod_u_and_lambda` computes it in f64 — `bi = W0·V⁻ᵀ` (`torch.linalg.solve(V,
//! W0ᵀ)ᵀ`), `U = bi / ‖bi‖` per column (0 where the norm is at most 1e-12), rounded to f32 as
//! PEFT stores it — and `ΔW = U·(S + diag λ)·Vᵀ − W0` (`get_delta_weight`), `S` the sparse k×k
//! matrix of the saved positions and values, `λ` the trained `frod_lambda_l`; times LyCORIS'
//! `multiplier`, accumulated in f64 and rounded once. A singular `V` (PEFT falls back to a
//! pseudo-inverse) gives NaN, which the merge refuses naming the tensor.
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
