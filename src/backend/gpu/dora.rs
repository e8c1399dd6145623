//! GPU DoRA norms: the f64 sums of squares behind `‖W0 + δₜ‖`, computed on the device by
//! `shaders/dora_norm.wgsl` in the order [`cpu::dora_sums`] fixes (a row over its columns in
//! order, a column over its rows in order), each addition a correctly rounded binary64 add done
//! in 32-bit integer arithmetic (`shaders/f64.wgsl`), each square exact. The sums therefore
//! have the CPU's bits; the host takes the square roots and the divisions
//! ([`cpu::dora_norms_from`], [`cpu::dora_factors_from`]), so the factors the merge kernel
//! applies, and the merged tensor, are bit-identical to `--device cpu`.
//!
//! The base goes through the device twice for a DoRA merge (once here, once in the merge
//! itself): the factors depend on every row (or column) of `W0` before any output element can
//! be written. Tiles are those of the merge ([`merge_tiles`], W0 straight from
//! the caller's bytes into the upload staging) and go in row-major order, which is what keeps
//! the sums' order; one set of device buffers serves every tile (the queue orders the writes
//! after the previous dispatch) and at most two tiles are staged at a time. A tile is walked in
//! several ordered dispatches, each adding at most `seg` elements to every sum, so that no
//! invocation loops longer than [`LOOP_BUDGET`]. The running sums (16 bytes per row or column
//! per DoRA term) stay on the device in buffers of at most one binding; a tile binds only its
//! own rows' or columns' sums, copied out before its dispatches and back after them. Only the
//! sums are read back, once, at the end.
//!
//! Must not: round anything the CPU does not round, or change the summation order.

use super::context::GpuContext;
use super::error::GpuError;
use super::kernels::{self, record_pass, DORA_WG};
use super::layout::{dtype_code, elem_bytes, pad4};
use super::merge_tiles::{merge_tiles, stride_of, TERM_WORDS};
use crate::backend::cpu;
use crate::backend::job::{MergeError, MergeJob, NormAxis};
use std::num::NonZeroU64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DoraParams {
    rows: u32,
    cols: u32,
    stride: u32,
    r_total: u32,
    in_dtype: u32,
    /// Always 0 (the kernel's FMA guard, as in merge.wgsl).
    zero: u32,
    r0: u32,
    c0: u32,
    seg: u32,
    pad: [u32; 3],
}

/// Loop iterations one invocation of `dora_norm` may run per dispatch: half of llvmpipe's
/// 65535, after which it silently leaves every loop (Mesa `gallivm/lp_bld_limits.h`
/// `LP_MAX_TGSI_LOOP_ITERATIONS`, "shared between every loop"; observed here: sums of 4096
/// columns at rank 16 came out ~11 % short). An element of a rank-r term costs about r + 2.
const LOOP_BUDGET: usize = 1 << 15;

/// Bytes per running sum on the device: (lo, hi, next, 0).
const SUM_BYTES: usize = 16;

/// [`cpu::dora_factors`] with the norms' sums computed on the device ([`dora_sums`]): the same
/// f32 factors, bit for bit.
pub(crate) fn dora_factors(
    ctx: &GpuContext,
    job: &MergeJob,
) -> Result<Vec<Option<Vec<f32>>>, MergeError> {
    let norms = cpu::dora_norms_from(job, dora_sums(ctx, job)?);
    Ok(cpu::dora_factors_from(job, &norms))
}

