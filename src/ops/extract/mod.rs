//! Extracting a LoRA adapter from two checkpoints: `ΔW = W − W0` per weight, factored by a
//! randomized SVD, written as a PEFT folder or a kohya file.
//!
//! # What is extracted
//!
//! Every float tensor named `*.weight` with at least two dimensions, present in both
//! checkpoints with the same shape and dtype, is a candidate module (name = tensor name without
//! `.weight`):
//!
//! * 2-D weights are `nn.Linear`, stored `[out, in]`; with `fan_in_fan_out` they are GPT-2
//!   `Conv1D`, stored `[in, out]` (nothing in a checkpoint tells the two apart, so the caller
//!   says which);
//! * 2-D weights whose module name looks like an embedding (last component containing `embed`
//!   but not `embed_out`, or `wte`, `wpe`, `shared`) are embeddings, stored `[vocab, dim]`, handled
//!   per [`EmbeddingMode`];
//! * weights with more than two dimensions are convolutions `[out, in, kh, kw, …]`, flattened
//!   to `[out, in·kh·kw]`.
//!
//! Every other float tensor (norms, biases, …) is compared; a changed one is reported and, with
//! [`ExtractOptions::save_changed`], stored in full (see [`ExtractPlan::run`]). Non-float
//! tensors are compared byte for byte and only reported.
//!
//! # Arithmetic
//!
//! Per module, in one streamed pass over the two memory maps: `W` and `W0` are decoded to f32
//! (exact for F32/F16/BF16), `ΔW = W − W0` is formed in f32 and `‖ΔW‖_F²`, `‖W0‖_F²` are summed in
//! f64. The pages of both tensors are released afterwards, so resident memory stays at about one
//! f32 copy of the largest module.
//!
//! `ΔW` is factored by the randomized range finder of Halko, Martinsson & Tropp (2011),
//! Algorithm 4.4 (subspace iteration with QR re-orthonormalisation after every product,
//! `l = rank + oversample` samples, `power_iters` iterations) followed by Algorithm 5.1 (SVD of
//! `QᵀΔW`) — [`crate::linalg::randomized_svd`] — through a [`LinearOperator`](crate::linalg::LinearOperator) for `ΔW`, so the
//! products can run elsewhere (see [`DeltaOperators`]). When `rank + oversample ≥ min(d, k)` the
//! exact SVD is used (nothing is gained by sampling); `exact` forces a full SVD everywhere.
//! The kept triplets become `B = U_k·√S_k`, `A = √S_k·V_kᵀ` ([`crate::linalg::split_factors`]),
//! rescaled by `1/√scale` each when `scale = alpha/rank ≠ 1`, so that `scale·B·A = U_k·S_k·V_kᵀ`.
//!
//! The reported relative error `‖ΔW − scale·B·A‖_F / ‖ΔW‖_F` is that of the factors as written.
//! For f32 factors of the randomized SVD whose error is at least 10 %, it is `‖ΔW‖² − Σ_{i<k} sᵢ²`
//! (Pythagoras, exact for an orthonormal basis; see [`closed_form_residual_sq`]), accurate to
//! ~10⁻⁴ relative and free. Otherwise (smaller errors, where that difference is all rounding;
//! f16/bf16 factors, whose rounding the spectrum does not see; `exact`) it is computed
//! explicitly: `scale·B·A` is formed in f32 block by block and the squared differences summed
//! in f64.
//!
//! # Determinism
//!
//! The Gaussian test matrix of each module is seeded by [`module_seed`] (`seed` and the tensor
//! name), so a module's factors do not depend on which other modules are extracted. The dense
//! kernels are faer's (whatever the `lapack` feature says): matrix products on the rayon pool
//! (bit-identical for any thread count), QR and the small SVDs sequential (faer's parallel QR/SVD
//! round differently with different thread counts). Same inputs, options and seed → byte-identical
//! output on the same CPU type. `exact` uses faer's parallel SVD for speed and is reproducible
//! for a given thread count (faer's f64 SVD since sweep10: see `factorize`).
//!
//! Must not print or spell a command-line flag: planning is `plan.rs`'s, factoring and writing
//! `run.rs`'s, and the report goes back to the caller.

