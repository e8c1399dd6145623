//! LoRA training on a frozen Llama-family model (CPU, f32): data packing, PEFT's initialisation,
//! AdamW with torch's semantics, warmup + cosine schedule, global-norm gradient clipping,
//! checkpoints that resume bit for bit.
//!
//! * Data: one token stream (see [`crate::model::data`]) cut into sequences of `seq_len`
//!   tokens (the tail that does not fill one is dropped), the order shuffled per epoch by the
//!   seed. Batch `s` holds sequences `s·batch .. (s+1)·batch` of the endless epoch-by-epoch
//!   order, so the data position is a function of the step alone. The loss is transformers'
//!   causal-LM loss with labels = inputs: the mean cross-entropy of each next token within a
//!   sequence.
//! * Initialisation (PEFT `LoraLayer.reset_lora_parameters`, `init_lora_weights=True`): `A` by
//!   `kaiming_uniform_(a=√5)`, i.e. U(−1/√in, 1/√in); `B = 0`, so step 0 computes the base model.
//!   Only `A` and `B` are trained.
//! * Optimiser: torch's `AdamW` (decoupled weight decay `p ← p·(1 − lr·wd)`, then Adam with bias
//!   correction, `eps` added to `√v̂`) on every factor, after `clip_grad_norm_` (global L2 norm
//!   over all factors, scaled by `max/(norm + 1e-6)` when above `max`). Learning rate per step
//!   from transformers' schedules: linear warmup from 0 over `warmup` steps, then cosine (or
//!   linear, or constant) decay to 0 at `steps`.
//! * State: the adapter (PEFT folder, f32) plus `trainer_state.safetensors` (Adam moments) and
//!   `trainer_state.json` (step, options, data fingerprint, history), written through one
//!   [`Output`] (each file atomically, the state JSON last; all three record the step, and a
//!   folder whose files disagree — a save interrupted between renames — is refused). Resuming
//!   from such a folder continues exactly as if the run had not stopped (the moments and
//!   factors are stored exactly, and the data order is a function of the step).
//!
//!
//! The operation: [`TrainOptions`] → [`TrainPlan::new`] (every option checked, the model
//! opened, the data tokenized, the output checked against every input; nothing written) →
//! [`TrainPlan::run`] (the model loaded, [`Trainer`] stepped, checkpoints and the adapter
//! written) → [`TrainReport`]. Files: `plan.rs` (options, plan, report), `trainer.rs` (the
//! loop and the optimiser), `state.rs` (save and resume), `dataset.rs` (batches).
//!
//! Must not parse flags or print: `commands/train.rs` maps the command line to options and
//! renders the report; options are named as [`Opt`]s; progress goes to the `Progress` trait.

use crate::adapter::Adapter;
use crate::error::{Opt, OptionError};
use crate::linalg::rng::SplitMix64;
use crate::model::{Model, NO_TARGET};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

mod dataset;
mod plan;
mod state;
mod trainer;
pub use dataset::Dataset;
pub use plan::{TrainOptions, TrainPlan, TrainReport};
pub use trainer::{RunOutcome, RunPlan, Trainer};

/// Name of the trainer-state files written beside the adapter.
pub const STATE_JSON: &str = "trainer_state.json";
pub const STATE_TENSORS: &str = "trainer_state.safetensors";

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

/// A trained module: where it is in the model and its LoRA settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedModule {
    pub name: String,
    #[serde(skip)]
    pub slot: usize,
    pub rank: usize,
    pub alpha: f64,
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

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Steps completed after this one.
    pub step: usize,
    /// Mean loss of the batch, before the update.
    pub loss: f64,
    /// Learning rate of the update.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// An evaluation during training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalStats {
    pub step: usize,
    pub loss: f64,
    pub perplexity: f64,
}

/// `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateFile {
    pub lorakit_version: String,
    pub step: usize,
    pub rslora: bool,
    pub modules: Vec<TrainedModule>,
    pub options: Hyperparams,
    pub data_tokens: usize,
    pub data_fingerprint: String,
    pub history: Vec<StepStats>,
    pub eval: Vec<EvalStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(schedule: Schedule) -> Hyperparams {
        Hyperparams {
            steps: 10,
            lr: 1.0,
            schedule,
            warmup: 2,
            weight_decay: 0.0,
            grad_clip: 1.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
            batch: 2,
            seq_len: 4,
            seed: 0,
        }
    }

    #[test]
    fn schedules_follow_transformers() {
        let c = opts(Schedule::Cosine);
        assert_eq!(lr_at(&c, 0), 0.0);
        assert_eq!(lr_at(&c, 1), 0.5);
        assert_eq!(lr_at(&c, 2), 1.0);
        assert!((lr_at(&c, 6) - 0.5).abs() < 1e-12);
        assert!(lr_at(&c, 10).abs() < 1e-12);
        let l = opts(Schedule::Linear);
        assert!((lr_at(&l, 6) - 0.5).abs() < 1e-12);
        let k = opts(Schedule::Constant);
        assert_eq!(lr_at(&k, 9), 1.0);
    }

    #[test]
    fn batches_cover_each_epoch_once_and_depend_on_step_only() {
        let d = Dataset::new((0..40).collect(), 4).unwrap();
        assert_eq!(d.sequences(), 10);
        let mut firsts = Vec::new();
        for s in 0..5 {
            let (ids, tg) = d.batch(s, 2, 9);
            assert_eq!(ids.len(), 8);
            assert_eq!(tg[0], ids[1]);
            assert_eq!(tg[3], NO_TARGET);
            firsts.push(ids[0] / 4);
            firsts.push(ids[4] / 4);
        }
        firsts.sort();
        assert_eq!(firsts, (0..10).collect::<Vec<_>>());
        assert_eq!(d.batch(7, 2, 9), d.batch(7, 2, 9));
        assert_ne!(d.batch(5, 2, 9), d.batch(0, 2, 9));
        let ev = d.eval_batches(3);
        assert_eq!(ev.iter().map(|b| b.2).sum::<usize>(), 10);
    }
}
