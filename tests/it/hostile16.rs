//! The sixteenth hostile round (a helper's campaign on the release CLI, 2026-12-07): the
//! violations it found, each test failing before its fix.

use super::common::*;

/// An input inside the output folder was deleted by the commit, which removes an older
/// checkpoint's shards and the files an old index lists: a single-file base or a kohya adapter
/// named like a shard, an adapter an old index names, and `dequantize` of a shard into its own
/// folder, all exit 0 with the input gone. Now each is refused in one line and the folder keeps
/// every byte.
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
        // The output a parent of both inputs' folders.
        (&b, merge_args(&base, &b.join(shard), dir.path(), &[])),
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
