//! What `extract` extracts, stores whole or skips: unchanged and changed tensors, targets and
//! excludes, embeddings, Conv1D and conv modules, kohya output, determinism, dtypes.

use super::*;

#[test]
fn unchanged_skipped_changed_reported_and_saved_with_save_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (base, tuned) = mixed_pair(dir.path());
    // Without --save-changed: reported, with a warning, not stored.
    let (out, rank_min_diff) = (dir.path().join("plain"), flags("--rank 4 --min-diff 1e-4"));
    let o = run_exit(extract_args(&base, &tuned, &out, &rank_min_diff), 0);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_mentions(
        &stderr,
        &["warning: 2 changed tensor(s) not in the adapter"],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_mentions(
        &stdout,
        &[
            "skipped (unchanged): layers.1.proj.weight, norm.bias",
            "skipped (below min diff): layers.2.proj.weight",
        ],
    );
    let v = extract(
        &base,
        &tuned,
        &dir.path().join("plain_json"),
        &rank_min_diff,
    );
    assert_eq!(
        module_ranks(&v).keys().collect::<Vec<_>>(),
        vec!["layers.0.proj"]
    );
    assert_eq!(
        names_with_reason(&v, "skipped", "unchanged"),
        vec!["layers.1.proj.weight", "norm.bias"]
    );
    assert_eq!(
        names_with_reason(&v, "skipped", "below_min_diff"),
        vec!["layers.2.proj.weight"]
    );
    assert_eq!(
        names_with_reason(&v, "changed_tensors", "not_stored"),
        vec!["layers.0.proj.bias", "norm.weight"]
    );
    let rd = entry(&v["skipped"], "name", "layers.2.proj.weight")["rel_diff"]
        .as_f64()
        .unwrap();
    assert!((rd - 1e-6).abs() < 2e-7, "{rd}");
    assert_eq!(read(&out.join("adapter_model.safetensors")).len(), 2);
    // Without --min-diff the tiny change is a module too.
    let v = extract(&base, &tuned, &dir.path().join("all"), &["--rank", "4"]);
    assert_eq!(module_ranks(&v).len(), 2);

    // With --save-changed: the bias of the LoRA module as base_layer.bias (bias "lora_only"),
    // the norm module whole (modules_to_save, unchanged bias included).
    let out = dir.path().join("saved");
    let v = extract(
        &base,
        &tuned,
        &out,
        &["--rank", "4", "--min-diff", "1e-4", "--save-changed"],
    );
    assert_eq!(
        names_with_reason(&v, "changed_tensors", "stored"),
        vec!["layers.0.proj.bias", "norm.weight"]
    );
    let t = read(&out.join("adapter_model.safetensors"));
    let keys: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec![
            "base_model.model.layers.0.proj.base_layer.bias",
            "base_model.model.layers.0.proj.lora_A.weight",
            "base_model.model.layers.0.proj.lora_B.weight",
            "base_model.model.norm.bias",
            "base_model.model.norm.weight",
        ]
    );
    let cfg: Value = read_json(out.join("adapter_config.json"));
    assert_eq!(cfg["bias"], "lora_only");
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["norm"]));
    assert_eq!(cfg["target_modules"], serde_json::json!(["layers.0.proj"]));
    // lorakit merge of it gives the tuned tensors back (layers.2 stays the base's).
    let merged = dir.path().join("merged.safetensors");
    merge_ok(&base, &out, &merged, &[]);
    let (m, tu, b) = (read(&merged), read(&tuned), read(&base));
    for n in [
        "layers.0.proj.bias",
        "norm.weight",
        "norm.bias",
        "layers.1.proj.weight",
    ] {
        assert_eq!(m[n].data, tu[n].data, "{n}");
    }
    assert_eq!(
        m["layers.2.proj.weight"].data,
        b["layers.2.proj.weight"].data
    );
    let e = rel64(
        &diff(&m, &b, "layers.0.proj.weight"),
        &diff(&tu, &b, "layers.0.proj.weight"),
    );
    assert!(e <= 1e-5, "{e:e}");
}

