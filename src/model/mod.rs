//! Llama-family causal language models on the CPU (and the GPU for f32 projections): loading
//! Hugging Face checkpoints, the forward pass with LoRA adapters applied unmerged (or merged in
//! memory), the hand-written backward pass to LoRA factors that `train` uses, tokenizers and
//! data files.
//!
//! * [`config`]: `config.json` (Llama, Mistral, Qwen2; rope `default`, `linear`, `llama3`).
//! * [`scalar`]: the compute type ([`Real`]: f32, or f64 for gradient checks) and faer GEMMs.
//! * [`linear`]: frozen weights (memory-mapped, decoded per block when not f32) and linear
//!   layers with unmerged adapters.
//! * [`ops`]: RMSNorm, RoPE, causal GQA attention, SwiGLU, with backward passes.
//! * [`llama`]: the model, adapter attachment, forward, loss and backward.
//! * [`tokenizer`], [`data`]: text and token-id inputs.

pub mod config;
pub mod data;
pub mod linear;
pub mod llama;
pub mod ops;
pub mod scalar;
pub mod tokenizer;

pub use config::ModelConfig;
pub use linear::Exec;
pub use llama::{Grads, Model, Weights, NO_TARGET};
pub use scalar::Real;
pub use tokenizer::TextTokenizer;

#[cfg(test)]
mod tests;
