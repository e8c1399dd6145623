//! [`GpuError`]: why a GPU op, or the creation of a context, failed; and its mapping onto the
//! merge job's [`MergeError`].
//!
//! A leaf every GPU file imports. Must not hold device state or decide what to do on a failure
//! (callers do: `auto` falls back to the CPU, a requested `--device gpu` reports it).

use crate::backend::cpu_forward::ShapeError;
use crate::backend::job::MergeError;
use crate::dtype::Dtype;

/// Why a GPU op (or context creation) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// No usable adapter (no driver, no device, or none matching `WGPU_BACKEND` /
    /// `WGPU_ADAPTER_NAME`).
    #[error("no wgpu adapter: {0}")]
    NoAdapter(String),
    #[error("wgpu device request failed: {0}")]
    Device(String),
    /// Inputs inconsistent with the declared shapes.
    #[error("{0}")]
    Shape(String),
    /// An input dtype the GPU kernels do not read or write.
    #[error("gpu kernels support F32, F16 and BF16, not {0:?}")]
    Dtype(Dtype),
    /// A buffer that cannot be tiled is larger than one binding may be.
    #[error("{what} needs a {bytes}-byte binding, over the {limit}-byte limit")]
    TooLarge {
        what: String,
        bytes: u64,
        limit: u64,
    },
    /// A wgpu validation, out-of-memory or internal error.
    #[error("wgpu: {0}")]
    Wgpu(String),
    /// Reading results back failed (buffer mapping or device poll).
    #[error("gpu readback failed: {0}")]
    Readback(String),
}

impl From<ShapeError> for GpuError {
    fn from(e: ShapeError) -> Self {
        GpuError::Shape(e.0)
    }
}

impl From<GpuError> for MergeError {
    fn from(e: GpuError) -> Self {
        match e {
            GpuError::Shape(s) => MergeError::Shape(s),
            other => MergeError::Gpu(other.to_string()),
        }
    }
}
