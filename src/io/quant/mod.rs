//! Quantized weights inside a safetensors checkpoint: recognising them (and the companion
//! tensors that hold their scales), validating every companion against the packing before use,
//! and dequantizing one weight at a time from the memory map.
//!
//! One file per producer format: [`bnb4`] (bitsandbytes NF4/FP4, with and without double
//! quantization), [`int8`] (bitsandbytes LLM.int8), [`fp8`] (F8_E4M3/F8_E5M2 with per-tensor,
//! per-channel or block scales, F32/BF16/F16/E8M0), [`packed`] (compressed-tensors
//! pack-quantized INT1–8). A [`QuantMap`] is built from the headers alone
//! ([`QuantMap::scan`]); it reads no tensor data except small state tensors (bitsandbytes'
//! quant_state JSON, compressed-tensors' `weight_shape`, the stored code book it checks).
//!
//! What it must never do: guess. A companion without its weight, a weight without its scales, a
//! shape that does not match the packing, a quant_state that contradicts the tensors: each is a
//! one-line error naming the file and the tensor. Formats it recognises but does not read
//! (native GPTQ/AWQ `qweight`, MX/FNUZ dtypes, an unknown `quant_method`) are listed in
//! [`QuantMap::unsupported`] and refused by whatever must dequantize them.

pub mod bnb4;
pub mod fp8;
pub mod int8;
pub mod packed;

use crate::dtype::{self, Dtype};
use crate::error::{InputError, InputResult};
use crate::io::Checkpoint;
use std::collections::{BTreeMap, HashMap};

