//! Dense kernels behind a small object-safe trait: [`Dense`].
//!
//! [`FaerDense`] (always available) uses faer 0.24; `LapackDense` (feature
//! `lapack`) uses ndarray-linalg / LAPACK (OpenBLAS). [`backend()`] returns the
//! one selected at compile time (LAPACK when the feature is on).
//!
//! # Conventions
//! All matrices are `f32`, ndarray at the boundary. Inputs may have any
//! strides: C-contiguous and F-contiguous views are handed to faer without a
//! copy, other layouts are copied once. Outputs are always standard (C,
//! row-major) layout, so `as_slice()` works on them.
//!
//! # Determinism
//! Every kernel is a pure function of its input and of the rayon thread count:
//! the same input gives bit-identical output on the same machine and build,
//! run after run, as long as the size of the rayon pool is the same
//! (`RAYON_NUM_THREADS`, or the pool a caller `install`s).
//!
//! [`FaerDense`] runs a kernel sequentially (`Par::Seq`) when its work
//! (`m·n·k` multiply-adds, `m·n·min(m,n)` for QR/SVD) is below [`PAR_WORK`]
//! and on the current rayon pool (`Par::rayon(0)`, i.e. as many parts as the
//! pool has threads) above it. Measured on faer 0.24.4 (test
//! `faer_determinism_with_respect_to_thread_count`, Seq and 1–4 threads):
//! * matmul is bit-identical for every thread count (faer splits the output
//!   among threads, not the inner-product sums; checked for matrix–matrix
//!   shapes, not for the matrix–vector special case);
//! * Householder QR and the SVD are **not**: with a different number of parts
//!   they round differently (a few ulps in `Q`/`R`, in the singular values and
//!   vectors; before sign normalisation even the signs of singular vectors
//!   may flip). Below [`PAR_WORK`] they run sequentially and are therefore
//!   independent of the thread count; above it, results agree across thread
//!   counts only to rounding.
//!
//! This is observed behaviour, not something faer documents; the test
//! re-checks it on upgrades. Results also differ, at the rounding level,
//! between CPUs with different SIMD support (faer dispatches AVX2/AVX-512 at
//! run time) and between backends. The OpenBLAS backend (`LapackDense`) is
//! reproducible run to run in the tests; its dependence on
//! `OPENBLAS_NUM_THREADS` has not been measured.
//!
//! Must not be chosen at run time or per call: one backend per build, so results do not depend on
//! which path a caller took.

use super::Svd;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::matmul::matmul;
use faer::{Accum, Conj, Mat, MatMut, MatRef, Par};
use ndarray::{Array2, ArrayView2};

/// Dense linear-algebra kernels used by `linalg`. Object safe, so a backend can
/// be chosen at run time as `&dyn Dense`.
pub trait Dense: Send + Sync {
    /// Short name for logs ("faer", "lapack").
    fn name(&self) -> &'static str;

    /// `a · b` for `a: m×k`, `b: k×n`. Panics on mismatched inner dimensions.
    fn matmul(&self, a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32>;

    /// `aᵀ · b` for `a: k×m`, `b: k×n`, without materialising `aᵀ`.
    fn matmul_tn(&self, a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
        self.matmul(a.t(), b)
    }

    /// Thin QR: `a = Q·R`, `a: m×n`, `Q: m×k` with orthonormal columns,
    /// `R: k×n` upper trapezoidal, `k = min(m, n)`. Householder based, so `Q`
    /// is orthonormal to working precision even when `a` is rank deficient
    /// (or zero). No sign convention on the diagonal of `R`.
    fn qr_thin(&self, a: ArrayView2<f32>) -> (Array2<f32>, Array2<f32>);

    /// Thin SVD: `a = U·diag(s)·Vᵀ`, `U: m×k`, `s: k` (non-negative,
    /// non-increasing), `Vᵀ: k×n`, `k = min(m, n)`. No sign convention
    /// (see [`Svd::normalize_signs`]).
    ///
    /// # Panics
    /// If the SVD iteration does not converge (in practice only for
    /// non-finite input).
    fn svd_thin(&self, a: ArrayView2<f32>) -> Svd;
}

/// Work (multiply-adds) from which [`FaerDense`] switches from `Par::Seq` to
/// `Par::rayon(0)`.
pub const PAR_WORK: usize = 1 << 21;

/// The faer backend (default).
#[derive(Clone, Copy, Debug, Default)]
pub struct FaerDense;

/// The faer backend instance.
pub static FAER: FaerDense = FaerDense;

/// The LAPACK backend instance (feature `lapack`).
#[cfg(feature = "lapack")]
pub static LAPACK: super::lapack::LapackDense = super::lapack::LapackDense;

/// The dense backend selected at compile time: `LapackDense` with feature
/// `lapack`, otherwise [`FaerDense`].
pub fn backend() -> &'static dyn Dense {
    #[cfg(feature = "lapack")]
    {
        &LAPACK
    }
    #[cfg(not(feature = "lapack"))]
    {
        &FAER
    }
}

