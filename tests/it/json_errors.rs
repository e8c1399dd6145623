//! A failed `--json` run prints one JSON object on stdout, `{"operation", "error": {"message",
//! "exit_code", "kind"}}`, for the scripts that parse stdout; its stderr line and exit status
//! are exactly those of the same run without `--json` (which prints nothing on stdout).

use super::common::*;
use serde_json::{json, Value};

/// `lorakit ARGS` fails with `code`, its one `error: …` line on stderr, nothing on stdout; with
/// `--json` the same stderr and status, and stdout exactly the error object of `operation`
/// whose message is that line (without `error: `) and whose kind is `kind`.
#[track_caller]
fn assert_json_error(args: &[String], operation: &str, kind: &str, code: i32) {
    let plain = bin().args(args).output().unwrap();
    let with_json = bin().args(args).arg("--json").output().unwrap();
    let err = String::from_utf8_lossy(&plain.stderr).into_owned();
    assert_eq!(plain.status.code(), Some(code), "{args:?}: {err}");
    assert!(plain.stdout.is_empty(), "{args:?}: stdout without --json");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one error line: {err}");
    let message = lines[0]
        .strip_prefix("error: ")
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(with_json.status.code(), Some(code), "{args:?} --json");
    assert_eq!(
        String::from_utf8_lossy(&with_json.stderr),
        err,
        "{args:?}: --json changed stderr"
    );
    let v: Value = serde_json::from_slice(&with_json.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} --json: stdout is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&with_json.stdout)
        )
    });
    assert_eq!(
        v,
        json!({"operation": operation,
               "error": {"message": message, "exit_code": code, "kind": kind}}),
        "{args:?}"
    );
    assert_eq!(
        v.as_object().unwrap().keys().next().map(String::as_str),
        Some("operation")
    );
}

fn a(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

/// Every command that takes `--json`, failing on a missing file, a mismatch, an output onto its
/// input, a bad value or an output that cannot be written: each kind with its exit status.
#[test]
fn every_json_command_prints_its_failure_as_one_json_object() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let (base, qv, missing) = (
        fixture("llama/base"),
        fixture("llama/adapters/qv_r8"),
        d("missing"),
    );
    let (text, tok) = (fixture("text/tiny.txt"), fixture("text/tokenizer.json"));
    let text_tok = ["--text", s(&text), "--tokenizer", s(&tok)];
    std::fs::write(dir.path().join("file"), b"").unwrap();
    let cases: Vec<(Vec<String>, &str, &str, i32)> = vec![
        (inspect_args(&missing, &[]), "inspect", "input", 2),
        (
            merge_args(&base, &missing, &d("m"), &[]),
            "merge",
            "input",
            2,
        ),
        // An output onto its input.
        (merge_args(&base, &qv, &base, &[]), "merge", "input", 2),
        // A destination under a regular file: the output cannot be written.
        (
            merge_args(&base, &qv, &d("file/x/m"), &[]),
            "merge",
            "output",
            3,
        ),
        // Modules that match no base tensor: the command line needs --allow-unmatched.
        (
            merge_args(&fixture("gpt2/base"), &qv, &d("g"), &[]),
            "merge",
            "usage",
            2,
        ),
        (
            dequantize_args(&base, &d("dq"), &[]),
            "dequantize",
            "input",
            2,
        ),
        (
            extract_args(&base, &missing, &d("x"), &["--rank", "4"]),
            "extract",
            "input",
            2,
        ),
        (
            extract_args(&base, &base, &d("y"), &["--rank", "4", "--alpha=-1"]),
            "extract",
            "usage",
            2,
        ),
        (
            resize_args(&missing, &d("r"), &["--rank", "2"]),
            "resize",
            "input",
            2,
        ),
        // Ranks 8 and 7: a mismatch for a linear combination.
        (
            combine_args(
                &[(&qv, None), (&fixture("check/rank7"), None)],
                &d("c"),
                &["--method", "linear"],
            ),
            "combine",
            "input",
            2,
        ),
        (
            convert_args(&missing, "peft", &d("cv"), &[]),
            "convert",
            "input",
            2,
        ),
        (eval_args(&missing, &text_tok), "eval", "input", 2),
        (
            train_args(
                &missing,
                &[
                    "--data",
                    s(&text),
                    "--tokenizer",
                    s(&tok),
                    "--out",
                    s(&d("t")),
                ],
            ),
            "train",
            "input",
            2,
        ),
        (diff_args(&missing, &base, &[]), "diff", "input", 2),
        (check_args(&missing, &[]), "check", "input", 2),
        (finalize_args(dir.path(), &[]), "finalize", "input", 2),
        (
            run_args(&d("missing.toml"), &["--dry-run"]),
            "run",
            "input",
            2,
        ),
        // A value out of range that the library words about a file: still the command line.
        (
            check_fix_args(
                &fixture("llama/adapters/dora"),
                Some(&base),
                &d("fx"),
                &["--dora-rank", "0"],
            ),
            "check",
            "usage",
            2,
        ),
    ];
    for (args, operation, kind, code) in &cases {
        assert_json_error(args, operation, kind, *code);
    }
    assert!(
        !dir.path().join("m").exists() && !dir.path().join("x").exists(),
        "a failed run wrote its output"
    );
}

/// `gpu-info --json` without the adapter asked for (index 99: no machine has that many).
#[test]
fn gpu_info_json_failure_is_a_json_object() {
    assert_json_error(&a(&["gpu-info", "--gpu-index", "99"]), "gpu", "input", 2);
}

/// A command line clap refuses never reaches the command, so whether `--json` is valid is not
/// known: one line on stderr, exit 2, stdout empty (as the README says).
#[test]
fn a_command_line_clap_refuses_stays_on_stderr() {
    let out = run_exit(["inspect", "--json", "--no-such-flag", "x"], 2);
    assert!(out.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}
