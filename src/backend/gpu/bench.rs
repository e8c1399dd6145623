//! Device-side measurements for `benches/gpu.rs` (and through it `scripts/gpu-bench.sh`): the
//! copy-kernel bandwidth baseline, host↔device transfer rates, and the merge kernel and the
//! GEMM (the forward's dense kernel) alone on device-resident buffers. Not part of any op; hidden from the docs.
//!
//! Each figure is the best of `reps` runs after one warm-up. `wall_s` is host time from submit
//! to completion; `device_s` is the kernel's own time from timestamp queries written at the
//! start and end of its compute pass, when the adapter has `TIMESTAMP_QUERY` (requested at
//! context creation), else `None`.
//!
//! Must not serve an operation or stand in for a test: it times kernels, and their numbers are
//! pinned by the tests against the CPU code in `backend/`.

use super::context::GpuContext;
use super::error::GpuError;
use super::forward::DenseParams;
use super::kernels::{self, Kernel, COPY_WG, GEMM_TILE_M, GEMM_TILE_N, MERGE_TILE_C, MERGE_TILE_R};
use super::layout::{dtype_code, pad4};
use super::merge_tiles::{stride_of, MergeParams, TERM_WORDS};
use crate::dtype::Dtype;
use std::time::Instant;

/// Best host and device time of a measured operation, in seconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Timing {
    pub wall_s: f64,
    pub device_s: Option<f64>,
}

/// Whether kernels can be timed on the device.
pub fn has_timestamps(ctx: &GpuContext) -> bool {
    ctx.device
        .features()
        .contains(wgpu::Features::TIMESTAMP_QUERY)
}

fn storage(ctx: &GpuContext, label: &str, bytes: u64, extra: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: pad4(bytes),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | extra,
        mapped_at_creation: false,
    })
}

fn wait(ctx: &GpuContext, sub: wgpu::SubmissionIndex) -> Result<(), GpuError> {
    ctx.device
        .poll(wgpu::PollType::Wait {
            submission_index: Some(sub),
            timeout: None,
        })
        .map(|_| ())
        .map_err(|e| GpuError::Readback(e.to_string()))
}

/// Reads a small MAP_READ buffer (the resolved timestamps).
fn read_small(ctx: &GpuContext, buf: &wgpu::Buffer) -> Result<Vec<u8>, GpuError> {
    let (tx, rx) = std::sync::mpsc::channel();
    buf.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| GpuError::Readback(e.to_string()))?;
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .map_err(|e| GpuError::Readback(e.to_string()))?
        .map_err(|e| GpuError::Readback(e.to_string()))?;
    let v = buf
        .slice(..)
        .get_mapped_range()
        .map_err(|e| GpuError::Readback(e.to_string()))?
        .to_vec();
    buf.unmap();
    Ok(v)
}

