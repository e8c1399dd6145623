//! Quantized weights inside a safetensors checkpoint: recognising them (and the companion
//! tensors that hold their scales), validating every companion against the packing before use,
//! and dequantizing one weight at a time from the memory map.
//!
//! One file per producer format: [`bnb4`] (bitsandbytes NF4/FP4, with and without double
//! quantization), [`int8`] (bitsandbytes LLM.int8), [`fp8`] (F8_E4M3/F8_E5M2 with per-tensor,
//! per-channel or block scales, F32/BF16/F16/E8M0), [`packed`] (compressed-tensors
//! pack-quantized INT1–8), [`ct_fp4`] (compressed-tensors NVFP4/MXFP4; both recognised in
//! `ct_scan.rs`), [`gptq`] (native GPTQ 2/3/4/8-bit, v1 and v2 zeros, act-order; AWQ
//! GEMM 4-bit), [`modelopt`] (NVIDIA ModelOpt NVFP4 and FP8, only under a ModelOpt config),
//! [`comfy_quant`] (ComfyUI's `P.comfy_quant` layers); writing a merged weight back in its own format is
//! `requant.rs`. A [`QuantMap`] is built from the headers alone ([`QuantMap::scan`], in
//! `scan.rs`); it reads no tensor data except small state tensors (bitsandbytes' quant_state
//! JSON, compressed-tensors' `weight_shape`, the stored code book it checks, GPTQ's `g_idx`).
//!
//! What it must never do: guess. A companion without its weight, a weight without its scales, a
//! shape that does not match the packing, a quant_state that contradicts the tensors: each is a
//! one-line error naming the file and the tensor. Formats it recognises but does not read
//! (GPTQ marlin/planar/`dynamic`, AWQ GEMV, MX/FNUZ dtypes, an unknown `quant_method`) are listed in
//! [`QuantMap::unsupported`] and refused by whatever must dequantize them.

pub mod bnb4;
pub mod bnb4_dq;
pub mod comfy_quant;
mod comfy_quant_scan;
mod ct_config;
pub mod ct_fp4;
mod ct_scan;
pub mod fp8;
pub mod gptq;
pub mod int8;
pub mod mlx;
pub mod mlx_fp;
mod mlx_scan;
pub mod modelopt;
mod modelopt_scan;
pub mod packed;
mod requant;
mod scan;

use crate::dtype::{self, Dtype};
use crate::error::{InputError, InputResult};
use crate::io::Checkpoint;
use std::collections::{BTreeMap, HashMap, HashSet};

/// How one weight is quantized.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Scheme {
    /// bitsandbytes 4-bit.
    Bnb4(bnb4::Params),
    /// bitsandbytes LLM.int8 (row-wise absmax `SCB`).
    BnbInt8,
    /// compressed-tensors pack-quantized integers (`weight_packed`).
    Packed(packed::Params),
    /// compressed-tensors NVFP4 / MXFP4 / MXFP6 (`weight_packed` U8: E2M1 pairs, E2M3 quads).
    CtFp4(ct_fp4::Params),
    /// NVIDIA ModelOpt NVFP4 (U8 `weight`, E4M3 `weight_scale`, F32 `weight_scale_2`).
    ModelOptFp4(modelopt::Params),
    /// A ComfyUI `comfy_quant` layer (FP8 per tensor, NVFP4, MXFP8).
    Comfy(comfy_quant::Params),
    /// Native GPTQ (`qweight`, `qzeros`, `scales`, `g_idx`) or AWQ GEMM.
    Gptq(gptq::Params),
    /// MLX affine (`mx.quantize`: packed uint32, a scale and a bias per group).
    Mlx(mlx::Params),
    /// MLX mxfp4 / nvfp4 / mxfp8 (`mx.quantize(mode=…)`: packed uint32, a U8 scale per group).
    MlxFp(mlx_fp::Params),
    /// compressed-tensors saved uncompressed (`format: "dense"`): the float weight, fake-quantized
    /// already, beside the scales its loader's forward applies to it (`ct_scan.rs`).
    CtDense {
        dtype: Dtype,
        bits: u32,
        float: bool,
    },
    /// FP8 values with scales.
    Fp8 {
        format: Dtype,
        scale: String,
        scale_dtype: Dtype,
        layout: fp8::Layout,
    },
}

