//! compressed-tensors packed float weights: `nvfp4-pack-quantized`, `mxfp4-pack-quantized` and
//! `mxfp6-pack-quantized`, what llm-compressor writes for its `NVFP4`/`NVFP4A16`, `MXFP4` and
//! `MXFP6A16`/`MXFP6A8` schemes (the Blackwell-era checkpoints vLLM serves), read and written as
//! compressed-tensors 0.20 does (`compressors/nvfp4/base.py` and `helpers.py`,
//! `compressors/mxfp4/base.py`, `compressors/mxfp6/base.py` and `helpers.py`, `mx_utils.py`,
//! `quantization/lifecycle/forward_helpers.py` `_quantize`/`_dequantize`,
//! `quantization/utils/fp4_utils.py` `cast_to_fp4`, `fp6_utils.py` `cast_to_fp6`).
//!
//! On disk, for a module `P` with a `[rows, cols]` weight (no `weight_shape`: the packing gives it):
//! - `P.weight_packed` U8 `[rows, cols/2]`: two E2M1 codes a byte, element `2j` in the low nibble
//!   (`unpack_fp4_from_uint8`), the table `±{0, 0.5, 1, 1.5, 2, 3, 4, 6}`, sign in bit 3;
//! - NVFP4: `P.weight_scale` F8_E4M3 `[rows, cols/16]` and `P.weight_global_scale` F32 `[1]`;
//! - MXFP4: `P.weight_scale` U8 `[rows, cols/32]`, an E8M0 exponent `e`, the scale `2^(e−127)`
//!   (`decompress_mx_scale`, in bf16);
//! - MXFP6: `P.weight_packed` U8 `[rows, 3·cols/4]`, four E2M3 codes (sign in bit 5, magnitudes
//!   `m/8` then `(1 + m/8)·2^e`, up to 7.5) little-endian in three bytes (`pack_fp6_to_uint8`),
//!   and the MXFP4 scale;
//! - `P.input_global_scale` where activations are quantized statically: copied, never read.
//!
//! Dequantization (the compressor's `decompress`, which unpacks to bf16 and returns bf16):
//! NVFP4 `bf16(code · (f32(scale) / global))`, the quotient and the product each rounded to f32
//! (`scale / global_scale` promotes to f32: the global scale is a 1-element tensor); MXFP4 and
//! MXFP6 `bf16(code · 2^(e−127))`, exact but for the overflow of `e = 255` (or `e ≥ 253` with large
//! codes) to infinity, refused by the caller.
//!
//! Requantization (`merge --quant keep`) rounds to nearest with the stored scales, as the
//! compressor's `compress` does when handed them (`quantize_and_pack_fp4`'s CPU path): the merged
//! weight rounded to bf16 (the dtype `decompress` gives the model), divided by the group's scale
//! (NVFP4 in f32; MXFP4 and MXFP6 in bf16, `bf16 / bf16`), then
//! - FP4: clamped to ±6 and rounded to E2M1 by `cast_to_fp4`'s thresholds (ties to even:
//!   0.25 → 0, 0.75 → 1, 1.25 → 1, 1.75 → 2, 2.5 → 2, 3.5 → 4, 5 → 4), the sign bit set for a
//!   negative quotient (−0 after rounding, code 8) but not for −0 itself (`torch.sign(-0.0)` is 0);
//! - FP6: clamped to ±7.5 and rounded by `cast_to_fp6` to a multiple of `2^(max(e, 0) − 3)`
//!   (`e` the quotient's f32 exponent), ties to even, the code found by `searchsorted` and the
//!   sign bit taken from `signbit` (so −0 keeps it: code 32, unlike FP4).
//!
//! Only `weight_packed` changes.
//!
//! Must not choose scales: llm-compressor's calibration (min/max, or GPTQ for FP4) made them, and
//! lorakit keeps them, as it does for the integer pack-quantized format.

use crate::dtype::{self, Dtype};

