//! Low-rank linear algebra for LoRA adapters: thin/exact SVD, randomized SVD,
//! SVD of factored products `s·B·A`, and rank selection.
//!
//! # Notation and contract
//!
//! Matrices are `f32` ndarray arrays (row-major at the boundary); sums of
//! squares (energies, norms) are accumulated in `f64`. `ε = 2⁻²⁴` is the
//! `f32` unit roundoff.
//!
//! An [`Svd`] of a real `m×n` matrix `M` holds `U` (`m×r`), `s` (`r`) and `Vᵀ`
//! (`r×n`) with
//!
//! * `UᵀU = I_r`, `VᵀV = I_r` (to working precision),
//! * `s₁ ≥ s₂ ≥ … ≥ s_r ≥ 0`,
//! * `M ≈ U·diag(s)·Vᵀ`: exactly (to rounding) when `r = min(m, n)` ("thin"),
//!   and the rank-`r` truncation otherwise;
//! * signs normalised: in each column of `U` the entry of largest magnitude
//!   (first one on ties) is positive, the matching row of `Vᵀ` carrying the
//!   sign ([`Svd::normalize_signs`]). This makes the factors unique up to
//!   rounding whenever the singular values are distinct.
//!
//! **Eckart–Young–Mirsky.** With `M_k = U_k·diag(s_1..s_k)·V_kᵀ` (first `k`
//! triplets), every `X` with `rank X ≤ k` satisfies
//! `‖M − X‖_F² ≥ ‖M − M_k‖_F² = Σ_{i>k} sᵢ²` ([`tail_energy`]) and
//! `‖M − X‖₂ ≥ ‖M − M_k‖₂ = s_{k+1}`. Truncating an SVD is therefore the
//! optimal rank reduction in both norms; [`split_factors`] turns `M_k` into
//! LoRA factors `B = U_k·√S_k` (`m×k`), `A = √S_k·V_kᵀ` (`k×n`), `B·A = M_k`.
//!
//! # Algorithms
//!
//! * [`exact_svd`]: dense thin SVD by the [`Dense`] backend (faer, or LAPACK
//!   `?gesdd` with feature `lapack`). Backward stable: the result is the exact
//!   SVD of `M + E` with `‖E‖₂ ≤ c(m,n)·ε·‖M‖₂`, hence (Weyl)
//!   `|ŝᵢ − sᵢ| ≤ c(m,n)·ε·s₁` for every `i`.
//! * [`randomized_svd`]: Halko, Martinsson & Tropp (2011), "Finding
//!   structure with randomness: probabilistic algorithms for constructing
//!   approximate matrix decompositions", SIAM Review 53(2):217–288.
//!   Algorithm 4.4 (randomized subspace iteration): with `l = k + p`
//!   (`k = rank`, `p = oversample`) and a Gaussian test matrix `Ω` (`n×l`),
//!   `Q₀ = qr(MΩ)`, then for `j = 1..q` (`q = power_iters`)
//!   `Q̃ⱼ = qr(MᵀQ_{j−1})`, `Qⱼ = qr(MQ̃ⱼ)`; re-orthonormalising after every
//!   product keeps the small singular directions from being lost to
//!   rounding. Algorithm 5.1 (direct SVD): `B = QᵀM` (`l×n`, formed as
//!   `(MᵀQ)ᵀ` with one [`LinearOperator::apply_t`]), `B = Ũ·Σ·Vᵀ`,
//!   `U = Q·Ũ`; the result is truncated to `k`. The operator is touched only
//!   through `2q + 2` block products with `l` columns. Expected error
//!   (HMT Cor. 10.10, spectral norm, `p ≥ 2`): `E‖M − QQᵀM‖₂ ≤
//!   [(1 + √(k/(p−1)))·s_{k+1}^{2q+1} + (e√(k+p)/p)·(Σ_{j>k}
//!   s_j^{2(2q+1)})^{1/2}]^{1/(2q+1)}`. The final truncation to rank `k` adds
//!   at most `s_{k+1}`: `‖M − Q·B_k‖₂ ≤ ‖M − QB‖₂ + σ_{k+1}(B)` and
//!   `σ_{k+1}(QᵀM) ≤ s_{k+1}`. In
//!   practice with the defaults (`p = 10`, `q = 2`) the Frobenius error is
//!   within 0.1 % of the Eckart–Young optimum `(Σ_{i>k} sᵢ²)^{1/2}` on
//!   decaying spectra (checked by the tests), and exact-rank matrices of rank
//!   `≤ k` are recovered to rounding. When `l ≥ min(m, n)` nothing is gained
//!   by sampling and the exact SVD of the (materialised) operator is used.
//! * [`factored_svd`]: the SVD of `ΔW = s·B·A` (`B: d×r`, `A: r×k`) without
//!   forming the `d×k` product. With thin QRs `B = Q_b·R_b` and
//!   `Aᵀ = Q_a·R_a`, `s·B·A = Q_b·(s·R_b·R_aᵀ)·Q_aᵀ`; the SVD of the small core
//!   `s·R_b·R_aᵀ = Ũ·Σ·Ṽᵀ` gives `U = Q_b·Ũ`, `Vᵀ = (Q_a·Ṽ)ᵀ`, with exactly
//!   the singular values of `ΔW` (orthonormal factors preserve them). The
//!   result has `min(d, r, k)` triplets (thin QR takes `min` dimensions, so
//!   `r > d` or `r > k` is fine); those beyond `rank ΔW` are `0` up to
//!   rounding. Cost `O((d + k)·r² + r³)` instead of `O(d·k·r + d·k·min(d,k))`.
//!   The computed triplets are the exact SVD of `s·(B + δB)·(A + δA)` with
//!   `‖δB‖ ≤ c·ε·‖B‖`, `‖δA‖ ≤ c·ε·‖A‖`, so
//!   `|ŝᵢ − sᵢ| ≤ c·ε·|s|·‖B‖₂·‖A‖₂`.
//! * [`stacked_factored_svd`]: `Σᵢ sᵢ·Bᵢ·Aᵢ = [s₁B₁ … sₙBₙ]·[A₁; …; Aₙ]`, one
//!   factored SVD of the stacked factors (rank `≤ Σ rᵢ`).
//!
//! # Rank selection
//!
//! See [`rank_for_energy`] (smallest `k` whose leading `k` triplets carry a
//! fraction `≥ energy` of `‖M‖_F²`) and [`rank_for_sv_ratio`] (kohya-ss
//! `resize_lora.py --dynamic_method sv_ratio`, bit-for-bit rule).
//!
//! # Determinism
//!
//! Every function here is deterministic: the same input (and, for
//! [`randomized_svd`], the same [`RsvdOptions::seed`]) gives bit-identical
//! output on the same machine and build with the same rayon pool size. The
//! faer GEMM is independent of the thread count, but faer's QR/SVD above
//! [`dense::PAR_WORK`] work are not: with a different number of threads the
//! results agree only to rounding (see [`dense`]). Different CPUs (SIMD
//! level) or backends also round differently.
//!
//! # Panics
//!
//! The SVD drivers check their input (or, for operators, the first sample
//! `MΩ`) for NaN/∞ and panic with a message naming the function: a singular
//! value decomposition of non-finite data is meaningless, and the iterative
//! SVD may not converge on it. Callers handling untrusted tensors should
//! check [`all_finite`] first and report a proper error. Shape mismatches
//! also panic.

