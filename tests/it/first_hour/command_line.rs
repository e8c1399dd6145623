//! One consistent command line: the same flags everywhere, diff across dtypes, dry runs, man
//! pages, inspect flags on the wrong kind of input.

use super::*;

#[test]
fn one_command_line() {
    let dir = tempfile::tempdir().unwrap();
    // torch spellings of dtypes, -o, --prefix (and the old --kohya-prefix, hidden).
    let out = dir.path().join("bf");
    let mut argv = merge_fixtures_args(
        "llama/base",
        "llama/adapters/qv_r8",
        &out,
        &["--dtype", "bfloat16", "-q"],
    );
    assert_eq!(argv[5], "--out");
    argv[5] = "-o".into();
    run_ok(argv);
    assert!(read_checkpoint(&out)
        .values()
        .all(|t| t.dtype == Dtype::BF16));
    let tuned = dir.path().join("tuned");
    merge_qv_r8(&tuned, &["-q"]);
    for flag in ["--prefix", "--kohya-prefix"] {
        let k = dir.path().join(format!("k{}.safetensors", flag.len()));
        run_ok(extract_args(
            &fixture("llama/base"),
            &tuned,
            &k,
            &[
                "--rank", "4", "--format", "kohya", flag, "lora_te", "--dtype", "float16", "-q",
                "--device", "cpu",
            ],
        ));
        assert!(read(&k).keys().all(|n| n.starts_with("lora_te_")));
    }
    // -q silences the report; --json still prints what was asked for.
    let quiet = merge_qv_r8(&dir.path().join("q"), &["-q"]);
    assert!(quiet.is_empty(), "{quiet}");
    let json = merge_qv_r8(&dir.path().join("j"), &["-q", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["operation"], "merge");
    // --version names the revision and the features.
    let v = run_ok(["--version"]);
    assert_mentions(&v, &["rev ", "features: gpu"]);
}

#[test]
fn diff_compares_across_dtypes_and_only_common_tensors() {
    let (dir, merged) = scratch("m");
    merge_qv_r8(&merged, &["-q"]);
    // Against PEFT's merge_and_unload, which holds only the changed tensors.
    let reference = fixture("llama/merged/qv_r8.safetensors");
    // Tensors only in A fail by default.
    diff_exit(&merged, &reference, &["--tolerance", "1e-6"], 1);
    run_ok(diff_args(
        &merged,
        &reference,
        &["--common", "--tolerance", "1e-6"],
    ));
    // A bf16 copy: values compared, the dtype change reported; within bf16 rounding it passes.
    let bf = dir.path().join("bf");
    merge_qv_r8(&bf, &["--dtype", "bf16", "-q"]);
    let j = run_ok(diff_args(&bf, &merged, &["--tolerance", "4e-3", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["pass"], true, "{j}");
    assert_eq!(v["dtype_changes"], 21);
    let max = v["max_rel_fro_diff"].as_f64().unwrap();
    assert!(max > 0.0 && max < 4e-3, "{max}");
    // Tolerance 0 still demands equal values.
    diff_exit(&bf, &merged, &[], 1);
}

#[test]
fn merge_and_extract_dry_runs_plan_without_writing() {
    let (dir, out) = scratch("out");
    let j = merge_qv_r8_into(
        &fixture("llama/base_sharded"),
        &out,
        &["--dry-run", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["modules_matched_count"], 4);
    assert_eq!(v["tensors_merged_count"], 4);
    let planned: u64 = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(planned, v["bytes"].as_u64().unwrap());
    assert!(!out.exists(), "a dry run wrote");
    // The plan is the run: the same files, the same tensor bytes.
    merge_qv_r8_into(&fixture("llama/base_sharded"), &out, &["-q"]);
    for f in v["files"].as_array().unwrap() {
        let p = PathBuf::from(f["path"].as_str().unwrap());
        let t = read(&p);
        assert_eq!(t.len() as u64, f["tensors_count"].as_u64().unwrap());
        assert_eq!(
            t.values().map(|x| x.data.len() as u64).sum::<u64>(),
            f["bytes"].as_u64().unwrap()
        );
    }
    let a = dir.path().join("a");
    let j = run_ok(extract_args(
        &fixture("llama/base"),
        &out,
        &a,
        &["--rank", "4", "--targets", "q_proj", "--dry-run", "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["low_rank_candidates_count"], 2);
    assert!(!a.exists(), "a dry run wrote");
}

#[test]
fn every_subcommand_has_a_man_page() {
    for c in [
        "inspect", "merge", "extract", "resize", "combine", "convert", "eval", "train", "diff",
        "finalize", "run",
    ] {
        let page = run_ok(["man", c]);
        assert!(
            page.contains(&format!("lorakit\\-{c}")) || page.contains(&format!("lorakit-{c}")),
            "{c}: {}",
            &page[..200.min(page.len())]
        );
    }
    one_line_error(&run_err(["man", "nonsense"]));
}

/// `--tensors` on an adapter and `--spectrum` / `--plot` on a checkpoint say what the flag is
/// for (exit 2, nothing written) instead of being ignored.
#[test]
fn inspect_flags_on_the_wrong_kind_of_input_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("llama/adapters/qv_r8");
    let base = fixture("llama/base");
    let e = one_line_error(&run_err(inspect_args(&adapter, &["--tensors"])));
    assert_mentions(&e, &["an adapter", "--tensors"]);
    let e = one_line_error(&run_err(inspect_args(&base, &["--spectrum"])));
    assert_mentions(&e, &["not an adapter", "--spectrum"]);
    let plot = dir.path().join("p.svg");
    let e = one_line_error(&run_err(inspect_args(&base, &["--plot", s(&plot)])));
    assert!(e.contains("--plot"), "{e}");
    assert!(!plot.exists());
    // …and the right kinds still work.
    assert!(run_ok(inspect_args(&base, &["--tensors"])).contains("model.embed_tokens.weight"));
    assert!(run_ok(inspect_args(&adapter, &["--spectrum"])).contains("r90"));
}
