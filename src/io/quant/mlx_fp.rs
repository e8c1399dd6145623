//! MLX's floating-point quantization modes (`mx.quantize(w, mode="mxfp4"|"nvfp4"|"mxfp8")`, what
//! `mlx_lm.convert --q-mode` writes), read and written as MLX 0.32 computes them on its CPU
//! backend (mlx/ops.cpp `fp_quantize` and `fp_dequantize`, the fallbacks the CPU runs).
//!
//! On disk, for a module `P` with a `[rows, cols]` weight, no biases:
//! - `P.weight` U32 `[rows, cols·bits/32]`: mxfp4/nvfp4 a little-endian stream of 4-bit E2M1
//!   codes (element `i` at bit `4i`, the table `±{0, 0.5, 1, 1.5, 2, 3, 4, 6}`, sign in bit 3);
//!   mxfp8 one E4M3 byte per element;
//! - `P.scales` U8 `[rows, cols/group]`: mxfp4/mxfp8 (groups of 32) an E8M0 exponent `e`, the
//!   scale `2^(e−127)`; nvfp4 (groups of 16) an E4M3 scale. An nvfp4 `global_scale` is not read.
//!
//! Dequantization, in the output dtype `T` (mlx-lm's fuse leaves it at `mx.dequantize`'s default,
//! bf16): `value · scale`, one operation rounded to `T`, the scale `pow(2, T(e) − 127)` rounded
//! to `T` (or the E4M3 scale, exact in `T`).
//! Quantization of `w` in `T`, per group: `s = max|w| / maxval` (6 for FP4, 448 for FP8) in `T`;
//! mx modes: `e = 0` where `s = 0`, else `ceil(log2 s)` (log2 in f32, not rounded to `T`; MLX 0.32.4
//! rounds the E8M0 exponent up, ml-explore/mlx#4353; the 0.32.2 source read `round`); `w / pow(2, e)` in `T`; byte `e + 127`. nvfp4: the byte is E4M3 of `s`
//! (round to nearest even, saturating at 448), `w / decode(byte)` in `T`, then f32. FP4 codes:
//! the first table entry nearest `w` (MLX's `argmin` of `|w − lut|`, that difference rounded to
//! `T` for mxfp4 and to f32 for nvfp4; a NaN quotient gets code 0); FP8: E4M3 of `w`.
//!
//! Must not choose what is stored beyond that rule; `merge --quant` decides whether to requantize.

use super::packed::{element, put};
use crate::dtype::{self, Dtype};

/// Which of MLX's floating-point modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Mxfp4,
    Nvfp4,
    Mxfp8,
}

impl Mode {
    /// config.json's `mode` string.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "mxfp4" => Some(Mode::Mxfp4),
            "nvfp4" => Some(Mode::Nvfp4),
            "mxfp8" => Some(Mode::Mxfp8),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Mxfp4 => "mxfp4",
            Mode::Nvfp4 => "nvfp4",
            Mode::Mxfp8 => "mxfp8",
        }
    }
    /// The group size and bits `mx.quantize` requires of the mode (ops.cpp `fp_quantize`).
    pub fn group_size(self) -> usize {
        if self == Mode::Nvfp4 {
            16
        } else {
            32
        }
    }
    pub fn bits(self) -> u32 {
        if self == Mode::Mxfp8 {
            8
        } else {
            4
        }
    }
}

/// Parameters of one weight in an MLX floating-point mode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Params {
    pub mode: Mode,
    pub rows: usize,
    pub cols: usize,
    /// The dtype dequantization returns and quantization starts from.
    pub dtype: Dtype,
}

/// The E2M1 table, in code order (ops.cpp `lut`).
const LUT: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// E4M3 byte to its value (mlx/backend/cpu/unary_ops.h `FromFP8`: the low 7 bits shifted into
/// an f16 and times 256), with 0x7F and 0xFF NaN, as MLX 0.32.4's `mx.from_fp8` and
/// `mx.dequantize` give them (measured; the 0.32.2 source read them as ±480). `mx.quantize`
/// never writes them (it saturates to 0x7E); a file that holds them dequantizes to NaN, which
/// the reader refuses.
pub fn fp8_decode(x: u8) -> f32 {
    if x & 127 == 127 {
        return f32::NAN;
    }
    let v = half::f16::from_bits(u16::from(x & 127) << 7).to_f32() * 256.0;
    if x & 128 != 0 {
        -v
    } else {
        v
    }
}