/// Which compressed-tensors packed float format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// E4M3 scales per 16 and an F32 global scale.
    Nvfp4,
    /// E8M0 scales per 32.
    Mxfp4,
    /// E2M3 codes, E8M0 scales per 32.
    Mxfp6,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nvfp4 => "nvfp4",
            Kind::Mxfp4 => "mxfp4",
            Kind::Mxfp6 => "mxfp6",
        }
    }
    pub fn bits(self) -> u32 {
        match self {
            Kind::Nvfp4 | Kind::Mxfp4 => 4,
            Kind::Mxfp6 => 6,
        }
    }
    pub fn group_size(self) -> usize {
        match self {
            Kind::Nvfp4 => 16,
            Kind::Mxfp4 | Kind::Mxfp6 => 32,
        }
    }
    /// The scale dtype each format stores.
    pub fn scale_dtype(self) -> Dtype {
        match self {
            Kind::Nvfp4 => Dtype::F8_E4M3,
            Kind::Mxfp4 | Kind::Mxfp6 => Dtype::U8,
        }
    }
    /// The logical columns of a `weight_packed` with `bytes` bytes a row, where they pack whole
    /// values (FP6: four codes in three bytes).
    pub fn cols_of_packed(self, bytes: usize) -> Option<usize> {
        match self {
            Kind::Nvfp4 | Kind::Mxfp4 => bytes.checked_mul(2),
            Kind::Mxfp6 => bytes
                .is_multiple_of(3)
                .then(|| (bytes / 3).checked_mul(4))
                .flatten(),
        }
    }
}

/// One FP4 weight.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Params {
    pub kind: Kind,
    pub rows: usize,
    pub cols: usize,
}

/// The E2M1 magnitudes in code order (`kE2M1ToFloat`).
const E2M1: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// The E2M3 magnitudes in code order (`kE2M3ToFloat`): `m/8`, then `(1 + m/8)·2^e` for e = 0..2.
const E2M3: [f32; 32] = {
    let mut t = [0.0f32; 32];
    let mut i = 0;
    while i < 32 {
        let m = (i % 8) as f32 / 8.0;
        t[i] = match i / 8 {
            0 => m,
            1 => 1.0 + m,
            2 => 2.0 * (1.0 + m),
            _ => 4.0 * (1.0 + m),
        };
        i += 1;
    }
    t
};

fn code6_value(c: u8) -> f32 {
    let v = E2M3[usize::from(c & 0x1F)];
    if c & 0x20 != 0 {
        -v
    } else {
        v
    }
}

/// The FP6 code of a quotient `q`: the clamp to ±7.5, `cast_to_fp6`, then `pack_fp6_to_uint8`'s
/// `searchsorted` of the magnitude (a NaN sorts past the table: index 32, the sign bit) and
/// `signbit`.
fn code6_of(q: f32) -> u8 {
    if q.is_nan() {
        return 32;
    }
    let a = q.abs().min(7.5);
    let e = (((a.to_bits() >> 23) & 0xFF) as i32 - 127).max(0);
    let step = f32::from_bits(((e - 3 + 127) as u32) << 23);
    let r = ((a / step).round_ties_even() * step).min(7.5);
    let m = E2M3.iter().position(|&t| t >= r).unwrap_or(32) as u8;
    m | if q.is_sign_negative() { 32 } else { 0 }
}

pub(super) fn code_value(c: u8) -> f32 {
    let v = E2M1[usize::from(c & 7)];
    if c & 8 != 0 {
        -v
    } else {
        v
    }
}

/// The code of a quotient `q` (`cast_to_fp4` after the clamp to ±6, then `pack_fp4_to_uint8`).
/// A NaN quotient (a zero scale over a zero weight: an all-zero group's scale is 0) gets code 8,
/// −0, as torch on x86 packs the default NaN `0/0` gives (sign bit set, its int8 cast 0).
pub(super) fn code_of(q: f32) -> u8 {
    if q.is_nan() {
        return 8;
    }
    let a = q.abs().min(6.0);
    let m = if a <= 0.25 {
        0
    } else if a < 0.75 {
        1
    } else if a <= 1.25 {
        2
    } else if a < 1.75 {
        3
    } else if a <= 2.5 {
        4
    } else if a < 3.5 {
        5
    } else if a <= 5.0 {
        6
    } else {
        7
    };
    m | if q < 0.0 { 8 } else { 0 }
}