use crate::adapter::{Format, ModuleKind};
use crate::dtype::Dtype;
use crate::error::{Opt, OptionError};
use crate::io::Checkpoint;
use anyhow::{bail, Result};
use regex::Regex;
use std::path::PathBuf;

mod factor;
mod operators;
mod plan;
mod run;
#[cfg(test)]
mod tests;

pub use factor::*;
pub use operators::*;

pub use crate::ops::rank::RankRule;

/// What to do with changed embedding matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingMode {
    /// Low-rank, in PEFT's embedding layout (`lora_embedding_A` `[r, vocab]`, `lora_embedding_B`
    /// `[dim, r]`, `ΔW = (B·A)ᵀ`).
    Lora,
    /// The tuned embedding stored in full (`modules_to_save`).
    Full,
    /// Left out (reported).
    Skip,
}

/// Options of an extraction.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub rank: RankRule,
    /// Only modules this selects …
    pub targets: Option<ModuleFilter>,
    /// … and that this does not (matched against the module and the tensor name).
    pub exclude: Option<ModuleFilter>,
    pub format: Format,
    /// kohya key prefix (`lora_unet`, `lora_te`, …).
    pub kohya_prefix: String,
    /// `lora_alpha` of every module; `None` = each module's rank (scale 1).
    pub alpha: Option<f64>,
    pub embeddings: EmbeddingMode,
    /// Full SVD instead of the randomized one.
    pub exact: bool,
    /// Oversampling `p`; `None` = [`crate::linalg::default_oversample`] of the module's rank cap.
    pub oversample: Option<usize>,
    /// Power iterations: at least `power_iters`, more while they still lower the error
    /// ([`crate::linalg::randomized_svd_adaptive_with`]), at most `max_power_iters`.
    pub power_iters: usize,
    pub max_power_iters: usize,
    pub seed: u64,
    /// Skip modules with `‖ΔW‖_F / ‖W0‖_F` below this.
    pub min_diff: f64,
    /// Store changed tensors that are not extracted (norms, biases) in full.
    pub save_changed: bool,
    /// 2-D weights are stored `[in, out]` (GPT-2 Conv1D).
    pub fan_in_fan_out: bool,
    /// Dtype of the written factors and full tensors.
    pub dtype: Dtype,
    /// `base_model_name_or_path` of the PEFT config.
    pub base_model: Option<String>,
    /// Where progress is reported (silent by default).
    pub progress: crate::progress::Reporter,
}

impl ExtractOptions {
    /// PEFT output, f32 factors, randomized SVD with the default oversampling and 2 to 10
    /// adaptive power iterations, seed 0, nothing else.
    pub fn new(rank: RankRule) -> Self {
        ExtractOptions {
            rank,
            targets: None,
            exclude: None,
            format: Format::Peft,
            kohya_prefix: "lora_unet".into(),
            alpha: None,
            embeddings: EmbeddingMode::Lora,
            exact: false,
            oversample: None,
            power_iters: 2,
            max_power_iters: crate::linalg::AdaptiveStop::default().max_power_iters,
            seed: 0,
            min_diff: 0.0,
            save_changed: false,
            fan_in_fan_out: false,
            dtype: Dtype::F32,
            base_model: None,
            progress: crate::progress::Reporter::default(),
        }
    }

    fn selects(&self, tensor: &str) -> bool {
        let module = module_of(tensor);
        self.targets.as_ref().is_none_or(|f| f.matches(module))
            && !self
                .exclude
                .as_ref()
                .is_some_and(|f| f.matches(module) || f.matches(tensor))
    }
}

/// Which modules a `--targets` / `--exclude` names, in the one syntax `extract` and `train`
/// share: a comma list of module names or dotted suffixes, matched as PEFT's
/// `target_modules` list is (`q_proj` matches `model.layers.0.self_attn.q_proj`, not
/// `xq_proj`), or `re:PATTERN`, a regex searched anywhere in the name.
#[derive(Debug, Clone)]
pub enum ModuleFilter {
    Names(Vec<String>),
    Regex(Regex),
}

