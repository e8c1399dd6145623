//! What a training run records: the trained modules, the stats of each step and evaluation,
//! and `trainer_state.json` ([`StateFile`]) with the names of the state files.
//!
//! A leaf of plain `Serialize` values shared by the trainer (which fills them), the state
//! files (`state.rs`, which save and resume them) and the plan's report. Must not read or write
//! files itself.

use super::hyperparams::Hyperparams;
use serde::{Deserialize, Serialize};

/// Name of the trainer-state files written beside the adapter.
pub const STATE_JSON: &str = "trainer_state.json";
pub const STATE_TENSORS: &str = "trainer_state.safetensors";

/// A trained module: where it is in the model and its LoRA settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedModule {
    pub name: String,
    #[serde(skip)]
    pub slot: usize,
    pub rank: usize,
    pub alpha: f64,
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
