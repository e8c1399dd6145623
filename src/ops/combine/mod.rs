//! Combining several adapters into one, with PEFT's `add_weighted_adapter` semantics
//! (`tuners/lora/model.py`, `utils/merge_utils.py`, PEFT 0.21.2).
//!
//! With weights `wᵢ`, scales `sᵢ` and factors `Bᵢ`, `Aᵢ` per module:
//!
//! * `cat` — exact: `A = [w₁s₁A₁; w₂s₂A₂; …]`, `B = [B₁ B₂ …]`, so `B·A = Σ wᵢsᵢBᵢAᵢ`;
//!   `r = alpha = Σ rᵢ` (scale 1). As PEFT does, every module gets the same rank
//!   `R = Σᵢ max-rank(adapterᵢ)`: the adapters holding the module are packed first and the rest
//!   is zero rows/columns (exact); `pad = false` keeps each module at `Σ rᵢ` of the adapters
//!   that hold it.
//! * `svd` — the exact sum `Σ wᵢsᵢBᵢAᵢ`, re-compressed to rank `R` (default: the largest input
//!   rank, as PEFT) by [`crate::linalg::stacked_factored_svd`] (QR of the stacked factors, SVD
//!   of the small core; the d×k sum is never formed): `B = U_R·diag(σ_R)`, `A = V_Rᵀ`,
//!   `r = alpha = R`. The best rank-`R` approximation of the sum (Eckart–Young–Mirsky); PEFT
//!   computes the same from the materialised sum, so factors agree up to the signs of singular
//!   vector pairs.
//! * `linear`, `ties`, `dare_linear`, `dare_ties` — PEFT's factor-wise rules: each side is
//!   combined on its own with `wᵢᴬ = sign(wᵢsᵢ)·√|wᵢsᵢ|` for `A` and `wᵢᴮ = √|wᵢsᵢ|` for `B`
//!   (so one adapter alone gives `wᵢsᵢBᵢAᵢ` exactly; several give cross terms — an
//!   approximation PEFT itself calls rough). Ranks must agree per module; `r = alpha = rank`.
//!   - `linear`: `Σ wᵢ·Xᵢ`.
//!   - `ties`: keep the `⌊density·numel⌋` largest `|x|` of each input (`magnitude_prune`), elect
//!     a sign per entry from the pruned **unweighted** inputs (`total`: sign of their sum;
//!     `frequency`: sign of the sum of their signs; ties go to +), then average the **weighted**
//!     pruned entries that carry the elected sign (`disjoint_merge`: divided by their count,
//!     at least 1).
//!   - `dare_linear` / `dare_ties`: like `linear` / `ties` but pruning keeps each entry with
//!     probability `density` and rescales kept entries by `1/density`
//!     (`E[pruned] = input`). The masks come from lorakit's own generator (xoshiro256++ seeded
//!     from `seed`, the module name, the side and the input's position), so they are
//!     reproducible but cannot equal torch's `bernoulli` draws: a lorakit DARE result is a
//!     sample from the same distribution as PEFT's, not PEFT's sample.
//!   - `density ≥ 1` prunes nothing (PEFT's `prune`), so `dare_linear` equals `linear` and
//!     `dare_ties` equals `ties` at density 1.
//!   - With a single input adapter PEFT switches any of these to `linear`; so does lorakit.
//!
//! Modules present in only some adapters combine the adapters that hold them (PEFT skips the
//! others). The result has scale 1 everywhere and no rsLoRA (PEFT copies `use_rslora` from the
//! first adapter's config, which with rsLoRA makes the scale `√r` instead of 1 — lorakit does
//! not reproduce that). DoRA magnitudes, `lora_B` biases and `modules_to_save` tensors do not
//! combine linearly and are refused; saved embedding layers (`base_layer.weight`, a copy of the
//! base) are carried when the inputs agree.
//!
//! `methods.rs` owns the semantics above ([`combine`] over opened inputs); `plan.rs` owns the
//! operation around it: [`CombineOptions`] → [`CombinePlan::new`] → [`CombinePlan::run`] →
//! [`CombineReport`]. This file only re-exports them: `plan.rs` imports `methods.rs`, and
//! neither imports this file. Must not print, nor name a command-line flag.

mod methods;
mod plan;

pub use methods::{
    combine, combine_side, disjoint_merge, magnitude_prune, mask_rng, random_prune, side_weights,
    weighted_sum, MajoritySign, Method, MethodOptions, ModuleCombine, WeightedInput,
};
pub use plan::{CombineInput, CombineOptions, CombinePlan, CombineReport, InputReport};
