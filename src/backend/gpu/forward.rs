//! GPU LoRA forward: shrink (`shaders/forward_shrink.wgsl`) then fused dense + expand
//! (`shaders/forward_dense.wgsl`), as Punica's SGMV splits the low-rank product.
//!
//! All adapters are stacked: `A_cat` (`R × k`, `R = Σ rank`) and `B_cat` (`d × R`), each column
//! `c` of `T = X·A_catᵀ` carrying its adapter's scale, so the expand is one product `T·B_catᵀ`
//! added in the same accumulators as `X·W0ᵀ`. Every row uses every adapter (eval sums them);
//! a per-row adapter choice (BGMV/SGMV serving) existed as a masked kernel that nothing used and
//! was removed (issue #20: serve eval or go). An SGMV gather was not added: eval's forwards
//! have hundreds of rows, where `X·W0ᵀ` is compute-bound and sharing W0's reads between
//! adapters saves nothing (README "GPU" has the figures).
//!
//! Tiling: `X` (and `T`) by rows, `W0` (and `B_cat`) by rows, `Y` in the resulting blocks; `A_cat`
//! must fit one binding (`R·k·4` bytes).
//!
//! `W0` is uploaded on every [`lora_forward`] call; a caller that runs many forwards over the
//! same weight (an eval over batches) uploads it once with [`ResidentWeight::new`] and calls
//! [`lora_forward_resident`], which runs the same kernels on the same tiles (same bits).