/// [`cpu::dora_sums`] on the device: the same f64 values, bit for bit (NaN sums are NaN, with
/// the payload 0x7ff8000000000000). Dense terms are not supported ([`super::merge_supports`]
/// sends them to the CPU): a job with one gives [`GpuError::Shape`].
pub fn dora_sums(ctx: &GpuContext, job: &MergeJob) -> Result<Vec<Option<Vec<f64>>>, MergeError> {
    job.validate()?;
    let dora: Vec<usize> = (0..job.terms.len())
        .filter(|&i| job.terms[i].dora.is_some())
        .collect();
    if dora.is_empty() {
        return Ok(Vec::new());
    }
    if dora.iter().any(|&i| job.terms[i].dense.is_some()) {
        return Err(GpuError::Shape("gpu DoRA norms take low-rank terms only".into()).into());
    }
    let (rows, cols) = (job.rows, job.cols);
    let in_es = elem_bytes(job.in_dtype) as usize;
    let in_code = dtype_code(job.in_dtype)?;
    // The DoRA terms' table (word 4, where a term's sums start in the tile's sums, is set per
    // tile) and where each one's sums start in the whole state.
    let mut table = vec![0u32; dora.len() * TERM_WORDS];
    let (mut off, mut at) = (0usize, 0usize);
    let mut spans = Vec::with_capacity(dora.len());
    for (di, &ti) in dora.iter().enumerate() {
        let t = &job.terms[ti];
        let (kind, n) = match t.dora.expect("a DoRA term").axis {
            NormAxis::Rows => (1, rows),
            NormAxis::Cols => (2, cols),
        };
        let row = &mut table[di * TERM_WORDS..(di + 1) * TERM_WORDS];
        row[0] = t.rank as u32;
        row[1] = off as u32;
        row[2] = t.scale.to_bits();
        row[3] = kind;
        spans.push((ti, at, n));
        off += t.rank;
        at += n;
    }
    let r_total = off;
    let count = |axis| {
        dora.iter()
            .filter(|&&i| job.terms[i].dora.is_some_and(|d| d.axis == axis))
            .count()
    };
    let (dora_rows, dora_cols) = (count(NormAxis::Rows), count(NormAxis::Cols));
    if rows == 0 || cols == 0 {
        return Ok(assemble(job, &spans, &vec![0u8; at * SUM_BYTES]));
    }
    let max_rank = dora.iter().map(|&i| job.terms[i].rank).max().unwrap_or(0);
    let seg = (LOOP_BUDGET / (max_rank + 2)).max(1);
    // Elements a sum walks in a tile of nr × nc: columns for a row's sum, rows for a column's.
    let walk = |nr: usize, nc: usize| {
        (if dora_rows > 0 { nc } else { 0 }).max(if dora_cols > 0 { nr } else { 0 })
    };
    ctx.check_binding("DoRA term table", (table.len() * 4) as u64)?;
    // The tile's sums (16 bytes per row of a Rows term, per column of a Cols term) must fit a
    // binding: merge_tiles gives each axis half the limit at 8 bytes per count, so 16-byte
    // sums count twice over (4× the terms) to stay within one binding together.
    let (tr, tc) = merge_tiles(
        rows,
        cols,
        in_es as u64,
        r_total,
        4 * dora_rows,
        4 * dora_cols,
        ctx.max_binding(),
        ctx.chunk_bytes(),
    )?;
    let kernel = ctx.kernel(&kernels::DORA_NORM, &[])?;
    let bytes = ctx.scoped(|| {
        use wgpu::BufferUsages as U;
        let buffer = |label, size: u64, usage| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: pad4(size),
                usage,
                mapped_at_creation: false,
            })
        };
        let stride_max = stride_of(tc);
        let input = U::STORAGE | U::COPY_DST;
        let w0 = buffer("dora w0", (tr * stride_max * in_es) as u64, input);
        let b = buffer("dora b", (tr * r_total.max(1) * 4) as u64, input);
        let a = buffer("dora a", (r_total.max(1) * stride_max * 4) as u64, input);
        let params = buffer(
            "dora params",
            std::mem::size_of::<DoraParams>() as u64,
            U::UNIFORM | U::COPY_DST,
        );
        let terms = ctx.upload("dora terms", bytemuck::cast_slice(&table));
        let tile_sums = buffer(
            "dora tile sums",
            ((dora_rows * tr + dora_cols * tc) * SUM_BYTES) as u64,
            U::STORAGE | U::COPY_SRC | U::COPY_DST,
        );
        // The whole state, in buffers of at most one binding: the running sums start at +0,
        // as the CPU's, at row / column 0.
        let per = (ctx.max_binding() as usize / SUM_BYTES).max(1);
        let state: Vec<wgpu::Buffer> = (0..at)
            .step_by(per)
            .map(|s| ctx.upload("dora sums", &vec![0u8; per.min(at - s) * SUM_BYTES]))
            .collect();
        let mut a_held = None;
        let mut previous: Option<wgpu::SubmissionIndex> = None;
        for r0 in (0..rows).step_by(tr) {
            for c0 in (0..cols).step_by(tc) {
                let (nr, nc) = (tr.min(rows - r0), tc.min(cols - c0));
                let stride = stride_of(nc);
                stage_w0(ctx, &w0, job, (r0, nr), (c0, nc), stride)?;
                let mut bt = vec![0f32; (nr * r_total).max(1)];
                let mut o = 0;
                for &ti in &dora {
                    let t = &job.terms[ti];
                    for i in 0..nr {
                        bt[i * r_total + o..i * r_total + o + t.rank]
                            .copy_from_slice(&t.b[(r0 + i) * t.rank..(r0 + i + 1) * t.rank]);
                    }
                    o += t.rank;
                }
                ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(&bt));
                if a_held != Some(c0) {
                    let mut at = vec![0f32; r_total.max(1) * stride];
                    let mut o = 0;
                    for &ti in &dora {
                        let t = &job.terms[ti];
                        for k in 0..t.rank {
                            at[(o + k) * stride..(o + k) * stride + nc]
                                .copy_from_slice(&t.a[k * cols + c0..k * cols + c0 + nc]);
                        }
                        o += t.rank;
                    }
                    ctx.queue.write_buffer(&a, 0, bytemuck::cast_slice(&at));
                    a_held = Some(c0);
                }
                let p = DoraParams {
                    rows: nr as u32,
                    cols: nc as u32,
                    stride: stride as u32,
                    r_total: r_total as u32,
                    in_dtype: in_code,
                    zero: 0,
                    r0: r0 as u32,
                    c0: c0 as u32,
                    seg: seg as u32,
                    pad: [0; 3],
                };
                ctx.queue.write_buffer(&params, 0, bytemuck::bytes_of(&p));
                // This tile's sums: rows r0.. of a Rows term, columns c0.. of a Cols term,
                // copied out of the state, walked, and copied back.
                let mut slices = Vec::with_capacity(dora.len());
                let mut tile_at = 0;
                for (di, &(ti, at, _)) in spans.iter().enumerate() {
                    let (first, n) = match job.terms[ti].dora.expect("a DoRA term").axis {
                        NormAxis::Rows => (at + r0, nr),
                        NormAxis::Cols => (at + c0, nc),
                    };
                    table[di * TERM_WORDS + 4] = tile_at as u32;
                    slices.push((first, n, tile_at));
                    tile_at += n;
                }
                ctx.queue
                    .write_buffer(&terms, 0, bytemuck::cast_slice(&table));
                let (gx, gy) = ctx.grid_1d(nr.max(nc) as u64, DORA_WG);
                let tile_bytes = (tile_at * SUM_BYTES) as u64;
                let bind = ctx.bind_ranges(
                    &kernel,
                    &[
                        (&params, params.size()),
                        (&w0, w0.size()),
                        (&b, b.size()),
                        (&a, a.size()),
                        (&terms, terms.size()),
                        (&tile_sums, tile_bytes),
                    ],
                );
                let mut enc = ctx.encoder();
                for &(first, n, t_at) in &slices {
                    copy_sums(&mut enc, &state, per, first, n, &tile_sums, t_at, true);
                }
                // Each dispatch moves every sum at most `seg` elements along; passes are
                // ordered, so the sums' order holds across them.
                for _ in 0..walk(nr, nc).div_ceil(seg) {
                    record_pass(&mut enc, &kernel, &bind, (gx, gy, dora.len() as u32), None);
                }
                for &(first, n, t_at) in &slices {
                    copy_sums(&mut enc, &state, per, first, n, &tile_sums, t_at, false);
                }
                let index = ctx.queue.submit([enc.finish()]);
                // At most two tiles staged on the host: wait for the one before this one.
                if let Some(prev) = previous.replace(index) {
                    ctx.device
                        .poll(wgpu::PollType::Wait {
                            submission_index: Some(prev),
                            timeout: None,
                        })
                        .map_err(|e| GpuError::Readback(e.to_string()))?;
                }
            }
        }
        let sources: Vec<(&wgpu::Buffer, u64)> = state.iter().map(|b| (b, b.size())).collect();
        Ok(ctx.submit_and_read(ctx.encoder(), &sources)?.concat())
    })?;
    Ok(assemble(job, &spans, &bytes))
}

