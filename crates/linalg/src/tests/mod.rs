//! Tests of `linalg` against independent references: an `f64` one-sided
//! Jacobi SVD and `f64` naive matrix products written here, not the backends
//! under test. Every numerical test runs once per compiled-in backend
//! (faer, and LAPACK with feature `lapack`).
//!
//! Must not compare a backend with itself: every reference is computed here in f64.

// Index loops read more naturally than zips in this numeric test code.
#![allow(clippy::needless_range_loop)]

use super::dense::all_backends;
use super::*;
use ndarray::{s, Array2, ArrayView2};

mod determinism;
mod factored;
mod kernels;
mod randomized;
mod rank_rules;
mod tall;

/// The backends these tests run: every one compiled in, or only those named in
/// `LORAKIT_TEST_BACKENDS` (a comma list, e.g. `lapack`). CI's LAPACK step names `lapack`
/// alone, since the default-feature run of the same tests has covered faer. A name that is not
/// compiled in panics, so a typo cannot turn every test into a no-op.
fn backends() -> Vec<&'static dyn Dense> {
    let all = all_backends();
    let Ok(list) = std::env::var("LORAKIT_TEST_BACKENDS") else {
        return all;
    };
    list.split(',')
        .map(|n| {
            let n = n.trim();
            *all.iter().find(|d| d.name() == n).unwrap_or_else(|| {
                panic!(
                    "LORAKIT_TEST_BACKENDS names {n:?}; compiled in: {:?}",
                    all.iter().map(|d| d.name()).collect::<Vec<_>>()
                )
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// References and helpers
// ---------------------------------------------------------------------------

fn to_f64(a: ArrayView2<f32>) -> Array2<f64> {
    a.mapv(|x| x as f64)
}

fn to_f32(a: &Array2<f64>) -> Array2<f32> {
    a.mapv(|x| x as f32)
}

/// Naive `f64` product.
fn mm64(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
    assert_eq!(a.ncols(), b.nrows());
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let mut c = Array2::<f64>::zeros((m, n));
    for i in 0..m {
        for p in 0..k {
            let aip = a[[i, p]];
            if aip != 0.0 {
                for j in 0..n {
                    c[[i, j]] += aip * b[[p, j]];
                }
            }
        }
    }
    c
}

fn fro64(a: &Array2<f64>) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Singular values (descending) by one-sided Jacobi (Hestenes) in `f64`.
fn jacobi_sv(a: &Array2<f64>) -> Vec<f64> {
    // Work on the orientation with fewer columns.
    let mut w = if a.nrows() >= a.ncols() {
        a.clone()
    } else {
        a.t().to_owned()
    };
    let (m, n) = w.dim();
    for _sweep in 0..60 {
        let mut off = 0.0f64;
        for p in 0..n {
            for q in p + 1..n {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for i in 0..m {
                    let (x, y) = (w[[i, p]], w[[i, q]]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                off = f64::max(off, gamma.abs() / (alpha * beta).sqrt());
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for i in 0..m {
                    let (x, y) = (w[[i, p]], w[[i, q]]);
                    w[[i, p]] = c * x - s * y;
                    w[[i, q]] = s * x + c * y;
                }
            }
        }
        if off < 1e-15 {
            break;
        }
    }
    let mut sv: Vec<f64> = (0..n)
        .map(|j| w.column(j).iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    sv.sort_by(|a, b| b.partial_cmp(a).unwrap());
    sv
}

fn gaussian64(rows: usize, cols: usize, seed: u64) -> Array2<f64> {
    let mut rng = rng::Xoshiro256PlusPlus::seed_from_u64(seed);
    Array2::from_shape_fn((rows, cols), |_| rng.next_gaussian())
}

/// `m×k` with orthonormal columns: modified Gram–Schmidt, twice, in `f64`.
fn orthonormal64(m: usize, k: usize, seed: u64) -> Array2<f64> {
    let mut q = gaussian64(m, k, seed);
    for _pass in 0..2 {
        for j in 0..k {
            for i in 0..j {
                let d: f64 = (0..m).map(|r| q[[r, i]] * q[[r, j]]).sum();
                for r in 0..m {
                    q[[r, j]] -= d * q[[r, i]];
                }
            }
            let nrm = q.column(j).iter().map(|x| x * x).sum::<f64>().sqrt();
            q.column_mut(j).mapv_inplace(|x| x / nrm);
        }
    }
    q
}

/// `U·diag(σ)·Vᵀ` in `f64` with random orthonormal `U: m×r`, `V: n×r`.
fn with_spectrum(m: usize, n: usize, sigma: &[f64], seed: u64) -> Array2<f64> {
    let r = sigma.len();
    let mut u = orthonormal64(m, r, seed);
    let v = orthonormal64(n, r, seed ^ 0xABCD);
    for j in 0..r {
        u.column_mut(j).mapv_inplace(|x| x * sigma[j]);
    }
    mm64(&u, &v.t().to_owned())
}

/// `‖U·diag(s)·Vᵀ − M‖_F / ‖M‖_F` in `f64`.
fn rel_err(svd: &Svd, m: &Array2<f64>) -> f64 {
    let mut us = to_f64(svd.u.view());
    for j in 0..svd.s.len() {
        us.column_mut(j).mapv_inplace(|x| x * svd.s[j] as f64);
    }
    let r = mm64(&us, &to_f64(svd.vt.view()));
    fro64(&(&r - m)) / fro64(m)
}

/// `max |XᵀX − I|` for the columns of `x`.
fn orth_err(x: ArrayView2<f32>) -> f64 {
    let x = to_f64(x);
    let g = mm64(&x.t().to_owned(), &x);
    let mut e = 0.0f64;
    for ((i, j), v) in g.indexed_iter() {
        let t = if i == j { 1.0 } else { 0.0 };
        e = e.max((v - t).abs());
    }
    e
}

fn check_svd_shape_and_order(svd: &Svd, m: usize, n: usize, r: usize) {
    assert_eq!(svd.u.dim(), (m, r));
    assert_eq!(svd.s.len(), r);
    assert_eq!(svd.vt.dim(), (r, n));
    assert!(
        svd.s.windows(2).all(|w| w[0] >= w[1]),
        "not descending: {:?}",
        svd.s
    );
    assert!(svd.s.iter().all(|&x| x >= 0.0 && x.is_finite()));
    assert!(svd.u.iter().chain(svd.vt.iter()).all(|x| x.is_finite()));
}

fn bits(svd: &Svd) -> Vec<u32> {
    svd.u
        .iter()
        .chain(svd.s.iter())
        .chain(svd.vt.iter())
        .map(|x| x.to_bits())
        .collect()
}

/// An operator that hides `as_dense`, so only `apply`/`apply_t` are used.
struct Opaque(Array2<f32>);

impl LinearOperator for Opaque {
    fn rows(&self) -> usize {
        self.0.nrows()
    }
    fn cols(&self) -> usize {
        self.0.ncols()
    }
    fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.0.dot(&x)
    }
    fn apply_t(&self, y: ArrayView2<f32>) -> Array2<f32> {
        self.0.t().dot(&y)
    }
}

fn decaying_spectrum(n: usize, rate: f64, noise: f64, seed: u64) -> Vec<f64> {
    let mut rng = rng::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut s: Vec<f64> = (0..n)
        .map(|i| 10.0 * (-rate * i as f64).exp() + noise * rng.next_gaussian().abs())
        .collect();
    s.sort_by(|a, b| b.partial_cmp(a).unwrap());
    s
}

/// A test matrix `A = U·diag(σ)·Vᵀ` (exactly orthonormal `U`, `V` in `f64`),
/// rounded to `f32`, and a lower bound on the Eckart–Young optimum
/// `min_{rank X ≤ k} ‖A_f32 − X‖_F` of the matrix actually decomposed: that
/// minimum is 1-Lipschitz in `A` (Frobenius norm), so it is at least
/// `(Σ_{i≥k} σᵢ²)^{1/2} − ‖A_f32 − A‖_F`.
fn spectrum_case(m: usize, n: usize, sigma: &[f64], seed: u64, rank: usize) -> (Array2<f32>, f64) {
    let a = with_spectrum(m, n, sigma, seed);
    let a32 = to_f32(&a);
    let rounding = fro64(&(&to_f64(a32.view()) - &a));
    let tail = sigma[rank..].iter().map(|x| x * x).sum::<f64>().sqrt();
    (a32, tail - rounding)
}
