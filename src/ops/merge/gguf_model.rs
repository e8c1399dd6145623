//! The data of a GGUF merge: its options, its validated plan and the reports it returns (the
//! types [`super::gguf`] plans and runs, and [`super::gguf_whole`] and [`super::gguf_band`]
//! compute targets of).
//!
//! Must not plan, read or write: it holds what the other `gguf*` files share, so that they
//! depend on it and not on each other.

use super::WeightedAdapter;
use crate::io::gguf::{types, GgmlType, GgufModel};
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

/// The type of each merged tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutType {
    /// The base tensor's own type, requantized with the reference quantizer.
    #[default]
    Keep,
    /// This type (one of [`types::QUANTIZABLE`]).
    To(GgmlType),
}

impl OutType {
    /// `keep` or a writable type name (`f16`, `q8_0`, …).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("keep") {
            return Ok(OutType::Keep);
        }
        match GgmlType::from_name(s) {
            Some(t) if t.can_quantize() => Ok(OutType::To(t)),
            _ => Err(format!(
                "unknown or unwritable GGUF type `{s}`; expected keep or one of {}",
                types::names(types::QUANTIZABLE).to_lowercase()
            )),
        }
    }
}

/// Options of a GGUF merge.
#[derive(Debug, Clone, Default)]
pub struct GgufMergeOptions {
    pub outtype: OutType,
    /// Split the output into parts of at most this many bytes of tensor data (gguf-py's
    /// `split_max_size` rule and `-0000I-of-0000N.gguf` names, `split.*` keys in every part).
    pub max_shard_size: Option<u64>,
    pub unmerge: bool,
    pub allow_unmatched: bool,
    /// Write only this part's files and a manifest (see [`super::gguf_parts`]).
    pub part: Option<(usize, usize)>,
    /// Show a progress bar (bytes of the files this run writes) on stderr.
    pub progress: crate::progress::Reporter,
    /// An `lm_head` LoRA on a tied base (no `output.weight`: llama.cpp computes the logits
    /// with `token_embd`): refused, or merged into `token_embd.weight` with `Shared`.
    pub tied_embeddings: super::TiedEmbeddings,
}

/// One merged tensor and the modules merged into it.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) tensor: String,
    /// `(adapter index, module index)` in order (for [`Kind::Replace`], `(adapter, full
    /// tensor index)`).
    pub(super) terms: Vec<(usize, usize)>,
    /// Heads of the q/k permutation, if any.
    pub(super) permute: Option<usize>,
    pub(super) out_type: GgmlType,
    pub(super) kind: Kind,
}

/// What a target's new values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `W0 + Σ terms` (LoRA, dense, DoRA), in row bands or fused row chunks (`GgufMergePlan::merged_stored`, [`super::gguf_band`]).
    Weight,
    /// The base bias plus `scale·lora_B.bias` of each term ([`super::gguf_whole`]).
    Bias,
    /// The adapter's full tensor (`modules_to_save`) in place of the base's.
    Replace,
}

/// A validated GGUF merge: nothing is written until [`GgufMergePlan::run`].
#[derive(Debug)]
pub struct GgufMergePlan {
    pub(super) base_path: PathBuf,
    pub(super) base: GgufModel,
    pub(super) adapters: Vec<WeightedAdapter>,
    pub(super) out: PathBuf,
    pub(super) options: GgufMergeOptions,
    pub(super) targets: Vec<Target>,
    /// Adapter modules that found no tensor (only with `allow_unmatched`), as the
    /// safetensors merge reports them.
    pub unmatched: Vec<super::UnmatchedReport>,
    /// Every file read (base parts, adapter files), for the part manifest.
    pub(super) inputs: Vec<PathBuf>,
}

/// Per merged tensor: its stored type and the error of storing it against the f32 merge.
#[derive(Debug, Clone, Serialize)]
pub struct MergedTensor {
    pub name: String,
    pub modules: Vec<String>,
    pub base_type: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// The `--outtype` llama-quantize's fallback replaced (rows not whole blocks of it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_from: Option<String>,
    /// `‖Q(W) − W‖_F / ‖W‖_F` with `W` the f32 merge and `Q(W)` the stored tensor dequantized.
    pub quant_rel_fro_error: f64,
    pub quant_max_abs_error: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GgufMergeReport {
    /// The safetensors merge report's fields, with their meaning (`adapters[]` counts the
    /// modules, full tensors and biases merged into some tensor of the whole plan).
    #[serde(flatten)]
    pub run: super::MergeRun,
    pub architecture: String,
    pub outtype: String,
    pub merged_tensors: Vec<MergedTensor>,
}

/// What a GGUF merge would write (`merge --dry-run`): nothing is written.
#[derive(Debug, Clone, Serialize)]
pub struct GgufDryRun {
    pub operation: &'static str,
    pub dry_run: bool,
    pub base: String,
    pub out: String,
    pub files: Vec<GgufDryRunFile>,
    pub architecture: String,
    pub outtype: String,
    pub tensors_merged_count: usize,
    pub tensors_copied_count: usize,
    /// `[tensor, base type, stored type]` of every tensor to merge.
    pub merged_tensors: Vec<[String; 3]>,
    pub unmatched: Vec<super::UnmatchedReport>,
    /// Tensor bytes of the whole output.
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GgufDryRunFile {
    pub path: String,
    pub tensor_count: usize,
    pub bytes: u64,
}

/// Whole-tensor buffers reused from one merged tensor to the next.
#[derive(Default)]
pub(super) struct Scratch {
    /// One row band of the base tensor dequantized (the GPU's band is the whole tensor).
    pub(super) w0: Vec<f32>,
}
