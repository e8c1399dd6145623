//! Merge throughput and peak memory (issue: merge benchmark). Not a timed test: run with
//! `cargo bench --bench throughput` and read the figures.
//!
//! Generates a bf16 Llama-shaped checkpoint (hidden 2048, intermediate 5632, 10 layers,
//! vocab 32000: ≈1.2 GB) and a rank-16 PEFT adapter on every linear layer, then reports:
//! the time of a plain copy of the base file on the same disk, the merge's wall time, GB/s,
//! peak RSS (VmHWM, reset before each phase), and the largest tensor for the RSS target
//! (peak ≤ 3 × largest + 64 MB). Data goes to `$LORAKIT_BENCH_DIR` (default
//! `target/bench-data`); it is reused between runs.

use lorakit::adapter::Adapter;
use lorakit::backend::{Device, Engine};
use lorakit::dtype::{self, Dtype};
use lorakit::io::{Checkpoint, Output, TensorSpec};
use lorakit::merge::{MergeOptions, MergePlan, WeightedAdapter};
use std::path::{Path, PathBuf};
use std::time::Instant;

const HIDDEN: usize = 2048;
const INTER: usize = 5632;
const LAYERS: usize = 10;
const VOCAB: usize = 32000;
const RANK: usize = 16;

fn main() {
    let dir = std::env::var_os("LORAKIT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.safetensors");
    let adapter = dir.join("adapter");
    if !base.exists() || !adapter.join("adapter_model.safetensors").exists() {
        eprintln!("generating {} …", dir.display());
        generate(&base, &adapter);
    }
    let base_len = std::fs::metadata(&base).unwrap().len();
    let ck = Checkpoint::open(&base).unwrap();
    let largest = ck.infos().map(|(_, t)| t.byte_len()).max().unwrap();
    drop(ck);

    // Warm the page cache so copy and merge read from the same place.
    let _ = std::fs::read(&base).map(|v| v.len());
    let copy_out = dir.join("copy.safetensors");
    let t = Instant::now();
    std::fs::copy(&base, &copy_out).unwrap();
    std::fs::File::open(&copy_out).unwrap().sync_all().unwrap();
    let copy_s = t.elapsed().as_secs_f64();
    std::fs::remove_file(&copy_out).unwrap();

    let out = dir.join("merged.safetensors");
    let _ = std::fs::remove_file(&out);
    reset_peak_rss();
    let rss0 = peak_rss_kib();
    let t = Instant::now();
    let plan = MergePlan::new(
        Checkpoint::open(&base).unwrap(),
        vec![WeightedAdapter {
            adapter: Adapter::open(&adapter).unwrap(),
            weight: 1.0,
        }],
        out.clone(),
        MergeOptions::default(),
    )
    .unwrap();
    let summary = plan.run(&Engine::new(Device::Cpu).unwrap()).unwrap();
    let merge_s = t.elapsed().as_secs_f64();
    let peak = peak_rss_kib();
    std::fs::remove_file(&out).unwrap();

    let gb = base_len as f64 / 1e9;
    println!("merge benchmark: bf16 Llama-shaped, hidden {HIDDEN}, {LAYERS} layers, r={RANK} on all linear layers");
    println!(
        "  base file            {:.3} GB, largest tensor {:.1} MB",
        gb,
        largest as f64 / 1e6
    );
    println!("  threads              {}", rayon::current_num_threads());
    println!(
        "  plain copy           {:.2} s  ({:.2} GB/s)",
        copy_s,
        gb / copy_s
    );
    println!(
        "  merge                {:.2} s  ({:.2} GB/s), {} tensors merged",
        merge_s,
        gb / merge_s,
        summary.tensors_merged_count
    );
    println!(
        "  merge / copy         {:.2}×   (target ≤ 1.5×)",
        merge_s / copy_s
    );
    println!(
        "  peak RSS             {:.1} MB (process before merge {:.1} MB); target ≤ 3 × largest + 64 MB = {:.1} MB",
        peak as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        (3 * largest) as f64 / 1e6 + 64.0
    );
}

/// Writes the base (random bf16) and the adapter (random f32 factors) with lorakit's writer.
fn generate(base: &Path, adapter: &Path) {
    let mut specs = vec![TensorSpec::new(
        "model.embed_tokens.weight",
        Dtype::BF16,
        vec![VOCAB, HIDDEN],
    )];
    let mut linear = Vec::new();
    for l in 0..LAYERS {
        for (name, d, k) in [
            ("self_attn.q_proj", HIDDEN, HIDDEN),
            ("self_attn.k_proj", HIDDEN / 4, HIDDEN),
            ("self_attn.v_proj", HIDDEN / 4, HIDDEN),
            ("self_attn.o_proj", HIDDEN, HIDDEN),
            ("mlp.gate_proj", INTER, HIDDEN),
            ("mlp.up_proj", INTER, HIDDEN),
            ("mlp.down_proj", HIDDEN, INTER),
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
            vec![HIDDEN],
        ));
        specs.push(TensorSpec::new(
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            Dtype::BF16,
            vec![HIDDEN],
        ));
    }
    specs.push(TensorSpec::new(
        "model.norm.weight",
        Dtype::BF16,
        vec![HIDDEN],
    ));
    specs.push(TensorSpec::new(
        "lm_head.weight",
        Dtype::BF16,
        vec![VOCAB, HIDDEN],
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
