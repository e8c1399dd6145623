//! Frozen weight matrices (memory-mapped views or owned f32 values) and linear layers with LoRA
//! adapters applied **unmerged**: `y = x·W0ᵀ + b + Σₐ sₐ·((x·Aₐᵀ)·Bₐᵀ + bₐ)`, and its backward
//! (gradients of the input and, for trainable adapters, of `A` and `B`).
//!
//! Stored weights are read in place when their dtype is the compute type and the data is aligned
//! (f32 checkpoints in f32); other dtypes (bf16, f16) are decoded a block of rows at a time on
//! every use, so resident memory stays at the checkpoint's own size. On `Exec::Gpu` the f32
//! forward of a frozen layer runs through `backend::gpu::lora_forward_resident` (WGSL), biases on
//! the CPU: the first GPU forward of a matrix uploads it once (`DeviceSlot`) and later forwards
//! (every batch of an eval) reuse the device copy; a weight whose stacked `B` tiles do not fit
//! the resident tiles, or that cannot be kept on the device (out of memory), goes through
//! `backend::gpu::lora_forward` instead, which uploads `W0` per call (same kernels, same bits).
//!
//! Must not modify the frozen weights: adapters stay unmerged here (merging in memory is
//! `llama/attach.rs`'s, by the merge kernel).

use super::scalar::{gemm, gemm_raw, stored_as, MatView, Real};
use crate::backend::cpu_forward::{ForwardAdapter, StoredMatrix};
use crate::backend::gpu::{GpuContext, GpuError, ResidentWeight};
use crate::dtype::Dtype;
use anyhow::Result;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// Decoded elements per block when a stored matrix must be converted.
const BLOCK_ELEMS: usize = 1 << 20;

/// Where matrix products run: the backend's (see [`crate::backend::Exec`]).
pub use crate::backend::Exec;

/// Where a weight matrix's values live.
#[derive(Debug, Clone)]
pub enum MatrixData<'c> {
    /// Bytes inside a memory-mapped checkpoint, in their stored dtype.
    Stored { bytes: &'c [u8], dtype: Dtype },
    /// f32 values in memory (merged in memory, replaced, or synthetic).
    Owned(Arc<Vec<f32>>),
}

/// A frozen `rows × cols` row-major matrix.
#[derive(Debug, Clone)]
pub struct Matrix<'c> {
    pub data: MatrixData<'c>,
    pub rows: usize,
    pub cols: usize,
    /// The device copy for `Exec::Gpu`, made on the first GPU forward. Built fresh by
    /// [`Matrix::new`]; a clone shares it (same values). Code that changes `data` builds a new
    /// matrix rather than assigning the field.
    device: DeviceSlot,
}

/// What [`Linear::forward`] on the GPU keeps of a matrix between calls.
#[derive(Debug, Clone, Default)]
struct DeviceSlot(Arc<Mutex<DeviceCopy>>);

#[derive(Debug, Default)]
enum DeviceCopy {
    /// No GPU forward yet.
    #[default]
    None,
    /// Uploaded once, on the context it records.
    Resident(Arc<ResidentWeight>),
    /// Not kept (it did not fit): every GPU forward uploads it.
    PerCall,
}

impl<'c> Matrix<'c> {
    pub fn new(data: MatrixData<'c>, rows: usize, cols: usize) -> Self {
        Matrix {
            data,
            rows,
            cols,
            device: DeviceSlot::default(),
        }
    }

