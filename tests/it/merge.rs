//! `merge` against PEFT's own `merge_and_unload` results (fixtures/llama/merged, gpt2, conv),
//! kohya references computed in float64 by the fixture generator, and independent checks of
//! rounding, sharding, unmerge and refusals.

use super::common::*;
use std::path::Path;

const TOL: f64 = 1e-6;

fn merge_case(base: &str, adapters: &[(&str, f64)], reference: &str) {
    let dir = tempfile::tempdir().unwrap();
    let base_path = fixture(base);
    let out = dir.path().join("out");
    let mut args: Vec<String> = vec![
        "merge".into(),
        "--base".into(),
        base_path.display().to_string(),
    ];
    for (a, w) in adapters {
        args.extend([
            "--adapter".into(),
            fixture(a).display().to_string(),
            "--weight".into(),
            w.to_string(),
        ]);
    }
    args.extend([
        "--out".into(),
        out.display().to_string(),
        "--device".into(),
        "cpu".into(),
    ]);
    run_ok(&args);
    let merged = read_checkpoint(&out);
    let base_t = read_checkpoint(&base_path);
    let reference = read(&fixture(reference));
    let n = assert_matches_reference(&merged, &base_t, &reference, TOL);
    assert!(n > 0);
}

#[test]
fn peft_qv_r8() {
    merge_case(
        "llama/base",
        &[("llama/adapters/qv_r8", 1.0)],
        "llama/merged/qv_r8.safetensors",
    );
}

#[test]
fn peft_rslora_all_linear() {
    merge_case(
        "llama/base",
        &[("llama/adapters/rslora_all", 1.0)],
        "llama/merged/rslora_all.safetensors",
    );
}

#[test]
fn peft_rank_and_alpha_patterns() {
    merge_case(
        "llama/base",
        &[("llama/adapters/patterns", 1.0)],
        "llama/merged/patterns.safetensors",
    );
}

#[test]
fn peft_dora() {
    merge_case(
        "llama/base",
        &[("llama/adapters/dora", 1.0)],
        "llama/merged/dora.safetensors",
    );
}

#[test]
fn peft_embedding_lora() {
    merge_case(
        "llama/base",
        &[("llama/adapters/embed", 1.0)],
        "llama/merged/embed.safetensors",
    );
}

#[test]
fn peft_lora_bias() {
    merge_case(
        "llama/base_attn_bias",
        &[("llama/adapters/bias", 1.0)],
        "llama/merged/bias.safetensors",
    );
}

#[test]
fn peft_modules_to_save() {
    merge_case(
        "llama/base",
        &[("llama/adapters/modules_to_save", 1.0)],
        "llama/merged/modules_to_save.safetensors",
    );
}

#[test]
fn two_adapters_with_weights_match_peft_weighted_cat() {
    merge_case(
        "llama/base",
        &[
            ("llama/adapters/weighted_a", 0.7),
            ("llama/adapters/weighted_b", -0.4),
        ],
        "llama/merged/weighted.safetensors",
    );
    // PEFT's own cat adapter merged with weight 1 gives the same tensors.
    merge_case(
        "llama/base",
        &[("llama/adapters/weighted_cat", 1.0)],
        "llama/merged/weighted.safetensors",
    );
}

#[test]
fn gpt2_fan_in_fan_out() {
    merge_case(
        "gpt2/base",
        &[("gpt2/adapters/fifo", 1.0)],
        "gpt2/merged/fifo.safetensors",
    );
}

#[test]
fn peft_conv_1x1_and_3x3() {
    merge_case(
        "conv/base/model.safetensors",
        &[("conv/adapters/peft", 1.0)],
        "conv/merged/peft.safetensors",
    );
}

#[test]
fn kohya_text_encoder_with_missing_alpha() {
    merge_case(
        "kohya/te_base",
        &[("kohya/te_lora.safetensors", 1.0)],
        "kohya/merged_te.safetensors",
    );
}

