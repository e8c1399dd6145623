//! Tests of `linalg` against independent references: an `f64` one-sided
//! Jacobi SVD and `f64` naive matrix products written here, not the backends
//! under test. Every numerical test runs once per compiled-in backend
//! (faer, and LAPACK with feature `lapack`).

// Index loops read more naturally than zips in this numeric test code.
#![allow(clippy::needless_range_loop)]

use super::dense::all_backends;
use super::*;
use ndarray::{s, Array2, ArrayView2};

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

// ---------------------------------------------------------------------------
// Dense kernels
// ---------------------------------------------------------------------------

#[test]
fn dense_kernels_match_f64_reference() {
    for dense in backends() {
        for &(m, n) in &[(60usize, 25usize), (25, 60), (40, 40), (1, 7), (7, 1)] {
            let a64 = gaussian64(m, n, 11 + m as u64);
            let a = to_f32(&a64);
            let b = to_f32(&gaussian64(n, 9, 5));
            let ref_ab = mm64(&to_f64(a.view()), &to_f64(b.view()));
            let ab = dense.matmul(a.view(), b.view());
            assert!(fro64(&(&to_f64(ab.view()) - &ref_ab)) <= 1e-5 * fro64(&ref_ab));
            let c = to_f32(&gaussian64(m, 4, 6));
            let atc = dense.matmul_tn(a.view(), c.view());
            let ref_atc = mm64(&to_f64(a.t()), &to_f64(c.view()));
            assert!(fro64(&(&to_f64(atc.view()) - &ref_atc)) <= 1e-5 * fro64(&ref_atc));

            let k = m.min(n);
            let (q, r) = dense.qr_thin(a.view());
            assert_eq!(q.dim(), (m, k), "{}", dense.name());
            assert_eq!(r.dim(), (k, n));
            assert!(orth_err(q.view()) < 1e-5, "{}", dense.name());
            for i in 0..k {
                for j in 0..i.min(n) {
                    assert_eq!(r[[i, j]], 0.0, "R not upper triangular");
                }
            }
            let qr = mm64(&to_f64(q.view()), &to_f64(r.view()));
            assert!(fro64(&(&qr - &to_f64(a.view()))) <= 1e-5 * fro64(&to_f64(a.view())));

            let svd = dense.svd_thin(a.view());
            check_svd_shape_and_order(&svd, m, n, k);
            assert!(rel_err(&svd, &to_f64(a.view())) < 1e-5);
            let sv = jacobi_sv(&to_f64(a.view()));
            for (x, y) in svd.s.iter().zip(&sv) {
                assert!((*x as f64 - y).abs() <= 1e-5 * sv[0], "{x} vs {y}");
            }
        }
    }
}

#[test]
fn dense_kernels_accept_any_strides() {
    let big = to_f32(&gaussian64(40, 30, 3));
    let views = [
        big.slice(s![..;2, ..]),  // non-contiguous rows
        big.slice(s![.., ..;3]),  // non-contiguous columns
        big.slice(s![..;-1, ..]), // negative stride
    ];
    for dense in backends() {
        for v in views.iter() {
            let owned = v.to_owned();
            assert_eq!(dense.svd_thin(*v).s, dense.svd_thin(owned.view()).s);
            assert_eq!(dense.qr_thin(*v), dense.qr_thin(owned.view()));
            let x = to_f32(&gaussian64(v.ncols(), 3, 8));
            assert_eq!(
                dense.matmul(*v, x.view()),
                dense.matmul(owned.view(), x.view())
            );
        }
        // Fortran-order (transposed) input gives the transposed factorisation.
        let t = big.t();
        let st = dense.svd_thin(t);
        let so = dense.svd_thin(t.as_standard_layout().view());
        assert_eq!(st.s, so.s);
        let p = dense.matmul(t, big.view());
        assert!(p.is_standard_layout());
    }
}