impl ModuleFilter {
    /// Parses the value of option `opt` ([`Opt::Targets`] or [`Opt::Exclude`]), which errors
    /// name.
    pub fn parse(opt: Opt, s: &str) -> Result<ModuleFilter> {
        if let Some(re) = s.strip_prefix("re:") {
            return Regex::new(re).map(ModuleFilter::Regex).map_err(|e| {
                let msg = e.to_string();
                let last = msg
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                let (s, why) = (
                    s.to_owned(),
                    last.trim().trim_start_matches("error: ").to_owned(),
                );
                anyhow::Error::new(OptionError::new(move |o| {
                    format!("{} `{s}`: not a valid regex: {why}", o.opt(opt))
                }))
            });
        }
        let names: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            let s = s.to_owned();
            bail!(OptionError::new(move |o| format!(
                "{} `{s}` names no module (a comma list such as q_proj,v_proj, or re:REGEX)",
                o.opt(opt)
            )));
        }
        Ok(ModuleFilter::Names(names))
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            ModuleFilter::Names(v) => v.iter().any(|t| {
                name == t
                    || name
                        .strip_suffix(t.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }),
            ModuleFilter::Regex(r) => r.is_match(name),
        }
    }
}

// ---------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------

/// How a candidate weight is laid out.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Layout {
    /// `[out, in]`.
    Linear,
    /// `[in, out]` (fan_in_fan_out).
    LinearT,
    /// `[vocab, dim]`.
    Embedding,
    /// `[out, in, kernel…]`.
    Conv(Vec<usize>),
}

#[derive(Debug, Clone)]
pub(super) enum ItemKind {
    /// A low-rank candidate.
    LowRank(Layout),
    /// An embedding under `--embeddings full` or `skip`.
    EmbeddingWhole(EmbeddingMode),
    /// Another float tensor (norm, bias, …).
    Other,
    /// Not a float tensor: compared byte for byte only.
    NonFloat,
}

#[derive(Debug, Clone)]
pub(super) struct Item {
    name: String,
    module: String,
    shape: Vec<usize>,
    kind: ItemKind,
}

/// The plan of an extraction, printed by `extract --dry-run`: nothing is computed or written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtractDryRun {
    pub operation: &'static str,
    pub dry_run: bool,
    pub base: String,
    pub tuned: String,
    pub out: String,
    pub files: Vec<String>,
    pub tensors_count: usize,
    pub low_rank_candidates_count: usize,
    pub excluded_count: usize,
    pub skipped_one_sided: Vec<String>,
}

/// A validated extraction, ready to run.
#[derive(Debug)]
pub struct ExtractPlan {
    pub base: Checkpoint,
    pub tuned: Checkpoint,
    pub out: PathBuf,
    pub options: ExtractOptions,
    items: Vec<Item>,
    /// Tensors left out by `targets` / `exclude`.
    pub excluded: usize,
    /// Non-float tensors (buffers such as `embeddings.position_ids`, which transformers 5 no
    /// longer saves) present in one checkpoint only: reported and skipped.
    pub one_sided: Vec<String>,
    /// The `ΔW` buffer, reused from module to module: a fresh multi-megabyte allocation costs a
    /// page fault per 4 KiB on first write.
    scratch: std::sync::Mutex<Vec<f32>>,
}

