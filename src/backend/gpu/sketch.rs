//! GPU delta sketch: `Y = (W − W0)·Ω` (`shaders/sketch.wgsl`) and `Z = (W − W0)ᵀ·Q`
//! (`shaders/sketch_t.wgsl`) with `W`, `W0` read in their stored dtypes and the difference formed
//! per element inside the kernels, never on the host. [`GpuDeltaOp`] keeps the row tiles of `W`
//! and `W0` resident on the device between products (a randomized SVD makes `2q + 2` of them) and
//! is a [`LinearOperator`].

use super::context::GpuContext;
use super::error::GpuError;
use super::kernels::{self, GEMM_TILE_M, GEMM_TILE_N};
use super::layout::{dtype_code, elem_bytes, f32s, fit_rows};
use crate::backend::cpu_forward::{self, DeltaPair, ShapeError};
use crate::linalg::LinearOperator;
use ndarray::{Array2, ArrayView2};
use std::sync::Mutex;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SketchParams {
    rows: u32,
    k: u32,
    l: u32,
    w_dtype: u32,
    w0_dtype: u32,
    /// Split-K chunk of the inner dimension (a multiple of the GEMM step): `k` for `sketch`,
    /// the tile's rows for `sketch_t`.
    k_chunk: u32,
    /// Number of split-K chunks (`sketch_t` reads it; `sketch` dispatches that many in z).
    splits: u32,
    _pad: u32,
}

/// Workgroups a sketch dispatch aims for before it splits `k` (a few per compute unit of a large
/// GPU); splits never go below [`MIN_K_CHUNK`] values of `k` each.
const SPLIT_K_TARGET_GROUPS: u64 = 512;
const MIN_K_CHUNK: usize = 64;

/// `(splits, chunk)` for a `rows × k` by `k × l` product: enough splits of `k` to reach
/// [`SPLIT_K_TARGET_GROUPS`] workgroups, chunks a multiple of `GEMM_TK` (16) and at least
/// [`MIN_K_CHUNK`], and the partial products (`splits · rows · l` f32) within `limit` bytes.
pub(crate) fn split_k(rows: usize, k: usize, l: usize, limit: u64) -> (usize, usize) {
    let groups = (l.div_ceil(GEMM_TILE_N as usize) * rows.div_ceil(GEMM_TILE_M as usize)) as u64;
    let max_splits = (k / MIN_K_CHUNK).max(1);
    let by_memory = (limit / (4 * (rows * l).max(1) as u64)).max(1) as usize;
    let want = SPLIT_K_TARGET_GROUPS.div_ceil(groups.max(1)) as usize;
    let splits = want.min(max_splits).min(by_memory).max(1);
    let chunk = k.div_ceil(splits).div_ceil(16) * 16;
    (k.div_ceil(chunk.max(1)).max(1), chunk.max(16))
}

/// `Y = (W − W0)·Ω` for `Ω` `cols × l` (row-major f32); returns `Y`, `rows × l`. Same contract as
/// [`cpu_forward::delta_sketch`].
pub fn delta_sketch(
    ctx: &GpuContext,
    pair: &DeltaPair,
    omega: &[f32],
    l: usize,
) -> Result<Vec<f32>, GpuError> {
    GpuDeltaOp::new(ctx, *pair)?.sketch(omega, l)
}

/// `Z = (W − W0)ᵀ·Q` for `Q` `rows × l` (row-major f32); returns `Z`, `cols × l`. Same contract as
/// [`cpu_forward::delta_sketch_t`].
pub fn delta_sketch_t(
    ctx: &GpuContext,
    pair: &DeltaPair,
    q: &[f32],
    l: usize,
) -> Result<Vec<f32>, GpuError> {
    GpuDeltaOp::new(ctx, *pair)?.sketch_t(q, l)
}

/// Row tiles of `W` and `W0` on the device: `(first row, rows, W buffer, W0 buffer)`.
struct Resident {
    tile_rows: usize,
    tiles: Vec<(usize, usize, wgpu::Buffer, wgpu::Buffer)>,
}

