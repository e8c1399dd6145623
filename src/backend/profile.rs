//! Where a merge spends its time, for `LORAKIT_MERGE_PROFILE=1` (printed on stderr by
//! `ops::merge` at the end of a run; benches/throughput.rs reads it too). Off by default: when
//! the variable is unset every timer is one relaxed load of a cached flag.
//!
//! Stages: `decode` (stored dtype → f32), `product` (the s·B·A terms added in f32),
//! `encode` (f32 → stored dtype, with the finite check), summed over the kernel's threads;
//! `copy` (untouched tensors), `write` (merged tensors handed to the writer, with its finite
//! check), `fsync` and `commit` (rename, folder fsync), wall time on the calling thread.
//! A GGUF merge adds `dequantize` (base tensor → f32) and `quantize` (f32 merge → stored type,
//! with the reported quantization error): summed over the threads on the CPU path (each
//! parallel task takes its rows through the dequantizer, the merge and the quantizer), wall
//! time on the computing thread where the GPU or a DoRA merge hands bands to a parallel
//! quantizer; and `wait`, the time that thread spent waiting for the
//! writer thread to take the next tensor (the writer, not the computation, was the bottleneck).
//! Never used for decisions, only reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// A stage of a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Decode,
    Product,
    Encode,
    Kernel,
    Copy,
    Write,
    Fsync,
    Commit,
    Dequantize,
    Quantize,
    Wait,
}

const STAGES: [(Stage, &str); 11] = [
    (Stage::Decode, "decode"),
    (Stage::Product, "product"),
    (Stage::Encode, "encode"),
    (Stage::Kernel, "kernel"),
    (Stage::Copy, "copy"),
    (Stage::Write, "write"),
    (Stage::Fsync, "fsync"),
    (Stage::Commit, "commit"),
    (Stage::Dequantize, "dequantize"),
    (Stage::Quantize, "quantize"),
    (Stage::Wait, "wait"),
];

static NANOS: [AtomicU64; 11] = [const { AtomicU64::new(0) }; 11];

/// Whether `LORAKIT_MERGE_PROFILE` is set (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LORAKIT_MERGE_PROFILE").is_some_and(|v| v != "0"))
}

/// A running timer of one stage; adds its time when dropped (only when profiling is on).
pub struct Timer(Option<(Stage, Instant)>);

/// Starts timing `stage`.
pub fn time(stage: Stage) -> Timer {
    Timer(enabled().then(|| (stage, Instant::now())))
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((s, t)) = self.0 {
            let i = STAGES.iter().position(|(x, _)| *x == s).expect("stage");
            NANOS[i].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

/// Seconds per stage since the last call, and resets them.
pub fn take() -> Vec<(&'static str, f64)> {
    STAGES
        .iter()
        .zip(&NANOS)
        .map(|((_, name), n)| (*name, n.swap(0, Ordering::Relaxed) as f64 / 1e9))
        .collect()
}

/// One line for stderr: `merge profile: decode 0.123 s (thread sum), …`.
pub fn line(total: f64) -> String {
    let parts: Vec<String> = take()
        .into_iter()
        .map(|(n, s)| format!("{n} {s:.3}"))
        .collect();
    format!(
        "merge profile (s; decode/product/encode summed over threads): {}, total {total:.3}",
        parts.join(", ")
    )
}