    pub fn owned(values: Vec<f32>, rows: usize, cols: usize) -> Matrix<'static> {
        assert_eq!(values.len(), rows * cols);
        Matrix::new(MatrixData::Owned(Arc::new(values)), rows, cols)
    }

    /// `X·Wᵀ + Σ s·(X·Aᵀ)·Bᵀ` on the GPU with this matrix resident on the device (uploaded on
    /// the first call, reused by later ones on the same context).
    fn gpu_forward(
        &self,
        ctx: &GpuContext,
        x: &[f32],
        n: usize,
        ads: &[ForwardAdapter],
    ) -> Result<Vec<f32>, GpuError> {
        let stored = self.stored();
        // Validates X, W0 and the adapters against each other (as the per-call path does).
        crate::backend::cpu_forward::validate_forward(x, n, &stored, ads)?;
        let resident = {
            let mut slot = self.device.0.lock().unwrap_or_else(|e| e.into_inner());
            match &*slot {
                DeviceCopy::Resident(r) if r.on(ctx) => Some(r.clone()),
                DeviceCopy::PerCall => None,
                // First use (or another context): upload once.
                _ => match ResidentWeight::new(ctx, &stored) {
                    Ok(r) => {
                        let r = Arc::new(r);
                        *slot = DeviceCopy::Resident(r.clone());
                        Some(r)
                    }
                    Err(GpuError::TooLarge { .. } | GpuError::Wgpu(_)) => {
                        *slot = DeviceCopy::PerCall;
                        None
                    }
                    Err(e) => return Err(e),
                },
            }
        };
        if let Some(r) = resident {
            match crate::backend::gpu::lora_forward_resident(ctx, x, n, &r, ads) {
                Err(GpuError::TooLarge { .. }) => {}
                other => return other,
            }
        }
        crate::backend::gpu::lora_forward(ctx, x, n, &stored, ads)
    }

    /// Stored bytes and dtype (owned values as F32 bytes).
    pub fn bytes(&self) -> (&[u8], Dtype) {
        match &self.data {
            MatrixData::Stored { bytes, dtype } => (bytes, *dtype),
            MatrixData::Owned(v) => (bytemuck::cast_slice(v.as_slice()), Dtype::F32),
        }
    }

    pub fn dtype(&self) -> Dtype {
        self.bytes().1
    }

    /// The view the backend kernels take.
    pub fn stored(&self) -> StoredMatrix<'_> {
        let (bytes, dtype) = self.bytes();
        StoredMatrix {
            bytes,
            dtype,
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// Rows `r0..r1` as `T` values (borrowed when possible).
    pub fn rows_as<T: Real>(&self, r0: usize, r1: usize) -> Cow<'_, [T]> {
        let (bytes, dtype) = self.bytes();
        let es = dtype.bitsize() / 8;
        stored_as(&bytes[r0 * self.cols * es..r1 * self.cols * es], dtype)
    }

    /// Rows per block in products: everything when the values can be borrowed.
    fn block_rows<T: Real>(&self) -> usize {
        let (bytes, dtype) = self.bytes();
        if T::borrow_stored(bytes, dtype).is_some() {
            self.rows.max(1)
        } else {
            (BLOCK_ELEMS / self.cols.max(1)).max(1)
        }
    }

    /// `X·Wᵀ` as a new `n × rows` vector, written once by the products (not zero-filled first).
    pub fn mul_t<T: Real>(&self, x: &[T], n: usize) -> Vec<T> {
        let d = self.rows;
        let step = self.block_rows::<T>();
        let xv = MatView::new(x, n, self.cols);
        let len = n.checked_mul(d).expect("mul_t: output size overflows");
        let mut y: Vec<T> = Vec::with_capacity(len);
        let mut r0 = 0;
        while r0 < d {
            let r1 = (r0 + step).min(d);
            let w = self.rows_as::<T>(r0, r1);
            // SAFETY: columns `r0..r1` of the `n × d` output (row stride `d`) lie inside the
            // buffer's capacity; the row blocks cover every column once, and `gemm_raw` without
            // accumulation writes every element of its block and reads none.
            unsafe {
                gemm_raw(
                    y.as_mut_ptr().add(r0),
                    d,
                    xv,
                    MatView::new(&w, r1 - r0, self.cols).t(),
                    false,
                )
            };
            r0 = r1;
        }
        // SAFETY: all `n·d` elements were written above (none when `n` or `d` is 0).
        unsafe { y.set_len(len) };
        y
    }

    /// `dX += dY·W`: `dY` is `n × rows`, `dX` is `n × cols`.
    pub fn mul_acc<T: Real>(&self, dy: &[T], n: usize, dx: &mut [T]) {
        let step = self.block_rows::<T>();
        let mut r0 = 0;
        while r0 < self.rows {
            let r1 = (r0 + step).min(self.rows);
            let w = self.rows_as::<T>(r0, r1);
            gemm(
                dx,
                self.cols,
                MatView::strided(&dy[r0..], n, r1 - r0, self.rows),
                MatView::new(&w, r1 - r0, self.cols),
                true,
            );
            r0 = r1;
        }
    }

    /// All values as f32 (a copy).
    pub fn to_f32(&self) -> Vec<f32> {
        self.rows_as::<f32>(0, self.rows).into_owned()
    }
}

