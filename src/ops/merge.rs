//! Merging adapters into a base checkpoint (and unmerging them), streamed tensor by tensor.
//!
//! Semantics are PEFT's `merge_and_unload` (`tuners/lora/layer.py` `get_delta_weight`, `merge`;
//! `variants.py` DoRA): `W = W0 + Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ` over adapters in the order given, with
//! `fan_in_fan_out` and embeddings transposed, convolutions flattened to `[out, in·kh·kw]`,
//! DoRA rescaled per output feature, `lora_B.bias` added to the base bias, and `modules_to_save`
//! tensors replacing the base's. Arithmetic is f32, rounded once to the output dtype.
//!
//! Planning ([`MergePlan::new`]) resolves every module against the base before anything is
//! written: unmatched modules are an error (or a listed warning with `allow_unmatched`), tied
//! embeddings touched by an adapter are refused, and an output that is an input is refused.
//! Executing ([`MergePlan::run`]) streams: untouched tensors are copied byte for byte with plain
//! reads, merged tensors are computed from the memory map whose pages are then released, and
//! the output lands atomically (see [`crate::io::writer`]).

use crate::adapter::mapping::{self, Resolution, Unmatched};
use crate::adapter::Adapter;
use crate::backend::{self, Dora, MergeJob, NormAxis, Term};
use crate::dtype::{self, Dtype};
use crate::error::{InputError, InputResult};
use crate::io::checkpoint::Layout;
use crate::io::{Checkpoint, Output, TensorSpec};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Output dtype policy: the one `--dtype` of every writing command.
pub use crate::ops::output::DtypeChoice;

/// Options of a merge.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    pub dtype: DtypeChoice,
    /// Re-shard the output into files of at most this many bytes (Hugging Face names).
    pub max_shard_size: Option<u64>,
    /// Subtract instead of add.
    pub unmerge: bool,
    /// Warn about unmatched modules instead of failing.
    pub allow_unmatched: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Write only part `i` of `n` (1-based) of the output files; see [`crate::parts`].
    pub part: Option<(usize, usize)>,
}

/// One adapter and its weight.
#[derive(Debug)]
pub struct WeightedAdapter {
    pub adapter: Adapter,
    pub weight: f64,
}

/// What happens to one base tensor.
#[derive(Debug, Clone)]
enum Action {
    Copy,
    /// Low-rank terms: (adapter, module).
    Merge(Vec<(usize, usize)>),
    /// Bias of modules with `lora_B.bias`: (adapter, module).
    Bias(Vec<(usize, usize)>),
    /// Full replacement: (adapter, full tensor).
    Replace(usize, usize),
}

/// One output file: name and the base tensors it holds, in order.
#[derive(Debug, Clone)]
struct OutFile {
    path: PathBuf,
    tensors: Vec<String>,
}

/// Per-adapter counts reported after a merge.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    pub path: String,
    pub weight: f64,
    pub modules_merged: usize,
    pub tensors_replaced: usize,
    pub biases_updated: usize,
}

/// What a merge did (printed as a table, or as JSON with `--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeSummary {
    pub base: String,
    pub out: String,
    pub operation: &'static str,
    pub device: String,
    pub adapters: Vec<AdapterSummary>,
    pub tensors_merged_count: usize,
    pub tensors_copied_count: usize,
    /// Every file written (shards, then the index, then the copied non-weight files).
    pub files: Vec<String>,
    pub bytes_written: u64,
    pub seconds: f64,
    pub gb_per_s: f64,
    /// Folders this run created for the output (missing parents of `--out`).
    pub created_folders: Vec<String>,
    pub unmatched: Vec<UnmatchedReport>,
}

/// The plan of a merge, printed by `merge --dry-run`: nothing is written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRunSummary {
    pub operation: &'static str,
    pub dry_run: bool,
    pub base: String,
    pub out: String,
    /// The files this run (or this `--part`) would write.
    pub files: Vec<DryRunFile>,
    pub index: Option<String>,
    /// Non-weight files that would be copied.
    pub copied: Vec<String>,
    pub tensors_merged_count: usize,
    pub modules_matched_count: usize,
    pub unmatched: Vec<UnmatchedReport>,
    /// Tensor bytes of the whole output.
    pub bytes: u64,
}

/// One planned output file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRunFile {
    pub path: String,
    pub tensors_count: usize,
    pub bytes: u64,
}

/// An unmatched module with its adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnmatchedReport {
    pub adapter: String,
    #[serde(flatten)]
    pub detail: Unmatched,
}

