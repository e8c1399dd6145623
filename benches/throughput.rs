//! Merge throughput and peak memory against the durable-copy floor (issue #15). Not a timed
//! test: run with `cargo bench --bench throughput` and read the figures.
//!
//! Generates a bf16 Llama-shaped checkpoint (hidden 2048, intermediate 5632, vocab 32000,
//! `LORAKIT_BENCH_LAYERS` layers, default 4: ≈0.62 GB, issue #15's case; 10 layers ≈1.2 GB; or
//! with `LORAKIT_BENCH_MODEL=7b` Llama-2-7B's shapes, hidden 4096, intermediate 11008, 32
//! layers: 13.5 GB, real random data, no sparse file) and a rank-16 PEFT adapter on every
//! linear layer, then runs, `LORAKIT_BENCH_RUNS` times (default 5, 1 for 7b) and interleaved,
//! the durable copy of the base (`std::fs::copy`, which is `copy_file_range` on Linux, then
//! fsync: the least any tool that writes a new file must do), the merge, and the merge with
//! exact rounding (`LORAKIT_BENCH_EXACT=0` leaves it out) — with `LORAKIT_BENCH_BUFFERED=1` also
//! the merge with the writer's direct I/O off (`LORAKIT_DIRECT_IO=0`), an A/B in one session —
//! and reports min and median of each,
//! the merge/copy and exact/f32 ratios, GB/s, peak RSS (VmHWM, reset before each merge) and the
//! largest tensor for the RSS target (peak ≤ 3 × largest + 64 MB). With
//! `LORAKIT_MERGE_PROFILE=1` each merge's time per stage is printed (see
//! `lorakit::backend::profile`). Data goes to `$LORAKIT_BENCH_DIR` (default
//! `target/bench-data-L<layers>` or `target/bench-data-7b`); it is reused between runs and
//! must be deleted by hand (13.5 GB for 7b).

use lorakit::adapter::Adapter;
use lorakit::backend::{profile, Device, Engine};
use lorakit::dtype::{self, Dtype};
use lorakit::io::{Checkpoint, Output, TensorSpec};
use lorakit::merge::{MergeOptions, MergePlan, Rounding, WeightedAdapter};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "support/mod.rs"]
mod support;
use support::remove_settled;

const VOCAB: usize = 32000;
const RANK: usize = 16;

/// Hidden size, intermediate size and layers of the generated model.
#[derive(Clone, Copy)]
struct Shape {
    hidden: usize,
    inter: usize,
    /// Rows of k_proj and v_proj (grouped-query attention: fewer than `hidden`).
    kv: usize,
    layers: usize,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn min_median(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2])
}