pub mod cpu;
pub mod dense;
pub mod householder;
#[cfg(feature = "lapack")]
pub mod lapack;
pub mod rng;
pub mod skinny;

#[cfg(test)]
mod tests;

pub use dense::{all_backends, backend, Dense, FaerDense};
#[cfg(feature = "lapack")]
pub use lapack::LapackDense;

use ndarray::{s, Array2, ArrayView2};

/// A (possibly truncated) singular value decomposition `M ≈ U·diag(s)·Vᵀ`.
#[derive(Clone, Debug, PartialEq)]
pub struct Svd {
    /// Left singular vectors, `m×r`, orthonormal columns.
    pub u: Array2<f32>,
    /// Singular values, length `r`, non-negative and non-increasing.
    pub s: Vec<f32>,
    /// Right singular vectors transposed, `r×n`, orthonormal rows.
    pub vt: Array2<f32>,
}

impl Svd {
    /// Number of triplets `r`.
    pub fn rank(&self) -> usize {
        self.s.len()
    }

    /// Keeps the first `min(rank, r)` triplets.
    pub fn truncate(mut self, rank: usize) -> Svd {
        let r = rank.min(self.s.len());
        if r < self.s.len() {
            self.s.truncate(r);
            self.u = self.u.slice(s![.., ..r]).to_owned();
            self.vt = self.vt.slice(s![..r, ..]).to_owned();
        }
        self
    }

    /// `U·diag(s)·Vᵀ` (`m×n`), with the default backend.
    pub fn reconstruct(&self) -> Array2<f32> {
        let us = scale_columns(self.u.view(), &self.s);
        backend().matmul(us.view(), self.vt.view())
    }

    /// Flips the sign of each pair (column `i` of `U`, row `i` of `Vᵀ`) so
    /// that the entry of largest magnitude in `U[:, i]` (the first one on
    /// ties) is positive. `U·diag(s)·Vᵀ` is unchanged.
    pub fn normalize_signs(&mut self) {
        for i in 0..self.s.len() {
            let col = self.u.column(i);
            let mut best = 0.0f32;
            let mut sign_neg = false;
            for &x in col.iter() {
                if x.abs() > best {
                    best = x.abs();
                    sign_neg = x < 0.0;
                }
            }
            if sign_neg {
                self.u.column_mut(i).mapv_inplace(|x| -x);
                self.vt.row_mut(i).mapv_inplace(|x| -x);
            }
        }
    }