#[test]
fn targets_and_exclude_filter_modules() {
    let dir = tempfile::tempdir().unwrap();
    let (base, tuned) = mixed_pair(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let targets = flags(r"--rank 2 --targets re:layers\.[02]");
    let v = extract(&base, &tuned, &a, &targets);
    assert_eq!(
        module_ranks(&v).keys().collect::<Vec<_>>(),
        vec!["layers.0.proj", "layers.2.proj"]
    );
    assert_eq!(v["excluded"], 3);
    let exclude = flags(r"--rank 2 --exclude re:^layers\.0");
    let v = extract(&base, &tuned, &b, &exclude);
    assert_eq!(
        module_ranks(&v).keys().collect::<Vec<_>>(),
        vec!["layers.2.proj"]
    );
    assert_eq!(
        names_with_reason(&v, "changed_tensors", "not_stored"),
        vec!["norm.weight"]
    );
    let v = extract(
        &base,
        &tuned,
        &dir.path().join("c"),
        &flags("--rank 2 --targets re:proj$ --exclude re:layers.2"),
    );
    assert_eq!(
        module_ranks(&v).keys().collect::<Vec<_>>(),
        vec!["layers.0.proj"]
    );
}

#[test]
fn embeddings_lora_full_skip() {
    let dir = tempfile::tempdir().unwrap();
    let (tuned, tuned_t) = llama_tuned_with(dir.path(), "llama/merged/embed.safetensors");
    let base = fixture("llama/base");
    let base_t = read_checkpoint(&base);
    // lora: PEFT embedding layout, ΔW = (B·A)ᵀ; matches the fixture adapter's.
    let out = dir.path().join("lora");
    let v = extract(&base, &tuned, &out, &["--rank", "4"]);
    assert_eq!(v["modules"][0]["kind"], "embedding");
    let t = read(&out.join("adapter_model.safetensors"));
    assert_eq!(
        t["base_model.model.model.embed_tokens.lora_embedding_A"].shape,
        vec![4, 128]
    );
    assert_eq!(
        t["base_model.model.model.embed_tokens.lora_embedding_B"].shape,
        vec![64, 4]
    );
    let got = peft_deltas(&out);
    let want = peft_deltas(&fixture("llama/adapters/embed"));
    for m in ["model.embed_tokens", "model.layers.0.self_attn.q_proj"] {
        assert!(rel64(&got[m], &want[m]) <= 1e-5, "{m}");
        assert!(
            rel64(&got[m], &diff(&tuned_t, &base_t, &format!("{m}.weight"))) <= 1e-5,
            "{m}"
        );
    }
    // full: the tuned matrix whole, as modules_to_save.
    let out = dir.path().join("full");
    let v = extract(&base, &tuned, &out, &flags("--rank 4 --embeddings full"));
    assert_eq!(
        v["modules_to_save"],
        serde_json::json!(["model.embed_tokens"])
    );
    let t = read(&out.join("adapter_model.safetensors"));
    assert_eq!(
        t["base_model.model.model.embed_tokens.weight"].data,
        tuned_t["model.embed_tokens.weight"].data
    );
    // skip: listed.
    let skip = dir.path().join("skip");
    let v = extract(&base, &tuned, &skip, &flags("--rank 4 --embeddings skip"));
    assert_eq!(
        names_with_reason(&v, "skipped", "embedding_skip"),
        vec!["model.embed_tokens.weight"]
    );
    assert_eq!(v["totals"]["module_count"], 2);
}

#[test]
fn fan_in_fan_out_and_conv_match_the_fixture_adapters() {
    let dir = tempfile::tempdir().unwrap();
    for (base, merged, adapter, extra) in [
        (
            "gpt2/base",
            "gpt2/merged/fifo.safetensors",
            "gpt2/adapters/fifo",
            vec!["--rank", "4", "--fan-in-fan-out"],
        ),
        (
            "conv/base/model.safetensors",
            "conv/merged/peft.safetensors",
            "conv/adapters/peft",
            vec!["--rank", "2"],
        ),
    ] {
        let mut t = read_checkpoint(&fixture(base));
        t.extend(read(&fixture(merged)));
        let tuned = dir
            .path()
            .join(format!("{}.safetensors", adapter.replace('/', "_")));
        write_tensors(&tuned, &t);
        let out = dir.path().join(adapter.replace('/', "_"));
        extract(&fixture(base), &tuned, &out, &extra);
        let got = peft_deltas(&out);
        let want = peft_deltas(&fixture(adapter));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (m, w) in &want {
            let e = rel64(&got[m], w);
            assert!(e <= 1e-5, "{adapter} {m}: {e:e}");
        }
    }
}

#[test]
fn kohya_output_merges_to_the_same_result_as_peft_output() {
    let dir = tempfile::tempdir().unwrap();
    let tuned = llama_tuned_file(dir.path(), "llama/merged/qv_r8.safetensors");
    let base = fixture("llama/base");
    let kohya = dir.path().join("lora.safetensors");
    let peft = dir.path().join("peft");
    extract(&base, &tuned, &kohya, &["--rank", "8", "--format", "kohya"]);
    extract(&base, &tuned, &peft, &["--rank", "8"]);
    let k = read(&kohya);
    assert!(
        k.contains_key("lora_unet_model_layers_0_self_attn_q_proj.lora_down.weight"),
        "{:?}",
        k.keys()
    );
    assert_eq!(
        k["lora_unet_model_layers_1_self_attn_v_proj.alpha"].f32(),
        vec![8.0]
    );
    let (mk, mp) = (dir.path().join("mk"), dir.path().join("mp"));
    merge_ok(&base, &kohya, &mk, &[]);
    merge_ok(&base, &peft, &mp, &[]);
    assert_eq!(read_checkpoint(&mk), read_checkpoint(&mp));
    // kohya cannot hold full tensors or embeddings: refused before anything is written.
    // The library names its options; the binary prints the flags the user typed.
    for (extra, want) in [
        (
            vec!["--save-changed"],
            "--format kohya cannot hold full tensors; drop --save-changed or use --format peft",
        ),
        (
            vec!["--embeddings", "lora"],
            "--format kohya cannot hold embeddings; use --embeddings skip or --format peft",
        ),
        (
            vec!["--fan-in-fan-out"],
            "--format kohya cannot hold fan_in_fan_out (Conv1D) modules; use --format peft",
        ),
    ] {
        let out = dir.path().join("refused.safetensors");
        let mut args = vec!["--rank", "8", "--format", "kohya"];
        args.extend(extra);
        let e = run_extract_err(&base, &tuned, &out, &args);
        assert!(e.ends_with(want), "{e}");
        assert!(!out.exists());
    }
}

#[test]
fn output_is_deterministic_and_per_module() {
    let dir = tempfile::tempdir().unwrap();
    let tuned = llama_tuned_file(dir.path(), "llama/merged/rslora_all.safetensors");
    let base = fixture("llama/base");
    let (a, b, c, d) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
        dir.path().join("d"),
    );
    extract(&base, &tuned, &a, &["--rank", "3"]);
    extract(&base, &tuned, &b, &["--rank", "3"]);
    extract(&base, &tuned, &c, &["--rank", "3", "--targets", "q_proj"]);
    extract(&base, &tuned, &d, &["--rank", "3", "--seed", "1"]);
    let f = "adapter_model.safetensors";
    assert!(
        std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
        "same run, same bytes"
    );
    assert_eq!(
        std::fs::read(a.join("adapter_config.json")).unwrap(),
        std::fs::read(b.join("adapter_config.json")).unwrap()
    );
    let (ta, tc, td) = (read(&a.join(f)), read(&c.join(f)), read(&d.join(f)));
    assert_eq!(tc.len(), 4);
    for (k, v) in &tc {
        assert_eq!(
            v, &ta[k],
            "{k}: a module's factors do not depend on the other modules"
        );
    }
    // Thread count does not matter (fixed row blocks; sequential QR/SVD).
    for threads in ["1", "3"] {
        let e = dir.path().join(format!("t{threads}"));
        let o = bin()
            .env("RAYON_NUM_THREADS", threads)
            .args(extract_args(&base, &tuned, &e, &["--rank", "3", "-q"]))
            .output()
            .unwrap();
        assert!(o.status.success());
        assert!(
            std::fs::read(e.join(f)).unwrap() == std::fs::read(a.join(f)).unwrap(),
            "{threads} threads"
        );
    }
    // Rank 3 of a rank-4 ΔW: another seed gives other (nearly equal) factors.
    assert!(ta.iter().any(|(k, v)| v.data != td[k].data));
}

