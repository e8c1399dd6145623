//! Tall and wide shapes against f64 references (the faer f32 QR cut-off, issue #21).
//!
//! References are computed in f64 here; must not compare a backend with itself.

use super::*;

// ---------------------------------------------------------------------------
// Tall and wide shapes (the faer f32 QR cut-off, issue #21)
// ---------------------------------------------------------------------------
//
// faer 0.24's f32 QR skips a reflector when a column's part below the diagonal is under
// ε·16·(m − row)·‖col‖ (5.8 % of the column at m = 30 522), so on tall matrices the QR, and the
// SVD that starts with it, lost directions. These tests build tall and wide matrices with known,
// graded spectra and compare every dense routine with an f64 SVD of the same f32 matrix.

/// Singular values of `a` (descending) in f64, by a route that shares neither precision nor
/// code path with the f32 routines under test:
///
/// * near-square (`max/min < 4`): faer's f64 SVD with its QR-first step switched off
///   (bidiagonalisation of the whole matrix, backward stable to ~1e-16·‖a‖);
/// * tall or wide: the eigenvalues of the f64 Gram matrix `G = XᵀX` of the thinner side `X`
///   (`n×n`, `n = min(m, n)`). The product and the symmetric eigensolver are backward stable,
///   so by Weyl `|λ̂ᵢ − σᵢ²| ≤ c·n·ε₆₄·σ₁²`, hence `|σ̂ᵢ − σᵢ| ≤ √(c·n·ε₆₄)·σ₁ ≈ 2e-7·σ₁` at
///   n = 384 even for σᵢ → 0, and `≤ c·n·ε₆₄·σ₁²/σᵢ` (below 1e-9·σ₁ for the graded spectra's
///   floor 1e-4·σ₁) otherwise — far inside the 1e-5·σ₁ the tests allow. Bidiagonalising a
///   30 522×384 f64 matrix without the QR step is memory-bound and took ~7 s per matrix in
///   the test profile; the Gram route takes a fraction of a second.
fn svd64_values(a: &Array2<f64>) -> Vec<f64> {
    let (m, n) = a.dim();
    let (small, large) = (m.min(n), m.max(n));
    if small > 0 && large >= 4 * small {
        let x = if m >= n {
            faer::Mat::<f64>::from_fn(m, n, |i, j| a[[i, j]])
        } else {
            faer::Mat::<f64>::from_fn(n, m, |i, j| a[[j, i]])
        };
        let g = x.transpose() * &x;
        let mut lambda = g
            .self_adjoint_eigenvalues(faer::Side::Lower)
            .expect("f64 reference eigenvalues");
        lambda.sort_by(|p, q| q.partial_cmp(p).unwrap());
        return lambda.into_iter().map(|l| l.max(0.0).sqrt()).collect();
    }
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::svd::{svd, svd_scratch, ComputeSvdVectors, SvdParams};
    let (m, n) = a.dim();
    let fa = faer::Mat::<f64>::from_fn(m, n, |i, j| a[[i, j]]);
    let params = SvdParams {
        qr_ratio_threshold: f64::INFINITY,
        ..<SvdParams as faer::Auto<f64>>::auto()
    };
    let par = faer::Par::rayon(0);
    let mut s = faer::diag::Diag::<f64>::zeros(m.min(n));
    svd(
        fa.as_ref(),
        s.as_mut(),
        None,
        None,
        par,
        MemStack::new(&mut MemBuffer::new(svd_scratch::<f64>(
            m,
            n,
            ComputeSvdVectors::No,
            ComputeSvdVectors::No,
            par,
            params.into(),
        ))),
        params.into(),
    )
    .expect("f64 reference SVD");
    s.column_vector().iter().copied().collect()
}

/// `a · b` in f64 through faer's f64 product: the naive [`mm64`] is too slow for the
/// 30 000-row checks below in the test profile.
fn mm64_fast(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
    let fa = faer::Mat::<f64>::from_fn(a.nrows(), a.ncols(), |i, j| a[[i, j]]);
    let fb = faer::Mat::<f64>::from_fn(b.nrows(), b.ncols(), |i, j| b[[i, j]]);
    let c = &fa * &fb;
    Array2::from_shape_fn((a.nrows(), b.ncols()), |(i, j)| c[(i, j)])
}

