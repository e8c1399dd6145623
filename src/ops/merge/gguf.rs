//! Merging adapters into a GGUF model (llama.cpp), keeping every tensor's type.
//!
//! `W = W0 + Σᵢ wᵢ·ΔWᵢ` per adapted tensor, as [`super`] computes it for safetensors bases, with
//! `W0` the base tensor dequantized to f32 (bit-exact with gguf-py, see
//! [`crate::io::gguf::quant`]) and each `ΔWᵢ = sᵢ·Bᵢ·Aᵢ` (or the rebuilt ΔW of LoHa/LoKr/full
//! modules) laid out as the GGUF tensor is: Hugging Face module names map to GGUF names by
//! gguf-py's `tensor_mapping.py`, and for architecture `llama` the rows of ΔW of `q_proj` and
//! `k_proj` are permuted by `LlamaModel.permute` (llama.cpp `conversion/llama.py`), with the
//! head counts read from the base's `llama.attention.head_count` / `head_count_kv` (see
//! [`crate::io::gguf::names`]). GGUF dims are ggml order (`ne[0]` = input features), so the
//! dequantized data is the `[out, in]` row-major matrix of the PyTorch weight.
//!
//! The merged tensor is stored in its original type with the reference quantizer
//! (`OutType::Keep`, bit-exact with gguf-py's `quants.quantize`, which follows ggml's
//! `quantize_row_*_ref`, and for the K-quants with ggml's own `quantize_row_q*_K_ref`, see
//! [`crate::io::gguf::quant`]), or in the type asked for; types without a quantizer in lorakit are
//! refused for `keep` at planning, naming the tensor. Unlike llama.cpp's `llama-export-lora`
//! (which writes merged tensors as F16, llama.cpp #10049), the report gives per merged tensor
//! the quantization error of what was stored against the f32 merge. Every other tensor is
//! copied byte for byte; metadata entries are copied as their raw bytes (a split base's
//! `split.*` keys dropped: the output is one file) and extended with `lorakit.*` provenance.
//!
//! DoRA (PEFT `variants.py` `DoraLinearVariant`: the norm of `W0 + s·B·A` per output row, which
//! is a GGUF row) runs through the same backend merge in the same row bands, the magnitude
//! permuted with B's rows; a DoRA term normed per column (LyCORIS' per-input-channel
//! `dora_scale`; PEFT's on an embedding, `DoraEmbeddingVariant`) takes the tensor
//! as one band. `lora_bias` and `modules_to_save` tensors are [`super::gguf_whole`]'s.
//!
//! Refused at planning, before anything is written: unmatched modules (unless allowed), what
//! [`super::gguf_whole`] refuses (a bias or a tensor the base does not have, a tied output), an
//! `lm_head` LoRA on a tied base without `--tied-embeddings shared` ([`tied_head`]),
//! DoRA with `--unmerge`, an architecture outside the name map, base types lorakit cannot
//! dequantize, and an output path that is an input.

use super::gguf_parts::TensorData;
use super::{UnmatchedReport, WeightedAdapter};
use crate::adapter::mapping::{is_kohya_name, kohya_candidates, Unmatched};
use crate::backend::Engine;
use crate::error::{InputError, Opt};
use crate::io::gguf::names::{self, Rope};
use crate::io::gguf::writer::{kv_string, OutTensor};
use crate::io::gguf::{quant, types, GgufModel, Value};
use crate::io::writer::check_writes;
use crate::io::Output;
use anyhow::Result;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use super::gguf_model::{
    GgufDryRun, GgufDryRunFile, GgufMergeOptions, GgufMergePlan, GgufMergeReport, MergedTensor,
    OutType,
};
use super::gguf_model::{Kind, Scratch, Target};

fn head_count(m: &GgufModel, arch: &str, key: &str) -> Option<usize> {
    let v = m.header().get(&format!("{arch}.attention.{key}"))?;
    match v {
        // A per-layer array (some models); lorakit requires one count for all layers.
        Value::Array(_, items) => {
            let first = items.first()?.as_u64()?;
            items
                .iter()
                .all(|x| x.as_u64() == Some(first))
                .then_some(first as usize)
        }
        _ => v.as_u64().map(|n| n as usize),
    }
}