#[test]
fn bf16_factors_report_the_error_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let tuned = llama_tuned_file(dir.path(), "llama/merged/qv_r8.safetensors");
    let out = dir.path().join("out");
    let v = extract(
        &fixture("llama/base"),
        &tuned,
        &out,
        &["--rank", "8", "--dtype", "bf16"],
    );
    let t = read(&out.join("adapter_model.safetensors"));
    assert!(t.values().all(|x| x.dtype == Dtype::BF16));
    let got = peft_deltas(&out);
    let base_t = read_checkpoint(&fixture("llama/base"));
    let tuned_t = read(&tuned);
    for m in v["modules"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let actual = rel64(
            &got[name],
            &diff(&tuned_t, &base_t, &format!("{name}.weight")),
        );
        let reported = m["rel_error"].as_f64().unwrap();
        assert!(actual > 1e-4, "bf16 rounding is visible: {actual}");
        assert_rel_close(reported, actual, 1e-3, &format!("{name}: reported, actual"));
    }
}

/// `--dtype keep` writes the factors in the tuned checkpoint's dtype (bf16 here); the default
/// stays f32.
#[test]
fn dtype_keep_writes_the_tuned_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base_bf16");
    let tuned = dir.path().join("tuned");
    merge_qv_r8_into(&base, &tuned, &[]);
    for (flags, want) in [
        (&["--dtype", "keep"][..], Dtype::BF16),
        (&[][..], Dtype::F32),
    ] {
        let out = dir.path().join(format!("out{}", flags.len()));
        let mut args = vec!["--rank", "8"];
        args.extend_from_slice(flags);
        extract(&base, &tuned, &out, &args);
        let t = read(&out.join("adapter_model.safetensors"));
        assert!(!t.is_empty());
        assert!(
            t.values().all(|x| x.dtype == want),
            "{flags:?}: want {want:?}"
        );
    }
}