    fn empty(m: usize, n: usize) -> Svd {
        Svd {
            u: Array2::zeros((m, 0)),
            s: Vec::new(),
            vt: Array2::zeros((0, n)),
        }
    }
}

/// `X·diag(d)` (scales column `j` by `d[j]`).
fn scale_columns(x: ArrayView2<f32>, d: &[f32]) -> Array2<f32> {
    assert_eq!(x.ncols(), d.len());
    let mut out = x.as_standard_layout().into_owned();
    for mut row in out.rows_mut() {
        for (v, &dj) in row.iter_mut().zip(d) {
            *v *= dj;
        }
    }
    out
}

/// True when every entry is finite (no NaN, no ±∞).
pub fn all_finite(a: ArrayView2<f32>) -> bool {
    a.iter().all(|x| x.is_finite())
}

fn assert_finite(a: ArrayView2<f32>, what: &str) {
    assert!(
        all_finite(a),
        "linalg::{what}: input contains NaN or infinite values"
    );
}

// ---------------------------------------------------------------------------
// Linear operators
// ---------------------------------------------------------------------------

/// A real `rows×cols` matrix `M` known through products with blocks of
/// vectors. Object safe: `randomized_svd` takes `&dyn LinearOperator`, so an
/// implementation may compute the products anywhere (e.g. on a GPU, for
/// `M = W − W₀` without materialising `M` on the host).
///
/// Contract: `apply` and `apply_t` are linear in their argument, consistent
/// with each other (`apply_t` is the transpose of `apply`) and deterministic.
pub trait LinearOperator {
    /// Number of rows `m` of `M`.
    fn rows(&self) -> usize;
    /// Number of columns `n` of `M`.
    fn cols(&self) -> usize;
    /// `M·X` for `X: n×l`; returns `m×l`.
    fn apply(&self, x: ArrayView2<f32>) -> Array2<f32>;
    /// `Mᵀ·Y` for `Y: m×l`; returns `n×l`.
    fn apply_t(&self, y: ArrayView2<f32>) -> Array2<f32>;

    /// The matrix itself when it is available in host memory (lets the exact
    /// fallback of `randomized_svd` skip materialisation). Default: `None`.
    fn as_dense(&self) -> Option<ArrayView2<'_, f32>> {
        None
    }

    /// `M` as a dense `m×n` array: [`Self::as_dense`] if available, else
    /// `M·I_n` or `(Mᵀ·I_m)ᵀ`, whichever has fewer columns to apply.
    fn to_dense(&self) -> Array2<f32> {
        if let Some(a) = self.as_dense() {
            return a.as_standard_layout().into_owned();
        }
        let (m, n) = (self.rows(), self.cols());
        if n <= m {
            self.apply(Array2::<f32>::eye(n).view())
        } else {
            self.apply_t(Array2::<f32>::eye(m).view())
                .reversed_axes()
                .as_standard_layout()
                .into_owned()
        }
    }
}

/// A dense host matrix as a [`LinearOperator`].
#[derive(Clone, Copy)]
pub struct DenseOp<'a> {
    pub a: ArrayView2<'a, f32>,
    pub dense: &'a dyn Dense,
}

impl<'a> DenseOp<'a> {
    /// Wraps `a`, computing products with [`backend()`].
    pub fn new(a: ArrayView2<'a, f32>) -> Self {
        Self {
            a,
            dense: backend(),
        }
    }

    /// Wraps `a`, computing products with `dense`.
    pub fn with_backend(a: ArrayView2<'a, f32>, dense: &'a dyn Dense) -> Self {
        Self { a, dense }
    }
}

impl LinearOperator for DenseOp<'_> {
    fn rows(&self) -> usize {
        self.a.nrows()
    }
    fn cols(&self) -> usize {
        self.a.ncols()
    }
    fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.dense.matmul(self.a, x)
    }
    fn apply_t(&self, y: ArrayView2<f32>) -> Array2<f32> {
        self.dense.matmul_tn(self.a, y)
    }
    fn as_dense(&self) -> Option<ArrayView2<'_, f32>> {
        Some(self.a)
    }
}

// ---------------------------------------------------------------------------
// SVD drivers
// ---------------------------------------------------------------------------

/// Options of [`randomized_svd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RsvdOptions {
    /// Extra sample columns `p` (test matrix has `rank + p` columns).
    pub oversample: usize,
    /// Number `q` of power (subspace) iterations.
    pub power_iters: usize,
    /// Seed of the Gaussian test matrix ([`rng::gaussian_matrix`]).
    pub seed: u64,
}