/// `max |XᵀX − I|` in f64 ([`orth_err`] through [`mm64_fast`]).
fn orth_err_fast(x: ArrayView2<f32>) -> f64 {
    let x = to_f64(x);
    let g = mm64_fast(&x.t().to_owned(), &x);
    g.indexed_iter()
        .map(|((i, j), v)| (v - if i == j { 1.0 } else { 0.0 }).abs())
        .fold(0.0, f64::max)
}

/// `m×n` (f32) with singular values `σ` on random orthonormal bases, built in f64 with faer
/// (the f64 QR of Gaussian blocks, whose cut-off of ~1e-10 never triggers on them).
fn tall_case(m: usize, n: usize, sigma: &[f64], seed: u64) -> Array2<f32> {
    use faer::Mat;
    let r = sigma.len();
    let basis = |rows: usize, seed: u64| {
        let g = gaussian64(rows, r, seed);
        let g = Mat::<f64>::from_fn(rows, r, |i, j| g[[i, j]]);
        g.qr().compute_thin_Q()
    };
    let mut u = basis(m, seed);
    let v = basis(n, seed ^ 0x5EED);
    for j in 0..r {
        for i in 0..m {
            u[(i, j)] *= sigma[j];
        }
    }
    let prod = &u * v.transpose();
    Array2::from_shape_fn((m, n), |(i, j)| prod[(i, j)] as f32)
}

/// `0.8^i` for the first 40 values, then a floor of 1e-4 (σ₁ = 1): the spectrum of the
/// issue's measurements.
fn graded_spectrum(k: usize) -> Vec<f64> {
    (0..k).map(|i| 0.8f64.powi(i as i32).max(1e-4)).collect()
}

/// Checks an SVD of `a` against the f64 reference: singular values to 1e-5·σ₁, U and V
/// orthonormal, and the rank-`rank` truncation within 1.0001× of the Eckart–Young optimum
/// (the optimum from the f64 singular values of the same f32 matrix).
fn check_tall_svd(svd: &Svd, a: &Array2<f32>, ref_s: &[f64], rank: usize, what: &str) {
    let (m, n) = a.dim();
    check_svd_shape_and_order(svd, m, n, m.min(n));
    let s1 = ref_s[0];
    for (i, (x, y)) in svd.s.iter().zip(ref_s).enumerate() {
        assert!(
            (*x as f64 - y).abs() <= 1e-5 * s1,
            "{what}: σ_{i} = {x} against the f64 reference {y}"
        );
    }
    // Orthogonality: f32 Householder/bidiagonalisation keeps ‖UᵀU − I‖ at a few hundred ε.
    assert!(
        orth_err_fast(svd.u.view()) < 2e-5,
        "{what}: U not orthonormal"
    );
    assert!(
        orth_err_fast(svd.vt.t()) < 2e-5,
        "{what}: V not orthonormal"
    );
    // The truncation is reconstructed in f64, so only the factors' own rounding counts.
    let t = svd.clone().truncate(rank);
    let mut us = to_f64(t.u.view());
    for j in 0..rank {
        us.column_mut(j).mapv_inplace(|x| x * t.s[j] as f64);
    }
    let err = fro64(&(&mm64_fast(&us, &to_f64(t.vt.view())) - &to_f64(a.view())));
    let opt: f64 = ref_s[rank..].iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!(
        err <= 1.0001 * opt,
        "{what}: rank-{rank} error {err:e} is {:.7}× the optimum {opt:e}",
        err / opt
    );
}

#[test]
fn exact_svd_is_optimal_on_tall_and_wide_matrices() {
    // (m, n, rank): m/n from 1.8 to 625, d up to 30 522; the last is Householder-only
    // (n ≤ 128), the first goes through the f64 blocked QR.
    let shapes = [
        (30522usize, 384usize, 24usize),
        (3840, 384, 16),
        (30000, 48, 16),
        (30522, 64, 16),
        (700, 384, 16),
    ];
    for (idx, &(m, n, rank)) in shapes.iter().enumerate() {
        let a = tall_case(m, n, &graded_spectrum(n), 100 + idx as u64);
        let ref_s = svd64_values(&a.mapv(|x| x as f64));
        let wide = a.t().as_standard_layout().into_owned();
        for dense in backends() {
            let svd = exact_svd_with(dense, a.view());
            check_tall_svd(&svd, &a, &ref_s, rank, &format!("{} {m}×{n}", dense.name()));
            let svd = exact_svd_with(dense, wide.view());
            check_tall_svd(
                &svd,
                &wide,
                &ref_s,
                rank,
                &format!("{} {n}×{m}", dense.name()),
            );
        }
    }
}

