//! Unit tests of the model: logits against transformers' (fixtures), gradients against finite
//! differences in f64 through the same generic code.
//!
//! Must not compare against lorakit's own outputs: references are transformers' logits and f64
//! finite differences.

use super::linear::{Exec, Lora};
use super::llama::{MemoryTensors, Model, Weights, NO_TARGET};
use super::{ModelConfig, Real};
use crate::adapter::Adapter;
use crate::io::{Checkpoint, SafetensorsFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

fn reference(file: &str, name: &str) -> Vec<f32> {
    SafetensorsFile::open(fixture(file))
        .unwrap()
        .read_f32(name)
        .unwrap()
}

fn fixture_ids() -> Vec<u32> {
    super::data::read_input_ids(&fixture("llama/logits.safetensors"))
        .unwrap()
        .ids
}

pub(crate) fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn logits_of(base: &str, adapters: &[&str], merge: bool) -> Vec<f32> {
    let ck = Checkpoint::open(fixture(base)).unwrap();
    let cfg = ModelConfig::from_folder(ck.folder()).unwrap();
    let mut m: Model<f32> = Model::load(Weights::Checkpoint(&ck), cfg).unwrap();
    for a in adapters {
        let ad = Adapter::open(fixture(a)).unwrap();
        m.attach(&ad, 1.0, merge).unwrap();
    }
    m.logits(&fixture_ids(), 2, 8, Exec::Cpu, false).unwrap()
}

#[test]
fn base_logits_match_transformers() {
    let got = logits_of("llama/base", &[], false);
    let want = reference("llama/logits.safetensors", "logits_base");
    let e = rel_err(&got, &want);
    assert!(e < 1e-5, "relative error {e:e}");
}

#[test]
fn unmerged_and_merged_qv_r8_match_peft() {
    let want = reference("llama/logits.safetensors", "logits_qv_r8");
    for merge in [false, true] {
        let got = logits_of("llama/base", &["llama/adapters/qv_r8"], merge);
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "merge={merge}: relative error {e:e}");
    }
}

/// A random tiny model in memory (f32 values) with GQA, biases, a sliding window on layer 1 and
/// tied or untied embeddings.
pub(crate) fn synthetic(tied: bool, seed: u64) -> (ModelConfig, MemoryTensors) {
    let cfg_json = format!(
        r#"{{"model_type":"qwen2","hidden_size":8,"intermediate_size":12,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"head_dim":4,"vocab_size":11,
        "rms_norm_eps":1e-6,"tie_word_embeddings":{tied},"sliding_window":3,
        "layer_types":["full_attention","sliding_attention"],
        "rope_parameters":{{"rope_type":"default","rope_theta":100.0}}}}"#
    );
    let cfg = ModelConfig::parse(Path::new("synthetic"), cfg_json.as_bytes()).unwrap();
    let mut rng = crate::linalg::rng::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut t = MemoryTensors::new();
    let mut put = |name: String, shape: Vec<usize>, std: f64, mean: f64| {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| (mean + std * rng.next_gaussian()) as f32)
            .collect();
        t.insert(name, (shape, Arc::new(v)));
    };
    let (h, i, v) = (8, 12, 11);
    put("model.embed_tokens.weight".into(), vec![v, h], 0.5, 0.0);
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), vec![h], 0.1, 1.0);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            0.1,
            1.0,
        );
        put(
            format!("{p}.self_attn.q_proj.weight"),
            vec![16, h],
            0.4,
            0.0,
        );
        put(format!("{p}.self_attn.q_proj.bias"), vec![16], 0.2, 0.0);
        put(format!("{p}.self_attn.k_proj.weight"), vec![8, h], 0.4, 0.0);
        put(format!("{p}.self_attn.k_proj.bias"), vec![8], 0.2, 0.0);
        put(format!("{p}.self_attn.v_proj.weight"), vec![8, h], 0.4, 0.0);
        put(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, 16],
            0.4,
            0.0,
        );
        put(format!("{p}.mlp.gate_proj.weight"), vec![i, h], 0.4, 0.0);
        put(format!("{p}.mlp.up_proj.weight"), vec![i, h], 0.4, 0.0);
        put(format!("{p}.mlp.down_proj.weight"), vec![h, i], 0.4, 0.0);
    }
    put("model.norm.weight".into(), vec![h], 0.1, 1.0);
    if !tied {
        put("lm_head.weight".into(), vec![v, h], 0.5, 0.0);
    }
    (cfg, t)
}