#[test]
fn qr_of_rank_deficient_and_zero_matrices_is_orthonormal() {
    for dense in backends() {
        let low = to_f32(&mm64(&gaussian64(50, 3, 1), &gaussian64(3, 20, 2)));
        let zero = Array2::<f32>::zeros((50, 20));
        for a in [&low, &zero] {
            let (q, r) = dense.qr_thin(a.view());
            assert!(
                q.iter().chain(r.iter()).all(|x| x.is_finite()),
                "{}",
                dense.name()
            );
            assert!(orth_err(q.view()) < 1e-5, "{}", dense.name());
            let qr = mm64(&to_f64(q.view()), &to_f64(r.view()));
            assert!(fro64(&(&qr - &to_f64(a.view()))) <= 1e-5 * (1.0 + fro64(&to_f64(a.view()))));
        }
    }
}

// ---------------------------------------------------------------------------
// (1) exact-rank recovery, (2) Eckart–Young optimality of randomized SVD
// ---------------------------------------------------------------------------

#[test]
fn randomized_svd_recovers_exact_low_rank() {
    let r = 8;
    let tall = to_f32(&mm64(&gaussian64(200, r, 21), &gaussian64(r, 150, 22)));
    let wide = tall.t().as_standard_layout().into_owned();
    for a in [tall, wide] {
        let (m, n) = a.dim();
        let a64 = to_f64(a.view()); // the f32 matrix, exactly
        for dense in backends() {
            for rank in [r, r + 4] {
                let op = DenseOp::with_backend(a.view(), dense);
                let svd = randomized_svd_with(dense, &op, rank, &RsvdOptions::default());
                check_svd_shape_and_order(&svd, m, n, rank);
                let e = rel_err(&svd, &a64);
                assert!(
                    e <= 1e-5,
                    "{} {m}×{n}: rank {rank}: rel err {e:e}",
                    dense.name()
                );
                assert!(orth_err(svd.u.view()) < 1e-5);
                assert!(orth_err(svd.vt.t()) < 1e-5);
                // Components beyond the true rank are rounding noise.
                for &x in &svd.s[r..] {
                    assert!(x <= 1e-5 * svd.s[0]);
                }
            }
            // Without the power iterations and with the operator seen only
            // through apply/apply_t.
            let op = Opaque(a.clone());
            let opts = RsvdOptions {
                power_iters: 0,
                ..Default::default()
            };
            let svd = randomized_svd_with(dense, &op, r, &opts);
            assert!(rel_err(&svd, &a64) <= 1e-5);
        }
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

#[test]
fn randomized_svd_is_near_eckart_young_optimal() {
    let (m, n) = (200, 150);
    let cases = [
        (0.15, 1e-3, 10usize), // fast decay, small noise floor
        (0.05, 1e-2, 16),      // slow decay
        (0.30, 1e-1, 5),       // decay into a flat noise floor
    ];
    for (ci, &(rate, noise, rank)) in cases.iter().enumerate() {
        let sigma = decaying_spectrum(n, rate, noise, 40 + ci as u64);
        let (a, opt) = spectrum_case(m, n, &sigma, 50 + ci as u64, rank);
        let a64 = to_f64(a.view());
        for dense in backends() {
            let op = DenseOp::with_backend(a.view(), dense);
            let svd = randomized_svd_with(dense, &op, rank, &RsvdOptions::default());
            check_svd_shape_and_order(&svd, m, n, rank);
            let err = rel_err(&svd, &a64) * fro64(&a64);
            let ratio = err / opt;
            assert!(
                ratio <= 1.001,
                "{} case {ci}: error {err:e} vs optimum {opt:e} (ratio {ratio})",
                dense.name()
            );
            // Leading singular values to high relative accuracy.
            for i in 0..rank.min(5) {
                assert!(((svd.s[i] as f64) - sigma[i]).abs() <= 1e-4 * sigma[i]);
            }
        }
    }
}

/// The 1.001 threshold above is a real constraint: a single pass without
/// oversampling or power iterations misses it on the slow-decay case.
#[test]
fn optimality_threshold_is_discriminating() {
    let (m, n, rank) = (200, 150, 16);
    let sigma = decaying_spectrum(n, 0.05, 1e-2, 41);
    let (a, opt) = spectrum_case(m, n, &sigma, 51, rank);
    let a64 = to_f64(a.view());
    let opts = RsvdOptions {
        oversample: 0,
        power_iters: 0,
        seed: 1,
    };
    let svd = randomized_svd(&DenseOp::new(a.view()), rank, &opts);
    let ratio = rel_err(&svd, &a64) * fro64(&a64) / opt;
    assert!(ratio > 1.001, "ratio {ratio}");
}

#[test]
fn randomized_svd_falls_back_to_exact_when_sampling_is_not_cheaper() {
    let a = to_f32(&gaussian64(30, 20, 9));
    for dense in backends() {
        let exact = exact_svd_with(dense, a.view());
        // rank + p = 5 + 15 ≥ min(m, n) = 20.
        let opts = RsvdOptions {
            oversample: 15,
            ..Default::default()
        };
        let r = randomized_svd_with(dense, &DenseOp::with_backend(a.view(), dense), 5, &opts);
        assert_eq!(r, exact.clone().truncate(5));
        // Through an opaque operator the dense matrix is materialised (up to
        // the rounding of the products with I, which are exact).
        let r = randomized_svd_with(dense, &Opaque(a.clone()), 5, &opts);
        assert_eq!(r.s, exact.s[..5]);
        // Opaque wide operator: materialised through apply_t.
        let at = a.t().as_standard_layout().into_owned();
        let r = randomized_svd_with(dense, &Opaque(at.clone()), 30, &opts);
        assert_eq!(r.s.len(), 20);
        assert_eq!(Opaque(at.clone()).to_dense(), at);
        // rank larger than min(m, n) is clamped; rank 0 is empty.
        assert_eq!(
            randomized_svd_with(dense, &Opaque(a.clone()), 99, &opts)
                .s
                .len(),
            20
        );
        let e = randomized_svd_with(dense, &Opaque(a.clone()), 0, &opts);
        assert_eq!((e.u.dim(), e.s.len(), e.vt.dim()), ((30, 0), 0, (0, 20)));
    }
}

// ---------------------------------------------------------------------------
// (3) factored SVD, (7) stacked, (8) corner cases
// ---------------------------------------------------------------------------

/// Checks `svd` against the `f64` materialisation `m64`: singular values to
/// `tol` relative (per value, for values above `1e-3·s₁`; absolute `tol·s₁`
/// below), reconstruction, orthonormality.
fn check_against(svd: &Svd, m64: &Array2<f64>, tol: f64, what: &str) {
    let (m, n) = m64.dim();
    let r = m.min(n).min(svd.s.len());
    check_svd_shape_and_order(svd, m, n, svd.s.len());
    let sv = jacobi_sv(m64);
    for i in 0..r {
        let (x, y) = (svd.s[i] as f64, sv[i]);
        let bound = if y > 1e-3 * sv[0] {
            tol * y
        } else {
            tol * sv[0]
        };
        assert!((x - y).abs() <= bound, "{what}: σ{i} = {x} vs {y}");
    }
    let e = rel_err(svd, m64);
    assert!(e <= tol, "{what}: reconstruction rel err {e:e}");
    assert!(orth_err(svd.u.view()) < 1e-5, "{what}: U not orthonormal");
    assert!(orth_err(svd.vt.t()) < 1e-5, "{what}: V not orthonormal");
}

#[test]
fn factored_svd_matches_materialised_product() {
    for dense in backends() {
        for &(d, r, k, scale) in &[
            (120usize, 8usize, 90usize, 0.75f32),
            (90, 16, 120, -2.0),
            (64, 64, 64, 0.125),
            (10, 32, 12, 1.0), // r > d, r > k: only min(d, k) = 10 triplets
            (50, 1, 40, 3.0),  // rank 1
        ] {
            let b = to_f32(&gaussian64(d, r, d as u64 * 7 + r as u64));
            let a = to_f32(&gaussian64(r, k, k as u64 * 13 + r as u64));
            let m64 = mm64(&to_f64(b.view()), &to_f64(a.view())).mapv(|x| x * scale as f64);
            let svd = factored_svd_with(dense, b.view(), a.view(), scale);
            assert_eq!(svd.s.len(), d.min(r).min(k));
            check_against(&svd, &m64, 1e-5, &format!("{} {d}×{r}×{k}", dense.name()));
            if r == 1 {
                let nb = fro64(&to_f64(b.view()));
                let na = fro64(&to_f64(a.view()));
                let expect = scale.abs() as f64 * nb * na;
                assert!((svd.s[0] as f64 - expect).abs() <= 1e-6 * expect);
            }
        }
    }
}

#[test]
fn factored_svd_agrees_with_exact_svd_of_the_product() {
    let b = to_f32(&gaussian64(80, 6, 1));
    let a = to_f32(&gaussian64(6, 70, 2));
    for dense in backends() {
        let f = factored_svd_with(dense, b.view(), a.view(), 0.5);
        let prod = dense.matmul(b.view(), a.view()).mapv(|x| x * 0.5);
        let e = exact_svd_with(dense, prod.view()).truncate(6);
        for (x, y) in f.s.iter().zip(&e.s) {
            assert!((x - y).abs() <= 1e-5 * e.s[0]);
        }
        // Sign normalisation makes the vectors comparable too.
        for (x, y) in f.u.iter().zip(e.u.iter()) {
            assert!((x - y).abs() < 1e-3, "{x} vs {y}");
        }
    }
}

#[test]
fn stacked_factored_svd_reproduces_sum_of_products() {
    let (d, k) = (70, 55);
    let specs = [(4usize, 1.0f32), (6, -0.5), (3, 2.0)];
    let bs: Vec<Array2<f32>> = specs
        .iter()
        .enumerate()
        .map(|(i, &(r, _))| to_f32(&gaussian64(d, r, 100 + i as u64)))
        .collect();
    let as_: Vec<Array2<f32>> = specs
        .iter()
        .enumerate()
        .map(|(i, &(r, _))| to_f32(&gaussian64(r, k, 200 + i as u64)))
        .collect();
    let mut m64 = Array2::<f64>::zeros((d, k));
    for i in 0..specs.len() {
        m64 = m64
            + mm64(&to_f64(bs[i].view()), &to_f64(as_[i].view())).mapv(|x| x * specs[i].1 as f64);
    }
    let terms: Vec<_> = (0..specs.len())
        .map(|i| (bs[i].view(), as_[i].view(), specs[i].1))
        .collect();
    for dense in backends() {
        let svd = stacked_factored_svd_with(dense, &terms);
        assert_eq!(svd.s.len(), 13);
        check_against(&svd, &m64, 1e-5, dense.name());
    }
    // One term is plain factored_svd.
    let one = stacked_factored_svd(&terms[..1]);
    assert_eq!(one, factored_svd(bs[0].view(), as_[0].view(), 1.0));
}

#[test]
fn zero_update_gives_zero_factors_not_nan() {
    let b = Array2::<f32>::zeros((40, 8));
    let a = Array2::<f32>::zeros((8, 30));
    let z = Array2::<f32>::zeros((200, 150));
    for dense in backends() {
        let svds = [
            factored_svd_with(dense, b.view(), a.view(), 1.0),
            // nonzero factors, zero scale
            factored_svd_with(
                dense,
                to_f32(&gaussian64(40, 8, 1)).view(),
                to_f32(&gaussian64(8, 30, 2)).view(),
                0.0,
            ),
            exact_svd_with(dense, z.view()),
            randomized_svd_with(
                dense,
                &DenseOp::with_backend(z.view(), dense),
                4,
                &RsvdOptions::default(),
            ),
            stacked_factored_svd_with(
                dense,
                &[(b.view(), a.view(), 1.0), (b.view(), a.view(), -1.0)],
            ),
        ];
        for svd in &svds {
            assert!(
                svd.s.iter().all(|&x| x == 0.0),
                "{}: {:?}",
                dense.name(),
                svd.s
            );
            assert!(
                svd.u.iter().chain(svd.vt.iter()).all(|x| x.is_finite()),
                "{}",
                dense.name()
            );
            let (fb, fa) = split_factors(svd, 4);
            assert!(fb.iter().chain(fa.iter()).all(|&x| x == 0.0));
            let sp = spectrum_of_values(svd.s.clone());
            assert_eq!((sp.fro_norm, sp.rank90, sp.rank99), (0.0, 1, 1));
        }
    }
}

#[test]
fn empty_dimensions_do_not_panic() {
    let b = Array2::<f32>::zeros((0, 4));
    let a = Array2::<f32>::zeros((4, 9));
    let s = factored_svd(b.view(), a.view(), 1.0);
    assert_eq!((s.u.dim(), s.s.len(), s.vt.dim()), ((0, 0), 0, (0, 9)));
    let e = exact_svd(Array2::<f32>::zeros((5, 0)).view());
    assert_eq!((e.u.dim(), e.s.len(), e.vt.dim()), ((5, 0), 0, (0, 0)));
    assert_eq!(rank_for_energy(&[], 0.9), 0);
    assert_eq!(rank_for_sv_ratio(&[], 4.0), 0);
}

#[test]
#[should_panic(expected = "NaN or infinite")]
fn nan_input_panics_with_a_clear_message() {
    let mut a = Array2::<f32>::ones((5, 4));
    a[[2, 1]] = f32::NAN;
    exact_svd(a.view());
}

#[test]
#[should_panic(expected = "B.ncols must equal A.nrows")]
fn factored_svd_rejects_mismatched_factors() {
    factored_svd(
        Array2::<f32>::zeros((4, 3)).view(),
        Array2::<f32>::zeros((2, 5)).view(),
        1.0,
    );
}

#[test]
fn split_factors_reconstruct_the_truncation() {
    let sigma = [5.0, 3.0, 2.0, 1.0, 0.5];
    let a = to_f32(&with_spectrum(30, 20, &sigma, 77));
    let svd = exact_svd(a.view());
    for rank in [1usize, 3, 5] {
        let (b, aa) = split_factors(&svd, rank);
        assert_eq!((b.dim(), aa.dim()), ((30, rank), (rank, 20)));
        let prod = mm64(&to_f64(b.view()), &to_f64(aa.view()));
        let err = fro64(&(&prod - &to_f64(a.view())));
        let opt = sigma[rank..].iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(
            (err - opt).abs() <= 1e-5 * sigma[0],
            "rank {rank}: {err} vs {opt}"
        );
        assert!((err * err - tail_energy(&svd.s, rank)).abs() <= 1e-4);
        // Balanced: both factors have column/row norms √sᵢ.
        for i in 0..rank {
            let nb = b
                .column(i)
                .iter()
                .map(|x| (x * x) as f64)
                .sum::<f64>()
                .sqrt();
            let na = aa.row(i).iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
            let expect = (sigma[i]).sqrt();
            assert!((nb - expect).abs() < 1e-5 && (na - expect).abs() < 1e-5);
        }
    }
    // Asking for more than the SVD has zero-pads.
    let small = svd.clone().truncate(2);
    let (b, aa) = split_factors(&small, 4);
    assert_eq!((b.dim(), aa.dim()), ((30, 4), (4, 20)));
    assert!(b.slice(s![.., 2..]).iter().all(|&x| x == 0.0));
    assert!(aa.slice(s![2.., ..]).iter().all(|&x| x == 0.0));
    // Reconstruct helper agrees with the factors.
    let r = svd.clone().truncate(3).reconstruct();
    let (b, aa) = split_factors(&svd, 3);
    let p = b.dot(&aa);
    assert!(r.iter().zip(p.iter()).all(|(x, y)| (x - y).abs() < 1e-5));
}

#[test]
fn signs_are_normalised() {
    let a = to_f32(&gaussian64(25, 15, 4));
    for dense in backends() {
        let svd = exact_svd_with(dense, a.view());
        for i in 0..svd.s.len() {
            let col = svd.u.column(i);
            let (mut best, mut val) = (0.0f32, 0.0f32);
            for &x in col.iter() {
                if x.abs() > best {
                    best = x.abs();
                    val = x;
                }
            }
            assert!(val > 0.0);
        }
        let mut flipped = svd.clone();
        flipped.u.column_mut(0).mapv_inplace(|x| -x);
        flipped.vt.row_mut(0).mapv_inplace(|x| -x);
        assert_ne!(flipped, svd);
        flipped.normalize_signs();
        assert_eq!(flipped, svd);
    }
}

// ---------------------------------------------------------------------------
// (4) energy boundary, (5) sv_ratio boundary
// ---------------------------------------------------------------------------

#[test]
fn rank_for_energy_boundaries_are_exact() {
    // σ² = 16,16,16,4,4,4,1,1,1,1: total 64; cumulative fractions
    // 0.25, 0.5, 0.75, 0.8125, 0.875, 0.9375, 61/64, 62/64, 63/64, 1 — all exact.
    let s = [4.0f32, 4.0, 4.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0];
    let cum = [
        0.25,
        0.5,
        0.75,
        0.8125,
        0.875,
        0.9375,
        61.0 / 64.0,
        62.0 / 64.0,
        63.0 / 64.0,
        1.0,
    ];
    for (i, &c) in cum.iter().enumerate() {
        let k = i + 1;
        assert_eq!(rank_for_energy(&s, c), k, "hit exactly at k = {k}");
        assert_eq!(rank_for_energy(&s, c - 1e-9), k, "just below at k = {k}");
        if k < s.len() {
            assert_eq!(
                rank_for_energy(&s, c + 1e-9),
                k + 1,
                "just above at k = {k}"
            );
        }
        // Inside the documented 1e-12 relative slack → still k; beyond it → k+1.
        assert_eq!(rank_for_energy(&s, c + 1e-13), k);
        if k < s.len() {
            assert_eq!(rank_for_energy(&s, c + 1e-11), k + 1);
        }
    }
    assert_eq!(rank_for_energy(&s, 0.0), 1);
    assert_eq!(rank_for_energy(&s, -1.0), 1);
    assert_eq!(rank_for_energy(&s, 1.5), 10);
    assert_eq!(rank_for_energy(&s, f64::NAN), 10);
    assert_eq!(rank_for_energy(&[0.0; 4], 0.9), 1);
    // Exact zeros at the tail are not needed for energy 1.
    assert_eq!(rank_for_energy(&[3.0, 1.0, 0.0, 0.0], 1.0), 2);
    assert_eq!(effective_rank(&s, 0.75), 3);
    // Energy accounting.
    assert_eq!(energy(&s), 64.0);
    assert_eq!(tail_energy(&s, 3), 16.0);
    assert_eq!(tail_energy(&s, 10), 0.0);
    assert_eq!(tail_energy(&s, 99), 0.0);
    let m = Array2::from_shape_vec((2, 2), vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(frobenius_norm_sq(m.view()), 30.0);
}

#[test]
fn rank_for_sv_ratio_matches_kohya_rule() {
    let s = [8.0f32, 4.0, 2.0, 1.0, 0.5];
    // ratio 4: min_sv = 2; kohya keeps S > 2 strictly → 8, 4.
    assert_eq!(rank_for_sv_ratio(&s, 4.0), 2);
    assert_eq!(rank_for_sv_ratio(&s, 4.0001), 3); // min_sv just below 2
    assert_eq!(rank_for_sv_ratio(&s, 3.9999), 2); // min_sv just above 2
    assert_eq!(rank_for_sv_ratio(&s, 8.0), 3); // min_sv = 1 excluded
    assert_eq!(rank_for_sv_ratio(&s, 16.0), 4); // min_sv = 0.5 excluded
    assert_eq!(rank_for_sv_ratio(&s, 16.001), 5);
    assert_eq!(rank_for_sv_ratio(&s, 1e9), 5);
    assert_eq!(rank_for_sv_ratio(&s, 2.0), 1); // only 8 > 4
    assert_eq!(rank_for_sv_ratio(&s, 1.0), 1); // none strictly above: clamped to 1
    assert_eq!(rank_for_sv_ratio(&s, 0.5), 1);
    assert_eq!(rank_for_sv_ratio(&[0.0; 3], 10.0), 1);
    // Ties at the top are all kept for ratio > 1.
    assert_eq!(rank_for_sv_ratio(&[3.0, 3.0, 3.0, 1.0], 1.5), 3);
    // The threshold is the f32 quotient: 1/3 rounds up in f32, so a value
    // equal to fl32(1/3) is not kept (strict >), matching torch's float32.
    let third = 1.0f32 / 3.0f32;
    assert_eq!(rank_for_sv_ratio(&[1.0, third], 3.0), 1);
    assert_eq!(
        rank_for_sv_ratio(&[1.0, f32::from_bits(third.to_bits() + 1)], 3.0),
        2
    );
    // 1.1 is not an f32: torch divides by fl32(1.1), giving fl32(1/fl32(1.1)),
    // one ulp below fl32(1/1.1). A value one ulp above torch's threshold is
    // kept (an f64 division would put the threshold on it and drop it).
    let torch = 1.0f32 / 1.1f32;
    let above = f32::from_bits(torch.to_bits() + 1);
    assert_eq!(above, (1.0f64 / 1.1) as f32);
    assert_eq!(rank_for_sv_ratio(&[1.0, torch], 1.1), 1);
    assert_eq!(rank_for_sv_ratio(&[1.0, above], 1.1), 2);
}

// ---------------------------------------------------------------------------
// (6) determinism
// ---------------------------------------------------------------------------

#[test]
fn randomized_svd_is_deterministic_in_the_seed() {
    let sigma = decaying_spectrum(100, 0.1, 1e-2, 3);
    let a = to_f32(&with_spectrum(120, 100, &sigma, 4));
    let opts = RsvdOptions {
        seed: 1234,
        ..Default::default()
    };
    for dense in backends() {
        let op = DenseOp::with_backend(a.view(), dense);
        let x = randomized_svd_with(dense, &op, 6, &opts);
        let y = randomized_svd_with(dense, &op, 6, &opts);
        assert_eq!(bits(&x), bits(&y), "{}", dense.name());
        let z = randomized_svd_with(dense, &op, 6, &RsvdOptions { seed: 1235, ..opts });
        assert_ne!(bits(&x), bits(&z), "{}: seed has no effect", dense.name());
    }
    // Ω itself: same seed → same bits, different seed → different entries.
    let o1 = rng::gaussian_matrix(100, 16, 1234);
    let o2 = rng::gaussian_matrix(100, 16, 1234);
    let o3 = rng::gaussian_matrix(100, 16, 1235);
    assert_eq!(o1, o2);
    assert!(o1.iter().zip(o3.iter()).filter(|(x, y)| x != y).count() == o1.len());
}

/// The determinism claims in `dense`, at sizes above `PAR_WORK` so that the
/// parallel paths run: every kernel is reproducible for a fixed number of
/// threads; the GEMM is also independent of the thread count; QR/SVD agree
/// across thread counts to rounding (and after sign normalisation the public
/// results are close, not bit-identical).
#[test]
fn faer_determinism_with_respect_to_thread_count() {
    use super::dense::{faer_matmul, faer_qr, faer_svd, with_faer, FAER};
    use faer::Par;
    let a = to_f32(&gaussian64(300, 260, 8));
    let b = to_f32(&gaussian64(260, 200, 9));
    let run = |par: Par| {
        let mm = with_faer(a.view(), |fa| {
            with_faer(b.view(), |fb| faer_matmul(fa, fb, Some(par)))
        });
        let qr = with_faer(a.view(), |fa| faer_qr(fa, Some(par)));
        let svd = faer_svd(a.view(), Some(par));
        (mm, qr, svd)
    };
    let reference = run(Par::Seq);
    for par in [
        Par::Seq,
        Par::rayon(1),
        Par::rayon(2),
        Par::rayon(3),
        Par::rayon(4),
    ] {
        let got = run(par);
        let again = run(par);
        assert!(
            got.0 == again.0 && got.1 == again.1 && bits(&got.2) == bits(&again.2),
            "{par:?} not reproducible"
        );
        let mm_bits = |x: &Array2<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(
            mm_bits(&got.0) == mm_bits(&reference.0),
            "matmul depends on {par:?}"
        );
        let close = |x: &Array2<f32>, y: &Array2<f32>, tol: f32| {
            x.iter().zip(y.iter()).all(|(p, q)| (p - q).abs() <= tol)
        };
        assert!(close(&got.1 .0, &reference.1 .0, 1e-5) && close(&got.1 .1, &reference.1 .1, 1e-4));
        for (x, y) in got.2.s.iter().zip(&reference.2.s) {
            assert!((x - y).abs() <= 1e-5 * reference.2.s[0]);
        }
    }
    // The public path under rayon pools of different sizes.
    let full = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let op = DenseOp::with_backend(a.view(), &FAER);
            let r = randomized_svd_with(&FAER, &op, 16, &RsvdOptions::default());
            let e = exact_svd_with(&FAER, a.view());
            (r, e)
        })
    };
    let (r1, e1) = full(1);
    for t in [1, 2, 3] {
        let (r, e) = full(t);
        let (r_again, e_again) = full(t);
        assert_eq!(
            bits(&r),
            bits(&r_again),
            "randomized_svd not reproducible with {t} threads"
        );
        assert_eq!(
            bits(&e),
            bits(&e_again),
            "exact_svd not reproducible with {t} threads"
        );
        for (x, y) in [(&r, &r1), (&e, &e1)] {
            assert!(x
                .s
                .iter()
                .zip(&y.s)
                .all(|(p, q)| (p - q).abs() <= 1e-5 * y.s[0]));
            // Signs are normalised, so the leading vectors agree too.
            assert!(x
                .u
                .column(0)
                .iter()
                .zip(y.u.column(0).iter())
                .all(|(p, q)| (p - q).abs() <= 1e-4));
        }
    }
}

