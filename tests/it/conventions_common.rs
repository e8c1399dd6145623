//! What the tests of LoRAs merged across layouts share (`conventions_formats`,
//! `conventions_layouts`): a fixture folder's MANIFEST.json and the merge of one of its adapters
//! compared with the reference its generator wrote (diffusers' own fuse, or a converter's
//! arithmetic in f64: `fixtures/gen/layout_fixture_common.py` and the generators beside it).
//! It compares (and converts into a temporary folder); it never writes a fixture.

use super::common::*;
use std::path::Path;

/// `fixtures/{folder}/MANIFEST.json`.
pub fn manifest_of(folder: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture(&format!("{folder}/MANIFEST.json"))).unwrap())
        .unwrap()
}

/// Merges `{folder}/{adapter}` into `{folder}/{base_name}` and compares every tensor with
/// `{adapter}_reference`, whose tensors are the ones the reference changed (MANIFEST.json); the
/// output holds the base's tensors and every other one keeps its bytes. On a GPU the output must
/// be the CPU's, byte for byte (the bands of a split or sliced module are merged there from the
/// same rows of B).
pub fn merges_as_reference_in(folder: &str, base_name: &str, adapter: &str) {
    merges_as_reference_on(folder, base_name, adapter, true)
}

/// [`merges_as_reference_in`], the GPU byte-for-byte comparison only where `gpu` (a folder of
/// many cases of one family compares one on lavapipe: its shader builds cost a second a case).
pub fn merges_as_reference_on(folder: &str, base_name: &str, adapter: &str, gpu: bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged.safetensors");
    let args = (
        format!("{folder}/{base_name}"),
        format!("{folder}/{adapter}.safetensors"),
    );
    merge_fixtures(&args.0, &args.1, &out, &["--quiet"]);
    let got = read(&out);
    let want = read(&fixture(&format!(
        "{folder}/{adapter}_reference.safetensors"
    )));
    let base = read(&fixture(&args.0));
    let changed: Vec<String> = manifest_of(folder)[adapter]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    let mut names: Vec<&String> = want.keys().collect();
    names.sort();
    assert_eq!(names, changed.iter().collect::<Vec<_>>());
    let mut got_names: Vec<&String> = got.keys().collect();
    got_names.sort();
    let mut base_names: Vec<&String> = base.keys().collect();
    base_names.sort();
    assert_eq!(
        got_names, base_names,
        "{adapter}: the output has the base's tensors"
    );
    for (name, b) in &base {
        match want.get(name) {
            Some(w) => assert_f32_close(name, &got[name].f32(), &w.f32(), &b.f32()),
            None => assert_eq!(got[name].data, b.data, "{name}: not adapted, same bytes"),
        }
    }
    if gpu && gpu_available() {
        let gpu = dir.path().join("gpu.safetensors");
        merge_fixtures(&args.0, &args.1, &gpu, &["--quiet", "--device", "gpu"]);
        assert!(
            std::fs::read(&gpu).unwrap() == std::fs::read(&out).unwrap(),
            "{adapter}: gpu output differs"
        );
    }
}

/// `convert --to peft --base` of `adapter` onto `base` succeeds, and the converted folder merges
/// into `base` bit for bit as `adapter` does; returns the converted adapter's tensors and the
/// merged checkpoint's.
pub fn converted_merges_as_original(base: &Path, adapter: &Path) -> (TensorMap, TensorMap) {
    let dir = tempfile::tempdir().unwrap();
    let conv = dir.path().join("converted");
    run_ok(convert_args(
        adapter,
        "peft",
        &conv,
        &["--base", s(base), "--quiet"],
    ));
    let merged = merge_alike(base, adapter, &conv);
    (read(&conv.join("adapter_model.safetensors")), merged)
}

/// Merges `adapter` and `converted` (its conversion) into `base` and asserts the two outputs
/// hold the same tensors, byte for byte; returns the merge of `adapter`.
pub fn merge_alike(base: &Path, adapter: &Path, converted: &Path) -> TensorMap {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    merge_ok(base, adapter, &a, &["--quiet"]);
    merge_ok(base, converted, &b, &["--quiet"]);
    let (a, b) = (read(&a), read(&b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &a {
        assert!(
            t.data == b[k].data,
            "{k}: the converted adapter merges otherwise"
        );
    }
    a
}