/// One LoRA adapter on a linear layer: `scale · ((x·Aᵀ)·Bᵀ + bias)`, `A` `rank × in`, `B`
/// `out × rank`, row-major.
#[derive(Debug, Clone)]
pub struct Lora<T> {
    /// Where it came from (adapter path) or `trainable`.
    pub source: String,
    pub a: Vec<T>,
    pub b: Vec<T>,
    pub rank: usize,
    pub scale: T,
    /// PEFT `lora_B.bias` (`lora_bias = true`).
    pub bias: Option<Vec<T>>,
    /// Receives gradients in [`Linear::backward`].
    pub trainable: bool,
}

/// Gradients of one trainable adapter's factors.
#[derive(Debug, Clone)]
pub struct LoraGrad<T> {
    pub a: Vec<T>,
    pub b: Vec<T>,
}

impl<T: Real> LoraGrad<T> {
    pub fn zeros(l: &Lora<T>) -> Self {
        LoraGrad {
            a: vec![T::ZERO; l.a.len()],
            b: vec![T::ZERO; l.b.len()],
        }
    }
}

/// What a trainable adapter's backward needs from its forward: `t = x·Aᵀ` (`n × rank`).
pub type LoraTape<T> = Option<Vec<T>>;

/// A frozen linear layer (`out × in` weight, optional bias) with adapters.
#[derive(Debug, Clone)]
pub struct Linear<'c, T> {
    /// Module path (`model.layers.0.self_attn.q_proj`).
    pub name: String,
    pub w: Matrix<'c>,
    pub bias: Option<Vec<T>>,
    pub loras: Vec<Lora<T>>,
    /// The weight before the first in-memory merge changed `w` (`None` until then): PEFT takes
    /// a DoRA adapter's norm from the unmerged base weight, whatever was merged before it.
    pub base0: Option<Matrix<'c>>,
}

impl<'c, T: Real> Linear<'c, T> {
    pub fn out_features(&self) -> usize {
        self.w.rows
    }

    pub fn in_features(&self) -> usize {
        self.w.cols
    }

    /// The trainable adapter, if any (at most one per layer).
    pub fn trainable(&self) -> Option<&Lora<T>> {
        self.loras.iter().find(|l| l.trainable)
    }

    /// The trainable adapter, mutably (the optimizer's step and a resumed state write it).
    pub fn trainable_mut(&mut self) -> Option<&mut Lora<T>> {
        self.loras.iter_mut().find(|l| l.trainable)
    }