/// Adds `t` to the plan: its terms join the target of the same tensor and kind; a tensor both
/// replaced (`modules_to_save`) and merged into, or replaced twice, is refused, as for
/// safetensors bases.
fn add_term(targets: &mut Vec<Target>, t: Target, adapter: &Path) -> Result<()> {
    match targets.iter_mut().find(|x| x.tensor == t.tensor) {
        None => targets.push(t),
        Some(x) if x.kind == t.kind && t.kind != Kind::Replace => x.terms.extend(t.terms),
        Some(_) => {
            return Err(InputError::invalid(
                adapter,
                format!(
                    "base tensor `{}` is changed by more than one adapter entry (modules_to_save and LoRA, or two modules_to_save tensors)",
                    t.tensor
                ),
            )
            .into())
        }
    }
    Ok(())
}

/// llama.cpp's output and input embedding tensors.
const TIED_HEAD: &str = "output.weight";
const TIED_EMBEDDING: &str = "token_embd.weight";

/// Where an `lm_head` module `m` lands on a base with no `output.weight`, whose logits llama.cpp
/// computes with `token_embd` (`src/models/qwen2.cpp`, `llama.cpp`…: `output` created from
/// `LLM_TENSOR_TOKEN_EMBD` with `TENSOR_DUPLICATED`): with `--tied-embeddings shared`,
/// `token_embd.weight`, as PEFT's merge_and_unload adds the LoRA in place to the Parameter
/// lm_head and embed_tokens share and `convert_hf_to_gguf.py` writes that one tensor
/// (fixtures/gen/gaps8_fixtures.py `qwen2_tied_head`); `None` (unmatched) with
/// `--allow-unmatched`; otherwise refused, naming the tie and the flag. lm_head's `[vocab,
/// hidden]` ΔW has `token_embd`'s rows, unpermuted.
fn tied_head(
    base: &GgufModel,
    a: &crate::adapter::Adapter,
    m: &crate::adapter::LoraModule,
    options: &GgufMergeOptions,
) -> Result<Option<String>> {
    if base.get(TIED_EMBEDDING).is_none() {
        return Ok(None);
    }
    if options.tied_embeddings == super::TiedEmbeddings::Shared {
        return Ok(Some(TIED_EMBEDDING.to_owned()));
    }
    if options.allow_unmatched {
        return Ok(None);
    }
    let module = m.name.clone();
    Err(InputError::option(&a.path, move |o| {
        format!(
            "`{module}` changes lm_head, but the GGUF base ties it to `{TIED_EMBEDDING}` (it has no `{TIED_HEAD}`), so merging would change the input embedding too (PEFT issue #2018). Pass {} to merge into `{TIED_EMBEDDING}` as PEFT's merge_and_unload does on the tied model, or leave lm_head out of the adapter",
            o.set(Opt::TiedEmbeddings, "shared")
        )
    })
    .into())
}

/// An `embed_tokens` LoRA module `m` on a base with no `output.weight`, whose logits llama.cpp
/// computes with `token_embd`: PEFT's merge changes the Parameter embed_tokens and lm_head share,
/// so the output layer changes too (fixtures/gen/gaps9_fixtures.py `qwen2_embed`). As on a tied
/// safetensors base ([`super::plan`]), that needs `--tied-embeddings shared`; otherwise refused,
/// naming the tie and the flag.
fn tied_embedding(
    a: &crate::adapter::Adapter,
    m: &crate::adapter::LoraModule,
    options: &GgufMergeOptions,
) -> Result<()> {
    if options.tied_embeddings == super::TiedEmbeddings::Shared {
        return Ok(());
    }
    let module = m.name.clone();
    Err(InputError::option(&a.path, move |o| {
        format!(
            "`{module}` changes `{TIED_EMBEDDING}`, but the GGUF base ties its output to it (it has no `{TIED_HEAD}`), so merging would change the output layer too (PEFT issue #2018). Pass {} to merge into the shared tensor as PEFT's merge_and_unload does on the tied model, or leave embed_tokens out of the adapter",
            o.set(Opt::TiedEmbeddings, "shared")
        )
    })
    .into())
}