// ---------------------------------------------------------------------------
// Spectrum
// ---------------------------------------------------------------------------

#[test]
fn spectrum_of_factors_summarises_the_update() {
    let sigma = [8.0, 4.0, 2.0, 1.0];
    // B = U·diag(σ), A = Vᵀ so that B·A has singular values σ.
    let u = orthonormal64(40, 4, 1);
    let v = orthonormal64(30, 4, 2);
    let mut b = u.clone();
    for j in 0..4 {
        b.column_mut(j).mapv_inplace(|x| x * sigma[j]);
    }
    let b = to_f32(&b);
    let a = to_f32(&v.t().to_owned());
    let sp = spectrum_of_factors(b.view(), a.view(), 0.5);
    let expect: Vec<f64> = sigma.iter().map(|x| x * 0.5).collect();
    for (x, y) in sp.singular_values.iter().zip(&expect) {
        assert!((*x as f64 - y).abs() < 1e-5 * expect[0]);
    }
    // energies 16, 4, 1, 0.25 of 21.25: 75.3 %, 94.1 %, 98.8 %, 100 %.
    assert_eq!((sp.rank90, sp.rank99), (2, 4));
    assert!((sp.fro_norm - 21.25f64.sqrt()).abs() < 1e-5);
}

// ---------------------------------------------------------------------------
// Timing (manual): cargo test --release --lib linalg::tests::timing -- --ignored --nocapture
// ---------------------------------------------------------------------------

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
