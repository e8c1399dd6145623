//! GPU merge: the `merge` kernel (`shaders/merge.wgsl`) streamed over tiles of the matrix.
//!
//! A tensor is cut into tiles of whole rows (columns are split only when one row, or the
//! terms' `A` over all columns, does not fit a binding), each at most
//! [`GpuContext::chunk_bytes`] of base or output (64 MiB by default) and at most [`WORK_CAP`](super::merge_tiles::WORK_CAP)
//! multiply-adds, so no dispatch runs long enough to trip a driver watchdog. Tiles go through a
//! ring of two slots of persistent device buffers ([`Ring`], kept by the context between
//! tensors and grown on demand): the base tile is written from the caller's bytes (the memory
//! map) straight into wgpu's upload staging (`Queue::write_buffer_with`), tile i+1 is submitted
//! before tile i is waited on, and tile i's mapped readback is handed to the caller's sink row
//! by row, so no whole-tensor buffer exists on the host ([`merge_into`]).
//!
//! DoRA norms `‖W0 + δₜ‖` are computed on the device first ([`super::dora`]: f64 sums in the
//! CPU's order with a software binary64 add, so the same bits as [`crate::backend::cpu::dora_sums`]) and passed
//! to the kernel as f32 factors `m / (‖W0 + δₜ‖ + eps)`, divided on the host exactly as the CPU
//! merge divides, so DoRA outputs stay bit-identical.

use super::context::GpuContext;
use super::dora;
use super::error::GpuError;
use super::kernels::{self, MERGE_TILE_C, MERGE_TILE_R};
use super::layout::{dtype_code, elem_bytes, pad4};
use super::merge_tiles::{merge_tiles, stride_of, MergeParams, TERM_WORDS};
use super::ring::{Ring, Slot};
use crate::backend::job::{MergeError, MergeJob, NormAxis};
use std::num::NonZeroU64;
use std::sync::mpsc;

/// Whether the kernel covers `job`: 16/32-bit float tensors, low-rank terms, DoRA that replaces
/// the weight (strength 1). Dense terms (LoHa, LoKr, full modules), ComfyUI's blended DoRA and
/// terms whose δ is rounded before the add (a PEFT embedding on a 16-bit weight, `delta_dtype`)
/// are merged by the CPU backend: the rounding in the kernel made lavapipe's streamed merge hold
/// memory growing with the tensor (`it::gpu::stream`'s peak-RSS bound), for a rare layer.
pub fn merge_supports(job: &MergeJob) -> bool {
    use crate::dtype::Dtype;
    job.in_dtype != Dtype::F64
        && job.out_dtype != Dtype::F64
        && job.terms.iter().all(|t| {
            t.dense.is_none() && t.dora.is_none_or(|d| d.strength == 1.0) && t.delta_dtype.is_none()
        })
}

/// Merges low-rank terms into one tensor on the GPU: same contract and same bits as
/// [`crate::backend::cpu::merge`] (F32/F16/BF16 in and out; other dtypes give [`MergeError::Gpu`], F64 included).
pub fn merge(ctx: &GpuContext, job: &MergeJob) -> Result<Vec<u8>, MergeError> {
    merge_with(ctx, job, true)
}

/// [`merge`] with the output handed to `sink` in row-major order, in pieces, as tiles come back
/// from the device (see the module doc); nothing the size of the tensor is held on the host.
/// On an error (a non-finite result, a device failure, or the sink's own) some leading rows
/// may already have gone to the sink: the caller discards them (an atomic writer does).
pub fn merge_into(
    ctx: &GpuContext,
    job: &MergeJob,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), MergeError>,
) -> Result<(), MergeError> {
    merge_streamed(ctx, job, true, sink)
}

/// [`merge`] with the kernel's FMA guard on or off (off only to test whether the device's
/// compiler contracts `a·b + c`; see `shaders/merge.wgsl`).
pub(crate) fn merge_with(
    ctx: &GpuContext,
    job: &MergeJob,
    fma_guard: bool,
) -> Result<Vec<u8>, MergeError> {
    let mut out = Vec::with_capacity(job.rows * job.cols * (job.out_dtype.bitsize() / 8));
    merge_streamed(ctx, job, fma_guard, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })?;
    Ok(out)
}

