//! CPU twins of the GPU sketch kernels, in f32, and the shape checks the GPU forward shares with
//! its CPU twin.
//!
//! * [`validate_forward`]: the shapes of a low-rank forward `Y = X·W0ᵀ + Σₐ sₐ·(X·Aₐᵀ)·Bₐᵀ`
//!   ([`StoredMatrix`] `W0`, [`ForwardAdapter`]s). The forward's CPU twin is not here: it is the
//!   one eval runs, `model::linear::Linear::forward` on `Exec::Cpu`, and the GPU forward is
//!   tested against that.
//! * [`delta_sketch`] / [`delta_sketch_t`]: `(W − W0)·Ω` and `(W − W0)ᵀ·Q` reading `W` and `W0`
//!   in their stored dtypes a block of rows at a time, never holding `W − W0` whole;
//!   [`DeltaPair`] is a [`LinearOperator`] on them.
//!
//! Arithmetic: stored matrices are decoded to f32 (exactly), `W − W0` is formed per element in
//! f32, and every product is an f32 matrix product by ndarray (matrixmultiply's blocked SGEMM,
//! which may use FMA and its own summation order). Results therefore agree with the GPU kernels
//! to rounding, not bit for bit; the tests bound the difference by the f32 dot-product error
//! bound (see `backend::gpu` tests).

use crate::dtype::{self, Dtype};
use crate::linalg::LinearOperator;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2};

/// Rows of a stored matrix decoded at once (bounds the f32 working copy).
const BLOCK_ELEMS: usize = 1 << 20;

/// Inputs inconsistent with their declared shapes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(pub String);

/// A row-major `rows × cols` matrix in its stored bytes (little-endian `dtype`).
#[derive(Debug, Clone, Copy)]
pub struct StoredMatrix<'a> {
    pub bytes: &'a [u8],
    pub dtype: Dtype,
    pub rows: usize,
    pub cols: usize,
}

impl StoredMatrix<'_> {
    /// Checks the byte length against the shape and that the dtype decodes to f32.
    pub fn validate(&self, what: &str) -> Result<(), ShapeError> {
        if !dtype::is_float_compute(self.dtype) {
            return Err(ShapeError(format!(
                "{what}: dtype {:?} is not a float type",
                self.dtype
            )));
        }
        let n = self
            .rows
            .checked_mul(self.cols)
            .ok_or_else(|| ShapeError(format!("{what}: size overflows")))?;
        if dtype::byte_len(self.dtype, n) != Some(self.bytes.len()) {
            return Err(ShapeError(format!(
                "{what}: {} bytes for {}×{} {:?}",
                self.bytes.len(),
                self.rows,
                self.cols,
                self.dtype
            )));
        }
        Ok(())
    }

    /// Rows `r0..r1` decoded to f32, row-major.
    pub fn decode_rows(&self, r0: usize, r1: usize) -> Vec<f32> {
        let es = self.dtype.bitsize() / 8;
        dtype::decode(
            self.dtype,
            &self.bytes[r0 * self.cols * es..r1 * self.cols * es],
        )
    }

    fn block_rows(&self) -> usize {
        (BLOCK_ELEMS / self.cols.max(1)).max(1)
    }
}

/// One LoRA adapter for a forward: `scale · B·A` with `A` `rank × k` and `B` `d × rank`,
/// row-major f32.
#[derive(Debug, Clone, Copy)]
pub struct ForwardAdapter<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub rank: usize,
    pub scale: f32,
}

/// Checks a forward's inputs: `x` is `n × k`, `w0` is `d × k`, each adapter's factors match.
pub fn validate_forward(
    x: &[f32],
    n: usize,
    w0: &StoredMatrix,
    adapters: &[ForwardAdapter],
) -> Result<(), ShapeError> {
    w0.validate("W0")?;
    let (d, k) = (w0.rows, w0.cols);
    if Some(x.len()) != n.checked_mul(k) {
        return Err(ShapeError(format!("X has {} values for {n}×{k}", x.len())));
    }
    for (i, ad) in adapters.iter().enumerate() {
        if Some(ad.a.len()) != ad.rank.checked_mul(k) || Some(ad.b.len()) != d.checked_mul(ad.rank)
        {
            return Err(ShapeError(format!(
                "adapter {i}: A has {} and B {} values for rank {} with d = {d}, k = {k}",
                ad.a.len(),
                ad.b.len(),
                ad.rank
            )));
        }
    }
    Ok(())
}

