//! The LoRA-family algorithms a module can carry, and the exact `ΔW` of each.
//!
//! Every algorithm is read from its producer's own layout and rebuilt the way the loaders people
//! use rebuild it: ComfyUI `comfy/weight_adapter/{lora,loha,lokr}.py` `calculate_weight` and
//! `base.py` (`tucker_weight`, `tucker_weight_from_conv`), which agree with the forward of
//! LyCORIS `lycoris/modules/{locon,loha,lokr,full}.py` (Yeh et al. 2024, "Navigating
//! Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation").
//!
//! Shapes are canonical and row-major: `d` output features, `k = in · kh · kw` input features
//! (kernel area `kk = kh · kw`, 1 for linear layers). The rebuilt `ΔW` is accumulated in f64 and
//! rounded once to f32, scale included.
//!
//! It must not know file layouts or key names (the readers in `adapter/formats/` hand it
//! factors) nor touch a base checkpoint: a base-dependent algorithm is given `W0` by its caller.

mod base;
mod base_rule;
mod delta;
mod factors;
mod frod;
mod hadamard;
mod on_base;
mod peft_tuners;
mod svd;
#[cfg(test)]
mod tests;

pub use base::{cayley_blocks, delta_from_base, peft_oft_rotations};
pub use base_rule::{Activation, BaseRule, SuperPositions};
pub use delta::{delta, kron_halves, lokr_scale, product_form, tucker_core, Loaded};
pub use factors::{
    Algo, Factors, FrodParts, HadamardPart, HadamardTuner, Ia3Rule, KronHalf, MissMode, OftConv,
    PeftCayley,
};
pub use frod::projection_mismatch;
pub use hadamard::glora_bias_delta;
pub use on_base::{delta as on_base_delta, fits as on_base_fits, misfit as on_base_misfit};
pub use peft_tuners::{
    base_fits as peft_tuner_fits, delta as peft_tuner_delta, road as road_delta,
};
pub use svd::{thin_svd, Triplets};
