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
//!
//! Must not know file formats beyond reading tensors through `io`, nor any command-line flag.

pub mod config;
pub mod data;
pub mod linear;
pub mod llama;
pub mod ops;
pub mod scalar;
pub mod tokenizer;

pub use config::ModelConfig;
pub use linear::Exec;
pub use llama::{Grads, KvCache, Model, Weights, NO_TARGET};
pub use scalar::Real;
pub use tokenizer::TextTokenizer;

/// Keeps freed memory in the process for the next pass: the forward and backward allocate and
/// free megabyte-sized activations many times a step, and glibc's defaults (large blocks
/// `mmap`ed and unmapped on free, the heap top trimmed) turned every one into fresh zeroed
/// pages, page faults costing 10–30 % of a CPU step. Sets glibc's mmap threshold to its maximum
/// (32 MiB) and the trim threshold to 1 GiB; does nothing on other C libraries. `train`,
/// `eval` and `merge` (one output buffer per merged tensor) call it once.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; it is called before the model's
            // allocations and is thread-safe in glibc.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        });
    }
}

#[cfg(test)]
mod tests;