impl Default for RsvdOptions {
    /// `oversample = 10`, `power_iters = 2`, `seed = 0`.
    fn default() -> Self {
        Self {
            oversample: 10,
            power_iters: 2,
            seed: 0,
        }
    }
}

/// Thin SVD of `a` (`m×n`), all `min(m, n)` triplets, signs normalised.
/// Uses [`backend()`].
///
/// # Panics
/// If `a` contains NaN/∞.
pub fn exact_svd(a: ArrayView2<f32>) -> Svd {
    exact_svd_with(backend(), a)
}

/// [`exact_svd`] with an explicit backend.
pub fn exact_svd_with(dense: &dyn Dense, a: ArrayView2<f32>) -> Svd {
    assert_finite(a, "exact_svd");
    let mut svd = dense.svd_thin(a);
    svd.normalize_signs();
    svd
}

/// Rank-`rank` SVD of the operator `M` (`m×n`) by randomized subspace
/// iteration (HMT Alg. 4.4 + 5.1; see the module docs for the algorithm and
/// error bounds). Returns `min(rank, m, n)` triplets, signs normalised.
///
/// Falls back to the exact SVD (truncated) when
/// `rank + oversample ≥ min(m, n)`. Deterministic given `opts.seed`.
///
/// # Panics
/// If `M·Ω` contains NaN/∞ (non-finite operator), or if an operator returns
/// a block of the wrong shape.
pub fn randomized_svd(op: &dyn LinearOperator, rank: usize, opts: &RsvdOptions) -> Svd {
    randomized_svd_with(backend(), op, rank, opts)
}

/// [`randomized_svd`] with an explicit backend for the QR/SVD/matmul kernels
/// (the operator computes its own products).
pub fn randomized_svd_with(
    dense: &dyn Dense,
    op: &dyn LinearOperator,
    rank: usize,
    opts: &RsvdOptions,
) -> Svd {
    subspace_iteration(dense, op, rank, opts, None).0
}

/// SVD of `scale·B·A` (`B: d×r`, `A: r×k`) without forming the `d×k` product
/// (QR of `B` and `Aᵀ`, SVD of the `r×r` core; see the module docs).
/// Returns `min(d, r, k)` triplets, signs normalised; uses [`backend()`].
///
/// # Panics
/// If `B.ncols() != A.nrows()` or an input contains NaN/∞.
pub fn factored_svd(b: ArrayView2<f32>, a: ArrayView2<f32>, scale: f32) -> Svd {
    factored_svd_with(backend(), b, a, scale)
}

/// The default oversampling for a rank-`r` sketch: `max(10, r/2)`. A fixed 10 is HMT's advice
/// for a spectrum with a gap; without one (power laws), a rank-64 sketch needs more columns than
/// extra iterations to converge, and columns are the cheaper of the two.
pub fn default_oversample(rank: usize) -> usize {
    (rank / 2).max(10)
}

/// How [`randomized_svd_adaptive_with`] decides to stop iterating.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveStop {
    /// At most this many power iterations in all.
    pub max_power_iters: usize,
    /// Allowed excess of the rank-`r` tail energy over its limit, relative:
    /// `‖M − M_r‖²` within `(1 + tol)` of what further iterations would reach (as estimated
    /// from the geometric decrease of the tail; see the function). `1e-4` makes the error
    /// itself ≤ 1.00005× that limit.
    pub tail_tol: f64,
}

impl Default for AdaptiveStop {
    /// `max_power_iters = 10`, `tail_tol = 1e-4`.
    fn default() -> Self {
        Self {
            max_power_iters: 10,
            tail_tol: 1e-4,
        }
    }
}

/// [`randomized_svd_with`] with as many power iterations as the operator's spectrum needs:
/// at least `opts.power_iters`, then more while they still lower the error, at most
/// `stop.max_power_iters`. Returns the SVD and the number of iterations run.
///
/// Real fine-tuning deltas decay as power laws without a gap, where a fixed two iterations
/// leave up to ~1 % excess error at rank 64; slow tails need more (HMT 2011 §4.5, the error of
/// subspace iteration falls as `(σ_{l+1}/σ_r)^{2q+1}`). The rank-`r` captured energy
/// `E_q = Σ_{i<r} sᵢ(QᵀM)²` after iteration `q` comes free from `MᵀQ`, which the next iteration
/// (or the final Rayleigh–Ritz step) computes anyway; with `‖M‖²_F = norm_sq` known exactly the
/// tail is `T_q = norm_sq − E_q`. The decrease `Δ_q = E_q − E_{q−1}` shrinks geometrically with
/// ratio `ρ = Δ_q/Δ_{q−1}`, so the tail still to gain is about `Δ_q·ρ/(1 − ρ)`; iteration stops
/// when that is ≤ `stop.tail_tol·T_q`, or when `Δ_q` is below the f32 rounding of `E_q`.
pub fn randomized_svd_adaptive_with(
    dense: &dyn Dense,
    op: &dyn LinearOperator,
    rank: usize,
    opts: &RsvdOptions,
    stop: &AdaptiveStop,
    norm_sq: f64,
) -> (Svd, usize) {
    subspace_iteration(dense, op, rank, opts, Some((stop, norm_sq)))
}