use super::context::GpuContext;
use super::error::GpuError;
use super::kernels::{self, GEMM_TILE_M, GEMM_TILE_N};
use super::layout::{dtype_code, elem_bytes, f32s, fit_rows};
use crate::backend::cpu_forward::{validate_forward, ForwardAdapter, StoredMatrix};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ShrinkParams {
    n: u32,
    k: u32,
    r_total: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct DenseParams {
    pub n: u32,
    pub k: u32,
    pub d: u32,
    pub r_total: u32,
    pub w0_dtype: u32,
    pub _pad: [u32; 3],
}

/// `Y = X·W0ᵀ + Σₐ sₐ·(X·Aₐᵀ)·Bₐᵀ` on the GPU; same contract as the CPU forward eval runs,
/// `model::linear::Linear::forward` (`X` `n × k` f32, `W0` `d × k` stored F32/F16/BF16, shapes
/// checked by [`validate_forward`]; returns `Y`, `n × d`).
pub fn lora_forward(
    ctx: &GpuContext,
    x: &[f32],
    n: usize,
    w0: &StoredMatrix,
    adapters: &[ForwardAdapter],
) -> Result<Vec<f32>, GpuError> {
    validate_forward(x, n, w0, adapters)?;
    forward(ctx, x, n, W0::Host(w0), adapters)
}

/// A base weight `W0` (`d × k`, stored F32/F16/BF16) kept on the device in row tiles, for
/// repeated [`lora_forward_resident`] calls without re-uploading it. Belongs to the context it
/// was made on.
#[derive(Debug)]
pub struct ResidentWeight {
    rows: usize,
    cols: usize,
    dtype: crate::dtype::Dtype,
    /// Rows per tile (the last may be shorter) and the tiles `(first row, rows, buffer)`.
    tile_rows: usize,
    tiles: Vec<(usize, usize, wgpu::Buffer)>,
    /// [`GpuContext`] id the tiles live on.
    ctx_id: u64,
}

impl ResidentWeight {
    /// Whether the tiles live on `ctx`.
    pub fn on(&self, ctx: &GpuContext) -> bool {
        self.ctx_id == ctx.id()
    }

    /// Uploads `w0` once, in row tiles of at most one binding each.
    pub fn new(ctx: &GpuContext, w0: &StoredMatrix) -> Result<Self, GpuError> {
        w0.validate("W0")?;
        dtype_code(w0.dtype)?;
        let (d, k) = (w0.rows, w0.cols);
        let es = elem_bytes(w0.dtype);
        let (limit, groups) = (ctx.max_binding(), ctx.max_groups());
        let td = fit_rows(d, (k as u64 * es).max(1), limit, groups)
            .min(fit_rows(d, 4, limit, groups))
            .max(1);
        if d > 0 && k as u64 * es > limit {
            return Err(GpuError::TooLarge {
                what: format!("forward row of k = {k}"),
                bytes: k as u64 * es,
                limit,
            });
        }
        let tiles = ctx.scoped(|| {
            Ok((0..d)
                .step_by(td)
                .map(|o0| {
                    let nd = td.min(d - o0);
                    let bytes = &w0.bytes[(o0 * k) * es as usize..((o0 + nd) * k) * es as usize];
                    (o0, nd, ctx.upload("resident w0", bytes))
                })
                .collect())
        })?;
        ctx.count_resident_upload();
        Ok(ResidentWeight {
            ctx_id: ctx.id(),
            rows: d,
            cols: k,
            dtype: w0.dtype,
            tile_rows: td,
            tiles,
        })
    }
}

/// [`lora_forward`] with `W0` already on the device: the same kernels over the same tiles, so
/// the same bits, as long as the stacked `B` of those tiles fits a binding (otherwise
/// [`GpuError::TooLarge`]: use [`lora_forward`]).
pub fn lora_forward_resident(
    ctx: &GpuContext,
    x: &[f32],
    n: usize,
    w0: &ResidentWeight,
    adapters: &[ForwardAdapter],
) -> Result<Vec<f32>, GpuError> {
    let (d, k) = (w0.rows, w0.cols);
    if w0.ctx_id != ctx.id() {
        return Err(GpuError::Shape(
            "the resident weight was uploaded to another GPU context".to_owned(),
        ));
    }
    if Some(x.len()) != n.checked_mul(k) {
        return Err(GpuError::Shape(format!(
            "X has {} values for {n}×{k}",
            x.len()
        )));
    }
    for (i, ad) in adapters.iter().enumerate() {
        if Some(ad.a.len()) != ad.rank.checked_mul(k) || Some(ad.b.len()) != d.checked_mul(ad.rank)
        {
            return Err(GpuError::Shape(format!(
                "adapter {i}: A has {} and B {} values for rank {} with d = {d}, k = {k}",
                ad.a.len(),
                ad.b.len(),
                ad.rank
            )));
        }
    }
    forward(ctx, x, n, W0::Resident(w0), adapters)
}

/// Where the forward's `W0` comes from.
#[derive(Clone, Copy)]
enum W0<'a> {
    Host(&'a StoredMatrix<'a>),
    Resident(&'a ResidentWeight),
}

fn forward(
    ctx: &GpuContext,
    x: &[f32],
    n: usize,
    w0: W0,
    adapters: &[ForwardAdapter],
) -> Result<Vec<f32>, GpuError> {
    let (d, k, dtype) = match w0 {
        W0::Host(m) => (m.rows, m.cols, m.dtype),
        W0::Resident(r) => (r.rows, r.cols, r.dtype),
    };
    let w0_code = dtype_code(dtype)?;
    let es = elem_bytes(dtype);
    let mut y = vec![0f32; n * d];
    if n == 0 || d == 0 {
        return Ok(y);
    }
    let r_total: usize = adapters.iter().map(|a| a.rank).sum();
    let (r4, k4) = (4 * r_total as u64, 4 * k as u64);
    let limit = ctx.max_binding();
    let groups = ctx.max_groups();
    ctx.check_binding("stacked LoRA A (rank × k f32)", r4 * k as u64)?;
    if r_total as u64 > groups as u64 * GEMM_TILE_N as u64 {
        return Err(GpuError::TooLarge {
            what: format!("shrink grid for total rank {r_total}"),
            bytes: r4,
            limit,
        });
    }
    // Row tiles of W0 (with B) and of X (with T and the Y block).
    let td = match w0 {
        W0::Host(_) => {
            fit_rows(d, (k as u64 * es).max(r4), limit, groups).min(fit_rows(d, 4, limit, groups))
        }
        // The resident tiles, when their stacked B fits a binding too.
        W0::Resident(r) if r.tile_rows as u64 * r4 <= limit => r.tile_rows,
        W0::Resident(r) => {
            return Err(GpuError::TooLarge {
                what: format!("stacked B of total rank {r_total} over resident W0 tiles"),
                bytes: r.tile_rows as u64 * r4,
                limit,
            })
        }
    };
    let tn = fit_rows(n, k4.max(r4).max(8).max(4 * td as u64), limit, groups);
    if td == 0 || tn == 0 {
        return Err(GpuError::TooLarge {
            what: format!("forward row of k = {k}"),
            bytes: k as u64 * es.max(4),
            limit,
        });
    }

    // Stacked factors: A_cat (R × k), per-column scale, B_cat (d × R).
    let mut a_cat = Vec::with_capacity(r_total * k);
    let mut col_scale = Vec::with_capacity(r_total);
    for ad in adapters {
        a_cat.extend_from_slice(ad.a);
        col_scale.extend(std::iter::repeat_n(ad.scale, ad.rank));
    }
    let mut b_cat = vec![0f32; d * r_total];
    let mut off = 0;
    for ad in adapters {
        for o in 0..d {
            b_cat[o * r_total + off..o * r_total + off + ad.rank]
                .copy_from_slice(&ad.b[o * ad.rank..(o + 1) * ad.rank]);
        }
        off += ad.rank;
    }

    let shrink = ctx.kernel(&kernels::FORWARD_SHRINK, &[])?;
    let dense = ctx.kernel(&kernels::FORWARD_DENSE, &[])?;
    ctx.scoped(|| {
        let a_buf = ctx.upload("forward a_cat", bytemuck::cast_slice(&a_cat));
        let s_buf = ctx.upload("forward col_scale", bytemuck::cast_slice(&col_scale));
        // W0 / B row tiles, uploaded once and reused for every row tile of X.
        let w_tiles: Vec<(usize, usize, wgpu::Buffer, wgpu::Buffer)> = (0..d)
            .step_by(td)
            .enumerate()
            .map(|(ti, o0)| {
                let nd = td.min(d - o0);
                let w = match w0 {
                    W0::Host(m) => ctx.upload(
                        "forward w0",
                        &m.bytes[(o0 * k) * es as usize..((o0 + nd) * k) * es as usize],
                    ),
                    W0::Resident(r) => r.tiles[ti].2.clone(),
                };
                let b = ctx.upload(
                    "forward b",
                    bytemuck::cast_slice(&b_cat[o0 * r_total..(o0 + nd) * r_total]),
                );
                (o0, nd, w, b)
            })
            .collect();
        for i0 in (0..n).step_by(tn) {
            let nn = tn.min(n - i0);
            let x_buf = ctx.upload("forward x", bytemuck::cast_slice(&x[i0 * k..(i0 + nn) * k]));
            let t_buf = ctx.output("forward t", (nn * r_total * 4) as u64);
            let sp = ctx.uniform(
                "shrink params",
                &ShrinkParams {
                    n: nn as u32,
                    k: k as u32,
                    r_total: r_total as u32,
                    _pad: 0,
                },
            );
            let mut enc = ctx.encoder();
            if r_total > 0 {
                let g = (
                    (r_total as u32).div_ceil(GEMM_TILE_N),
                    (nn as u32).div_ceil(GEMM_TILE_M),
                );
                ctx.dispatch(&mut enc, &shrink, &[&sp, &x_buf, &a_buf, &s_buf, &t_buf], g);
            }
            let mut outs = Vec::with_capacity(w_tiles.len());
            for (o0, nd, w_buf, b_buf) in &w_tiles {
                let dp = ctx.uniform(
                    "dense params",
                    &DenseParams {
                        n: nn as u32,
                        k: k as u32,
                        d: *nd as u32,
                        r_total: r_total as u32,
                        w0_dtype: w0_code,
                        _pad: [0; 3],
                    },
                );
                let y_buf = ctx.output("forward y", (nn * nd * 4) as u64);
                let g = (
                    (*nd as u32).div_ceil(GEMM_TILE_N),
                    (nn as u32).div_ceil(GEMM_TILE_M),
                );
                ctx.dispatch(
                    &mut enc,
                    &dense,
                    &[&dp, &x_buf, w_buf, &t_buf, b_buf, &y_buf],
                    g,
                );
                outs.push((*o0, *nd, y_buf));
            }
            let sources: Vec<(&wgpu::Buffer, u64)> = outs
                .iter()
                .map(|(_, nd, b)| (b, (nn * nd * 4) as u64))
                .collect();
            let blocks = ctx.submit_and_read(enc, &sources)?;
            // Scatter each nn × nd block into Y.
            for ((o0, nd, _), bytes) in outs.iter().zip(blocks) {
                let vals = f32s(&bytes);
                for i in 0..nn {
                    y[(i0 + i) * d + o0..(i0 + i) * d + o0 + nd]
                        .copy_from_slice(&vals[i * nd..(i + 1) * nd]);
                }
            }
        }
        Ok(())
    })?;
    Ok(y)
}