#[test]
fn tall_qr_is_orthonormal_and_reproduces_the_matrix() {
    for &(m, n) in &[(30522usize, 384usize), (30000, 48), (5000, 200)] {
        let a = tall_case(m, n, &graded_spectrum(n), 7 + n as u64);
        let ref_s = svd64_values(&a.mapv(|x| x as f64));
        for dense in backends() {
            let (q, r) = dense.qr_thin(a.view());
            assert_eq!((q.dim(), r.dim()), ((m, n), (n, n)));
            let what = format!("{} {m}×{n}", dense.name());
            assert!(orth_err_fast(q.view()) < 2e-5, "{what}: Q not orthonormal");
            let qr = dense.matmul(q.view(), r.view());
            let rel = fro64(&(&to_f64(qr.view()) - &to_f64(a.view()))) / fro64(&to_f64(a.view()));
            assert!(rel < 1e-5, "{what}: ‖QR − A‖/‖A‖ = {rel:e}");
            // R has A's singular values: a dropped direction shows up here.
            let rs = svd64_values(&to_f64(r.view()));
            for (x, y) in rs.iter().zip(&ref_s) {
                assert!(
                    (x - y).abs() <= 1e-5 * ref_s[0],
                    "{what}: σ(R) {x} vs σ(A) {y}"
                );
            }
        }
    }
}

/// The three columns `[u, u + 0.01·w, z]`: the smallest singular value is ≈ 0.00707
/// at any height; faer's f32 QR returned 3e-11 at 30 520 rows.
#[test]
fn near_dependent_columns_keep_their_small_singular_value() {
    for &m in &[1000usize, 30520] {
        let g = orthonormal64(m, 3, 42);
        let mut c = Array2::<f64>::zeros((m, 3));
        for i in 0..m {
            c[[i, 0]] = g[[i, 0]];
            c[[i, 1]] = g[[i, 0]] + 0.01 * g[[i, 1]];
            c[[i, 2]] = g[[i, 2]];
        }
        let b = to_f32(&c);
        let reference = jacobi_sv(&to_f64(b.view()));
        assert!((reference[2] - 0.00707).abs() < 1e-4, "{reference:?}");
        let eye = Array2::<f32>::eye(3);
        for dense in backends() {
            let what = format!("{} at {m} rows", dense.name());
            let close = |s: &[f32], how: &str| {
                for (x, y) in s.iter().zip(&reference) {
                    assert!(
                        (*x as f64 - y).abs() <= 1e-5 * reference[0],
                        "{what}, {how}: {s:?} against {reference:?}"
                    );
                }
            };
            close(&exact_svd_with(dense, b.view()).s, "exact SVD");
            close(
                &factored_svd_with(dense, b.view(), eye.view(), 1.0).s,
                "factored SVD",
            );
            let (q, r) = dense.qr_thin(b.view());
            assert!(orth_err_fast(q.view()) < 1e-5, "{what}: Q");
            close(
                &jacobi_sv(&to_f64(r.view()))
                    .iter()
                    .map(|&x| x as f32)
                    .collect::<Vec<_>>(),
                "R of the QR",
            );
        }
        // The spectrum `inspect --spectrum` prints (backend() = the one compiled in).
        let sp = spectrum_of_factors(b.view(), eye.view(), 1.0);
        assert!((sp.singular_values[2] as f64 - reference[2]).abs() <= 1e-5 * reference[0]);
    }
}

/// A factored update `B·A` with `B` tall (30 522 × 64) and a graded spectrum: the factored SVD
/// (QR of B and Aᵀ, SVD of the core) against the f64 SVD of the materialised product.
#[test]
fn factored_svd_of_a_tall_update_matches_the_f64_svd() {
    let (d, r, k) = (30522usize, 64usize, 384usize);
    let sigma = graded_spectrum(r);
    let b = tall_case(d, r, &sigma, 9);
    let a = to_f32(&orthonormal64(k, r, 10).t().to_owned());
    let prod = mm64_fast(&to_f64(b.view()), &to_f64(a.view()));
    let ref_s = svd64_values(&prod);
    for dense in backends() {
        let svd = factored_svd_with(dense, b.view(), a.view(), 0.5);
        assert_eq!(svd.s.len(), r);
        for (i, (x, y)) in svd.s.iter().zip(&ref_s).enumerate() {
            assert!(
                (*x as f64 - 0.5 * y).abs() <= 1e-5 * 0.5 * ref_s[0],
                "{}: σ_{i} {x} vs {}",
                dense.name(),
                0.5 * y
            );
        }
    }
}
