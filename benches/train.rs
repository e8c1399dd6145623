//! LoRA training and evaluation throughput (issue: train benchmark). Not a timed test: run with
//! `cargo bench --bench train` and read the figures.
//!
//! Generates a synthetic f32 Llama checkpoint (hidden 256, intermediate 704, 4 layers, 4 heads
//! of 64, vocab 4096; weights N(0, 0.02²), norms 1) and random token data, then reports tokens/s
//! of `train` steps (LoRA r=8, alpha 16 on q_proj,v_proj, batch 4 × 256 tokens, AdamW, clipping)
//! and of evaluation (forward + loss with the adapter unmerged) for lorakit, and for PyTorch +
//! PEFT on the same files and settings through `benches/train_torch.py` (run with
//! `$LORAKIT_BENCH_PYTHON`, default `python3`; skipped when it fails, e.g. without torch). Both
//! use as many threads as rayon's pool (`RAYON_NUM_THREADS`). Data goes to `$LORAKIT_BENCH_DIR`
//! (default `target/bench-data`). Like `lorakit train` / `eval`, it first calls
//! `model::retain_freed_memory` (glibc keeps freed activations for the next pass).
//! `LORAKIT_BENCH_EVAL_ONLY=1` skips training and the comparison: evaluation alone, for
//! profiling.

use lorakit::dtype::Dtype;
use lorakit::io::{Checkpoint, Output, TensorSpec};
use lorakit::linalg::rng::Xoshiro256PlusPlus;
use lorakit::model::{Exec, Model, ModelConfig, Weights, NO_TARGET};
use lorakit::train::{Dataset, Hyperparams, Init, Schedule, Trainer};
use std::path::{Path, PathBuf};
use std::time::Instant;

const HIDDEN: usize = 256;
const INTER: usize = 704;
const LAYERS: usize = 4;
const HEADS: usize = 4;
const VOCAB: usize = 4096;
const SEQ: usize = 256;
const BATCH: usize = 4;
const SEQUENCES: usize = 64;
const WARMUP: usize = 2;
const STEPS: usize = 10;

fn main() {
    // As `lorakit train` and `lorakit eval` do.
    lorakit::model::retain_freed_memory();
    let dir = std::env::var_os("LORAKIT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"))
        .join("train-llama");
    std::fs::create_dir_all(&dir).unwrap();
    let ids_path = dir.join("input_ids.safetensors");
    if !dir.join("model.safetensors").exists() || !ids_path.exists() {
        eprintln!("generating {} …", dir.display());
        generate(&dir, &ids_path);
    }
    let threads = rayon::current_num_threads();
    let ck = Checkpoint::open(&dir).unwrap();
    let config = ModelConfig::from_folder(&dir).unwrap();
    let tokens = lorakit::model::data::read_input_ids(&ids_path).unwrap().ids;

    // Training.
    let model: Model<f32> = Model::load(Weights::Checkpoint(&ck), config).unwrap();
    let options = Hyperparams {
        steps: WARMUP + STEPS,
        lr: 1e-4,
        schedule: Schedule::Constant,
        warmup: 0,
        weight_decay: 0.0,
        grad_clip: 1.0,
        betas: (0.9, 0.999),
        eps: 1e-8,
        batch: BATCH,
        seq_len: SEQ,
        seed: 0,
    };
    let targets = vec!["q_proj".to_string(), "v_proj".to_string()];
    let mut trainer = Trainer::new(
        model,
        Init::Fresh {
            targets: &targets,
            rank: 8,
            alpha: 16.0,
        },
        false,
        options,
        Dataset::new(tokens.clone(), SEQ).unwrap(),
    )
    .unwrap();
    // `LORAKIT_BENCH_EVAL_ONLY=1`: evaluation alone (for profiling it), no comparison.
    let eval_only = std::env::var_os("LORAKIT_BENCH_EVAL_ONLY").is_some();
    let steps = if eval_only { 0 } else { STEPS };
    for _ in 0..WARMUP.min(steps) {
        trainer.step().unwrap();
    }
    let t = Instant::now();
    let mut last = 0.0;
    for _ in 0..steps {
        last = trainer.step().unwrap().loss;
    }
    let train_s = t.elapsed().as_secs_f64();
    let per_step = (BATCH * SEQ) as f64;
    let train_tps = STEPS as f64 * per_step / train_s;

    // Evaluation: forward + loss, adapter unmerged.
    let mut eval_s = 0.0;
    for i in 0..WARMUP + STEPS {
        let (ids, targets) = trainer.data.batch(i, BATCH, 1).unwrap();
        debug_assert!(targets.contains(&NO_TARGET));
        let t = Instant::now();
        let (s, c) = trainer
            .model
            .loss_sum(&ids, &targets, BATCH, SEQ, Exec::Cpu)
            .unwrap();
        std::hint::black_box((s, c));
        if i >= WARMUP {
            eval_s += t.elapsed().as_secs_f64();
        }
    }
    let eval_tps = STEPS as f64 * per_step / eval_s;
    println!(
        "model: llama hidden {HIDDEN}, intermediate {INTER}, {LAYERS} layers, {HEADS} heads, vocab {VOCAB}, f32; LoRA r=8 on q_proj,v_proj; batch {BATCH} × {SEQ} tokens; {threads} threads"
    );
    println!(
        "lorakit  train {train_tps:>9.0} tokens/s ({:.1} ms/step, loss {last:.3})   eval {eval_tps:>9.0} tokens/s",
        1e3 * train_s / STEPS as f64
    );

    if eval_only {
        return;
    }
    // PyTorch + PEFT on the same files.
    let python = std::env::var("LORAKIT_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/train_torch.py");
    for attn in ["sdpa", "eager"] {
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg(&dir)
            .arg(&ids_path)
            .args(["--batch", &BATCH.to_string()])
            .args(["--steps", &STEPS.to_string()])
            .args(["--warmup", &WARMUP.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--attn", attn])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let v: serde_json::Value =
                    serde_json::from_slice(&o.stdout).expect("train_torch.py prints JSON");
                let tt = v["train_tokens_per_s"].as_f64().unwrap();
                let te = v["eval_tokens_per_s"].as_f64().unwrap();
                println!(
                    "torch {} + PEFT ({attn:>5})  train {tt:>9.0} tokens/s   eval {te:>9.0} tokens/s   → lorakit/torch: train {:.2}×, eval {:.2}×",
                    v["torch"].as_str().unwrap_or("?"),
                    train_tps / tt,
                    eval_tps / te
                );
            }
            Ok(o) => {
                println!(
                    "PyTorch comparison skipped ({python} failed: {})",
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
                break;
            }
            Err(e) => {
                println!("PyTorch comparison skipped ({python}: {e})");
                break;
            }
        }
    }
}

