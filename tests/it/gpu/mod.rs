//! The GPU path through the real binary, by concept: adapter choice, merges, the streamed and
//! tiled merge, extraction's sketches. Each test uses the one GPU-skip policy,
//! `common::gpu_available`: it skips loudly when no wgpu adapter exists, unless
//! LORAKIT_REQUIRE_GPU=1 (CI), where it fails.

/// `gpu-info`, `--gpu-index`, `--device auto`, no driver at all.
mod adapter;
/// `merge --device gpu` against PEFT's outputs and bit-level against `--device cpu`.
mod merge;
/// `extract --device gpu` against the f64 W − W0.
mod sketch;
/// Tiles beyond the binding limit, the streamed command, memory bounded by the chunk.
mod stream;

use super::common::*;
use super::reference::*;
