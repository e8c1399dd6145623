//! Extracting a LoRA adapter from two checkpoints: `ΔW = W − W0` per weight, factored by a
//! randomized SVD, written as a PEFT folder or a kohya file.
//!
//! # What is extracted
//!
//! Every float tensor named `*.weight` with at least two dimensions, present in both
//! checkpoints with the same shape and dtype, is a candidate module (name = tensor name without
//! `.weight`):
//!
//! * 2-D weights are `nn.Linear`, stored `[out, in]`; with `fan_in_fan_out` they are GPT-2
//!   `Conv1D`, stored `[in, out]` (nothing in a checkpoint tells the two apart, so the caller
//!   says which);
//! * 2-D weights whose module name looks like an embedding (last component containing `embed`
//!   but not `embed_out`, or `wte`, `wpe`, `shared`) are embeddings, stored `[vocab, dim]`, handled
//!   per [`EmbeddingMode`];
//! * weights with more than two dimensions are convolutions `[out, in, kh, kw, …]`, flattened
//!   to `[out, in·kh·kw]`.
//!
//! Every other float tensor (norms, biases, …) is compared; a changed one is reported and, with
//! [`ExtractOptions::save_changed`], stored in full (see [`ExtractPlan::run`]). Non-float
//! tensors are compared byte for byte and only reported.
//!
//! # Arithmetic
//!
//! Per module, in one streamed pass over the two memory maps: `W` and `W0` are decoded to f32
//! (exact for F32/F16/BF16), `ΔW = W − W0` is formed in f32 and `‖ΔW‖_F²`, `‖W0‖_F²` are summed in
//! f64. The pages of both tensors are released afterwards, so resident memory stays at about one
//! f32 copy of the largest module.
//!
//! `ΔW` is factored by the randomized range finder of Halko, Martinsson & Tropp (2011),
//! Algorithm 4.4 (subspace iteration with QR re-orthonormalisation after every product,
//! `l = rank + oversample` samples, `power_iters` iterations) followed by Algorithm 5.1 (SVD of
//! `QᵀΔW`) — [`crate::linalg::randomized_svd`] — through a [`LinearOperator`] for `ΔW`, so the
//! products can run elsewhere (see [`DeltaOperators`]). When `rank + oversample ≥ min(d, k)` the
//! exact SVD is used (nothing is gained by sampling); `exact` forces a full SVD everywhere.
//! The kept triplets become `B = U_k·√S_k`, `A = √S_k·V_kᵀ` ([`crate::linalg::split_factors`]),
//! rescaled by `1/√scale` each when `scale = alpha/rank ≠ 1`, so that `scale·B·A = U_k·S_k·V_kᵀ`.
//!
//! The reported relative error `‖ΔW − scale·B·A‖_F / ‖ΔW‖_F` is that of the factors as written.
//! For f32 factors of the randomized SVD whose error is at least 10 %, it is `‖ΔW‖² − Σ_{i<k} sᵢ²`
//! (Pythagoras, exact for an orthonormal basis; see [`closed_form_residual_sq`]), accurate to
//! ~10⁻⁴ relative and free. Otherwise (smaller errors, where that difference is all rounding;
//! f16/bf16 factors, whose rounding the spectrum does not see; `exact`) it is computed
//! explicitly: `scale·B·A` is formed in f32 block by block and the squared differences summed
//! in f64.
//!
//! # Determinism
//!
//! The Gaussian test matrix of each module is seeded by [`module_seed`] (`seed` and the tensor
//! name), so a module's factors do not depend on which other modules are extracted. The dense
//! kernels are faer's (whatever the `lapack` feature says): matrix products on the rayon pool
//! (bit-identical for any thread count), QR and the small SVDs sequential (faer's parallel QR/SVD
//! round differently with different thread counts). Same inputs, options and seed → byte-identical
//! output on the same CPU type. `exact` uses faer's parallel SVD for speed and is reproducible
//! for a given thread count.

use crate::adapter::{formats, Adapter, Data, Format, FullTensor, LoraModule, ModuleKind};
use crate::dtype::{self, Dtype};
use crate::error::{InputError, InputResult};
use crate::io::{Checkpoint, Output};
use crate::linalg::dense::{faer_matmul, faer_svd, thin_qr, with_faer, FAER};
use crate::linalg::{self, skinny, Dense, LinearOperator, RsvdOptions, Svd};
use anyhow::{bail, Result};
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// How many triplets each module keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RankRule {
    /// The same rank for every module (capped at `min(d, k)`).
    Fixed(usize),
    /// The smallest rank whose leading triplets hold a fraction `≥ energy` of `‖ΔW‖_F²` (the
    /// total computed exactly from `ΔW`, not from the triplets), at most `max_rank`. The
    /// singular values are f32 (their energies are off by ~`10⁻⁷` relative), so a threshold that
    /// close to a cumulative energy, `energy = 1` included, is decided by rounding; use e.g.
    /// `1 − 10⁻⁶` for "all but rounding noise".
    Energy { energy: f64, max_rank: usize },
    /// kohya's `sv_ratio`: keep the singular values `> s₁/ratio`
    /// ([`crate::linalg::rank_for_sv_ratio`]), at most `max_rank`.
    SvRatio { ratio: f64, max_rank: usize },
}

impl RankRule {
    /// The largest rank the rule can pick.
    pub fn cap(&self) -> usize {
        match *self {
            RankRule::Fixed(r) => r,
            RankRule::Energy { max_rank, .. } | RankRule::SvRatio { max_rank, .. } => max_rank,
        }
    }
}

/// What to do with changed embedding matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingMode {
    /// Low-rank, in PEFT's embedding layout (`lora_embedding_A` `[r, vocab]`, `lora_embedding_B`
    /// `[dim, r]`, `ΔW = (B·A)ᵀ`).
    Lora,
    /// The tuned embedding stored in full (`modules_to_save`).
    Full,
    /// Left out (reported).
    Skip,
}

/// Options of an extraction.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub rank: RankRule,
    /// Only modules this selects …
    pub targets: Option<ModuleFilter>,
    /// … and that this does not (matched against the module and the tensor name).
    pub exclude: Option<ModuleFilter>,
    pub format: Format,
    /// kohya key prefix (`lora_unet`, `lora_te`, …).
    pub kohya_prefix: String,
    /// `lora_alpha` of every module; `None` = each module's rank (scale 1).
    pub alpha: Option<f64>,
    pub embeddings: EmbeddingMode,
    /// Full SVD instead of the randomized one.
    pub exact: bool,
    pub oversample: usize,
    pub power_iters: usize,
    pub seed: u64,
    /// Skip modules with `‖ΔW‖_F / ‖W0‖_F` below this.
    pub min_diff: f64,
    /// Store changed tensors that are not extracted (norms, biases) in full.
    pub save_changed: bool,
    /// 2-D weights are stored `[in, out]` (GPT-2 Conv1D).
    pub fan_in_fan_out: bool,
    /// Dtype of the written factors and full tensors.
    pub dtype: Dtype,
    /// `base_model_name_or_path` of the PEFT config.
    pub base_model: Option<String>,
    /// Where progress is reported (silent by default).
    pub progress: crate::progress::Reporter,
}

impl ExtractOptions {
    /// PEFT output, f32 factors, randomized SVD with `p = 10`, `q = 2`, seed 0, nothing else.
    pub fn new(rank: RankRule) -> Self {
        ExtractOptions {
            rank,
            targets: None,
            exclude: None,
            format: Format::Peft,
            kohya_prefix: "lora_unet".into(),
            alpha: None,
            embeddings: EmbeddingMode::Lora,
            exact: false,
            oversample: 10,
            power_iters: 2,
            seed: 0,
            min_diff: 0.0,
            save_changed: false,
            fan_in_fan_out: false,
            dtype: Dtype::F32,
            base_model: None,
            progress: crate::progress::Reporter::default(),
        }
    }

    fn selects(&self, tensor: &str) -> bool {
        let module = module_of(tensor);
        self.targets.as_ref().is_none_or(|f| f.matches(module))
            && !self
                .exclude
                .as_ref()
                .is_some_and(|f| f.matches(module) || f.matches(tensor))
    }
}

/// Which modules a `--targets` / `--exclude` names, in the one syntax `extract` and `train`
/// share: a comma list of module names or dotted suffixes, matched as PEFT's
/// `target_modules` list is (`q_proj` matches `model.layers.0.self_attn.q_proj`, not
/// `xq_proj`), or `re:PATTERN`, a regex searched anywhere in the name.
#[derive(Debug, Clone)]
pub enum ModuleFilter {
    Names(Vec<String>),
    Regex(Regex),
}

impl ModuleFilter {
    /// Parses the flag's value; `flag` names it in errors.
    pub fn parse(flag: &str, s: &str) -> Result<ModuleFilter> {
        if let Some(re) = s.strip_prefix("re:") {
            return Regex::new(re).map(ModuleFilter::Regex).map_err(|e| {
                let msg = e.to_string();
                let last = msg
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                anyhow::anyhow!(
                    "{flag} `{s}`: not a valid regex: {}",
                    last.trim().trim_start_matches("error: ")
                )
            });
        }
        let names: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            bail!("{flag} `{s}` names no module (a comma list such as q_proj,v_proj, or re:REGEX)");
        }
        Ok(ModuleFilter::Names(names))
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            ModuleFilter::Names(v) => v.iter().any(|t| {
                name == t
                    || name
                        .strip_suffix(t.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }),
            ModuleFilter::Regex(r) => r.is_match(name),
        }
    }
}

