//! ComfyUI's own quantized checkpoints: a layer `P` whose `P.weight` is quantized carries a U8
//! tensor `P.comfy_quant` holding the JSON bytes `{"format": F, …}` (ComfyUI `comfy/ops.py`
//! `_quantized_weight_state_dict` writes it, `_load_quantized_module` reads it; the formats are
//! `comfy/quant_ops.py` `QUANT_ALGOS`, Comfy-Org/ComfyUI 0271a469fe29524fafe5872b737123d65a63e5fc),
//! and the layout's tensors under `P.weight<suffix>` (comfy_kitchen `Layout.state_dict_tensors`).
//!
//! Its NVFP4 layers store the same names and dtypes as NVIDIA ModelOpt's (U8 `weight`, F8_E4M3
//! `weight_scale`, F32 `weight_scale_2`) but pack element 2j in the high nibble and keep the block
//! scales in cuBLAS' swizzled tile order, so the marker, not the dtypes, says which format a layer
//! is. This file recognises the marked layers and dequantizes the formats lorakit reads, bit for
//! bit as comfy_kitchen 0.2.40's eager backend (`backends/eager/quantization.py`) does in the
//! model's dtype D (ComfyUI's `orig_dtype`, its compute dtype: config.json's `dtype` where there is
//! one, else bf16, `mixed_precision_ops`' default):
//!
//! - `float8_e4m3fn` / `float8_e5m2` (`TensorCoreFP8Layout`): `weight` F8 `[rows, cols]`,
//!   `weight_scale` one float; `dequantize_per_tensor_fp8`: `x.to(D) · scale.to(D)` in D.
//! - `nvfp4` (`TensorCoreNVFP4Layout`): `weight` U8 `[rows, cols/2]`, element 2j in the HIGH
//!   nibble (`pack_uint4(hi_first=True)`), `weight_scale` E4M3 per 16 in cuBLAS' tile order
//!   (`float_utils.to_blocked`) `[roundup(rows, 128), roundup(cols/16, 4)]`, `weight_scale_2` F32
//!   `[]`; `dequantize_nvfp4`: `e2m1(code) · round_D(round_D(scale_2) · e4m3(block))` in D.
//! - `mxfp8` (`TensorCoreMXFP8Layout`): `weight` E4M3 `[rows, cols]`, `weight_scale` E8M0 per 32,
//!   the same tile order `[roundup(rows, 128), roundup(cols/32, 4)]`; `dequantize_mxfp8`:
//!   `round_D(e4m3(x) · e8m0(s))`, the product in f32, `e8m0_to_f32` giving 0 for byte 0.
//!
//! The tile order's padding (rows to 128, scale columns to 4) is checked by shape and otherwise
//! ignored, as `from_blocked` does. The weight's logical shape is the stored one: ComfyUI takes it
//! from the model's layer and slices a weight comfy_kitchen padded to 16 (NVFP4) or 32 (MXFP8)
//! rows and columns, which the file does not record. A format lorakit does not read stands for its
//! weight in [`QuantMap::unsupported`], so dequantizing or merging it is a one-line refusal naming
//! the file and the tensor, and `inspect` lists it.
//!
//! The scan is `comfy_quant_scan.rs`. Must not guess a format from shapes or dtypes.

use super::{ct_fp4, fp8};
use crate::dtype::{self, Dtype};

/// The marker's name after the layer prefix: `P.comfy_quant`.
pub const MARKER: &str = "comfy_quant";

/// The tensors a marked layer may hold beside `P.weight` and its marker: every name
/// `_load_quantized_module` pops for some format, and the `QUANT_ALGOS` parameters.
pub const LAYER_TENSORS: [&str; 8] = [
    "weight_scale",
    "weight_scale_2",
    "input_scale",
    "pre_quant_scale",
    "weight_s_rel",
    "weight_s_channel",
    "weight_codebook",
    "weight_zeros",
];

/// The `format` a marker's bytes name, or why they name none.
pub fn format_of(bytes: &[u8]) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("is not the JSON of a ComfyUI quantization config: {e}"))?;
    match v.get("format").and_then(serde_json::Value::as_str) {
        Some(f) => Ok(f.to_owned()),
        None => Err(format!(
            "holds {v}, a ComfyUI quantization config without a string `format`"
        )),
    }
}

