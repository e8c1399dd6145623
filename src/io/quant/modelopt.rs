//! NVIDIA ModelOpt exports (what TensorRT-LLM and vLLM's `modelopt` quantization load), read and
//! written as nvidia-modelopt 0.47.0 does: `modelopt/torch/export/unified_export_hf.py`
//! (`_export_quantized_weight`), `export/quant_utils.py` (`to_quantized_weight`,
//! `process_layer_quant_config`), `export/convert_hf_config.py` (config.json's
//! `quantization_config`), `torch/quantization/qtensor/nvfp4_tensor.py` (`NVFP4QTensor`).
//!
//! The checkpoint says what it is in `hf_quant_config.json` (`quantization.quant_algo`, and
//! `quantized_layers.*.quant_algo` under `MIXED_PRECISION`) and in config.json's
//! `quantization_config` (`quant_method: "modelopt"`, `quant_algo`). lorakit reads `FP8` and
//! `NVFP4` (and the two that store NVFP4 weights alike, [`READ`]); every other algorithm
//! (`W4A8_AWQ`, `W4A16_AWQ`, `NVFP4_AWQ`, `FP8_PB_WO`, `FP8_PC_PT`, `MXFP8`, …) is listed by name in [`QuantMap::unsupported`] and refused by whatever
//! must dequantize it (recognition and the checks on each tensor: `modelopt_scan.rs`). On disk, for a module `P` with a `[rows, cols]` weight:
//! - NVFP4: `P.weight` U8 `[rows, cols/2]` (two E2M1 codes a byte, element `2j` in the low
//!   nibble, the code table of [`ct_fp4`]), `P.weight_scale` F8_E4M3 `[rows, cols/16]`,
//!   `P.weight_scale_2` F32 `[]` (the global scale, `amax / (6 · 448)`), `P.input_scale` F32 `[]`;
//! - FP8: `P.weight` F8_E4M3, `P.weight_scale` F32 `[]` (`amax / 448`), `P.input_scale` F32 `[]`:
//!   an FP8 per-tensor weight read by [`fp8`](super::fp8).
//!
//! Dequantization (`NVFP4QTensor.dequantize`): `dtype(code · (f32(scale) · weight_scale_2))`, code
//! 8 read as +0 (ModelOpt's `e2m1_values`; compressed-tensors reads −0), the
//! inner product in f32, the outer in f32 and rounded once to the model's dtype (config.json
//! `dtype`/`torch_dtype`, bf16 when it says nothing). Unlike compressed-tensors, whose
//! `weight_global_scale` divides (`scale / global`), ModelOpt's `weight_scale_2` multiplies.
//!
//! Requantization (`merge --quant keep`) keeps the stored scales, as ModelOpt's export does when
//! handed them (`to_quantized_weight(weight.to(dtype), weight_scale, "nvfp4", weight_scale_2, 16)`):
//! the merged weight rounded to the model's dtype, divided in f32 by `f32(scale) · weight_scale_2`,
//! and cast by `_cast_fp4` (the same thresholds as compressed-tensors' `cast_to_fp4`, ties to
//! even; a NaN quotient, a zero scale over a zero weight, gives code 7: `searchsorted` puts NaN
//! last and `NaN < 0` is false). FP8: `(weight.to(dtype) / weight_scale).to(float8_e4m3fn)`, the
//! quotient rounded to the model's dtype (a 0-dim f32 divisor keeps the bf16 result) and then to
//! E4M3, saturating at ±448 as torch 2.15's cast does.
//!
//! Must not choose scales: ModelOpt's calibration made them, and lorakit keeps them.

use super::{ct_fp4, fp8};
use crate::dtype::{self, Dtype};
use crate::error::{InputError, InputResult};
use crate::io::Checkpoint;
use serde_json::Value;

/// The algorithms lorakit reads. `W4A16_NVFP4` (weight-only) and `W4A8_NVFP4_FP8` (FP8
/// activations, `weight_scale_2 = amax / 448`) store their weights exactly as `NVFP4` does:
/// `unified_export_hf.py` (`_export_quantized_weight`) and `quant_utils.py`
/// (`get_weight_scaling_factor{,_2}`, `to_quantized_weight`) take one branch for the three, and
/// `NVFP4QTensor.dequantize` reads them alike; only the activation side differs.
pub const READ: [&str; 4] = ["FP8", "NVFP4", "W4A16_NVFP4", "W4A8_NVFP4_FP8"];

/// The [`READ`] algorithms whose weights are NVFP4.
const NVFP4_ALGOS: [&str; 3] = ["NVFP4", "W4A16_NVFP4", "W4A8_NVFP4_FP8"];

/// NVFP4's block: one E4M3 scale per 16 values along a row.
pub const GROUP: usize = 16;

/// One ModelOpt NVFP4 weight.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Params {
    pub rows: usize,
    pub cols: usize,
    /// The model's dtype: what ModelOpt dequantizes to and rounds the weight to before quantizing.
    pub dtype: Dtype,
}