// ---------------------------------------------------------------------------
// Operators for ΔW
// ---------------------------------------------------------------------------

/// One module's inputs, for building an operator `M = W − W0`.
#[derive(Clone, Copy)]
pub struct DeltaInput<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// The stored matrix is `rows × cols`, row-major (convolutions flattened).
    pub rows: usize,
    pub cols: usize,
    /// Stored bytes of `W` (tuned) and `W0` (base), little-endian.
    pub w: &'a [u8],
    pub w_dtype: Dtype,
    pub w0: &'a [u8],
    pub w0_dtype: Dtype,
    /// `W − W0` in f32 on the host (always formed: the norm and the reported error need it).
    pub delta: ArrayView2<'a, f32>,
}

/// Where the products `ΔW·X`, `ΔWᵀ·Y` of the randomized SVD run. The CPU implementation wraps
/// the host copy of `ΔW`; a GPU implementation can form `W − W0` from the stored bytes on the
/// device instead.
pub trait DeltaOperators {
    /// One line for the summary ("cpu (2 threads)").
    fn describe(&self) -> String;
    /// The operator for one module.
    fn operator<'a>(&'a self, input: &DeltaInput<'a>) -> Result<Box<dyn LinearOperator + 'a>>;
}

/// Products on the CPU, from the host copy of `ΔW`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuDeltaOperators;

impl DeltaOperators for CpuDeltaOperators {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn operator<'a>(&'a self, input: &DeltaInput<'a>) -> Result<Box<dyn LinearOperator + 'a>> {
        Ok(Box::new(HostDeltaOp::new(input.delta)))
    }
}

/// Rows of `ΔW` per block of [`HostDeltaOp`].
pub const BLOCK_ROWS: usize = 256;

/// `ΔW` in host memory (standard layout) as a [`LinearOperator`]. Products with up to
/// [`skinny::MAX_COLS`] columns (every pass of the range finder at the usual ranks) run in
/// [`skinny`]'s register-blocked kernels: one FMA chain per output, so the same bits for any
/// thread count. Wider ones run over
/// fixed blocks of [`BLOCK_ROWS`] rows in parallel, each block a sequential faer product:
/// `ΔW·X` block row by block row, `ΔWᵀ·Y = Σ_blocks ΔW_bᵀ·Y_b` summed in block order. The
/// blocks, not the threads, fix the arithmetic, so results are the same for any thread count.
/// (faer's own parallel `ΔWᵀ·Y` is several times slower for tall `ΔW` and skinny `Y`.)
#[derive(Clone, Copy)]
pub struct HostDeltaOp<'a> {
    a: ArrayView2<'a, f32>,
}

impl<'a> HostDeltaOp<'a> {
    /// Wraps `a`; panics unless it is in standard (row-major) layout.
    pub fn new(a: ArrayView2<'a, f32>) -> Self {
        assert!(
            a.is_standard_layout(),
            "HostDeltaOp needs a row-major matrix"
        );
        HostDeltaOp { a }
    }

    fn blocks(&self) -> Vec<(usize, usize)> {
        let m = self.a.nrows();
        (0..m)
            .step_by(BLOCK_ROWS)
            .map(|r| (r, (r + BLOCK_ROWS).min(m)))
            .collect()
    }
}

fn seq_matmul(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    with_faer(a, |fa| {
        with_faer(b, |fb| faer_matmul(fa, fb, Some(faer::Par::Seq)))
    })
}

impl LinearOperator for HostDeltaOp<'_> {
    fn rows(&self) -> usize {
        self.a.nrows()
    }
    fn cols(&self) -> usize {
        self.a.ncols()
    }
    fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        if let Some(y) = skinny::matmul(self.a, x) {
            return y;
        }
        let parts: Vec<Array2<f32>> = self
            .blocks()
            .into_par_iter()
            .map(|(r0, r1)| seq_matmul(self.a.slice(ndarray::s![r0..r1, ..]), x))
            .collect();
        let views: Vec<ArrayView2<f32>> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(ndarray::Axis(0), &views).expect("blocks of equal width")
    }
    fn apply_t(&self, y: ArrayView2<f32>) -> Array2<f32> {
        if let Some(z) = skinny::matmul_tn(self.a, y) {
            return z;
        }
        let parts: Vec<Array2<f32>> = self
            .blocks()
            .into_par_iter()
            .map(|(r0, r1)| {
                let block = self.a.slice(ndarray::s![r0..r1, ..]);
                seq_matmul(block.t(), y.slice(ndarray::s![r0..r1, ..]))
            })
            .collect();
        let mut out = Array2::<f32>::zeros((self.a.ncols(), y.ncols()));
        for p in &parts {
            out += p;
        }
        out
    }
    fn as_dense(&self) -> Option<ArrayView2<'_, f32>> {
        Some(self.a)
    }
}

/// faer with matrix products on the rayon pool (bit-identical for any thread count) and QR /
/// SVD sequential (faer's parallel ones depend on the thread count), so extraction output does
/// not depend on the machine's core count. QRs of blocks up to 128 columns wide, those of the
/// range finder, run in [`linalg::householder`].
#[derive(Debug, Clone, Copy)]
pub struct ExtractDense;

/// The [`ExtractDense`] instance.
pub static EXTRACT_DENSE: ExtractDense = ExtractDense;

impl Dense for ExtractDense {
    fn name(&self) -> &'static str {
        "faer (sequential QR/SVD)"
    }
    fn matmul(&self, a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
        FAER.matmul(a, b)
    }
    fn qr_thin(&self, a: ArrayView2<f32>) -> (Array2<f32>, Array2<f32>) {
        thin_qr(a, Some(faer::Par::Seq))
    }
    fn svd_thin(&self, a: ArrayView2<f32>) -> Svd {
        faer_svd(a, Some(faer::Par::Seq))
    }
}

// ---------------------------------------------------------------------------
// Per-module numerics
// ---------------------------------------------------------------------------

/// Seed of a module's test matrix: SplitMix64 of `seed` xor the FNV-1a hash of `name`.
pub fn module_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    linalg::rng::SplitMix64::new(seed ^ h).next_u64()
}

/// Below this `‖ΔW − B·A‖²/‖ΔW‖²` (a relative error of 10 %), the error is computed explicitly.
pub const CLOSED_FORM_MIN_REL_SQ: f64 = 1e-2;

/// `‖ΔW − U_k·S_k·V_kᵀ‖_F² = ‖ΔW‖_F² − Σ_{i<k} sᵢ²` when that is accurate, else `None`.
///
/// For the randomized SVD, `U_k·S_k·V_kᵀ = Q·(QᵀΔW)_k` with `Q` orthonormal, so by Pythagoras
/// the residual is `‖ΔW − QQᵀΔW‖² + ‖QᵀΔW − (QᵀΔW)_k‖² = ‖ΔW‖² − Σ_{i<k} sᵢ²` (`sᵢ` the
/// singular values of `QᵀΔW`, i.e. the ones found). The difference cancels: with f32 factors
/// its absolute error is a few units of 10⁻⁶·‖ΔW‖², so it is used only when the residual is at
/// least [`CLOSED_FORM_MIN_REL_SQ`]·‖ΔW‖² (relative error ≲ 10⁻⁴ on the reported value); smaller
/// residuals — nearly exact low-rank deltas — are computed explicitly by [`residual_sq`], which
/// costs one more pass over `ΔW` and a `d×k·k×n` product. Factors rounded to f16/bf16 always
/// take the explicit path (the rounding is not in the spectrum).
pub fn closed_form_residual_sq(f: &Factorization, norm_sq: f64) -> Option<f64> {
    let kept: f64 = f
        .svd
        .s
        .iter()
        .take(f.rank)
        .map(|&x| x as f64 * x as f64)
        .sum();
    let r = norm_sq - kept;
    (r >= CLOSED_FORM_MIN_REL_SQ * norm_sq).then_some(r)
}