/// Each group's scale as the library divides and multiplies by it: NVFP4 `f32(e4m3) / global`
/// in f32, MXFP4 `2^(e−127)` (bf16, which holds every such power but `2^128`, infinite).
pub fn group_scales(p: &Params, scale_bytes: &[u8], global: Option<f32>) -> Vec<f32> {
    match p.kind {
        Kind::Nvfp4 => {
            let g = global.unwrap_or(1.0);
            scale_bytes
                .iter()
                .map(|&b| super::fp8::e4m3_to_f32(b) / g)
                .collect()
        }
        Kind::Mxfp4 | Kind::Mxfp6 => scale_bytes
            .iter()
            .map(|&e| {
                if e == 255 {
                    f32::INFINITY
                } else {
                    // 2^(e−127): f32 holds it (2^-127 as a subnormal), and so does bf16.
                    f32::from_bits(if e == 0 { 1 << 22 } else { u32::from(e) << 23 })
                }
            })
            .collect(),
    }
}

/// [`group_scales`] from the stored scale bytes, reading the global scale (companion 1, F32
/// `[1]`) through `companion` for NVFP4; also returns the global scale.
pub fn group_scales_of<'a, E>(
    p: &Params,
    scale_bytes: &[u8],
    companion: impl Fn(usize) -> Result<&'a [u8], E>,
) -> Result<(Vec<f32>, Option<f32>), E> {
    let global = match p.kind {
        Kind::Nvfp4 => Some(dtype::decode(Dtype::F32, companion(1)?)[0]),
        Kind::Mxfp4 | Kind::Mxfp6 => None,
    };
    Ok((group_scales(p, scale_bytes, global), global))
}

/// Element `i`'s group.
fn group(p: &Params, i: usize) -> usize {
    group_index(p.cols, p.kind.group_size(), i)
}

/// Element `i`'s group of `gs` values along its row of `cols` (row-major, `gs` dividing `cols`);
/// ModelOpt's NVFP4 blocks are grouped so too.
pub(super) fn group_index(cols: usize, gs: usize, i: usize) -> usize {
    (i / cols) * (cols / gs) + (i % cols) / gs
}

/// Element `i`'s E2M1 code in packed FP4 bytes: two a byte, element `2j` in the low nibble
/// (`unpack_fp4_from_uint8`; ModelOpt packs the same way).
pub(super) fn nibble(packed: &[u8], i: usize) -> u8 {
    let b = packed[i / 2];
    if i.is_multiple_of(2) {
        b & 0xF
    } else {
        b >> 4
    }
}

/// Stores element `i`'s E2M1 code `c` into zeroed packed bytes, where [`nibble`] reads it.
pub(super) fn put_nibble(out: &mut [u8], i: usize, c: u8) {
    out[i / 2] |= c << (4 * (i % 2));
}

/// Element `i`'s code and value (FP4: two a byte, element `2j` low; FP6: four in three bytes,
/// little-endian; every row's columns divide evenly, so the flat index packs the same way).
fn value_at(p: &Params, packed: &[u8], i: usize) -> f32 {
    match p.kind {
        Kind::Mxfp6 => {
            let b = &packed[i / 4 * 3..i / 4 * 3 + 3];
            let word = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
            code6_value((word >> (6 * (i % 4)) & 0x3F) as u8)
        }
        Kind::Nvfp4 | Kind::Mxfp4 => code_value(nibble(packed, i)),
    }
}

/// The weight in f32 (each value a bf16 one), as `decompress` returns it.
pub fn dequantize(p: &Params, packed: &[u8], scales: &[f32]) -> Vec<f32> {
    (0..p.rows * p.cols)
        .map(|i| dtype::round_to(Dtype::BF16, value_at(p, packed, i) * scales[group(p, i)]))
        .collect()
}