/// What a ModelOpt checkpoint says about itself.
#[derive(Debug, Clone)]
pub struct Config {
    /// Every `quant_algo` named (the top one and each quantized layer's), `MIXED_PRECISION` left out.
    pub algos: Vec<String>,
    /// The file that says so: hf_quant_config.json, else config.json.
    pub path: std::path::PathBuf,
    /// config.json `dtype` (transformers 5) or `torch_dtype`; bf16 when absent.
    pub dtype: Dtype,
    /// `group_size` where given.
    pub group_size: Option<u64>,
    /// The top `quant_algo` (`MIXED_PRECISION` included).
    pub top: Option<String>,
    /// `quantized_layers`: module → its `quant_algo`.
    pub layers: Vec<(String, String)>,
}

impl Config {
    /// The algorithm the config gives module `module` (`P` of `P.weight`): its
    /// `quantized_layers` entry, else the top algorithm unless that is `MIXED_PRECISION`.
    pub fn algo_for(&self, module: &str) -> Option<&str> {
        match self.layers.iter().find(|(m, _)| m == module) {
            Some((_, a)) => Some(a),
            None => self.top.as_deref().filter(|a| *a != "MIXED_PRECISION"),
        }
    }

    /// The error for a module stored as `stored` (`NVFP4`, `FP8`) that the config gives another
    /// algorithm (the [`NVFP4_ALGOS`] all store NVFP4), or none at all: ModelOpt's loaders (TensorRT-LLM, vLLM `modelopt`) build each
    /// layer from the config, so such a checkpoint does not load.
    pub fn contradiction(&self, module: &str, stored: &str) -> Option<InputError> {
        let says = self.algo_for(module);
        let stores = |a: &str| a == stored || (stored == "NVFP4" && NVFP4_ALGOS.contains(&a));
        if says.is_some_and(stores) {
            return None;
        }
        Some(InputError::invalid(
            &self.path,
            format!(
                "gives `{module}` {}, but its stored tensors are {stored}",
                says.map_or("no quant_algo".to_owned(), |a| format!("quant_algo `{a}`"))
            ),
        ))
    }

    /// The algorithms lorakit does not read, as the error to list, if any.
    pub fn refusal(&self) -> Option<InputError> {
        let bad: Vec<&str> = self
            .algos
            .iter()
            .map(String::as_str)
            .filter(|a| !READ.contains(a))
            .collect();
        let msg = if !bad.is_empty() {
            format!(
                "ModelOpt quant_algo {} is not one lorakit reads ({})",
                bad.iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                READ.join(", ")
            )
        } else if self.algos.is_empty() {
            "ModelOpt config names no quant_algo".to_owned()
        } else if self.group_size.is_some_and(|g| g != 0 && g != GROUP as u64)
            && self.algos.iter().any(|a| NVFP4_ALGOS.contains(&a.as_str()))
        {
            format!(
                "ModelOpt NVFP4 with group_size {}: lorakit reads groups of 16",
                self.group_size.unwrap_or(0)
            )
        } else {
            return None;
        };
        Some(InputError::invalid(&self.path, msg))
    }
}

fn algo_of(v: &Value) -> Option<String> {
    v.get("quant_algo")?.as_str().map(str::to_owned)
}

/// The ModelOpt config of `ck`: hf_quant_config.json when present, else config.json's
/// `quantization_config` when its `quant_method` is `modelopt`; `None` for anything else.
/// `config_json` is the checkpoint's config.json as the scan read it.
pub(super) fn config_of(
    ck: &Checkpoint,
    config_json: Option<&Value>,
) -> InputResult<Option<Config>> {
    let quant = config_json.and_then(|c| c.get("quantization_config"));
    let folder = ck.folder();
    let cfg_path = folder.join("config.json");
    let hf_path = folder.join("hf_quant_config.json");
    if std::fs::metadata(&hf_path).is_ok_and(|m| !m.is_file()) {
        // A folder, FIFO or device where ModelOpt's description belongs: loaders that open it
        // fail or block.
        return Err(InputError::invalid(&hf_path, "is not a regular file"));
    }
    let (path, q) = if hf_path.is_file() {
        let bytes = crate::io::read_json_file(&hf_path)?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| InputError::invalid(&hf_path, format!("not JSON: {e}")))?;
        match v.get("quantization") {
            Some(q) if q.is_object() => (hf_path, q.clone()),
            _ => {
                return Err(InputError::invalid(
                    &hf_path,
                    "has no `quantization` object (ModelOpt writes quant_algo there)",
                ))
            }
        }
    } else {
        match quant {
            Some(q) if q.get("quant_method").and_then(Value::as_str) == Some("modelopt") => {
                (cfg_path, q.clone())
            }
            _ => return Ok(None),
        }
    };
    let bad_field = |m: String| InputError::invalid(&path, m);
    if let Some(v) = q.get("quant_algo").filter(|v| !v.is_string()) {
        return Err(bad_field(format!("quant_algo {v} is not a string")));
    }
    let group_size = match q.get("group_size") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad_field(format!("group_size {v} is not a size")))?,
        ),
    };
    let mut layers = Vec::new();
    match q.get("quantized_layers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (name, l) in m {
                match algo_of(l) {
                    Some(a) => layers.push((name.clone(), a)),
                    None => {
                        return Err(bad_field(format!(
                            "quantized_layers `{name}` has no quant_algo string"
                        )))
                    }
                }
            }
        }
        Some(_) => return Err(bad_field("quantized_layers is not an object".into())),
    }
    let top = algo_of(&q);
    let mut algos = Vec::new();
    let mut push = |a: String| {
        if a != "MIXED_PRECISION" && !algos.contains(&a) {
            algos.push(a);
        }
    };
    if let Some(a) = algo_of(&q) {
        push(a);
    }
    if let Some(layers) = q.get("quantized_layers").and_then(Value::as_object) {
        for l in layers.values() {
            if let Some(a) = algo_of(l) {
                push(a);
            }
        }
    }
    let dtype = dtype::of_config_or_bf16(config_json);
    Ok(Some(Config {
        algos,
        path,
        dtype,
        group_size,
        top,
        layers,
    }))
}