/// Every backend compiled in (faer first). Used by tests and benchmarks.
pub fn all_backends() -> Vec<&'static dyn Dense> {
    #[allow(unused_mut)]
    let mut v: Vec<&'static dyn Dense> = vec![&FAER];
    #[cfg(feature = "lapack")]
    v.push(&LAPACK);
    v
}

fn par_for(work: usize) -> Par {
    if work >= PAR_WORK {
        Par::rayon(0)
    } else {
        Par::Seq
    }
}

/// Calls `f` with a faer view of `a`: zero-copy for C- or F-contiguous views,
/// otherwise through one standard-layout copy.
pub fn with_faer<R>(a: ArrayView2<'_, f32>, f: impl FnOnce(MatRef<'_, f32>) -> R) -> R {
    let (m, n) = a.dim();
    if let Some(s) = a.to_slice() {
        return f(MatRef::from_row_major_slice(s, m, n));
    }
    if let Some(s) = a.t().to_slice() {
        return f(MatRef::from_column_major_slice(s, m, n));
    }
    let owned = a.as_standard_layout();
    f(MatRef::from_row_major_slice(
        owned.as_slice().expect("standard layout"),
        m,
        n,
    ))
}

/// Copies a faer matrix into a C-order ndarray.
pub fn to_ndarray(a: MatRef<'_, f32>) -> Array2<f32> {
    let (m, n) = a.shape();
    let mut out = Array2::<f32>::zeros((m, n));
    if m * n > 0 {
        let slice = out.as_slice_mut().expect("fresh array is contiguous");
        MatMut::from_row_major_slice_mut(slice, m, n).copy_from(a);
    }
    out
}

/// `vzeroupper` where AVX exists. faer's AVX-512 matrix kernels return with the upper halves
/// of the vector registers dirty, after which every legacy-SSE instruction on that thread —
/// all scalar float code of a baseline x86-64 build, glibc's `log` and `sincos` — waits on a
/// merge with them: Box–Muller for a 4096×26 test matrix measured 26 ms after a faer QR and
/// 1.9 ms after this call. Called after every faer kernel.
#[inline]
pub fn clear_upper_vector_state() {
    #[cfg(target_arch = "x86_64")]
    // AVX2 (and so AVX) by the one detection; without it faer runs no 256-bit code.
    if crate::cpu::detected() >= crate::cpu::Level::Avx2 {
        #[target_feature(enable = "avx")]
        fn zeroupper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        // SAFETY: AVX2, hence AVX, was detected above.
        unsafe { zeroupper() }
    }
}

pub fn faer_matmul(a: MatRef<'_, f32>, b: MatRef<'_, f32>, par: Option<Par>) -> Array2<f32> {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    assert_eq!(
        k, k2,
        "linalg::matmul: inner dimensions differ ({m}×{k} · {k2}×{n})"
    );
    let mut out = Array2::<f32>::zeros((m, n));
    if m * n > 0 {
        let slice = out.as_slice_mut().expect("fresh array is contiguous");
        let dst = MatMut::from_row_major_slice_mut(slice, m, n);
        matmul(
            dst,
            Accum::Replace,
            a,
            b,
            1.0f32,
            par.unwrap_or_else(|| par_for(m.saturating_mul(n).saturating_mul(k))),
        );
        clear_upper_vector_state();
    }
    out
}

/// Aspect ratio above which an SVD starts with a QR (faer's own default, `11/6`): for a tall
/// `m×n` matrix a QR (`2mn²`) then a square SVD of `R` costs less than bidiagonalising `m×n`.
const QR_FIRST_RATIO: f64 = 11.0 / 6.0;

