//! Reading PEFT PVeRA folders (`peft_type` PVERA; "PVeRA: Probabilistic Vector-Based Random
//! Matrix Adaptation"; PEFT 0.21.2 `tuners/pvera/`) into the one adapter model. Never writes.
//!
//! VeRA with a probabilistic down-projection: the shared `base_model.pvera_A` [2r, K] and
//! `base_model.pvera_B` [D, r] (saved with `save_projection`, the default; `PveraModel.
//! _get_adapter_state_dict`), per module `pvera_lambda_d` [2r] and `pvera_lambda_b` [out]. The
//! forward samples from `(μ, log σ²) = (λ_d ⊙ A·x).chunk(2)`; the merge takes the mean alone:
//! `ΔW = (λ_b ⊙ pvera_B[:out])·(λ_d[:r] ⊙ pvera_A[:r, :in])` (`layer.py` `get_delta_weight`),
//! no scale — VeRA's formula on the first halves, so it is a [`Factors::Vera`] (the λ products
//! in f32, as PEFT's). Without `save_projection` the projections are regenerated from
//! `projection_prng_key` by torch's generator and the folder is refused (`config.rs`).

use super::vera::Kind;

/// PVeRA, read by VeRA's reader (`vera::read`): A and λ_d twice as tall as VeRA's.
pub(super) const PVERA: Kind = Kind {
    name: "PVeRA",
    stem: "pvera",
    halves: 2,
};