/// `M = W − W0` on the GPU, as a [`LinearOperator`] (e.g. for
/// [`crate::linalg::randomized_svd`]).
///
/// The trait's methods cannot fail, so if a GPU product fails the operator computes that product
/// and every later one with the CPU twin ([`cpu_forward::delta_sketch`]) and keeps the first
/// error for [`GpuDeltaOp::take_error`]. Callers that want errors instead use
/// [`GpuDeltaOp::sketch`] / [`GpuDeltaOp::sketch_t`] directly.
pub struct GpuDeltaOp<'a> {
    ctx: &'a GpuContext,
    pair: DeltaPair<'a>,
    resident: Mutex<Option<Resident>>,
    failed: Mutex<Option<GpuError>>,
}

impl<'a> GpuDeltaOp<'a> {
    /// Checks the pair (shapes, F32/F16/BF16 dtypes); uploads nothing until the first product.
    pub fn new(ctx: &'a GpuContext, pair: DeltaPair<'a>) -> Result<Self, GpuError> {
        pair.validate()?;
        dtype_code(pair.w.dtype)?;
        dtype_code(pair.w0.dtype)?;
        Ok(GpuDeltaOp {
            ctx,
            pair,
            resident: Mutex::new(None),
            failed: Mutex::new(None),
        })
    }

    /// The first GPU error met by the [`LinearOperator`] methods (which then fell back to the
    /// CPU), if any; clears it.
    pub fn take_error(&self) -> Option<GpuError> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Rows per tile for products with `l` columns; checks the bindings that are not tiled.
    fn tile_rows(&self, l: usize) -> Result<usize, GpuError> {
        let (m, k) = (self.pair.rows(), self.pair.cols());
        let limit = self.ctx.max_binding();
        let kl4 = 4 * (k as u64) * (l as u64);
        self.ctx.check_binding("sketch Ω / Z (cols × l f32)", kl4)?;
        let groups = self.ctx.max_groups() as u64 * GEMM_TILE_N as u64;
        if (k as u64) > groups || (l as u64) > groups {
            return Err(GpuError::TooLarge {
                what: format!("sketch grid for {k} × {l}"),
                bytes: kl4,
                limit,
            });
        }
        let row_bytes = (k as u64 * elem_bytes(self.pair.w.dtype))
            .max(k as u64 * elem_bytes(self.pair.w0.dtype))
            .max(4 * l as u64);
        let td = fit_rows(m, row_bytes, limit, self.ctx.max_groups());
        if td == 0 && m > 0 {
            return Err(GpuError::TooLarge {
                what: "one row of W".into(),
                bytes: row_bytes,
                limit,
            });
        }
        Ok(td.max(1))
    }

    /// Runs `f` on the resident tiles for `td` rows per tile, uploading them first if needed.
    fn with_tiles<T>(
        &self,
        td: usize,
        f: impl FnOnce(&Resident) -> Result<T, GpuError>,
    ) -> Result<T, GpuError> {
        let mut guard = self.resident.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().map(|r| r.tile_rows) != Some(td) {
            *guard = None; // free the old tiles first
            let (m, k) = (self.pair.rows(), self.pair.cols());
            let (ew, ew0) = (
                elem_bytes(self.pair.w.dtype) as usize,
                elem_bytes(self.pair.w0.dtype) as usize,
            );
            let tiles = (0..m)
                .step_by(td)
                .map(|r0| {
                    let nr = td.min(m - r0);
                    let w = self.ctx.upload(
                        "sketch w",
                        &self.pair.w.bytes[r0 * k * ew..(r0 + nr) * k * ew],
                    );
                    let w0 = self.ctx.upload(
                        "sketch w0",
                        &self.pair.w0.bytes[r0 * k * ew0..(r0 + nr) * k * ew0],
                    );
                    (r0, nr, w, w0)
                })
                .collect();
            *guard = Some(Resident {
                tile_rows: td,
                tiles,
            });
        }
        f(guard.as_ref().expect("just set"))
    }