/// A fine-tuned matrix `W` and its base `W0`, same shape, each in its stored dtype: the operator
/// `M = W − W0` (`rows × cols`).
#[derive(Debug, Clone, Copy)]
pub struct DeltaPair<'a> {
    pub w: StoredMatrix<'a>,
    pub w0: StoredMatrix<'a>,
}

impl DeltaPair<'_> {
    pub fn rows(&self) -> usize {
        self.w.rows
    }

    pub fn cols(&self) -> usize {
        self.w.cols
    }

    /// Checks both matrices and that their shapes agree.
    pub fn validate(&self) -> Result<(), ShapeError> {
        self.w.validate("W")?;
        self.w0.validate("W0")?;
        if (self.w.rows, self.w.cols) != (self.w0.rows, self.w0.cols) {
            return Err(ShapeError(format!(
                "W is {}×{} but W0 is {}×{}",
                self.w.rows, self.w.cols, self.w0.rows, self.w0.cols
            )));
        }
        Ok(())
    }

    /// Rows `r0..r1` of `W − W0` in f32.
    fn delta_rows(&self, r0: usize, r1: usize) -> Vec<f32> {
        let mut d = self.w.decode_rows(r0, r1);
        let base = self.w0.decode_rows(r0, r1);
        for (x, b) in d.iter_mut().zip(&base) {
            *x -= b;
        }
        d
    }
}

fn check_len(what: &str, got: usize, rows: usize, l: usize) -> Result<(), ShapeError> {
    if Some(got) != rows.checked_mul(l) {
        return Err(ShapeError(format!(
            "{what} has {got} values for {rows}×{l}"
        )));
    }
    Ok(())
}

/// Calls `f(r0, r1, block)` for each block of rows `r0..r1` of `W − W0`, in order, `block` being
/// `(r1 − r0) × cols` (the block height is the one the tensor decodes in).
fn for_each_delta_block(pair: &DeltaPair, mut f: impl FnMut(usize, usize, ArrayView2<f32>)) {
    let (m, k) = (pair.rows(), pair.cols());
    let step = pair.w.block_rows();
    let mut r0 = 0;
    while r0 < m {
        let r1 = (r0 + step).min(m);
        let block = pair.delta_rows(r0, r1);
        f(
            r0,
            r1,
            ArrayView2::from_shape((r1 - r0, k), &block).expect("block shape"),
        );
        r0 = r1;
    }
}

/// `Y = (W − W0)·Ω` for `Ω` `cols × l` (row-major f32); returns `Y`, `rows × l`.
pub fn delta_sketch(pair: &DeltaPair, omega: &[f32], l: usize) -> Result<Vec<f32>, ShapeError> {
    pair.validate()?;
    let (m, k) = (pair.rows(), pair.cols());
    check_len("Ω", omega.len(), k, l)?;
    let om = ArrayView2::from_shape((k, l), omega).expect("checked");
    let mut y = Array2::<f32>::zeros((m, l));
    for_each_delta_block(pair, |r0, r1, mb| {
        general_mat_mul(1.0, &mb, &om, 0.0, &mut y.slice_mut(s![r0..r1, ..]));
    });
    Ok(y.into_raw_vec_and_offset().0)
}

/// `Z = (W − W0)ᵀ·Q` for `Q` `rows × l` (row-major f32); returns `Z`, `cols × l`.
pub fn delta_sketch_t(pair: &DeltaPair, q: &[f32], l: usize) -> Result<Vec<f32>, ShapeError> {
    pair.validate()?;
    let (m, k) = (pair.rows(), pair.cols());
    check_len("Q", q.len(), m, l)?;
    let qm = ArrayView2::from_shape((m, l), q).expect("checked");
    let mut z = Array2::<f32>::zeros((k, l));
    for_each_delta_block(pair, |r0, r1, mb| {
        general_mat_mul(1.0, &mb.t(), &qm.slice(s![r0..r1, ..]), 1.0, &mut z);
    });
    Ok(z.into_raw_vec_and_offset().0)
}