/// f32 to an E4M3 byte (unary_ops.h `ToFP8`: round to nearest even, saturate to 0x7E = 448,
/// NaN saturates too).
pub fn fp8_encode(f: f32) -> u8 {
    let fp8_max: u32 = 543 << 21;
    let denorm_mask: u32 = 141 << 23;
    let mut bits = f.to_bits();
    let sign = bits & 0x8000_0000;
    bits ^= sign;
    let low = (f32::from_bits(bits) + f32::from_bits(denorm_mask)).to_bits();
    let result_low = low.wrapping_sub(denorm_mask) as u8;
    let mant_odd = (bits >> 20) & 1;
    let high = bits
        .wrapping_add(((7u32.wrapping_sub(127)) << 23).wrapping_add(0x7FFFF))
        .wrapping_add(mant_odd);
    let result_high = (high >> 20) as u8;
    let mut result = if bits < (121 << 23) {
        result_low
    } else {
        result_high
    };
    if bits >= fp8_max {
        result = 0x7E;
    }
    result | (sign >> 24) as u8
}

/// Whether scale byte `b` decodes to a finite scale in `p.dtype` (E8M0 255 is 2^128; E4M3
/// 0x7F/0xFF are NaN).
pub fn scale_is_finite(p: &Params, b: u8) -> bool {
    match p.mode {
        Mode::Mxfp4 | Mode::Mxfp8 => {
            dtype::round_to(p.dtype, 2f32.powf(f32::from(b) - 127.0)).is_finite()
        }
        Mode::Nvfp4 => fp8_decode(b).is_finite(),
    }
}

/// Dequantizes to f32, each value already rounded to `p.dtype` as MLX computes it.
pub fn dequantize(p: &Params, packed: &[u8], scales: &[u8]) -> Vec<f32> {
    let t = |x: f32| dtype::round_to(p.dtype, x);
    let gs = p.mode.group_size();
    let bits = p.mode.bits();
    let row_bytes = p.cols * bits as usize / 8;
    let groups = p.cols / gs;
    let mut out = Vec::with_capacity(p.rows * p.cols);
    for r in 0..p.rows {
        let row = &packed[r * row_bytes..(r + 1) * row_bytes];
        for c in 0..p.cols {
            let b = scales[r * groups + c / gs];
            let s = match p.mode {
                // `power(2, astype(scales, T) − 127)`, each in `T`.
                Mode::Mxfp4 | Mode::Mxfp8 => t(2f32.powf(t(f32::from(b) - 127.0))),
                Mode::Nvfp4 => fp8_decode(b),
            };
            let v = match p.mode {
                Mode::Mxfp8 => fp8_decode(row[c]),
                _ => LUT[element(row, c, 4) as usize],
            };
            out.push(t(v * s));
        }
    }
    out
}

