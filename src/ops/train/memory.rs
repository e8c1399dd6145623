//! What one training step must hold in memory, estimated from the model's shapes before
//! anything is allocated, so that `--batch` / `--seq-len` past the machine's memory is refused
//! in one line instead of aborting the process on a failed allocation.
//!
//! The estimate is a lower bound, in bytes, of what [`crate::model::Model::loss_and_grads`] keeps
//! alive at its peak (the end of the forward pass, every layer's tape held for the backward):
//! for each of the `B·T` tokens (`B` = `--batch`, `T` = `--seq-len`), f32 values
//!
//! ```text
//! L · (4·h + (2·H + 2·K)·d + 3·I)   the tape of each of L layers: its input, the two normed
//!                                   inputs and the residual (x, h1, x2, h2: 4·h), q, k, v and
//!                                   the attention output (H query heads, K kv heads of d), and
//!                                   the MLP's gate, up and product (g, u, m: 3·I)
//! + 3·h                             the last layer's output, the final norm's output and its
//!                                   gradient (x, hf, dhf)
//! ```
//!
//! plus the token ids and targets (two u32). Logits, the attention scratch, the LoRA tapes and
//! the gradients come on top, so a run refused here could not have run; one accepted may still
//! need more than the machine has. The limit is the machine's memory and swap
//! (`/proc/meminfo`), or a cgroup's `memory.max` below it; where neither can be read (not
//! Linux) nothing is refused here and the batch's own buffers are allocated fallibly
//! ([`super::Dataset::batch`]).
//!
//! Must not allocate in proportion to the batch, read options or print.

use crate::error::{Opt, OptionError};
use crate::model::ModelConfig;
use anyhow::{bail, Result};

/// The lower bound of one step's bytes (see the module doc), in `u128` (saturating: the
/// product of two `usize` and a model's size can pass it).
pub fn step_bytes(c: &ModelConfig, batch: usize, seq_len: usize) -> u128 {
    let (h, i, d) = (
        c.hidden_size as u128,
        c.intermediate_size as u128,
        c.head_dim as u128,
    );
    let heads = 2 * c.num_attention_heads as u128 + 2 * c.num_key_value_heads as u128;
    let per_layer = 4 * h + heads * d + 3 * i;
    let per_token = 4 * (c.num_hidden_layers as u128 * per_layer + 3 * h) + 2 * 4;
    (batch as u128 * seq_len as u128).saturating_mul(per_token)
}

pub use crate::io::memory::memory_limit;

/// Refuses `batch × seq_len` when one step's lower bound exceeds `limit` bytes, naming
/// `--batch`, `--seq-len` and both figures.
pub fn check_step(
    c: &ModelConfig,
    batch: usize,
    seq_len: usize,
    limit: Option<u128>,
) -> Result<()> {
    let need = step_bytes(c, batch, seq_len);
    let Some(limit) = limit else {
        return Ok(());
    };
    if need > limit {
        let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
        let (need, limit, layers) = (gib(need), gib(limit), c.num_hidden_layers);
        bail!(OptionError::new(move |o| {
            format!(
            "{} {batch} × {} {seq_len} needs at least {need:.3e} GiB for one training step's activations ({layers} layers of this model), more than the {limit:.1} GiB of memory this process can use; lower {} or {}",
            o.opt(Opt::Batch),
            o.opt(Opt::SeqLen),
            o.opt(Opt::Batch),
            o.opt(Opt::SeqLen)
        )
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelConfig {
        ModelConfig {
            model_type: "llama".into(),
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            vocab_size: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 1e4,
            rope_scaling: crate::model::config::RopeScaling::Default,
            max_position_embeddings: 64,
            tie_word_embeddings: false,
            sliding_windows: vec![None, None],
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// The formula of the module doc, worked by hand for the fixture Llama: per layer
    /// 4·64 + (8 + 4)·16 + 3·128 = 832 values, two layers and 3·64 more = 1,856 values =
    /// 7,424 bytes, plus 8 for the ids and targets: 7,432 bytes a token.
    #[test]
    fn step_bytes_follow_the_tape() {
        assert_eq!(step_bytes(&tiny(), 1, 1), 7_432);
        assert_eq!(step_bytes(&tiny(), 4, 8), 32 * 7_432);
        // No overflow at usize::MAX.
        assert_eq!(step_bytes(&tiny(), usize::MAX, usize::MAX), u128::MAX);
    }

    #[test]
    fn refused_only_past_the_limit() {
        let c = tiny();
        assert!(check_step(&c, 4, 8, Some(32 * 7_432)).is_ok());
        assert!(check_step(&c, 4, 8, Some(32 * 7_432 - 1)).is_err());
        assert!(check_step(&c, usize::MAX, usize::MAX, None).is_ok());
    }
}
