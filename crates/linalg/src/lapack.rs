//! LAPACK (OpenBLAS via ndarray-linalg) implementation of [`Dense`]
//! (feature `lapack`). QR is `?geqrf` + `?orgqr`, the SVD is the
//! divide-and-conquer driver `?gesdd`, and matmul is ndarray's `dot`.
//!
//! Must not be the only implementation of anything: every operation here has its faer twin, and
//! both run the same tests.

use super::dense::Dense;
use super::Svd;
use ndarray::{Array2, ArrayView2};
use ndarray_linalg::{JobSvd, QR, SVDDC};

/// The LAPACK backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct LapackDense;

impl Dense for LapackDense {
    fn name(&self) -> &'static str {
        "lapack"
    }

    fn matmul(&self, a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
        assert_eq!(
            a.ncols(),
            b.nrows(),
            "linalg::matmul: inner dimensions differ ({:?} · {:?})",
            a.dim(),
            b.dim()
        );
        let out = a.dot(&b);
        if out.is_standard_layout() {
            out
        } else {
            out.as_standard_layout().into_owned()
        }
    }

    fn qr_thin(&self, a: ArrayView2<f32>) -> (Array2<f32>, Array2<f32>) {
        let (m, n) = a.dim();
        if m.min(n) == 0 {
            return (Array2::zeros((m, 0)), Array2::zeros((0, n)));
        }
        let (q, r) = a
            .as_standard_layout()
            .qr()
            .unwrap_or_else(|e| panic!("linalg: LAPACK QR of a {m}×{n} matrix failed: {e}"));
        (
            q.as_standard_layout().into_owned(),
            r.as_standard_layout().into_owned(),
        )
    }

    fn svd_thin(&self, a: ArrayView2<f32>) -> Svd {
        let (m, n) = a.dim();
        if m.min(n) == 0 {
            return Svd {
                u: Array2::zeros((m, 0)),
                s: Vec::new(),
                vt: Array2::zeros((0, n)),
            };
        }
        let (u, s, vt) = a
            .as_standard_layout()
            .svddc(JobSvd::Some)
            .unwrap_or_else(|e| panic!("linalg: LAPACK SVD of a {m}×{n} matrix failed: {e}"));
        Svd {
            u: u.expect("gesdd computed U")
                .as_standard_layout()
                .into_owned(),
            s: s.to_vec(),
            vt: vt
                .expect("gesdd computed Vᵀ")
                .as_standard_layout()
                .into_owned(),
        }
    }
}
