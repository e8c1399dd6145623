//! `resize` through the binary: best rank-r approximations against float64 SVDs of the
//! materialised `s·B·A`, the energy and sv-ratio rank rules, kohya metadata and scales, format
//! changes and determinism.

use super::*;

#[test]
fn resize_gives_the_best_rank_r_approximation_and_keeps_scales() {
    let dir = tempfile::tempdir().unwrap();
    for (adapter, r) in [
        ("llama/adapters/qv_r8", 4usize),
        ("llama/adapters/patterns", 3),
    ] {
        let out = dir.path().join(adapter.replace('/', "_"));
        let rep = run_json(&resize_args(
            &fixture(adapter),
            &out,
            &["--rank", &r.to_string()],
        ));
        let before = deltas(&fixture(adapter));
        let after = deltas(&out);
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>()
        );
        for (name, b) in &before {
            let a = &after[name];
            let want = r.min(b.rank);
            assert_eq!(a.rank, want, "{name}: rank");
            assert!(
                (a.scale - b.scale).abs() <= 1e-15 * b.scale.abs(),
                "{name}: scale {} vs {}",
                a.scale,
                b.scale
            );
            let sv = assert_best_rank(name, &a.w, &b.w, b.d, b.k, want);
            // Energy reported = Σ kept σ² / Σ σ².
            let m = entry(&rep["modules"], "name", name.as_str());
            let kept: f64 = sv[..want].iter().map(|x| x * x).sum::<f64>()
                / sv.iter().map(|x| x * x).sum::<f64>();
            assert!(
                (m["energy_kept"].as_f64().unwrap() - kept).abs() < 1e-5,
                "{name}: energy"
            );
            assert_eq!(m["rank_before"], b.rank);
            assert_eq!(m["rank_after"], want);
        }
    }
    // patterns: k_proj (r = 2) is untouched, byte for byte; rank_pattern/alpha_pattern are
    // written for the modules that differ.
    let out = dir.path().join("llama_adapters_patterns");
    let got = read(&out.join("adapter_model.safetensors"));
    let orig = read(&fixture(
        "llama/adapters/patterns/adapter_model.safetensors",
    ));
    let k = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight";
    assert_eq!(got[k], orig[k]);
    let cfg: serde_json::Value = read_json(out.join("adapter_config.json"));
    assert_eq!(cfg["r"], 3);
    assert_eq!(cfg["rank_pattern"]["model.layers.0.self_attn.k_proj"], 2);
}

#[test]
fn resize_at_full_rank_is_exact_and_energy_one_drops_only_zero_padding() {
    let dir = tempfile::tempdir().unwrap();
    // weighted_cat pads k_proj (true rank 6) and v_proj (true rank 4) to rank 10 with zeros.
    let out = dir.path().join("e1");
    let rep = run_json(&resize_args(
        &fixture("llama/adapters/weighted_cat"),
        &out,
        &["--energy", "1"],
    ));
    let before = deltas(&fixture("llama/adapters/weighted_cat"));
    let after = deltas(&out);
    for (name, b) in &before {
        assert_eq!(after[name].rank, weighted_cat_rank(name), "{name}");
        let e = rel64(&after[name].w, &b.w);
        assert!(e < 1e-6, "{name}: exact to f32 rounding, got {e:e}");
    }
    assert_eq!(rep["modules_resized_count"], 4);
    // The same ranks through --rank: modules whose true rank fits are reproduced exactly.
    let out = dir.path().join("r6");
    run_ok(resize_args(
        &fixture("llama/adapters/weighted_cat"),
        &out,
        &["--rank", "6"],
    ));
    let after = deltas(&out);
    for (name, b) in before.iter().filter(|(n, _)| !n.contains("q_proj")) {
        assert!(rel64(&after[name].w, &b.w) < 1e-6, "{name}");
    }
    // Rank not below the module's: copied untouched.
    let out = dir.path().join("same");
    let rep = run_json(&resize_args(
        &fixture("llama/adapters/qv_r8"),
        &out,
        &["--rank", "8"],
    ));
    assert_eq!(rep["modules_resized_count"], 0);
    let got = read(&out.join("adapter_model.safetensors"));
    let orig = read(&fixture("llama/adapters/qv_r8/adapter_model.safetensors"));
    assert_eq!(got, orig);
    // Embeddings: the saved embedding layer keeps its `base_layer` key, so the result still
    // merges (it is W0 there, not a replacement).
    let out = dir.path().join("embed4");
    run_ok(resize_args(
        &fixture("llama/adapters/embed"),
        &out,
        &["--rank", "4"],
    ));
    let orig = read(&fixture("llama/adapters/embed/adapter_model.safetensors"));
    assert_eq!(read(&out.join("adapter_model.safetensors")), orig);
    let out = dir.path().join("embed2");
    run_ok(resize_args(
        &fixture("llama/adapters/embed"),
        &out,
        &["--rank", "2"],
    ));
    let got = read(&out.join("adapter_model.safetensors"));
    let key = "base_model.model.model.embed_tokens.base_layer.weight";
    assert_eq!(got[key], orig[key]);
    assert_eq!(
        got["base_model.model.model.embed_tokens.lora_embedding_A"].shape,
        vec![2, 128]
    );
    let merged = dir.path().join("embed2_merged");
    merge_ok(&fixture("llama/base"), &out, &merged, &[]);
}

