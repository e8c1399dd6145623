//! `merge`: the shared helpers of its tests, which are split by subject: PEFT and kohya
//! references ([`peft`]), output layout ([`layout`]), rounding and unmerge ([`rounding`]),
//! refusals ([`refusals`]).

mod layout;
mod peft;
mod peft_init;
mod refusals;
mod rounding;

use super::common::*;
use std::path::Path;

const TOL: f64 = 1e-6;

fn merge_case(base: &str, adapters: &[(&str, f64)], reference: &str) {
    let dir = tempfile::tempdir().unwrap();
    let base_path = fixture(base);
    let out = dir.path().join("out");
    // The first adapter goes in merge_args' place, its weight and the other adapters after.
    let (first, more) = adapters.split_first().expect("a merge case has an adapter");
    let (weight, more) = (first.1.to_string(), weighted_adapter_args(more));
    let mut flags = vec!["--weight", &weight];
    flags.extend(more.iter().map(String::as_str));
    flags.extend(["--device", "cpu"]);
    run_ok(merge_args(&base_path, &fixture(first.0), &out, &flags));
    let n = assert_merged_matches(&out, &base_path, &fixture(reference), TOL);
    assert!(n > 0);
}

/// [`merge_case`] of the llama fixture adapter `case` at weight 1 into the llama base, against
/// PEFT's merge of it (`fixtures/llama/merged/{case}.safetensors`).
fn llama_case(case: &str) {
    let reference = format!("llama/merged/{case}.safetensors");
    merge_case(
        "llama/base",
        &[(&format!("llama/adapters/{case}"), 1.0)],
        &reference,
    );
}

/// A copy of a fixture PEFT adapter whose adapter_config.json `edit` changes (a second call
/// with the same `from` rewrites the same copy from the fixture again).
fn adapter_with_config(
    dir: &Path,
    from: &str,
    edit: impl Fn(&mut serde_json::Value),
) -> std::path::PathBuf {
    folder_with_json(dir, from, "adapter_config.json", edit)
}

/// Merges `adapter` into the Llama fixture expecting a refusal: the one-line error, checked to
/// leave nothing at the output path.
fn refused_merge(dir: &Path, adapter: &Path) -> String {
    let out = dir.join("refused");
    let err = merge_refused(&fixture("llama/base"), adapter, &out, &[]);
    assert!(!out.exists(), "nothing written: {err}");
    err
}

/// A copy of the fixture folder `from` in `dir` whose JSON `file` `edit` changes.
fn folder_with_json(
    dir: &Path,
    from: &str,
    file: &str,
    edit: impl Fn(&mut serde_json::Value),
) -> std::path::PathBuf {
    let to = dir.join(from.replace('/', "_"));
    copy_dir(&fixture(from), &to);
    let p = to.join(file);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    to
}