/// Loss of `m` on a fixed batch (2 sequences of 6, targets = next token, one skipped).
fn batch() -> (Vec<u32>, Vec<u32>) {
    let ids: Vec<u32> = vec![1, 5, 3, 9, 10, 2, 4, 4, 7, 0, 6, 8];
    let mut targets = vec![NO_TARGET; 12];
    for s in 0..2 {
        for p in 0..5 {
            targets[s * 6 + p] = ids[s * 6 + p + 1];
        }
    }
    targets[3] = NO_TARGET;
    (ids, targets)
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    for tied in [false, true] {
        let (cfg, tensors) = synthetic(tied, 7);
        let mut m: Model<f64> = Model::load(Weights::Memory(&tensors), cfg).unwrap();
        let mut rng = crate::linalg::rng::Xoshiro256PlusPlus::seed_from_u64(11);
        // Every projection of every layer (by its in-layer path), and the head.
        let targets: Vec<String> = crate::model::llama::PROJECTIONS
            .iter()
            .chain(&["lm_head"])
            .map(|s| s.to_string())
            .collect();
        let slots = m.select(&targets).unwrap();
        assert_eq!(slots.len(), 15);
        for &s in &slots {
            let lin = m.linear_mut(s);
            let (d, k, r) = (lin.out_features(), lin.in_features(), 2);
            let mut g = || rng.next_gaussian() * 0.3;
            lin.loras.push(Lora {
                source: "test".into(),
                a: (0..r * k).map(|_| g()).collect(),
                b: (0..d * r).map(|_| g()).collect(),
                rank: r,
                scale: 1.5,
                bias: None,
                trainable: true,
            });
        }
        // A frozen adapter too, so the backward through it is exercised.
        {
            let lin = m.linear_mut(1);
            let (d, k) = (lin.out_features(), lin.in_features());
            lin.loras.insert(
                0,
                Lora {
                    source: "frozen".into(),
                    a: (0..k).map(|i| (i as f64 * 0.37).sin()).collect(),
                    b: (0..d).map(|i| (i as f64 * 0.11).cos()).collect(),
                    rank: 1,
                    scale: 0.5,
                    bias: Some((0..d).map(|i| i as f64 * 0.01).collect()),
                    trainable: false,
                },
            );
        }
        let (ids, tg) = batch();
        let (loss, grads) = m.loss_and_grads(&ids, &tg, 2, 6).unwrap();
        let count = tg.iter().filter(|&&t| t != NO_TARGET).count();
        let (s, c) = m.loss_sum(&ids, &tg, 2, 6, Exec::Cpu).unwrap();
        assert_eq!(c, count);
        assert!((s / c as f64 - loss).abs() < 1e-12);
        let eps = 1e-6;
        let mut worst = 0f64;
        let mut checked = 0;
        for &s in &slots {
            let li = m.linear(s).loras.iter().position(|l| l.trainable).unwrap();
            let g = grads.slots[s].clone().unwrap();
            for which in 0..2 {
                let n = if which == 0 { g.a.len() } else { g.b.len() };
                // every entry of small factors, a stride of larger ones
                for idx in (0..n).step_by(1 + n / 12) {
                    let set = |m: &mut Model<f64>, v: f64| -> f64 {
                        let l = &mut m.linear_mut(s).loras[li];
                        let x = if which == 0 {
                            &mut l.a[idx]
                        } else {
                            &mut l.b[idx]
                        };
                        std::mem::replace(x, v)
                    };
                    let orig = set(&mut m, 0.0);
                    set(&mut m, orig + eps);
                    let lp = m.loss_sum(&ids, &tg, 2, 6, Exec::Cpu).unwrap().0 / count as f64;
                    set(&mut m, orig - eps);
                    let lm = m.loss_sum(&ids, &tg, 2, 6, Exec::Cpu).unwrap().0 / count as f64;
                    set(&mut m, orig);
                    let fd = (lp - lm) / (2.0 * eps);
                    let an = if which == 0 { g.a[idx] } else { g.b[idx] };
                    let err = (fd - an).abs() / (fd.abs() + an.abs()).max(1e-3);
                    worst = worst.max(err);
                    checked += 1;
                    assert!(
                        err < 1e-6,
                        "tied={tied} slot {s} {} [{idx}]: analytic {an:e} vs numeric {fd:e}",
                        if which == 0 { "A" } else { "B" }
                    );
                }
            }
        }
        assert!(checked > 200, "{checked}");
        eprintln!("tied={tied}: {checked} gradient entries, worst relative error {worst:e}");
    }
}