/// `x ← x − y` and `(Σ (x−y)², Σ y²)` in f64. Eight fixed lanes (element `i` goes to lane
/// `i mod 8`, lanes added in order at the end), so the loop vectorises and the sums are the same
/// on every CPU; compiled for AVX2 when the CPU has it (same operations, same results: Rust never
/// contracts into fused multiply-adds).
fn sub_norms(x: &mut [f32], y: &[f32]) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { sub_norms_avx2(x, y) };
        }
    }
    sub_norms_impl(x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sub_norms_avx2(x: &mut [f32], y: &[f32]) -> (f64, f64) {
    sub_norms_impl(x, y)
}

#[inline(always)]
fn sub_norms_impl(x: &mut [f32], y: &[f32]) -> (f64, f64) {
    assert_eq!(x.len(), y.len());
    let (mut ns, mut bs) = ([0f64; 8], [0f64; 8]);
    let mut xc = x.chunks_exact_mut(8);
    let mut yc = y.chunks_exact(8);
    for (xs, ys) in (&mut xc).zip(&mut yc) {
        for l in 0..8 {
            let d = xs[l] - ys[l];
            xs[l] = d;
            ns[l] += d as f64 * d as f64;
            bs[l] += ys[l] as f64 * ys[l] as f64;
        }
    }
    for (l, (xv, &yv)) in xc
        .into_remainder()
        .iter_mut()
        .zip(yc.remainder())
        .enumerate()
    {
        let d = *xv - yv;
        *xv = d;
        ns[l] += d as f64 * d as f64;
        bs[l] += yv as f64 * yv as f64;
    }
    (ns.iter().sum(), bs.iter().sum())
}

/// `Σ (x − scale·y)²` in f64 over eight fixed lanes, like [`sub_norms`].
fn residual_block(x: &[f32], y: &[f32], scale: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { residual_block_avx2(x, y, scale) };
        }
    }
    residual_block_impl(x, y, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn residual_block_avx2(x: &[f32], y: &[f32], scale: f32) -> f64 {
    residual_block_impl(x, y, scale)
}

#[inline(always)]
fn residual_block_impl(x: &[f32], y: &[f32], scale: f32) -> f64 {
    assert_eq!(x.len(), y.len());
    let mut acc = [0f64; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for l in 0..8 {
            let r = xs[l] as f64 - (scale * ys[l]) as f64;
            acc[l] += r * r;
        }
    }
    for (l, (&xv, &yv)) in xr.iter().zip(yr).enumerate() {
        let r = xv as f64 - (scale * yv) as f64;
        acc[l] += r * r;
    }
    acc.iter().sum()
}

/// Rank chosen by `rule` from the leading singular values `s` (non-increasing, at least the
/// rule's cap of them when available) of a matrix with `‖M‖_F² = norm_sq`. At least 1, at most
/// `s.len()`.
///
/// `Energy`: the smallest `k` with `Σ_{i<k} sᵢ² ≥ (energy − 10⁻¹²)·norm_sq` (the slack of
/// [`linalg::ENERGY_RTOL`] only absorbs summation rounding), or `s.len()` when the leading values
/// available do not reach it. `SvRatio`: [`linalg::rank_for_sv_ratio`]. `Fixed(r)`: `r`.
pub fn choose_rank(s: &[f32], norm_sq: f64, rule: &RankRule) -> usize {
    let n = s.len().min(rule.cap());
    if n == 0 {
        return 0;
    }
    let k = match *rule {
        RankRule::Fixed(r) => r,
        RankRule::Energy { energy, .. } => {
            let target = (energy.min(1.0) - linalg::ENERGY_RTOL) * norm_sq;
            let mut cum = 0.0f64;
            let mut k = n;
            for (i, &x) in s[..n].iter().enumerate() {
                cum += (x as f64) * (x as f64);
                if cum >= target {
                    k = i + 1;
                    break;
                }
            }
            k
        }
        RankRule::SvRatio { ratio, .. } => linalg::rank_for_sv_ratio(s, ratio),
    };
    k.clamp(1, n)
}

/// A module's truncated SVD and the rank the rule picked.
#[derive(Debug, Clone)]
pub struct Factorization {
    /// Truncated to `rank` triplets.
    pub svd: Svd,
    pub rank: usize,
    /// `Σ_{i<rank} sᵢ² / ‖M‖_F²` (≤ 1 up to rounding).
    pub energy_kept: f64,
    /// The exact SVD was used (forced, or because sampling would not save anything).
    pub exact: bool,
}

/// Factors the operator `M` (`‖M‖_F² = norm_sq`, known exactly) by the rule: randomized SVD of
/// rank `min(cap, m, n)` (HMT Alg. 4.4 + 5.1, see [`linalg::randomized_svd`]) or, with `exact`, a
/// full SVD; then the rank is chosen from the leading singular values and the SVD truncated.
pub fn factorize(
    op: &dyn LinearOperator,
    norm_sq: f64,
    rule: &RankRule,
    exact: bool,
    rsvd: &RsvdOptions,
) -> Factorization {
    let (m, n) = (op.rows(), op.cols());
    let cap = rule.cap().min(m).min(n).max(1);
    let sampled = !exact && cap + rsvd.oversample < m.min(n);
    let svd = if exact {
        let svd = match op.as_dense() {
            Some(a) => linalg::exact_svd_with(&FAER, a),
            None => linalg::exact_svd_with(&FAER, op.to_dense().view()),
        };
        svd.truncate(cap)
    } else {
        linalg::randomized_svd_with(&EXTRACT_DENSE, op, cap, rsvd)
    };
    let rank = choose_rank(&svd.s, norm_sq, &rule_with_cap(rule, cap));
    let svd = svd.truncate(rank);
    let kept = linalg::energy(&svd.s);
    let energy_kept = if norm_sq > 0.0 {
        (kept / norm_sq).min(1.0)
    } else {
        1.0
    };
    Factorization {
        svd,
        rank,
        energy_kept,
        exact: !sampled,
    }
}

fn rule_with_cap(rule: &RankRule, cap: usize) -> RankRule {
    match *rule {
        RankRule::Fixed(_) => RankRule::Fixed(cap),
        RankRule::Energy { energy, .. } => RankRule::Energy {
            energy,
            max_rank: cap,
        },
        RankRule::SvRatio { ratio, .. } => RankRule::SvRatio {
            ratio,
            max_rank: cap,
        },
    }
}

/// `‖D − scale·B·A‖_F²` in f64 (`B·A` formed in f32), over blocks of [`BLOCK_ROWS`] rows in
/// parallel (no second `d×k` copy), block sums added in block order.
pub fn residual_sq(d: ArrayView2<f32>, b: ArrayView2<f32>, a: ArrayView2<f32>, scale: f32) -> f64 {
    let m = d.nrows();
    let blocks: Vec<(usize, usize)> = (0..m)
        .step_by(BLOCK_ROWS)
        .map(|r| (r, (r + BLOCK_ROWS).min(m)))
        .collect();
    let parts: Vec<f64> = blocks
        .into_par_iter()
        .map(|(r0, r1)| {
            let p = seq_matmul(b.slice(ndarray::s![r0..r1, ..]), a);
            let block = d.slice(ndarray::s![r0..r1, ..]);
            match (block.as_slice(), p.as_slice()) {
                // Contiguous rows (the usual case): 8 fixed lanes, so it vectorises and the
                // sum does not depend on anything but the shapes.
                (Some(x), Some(y)) => residual_block(x, y, scale),
                _ => block
                    .iter()
                    .zip(p.iter())
                    .map(|(&x, &y)| {
                        let r = x as f64 - (scale * y) as f64;
                        r * r
                    })
                    .sum::<f64>(),
            }
        })
        .collect();
    parts.iter().sum()
}

// ---------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------

/// How a candidate weight is laid out.
#[derive(Debug, Clone, PartialEq)]
enum Layout {
    /// `[out, in]`.
    Linear,
    /// `[in, out]` (fan_in_fan_out).
    LinearT,
    /// `[vocab, dim]`.
    Embedding,
    /// `[out, in, kernel…]`.
    Conv(Vec<usize>),
}

#[derive(Debug, Clone)]
enum ItemKind {
    /// A low-rank candidate.
    LowRank(Layout),
    /// An embedding under `--embeddings full` or `skip`.
    EmbeddingWhole(EmbeddingMode),
    /// Another float tensor (norm, bias, …).
    Other,
    /// Not a float tensor: compared byte for byte only.
    NonFloat,
}

#[derive(Debug, Clone)]
struct Item {
    name: String,
    module: String,
    shape: Vec<usize>,
    kind: ItemKind,
}

/// The plan of an extraction, printed by `extract --dry-run`: nothing is computed or written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtractDryRun {
    pub operation: &'static str,
    pub dry_run: bool,
    pub base: String,
    pub tuned: String,
    pub out: String,
    pub files: Vec<String>,
    pub tensors_count: usize,
    pub low_rank_candidates_count: usize,
    pub excluded_count: usize,
    pub skipped_one_sided: Vec<String>,
}

/// A validated extraction, ready to run.
#[derive(Debug)]
pub struct ExtractPlan {
    pub base: Checkpoint,
    pub tuned: Checkpoint,
    pub out: PathBuf,
    pub options: ExtractOptions,
    items: Vec<Item>,
    /// Tensors left out by `targets` / `exclude`.
    pub excluded: usize,
    /// Non-float tensors (buffers such as `embeddings.position_ids`, which transformers 5 no
    /// longer saves) present in one checkpoint only: reported and skipped.
    pub one_sided: Vec<String>,
    /// The `ΔW` buffer, reused from module to module: a fresh multi-megabyte allocation costs a
    /// page fault per 4 KiB on first write.
    scratch: std::sync::Mutex<Vec<f32>>,
}

/// The module a tensor belongs to: its name without the last dotted component.
pub fn module_of(tensor: &str) -> &str {
    tensor.rsplit_once('.').map_or(tensor, |(m, _)| m)
}

/// Whether a 2-D `*.weight` looks like an embedding, from its module name.
pub fn is_embedding_module(module: &str) -> bool {
    let last = module.rsplit('.').next().unwrap_or(module);
    (last.contains("embed") && last != "embed_out") || matches!(last, "wte" | "wpe" | "shared")
}