/// Serializes a dtype with its header spelling.
pub(crate) fn ser_dtype<S: serde::Serializer>(d: &Dtype, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&dtype::name(*d))
}

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
    /// FP8 values with scales.
    Fp8 {
        #[serde(serialize_with = "ser_dtype")]
        format: Dtype,
        scale: String,
        #[serde(serialize_with = "ser_dtype")]
        scale_dtype: Dtype,
        layout: fp8::Layout,
    },
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
    /// Short method name: `bnb-nf4`, `bnb-fp4`, `bnb-int8`, `fp8-e4m3`, `fp8-e5m2`.
    pub fn method(&self) -> String {
        match &self.scheme {
            Scheme::Bnb4(p) => format!("bnb-{}", p.kind.name()),
            Scheme::BnbInt8 => "bnb-int8".into(),
            Scheme::Packed(p) => format!("ct-int{}", p.bits),
            Scheme::Fp8 { format, .. } => match format {
                Dtype::F8_E5M2 => "fp8-e5m2".into(),
                _ => "fp8-e4m3".into(),
            },
        }
    }

    pub fn bits(&self) -> u32 {
        match &self.scheme {
            Scheme::Bnb4(_) => 4,
            Scheme::Packed(p) => p.bits,
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
            Scheme::Packed(p) => {
                let kind = if p.per_tensor {
                    "per tensor".to_string()
                } else if p.groups == 1 {
                    "per channel".to_string()
                } else {
                    format!("group {}", p.group_size())
                };
                format!(
                    "{kind}, {}",
                    if p.symmetric {
                        "symmetric"
                    } else {
                        "asymmetric"
                    }
                )
            }
            Scheme::Fp8 { layout, .. } => {
                layout.describe(self.shape[0], self.shape.get(1).copied().unwrap_or(1))
            }
        }
    }

    /// The dtype the producing library dequantizes to.
    pub fn natural_dtype(&self) -> Dtype {
        match &self.scheme {
            Scheme::Bnb4(p) => p.dtype,
            Scheme::BnbInt8 => Dtype::F32,
            Scheme::Packed(p) => p.scale_dtype,
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
    /// Quantized tensors lorakit recognises but cannot read (GPTQ/AWQ, MX formats, an unknown
    /// `quant_method`): listed by `inspect`, copied as they are by a merge that keeps the base
    /// quantized, an error for anything that must dequantize them.
    pub unsupported: Vec<InputError>,
}

const BNB4_SUFFIXES: [&str; 4] = ["absmax", "quant_map", "nested_absmax", "nested_quant_map"];

fn err(ck: &Checkpoint, tensor: &str, msg: impl std::fmt::Display) -> InputError {
    let path = ck
        .file_of(tensor)
        .map(|f| f.path().to_path_buf())
        .unwrap_or_else(|| ck.root.clone());
    InputError::invalid(path, format!("tensor `{tensor}`: {msg}"))
}

impl QuantMap {
    /// Reads `quantization_config` from the checkpoint's config.json (if any) and recognises every
    /// quantized weight from the headers. Errors on anything incomplete or inconsistent.
    pub fn scan(ck: &Checkpoint) -> InputResult<QuantMap> {
        let config = read_quant_config(ck)?;
        let mut map = QuantMap {
            config,
            ..QuantMap::default()
        };
        let config_block = map.config_block();
        let names: Vec<String> = ck.names().map(str::to_owned).collect();
        // FP8 weights are scaled ones when the config says so or when the checkpoint has FP8
        // scales at all: then a weight without its scale is an error, not a plain FP8 tensor.
        let fp8_scaled = matches!(
            map.method().as_deref(),
            Some("fp8" | "fbgemm_fp8" | "compressed-tensors")
        ) || names
            .iter()
            .any(|n| n.ends_with(".weight_scale_inv") || n.ends_with(".weight_scale"));
        let has_fp8_scale = |w: &str| {
            let p = w.strip_suffix(".weight").unwrap_or(w);
            ck.contains(&format!("{p}.weight_scale_inv"))
                || ck.contains(&format!("{p}.weight_scale"))
                || ck.contains(&format!("{w}_scale_inv"))
        };
        for name in &names {
            if let Some(pos) = name.find(".quant_state.") {
                map.add_bnb4(ck, &name[..pos], name)?;
            }
        }
        for name in &names {
            let info = ck.info(name).expect("listed");
            if let Some(p) = name.strip_suffix(".SCB") {
                map.add_int8(ck, p, name)?;
            } else if matches!(info.dtype, Dtype::F8_E4M3 | Dtype::F8_E5M2) {
                if fp8_scaled || has_fp8_scale(name) {
                    map.add_fp8(ck, name, config_block)?;
                }
                // Otherwise a plain FP8 tensor (a ComfyUI-style cast with no scales at all):
                // not a scaled quantization, copied as it is.
            } else if matches!(
                info.dtype,
                Dtype::F8_E4M3FNUZ
                    | Dtype::F8_E5M2FNUZ
                    | Dtype::F4
                    | Dtype::F6_E2M3
                    | Dtype::F6_E3M2
            ) {
                map.unsupported.push(err(
                    ck,
                    name,
                    format!(
                        "dtype {} is a quantized format lorakit does not read",
                        dtype::name(info.dtype)
                    ),
                ));
            } else if let Some(p) = name.strip_suffix(".weight_packed") {
                map.add_packed(ck, p, name)?;
            } else if name.ends_with(".qweight") {
                map.unsupported.push(err(
                    ck,
                    name,
                    "GPTQ/AWQ packed integer weights (`qweight`, `qzeros`, `scales`) are not read yet",
                ));
            }
        }
        // Companions whose weight was not recognised: a scale without its quantized weight.
        for name in &names {
            if map.companions.contains_key(name) || map.tensors.contains_key(name) {
                continue;
            }
            for suffix in BNB4_SUFFIXES {
                if let Some(w) = name.strip_suffix(&format!(".{suffix}")) {
                    if w.ends_with("weight") && ck.contains(w) {
                        return Err(err(
                            ck,
                            name,
                            format!("is a bitsandbytes `{suffix}` but `{w}` has no `{w}.quant_state.bitsandbytes__nf4|fp4`"),
                        ));
                    }
                }
            }
            if name.ends_with(".weight_scale_inv") || name.ends_with(".weight_scale") {
                return Err(err(
                    ck,
                    name,
                    "is an FP8 scale but its weight is missing or not F8_E4M3/F8_E5M2",
                ));
            }
        }
        // A bitsandbytes checkpoint whose packed weight lost its state.
        if map.method().as_deref() == Some("bitsandbytes") {
            for name in &names {
                let info = ck.info(name).expect("listed");
                if name.ends_with("weight")
                    && matches!(info.dtype, Dtype::U8 | Dtype::I8)
                    && !map.tensors.contains_key(name)
                    && !map.companions.contains_key(name)
                {
                    return Err(err(
                        ck,
                        name,
                        format!(
                            "is {} in a bitsandbytes checkpoint but has no quantization state (`.quant_state.bitsandbytes__nf4|fp4` and `.absmax`, or `SCB`)",
                            dtype::name(info.dtype)
                        ),
                    ));
                }
            }
        }
        if map.tensors.is_empty() {
            if let Some(m) = map.method() {
                if matches!(
                    m.as_str(),
                    "bitsandbytes" | "fp8" | "fbgemm_fp8" | "compressed-tensors"
                ) {
                    // A config that says quantized over float weights: nothing to dequantize.
                } else {
                    map.unsupported.push(InputError::invalid(
                        ck.folder().join("config.json"),
                        format!("quantization_config.quant_method `{m}` is not one lorakit reads (bitsandbytes, fp8)"),
                    ));
                }
            }
        }
        Ok(map)
    }

    /// `quantization_config.quant_method`.
    pub fn method(&self) -> Option<String> {
        self.config
            .as_ref()?
            .get("quant_method")?
            .as_str()
            .map(str::to_owned)
    }

    /// `quantization_config.weight_block_size` (FP8), when it is a pair of sizes.
    fn config_block(&self) -> Option<(usize, usize)> {
        let b = self.config.as_ref()?.get("weight_block_size")?.as_array()?;
        match b.as_slice() {
            [m, n] => Some((m.as_u64()? as usize, n.as_u64()? as usize)),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
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

    /// The name a stored tensor is written under once dequantized (`P.weight_packed` →
    /// `P.weight`); every other name unchanged.
    pub fn logical_name<'a>(&'a self, stored: &'a str) -> &'a str {
        self.stored
            .get(stored)
            .map(String::as_str)
            .unwrap_or(stored)
    }

    fn add_packed(&mut self, ck: &Checkpoint, prefix: &str, packed_name: &str) -> InputResult<()> {
        let weight = format!("{prefix}.weight");
        let pk = ck.info(packed_name).expect("listed");
        let need = |suffix: &str| {
            let n = format!("{prefix}.{suffix}");
            ck.info(&n).cloned().ok_or_else(|| {
                err(
                    ck,
                    packed_name,
                    format!("compressed-tensors packed weight without `{n}`"),
                )
            })
        };
        let shape_info = need("weight_shape")?;
        let scale = need("weight_scale")?;
        if pk.dtype != Dtype::I32 || pk.shape.len() != 2 {
            return Err(err(
                ck,
                packed_name,
                format!(
                    "is {} {:?}, not a 2-D I32 matrix",
                    dtype::name(pk.dtype),
                    pk.shape
                ),
            ));
        }
        let sv = ck.view(&shape_info.name)?;
        let dims: Vec<i64> = match sv.dtype {
            Dtype::I64 => sv
                .data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                .collect(),
            Dtype::I32 => sv
                .data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
                .collect(),
            _ => Vec::new(),
        };
        let (rows, cols) = match dims.as_slice() {
            [r, c]
                if *r > 0
                    && *c > 0
                    && (*r as u64)
                        .checked_mul(*c as u64)
                        .is_some_and(|n| n < 1 << 40) =>
            {
                (*r as usize, *c as usize)
            }
            _ => {
                return Err(err(
                    ck,
                    &shape_info.name,
                    format!(
                        "is not two positive sizes (got {dims:?} as {})",
                        dtype::name(sv.dtype)
                    ),
                ))
            }
        };
        if pk.shape[0] != rows {
            return Err(err(
                ck,
                packed_name,
                format!("has {} rows but weight_shape says {rows}", pk.shape[0]),
            ));
        }
        let bits = packed::infer_bits(cols, pk.shape[1]).ok_or_else(|| {
            err(
                ck,
                packed_name,
                format!(
                    "{} words per row do not pack {cols} elements at any width of 1..8 bits (or at more than one)",
                    pk.shape[1]
                ),
            )
        })?;
        if !dtype::is_float_compute(scale.dtype) || scale.dtype == Dtype::F64 {
            return Err(err(
                ck,
                &scale.name,
                format!(
                    "scale dtype {} is not F32, F16 or BF16",
                    dtype::name(scale.dtype)
                ),
            ));
        }
        let (per_tensor, groups) = match scale.shape.as_slice() {
            [] | [1] => (true, 1),
            [r, g] if *r == rows && *g >= 1 && cols.is_multiple_of(*g) => (false, *g),
            s => {
                return Err(err(
                    ck,
                    &scale.name,
                    format!("shape {s:?} is not [1], [{rows}, 1] or [{rows}, groups] with groups dividing {cols}"),
                ))
            }
        };
        let zp_name = format!("{prefix}.weight_zero_point");
        let symmetric = !ck.contains(&zp_name);
        let mut companions = vec![shape_info.name.clone(), scale.name.clone()];
        if !symmetric {
            let z = ck.info(&zp_name).expect("present");
            let want = [packed::words(rows, bits), groups];
            if per_tensor || z.dtype != Dtype::I32 || z.shape != want {
                return Err(err(
                    ck,
                    &zp_name,
                    format!(
                        "is {} {:?}; a packed zero point of {bits}-bit {rows}x{cols} in {groups} group(s) is I32 {want:?}",
                        dtype::name(z.dtype),
                        z.shape
                    ),
                ));
            }
            companions.push(zp_name);
        }
        self.insert(
            ck,
            QuantTensor {
                name: weight,
                stored: packed_name.to_owned(),
                shape: vec![rows, cols],
                scheme: Scheme::Packed(packed::Params {
                    bits,
                    rows,
                    cols,
                    groups,
                    per_tensor,
                    symmetric,
                    scale_dtype: scale.dtype,
                }),
                companions,
            },
        )
    }

    fn add_bnb4(&mut self, ck: &Checkpoint, weight: &str, state: &str) -> InputResult<()> {
        let kind_str = state
            .rsplit_once(".quant_state.")
            .map(|(_, k)| k)
            .unwrap_or_default();
        let kind = kind_str
            .strip_prefix("bitsandbytes__")
            .and_then(bnb4::Kind::parse)
            .ok_or_else(|| {
                err(
                    ck,
                    state,
                    format!("unknown bitsandbytes quant_state `{kind_str}` (lorakit reads bitsandbytes__nf4 and bitsandbytes__fp4)"),
                )
            })?;
        let winfo = ck.info(weight).ok_or_else(|| {
            err(
                ck,
                state,
                format!("quant_state without its weight `{weight}`"),
            )
        })?;
        let blob = ck.view(state)?;
        if blob.dtype != Dtype::U8 || blob.data.len() > 1 << 16 {
            return Err(err(ck, state, "quant_state is not a small U8 JSON blob"));
        }
        let p = bnb4::parse_quant_state(blob.data, kind).map_err(|m| err(ck, state, m))?;
        let n = p.numel();
        if winfo.byte_len() != n.div_ceil(2) as u64 {
            return Err(err(
                ck,
                weight,
                format!(
                    "holds {} bytes but its quant_state shape {:?} ({n} elements) packs into {}",
                    winfo.byte_len(),
                    p.shape,
                    n.div_ceil(2)
                ),
            ));
        }
        let need = |suffix: &str| -> InputResult<&crate::io::header::TensorInfo> {
            let c = format!("{weight}.{suffix}");
            ck.info(&c).ok_or_else(|| {
                err(
                    ck,
                    weight,
                    format!("bitsandbytes 4-bit weight without `{c}`"),
                )
            })
        };
        let check = |suffix: &str, d: Dtype, count: usize| -> InputResult<()> {
            let i = need(suffix)?;
            if i.dtype != d || i.numel() != count {
                return Err(err(
                    ck,
                    &i.name,
                    format!(
                        "is {} {:?} but the quant_state needs {} with {count} elements",
                        dtype::name(i.dtype),
                        i.shape,
                        dtype::name(d)
                    ),
                ));
            }
            Ok(())
        };
        let blocks = p.blocks();
        let mut companions = vec![
            state.to_owned(),
            format!("{weight}.absmax"),
            format!("{weight}.quant_map"),
        ];
        check("quant_map", Dtype::F32, 16)?;
        match &p.nested {
            None => {
                check("absmax", Dtype::F32, blocks)?;
                for s in ["nested_absmax", "nested_quant_map"] {
                    if ck.contains(&format!("{weight}.{s}")) {
                        return Err(err(
                            ck,
                            weight,
                            format!("has `{s}` but its quant_state has no double quantization"),
                        ));
                    }
                }
            }
            Some(nq) => {
                check("absmax", Dtype::U8, blocks)?;
                check("nested_absmax", Dtype::F32, blocks.div_ceil(nq.blocksize))?;
                check("nested_quant_map", Dtype::F32, 256)?;
                companions.push(format!("{weight}.nested_absmax"));
                companions.push(format!("{weight}.nested_quant_map"));
            }
        }
        // The stored code book must be the one bitsandbytes dequantizes with (its kernels use
        // their own table, not the stored one): a different one means the state lies.
        let qm = dtype::decode(Dtype::F32, ck.view(&format!("{weight}.quant_map"))?.data);
        let code = p.kind.code();
        if qm.iter().zip(code).any(|(a, b)| a.to_bits() != b.to_bits()) {
            return Err(err(
                ck,
                &format!("{weight}.quant_map"),
                format!("is not bitsandbytes' {} code book", p.kind.name()),
            ));
        }
        let shape = p.shape.clone();
        self.insert(
            ck,
            QuantTensor {
                name: weight.to_owned(),
                stored: weight.to_owned(),
                shape,
                scheme: Scheme::Bnb4(p),
                companions,
            },
        )
    }

    fn add_int8(&mut self, ck: &Checkpoint, prefix: &str, scb: &str) -> InputResult<()> {
        let weight = format!("{prefix}.weight");
        let w = ck.info(&weight).ok_or_else(|| {
            err(
                ck,
                scb,
                format!("bitsandbytes int8 scale without its weight `{weight}`"),
            )
        })?;
        let s = ck.info(scb).expect("listed");
        if w.dtype != Dtype::I8 || w.shape.len() != 2 {
            return Err(err(
                ck,
                &weight,
                format!(
                    "has an `SCB` scale but is {} {:?}, not a 2-D I8 matrix",
                    dtype::name(w.dtype),
                    w.shape
                ),
            ));
        }
        if s.dtype != Dtype::F32 || s.numel() != w.shape[0] {
            return Err(err(
                ck,
                scb,
                format!(
                    "is {} {:?} but `{weight}` has {} rows (one F32 per row needed)",
                    dtype::name(s.dtype),
                    s.shape,
                    w.shape[0]
                ),
            ));
        }
        let mut companions = vec![scb.to_owned()];
        let fmt = format!("{prefix}.weight_format");
        if ck.contains(&fmt) {
            let v = ck.view(&fmt)?;
            if v.data.iter().any(|&b| b != 0) {
                return Err(err(
                    ck,
                    &fmt,
                    "is not 0 (row-major): lorakit reads row-major int8 weights only",
                ));
            }
            companions.push(fmt);
        }
        let shape = w.shape.clone();
        self.insert(
            ck,
            QuantTensor {
                stored: weight.clone(),
                name: weight,
                shape,
                scheme: Scheme::BnbInt8,
                companions,
            },
        )
    }

    fn add_fp8(
        &mut self,
        ck: &Checkpoint,
        weight: &str,
        config_block: Option<(usize, usize)>,
    ) -> InputResult<()> {
        let w = ck.info(weight).expect("listed");
        let prefix = weight.strip_suffix(".weight").unwrap_or(weight);
        // transformers names the scale `P.weight_scale_inv` for `P.weight`, `X_scale_inv` for
        // any other `X` (`Fp8Quantize._quantize_one`).
        let mut candidates = vec![
            format!("{prefix}.weight_scale_inv"),
            format!("{prefix}.weight_scale"),
        ];
        if !weight.ends_with(".weight") {
            candidates.push(format!("{weight}_scale_inv"));
        }
        let present: Vec<&String> = candidates.iter().filter(|c| ck.contains(c)).collect();
        let scale = match present.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(err(
                    ck,
                    weight,
                    format!(
                        "is {} without a `{prefix}.weight_scale_inv` or `{prefix}.weight_scale`",
                        dtype::name(w.dtype)
                    ),
                ))
            }
            _ => {
                return Err(err(
                    ck,
                    weight,
                    "has both `weight_scale_inv` and `weight_scale`",
                ))
            }
        };
        if w.shape.len() != 2 {
            return Err(err(
                ck,
                weight,
                format!(
                    "FP8 weight of shape {:?}: lorakit reads 2-D FP8 weights only",
                    w.shape
                ),
            ));
        }
        let s = ck.info(&scale).expect("present");
        if fp8::scales_f32(s.dtype, &[]).is_none() {
            return Err(err(
                ck,
                &scale,
                format!(
                    "scale dtype {} is not a float or E8M0",
                    dtype::name(s.dtype)
                ),
            ));
        }
        let layout = fp8::layout(w.shape[0], w.shape[1], &s.shape, config_block)
            .map_err(|m| err(ck, &scale, m))?;
        let mut companions = vec![scale.clone()];
        for extra in ["input_scale", "activation_scale"] {
            let c = format!("{prefix}.{extra}");
            if ck.contains(&c) {
                companions.push(c);
            }
        }
        let shape = w.shape.clone();
        self.insert(
            ck,
            QuantTensor {
                name: weight.to_owned(),
                stored: weight.to_owned(),
                shape,
                scheme: Scheme::Fp8 {
                    format: w.dtype,
                    scale,
                    scale_dtype: s.dtype,
                    layout,
                },
                companions,
            },
        )
    }

    /// Dequantizes one weight to f32 (round to [`QuantTensor::natural_dtype`] or the requested
    /// dtype once when storing). Reads only this weight's bytes and its companions from the map.
    pub fn dequantize(&self, ck: &Checkpoint, q: &QuantTensor) -> InputResult<Vec<f32>> {
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
                    false => Some(data(&q.companions[2])?),
                };
                packed::dequantize(p, data(&q.stored)?, data(&q.companions[1])?, zero)
            }
            Scheme::Fp8 {
                format,
                scale,
                layout,
                ..
            } => {
                let sv = ck.view(scale)?;
                let s = fp8::scales_f32(sv.dtype, sv.data).expect("checked at scan");
                fp8::dequantize(*format, data(&q.name)?, q.shape[1], &s, layout)
            }
        })
    }
}

