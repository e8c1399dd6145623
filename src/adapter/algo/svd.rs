//! The one thin SVD the base-dependent updates share (PiSSA/OLoRA/KaSA residuals in
//! `ops::merge::residual`, PEFT OSF's removed low part in [`super::peft_tuners`]): faer in f64,
//! sequential so the bytes do not depend on the thread count.
//!
//! Must not know file layouts or key names.

use faer::{Mat, Par};

/// `(U, σ, V)` of a thin SVD.
pub type Triplets = (Mat<f64>, Vec<f64>, Mat<f64>);

/// faer's thin SVD in f64, sequential (its parallel SVD rounds differently with the thread
/// count): `(U, σ, V)`.
pub fn thin_svd(m: &Mat<f64>) -> Result<Triplets, String> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::svd::{svd, svd_scratch, ComputeSvdVectors};
    let (rows, cols) = m.shape();
    let k = rows.min(cols);
    let mut u = Mat::<f64>::zeros(rows, k);
    let mut v = Mat::<f64>::zeros(cols, k);
    let mut s = faer::diag::Diag::<f64>::zeros(k);
    let params = Default::default();
    svd(
        m.as_ref(),
        s.as_mut(),
        Some(u.as_mut()),
        Some(v.as_mut()),
        Par::Seq,
        MemStack::new(&mut MemBuffer::new(svd_scratch::<f64>(
            rows,
            cols,
            ComputeSvdVectors::Thin,
            ComputeSvdVectors::Thin,
            Par::Seq,
            params,
        ))),
        params,
    )
    .map_err(|e| format!("the SVD of the base weight did not converge ({e:?})"))?;
    Ok((u, s.column_vector().iter().copied().collect(), v))
}