    fn params(
        &self,
        rows: usize,
        l: usize,
        (splits, k_chunk): (usize, usize),
    ) -> Result<SketchParams, GpuError> {
        Ok(SketchParams {
            rows: rows as u32,
            k: self.pair.cols() as u32,
            l: l as u32,
            w_dtype: dtype_code(self.pair.w.dtype)?,
            w0_dtype: dtype_code(self.pair.w0.dtype)?,
            k_chunk: k_chunk as u32,
            splits: splits as u32,
            _pad: 0,
        })
    }

    /// `Y = (W − W0)·Ω`, `Ω` `cols × l` row-major; returns `rows × l`.
    pub fn sketch(&self, omega: &[f32], l: usize) -> Result<Vec<f32>, GpuError> {
        let (m, k) = (self.pair.rows(), self.pair.cols());
        if Some(omega.len()) != k.checked_mul(l) {
            return Err(ShapeError(format!("Ω has {} values for {k}×{l}", omega.len())).into());
        }
        let mut y = vec![0f32; m * l];
        if m == 0 || l == 0 {
            return Ok(y);
        }
        let td = self.tile_rows(l)?;
        let kernel = self.ctx.kernel(&kernels::SKETCH, &[])?;
        let ctx = self.ctx;
        ctx.scoped(|| {
            self.with_tiles(td, |res| {
                let om = ctx.upload("sketch omega", bytemuck::cast_slice(omega));
                let mut enc = ctx.encoder();
                let mut outs = Vec::with_capacity(res.tiles.len());
                for (r0, nr, w, w0) in &res.tiles {
                    let (splits, chunk) = split_k(*nr, k, l, ctx.max_binding());
                    let p = ctx.uniform("sketch params", &self.params(*nr, l, (splits, chunk))?);
                    let bytes = (splits * nr * l * 4) as u64;
                    let yb = ctx.output("sketch y", bytes);
                    let g = (
                        (l as u32).div_ceil(GEMM_TILE_N),
                        (*nr as u32).div_ceil(GEMM_TILE_M),
                        splits as u32,
                    );
                    ctx.dispatch3(&mut enc, &kernel, &[&p, w, w0, &om, &yb], g);
                    outs.push((*r0, *nr, bytes, yb));
                }
                let sources: Vec<(&wgpu::Buffer, u64)> =
                    outs.iter().map(|(_, _, bytes, b)| (b, *bytes)).collect();
                let blocks = ctx.submit_and_read(enc, &sources)?;
                for ((r0, nr, _, _), bytes) in outs.iter().zip(blocks) {
                    // The splits' partial products, added in split order (deterministic).
                    let parts = f32s(&bytes);
                    let out = &mut y[r0 * l..(r0 + nr) * l];
                    out.copy_from_slice(&parts[..nr * l]);
                    for part in parts[nr * l..].chunks_exact(nr * l) {
                        for (o, v) in out.iter_mut().zip(part) {
                            *o += v;
                        }
                    }
                }
                Ok(())
            })
        })?;
        Ok(y)
    }

