//! Dense kernels against f64 references, any strides, rank-deficient QR.
//!
//! References are the f64 products and Jacobi SVD of `super`; must not compare a backend with
//! itself.

use super::*;

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
