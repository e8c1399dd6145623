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
//! or ±∞ is refused, as every operation refuses it ([`Adapter::check_finite`](crate::adapter::Adapter::check_finite)): every loader
//! would apply it and answer NaN. Must not: write anything (that is [`fix`]), or print.
//!
//! This file is the engine ([`Plan::run`]: facts → rules → [`Report`]); what it runs over lives in
//! leaves its children share without importing this file: [`Target`] and [`Kind`] (`target.rs`),
//! [`Options`] and [`Plan`] (`plan.rs`), the report's shape (`report.rs`), the rules (`rules/`).

mod base;
mod comfy_gaps;
mod diffusers_base;
mod diffusers_converted;
mod diffusers_families;
mod diffusers_keys;
mod diffusers_kohya;
mod diffusers_lokr;
mod diffusers_mixture;
mod diffusers_pipelines;
mod facts;
pub mod fix;
mod fixing;
mod names;
mod packed;
mod plan;
mod qalora;
mod report;
pub mod rules;
pub mod saved;
mod single_file;
mod supported;
mod target;
mod tokens;
pub mod when;

use facts::{Evaluated, Facts};
use names::item_subject;
use rules::{Rule, Severity, When};

pub use plan::{Options, Plan};
pub use report::{BaseFacts, Finding, Placement, Report, TargetReport, Verdict};
pub use target::{Kind, Target};

impl Plan {
    /// Evaluates every rule of the chosen targets.
    pub fn run(&self) -> Report {
        let facts = Facts::compute(self);
        let mut targets = Vec::new();
        for &t in &self.targets {
            let mut findings = Vec::new();
            let mut not_evaluated = Vec::new();
            for rule in rules::for_target(t) {
                // No module read ([`Plan::unread`]): only the rules on the config and the
                // file's keys can be judged; the others are not evaluated, not passed.
                let config_only = matches!(rule.when, When::PeftTypeNotLora | When::LlmAdapter);
                if self.unread.is_some() && !config_only {
                    not_evaluated.push(rule.id);
                    continue;
                }
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
            unread: self.unread.clone(),
            pass,
        }
    }
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