/// `W − W0` as an operator, computed on the CPU a block of rows at a time.
///
/// Panics (as the trait cannot return errors) if the pair is inconsistent: call
/// [`DeltaPair::validate`] first.
impl LinearOperator for DeltaPair<'_> {
    fn rows(&self) -> usize {
        self.w.rows
    }

    fn cols(&self) -> usize {
        self.w.cols
    }

    fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let x = x.as_standard_layout();
        let l = x.ncols();
        let y = delta_sketch(self, x.as_slice().expect("standard layout"), l)
            .unwrap_or_else(|e| panic!("{e}"));
        Array2::from_shape_vec((self.w.rows, l), y).expect("shape")
    }

    fn apply_t(&self, y: ArrayView2<f32>) -> Array2<f32> {
        let y = y.as_standard_layout();
        let l = y.ncols();
        let z = delta_sketch_t(self, y.as_slice().expect("standard layout"), l)
            .unwrap_or_else(|e| panic!("{e}"));
        Array2::from_shape_vec((self.w.cols, l), z).expect("shape")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::rng::Xoshiro256PlusPlus as Rng;

    fn uniform(seed: &mut Rng) -> f32 {
        // Uniform on [-0.5, 0.5), from the one seeded generator (linalg::rng).
        (seed.next_f64() - 0.5) as f32
    }

    fn rand(n: usize, seed: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| uniform(seed)).collect()
    }

    #[test]
    fn forward_rejects_bad_shapes() {
        let w0 = dtype::encode(Dtype::F32, &[0.0; 6]);
        let sm = StoredMatrix {
            bytes: &w0,
            dtype: Dtype::F32,
            rows: 2,
            cols: 3,
        };
        let a = [0.0f32; 3];
        let b = [0.0f32; 2];
        let ads = [ForwardAdapter {
            a: &a,
            b: &b,
            rank: 1,
            scale: 1.0,
        }];
        assert!(validate_forward(&[0.0; 5], 2, &sm, &ads).is_err());
        assert!(validate_forward(&[0.0; 6], 2, &sm, &ads).is_ok());
        let bad = ForwardAdapter {
            a: &a[..2],
            ..ads[0]
        };
        assert!(validate_forward(&[0.0; 6], 2, &sm, &[bad]).is_err());
    }

    #[test]
    fn delta_operator_matches_dense_difference() {
        let mut seed = Rng::seed_from_u64(5);
        let (m, k, l) = (23, 17, 4);
        let w = rand(m * k, &mut seed);
        let w0 = rand(m * k, &mut seed);
        let wb = dtype::encode(Dtype::BF16, &w);
        let w0b = dtype::encode(Dtype::F16, &w0);
        let pair = DeltaPair {
            w: StoredMatrix {
                bytes: &wb,
                dtype: Dtype::BF16,
                rows: m,
                cols: k,
            },
            w0: StoredMatrix {
                bytes: &w0b,
                dtype: Dtype::F16,
                rows: m,
                cols: k,
            },
        };
        let (wr, w0r) = (
            dtype::decode(Dtype::BF16, &wb),
            dtype::decode(Dtype::F16, &w0b),
        );
        let delta: Vec<f32> = wr.iter().zip(&w0r).map(|(a, b)| a - b).collect();
        let dm = Array2::from_shape_vec((m, k), delta).unwrap();
        let om = Array2::from_shape_vec((k, l), rand(k * l, &mut seed)).unwrap();
        let q = Array2::from_shape_vec((m, l), rand(m * l, &mut seed)).unwrap();
        let y = pair.apply(om.view());
        let z = pair.apply_t(q.view());
        let (y_ref, z_ref) = (dm.dot(&om), dm.t().dot(&q));
        for (a, b) in y.iter().zip(&y_ref).chain(z.iter().zip(&z_ref)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(delta_sketch(&pair, &[0.0; 3], 1).is_err());
    }
}