impl ExtractPlan {
    /// Checks both checkpoints against each other and classifies every selected tensor; reads
    /// headers only, writes nothing.
    pub fn new(
        base: Checkpoint,
        tuned: Checkpoint,
        out: PathBuf,
        options: ExtractOptions,
    ) -> Result<Self> {
        let o = &options;
        if o.format == Format::Kohya {
            if o.save_changed {
                bail!("--format kohya cannot hold full tensors; drop --save-changed or use --format peft");
            }
            if o.embeddings != EmbeddingMode::Skip {
                bail!(
                    "--format kohya cannot hold embeddings; use --embeddings skip or --format peft"
                );
            }
            if o.fan_in_fan_out {
                bail!(
                    "--format kohya cannot hold fan_in_fan_out (Conv1D) modules; use --format peft"
                );
            }
        }
        if o.rank.cap() == 0 {
            bail!("the rank must be at least 1");
        }
        let mut inputs = base.input_paths();
        inputs.extend(tuned.input_paths());
        inputs.push(base.root.clone());
        inputs.push(tuned.root.clone());
        match o.format {
            Format::Peft => {
                if out.exists() && !out.is_dir() {
                    bail!(InputError::invalid(
                        &out,
                        "a PEFT adapter is a folder, but this path is a file"
                    ));
                }
                let files: Vec<PathBuf> = [formats::peft::WEIGHTS_NAME, formats::peft::CONFIG_NAME]
                    .iter()
                    .map(|f| out.join(f))
                    .collect();
                crate::io::writer::check_writes(&inputs, &files, std::slice::from_ref(&out))?;
            }
            Format::Kohya => {
                if out.is_dir() {
                    bail!(InputError::invalid(
                        &out,
                        "a kohya adapter is a file, but this path is a folder"
                    ));
                }
                crate::io::writer::check_writes(&inputs, std::slice::from_ref(&out), &[])?;
            }
        }

        let mut items = Vec::new();
        let mut excluded = 0;
        let mut one_sided = Vec::new();
        for name in base.names() {
            let module = module_of(name);
            if !o.selects(name) {
                excluded += 1;
                continue;
            }
            let bi = base.info(name).expect("listed");
            let ti = match tuned.info(name) {
                Some(t) => t,
                None if !dtype::is_float_compute(bi.dtype) => {
                    one_sided.push(name.to_owned());
                    continue;
                }
                None => bail!(InputError::invalid(
                    &tuned.root,
                    format!(
                        "tensor `{name}` is in the base ({}) but not in this checkpoint",
                        base.root.display()
                    )
                )),
            };
            let tfile = tuned.file_of(name).expect("listed").path();
            if ti.shape != bi.shape {
                bail!(InputError::invalid(
                    tfile,
                    format!(
                        "tensor `{name}`: shape {:?} differs from the base's {:?} ({})",
                        ti.shape,
                        bi.shape,
                        base.root.display()
                    )
                ));
            }
            if ti.dtype != bi.dtype {
                bail!(InputError::invalid(
                    tfile,
                    format!(
                        "tensor `{name}`: dtype {} differs from the base's {} ({}); convert one checkpoint first",
                        dtype::name(ti.dtype),
                        dtype::name(bi.dtype),
                        base.root.display()
                    )
                ));
            }
            let float = dtype::is_float_compute(bi.dtype);
            let kind = if !float {
                ItemKind::NonFloat
            } else if name.ends_with(".weight")
                && bi.shape.len() >= 2
                && bi.shape.iter().all(|&d| d > 0)
            {
                if bi.shape.len() > 2 {
                    ItemKind::LowRank(Layout::Conv(bi.shape[2..].to_vec()))
                } else if is_embedding_module(module) {
                    match o.embeddings {
                        EmbeddingMode::Lora => ItemKind::LowRank(Layout::Embedding),
                        m => ItemKind::EmbeddingWhole(m),
                    }
                } else if o.fan_in_fan_out {
                    ItemKind::LowRank(Layout::LinearT)
                } else {
                    ItemKind::LowRank(Layout::Linear)
                }
            } else {
                ItemKind::Other
            };
            items.push(Item {
                name: name.to_owned(),
                module: module.to_owned(),
                shape: bi.shape.clone(),
                kind,
            });
        }
        for name in tuned.names() {
            if !base.contains(name)
                && o.selects(name)
                && !dtype::is_float_compute(tuned.info(name).expect("listed").dtype)
            {
                one_sided.push(name.to_owned());
                continue;
            }
            if !base.contains(name) && o.selects(name) {
                bail!(InputError::invalid(
                    tuned.file_of(name).expect("listed").path(),
                    format!(
                        "tensor `{name}` is not in the base ({})",
                        base.root.display()
                    )
                ));
            }
        }
        if !items.iter().any(|i| !matches!(i.kind, ItemKind::NonFloat)) {
            bail!(InputError::invalid(
                &tuned.root,
                format!(
                    "no float tensor to extract: --targets/--exclude select none of the {} tensors of the base {}{}",
                    base.names().count(),
                    base.root.display(),
                    match (&o.targets, &o.exclude) {
                        (None, None) => String::new(),
                        _ => " (a --targets list matches module names or dotted suffixes such as q_proj,v_proj; re:REGEX for a regex)".into(),
                    }
                )
            ));
        }
        Ok(ExtractPlan {
            base,
            tuned,
            out,
            options,
            items,
            excluded,
            one_sided,
            scratch: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Runs the extraction and commits the output. On failure nothing is left behind:
    /// temporary files are removed, and so is the output folder if this run created it.
    pub fn run(self, ops: &dyn DeltaOperators) -> Result<ExtractSummary> {
        let start = Instant::now();
        let bar = self.options.progress.start(
            "extracting",
            self.items.len() as u64,
            crate::progress::Unit::Items,
        );
        let mut outcomes = Vec::with_capacity(self.items.len());
        for item in &self.items {
            outcomes.push(self.process(item, ops)?);
            bar.inc(1);
        }
        drop(bar);
        self.assemble(outcomes, ops.describe(), start)
    }

    /// What [`Self::run`] would do, without doing it (`extract --dry-run`).
    pub fn dry_run(&self) -> ExtractDryRun {
        let files = match self.options.format {
            Format::Peft => vec![
                self.out.join(formats::peft::WEIGHTS_NAME),
                self.out.join(formats::peft::CONFIG_NAME),
            ],
            Format::Kohya => vec![self.out.clone()],
        };
        ExtractDryRun {
            operation: "extract",
            dry_run: true,
            base: self.base.root.display().to_string(),
            tuned: self.tuned.root.display().to_string(),
            out: self.out.display().to_string(),
            files: files.iter().map(|p| p.display().to_string()).collect(),
            tensors_count: self.items.len(),
            low_rank_candidates_count: self
                .items
                .iter()
                .filter(|i| matches!(i.kind, ItemKind::LowRank(_)))
                .count(),
            excluded_count: self.excluded,
            skipped_one_sided: self.one_sided.clone(),
        }
    }

    /// Number of tensors the plan looks at (after `targets` / `exclude`).
    pub fn tensor_count(&self) -> usize {
        self.items.len()
    }

    /// Names of the planned tensors, in plan order (what every part of a split run must agree
    /// on).
    pub fn tensor_names(&self) -> Vec<String> {
        self.items.iter().map(|i| i.name.clone()).collect()
    }

    /// The tensors (plan indices, ascending) that part `i` of `n` processes. Low-rank candidates
    /// — where the time goes — are dealt largest first to the least-loaded part (ties: the lower
    /// part; load = elements), the cheap tensors round-robin, so the split depends only on the
    /// plan.
    pub fn part_items(&self, part: (usize, usize)) -> Vec<usize> {
        let (i, n) = part;
        let mut heavy: Vec<(usize, usize)> = self
            .items
            .iter()
            .enumerate()
            .filter(|(_, it)| matches!(it.kind, ItemKind::LowRank(_)))
            .map(|(j, it)| (j, it.shape.iter().product::<usize>()))
            .collect();
        heavy.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut load = vec![0usize; n];
        let mut owner = vec![usize::MAX; self.items.len()];
        for (j, size) in heavy {
            let p = (0..n).min_by_key(|&p| (load[p], p)).expect("n ≥ 1");
            load[p] += size;
            owner[j] = p;
        }
        let mut light = 0;
        for (j, o) in owner.iter_mut().enumerate() {
            if *o == usize::MAX {
                debug_assert!(!matches!(self.items[j].kind, ItemKind::LowRank(_)));
                *o = light % n;
                light += 1;
            }
        }
        (0..self.items.len())
            .filter(|&j| owner[j] == i - 1)
            .collect()
    }

    /// Processes the tensors at `indices` (see [`Self::part_items`]) and returns their
    /// outcomes, for a split run's part file.
    pub fn process_items(
        &self,
        indices: &[usize],
        ops: &dyn DeltaOperators,
    ) -> Result<Vec<Outcome>> {
        let bar = self.options.progress.start(
            "extracting",
            indices.len() as u64,
            crate::progress::Unit::Items,
        );
        let mut out = Vec::with_capacity(indices.len());
        for &j in indices {
            out.push(self.process(&self.items[j], ops)?);
            bar.inc(1);
        }
        drop(bar);
        Ok(out)
    }

    /// Extracts one tensor: everything [`Self::assemble`] needs from it.
    fn process(&self, item: &Item, ops: &dyn DeltaOperators) -> Result<Outcome> {
        let o = &self.options;
        let mut out = Outcome::default();
        match &item.kind {
            ItemKind::NonFloat => {
                let a = self.base.view(&item.name)?;
                let b = self.tuned.view(&item.name)?;
                if a.data != b.data {
                    out.changed = Some(TensorReport::new(item, None, "non_float"));
                }
            }
            ItemKind::Other | ItemKind::EmbeddingWhole(_) => {
                let d = self.delta(item)?;
                let rel = d.rel_diff();
                self.release(&item.name);
                let is_changed = d.norm_sq > 0.0;
                self.recycle(d.values);
                match (&item.kind, is_changed) {
                    (_, false) => out.skipped = Some(TensorReport::new(item, rel, "unchanged")),
                    (ItemKind::EmbeddingWhole(EmbeddingMode::Full), true) => {
                        out.whole = Some(WholeModule {
                            module: item.module.clone(),
                            reason: "embedding_full".into(),
                            replace: true,
                        });
                    }
                    (ItemKind::EmbeddingWhole(_), true) => {
                        out.skipped = Some(TensorReport::new(item, rel, "embedding_skip"))
                    }
                    (_, true) if o.save_changed => {
                        out.whole = Some(WholeModule {
                            module: item.module.clone(),
                            reason: "save_changed".into(),
                            replace: false,
                        });
                        out.changed = Some(TensorReport::new(item, rel, "stored"));
                    }
                    (_, true) => out.changed = Some(TensorReport::new(item, rel, "not_stored")),
                }
            }
            ItemKind::LowRank(layout) => {
                let t0 = Instant::now();
                let d = self.delta(item)?;
                let rel = d.rel_diff();
                if d.norm_sq == 0.0 || rel.is_some_and(|r| r < o.min_diff) {
                    self.release(&item.name);
                    let why = if d.norm_sq == 0.0 {
                        "unchanged"
                    } else {
                        "below_min_diff"
                    };
                    out.skipped = Some(TensorReport::new(item, rel, why));
                    self.recycle(d.values);
                    return Ok(out);
                }
                let t_delta = t0.elapsed().as_secs_f64();
                let (rows, cols) = (d.rows, d.cols);
                let view = ArrayView2::from_shape((rows, cols), d.data()).expect("shape");
                let (w, w0) = (self.tuned.view(&item.name)?, self.base.view(&item.name)?);
                let input = DeltaInput {
                    name: &item.name,
                    rows,
                    cols,
                    w: w.data,
                    w_dtype: w.dtype,
                    w0: w0.data,
                    w0_dtype: w0.dtype,
                    delta: view,
                };
                let op = ops.operator(&input)?;
                let rsvd = RsvdOptions {
                    oversample: o.oversample,
                    power_iters: o.power_iters,
                    seed: module_seed(o.seed, &item.name),
                };
                let t1 = Instant::now();
                let f = factorize(op.as_ref(), d.norm_sq, &o.rank, o.exact, &rsvd);
                drop(op);
                let t_factorize = t1.elapsed().as_secs_f64();
                let k = f.rank;
                let alpha = o.alpha.unwrap_or(k as f64);
                let scale = alpha / k as f64;
                let (mut bs, mut as_) = linalg::split_factors(&f.svd, k);
                if scale != 1.0 {
                    let c = (1.0 / scale).sqrt() as f32;
                    bs.mapv_inplace(|x| x * c);
                    as_.mapv_inplace(|x| x * c);
                }
                // Round to the output dtype now, so the error is that of the file.
                let round = |a: &mut Array2<f32>| {
                    if o.dtype != Dtype::F32 {
                        let r = dtype::decode(
                            o.dtype,
                            &dtype::encode(o.dtype, a.as_slice().expect("standard layout")),
                        );
                        a.as_slice_mut()
                            .expect("standard layout")
                            .copy_from_slice(&r);
                    }
                };
                round(&mut bs);
                round(&mut as_);
                let t2 = Instant::now();
                let res = match closed_form_residual_sq(&f, d.norm_sq) {
                    Some(r) if o.dtype == Dtype::F32 && !f.exact => r,
                    _ => residual_sq(view, bs.view(), as_.view(), scale as f32),
                };
                let t_error = t2.elapsed().as_secs_f64();
                self.release(&item.name);
                let raw = |a: Array2<f32>| a.into_raw_vec_and_offset().0;
                // Canonical orientation: B is out×k, A is k×in.
                let (kind, out_f, in_f, b, a, transposed) = match layout {
                    Layout::Linear => (ModuleKind::Linear, rows, cols, raw(bs), raw(as_), false),
                    Layout::Conv(kernel) => (
                        ModuleKind::Conv {
                            kernel: kernel.clone(),
                        },
                        rows,
                        cols,
                        raw(bs),
                        raw(as_),
                        false,
                    ),
                    Layout::LinearT | Layout::Embedding => {
                        let kind = if *layout == Layout::Embedding {
                            ModuleKind::Embedding
                        } else {
                            ModuleKind::Linear
                        };
                        let b = as_.t().as_standard_layout().into_owned();
                        let a = bs.t().as_standard_layout().into_owned();
                        (kind, cols, rows, raw(b), raw(a), true)
                    }
                };
                let report = ModuleReport {
                    name: item.module.clone(),
                    tensor: item.name.clone(),
                    kind: kind.to_string(),
                    shape: item.shape.clone(),
                    rank: k,
                    alpha,
                    scale,
                    energy_kept: f.energy_kept,
                    rel_error: (res / d.norm_sq).sqrt(),
                    delta_norm: d.norm_sq.sqrt(),
                    rel_diff: rel,
                    method: if f.exact { "exact" } else { "randomized" }.into(),
                    seconds: t0.elapsed().as_secs_f64(),
                    timings: Timings {
                        delta: t_delta,
                        factorize: t_factorize,
                        error: t_error,
                    },
                };
                let norm_sq = d.norm_sq;
                self.recycle(d.values);
                out.low_rank = Some(Box::new(LowRankOutcome {
                    report,
                    kind,
                    out_features: out_f,
                    in_features: in_f,
                    transposed,
                    residual_sq: res,
                    norm_sq,
                    full_delta_bytes: (rows * cols * d.elem_bytes) as u64,
                    a,
                    b,
                }));
            }
        }
        Ok(out)
    }

    /// Builds and writes the adapter from every tensor's outcome (in plan order) and commits it.
    /// A split run's `finalize` calls this with the outcomes read back from the part files, so
    /// the file is byte-identical to a single run's.
    pub fn assemble(
        &self,
        outcomes: Vec<Outcome>,
        device: String,
        start: Instant,
    ) -> Result<ExtractSummary> {
        let o = &self.options;
        if outcomes.len() != self.items.len() {
            bail!(
                "internal: {} outcomes for {} planned tensors",
                outcomes.len(),
                self.items.len()
            );
        }
        let mut modules: Vec<LoraModule> = Vec::new();
        let mut reports: Vec<ModuleReport> = Vec::new();
        let mut skipped = Vec::new();
        let mut changed: Vec<TensorReport> = Vec::new();
        // Modules whose tensors are stored whole: module → reason.
        let mut whole: BTreeMap<String, String> = BTreeMap::new();
        let mut lora_biases: Vec<String> = Vec::new();
        let (mut total_res, mut total_norm, mut total_kept, mut full_delta_bytes) =
            (0f64, 0f64, 0f64, 0u64);
        for out in outcomes {
            skipped.extend(out.skipped);
            changed.extend(out.changed);
            if let Some(w) = out.whole {
                if w.replace {
                    whole.insert(w.module, w.reason);
                } else {
                    whole.entry(w.module).or_insert(w.reason);
                }
            }
            if let Some(lr) = out.low_rank {
                let lr = *lr;
                total_res += lr.residual_sq;
                total_norm += lr.norm_sq;
                total_kept += lr.report.energy_kept * lr.norm_sq;
                full_delta_bytes += lr.full_delta_bytes;
                modules.push(LoraModule {
                    name: lr.report.name.clone(),
                    kind: lr.kind,
                    rank: lr.report.rank,
                    alpha: lr.report.alpha,
                    scale: lr.report.scale,
                    out_features: lr.out_features,
                    in_features: lr.in_features,
                    a: Data::Owned(Arc::new(lr.a)),
                    b: Data::Owned(Arc::new(lr.b)),
                    base_transposed: lr.transposed,
                    dora_magnitude: None,
                    bias: None,
                });
                reports.push(lr.report);
            }
        }

        // Whole tensors: PEFT `modules_to_save` (every direct tensor of the module, from the
        // tuned checkpoint), or `{module}.base_layer.bias` with `bias: "lora_only"` for a changed
        // bias of a module that is also a LoRA module.
        let lora_names: BTreeSet<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        let mut full_tensors = Vec::new();
        let mut full_reports = Vec::new();
        let mut modules_to_save = Vec::new();
        for (module, reason) in &whole {
            if lora_names.contains(module.as_str()) {
                let bias = format!("{module}.bias");
                if let Some(c) = changed.iter().find(|c| {
                    c.reason == "stored" && c.name != bias && module_of(&c.name) == module
                }) {
                    bail!(InputError::invalid(
                        self.tuned.file_of(&c.name).expect("listed").path(),
                        format!(
                            "tensor `{}` changed, but its module `{module}` is extracted as LoRA and PEFT cannot also save it whole; exclude the module or drop --save-changed",
                            c.name
                        )
                    ));
                }
                lora_biases.push(module.clone());
                continue;
            }
            modules_to_save.push(module.clone());
            for t in self.tuned.names().filter(|t| module_of(t) == module) {
                let info = self.tuned.info(t).expect("listed");
                if !dtype::is_float_compute(info.dtype) {
                    bail!(InputError::invalid(
                        self.tuned.file_of(t).expect("listed").path(),
                        format!("tensor `{t}`: module `{module}` is saved whole, but this tensor is {} (only float tensors can be stored)", dtype::name(info.dtype))
                    ));
                }
                let v = self.tuned.read_f32(t)?;
                self.release_tuned(t);
                full_reports.push(FullReport {
                    name: t.to_owned(),
                    shape: info.shape.clone(),
                    reason: reason.clone(),
                });
                full_tensors.push(FullTensor {
                    name: t.to_owned(),
                    data: Data::Owned(Arc::new(v)),
                    shape: info.shape.clone(),
                });
            }
        }
        let bias_mode = if lora_biases.is_empty() {
            "none"
        } else {
            "lora_only"
        };
        if !lora_biases.is_empty() {
            // PEFT's `lora_only` saves the bias of every LoRA layer that has one.
            for m in &modules {
                let t = format!("{}.bias", m.name);
                if let Some(info) = self.tuned.info(&t) {
                    let v = self.tuned.read_f32(&t)?;
                    full_reports.push(FullReport {
                        name: t.clone(),
                        shape: info.shape.clone(),
                        reason: "lora_only_bias".into(),
                    });
                    full_tensors.push(FullTensor {
                        name: format!("{}.base_layer.bias", m.name),
                        data: Data::Owned(Arc::new(v)),
                        shape: info.shape.clone(),
                    });
                }
            }
        }
        modules.sort_by(|a, b| a.name.cmp(&b.name));

        let mut config = serde_json::Map::new();
        config.insert("bias".into(), serde_json::json!(bias_mode));
        config.insert("task_type".into(), serde_json::Value::Null);
        let base_model = o
            .base_model
            .clone()
            .unwrap_or_else(|| self.base.root.display().to_string());
        let adapter = Adapter {
            format: o.format,
            path: self.out.clone(),
            source: None,
            modules,
            full_tensors,
            base_model: Some(base_model),
            use_rslora: false,
            use_dora: false,
            modules_to_save: modules_to_save.clone(),
            config: Some(serde_json::Value::Object(config)),
            metadata: Vec::new(),
        };
        let elem = dtype::byte_len(o.dtype, 1).expect("float dtype") as u64;
        let adapter_params = adapter.parameter_count() as u64
            + if o.format == Format::Kohya {
                adapter.modules.len() as u64
            } else {
                0
            };
        let adapter_bytes = adapter_params * elem;

        if adapter.modules.is_empty() && adapter.full_tensors.is_empty() {
            bail!(InputError::invalid(
                &self.tuned.root,
                format!(
                    "no module differs from the base {} among the {} tensor(s) searched{}; an adapter with nothing in it would load nowhere, so nothing was written",
                    self.base.root.display(),
                    self.items.len(),
                    if changed.is_empty() { String::new() } else { format!(" ({} changed tensor(s) could not be stored: pass --save-changed)", changed.len()) }
                )
            ));
        }
        let mut output = Output::new();
        let folder = match o.format {
            Format::Peft => self.out.clone(),
            Format::Kohya => crate::parts::out_dir(&self.out),
        };
        output.create_dir_all(&folder)?;
        match o.format {
            Format::Peft => output.lock(&folder, crate::io::writer::LockMode::Exclusive)?,
            Format::Kohya => output.lock(&self.out, crate::io::writer::LockMode::Exclusive)?,
        }
        let meta = self.metadata();
        match o.format {
            Format::Peft => formats::peft::write(&adapter, &self.out, &mut output, o.dtype, &meta)?,
            Format::Kohya => formats::kohya::write(
                &adapter,
                &o.kohya_prefix,
                &self.out,
                &mut output,
                o.dtype,
                &meta,
            )?,
        }
        let bytes_written = output.commit()?;

        let ranks: Vec<usize> = reports.iter().map(|r| r.rank).collect();
        let totals = Totals {
            module_count: reports.len(),
            rank_min: ranks.iter().copied().min().unwrap_or(0),
            rank_max: ranks.iter().copied().max().unwrap_or(0),
            rel_error: if total_norm > 0.0 {
                (total_res / total_norm).sqrt()
            } else {
                0.0
            },
            energy_kept: if total_norm > 0.0 {
                total_kept / total_norm
            } else {
                1.0
            },
            delta_norm: total_norm.sqrt(),
        };
        Ok(ExtractSummary {
            base: self.base.root.display().to_string(),
            tuned: self.tuned.root.display().to_string(),
            out: self.out.display().to_string(),
            format: o.format,
            device,
            method: if o.exact { "exact" } else { "randomized" },
            oversample: o.oversample,
            power_iters: o.power_iters,
            seed: o.seed,
            rank_rule: RankRuleReport::from(&o.rank),
            alpha: o.alpha,
            dtype: dtype::name(o.dtype),
            modules: reports,
            full_tensors: full_reports,
            modules_to_save,
            changed_tensors: changed,
            skipped,
            excluded: self.excluded,
            totals,
            adapter_bytes,
            full_delta_bytes,
            compression: if adapter_bytes > 0 {
                full_delta_bytes as f64 / adapter_bytes as f64
            } else {
                0.0
            },
            bytes_written,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// `W − W0` of one tensor in f32, with both norms, checking that every value is finite.
    fn delta(&self, item: &Item) -> InputResult<Delta> {
        let name = &item.name;
        let w = self.tuned.view(name)?;
        let w0 = self.base.view(name)?;
        let tpath = || {
            self.tuned
                .file_of(name)
                .expect("listed")
                .path()
                .to_path_buf()
        };
        let bpath = || {
            self.base
                .file_of(name)
                .expect("listed")
                .path()
                .to_path_buf()
        };
        let n = w.numel();
        // Same dtype in both (checked by the plan).
        let elem = dtype::byte_len(w.dtype, 1).expect("float dtype");
        enum Bad {
            Tuned(usize, f32),
            Base(usize, f32),
            Overflow(usize),
        }
        // Chunks in parallel; their sums are added in chunk order, so the result does not
        // depend on the thread count. Both tensors are decoded and subtracted in one pass per
        // chunk, into the reused buffer.
        const CHUNK: usize = 1 << 16;
        // Each chunk maps its own pages of both inputs first (in one call per input rather
        // than a fault per page), so the threads map pages concurrently.
        let files = [&self.base, &self.tuned].map(|c| c.file_of(name).zip(c.info(name)));
        let mut values = std::mem::take(&mut *self.scratch.lock().expect("scratch"));
        if values.len() < n {
            // One buffer for the largest tensor of the plan, so it is never grown (a grown
            // buffer is copied and its new part zero-filled, only to be overwritten here).
            drop(values);
            values = zeroed_scratch(n.max(self.largest_delta()));
        }
        let parts: Vec<Result<(f64, f64), Bad>> = values[..n]
            .par_chunks_mut(CHUNK)
            .enumerate()
            .map(|(c, out)| {
                let at = c * CHUNK;
                for (f, info) in files.iter().flatten() {
                    f.prefetch_part(info, at * elem, out.len() * elem);
                }
                let mut base = [0f32; 1024];
                let (mut norm_sq, mut base_sq) = (0f64, 0f64);
                for (k, out) in out.chunks_mut(base.len()).enumerate() {
                    let at = at + k * base.len();
                    let len = out.len();
                    let base = &mut base[..len];
                    dtype::decode_into(w.dtype, &w.data[at * elem..(at + len) * elem], out);
                    dtype::decode_into(w0.dtype, &w0.data[at * elem..(at + len) * elem], base);
                    let (ns, bs) = sub_norms(out, base);
                    // A non-finite W, W0 or W − W0 makes a sum non-finite (squares of finite
                    // f32 cannot overflow f64): only then look for the first offender.
                    if !(ns.is_finite() && bs.is_finite()) {
                        dtype::decode_into(w.dtype, &w.data[at * elem..(at + len) * elem], out);
                        for (i, (x, &y)) in out.iter().zip(base.iter()).enumerate() {
                            if !x.is_finite() {
                                return Err(Bad::Tuned(at + i, *x));
                            }
                            if !y.is_finite() {
                                return Err(Bad::Base(at + i, y));
                            }
                            if !(x - y).is_finite() {
                                return Err(Bad::Overflow(at + i));
                            }
                        }
                    }
                    norm_sq += ns;
                    base_sq += bs;
                }
                Ok((norm_sq, base_sq))
            })
            .collect();
        let (mut norm_sq, mut base_sq) = (0f64, 0f64);
        for part in parts {
            match part {
                Ok((a, b)) => {
                    norm_sq += a;
                    base_sq += b;
                }
                Err(Bad::Tuned(i, x)) => {
                    return Err(InputError::invalid(
                        tpath(),
                        format!("tensor `{name}`: value {x} at flat index {i} is not finite"),
                    ))
                }
                Err(Bad::Base(i, y)) => {
                    return Err(InputError::invalid(
                        bpath(),
                        format!("tensor `{name}`: value {y} at flat index {i} is not finite"),
                    ))
                }
                Err(Bad::Overflow(i)) => {
                    return Err(InputError::invalid(
                        tpath(),
                        format!("tensor `{name}`: W − W0 overflows f32 at flat index {i}"),
                    ))
                }
            }
        }
        let rows = item.shape.first().copied().unwrap_or(1);
        let cols = n.checked_div(rows).unwrap_or(0);
        Ok(Delta {
            values,
            rows,
            cols,
            norm_sq,
            base_sq,
            elem_bytes: elem,
        })
    }

    /// Elements of the largest tensor whose `ΔW` the plan forms.
    fn largest_delta(&self) -> usize {
        self.items
            .iter()
            .filter(|i| !matches!(i.kind, ItemKind::NonFloat))
            .map(|i| i.shape.iter().product::<usize>())
            .max()
            .unwrap_or(0)
    }

    /// Returns a `ΔW` buffer for the next module.
    fn recycle(&self, values: Vec<f32>) {
        let mut s = self.scratch.lock().expect("scratch");
        if values.capacity() > s.capacity() {
            *s = values;
        }
    }

    fn release(&self, name: &str) {
        if let (Some(f), Some(i)) = (self.base.file_of(name), self.base.info(name)) {
            f.release(i);
        }
        self.release_tuned(name);
    }

    fn release_tuned(&self, name: &str) {
        if let (Some(f), Some(i)) = (self.tuned.file_of(name), self.tuned.info(name)) {
            f.release(i);
        }
    }

    fn metadata(&self) -> Vec<(String, String)> {
        let o = &self.options;
        let settings = serde_json::json!({
            "rank_rule": RankRuleReport::from(&o.rank),
            "method": if o.exact { "exact" } else { "randomized" },
            "oversample": o.oversample,
            "power_iters": o.power_iters,
            "seed": o.seed,
        });
        vec![
            ("lorakit.operation".into(), "extract".into()),
            ("lorakit.extract".into(), settings.to_string()),
        ]
    }
}

struct Delta {
    /// Row-major `rows × cols` in its first `rows·cols` elements (the buffer is reused, so it
    /// may be longer): see [`Delta::data`].
    values: Vec<f32>,
    rows: usize,
    cols: usize,
    norm_sq: f64,
    base_sq: f64,
    elem_bytes: usize,
}

impl Delta {
    fn data(&self) -> &[f32] {
        &self.values[..self.rows * self.cols]
    }

    /// `‖ΔW‖_F / ‖W0‖_F`; `None` when `W0 = 0` and `ΔW ≠ 0` (infinite).
    fn rel_diff(&self) -> Option<f64> {
        if self.base_sq > 0.0 {
            Some((self.norm_sq / self.base_sq).sqrt())
        } else if self.norm_sq == 0.0 {
            Some(0.0)
        } else {
            None
        }
    }
}

/// A zero-filled `f32` buffer of `n` elements for `ΔW`. The allocation is `calloc`'s, so the
/// kernel supplies zero pages as they are first written, with no `memset` pass; on Linux the
/// buffer is marked for transparent huge pages, which cuts those faults 512-fold.
fn zeroed_scratch(n: usize) -> Vec<f32> {
    let v = vec![0f32; n];
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const HUGE: usize = 2 << 20;
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + n * 4) / HUGE * HUGE;
        if end > start {
            // SAFETY: advice on whole pages inside the vector's allocation; MADV_HUGEPAGE
            // changes how the pages are backed, never their contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------
// Outcomes (what one tensor contributes; the unit of a split run)
// ---------------------------------------------------------------------------

/// What extracting one planned tensor produced: everything [`ExtractPlan::assemble`] needs
/// from it. A split run (`extract --part I/N`) stores its tensors' outcomes in a part file
/// ([`crate::parts`]); `finalize` reads them back and assembles the adapter.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<TensorReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<TensorReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whole: Option<WholeModule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_rank: Option<Box<LowRankOutcome>>,
}

/// A module whose tensors are stored whole.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct WholeModule {
    pub module: String,
    /// `embedding_full` or `save_changed`.
    pub reason: String,
    /// Overrides an earlier reason for the same module (embeddings) instead of keeping it.
    pub replace: bool,
}

/// One extracted module.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct LowRankOutcome {
    pub report: ModuleReport,
    pub kind: ModuleKind,
    pub out_features: usize,
    pub in_features: usize,
    /// The base stores the weight transposed (fan_in_fan_out, embeddings).
    pub transposed: bool,
    /// `‖ΔW − scale·B·A‖_F²`, of the factors as written.
    pub residual_sq: f64,
    /// `‖ΔW‖_F²`.
    pub norm_sq: f64,
    pub full_delta_bytes: u64,
    /// Canonical `A` (`rank × in_features`) and `B` (`out_features × rank`), already rounded
    /// to the output dtype. Part files store them as tensors, not in the JSON.
    #[serde(skip)]
    pub a: Vec<f32>,
    #[serde(skip)]
    pub b: Vec<f32>,
}

// ---------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------

/// One extracted module.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ModuleReport {
    /// Module name (PEFT target).
    pub name: String,
    /// Checkpoint tensor.
    pub tensor: String,
    /// `linear`, `embedding`, `conv3x3`, …
    pub kind: String,
    /// Stored shape of the weight.
    pub shape: Vec<usize>,
    pub rank: usize,
    pub alpha: f64,
    pub scale: f64,
    /// `Σ_{i<rank} sᵢ² / ‖ΔW‖_F²`.
    pub energy_kept: f64,
    /// `‖ΔW − scale·B·A‖_F / ‖ΔW‖_F`, of the factors as written.
    pub rel_error: f64,
    /// `‖ΔW‖_F`.
    pub delta_norm: f64,
    /// `‖ΔW‖_F / ‖W0‖_F` (`null` when `W0 = 0`).
    pub rel_diff: Option<f64>,
    /// `randomized` or `exact`.
    pub method: String,
    /// Wall time of the module, and its parts.
    pub seconds: f64,
    pub timings: Timings,
}

/// Where a module's time went (seconds).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    /// Reading both tensors and forming `ΔW` with its norms.
    pub delta: f64,
    /// The (randomized or exact) SVD.
    pub factorize: f64,
    /// The explicit error `‖ΔW − scale·B·A‖_F` of the factors as written.
    pub error: f64,
}

/// A tensor that was not extracted.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<usize>,
    /// `‖ΔW‖_F / ‖W0‖_F` (`null` for non-float tensors, or when `W0 = 0`).
    pub rel_diff: Option<f64>,
    /// skipped: `unchanged`, `below_min_diff`, `embedding_skip`; changed: `stored`,
    /// `not_stored`, `non_float`.
    pub reason: String,
}

impl TensorReport {
    fn new(item: &Item, rel_diff: Option<f64>, reason: &str) -> Self {
        TensorReport {
            name: item.name.clone(),
            shape: item.shape.clone(),
            rel_diff,
            reason: reason.to_owned(),
        }
    }
}

/// A tensor stored whole in the adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FullReport {
    pub name: String,
    pub shape: Vec<usize>,
    /// `save_changed`, `embedding_full` or `lora_only_bias`.
    pub reason: String,
}

