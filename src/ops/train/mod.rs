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
//!   [`Output`](crate::io::Output) (each file atomically, the state JSON last; all three record the step, and a
//!   folder whose files disagree — a save interrupted between renames — is refused). Resuming
//!   from such a folder continues exactly as if the run had not stopped (the moments and
//!   factors are stored exactly, and the data order is a function of the step).
//!
//!
//! The operation: [`TrainOptions`] → [`TrainPlan::new`] (every option checked, the model
//! opened, the data tokenized, the output checked against every input; nothing written) →
//! [`TrainPlan::run`] (the model loaded, [`Trainer`] stepped, checkpoints and the adapter
//! written) → [`TrainReport`]. Files: `plan.rs` (options, plan, report), `trainer.rs` (the
//! loop and the optimiser), `state.rs` (save and resume), `dataset.rs` (batches),
//! `hyperparams.rs` (what a run is asked: options, schedule, initialisation) and `record.rs`
//! (what it records: steps, evaluations, the state file). The children import from each other,
//! never from this file, which only re-exports.
//!
//! Must not parse flags or print: `commands/train.rs` maps the command line to options and
//! renders the report; options are named as [`Opt`](crate::error::Opt)s; progress goes to the `Progress` trait.

mod dataset;
mod hyperparams;
pub mod memory;
mod plan;
mod record;
mod state;
mod trainer;
pub use dataset::Dataset;
pub use hyperparams::{lr_at, Hyperparams, Init, Schedule};
pub use plan::{TrainOptions, TrainPlan, TrainReport};
pub use record::{EvalStats, StateFile, StepStats, TrainedModule, STATE_JSON, STATE_TENSORS};
pub use trainer::{RunOutcome, RunPlan, Trainer};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NO_TARGET;

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
            let (ids, tg) = d.batch(s, 2, 9).unwrap();
            assert_eq!(ids.len(), 8);
            assert_eq!(tg[0], ids[1]);
            assert_eq!(tg[3], NO_TARGET);
            firsts.push(ids[0] / 4);
            firsts.push(ids[4] / 4);
        }
        firsts.sort();
        assert_eq!(firsts, (0..10).collect::<Vec<_>>());
        assert_eq!(d.batch(7, 2, 9).unwrap(), d.batch(7, 2, 9).unwrap());
        assert_ne!(d.batch(5, 2, 9).unwrap(), d.batch(0, 2, 9).unwrap());
        let ev = d.eval_batches(3);
        assert_eq!(ev.iter().map(|b| b.2).sum::<usize>(), 10);
    }
}