#[test]
fn gradients_do_not_depend_on_the_thread_count() {
    // Large enough that the products run on the rayon pool (≥ 2²³ multiply-adds).
    let (h, inter, vocab, seq, batch) = (128usize, 256usize, 64usize, 128usize, 4usize);
    let cfg_json = format!(
        r#"{{"model_type":"llama","hidden_size":{h},"intermediate_size":{inter},"num_hidden_layers":1,
        "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":{vocab},"rms_norm_eps":1e-6}}"#
    );
    let cfg = ModelConfig::parse(Path::new("synthetic"), cfg_json.as_bytes()).unwrap();
    let mut rng = crate::linalg::rng::Xoshiro256PlusPlus::seed_from_u64(5);
    let mut t = MemoryTensors::new();
    let mut put = |name: &str, shape: Vec<usize>, norm: bool| {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                if norm {
                    1.0
                } else {
                    (0.05 * rng.next_gaussian()) as f32
                }
            })
            .collect();
        t.insert(name.to_string(), (shape, Arc::new(v)));
    };
    put("model.embed_tokens.weight", vec![vocab, h], false);
    put("model.layers.0.input_layernorm.weight", vec![h], true);
    put(
        "model.layers.0.post_attention_layernorm.weight",
        vec![h],
        true,
    );
    put("model.layers.0.self_attn.q_proj.weight", vec![h, h], false);
    put(
        "model.layers.0.self_attn.k_proj.weight",
        vec![h / 2, h],
        false,
    );
    put(
        "model.layers.0.self_attn.v_proj.weight",
        vec![h / 2, h],
        false,
    );
    put("model.layers.0.self_attn.o_proj.weight", vec![h, h], false);
    put("model.layers.0.mlp.gate_proj.weight", vec![inter, h], false);
    put("model.layers.0.mlp.up_proj.weight", vec![inter, h], false);
    put("model.layers.0.mlp.down_proj.weight", vec![h, inter], false);
    put("model.norm.weight", vec![h], true);
    put("lm_head.weight", vec![vocab, h], false);
    let mut m: Model<f32> = Model::load(Weights::Memory(&t), cfg).unwrap();
    for s in m
        .select(&["q_proj".into(), "down_proj".into(), "lm_head".into()])
        .unwrap()
    {
        let lin = m.linear_mut(s);
        let (d, k) = (lin.out_features(), lin.in_features());
        lin.loras.push(Lora {
            source: "test".into(),
            a: (0..4 * k).map(|i| ((i as f32) * 0.7).sin() * 0.1).collect(),
            b: (0..d * 4).map(|i| ((i as f32) * 0.3).cos() * 0.1).collect(),
            rank: 4,
            scale: 2.0,
            bias: None,
            trainable: true,
        });
    }
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| ((i * 7 + i / 3) % vocab) as u32)
        .collect();
    let mut tg = vec![NO_TARGET; ids.len()];
    for i in 0..ids.len() - 1 {
        if (i + 1) % seq != 0 {
            tg[i] = ids[i + 1];
        }
    }
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| m.loss_and_grads(&ids, &tg, batch, seq).unwrap())
    };
    let (l1, g1) = run(1);
    let (l3, g3) = run(3);
    assert_eq!(l1.to_bits(), l3.to_bits());
    for (a, b) in g1.slots.iter().zip(&g3.slots) {
        match (a, b) {
            (Some(a), Some(b)) => {
                assert!(a
                    .a
                    .iter()
                    .zip(&b.a)
                    .all(|(x, y)| x.to_bits() == y.to_bits()));
                assert!(a
                    .b
                    .iter()
                    .zip(&b.b)
                    .all(|(x, y)| x.to_bits() == y.to_bits()));
            }
            (None, None) => {}
            _ => panic!("slots differ"),
        }
    }
}