/// A validated merge, ready to run.
#[derive(Debug)]
pub struct MergePlan {
    pub base: Checkpoint,
    pub adapters: Vec<WeightedAdapter>,
    pub out: PathBuf,
    pub options: MergeOptions,
    actions: HashMap<String, Action>,
    /// Base tensors whose W0 comes from the adapter (`base_layer.weight`): (adapter, full).
    base_override: HashMap<String, (usize, usize)>,
    files: Vec<OutFile>,
    /// Index file to write last (sharded output).
    index: Option<PathBuf>,
    /// Non-weight files to copy: (source, destination).
    extra_files: Vec<(PathBuf, PathBuf)>,
    pub unmatched: Vec<UnmatchedReport>,
    resolutions: Vec<Resolution>,
}

/// Names of input-embedding tensors that `tie_word_embeddings` ties to `lm_head`.
fn is_embedding_name(name: &str) -> bool {
    [
        "embed_tokens.weight",
        "wte.weight",
        "word_embeddings.weight",
        "embed_in.weight",
        "shared.weight",
    ]
    .iter()
    .any(|s| name == *s || name.ends_with(&format!(".{s}")))
}

fn is_lm_head_name(name: &str) -> bool {
    name == "lm_head.weight" || name.ends_with(".lm_head.weight") || name == "embed_out.weight"
}