    /// `Z = (W − W0)ᵀ·Q`, `Q` `rows × l` row-major; returns `cols × l`. `Z` accumulates over the
    /// row tiles on the device, in tile order. Within a tile the inner dimension (its rows) is
    /// split as `split_k` says for a `cols × rows` by `rows × l` product: each split's partial
    /// product goes to its slice of one scratch buffer and a second dispatch adds the slices
    /// into `Z` in split order (`shaders/sketch_t.wgsl`), so the result is deterministic.
    pub fn sketch_t(&self, q: &[f32], l: usize) -> Result<Vec<f32>, GpuError> {
        let (m, k) = (self.pair.rows(), self.pair.cols());
        if Some(q.len()) != m.checked_mul(l) {
            return Err(ShapeError(format!("Q has {} values for {m}×{l}", q.len())).into());
        }
        if m == 0 || k == 0 || l == 0 {
            return Ok(vec![0f32; k * l]);
        }
        let td = self.tile_rows(l)?;
        let kernel = self.ctx.kernel(&kernels::SKETCH_T, &[])?;
        let reduce = self.ctx.kernel(&kernels::SKETCH_T_REDUCE, &[])?;
        let ctx = self.ctx;
        let z_bytes = (k * l * 4) as u64;
        let z = ctx.scoped(|| {
            self.with_tiles(td, |res| {
                let zb = ctx.output("sketch z", z_bytes);
                let plans: Vec<(usize, usize)> = res
                    .tiles
                    .iter()
                    .map(
                        |(_, nr, _, _)| match split_k(k, *nr, l, ctx.max_binding()) {
                            (1, _) => (1, *nr),
                            split => split,
                        },
                    )
                    .collect();
                // One scratch buffer for every tile's partial products (dispatches are ordered).
                let most = plans.iter().map(|&(s, _)| s).max().unwrap_or(1);
                let parts = ctx.output(
                    "sketch_t parts",
                    if most > 1 { most as u64 * z_bytes } else { 4 },
                );
                let mut enc = ctx.encoder();
                for ((r0, nr, w, w0), &plan) in res.tiles.iter().zip(&plans) {
                    let p = ctx.uniform("sketch_t params", &self.params(*nr, l, plan)?);
                    let qb =
                        ctx.upload("sketch q", bytemuck::cast_slice(&q[r0 * l..(r0 + nr) * l]));
                    let g = (
                        (l as u32).div_ceil(GEMM_TILE_N),
                        (k as u32).div_ceil(GEMM_TILE_M),
                        plan.0 as u32,
                    );
                    let bound = [&p, w, w0, &qb, &zb, &parts];
                    ctx.dispatch3(&mut enc, &kernel, &bound, g);
                    if plan.0 > 1 {
                        let g = ctx.grid_1d((k * l) as u64, kernels::SKETCH_REDUCE_WG);
                        ctx.dispatch(&mut enc, &reduce, &bound, g);
                    }
                }
                let mut out = ctx.submit_and_read(enc, &[(&zb, z_bytes)])?;
                Ok(f32s(&out.swap_remove(0)))
            })
        })?;
        Ok(z)
    }

    /// Runs a GPU product, or the CPU twin once a GPU product has failed.
    fn product(
        &self,
        input: ArrayView2<f32>,
        out_rows: usize,
        gpu: impl FnOnce(&[f32], usize) -> Result<Vec<f32>, GpuError>,
        cpu: impl FnOnce(&[f32], usize) -> Result<Vec<f32>, ShapeError>,
    ) -> Array2<f32> {
        let input = input.as_standard_layout();
        let l = input.ncols();
        let data = input.as_slice().expect("standard layout");
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        let result = if failed {
            cpu(data, l).map_err(GpuError::from)
        } else {
            gpu(data, l).or_else(|e| {
                let shape = matches!(e, GpuError::Shape(_));
                if !shape {
                    *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                }
                cpu(data, l).map_err(GpuError::from)
            })
        };
        let values = result.unwrap_or_else(|e| panic!("GpuDeltaOp: {e}"));
        Array2::from_shape_vec((out_rows, l), values).expect("product shape")
    }
}

/// Panics only on shape mismatches (as the trait has no error channel); GPU failures fall back to
/// the CPU, see [`GpuDeltaOp`].
impl LinearOperator for GpuDeltaOp<'_> {
    fn rows(&self) -> usize {
        self.pair.rows()
    }

    fn cols(&self) -> usize {
        self.pair.cols()
    }

    fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.product(
            x,
            self.pair.rows(),
            |d, l| self.sketch(d, l),
            |d, l| cpu_forward::delta_sketch(&self.pair, d, l),
        )
    }

    fn apply_t(&self, y: ArrayView2<f32>) -> Array2<f32> {
        self.product(
            y,
            self.pair.cols(),
            |d, l| self.sketch_t(d, l),
            |d, l| cpu_forward::delta_sketch_t(&self.pair, d, l),
        )
    }
}
