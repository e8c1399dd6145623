//! The per-module tensors of kohya-named files: plain LoRA (sd-scripts `networks/lora.py`) and the
//! LyCORIS algorithms (`lycoris/modules/{locon,loha,lokr,full,norms,diag_oft,boft,ia3,glora}.py`,
//! `weight_list` of each) and OneTrainer's OFT v2 (`oft_R`), read into one [`LoraModule`](crate::adapter::LoraModule) with
//! its [`Factors`](crate::adapter::algo::Factors). OFT, BOFT and IA3
//! files do not give every side of the weight they adapt (their update is a function of
//! it): the missing side is 0 and [`crate::adapter::mapping`] takes it from the base.
//!
//! A module's tensors are `{module}.{suffix}`; [`SUFFIXES`] lists every suffix lorakit reads and
//! [`UNSUPPORTED`] the LyCORIS ones it recognises but does not apply yet (refused by name, never
//! skipped). Shapes are checked here, once, so that [`crate::adapter::algo::delta`] can trust them.

pub(crate) mod keys;
mod read;
mod scalar;
#[cfg(test)]
mod tests;
mod write;

pub use keys::{
    sibling_key, split_key, unsupported, Naming, Parts, IA3_WEIGHT, SUFFIXES, UNSUPPORTED,
};
pub use read::module;
pub use write::tensors;