/// Reads `tie_word_embeddings` and `architectures` from the base's `config.json`, if any.
fn tie_config(folder: &Path) -> Option<(Option<bool>, Vec<String>)> {
    let text = crate::io::read_json_file(&folder.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let tie = v
        .get("tie_word_embeddings")
        .and_then(|t| t.as_bool())
        .or_else(|| {
            v.get("text_config")
                .and_then(|c| c.get("tie_word_embeddings"))
                .and_then(|t| t.as_bool())
        });
    let archs = v
        .get("architectures")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some((tie, archs))
}

/// Whether the base's output embedding is the input embedding (so changing one changes both).
///
/// It follows the architecture, as transformers does: a tie exists only where the model has an
/// output embedding (`*ForCausalLM`, `*LMHeadModel`, `*ForMaskedLM`,
/// `*ForConditionalGeneration`, …) and `tie_word_embeddings` is true (transformers' default when
/// the config does not say). An encoder without an LM head (BertModel, sentence-transformers)
/// ties nothing, whatever `tie_word_embeddings` says. Without a config, a checkpoint with no
/// `lm_head` tensor is taken as tied only if it looks like a decoder LM (layer names of
/// Llama/GPT-2 families).
fn ties_embeddings(base: &Checkpoint, has_lm_head: bool) -> bool {
    let has_embedding = base.names().any(is_embedding_name);
    if !has_embedding {
        return false;
    }
    match tie_config(base.folder()) {
        Some((tie, archs)) if !archs.is_empty() => {
            let has_head = archs.iter().any(|a| {
                [
                    "ForCausalLM",
                    "LMHeadModel",
                    "ForMaskedLM",
                    "ForConditionalGeneration",
                    "WithLMHead",
                ]
                .iter()
                .any(|s| a.ends_with(s))
            });
            has_head && tie.unwrap_or(!has_lm_head)
        }
        Some((Some(tie), _)) => tie,
        _ => {
            !has_lm_head
                && base.names().any(|n| {
                    n.contains(".self_attn.")
                        || n.starts_with("transformer.h.")
                        || n.contains(".attn.c_attn")
                })
        }
    }
}

impl MergePlan {
    /// Resolves and validates everything; writes nothing.
    pub fn new(
        base: Checkpoint,
        adapters: Vec<WeightedAdapter>,
        out: PathBuf,
        options: MergeOptions,
    ) -> Result<Self> {
        if adapters.is_empty() {
            bail!("no adapter given");
        }
        // Everything this run reads; checked against everything it writes once the layout is
        // known, before anything is written.
        let mut inputs = base.input_paths();
        inputs.push(base.root.clone());
        for a in &adapters {
            inputs.extend(a.adapter.input_paths());
        }

        let mut actions: HashMap<String, Action> = HashMap::new();
        let mut base_override: HashMap<String, (usize, usize)> = HashMap::new();
        let mut unmatched = Vec::new();
        let mut resolutions = Vec::new();
        let has_lm_head = base.names().any(is_lm_head_name);
        let is_tied = ties_embeddings(&base, has_lm_head);
        for (ai, wa) in adapters.iter().enumerate() {
            let a = &wa.adapter;
            let label = a.path.display().to_string();
            let res = mapping::resolve(a, &base);
            for u in &res.unmatched {
                unmatched.push(UnmatchedReport {
                    adapter: label.clone(),
                    detail: u.clone(),
                });
            }
            let mut touched: Vec<(String, String)> = Vec::new();
            for p in &res.modules {
                let m = &a.modules[p.module];
                if options.unmerge && m.dora_magnitude.is_some() {
                    bail!(InputError::invalid(
                        &a.path,
                        format!(
                            "module `{}`: a DoRA merge cannot be undone from the merged weights alone (the weight norm of the original base is lost)",
                            m.name
                        )
                    ));
                }
                touched.push((m.name.clone(), p.weight.clone()));
                match actions
                    .entry(p.weight.clone())
                    .or_insert_with(|| Action::Merge(Vec::new()))
                {
                    Action::Merge(v) => {
                        if v.iter().any(|(x, _)| *x == ai) {
                            bail!(InputError::invalid(
                                &a.path,
                                format!(
                                    "two modules of this adapter land on base tensor `{}`",
                                    p.weight
                                )
                            ));
                        }
                        v.push((ai, p.module));
                    }
                    _ => bail!(InputError::invalid(
                        &a.path,
                        format!(
                            "module `{}`: base tensor `{}` is also replaced by a full tensor",
                            m.name, p.weight
                        )
                    )),
                }
                if let Some(b) = &p.bias {
                    match actions
                        .entry(b.clone())
                        .or_insert_with(|| Action::Bias(Vec::new()))
                    {
                        Action::Bias(v) => v.push((ai, p.module)),
                        _ => bail!(InputError::invalid(
                            &a.path,
                            format!("base bias `{b}` is also replaced")
                        )),
                    }
                }
            }
            for (fi, name) in &res.full {
                if options.unmerge {
                    bail!(InputError::invalid(
                        &a.path,
                        format!(
                            "tensor `{}`: modules_to_save replaces the base tensor, which cannot be undone",
                            a.full_tensors[*fi].name
                        )
                    ));
                }
                if let Some(bi) = base.info(name) {
                    if !dtype::is_float_storage(bi.dtype) {
                        bail!(InputError::invalid(
                            &a.path,
                            format!(
                                "tensor `{}` (modules_to_save) would replace base tensor `{name}`, which is {}, not a float type; lorakit does not round float values into integer tensors",
                                a.full_tensors[*fi].name,
                                dtype::name(bi.dtype)
                            )
                        ));
                    }
                }
                touched.push((a.full_tensors[*fi].name.clone(), name.clone()));
                // PEFT saves a targeted embedding's base weight as `{module}.base_layer.weight`;
                // loading it replaces the base weight, which the LoRA delta is then added to.
                let from_base_layer = matches!(&a.full_tensors[*fi].data, crate::adapter::Data::Stored { key, .. } if key.contains(".base_layer."));
                if from_base_layer {
                    if let Some(Action::Merge(v)) = actions.get(name) {
                        if v.iter().any(|(x, _)| *x == ai) {
                            base_override.insert(name.clone(), (ai, *fi));
                            continue;
                        }
                    }
                }
                if actions
                    .insert(name.clone(), Action::Replace(ai, *fi))
                    .is_some()
                {
                    bail!(InputError::invalid(
                        &a.path,
                        format!("base tensor `{name}` is changed by more than one adapter entry (modules_to_save and LoRA)")
                    ));
                }
            }
            // Tied embeddings (PEFT issue #2018): changing one silently changes the other.
            if is_tied {
                for (module, tensor) in &touched {
                    if is_embedding_name(tensor) || is_lm_head_name(tensor) {
                        bail!(InputError::invalid(
                            &a.path,
                            format!(
                                "`{module}` changes `{tensor}`, but the base ties lm_head to the input embedding (tie_word_embeddings); merging would change both silently (PEFT issue #2018). Untie the base first, or leave embeddings out of the adapter"
                            )
                        ));
                    }
                }
            }
            resolutions.push(res);
        }
        // lm_head targeted on a tied base with no lm_head tensor: say why it is unmatched.
        for u in unmatched.iter_mut() {
            if let Unmatched::NotFound { module, expected } = &mut u.detail {
                if expected.ends_with("lm_head.weight") && !has_lm_head {
                    *expected = format!("{expected} (the base has no lm_head tensor: lm_head is tied to the input embedding)");
                    let _ = module;
                }
            }
        }
        if !unmatched.is_empty() && !options.allow_unmatched {
            let list: Vec<String> = unmatched
                .iter()
                .map(|u| format!("{}: {}", u.adapter, u.detail))
                .collect();
            bail!(
                "{} adapter module(s) do not match the base {} (pass --allow-unmatched to merge the rest): {}",
                unmatched.len(),
                base.root.display(),
                list.join("; ")
            );
        }

        let landed: usize = resolutions
            .iter()
            .map(|r| r.modules.len() + r.full.len())
            .sum();
        if landed == 0 {
            let list: Vec<String> = unmatched
                .iter()
                .take(5)
                .map(|u| format!("{}: {}", u.adapter, u.detail))
                .collect();
            bail!(InputError::invalid(
                &base.root,
                format!(
                    "no adapter module matches a tensor of this base, so the merge would change nothing (--allow-unmatched never allows that){}{}",
                    if list.is_empty() { String::new() } else { format!(": {}", list.join("; ")) },
                    if unmatched.len() > 5 { format!("; and {} more", unmatched.len() - 5) } else { String::new() }
                )
            ));
        }
        // Output layout.
        let names: Vec<String> = base.names().map(str::to_owned).collect();
        let out_dtype = |n: &str| {
            options
                .dtype
                .apply(base.info(n).expect("base tensor").dtype)
        };
        let size_of = |n: &str| {
            let i = base.info(n).expect("base tensor");
            dtype::byte_len(out_dtype(n), i.numel()).expect("valid") as u64
        };
        let (files, index, extra_files) = match (&base.layout, options.max_shard_size) {
            (Layout::File, None) => {
                // `--out DIR` or `--out new/` (trailing slash): the base's file name inside it.
                let target = if out.is_dir() || out.as_os_str().to_string_lossy().ends_with('/') {
                    out.join(base.root.file_name().expect("file has a name"))
                } else {
                    out.clone()
                };
                (
                    vec![OutFile {
                        path: target,
                        tensors: names,
                    }],
                    None,
                    Vec::new(),
                )
            }
            (layout, max) => {
                if out.exists() && !out.is_dir() {
                    bail!(InputError::invalid(&out, "the base is a folder (or --max-shard-size is set), so the output must be a folder"));
                }
                if !out.exists() && out.extension().is_some_and(|e| e == "safetensors") {
                    bail!(InputError::invalid(
                        &out,
                        "the base is a folder (or --max-shard-size is set), so the output is a folder, not one .safetensors file; give a folder name (a folder named like a file would be made otherwise)"
                    ));
                }
                let mut files = Vec::new();
                match (layout, max) {
                    (_, Some(max)) => {
                        let groups = shard_groups(&names, &size_of, max);
                        let n = groups.len();
                        for (i, g) in groups.into_iter().enumerate() {
                            let name = if n == 1 {
                                "model.safetensors".to_string()
                            } else {
                                format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
                            };
                            files.push(OutFile {
                                path: out.join(name),
                                tensors: g,
                            });
                        }
                    }
                    (Layout::Folder { file_name }, None) => {
                        files.push(OutFile {
                            path: out.join(file_name),
                            tensors: names,
                        });
                    }
                    (Layout::Sharded { .. }, None) => {
                        let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); base.shards.len()];
                        for n in &names {
                            by_shard[base.entry(n).expect("listed").shard].push(n.clone());
                        }
                        for (s, tensors) in base.shards.iter().zip(by_shard) {
                            let fname = s.path().file_name().expect("shard name");
                            files.push(OutFile {
                                path: out.join(fname),
                                tensors,
                            });
                        }
                    }
                    (Layout::File, None) => unreachable!(),
                }
                let index = match (&base.layout, files.len()) {
                    (Layout::Sharded { index_name }, _) if max.is_none() => {
                        Some(out.join(index_name))
                    }
                    (_, n) if n > 1 => Some(out.join("model.safetensors.index.json")),
                    _ => None,
                };
                let extra = if matches!(base.layout, Layout::File) {
                    Vec::new()
                } else {
                    extra_files(&base, &out)?
                };
                (files, index, extra)
            }
        };
        inputs.extend(extra_files.iter().map(|(src, _)| src.clone()));
        let folder_out = !matches!((&base.layout, options.max_shard_size), (Layout::File, None));
        let mut writes: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        writes.extend(index.iter().cloned());
        writes.extend(extra_files.iter().map(|(_, d)| d.clone()));
        if let Some((i, n)) = options.part {
            writes.push(
                crate::parts::out_dir(&files[0].path).join(crate::parts::manifest_name(i, n)),
            );
        }
        let folders: Vec<PathBuf> = if folder_out {
            vec![out.clone()]
        } else {
            Vec::new()
        };
        crate::io::writer::check_writes(&inputs, &writes, &folders)?;
        Ok(MergePlan {
            base,
            adapters,
            out,
            options,
            actions,
            base_override,
            files,
            index,
            extra_files,
            unmatched,
            resolutions,
        })
    }

    /// What [`Self::run`] would do, without doing it (`merge --dry-run`).
    pub fn dry_run(&self) -> DryRunSummary {
        let size = |n: &String| {
            let i = self.base.info(n).expect("base tensor");
            dtype::byte_len(self.options.dtype.apply(i.dtype), i.numel()).expect("valid") as u64
        };
        let files = self
            .files
            .iter()
            .enumerate()
            .filter(|(fi, _)| crate::parts::owns(self.options.part, *fi))
            .map(|(_, f)| DryRunFile {
                path: f.path.display().to_string(),
                tensors_count: f.tensors.len(),
                bytes: f.tensors.iter().map(size).sum(),
            })
            .collect();
        DryRunSummary {
            operation: if self.options.unmerge {
                "unmerge"
            } else {
                "merge"
            },
            dry_run: true,
            base: self.base.root.display().to_string(),
            out: self.out.display().to_string(),
            files,
            index: self.index.as_ref().map(|p| p.display().to_string()),
            copied: self
                .extra_files
                .iter()
                .map(|(_, d)| d.display().to_string())
                .collect(),
            tensors_merged_count: self
                .actions
                .values()
                .filter(|a| !matches!(a, Action::Copy))
                .count(),
            modules_matched_count: self.resolutions.iter().map(|r| r.modules.len()).sum(),
            unmatched: self.unmatched.clone(),
            bytes: self.output_bytes(),
        }
    }

    /// Bytes the output will hold (tensor data only).
    pub fn output_bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| f.tensors.iter())
            .map(|n| {
                let i = self.base.info(n).expect("base tensor");
                dtype::byte_len(self.options.dtype.apply(i.dtype), i.numel()).expect("valid") as u64
            })
            .sum()
    }

    /// Runs the merge and commits the output. On failure nothing is left behind: temporary
    /// files are removed, and so is the output folder if this run created it.
    pub fn run(self, engine: &backend::Engine) -> Result<MergeSummary> {
        let start = Instant::now();
        let total = self.output_bytes();
        let bar = crate::progress::bar(self.options.progress, total, "merging");
        let mut output = Output::new();
        let dir = crate::parts::out_dir(&self.files[0].path);
        output.create_dir_all(&dir)?;
        let folder_out = self.index.is_some()
            || !matches!(self.base.layout, Layout::File)
            || self.options.max_shard_size.is_some();
        if folder_out {
            let mode = match self.options.part {
                Some(_) => crate::io::writer::LockMode::Shared,
                None => crate::io::writer::LockMode::Exclusive,
            };
            output.lock(&dir, mode)?;
            if self.options.part.is_none() {
                output.remove_on_commit(self.stale_files(&dir));
            }
        } else {
            output.lock(&self.files[0].path, crate::io::writer::LockMode::Exclusive)?;
        }
        let metadata = self.output_metadata();
        let (mut merged, mut copied) = (0usize, 0usize);
        let mut written = Vec::new();
        for (fi, f) in self.files.iter().enumerate() {
            if !crate::parts::owns(self.options.part, fi) {
                continue;
            }
            let specs: Vec<TensorSpec> = f
                .tensors
                .iter()
                .map(|n| {
                    let i = self.base.info(n).expect("base tensor");
                    TensorSpec::new(
                        n.clone(),
                        self.options.dtype.apply(i.dtype),
                        i.shape.clone(),
                    )
                })
                .collect();
            written.push(file_name(&f.path));
            let mut w = output.safetensors(&f.path, &metadata, specs)?;
            for name in &f.tensors {
                let file = self.base.file_of(name).expect("base tensor");
                let info = self.base.info(name).expect("base tensor");
                let out_dtype = self.options.dtype.apply(info.dtype);
                match self.actions.get(name).unwrap_or(&Action::Copy) {
                    Action::Copy if out_dtype == info.dtype => {
                        w.begin(name)?;
                        let mut buf = vec![0u8; (8usize << 20).min(info.byte_len() as usize)];
                        let mut off = 0u64;
                        while off < info.byte_len() {
                            let n = buf.len().min((info.byte_len() - off) as usize);
                            file.read_range(info, off, &mut buf[..n])?;
                            w.write_chunk(&buf[..n])?;
                            off += n as u64;
                            bar.inc(n as u64);
                        }
                        copied += 1;
                    }
                    Action::Copy => {
                        let v = file.view_info(info)?;
                        let data = dtype::encode(out_dtype, &v.to_f32());
                        w.write_tensor(name, &data)?;
                        file.release(info);
                        bar.inc(data.len() as u64);
                        copied += 1;
                    }
                    Action::Merge(terms) => {
                        let data = self.merge_tensor(engine, name, terms, out_dtype)?;
                        w.write_tensor(name, &data)?;
                        file.release(info);
                        bar.inc(data.len() as u64);
                        merged += 1;
                    }
                    Action::Bias(terms) => {
                        let mut v = file.read_f32(name)?;
                        for &(ai, mi) in terms {
                            let wa = &self.adapters[ai];
                            let m = &wa.adapter.modules[mi];
                            let bias = wa.adapter.values(m.bias.as_ref().expect("has bias"))?;
                            let s = self.signed(wa.weight * m.scale) as f32;
                            for (x, b) in v.iter_mut().zip(bias.iter()) {
                                *x += b * s;
                            }
                        }
                        check_finite(&self.base, name, &v)?;
                        let data = dtype::encode(out_dtype, &v);
                        w.write_tensor(name, &data)?;
                        bar.inc(data.len() as u64);
                        merged += 1;
                    }
                    Action::Replace(ai, fi) => {
                        let a = &self.adapters[*ai].adapter;
                        let v = a.values(&a.full_tensors[*fi].data)?;
                        let data = dtype::encode(out_dtype, &v);
                        w.write_tensor(name, &data)?;
                        bar.inc(data.len() as u64);
                        merged += 1;
                    }
                }
            }
            w.finish()?;
        }
        match self.options.part {
            None => self.write_finals(&mut output)?,
            Some((i, n)) => {
                // The last files (index, copied configs) are written by `finalize` once every
                // part is done; this part records what it wrote and what the whole plan is.
                let manifest = crate::parts::Manifest {
                    version: crate::parts::MANIFEST_VERSION,
                    part: i,
                    parts: n,
                    plan: self.part_plan()?,
                    written,
                };
                let dir = crate::parts::out_dir(&self.files[0].path);
                output.small_file(
                    &dir.join(crate::parts::manifest_name(i, n)),
                    &manifest.to_bytes(),
                )?;
            }
        }
        let created: Vec<String> = output
            .created_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let bytes = output.commit()?;
        bar.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        let adapters = self
            .adapters
            .iter()
            .zip(&self.resolutions)
            .map(|(wa, r)| AdapterSummary {
                path: wa.adapter.path.display().to_string(),
                weight: wa.weight,
                modules_merged: r.modules.len(),
                tensors_replaced: r.full.len(),
                biases_updated: r.modules.iter().filter(|p| p.bias.is_some()).count(),
            })
            .collect();
        Ok(MergeSummary {
            base: self.base.root.display().to_string(),
            out: self.out.display().to_string(),
            operation: if self.options.unmerge {
                "unmerge"
            } else {
                "merge"
            },
            device: engine.describe(),
            adapters,
            tensors_merged_count: merged,
            tensors_copied_count: copied,
            files: self
                .files
                .iter()
                .map(|f| f.path.display().to_string())
                .chain(self.index.iter().map(|p| p.display().to_string()))
                .chain(
                    self.extra_files
                        .iter()
                        .map(|(_, d)| d.display().to_string()),
                )
                .collect(),
            bytes_written: bytes,
            seconds,
            gb_per_s: bytes as f64 / 1e9 / seconds.max(1e-9),
            created_folders: created,
            unmatched: self.unmatched.clone(),
        })
    }

    /// Files of an older checkpoint in the output folder that would survive this run and make
    /// it open as the old model: an index lorakit would write (and the shards it lists),
    /// `model.safetensors` and `model-NNNNN-of-NNNNN.safetensors` shards not in the new layout.
    /// Never anything else.
    fn stale_files(&self, dir: &Path) -> Vec<PathBuf> {
        let new: Vec<&Path> = self
            .files
            .iter()
            .map(|f| f.path.as_path())
            .chain(self.index.as_deref())
            .collect();
        let mut stale = Vec::new();
        let Ok(rd) = std::fs::read_dir(dir) else {
            return stale;
        };
        let is_shard_name = |n: &str| {
            n == "model.safetensors"
                || n.strip_prefix("model-")
                    .and_then(|r| r.strip_suffix(".safetensors"))
                    .is_some_and(|r| {
                        let b = r.as_bytes();
                        b.len() == 14
                            && &r[5..9] == "-of-"
                            && b[..5].iter().chain(&b[9..]).all(u8::is_ascii_digit)
                    })
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = dir.join(&name);
            if new.contains(&p.as_path()) || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            if name.ends_with(".safetensors.index.json") {
                // The shards an old index lists go with it (plain names only).
                if let Ok(text) = crate::io::read_json_file(&p) {
                    if let Ok(idx) = crate::io::checkpoint::parse_index(&text) {
                        for (_, shard) in idx.weight_map {
                            let sp = dir.join(&shard);
                            if crate::parts::is_plain_name(&shard)
                                && !new.contains(&sp.as_path())
                                && !stale.contains(&sp)
                            {
                                stale.push(sp);
                            }
                        }
                    }
                }
                stale.push(p);
            } else if is_shard_name(&name) && !stale.contains(&p) {
                stale.push(p);
            }
        }
        stale.sort();
        stale.dedup();
        stale
    }

    /// The index document of the output (sharded outputs).
    fn index_doc(&self) -> Option<Vec<u8>> {
        self.index.as_ref()?;
        let mut weight_map: BTreeMap<String, String> = BTreeMap::new();
        for f in &self.files {
            for n in &f.tensors {
                weight_map.insert(n.clone(), file_name(&f.path));
            }
        }
        let mut meta = self.base.index_metadata.clone().unwrap_or_default();
        meta.insert("total_size".into(), serde_json::json!(self.output_bytes()));
        let doc = serde_json::json!({ "metadata": meta, "weight_map": weight_map });
        let mut text = serde_json::to_vec_pretty(&doc).expect("json");
        text.push(b'\n');
        Some(text)
    }

    /// Copied non-weight files, then the index (last).
    fn write_finals(&self, output: &mut Output) -> Result<()> {
        for (src, dst) in &self.extra_files {
            let bytes = crate::io::read_whole_file(src)?;
            if let Some(parent) = dst.parent() {
                output.create_dir_all(parent)?;
            }
            output.small_file(dst, &bytes)?;
        }
        if let (Some(index), Some(doc)) = (&self.index, self.index_doc()) {
            output.small_file(index, &doc)?;
        }
        Ok(())
    }

    /// The whole output as `finalize` needs it: every file with its expected size, the index,
    /// and the files to copy.
    fn part_plan(&self) -> Result<crate::parts::Plan> {
        let metadata = self.output_metadata();
        let files = self
            .files
            .iter()
            .map(|f| {
                let triples: Vec<(String, Dtype, Vec<usize>)> = f
                    .tensors
                    .iter()
                    .map(|n| {
                        let i = self.base.info(n).expect("base tensor");
                        (
                            n.clone(),
                            self.options.dtype.apply(i.dtype),
                            i.shape.clone(),
                        )
                    })
                    .collect();
                let data: u64 = triples
                    .iter()
                    .map(|(_, d, s)| dtype::byte_len(*d, s.iter().product()).expect("valid") as u64)
                    .sum();
                let header = crate::io::header::serialize(&metadata, &triples).len() as u64;
                crate::parts::PlannedFile {
                    name: file_name(&f.path),
                    bytes: header + data,
                }
            })
            .collect();
        let extra = copied_files(&self.base, &self.out)?;
        let base = std::fs::canonicalize(self.base.folder())
            .with_context(|| format!("{}: cannot resolve", self.base.folder().display()))?
            .display()
            .to_string();
        Ok(crate::parts::Plan {
            base,
            files,
            index_name: self.index.as_ref().map(|p| file_name(p)),
            index: self
                .index_doc()
                .map(|v| String::from_utf8(v).expect("utf8 json")),
            extra,
        })
    }

    fn signed(&self, s: f64) -> f64 {
        if self.options.unmerge {
            -s
        } else {
            s
        }
    }

    fn merge_tensor(
        &self,
        engine: &backend::Engine,
        name: &str,
        terms: &[(usize, usize)],
        out_dtype: Dtype,
    ) -> Result<Vec<u8>> {
        let file = self.base.file_of(name).expect("base tensor");
        let info = self.base.info(name).expect("base tensor");
        let rows = info.shape.first().copied().unwrap_or(1);
        let cols = info.shape.iter().skip(1).product::<usize>();
        // Factors in the stored orientation: a transposed base gets (B·A)ᵀ = Aᵀ·Bᵀ.
        let mut owned: Vec<StoredTerm> = Vec::new();
        let mut order = terms.to_vec();
        if self.options.unmerge {
            order.reverse();
        }
        for &(ai, mi) in &order {
            let a = &self.adapters[ai].adapter;
            let m = &a.modules[mi];
            let (b, av) = a.factors(m)?;
            let (bb, aa) = if m.base_transposed {
                (
                    crate::adapter::transpose(&av, m.rank, m.in_features),
                    crate::adapter::transpose(&b, m.out_features, m.rank),
                )
            } else {
                (b.to_vec(), av.to_vec())
            };
            let mag = m.dora_magnitude.as_ref().map(|d| a.values(d)).transpose()?;
            owned.push(StoredTerm {
                b: bb,
                a: aa,
                magnitude: mag,
            });
        }
        let term_list: Vec<Term> = order
            .iter()
            .zip(&owned)
            .map(
                |(
                    &(ai, mi),
                    StoredTerm {
                        b,
                        a,
                        magnitude: mag,
                    },
                )| {
                    let wa = &self.adapters[ai];
                    let m = &wa.adapter.modules[mi];
                    Term {
                        b,
                        a,
                        rank: m.rank,
                        scale: self.signed(wa.weight * m.scale) as f32,
                        dora: mag.as_ref().map(|v| Dora {
                            magnitude: v.as_slice(),
                            axis: if m.base_transposed {
                                NormAxis::Cols
                            } else {
                                NormAxis::Rows
                            },
                        }),
                    }
                },
            )
            .collect();
        let view = file.view_info(info)?;
        let replaced;
        let w0: &[u8] = match self.base_override.get(name) {
            Some(&(ai, fi)) => {
                let a = &self.adapters[ai].adapter;
                replaced = dtype::encode(info.dtype, &a.values(&a.full_tensors[fi].data)?);
                &replaced
            }
            None => view.data,
        };
        let job = MergeJob {
            w0,
            in_dtype: info.dtype,
            rows,
            cols,
            terms: &term_list,
            out_dtype,
        };
        engine.merge(&job).map_err(|e| {
            let modules: Vec<String> = order
                .iter()
                .map(|&(ai, mi)| self.adapters[ai].adapter.modules[mi].name.clone())
                .collect();
            anyhow::Error::new(InputError::invalid(
                file.path(),
                format!(
                    "tensor `{name}`: merging {} gives an invalid result: {e}",
                    modules.join(" + ")
                ),
            ))
        })
    }

    fn output_metadata(&self) -> Vec<(String, String)> {
        let mut meta: Vec<(String, String)> = self
            .base
            .metadata()
            .iter()
            .filter(|(k, _)| !k.starts_with("lorakit."))
            .cloned()
            .collect();
        let adapters: Vec<serde_json::Value> = self
            .adapters
            .iter()
            .map(|wa| serde_json::json!({ "path": wa.adapter.path.display().to_string(), "weight": wa.weight }))
            .collect();
        meta.push(("lorakit.version".into(), env!("CARGO_PKG_VERSION").into()));
        meta.push((
            "lorakit.operation".into(),
            if self.options.unmerge {
                "unmerge"
            } else {
                "merge"
            }
            .into(),
        ));
        meta.push((
            "lorakit.adapters".into(),
            serde_json::Value::Array(adapters).to_string(),
        ));
        meta
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One term's factors in the base tensor's stored orientation.
struct StoredTerm {
    b: Vec<f32>,
    a: Vec<f32>,
    magnitude: Option<crate::adapter::Values>,
}

fn check_finite(base: &Checkpoint, name: &str, v: &[f32]) -> InputResult<()> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        let path = base
            .file_of(name)
            .map(|f| f.path().to_path_buf())
            .unwrap_or_default();
        return Err(InputError::invalid(
            path,
            format!(
                "tensor `{name}`: merged value at {i} is not finite ({})",
                v[i]
            ),
        ));
    }
    Ok(())
}

