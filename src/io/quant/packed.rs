//! compressed-tensors `pack-quantized` integer weights (what llm-compressor writes for GPTQ/AWQ
//! style INT2–INT8 models), read as compressed-tensors 0.20 `compressors/pack_quantized/`
//! (`base.py` `PackedQuantizationCompressor.decompress`, `helpers.py` `unpack_from_int32`) and
//! `quantization/lifecycle/forward_helpers.py` `_dequantize` define them.
//!
//! On disk, for a weight `P.weight` of shape `[rows, cols]` (given by `P.weight_shape`, I64[2]):
//! - `P.weight_packed` I32 `[rows, ⌈cols·bits/32⌉]`: each row a little-endian stream of bits,
//!   element `i` at bit `i·bits` (splitting across words), stored unsigned as `q + 2^(bits−1)`;
//! - `P.weight_scale` `[rows, groups]` (or `[rows, 1]` per channel, `[1]` per tensor), any float;
//! - `P.weight_zero_point` (asymmetric group/channel only) I32 `[⌈rows·bits/32⌉, groups]`: the
//!   signed zero points packed the same way along dimension 0 (down the rows, per group).
//!
//! Dequantization: `w = (q − z) · s` evaluated in the scale's dtype (`x_q.to(scale.dtype)`, the
//! subtraction and the product each rounded to it; both exact before the product's rounding for
//! ≤ 8-bit integers), with group `g = col / (cols / groups)`, or `g = g_idx[col]` where the weight
//! has an initialised `P.weight_g_idx` (I32 `[cols]`, llm-compressor's GPTQ `actorder: "group"`;
//! compressed-tensors' `_process_quantization` before the removal of GROUP actorder on
//! 2026-08-27: `is_column_order = g_idx is None or -1 in g_idx`, otherwise the columns are sorted
//! by `argsort(g_idx)` and the k-th run of columns takes scale column k — for the g_idx GPTQ
//! writes, each group `group_size` columns, that is `scale[:, g_idx[col]]`, which vLLM's
//! CompressedTensorsWNA16 reads too).
//!
//! The same arithmetic serves compressed-tensors' unpacked integer formats (`naive-quantized`,
//! `int-quantized`: `compressors/naive_quantized/base.py`, `quantize(..., dtype=int8)` /
//! `dequantize`): `P.weight` I8 `[rows, cols]` holds the signed codes themselves, one per byte
//! (no offset); `P.weight_zero_point`, where stored (asymmetric), has the scale's shape and holds
//! the signed zero points one per element (I8, `QuantizationArgs.pytorch_dtype()`).
//!
//! Must not choose what is stored: it decodes and re-encodes with the checkpoint's own scales and
//! zero points; `merge --quant` decides whether to requantize.

use crate::dtype::{self, Dtype};

/// Parameters of one packed weight, checked against every tensor's shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Params {
    pub bits: u32,
    pub rows: usize,
    pub cols: usize,
    /// Scale groups per row (1 = per channel or per tensor).
    pub groups: usize,
    /// One scale for the whole tensor.
    pub per_tensor: bool,
    pub symmetric: bool,
    pub scale_dtype: Dtype,
    /// How the codes (and zero points) are stored.
    pub storage: Storage,
    /// The group of each column where `P.weight_g_idx` says (act-order "group"); `None`: column
    /// `c` is in group `c / group_size`.
    #[serde(skip)]
    pub g_idx: Option<Vec<u32>>,
}

/// How a compressed-tensors integer weight stores its codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// `pack-quantized`: I32 words of bit streams, codes offset by `2^(bits−1)`, zero points
    /// packed down the rows.
    Packed,
    /// `naive-quantized` / `int-quantized`: one signed I8 code per element, zero points one I8
    /// per scale.
    Int8,
}

impl Params {
    pub fn group_size(&self) -> usize {
        self.cols / self.groups
    }