#[test]
fn f32_and_f64_paths_agree() {
    let (cfg, tensors) = synthetic(false, 3);
    let m32: Model<f32> = Model::load(Weights::Memory(&tensors), cfg.clone()).unwrap();
    let m64: Model<f64> = Model::load(Weights::Memory(&tensors), cfg).unwrap();
    let (ids, _) = batch();
    let a = m32.logits(&ids, 2, 6, Exec::Cpu, false).unwrap();
    let b: Vec<f32> = m64
        .logits(&ids, 2, 6, Exec::Cpu, false)
        .unwrap()
        .iter()
        .map(|&x| x as f32)
        .collect();
    assert!(rel_err(&a, &b) < 1e-5);
    let last = m32.logits(&ids, 2, 6, Exec::Cpu, true).unwrap();
    assert_eq!(&last[..11], &a[5 * 11..6 * 11]);
    let _ = f64::ZERO;
}

/// Incremental decoding with a key/value cache gives the logits of recomputing the whole prefix
/// (GQA, biases and a sliding window in the synthetic model; an unmerged LoRA on the fixture).
#[test]
fn cached_logits_match_recomputing_the_prefix() {
    let (cfg, tensors) = synthetic(false, 5);
    let syn: Model<f32> = Model::load(Weights::Memory(&tensors), cfg).unwrap();
    let ck = Checkpoint::open(fixture("llama/base")).unwrap();
    let cfg = ModelConfig::from_folder(ck.folder()).unwrap();
    let mut lm: Model<f32> = Model::load(Weights::Checkpoint(&ck), cfg).unwrap();
    lm.attach(
        &Adapter::open(fixture("llama/adapters/qv_r8")).unwrap(),
        1.0,
        false,
    )
    .unwrap();
    for m in [&syn, &lm] {
        let vocab = m.config.vocab_size as u32;
        let ids: Vec<u32> = (0..10u32).map(|i| (i * 7 + 3) % vocab).collect();
        let mut cache = super::KvCache::default();
        let mut done = 0;
        for end in [4, 5, 6, 7, 8, 10] {
            let got = m
                .logits_cached(&ids[done..end], &mut cache, Exec::Cpu)
                .unwrap();
            done = end;
            assert_eq!(cache.len(), end);
            let want = m.logits(&ids[..end], 1, end, Exec::Cpu, true).unwrap();
            let e = rel_err(&got, &want);
            assert!(e < 1e-5, "{end} tokens: relative error {e:e}");
        }
    }
}