/// A one-module PEFT adapter with `ΔW = 2·B·A`, `B·A = diag(σ)` padded: singular values known.
fn diag_adapter(dir: &Path, sigma: &[f32]) -> PathBuf {
    let (r, d, k) = (sigma.len(), sigma.len() + 2, sigma.len() + 1);
    let mut a = vec![0f32; r * k];
    let mut b = vec![0f32; d * r];
    for (i, &x) in sigma.iter().enumerate() {
        a[i * k + i] = 1.0;
        b[i * r + i] = x;
    }
    let folder = dir.join("diag");
    std::fs::create_dir_all(&folder).unwrap();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (ab, bb) = (bytes(&a), bytes(&b));
    let views = vec![
        (
            "base_model.model.proj.lora_A.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![r, k], &ab).unwrap(),
        ),
        (
            "base_model.model.proj.lora_B.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![d, r], &bb).unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, &folder.join("adapter_model.safetensors")).unwrap();
    let cfg = serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["proj"]});
    std::fs::write(folder.join("adapter_config.json"), cfg.to_string()).unwrap();
    folder
}

#[test]
fn resize_energy_boundary_and_sv_ratio_rules() {
    let dir = tempfile::tempdir().unwrap();
    // σ² = 16, 16, 16, 4, 4, 4, 4: total 64, the first three hold exactly 0.75.
    let ad = diag_adapter(dir.path(), &[4.0, 4.0, 4.0, 2.0, 2.0, 2.0, 2.0]);
    let rank_for = |args: &[&str]| -> u64 {
        let out = dir.path().join(format!("o{}", args.join("_")));
        let rep = run_json(&resize_args(&ad, &out, args));
        rep["modules"][0]["rank_after"].as_u64().unwrap()
    };
    assert_eq!(
        rank_for(&["--energy", "0.75"]),
        3,
        "a threshold hit exactly counts as reached"
    );
    assert_eq!(rank_for(&["--energy", "0.7500001"]), 4);
    assert_eq!(rank_for(&["--energy", "0.74"]), 3);
    assert_eq!(rank_for(&["--energy", "1"]), 7);
    assert_eq!(rank_for(&["--energy", "1", "--rank", "5"]), 5);
    // kohya sv_ratio keeps σ > σ₁/X strictly: X = 2 → 4/2 = 2 is not kept.
    assert_eq!(rank_for(&["--sv-ratio", "2"]), 3);
    assert_eq!(rank_for(&["--sv-ratio", "2.001"]), 7);
    assert_eq!(rank_for(&["--sv-ratio", "2.001", "--rank", "5"]), 5);
    // The kept part is exact: 2·diag(4, 4, 4).
    let out = dir.path().join("r3");
    run_ok(resize_args(&ad, &out, &["--rank", "3"]));
    let got = deltas(&out);
    let m = &got["proj"];
    assert_eq!((m.rank, m.alpha, m.scale), (3, 6.0, 2.0));
    for i in 0..m.d {
        for j in 0..m.k {
            let want = if i == j && i < 3 { 8.0 } else { 0.0 };
            assert!(
                (m.w[i * m.k + j] - want).abs() < 1e-6,
                "({i},{j}) = {}",
                m.w[i * m.k + j]
            );
        }
    }
    // Bad rules are usage errors.
    for bad in [
        &["--energy", "0"][..],
        &["--energy", "1.5"],
        &["--sv-ratio", "0.5"],
        &["--rank", "0"],
        &["--energy", "0.5", "--sv-ratio", "2"],
    ] {
        let res = run_err(resize_args(
            &ad,
            Path::new("/tmp/lorakit-never-written"),
            bad,
        ));
        assert_eq!(res.status.code(), Some(2), "{bad:?}");
    }
    assert!(!Path::new("/tmp/lorakit-never-written").exists());
}