    /// Where element `(r, c)` finds its scale and zero point: the index into the scales (one
    /// per tensor, or one per row and group) and into the zero points (one per row and group).
    fn group_at(&self, r: usize, c: usize) -> (usize, usize) {
        if self.per_tensor {
            return (0, 0);
        }
        let g = match &self.g_idx {
            Some(g) => g[c] as usize,
            None => c / self.group_size(),
        };
        let zi = r * self.groups + g;
        (zi, zi)
    }

    /// The signed code of element `(r, c)`.
    fn code(&self, codes: &[u8], r: usize, c: usize) -> i32 {
        match self.storage {
            Storage::Packed => {
                let row_bytes = 4 * words(self.cols, self.bits);
                let row = &codes[r * row_bytes..(r + 1) * row_bytes];
                element(row, c, self.bits) as i32 - (1i32 << (self.bits - 1))
            }
            Storage::Int8 => codes[r * self.cols + c] as i8 as i32,
        }
    }

    /// The signed zero points, one per scale (`[rows, groups]`, or one per tensor).
    fn zeros(&self, z: &[u8]) -> Vec<i32> {
        match self.storage {
            Storage::Packed => unpack_zeros(self, z),
            Storage::Int8 => z.iter().map(|&b| b as i8 as i32).collect(),
        }
    }
}

/// Words of one packed row of `cols` elements.
pub fn words(cols: usize, bits: u32) -> usize {
    (cols * bits as usize).div_ceil(32)
}

/// The bit width whose packing gives `packed_cols` words for `cols` elements, when exactly one
/// does (always for `cols ≥ 32`).
pub fn infer_bits(cols: usize, packed_cols: usize) -> Option<u32> {
    let fits: Vec<u32> = (1..=8).filter(|&b| words(cols, b) == packed_cols).collect();
    match fits.as_slice() {
        [b] => Some(*b),
        _ => None,
    }
}

/// Element `i` (unsigned) of a bit stream of little-endian 32-bit words.
pub(super) fn element(stream: &[u8], i: usize, bits: u32) -> u32 {
    let start = i * bits as usize;
    let word = |k: usize| -> u32 {
        stream
            .get(4 * k..4 * k + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0)
    };
    let (w, off) = (start / 32, (start % 32) as u32);
    let mask = (1u64 << bits) - 1;
    let lo = (word(w) as u64) >> off;
    let hi = if off + bits > 32 {
        (word(w + 1) as u64) << (32 - off)
    } else {
        0
    };
    ((lo | hi) & mask) as u32
}

/// Dequantizes to f32 (values already rounded to the scale dtype, as the library computes them).
pub fn dequantize(p: &Params, packed: &[u8], scale: &[u8], zero: Option<&[u8]>) -> Vec<f32> {
    let scales = dtype::decode(p.scale_dtype, scale);
    let zeros = zero.map(|z| p.zeros(z)).unwrap_or_default();
    // Rounding to the scale dtype, as `dtype::encode` rounds (nearest even, the `half` crate).
    let round = |x: f32| dtype::round_to(p.scale_dtype, x);
    let mut out = Vec::with_capacity(p.rows * p.cols);
    for r in 0..p.rows {
        for c in 0..p.cols {
            let (si, zi) = p.group_at(r, c);
            let s = scales[si];
            let q = p.code(packed, r, c);
            let z = zeros.get(zi).copied().unwrap_or(0);
            // `x_q.to(scale.dtype) - zero_point.to(scale.dtype)`, then `* scale`.
            let diff = round((q - z) as f32);
            out.push(round(diff * s));
        }
    }
    out
}

