//! FP8 weights with scales: `P.weight` F8_E4M3 (or F8_E5M2) `[rows, cols]` and either
//! `P.weight_scale_inv` (DeepSeek-V3 / transformers `FineGrainedFP8Config`: one scale per
//! `block_m × block_n` tile, grid `[⌈rows/bm⌉, ⌈cols/bn⌉]`) or `P.weight_scale` (compressed-tensors
//! and fbgemm: one scale per tensor `[]`/`[1]`, per output channel `[rows]`/`[rows, 1]`, or a
//! block grid). Both names hold the factor the stored value is multiplied by.
//!
//! Dequantization follows transformers `integrations/finegrained_fp8.py` `Fp8Dequantize
//! ._dequantize_one`: the FP8 value widened to f32 (exact), times the tile's scale widened to f32
//! (U8/F8_E8M0 scales are `2^(byte − 127)`), rounded once to the output dtype. Quantization is
//! that file's `Fp8Quantize._quantize_one`: per tile `scale = 448 / max|w|` (1 for an all-zero
//! tile; torch computes it as `(1 / max) · 448`), `weight_scale_inv = 1 / scale` (f32), `q = e4m3fn(clamp(w · scale, ±448))` with
//! round-to-nearest-even.
//!
//! Must not find the weights or their scales (that is `scan.rs`) nor choose the output dtype.

use crate::dtype::{self, Dtype};

/// Largest finite float8_e4m3fn value (`torch.finfo(torch.float8_e4m3fn).max`).
pub const E4M3_MAX: f32 = 448.0;

/// How the scales tile the weight.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Layout {
    pub block_m: usize,
    pub block_n: usize,
    pub grid_rows: usize,
    pub grid_cols: usize,
}

impl Layout {
    /// A description for `inspect`: per tensor, per channel or the block size.
    pub fn describe(&self, rows: usize, cols: usize) -> String {
        if self.grid_rows == 1 && self.grid_cols == 1 {
            "per tensor".into()
        } else if self.block_m == 1 && self.block_n >= cols {
            "per channel".into()
        } else if self.block_m == 1 {
            // compressed-tensors' group strategy (MXFP8 and FP8 groups).
            format!("group {}", self.block_n)
        } else {
            let _ = rows;
            format!("{}x{} blocks", self.block_m, self.block_n)
        }
    }
}

/// Works out the tiling from the scale tensor's shape, the weight's `[rows, cols]` and the
/// config's `weight_block_size` when given.
pub fn layout(
    rows: usize,
    cols: usize,
    scale_shape: &[usize],
    config_block: Option<(usize, usize)>,
) -> Result<Layout, String> {
    let numel: usize = scale_shape.iter().product();
    let (gr, gc) = match scale_shape {
        [] => (1, 1),
        [1] => (1, 1),
        [r] => (*r, 1),
        [r, c] => (*r, *c),
        _ => {
            return Err(format!(
                "scale shape {scale_shape:?} is not a scalar, vector or grid"
            ))
        }
    };
    if numel == 0 {
        return Err("scale tensor is empty".into());
    }
    // One scale for the whole weight, unless the config's blocks tile it into more than one
    // (transformers' `Fp8Dequantize` expects that grid; a single scale contradicts it).
    let one_block = config_block
        .filter(|&(bm, bn)| bm > 0 && bn > 0)
        .is_none_or(|(bm, bn)| rows <= bm && cols <= bn);
    if gr == 1 && gc == 1 && one_block {
        return Ok(Layout {
            block_m: rows,
            block_n: cols,
            grid_rows: 1,
            grid_cols: 1,
        });
    }
    if let Some((bm, bn)) = config_block {
        if bm == 0 || bn == 0 || rows.div_ceil(bm) != gr || cols.div_ceil(bn) != gc {
            return Err(format!(
                "scale grid {gr}x{gc} does not tile the {rows}x{cols} weight in the config's {bm}x{bn} blocks"
            ));
        }
        return Ok(Layout {
            block_m: bm,
            block_n: bn,
            grid_rows: gr,
            grid_cols: gc,
        });
    }
    if gr == 0 || gc == 0 || !rows.is_multiple_of(gr) || !cols.is_multiple_of(gc) {
        return Err(format!(
            "scale grid {gr}x{gc} does not divide the {rows}x{cols} weight (and config.json gives no weight_block_size)"
        ));
    }
    Ok(Layout {
        block_m: rows / gr,
        block_n: cols / gc,
        grid_rows: gr,
        grid_cols: gc,
    })
}