fn main() {
    let big = std::env::var("LORAKIT_BENCH_MODEL").is_ok_and(|v| v == "7b");
    let shape = if big {
        Shape {
            hidden: 4096,
            inter: 11008,
            kv: 4096,
            layers: 32,
        }
    } else {
        Shape {
            hidden: 2048,
            inter: 5632,
            kv: 512,
            layers: env_usize("LORAKIT_BENCH_LAYERS", 4),
        }
    };
    let runs = env_usize("LORAKIT_BENCH_RUNS", if big { 1 } else { 5 }).max(1);
    let exact = std::env::var("LORAKIT_BENCH_EXACT").map_or(true, |v| v != "0");
    let dir = std::env::var_os("LORAKIT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let tag = if big {
                "7b".to_string()
            } else {
                format!("L{}", shape.layers)
            };
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-data-{tag}"))
        });
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.safetensors");
    let adapter = dir.join("adapter");
    if !base.exists() || !adapter.join("adapter_model.safetensors").exists() {
        eprintln!("generating {} …", dir.display());
        let t = Instant::now();
        generate(&base, &adapter, shape);
        eprintln!("generated in {:.1} s", t.elapsed().as_secs_f64());
    }
    let base_len = std::fs::metadata(&base).unwrap().len();
    let ck = Checkpoint::open(&base).unwrap();
    let largest = ck.infos().map(|(_, t)| t.byte_len()).max().unwrap();
    drop(ck);

    // Warm the page cache so copy and merge read from the same place (streamed: the 7b base
    // does not fit in memory).
    {
        use std::io::Read;
        let mut f = std::fs::File::open(&base).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        while f.read(&mut buf).unwrap() > 0 {}
    }
    let copy_out = dir.join("copy.safetensors");
    let out = dir.join("merged.safetensors");
    let (mut copies, mut merges, mut exacts) = (Vec::new(), Vec::new(), Vec::new());
    let (mut peak, mut rss0, mut merged_count) = (0u64, 0u64, 0usize);
    // (rounding, buffered writes): the merge, with `LORAKIT_BENCH_BUFFERED=1` the same merge
    // with direct I/O off (`LORAKIT_DIRECT_IO=0`, the writer's A/B), and the exact one.
    let buffered_too = std::env::var("LORAKIT_BENCH_BUFFERED").is_ok_and(|v| v == "1");
    let mut modes = vec![(Rounding::F32, false)];
    if buffered_too {
        modes.push((Rounding::F32, true));
    }
    if exact {
        modes.push((Rounding::Exact, false));
    }
    let mut buffered = Vec::new();
    for run in 0..runs {
        remove_settled(&copy_out);
        let t = Instant::now();
        std::fs::copy(&base, &copy_out).unwrap();
        std::fs::File::open(&copy_out).unwrap().sync_all().unwrap();
        copies.push(t.elapsed().as_secs_f64());
        remove_settled(&copy_out);

        for &(rounding, plain_writes) in &modes {
            // The bench is single-threaded here: no other thread reads the environment.
            if plain_writes {
                std::env::set_var("LORAKIT_DIRECT_IO", "0");
            } else {
                std::env::remove_var("LORAKIT_DIRECT_IO");
            }
            remove_settled(&out);
            reset_peak_rss();
            rss0 = rss0.max(peak_rss_kib());
            let _ = profile::take();
            let t = Instant::now();
            let plan = MergePlan::new(
                Checkpoint::open(&base).unwrap(),
                vec![WeightedAdapter {
                    adapter: Adapter::open(&adapter).unwrap(),
                    weight: 1.0,
                }],
                out.clone(),
                MergeOptions {
                    rounding,
                    ..MergeOptions::default()
                },
            )
            .unwrap();
            let summary = plan.run(&Engine::new(Device::Cpu).unwrap()).unwrap();
            let merge_s = t.elapsed().as_secs_f64();
            match (rounding, plain_writes) {
                (Rounding::F32, false) => merges.push(merge_s),
                (Rounding::F32, true) => buffered.push(merge_s),
                (Rounding::Exact, _) => exacts.push(merge_s),
            }
            peak = peak.max(peak_rss_kib());
            merged_count = summary.run.tensors_merged_count;
            if profile::enabled() {
                let how = if plain_writes { ", buffered" } else { "" };
                eprintln!(
                    "run {} ({rounding:?}{how}): {}",
                    run + 1,
                    profile::line(merge_s)
                );
            }
            remove_settled(&out);
        }
    }

    let gb = base_len as f64 / 1e9;
    let (copy_min, copy_med) = min_median(&copies);
    let (merge_min, merge_med) = min_median(&merges);
    println!(
        "merge benchmark: bf16 Llama-shaped, hidden {}, intermediate {}, {} layers, r={RANK} on all linear layers",
        shape.hidden, shape.inter, shape.layers
    );
    println!(
        "  base file            {:.3} GB, largest tensor {:.1} MB",
        gb,
        largest as f64 / 1e6
    );
    println!(
        "  threads              {}, {runs} runs each, interleaved; load average {}",
        rayon::current_num_threads(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  durable copy         min {:.3} s  median {:.3} s  ({:.2} GB/s at min)",
        copy_min,
        copy_med,
        gb / copy_min
    );
    println!(
        "  merge                min {:.3} s  median {:.3} s  ({:.2} GB/s at min), {} tensors merged",
        merge_min,
        merge_med,
        gb / merge_min,
        merged_count
    );
    println!(
        "  merge / copy         {:.2}× (min/min), {:.2}× (median/median)   (target ≤ 1.2×)",
        merge_min / copy_min,
        merge_med / copy_med
    );
    if !buffered.is_empty() {
        let (b_min, b_med) = min_median(&buffered);
        println!(
            "  merge, buffered I/O  min {:.3} s  median {:.3} s; / copy {:.2}× (min/min), {:.2}× (median/median)",
            b_min,
            b_med,
            b_min / copy_min,
            b_med / copy_med
        );
    }
    if !exacts.is_empty() {
        let (exact_min, exact_med) = min_median(&exacts);
        println!(
            "  merge, exact         min {:.3} s  median {:.3} s; exact / f32 {:.3}× (min/min), {:.3}× (median/median)",
            exact_min,
            exact_med,
            exact_min / merge_min,
            exact_med / merge_med
        );
    }
    println!(
        "  peak RSS             {:.1} MB (process before merge {:.1} MB); target ≤ 3 × largest + 64 MB = {:.1} MB",
        peak as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        (3 * largest) as f64 / 1e6 + 64.0
    );
}