/// Runs one dispatch of `kernel` `reps` times (after a warm-up), each in its own submission.
fn time_dispatch(
    ctx: &GpuContext,
    kernel: &Kernel,
    buffers: &[(&wgpu::Buffer, u64)],
    groups: (u32, u32),
    reps: usize,
) -> Result<Timing, GpuError> {
    let stamps = has_timestamps(ctx).then(|| {
        let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench resolve"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench timestamps read"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        (set, resolve, read)
    });
    let bind = ctx.bind_ranges(kernel, buffers);
    let period_ns = ctx.queue.get_timestamp_period() as f64;
    let mut best = Timing {
        wall_s: f64::INFINITY,
        device_s: None,
    };
    for rep in 0..=reps {
        let mut enc = ctx.encoder();
        let timestamps = stamps
            .as_ref()
            .map(|(set, _, _)| wgpu::ComputePassTimestampWrites {
                query_set: set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
        kernels::record_pass(&mut enc, kernel, &bind, (groups.0, groups.1, 1), timestamps);
        if let Some((set, resolve, read)) = &stamps {
            enc.resolve_query_set(set, 0..2, resolve, 0);
            enc.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
        }
        let t = Instant::now();
        let sub = ctx.queue.submit([enc.finish()]);
        wait(ctx, sub)?;
        let wall = t.elapsed().as_secs_f64();
        let device = match &stamps {
            Some((_, _, read)) => {
                let v = read_small(ctx, read)?;
                let t0 = u64::from_le_bytes(v[0..8].try_into().expect("8 bytes"));
                let t1 = u64::from_le_bytes(v[8..16].try_into().expect("8 bytes"));
                Some(t1.wrapping_sub(t0) as f64 * period_ns * 1e-9)
            }
            None => None,
        };
        if rep > 0 {
            best.wall_s = best.wall_s.min(wall);
            best.device_s = match (best.device_s, device) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (None, d) => d,
                (a, None) => a,
            };
        }
    }
    Ok(best)
}

/// The copy kernel over `bytes` (a multiple of 16): reads and writes `bytes` each, so the
/// bandwidth is `2·bytes / time`.
pub fn copy_kernel(ctx: &GpuContext, bytes: u64, reps: usize) -> Result<Timing, GpuError> {
    ctx.check_binding("copy benchmark", bytes)?;
    ctx.scoped(|| {
        let kernel = ctx.kernel(&kernels::COPY, &[])?;
        let n = bytes / 16;
        let p = ctx.uniform("copy params", &[n as u32, 0, 0, 0]);
        let src = storage(ctx, "copy src", bytes, wgpu::BufferUsages::empty());
        let dst = storage(ctx, "copy dst", bytes, wgpu::BufferUsages::empty());
        time_dispatch(
            ctx,
            &kernel,
            &[(&p, 16), (&src, bytes), (&dst, bytes)],
            ctx.grid_1d(n, COPY_WG),
            reps,
        )
    })
}

/// Host→device (`write_buffer` from a host slice, submit, wait) and device→host (copy to a
/// MAP_READ buffer, map, copy out to a host slice) of `bytes`: best seconds of each.
pub fn transfer(ctx: &GpuContext, bytes: u64, reps: usize) -> Result<(f64, f64), GpuError> {
    ctx.check_binding("transfer benchmark", bytes)?;
    ctx.scoped(|| {
        let host = vec![0x5au8; bytes as usize];
        let mut back = vec![0u8; bytes as usize];
        let dev = storage(ctx, "transfer", bytes, wgpu::BufferUsages::COPY_SRC);
        let read = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("transfer read"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let (mut up, mut down) = (f64::INFINITY, f64::INFINITY);
        for rep in 0..=reps {
            let t = Instant::now();
            ctx.queue.write_buffer(&dev, 0, &host);
            let sub = ctx.queue.submit([]);
            wait(ctx, sub)?;
            let u = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut enc = ctx.encoder();
            enc.copy_buffer_to_buffer(&dev, 0, &read, 0, bytes);
            let sub = ctx.queue.submit([enc.finish()]);
            let (tx, rx) = std::sync::mpsc::channel();
            read.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            wait(ctx, sub)?;
            rx.recv_timeout(std::time::Duration::from_secs(60))
                .map_err(|e| GpuError::Readback(e.to_string()))?
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            {
                let view = read
                    .slice(..)
                    .get_mapped_range()
                    .map_err(|e| GpuError::Readback(e.to_string()))?;
                back.copy_from_slice(&view);
            }
            read.unmap();
            let d = t.elapsed().as_secs_f64();
            if rep > 0 {
                up = up.min(u);
                down = down.min(d);
            }
        }
        if back != host {
            return Err(GpuError::Readback(
                "transfer round trip changed the bytes".into(),
            ));
        }
        Ok((up, down))
    })
}

/// The merge kernel alone, `rows × cols` bf16 in and out, one term of `rank`, on buffers
/// already on the device (filled with ordinary values). It reads and writes `rows·cols·2`
/// bytes each (plus A and B, which stay in cache).
pub fn merge_kernel(
    ctx: &GpuContext,
    rows: usize,
    cols: usize,
    rank: usize,
    reps: usize,
) -> Result<Timing, GpuError> {
    let stride = stride_of(cols);
    let w_bytes = (rows * stride * 2) as u64;
    ctx.check_binding("merge benchmark base", w_bytes)?;
    ctx.check_binding("merge benchmark A", (rank * stride * 4) as u64)?;
    if rows.div_ceil(MERGE_TILE_R) as u64 > ctx.max_groups() as u64 {
        return Err(GpuError::Shape(format!("{rows} rows: too many workgroups")));
    }
    ctx.scoped(|| {
        let rk = kernels::MERGE_RK
            .into_iter()
            .find(|&r| r as usize >= rank)
            .unwrap_or(kernels::MERGE_RK[2]);
        let kernel = ctx.kernel(&kernels::MERGE, &[("RK", rk as f64)])?;
        // bf16 1.0 in every element; B, A small ordinary values.
        let w0 = storage(ctx, "bench w0", w_bytes, wgpu::BufferUsages::empty());
        ctx.queue
            .write_buffer(&w0, 0, &[0x80u8, 0x3f].repeat(rows * stride));
        let out = storage(ctx, "bench out", w_bytes, wgpu::BufferUsages::empty());
        let a = ctx.upload(
            "bench a",
            bytemuck::cast_slice(&vec![0.01f32; rank * stride]),
        );
        let b = ctx.upload("bench b", bytemuck::cast_slice(&vec![0.02f32; rows * rank]));
        let mut table = [0u32; TERM_WORDS];
        table[0] = rank as u32;
        table[2] = 0.5f32.to_bits();
        let t = ctx.upload("bench terms", bytemuck::cast_slice(&table));
        let f = ctx.upload("bench factors", &[0u8; 4]);
        let flags = ctx.upload("bench flags", &u32::MAX.to_le_bytes());
        let code = dtype_code(Dtype::BF16)?;
        let p = ctx.uniform(
            "bench params",
            &MergeParams {
                rows: rows as u32,
                cols: cols as u32,
                n_terms: 1,
                r_total: rank as u32,
                in_dtype: code,
                out_dtype: code,
                zero: 0,
                stride: stride as u32,
            },
        );
        let groups = (
            stride.div_ceil(MERGE_TILE_C) as u32,
            rows.div_ceil(MERGE_TILE_R) as u32,
        );
        time_dispatch(
            ctx,
            &kernel,
            &[
                (&p, std::mem::size_of::<MergeParams>() as u64),
                (&w0, w_bytes),
                (&out, w_bytes),
                (&b, (rows * rank * 4) as u64),
                (&a, (rank * stride * 4) as u64),
                (&t, (TERM_WORDS * 4) as u64),
                (&f, 4),
                (&flags, 4),
            ],
            groups,
            reps,
        )
    })
}

/// The forward's dense kernel alone (`shaders/forward_dense.wgsl` over `shaders/gemm.wgsl`):
/// `Y = X·W0ᵀ + T·Bᵀ` for `X` `n × k` f32, `W0` `d × k` bf16 and a rank-`rank` `T`, `B`, on
/// buffers already on the device. It does `2·n·d·(k + rank)` flop.
pub fn gemm_kernel(
    ctx: &GpuContext,
    n: usize,
    d: usize,
    k: usize,
    rank: usize,
    reps: usize,
) -> Result<Timing, GpuError> {
    // Buffer sizes, padded to whole words (none empty, W0 of odd length).
    let pad = |bytes: usize| pad4(bytes as u64);
    let (x_b, w_b, t_b, b_b, y_b) = (
        pad(n * k * 4),
        pad(d * k * 2),
        pad(n * rank * 4),
        pad(d * rank * 4),
        pad(n * d * 4),
    );
    for (what, bytes) in [("X", x_b), ("W0", w_b), ("T", t_b), ("B", b_b), ("Y", y_b)] {
        ctx.check_binding(&format!("gemm benchmark {what}"), bytes)?;
    }
    let groups = (
        (d as u32).div_ceil(GEMM_TILE_N),
        (n as u32).div_ceil(GEMM_TILE_M),
    );
    if groups.0.max(groups.1) > ctx.max_groups() {
        return Err(GpuError::Shape(format!("{n} × {d}: too many workgroups")));
    }
    ctx.scoped(|| {
        let kernel = ctx.kernel(&kernels::FORWARD_DENSE, &[])?;
        let filled = |label: &str, bytes: u64, v: f32| {
            let buf = storage(ctx, label, bytes, wgpu::BufferUsages::empty());
            ctx.queue
                .write_buffer(&buf, 0, &v.to_le_bytes().repeat(bytes as usize / 4));
            buf
        };
        // bf16 1.0 in every element of W0; X, T, B small ordinary values.
        let w0 = filled("bench w0", w_b, f32::from_bits(0x3f80_3f80));
        let (x, tt, b) = (
            filled("bench x", x_b, 0.01),
            filled("bench t", t_b, 0.02),
            filled("bench b", b_b, 0.03),
        );
        let y = storage(ctx, "bench y", y_b, wgpu::BufferUsages::empty());
        let params = DenseParams {
            n: n as u32,
            k: k as u32,
            d: d as u32,
            r_total: rank as u32,
            w0_dtype: dtype_code(Dtype::BF16)?,
            _pad: [0; 3],
        };
        let p = ctx.uniform("bench params", &params);
        let size = std::mem::size_of::<DenseParams>() as u64;
        let buffers = [
            (&p, size),
            (&x, x_b),
            (&w0, w_b),
            (&tt, t_b),
            (&b, b_b),
            (&y, y_b),
        ];
        time_dispatch(ctx, &kernel, &buffers, groups, reps)
    })
}
