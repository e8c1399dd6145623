//! The sixteenth hostile round (a helper's campaign on the release CLI, 2026-12-07): the
//! violations it found, each test failing before its fix.

use super::common::*;

/// An input inside the output folder was deleted by the commit, which removes an older
/// checkpoint's shards and the files an old index lists: a single-file base or a kohya adapter
/// named like a shard, an adapter an old index names, and `dequantize` of a shard into its own
/// folder, all exit 0 with the input gone. Now each is refused in one line and the folder keeps
/// every byte; an input the commit would not touch (beside the shards, or in a subfolder) still
/// merges.
#[test]
fn an_input_inside_the_output_folder_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    let adapter = fixture("llama/adapters/qv_r8");
    let shard = "model-00001-of-00002.safetensors";
    // A: the base, named like a shard, in the output folder.
    let a = dir.path().join("a");
    std::fs::create_dir(&a).unwrap();
    std::fs::copy(base.join("model.safetensors"), a.join(shard)).unwrap();
    // B, C: a kohya adapter named like a shard; one any old index lists.
    let (b, c) = (dir.path().join("b"), dir.path().join("c"));
    run_ok(convert_args(&adapter, "kohya", &b.join(shard), &[]));
    run_ok(convert_args(
        &adapter,
        "kohya",
        &c.join("my_lora.safetensors"),
        &[],
    ));
    std::fs::write(
        c.join("model.safetensors.index.json"),
        r#"{"weight_map":{"x":"my_lora.safetensors"}}"#,
    )
    .unwrap();
    let cases = [
        (
            &a,
            merge_args(&a.join(shard), &adapter, &a, &["--max-shard-size", "10GB"]),
        ),
        (&b, merge_args(&base, &b.join(shard), &b, &[])),
        (
            &c,
            merge_args(&base, &c.join("my_lora.safetensors"), &c, &[]),
        ),
    ];
    for (folder, args) in cases {
        let before = snapshot(folder);
        let err = one_line_error(&run_err(&args));
        assert!(err.contains("holds an input"), "{err}");
        assert_eq!(snapshot(folder), before, "{}", folder.display());
    }
    // E: dequantize of a shard into its own folder.
    let e = dir.path().join("e");
    std::fs::create_dir(&e).unwrap();
    let src = fixture("quant/fp8_edge.safetensors");
    std::fs::copy(&src, e.join("model-00001-of-00003.safetensors")).unwrap();
    let before = snapshot(&e);
    let err = one_line_error(&run_err(dequantize_args(
        &e.join("model-00001-of-00003.safetensors"),
        &e,
        &["--max-shard-size", "10GB"],
    )));
    assert!(err.contains("holds an input"), "{err}");
    assert_eq!(snapshot(&e), before);
    // An adapter the commit would not remove, inside the output folder: merged.
    let f = dir.path().join("f");
    run_ok(convert_args(
        &adapter,
        "kohya",
        &f.join("lora.safetensors"),
        &[],
    ));
    merge_ok(&base, &f.join("lora.safetensors"), &f, &["--quiet"]);
    assert!(f.join("lora.safetensors").is_file() && f.join("model.safetensors").is_file());
}

/// An old index in the output folder listed `notes.txt`: the commit removed it with the
/// index's shards. Only safetensors files an index lists go with it now.
#[test]
fn an_old_index_removes_only_the_safetensors_it_lists() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), b"keep me").unwrap();
    std::fs::write(out.join("model-00001-of-00009.safetensors"), b"old").unwrap();
    std::fs::write(
        out.join("model.safetensors.index.json"),
        r#"{"weight_map":{"x":"notes.txt","y":"model-00001-of-00009.safetensors"}}"#,
    )
    .unwrap();
    merge_ok(
        &fixture("llama/base"),
        &fixture("llama/adapters/qv_r8"),
        &out,
        &["--quiet"],
    );
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"keep me");
    assert!(!out.join("model-00001-of-00009.safetensors").exists());
    assert!(!out.join("model.safetensors.index.json").exists());
}

