//! The report of a check (`check --json`): per target a verdict and the rules that fired
//! ([`TargetReport`], [`Finding`]), where each module lands in the base ([`Placement`]), and the
//! base's facts the rules read ([`BaseFacts`]).
//!
//! A leaf of plain `Serialize` values: the base reader and the facts fill parts of it, the engine
//! (`check/mod.rs`) assembles it, `fix` reads it. Must not evaluate a rule or read a file.

use super::target::{Kind, Target};
use super::when::Severity;
use crate::adapter::Format;
use serde::Serialize;

/// The facts of a base model that rules need, read from its `config.json` when there is one
/// (any architecture: only these fields are read).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BaseFacts {
    pub path: String,
    pub model_type: Option<String>,
    pub architectures: Vec<String>,
    /// `text_config.architectures` of a multimodal config (empty when absent).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub text_architectures: Vec<String>,
    pub vocab_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub tie_word_embeddings: bool,
    pub has_lm_head: bool,
}

/// A target's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Loads,
    LoadsWithWarnings,
    Fails,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Loads => "LOADS",
            Verdict::LoadsWithWarnings => "LOADS WITH WARNINGS",
            Verdict::Fails => "FAILS",
        }
    }
}

/// One rule that fired.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub why: &'static str,
    /// The modules or keys it fired on.
    pub items: Vec<String>,
    /// `repo file @version (where)`.
    pub source: String,
}

/// The verdict of one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: Target,
    pub verdict: Verdict,
    /// No rule refuses the adapter.
    pub loads: bool,
    /// It loads and every tensor is applied as trained.
    pub applies_all: bool,
    pub findings: Vec<Finding>,
    /// Rules that could not be evaluated: they need `--base` (names, shapes, vocabulary, tied
    /// embeddings), or a module list known only for Llama-family models.
    pub not_evaluated: Vec<&'static str>,
}

/// Where one module lands in the base (with `--base`).
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub module: String,
    /// `exact`, `suffix` (another root prefix), `rows` (trainable-token rows of the base
    /// tensor), `row_slice` (q, k or v on its rows of a fused `in_proj_weight`), `module_rows`
    /// (some of the module's rows, or all reordered, make the tensor: a model's other layout),
    /// `tied` (a tied base's lm_head on the input embedding it shares), `not_found`, `ambiguous`, `shape_mismatch`, `not_float`.
    pub status: &'static str,
    pub base_tensor: Option<String>,
    pub detail: Option<String>,
    /// `target: rule` for every refusal or silent drop that names this module (or one of its
    /// tensors): where it is not applied as trained, and why.
    pub not_applied_by: Vec<String>,
}

/// The report of a check (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub operation: &'static str,
    pub adapter: String,
    pub format: Format,
    pub kind: Kind,
    pub base: Option<BaseFacts>,
    /// The adapter's low-rank modules (with or without `--base`): not the length of
    /// `modules`, which is a different list.
    pub modules_count: usize,
    /// The adapter's full tensors (`modules_to_save`, trainable tokens).
    pub full_tensors_count: usize,
    /// Where each adapter entry lands in the base: empty without `--base` (nothing to place
    /// it on); with it, one placement per module and full tensor, unmatched ones included
    /// (`status` says which), so `modules_count + full_tensors_count` entries.
    pub modules: Vec<Placement>,
    pub targets: Vec<TargetReport>,
    /// Why lorakit could not read the adapter's weights although PEFT loads it (a tuner it does
    /// not read, projections regenerated from a seed): the verdicts then come from the rules
    /// on its config and tensor names only, and no module was placed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<String>,
    /// Every target loads and applies everything.
    pub pass: bool,
}