/// HMT Alg. 4.4 + 5.1, shared by [`randomized_svd_with`] (`stop = None`: exactly
/// `opts.power_iters` iterations) and [`randomized_svd_adaptive_with`] (the stopping rule
/// documented there, with `‖M‖²_F`). Both run the same products in the same order, so a fixed
/// count gives the same bits either way.
fn subspace_iteration(
    dense: &dyn Dense,
    op: &dyn LinearOperator,
    rank: usize,
    opts: &RsvdOptions,
    stop: Option<(&AdaptiveStop, f64)>,
) -> (Svd, usize) {
    let (m, n) = (op.rows(), op.cols());
    let kmax = m.min(n);
    let rank = rank.min(kmax);
    if rank == 0 {
        return (Svd::empty(m, n), 0);
    }
    let l = rank.saturating_add(opts.oversample);
    if l >= kmax {
        let svd = match op.as_dense() {
            Some(a) => exact_svd_with(dense, a),
            None => exact_svd_with(dense, op.to_dense().view()),
        };
        return (svd.truncate(rank), 0);
    }
    let apply = |x: ArrayView2<f32>| {
        let y = op.apply(x);
        assert_eq!(y.dim(), (m, x.ncols()), "LinearOperator::apply shape");
        y
    };
    let apply_t = |y: ArrayView2<f32>| {
        let x = op.apply_t(y);
        assert_eq!(x.dim(), (n, y.ncols()), "LinearOperator::apply_t shape");
        x
    };
    // Σ of the r largest squared singular values of `z` (n×l), in f64.
    let captured = |z: &Array2<f32>| -> f64 {
        let s = dense.svd_thin(z.view()).s;
        s.iter().take(rank).map(|&x| (x as f64) * (x as f64)).sum()
    };
    let omega = rng::gaussian_matrix(n, l, opts.seed);
    let y = apply(omega.view());
    assert_finite(y.view(), "randomized_svd (operator output)");
    let mut q = dense.qr_thin(y.view()).0;
    let mut z = apply_t(q.view());
    let max_iters = stop.map_or(opts.power_iters, |(s, _)| {
        s.max_power_iters.max(opts.power_iters)
    });
    let mut energy = stop.map_or(0.0, |_| captured(&z));
    let (mut prev_gain, mut iters) = (f64::NAN, 0usize);
    while iters < max_iters {
        let qz = dense.qr_thin(z.view()).0;
        let y = apply(qz.view());
        q = dense.qr_thin(y.view()).0;
        z = apply_t(q.view());
        iters += 1;
        let Some((stop, norm_sq)) = stop else {
            continue;
        };
        let e = captured(&z);
        let gain = e - energy;
        energy = e;
        if iters >= opts.power_iters {
            let tail = (norm_sq - energy).max(0.0);
            let floor = 64.0 * f32::EPSILON as f64 * energy;
            let rho = gain / prev_gain;
            let converged = gain <= floor
                || (rho.is_finite()
                    && rho < 1.0
                    && gain * rho / (1.0 - rho) <= stop.tail_tol * tail);
            if converged {
                break;
            }
        }
        prev_gain = gain;
    }
    // Bᵀ = MᵀQ (n×l) is `z`; B = QᵀM = Ũ Σ Vᵀ.
    let small = dense.svd_thin(z.t());
    let u = dense.matmul(q.view(), small.u.view());
    let mut svd = Svd {
        u,
        s: small.s,
        vt: small.vt,
    }
    .truncate(rank);
    svd.normalize_signs();
    (svd, iters)
}

/// [`factored_svd`] with an explicit backend.
pub fn factored_svd_with(
    dense: &dyn Dense,
    b: ArrayView2<f32>,
    a: ArrayView2<f32>,
    scale: f32,
) -> Svd {
    assert_eq!(
        b.ncols(),
        a.nrows(),
        "linalg::factored_svd: B is {:?} but A is {:?} (B.ncols must equal A.nrows)",
        b.dim(),
        a.dim()
    );
    assert_finite(b, "factored_svd (B)");
    assert_finite(a, "factored_svd (A)");
    assert!(scale.is_finite(), "linalg::factored_svd: scale is {scale}");
    let (d, k) = (b.nrows(), a.ncols());
    if d.min(k).min(b.ncols()) == 0 {
        return Svd::empty(d, k);
    }
    let (qb, mut rb) = dense.qr_thin(b);
    let (qa, ra) = dense.qr_thin(a.t());
    rb.mapv_inplace(|x| x * scale);
    let core = dense.matmul(rb.view(), ra.t());
    let small = dense.svd_thin(core.view());
    let u = dense.matmul(qb.view(), small.u.view());
    let vt = dense.matmul(small.vt.view(), qa.t());
    let mut svd = Svd { u, s: small.s, vt };
    svd.normalize_signs();
    svd
}