/// What PEFT 0.21.2 hands bitsandbytes to quantize again when it merges into a 4-bit weight
/// (peft/tuners/lora/bnb.py `Linear4bit.merge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requant {
    /// A LoRA merge: the f32 sum `dequantize_bnb_weight(W) + get_delta_weight()`, quantized as
    /// it is (bitsandbytes records `"dtype": "float32"` in the new state).
    Sum,
    /// A DoRA merge: `DoraLinearVariant.merge_safe` ends with `new_weight.to(orig_dtype)`, the
    /// dequantized weight's dtype (the state's), so a 16-bit state's merge is rounded to it
    /// before it is quantized, and the new state keeps that dtype.
    InStateDtype,
}

/// One quantized weight.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantTensor {
    /// The weight's name (`….weight`), which the dequantized tensor keeps.
    pub name: String,
    /// The stored tensor holding the quantized values: the weight's own name, except for
    /// compressed-tensors (`….weight_packed`).
    pub stored: String,
    /// Logical shape.
    pub shape: Vec<usize>,
    pub scheme: Scheme,
    /// Companion tensors (scales, code books, state), dropped when dequantized.
    pub companions: Vec<String>,
}

impl QuantTensor {
    /// The companion named `P.leaf` (one the scan recorded: a missing one is a bug).
    pub(crate) fn companion(&self, leaf: &str) -> &str {
        self.companions
            .iter()
            .find(|c| c.rsplit_once('.').is_some_and(|(_, l)| l == leaf))
            .map(String::as_str)
            .expect("recorded at scan")
    }

    /// Short method name: `bnb-nf4`, `bnb-fp4`, `bnb-int8`, `fp8-e4m3`, `fp8-e5m2`.
    pub fn method(&self) -> String {
        match &self.scheme {
            Scheme::Bnb4(p) => format!("bnb-{}", p.kind.name()),
            Scheme::BnbInt8 => "bnb-int8".into(),
            Scheme::Packed(p) => format!("ct-int{}", p.bits),
            Scheme::CtDense { bits, float, .. } => {
                format!("ct-dense-{}{bits}", if *float { "fp" } else { "int" })
            }
            Scheme::CtFp4(p) => format!("ct-{}", p.kind.name()),
            Scheme::ModelOptFp4(_) => "modelopt-nvfp4".into(),
            Scheme::Comfy(p) => format!("comfy-{}", p.format.name()),
            Scheme::Mlx(_) => "mlx-affine".into(),
            Scheme::MlxFp(p) => format!("mlx-{}", p.mode.name()),
            Scheme::Gptq(p) => match p.layout {
                gptq::Layout::Awq => "awq".into(),
                gptq::Layout::GptqV1 => "gptq".into(),
                gptq::Layout::GptqV2 => "gptq-v2".into(),
            },
            Scheme::Fp8 { format, .. } => match format {
                Dtype::F8_E5M2 => "fp8-e5m2".into(),
                _ => "fp8-e4m3".into(),
            },
        }
    }

    pub fn bits(&self) -> u32 {
        match &self.scheme {
            Scheme::Bnb4(_) | Scheme::ModelOptFp4(_) => 4,
            Scheme::CtFp4(p) => p.kind.bits(),
            Scheme::Packed(p) => p.bits,
            Scheme::CtDense { bits, .. } => *bits,
            Scheme::Gptq(p) => p.bits,
            Scheme::Mlx(p) => p.bits,
            Scheme::MlxFp(p) => p.mode.bits(),
            Scheme::Comfy(p) => p.format.bits(),
            _ => 8,
        }
    }