/// A folder holding both `model.safetensors` and `model.safetensors.index.json` with its shards
/// was merged from the shards, while transformers loads `model.safetensors` (and diffusers the
/// index of its own names): which model it is depends on the reader, so it is refused.
#[test]
fn a_whole_file_beside_a_shard_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    copy_dir(&fixture("llama/base_sharded"), &base);
    std::fs::copy(
        fixture("llama/merged/qv_r8.safetensors"),
        base.join("model.safetensors"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let err = merge_refused(&base, &fixture("llama/adapters/qv_r8"), &out, &[]);
    assert!(err.contains("model.safetensors.index.json"), "{err}");
}

/// A 4 MB LoKr file whose two 1024×1024 halves make a 2²⁰ × 2²⁰ ΔW: `inspect --spectrum` and
/// `combine --method svd` built it dense and were killed by the kernel (no message). Now both
/// refuse in one line, naming the module and the memory it needs; `resize`, which works on
/// the halves, still runs.
#[test]
fn a_small_factor_file_with_a_huge_delta_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lokr.safetensors");
    let n = 1024;
    let mut rng = lorakit::linalg::rng::Xoshiro256PlusPlus::seed_from_u64(5);
    let half: Vec<u8> = (0..n * n)
        .flat_map(|_| half::f16::from_f32((rng.next_f64() - 0.5) as f32 * 0.01).to_le_bytes())
        .collect();
    write_views(
        &file,
        &[
            (
                "lycoris_x_to_q.lokr_w1",
                safetensors::Dtype::F16,
                &[n, n],
                &half,
            ),
            (
                "lycoris_x_to_q.lokr_w2",
                safetensors::Dtype::F16,
                &[n, n],
                &half,
            ),
        ],
    );
    let err = one_line_error(&run_err(inspect_args(&file, &["--spectrum"])));
    assert!(
        err.contains("lycoris_x_to_q") && err.contains("memory and swap"),
        "{err}"
    );
    let out = dir.path().join("svd.safetensors");
    let err = refused(
        combine_args(
            &[(&file, None), (&file, None)],
            &out,
            &["--method", "svd", "--rank", "4"],
        ),
        &out,
    );
    assert!(
        err.contains("lycoris_x_to_q") && err.contains("memory and swap"),
        "{err}"
    );
    let small = dir.path().join("r4.safetensors");
    run_ok(resize_args(&file, &small, &["--rank", "4"]));
}

/// Unbounded or contradictory options that hung or were accepted: `--power-iters 10⁹`
/// (extract ran for days), an invalid `layers_pattern` regex (PEFT raises on it; lorakit
/// ignored the layer filter), `diff --common` of two files sharing no tensor (PASS with nothing
/// compared), `train --alpha nan` (refused only as a NaN loss at step 1), and a `rank_pattern`
/// of 60,000 regex keys (~20 kB of compiled regex each: millions took the machine's memory;
/// plain module names are matched without one).
#[test]
fn unbounded_and_contradictory_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (base, adapter) = (fixture("llama/base"), fixture("llama/adapters/qv_r8"));
    let tuned = fixture("llama/merged/qv_r8.safetensors");
    let out = dir.path().join("ex");
    for flags in [
        &["--power-iters", "1000000000"][..],
        &["--max-power-iters", "101"],
    ] {
        let args = extract_args(&base, &tuned, &out, &[&["--rank", "2"], flags].concat());
        let err = refused(args, &out);
        assert!(err.contains("power iterations"), "{err}");
    }
    let lp = dir.path().join("lp");
    copy_dir(&adapter, &lp);
    edit_json(lp.join("adapter_config.json"), |c| {
        c["layers_pattern"] = "(".into();
        c["layers_to_transform"] = serde_json::json!([0, 1]);
    });
    let err = merge_refused(&base, &lp, &dir.path().join("lp_out"), &[]);
    assert!(
        err.contains("layers_pattern") && err.contains("adapter_config.json"),
        "{err}"
    );
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let one = 1f32.to_le_bytes();
    write_views(&a, &[("x", safetensors::Dtype::F32, &[1], &one)]);
    write_views(&b, &[("y", safetensors::Dtype::F32, &[1], &one)]);
    let out = bin()
        .args(diff_args(&a, &b, &["--common"]))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let t = dir.path().join("t");
    let err = refused(
        one_step_train(&base, &fixture("text/tiny.txt"), &t, &["--alpha", "nan"]),
        &t,
    );
    assert!(err.contains("--alpha"), "{err}");
    let rp = dir.path().join("rp");
    copy_dir(&adapter, &rp);
    edit_json(rp.join("adapter_config.json"), |c| {
        let keys: serde_json::Map<String, serde_json::Value> = (0..60_000)
            .map(|i| (format!(r"layers\.{i}\.q_proj"), 8.into()))
            .collect();
        c["rank_pattern"] = keys.into();
    });
    let err = one_line_error(&run_err(inspect_args(&rp, &[])));
    assert!(
        err.contains("rank_pattern") && err.contains("60000 regex keys"),
        "{err}"
    );
    // As many plain module names (what `resize` writes for an MoE model's experts) are read
    // without a regex each.
    edit_json(rp.join("adapter_config.json"), |c| {
        let keys: serde_json::Map<String, serde_json::Value> = (0..60_000)
            .map(|i| (format!("layers.{i}.q_proj"), 8.into()))
            .collect();
        c["rank_pattern"] = keys.into();
    });
    run_ok(inspect_args(&rp, &[]));
}
