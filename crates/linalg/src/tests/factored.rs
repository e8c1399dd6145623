//! Factored and stacked SVDs, corner cases, sign normalisation, the spectrum summary.
//!
//! References are the f64 Jacobi SVD of `super`; must not compare a backend with itself.

use super::*;

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