/// The formats lorakit reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Float8E4m3,
    Float8E5m2,
    Nvfp4,
    Mxfp8,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "float8_e4m3fn" => Format::Float8E4m3,
            "float8_e5m2" => Format::Float8E5m2,
            "nvfp4" => Format::Nvfp4,
            "mxfp8" => Format::Mxfp8,
            _ => return None,
        })
    }

    /// ComfyUI's name (`QUANT_ALGOS`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Float8E4m3 => "float8_e4m3fn",
            Format::Float8E5m2 => "float8_e5m2",
            Format::Nvfp4 => "nvfp4",
            Format::Mxfp8 => "mxfp8",
        }
    }

    /// Elements per block scale (1 where one scale covers the tensor).
    pub fn group(self) -> usize {
        match self {
            Format::Nvfp4 => 16,
            Format::Mxfp8 => 32,
            _ => 1,
        }
    }

    pub fn bits(self) -> u32 {
        match self {
            Format::Nvfp4 => 4,
            _ => 8,
        }
    }
}

/// One ComfyUI-quantized weight.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Params {
    pub format: Format,
    pub rows: usize,
    pub cols: usize,
    /// The dtype comfy_kitchen dequantizes to (ComfyUI's `orig_dtype`).
    pub dtype: Dtype,
}

/// The shape of a block-scale grid in cuBLAS' tile order for `rows × groups` scales
/// (`to_blocked`: `[32·⌈rows/128⌉·4, 16·⌈groups/4⌉/4]`, i.e. padded to 128 rows and 4 columns).
pub fn blocked_shape(rows: usize, groups: usize) -> [usize; 2] {
    [rows.div_ceil(128) * 128, groups.div_ceil(4) * 4]
}

/// Where scale `(r, c)` of the logical grid lies in a tile-ordered buffer whose padded grid has
/// `padded_cols` columns: `to_blocked` views the padded grid as 128×4 tiles (row-major over
/// tiles), and stores each tile as `[32][4][4]` indexed `[r mod 32][(r mod 128) / 32][c mod 4]`.
pub fn blocked_index(r: usize, c: usize, padded_cols: usize) -> usize {
    let tile = (r / 128) * (padded_cols / 4) + c / 4;
    tile * 512 + (r % 32) * 16 + ((r % 128) / 32) * 4 + c % 4
}

/// comfy_kitchen's `e8m0_to_f32`: byte 0 is 0 (not 2^-127), 255 the f32 bits `0x7F800000` (+∞),
/// every other byte `2^(b − 127)`.
pub fn e8m0_to_f32(b: u8) -> f32 {
    if b == 0 {
        0.0
    } else {
        f32::from_bits(u32::from(b) << 23)
    }
}

/// The weight in f32 (each value one of `p.dtype`), as comfy_kitchen's eager `dequantize_*`
/// computes it in `p.dtype`. `scale` is `weight_scale`'s bytes, `global` the per-tensor scale
/// (NVFP4's `weight_scale_2`, the FP8 formats' `weight_scale`; unused by MXFP8).
pub fn dequantize(p: &Params, data: &[u8], scale: &[u8], global: f32) -> Vec<f32> {
    let d = p.dtype;
    let r = |x: f32| dtype::round_to(d, x);
    match p.format {
        Format::Float8E4m3 | Format::Float8E5m2 => {
            let widen = if p.format == Format::Float8E4m3 {
                fp8::e4m3_to_f32
            } else {
                fp8::e5m2_to_f32
            };
            // `x.to(D) * scale.to(D)`: both exact or rounded to D, the product rounded to D.
            let s = r(global);
            data.iter().map(|&b| r(r(widen(b)) * s)).collect()
        }
        Format::Nvfp4 => {
            let groups = p.cols / 16;
            let padded = blocked_shape(p.rows, groups)[1];
            let g = r(global);
            let mut out = Vec::with_capacity(p.rows * p.cols);
            for row in 0..p.rows {
                let packed = &data[row * p.cols / 2..(row + 1) * p.cols / 2];
                for c in 0..groups {
                    // `per_tensor_scale.to(D) * block_scale.to(D)`, rounded to D.
                    let total = r(g * fp8::e4m3_to_f32(scale[blocked_index(row, c, padded)]));
                    for &b in &packed[c * 8..(c + 1) * 8] {
                        out.push(r(ct_fp4::code_value(b >> 4) * total));
                        out.push(r(ct_fp4::code_value(b & 0xF) * total));
                    }
                }
            }
            out
        }
        Format::Mxfp8 => {
            let groups = p.cols / 32;
            let padded = blocked_shape(p.rows, groups)[1];
            let mut out = Vec::with_capacity(p.rows * p.cols);
            for (row, values) in data.chunks_exact(p.cols).enumerate() {
                for (c, block) in values.chunks_exact(32).enumerate() {
                    let s = e8m0_to_f32(scale[blocked_index(row, c, padded)]);
                    out.extend(block.iter().map(|&b| r(fp8::e4m3_to_f32(b) * s)));
                }
            }
            out
        }
    }
}
