//! GPU vs CPU kernel throughput (not a timed test): merge GB/s and low-rank forward GFLOP/s on
//! whatever wgpu adapter exists (`cargo bench --bench gpu`; `scripts/gpu-bench.sh` runs it with
//! the GPU tests and prints the device's peak figures beside it). On a software adapter
//! (lavapipe) the GPU path is slower than the CPU path; that is recorded as measured.
//!
//! Sizes: `LORAKIT_BENCH_DIM` (default 4096) square bf16 weight, rank 16, a forward batch of
//! `LORAKIT_BENCH_ROWS` (default 256) rows. Each figure is the best of 5 runs after a warm-up;
//! GPU times include upload and readback (what a merge pays per tensor).

use lorakit::backend::cpu_forward::{self, ForwardAdapter, StoredMatrix};
use lorakit::backend::gpu::GpuContext;
use lorakit::backend::{cpu, gpu, MergeJob, Term};
use lorakit::dtype::{self, Dtype};
use std::time::Instant;

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> f64 {
    let _ = f();
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let _ = std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let d = env_usize("LORAKIT_BENCH_DIM", 4096);
    let rows = env_usize("LORAKIT_BENCH_ROWS", 256);
    let r = 16;
    let mut s = 0x1234_5678u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
    };
    let w: Vec<f32> = (0..d * d).map(|_| next()).collect();
    let w0 = dtype::encode(Dtype::BF16, &w);
    drop(w);
    let a: Vec<f32> = (0..r * d).map(|_| next()).collect();
    let b: Vec<f32> = (0..d * r).map(|_| next()).collect();
    let x: Vec<f32> = (0..rows * d).map(|_| next()).collect();
    let terms = [Term {
        b: &b,
        a: &a,
        rank: r,
        dense: None,
        scale: 0.5,
        dora: None,
    }];
    let job = MergeJob {
        w0: &w0,
        in_dtype: Dtype::BF16,
        rows: d,
        cols: d,
        terms: &terms,
        out_dtype: Dtype::BF16,
    };
    let bytes = (w0.len() * 2) as f64; // read + write
    let flops = 2.0 * rows as f64 * d as f64 * (d + 2 * r) as f64;
    let stored = StoredMatrix {
        bytes: &w0,
        dtype: Dtype::BF16,
        rows: d,
        cols: d,
    };
    let fa = [ForwardAdapter {
        a: &a,
        b: &b,
        rank: r,
        scale: 0.5,
    }];

    println!("kernel benchmark: {d}×{d} bf16 weight, rank {r}, forward batch {rows} rows");
    let t = best_of(5, || cpu::merge(&job).unwrap());
    println!(
        "  cpu merge            {:8.2} ms  {:7.2} GB/s   ({} threads)",
        t * 1e3,
        bytes / t / 1e9,
        rayon::current_num_threads()
    );
    let t = best_of(3, || {
        cpu_forward::lora_forward(&x, rows, &stored, &fa).unwrap()
    });
    println!(
        "  cpu forward          {:8.2} ms  {:7.2} GFLOP/s",
        t * 1e3,
        flops / t / 1e9
    );
    match GpuContext::new() {
        Err(e) => println!("  gpu                  skipped: {e}"),
        Ok(ctx) => {
            let info = ctx.describe();
            println!(
                "  gpu adapter          {} ({}, {})",
                info.name, info.backend, info.device_type
            );
            let t = best_of(5, || gpu::merge(&ctx, &job).unwrap());
            println!(
                "  gpu merge            {:8.2} ms  {:7.2} GB/s   (incl. upload + readback)",
                t * 1e3,
                bytes / t / 1e9
            );
            let t = best_of(3, || {
                gpu::lora_forward(&ctx, &x, rows, &stored, &fa).unwrap()
            });
            println!(
                "  gpu forward          {:8.2} ms  {:7.2} GFLOP/s (incl. upload + readback)",
                t * 1e3,
                flops / t / 1e9
            );
        }
    }
}
