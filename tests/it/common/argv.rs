//! One argv builder per command (`lorakit COMMAND …` as a `Vec<String>`), so that no test
//! writes its argument list by hand.

use super::{fixture, s};
use std::path::Path;

/// `command` followed by `extra`, as owned arguments (every `*_args` helper below).
pub(super) fn argv(command: &[&str], extra: &[&str]) -> Vec<String> {
    command.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// Arguments of `lorakit merge --base BASE --adapter ADAPTER --out OUT` followed by `extra`.
pub fn merge_args(base: &Path, adapter: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    argv(
        &[
            "merge",
            "--base",
            s(base),
            "--adapter",
            s(adapter),
            "--out",
            s(out),
        ],
        extra,
    )
}

/// [`merge_args`] of two fixtures: `base` and `adapter` are paths under `fixtures/`.
pub fn merge_fixtures_args(base: &str, adapter: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    merge_args(&fixture(base), &fixture(adapter), out, extra)
}

/// Arguments of `lorakit extract --base BASE --tuned TUNED --out OUT` followed by `extra`.
pub fn extract_args(base: &Path, tuned: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    argv(
        &[
            "extract",
            "--base",
            s(base),
            "--tuned",
            s(tuned),
            "--out",
            s(out),
        ],
        extra,
    )
}

/// Arguments of `lorakit resize ADAPTER --out OUT` followed by `extra` (the rank rule).
pub fn resize_args(adapter: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    argv(&["resize", s(adapter), "--out", s(out)], extra)
}

/// Arguments of `lorakit convert ADAPTER --to TO --out OUT` followed by `extra`.
pub fn convert_args(adapter: &Path, to: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    argv(&["convert", s(adapter), "--to", to, "--out", s(out)], extra)
}

/// Arguments of `lorakit eval --model MODEL` followed by `extra`.
pub fn eval_args(model: &Path, extra: &[&str]) -> Vec<String> {
    argv(&["eval", "--model", s(model)], extra)
}

/// Arguments of `lorakit eval --model MODEL --device cpu` followed by `extra`.
pub fn eval_cpu_args(model: &Path, extra: &[&str]) -> Vec<String> {
    argv(&["eval", "--model", s(model), "--device", "cpu"], extra)
}

/// Arguments of `lorakit inspect PATH` followed by `extra`.
pub fn inspect_args(path: &Path, extra: &[&str]) -> Vec<String> {
    argv(&["inspect", s(path)], extra)
}

/// Arguments of `lorakit check ADAPTER` followed by `extra`.
pub fn check_args(adapter: &Path, extra: &[&str]) -> Vec<String> {
    argv(&["check", s(adapter)], extra)
}

/// Arguments of `lorakit check ADAPTER [--base BASE] --fix --out OUT` followed by `extra`.
pub fn check_fix_args(
    adapter: &Path,
    base: Option<&Path>,
    out: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut fix = vec![];
    if let Some(b) = base {
        fix.extend(["--base", s(b)]);
    }
    fix.extend(["--fix", "--out", s(out)]);
    fix.extend_from_slice(extra);
    check_args(adapter, &fix)
}

/// Arguments of `lorakit finalize OUT` (the output that parts were written for) followed by
/// `extra`.
pub fn finalize_args(out: &Path, extra: &[&str]) -> Vec<String> {
    argv(&["finalize", s(out)], extra)
}

/// Arguments of `lorakit run RECIPE` followed by `extra`.
pub fn run_args(recipe: &Path, extra: &[&str]) -> Vec<String> {
    argv(&["run", s(recipe)], extra)
}

/// Arguments of `lorakit dequantize MODEL --out OUT` followed by `extra`.
pub fn dequantize_args(model: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    argv(&["dequantize", s(model), "--out", s(out)], extra)
}

/// `--adapter FIXTURE --weight W` for each `(fixture, weight)`, in order (merge and eval).
pub fn weighted_adapter_args(adapters: &[(&str, f64)]) -> Vec<String> {
    adapters
        .iter()
        .flat_map(|(a, w)| {
            [
                "--adapter".into(),
                fixture(a).display().to_string(),
                "--weight".into(),
                w.to_string(),
            ]
        })
        .collect()
}

/// Arguments of `lorakit train --model MODEL` followed by `extra`.
pub fn train_args(model: &Path, extra: &[&str]) -> Vec<String> {
    argv(&["train", "--model", s(model)], extra)
}

/// `train` of `model` for one step of one 8-token sequence from `data` into `out`, then `extra`.
pub fn one_step_train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let args = [
        "--data",
        s(data),
        "--seq-len",
        "8",
        "--steps",
        "1",
        "--batch",
        "1",
    ];
    train_args(model, &[&args[..], &["--out", s(out)], extra].concat())
}

/// Arguments of `lorakit combine`: `--adapter PATH` for each of `adapters`, followed by
/// `--weight W` where one is given, then `extra`, then `--out OUT`.
pub fn combine_args(adapters: &[(&Path, Option<&str>)], out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec!["combine".to_string()];
    for (path, weight) in adapters {
        v.extend(["--adapter".to_string(), path.display().to_string()]);
        if let Some(w) = weight {
            v.extend(["--weight".to_string(), w.to_string()]);
        }
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v.extend(["--out".to_string(), out.display().to_string()]);
    v
}

/// Arguments of `lorakit diff A B` followed by `extra`.
pub fn diff_args(a: &Path, b: &Path, extra: &[&str]) -> Vec<String> {
    argv(&["diff", s(a), s(b)], extra)
}
