//! A Hugging Face safetensors base merged with adapters and written as a llama.cpp GGUF model
//! (`merge --base HF_FOLDER --out merged.gguf --outtype TYPE`): what `convert_hf_to_gguf.py`
//! (and `llama-quantize --pure` for the types the converter does not write) make of the merged
//! model.
//!
//! The merge itself is the safetensors merge's ([`MergePlan::merged_f32`]: every module,
//! weight and rule as for a safetensors output, in f32). The layout is the converter's, read
//! from the llama.cpp tree vendored by llama-cpp-python 0.3.36: tensors in the order it reads
//! them (shards by file name, names sorted within each: `safe_open(…).keys()`), named by
//! gguf-py's tensor map ([`crate::io::gguf::names`]), q/k rows (and biases) permuted by
//! `LlamaModel.permute` (`conversion/llama.py`), `.attention.masked_bias`,
//! `.attention.bias` and `.rotary_emb.inv_freq` dropped; types as `ModelBase.prepare_tensors`
//! (`conversion/base.py`) sets them: 1-D tensors, `*_norm.weight` and anything not named
//! `.weight` in F32, every other tensor in `--outtype`, falling back to F16 where the row
//! length is not a whole number of blocks (gguf-py's `QuantError`); for the K-quants, which only
//! llama-quantize writes, such rows are refused instead (llama-quantize picks other fallback
//! types). Values are quantized with gguf-py's / ggml's reference quantizers
//! ([`crate::io::gguf::quant`]). Metadata: [`crate::io::gguf::hparams`] then
//! [`crate::io::gguf::vocab`], then lorakit's provenance (`lorakit.*`, not in the converter's
//! output).
//!
//! Refused at planning: architectures other than Llama/Mistral, tokenizers other than
//! SentencePiece `tokenizer.model` and the Llama BPE tokenizer.json, quantized safetensors bases, tensors outside the name map, `--part` and
//! `--max-shard-size` (one file is written). Must not write anything but the one output file.

use super::MergePlan;
use crate::backend::Engine;
use crate::error::{InputError, Opt};
use crate::io::gguf::writer::{kv_string, GgufWriter, OutTensor};
use crate::io::gguf::{hparams, names, quant, vocab, GgmlType};
use crate::io::writer::{check_writes, LockMode};
use crate::io::Output;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

/// One output tensor: its Hugging Face name and how it is stored.
#[derive(Debug, Clone)]
struct Planned {
    hf: String,
    out: OutTensor,
    /// Heads of the q/k permutation.
    permute: Option<usize>,
    rows: usize,
    cols: usize,
}