/// A quantized base (bitsandbytes, FP8; see [`crate::io::quant`]) made ready for extraction:
/// ΔW is taken against what the base dequantizes to, so the base is first dequantized, exactly
/// as `lorakit dequantize` does, into a temporary folder that lives as long as the returned
/// guard, in the dtype of the tuned checkpoint's counterpart of its first quantized weight
/// (when that is the dtype the library dequantizes to, only the quantized weights take it).
/// A float base is returned unchanged (and no guard).
pub fn dequantized_base(
    base: Checkpoint,
    tuned: &Checkpoint,
) -> Result<(Checkpoint, Option<TempFolder>)> {
    let quant = crate::io::quant::QuantMap::scan(&base)?;
    let Some(first) = quant.iter().next() else {
        return Ok((base, None));
    };
    let dtype = match tuned.info(&first.name).map(|i| i.dtype) {
        // The dtype the library dequantizes to: every other tensor keeps its own (a GPTQ
        // model's float16 weights beside a float32 lm_head).
        Some(d) if d == first.natural_dtype() => crate::ops::output::DtypeChoice::Keep,
        Some(crate::dtype::Dtype::F16) => crate::ops::output::DtypeChoice::F16,
        Some(crate::dtype::Dtype::BF16) => crate::ops::output::DtypeChoice::Bf16,
        _ => crate::ops::output::DtypeChoice::F32,
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = TempFolder(std::env::temp_dir().join(format!(
        ".lorakit-dequantized-base-{}-{nanos}",
        std::process::id()
    )));
    let out = tmp.0.join("base");
    let options = crate::ops::merge::MergeOptions {
        dtype,
        ..Default::default()
    };
    crate::ops::merge::MergePlan::dequantize(base, out.clone(), options)?
        .run(&crate::backend::Engine::Cpu)?;
    Ok((Checkpoint::open(&out)?, Some(tmp)))
}

/// A temporary folder removed (with its contents) when dropped.
#[derive(Debug)]
pub struct TempFolder(PathBuf);

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The module a tensor belongs to: its name without the last dotted component.
pub fn module_of(tensor: &str) -> &str {
    tensor.rsplit_once('.').map_or(tensor, |(m, _)| m)
}

/// Whether a 2-D `*.weight` looks like an embedding, from its module name.
pub fn is_embedding_module(module: &str) -> bool {
    let last = module.rsplit('.').next().unwrap_or(module);
    (last.contains("embed") && last != "embed_out") || matches!(last, "wte" | "wpe" | "shared")
}

// ---------------------------------------------------------------------------
// Outcomes (what one tensor contributes; the unit of a split run)
// ---------------------------------------------------------------------------

/// What extracting one planned tensor produced: everything [`ExtractPlan::assemble`] needs
/// from it. A split run (`extract --part I/N`) stores its tensors' outcomes in a part file
/// ([`crate::parts`]); `finalize` reads them back and assembles the adapter.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<TensorReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<TensorReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whole: Option<WholeModule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_rank: Option<Box<LowRankOutcome>>,
}

/// A module whose tensors are stored whole.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct WholeModule {
    pub module: String,
    /// `embedding_full` or `save_changed`.
    pub reason: String,
    /// Overrides an earlier reason for the same module (embeddings) instead of keeping it.
    pub replace: bool,
}

/// One extracted module.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct LowRankOutcome {
    pub report: ModuleReport,
    pub kind: ModuleKind,
    pub out_features: usize,
    pub in_features: usize,
    /// The base stores the weight transposed (fan_in_fan_out, embeddings).
    pub transposed: bool,
    /// `‖ΔW − scale·B·A‖_F²`, of the factors as written.
    pub residual_sq: f64,
    /// `‖ΔW‖_F²`.
    pub norm_sq: f64,
    pub full_delta_bytes: u64,
    /// Canonical `A` (`rank × in_features`) and `B` (`out_features × rank`), already rounded
    /// to the output dtype. Part files store them as tensors, not in the JSON.
    #[serde(skip)]
    pub a: Vec<f32>,
    #[serde(skip)]
    pub b: Vec<f32>,
}

// ---------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------