#[test]
fn kohya_locon_conv() {
    merge_case(
        "conv/base/model.safetensors",
        &[("kohya/locon.safetensors", 1.0)],
        "kohya/merged_locon.safetensors",
    );
}

#[test]
fn peft_text_encoder_and_its_diffusers_kohya_conversion_agree() {
    merge_case(
        "kohya/te_base",
        &[("kohya/adapters/te_peft", 1.0)],
        "kohya/merged/te_peft.safetensors",
    );
    merge_case(
        "kohya/te_base",
        &[("kohya/te_from_peft.safetensors", 1.0)],
        "kohya/merged/te_peft.safetensors",
    );
}

#[test]
fn sharded_in_sharded_out_with_valid_index() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = fixture("llama/base_sharded");
    run_ok([
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        fixture("llama/adapters/qv_r8").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    // Same shard files, index and non-weight files as the base.
    assert_eq!(listing(&out), listing(&base));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let base_index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(index["weight_map"], base_index["weight_map"]);
    // Every tensor is in the shard the index names.
    for (tensor, shard) in index["weight_map"].as_object().unwrap() {
        assert!(
            read(&out.join(shard.as_str().unwrap())).contains_key(tensor),
            "{tensor} not in {shard}"
        );
    }
    let total: u64 = read_checkpoint(&out)
        .values()
        .map(|t| t.data.len() as u64)
        .sum();
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    let merged = read_checkpoint(&out);
    assert_matches_reference(
        &merged,
        &read_checkpoint(&base),
        &read(&fixture("llama/merged/qv_r8.safetensors")),
        TOL,
    );
    assert_eq!(
        read(&out.join("model-00001-of-00004.safetensors")).len(),
        read(&base.join("model-00001-of-00004.safetensors")).len()
    );
}

#[test]
fn reshard_with_max_shard_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    run_ok([
        "merge",
        "--base",
        fixture("llama/base").to_str().unwrap(),
        "--adapter",
        fixture("llama/adapters/qv_r8").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-shard-size",
        "120KB",
    ]);
    let files = listing(&out);
    let shards: Vec<&String> = files
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    assert!(shards.len() >= 3, "{files:?}");
    assert!(shards[0].starts_with("model-00001-of-0000"), "{files:?}");
    for s in &shards {
        let len = std::fs::metadata(out.join(s)).unwrap().len();
        let data: u64 = read(&out.join(s))
            .values()
            .map(|t| t.data.len() as u64)
            .sum();
        // A shard exceeds the limit only when it holds one tensor larger than the limit.
        assert!(
            data <= 120_000 || read(&out.join(s)).len() == 1,
            "{s}: {len} bytes"
        );
    }
    assert!(files.contains(&"model.safetensors.index.json".to_string()));
    assert!(files.contains(&"config.json".to_string()));
    assert_matches_reference(
        &read_checkpoint(&out),
        &read_checkpoint(&fixture("llama/base")),
        &read(&fixture("llama/merged/qv_r8.safetensors")),
        TOL,
    );
}

