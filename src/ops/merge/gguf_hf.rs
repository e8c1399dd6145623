//! A Hugging Face safetensors base merged with adapters and written as a llama.cpp GGUF model
//! (`merge --base HF_FOLDER --out merged.gguf --outtype TYPE`): what `convert_hf_to_gguf.py`
//! (and `llama-quantize --pure` for the types the converter does not write) make of the merged
//! model.
//!
//! The merge itself is the safetensors merge's ([`MergePlan::merged_f32`]: every module,
//! weight and rule as for a safetensors output, in f32). The layout is the converter's, read
//! from the llama.cpp tree vendored by llama-cpp-python 0.3.36: `LlamaModel`'s generated
//! `rope_freqs.weight` first (llama3 rope scaling, [`hparams::rope_freqs`]; `Phi3MiniModel`'s
//! `rope_factors_long/short.weight` for long-rope scaling, [`hparams::phi3_rope`]), then tensors in
//! the order it reads them (shards by file name, names sorted within each:
//! `safe_open(…).keys()`), named by gguf-py's tensor map ([`crate::io::gguf::names`]), q/k rows
//! (and biases) permuted by `LlamaModel.permute` (`conversion/llama.py`; Qwen2 unpermuted),
//! `.attention.masked_bias`, `.attention.bias` and `.rotary_emb.inv_freq` dropped (and Gemma's
//! and Gemma2's `lm_head.weight`, `filter_tensors`; refused if the merge changes it), their
//! `*norm.weight` stored + 1 (`modify_tensors`, `conversion/gemma.py`); types as
//! `ModelBase.prepare_tensors` (`conversion/base.py`) sets them: 1-D tensors, `*_norm.weight`
//! and anything not named `.weight` in F32, every other tensor in `--outtype`, where its rows
//! are not whole blocks in llama-quantize's fallback type ([`quant::fallback`], reported per
//! tensor; F16 for the converter's own types, as gguf-py's `QuantError` fallback). Values are
//! quantized with gguf-py's / ggml's reference quantizers ([`crate::io::gguf::quant`]).
//! Metadata: [`crate::io::gguf::hparams`] then [`crate::io::gguf::vocab`], then lorakit's
//! provenance (`lorakit.*`, not in the converter's output). `--max-shard-size` splits and
//! `--part I/N` writes a share with a manifest through [`gguf_parts`], the code a GGUF base's
//! merge writes with, so the parts equal the one-shot output byte for byte.
//!
//! Refused at planning: architectures other than Llama/Mistral/Qwen2/Qwen3/Gemma/Gemma2/Gemma3 (text)/Phi-3, quantized safetensors
//! bases, tensors outside the name map, and what hparams/vocab refuse. Must not write
//! anything but the planned files (and a part's manifest).

use super::gguf_parts;
use super::MergePlan;
use crate::backend::Engine;
use crate::error::{InputError, Opt};
use crate::io::gguf::writer::{kv_string, OutTensor};
use crate::io::gguf::{hparams, names, quant, vocab, GgmlType};
use crate::io::writer::check_writes;
use crate::io::Output;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

/// One output tensor: its Hugging Face name (empty for generated ones) and how it is stored.
#[derive(Debug, Clone)]
struct Planned {
    hf: String,
    /// The values of a tensor the converter generates (`rope_freqs.weight`).
    generated: Option<Vec<f32>>,
    /// The `--outtype` asked for, where llama-quantize's fallback replaced it.
    fallback_from: Option<GgmlType>,
    out: OutTensor,
    /// Heads of the q/k permutation.
    permute: Option<usize>,
    /// Gemma's `*norm.weight`: stored + 1, rounded to the base tensor's dtype as torch rounds
    /// the converter's `data_torch + 1`.
    norm_shift: Option<crate::dtype::Dtype>,
    rows: usize,
    cols: usize,
}

/// How an HF → GGUF merge writes its output.
#[derive(Debug, Clone)]
pub struct HfGgufOptions {
    /// The type of 2-D weights (see the module doc for the others).
    pub outtype: GgmlType,
    /// The llama.cpp name of a BPE pre-tokenizer whose hash llama.cpp's table lacks.
    pub tokenizer_pre: Option<String>,
    /// Split the output (`-0000I-of-0000N.gguf`) into files of at most this many bytes.
    pub max_shard_size: Option<u64>,
    /// Write only this part's files and a manifest.
    pub part: Option<(usize, usize)>,
}

/// A validated HF → GGUF merge.
#[derive(Debug)]
pub struct HfGgufPlan {
    merge: MergePlan,
    out: PathBuf,
    arch: &'static str,
    tensors: Vec<Planned>,
    entries: Vec<Vec<u8>>,
    /// Every file read (base shards, adapter files), for a part's manifest.
    inputs: Vec<PathBuf>,
    options: HfGgufOptions,
}

