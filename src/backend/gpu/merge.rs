//! GPU merge: the `merge` kernel (`shaders/merge.wgsl`) over tiles of the matrix.
//!
//! DoRA norms `‖W0 + δₜ‖` are computed on the CPU with [`cpu::dora_factors`] (f64 sums, as the
//! reference does; WGSL has no portable f64) and passed to the kernel as f32 factors
//! `m / ‖W0 + δₜ‖`, divided on the host exactly as the CPU merge divides, so DoRA outputs stay
//! bit-identical. Everything else runs on the GPU.

use super::kernels::{self, MERGE_WG};
use super::{dtype_code, elem_bytes, GpuContext, GpuError};
use crate::backend::{cpu, MergeError, MergeJob, NormAxis};

/// Words per term in the kernel's `terms` table (`TERM_WORDS` in merge.wgsl).
const TERM_WORDS: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MergeParams {
    rows: u32,
    cols: u32,
    n_terms: u32,
    r_total: u32,
    in_dtype: u32,
    out_dtype: u32,
    /// Always 0; the kernel's FMA guard XORs with it (see merge.wgsl).
    zero: u32,
    n_elems: u32,
}

/// Tile shape for a merge: `(tile_rows, tile_cols)` such that every binding fits `limit` bytes.
///
/// Full rows are preferred (contiguous host copies); columns are split only when one row of the
/// base/output, or the terms' `A` restricted to all columns, does not fit.
pub(crate) fn merge_tiles(
    rows: usize,
    cols: usize,
    max_es: u64,
    r_total: usize,
    dora_rows: usize,
    dora_cols: usize,
    limit: u64,
) -> Result<(usize, usize), GpuError> {
    let r4 = 4 * r_total as u64;
    // Half the budget of the factor buffer goes to column factors, half to row factors.
    let col_cap =
        |tc: u64| tc * max_es <= limit && r4 * tc <= limit && 8 * dora_cols as u64 * tc <= limit;
    let mut tc = cols as u64;
    if !col_cap(tc) {
        tc = limit / max_es;
        if r_total > 0 {
            tc = tc.min(limit / r4);
        }
        if dora_cols > 0 {
            tc = tc.min(limit / (8 * dora_cols as u64));
        }
    }
    // Keep element indices of a tile inside u32 (the kernel's `e`), and the factor budget split.
    let mut tr = (limit / (tc.max(1) * max_es)).min(rows as u64);
    if r_total > 0 {
        tr = tr.min(limit / r4);
    }
    if dora_rows > 0 {
        tr = tr.min(limit / (8 * dora_rows as u64));
    }
    if tr == 0 || tc == 0 {
        return Err(GpuError::TooLarge {
            what: format!("merge with total rank {r_total} ({dora_rows}+{dora_cols} DoRA terms)"),
            bytes: r4.max(max_es),
            limit,
        });
    }
    Ok((tr as usize, tc as usize))
}

/// Merges low-rank terms into one tensor on the GPU: same contract and same bits as
/// [`cpu::merge`] (F32/F16/BF16 in and out; other dtypes give [`MergeError::Gpu`], F64 included).
/// Whether the kernel covers `job`: 16/32-bit float tensors, low-rank terms, DoRA that replaces
/// the weight (strength 1). Dense terms (LoHa, LoKr, full modules) and ComfyUI's blended DoRA
/// are merged by the CPU backend.
pub fn merge_supports(job: &MergeJob) -> bool {
    use crate::dtype::Dtype;
    job.in_dtype != Dtype::F64
        && job.out_dtype != Dtype::F64
        && job
            .terms
            .iter()
            .all(|t| t.dense.is_none() && t.dora.is_none_or(|d| d.strength == 1.0))
}

pub fn merge(ctx: &GpuContext, job: &MergeJob) -> Result<Vec<u8>, MergeError> {
    merge_with(ctx, job, true)
}