#[test]
fn resize_kohya_keeps_format_metadata_and_scale() {
    let (_dir, out) = scratch("te_r2.safetensors");
    run_ok(resize_args(
        &fixture("kohya/te_lora.safetensors"),
        &out,
        &["--rank", "2"],
    ));
    let t = read(&out);
    // kohya names and alphas: alpha' = alpha·2/4 (1.0; 2.0 where alpha was missing = rank 4).
    let a = t["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"].f32();
    assert_eq!(a, vec![1.0]);
    let a = t["lora_te_text_model_encoder_layers_1_self_attn_v_proj.alpha"].f32();
    assert_eq!(a, vec![2.0]);
    assert_eq!(
        t["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"].shape,
        vec![2, 32]
    );
    let before = deltas(&fixture("kohya/te_lora.safetensors"));
    let after = deltas(&out);
    for (name, b) in &before {
        assert_best_rank(name, &after[name].w, &b.w, b.d, b.k, 2);
    }
    let f = lorakit::io::SafetensorsFile::open(&out).unwrap();
    let meta = &f.header().metadata;
    let get = |k: &str| {
        meta.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("ss_network_module"), Some("networks.lora"));
    assert_eq!(get("ss_network_dim"), Some("2"));
    assert_eq!(get("ss_network_alpha"), Some("Dynamic"));
    assert_eq!(get("lorakit.operation"), Some("resize"));
    assert!(
        get("lorakit.version").is_some()
            && get("lorakit.inputs")
                .unwrap()
                .contains("te_lora.safetensors")
    );
}

#[test]
fn resize_changes_format_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    // kohya → PEFT needs the base for module paths.
    let (out, te) = (
        dir.path().join("te_peft_r2"),
        fixture("kohya/te_lora.safetensors"),
    );
    let te_base = fx("kohya/te_base");
    let args = resize_args(
        &te,
        &out,
        &["--rank", "2", "--format", "peft", "--base", &te_base],
    );
    run_ok(&args);
    let (before, after) = (deltas(&te), deltas(&out));
    assert!(after.contains_key("text_model.encoder.layers.0.self_attn.q_proj"));
    assert_eq!(before.len(), after.len());
    for (dotted, a) in &after {
        let b = &before[&format!("lora_te_{}", dotted.replace('.', "_"))];
        assert_best_rank(dotted, &a.w, &b.w, b.d, b.k, 2);
    }
    let first = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let first_cfg = std::fs::read(out.join("adapter_config.json")).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    run_ok(args);
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        first,
        "byte-identical rerun"
    );
    assert_eq!(
        std::fs::read(out.join("adapter_config.json")).unwrap(),
        first_cfg
    );
    // Without a base it is an error naming the module, and nothing is written.
    let out2 = dir.path().join("nobase");
    let res = run_err(resize_args(
        &fixture("kohya/te_lora.safetensors"),
        &out2,
        &["--rank", "2", "--format", "peft"],
    ));
    let line = one_line_error(&res);
    assert_mentions(&line, &["--base", "lora_te_text_model"]);
    assert!(!out2.exists());
}

/// `--max-rank`, extract's name for the cap of `--energy` / `--sv-ratio`, is accepted by resize
/// too and writes the bytes of `--rank` as that cap; it is refused alone (no rule to cap) and
/// beside `--rank` (a newcomer's trial, 2026-12-06: `resize --energy 0.9 --max-rank 4` was an
/// unknown argument).
#[test]
fn resize_takes_max_rank_as_the_cap_of_a_dynamic_rule() {
    let dir = tempfile::tempdir().unwrap();
    let qv = fixture("llama/adapters/qv_r8");
    for (i, rule) in [["--energy", "0.9"], ["--sv-ratio", "1.5"]]
        .iter()
        .enumerate()
    {
        let (a, b) = (
            dir.path().join(format!("max{i}")),
            dir.path().join(format!("rank{i}")),
        );
        run_ok(resize_args(&qv, &a, &[rule[0], rule[1], "--max-rank", "4"]));
        run_ok(resize_args(&qv, &b, &[rule[0], rule[1], "--rank", "4"]));
        for f in ["adapter_model.safetensors", "adapter_config.json"] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap(),
                "{rule:?} {f}"
            );
        }
    }
    for extra in [
        &["--max-rank", "4"][..],
        &["--energy", "0.9", "--max-rank", "4", "--rank", "3"][..],
    ] {
        let out = dir.path().join("refused");
        run_exit(resize_args(&qv, &out, extra), 2);
        assert!(!out.exists(), "{extra:?}");
    }
}