/// Thin QR, `a = Q·R` (`Q: m×k`, `R: k×n`, `k = min(m, n)`), that never drops a direction.
///
/// faer 0.24's f32 QR (`qr_in_place_unblocked`) skips the reflector of a column whose part below
/// the diagonal is under `ε·16·(m − row)·‖col‖` and treats it as rank-deficient: at m = 30 522 in
/// f32 that cut-off is 5.8 % of the column norm, so a tall matrix silently lost every direction
/// below it (`extract --exact` at 1.06× the Eckart–Young optimum on 30 522×64, a smallest
/// singular value of 0.00707 returned as 3e-11). Here blocks up to
/// [`householder::MAX_COLS`](super::householder::MAX_COLS) columns run in lorakit's own
/// Householder QR (LAPACK `geqr2`, no cut-off); anything else runs in faer's QR in **f64**,
/// whose cut-off (`2.2e-16·16·m`, 1e-10 of the column norm at m = 30 522) lies far below f32
/// resolution, and is rounded back once.
pub fn thin_qr(a: ArrayView2<'_, f32>, par: Option<Par>) -> (Array2<f32>, Array2<f32>) {
    if let Some(qr) = super::householder::qr_thin(a) {
        return qr;
    }
    with_faer(a, |fa| faer_qr(fa, par))
}

/// faer's blocked Householder QR in f64 (see [`thin_qr`] for why not f32).
pub fn faer_qr(a: MatRef<'_, f32>, par: Option<Par>) -> (Array2<f32>, Array2<f32>) {
    use faer::linalg::householder::{
        apply_block_householder_sequence_on_the_left_in_place_scratch,
        apply_block_householder_sequence_on_the_left_in_place_with_conj,
    };
    use faer::linalg::qr::no_pivoting::factor::{
        qr_in_place, qr_in_place_scratch, recommended_block_size,
    };
    let (m, n) = a.shape();
    let k = m.min(n);
    if k == 0 {
        return (Array2::zeros((m, 0)), Array2::zeros((0, n)));
    }
    let par = par.unwrap_or_else(|| par_for(m.saturating_mul(n).saturating_mul(k)));
    let mut qr = Mat::<f64>::from_fn(m, n, |i, j| a[(i, j)] as f64);
    let bs = recommended_block_size::<f64>(m, n);
    let mut coeff = Mat::<f64>::zeros(bs, k);
    qr_in_place(
        qr.as_mut(),
        coeff.as_mut(),
        par,
        MemStack::new(&mut MemBuffer::new(qr_in_place_scratch::<f64>(
            m,
            n,
            bs,
            par,
            Default::default(),
        ))),
        Default::default(),
    );
    // R: upper trapezoidal k×n.
    let mut r = Array2::<f32>::zeros((k, n));
    for j in 0..n {
        for i in 0..=j.min(k - 1) {
            r[[i, j]] = qr[(i, j)] as f32;
        }
    }
    // Householder basis: unit lower trapezoidal m×k.
    let mut basis = Mat::<f64>::zeros(m, k);
    for j in 0..k {
        basis[(j, j)] = 1.0;
        for i in j + 1..m {
            basis[(i, j)] = qr[(i, j)];
        }
    }
    let mut q = Mat::<f64>::identity(m, k);
    apply_block_householder_sequence_on_the_left_in_place_with_conj(
        basis.as_ref(),
        coeff.as_ref(),
        Conj::No,
        q.as_mut(),
        par,
        MemStack::new(&mut MemBuffer::new(
            apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(m, bs, k),
        )),
    );
    clear_upper_vector_state();
    let q = Array2::from_shape_fn((m, k), |(i, j)| q[(i, j)] as f32);
    (q, r)
}