impl GgufMergePlan {
    /// Resolves every module onto the base and checks everything that can be checked before
    /// writing: the plan either runs to completion or fails at its first tensor's I/O.
    pub fn new(
        base_path: &Path,
        base: GgufModel,
        mut adapters: Vec<WeightedAdapter>,
        out: PathBuf,
        options: GgufMergeOptions,
    ) -> Result<Self> {
        // The output is one GGUF file (or `-0000I-of-0000N.gguf` parts named from it): any other
        // name would hold GGUF data where a reader expects something else (a `.safetensors`
        // name, or a folder name as a safetensors merge makes).
        if !out
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return Err(InputError::invalid(
                &out,
                "a merge into a GGUF base writes one GGUF file: give the output a name ending in .gguf",
            )
            .into());
        }
        let bp = base.files[0].path().to_path_buf();
        let arch = base.architecture().unwrap_or("").to_owned();
        let permutes = names::permutes_or_refuse(&arch, &bp)?;
        // Read only when a q/k projection is merged.
        let n_head = head_count(&base, &arch, "head_count");
        let n_head_kv = head_count(&base, &arch, "head_count_kv").or(n_head);
        let mut targets: Vec<Target> = Vec::new();
        let mut unmatched = Vec::new();
        // Kohya files name modules with underscores (`lora_unet_model_layers_0_self_attn_q_proj`):
        // they resolve against the Hugging Face names of the base's tensors as in a safetensors
        // merge ([`mapping::kohya_candidates`]).
        let hf_weights: Vec<String> = base
            .tensors()
            .filter_map(|(_, t)| names::hf_name_in(&arch, &t.name))
            .filter(|n| n.ends_with(".weight"))
            .collect();
        let mut kohya_index: HashMap<String, Vec<&str>> = HashMap::new();
        for n in &hf_weights {
            let m = n.strip_suffix(".weight").unwrap_or(n);
            kohya_index.entry(m.replace('.', "_")).or_default().push(n);
        }
        // llama.cpp's `gpt2` is the one architecture it converts from Conv1D layers.
        if arch != "gpt2" {
            for wa in &mut adapters {
                crate::adapter::formats::peft::params::linear_fan_in_fan_out_reset(&mut wa.adapter);
            }
        }
        for (ai, wa) in adapters.iter().enumerate() {
            let a = &wa.adapter;
            a.check_mergeable()?;
            a.check_plain_base(
                "merging it into a GGUF model (whose base lorakit does not rewrite)",
            )?;
            let tied = base.get(TIED_HEAD).is_none() && base.get(TIED_EMBEDDING).is_some();
            super::model::check_weight_tying(a, tied)?;
            for (mi, m) in a.modules.iter().enumerate() {
                if options.unmerge && m.dora_magnitude.is_some() {
                    return Err(InputError::invalid(
                        &a.path,
                        format!(
                            "module `{}`: a DoRA merge cannot be undone from the merged weights alone (the weight norm of the original base is lost)",
                            m.name
                        ),
                    )
                    .into());
                }
                let hf = match kohya_candidates(&m.name, &kohya_index).as_slice() {
                    [one] if is_kohya_name(a.format, &m.name) => {
                        one.strip_suffix(".weight").unwrap_or(one).to_owned()
                    }
                    _ => m.name.clone(),
                };
                let Some((g, rope)) = names::gguf_module_in(&arch, &hf) else {
                    unmatched.push(UnmatchedReport {
                        adapter: a.path.display().to_string(),
                        detail: Unmatched::NoGgufName {
                            module: m.name.clone(),
                            architecture: arch.clone(),
                        },
                    });
                    continue;
                };
                let mut tname = format!("{g}.weight");
                if tname == TIED_EMBEDDING && base.get(TIED_HEAD).is_none() {
                    tied_embedding(a, m, &options)?;
                }
                if tname == TIED_HEAD && base.get(TIED_HEAD).is_none() {
                    match tied_head(&base, a, m, &options)? {
                        Some(emb) => tname = emb,
                        None => {
                            unmatched.push(UnmatchedReport {
                                adapter: a.path.display().to_string(),
                                detail: Unmatched::NotFound {
                                    module: m.name.clone(),
                                    expected: format!(
                                        "{TIED_HEAD} (the base ties it to `{TIED_EMBEDDING}`)"
                                    ),
                                },
                            });
                            continue;
                        }
                    }
                }
                let Some((_, t)) = base.get(&tname) else {
                    unmatched.push(UnmatchedReport {
                        adapter: a.path.display().to_string(),
                        detail: Unmatched::NotFound {
                            module: m.name.clone(),
                            expected: tname,
                        },
                    });
                    continue;
                };
                let want = if m.base_transposed {
                    vec![m.in_features, m.out_features]
                } else {
                    vec![m.out_features, m.in_features]
                };
                if t.shape() != want {
                    return Err(InputError::invalid(
                        &a.path,
                        format!(
                            "module `{}`: base tensor `{tname}` has shape {:?}, the adapter needs {want:?}",
                            m.name,
                            t.shape()
                        ),
                    )
                    .into());
                }
                // Read only where the count matters (a per-input LyCORIS `dora_scale`).
                if let (Some(d), crate::adapter::DoraRule::Lycoris { per_input: true }) =
                    (&m.dora_magnitude, m.dora_rule)
                {
                    let n = a.values(d)?.len();
                    super::model::check_per_input_dora(a, m, n, &tname, &t.shape())?;
                }
                if !t.ty.can_dequantize() {
                    return Err(InputError::invalid(
                        &bp,
                        format!(
                            "tensor `{tname}`: type {} cannot be dequantized by lorakit (it reads {}), so module `{}` cannot be merged into it",
                            t.ty,
                            types::names(types::DEQUANTIZABLE),
                            m.name
                        ),
                    )
                    .into());
                }
                // llama-quantize's fallback where rows are not whole blocks of the type asked for.
                let out_type = match options.outtype {
                    OutType::Keep => t.ty,
                    OutType::To(ty) => quant::fallback(ty, t.dims[0] as usize),
                };
                if !out_type.can_quantize() {
                    let (ty, writable) = (
                        t.ty,
                        types::names(types::QUANTIZABLE)
                            .to_lowercase()
                            .replace(", ", "|"),
                    );
                    return Err(InputError::option(&bp, move |o| {
                        format!(
                            "tensor `{tname}` is {ty}: lorakit has no reference quantizer for it, so {} cannot store the merge; choose {} with one of {writable}",
                            o.set(Opt::Outtype, "keep"),
                            o.opt(Opt::Outtype)
                        )
                    })
                    .into());
                }
                if !t.dims[0].is_multiple_of(out_type.block_size() as u64) {
                    return Err(InputError::invalid(
                        &bp,
                        format!(
                            "tensor `{tname}`: rows of {} values are not whole {} blocks of {}",
                            t.dims[0],
                            out_type,
                            out_type.block_size()
                        ),
                    )
                    .into());
                }
                let heads = match (permutes, rope) {
                    (true, Rope::Q) => Some(n_head),
                    (true, Rope::K) => Some(n_head_kv),
                    _ => None,
                };
                let permute = match heads {
                    None => None,
                    Some(Some(h)) => Some(h),
                    Some(None) => {
                        return Err(InputError::invalid(
                            &bp,
                            format!("`{arch}.attention.head_count` is missing or not one integer; it is needed to permute the rows of `{tname}` as llama.cpp's converter did"),
                        )
                        .into())
                    }
                };
                if let Some(h) = permute {
                    if !names::permutable(m.out_features, h) {
                        return Err(InputError::invalid(
                            &bp,
                            format!(
                                "tensor `{tname}`: {} rows cannot be split into {h} heads of two halves as llama.cpp permutes q/k",
                                m.out_features
                            ),
                        )
                        .into());
                    }
                }
                if m.bias.is_some() {
                    let t = super::gguf_whole::plan_bias(&base, a, (ai, mi), &g, permute)?;
                    add_term(&mut targets, t, &a.path)?;
                }
                let t = Target {
                    tensor: tname,
                    terms: vec![(ai, mi)],
                    permute,
                    out_type,
                    kind: Kind::Weight,
                };
                add_term(&mut targets, t, &a.path)?;
            }
            // embed_tokens and lm_head both on the shared `token_embd`: with DoRA, PEFT merges
            // the second from the weight the first changed, as on a safetensors base (refused
            // there too, `super::plan`).
            if let Some(t) = targets
                .iter()
                .find(|t| t.tensor == TIED_EMBEDDING && t.kind == Kind::Weight)
            {
                let mine: Vec<usize> = t.terms.iter().filter(|x| x.0 == ai).map(|x| x.1).collect();
                if let (true, Some(&i)) = (
                    mine.len() > 1,
                    mine.iter()
                        .find(|&&i| a.modules[i].dora_magnitude.is_some()),
                ) {
                    return Err(InputError::invalid(
                        &a.path,
                        format!(
                            "module `{}` is DoRA, and it lands with another module on the shared tied tensor `{TIED_EMBEDDING}`: PEFT merges the second of them from the weight the first already changed (its DoRA norm included), which lorakit does not reproduce; merge a plain LoRA",
                            a.modules[i].name
                        ),
                    )
                    .into());
                }
            }
            // The base copies PEFT saves beside an embedding / lm_head LoRA are skipped, as
            // llama.cpp's converter skips them: the GGUF base's own tensor is the W0.
            let heads = (permutes, n_head, n_head_kv);
            for t in
                super::gguf_whole::plan_full(&base, &arch, ai, a, &options, heads, &mut unmatched)?
            {
                add_term(&mut targets, t, &a.path)?;
            }
        }
        if !unmatched.is_empty() && !options.allow_unmatched {
            let (count, list) = (
                unmatched.len(),
                unmatched_list(&unmatched, &adapters[0].adapter.path),
            );
            let bp = bp.display().to_string();
            return Err(InputError::option(&adapters[0].adapter.path, move |o| {
                format!(
                    "{count} module(s) match no tensor of the GGUF base {bp} ({list}); pass {} to merge the rest",
                    o.opt(Opt::AllowUnmatched)
                )
            })
            .into());
        }
        if targets.is_empty() {
            // As for safetensors bases, --allow-unmatched never lets through a merge that lands
            // no module at all (it would write a copy of the base).
            let list = unmatched_list(&unmatched, &adapters[0].adapter.path);
            return Err(InputError::option(&adapters[0].adapter.path, move |o| {
                format!(
                    "no adapter module matches a tensor of the GGUF base, so the merge would change nothing ({} never allows that): {list}",
                    o.opt(Opt::AllowUnmatched)
                )
            })
            .into());
        }
        let mut reads = base.paths();
        for wa in &adapters {
            reads.extend(wa.adapter.input_paths());
        }
        let plan = GgufMergePlan {
            base_path: base_path.to_path_buf(),
            base,
            adapters,
            out,
            options,
            targets,
            unmatched,
            inputs: reads.clone(),
        };
        let (files, _) = plan.layout();
        let writes = super::gguf_parts::planned_writes(&plan.out, &files, plan.options.part);
        check_writes(&reads, &writes, &[])?;
        Ok(plan)
    }

    /// The plan as `merge --dry-run` prints it.
    pub fn dry_run(&self) -> GgufDryRun {
        let tensors = self.out_tensors();
        let (files, parts) = self.layout();
        GgufDryRun {
            operation: if self.options.unmerge {
                "unmerge"
            } else {
                "merge"
            },
            dry_run: true,
            base: self.base_path.display().to_string(),
            out: self.out.display().to_string(),
            files: files
                .iter()
                .zip(&parts)
                .map(|(f, r)| GgufDryRunFile {
                    path: f.display().to_string(),
                    tensor_count: r.len(),
                    bytes: tensors[r.clone()].iter().map(OutTensor::bytes).sum(),
                })
                .collect(),
            architecture: self.base.architecture().unwrap_or("").into(),
            outtype: self.outtype_name(),
            tensors_merged_count: self.targets.len(),
            tensors_copied_count: self.base.len() - self.targets.len(),
            merged_tensors: self
                .targets
                .iter()
                .map(|t| {
                    let (_, info) = self.base.get(&t.tensor).expect("planned");
                    [
                        t.tensor.clone(),
                        info.ty.name().into(),
                        t.out_type.name().into(),
                    ]
                })
                .collect(),
            unmatched: self.unmatched.clone(),
            bytes: tensors.iter().map(OutTensor::bytes).sum(),
        }
    }

    fn outtype_name(&self) -> String {
        match self.options.outtype {
            OutType::Keep => "keep".into(),
            OutType::To(t) => t.name().to_lowercase(),
        }
    }

    /// The output tensors in order, and the files with the tensor ranges each holds.
    fn out_tensors(&self) -> Vec<OutTensor> {
        self.base
            .tensors()
            .map(|(_, t)| OutTensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: self
                    .targets
                    .iter()
                    .find(|x| x.tensor == t.name)
                    .map_or(t.ty, |x| x.out_type),
            })
            .collect()
    }

    /// The output files and the tensor range of each.
    fn layout(&self) -> (Vec<PathBuf>, Vec<std::ops::Range<usize>>) {
        super::gguf_parts::layout(&self.out, &self.out_tensors(), self.options.max_shard_size)
    }

    /// The output's metadata entries: the base's (raw bytes; `split.*` and old `lorakit.*`
    /// keys dropped), then the provenance.
    fn entries(&self) -> Vec<Vec<u8>> {
        let f = &self.base.files[0];
        let mut out: Vec<Vec<u8>> = f
            .header()
            .metadata
            .iter()
            .filter(|kv| !kv.key.starts_with("split.") && !kv.key.starts_with("lorakit."))
            .map(|kv| f.raw_kv(kv).to_vec())
            .collect();
        let operation = if self.options.unmerge {
            "unmerge"
        } else {
            "merge"
        };
        out.extend(crate::ops::output::provenance_head_gguf(operation));
        out.push(kv_string(
            "lorakit.adapters",
            &serde_json::Value::Array(self.adapter_json()).to_string(),
        ));
        out
    }

    fn adapter_json(&self) -> Vec<serde_json::Value> {
        self.adapters
            .iter()
            .map(|wa| serde_json::json!({ "path": wa.adapter.path.display().to_string(), "weight": wa.weight }))
            .collect()
    }

    /// Per adapter, what the plan merges of it, counted as the safetensors merge counts it
    /// (`MergePlan::adapter_summaries`): distinct modules merged into a weight, full tensors
    /// replacing a base tensor, modules whose `lora_B.bias` updates a base bias.
    fn adapter_summaries(&self) -> Vec<super::AdapterSummary> {
        use std::collections::BTreeSet;
        self.adapters
            .iter()
            .enumerate()
            .map(|(ai, wa)| {
                let count = |kind: Kind| {
                    self.targets
                        .iter()
                        .filter(|t| t.kind == kind)
                        .flat_map(|t| t.terms.iter())
                        .filter(|&&(a, _)| a == ai)
                        .collect::<BTreeSet<_>>()
                        .len()
                };
                super::AdapterSummary {
                    path: wa.adapter.path.display().to_string(),
                    weight: wa.weight,
                    modules_merged: count(Kind::Weight),
                    tensors_replaced: count(Kind::Replace),
                    biases_updated: count(Kind::Bias),
                }
            })
            .collect()
    }

    /// Writes the merged model atomically and reports per merged tensor.
    pub fn run(self, engine: &Engine) -> Result<GgufMergeReport> {
        let start = std::time::Instant::now();
        let out_tensors = self.out_tensors();
        let mut output = Output::new();
        if let Some(dir) = self.out.parent().filter(|d| !d.as_os_str().is_empty()) {
            output.create_dir_all(dir)?;
        }
        let part = self.options.part;
        let base_entries = self.entries();
        let alignment_kv: Vec<Vec<u8>> = {
            let f = &self.base.files[0];
            f.header()
                .metadata
                .iter()
                .filter(|kv| kv.key == "general.alignment")
                .map(|kv| f.raw_kv(kv).to_vec())
                .collect()
        };
        let base_tensors: Vec<_> = self.base.tensors().collect();
        // Where each untouched tensor is copied from, for the header's page padding.
        let copied: Vec<Option<u64>> = base_tensors
            .iter()
            .map(|&(f, t)| {
                let merged = self.targets.iter().any(|x| x.tensor == t.name);
                (!merged).then(|| f.source(t).1)
            })
            .collect();
        let mut merged = Vec::new();
        // The buffer of one merged tensor's dequantized base (a row band of it on the CPU) is
        // kept for the next: fresh pages cost ~18 % of a 7B Q4_K_M merge in faults and zeroing
        // (issue #17).
        // It is freed after the last one, so that it is not held while the rest is copied.
        let mut scratch = Scratch::default();
        let mut merges_left = self.targets.len();
        let spec = super::gguf_parts::GgufOutput {
            out: &self.out,
            tensors: &out_tensors,
            entries: &base_entries,
            later_entries: &alignment_kv,
            alignment: self.base.header().alignment,
            max_shard_size: self.options.max_shard_size,
            part,
            inputs: &self.inputs,
            copied: &copied,
        };
        // The bytes of the tensors in the files this run (or part) writes.
        let total: u64 = {
            let (_, ranges) = self.layout();
            ranges
                .iter()
                .enumerate()
                .filter(|&(pi, _)| crate::parts::owns(part, pi))
                .flat_map(|(_, r)| out_tensors[r.clone()].iter())
                .map(OutTensor::bytes)
                .sum()
        };
        let bar = self
            .options
            .progress
            .start("merging", total, crate::progress::Unit::Bytes);
        let wrote = super::gguf_parts::write_files(&mut output, &spec, |i| {
            let (f, t) = base_tensors[i];
            let Some(target) = self.targets.iter().find(|x| x.tensor == t.name) else {
                bar.inc(out_tensors[i].bytes());
                let (file, at, len) = f.source(t);
                let path = f.path();
                return Ok(TensorData::Copy {
                    file,
                    path,
                    at,
                    len,
                });
            };
            let (bytes, err) = match self.rows_in_place(target)? {
                Some(stored) => stored,
                None => self.merged_stored(target, engine, &mut scratch, target.out_type)?,
            };
            if let Some(i) = err.first_bad {
                return Err(InputError::invalid(
                    &self.out,
                    format!(
                        "tensor `{}`: element {i} overflows {}; nothing was written",
                        t.name, target.out_type
                    ),
                )
                .into());
            }
            merged.push(MergedTensor {
                name: t.name.clone(),
                modules: self.term_names(target),
                base_type: t.ty.name().into(),
                ty: target.out_type.name().into(),
                fallback_from: match self.options.outtype {
                    OutType::To(ty) if ty != target.out_type => Some(ty.name().into()),
                    _ => None,
                },
                quant_rel_fro_error: err.rel_fro(),
                quant_max_abs_error: err.max_abs,
            });
            merges_left -= 1;
            if merges_left == 0 {
                scratch = Scratch::default();
            }
            bar.inc(out_tensors[i].bytes());
            Ok(TensorData::Bytes(std::borrow::Cow::Owned(bytes)))
        })?;
        let created_folders = output.created_dirs();
        // Every byte this run wrote to disk, a part's manifest included, as the safetensors
        // merge counts them (`Output::commit`).
        let written = output.commit()?;
        let seconds = start.elapsed().as_secs_f64();
        Ok(GgufMergeReport {
            run: super::MergeRun {
                operation: if self.options.unmerge {
                    "unmerge"
                } else {
                    "merge"
                },
                base: self.base_path.display().to_string(),
                out: self.out.display().to_string(),
                device: engine.describe(),
                adapters: self.adapter_summaries(),
                tensors_merged_count: merged.len(),
                tensors_copied_count: self.base.len() - merged.len(),
                files: wrote.iter().map(|(f, _)| f.display().to_string()).collect(),
                part: part.map(|(i, n)| [i, n]),
                bytes_written: written,
                seconds,
                gb_per_s: super::model::gb_per_s(written, seconds),
                created_folders,
                unmatched: self.unmatched.clone(),
            },
            architecture: self.base.architecture().unwrap_or("").into(),
            outtype: self.outtype_name(),
            merged_tensors: merged,
        })
    }
}

/// The unmatched modules as one error's list, `DETAIL; …`, for an error that names `adapter`;
/// a module of another adapter is `ADAPTER: DETAIL`, as a safetensors merge names it.
fn unmatched_list(unmatched: &[UnmatchedReport], adapter: &Path) -> String {
    let named = adapter.display().to_string();
    let list: Vec<String> = unmatched
        .iter()
        .map(|u| match u.adapter == named {
            true => u.detail.to_string(),
            false => format!("{}: {}", u.adapter, u.detail),
        })
        .collect();
    list.join("; ")
}