/// The loss row kernel's AVX-512 and baseline copies agree bit for bit, loss and gradient.
#[test]
fn softmax_row_copies_agree_bit_for_bit() {
    use super::llama::softmax_row;
    use super::scalar::with_baseline_kernels;
    let mut rng = crate::linalg::rng::Xoshiro256PlusPlus::seed_from_u64(5);
    let z: Vec<f32> = (0..4099)
        .map(|_| (4.0 * rng.next_gaussian()) as f32)
        .collect();
    for (t, grad) in [(17u32, true), (4098, false), (NO_TARGET, true)] {
        let (mut a, mut b) = (z.clone(), z.clone());
        let la = softmax_row(&mut a, t, grad, 3.0f32);
        let lb = with_baseline_kernels(|| softmax_row(&mut b, t, grad, 3.0f32));
        assert_eq!(la.to_bits(), lb.to_bits());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

/// Eval's forward on the GPU keeps every base weight resident: the first logits upload each
/// linear's `W0` once (one upload per slot), later calls upload nothing and give the same bits,
/// and the logits match the CPU's (unmerged LoRA on q and v, as the eval test of the CLI).
#[test]
fn gpu_logits_upload_each_weight_once_and_match_the_cpu() {
    let Some(ctx) = crate::backend::gpu::tests::fresh_gpu() else {
        return;
    };
    let ck = Checkpoint::open(fixture("llama/base")).unwrap();
    let cfg = ModelConfig::from_folder(ck.folder()).unwrap();
    let mut m: Model<f32> = Model::load(Weights::Checkpoint(&ck), cfg).unwrap();
    m.attach(
        &Adapter::open(fixture("llama/adapters/qv_r8")).unwrap(),
        1.0,
        false,
    )
    .unwrap();
    let ids = fixture_ids();
    let want = m.logits(&ids, 2, 8, Exec::Cpu, false).unwrap();
    assert_eq!(ctx.resident_uploads(), 0);
    let first = m.logits(&ids, 2, 8, Exec::Gpu(&ctx), false).unwrap();
    assert_eq!(ctx.resident_uploads(), m.num_slots() as u64);
    let e = rel_err(&first, &want);
    assert!(e < 1e-5, "gpu vs cpu: relative error {e:e}");
    for _ in 0..2 {
        let again = m.logits(&ids, 2, 8, Exec::Gpu(&ctx), false).unwrap();
        assert_eq!(ctx.resident_uploads(), m.num_slots() as u64);
        assert!(again
            .iter()
            .zip(&first)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    // A clone shares the device copies; a second context gets its own.
    let m2 = m.clone();
    let _ = m2.logits(&ids[..8], 1, 8, Exec::Gpu(&ctx), true).unwrap();
    assert_eq!(ctx.resident_uploads(), m.num_slots() as u64);
    let Some(other) = crate::backend::gpu::tests::fresh_gpu() else {
        return;
    };
    let on_other = m.logits(&ids, 2, 8, Exec::Gpu(&other), false).unwrap();
    assert_eq!(other.resident_uploads(), m.num_slots() as u64);
    assert!(on_other
        .iter()
        .zip(&first)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

/// Eval and train place an adapter module where `lorakit merge` would: the model's slot for a
/// name is the weight merge's matcher (`adapter::mapping::WeightNames`) finds for it among the
/// checkpoint's tensors (norms and biases included). Before the model used that matcher it had
/// its own, which read every name without a dot as a kohya name, so a PEFT module
/// `layers_1_self_attn_q_proj` landed on layer 1's `q_proj` in eval while merge found no tensor
/// for it; both refuse it now.
#[test]
fn module_names_resolve_as_merge_resolves_them() {
    use crate::adapter::mapping::WeightNames;
    use crate::adapter::Format::{Kohya, Peft};
    let (cfg, tensors) = synthetic(false, 3);
    let m: Model<f32> = Model::load(Weights::Memory(&tensors), cfg).unwrap();
    let merge_finds = |format, name: &str| -> Vec<String> {
        let names: Vec<&str> = tensors.keys().map(String::as_str).collect();
        WeightNames::new(names, format)
            .module_candidates(format, name)
            .iter()
            .map(|w| w.strip_suffix(".weight").unwrap().to_owned())
            .collect()
    };
    let slot_name = |format, name: &str| {
        m.module_slot(format, name)
            .map(|s| m.linear(s).name.clone())
    };
    for (format, name) in [
        (Peft, "model.layers.1.self_attn.q_proj"),
        (Peft, "layers.1.mlp.down_proj"),
        (Peft, "lm_head"),
        (Kohya, "lora_te_model_layers_1_self_attn_q_proj"),
        (Kohya, "lora_unet_layers_0_mlp_up_proj"),
        (Kohya, "lora_te_lm_head"),
        (Kohya, "layers.0.self_attn.v_proj"),
    ] {
        let want = merge_finds(format, name);
        assert_eq!(want.len(), 1, "{name}: {want:?}");
        assert_eq!(
            slot_name(format, name).as_deref(),
            Ok(want[0].as_str()),
            "{name}"
        );
    }
    let q = "model.layers.0.self_attn.q_proj, model.layers.1.self_attn.q_proj";
    assert_eq!(merge_finds(Kohya, "lora_te_self_attn_q_proj").join(", "), q);
    assert_eq!(
        slot_name(Kohya, "lora_te_self_attn_q_proj"),
        Err(format!(
            "module `lora_te_self_attn_q_proj` is ambiguous: {q}"
        ))
    );
    // The name the two matchers disagreed on.
    assert!(merge_finds(Peft, "layers_1_self_attn_q_proj").is_empty());
    assert_eq!(
        slot_name(Peft, "layers_1_self_attn_q_proj"),
        Err("module `layers_1_self_attn_q_proj` matches no layer of the model".to_owned())
    );
    assert_eq!(
        slot_name(Kohya, "layers_1_self_attn_q_proj").as_deref(),
        Ok("model.layers.1.self_attn.q_proj")
    );
    assert_eq!(
        slot_name(Kohya, "lora_te_model_embed_tokens"),
        Err("module `lora_te_model_embed_tokens` is the embedding, not a linear layer".to_owned())
    );
}

/// The CPU forward eval runs (`Linear::forward`: `W0` read in its stored dtype, LoRA unmerged)
/// against an f64 triple loop `Y[i,o] = Σ_p X[i,p]·W0[o,p] + Σ_a s_a·Σ_c (Σ_p X[i,p]·A[c,p])·B[o,c]`
/// over the decoded `W0`, for `W0` stored F32, BF16 and F16 and two adapters of different ranks
/// and signs. The GPU forward is tested against this same function (`backend::gpu` tests).
#[test]
fn linear_forward_matches_f64_reference() {
    use super::linear::{Linear, Matrix, MatrixData};
    use crate::dtype::{self, Dtype};
    let mut rng = crate::linalg::rng::Xoshiro256PlusPlus::seed_from_u64(11);
    let mut rand =
        |len: usize| -> Vec<f32> { (0..len).map(|_| (rng.next_f64() - 0.5) as f32).collect() };
    let (n, k, d) = (7, 19, 13);
    let x = rand(n * k);
    let w0 = rand(d * k);
    // (A, B, rank, scale)
    let ads = [
        (rand(3 * k), rand(d * 3), 3, 0.5f32),
        (rand(k), rand(d), 1, -2.0),
    ];
    for dt in [Dtype::F32, Dtype::BF16, Dtype::F16] {
        let bytes = dtype::encode(dt, &w0);
        let w0r = dtype::decode(dt, &bytes);
        let lin: Linear<f32> = Linear {
            name: "test".into(),
            w: Matrix::new(
                MatrixData::Stored {
                    bytes: &bytes,
                    dtype: dt,
                },
                d,
                k,
            ),
            bias: None,
            loras: ads
                .iter()
                .map(|(a, b, rank, scale)| Lora {
                    source: "test".into(),
                    a: a.clone(),
                    b: b.clone(),
                    rank: *rank,
                    scale: *scale,
                    bias: None,
                    trainable: false,
                })
                .collect(),
            base0: None,
        };
        let (got, _) = lin.forward(&x, n, Exec::Cpu, false).unwrap();
        for i in 0..n {
            for o in 0..d {
                let dot = |u: &[f32], v: &[f32]| -> f64 {
                    u.iter().zip(v).map(|(a, b)| *a as f64 * *b as f64).sum()
                };
                let xi = &x[i * k..(i + 1) * k];
                let mut want = dot(xi, &w0r[o * k..(o + 1) * k]);
                for (a, b, rank, scale) in &ads {
                    for c in 0..*rank {
                        let t = dot(xi, &a[c * k..(c + 1) * k]);
                        want += *scale as f64 * t * b[o * rank + c] as f64;
                    }
                }
                let g = got[i * d + o] as f64;
                assert!((g - want).abs() < 1e-5, "{dt:?} [{i},{o}]: {g} vs {want}");
            }
        }
    }
}