/// float8_e4m3fn → f32 (bias 7, no infinities, S.1111.111 is NaN).
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((b >> 3) & 0xF) as i32;
    let m = (b & 7) as f32;
    if e == 15 && b & 7 == 7 {
        return f32::NAN;
    }
    if e == 0 {
        return sign * m / 8.0 * 2f32.powi(-6);
    }
    sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
}

/// float8_e5m2 → f32 (bias 15, IEEE infinities and NaNs).
pub fn e5m2_to_f32(b: u8) -> f32 {
    // e5m2 is the top byte of an f16.
    half::f16::from_bits((b as u16) << 8).to_f32()
}

/// f32 → float8_e4m3fn, round to nearest even; callers clamp to ±448 first (as transformers
/// does), larger magnitudes saturate to NaN as torch's cast does.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a >= 464.0 {
        // Past the midpoint between 448 and the (absent) 480: NaN.
        return sign | 0x7F;
    }
    // Smallest subnormal 2^-9; values below 2^-6 are subnormal with step 2^-9.
    let (e, step) = if a < 2f32.powi(-6) {
        (0, 2f32.powi(-9))
    } else {
        let e = a.log2().floor() as i32;
        // Guard log2 rounding at exact powers of two.
        let e = if 2f32.powi(e) > a {
            e - 1
        } else if 2f32.powi(e + 1) <= a {
            e + 1
        } else {
            e
        };
        (e + 7, 2f32.powi(e - 3))
    };
    // a / step is exact (power-of-two step); round half to even.
    let units = a / step;
    let r = units.round_ties_even();
    let (e, m) = if e == 0 {
        // Subnormal: r in 0..=8 (8 = smallest normal).
        if r >= 8.0 {
            (1, 0)
        } else {
            (0, r as u8)
        }
    } else if r >= 16.0 {
        (e + 1, 0)
    } else {
        (e, (r as u8) - 8)
    };
    sign | ((e as u8) << 3) | m
}

/// The scale values of a scale tensor as f32.
pub fn scales_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    match dtype {
        Dtype::U8 | Dtype::F8_E8M0 => Some(
            bytes
                .iter()
                .map(|&b| {
                    if b == 0xFF && dtype == Dtype::F8_E8M0 {
                        f32::NAN
                    } else {
                        (b as f32 - 127.0).exp2()
                    }
                })
                .collect(),
        ),
        d if dtype::is_float_compute(d) => Some(dtype::decode(d, bytes)),
        _ => None,
    }
}

/// The dtype transformers dequantizes to: the scale's own float dtype when it has at least two
/// bytes, else bf16 (`_dequantize_one` without a target module).
pub fn natural_dtype(scale_dtype: Dtype) -> Dtype {
    match scale_dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => scale_dtype,
        Dtype::F64 => Dtype::F32,
        _ => Dtype::BF16,
    }
}

/// Dequantizes `[rows, cols]` FP8 values with per-tile scales.
pub fn dequantize(dtype: Dtype, q: &[u8], cols: usize, scales: &[f32], l: &Layout) -> Vec<f32> {
    let widen = match dtype {
        Dtype::F8_E5M2 => e5m2_to_f32,
        _ => e4m3_to_f32,
    };
    let lut: Vec<f32> = (0..=255u8).map(widen).collect();
    let mut out = Vec::with_capacity(q.len());
    for (r, row) in q.chunks_exact(cols.max(1)).enumerate() {
        let srow = &scales[(r / l.block_m) * l.grid_cols..][..l.grid_cols];
        out.extend(
            row.iter()
                .enumerate()
                .map(|(c, &b)| lut[b as usize] * srow[c / l.block_n]),
        );
    }
    out
}