/// Writes the base (random bf16) and the adapter (random f32 factors) with lorakit's writer.
fn generate(base: &Path, adapter: &Path, shape: Shape) {
    let Shape {
        hidden,
        inter,
        kv,
        layers,
    } = shape;
    let mut specs = vec![TensorSpec::new(
        "model.embed_tokens.weight",
        Dtype::BF16,
        vec![VOCAB, hidden],
    )];
    let mut linear = Vec::new();
    for l in 0..layers {
        for (name, d, k) in [
            ("self_attn.q_proj", hidden, hidden),
            ("self_attn.k_proj", kv, hidden),
            ("self_attn.v_proj", kv, hidden),
            ("self_attn.o_proj", hidden, hidden),
            ("mlp.gate_proj", inter, hidden),
            ("mlp.up_proj", inter, hidden),
            ("mlp.down_proj", hidden, inter),
        ] {
            let n = format!("model.layers.{l}.{name}");
            specs.push(TensorSpec::new(
                format!("{n}.weight"),
                Dtype::BF16,
                vec![d, k],
            ));
            linear.push((n, d, k));
        }
        specs.push(TensorSpec::new(
            format!("model.layers.{l}.input_layernorm.weight"),
            Dtype::BF16,
            vec![hidden],
        ));
        specs.push(TensorSpec::new(
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            Dtype::BF16,
            vec![hidden],
        ));
    }
    specs.push(TensorSpec::new(
        "model.norm.weight",
        Dtype::BF16,
        vec![hidden],
    ));
    specs.push(TensorSpec::new(
        "lm_head.weight",
        Dtype::BF16,
        vec![VOCAB, hidden],
    ));
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        ((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
    };
    let mut out = Output::new();
    let mut w = out
        .safetensors(base, &[("format".into(), "pt".into())], specs.clone())
        .unwrap();
    for s in &specs {
        let n: usize = s.shape.iter().product();
        w.begin(&s.name).unwrap();
        let mut left = n;
        while left > 0 {
            let c = left.min(1 << 20);
            let vals: Vec<f32> = (0..c).map(|_| next()).collect();
            w.write_chunk(&dtype::encode(Dtype::BF16, &vals)).unwrap();
            left -= c;
        }
    }
    w.finish().unwrap();
    std::fs::create_dir_all(adapter).unwrap();
    let mut aspecs = Vec::new();
    for (n, d, k) in &linear {
        aspecs.push(TensorSpec::new(
            format!("base_model.model.{n}.lora_A.weight"),
            Dtype::F32,
            vec![RANK, *k],
        ));
        aspecs.push(TensorSpec::new(
            format!("base_model.model.{n}.lora_B.weight"),
            Dtype::F32,
            vec![*d, RANK],
        ));
    }
    let mut w = out
        .safetensors(
            &adapter.join("adapter_model.safetensors"),
            &[],
            aspecs.clone(),
        )
        .unwrap();
    for s in &aspecs {
        let n: usize = s.shape.iter().product();
        let vals: Vec<f32> = (0..n).map(|_| next()).collect();
        w.write_tensor(&s.name, &dtype::encode(Dtype::F32, &vals))
            .unwrap();
    }
    w.finish().unwrap();
    out.small_file(
        &adapter.join("adapter_config.json"),
        format!(r#"{{"peft_type":"LORA","r":{RANK},"lora_alpha":32,"target_modules":["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]}}"#).as_bytes(),
    )
    .unwrap();
    out.commit().unwrap();
}

fn reset_peak_rss() {
    // Linux ≥ 4.0: writing 5 resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
