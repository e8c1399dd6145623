//! The shape of every `inspect` report: [`Report`] (a checkpoint, an adapter or a GGUF model)
//! and the rows it is made of, as `inspect --json` prints them (schema in the README).
//!
//! Plain `Serialize` data, a leaf: the plan fills it ([`super::plan`], [`super::gguf`]), the plot
//! and the binary read it. Must not open files or compute anything.

use crate::adapter::{self, Format};
use serde::Serialize;
use std::collections::BTreeMap;

/// A checkpoint or adapter report.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Report {
    Checkpoint(CheckpointReport),
    Adapter(AdapterReport),
    /// A GGUF model (llama.cpp), one file or a split set.
    Gguf(GgufReport),
}

#[derive(Debug, Serialize)]
pub struct DtypeStats {
    pub tensor_count: usize,
    pub parameters: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct TensorRow {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: u64,
    pub file: String,
}

#[derive(Debug, Serialize)]
pub struct CheckpointReport {
    pub path: String,
    /// `file`, `folder` or `sharded`.
    pub layout: &'static str,
    pub files: Vec<String>,
    pub tensor_count: usize,
    pub parameters: u64,
    pub bytes: u64,
    pub dtypes: BTreeMap<String, DtypeStats>,
    pub metadata: BTreeMap<String, String>,
    /// With `tensors`: every tensor (the list `diff` reports under the same key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorRow>>,
    /// Quantized weights and config.json's `quantization_config`; absent for a float checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantReport>,
}

/// What `inspect` says about a quantized checkpoint (see [`crate::io::quant`]).
#[derive(Debug, Serialize)]
pub struct QuantReport {
    /// config.json `quantization_config`, as written.
    pub config: Option<serde_json::Value>,
    /// Number of companion tensors (scales, code books, states) beside the weights.
    pub companion_tensors: usize,
    pub tensors: Vec<QuantRow>,
    /// Quantized tensors lorakit recognises but does not read (GPTQ/AWQ, …), with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// One quantized weight.
#[derive(Debug, Serialize)]
pub struct QuantRow {
    pub name: String,
    /// `bnb-nf4`, `bnb-fp4`, `bnb-int8`, `fp8-e4m3`, `fp8-e5m2`.
    pub method: String,
    pub bits: u32,
    /// Block or group: `blocksize 64`, `blocksize 64, double-quant 256`, `per row`,
    /// `128x128 blocks`, `per tensor`, `per channel`.
    pub blocks: String,
    /// Logical shape.
    pub shape: Vec<usize>,
    /// The dtype the producer dequantizes to.
    pub dtype: String,
}

#[derive(Debug, Serialize)]
pub struct ModuleRow {
    pub name: String,
    pub kind: String,
    pub rank: usize,
    pub alpha: f64,
    pub scale: f64,
    /// `[out, in]` (`in` includes the kernel area for convolutions).
    pub shape: [usize; 2],
    /// The algorithm (`lora`, `lora-tucker`, `loha`, `lokr`, `full`).
    pub algo: crate::adapter::Algo,
    /// Plain LoRA factor shapes as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a_shape: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b_shape: Option<Vec<usize>>,
    /// Every stored tensor of the module with its shape (all algorithms).
    pub factors: Vec<FactorRow>,
    pub fan_in_fan_out: bool,
    pub dora: bool,
    pub bias: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spectrum: Option<SpectrumRow>,
}

#[derive(Debug, Serialize, Clone)]
pub struct FactorRow {
    pub key: String,
    pub shape: Vec<usize>,
}

#[derive(Debug, Serialize, Clone)]
pub struct SpectrumRow {
    pub singular_values: Vec<f32>,
    pub fro_norm: f64,
    pub rank90: usize,
    pub rank99: usize,
}

#[derive(Debug, Serialize)]
pub struct AdapterReport {
    pub path: String,
    pub format: Format,
    /// Who spelled the names and for which model ([`adapter::convention`]).
    pub convention: adapter::convention::Convention,
    /// A PEFT folder's `peft_type` where it is not LORA (VERA, HRA, LN_TUNING, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peft_type: Option<String>,
    pub base_model: Option<String>,
    pub use_rslora: bool,
    pub dora: bool,
    pub modules: Vec<ModuleRow>,
    pub modules_to_save: Vec<String>,
    pub full_tensors: Vec<String>,
    /// Textual-inversion embeddings bundled in a kohya file (`bundle_emb.…`), which no
    /// operation applies ([`adapter::Adapter::bundled_embeddings`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bundled_embeddings: Vec<String>,
    pub parameters: usize,
    pub bytes: u64,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct GgufReport {
    pub path: String,
    /// `file` or `split`.
    pub layout: &'static str,
    pub files: Vec<String>,
    pub version: u32,
    pub architecture: Option<String>,
    pub alignment: u64,
    pub tensor_count: usize,
    pub parameters: u64,
    pub bytes: u64,
    /// Per ggml type (`Q4_K`, `F32`, …).
    pub dtypes: BTreeMap<String, DtypeStats>,
    /// Every key with its GGUF type and value (long arrays summarised).
    pub metadata: BTreeMap<String, MetadataRow>,
    /// Types lorakit cannot dequantize, if any tensor has one (inspect and copy work; merging
    /// into or diffing those tensors does not).
    pub unsupported_types: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorRow>>,
}

#[derive(Debug, Serialize)]
pub struct MetadataRow {
    /// `UINT32`, `STRING`, `ARRAY`, … (gguf-py's `GGUFValueType` names).
    #[serde(rename = "type")]
    pub ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub element_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub element_count: Option<usize>,
    /// A scalar's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// An array's elements (absent when summarised): one key per JSON kind, so `value` is
    /// never a list in one entry and a number in another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Value>,
}