/// SVD of `b·a` (`b: d×m`, `a: m×k`, f64) computed in f64 throughout — faer's thin QRs of `b`
/// and `aᵀ`, the SVD of the small core `R_b·R_aᵀ`, the products `Q_b·U`, `Vᵀ·Q_aᵀ` — and rounded
/// to f32 once. Returns `min(d, m, k)` triplets, signs normalised as [`factored_svd`].
///
/// For factors whose product cancels (a LoHa's rank-r² Khatri–Rao form, whose `‖P‖·‖Q‖` exceeds
/// `‖P·Q‖`) the f32 path's rounding of `R_b`, the core and its SVD perturbs a singular vector by
/// about `ε₃₂·σ₁/(σᵢ − σᵢ₊₁)`: at a 2 % gap, 1.6e-5 of the truncated ΔW (sweep9, a PEFT LoHa of
/// r = 6 on 32×32 lowered to rank 1). In f64 the result is the exact truncation up to the final
/// f32 rounding.
///
/// # Panics
/// If `b.ncols() != a.nrows()`, an input is non-finite, or faer's SVD does not converge.
pub fn factored_svd_f64(b: ArrayView2<f64>, a: ArrayView2<f64>) -> Svd {
    use faer::Mat;
    assert_eq!(
        b.ncols(),
        a.nrows(),
        "linalg::factored_svd_f64: B is {:?} but A is {:?} (B.ncols must equal A.nrows)",
        b.dim(),
        a.dim()
    );
    assert!(
        b.iter().chain(a.iter()).all(|x| x.is_finite()),
        "linalg::factored_svd_f64: input contains NaN or infinite values"
    );
    let (d, m, k) = (b.nrows(), b.ncols(), a.ncols());
    if d.min(k).min(m) == 0 {
        return Svd::empty(d, k);
    }
    let qr_b = Mat::<f64>::from_fn(d, m, |i, j| b[[i, j]]).qr();
    let qr_a = Mat::<f64>::from_fn(k, m, |i, j| a[[j, i]]).qr();
    let (qb, qa) = (qr_b.compute_thin_Q(), qr_a.compute_thin_Q());
    let core = qr_b.thin_R() * qr_a.thin_R().transpose();
    let small = core.thin_svd().unwrap_or_else(|e| {
        panic!(
            "linalg: faer f64 SVD of a {:?} core failed: {e:?}",
            core.shape()
        )
    });
    let u = &qb * small.U();
    let v = &qa * small.V();
    dense::clear_upper_vector_state();
    let t = small.S().column_vector().nrows();
    let mut svd = Svd {
        u: Array2::from_shape_fn((d, t), |(i, j)| u[(i, j)] as f32),
        s: small
            .S()
            .column_vector()
            .iter()
            .map(|&x| x as f32)
            .collect(),
        vt: Array2::from_shape_fn((t, k), |(i, j)| v[(j, i)] as f32),
    };
    svd.normalize_signs();
    svd
}

/// Full thin SVD of `a` (`m×n`, f32 values widened exactly) computed in f64 by faer and rounded
/// to f32 once. Returns `min(m, n)` triplets, signs normalised as [`exact_svd`].
///
/// The f32 SVD perturbs the leading `k` singular vectors by about `ε₃₂·σ₁/(σ_k − σ_{k+1})`, so a
/// truncation at a gap of 1–2 % of σ₁ lands ~2e-5 (of max |ΔW_k|) off the exact one (sweep10:
/// `extract --exact` on 24×36 and 20×24 deltas); in f64 it is the exact truncation up to the
/// final f32 rounding (the argument of [`factored_svd_f64`]).
///
/// # Panics
/// If an input is non-finite, or faer's SVD does not converge.
pub fn exact_svd_f64(a: ArrayView2<f32>) -> Svd {
    use faer::Mat;
    assert_finite(a, "exact_svd_f64");
    let (m, n) = a.dim();
    if m.min(n) == 0 {
        return Svd::empty(m, n);
    }
    let w = Mat::<f64>::from_fn(m, n, |i, j| a[[i, j]] as f64);
    let svd = w
        .thin_svd()
        .unwrap_or_else(|e| panic!("linalg: faer f64 SVD of a {m}×{n} matrix failed: {e:?}"));
    dense::clear_upper_vector_state();
    let t = svd.S().column_vector().nrows();
    let (u, v) = (svd.U(), svd.V());
    let mut out = Svd {
        u: Array2::from_shape_fn((m, t), |(i, j)| u[(i, j)] as f32),
        s: svd.S().column_vector().iter().map(|&x| x as f32).collect(),
        vt: Array2::from_shape_fn((t, n), |(i, j)| v[(j, i)] as f32),
    };
    out.normalize_signs();
    out
}