    /// `Y = X·W0ᵀ + b + Σ s·((X·Aᵀ)·Bᵀ + b_lora)` for `X` `n × in`; with `tape`, also returns
    /// `X·Aᵀ` of the trainable adapter for the backward.
    pub fn forward(
        &self,
        x: &[T],
        n: usize,
        exec: Exec,
        tape: bool,
    ) -> Result<(Vec<T>, LoraTape<T>)> {
        let (d, k) = (self.out_features(), self.in_features());
        debug_assert_eq!(x.len(), n * k);
        let mut kept = None;
        let mut y = match (exec, T::as_f32(x)) {
            (Exec::Gpu(ctx), Some(xf)) if !tape && self.loras.iter().all(|l| !l.trainable) => {
                let facts: Vec<(&[f32], &[f32])> = self
                    .loras
                    .iter()
                    .filter_map(|l| Some((T::as_f32(&l.a)?, T::as_f32(&l.b)?)))
                    .collect();
                let ads: Vec<ForwardAdapter> = self
                    .loras
                    .iter()
                    .zip(&facts)
                    .map(|(l, (a, b))| ForwardAdapter {
                        a,
                        b,
                        rank: l.rank,
                        scale: l.scale.to_f32(),
                    })
                    .collect();
                let y = self.w.gpu_forward(ctx, xf, n, &ads)?;
                y.into_iter().map(T::from_f32).collect()
            }
            _ => {
                let mut y = self.w.mul_t(x, n);
                for l in &self.loras {
                    // t = s·(X·Aᵀ), then Y += t·Bᵀ.
                    let t = super::scalar::matmul(
                        MatView::new(x, n, k),
                        MatView::new(&l.a, l.rank, k).t(),
                    );
                    let mut ts = t.clone();
                    for v in ts.iter_mut() {
                        *v *= l.scale;
                    }
                    gemm(
                        &mut y,
                        d,
                        MatView::new(&ts, n, l.rank),
                        MatView::new(&l.b, d, l.rank).t(),
                        true,
                    );
                    if l.trainable && tape {
                        kept = Some(t);
                    }
                }
                y
            }
        };
        let mut add_bias = |b: &[T], s: T| {
            for row in y.chunks_exact_mut(d) {
                for (v, bb) in row.iter_mut().zip(b) {
                    *v += s * *bb;
                }
            }
        };
        if let Some(b) = &self.bias {
            add_bias(b, T::ONE);
        }
        for l in &self.loras {
            if let Some(b) = &l.bias {
                add_bias(b, l.scale);
            }
        }
        Ok((y, kept))
    }

    /// Backward of [`Linear::forward`]: `dX += dY·W0 + Σ s·(dY·B)·A`; for the trainable adapter
    /// `dB += s·dYᵀ·t` and `dA += s·(dY·B)ᵀ·X` into `grad`.
    pub fn backward(
        &self,
        x: &[T],
        n: usize,
        dy: &[T],
        tape: &LoraTape<T>,
        dx: &mut [T],
        grad: Option<&mut LoraGrad<T>>,
    ) {
        let (d, k) = (self.out_features(), self.in_features());
        self.w.mul_acc(dy, n, dx);
        let mut grad = grad;
        for l in &self.loras {
            // u = s·(dY·B)  (n × r)
            let mut u =
                super::scalar::matmul(MatView::new(dy, n, d), MatView::new(&l.b, d, l.rank));
            for v in u.iter_mut() {
                *v *= l.scale;
            }
            gemm(
                dx,
                k,
                MatView::new(&u, n, l.rank),
                MatView::new(&l.a, l.rank, k),
                true,
            );
            if l.trainable {
                if let (Some(g), Some(t)) = (grad.as_deref_mut(), tape.as_ref()) {
                    // dA += uᵀ·X
                    gemm(
                        &mut g.a,
                        k,
                        MatView::new(&u, n, l.rank).t(),
                        MatView::new(x, n, k),
                        true,
                    );
                    // dB += s·dYᵀ·t
                    let mut ts = t.clone();
                    for v in ts.iter_mut() {
                        *v *= l.scale;
                    }
                    gemm(
                        &mut g.b,
                        l.rank,
                        MatView::new(dy, n, d).t(),
                        MatView::new(&ts, n, l.rank),
                        true,
                    );
                }
            }
        }
    }
}
