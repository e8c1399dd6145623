//! `check`: will this adapter load, and apply every tensor, in a given loader?
//!
//! The loaders' rules are data ([`rules::RULES`]: target, condition, severity, why, and the file
//! and version each was read from). This module is the one generic engine: it computes every
//! condition ([`rules::When`]) once from the adapter — and, with a base model, from lorakit's one
//! name matcher ([`crate::adapter::mapping::resolve`]) and the base's `config.json` — and fires
//! the rules of the requested targets. A target's verdict is the worst severity that fired:
//! none → loads; warnings only → loads with warnings; a silent drop or a refusal → fails.
//!
//! Conditions that need the base (names, shapes, vocabulary, tied embeddings) are not guessed
//! without one: the report lists the rules that were not evaluated. An adapter holding a NaN
//! or ±∞ is refused, as every operation refuses it ([`Adapter::check_finite`]): every loader
//! would apply it and answer NaN. Must not: write anything (that is [`fix`]), or print.

mod base;
mod facts;
pub mod fix;
mod fixing;
mod packed;
pub mod rules;
pub mod saved;
mod single_file;
pub mod when;

use crate::adapter::{Adapter, Format};
use crate::error::InputResult;
use crate::io::Checkpoint;
use base::{base_facts, kind_of, read_added_tokens};
use facts::{item_subject, Evaluated, Facts};
use rules::{Rule, Severity};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A loader `check` knows the rules of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Target {
    #[serde(rename = "vllm")]
    Vllm,
    #[serde(rename = "sglang")]
    Sglang,
    #[serde(rename = "lorax")]
    Lorax,
    #[serde(rename = "llama.cpp")]
    LlamaCpp,
    #[serde(rename = "diffusers")]
    Diffusers,
    #[serde(rename = "comfy")]
    Comfy,
    #[serde(rename = "peft")]
    Peft,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Vllm,
        Target::Sglang,
        Target::Lorax,
        Target::LlamaCpp,
        Target::Diffusers,
        Target::Comfy,
        Target::Peft,
    ];

    /// The one spelling in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Vllm => "vllm",
            Target::Sglang => "sglang",
            Target::Lorax => "lorax",
            Target::LlamaCpp => "llama.cpp",
            Target::Diffusers => "diffusers",
            Target::Comfy => "comfy",
            Target::Peft => "peft",
        }
    }
}

/// What the adapter is for, which decides the default targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A causal LM (Llama-style `layers.N.self_attn/mlp` names, or a `…ForCausalLM` base).
    Llm,
    /// Anything else: diffusion models, text encoders, other networks.
    Other,
}

impl Kind {
    /// Targets checked when none is asked for: the serving stacks for LLM adapters, the
    /// diffusion loaders for kohya files, PEFT and ComfyUI for other PEFT folders.
    pub fn default_targets(self, format: Format) -> Vec<Target> {
        match (self, format) {
            (Kind::Llm, _) => vec![
                Target::Vllm,
                Target::Sglang,
                Target::Lorax,
                Target::LlamaCpp,
                Target::Peft,
            ],
            (Kind::Other, Format::Kohya) => vec![Target::Diffusers, Target::Comfy],
            (Kind::Other, Format::Peft) => vec![Target::Peft, Target::Comfy],
        }
    }
}

/// Options of a check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Loaders to check; empty = [`Kind::default_targets`].
    pub targets: Vec<Target>,
    /// Base model (file or folder) to resolve every module against.
    pub base: Option<PathBuf>,
}

/// The facts of a base model that rules need, read from its `config.json` when there is one
/// (any architecture: only these fields are read).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BaseFacts {
    pub path: String,
    pub model_type: Option<String>,
    pub architectures: Vec<String>,
    pub vocab_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub tie_word_embeddings: bool,
    pub has_lm_head: bool,
}

/// A validated check: the adapter and base are open, targets chosen; nothing is evaluated yet.
pub struct Plan {
    pub adapter: Adapter,
    pub base: Option<Checkpoint>,
    pub base_facts: Option<BaseFacts>,
    pub kind: Kind,
    pub targets: Vec<Target>,
    /// `added_tokens.json` beside the adapter: (token, id).
    pub added_tokens: Vec<(String, u64)>,
}