/// [`merge`] with the kernel's FMA guard on or off (off only to test whether the device's
/// compiler contracts `a·b + c`; see `shaders/merge.wgsl`).
pub(crate) fn merge_with(
    ctx: &GpuContext,
    job: &MergeJob,
    fma_guard: bool,
) -> Result<Vec<u8>, MergeError> {
    job.validate()?;
    let in_code = dtype_code(job.in_dtype)?;
    let out_code = dtype_code(job.out_dtype)?;
    let (rows, cols) = (job.rows, job.cols);
    let (in_es, out_es) = (
        elem_bytes(job.in_dtype) as usize,
        elem_bytes(job.out_dtype) as usize,
    );
    let mut out = vec![0u8; rows * cols * out_es];
    if rows == 0 || cols == 0 {
        return Ok(out);
    }

    // DoRA factors m/(‖W0 + δ‖ + eps) per row or column, the same f32 values cpu::merge uses.
    let factors: Vec<Option<(NormAxis, Vec<f32>)>> = cpu::dora_factors(job)
        .into_iter()
        .zip(job.terms)
        .map(|(f, t)| Some((t.dora?.axis, f?)))
        .collect();
    let dora_rows = factors
        .iter()
        .flatten()
        .filter(|(a, _)| *a == NormAxis::Rows)
        .count();
    let dora_cols = factors
        .iter()
        .flatten()
        .filter(|(a, _)| *a == NormAxis::Cols)
        .count();
    let r_total: usize = job.terms.iter().map(|t| t.rank).sum();
    let limit = ctx.max_binding();
    let (tr, tc) = merge_tiles(
        rows,
        cols,
        in_es.max(out_es) as u64,
        r_total,
        dora_rows,
        dora_cols,
        limit,
    )?;
    ctx.check_binding(
        "merge term table",
        (job.terms.len() * TERM_WORDS * 4) as u64,
    )?;

    let constants: &[(&str, f64)] = if fma_guard {
        &[]
    } else {
        &[("NO_FMA_GUARD", 0.0)]
    };
    let kernel = ctx.kernel(&kernels::MERGE, constants)?;
    let mut first_bad: Option<(usize, usize, f32)> = None;
    ctx.scoped(|| {
        for r0 in (0..rows).step_by(tr) {
            let nr = tr.min(rows - r0);
            for c0 in (0..cols).step_by(tc) {
                let nc = tc.min(cols - c0);
                let tile = Tile { r0, nr, c0, nc };
                let (bytes, bad) = run_tile(
                    ctx, &kernel, job, &factors, r_total, tile, in_code, out_code,
                )?;
                // Scatter the tile's rows into the output.
                for i in 0..nr {
                    let dst = ((r0 + i) * cols + c0) * out_es;
                    out[dst..dst + nc * out_es]
                        .copy_from_slice(&bytes[i * nc * out_es..(i + 1) * nc * out_es]);
                }
                if let Some(e) = bad {
                    let (row, col) = (r0 + e / nc, c0 + e % nc);
                    let value =
                        crate::dtype::decode(job.out_dtype, &bytes[e * out_es..(e + 1) * out_es])
                            [0];
                    if first_bad.is_none_or(|(r, c, _)| (row, col) < (r, c)) {
                        first_bad = Some((row, col, value));
                    }
                }
            }
        }
        Ok(())
    })?;
    match first_bad {
        Some((row, col, value)) => Err(MergeError::NonFinite { row, col, value }),
        None => Ok(out),
    }
}

#[derive(Clone, Copy)]
struct Tile {
    r0: usize,
    nr: usize,
    c0: usize,
    nc: usize,
}

