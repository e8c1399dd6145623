//! What a training run is asked to do: its [`Hyperparams`] (recorded in the trainer state as
//! `options`), the learning-rate [`Schedule`] they define ([`lr_at`]), and how the trainable
//! adapters start ([`Init`]).
//!
//! A leaf of plain values that the plan fills and the trainer reads. Must not read files, check
//! options (the plan does) or train.

use crate::adapter::Adapter;
use serde::{Deserialize, Serialize};

/// Learning-rate decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// transformers `get_cosine_schedule_with_warmup` (half a cosine to 0).
    Cosine,
    /// transformers `get_linear_schedule_with_warmup`.
    Linear,
    /// transformers `get_constant_schedule_with_warmup`.
    Constant,
}

/// Hyper-parameters of a run (recorded in the trainer state as `options`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparams {
    pub steps: usize,
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup: usize,
    pub weight_decay: f64,
    /// Maximum global gradient norm; 0 disables clipping.
    pub grad_clip: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub batch: usize,
    pub seq_len: usize,
    pub seed: u64,
}

/// Learning rate for the update that follows `step` completed steps (transformers'
/// `LambdaLR` schedules, multiplied by the base rate).
pub fn lr_at(o: &Hyperparams, step: usize) -> f64 {
    if step < o.warmup {
        return o.lr * step as f64 / o.warmup.max(1) as f64;
    }
    let rest = (o.steps.saturating_sub(o.warmup)).max(1) as f64;
    let progress = (step - o.warmup) as f64 / rest;
    let f = match o.schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => ((o.steps as f64 - step as f64) / rest).max(0.0),
        Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    };
    o.lr * f
}

/// How the trainable adapters start.
#[derive(Debug)]
pub enum Init<'a> {
    /// PEFT's default: A Kaiming-uniform, B zero, on the layers matching `targets`.
    Fresh {
        targets: &'a [String],
        rank: usize,
        alpha: f64,
    },
    /// The factors, ranks and alphas of an existing adapter (linear modules only).
    Adapter(&'a Adapter),
}