impl QuantMap {
    /// Why lorakit cannot write `q` back in its own format bit-exactly, if it cannot.
    pub fn requantize_unsupported(&self, q: &QuantTensor) -> Option<String> {
        match &q.scheme {
            Scheme::Bnb4(p) if p.nested.is_some() => Some(
                "bitsandbytes double quantization (its absmax offset is a torch mean lorakit does not reproduce bit for bit)".into(),
            ),
            Scheme::Bnb4(_) => None,
            Scheme::BnbInt8 => Some("bitsandbytes int8 (quantized from float16 by bitsandbytes)".into()),
            Scheme::Packed(_) => Some("compressed-tensors pack-quantized (its scales come from calibration)".into()),
            Scheme::Fp8 {
                format,
                scale,
                scale_dtype,
                layout,
            } => {
                let (rows, cols) = (q.shape[0], q.shape[1]);
                if *format != Dtype::F8_E4M3
                    || *scale_dtype != Dtype::F32
                    || !scale.ends_with("_scale_inv")
                    || !rows.is_multiple_of(layout.block_m)
                    || !cols.is_multiple_of(layout.block_n)
                {
                    Some("FP8 other than E4M3 with F32 weight_scale_inv blocks that divide the weight (transformers' Fp8Quantize)".into())
                } else {
                    None
                }
            }
        }
    }