fn generate(dir: &Path, ids_path: &Path) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(42);
    let mut specs = Vec::new();
    let mut data: Vec<Vec<f32>> = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, norm: bool| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = if norm {
            vec![1.0; n]
        } else {
            (0..n)
                .map(|_| (0.02 * rng.next_gaussian()) as f32)
                .collect()
        };
        specs.push(TensorSpec::new(name, Dtype::F32, shape));
        data.push(v);
    };
    let hd = HIDDEN / HEADS;
    put(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        false,
    );
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), vec![HIDDEN], true);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            vec![HIDDEN],
            true,
        );
        for (n, d, k) in [
            ("self_attn.q_proj", HEADS * hd, HIDDEN),
            ("self_attn.k_proj", HEADS * hd, HIDDEN),
            ("self_attn.v_proj", HEADS * hd, HIDDEN),
            ("self_attn.o_proj", HIDDEN, HEADS * hd),
            ("mlp.gate_proj", INTER, HIDDEN),
            ("mlp.up_proj", INTER, HIDDEN),
            ("mlp.down_proj", HIDDEN, INTER),
        ] {
            put(format!("{p}.{n}.weight"), vec![d, k], false);
        }
    }
    put("model.norm.weight".into(), vec![HIDDEN], true);
    put("lm_head.weight".into(), vec![VOCAB, HIDDEN], false);
    let mut out = Output::new();
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let mut w = out
        .safetensors(
            &dir.join("model.safetensors"),
            &[("format".into(), "pt".into())],
            specs,
        )
        .unwrap();
    for (n, v) in names.iter().zip(&data) {
        w.write_tensor(n, bytemuck::cast_slice(v)).unwrap();
    }
    w.finish().unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "head_dim": hd,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dtype": "float32",
    });
    out.small_file(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap().as_bytes(),
    )
    .unwrap();
    let ids: Vec<i64> = (0..SEQUENCES * SEQ)
        .map(|_| (rng.next_u64() % VOCAB as u64) as i64)
        .collect();
    let mut w = out
        .safetensors(
            ids_path,
            &[],
            vec![TensorSpec::new(
                "input_ids",
                Dtype::I64,
                vec![SEQUENCES, SEQ],
            )],
        )
        .unwrap();
    w.write_tensor("input_ids", bytemuck::cast_slice(&ids))
        .unwrap();
    w.finish().unwrap();
    out.commit().unwrap();
}