/// One extracted module.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ModuleReport {
    /// Module name (PEFT target).
    pub name: String,
    /// Checkpoint tensor.
    pub tensor: String,
    /// `linear`, `embedding`, `conv3x3`, …
    pub kind: String,
    /// Stored shape of the weight.
    pub shape: Vec<usize>,
    pub rank: usize,
    pub alpha: f64,
    pub scale: f64,
    /// `Σ_{i<rank} sᵢ² / ‖ΔW‖_F²`.
    pub energy_kept: f64,
    /// `‖ΔW − scale·B·A‖_F / ‖ΔW‖_F`, of the factors as written.
    pub rel_error: f64,
    /// `‖ΔW‖_F`.
    pub delta_norm: f64,
    /// `‖ΔW‖_F / ‖W0‖_F` (`null` when `W0 = 0`).
    pub rel_diff: Option<f64>,
    /// `randomized` or `exact`.
    pub method: String,
    /// Oversampling and power iterations the randomized SVD used (0 and 0 when exact).
    #[serde(default)]
    pub oversample: usize,
    #[serde(default)]
    pub power_iters: usize,
    /// Wall time of the module, and its parts.
    pub seconds: f64,
    pub timings: Timings,
}

/// Where a module's time went (seconds).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    /// Reading both tensors and forming `ΔW` with its norms.
    pub delta: f64,
    /// The (randomized or exact) SVD.
    pub factorize: f64,
    /// The explicit error `‖ΔW − scale·B·A‖_F` of the factors as written.
    pub error: f64,
}

/// A tensor that was not extracted.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<usize>,
    /// `‖ΔW‖_F / ‖W0‖_F` (`null` for non-float tensors, or when `W0 = 0`).
    pub rel_diff: Option<f64>,
    /// skipped: `unchanged`, `below_min_diff`, `embedding_skip`; changed: `stored`,
    /// `not_stored`, `non_float`.
    pub reason: String,
}

impl TensorReport {
    fn new(item: &Item, rel_diff: Option<f64>, reason: &str) -> Self {
        TensorReport {
            name: item.name.clone(),
            shape: item.shape.clone(),
            rel_diff,
            reason: reason.to_owned(),
        }
    }
}

/// A tensor stored whole in the adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FullReport {
    pub name: String,
    pub shape: Vec<usize>,
    /// `save_changed`, `embedding_full` or `lora_only_bias`.
    pub reason: String,
}

/// Totals over the extracted modules.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Totals {
    pub module_count: usize,
    pub rank_min: usize,
    pub rank_max: usize,
    /// `(Σ ‖ΔW − scale·B·A‖_F²)^½ / (Σ ‖ΔW‖_F²)^½` over the modules.
    pub rel_error: f64,
    /// `Σ kept energy / Σ ‖ΔW‖_F²`.
    pub energy_kept: f64,
    /// `(Σ ‖ΔW‖_F²)^½`.
    pub delta_norm: f64,
}

/// What an extraction did (printed as a table, or as JSON with `--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtractSummary {
    pub base: String,
    pub tuned: String,
    pub out: String,
    pub format: Format,
    pub device: String,
    /// `randomized` or `exact`.
    pub method: &'static str,
    /// `null` = `max(10, rank/2)` per module (each module reports what it used).
    pub oversample: Option<usize>,
    /// The least and most power iterations (each module reports how many it ran).
    pub power_iters: usize,
    pub max_power_iters: usize,
    pub seed: u64,
    pub rank_rule: RankRule,
    /// `--alpha`, `null` = each module's rank.
    pub alpha: Option<f64>,
    /// Dtype of the written tensors.
    pub dtype: String,
    pub modules: Vec<ModuleReport>,
    pub full_tensors: Vec<FullReport>,
    pub modules_to_save: Vec<String>,
    /// Changed tensors that are not low-rank modules (norms, biases, non-float).
    pub changed_tensors: Vec<TensorReport>,
    pub skipped: Vec<TensorReport>,
    /// Tensors left out by --targets / --exclude.
    pub excluded: usize,
    pub totals: Totals,
    /// Tensor data bytes of the adapter (factors, alphas, full tensors).
    pub adapter_bytes: u64,
    /// Bytes of the extracted modules' full `ΔW` in the checkpoint dtype.
    pub full_delta_bytes: u64,
    /// `full_delta_bytes / adapter_bytes`.
    pub compression: f64,
    /// Bytes written (headers and config included).
    pub bytes_written: u64,
    pub seconds: f64,
}
