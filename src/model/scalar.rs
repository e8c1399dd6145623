//! The element type of a forward/backward pass ([`Real`]: `f32` for eval and training, `f64` for
//! the gradient checks, through the same code) and the few matrix products the model needs, on
//! faer's GEMM.
//!
//! Matrices are row-major slices with a row stride ([`MatView`]), so heads of a
//! `[tokens, heads·head_dim]` activation are views without copies. Large products are cut into
//! fixed output tiles, each a sequential faer product, run on the rayon pool: the results do not
//! depend on the thread count, which keeps training deterministic.
//!
//! Must not let results depend on the thread count (fixed output tiles).

use crate::dtype::{self, Dtype};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::borrow::Cow;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

/// Work (multiply-adds) from which a product runs on the rayon pool.
const PAR_WORK: usize = 1 << 23;

/// A float type the model computes in.
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + Debug
    + PartialOrd
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    /// Safetensors dtype of this type (`F32` / `F64`).
    const DTYPE: Dtype;
    fn from_f64(x: f64) -> Self;
    fn from_f32(x: f32) -> Self;
    fn to_f64(self) -> f64;
    fn to_f32(self) -> f32;
    fn exp(self) -> Self;
    /// `x ← eˣ` over a slice: for f32 a branch-free Cephes-style `expf` (≤ 2 ulp, vectorised
    /// by the compiler; arguments below −87.3 give 0), for f64 `f64::exp`.
    fn exp_slice(x: &mut [Self]);
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn max(self, o: Self) -> Self;
    fn is_finite(self) -> bool;
    /// Stored bytes as `&[Self]` without a copy (same dtype, aligned), else `None`.
    fn borrow_stored(bytes: &[u8], dtype: Dtype) -> Option<&[Self]>;
    /// Decodes stored float bytes (F32, F16, BF16, F64) into `out`.
    fn decode_into(dtype: Dtype, bytes: &[u8], out: &mut [Self]);
    /// `x` as `f32` values without a copy, when `Self` is `f32`.
    fn as_f32(x: &[Self]) -> Option<&[f32]>;
    /// `dst (+)= alpha · a · b` with faer.
    fn matmul(dst: MatMut<'_, Self>, acc: bool, a: MatRef<'_, Self>, b: MatRef<'_, Self>, par: Par);
}

macro_rules! real_impl {
    ($t:ty, $dt:expr, $exp:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const DTYPE: Dtype = $dt;
            #[inline]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn from_f32(x: f32) -> Self {
                x as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn exp_slice(x: &mut [Self]) {
                $exp(x)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn borrow_stored(bytes: &[u8], dtype: Dtype) -> Option<&[Self]> {
                if dtype != $dt {
                    return None;
                }
                bytemuck::try_cast_slice(bytes).ok()
            }
            fn decode_into(dtype: Dtype, bytes: &[u8], out: &mut [Self]) {
                decode_generic(dtype, bytes, out)
            }
            fn as_f32(x: &[Self]) -> Option<&[f32]> {
                cast_if_f32(x)
            }
            fn matmul(
                dst: MatMut<'_, Self>,
                acc: bool,
                a: MatRef<'_, Self>,
                b: MatRef<'_, Self>,
                par: Par,
            ) {
                faer::linalg::matmul::matmul(
                    dst,
                    if acc { Accum::Add } else { Accum::Replace },
                    a,
                    b,
                    1.0 as $t,
                    par,
                );
                crate::linalg::dense::clear_upper_vector_state();
            }
        }
    };
}

fn exp_f64_slice(x: &mut [f64]) {
    for v in x.iter_mut() {
        *v = v.exp();
    }
}

/// The one CPU-feature dispatch of the SIMD kernels (see [`crate::backend::simd`]), used here
/// under the names the model's kernels know.
pub(crate) use crate::backend::simd::multiversion;
#[doc(hidden)]
pub use crate::backend::simd::with_baseline_kernels;

multiversion! {
    /// [`expf`] over a slice, compiled per CPU level (the same operations, so the same results).
    fn expf_slice(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = expf(*v);
        }
    }
}

/// `eˣ` in f32 without branches or libm (Cephes `expf`: Cody–Waite reduction by ln 2, degree-5
/// minimax polynomial, exponent bits), so loops over it vectorise; ≤ 2 ulp on [−87.3, 88].
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting rounds to an integer

    // `max`/`min` map NaN to a bound (unlike `clamp`, which keeps NaN), so `n` below is
    // always an integer in range; NaN is passed through at the end.
    #[allow(clippy::manual_clamp)]
    let xc = x.max(-87.0).min(88.0);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // SAFETY: `n` is an integer in [−126, 127] (from the bounded argument), so the conversion
    // is exact; unlike `as`, it compiles to one vector instruction (no saturation checks).
    let ni: i32 = unsafe { n.to_int_unchecked() };
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    let e = y * scale;
    if x < -87.0 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        e
    }
}