/// `merged` (f32, logical shape) rounded to nearest with the stored scales and zero points, as
/// compressed-tensors 0.20 `PackedQuantizationCompressor.compress_weight` computes it
/// (`quantization/lifecycle/forward_helpers.py` `_quantize`, `quant_args.py`
/// `round_to_quantized_type_args`, `helpers.py` `pack_to_int32`): the producer compresses the
/// weight in the scale's dtype (`fixtures/gen/quant_fixtures.py` `ct_pack`, llm-compressor's
/// model dtype), so `x` is first rounded to it; then `x / s` and `+ z` each rounded to that
/// dtype, clamped to `[−2^(b−1), 2^(b−1)−1]`, rounded half to even, packed as the reader reads.
/// Only `weight_packed` (the I8 `weight` of the unpacked formats, `quantize(..., dtype=int8)`)
/// changes; scales, zero points and g_idx are kept.
pub fn requantize(p: &Params, merged: &[f32], scale: &[u8], zero: Option<&[u8]>) -> Vec<u8> {
    let offset = 1i32 << (p.bits - 1);
    let (qmin, qmax) = (-(offset as f32), (offset - 1) as f32);
    let scales = dtype::decode(p.scale_dtype, scale);
    let zeros = zero.map(|z| p.zeros(z));
    let round = |x: f32| dtype::round_to(p.scale_dtype, x);
    let nwords = words(p.cols, p.bits);
    let mut out = Vec::with_capacity(4 * nwords * p.rows);
    if p.storage == Storage::Int8 {
        out.reserve(p.rows * p.cols);
    }
    for r in 0..p.rows {
        let mut row = vec![0u32; nwords];
        for c in 0..p.cols {
            let (si, zi) = p.group_at(r, c);
            let s = scales[si];
            let mut scaled = round(round(merged[r * p.cols + c]) / s);
            if let Some(z) = &zeros {
                scaled = round(scaled + z[zi] as f32);
            }
            // torch.clamp then torch.round (half to even); NaN clamps to NaN and casts to 0.
            let q = scaled.clamp(qmin, qmax).round_ties_even();
            let q = if q.is_nan() { 0 } else { q as i32 };
            match p.storage {
                Storage::Packed => put(&mut row, c, p.bits, (q + offset) as u32),
                Storage::Int8 => out.push(q as i8 as u8),
            }
        }
        if p.storage == Storage::Packed {
            out.extend(row.iter().flat_map(|w| w.to_le_bytes()));
        }
    }
    out
}

/// Sets element `i` of a bit stream of 32-bit words (`row`, zeroed there) to `v` (< 2^bits),
/// as [`element`] reads it back.
pub(super) fn put(row: &mut [u32], i: usize, bits: u32, v: u32) {
    let start = i * bits as usize;
    let (w, off) = (start / 32, start % 32);
    let v = (v as u64) << off;
    row[w] |= v as u32;
    if off + bits as usize > 32 {
        row[w + 1] |= (v >> 32) as u32;
    }
}

/// Signed zero points `[rows, groups]` from the `[⌈rows·bits/32⌉, groups]` packed matrix.
fn unpack_zeros(p: &Params, z: &[u8]) -> Vec<i32> {
    let offset = 1i32 << (p.bits - 1);
    let zwords = words(p.rows, p.bits);
    let mut zeros = vec![0i32; p.rows * p.groups];
    for g in 0..p.groups {
        let col: Vec<u8> = (0..zwords)
            .flat_map(|k| {
                let at = 4 * (k * p.groups + g);
                [z[at], z[at + 1], z[at + 2], z[at + 3]]
            })
            .collect();
        for r in 0..p.rows {
            zeros[r * p.groups + g] = element(&col, r, p.bits) as i32 - offset;
        }
    }
    zeros
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_streams_split_across_words() {
        // 3-bit elements 0..=7 repeated: element 10 starts at bit 30 and spans two words.
        let vals: Vec<u32> = (0..32).map(|i| i % 8).collect();
        let mut words = [0u32; 3];
        for (i, v) in vals.iter().enumerate() {
            let s = i * 3;
            words[s / 32] |= v << (s % 32);
            if s % 32 + 3 > 32 {
                words[s / 32 + 1] |= v >> (32 - s % 32);
            }
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        for (i, v) in vals.iter().enumerate() {
            assert_eq!(element(&bytes, i, 3), *v, "{i}");
        }
        assert_eq!(infer_bits(64, 8), Some(4));
        assert_eq!(infer_bits(64, 6), Some(3));
        assert_eq!(infer_bits(8, 1), None);
    }
}