/// SVD of `Σᵢ sᵢ·Bᵢ·Aᵢ` for `terms = [(Bᵢ, Aᵢ, sᵢ)]` (`Bᵢ: d×rᵢ`,
/// `Aᵢ: rᵢ×k`), as the factored SVD of `[s₁B₁ … sₙBₙ]` (`d×R`) times
/// `[A₁; …; Aₙ]` (`R×k`), `R = Σ rᵢ`. Returns `min(d, R, k)` triplets.
///
/// # Panics
/// If `terms` is empty, the terms disagree on `d` or `k`, a `Bᵢ.ncols()` differs
/// from `Aᵢ.nrows()`, or an input is non-finite.
pub fn stacked_factored_svd(terms: &[(ArrayView2<f32>, ArrayView2<f32>, f32)]) -> Svd {
    stacked_factored_svd_with(backend(), terms)
}

/// [`stacked_factored_svd`] with an explicit backend.
pub fn stacked_factored_svd_with(
    dense: &dyn Dense,
    terms: &[(ArrayView2<f32>, ArrayView2<f32>, f32)],
) -> Svd {
    assert!(!terms.is_empty(), "linalg::stacked_factored_svd: no terms");
    let d = terms[0].0.nrows();
    let k = terms[0].1.ncols();
    let mut total = 0usize;
    for (i, (b, a, s)) in terms.iter().enumerate() {
        assert!(
            b.nrows() == d && a.ncols() == k && b.ncols() == a.nrows(),
            "linalg::stacked_factored_svd: term {i} has B {:?}, A {:?}; expected B d×rᵢ, A rᵢ×k with d = {d}, k = {k}",
            b.dim(),
            a.dim()
        );
        assert!(
            s.is_finite(),
            "linalg::stacked_factored_svd: scale {i} is {s}"
        );
        total += b.ncols();
    }
    let mut bs = Array2::<f32>::zeros((d, total));
    let mut as_ = Array2::<f32>::zeros((total, k));
    let mut off = 0;
    for (b, a, s) in terms {
        let r = b.ncols();
        bs.slice_mut(s![.., off..off + r])
            .zip_mut_with(b, |dst, &src| *dst = src * *s);
        as_.slice_mut(s![off..off + r, ..]).assign(a);
        off += r;
    }
    factored_svd_with(dense, bs.view(), as_.view(), 1.0)
}

// ---------------------------------------------------------------------------
// Factors, norms, spectra, rank selection
// ---------------------------------------------------------------------------

/// LoRA factors of the rank-`rank` truncation of `svd`:
/// `B = U_r·diag(√s)` (`m×rank`), `A = diag(√s)·V_rᵀ` (`rank×n`), so
/// `B·A = U_r·diag(s)·V_rᵀ` and both factors carry the same spectrum
/// `√sᵢ`. Columns/rows with `sᵢ = 0` are exactly zero (a zero matrix gives zero
/// factors, never NaN). If `rank > svd.rank()`, the extra columns of `B` and
/// rows of `A` are zero, so the shapes are always `m×rank`, `rank×n`.
pub fn split_factors(svd: &Svd, rank: usize) -> (Array2<f32>, Array2<f32>) {
    let (m, n) = (svd.u.nrows(), svd.vt.ncols());
    let mut b = Array2::<f32>::zeros((m, rank));
    let mut a = Array2::<f32>::zeros((rank, n));
    for i in 0..rank.min(svd.s.len()) {
        let si = svd.s[i];
        if si > 0.0 {
            let r = si.sqrt();
            b.column_mut(i)
                .zip_mut_with(&svd.u.column(i), |dst, &u| *dst = u * r);
            a.row_mut(i)
                .zip_mut_with(&svd.vt.row(i), |dst, &v| *dst = v * r);
        }
    }
    (b, a)
}

/// `‖M‖_F² = Σ m_ij²`, accumulated in `f64`.
pub fn frobenius_norm_sq(m: ArrayView2<f32>) -> f64 {
    m.iter().map(|&x| (x as f64) * (x as f64)).sum()
}

/// `Σᵢ sᵢ²` in `f64` (`= ‖M‖_F²` for a full spectrum).
pub fn energy(s: &[f32]) -> f64 {
    s.iter().map(|&x| (x as f64) * (x as f64)).sum()
}

/// `Σ_{i≥k} sᵢ²` (0-based `i`, `f64`): the squared Frobenius error of the best
/// rank-`k` approximation (Eckart–Young–Mirsky). `0` for `k ≥ s.len()`.
pub fn tail_energy(s: &[f32], k: usize) -> f64 {
    energy(&s[k.min(s.len())..])
}

/// Relative tolerance of [`rank_for_energy`].
pub const ENERGY_RTOL: f64 = 1e-12;