/// The rank rule, as reported.
#[derive(Debug, Clone, serde::Serialize)]
/// Spelled as resize's: `{"rule": "rank", "rank": R}`, `{"rule": "energy", "energy": E,
/// "max_rank": R}`, `{"rule": "sv_ratio", "sv_ratio": X, "max_rank": R}`.
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum RankRuleReport {
    Rank { rank: usize },
    Energy { energy: f64, max_rank: usize },
    SvRatio { sv_ratio: f64, max_rank: usize },
}

impl From<&RankRule> for RankRuleReport {
    fn from(r: &RankRule) -> Self {
        match *r {
            RankRule::Fixed(rank) => RankRuleReport::Rank { rank },
            RankRule::Energy { energy, max_rank } => RankRuleReport::Energy { energy, max_rank },
            RankRule::SvRatio { ratio, max_rank } => RankRuleReport::SvRatio {
                sv_ratio: ratio,
                max_rank,
            },
        }
    }
}

/// Totals over the extracted modules.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Totals {
    pub module_count: usize,
    pub rank_min: usize,
    pub rank_max: usize,
    /// `(Σ ‖ΔW − scale·B·A‖_F²)^½ / (Σ ‖ΔW‖_F²)^½` over the modules.
    pub rel_error: f64,
    /// `Σ kept energy / Σ ‖ΔW‖_F²`.
    pub energy_kept: f64,
    /// `(Σ ‖ΔW‖_F²)^½`.
    pub delta_norm: f64,
}

