//! How host data meets the kernels' buffers: the dtype codes the shaders read, byte sizes padded
//! to whole words, element sizes, little-endian `f32` readback, and how many rows of a tiled
//! operand fit one binding.
//!
//! A leaf of plain functions (no device, no context) shared by every GPU op. Must not create
//! buffers or dispatch anything.

use super::error::GpuError;
use super::kernels;
use crate::dtype::Dtype;

/// Element-type code shared with the shaders (`DT_*` in common.wgsl).
pub(crate) fn dtype_code(d: Dtype) -> Result<u32, GpuError> {
    match d {
        Dtype::F32 => Ok(0),
        Dtype::F16 => Ok(1),
        Dtype::BF16 => Ok(2),
        other => Err(GpuError::Dtype(other)),
    }
}

/// Largest `rows` (≤ `cap`) with `rows · bytes_per_row ≤ limit`, and at most what one GEMM grid
/// dimension covers (`max_groups` workgroups of the smaller side, `GEMM_TILE_N`, so that the rows
/// fit either grid dimension).
pub(crate) fn fit_rows(cap: usize, bytes_per_row: u64, limit: u64, max_groups: u32) -> usize {
    let by_limit = limit.checked_div(bytes_per_row).unwrap_or(u64::MAX);
    by_limit
        .min(cap as u64)
        .min(max_groups as u64 * kernels::GEMM_TILE_N as u64) as usize
}

pub(crate) fn pad4(bytes: u64) -> u64 {
    bytes.div_ceil(4).max(1) * 4
}

/// Bytes of `n` elements of a GPU dtype.
pub(crate) fn elem_bytes(d: Dtype) -> u64 {
    (d.bitsize() / 8) as u64
}

/// Reads `bytes` as little-endian `f32`s.
pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
