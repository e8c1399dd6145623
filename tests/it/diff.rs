//! `diff`: exit status and per-tensor figures against values computed here.

use super::common::*;
use std::path::Path;

#[test]
fn identical_checkpoints_pass_and_layouts_do_not_matter() {
    // The same weights as one file and as four shards.
    let s = run_ok(diff_args(
        &fixture("llama/base"),
        &fixture("llama/base_sharded"),
        &["--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["pass"], true);
    assert_eq!(v["identical"], 21);
    assert_eq!(v["failed"], 0);
}

#[test]
fn differences_fail_with_exit_1_and_exact_figures() {
    let (_dir, out) = scratch("m");
    merge_qv_r8(&out, &[]);
    let o = diff_exit(&out, &fixture("llama/base"), &["--json"], 1);
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["failed"], 4);
    let merged = read_checkpoint(&out);
    let base = read_checkpoint(&fixture("llama/base"));
    for t in v["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let (a, b) = (merged[name].f32(), base[name].f32());
        let mx = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .fold(0.0, f64::max);
        assert_eq!(t["max_abs_diff"].as_f64().unwrap(), mx, "{name}");
        let rel = rel_err(&a, &b);
        assert!(
            (t["rel_fro_diff"].as_f64().unwrap() - rel).abs() <= 1e-12 * (1.0 + rel),
            "{name}"
        );
        assert_eq!(
            t["pass"], t["identical"],
            "{name}: tolerance 0 passes identical tensors only"
        );
    }
    // Against PEFT's merge_and_unload (a file of the changed tensors only, hence --common):
    // within 1e-6 it passes, and it is not identical (the test would pass on `diff out out`).
    let reference = fixture("llama/merged/qv_r8.safetensors");
    let o = diff_exit(
        &out,
        &reference,
        &["--common", "--tolerance", "1e-6", "--json"],
        0,
    );
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["tensors_compared"], 4);
    assert_eq!(v["only_in_a"], 17);
    // …and a tolerance below the f32 rounding of the two merges fails it, so the comparison
    // measures something.
    let max = v["max_rel_fro_diff"].as_f64().unwrap();
    assert!(max > 0.0 && max < 1e-6, "{max}");
    diff_exit(
        &out,
        &reference,
        &["--common", "--tolerance", &format!("{:e}", max / 2.0)],
        1,
    );
    // A loose tolerance lets the merge pass against the base; --max-abs can still fail it.
    diff_exit(&out, &fixture("llama/base"), &["--tolerance", "10"], 0);
    diff_exit(
        &out,
        &fixture("llama/base"),
        &["--tolerance", "10", "--max-abs", "1e-9"],
        1,
    );
}

#[test]
fn missing_tensors_and_dtype_changes_fail() {
    let (_dir, bf) = scratch("bf");
    merge_qv_r8(&bf, &["--dtype", "bf16"]);
    let o = diff_exit(&bf, &fixture("llama/base"), &[], 1);
    let text = o;
    assert_mentions(&text, &["dtype BF16 vs F32", "FAIL"]);
    // The changed-tensors-only reference: 17 base tensors exist only in A.
    let o = diff_exit(
        &fixture("llama/base"),
        &fixture("llama/merged/qv_r8.safetensors"),
        &["--json"],
        1,
    );
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["only_in_a"], 17);
    // Bad input is exit 2, not 1.
    let o = run_err(diff_args(
        Path::new("/nonexistent/a"),
        &fixture("llama/base"),
        &[],
    ));
    one_line_error(&o);
}

#[test]
fn completions_and_man_page_are_generated() {
    let bash = run_ok(["completions", "bash"]);
    assert!(
        bash.contains("lorakit") && bash.contains("merge") && bash.contains("--max-shard-size")
    );
    let man = run_ok(["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH lorakit"),
        "{}",
        &man[..100.min(man.len())]
    );
    assert!(man.contains("merge"));
}

/// The plan checks both thresholds before opening anything: a negative, infinite or NaN
/// `--tolerance` or `--max-abs` is one line naming that flag (the library names its option;
/// the binary spells it as the flag), exit 2.
#[test]
fn invalid_thresholds_are_refused_naming_the_flag() {
    let base = fixture("llama/base");
    for (flag, value) in [
        ("--tolerance", "-1"),
        ("--tolerance", "inf"),
        ("--tolerance", "NaN"),
        ("--max-abs", "-0.5"),
        ("--max-abs", "NaN"),
    ] {
        let e = one_line_error(&run_err(diff_args(
            &base,
            &base,
            &[&format!("{flag}={value}")],
        )));
        assert!(
            e.contains(&format!("{flag} must be a finite number")),
            "{flag} {value}: {e}"
        );
        assert!(
            !e.contains('`'),
            "a library name leaked into the CLI message: {e}"
        );
    }
}