/// [`ensure`] a buffer of `bytes`' size in `slot` and queue `bytes` into its start.
fn filled(
    ctx: &GpuContext,
    slot: &mut Option<wgpu::Buffer>,
    label: &'static str,
    bytes: &[u8],
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    let buf = ensure(ctx, slot, label, bytes.len() as u64, usage);
    ctx.queue.write_buffer(&buf, 0, bytes);
    buf
}

/// `slot` holding a buffer of at least `size` bytes with `usage`, (re)created when smaller.
fn ensure(
    ctx: &GpuContext,
    slot: &mut Option<wgpu::Buffer>,
    label: &'static str,
    size: u64,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    let size = pad4(size);
    if let Some(b) = slot.as_ref().filter(|b| b.size() >= size) {
        return b.clone();
    }
    // Grown in steps of 1/8 (within the binding limit) so a sequence of slightly larger tiles
    // does not reallocate each time.
    let size = pad4((size + size / 8).min(size.max(ctx.max_binding())));
    let b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage,
        mapped_at_creation: false,
    });
    *slot = Some(b.clone());
    b
}

#[derive(Clone, Copy, Debug)]
struct Tile {
    r0: usize,
    nr: usize,
    c0: usize,
    nc: usize,
}

/// A submitted tile whose readback has been requested.
struct InFlight {
    tile: Tile,
    readback: wgpu::Buffer,
    flag_readback: wgpu::Buffer,
    /// Bytes of the output tile in `readback`.
    out_bytes: u64,
    submission: wgpu::SubmissionIndex,
    /// One message per mapped buffer (two).
    mapped: mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
}

/// Everything about one merge that does not change from tile to tile.
struct Setup<'j> {
    job: &'j MergeJob<'j>,
    kernel: std::sync::Arc<kernels::Kernel>,
    factors: Vec<Option<(NormAxis, Vec<f32>)>>,
    r_total: usize,
    in_code: u32,
    out_code: u32,
    in_es: usize,
    out_es: usize,
}