/// transformers' `Fp8Quantize._quantize_one` for a `[rows, cols]` weight in `bm × bn` tiles
/// (both dividing the weight, as that function requires): the E4M3 bytes and the F32
/// `weight_scale_inv` grid.
pub fn quantize(w: &[f32], rows: usize, cols: usize, bm: usize, bn: usize) -> (Vec<u8>, Vec<f32>) {
    let (gr, gc) = (rows / bm, cols / bn);
    let mut scale = vec![1f32; gr * gc];
    let mut inv = vec![1f32; gr * gc];
    for tr in 0..gr {
        for tc in 0..gc {
            let mut m = 0f32;
            for r in tr * bm..(tr + 1) * bm {
                for v in &w[r * cols + tc * bn..r * cols + (tc + 1) * bn] {
                    m = m.max(v.abs());
                }
            }
            // `_FP8_MAX / safe_max_abs` is a Python float over a tensor: torch evaluates it as
            // `reciprocal(max) * 448`, which is not always the correctly rounded quotient.
            let s = if m > 0.0 { (1.0 / m) * E4M3_MAX } else { 1.0 };
            scale[tr * gc + tc] = s;
            inv[tr * gc + tc] = 1.0 / s;
        }
    }
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (r, c) = (i / cols, i % cols);
            let s = scale[(r / bm) * gc + c / bn];
            f32_to_e4m3((v * s).clamp(-E4M3_MAX, E4M3_MAX))
        })
        .collect();
    (q, inv)
}

/// Fresh per-channel (`layout.block_m == 1`, one column of scales), per-tensor or per-block
/// `weight_scale` as compressed-tensors 0.20 computes them for llm-compressor's FP8 schemes
/// (symmetric E4M3): the weight in the scale's dtype `dt` (the dtype it was quantized from); the
/// observer's min and max per row, over the tensor, or per `block_m × block_n` block
/// (llm-compressor `observers/helpers.py` `_flatten_weight`, strategy BLOCK: the block's
/// elements, the weight zero-padded to whole blocks by compressed-tensors'
/// `maybe_pad_tensor_for_block_quant` first; `observers/min_max.py` `_get_min_max`: `amin`/`amax`;
/// llm-compressor commit ab1ba3effcafc15746cd6d6ca24cba3f7bd7a582). The padding zeros change no
/// scale, as `calculate_qparams` takes `min(min, 0)` and `max(max, 0)`: a partial block's scale
/// is its valid region's. `quantization/utils/helpers.py` `calculate_qparams`:
/// `scale = max(|min(min, 0)|, max(max, 0)) / (896 / 2)` rounded to `dt`, `finfo(dt).eps` where
/// 0; then `forward_helpers.py` `_quantize` with the module's zero zero point (registered by
/// default, `force_zero_point=True`; it turns −0 into +0): `e4m3(clamp(x / scale + 0, ±448))`,
/// each operation rounded to `dt` (`lifecycle/forward_helpers.py` `_process_block` pads the
/// weight the same way, quantizes each element with its block's scale and cuts the padding off).
/// Returns the E4M3 bytes and the scales (row-major over the layout's grid: one per row, one, or
/// one per block).
pub fn quantize_ct(
    w: &[f32],
    rows: usize,
    cols: usize,
    layout: &Layout,
    dt: Dtype,
) -> (Vec<u8>, Vec<f32>) {
    let (round, eps): (fn(f32) -> f32, f32) = match dt {
        Dtype::BF16 => (
            |x| half::bf16::from_f32(x).to_f32(),
            half::bf16::EPSILON.to_f32(),
        ),
        Dtype::F16 => (
            |x| half::f16::from_f32(x).to_f32(),
            half::f16::EPSILON.to_f32(),
        ),
        _ => (|x| x, f32::EPSILON),
    };
    let (gr, gc) = (layout.grid_rows.max(1), layout.grid_cols.max(1));
    // The grid cell of element (r, c): per tensor one cell, per channel one per row, per block
    // the block holding it (the last ones partial).
    let (bm, bn) = (layout.block_m.max(1), layout.block_n.max(1));
    debug_assert_eq!(w.len(), rows * cols);
    let cell = |i: usize| ((i / cols) / bm).min(gr - 1) * gc + ((i % cols) / bn).min(gc - 1);
    let x: Vec<f32> = w.iter().map(|&v| round(v)).collect();
    let mut lo = vec![0f32; gr * gc];
    let mut hi = vec![0f32; gr * gc];
    for (i, &v) in x.iter().enumerate() {
        let k = cell(i);
        lo[k] = lo[k].min(v);
        hi[k] = hi[k].max(v);
    }
    let scales: Vec<f32> = lo
        .iter()
        .zip(&hi)
        .map(|(mn, mx)| {
            let s = round(mn.abs().max(mx.abs()) / 448.0);
            if s == 0.0 {
                eps
            } else {
                s
            }
        })
        .collect();
    let q = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let scaled = round(round(v / scales[cell(i)]) + 0.0);
            f32_to_e4m3(scaled.clamp(-E4M3_MAX, E4M3_MAX))
        })
        .collect();
    (q, scales)
}