/// Thin SVD through faer, without faer's f32 QR (see [`thin_qr`]): a tall matrix
/// (`m/n >` [`QR_FIRST_RATIO`]) is reduced by [`thin_qr`] to its `n×n` `R` first
/// (`A = Q·R = (Q·U_R)·Σ·Vᵀ`), a wide one goes through its transpose, and faer only ever
/// bidiagonalises a square-ish matrix (its own QR-first step is switched off).
pub fn faer_svd(a: ArrayView2<'_, f32>, par: Option<Par>) -> Svd {
    let (m, n) = a.dim();
    let k = m.min(n);
    if k == 0 {
        return Svd {
            u: Array2::zeros((m, 0)),
            s: Vec::new(),
            vt: Array2::zeros((0, n)),
        };
    }
    if n as f64 / m as f64 > QR_FIRST_RATIO {
        let t = faer_svd(a.t(), par);
        return Svd {
            u: t.vt.t().as_standard_layout().into_owned(),
            s: t.s,
            vt: t.u.t().as_standard_layout().into_owned(),
        };
    }
    if m as f64 / n as f64 > QR_FIRST_RATIO {
        let (q, r) = thin_qr(a, par);
        let small = with_faer(r.view(), |fr| faer_svd_squareish(fr, par));
        let u = with_faer(q.view(), |fq| {
            with_faer(small.u.view(), |fu| faer_matmul(fq, fu, par))
        });
        return Svd {
            u,
            s: small.s,
            vt: small.vt,
        };
    }
    with_faer(a, |fa| faer_svd_squareish(fa, par))
}

/// faer's SVD with its QR-first step disabled (`qr_ratio_threshold = ∞`).
///
/// A finite matrix with entries past 2³² (sums of squares near f32's range) is first scaled
/// into [½, 1) by a power of two, and `s` scaled back in f64 (exact both ways; ∞ where the
/// true value is past f32): faer answers NoConvergence on such a matrix itself. Other
/// matrices take the unchanged path, bit for bit.
fn faer_svd_squareish(a: MatRef<'_, f32>, par: Option<Par>) -> Svd {
    let mut big = 0f32;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            big = big.max(a[(i, j)].abs());
        }
    }
    if big.is_finite() && big > (1u64 << 32) as f32 {
        let e = (big as f64).log2().floor() as i32 + 1;
        let down = Mat::<f32>::from_fn(a.nrows(), a.ncols(), |i, j| {
            (a[(i, j)] as f64 * 2f64.powi(-e)) as f32
        });
        let mut svd = faer_svd_plain(down.as_ref(), par);
        let up = 2f64.powi(e);
        svd.s.iter_mut().for_each(|x| *x = (*x as f64 * up) as f32);
        return svd;
    }
    faer_svd_plain(a, par)
}

/// [`faer_svd_squareish`] without the scaling.
fn faer_svd_plain(a: MatRef<'_, f32>, par: Option<Par>) -> Svd {
    use faer::linalg::svd::{svd, svd_scratch, ComputeSvdVectors, SvdParams};
    use faer::Auto;
    let (m, n) = a.shape();
    let k = m.min(n);
    let par = par.unwrap_or_else(|| par_for(m.saturating_mul(n).saturating_mul(k)));
    let params = SvdParams {
        qr_ratio_threshold: f64::INFINITY,
        ..<SvdParams as Auto<f32>>::auto()
    };
    let mut u = Mat::<f32>::zeros(m, k);
    let mut v = Mat::<f32>::zeros(n, k);
    let mut s = faer::diag::Diag::<f32>::zeros(k);
    svd(
        a,
        s.as_mut(),
        Some(u.as_mut()),
        Some(v.as_mut()),
        par,
        MemStack::new(&mut MemBuffer::new(svd_scratch::<f32>(
            m,
            n,
            ComputeSvdVectors::Thin,
            ComputeSvdVectors::Thin,
            par,
            params.into(),
        ))),
        params.into(),
    )
    .unwrap_or_else(|e| panic!("linalg: faer SVD of a {m}×{n} matrix failed: {e:?}"));
    clear_upper_vector_state();
    let s: Vec<f32> = s.column_vector().iter().copied().collect();
    Svd {
        u: to_ndarray(u.as_ref()),
        s,
        vt: to_ndarray(v.as_ref().transpose()),
    }
}

impl Dense for FaerDense {
    fn name(&self) -> &'static str {
        "faer"
    }

    fn matmul(&self, a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
        with_faer(a, |fa| with_faer(b, |fb| faer_matmul(fa, fb, None)))
    }

    fn qr_thin(&self, a: ArrayView2<f32>) -> (Array2<f32>, Array2<f32>) {
        thin_qr(a, None)
    }

    fn svd_thin(&self, a: ArrayView2<f32>) -> Svd {
        faer_svd(a, None)
    }
}