/// What an extraction did (printed as a table, or as JSON with `--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtractSummary {
    pub base: String,
    pub tuned: String,
    pub out: String,
    pub format: Format,
    pub device: String,
    /// `randomized` or `exact`.
    pub method: &'static str,
    pub oversample: usize,
    pub power_iters: usize,
    pub seed: u64,
    pub rank_rule: RankRuleReport,
    /// `--alpha`, `null` = each module's rank.
    pub alpha: Option<f64>,
    /// Dtype of the written tensors.
    pub dtype: String,
    pub modules: Vec<ModuleReport>,
    pub full_tensors: Vec<FullReport>,
    pub modules_to_save: Vec<String>,
    /// Changed tensors that are not low-rank modules (norms, biases, non-float).
    pub changed_tensors: Vec<TensorReport>,
    pub skipped: Vec<TensorReport>,
    /// Tensors left out by --targets / --exclude.
    pub excluded: usize,
    pub totals: Totals,
    /// Tensor data bytes of the adapter (factors, alphas, full tensors).
    pub adapter_bytes: u64,
    /// Bytes of the extracted modules' full `ΔW` in the checkpoint dtype.
    pub full_delta_bytes: u64,
    /// `full_delta_bytes / adapter_bytes`.
    pub compression: f64,
    /// Bytes written (headers and config included).
    pub bytes_written: u64,
    pub seconds: f64,
}