/// Records copies of the sums `first .. first + n` of the whole state (held in buffers of `per`
/// sums each) to the tile's sums from `tile_at` (`into_tile`), or back.
#[allow(clippy::too_many_arguments)] // plain positions, named at both calls
fn copy_sums(
    enc: &mut wgpu::CommandEncoder,
    state: &[wgpu::Buffer],
    per: usize,
    mut first: usize,
    mut n: usize,
    tile: &wgpu::Buffer,
    mut tile_at: usize,
    into_tile: bool,
) {
    let b = SUM_BYTES as u64;
    while n > 0 {
        let (chunk, within) = (first / per, first % per);
        let m = n.min(per - within);
        let (s_off, t_off, len) = (within as u64 * b, tile_at as u64 * b, m as u64 * b);
        if into_tile {
            enc.copy_buffer_to_buffer(&state[chunk], s_off, tile, t_off, len);
        } else {
            enc.copy_buffer_to_buffer(tile, t_off, &state[chunk], s_off, len);
        }
        (first, tile_at, n) = (first + m, tile_at + m, n - m);
    }
}

/// Per term, its sums decoded from the read-back bytes (`spans`: term index, first sum, count).
fn assemble(
    job: &MergeJob,
    spans: &[(usize, usize, usize)],
    bytes: &[u8],
) -> Vec<Option<Vec<f64>>> {
    let mut out: Vec<Option<Vec<f64>>> = vec![None; job.terms.len()];
    for &(ti, at, n) in spans {
        out[ti] = Some(
            bytes[at * SUM_BYTES..(at + n) * SUM_BYTES]
                .chunks_exact(SUM_BYTES)
                .map(|c| f64::from_le_bytes(c[..8].try_into().expect("8 bytes")))
                .collect(),
        );
    }
    out
}