fn merge_streamed(
    ctx: &GpuContext,
    job: &MergeJob,
    fma_guard: bool,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), MergeError>,
) -> Result<(), MergeError> {
    job.validate()?;
    let in_code = dtype_code(job.in_dtype)?;
    let out_code = dtype_code(job.out_dtype)?;
    let (rows, cols) = (job.rows, job.cols);
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let (in_es, out_es) = (
        elem_bytes(job.in_dtype) as usize,
        elem_bytes(job.out_dtype) as usize,
    );

    // DoRA factors m/(‖W0 + δ‖ + eps) per row or column, the same f32 values cpu::merge uses.
    let factors: Vec<Option<(NormAxis, Vec<f32>)>> = dora::dora_factors(ctx, job)?
        .into_iter()
        .zip(job.terms)
        .map(|(f, t)| Some((t.dora?.axis, f?)))
        .collect();
    let count = |axis| factors.iter().flatten().filter(|(a, _)| *a == axis).count();
    let (dora_rows, dora_cols) = (count(NormAxis::Rows), count(NormAxis::Cols));
    let r_total: usize = job.terms.iter().map(|t| t.rank).sum();
    let max_rank = job.terms.iter().map(|t| t.rank).max().unwrap_or(0);
    let (tr, tc) = merge_tiles(
        rows,
        cols,
        in_es.max(out_es) as u64,
        r_total,
        dora_rows,
        dora_cols,
        ctx.max_binding(),
        ctx.chunk_bytes(),
    )?;
    ctx.check_binding(
        "merge term table",
        (job.terms.len() * TERM_WORDS * 4) as u64,
    )?;

    // The rank-chunk length: the smallest specialisation that covers the largest rank (RK in
    // merge.wgsl); larger ranks loop over chunks of the largest.
    let rk = kernels::MERGE_RK
        .into_iter()
        .find(|&rk| rk as usize >= max_rank)
        .unwrap_or(kernels::MERGE_RK[2]);
    let mut constants: Vec<(&str, f64)> = vec![("RK", rk as f64)];
    if !fma_guard {
        constants.push(("NO_FMA_GUARD", 0.0));
    }
    let kernel = ctx.kernel(&kernels::MERGE, &constants)?;
    let setup = Setup {
        job,
        kernel,
        factors,
        r_total,
        in_code,
        out_code,
        in_es,
        out_es,
    };
    let mut ring = ctx.take_ring();
    let result = ctx.scoped(|| {
        let r = stream_tiles(ctx, &setup, &mut ring, tr, tc, sink);
        Ok(r)
    });
    match result {
        // The ring goes back only after a clean run: an error may leave a readback mapped or
        // a map pending.
        Ok(Ok(())) => {
            ctx.put_ring(ring);
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(e) => Err(e.into()),
    }
}

/// Runs every tile through the ring and drains them in row-major order into `sink`.
fn stream_tiles(
    ctx: &GpuContext,
    s: &Setup,
    ring: &mut Ring,
    tr: usize,
    tc: usize,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), MergeError>,
) -> Result<(), MergeError> {
    let (rows, cols) = (s.job.rows, s.job.cols);
    let col_tiled = tc < cols;
    // Only with column tiles: the row block being assembled from its column tiles.
    let mut block: Vec<u8> = Vec::new();
    let mut first_bad: Option<(usize, usize, f32)> = None;
    let mut pending: Option<InFlight> = None;
    // Which column tile's A each slot holds (A does not change between row tiles).
    let mut a_held: [Option<usize>; 2] = [None, None];
    let mut index = 0usize;
    let tiles = (0..rows).step_by(tr).flat_map(|r0| {
        (0..cols).step_by(tc).map(move |c0| Tile {
            r0,
            nr: tr.min(rows - r0),
            c0,
            nc: tc.min(cols - c0),
        })
    });
    let mut drain = |done: InFlight,
                     block: &mut Vec<u8>,
                     first_bad: &mut Option<(usize, usize, f32)>|
     -> Result<(), MergeError> {
        let t = done.tile;
        wait_mapped(ctx, &done)?;
        let flag = {
            let v = done
                .flag_readback
                .slice(..4)
                .get_mapped_range()
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            u32::from_le_bytes(v[..4].try_into().expect("4 bytes"))
        };
        done.flag_readback.unmap();
        let view = done
            .readback
            .slice(..done.out_bytes)
            .get_mapped_range()
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let row_bytes = stride_of(t.nc) * s.out_es;
        let nc_bytes = t.nc * s.out_es;
        if flag != u32::MAX {
            let e = flag as usize;
            let (i, j) = (e / t.nc, e % t.nc);
            let at = i * row_bytes + j * s.out_es;
            let value = crate::dtype::decode(s.job.out_dtype, &view[at..at + s.out_es])[0];
            let (row, col) = (t.r0 + i, t.c0 + j);
            if first_bad.is_none_or(|(r, c, _)| (row, col) < (r, c)) {
                *first_bad = Some((row, col, value));
            }
        }
        if first_bad.is_none() {
            if col_tiled {
                for i in 0..t.nr {
                    let dst = (i * cols + t.c0) * s.out_es;
                    block[dst..dst + nc_bytes]
                        .copy_from_slice(&view[i * row_bytes..i * row_bytes + nc_bytes]);
                }
            } else if row_bytes == nc_bytes {
                sink(&view[..t.nr * row_bytes])?;
            } else {
                for i in 0..t.nr {
                    sink(&view[i * row_bytes..i * row_bytes + nc_bytes])?;
                }
            }
        }
        drop(view);
        done.readback.unmap();
        // The last column tile of a row block completes it.
        if t.c0 + t.nc == cols {
            if let Some((row, col, value)) = *first_bad {
                return Err(MergeError::NonFinite { row, col, value });
            }
            if col_tiled {
                sink(&block[..t.nr * cols * s.out_es])?;
            }
        }
        Ok(())
    };
    for tile in tiles {
        if col_tiled && tile.c0 == 0 {
            // The previous block is complete once its last tile was drained; the one in
            // flight (if any) belongs to it, so drain it before reusing the block buffer.
            if let Some(p) = pending.take() {
                drain(p, &mut block, &mut first_bad)?;
            }
            block.clear();
            block.resize(tile.nr * cols * s.out_es, 0);
        }
        let slot = index % 2;
        let next = submit(ctx, s, &mut ring.slots[slot], &mut a_held[slot], tile)?;
        index += 1;
        // Tile i+1 is on the queue before tile i is waited on.
        if let Some(p) = pending.replace(next) {
            drain(p, &mut block, &mut first_bad)?;
        }
    }
    if let Some(p) = pending.take() {
        drain(p, &mut block, &mut first_bad)?;
    }
    Ok(())
}