/// `merged` (f32, row-major) packed again with the stored scales.
pub fn requantize(p: &Params, merged: &[f32], scales: &[f32]) -> Vec<u8> {
    let per_row = match p.kind {
        Kind::Mxfp6 => p.cols / 4 * 3,
        Kind::Nvfp4 | Kind::Mxfp4 => p.cols / 2,
    };
    let mut out = vec![0u8; p.rows * per_row];
    for (i, &m) in merged.iter().enumerate() {
        let x = dtype::round_to(Dtype::BF16, m);
        let s = scales[group(p, i)];
        match p.kind {
            Kind::Nvfp4 => put_nibble(&mut out, i, code_of(x / s)),
            Kind::Mxfp4 => put_nibble(&mut out, i, code_of(dtype::round_to(Dtype::BF16, x / s))),
            Kind::Mxfp6 => {
                let c = u32::from(code6_of(dtype::round_to(Dtype::BF16, x / s))) << (6 * (i % 4));
                for (k, o) in out[i / 4 * 3..i / 4 * 3 + 3].iter_mut().enumerate() {
                    *o |= (c >> (8 * k)) as u8;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// compressed-tensors' own `compress` of every E2M1 threshold and its bf16 neighbours, ±0,
    /// tiny and huge values, under awkward E4M3 scales and a global scale that is not a power of
    /// two (NVFP4) and under several E8M0 exponents (MXFP4); and its `decompress` of every byte
    /// under scales that reach bf16's overflow (`fixtures/quant/ct_fp4_edge.safetensors`).
    #[test]
    fn quantize_and_dequantize_equal_compressed_tensors_on_the_edges() {
        let file = crate::io::quant::tests::EdgeFile::open("quant/ct_fp4_edge.safetensors");
        let st = file.tensors();
        let get = |n: &str| st.tensor(n).expect(n);
        let global = dtype::decode(Dtype::F32, get("nv_global").data())[0];
        for (kind, x, scale, packed) in [
            (Kind::Nvfp4, "x_nv", "nv_scale", "nv_packed"),
            (Kind::Mxfp4, "x", "mx_scale", "mx_packed"),
        ] {
            let x = get(x);
            let p = Params {
                kind,
                rows: x.shape()[0],
                cols: x.shape()[1],
            };
            let s = group_scales(&p, get(scale).data(), Some(global));
            let merged = dtype::decode(Dtype::BF16, x.data());
            assert_eq!(requantize(&p, &merged, &s), get(packed).data(), "{kind:?}");
        }
        for (kind, scale, want) in [
            (Kind::Nvfp4, "nv_all_scale", "nv_all"),
            (Kind::Mxfp4, "mx_all_scale", "mx_all"),
        ] {
            let p = Params {
                kind,
                rows: 8,
                cols: 64,
            };
            let s = group_scales(&p, get(scale).data(), Some(global));
            let got = dtype::encode(Dtype::BF16, &dequantize(&p, get("all_bytes").data(), &s));
            crate::io::quant::tests::assert_bf16_eq_but_nan_payloads(
                &got,
                get(want).data(),
                &format!("{kind:?}"),
            );
        }
    }

    /// compressed-tensors' MXFP6 `compress` of every E2M3 rounding midpoint and its bf16
    /// neighbours, ±0, tiny and huge values under several E8M0 exponents, and its `decompress` of
    /// every code (`fixtures/quant/ct_mx_edge.safetensors`, `fixtures/gen/ct_mx_fixtures.py`).
    #[test]
    fn mxfp6_rounding_and_codes_equal_compressed_tensors() {
        let file = crate::io::quant::tests::EdgeFile::open("quant/ct_mx_edge.safetensors");
        let st = file.tensors();
        let get = |n: &str| st.tensor(n).expect(n);
        let p = |rows| Params {
            kind: Kind::Mxfp6,
            rows,
            cols: 64,
        };
        let s = group_scales(&p(4), get("x6_scale").data(), None);
        let x = dtype::decode(Dtype::BF16, get("x6").data());
        assert_eq!(requantize(&p(4), &x, &s), get("x6_packed").data());
        let s = group_scales(&p(8), get("all_scale").data(), None);
        let got = dtype::encode(
            Dtype::BF16,
            &dequantize(&p(8), get("all6_packed").data(), &s),
        );
        assert_eq!(got, get("all6").data());
    }

    #[test]
    fn codes_follow_cast_to_fp4_thresholds() {
        // (quotient, code): the ties go to the even code, past ±6 clamps, -0 keeps code 0.
        for (q, c) in [
            (0.25f32, 0u8),
            (0.2500001, 1),
            (0.75, 2),
            (0.7499999, 1),
            (1.25, 2),
            (1.75, 4),
            (2.5, 4),
            (3.5, 6),
            (5.0, 6),
            (5.0000005, 7),
            (1e30, 7),
            (-0.0, 0),
            (-0.1, 8),
            (-6.0, 15),
            (f32::NEG_INFINITY, 15),
            (f32::NAN, 8),
        ] {
            assert_eq!(code_of(q), c, "{q}");
        }
    }
}