/// Greedy sharding as `huggingface_hub.split_torch_state_dict_into_shards`: tensors in order,
/// a new shard when the next tensor would exceed `max` (a tensor larger than `max` gets its own).
fn shard_groups(names: &[String], size_of: &dyn Fn(&str) -> u64, max: u64) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    let mut cur_size = 0u64;
    for n in names {
        let s = size_of(n);
        if !cur.is_empty() && cur_size + s > max {
            groups.push(std::mem::take(&mut cur));
            cur_size = 0;
        }
        cur.push(n.clone());
        cur_size += s;
    }
    if !cur.is_empty() || groups.is_empty() {
        groups.push(cur);
    }
    groups
}

/// Every regular, non-weight, non-hidden file of the base folder (config.json, tokenizer
/// files, generation_config.json, …), to copy beside the output.
/// [`extra_files`] as a part manifest records them: (canonical source, destination relative
/// to `out`).
pub(crate) fn copied_files(base: &Checkpoint, out: &Path) -> Result<Vec<(String, String)>> {
    extra_files(base, out)?
        .into_iter()
        .map(|(src, dst)| -> Result<(String, String)> {
            let src = std::fs::canonicalize(&src)
                .with_context(|| format!("{}: cannot resolve", src.display()))?;
            let rel = dst.strip_prefix(out).unwrap_or(&dst);
            Ok((
                src.display().to_string(),
                rel.to_string_lossy().into_owned(),
            ))
        })
        .collect()
}

/// The non-weight files of a base folder, copied into the output: configs, tokenizer files,
/// and subfolders (sentence-transformers' `1_Pooling/`, `2_Normalize/`), recursively. Symlinks
/// are followed (a Hugging Face cache snapshot is all symlinks into `blobs/`); hidden entries,
/// weights and pickles are not copied.
fn extra_files(base: &Checkpoint, out: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    fn walk(dir: &Path, out: &Path, depth: usize, v: &mut Vec<(PathBuf, PathBuf)>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_weight =
                name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json");
            let is_pickle = [".bin", ".pt", ".pth", ".ckpt", ".gguf"]
                .iter()
                .any(|x| name.ends_with(x));
            if is_weight || is_pickle || name.starts_with('.') {
                continue;
            }
            // Follows symlinks: what the entry is, not what the link is.
            let Ok(meta) = std::fs::metadata(e.path()) else {
                continue;
            };
            if meta.is_file() {
                v.push((e.path(), out.join(&name)));
            } else if meta.is_dir() && depth < 4 {
                walk(&e.path(), &out.join(&name), depth + 1, v)?;
            }
        }
        Ok(())
    }
    let mut v = Vec::new();
    walk(base.folder(), out, 0, &mut v)?;
    Ok(v)
}