/// The smallest `k ≥ 1` with `Σ_{i<k} sᵢ² ≥ (energy − 10⁻¹²)·Σᵢ sᵢ²`.
///
/// `s` must be non-increasing (an SVD spectrum). Sums are in `f64` over the
/// `f32` values squared exactly; the `10⁻¹²` ([`ENERGY_RTOL`]) relative slack
/// only absorbs summation rounding, so a threshold hit exactly (e.g.
/// `s = [4, 4, 4, 2, …]` with `energy = 0.75` of a total of 64) counts as
/// reached. With `energy = f²` this is kohya-ss `resize_lora.py`'s `sv_fro`
/// rule for parameter `f` (`searchsorted(cumsum(S²)/ΣS², f²) + 1`, i.e. the
/// first prefix reaching `f²`), up to kohya's `float32` cumsum rounding.
///
/// Edge cases: `energy ≤ 0` → 1; `energy > 1` is treated as 1 (so trailing
/// values carrying less than `10⁻¹²` of the energy, e.g. exact zeros, are not
/// counted); all-zero `s` → 1; empty `s` → 0; NaN `energy` → `s.len()`.
pub fn rank_for_energy(s: &[f32], energy: f64) -> usize {
    if s.is_empty() {
        return 0;
    }
    if energy.is_nan() {
        return s.len();
    }
    let total = self::energy(s);
    if total == 0.0 {
        return 1;
    }
    let target = (energy.min(1.0) - ENERGY_RTOL) * total;
    let mut cum = 0.0f64;
    for (i, &x) in s.iter().enumerate() {
        cum += (x as f64) * (x as f64);
        if cum >= target {
            return i + 1;
        }
    }
    s.len()
}

/// Alias of [`rank_for_energy`]: the effective rank at an energy fraction.
pub fn effective_rank(s: &[f32], energy: f64) -> usize {
    rank_for_energy(s, energy)
}

/// Rank kept by kohya-ss `resize_lora.py --dynamic_method sv_ratio
/// --dynamic_param ratio` (networks/resize_lora.py, `index_sv_ratio` +
/// `rank_resize`):
///
/// ```text
/// min_sv = S[0] / ratio                       # in f32, as torch does
/// rank   = clamp(count(S > min_sv), 1, len(S))
/// ```
///
/// i.e. keep the `sᵢ` strictly greater than `s_max/ratio` (in exact arithmetic:
/// `s_max/sᵢ < ratio`, strict), but at least one. The threshold is computed as
/// the `f32` quotient `s[0] / (ratio as f32)` and compared in `f32`, which is
/// what torch's CPU kernel does for a `float32` tensor divided by a Python
/// float, so the result matches kohya on CPU bit for bit, given the same
/// singular values. (torch's CUDA kernel multiplies by the `f32` reciprocal
/// instead, which can move the threshold by one ulp; kohya itself differs by
/// device at that level.) Corner
/// cases follow from the rule: `ratio ≤ 1` → 1; all-zero `s` → 1 (kohya also
/// forces rank 1 when `S[0] ≤ 1e-6`, a rule applied by callers, not here);
/// empty `s` → 0. kohya caps the result at `--new_rank` afterwards; so should
/// callers.
pub fn rank_for_sv_ratio(s: &[f32], ratio: f64) -> usize {
    if s.is_empty() {
        return 0;
    }
    let min_sv = s[0] / (ratio as f32);
    let count = s.iter().filter(|&&x| x > min_sv).count();
    count.clamp(1, s.len())
}

/// Spectrum summary of a LoRA update (`inspect --spectrum`).
#[derive(Clone, Debug, PartialEq)]
pub struct Spectrum {
    /// All `min(d, r, k)` singular values of `scale·B·A`, non-increasing.
    pub singular_values: Vec<f32>,
    /// `‖scale·B·A‖_F = (Σ sᵢ²)^{1/2}` (`f64`).
    pub fro_norm: f64,
    /// `rank_for_energy(singular_values, 0.90)`.
    pub rank90: usize,
    /// `rank_for_energy(singular_values, 0.99)`.
    pub rank99: usize,
}

/// [`Spectrum`] of `scale·B·A` (`B: d×r`, `A: r×k`) via [`factored_svd`].
pub fn spectrum_of_factors(b: ArrayView2<f32>, a: ArrayView2<f32>, scale: f32) -> Spectrum {
    let svd = factored_svd(b, a, scale);
    spectrum_of_values(svd.s)
}

/// [`Spectrum`] from singular values (non-increasing).
pub fn spectrum_of_values(singular_values: Vec<f32>) -> Spectrum {
    let fro_norm = energy(&singular_values).sqrt();
    Spectrum {
        rank90: rank_for_energy(&singular_values, 0.90),
        rank99: rank_for_energy(&singular_values, 0.99),
        fro_norm,
        singular_values,
    }
}