/// Each block's scale as ModelOpt multiplies by it: `f32(e4m3) · weight_scale_2` in f32.
pub fn block_scales(scale_bytes: &[u8], global: f32) -> Vec<f32> {
    scale_bytes
        .iter()
        .map(|&b| fp8::e4m3_to_f32(b) * global)
        .collect()
}

/// The weight in f32 (each value one of `p.dtype`), as `NVFP4QTensor.dequantize` returns it.
pub fn dequantize(p: &Params, packed: &[u8], scales: &[f32]) -> Vec<f32> {
    (0..p.rows * p.cols)
        .map(|i| {
            let c = ct_fp4::nibble(packed, i);
            // ModelOpt's table (`e2m1_values`) holds +0 for code 8, where compressed-tensors'
            // holds −0.
            let v = if c == 8 { 0.0 } else { ct_fp4::code_value(c) };
            dtype::round_to(p.dtype, v * scales[ct_fp4::group_index(p.cols, GROUP, i)])
        })
        .collect()
}

/// `merged` (f32, row-major) packed again with the stored block scales (`NVFP4QTensor.quantize`
/// with `weights_scaling_factor` given).
pub fn requantize(p: &Params, merged: &[f32], scales: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; p.rows * p.cols / 2];
    for (i, &m) in merged.iter().enumerate() {
        let q = dtype::round_to(p.dtype, m) / scales[ct_fp4::group_index(p.cols, GROUP, i)];
        // `_cast_fp4`: NaN sorts past every bound (code 7) and is not negative.
        let c = if q.is_nan() { 7 } else { ct_fp4::code_of(q) };
        ct_fp4::put_nibble(&mut out, i, c);
    }
    out
}

/// `merged` cast to E4M3 with the stored per-tensor `scale`, as `to_quantized_weight(weight.to(dtype),
/// weight_scale, "fp8")` does.
pub fn requantize_fp8(merged: &[f32], scale: f32, dtype: Dtype) -> Vec<u8> {
    merged
        .iter()
        .map(|&m| fp8::e4m3_of_quotient(m, scale, dtype))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ModelOpt's own `NVFP4QTensor.quantize` of every E2M1 bound and its bf16 neighbours, ±0,
    /// tiny and huge values under awkward E4M3 scales, a zero scale over zeros (0/0: code 7) and a
    /// global scale that is not a power of two; and `to_quantized_weight(.., "fp8")` of values
    /// past 448 · scale (torch's saturating cast) (`fixtures/quant/modelopt_edge.safetensors`).
    #[test]
    fn requantize_equals_modelopt_on_the_edges() {
        let file = crate::io::quant::tests::EdgeFile::open("quant/modelopt_edge.safetensors");
        let st = file.tensors();
        let get = |n: &str| st.tensor(n).expect(n);
        let x = get("x");
        let p = Params {
            rows: x.shape()[0],
            cols: x.shape()[1],
            dtype: Dtype::BF16,
        };
        let g = dtype::decode(Dtype::F32, get("scale_2").data())[0];
        let s = block_scales(get("scale").data(), g);
        let merged = dtype::decode(Dtype::BF16, x.data());
        assert_eq!(requantize(&p, &merged, &s), get("packed").data());
        let fx = dtype::decode(Dtype::BF16, get("fx").data());
        let fs = dtype::decode(Dtype::F32, get("fscale").data())[0];
        assert_eq!(requantize_fp8(&fx, fs, Dtype::BF16), get("fpacked").data());
    }
}