/// Writes the base tile `rows.0 .. rows.0 + rows.1` × `cols.0 .. cols.0 + cols.1` from the
/// caller's bytes into `w0` (row stride `stride` elements) through wgpu's upload staging.
fn stage_w0(
    ctx: &GpuContext,
    w0: &wgpu::Buffer,
    job: &MergeJob,
    (r0, nr): (usize, usize),
    (c0, nc): (usize, usize),
    stride: usize,
) -> Result<(), GpuError> {
    let es = elem_bytes(job.in_dtype) as usize;
    let cols = job.cols;
    // A multiple of 16 bytes: the stride is a multiple of 8 elements.
    let size = NonZeroU64::new((nr * stride * es) as u64).expect("a tile has rows and columns");
    let mut view = ctx
        .queue
        .write_buffer_with(w0, 0, size)
        .ok_or_else(|| GpuError::Wgpu("DoRA norms: staging the base tile failed".into()))?;
    if nc == cols && stride == cols {
        view.slice(..)
            .copy_from_slice(&job.w0[r0 * cols * es..(r0 + nr) * cols * es]);
    } else {
        for i in 0..nr {
            let src = ((r0 + i) * cols + c0) * es;
            view.slice(i * stride * es..(i * stride + nc) * es)
                .copy_from_slice(&job.w0[src..src + nc * es]);
        }
    }
    Ok(())
}