    /// Block or group description: `blocksize 64, double-quant (256)`, `per row`, `128x128 blocks`.
    pub fn blocks(&self) -> String {
        match &self.scheme {
            Scheme::Bnb4(p) => match &p.nested {
                Some(n) => format!("blocksize {}, double-quant {}", p.blocksize, n.blocksize),
                None => format!("blocksize {}", p.blocksize),
            },
            Scheme::BnbInt8 => "per row".into(),
            Scheme::CtDense { dtype, .. } => format!(
                "stored as {} values (format dense), scales applied by the loader",
                dtype::name(*dtype)
            ),
            Scheme::Mlx(p) => format!("group {}", p.group_size),
            Scheme::MlxFp(p) => format!("group {}", p.mode.group_size()),
            Scheme::ModelOptFp4(_) => "group 16, E4M3 scales, weight_scale_2".into(),
            Scheme::Comfy(p) => match p.format {
                comfy_quant::Format::Nvfp4 => {
                    "group 16, E4M3 scales (cuBLAS tiles), weight_scale_2".into()
                }
                comfy_quant::Format::Mxfp8 => "group 32, E8M0 scales (cuBLAS tiles)".into(),
                _ => "per tensor".into(),
            },
            Scheme::CtFp4(p) => match p.kind {
                ct_fp4::Kind::Nvfp4 => "group 16, E4M3 scales, global scale".into(),
                ct_fp4::Kind::Mxfp4 | ct_fp4::Kind::Mxfp6 => "group 32, E8M0 scales".into(),
            },
            Scheme::Packed(p) => {
                let kind = if p.per_tensor {
                    "per tensor".to_string()
                } else if p.groups == 1 {
                    "per channel".to_string()
                } else {
                    format!("group {}", p.group_size())
                };
                let mut d = format!(
                    "{kind}, {}",
                    if p.symmetric {
                        "symmetric"
                    } else {
                        "asymmetric"
                    }
                );
                if p.g_idx.is_some() {
                    d.push_str(", act-order (weight_g_idx)");
                }
                if p.storage == packed::Storage::Int8 {
                    d.push_str(", one I8 code a byte");
                }
                d
            }
            Scheme::Gptq(p) => {
                let mut d = if p.groups == 1 {
                    "per channel".to_string()
                } else {
                    format!("group {}", p.group_size())
                };
                if p.act_order {
                    d.push_str(", act-order");
                }
                match p.sym {
                    Some(true) => d.push_str(", symmetric"),
                    Some(false) => d.push_str(", asymmetric"),
                    None => {}
                }
                d
            }
            Scheme::Fp8 {
                layout,
                scale_dtype,
                ..
            } => {
                let d = layout.describe(self.shape[0], self.shape.get(1).copied().unwrap_or(1));
                match scale_dtype {
                    Dtype::U8 | Dtype::F8_E8M0 => format!("{d}, E8M0 scales"),
                    _ => d,
                }
            }
        }
    }

    /// The dtype the producing library dequantizes to.
    pub fn natural_dtype(&self) -> Dtype {
        match &self.scheme {
            Scheme::Bnb4(p) => p.dtype,
            Scheme::BnbInt8 => Dtype::F32,
            Scheme::Packed(p) => p.scale_dtype,
            Scheme::CtDense { dtype, .. } => *dtype,
            Scheme::Gptq(p) => p.scale_dtype,
            Scheme::Mlx(p) => p.dtype,
            Scheme::MlxFp(p) => p.dtype,
            Scheme::CtFp4(_) => Dtype::BF16,
            Scheme::ModelOptFp4(p) => p.dtype,
            Scheme::Comfy(p) => p.dtype,
            Scheme::Fp8 { scale_dtype, .. } => fp8::natural_dtype(*scale_dtype),
        }
    }
}

/// The quantized weights of a checkpoint.
#[derive(Debug, Default)]
pub struct QuantMap {
    tensors: BTreeMap<String, QuantTensor>,
    /// Companion name → weight name.
    companions: HashMap<String, String>,
    /// Stored name → weight name, where they differ (`P.weight_packed` → `P.weight`).
    stored: HashMap<String, String>,
    /// config.json `quantization_config`, when present.
    pub config: Option<serde_json::Value>,
    /// hf_quant_config.json (or config.json) of an NVIDIA ModelOpt export.
    pub modelopt: Option<modelopt::Config>,
    /// Quantized tensors lorakit recognises but cannot read (GPTQ/AWQ layouts other than
    /// gptq/gptq_v2/GEMM, MX formats, an unknown
    /// `quant_method`): listed by `inspect`, copied as they are by a merge that keeps the base
    /// quantized, an error for anything that must dequantize them.
    pub unsupported: Vec<InputError>,
    /// Weight name (`P.weight`) → its entry in `unsupported`, for the tensors that stand for
    /// one weight (a GPTQ/AWQ `P.qweight` under a config no layout has, an MX-format weight).
    unsupported_weights: HashMap<String, usize>,
    /// Weights stored as the transpose of their logical `shape`: bitsandbytes weights of
    /// `Conv1D` layers, which transformers quantizes as `[out, in]` (integrations/bitsandbytes.py:
    /// `value.T` for Conv1D) while the float model stores `[in, out]` (the logical shape, what
    /// [`QuantMap::dequantize`] gives and [`QuantMap::requantize`] takes).
    transposed: HashSet<String>,
    /// Tensors a format's scan took that no other scan may read as its own (a ComfyUI
    /// `comfy_quant` layer lorakit does not read, an NVFP4 weight of unknown packing).
    claimed: HashSet<String>,
}