/// `merged` (f32, the logical shape) quantized as `mx.quantize(…, mode)` does: the packed weight
/// and the scales, as stored bytes. `merged` is first rounded to `p.dtype`.
pub fn quantize(p: &Params, merged: &[f32]) -> (Vec<u8>, Vec<u8>) {
    let t = |x: f32| dtype::round_to(p.dtype, x);
    let gs = p.mode.group_size();
    let bits = p.mode.bits();
    let maxval = if bits == 4 { 6.0f32 } else { 448.0 };
    let words = p.cols * bits as usize / 32;
    let groups = p.cols / gs;
    let mut packed = Vec::with_capacity(4 * words * p.rows);
    let mut scales = Vec::with_capacity(p.rows * groups);
    let mut q = vec![0f32; gs];
    for r in 0..p.rows {
        let mut row = vec![0u32; words];
        for g in 0..groups {
            let at = r * p.cols + g * gs;
            let w = &merged[at..at + gs];
            let amax = w.iter().fold(0f32, |m, &x| {
                let a = t(x).abs();
                if a > m {
                    a
                } else {
                    m
                }
            });
            let s = t(amax / maxval);
            // The quotient each element is coded from, and the dtype its LUT distance rounds to.
            let diff_dtype = match p.mode {
                Mode::Mxfp4 | Mode::Mxfp8 => {
                    // `log2` of the scale in f32, not rounded to `T` before `ceil`: on bf16
                    // and f16 inputs MLX 0.32.4 gives `ceil(log2(f32(s)))` (measured on
                    // 4,096 groups per dtype and mode; rounding the log2 to `T` first
                    // differs in up to 109 of them, all where it rounds onto an integer).
                    let e = if s == 0.0 { 0.0 } else { s.log2().ceil() };
                    let pw = t(2f32.powf(e));
                    for (qk, &x) in q.iter_mut().zip(w) {
                        *qk = t(t(x) / pw);
                    }
                    // `astype(e + 127, uint8)`: a float to uint8 cast, via int as x86 does.
                    scales.push((e + 127.0) as i32 as u8);
                    p.dtype
                }
                Mode::Nvfp4 => {
                    let b = fp8_encode(s);
                    scales.push(b);
                    let d = fp8_decode(b);
                    for (qk, &x) in q.iter_mut().zip(w) {
                        *qk = t(t(x) / d);
                    }
                    Dtype::F32
                }
            };
            for (k, &x) in q.iter().enumerate() {
                let c = g * gs + k;
                if bits == 8 {
                    put(&mut row, c, 8, u32::from(fp8_encode(x)));
                    continue;
                }
                // `argmin`: a strictly smaller distance wins, so the first of equals and
                // never a NaN (a NaN quotient keeps code 0).
                let dist = |l: f32| dtype::round_to(diff_dtype, x - l).abs();
                let (mut best, mut best_d) = (0usize, dist(LUT[0]));
                for (j, &l) in LUT.iter().enumerate().skip(1) {
                    let d = dist(l);
                    if d < best_d {
                        (best, best_d) = (j, d);
                    }
                }
                put(&mut row, c, 4, best as u32);
            }
        }
        packed.extend(row.iter().flat_map(|w| w.to_le_bytes()));
    }
    (packed, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case `mx.quantize` / `mx.dequantize` recorded (3 modes x f32/bf16/f16; rows of
    /// noise, zeros, E2M1 ties, large and small magnitudes, E8M0 log2 near x.5, an outlier,
    /// E4M3 ties; and the `_ceil` groups, whose exponent needs the log2 in f32): lorakit's quantizer gives the same bytes and its dequantizer the same values.
    #[test]
    fn fp_modes_quantize_and_dequantize_equal_mlx_byte_for_byte() {
        let file =
            crate::io::quant::tests::EdgeFile::open("mlx_quant_fp/quantize_cases.safetensors");
        let st = file.tensors();
        let mut n = 0;
        for mode in [Mode::Mxfp4, Mode::Nvfp4, Mode::Mxfp8] {
            for (dn, dt) in [
                ("f32", Dtype::F32),
                ("bf16", Dtype::BF16),
                ("f16", Dtype::F16),
            ] {
                // `_ceil`: groups whose exponent needs the scale's log2 in f32 (see the script).
                let ceil = mode != Mode::Nvfp4 && dt != Dtype::F32;
                for case in [
                    format!("{}_{dn}", mode.name()),
                    format!("{}_{dn}_ceil", mode.name()),
                ]
                .into_iter()
                .take(1 + usize::from(ceil))
                {
                    let get = |part: &str| st.tensor(&format!("{case}.{part}")).expect("part");
                    let x = get("x");
                    let p = Params {
                        mode,
                        rows: x.shape()[0],
                        cols: x.shape()[1],
                        dtype: dt,
                    };
                    let (wq, s) = quantize(&p, &dtype::decode(dt, x.data()));
                    assert_eq!(wq, get("wq").data(), "{case}: packed codes");
                    assert_eq!(s, get("scales").data(), "{case}: scales");
                    let deq = dequantize(&p, get("wq").data(), get("scales").data());
                    assert_eq!(
                        dtype::encode(dt, &deq),
                        get("deq").data(),
                        "{case}: dequantized"
                    );
                    n += 1;
                }
            }
        }
        assert_eq!(n, 13);
    }

    /// E4M3 against its definition (bias 7, 3 mantissa bits, no infinities, S.1111.111 NaN):
    /// every byte's value and, for every finite byte, encoding it gives it back.
    #[test]
    fn fp8_codec_round_trips_every_byte() {
        for b in 0..=255u8 {
            let (e, m) = (i32::from((b >> 3) & 15), f64::from(b & 7));
            let mag = if e == 0 {
                m / 8.0 * 2f64.powi(-6)
            } else {
                (1.0 + m / 8.0) * 2f64.powi(e - 7)
            };
            let want = if b & 128 != 0 { -mag } else { mag };
            if b & 127 == 127 {
                assert!(fp8_decode(b).is_nan(), "byte {b:#x}");
                continue;
            }
            assert_eq!(f64::from(fp8_decode(b)), want, "byte {b:#x}");
            assert_eq!(fp8_encode(fp8_decode(b)), b, "byte {b:#x}");
        }
    }
}