fn cast_if_f32<T: 'static>(x: &[T]) -> Option<&[f32]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T is f32 (checked by TypeId), so the slice has the same layout.
        Some(unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
    } else {
        None
    }
}

fn decode_generic<T: Real>(dtype: Dtype, bytes: &[u8], out: &mut [T]) {
    if dtype == Dtype::F64 {
        assert_eq!(bytes.len(), out.len() * 8);
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            *o = T::from_f64(f64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        return;
    }
    // F32 / F16 / BF16 widen exactly to f32.
    const CHUNK: usize = 4096;
    let es = dtype.bitsize() / 8;
    let mut buf = [0f32; CHUNK];
    for (o, b) in out.chunks_mut(CHUNK).zip(bytes.chunks(CHUNK * es)) {
        let n = o.len();
        dtype::decode_into(dtype, b, &mut buf[..n]);
        for (d, s) in o.iter_mut().zip(&buf[..n]) {
            *d = T::from_f32(*s);
        }
    }
}

real_impl!(f32, Dtype::F32, expf_slice);
real_impl!(f64, Dtype::F64, exp_f64_slice);

/// Independent accumulators of the slice reductions below: a single running sum is one long
/// dependency chain (the compiler may not reorder float additions). 32 of them fill two
/// AVX-512 registers (or eight SSE ones), so the adds' latency overlaps instead of bounding
/// the loop (eight, one register, ran at a quarter of the adder's throughput).
const LANES: usize = 32;
const _: () = assert!(LANES.is_power_of_two(), "combine halves the accumulators");

/// The accumulators added pairwise, halves first: a fixed tree.
#[inline(always)]
fn combine<T: Real>(mut acc: [T; LANES], op: impl Fn(T, T) -> T) -> T {
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] = op(acc[l], acc[l + w]);
        }
    }
    acc[0]
}

/// `Σ f(i)` over `0..n` in `LANES` interleaved partial sums, combined pairwise at the end: a
/// fixed order, so the same bits on every run and thread count.
#[inline(always)]
pub fn reduce_lanes<T: Real>(n: usize, f: impl Fn(usize) -> T) -> T {
    let mut acc = [T::ZERO; LANES];
    let full = n - n % LANES;
    let mut i = 0;
    while i < full {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
        i += LANES;
    }
    let mut s = combine(acc, |a, b| a + b);
    for j in full..n {
        s += f(j);
    }
    s
}

/// `Σ x` (see [`reduce_lanes`]).
#[inline(always)]
pub fn sum<T: Real>(x: &[T]) -> T {
    reduce_lanes(x.len(), |i| x[i])
}

/// `Σ x⊙y` (see [`reduce_lanes`]).
#[inline(always)]
pub fn dot<T: Real>(x: &[T], y: &[T]) -> T {
    let y = &y[..x.len()];
    reduce_lanes(x.len(), |i| x[i] * y[i])
}

/// The largest value (`−∞` for an empty slice; NaNs are skipped, as `f32::max` does).
#[inline(always)]
pub fn max<T: Real>(x: &[T]) -> T {
    let mut acc = [T::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    let m = combine(acc, |a, b| a.max(b));
    chunks.remainder().iter().fold(m, |a, &b| a.max(b))
}

/// Stored bytes as `Self` values: borrowed when the layout allows, else decoded.
pub fn stored_as<T: Real>(bytes: &[u8], dtype: Dtype) -> Cow<'_, [T]> {
    match T::borrow_stored(bytes, dtype) {
        Some(s) => Cow::Borrowed(s),
        None => {
            let n = bytes.len() * 8 / dtype.bitsize();
            let mut v = vec![T::ZERO; n];
            T::decode_into(dtype, bytes, &mut v);
            Cow::Owned(v)
        }
    }
}

/// A row-major matrix view: `rows × cols` with `stride` elements between rows, optionally
/// read transposed (then it stands for the `cols × rows` matrix).
#[derive(Clone, Copy, Debug)]
pub struct MatView<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    stride: usize,
    transposed: bool,
}

