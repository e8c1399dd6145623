//! GPU backend: WGSL compute kernels run through wgpu (Vulkan, Metal or DX12), tested against
//! the CPU backend.
//!
//! A [`GpuContext`] (instance, adapter, device, queue, compiled pipelines) is created once per run
//! and passed to every op, so tests can inject one (e.g. with a lowered binding limit that forces
//! tiling). Ops:
//!
//! * [`merge`]: `W = W0 + Σ scale·B·A` (+ DoRA), the same contract as [`crate::backend::cpu::merge`]
//!   and bit-identical to it (see `shaders/merge.wgsl` for how fused multiply-add is prevented),
//!   DoRA norms included ([`dora_sums`]: f64 sums in software binary64, `shaders/f64.wgsl`).
//! * [`lora_forward`] / [`lora_forward_resident`]: `Y = X·W0ᵀ + Σ s·(X·Aᵀ)·Bᵀ`, all adapters
//!   summed (W0 uploaded per call, or kept on the device by [`ResidentWeight`], as eval does);
//!   CPU twin: the forward eval runs on the CPU, `model::linear::Linear::forward`.
//! * [`delta_sketch`] / [`delta_sketch_t`] / [`GpuDeltaOp`]: `(W − W0)·Ω` and `(W − W0)ᵀ·Q`
//!   without forming `W − W0`, and a [`crate::linalg::LinearOperator`] built on them.
//!
//! Every buffer a kernel binds is at most [`GpuContext::max_binding`] bytes (the device's
//! `max_storage_buffer_binding_size` and `max_buffer_size`): larger tensors are processed in row
//! (and, where needed, column) tiles, so e.g. an embedding matrix larger than the limit works.
//!
//! wgpu validation, out-of-memory and internal errors are captured in error scopes around each op
//! and returned as [`GpuError`]; nothing here panics on a missing or failing GPU.
//!
//! This file is the backend's front: it declares the files and re-exports what callers use. The
//! context (`context.rs`), its errors (`error.rs`), the host-side layout helpers (`layout.rs`),
//! the kernel registry (`kernels.rs`), the merge's tiles and ring (`merge_tiles.rs`, `ring.rs`)
//! are leaves the op files (`merge`, `dora`, `sketch`, `forward`) import directly; nothing here
//! is imported back by them.

mod adapter;
#[doc(hidden)]
pub mod bench;
mod context;
mod dora;
mod error;
mod forward;
mod kernels;
mod layout;
mod merge;
mod merge_tiles;
mod ring;
mod sketch;
#[cfg(test)]
pub(crate) mod tests;

pub use adapter::{list_adapters, AdapterEntry, AdapterIdentity, AdapterSelector, PciBusId};
pub use context::{
    GpuContext, GpuInfo, GpuLimits, GpuOptions, OptionalFeatures, DEFAULT_CHUNK_BYTES,
    OPTIONAL_FEATURES,
};
pub use dora::dora_sums;
pub use error::GpuError;
pub use forward::{lora_forward, lora_forward_resident, ResidentWeight};
pub use merge::{merge, merge_into, merge_supports};
pub use sketch::{delta_sketch, delta_sketch_t, GpuDeltaOp};
