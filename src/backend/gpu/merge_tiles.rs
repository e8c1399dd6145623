//! The merge kernel's layout on the host side: the words per term of its `terms` table, its
//! parameter block ([`MergeParams`], as `shaders/merge.wgsl` declares it), the device row stride
//! ([`stride_of`]) and the tile shape that keeps every binding, tile and dispatch within the
//! device's limits ([`merge_tiles`]).
//!
//! Plain numbers, a leaf shared by the merge, the DoRA norms (the same tiles) and the bench. Must
//! not touch a device.

use super::error::GpuError;
use super::kernels::{MERGE_TILE_R, MERGE_VEC};

/// Words per term in the kernel's `terms` table (`TERM_WORDS` in merge.wgsl).
pub(crate) const TERM_WORDS: usize = 8;

/// Most multiply-adds (elements × total rank) one dispatch may do: ~2·10⁹, a few milliseconds
/// on a discrete GPU, far from the ~2 s watchdogs of desktop drivers even on a slow one.
pub(crate) const WORK_CAP: u64 = 1 << 31;

/// Most workgroup rows in one dispatch dimension that every device allows (WebGPU's minimum
/// `max_compute_workgroups_per_dimension`).
const MAX_GROUPS_Y: u64 = 65535;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MergeParams {
    pub rows: u32,
    pub cols: u32,
    pub n_terms: u32,
    pub r_total: u32,
    pub in_dtype: u32,
    pub out_dtype: u32,
    /// Always 0; the kernel's FMA guard XORs with it (see merge.wgsl).
    pub zero: u32,
    /// Row stride of the W0 / output tiles on the device, in elements (a multiple of 8).
    pub stride: u32,
}

/// `n` rounded up to the kernel's vector width (the device row stride of a tile of `n` columns).
pub(crate) fn stride_of(n: usize) -> usize {
    n.div_ceil(MERGE_VEC) * MERGE_VEC
}

/// Tile shape for a merge: `(tile_rows, tile_cols)` such that every binding fits `limit` bytes,
/// a base/output tile fits `chunk` bytes (unless one row alone is larger), and a tile does at
/// most [`WORK_CAP`] multiply-adds (unless one row alone does more).
///
/// Full rows are preferred (contiguous host copies); columns are split, in multiples of 8, only
/// when one row of the base/output, or the terms' `A` restricted to all columns, does not fit.
#[allow(clippy::too_many_arguments)] // plain numbers, named at every call
pub(crate) fn merge_tiles(
    rows: usize,
    cols: usize,
    max_es: u64,
    r_total: usize,
    dora_rows: usize,
    dora_cols: usize,
    limit: u64,
    chunk: u64,
) -> Result<(usize, usize), GpuError> {
    let r4 = 4 * r_total as u64;
    let vec = MERGE_VEC as u64;
    // Half the budget of the factor buffer goes to column factors, half to row factors.
    let col_cap = |tc: u64| {
        let s = tc.div_ceil(vec) * vec;
        s * max_es <= limit && r4 * s <= limit && 8 * dora_cols as u64 * s <= limit
    };
    let mut tc = cols as u64;
    if !col_cap(tc) {
        tc = limit / max_es;
        if r_total > 0 {
            tc = tc.min(limit / r4);
        }
        if dora_cols > 0 {
            tc = tc.min(limit / (8 * dora_cols as u64));
        }
        tc = tc / vec * vec;
    }
    let stride = tc.div_ceil(vec).max(1) * vec;
    let mut tr = (limit / (stride * max_es))
        .min(rows as u64)
        .min(MAX_GROUPS_Y * MERGE_TILE_R as u64);
    // The chunk and work caps give way to one row: a tile has at least one.
    tr = tr.min((chunk / (stride * max_es)).max(1));
    tr = tr.min((WORK_CAP / (stride * r_total.max(1) as u64)).max(1));
    if r_total > 0 {
        tr = tr.min(limit / r4);
    }
    if dora_rows > 0 {
        tr = tr.min(limit / (8 * dora_rows as u64));
    }
    if tr == 0 || tc == 0 {
        return Err(GpuError::TooLarge {
            what: format!("merge with total rank {r_total} ({dora_rows}+{dora_cols} DoRA terms)"),
            bytes: (r4 * vec).max(max_es * vec),
            limit,
        });
    }
    Ok((tr as usize, tc as usize))
}
