//! What one rule is ([`Rule`]: target, condition, severity, why, and the [`Source`] it was read
//! from), the constructor the tables write sources with, and the Llama-family layer names that
//! several rules (and the adapter's kind) are stated over.
//!
//! A leaf the rule tables (`serving.rs`, `others.rs`) import, so they need nothing from
//! `rules.rs`, which lists them. Must not hold a rule or evaluate one.

use crate::ops::check::target::Target;
use crate::ops::check::when::{Severity, When};

/// Where a rule was read.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub repo: &'static str,
    pub file: &'static str,
    /// Commit or released version.
    pub version: &'static str,
    /// `file:line` (or lines) in that version, and the function the rule is in.
    pub at: &'static str,
}

/// One rule of one loader.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub id: &'static str,
    pub target: Target,
    pub when: When,
    pub severity: Severity,
    pub why: &'static str,
    pub source: Source,
}

/// The Llama-family linear and embedding layers (vLLM's fallback list without a base, and the
/// names that make a PEFT folder a causal LM's); `embed_tokens` last, so that the first eight
/// are LoRAX's adapter layers.
pub(crate) const LLAMA_LINEAR: &[&str] = &[
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

pub(super) const fn src(
    repo: &'static str,
    file: &'static str,
    version: &'static str,
    at: &'static str,
) -> Source {
    Source {
        repo,
        file,
        version,
        at,
    }
}