impl<'a, T: Real> MatView<'a, T> {
    /// A contiguous row-major `rows × cols` matrix.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// Rows `stride` elements apart, starting at `data[0]`.
    pub fn strided(data: &'a [T], rows: usize, cols: usize, stride: usize) -> Self {
        assert!(
            rows == 0 || cols == 0 || (rows - 1) * stride + cols <= data.len(),
            "view {rows}×{cols} (stride {stride}) over {} values",
            data.len()
        );
        MatView {
            data,
            rows,
            cols,
            stride,
            transposed: false,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        MatView {
            transposed: !self.transposed,
            ..self
        }
    }

    /// Logical shape.
    pub fn shape(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    fn faer(&self) -> MatRef<'a, T> {
        let m = if self.rows == 0 || self.cols == 0 {
            MatRef::from_row_major_slice(&self.data[..0], self.rows, self.cols)
        } else {
            MatRef::from_row_major_slice_with_stride(self.data, self.rows, self.cols, self.stride)
        };
        if self.transposed {
            m.transpose()
        } else {
            m
        }
    }
}

/// `C = A·B` (or `C += A·B` with `acc`), `C` row-major `m × n` with row stride `ldc`.
pub fn gemm<T: Real>(c: &mut [T], ldc: usize, a: MatView<T>, b: MatView<T>, acc: bool) {
    let (m, _) = a.shape();
    let (_, n) = b.shape();
    assert!(
        m == 0
            || n == 0
            || (m - 1)
                .checked_mul(ldc)
                .and_then(|x| x.checked_add(n))
                .is_some_and(|end| end <= c.len()),
        "gemm: output too small"
    );
    // SAFETY: `c` is a live, exclusively borrowed slice covering the output (checked above).
    unsafe { gemm_raw(c.as_mut_ptr(), ldc, a, b, acc) }
}

/// [`gemm`] into raw memory; with `acc = false` every output element is written and none is
/// read (faer's `Accum::Replace` overwrites), so `c` may be uninitialised.
///
/// # Safety
/// `c` must be valid for writes (and, with `acc`, reads) of `(m − 1)·ldc + n` elements, and
/// not aliased by `a` or `b`.
pub unsafe fn gemm_raw<T: Real>(c: *mut T, ldc: usize, a: MatView<T>, b: MatView<T>, acc: bool) {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    assert_eq!(k, k2, "gemm: inner dimensions {m}×{k} · {k2}×{n}");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: in bounds by the caller's contract.
                    unsafe { c.add(i * ldc + j).write(T::ZERO) };
                }
            }
        }
        return;
    }
    // Small products (attention heads, LoRA factors) run sequentially. A large one called from
    // inside a rayon task still splits: nested tasks are fine on rayon's pool.
    if m.saturating_mul(n).saturating_mul(k) < PAR_WORK {
        // SAFETY: an `m × n` view with row stride `ldc` inside the caller's buffer.
        let dst = unsafe { MatMut::from_raw_parts_mut(c, m, n, ldc as isize, 1isize) };
        T::matmul(dst, acc, a.faer(), b.faer(), Par::Seq);
        return;
    }
    // Large products: fixed `TILE_M × TILE_N` output tiles, one sequential faer product each,
    // spread over the rayon pool. The tiling does not depend on the thread count, so neither do
    // the results; independent tasks (no barriers inside a product) keep both cores busy even
    // when one is shared with another process.
    let (ta, tb) = (a.faer(), b.faer());
    let tiles: Vec<(usize, usize)> = (0..m)
        .step_by(TILE_M)
        .flat_map(|i| (0..n).step_by(TILE_N).map(move |j| (i, j)))
        .collect();
    let ptr = SendPtr(c);
    tiles.par_iter().for_each(|&(i0, j0)| {
        let (mt, nt) = (TILE_M.min(m - i0), TILE_N.min(n - j0));
        let p = &ptr;
        // SAFETY: tiles are disjoint `mt × nt` blocks of the `m × n` output (row stride `ldc`,
        // in bounds by the caller's contract), each written by one task only.
        let dst = unsafe {
            MatMut::from_raw_parts_mut(p.0.add(i0 * ldc + j0), mt, nt, ldc as isize, 1isize)
        };
        T::matmul(dst, acc, ta.subrows(i0, mt), tb.subcols(j0, nt), Par::Seq);
    });
}

/// Output tile of a parallel product (rows × columns).
const TILE_M: usize = 256;
const TILE_N: usize = 256;

struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint output tiles to rayon tasks (see `gemm`).
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// `A·B` as a new row-major `m × n` vector. The product overwrites every element, so the
/// vector is not zero-filled first (for activations that is a `memset` of the whole output).
pub fn matmul<T: Real>(a: MatView<T>, b: MatView<T>) -> Vec<T> {
    let (m, _) = a.shape();
    let (_, n) = b.shape();
    let len = m.checked_mul(n).expect("matmul: output size overflows");
    let mut c = Vec::with_capacity(len);
    // SAFETY: the buffer holds `m·n` elements and `gemm_raw` (acc = false) writes each of them
    // once without reading any, before the length is set.
    unsafe {
        gemm_raw(c.as_mut_ptr(), n, a, b, false);
        c.set_len(len);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_with_strides_and_transposes() {
        // A: 2×3 inside a stride-4 buffer; B: 2×3 used transposed.
        let a = [1.0f64, 2.0, 3.0, 99.0, 4.0, 5.0, 6.0];
        let b = [1.0f64, 0.0, -1.0, 2.0, 1.0, 0.0];
        let av = MatView::strided(&a, 2, 3, 4);
        let c = matmul(av, MatView::new(&b, 2, 3).t());
        assert_eq!(c, vec![-2.0, 4.0, -2.0, 13.0]);
        let mut c2 = vec![1.0; 4];
        gemm(&mut c2, 2, av, MatView::new(&b, 2, 3).t(), true);
        assert_eq!(c2, vec![-1.0, 5.0, -1.0, 14.0]);
        // Aᵀ·A (3×3)
        let ata = matmul(av.t(), av);
        assert_eq!(ata[0], 17.0);
        assert_eq!(ata[8], 45.0);
    }

    #[test]
    fn tiled_products_match_and_do_not_depend_on_the_thread_count() {
        // 300 × 700 × 64 is above `PAR_WORK`: tiles with partial edges in both directions.
        let (m, k, n) = (300, 64, 700);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        let b: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.01)
            .collect();
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let mut c = vec![1.0f32; m * n];
                    gemm(
                        &mut c,
                        n,
                        MatView::new(&a, m, k),
                        MatView::new(&b, n, k).t(),
                        true,
                    );
                    c
                })
        };
        let (c1, c3) = (run(1), run(3));
        assert!(c1.iter().zip(&c3).all(|(x, y)| x.to_bits() == y.to_bits()));
        for i in (0..m).step_by(7) {
            for j in (0..n).step_by(11) {
                let want: f64 = 1.0
                    + (0..k)
                        .map(|p| a[i * k + p] as f64 * b[j * k + p] as f64)
                        .sum::<f64>();
                assert!((c1[i * n + j] as f64 - want).abs() < 1e-5, "{i},{j}");
            }
        }
    }

    #[test]
    fn fast_expf_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = expf(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "{worst:e}");
        assert_eq!(expf(-1000.0), 0.0);
        assert_eq!(expf(0.0), 1.0);
        assert!(expf(f32::NAN).is_nan());
        assert_eq!(expf(f32::INFINITY), expf(88.0));
        let mut v = vec![0.0f32, 1.0, -1.0];
        f32::exp_slice(&mut v);
        assert!((v[1] - std::f32::consts::E).abs() < 1e-6);
        let mut d = vec![1.0f64];
        f64::exp_slice(&mut d);
        assert_eq!(d[0], std::f64::consts::E);
    }

    /// The slice version (AVX-512, AVX2 or plain, whichever this CPU takes) gives the scalar
    /// function's bits, in vector bodies and tails, for ordinary and special arguments.
    #[test]
    fn expf_slice_matches_scalar_bits() {
        let xs: Vec<f32> = (0..10_007)
            .map(|i| -100.0 + i as f32 * 0.0191)
            .chain([
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                -87.0,
                88.0,
                -0.0,
            ])
            .collect();
        for len in [xs.len(), 15, 17, 1] {
            let mut v = xs[..len].to_vec();
            f32::exp_slice(&mut v);
            for (x, y) in xs.iter().zip(&v) {
                assert_eq!(y.to_bits(), expf(*x).to_bits(), "x = {x}");
            }
        }
    }

    #[test]
    fn lane_reductions() {
        for n in [0usize, 1, 7, 8, 9, 23, 31, 32, 33, 64, 100] {
            let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let y: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11).cos()).collect();
            let s: f64 = x.iter().sum();
            let d: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
            assert!((sum(&x) - s).abs() < 1e-12);
            assert!((dot(&x, &y) - d).abs() < 1e-12);
            assert_eq!(max(&x), x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b)));
        }
    }

    #[test]
    fn stored_decoding() {
        let v = [1.5f32, -2.25, 3.0];
        let bytes = dtype::encode(Dtype::BF16, &v);
        let d: Cow<[f64]> = stored_as(&bytes, Dtype::BF16);
        assert_eq!(&*d, &[1.5, -2.25, 3.0]);
        let f = dtype::encode(Dtype::F32, &v);
        let d: Cow<[f32]> = stored_as(&f, Dtype::F32);
        assert_eq!(&*d, &v);
        assert!(<f32 as Real>::as_f32(&[1.0f32]).is_some());
        assert!(<f64 as Real>::as_f32(&[1.0f64]).is_none());
    }
}