    /// `merged` (f32, the logical shape) quantized again as `q` was, with fresh scales as its
    /// producer computes them: the tensors that change, as (name, stored bytes). Code books and
    /// quant_state blobs do not change and are not returned.
    pub fn requantize(
        &self,
        q: &QuantTensor,
        merged: &[f32],
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        if let Some(why) = self.requantize_unsupported(q) {
            return Err(format!("cannot requantize {why}"));
        }
        Ok(match &q.scheme {
            Scheme::Bnb4(p) => {
                // PEFT's bnb merge quantizes the merged weight in the quant_state dtype
                // (`Params4bit(w_data, …)` with w_data = dequantized weight + delta).
                let values = dtype::decode(p.dtype, &dtype::encode(p.dtype, merged));
                let (packed, absmax) = bnb4::quantize(p.kind, p.blocksize, &values);
                vec![
                    (q.name.clone(), packed),
                    (
                        format!("{}.absmax", q.name),
                        dtype::encode(Dtype::F32, &absmax),
                    ),
                ]
            }
            Scheme::Fp8 { scale, layout, .. } => {
                let (bytes, inv) = fp8::quantize(
                    merged,
                    q.shape[0],
                    q.shape[1],
                    layout.block_m,
                    layout.block_n,
                );
                vec![
                    (q.name.clone(), bytes),
                    (scale.clone(), dtype::encode(Dtype::F32, &inv)),
                ]
            }
            Scheme::BnbInt8 | Scheme::Packed(_) => unreachable!("refused above"),
        })
    }
}

/// `quantization_config` of the config.json next to the weights, if there is one.
fn read_quant_config(ck: &Checkpoint) -> InputResult<Option<serde_json::Value>> {
    let path = ck.folder().join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    // Not this module's business either: a config.json that cannot be read (a FIFO, over the
    // size limit) is reported by the readers that need it.
    let Ok(text) = crate::io::read_json_file(&path) else {
        return Ok(None);
    };
    let v: serde_json::Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        // Not this module's business: other readers of config.json report a broken one.
        Err(_) => return Ok(None),
    };
    Ok(v.get("quantization_config").cloned())
}

#[cfg(test)]
mod tests;