/// bf16 base: every merged value equals round_bf16(f32(W0) + s·B·A), with the f32 sum computed
/// here independently (ascending k, no FMA) and rounded by bit arithmetic.
#[test]
fn bf16_merge_rounds_once_from_f32() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out32 = dir.path().join("out32");
    let base = fixture("llama/base_bf16");
    let adapter = fixture("llama/adapters/qv_r8");
    run_ok([
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    run_ok([
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        out32.to_str().unwrap(),
        "--dtype",
        "f32",
    ]);
    let merged = read_checkpoint(&out);
    let merged32 = read_checkpoint(&out32);
    let base_t = read_checkpoint(&base);
    let ad = read(&adapter.join("adapter_model.safetensors"));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap())
            .unwrap();
    let scale = (cfg["lora_alpha"].as_f64().unwrap() / cfg["r"].as_f64().unwrap()) as f32;
    let rne = |x: f32| -> u16 {
        let b = x.to_bits();
        ((b.wrapping_add(0x7FFF + ((b >> 16) & 1))) >> 16) as u16
    };
    let mut checked = 0;
    for (name, t) in &merged {
        assert_eq!(t.dtype, safetensors::Dtype::BF16, "{name}");
        let module = name.strip_suffix(".weight").unwrap();
        let key_a = format!("base_model.model.{module}.lora_A.weight");
        let Some(a) = ad.get(&key_a) else {
            assert_eq!(t.data, base_t[name].data, "{name} untouched");
            continue;
        };
        let b = &ad[&format!("base_model.model.{module}.lora_B.weight")];
        let (av, bv) = (a.f32(), b.f32());
        let (r, k, d) = (a.shape[0], a.shape[1], b.shape[0]);
        let w0 = base_t[name].f32();
        let got: Vec<u16> = t
            .data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let got32 = merged32[name].f32();
        for i in 0..d {
            for j in 0..k {
                let mut acc = 0f32;
                for kk in 0..r {
                    acc += bv[i * r + kk] * av[kk * k + j];
                }
                let v = w0[i * k + j] + scale * acc;
                assert_eq!(got[i * k + j], rne(v), "{name}[{i},{j}]");
                assert_eq!(
                    got[i * k + j],
                    rne(got32[i * k + j]),
                    "{name}[{i},{j}] vs f32 output"
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn unmerge_restores_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("merged");
    let restored = dir.path().join("restored");
    let base = fixture("llama/base");
    for adapter in ["llama/adapters/rslora_all", "llama/adapters/bias"] {
        let base = if adapter.ends_with("bias") {
            fixture("llama/base_attn_bias")
        } else {
            base.clone()
        };
        let _ = std::fs::remove_dir_all(&merged);
        let _ = std::fs::remove_dir_all(&restored);
        let a = fixture(adapter);
        run_ok([
            "merge",
            "--base",
            base.to_str().unwrap(),
            "--adapter",
            a.to_str().unwrap(),
            "--out",
            merged.to_str().unwrap(),
        ]);
        run_ok([
            "merge",
            "--base",
            merged.to_str().unwrap(),
            "--adapter",
            a.to_str().unwrap(),
            "--out",
            restored.to_str().unwrap(),
            "--unmerge",
        ]);
        let b = read_checkpoint(&base);
        let r = read_checkpoint(&restored);
        let m = read_checkpoint(&merged);
        let mut changed = 0;
        for (name, t) in &b {
            let (x, y) = (r[name].f32(), t.f32());
            if m[name].data != t.data {
                changed += 1;
            }
            for (p, q) in x.iter().zip(&y) {
                // The merged value was rounded to f32 once; subtracting the same delta returns
                // within a couple of ulps of the magnitudes involved.
                assert!(
                    (p - q).abs() <= 4.0 * f32::EPSILON * (1.0 + q.abs()) * 8.0,
                    "{name}: {p} vs {q}"
                );
            }
        }
        assert!(changed > 0, "{adapter}: the merge changed something");
    }
}

#[test]
fn unmatched_modules_are_listed_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let res = run_err([
        "merge",
        "--base",
        fixture("gpt2/base").to_str().unwrap(),
        "--adapter",
        fixture("llama/adapters/qv_r8").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = one_line_error(&res);
    assert!(err.contains("4 adapter module(s) do not match"), "{err}");
    assert!(
        err.contains("model.layers.0.self_attn.q_proj")
            && err.contains("model.layers.1.self_attn.v_proj"),
        "{err}"
    );
    assert!(!out.exists());
    assert!(
        listing(dir.path()).is_empty(),
        "no temp files left: {:?}",
        listing(dir.path())
    );
}

#[test]
fn allow_unmatched_warns_and_merges_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // The lora_bias adapter on a base whose q/o projections have no bias: PEFT refuses to merge
    // it; lorakit lists each bias as unmatched, and with --allow-unmatched merges the weights.
    let err = run_err([
        "merge",
        "--base",
        fixture("llama/base").to_str().unwrap(),
        "--adapter",
        fixture("llama/adapters/bias_nobase").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let line = one_line_error(&err);
    assert!(line.contains("lora_B.bias"), "{line}");
    let o = bin()
        .args([
            "merge",
            "--base",
            fixture("llama/base").to_str().unwrap(),
            "--adapter",
            fixture("llama/adapters/bias_nobase").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--allow-unmatched",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.matches("warning: ").count(), 4, "{stderr}");
    // The weights did merge: W = W0 + (alpha/r)·B·A in f64 from the adapter's own tensors
    // (read with the safetensors crate), the biases left as they were.
    let merged = read_checkpoint(&out);
    let base_t = read_checkpoint(&fixture("llama/base"));
    let ad = read(&fixture(
        "llama/adapters/bias_nobase/adapter_model.safetensors",
    ));
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("llama/adapters/bias_nobase/adapter_config.json")).unwrap(),
    )
    .unwrap();
    let scale = cfg["lora_alpha"].as_f64().unwrap() / cfg["r"].as_f64().unwrap();
    let mut merged_modules = 0;
    for (key, a) in &ad {
        let Some(module) = key
            .strip_prefix("base_model.model.")
            .and_then(|k| k.strip_suffix(".lora_A.weight"))
        else {
            continue;
        };
        let b = &ad[&format!("base_model.model.{module}.lora_B.weight")];
        let (av, bv) = (a.f32(), b.f32());
        let (r, k, d) = (a.shape[0], a.shape[1], b.shape[0]);
        let name = format!("{module}.weight");
        let (w0, w) = (base_t[&name].f32(), merged[&name].f32());
        let mut moved = 0f64;
        for i in 0..d {
            for j in 0..k {
                let delta: f64 = (0..r)
                    .map(|q| bv[i * r + q] as f64 * av[q * k + j] as f64)
                    .sum::<f64>()
                    * scale;
                let want = w0[i * k + j] as f64 + delta;
                assert!(
                    (w[i * k + j] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{name}[{i},{j}]: {} vs {want}",
                    w[i * k + j]
                );
                moved += delta.abs();
            }
        }
        assert!(moved > 0.0, "{name}: the adapter changes nothing");
        merged_modules += 1;
    }
    assert_eq!(merged_modules, 4);
}

/// `--allow-unmatched` never lets a merge through that lands nothing: an adapter for another
/// architecture is an error, and no copy of the base is written.
#[test]
fn allow_unmatched_with_nothing_matched_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let err = run_err([
        "merge",
        "--base",
        fixture("gpt2/base").to_str().unwrap(),
        "--adapter",
        fixture("llama/adapters/qv_r8").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--allow-unmatched",
    ]);
    assert_eq!(err.status.code(), Some(2));
    let line = one_line_error(&err);
    assert!(line.contains("no adapter module matches"), "{line}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn tied_embeddings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let res = run_err([
        "merge",
        "--base",
        fixture("llama/tied").to_str().unwrap(),
        "--adapter",
        fixture("llama/adapters/embed").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = one_line_error(&res);
    assert!(
        err.contains("tie_word_embeddings") && err.contains("embed_tokens"),
        "{err}"
    );
    assert!(!out.exists());
    // An adapter that leaves the embeddings alone merges into the tied base.
    run_ok([
        "merge",
        "--base",
        fixture("llama/tied").to_str().unwrap(),
        "--adapter",
        fixture("llama/adapters/qv_r8").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
}

#[test]
fn output_onto_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.safetensors");
    std::fs::copy(fixture("llama/base/model.safetensors"), &base).unwrap();
    let before = std::fs::read(&base).unwrap();
    let link = dir.path().join("link.safetensors");
    std::os::unix::fs::symlink(&base, &link).unwrap();
    for out in [&base, &link] {
        let res = run_err([
            "merge",
            "--base",
            base.to_str().unwrap(),
            "--adapter",
            fixture("llama/adapters/qv_r8").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let err = one_line_error(&res);
        assert!(err.contains("output is also an input"), "{err}");
    }
    assert_eq!(std::fs::read(&base).unwrap(), before);
    assert_eq!(
        listing(dir.path()),
        vec!["base.safetensors", "link.safetensors"]
    );
}

#[test]
fn reruns_are_byte_identical_and_carry_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let (o1, o2) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    for o in [&o1, &o2] {
        run_ok([
            "merge",
            "--base",
            fixture("llama/base/model.safetensors").to_str().unwrap(),
            "--adapter",
            fixture("llama/adapters/dora").to_str().unwrap(),
            "--out",
            o.to_str().unwrap(),
        ]);
    }
    let (a, b) = (std::fs::read(&o1).unwrap(), std::fs::read(&o2).unwrap());
    assert_eq!(a, b);
    let st = safetensors::SafeTensors::read_metadata(&a).unwrap().1;
    let meta = st.metadata().clone().unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    assert!(meta["lorakit.adapters"].contains("adapters/dora"));
    assert_eq!(meta["lorakit.operation"], "merge");
}

#[test]
fn json_summary_is_parseable() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let s = run_ok([
        "merge",
        "--base",
        fixture("llama/base/model.safetensors").to_str().unwrap(),
        "--adapter",
        fixture("llama/adapters/qv_r8").to_str().unwrap(),
        "--adapter",
        fixture("llama/adapters/weighted_b").to_str().unwrap(),
        "--weight",
        "1",
        "--weight",
        "0.5",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["adapters"][0]["modules_merged"], 4);
    assert_eq!(v["adapters"][1]["modules_merged"], 4);
    assert_eq!(v["adapters"][1]["weight"], 0.5);
    // q_proj of both layers is hit by both adapters: 4 + 4 − 2 tensors.
    assert_eq!(v["tensors_merged_count"], 6);
    assert_eq!(v["tensors_copied_count"], 15);
    assert_eq!(
        v["bytes_written"].as_u64(),
        Some(std::fs::metadata(&out).unwrap().len())
    );
    assert!(Path::new(v["out"].as_str().unwrap()).exists());
}

/// Builds a safetensors file from (name, dtype, shape, bytes).
fn synth(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                *n,
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn non_float_tensors_are_copied_byte_for_byte_and_f64_is_read() {
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.safetensors");
    let w: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    let f64v: Vec<u8> = [1.5f64, -2.25, 1e-3]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    synth(
        &base,
        &[
            ("layer.weight", Dtype::F32, vec![4, 3], f32_bytes(&w)),
            ("q.int8", Dtype::I8, vec![5], vec![1, 255, 3, 128, 7]),
            ("q.fp8", Dtype::F8_E4M3, vec![3], vec![0x38, 0xb8, 0x7e]),
            ("q.u8", Dtype::U8, vec![2], vec![9, 250]),
            ("d.f64", Dtype::F64, vec![3], f64v.clone()),
        ],
    );
    let ad = dir.path().join("ad");
    std::fs::create_dir(&ad).unwrap();
    let a: Vec<f32> = vec![0.5, -1.0, 2.0];
    let b: Vec<f32> = vec![1.0, 0.0, -1.0, 0.5];
    synth(
        &ad.join("adapter_model.safetensors"),
        &[
            (
                "base_model.model.layer.lora_A.weight",
                Dtype::F32,
                vec![1, 3],
                f32_bytes(&a),
            ),
            (
                "base_model.model.layer.lora_B.weight",
                Dtype::F32,
                vec![4, 1],
                f32_bytes(&b),
            ),
        ],
    );
    std::fs::write(
        ad.join("adapter_config.json"),
        r#"{"peft_type":"LORA","r":1,"lora_alpha":2,"target_modules":["layer"]}"#,
    )
    .unwrap();
    let out = dir.path().join("out.safetensors");
    run_ok([
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        ad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    let o = read(&out);
    let inb = read(&base);
    for n in ["q.int8", "q.fp8", "q.u8"] {
        assert_eq!(o[n], inb[n], "{n} copied unchanged");
    }
    assert_eq!(
        o["d.f64"].dtype,
        Dtype::BF16,
        "float tensors follow --dtype"
    );
    assert_eq!(
        o["d.f64"].f32(),
        vec![1.5, -2.25, half::bf16::from_f32(1e-3f64 as f32).to_f32()]
    );
    let merged = o["layer.weight"].f32();
    for i in 0..4 {
        for j in 0..3 {
            let want = w[i * 3 + j] + 2.0 * b[i] * a[j];
            let want_bf16 = half::bf16::from_f32(want).to_f32();
            assert_eq!(merged[i * 3 + j], want_bf16, "[{i},{j}]");
        }
    }
}

#[test]
fn kohya_names_that_match_two_base_tensors_are_ambiguous() {
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.safetensors");
    let z = f32_bytes(&[0.0; 4]);
    // `a.b_c` and `a_b.c` both become `a_b_c` with underscores.
    synth(
        &base,
        &[
            ("a.b_c.weight", Dtype::F32, vec![2, 2], z.clone()),
            ("a_b.c.weight", Dtype::F32, vec![2, 2], z.clone()),
        ],
    );
    let ad = dir.path().join("k.safetensors");
    synth(
        &ad,
        &[
            (
                "lora_unet_a_b_c.lora_down.weight",
                Dtype::F32,
                vec![1, 2],
                f32_bytes(&[1.0, 1.0]),
            ),
            (
                "lora_unet_a_b_c.lora_up.weight",
                Dtype::F32,
                vec![2, 1],
                f32_bytes(&[1.0, 1.0]),
            ),
        ],
    );
    let out = dir.path().join("o.safetensors");
    let res = run_err([
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        ad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let line = one_line_error(&res);
    assert!(
        line.contains("ambiguous")
            && line.contains("a.b_c.weight")
            && line.contains("a_b.c.weight"),
        "{line}"
    );
    assert!(!out.exists());
}

#[test]
fn usage_errors_exit_2() {
    let res = run_err(["merge", "--base", "x", "--out", "y"]);
    assert_eq!(res.status.code(), Some(2));
    let res = run_err([
        "merge",
        "--base",
        fixture("llama/base").to_str().unwrap(),
        "--adapter",
        fixture("llama/adapters/qv_r8").to_str().unwrap(),
        "--weight",
        "1",
        "--weight",
        "2",
        "--out",
        "/tmp/never-written-lorakit",
    ]);
    let line = one_line_error(&res);
    assert!(line.contains("2 --weight values for 1 --adapter"), "{line}");
    let help = run_ok(["merge", "--help"]);
    assert!(help.contains("Examples:") && help.contains("--unmerge"));
}

#[test]
fn three_parts_in_separate_processes_equal_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    let split = dir.path().join("split");
    let base = fixture("llama/base_sharded");
    let common = |out: &Path| {
        vec![
            "merge".to_string(),
            "--base".into(),
            base.display().to_string(),
            "--adapter".into(),
            fixture("llama/adapters/rslora_all").display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--dtype".into(),
            "bf16".into(),
        ]
    };
    run_ok(common(&one));
    // Three processes at once, as three jobs would run.
    let children: Vec<_> = (1..=3)
        .map(|i| {
            let mut args = common(&split);
            args.extend(["--part".into(), format!("{i}/3"), "--quiet".into()]);
            bin().args(&args).spawn().unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    // Before finalize there is no index; finalize refuses while a part is missing.
    assert!(!split.join("model.safetensors.index.json").exists());
    let m2 = split.join(".lorakit-part-2-of-3.json");
    let saved = std::fs::read(&m2).unwrap();
    std::fs::remove_file(&m2).unwrap();
    let err = run_err(["finalize", split.to_str().unwrap()]);
    assert!(one_line_error(&err).contains("parts not finished: 2/3"));
    std::fs::write(&m2, saved).unwrap();
    run_ok(["finalize", split.to_str().unwrap()]);
    assert_eq!(listing(&one), listing(&split));
    for f in listing(&one) {
        assert!(
            std::fs::read(one.join(&f)).unwrap() == std::fs::read(split.join(&f)).unwrap(),
            "{f} differs"
        );
    }
}

/// The `not_float` unmatched reason: a module aimed at an integer (quantized) base tensor is
/// listed with it, and with --allow-unmatched the float module still merges.
#[test]
fn a_module_on_an_integer_tensor_is_unmatched_as_not_float() {
    use safetensors::{tensor::TensorView, Dtype};
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.safetensors");
    let q = vec![1u8; 16];
    let f: Vec<u8> = (0..16).flat_map(|i| (i as f32).to_le_bytes()).collect();
    safetensors::serialize_to_file(
        vec![
            (
                "a.weight",
                TensorView::new(Dtype::I8, vec![4, 4], &q).unwrap(),
            ),
            (
                "b.weight",
                TensorView::new(Dtype::F32, vec![4, 4], &f).unwrap(),
            ),
        ],
        None,
        &base,
    )
    .unwrap();
    let ad = dir.path().join("ad");
    std::fs::create_dir(&ad).unwrap();
    let av: Vec<u8> = [0.5f32; 4].iter().flat_map(|x| x.to_le_bytes()).collect();
    let bv: Vec<u8> = [0.25f32; 4].iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut views = Vec::new();
    for m in ["a", "b"] {
        views.push((
            format!("base_model.model.{m}.lora_A.weight"),
            TensorView::new(Dtype::F32, vec![1, 4], &av).unwrap(),
        ));
        views.push((
            format!("base_model.model.{m}.lora_B.weight"),
            TensorView::new(Dtype::F32, vec![4, 1], &bv).unwrap(),
        ));
    }
    safetensors::serialize_to_file(views, None, &ad.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        ad.join("adapter_config.json"),
        r#"{"peft_type":"LORA","r":1,"lora_alpha":1}"#,
    )
    .unwrap();
    let out = dir.path().join("out.safetensors");
    let line = one_line_error(&run_err([
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        ad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(line.contains("a.weight") && line.contains("I8"), "{line}");
    let json = run_ok([
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        ad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--allow-unmatched",
        "--json",
        "-q",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["unmatched"][0]["reason"], "not_float", "{json}");
    let merged = read(&out);
    assert_eq!(
        merged["a.weight"].data, q,
        "the integer tensor is copied untouched"
    );
    let b = merged["b.weight"].f32();
    for (i, x) in b.iter().enumerate() {
        assert!((x - (i as f32 + 0.125)).abs() < 1e-6, "b[{i}] = {x}");
    }
}

/// `merge --base BASE --adapter ADAPTER -o OUT`.
fn merge_argv<'a>(base: &'a Path, adapter: &'a Path, out: &'a Path) -> [&'a str; 7] {
    let p = |x: &'a Path| x.to_str().unwrap();
    [
        "merge",
        "--base",
        p(base),
        "--adapter",
        p(adapter),
        "-o",
        p(out),
    ]
}

/// A copy of a fixture folder whose config.json `edit` changes.
fn base_with_config(
    dir: &Path,
    from: &str,
    edit: impl Fn(&mut serde_json::Value),
) -> std::path::PathBuf {
    let to = dir.join(from.replace('/', "_"));
    copy_dir(&fixture(from), &to);
    let p = to.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    to
}

/// The two conditions of a tied base, each alone: `tie_word_embeddings: true` with an
/// `lm_head` tensor saved anyway, and a CausalLM with no `lm_head` tensor and no
/// `tie_word_embeddings` key (transformers' default for Llama is tied). Both refuse an
/// adapter on the embeddings; an explicit `false` with an `lm_head` merges it.
#[test]
fn tied_embeddings_are_detected_by_either_condition_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tied_by_config = base_with_config(dir.path(), "llama/base", |c| {
        c["tie_word_embeddings"] = true.into();
    });
    let tied_by_absence = base_with_config(dir.path(), "llama/tied", |c| {
        c.as_object_mut().unwrap().remove("tie_word_embeddings");
    });
    let embed = fixture("llama/adapters/embed");
    for base in [&tied_by_config, &tied_by_absence] {
        let out = dir.path().join("out");
        let err = one_line_error(&run_err(merge_argv(base, &embed, &out)));
        assert!(err.contains("embed_tokens"), "{}: {err}", base.display());
        assert!(!out.exists());
    }
    let untied = base_with_config(dir.path(), "llama/base", |c| {
        c["tie_word_embeddings"] = false.into();
    });
    let out = dir.path().join("untied-out");
    run_ok(merge_argv(&untied, &embed, &out));
    let before = read(&untied.join("model.safetensors"));
    let after = read(&out.join("model.safetensors"));
    assert_ne!(
        before["model.embed_tokens.weight"].data,
        after["model.embed_tokens.weight"].data
    );
    assert_eq!(before["lm_head.weight"].data, after["lm_head.weight"].data);
}

/// A PEFT adapter on `lm_head` (r = 2, alpha = 4: s = 2): merged into an untied base it moves
/// `lm_head.weight` by exactly s·B·A (checked in f64 from the raw factors); on a tied base,
/// which has no `lm_head` tensor, it is an unmatched module whose reason names the tie.
#[test]
fn an_adapter_on_lm_head_merges_into_an_untied_base_and_is_refused_on_a_tied_one() {
    let dir = tempfile::tempdir().unwrap();
    let base = read(&fixture("llama/base/model.safetensors"));
    let head = &base["lm_head.weight"];
    let (vocab, hidden) = (head.shape[0], head.shape[1]);
    let r = 2;
    let a: Vec<f32> = (0..r * hidden)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01)
        .collect();
    let b: Vec<f32> = (0..vocab * r)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.02)
        .collect();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (ab, bb) = (bytes(&a), bytes(&b));
    let ad = dir.path().join("head-lora");
    std::fs::create_dir_all(&ad).unwrap();
    safetensors::serialize_to_file(
        vec![
            (
                "base_model.model.lm_head.lora_A.weight",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![r, hidden], &ab)
                    .unwrap(),
            ),
            (
                "base_model.model.lm_head.lora_B.weight",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![vocab, r], &bb)
                    .unwrap(),
            ),
        ],
        None,
        &ad.join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        ad.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["lm_head"],
            "task_type": "CAUSAL_LM", "fan_in_fan_out": false, "bias": "none"}"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    run_ok(merge_argv(&fixture("llama/base"), &ad, &out));
    let merged = read(&out.join("model.safetensors"))["lm_head.weight"].f32();
    let w0 = head.f32();
    let mut worst = 0f64;
    for i in 0..vocab {
        for j in 0..hidden {
            let delta: f64 = (0..r)
                .map(|k| b[i * r + k] as f64 * a[k * hidden + j] as f64)
                .sum::<f64>()
                * 2.0;
            let want = w0[i * hidden + j] as f64 + delta;
            worst = worst.max((merged[i * hidden + j] as f64 - want).abs());
        }
    }
    // One f32 rounding of W0 + ΔW (|W| < 1 here): half an ulp of 1 at most.
    assert!(worst <= 6e-8, "lm_head merged off by {worst:e}");
    assert_eq!(
        read(&out.join("model.safetensors"))["model.embed_tokens.weight"].data,
        base["model.embed_tokens.weight"].data
    );
    let tied_out = dir.path().join("tied-out");
    let err = one_line_error(&run_err(merge_argv(&fixture("llama/tied"), &ad, &tied_out)));
    assert!(err.contains("lm_head") && err.contains("tied"), "{err}");
    assert!(!dir.path().join("tied-out").exists());
}