/// A validated HF → GGUF merge.
#[derive(Debug)]
pub struct HfGgufPlan {
    merge: MergePlan,
    out: PathBuf,
    outtype: GgmlType,
    tensors: Vec<Planned>,
    entries: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HfGgufTensor {
    pub name: String,
    pub hf_name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub merged: bool,
}

/// What an HF → GGUF merge wrote.
#[derive(Debug, Clone, Serialize)]
pub struct HfGgufReport {
    pub operation: &'static str,
    pub base: String,
    pub out: String,
    pub architecture: String,
    pub outtype: String,
    pub adapters: Vec<serde_json::Value>,
    pub tensors_merged_count: usize,
    pub tensors: Vec<HfGgufTensor>,
    pub bytes_written: u64,
    pub seconds: f64,
}

/// Suffixes `ModelBase.prepare_tensors` drops ("we don't need these").
const DROPPED: &[&str] = &[
    ".attention.masked_bias",
    ".attention.bias",
    ".rotary_emb.inv_freq",
];

impl HfGgufPlan {
    /// Plans writing `merge` (a merge of a safetensors base, planned as usual) as the GGUF
    /// model `out` with `outtype` weights.
    pub fn new(merge: MergePlan, out: PathBuf, outtype: GgmlType) -> Result<Self> {
        let dir = merge.base.folder().to_path_buf();
        let root = merge.base.root.clone();
        if let Some(q) = merge.quant.iter().next().map(|q| q.stored.clone()) {
            return Err(InputError::invalid(
                &root,
                format!("tensor `{q}` is quantized: lorakit writes GGUF models from float safetensors bases only"),
            )
            .into());
        }
        if merge.options.part.is_some() || merge.options.max_shard_size.is_some() {
            return Err(InputError::option(&out, |o| {
                format!(
                    "{} and {} are not supported for a GGUF model written from a safetensors base (one file is written)",
                    o.opt(Opt::Part),
                    o.opt(Opt::MaxShardSize)
                )
            })
            .into());
        }
        if hparams::file_type(outtype).is_none() || !outtype.can_quantize() {
            return Err(InputError::option(&out, move |o| {
                format!(
                    "{} {outtype}: not a type lorakit writes GGUF models in",
                    o.opt(Opt::Outtype)
                )
            })
            .into());
        }
        let config_path = dir.join("config.json");
        let config: serde_json::Value =
            serde_json::from_slice(&crate::io::read_json_file(&config_path)?)
                .map_err(|e| InputError::invalid(&config_path, format!("not JSON: {e}")))?;
        let arch = hparams::architecture(&config, &config_path)?;
        let permutes = names::permutes(arch).unwrap_or(false);
        let head = |k: &str| config[k].as_u64().map(|v| v as usize);
        let n_head = head("num_attention_heads");
        // LlamaModel.permute: k with n_head_kv when it differs from n_head.
        let n_head_kv = head("num_key_value_heads").or(n_head);
        // The converter's order: shards by file name, names sorted within each.
        let mut shards: Vec<&crate::io::SafetensorsFile> = merge.base.shards.iter().collect();
        shards.sort_by(|a, b| a.path().file_name().cmp(&b.path().file_name()));
        let mut tensors = Vec::new();
        for f in shards {
            let mut ns: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
            ns.sort_unstable();
            for hf in ns {
                if DROPPED.iter().any(|s| hf.ends_with(s)) {
                    continue;
                }
                let info = merge.base.info(hf).expect("listed");
                let (stem, suffix) = hf.rsplit_once('.').unwrap_or((hf, ""));
                let mapped =
                    names::gguf_module(stem).filter(|_| suffix == "weight" || suffix == "bias");
                let Some((g, rope)) = mapped else {
                    return Err(InputError::invalid(
                        f.path(),
                        format!(
                            "tensor `{hf}` has no GGUF name in llama.cpp's tensor map for `{arch}`"
                        ),
                    )
                    .into());
                };
                let name = format!("{g}.{suffix}");
                let shape = info.shape.clone();
                let rows = shape.first().copied().unwrap_or(1);
                let cols = shape.iter().skip(1).product::<usize>();
                let permute = match (permutes, rope) {
                    (true, names::Rope::Q) => n_head,
                    (true, names::Rope::K) => n_head_kv,
                    _ => None,
                };
                if let Some(h) = permute {
                    if !names::permutable(rows, h) {
                        return Err(InputError::invalid(
                            f.path(),
                            format!("tensor `{hf}`: {rows} rows cannot be split into {h} heads of two halves as llama.cpp permutes q/k"),
                        )
                        .into());
                    }
                }
                if (rope != names::Rope::None) && permutes && permute.is_none() {
                    return Err(InputError::invalid(&config_path, "`num_attention_heads` is missing; it is needed to permute q/k as llama.cpp's converter does").into());
                }
                let ty = if shape.len() <= 1 || name.ends_with("_norm.weight") || suffix != "weight"
                {
                    GgmlType::F32
                } else if shape
                    .last()
                    .is_some_and(|&n| !n.is_multiple_of(outtype.block_size()))
                {
                    if outtype.block_size() == 256 {
                        return Err(InputError::invalid(
                            f.path(),
                            format!(
                                "tensor `{hf}`: rows of {} values are not whole {outtype} blocks of 256; llama-quantize would pick another type for it, lorakit refuses",
                                shape.last().unwrap_or(&0)
                            ),
                        )
                        .into());
                    }
                    GgmlType::F16
                } else {
                    outtype
                };
                tensors.push(Planned {
                    hf: hf.to_owned(),
                    out: OutTensor {
                        name,
                        dims: shape.iter().rev().map(|&d| d as u64).collect(),
                        ty,
                    },
                    permute,
                    rows,
                    cols,
                });
            }
        }
        let params: u64 = tensors
            .iter()
            .map(|t| t.out.dims.iter().product::<u64>())
            .sum();
        let folder_name = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.clone())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut entries = hparams::entries(&config, &config_path, &folder_name, params, outtype)?;
        entries.extend(vocab::entries(&dir)?);
        entries.push(kv_string("lorakit.version", env!("CARGO_PKG_VERSION")));
        entries.push(kv_string("lorakit.operation", merge.operation()));
        entries.push(kv_string(
            "lorakit.adapters",
            &serde_json::Value::Array(adapter_json(&merge)).to_string(),
        ));
        let mut reads = merge.base.input_paths();
        for wa in &merge.adapters {
            reads.extend(wa.adapter.input_paths());
        }
        check_writes(&reads, std::slice::from_ref(&out), &[])?;
        Ok(HfGgufPlan {
            merge,
            out,
            outtype,
            tensors,
            entries,
        })
    }

    /// Writes the GGUF model atomically.
    pub fn run(self, engine: &Engine) -> Result<HfGgufReport> {
        let start = std::time::Instant::now();
        let mut output = Output::new();
        if let Some(dir) = self.out.parent().filter(|d| !d.as_os_str().is_empty()) {
            output.create_dir_all(dir)?;
        }
        output.lock(&self.out, LockMode::Exclusive)?;
        let file = output.raw_file(&self.out)?;
        let specs: Vec<OutTensor> = self.tensors.iter().map(|t| t.out.clone()).collect();
        // gguf-py's GGUFWriter default alignment.
        let mut w = GgufWriter::new(file, &self.out, &self.entries, specs, 32)?;
        let mut report = Vec::new();
        for t in &self.tensors {
            let mut v = self.merge.merged_f32(engine, &t.hf)?;
            if let Some(h) = t.permute {
                v = names::permute_rows(&v, t.rows, t.cols, h);
            }
            let bytes = quant::quantize_par(t.out.ty, &v).expect("planned whole blocks");
            w.write_tensor(&t.out.name, &bytes)?;
            report.push(HfGgufTensor {
                name: t.out.name.clone(),
                hf_name: t.hf.clone(),
                ty: t.out.ty.name().into(),
                merged: self.merge.changes(&t.hf),
            });
        }
        let bytes = w.finish()?;
        output.commit()?;
        Ok(HfGgufReport {
            operation: self.merge.operation(),
            base: self.merge.base.root.display().to_string(),
            out: self.out.display().to_string(),
            architecture: "llama".into(),
            outtype: self.outtype.name().to_lowercase(),
            adapters: adapter_json(&self.merge),
            tensors_merged_count: report.iter().filter(|t| t.merged).count(),
            tensors: report,
            bytes_written: bytes,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

fn adapter_json(m: &MergePlan) -> Vec<serde_json::Value> {
    m.adapters
        .iter()
        .map(|wa| serde_json::json!({ "path": wa.adapter.path.display().to_string(), "weight": wa.weight }))
        .collect()
}
