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
//! without one: the report lists the rules that were not evaluated. Must not: write anything
//! (that is [`fix`]), or print.

pub mod fix;
pub mod rules;

use crate::adapter::mapping::{self, Unmatched};
use crate::adapter::{Adapter, Data, Format, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::Checkpoint;
use rules::{Rule, ScaleRule, Severity, Supported, When};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
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
        let adapter = Adapter::open(adapter_path)?;
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
    /// `exact`, `suffix` (another root prefix), `not_found`, `ambiguous`, `shape_mismatch`,
    /// `not_float`.
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

enum Evaluated {
    Items(Vec<String>),
    NeedsBase,
}

/// Everything the conditions are computed from, gathered once.
struct Facts<'a> {
    plan: &'a Plan,
    /// `r` and `lora_alpha` of adapter_config.json (PEFT).
    cfg_r: Option<usize>,
    cfg_alpha: Option<f64>,
    resolution: Option<mapping::Resolution>,
    placements: Vec<Placement>,
}

impl<'a> Facts<'a> {
    fn compute(plan: &'a Plan) -> Facts<'a> {
        let cfg = plan.adapter.config.as_ref();
        let cfg_r = cfg
            .and_then(|c| c.get("r"))
            .and_then(|v| v.as_u64())
            .map(|r| r as usize)
            .or(cfg.map(|_| 8));
        let cfg_alpha = cfg
            .and_then(|c| c.get("lora_alpha"))
            .and_then(|v| v.as_f64())
            .or(cfg.map(|_| 8.0));
        let resolution = plan
            .base
            .as_ref()
            .map(|b| mapping::resolve(&plan.adapter, b));
        let placements = resolution
            .as_ref()
            .map(|r| placements(&plan.adapter, r))
            .unwrap_or_default();
        Facts {
            plan,
            cfg_r,
            cfg_alpha,
            resolution,
            placements,
        }
    }

    fn items(&self, when: When) -> Evaluated {
        let a = &self.plan.adapter;
        let names = |f: &dyn Fn(&crate::adapter::LoraModule) -> bool| -> Vec<String> {
            a.modules
                .iter()
                .filter(|m| f(m))
                .map(|m| m.name.clone())
                .collect()
        };
        let v = match when {
            When::NotPeft => match a.format {
                Format::Peft => vec![],
                Format::Kohya => vec![format!("{} (kohya/LyCORIS file)", a.path.display())],
            },
            When::PeftKeys => match (a.format, self.plan.kind) {
                (Format::Peft, Kind::Other) => vec![format!("{} (PEFT folder)", a.path.display())],
                _ => vec![],
            },
            When::LlmAdapter => match self.plan.kind {
                Kind::Llm => vec!["causal-LM module names".to_string()],
                Kind::Other => vec![],
            },
            When::NonLoraAlgoSdPrefixed => {
                if a.format != Format::Kohya || !self.sd_prefixed() {
                    vec![]
                } else {
                    a.modules
                        .iter()
                        .filter(|m| m.factors.lora().is_none())
                        .map(|m| format!("{} ({})", m.name, m.factors.algo()))
                        .collect()
                }
            }
            When::NotSdPrefixed => {
                if a.format != Format::Kohya {
                    vec![]
                } else {
                    a.modules
                        .iter()
                        .filter(|m| !is_sd_prefixed(&m.name))
                        .map(|m| m.name.clone())
                        .collect()
                }
            }
            When::Dora => names(&|m| m.dora_magnitude.is_some()),
            When::LoraBias => names(&|m| m.bias.is_some()),
            When::ModulesToSave => {
                let mut v: Vec<String> = a
                    .full_tensors
                    .iter()
                    .filter(|f| !is_saved_base_layer(f))
                    .map(|f| f.name.clone())
                    .collect();
                if v.is_empty() {
                    v = a
                        .modules_to_save
                        .iter()
                        .map(|m| format!("{m} (modules_to_save)"))
                        .collect();
                }
                v
            }
            When::EmbeddingLora => names(&|m| m.kind == ModuleKind::Embedding),
            When::SiblingMissing { has, lacks } => {
                let present: BTreeSet<&str> = a.modules.iter().map(|m| m.name.as_str()).collect();
                a.modules
                    .iter()
                    .filter_map(|m| {
                        let leaf = last_component(&m.name);
                        if !has.contains(&leaf) {
                            return None;
                        }
                        let parent = &m.name[..m.name.len() - leaf.len()];
                        let sibling = format!("{parent}{lacks}");
                        (!present.contains(sibling.as_str()))
                            .then(|| format!("{} (no {lacks} beside it)", m.name))
                    })
                    .collect()
            }
            When::RankAbove(n) => a
                .modules
                .iter()
                .filter(|m| m.rank > n)
                .map(|m| format!("{} (rank {})", m.name, m.rank))
                .collect(),
            When::ScaleDiffers(rule) => self.scale_differs(rule),
            When::ModuleNotSupported(s) => match self.supported(s) {
                None => return Evaluated::NeedsBase,
                Some(set) => a
                    .modules
                    .iter()
                    .filter(|m| !set.contains(last_component(&m.name)))
                    .map(|m| m.name.clone())
                    .collect(),
            },
            When::KeyPrefixMissing => a
                .modules
                .iter()
                .filter(|m| match m.factors.lora() {
                    Some((Data::Stored { key, .. }, _)) => {
                        a.format == Format::Peft
                            && !key.starts_with(crate::adapter::formats::peft::PREFIX)
                    }
                    _ => false,
                })
                .map(|m| m.name.clone())
                .collect(),
            When::PartialLayers => self.partial_layers(),
            When::AddedTokens => {
                // SGLang counts only ids at or past the base vocabulary (LoRAConfig filters
                // "fake" added tokens copied from the base tokenizer): without the base's
                // vocab_size that cannot be decided.
                if self.plan.added_tokens.is_empty() {
                    vec![]
                } else {
                    let Some(vocab) = self.plan.base_facts.as_ref().and_then(|b| b.vocab_size)
                    else {
                        return Evaluated::NeedsBase;
                    };
                    self.plan
                        .added_tokens
                        .iter()
                        .filter(|(_, id)| *id >= vocab as u64)
                        .map(|(t, id)| format!("{t} (id {id})"))
                        .collect()
                }
            }
            When::DtypeDiffersFromBase => match (&self.resolution, &self.plan.base) {
                (Some(r), Some(b)) => {
                    let own = crate::ops::output::stored_dtype(a);
                    let mut pairs: BTreeSet<(String, String)> = BTreeSet::new();
                    for p in &r.modules {
                        if let (Some(own), Some(info)) = (own, b.info(&p.weight)) {
                            if own != info.dtype {
                                pairs.insert((
                                    crate::dtype::name(own),
                                    crate::dtype::name(info.dtype),
                                ));
                            }
                        }
                    }
                    pairs
                        .into_iter()
                        .map(|(x, y)| format!("{x} factors: base weights are {y}"))
                        .collect()
                }
                _ => return Evaluated::NeedsBase,
            },
            When::NameNotFound => match &self.resolution {
                None => return Evaluated::NeedsBase,
                Some(r) => r
                    .unmatched
                    .iter()
                    .filter_map(|u| match u {
                        Unmatched::NotFound { module, .. } if self.tied_or_saved(module) => None,
                        // A lora_B bias needs no base bias: PEFT adds it to the layer's output
                        // (lorakit's merge needs one, which is a merge concern, not a loader's).
                        Unmatched::NotFound { module, .. } if module.ends_with(".lora_B.bias") => {
                            None
                        }
                        Unmatched::NotFound { module, .. } => Some(module.clone()),
                        Unmatched::Ambiguous { module, candidates } => {
                            Some(format!("{module} (ambiguous: {})", candidates.join(", ")))
                        }
                        _ => None,
                    })
                    .collect(),
            },
            When::NameNotExact => match &self.resolution {
                None => return Evaluated::NeedsBase,
                Some(_) => self
                    .placements
                    .iter()
                    .filter(|p| p.status == "suffix")
                    .map(|p| {
                        format!(
                            "{} (base has {})",
                            p.module,
                            p.base_tensor.as_deref().unwrap_or("?")
                        )
                    })
                    .collect(),
            },
            When::ShapeMismatch | When::VocabMismatch => match &self.resolution {
                None => return Evaluated::NeedsBase,
                Some(r) => {
                    let vocab = when == When::VocabMismatch;
                    r.unmatched
                        .iter()
                        .filter_map(|u| match u {
                            Unmatched::ShapeMismatch {
                                module,
                                expected,
                                found,
                                ..
                            } => {
                                let is_embedding = a
                                    .module(module)
                                    .is_some_and(|m| m.kind == ModuleKind::Embedding);
                                (is_embedding == vocab).then(|| {
                                    format!("{module} (adapter {expected:?}, base {found:?})")
                                })
                            }
                            _ => None,
                        })
                        .collect()
                }
            },
            When::TiedLmHead => match &self.plan.base_facts {
                None => return Evaluated::NeedsBase,
                Some(b) if b.tie_word_embeddings || !b.has_lm_head => {
                    let mut v = names(&|m| last_component(&m.name) == "lm_head");
                    v.extend(
                        a.full_tensors
                            .iter()
                            .filter(|f| {
                                f.name.starts_with("lm_head.") || f.name.contains(".lm_head.")
                            })
                            .map(|f| f.name.clone()),
                    );
                    v
                }
                Some(_) => vec![],
            },
            When::PeftExtraKeys => {
                if a.format != Format::Peft {
                    vec![]
                } else {
                    let mut v = Vec::new();
                    for m in &a.modules {
                        if m.dora_magnitude.is_some() {
                            v.push(format!("{}.lora_magnitude_vector", m.name));
                        }
                        if m.bias.is_some() {
                            v.push(format!("{}.lora_B.bias", m.name));
                        }
                        if m.kind == ModuleKind::Embedding {
                            v.push(format!("{}.lora_embedding_A/B", m.name));
                        }
                    }
                    v.extend(a.full_tensors.iter().map(|f| f.name.clone()));
                    v
                }
            }
        };
        Evaluated::Items(v)
    }

    /// A name that has no tensor of its own in the base but a module in the model: `lm_head`
    /// of a base that ties it to `embed_tokens` (transformers does not save it; the module
    /// exists and loaders adapt it), or the base-layer copy PEFT saves beside a targeted
    /// embedding or tied head (`…base_layer.weight`, skipped by the loaders).
    fn tied_or_saved(&self, name: &str) -> bool {
        let a = &self.plan.adapter;
        if a.full_tensors
            .iter()
            .any(|f| f.name == name && is_saved_base_layer(f))
        {
            return true;
        }
        let tied = self
            .plan
            .base_facts
            .as_ref()
            .is_some_and(|b| b.tie_word_embeddings || !b.has_lm_head);
        let head = name.strip_suffix(".weight").unwrap_or(name);
        tied && last_component(head) == "lm_head"
            && self
                .plan
                .base
                .as_ref()
                .is_some_and(|b| b.names().any(|n| n.ends_with("embed_tokens.weight")))
    }

    /// Every module of a kohya file has an SD prefix.
    fn sd_prefixed(&self) -> bool {
        self.plan
            .adapter
            .modules
            .iter()
            .all(|m| is_sd_prefixed(&m.name))
    }

    /// Modules whose scale in a loader differs from PEFT's (the adapter's own, per module).
    fn scale_differs(&self, rule: ScaleRule) -> Vec<String> {
        let a = &self.plan.adapter;
        let mut out = Vec::new();
        for m in &a.modules {
            let loader = match rule {
                ScaleRule::GlobalAlphaGlobalRank { rslora } => {
                    let (Some(r), Some(alpha)) = (self.cfg_r, self.cfg_alpha) else {
                        continue;
                    };
                    if rslora && a.use_rslora {
                        alpha / (r as f64).sqrt()
                    } else {
                        alpha / r as f64
                    }
                }
                ScaleRule::GlobalAlphaModuleRank => {
                    let Some(alpha) = self.cfg_alpha else {
                        continue;
                    };
                    alpha / m.rank as f64
                }
                ScaleRule::AlphaKeyOrOne => match a.format {
                    // A single file's `{module}.alpha` is read; without one lorakit's alpha is
                    // r (scale 1, the loader's 1) unless diffusers' `lora_adapter_metadata`
                    // gave another, which ComfyUI does not read.
                    Format::Kohya => {
                        let key = format!("{}.alpha", m.name);
                        if a.source.as_ref().is_some_and(|s| s.info(&key).is_some()) {
                            continue;
                        }
                        1.0
                    }
                    Format::Peft => 1.0,
                },
            };
            if m.factors.lora().is_none() {
                continue;
            }
            let tol = 1e-9 * m.scale.abs().max(1e-30);
            if (loader - m.scale).abs() > tol {
                out.push(format!(
                    "{}: scale {} instead of {}",
                    m.name,
                    short(loader),
                    short(m.scale)
                ));
            }
        }
        out
    }

    /// The last name components a loader adapts, or `None` when it cannot be known.
    fn supported(&self, s: Supported) -> Option<BTreeSet<String>> {
        // The fixed lists are the Llama-family model classes' (Llama, Mistral, Qwen2): for a
        // base of another family, or an adapter that is not a causal LM, they say nothing.
        let llama_family = match self
            .plan
            .base_facts
            .as_ref()
            .and_then(|b| b.model_type.as_deref())
        {
            Some(t) => matches!(t, "llama" | "mistral" | "qwen2"),
            None => self.plan.kind == Kind::Llm,
        };
        match s {
            Supported::Fixed(_) if !llama_family => None,
            Supported::Fixed(list) => Some(list.iter().map(|s| s.to_string()).collect()),
            Supported::BaseLinear(fallback) => match &self.plan.base {
                Some(b) => Some(
                    b.names()
                        .filter_map(|n| {
                            let info = b.info(n)?;
                            let m = n.strip_suffix(".weight")?;
                            (info.shape.len() == 2).then(|| last_component(m).to_string())
                        })
                        .collect(),
                ),
                None if llama_family => Some(fallback.iter().map(|s| s.to_string()).collect()),
                None => None,
            },
        }
    }

    /// Module kinds (the name with its layer index replaced) present in fewer decoder layers
    /// than the model has (the base's `num_hidden_layers`, else every layer the adapter
    /// touches).
    fn partial_layers(&self) -> Vec<String> {
        let a = &self.plan.adapter;
        let mut by_kind: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        let mut all: BTreeSet<usize> = BTreeSet::new();
        for m in &a.modules {
            if let Some((kind, idx)) = layer_kind(&m.name) {
                by_kind.entry(kind).or_default().insert(idx);
                all.insert(idx);
            }
        }
        let n = self
            .plan
            .base_facts
            .as_ref()
            .and_then(|b| b.num_hidden_layers)
            .unwrap_or(all.len());
        by_kind
            .into_iter()
            .filter(|(_, layers)| layers.len() < n)
            .map(|(kind, layers)| {
                format!(
                    "{kind} in {} of {n} layers ({})",
                    layers.len(),
                    layers
                        .iter()
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect()
    }
}

/// `layers.N.rest` → (`layers.*.rest`, N).
fn layer_kind(name: &str) -> Option<(String, usize)> {
    let parts: Vec<&str> = name.split('.').collect();
    let i = parts
        .iter()
        .position(|p| *p == "layers" || *p == "h" || *p == "blocks")?;
    let idx: usize = parts.get(i + 1)?.parse().ok()?;
    let mut k = parts.clone();
    k[i + 1] = "*";
    Some((k.join("."), idx))
}

/// diffusers' SD/SDXL reader converts kohya keys only when every key starts with one of these
/// (`lora_pipeline.py` `StableDiffusionLoraLoaderMixin.lora_state_dict`).
/// Names under a pipeline component (`unet.`, `text_encoder.`, `text_encoder_2.`,
/// `transformer.`: diffusers' own single files, `lora_base.py` prefix filter) are placed as they
/// are.
fn is_sd_prefixed(name: &str) -> bool {
    matches!(
        crate::adapter::formats::kohya::split_prefix(name),
        Some(("lora_unet" | "lora_te" | "lora_te1" | "lora_te2", _))
    ) || crate::adapter::formats::diffusers::has_component(name)
}

/// The module or key a finding's item is about: the item up to its first ` (` or `: `.
fn item_subject(item: &str) -> &str {
    let end = [item.find(" ("), item.find(": ")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(item.len());
    &item[..end]
}

fn last_component(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

fn short(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// A full tensor read from `{module}.base_layer.weight` (the base copy PEFT saves beside a
/// targeted embedding), which loaders skip on purpose (vLLM `is_base_embeddding_weights`,
/// llama.cpp `.base_layer.weight`).
fn is_saved_base_layer(f: &crate::adapter::FullTensor) -> bool {
    matches!(&f.data, Data::Stored { key, .. } if key.contains(".base_layer."))
}

/// Every module and full tensor with its placement.
fn placements(a: &Adapter, r: &mapping::Resolution) -> Vec<Placement> {
    let mut out = Vec::new();
    for p in &r.modules {
        let m = &a.modules[p.module];
        let exact = p.weight == format!("{}.weight", m.name) || a.format == Format::Kohya;
        out.push(Placement {
            module: m.name.clone(),
            status: if exact { "exact" } else { "suffix" },
            base_tensor: Some(p.weight.clone()),
            detail: None,
            not_applied_by: Vec::new(),
        });
    }
    for (i, t) in &r.full {
        let f = &a.full_tensors[*i];
        out.push(Placement {
            module: f.name.clone(),
            status: if *t == f.name { "exact" } else { "suffix" },
            base_tensor: Some(t.clone()),
            detail: Some("full tensor".into()),
            not_applied_by: Vec::new(),
        });
    }
    for u in &r.unmatched {
        let (module, status, base_tensor) = match u {
            Unmatched::NotFound { module, .. } => (module, "not_found", None),
            Unmatched::Ambiguous { module, .. } => (module, "ambiguous", None),
            Unmatched::ShapeMismatch { module, tensor, .. } => {
                (module, "shape_mismatch", Some(tensor.clone()))
            }
            Unmatched::NotFloat { module, tensor, .. } => {
                (module, "not_float", Some(tensor.clone()))
            }
        };
        out.push(Placement {
            module: module.clone(),
            status,
            base_tensor,
            detail: Some(u.to_string()),
            not_applied_by: Vec::new(),
        });
    }
    out.sort_by(|a, b| a.module.cmp(&b.module));
    out
}

/// What the adapter is for: the base's architecture when known, else its module names.
fn kind_of(a: &Adapter, base: Option<&BaseFacts>) -> Kind {
    if let Some(b) = base {
        if b.architectures
            .iter()
            .any(|x| x.ends_with("ForCausalLM") || x.ends_with("LMHeadModel"))
        {
            return Kind::Llm;
        }
        if !b.architectures.is_empty() {
            return Kind::Other;
        }
    }
    const LLM_LEAVES: &[&str] = &[
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "lm_head",
        "embed_tokens",
    ];
    // Decoder-only names (`model.layers.N.self_attn.q_proj`, `…mlp.gate_proj`, `lm_head`);
    // CLIP-style text encoders (`text_model.encoder.layers.N.self_attn.q_proj`) are not LLMs.
    let llm = a.format == Format::Peft
        && a.modules.iter().any(|m| {
            let n = &m.name;
            !n.contains("encoder")
                && LLM_LEAVES.contains(&last_component(n))
                && (n.contains("layers.") || n == "lm_head" || n.ends_with(".embed_tokens"))
        });
    if llm {
        Kind::Llm
    } else {
        Kind::Other
    }
}

/// Reads the few `config.json` fields the rules need (any architecture).
fn base_facts(b: &Checkpoint) -> InputResult<BaseFacts> {
    let mut f = BaseFacts {
        path: b.root.display().to_string(),
        has_lm_head: b.contains("lm_head.weight"),
        ..Default::default()
    };
    let cfg = b.folder().join("config.json");
    if !cfg.is_file() {
        return Ok(f);
    }
    let text = crate::io::read_json_file(&cfg)?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| InputError::invalid(&cfg, format!("not valid JSON: {e}")))?;
    // Multimodal configs keep the language model's fields in `text_config`.
    let get = |k: &str| {
        v.get(k)
            .or_else(|| v.get("text_config").and_then(|t| t.get(k)))
    };
    f.model_type = get("model_type")
        .and_then(|x| x.as_str())
        .map(str::to_owned);
    f.architectures = v
        .get("architectures")
        .and_then(|x| x.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    f.vocab_size = get("vocab_size")
        .and_then(|x| x.as_u64())
        .map(|x| x as usize);
    f.num_hidden_layers = get("num_hidden_layers")
        .or_else(|| get("n_layer"))
        .and_then(|x| x.as_u64())
        .map(|x| x as usize);
    // transformers' default is True when the key is absent.
    f.tie_word_embeddings = get("tie_word_embeddings")
        .and_then(|x| x.as_bool())
        .unwrap_or(true);
    Ok(f)
}

/// `added_tokens.json` of a PEFT folder (SGLang `LoRAConfig.get_added_tokens_config`).
fn read_added_tokens(a: &Adapter) -> InputResult<Vec<(String, u64)>> {
    let dir = if a.path.is_dir() {
        a.path.clone()
    } else {
        return Ok(vec![]);
    };
    let p = dir.join("added_tokens.json");
    if !p.is_file() {
        return Ok(vec![]);
    }
    let text = crate::io::read_json_file(&p)?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| InputError::invalid(&p, format!("not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| InputError::invalid(&p, "not a JSON object of token → id"))?;
    let mut out = Vec::new();
    for (k, id) in obj {
        let id = id
            .as_u64()
            .ok_or_else(|| InputError::invalid(&p, format!("id of `{k}` is not an integer")))?;
        out.push((k.clone(), id));
    }
    out.sort_by_key(|(_, id)| *id);
    Ok(out)
}