fn err(ck: &Checkpoint, tensor: &str, msg: impl std::fmt::Display) -> InputError {
    let path = ck
        .file_of(tensor)
        .map(|f| f.path().to_path_buf())
        .unwrap_or_else(|| ck.root.clone());
    InputError::invalid(path, format!("tensor `{tensor}`: {msg}"))
}

/// `v`, the dequantized `q` (`cols` wide, in `dtype`), or the refusal of its first non-finite
/// element, naming the scale tensor `scale` (`why`: what can make one).
fn all_finite(
    ck: &Checkpoint,
    q: &QuantTensor,
    scale: &str,
    (cols, dtype): (usize, Dtype),
    v: Vec<f32>,
    why: &str,
) -> InputResult<Vec<f32>> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(v),
        Some(i) => Err(err(
            ck,
            scale,
            format!(
                "makes element [{}, {}] of `{}` {} in {}{why}",
                i / cols,
                i % cols,
                q.stored,
                v[i],
                dtype::name(dtype)
            ),
        )),
    }
}

impl QuantMap {
    /// `quantization_config.quant_method`.
    pub fn method(&self) -> Option<String> {
        self.config
            .as_ref()?
            .get("quant_method")?
            .as_str()
            .map(str::to_owned)
    }

    /// `quantization_config.weight_block_size` (FP8), when given; an error when it is given
    /// but is not a pair of positive sizes (read otherwise, the scales' own grid would decide
    /// the tiling against what the config says).
    fn config_block(&self) -> Result<Option<(usize, usize)>, String> {
        let Some(b) = self
            .config
            .as_ref()
            .and_then(|c| c.get("weight_block_size"))
            .filter(|b| !b.is_null())
        else {
            return Ok(None);
        };
        match b.as_array().map(Vec::as_slice) {
            Some([m, n]) => match (m.as_u64(), n.as_u64()) {
                (Some(m), Some(n)) if m > 0 && n > 0 => Ok(Some((m as usize, n as usize))),
                _ => Err(format!(
                    "quantization_config.weight_block_size {b} is not two positive sizes"
                )),
            },
            _ => Err(format!(
                "quantization_config.weight_block_size {b} is not two positive sizes"
            )),
        }
    }