/// compressed-tensors MXFP8 (`mxfp8-quantized`: E4M3 values, a U8 E8M0 exponent per 32) rounded
/// again with its stored scales (`scales`, the powers of two): `MXFP8QuantizationCompressor
/// .compress` handed the decompressed scale, i.e. `_quantize` in the model's bf16 — the merged
/// weight rounded to bf16, divided by the scale in bf16, clamped to ±448, cast to
/// float8_e4m3fn (round to nearest even). As for MXFP4/MXFP6 ([`super::ct_fp4`]) the scales stay:
/// llm-compressor calibrated them.
pub fn requantize_mx(merged: &[f32], cols: usize, scales: &[f32], l: &Layout) -> Vec<u8> {
    merged
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let (r, c) = (i / cols, i % cols);
            let s = scales[(r / l.block_m) * l.grid_cols + c / l.block_n];
            e4m3_of_quotient(m, s, Dtype::BF16)
        })
        .collect()
}

/// `(w.to(dtype) / s).to(float8_e4m3fn)` with the clamp to ±448 before the cast (torch 2.15's
/// cast saturates there; compressed-tensors clamps first): `w` rounded to `dtype`, the quotient
/// rounded to `dtype`, then to the nearest even E4M3 (a NaN stays NaN). Keep-merges with stored
/// scales use it: compressed-tensors MXFP8 and ModelOpt FP8.
pub fn e4m3_of_quotient(w: f32, s: f32, dtype: Dtype) -> u8 {
    let q = dtype::round_to(dtype, dtype::round_to(dtype, w) / s);
    f32_to_e4m3(q.clamp(-E4M3_MAX, E4M3_MAX))
}

/// ComfyUI's legacy "scaled FP8" checkpoints (the `*_fp8_scaled` diffusion files): a marker
/// tensor `scaled_fp8` (`<model prefix>scaled_fp8`, its dtype the FP8 format, or F32 for E4M3;
/// two elements ask for full-precision matmuls), and beside each quantized `P.weight` an F32
/// scalar `P.scale_weight` (and optionally `P.scale_input`, an activation scale).
///
/// Read from ComfyUI `comfy/utils.py` `convert_old_quants` and `comfy/quant_ops.py`
/// (commit 0411153ac63b0983342bca73362a8f95e1da59ac): `scale_weight` is renamed `weight_scale`
/// of the `float8_e4m3fn` layout, whose `TensorCoreFP8Layout.dequantize` is
/// `qdata.to(orig_dtype) * scale` (the stored value times the scale, f32 scale); the legacy
/// `comfy/ops.py` `scaled_fp8_ops` `convert_weight` multiplies the same way. So the scale is a
/// `weight_scale` in this module's sense and dequantizes through [`dequantize`] per tensor.
/// An FP8 weight without a `scale_weight` is loaded unscaled by both (a plain cast).
pub mod comfy {
    use crate::dtype::{self, Dtype};

    /// The per-weight scale: `P.scale_weight` for `P.weight`.
    pub const SCALE: &str = "scale_weight";
    /// The activation scale, used only by FP8 matmuls: a companion, never applied to the weight.
    pub const INPUT_SCALE: &str = "scale_input";

    /// The checkpoint-wide marker (`scaled_fp8`, under the model's prefix if any).
    pub fn is_marker(name: &str) -> bool {
        name == "scaled_fp8" || name.ends_with(".scaled_fp8")
    }