/// Products on a GPU: `W − W0` is formed on the device from the stored bytes by the delta-sketch
/// kernels (`shaders/sketch*.wgsl`), so only the skinny sketches cross the bus. Tensors in a
/// dtype the kernels do not read (F64) use the host copy. A failed GPU product falls back to the
/// CPU twin inside [`crate::backend::gpu::GpuDeltaOp`], so results stay correct. Outputs agree
/// with the CPU path to rounding, not bit for bit (other summation order).
pub struct GpuDeltaOperators<'c> {
    pub ctx: &'c crate::backend::gpu::GpuContext,
}

impl DeltaOperators for GpuDeltaOperators<'_> {
    fn describe(&self) -> String {
        let i = self.ctx.describe();
        format!("gpu ({}, {})", i.name, i.backend)
    }

    fn operator<'a>(&'a self, input: &DeltaInput<'a>) -> Result<Box<dyn LinearOperator + 'a>> {
        use crate::backend::cpu_forward::{DeltaPair, StoredMatrix};
        let gpu_dtype = |d: Dtype| matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16);
        if !gpu_dtype(input.w_dtype) || !gpu_dtype(input.w0_dtype) {
            return Ok(Box::new(HostDeltaOp::new(input.delta)));
        }
        let pair = DeltaPair {
            w: StoredMatrix {
                bytes: input.w,
                dtype: input.w_dtype,
                rows: input.rows,
                cols: input.cols,
            },
            w0: StoredMatrix {
                bytes: input.w0,
                dtype: input.w0_dtype,
                rows: input.rows,
                cols: input.cols,
            },
        };
        let op = crate::backend::gpu::GpuDeltaOp::new(self.ctx, pair)
            .map_err(|e| anyhow::anyhow!("tensor `{}`: gpu: {e}", input.name))?;
        Ok(Box::new(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energy_rule_uses_the_exact_total() {
        // s² = 16, 16, 16, 4 of a total 64 (4 left in the tail not sampled).
        let s = [4.0f32, 4.0, 4.0, 2.0];
        let r = |e: f64| {
            choose_rank(
                &s,
                64.0,
                &RankRule::Energy {
                    energy: e,
                    max_rank: 10,
                },
            )
        };
        assert_eq!(r(0.75), 3);
        assert_eq!(r(0.7501), 4);
        assert_eq!(r(0.7499), 3);
        assert_eq!(r(0.99), 4, "the cap: all sampled values");
        assert_eq!(
            choose_rank(
                &s,
                64.0,
                &RankRule::Energy {
                    energy: 0.99,
                    max_rank: 2
                }
            ),
            2
        );
        assert_eq!(
            choose_rank(
                &s,
                64.0,
                &RankRule::SvRatio {
                    ratio: 2.0,
                    max_rank: 10
                }
            ),
            3
        );
        assert_eq!(
            choose_rank(
                &s,
                64.0,
                &RankRule::SvRatio {
                    ratio: 2.0,
                    max_rank: 1
                }
            ),
            1
        );
        assert_eq!(choose_rank(&s, 64.0, &RankRule::Fixed(2)), 2);
    }

    #[test]
    fn host_delta_op_is_exact_and_thread_count_independent() {
        // 600 rows: three blocks, the last one partial.
        let a = linalg::rng::gaussian_matrix(600, 70, 1)
            .as_standard_layout()
            .into_owned();
        let x = linalg::rng::gaussian_matrix(70, 9, 2);
        let y = linalg::rng::gaussian_matrix(600, 9, 3);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let op = HostDeltaOp::new(a.view());
                (op.apply(x.view()), op.apply_t(y.view()))
            })
        };
        let (ax1, aty1) = run(1);
        let (ax3, aty3) = run(3);
        assert_eq!(ax1, ax3);
        assert_eq!(aty1, aty3);
        // Against f64 products.
        let check = |got: &Array2<f32>, l: ArrayView2<f32>, r: ArrayView2<f32>| {
            for i in 0..got.nrows() {
                for j in 0..got.ncols() {
                    let (mut v, mut mag) = (0f64, 0f64);
                    for k in 0..l.ncols() {
                        v += l[[i, k]] as f64 * r[[k, j]] as f64;
                        mag += (l[[i, k]] as f64 * r[[k, j]] as f64).abs();
                    }
                    assert!((got[[i, j]] as f64 - v).abs() <= 1e-5 * mag, "[{i}, {j}]");
                }
            }
        };
        check(&ax1, a.view(), x.view());
        check(&aty1, a.t(), y.view());
    }

    /// The closed-form residual against an f64 computation of `‖ΔW − U_k·S_k·V_kᵀ‖²` from the
    /// factors, on a matrix with a slowly decaying spectrum plus noise (relative error ~0.3), and
    /// the fallback for a nearly exact low-rank `ΔW`.
    #[test]
    fn closed_form_residual_matches_the_explicit_one() {
        let (m, n) = (300, 200);
        let low = |terms: usize| {
            let u = linalg::rng::gaussian_matrix(m, terms, 5);
            let mut v = linalg::rng::gaussian_matrix(terms, n, 6);
            for (j, mut row) in v.axis_iter_mut(ndarray::Axis(0)).enumerate() {
                row.mapv_inplace(|x| x / (j + 1) as f32);
            }
            linalg::dense::FAER.matmul(u.view(), v.view())
        };
        let noise = linalg::rng::gaussian_matrix(m, n, 7);
        let explicit = |d: &Array2<f32>, f: &Factorization| {
            let (b, a) = linalg::split_factors(&f.svd, f.rank);
            let mut r = 0f64;
            for i in 0..m {
                for j in 0..n {
                    let p: f64 = (0..f.rank)
                        .map(|k| b[[i, k]] as f64 * a[[k, j]] as f64)
                        .sum();
                    r += (d[[i, j]] as f64 - p).powi(2);
                }
            }
            r
        };
        let opts = RsvdOptions {
            oversample: 10,
            power_iters: 2,
            seed: 3,
        };
        // 40 terms + noise at rank 8: residual ~0.3; 8 terms + tiny noise: ~1e-6.
        for (terms, noise_std, expect_closed) in [(40, 0.05f32, true), (8, 1e-6, false)] {
            let d = &low(terms) + &noise.mapv(|x| x * noise_std);
            let d = d.as_standard_layout().into_owned();
            let norm_sq = linalg::frobenius_norm_sq(d.view());
            let op = HostDeltaOp::new(d.view());
            let f = factorize(&op, norm_sq, &RankRule::Fixed(8), false, &opts);
            let want = explicit(&d, &f);
            match closed_form_residual_sq(&f, norm_sq) {
                Some(got) => {
                    assert!(
                        expect_closed,
                        "noise {noise_std}: closed form where it cancels"
                    );
                    assert!(
                        (got - want).abs() <= 1e-4 * want,
                        "closed form {got} vs explicit {want}"
                    );
                }
                None => {
                    assert!(
                        !expect_closed,
                        "noise {noise_std}: explicit where closed is fine"
                    );
                    // Rightly: there the difference would be all rounding.
                    let kept: f64 = f.svd.s[..f.rank].iter().map(|&x| x as f64 * x as f64).sum();
                    let naive = norm_sq - kept;
                    assert!((naive - want).abs() > 1e-2 * want, "{naive} vs {want}");
                }
            }
        }
    }

    #[test]
    fn module_seed_depends_on_seed_and_name() {
        assert_eq!(module_seed(0, "a.weight"), module_seed(0, "a.weight"));
        assert_ne!(module_seed(0, "a.weight"), module_seed(1, "a.weight"));
        assert_ne!(module_seed(0, "a.weight"), module_seed(0, "b.weight"));
    }

    #[test]
    fn embedding_names() {
        for n in [
            "model.embed_tokens",
            "transformer.wte",
            "transformer.wpe",
            "bert.embeddings.word_embeddings",
            "shared",
        ] {
            assert!(is_embedding_module(n), "{n}");
        }
        for n in [
            "gpt_neox.embed_out",
            "model.layers.0.self_attn.q_proj",
            "lm_head",
        ] {
            assert!(!is_embedding_module(n), "{n}");
        }
    }
}
