//! The Llama model as data: [`Model`] with its decoder [`Layer`]s, embedding LoRAs
//! ([`EmbedLora`]) and final norm, and the slot numbering every other file addresses its linear
//! layers by (`7·layer + i` for q, k, v, o, gate, up, down; `lm_head` last). The leaf that
//! loading and the forward (`llama.rs`) and adapter attachment (`attach.rs`) share.
//!
//! Must not: load, compute or attach anything (those are `llama.rs`'s and `attach.rs`'s).

use crate::model::config::ModelConfig;
use crate::model::linear::{Linear, Matrix};
use crate::model::scalar::Real;

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct Layer<'c, T> {
    pub input_norm: Vec<T>,
    pub post_norm: Vec<T>,
    /// q, k, v, o, gate, up, down.
    pub proj: [Linear<'c, T>; 7],
    pub window: Option<usize>,
}

/// LoRA on the token embedding (unmerged): `E[t] + s·B·A[:, t]`, `A` `rank × vocab`, `B`
/// `hidden × rank`.
#[derive(Debug, Clone)]
pub struct EmbedLora<T> {
    pub a: Vec<T>,
    pub b: Vec<T>,
    pub rank: usize,
    pub scale: T,
}

/// A Llama-family causal LM computing in `T`.
#[derive(Debug, Clone)]
pub struct Model<'c, T> {
    pub config: ModelConfig,
    /// Tensor-name prefix of the decoder (`model.`, or empty for a bare `LlamaModel`).
    pub prefix: String,
    pub embed: Matrix<'c>,
    /// The embedding as loaded, kept once an adapter is merged into [`Model::embed`]: PEFT's
    /// DoRA norms `‖E0 + s·ΔE‖` come from it ([`super::super::linear::Linear::base0`]).
    pub embed_base0: Option<Matrix<'c>>,
    pub embed_loras: Vec<EmbedLora<T>>,
    pub layers: Vec<Layer<'c, T>>,
    pub norm: Vec<T>,
    pub lm_head: Linear<'c, T>,
    /// `lm_head` uses the embedding matrix.
    pub tied: bool,
    /// RoPE inverse frequencies (`ModelConfig::inv_freq`), for the forward in `llama.rs`.
    pub(super) inv_freq: Vec<f64>,
}

impl<'c, T: Real> Model<'c, T> {
    /// Number of linear slots (7 per layer, then `lm_head`).
    pub fn num_slots(&self) -> usize {
        self.layers.len() * 7 + 1
    }

    pub fn linear(&self, slot: usize) -> &Linear<'c, T> {
        if slot == self.layers.len() * 7 {
            &self.lm_head
        } else {
            &self.layers[slot / 7].proj[slot % 7]
        }
    }

    pub fn linear_mut(&mut self, slot: usize) -> &mut Linear<'c, T> {
        if slot == self.layers.len() * 7 {
            &mut self.lm_head
        } else {
            &mut self.layers[slot / 7].proj[slot % 7]
        }
    }

    /// Module path of the embedding (`model.embed_tokens`).
    pub fn embed_name(&self) -> String {
        format!("{}embed_tokens", self.prefix)
    }
}