    /// What the compressed-tensors config says about the weight of `module`, an error naming
    /// config.json when it is malformed.
    fn ct_args(&self, ck: &Checkpoint, module: &str) -> InputResult<Option<ct_config::WeightArgs>> {
        ct_config::weight_args(self.config.as_ref(), module)
            .map_err(|m| InputError::invalid(ck.folder().join("config.json"), m))
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// For an operation that reads float weights only (`what`: "eval", "train"): an error
    /// naming `ck` when it holds quantized weights (or ones lorakit recognises as quantized but
    /// cannot read), with the way out, instead of a shape or dtype error on the first packed
    /// tensor.
    pub fn refuse_for(ck: &Checkpoint, what: &str) -> InputResult<()> {
        let q = Self::scan(ck)?;
        let Some(first) = q
            .tensors
            .keys()
            .chain(q.unsupported_weights.keys())
            .cloned()
            .min()
        else {
            return Ok(());
        };
        let n = q.tensors.len() + q.unsupported_weights.len();
        Err(InputError::invalid(
            &ck.root,
            format!(
                "holds {n} quantized weight(s) ({}, e.g. `{first}`); {what} reads float weights: write a float copy with `lorakit dequantize {} --out FOLDER` and give that",
                q.method().unwrap_or_else(|| "quantized".into()),
                ck.root.display()
            ),
        ))
    }

    /// Why the quantized weight `weight` (`P.weight`) cannot be read, where it is one lorakit
    /// recognises but cannot read: a merge whose module targets it reports this cause, not
    /// "no base tensor".
    pub fn unsupported_weight(&self, weight: &str) -> Option<&InputError> {
        self.unsupported_weights
            .get(weight)
            .map(|&i| &self.unsupported[i])
    }

    /// Records `e` as the reason weight `weight` (when there is one) cannot be read.
    pub(super) fn push_unsupported(&mut self, weight: Option<String>, e: InputError) {
        if let Some(w) = weight {
            self.unsupported_weights.insert(w, self.unsupported.len());
        }
        self.unsupported.push(e);
    }

    /// The first quantized tensor lorakit cannot dequantize, as the error to report.
    pub fn check_readable(&self) -> InputResult<()> {
        match self.unsupported.first() {
            Some(e) => Err(InputError::invalid(&e.path, e.kind.to_string())),
            None => Ok(()),
        }
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn get(&self, name: &str) -> Option<&QuantTensor> {
        self.tensors.get(name)
    }

    /// The weight a companion tensor belongs to.
    pub fn companion_of(&self, name: &str) -> Option<&str> {
        self.companions.get(name).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &QuantTensor> {
        self.tensors.values()
    }

    fn insert(&mut self, ck: &Checkpoint, q: QuantTensor) -> InputResult<()> {
        for c in &q.companions {
            if let Some(other) = self.companions.insert(c.clone(), q.name.clone()) {
                return Err(err(
                    ck,
                    c,
                    format!("belongs to both `{other}` and `{}`", q.name),
                ));
            }
        }
        if self.tensors.contains_key(&q.name) {
            return Err(err(ck, &q.name, "has two sets of quantization tensors"));
        }
        if q.stored != q.name {
            if ck.contains(&q.name) {
                return Err(err(
                    ck,
                    &q.name,
                    format!("is stored both as itself and packed in `{}`", q.stored),
                ));
            }
            self.stored.insert(q.stored.clone(), q.name.clone());
        }
        self.tensors.insert(q.name.clone(), q);
        Ok(())
    }

    /// Whether `q` is stored as the transpose of its logical shape (a bitsandbytes `Conv1D`
    /// weight, see `transposed`).
    pub fn is_transposed(&self, q: &QuantTensor) -> bool {
        self.transposed.contains(&q.name)
    }

    /// A transposed weight ([`Self::is_transposed`]) as it is stored (`[out, in]`), with its
    /// stored rows and columns; `None` for one stored as its logical shape.
    pub(super) fn as_stored(&self, q: &QuantTensor) -> Option<(QuantTensor, usize, usize)> {
        let &[i, o] = q.shape.as_slice() else {
            return None;
        };
        self.is_transposed(q).then(|| {
            let inner = QuantTensor {
                shape: vec![o, i],
                ..q.clone()
            };
            (inner, o, i)
        })
    }

    /// Marks the bitsandbytes weights of `Conv1D` layers as stored transposed, their logical
    /// shape the float model's `[in, out]`: in a checkpoint whose config.json names a Conv1D
    /// family ([`crate::io::conv1d::families`]), a 2-D `Bnb4`/`BnbInt8` weight of a layer named
    /// as one ([`crate::io::conv1d::is_layer_name`]), as transformers 5.24 quantizes them
    /// (integrations/bitsandbytes.py `Bnb4bitQuantize` and `Bnb8bitQuantize`: `value = value.T`
    /// when the module is a Conv1D), and as `dequantize` must write them back for
    /// `GPT2LMHeadModel` to load.
    fn mark_conv1d(&mut self, config: Option<&serde_json::Value>) {
        if !config.is_some_and(|c| crate::io::conv1d::families(c).1) {
            return;
        }
        for q in self.tensors.values_mut() {
            let module = q.name.strip_suffix(".weight").unwrap_or(&q.name);
            if matches!(q.scheme, Scheme::Bnb4(_) | Scheme::BnbInt8)
                && q.shape.len() == 2
                && crate::io::conv1d::is_layer_name(module)
            {
                q.shape.reverse();
                self.transposed.insert(q.name.clone());
            }
        }
    }

    /// The name a stored tensor is written under once dequantized (`P.weight_packed` →
    /// `P.weight`); every other name unchanged.
    pub fn logical_name<'a>(&'a self, stored: &'a str) -> &'a str {
        self.stored
            .get(stored)
            .map(String::as_str)
            .unwrap_or(stored)
    }

    /// Dequantizes one weight to f32 (round to [`QuantTensor::natural_dtype`] or the requested
    /// dtype once when storing). Reads only this weight's bytes and its companions from the map.
    pub fn dequantize(&self, ck: &Checkpoint, q: &QuantTensor) -> InputResult<Vec<f32>> {
        // No values: the kernels' row loops would still run once per row (hostile round 13: an
        // MLX `[2^62, 0]` weight with `[2^62, 0]` scales dequantized for hours).
        if q.shape.contains(&0) {
            return Ok(Vec::new());
        }
        match self.as_stored(q) {
            Some((stored, rows, cols)) => {
                let v = self.dequantize_stored(ck, &stored)?;
                Ok(crate::io::conv1d::transpose(&v, rows, cols))
            }
            None => self.dequantize_stored(ck, q),
        }
    }

    /// [`Self::dequantize`] of `q` in its stored layout.
    fn dequantize_stored(&self, ck: &Checkpoint, q: &QuantTensor) -> InputResult<Vec<f32>> {
        let data = |n: &str| ck.view(n).map(|v| v.data);
        Ok(match &q.scheme {
            Scheme::Bnb4(p) => {
                let w = &q.name;
                let parts = bnb4::Parts {
                    packed: data(w)?,
                    absmax: data(&format!("{w}.absmax"))?,
                    nested_absmax: match p.nested {
                        Some(_) => Some(data(&format!("{w}.nested_absmax"))?),
                        None => None,
                    },
                    nested_code: match p.nested {
                        Some(_) => Some(data(&format!("{w}.nested_quant_map"))?),
                        None => None,
                    },
                };
                bnb4::dequantize(p, &parts)
            }
            Scheme::BnbInt8 => {
                let scb = dtype::decode(Dtype::F32, data(&q.companions[0])?);
                int8::dequantize(data(&q.name)?, &scb, q.shape[1])
            }
            Scheme::Packed(p) => {
                let zero = match p.symmetric {
                    true => None,
                    false => Some(data(q.companion("weight_zero_point"))?),
                };
                packed::dequantize(
                    p,
                    data(&q.stored)?,
                    data(q.companion("weight_scale"))?,
                    zero,
                )
            }
            Scheme::CtFp4(p) => {
                let bytes = data(&q.companions[0])?;
                let (s, global) = ct_fp4::group_scales_of(p, bytes, |n| data(&q.companions[n]))?;
                // A global scale of 0, NaN or ±inf is refused before its quotients are looked
                // at: an infinite one makes every scale 0 (finite), a weight of zeros.
                if let Some(g) = global.filter(|g| !g.is_finite() || *g == 0.0) {
                    return Err(err(
                        ck,
                        &q.companions[1],
                        format!("is {g} (a global scale must be finite and non-zero)"),
                    ));
                }
                // A non-finite value is refused naming what made it: a scale (E4M3 0x7F/0xFF
                // is NaN, E8M0 255 is 2^128, or a subnormal global scale's quotient
                // overflows), or a scale whose product with a code overflows bf16.
                if let Some(g) = s.iter().position(|x| !x.is_finite()) {
                    return Err(err(
                        ck,
                        &q.companions[0],
                        format!(
                            "group {g} (byte {:#04x}) gives the scale {}",
                            bytes[g], s[g]
                        ),
                    ));
                }
                let v = ct_fp4::dequantize(p, data(&q.stored)?, &s);
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    let (row, col) = (i / p.cols, i % p.cols);
                    return Err(err(
                        ck,
                        &q.companions[0],
                        format!(
                            "makes element [{row}, {col}] of `{}` {} in bf16",
                            q.stored, v[i]
                        ),
                    ));
                }
                v
            }
            Scheme::CtDense { dtype, .. } => dtype::decode(*dtype, data(&q.stored)?),
            Scheme::ModelOptFp4(p) => self.dequantize_modelopt(ck, q, p)?,
            Scheme::Comfy(p) => self.dequantize_comfy(ck, q, p)?,
            Scheme::Gptq(p) => gptq::dequantize(
                p,
                data(&q.stored)?,
                data(&q.companions[0])?,
                data(&q.companions[1])?,
            ),
            Scheme::Mlx(p) => {
                // A NaN or infinite scale or bias is refused naming the tensor that holds it.
                for c in &q.companions {
                    let v = dtype::decode(p.dtype, data(c)?);
                    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                        return Err(err(
                            ck,
                            c,
                            format!("element {i} is {} (must be finite)", v[i]),
                        ));
                    }
                }
                mlx::dequantize(
                    p,
                    data(&q.stored)?,
                    data(&q.companions[0])?,
                    data(&q.companions[1])?,
                )
            }
            Scheme::MlxFp(p) => {
                // A non-finite value is refused naming what made it: the scales (E8M0 byte 255
                // is 2^128, E4M3 0x7F NaN; a large scale times a large code overflows bf16) or
                // the weight (an mxfp8 code 0x7F/0xFF, NaN).
                let scales = data(&q.companions[0])?;
                let v = mlx_fp::dequantize(p, data(&q.stored)?, scales);
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    let b = scales[i / p.mode.group_size()];
                    let (row, col) = (i / p.cols, i % p.cols);
                    let (tensor, why) = if v[i].is_nan() && mlx_fp::scale_is_finite(p, b) {
                        (&q.stored, format!("holds a NaN code (E4M3 0x7F/0xFF) at [{row}, {col}] of the logical weight"))
                    } else {
                        (
                            &q.companions[0],
                            format!(
                                "makes element [{row}, {col}] of `{}` {} in bf16 (scale byte {b})",
                                q.stored, v[i]
                            ),
                        )
                    };
                    return Err(err(ck, tensor, why));
                }
                v
            }
            Scheme::Fp8 {
                format,
                scale,
                layout,
                ..
            } => {
                let sv = ck.view(scale)?;
                let s = fp8::scales_f32(sv.dtype, sv.data).expect("checked at scan");
                // A NaN or infinite scale (or a NaN byte of the weight) is refused naming the
                // tensor that holds it, not found later as a non-finite merged value.
                if let Some(i) = s.iter().position(|x| !x.is_finite()) {
                    return Err(err(
                        ck,
                        scale,
                        format!("scale {i} is {} (a scale must be finite)", s[i]),
                    ));
                }
                let bytes = data(&q.name)?;
                let w = fp8::dequantize(*format, bytes, q.shape[1], &s, layout);
                if let Some(i) = w.iter().position(|x| !x.is_finite()) {
                    return Err(err(
                        ck,
                        &q.name,
                        format!(
                            "element {i} (byte {:#04x}) dequantizes to {} in {}",
                            bytes[i],
                            w[i],
                            crate::dtype::name(*format)
                        ),
                    ));
                }
                // The library's product is in the scale's dtype (compressed-tensors `_dequantize`:
                // `x_q.to(scale.dtype) * scale`): a merge adds its delta to those values.
                match q.natural_dtype() {
                    Dtype::F32 => w,
                    d => dtype::decode(d, &dtype::encode(d, &w)),
                }
            }
        })
    }
}

impl QuantMap {
    /// ComfyUI's `scaled_fp8` markers become companions of the first weight with a
    /// `scale_weight`: dropped with the scales when the model is written as float (a float model
    /// that kept the marker would be loaded as scaled FP8 again), copied when kept quantized.
    fn adopt_comfy_markers(&mut self, markers: Vec<String>) {
        let suffix = format!(".{}", fp8::comfy::SCALE);
        let Some(owner) = self
            .tensors
            .values_mut()
            .find(|q| matches!(&q.scheme, Scheme::Fp8 { scale, .. } if scale.ends_with(&suffix)))
        else {
            return;
        };
        for m in markers {
            self.companions.insert(m.clone(), owner.name.clone());
            owner.companions.push(m);
        }
    }
}

#[cfg(test)]
mod tests;
