//! The operators an extraction factors: `M = W − W0` as a linear operator, over the host copy of
//! `ΔW` ([`HostDeltaOp`]) or on a GPU by the delta-sketch kernels, as the [`Engine`] chooses.
//! Must not choose ranks or write, nor choose between CPU and GPU itself (`backend::Engine` does).

use crate::backend::cpu_forward::{DeltaPair, StoredMatrix};
use crate::backend::Engine;
use crate::dtype::Dtype;
use crate::linalg::dense::{faer_matmul, faer_svd, thin_qr, with_faer, FAER};
use crate::linalg::{skinny, Dense, LinearOperator, Svd};
use anyhow::Result;
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

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

/// Where the products `ΔW·X`, `ΔWᵀ·Y` of the randomized SVD run: implemented by the [`Engine`],
/// whose CPU engine wraps the host copy of `ΔW` and whose GPU engine forms `W − W0` from the
/// stored bytes on the device instead.
pub trait DeltaOperators {
    /// One line for the summary ("cpu (2 threads)").
    fn describe(&self) -> String;
    /// The operator for one module.
    fn operator<'a>(&'a self, input: &DeltaInput<'a>) -> Result<Box<dyn LinearOperator + 'a>>;
}

/// The products run where the engine says ([`Engine::delta_operator`]: the GPU's delta-sketch
/// kernels, or the host copy of `ΔW` through [`HostDeltaOp`]); the summary names the engine.
impl DeltaOperators for Engine {
    fn describe(&self) -> String {
        Engine::describe(self)
    }

    fn operator<'a>(&'a self, input: &DeltaInput<'a>) -> Result<Box<dyn LinearOperator + 'a>> {
        let stored = |bytes, dtype| StoredMatrix {
            bytes,
            dtype,
            rows: input.rows,
            cols: input.cols,
        };
        let pair = DeltaPair {
            w: stored(input.w, input.w_dtype),
            w0: stored(input.w0, input.w0_dtype),
        };
        self.delta_operator(pair, Box::new(HostDeltaOp::new(input.delta)))
            .map_err(|e| anyhow::anyhow!("tensor `{}`: gpu: {e}", input.name))
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

pub(super) fn seq_matmul(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
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
/// range finder, run in [`linalg::householder`](crate::linalg::householder).
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