/// Writes one tile's inputs into `slot`, records the dispatch and the readback copy, submits,
/// and requests the readback's mapping.
fn submit(
    ctx: &GpuContext,
    s: &Setup,
    slot: &mut Slot,
    a_held: &mut Option<usize>,
    t: Tile,
) -> Result<InFlight, GpuError> {
    use wgpu::BufferUsages as U;
    let job = s.job;
    let cols = job.cols;
    let stride = stride_of(t.nc);
    let w0_bytes = (t.nr * stride * s.in_es) as u64;
    let out_bytes = (t.nr * stride * s.out_es) as u64;
    let (input, output, read) = (
        U::STORAGE | U::COPY_DST,
        U::STORAGE | U::COPY_SRC,
        U::MAP_READ | U::COPY_DST,
    );
    let w0 = ensure(ctx, &mut slot.w0, "merge w0", w0_bytes, input);
    let out = ensure(ctx, &mut slot.out, "merge out", out_bytes, output);
    let rb = ensure(ctx, &mut slot.readback, "merge readback", out_bytes, read);
    let frb = ensure(ctx, &mut slot.flag_readback, "merge flag readback", 4, read);

    // W0: straight from the caller's bytes into wgpu's upload staging, one copy; padded rows
    // (columns not a multiple of 8, or a column tile) row by row.
    {
        let size = NonZeroU64::new(w0_bytes).expect("a tile has rows and columns");
        let mut view = ctx
            .queue
            .write_buffer_with(&w0, 0, size)
            .ok_or_else(|| GpuError::Wgpu("merge: staging the base tile failed".into()))?;
        let es = s.in_es;
        if t.nc == cols && stride == cols {
            view.slice(..)
                .copy_from_slice(&job.w0[t.r0 * cols * es..(t.r0 + t.nr) * cols * es]);
        } else {
            for i in 0..t.nr {
                let src = ((t.r0 + i) * cols + t.c0) * es;
                view.slice(i * stride * es..(i * stride + t.nc) * es)
                    .copy_from_slice(&job.w0[src..src + t.nc * es]);
            }
        }
    }
    // B (nr × r_total, terms side by side), A (r_total × stride, terms stacked), term table and
    // the DoRA factors of this tile's rows / columns (columns padded to the stride).
    let r_total = s.r_total;
    let mut b = vec![0f32; (t.nr * r_total).max(1)];
    let mut table = vec![0u32; job.terms.len().max(1) * TERM_WORDS];
    let mut fac: Vec<f32> = Vec::new();
    let mut off = 0;
    for (ti, term) in job.terms.iter().enumerate() {
        for i in 0..t.nr {
            let src = &term.b[(t.r0 + i) * term.rank..(t.r0 + i + 1) * term.rank];
            b[i * r_total + off..i * r_total + off + term.rank].copy_from_slice(src);
        }
        let row = &mut table[ti * TERM_WORDS..(ti + 1) * TERM_WORDS];
        row[0] = term.rank as u32;
        row[1] = off as u32;
        row[2] = term.scale.to_bits();
        if let Some((axis, f)) = &s.factors[ti] {
            row[3] = if *axis == NormAxis::Rows { 1 } else { 2 };
            row[4] = fac.len() as u32;
            match axis {
                NormAxis::Rows => fac.extend_from_slice(&f[t.r0..t.r0 + t.nr]),
                NormAxis::Cols => {
                    fac.extend_from_slice(&f[t.c0..t.c0 + t.nc]);
                    fac.resize(fac.len() + stride - t.nc, 0.0);
                }
            }
        }
        off += term.rank;
    }
    if fac.is_empty() {
        fac.push(0.0);
    }
    let a_bytes = (r_total.max(1) * stride * 4) as u64;
    let ab = ensure(ctx, &mut slot.a, "merge a", a_bytes, input);
    if *a_held != Some(t.c0) {
        let mut a = vec![0f32; r_total.max(1) * stride];
        let mut off = 0;
        for term in job.terms {
            for k in 0..term.rank {
                a[(off + k) * stride..(off + k) * stride + t.nc]
                    .copy_from_slice(&term.a[k * cols + t.c0..k * cols + t.c0 + t.nc]);
            }
            off += term.rank;
        }
        ctx.queue.write_buffer(&ab, 0, bytemuck::cast_slice(&a));
        *a_held = Some(t.c0);
    }
    let b_bytes: &[u8] = bytemuck::cast_slice(&b);
    let bb = filled(ctx, &mut slot.b, "merge b", b_bytes, input);
    let t_bytes: &[u8] = bytemuck::cast_slice(&table);
    let tb = filled(ctx, &mut slot.terms, "merge terms", t_bytes, input);
    let f_bytes: &[u8] = bytemuck::cast_slice(&fac);
    let fb = filled(ctx, &mut slot.factors, "merge factors", f_bytes, input);
    let (no_flag, flag_usage) = (u32::MAX.to_le_bytes(), input | U::COPY_SRC);
    let flags = filled(ctx, &mut slot.flags, "merge flags", &no_flag, flag_usage);
    let params = MergeParams {
        rows: t.nr as u32,
        cols: t.nc as u32,
        n_terms: job.terms.len() as u32,
        r_total: r_total as u32,
        in_dtype: s.in_code,
        out_dtype: s.out_code,
        zero: 0,
        stride: stride as u32,
    };
    let pb = ensure(
        ctx,
        &mut slot.params,
        "merge params",
        std::mem::size_of::<MergeParams>() as u64,
        U::UNIFORM | U::COPY_DST,
    );
    ctx.queue.write_buffer(&pb, 0, bytemuck::bytes_of(&params));

    let mut enc = ctx.encoder();
    let groups = (
        stride.div_ceil(MERGE_TILE_C) as u32,
        t.nr.div_ceil(MERGE_TILE_R) as u32,
    );
    ctx.dispatch_ranges(
        &mut enc,
        &s.kernel,
        &[
            (&pb, std::mem::size_of::<MergeParams>() as u64),
            (&w0, w0_bytes),
            (&out, out_bytes),
            (&bb, b_bytes.len() as u64),
            (&ab, a_bytes),
            (&tb, t_bytes.len() as u64),
            (&fb, f_bytes.len() as u64),
            (&flags, 4),
        ],
        groups,
    );
    enc.copy_buffer_to_buffer(&out, 0, &rb, 0, out_bytes);
    enc.copy_buffer_to_buffer(&flags, 0, &frb, 0, 4);
    let submission = ctx.queue.submit([enc.finish()]);
    let (tx, rx) = mpsc::channel();
    for (buf, len) in [(&rb, out_bytes), (&frb, 4)] {
        let tx = tx.clone();
        buf.slice(..len).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
    }
    Ok(InFlight {
        tile: t,
        readback: rb,
        flag_readback: frb,
        out_bytes,
        submission,
        mapped: rx,
    })
}

/// Blocks until `f`'s readback is mapped (see [`GpuContext::submit_and_read`] for why the
/// channel, not the poll, is waited on).
fn wait_mapped(ctx: &GpuContext, f: &InFlight) -> Result<(), GpuError> {
    ctx.device
        .poll(wgpu::PollType::Wait {
            submission_index: Some(f.submission.clone()),
            timeout: None,
        })
        .map_err(|e| GpuError::Readback(e.to_string()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut left = 2;
    loop {
        match f.mapped.recv_timeout(std::time::Duration::from_millis(20)) {
            Ok(Ok(())) => {
                left -= 1;
                if left == 0 {
                    return Ok(());
                }
            }
            Ok(Err(e)) => return Err(GpuError::Readback(format!("mapping merge readback: {e}"))),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(GpuError::Readback("merge readback was never mapped".into()))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if std::time::Instant::now() >= deadline {
                    return Err(GpuError::Readback("merge readback timed out".into()));
                }
                ctx.device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| GpuError::Readback(e.to_string()))?;
            }
        }
    }
}