impl Plan {
    /// Opens the adapter and base and chooses the targets.
    pub fn new(adapter_path: &Path, opts: &Options) -> InputResult<Plan> {
        let adapter = Adapter::open_for_check(adapter_path)?;
        // Every loader would load and apply a NaN or ±∞ as it is, and the model's outputs would
        // be NaN: bad input, refused as the operations that read the values refuse it.
        adapter.check_finite()?;
        let base = opts.base.as_ref().map(Checkpoint::open).transpose()?;
        let base_facts = match &base {
            Some(b) => Some(base_facts(b)?),
            None => None,
        };
        let kind = kind_of(&adapter, base_facts.as_ref());
        let mut targets = if opts.targets.is_empty() {
            kind.default_targets(adapter.format)
        } else {
            opts.targets.clone()
        };
        let mut seen = BTreeSet::new();
        targets.retain(|t| seen.insert(*t));
        let added_tokens = read_added_tokens(&adapter)?;
        Ok(Plan {
            adapter,
            base,
            base_facts,
            kind,
            targets,
            added_tokens,
        })
    }

    /// Evaluates every rule of the chosen targets.
    pub fn run(&self) -> Report {
        let facts = Facts::compute(self);
        let mut targets = Vec::new();
        for &t in &self.targets {
            let mut findings = Vec::new();
            let mut not_evaluated = Vec::new();
            for rule in rules::for_target(t) {
                match facts.items(rule.when) {
                    Evaluated::Items(items) if !items.is_empty() => {
                        findings.push(Finding::new(rule, items))
                    }
                    Evaluated::Items(_) => {}
                    Evaluated::NeedsBase => not_evaluated.push(rule.id),
                }
            }
            findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
            let worst = findings.iter().map(|f| f.severity).max();
            let verdict = match worst {
                None => Verdict::Loads,
                Some(Severity::Warning) => Verdict::LoadsWithWarnings,
                Some(_) => Verdict::Fails,
            };
            targets.push(TargetReport {
                target: t,
                verdict,
                loads: worst != Some(Severity::Error),
                applies_all: worst.is_none_or(|s| s == Severity::Warning),
                findings,
                not_evaluated,
            });
        }
        let pass = targets.iter().all(|t| t.applies_all);
        let mut placements = facts.placements.clone();
        for p in placements.iter_mut() {
            for t in &targets {
                for f in &t.findings {
                    if f.severity == Severity::Warning {
                        continue;
                    }
                    let hit = f.items.iter().any(|item| {
                        let subject = item_subject(item);
                        subject == p.module
                            || subject
                                .strip_prefix(p.module.as_str())
                                .is_some_and(|rest| rest.starts_with('.'))
                    });
                    if hit {
                        p.not_applied_by
                            .push(format!("{}: {}", t.target.name(), f.rule));
                    }
                }
            }
        }
        Report {
            operation: "check",
            adapter: self.adapter.path.display().to_string(),
            format: self.adapter.format,
            kind: self.kind,
            base: self.base_facts.clone(),
            modules_count: self.adapter.modules.len(),
            full_tensors_count: self.adapter.full_tensors.len(),
            modules: placements,
            targets,
            pass,
        }
    }
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

impl Finding {
    fn new(rule: &Rule, items: Vec<String>) -> Finding {
        let s = rule.source;
        Finding {
            rule: rule.id,
            severity: rule.severity,
            why: rule.why,
            items,
            source: format!("{} {} @{} ({})", s.repo, s.file, s.version, s.at),
        }
    }
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
    /// tensor), `row_slice` (q, k or v on its rows of a fused `in_proj_weight`), `not_found`,
    /// `ambiguous`, `shape_mismatch`, `not_float`.
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
    pub modules_count: usize,
    pub full_tensors_count: usize,
    /// With `--base`: every module and full tensor and where it lands.
    pub modules: Vec<Placement>,
    pub targets: Vec<TargetReport>,
    /// Every target loads and applies everything.
    pub pass: bool,
}