    /// What lorakit reads: E4M3 weights with one float scale. `convert_old_quants` reads every
    /// scaled weight as `float8_e4m3fn` ("TODO: check if anyone did some non e4m3fn scaled
    /// checkpoints") while the legacy ops kept the marker's dtype, so E5M2 values have two
    /// meanings there and are refused; a scale of any other shape has none.
    pub fn check(weight: Dtype, scale: Dtype, shape: &[usize]) -> Result<(), String> {
        if weight != Dtype::F8_E4M3 {
            return Err(format!(
                "is a ComfyUI scaled-FP8 scale of a {} weight: ComfyUI versions disagree on what it means (lorakit reads F8_E4M3)",
                dtype::name(weight)
            ));
        }
        if !matches!(scale, Dtype::F32 | Dtype::F16 | Dtype::BF16) || !matches!(shape, [] | [1]) {
            return Err(format!(
                "is {} {shape:?}; ComfyUI's scale_weight is one float per tensor",
                dtype::name(scale)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// compressed-tensors' MXFP8 `compress` of every other E4M3 rounding midpoint and its bf16
    /// neighbours, subnormals and values past ±448 under several E8M0 exponents, and its
    /// `decompress` of every byte (`fixtures/quant/ct_mx_edge.safetensors`, made by
    /// `fixtures/gen/ct_mx_fixtures.py`).
    #[test]
    fn mxfp8_rounding_and_widening_equal_compressed_tensors() {
        let file = crate::io::quant::tests::EdgeFile::open("quant/ct_mx_edge.safetensors");
        let st = file.tensors();
        let get = |n: &str| st.tensor(n).expect(n);
        let layout = |rows, cols: usize| Layout {
            block_m: 1,
            block_n: 32,
            grid_rows: rows,
            grid_cols: cols / 32,
        };
        let x = dtype::decode(Dtype::BF16, get("x8").data());
        let s = scales_f32(Dtype::U8, get("x8_scale").data()).unwrap();
        assert_eq!(
            requantize_mx(&x, 64, &s, &layout(4, 64)),
            get("x8_q").data()
        );
        let s = scales_f32(Dtype::U8, &get("all_scale").data()[..8]).unwrap();
        let got = dequantize(Dtype::F8_E4M3, get("all8_q").data(), 64, &s, &layout(4, 64));
        let got = dtype::encode(Dtype::BF16, &got);
        crate::io::quant::tests::assert_bf16_eq_but_nan_payloads(&got, get("all8").data(), "all8");
    }

    #[test]
    fn e4m3_round_trips_every_finite_code() {
        for b in 0..=255u8 {
            let v = e4m3_to_f32(b);
            if v.is_nan() {
                continue;
            }
            let back = f32_to_e4m3(v);
            // ±0 both decode to 0 with their sign.
            assert_eq!(back, b, "code {b:#x} = {v}");
        }
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e5m2_to_f32(0x7B), 57344.0);
    }

    #[test]
    fn e4m3_rounds_half_to_even() {
        // Between 1.0 (0x38) and 1.125 (0x39): the tie goes to the even mantissa (1.0).
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        assert_eq!(f32_to_e4m3(1.1875), 0x3A);
        // Subnormal tie: 1.5 · 2^-9 → 2 · 2^-9.
        assert_eq!(f32_to_e4m3(1.5 * 2f32.powi(-9)), 0x02);
        assert_eq!(f32_to_e4m3(0.5 * 2f32.powi(-9)), 0x00);
    }

    #[test]
    fn layouts() {
        let l = layout(256, 384, &[2, 3], None).unwrap();
        assert_eq!((l.block_m, l.block_n), (128, 128));
        assert!(layout(129, 128, &[2, 1], None).is_err());
        let l = layout(129, 128, &[2, 1], Some((128, 128))).unwrap();
        assert_eq!(l.block_m, 128);
        assert_eq!(
            layout(64, 32, &[64], None).unwrap().describe(64, 32),
            "per channel"
        );
        assert_eq!(
            layout(64, 32, &[], None).unwrap().describe(64, 32),
            "per tensor"
        );
        assert!(layout(64, 32, &[3, 3, 3], None).is_err());
        // A single scale where the config's blocks make a grid: refused (hostile round); a
        // weight within one block keeps its one scale.
        assert!(layout(64, 64, &[1, 1], Some((32, 32))).is_err());
        assert!(layout(64, 64, &[], Some((32, 32))).is_err());
        assert_eq!(
            layout(32, 32, &[1, 1], Some((128, 128))).unwrap().grid_rows,
            1
        );
    }
}