#[derive(Debug, Clone, Serialize)]
pub struct HfGgufTensor {
    pub name: String,
    pub hf_name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub merged: bool,
    /// The `--outtype` llama-quantize's fallback replaced for this tensor (rows not whole
    /// blocks of it), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_from: Option<String>,
}

/// What an HF → GGUF merge wrote.
#[derive(Debug, Clone, Serialize)]
pub struct HfGgufReport {
    /// The safetensors merge report's fields, with their meaning (`tensors_copied_count`
    /// counts the `tensors` rows with `merged: false`).
    #[serde(flatten)]
    pub run: super::MergeRun,
    pub architecture: String,
    pub outtype: String,
    pub tensors: Vec<HfGgufTensor>,
}

/// Suffixes `ModelBase.prepare_tensors` drops ("we don't need these").
const DROPPED: &[&str] = &[
    ".attention.masked_bias",
    ".attention.bias",
    ".rotary_emb.inv_freq",
];

impl HfGgufPlan {
    /// Plans writing `merge` (a merge of a safetensors base, planned without a split or part
    /// of its own) as the GGUF model `out`.
    pub fn new(merge: MergePlan, out: PathBuf, options: HfGgufOptions) -> Result<Self> {
        let outtype = options.outtype;
        let dir = merge.base.folder().to_path_buf();
        let root = merge.base.root.clone();
        if let Some(q) = merge.quant.iter().next().map(|q| q.stored.clone()) {
            return Err(InputError::invalid(
                &root,
                format!("tensor `{q}` is quantized: lorakit writes GGUF models from float safetensors bases only"),
            )
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
        // generate_extra_tensors comes before the model's tensors: LlamaModel's rope_freqs,
        // Phi3MiniModel's long-rope factors (long, then short).
        let mut extra = Vec::new();
        if arch == "llama" {
            if let Some(v) = hparams::rope_freqs(&config, &config_path)? {
                extra.push(("rope_freqs.weight", v));
            }
        }
        if arch == "phi3" {
            if let Some(l) = hparams::phi3_rope(&config, &config_path)?.long {
                extra.push(("rope_factors_long.weight", l.long_factor));
                extra.push(("rope_factors_short.weight", l.short_factor));
            }
        }
        for (name, v) in extra {
            tensors.push(Planned {
                hf: String::new(),
                out: OutTensor {
                    name: name.into(),
                    dims: vec![v.len() as u64],
                    ty: GgmlType::F32,
                },
                permute: None,
                norm_shift: None,
                rows: v.len(),
                cols: 1,
                generated: Some(v),
                fallback_from: None,
            });
        }
        for f in shards {
            let mut ns: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
            ns.sort_unstable();
            for hf in ns {
                if DROPPED.iter().any(|s| hf.ends_with(s)) {
                    continue;
                }
                // GemmaModel / Gemma2Model.filter_tensors: lm_head.weight is not converted.
                if hf == "lm_head.weight" && names::why_unmapped(arch, "lm_head").is_some() {
                    if merge.changes(hf) {
                        return Err(InputError::invalid(
                            f.path(),
                            format!(
                                "tensor `{hf}` is merged, but {}",
                                names::why_unmapped(arch, "lm_head").unwrap_or_default()
                            ),
                        )
                        .into());
                    }
                    continue;
                }
                let info = merge.base.info(hf).expect("listed");
                // Gemma3Model.modify_tensors trims embed_tokens to the SentencePiece vocabulary,
                // which is config.json's vocab_size long (padded or cut).
                if arch == "gemma3" && hf == "model.embed_tokens.weight" {
                    let vocab = config["vocab_size"].as_u64().map(|v| v as usize);
                    if info.shape.first().copied() != vocab {
                        return Err(InputError::invalid(
                            f.path(),
                            format!("tensor `{hf}` has {:?} rows, config.json's vocab_size is {vocab:?}: llama.cpp's Gemma3 converter trims it to the vocabulary, which lorakit does not", info.shape.first()),
                        )
                        .into());
                    }
                }
                let (stem, suffix) = hf.rsplit_once('.').unwrap_or((hf, ""));
                let mapped = names::gguf_module_in(arch, stem)
                    .filter(|_| suffix == "weight" || suffix == "bias");
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
                let row = shape.last().copied().unwrap_or(0);
                let (ty, fallback_from) =
                    if shape.len() <= 1 || name.ends_with("_norm.weight") || suffix != "weight" {
                        (GgmlType::F32, None)
                    } else {
                        let ty = quant::fallback(outtype, row);
                        (ty, (ty != outtype).then_some(outtype))
                    };
                // GemmaModel / Gemma2Model.modify_tensors: `data_torch + 1` for names ending
                // in norm.weight (conversion/gemma.py).
                let norm_shift = (arch.starts_with("gemma") && hf.ends_with("norm.weight"))
                    .then_some(info.dtype);
                tensors.push(Planned {
                    norm_shift,
                    hf: hf.to_owned(),
                    out: OutTensor {
                        name,
                        dims: shape.iter().rev().map(|&d| d as u64).collect(),
                        ty,
                    },
                    permute,
                    rows,
                    cols,
                    generated: None,
                    fallback_from,
                });
            }
        }
        let params: u64 = tensors
            .iter()
            .map(|t| t.out.dims.iter().product::<u64>())
            .sum();
        let mut entries = hparams::entries(&config, &config_path, &dir, params, outtype)?;
        entries.extend(vocab::entries(
            &dir,
            arch,
            options.tokenizer_pre.as_deref(),
        )?);
        entries.extend(crate::ops::output::provenance_head_gguf(merge.operation()));
        entries.push(kv_string(
            "lorakit.adapters",
            &serde_json::Value::Array(adapter_json(&merge)).to_string(),
        ));
        let mut reads = merge.base.input_paths();
        for wa in &merge.adapters {
            reads.extend(wa.adapter.input_paths());
        }
        let specs: Vec<OutTensor> = tensors.iter().map(|t| t.out.clone()).collect();
        let (files, _) = gguf_parts::layout(&out, &specs, options.max_shard_size);
        let writes = gguf_parts::planned_writes(&out, &files, options.part);
        check_writes(&reads, &writes, &[])?;
        Ok(HfGgufPlan {
            inputs: reads,
            options,
            merge,
            out,
            arch,
            tensors,
            entries,
        })
    }

    /// Writes the GGUF model atomically: one file, the split files of `--max-shard-size`, or
    /// with `--part I/N` this part's share and manifest ([`gguf_parts::write_files`], as for a
    /// GGUF base).
    pub fn run(self, engine: &Engine) -> Result<HfGgufReport> {
        let start = std::time::Instant::now();
        let mut output = Output::new();
        if let Some(dir) = self.out.parent().filter(|d| !d.as_os_str().is_empty()) {
            output.create_dir_all(dir)?;
        }
        let specs: Vec<OutTensor> = self.tensors.iter().map(|t| t.out.clone()).collect();
        let spec = gguf_parts::GgufOutput {
            out: &self.out,
            tensors: &specs,
            entries: &self.entries,
            later_entries: &[],
            // gguf-py's GGUFWriter default alignment.
            alignment: 32,
            max_shard_size: self.options.max_shard_size,
            part: self.options.part,
            inputs: &self.inputs,
            // Every tensor is converted from the safetensors base: nothing to line up.
            copied: &[],
        };
        let mut report = Vec::new();
        let wrote = gguf_parts::write_files(&mut output, &spec, |i| {
            let t = &self.tensors[i];
            let mut v = match &t.generated {
                Some(v) => v.clone(),
                None => self.merge.merged_f32(engine, &t.hf)?,
            };
            if let Some(h) = t.permute {
                v = names::permute_rows(&v, t.rows, t.cols, h);
            }
            if let Some(dt) = t.norm_shift {
                for x in &mut v {
                    *x = crate::dtype::round_to(dt, *x + 1.0);
                }
            }
            let bytes = quant::quantize_par(t.out.ty, &v).expect("planned whole blocks");
            report.push(HfGgufTensor {
                name: t.out.name.clone(),
                hf_name: t.hf.clone(),
                ty: t.out.ty.name().into(),
                merged: t.generated.is_none() && self.merge.changes(&t.hf),
                fallback_from: t.fallback_from.map(|f| f.name().to_owned()),
            });
            Ok(std::borrow::Cow::Owned(bytes))
        })?;
        let created_folders = output.created_dirs();
        // Every byte this run wrote to disk, a part's manifest included (`Output::commit`).
        let bytes_written = output.commit()?;
        let seconds = start.elapsed().as_secs_f64();
        let tensors_merged_count = report.iter().filter(|t| t.merged).count();
        Ok(HfGgufReport {
            run: super::MergeRun {
                operation: self.merge.operation(),
                base: self.merge.base.root.display().to_string(),
                out: self.out.display().to_string(),
                device: engine.describe(),
                adapters: self.merge.adapter_summaries(),
                tensors_merged_count,
                tensors_copied_count: report.len() - tensors_merged_count,
                files: wrote.iter().map(|(f, _)| f.display().to_string()).collect(),
                part: self.options.part.map(|(i, n)| [i, n]),
                bytes_written,
                seconds,
                gb_per_s: super::model::gb_per_s(bytes_written, seconds),
                created_folders,
                unmatched: self.merge.unmatched.clone(),
            },
            architecture: self.arch.into(),
            outtype: self.options.outtype.name().to_lowercase(),
            tensors: report,
        })
    }
}

fn adapter_json(m: &MergePlan) -> Vec<serde_json::Value> {
    m.adapters
        .iter()
        .map(|wa| serde_json::json!({ "path": wa.adapter.path.display().to_string(), "weight": wa.weight }))
        .collect()
}
