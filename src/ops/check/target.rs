//! What `check` checks against and for: the loaders it knows the rules of ([`Target`]) and what
//! the adapter is for ([`Kind`]), which decides the default targets.
//!
//! A leaf of plain values shared by the plan, the rules, the facts and the report. Must not read
//! the adapter or know a rule.

use crate::adapter::Format;
use serde::Serialize;

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
            (Kind::Other, Format::Mlx) => vec![Target::Peft],
        }
    }
}