/// Runs one tile; returns its output bytes and the tile-linear index of its first non-finite
/// result, if any.
#[allow(clippy::too_many_arguments)]
fn run_tile(
    ctx: &GpuContext,
    kernel: &kernels::Kernel,
    job: &MergeJob,
    factors: &[Option<(NormAxis, Vec<f32>)>],
    r_total: usize,
    t: Tile,
    in_code: u32,
    out_code: u32,
) -> Result<(Vec<u8>, Option<usize>), GpuError> {
    let (rows, cols) = (job.rows, job.cols);
    let in_es = elem_bytes(job.in_dtype) as usize;
    let out_es = elem_bytes(job.out_dtype) as usize;
    let n_elems = t.nr * t.nc;

    // W0 tile, contiguous rows when the tile spans all columns.
    let w0_tile: Vec<u8> = if t.nc == cols {
        job.w0[t.r0 * cols * in_es..(t.r0 + t.nr) * cols * in_es].to_vec()
    } else {
        let mut v = Vec::with_capacity(n_elems * in_es);
        for i in t.r0..t.r0 + t.nr {
            v.extend_from_slice(
                &job.w0[(i * cols + t.c0) * in_es..(i * cols + t.c0 + t.nc) * in_es],
            );
        }
        v
    };
    // B tile (nr × r_total, terms side by side), A tile (r_total × nc, terms stacked), term table
    // and the DoRA factors of this tile's rows / columns.
    let mut b = vec![0f32; t.nr * r_total];
    let mut a = vec![0f32; r_total * t.nc];
    let mut table = vec![0u32; job.terms.len() * TERM_WORDS];
    let mut fac: Vec<f32> = Vec::new();
    let mut off = 0;
    for (ti, term) in job.terms.iter().enumerate() {
        for i in 0..t.nr {
            let src = &term.b[(t.r0 + i) * term.rank..(t.r0 + i + 1) * term.rank];
            b[i * r_total + off..i * r_total + off + term.rank].copy_from_slice(src);
        }
        for k in 0..term.rank {
            a[(off + k) * t.nc..(off + k + 1) * t.nc]
                .copy_from_slice(&term.a[k * cols + t.c0..k * cols + t.c0 + t.nc]);
        }
        let row = &mut table[ti * TERM_WORDS..(ti + 1) * TERM_WORDS];
        row[0] = term.rank as u32;
        row[1] = off as u32;
        row[2] = term.scale.to_bits();
        if let Some((axis, f)) = &factors[ti] {
            row[3] = if *axis == NormAxis::Rows { 1 } else { 2 };
            row[4] = fac.len() as u32;
            match axis {
                NormAxis::Rows => fac.extend_from_slice(&f[t.r0..t.r0 + t.nr]),
                NormAxis::Cols => fac.extend_from_slice(&f[t.c0..t.c0 + t.nc]),
            }
        }
        off += term.rank;
    }
    debug_assert!(rows >= t.r0 + t.nr);

    let params = MergeParams {
        rows: t.nr as u32,
        cols: t.nc as u32,
        n_terms: job.terms.len() as u32,
        r_total: r_total as u32,
        in_dtype: in_code,
        out_dtype: out_code,
        zero: 0,
        n_elems: n_elems as u32,
    };
    let out_bytes = (n_elems * out_es) as u64;
    let p = ctx.uniform("merge params", &params);
    let w0 = ctx.upload("merge w0", &w0_tile);
    let out = ctx.output("merge out", out_bytes);
    let bb = ctx.upload("merge b", bytemuck::cast_slice(&b));
    let ab = ctx.upload("merge a", bytemuck::cast_slice(&a));
    let tb = ctx.upload("merge terms", bytemuck::cast_slice(&table));
    let fb = ctx.upload("merge factors", bytemuck::cast_slice(&fac));
    let flags = ctx.upload("merge flags", bytemuck::bytes_of(&u32::MAX));

    let words = if out_es == 4 {
        n_elems
    } else {
        n_elems.div_ceil(2)
    };
    let mut enc = ctx.encoder();
    ctx.dispatch(
        &mut enc,
        kernel,
        &[&p, &w0, &out, &bb, &ab, &tb, &fb, &flags],
        ctx.grid_1d(words as u64, MERGE_WG),
    );
    let mut res = ctx.submit_and_read(enc, &[(&out, out_bytes), (&flags, 4)])?;
    let flag = u32::from_le_bytes(res[1][..4].try_into().expect("4 bytes"));
    let bad = (flag != u32::MAX).then_some(flag as usize);
    Ok((res.swap_remove(0), bad))
}
