//! The output contract under hostile use (issue #13): no command writes onto one of its inputs,
//! part manifests are untrusted, multi-file outputs commit all or nothing, signals and a second
//! writer leave nothing half-done, results are checked in their stored dtype, hostile configs
//! and special files are refused at once, and every message stays one printable line.

/// 3. All or nothing, nothing leaks: failed runs, older layouts, signals, a second writer,
/// unwritable destinations.
mod all_or_nothing;
/// 5. Hostile configs and special files.
mod hostile;
/// 2. Part manifests and part files are untrusted.
mod manifests;
/// 6. Messages stay one line and safe; hub-cache symlinks are followed, never written through.
mod messages;
/// 1. No command writes onto one of its inputs.
mod onto_inputs;
/// 7. The independent hostile round's findings (`fuzz/hostile_round.py`).
mod round2;
/// 8. The third hostile round's findings (direct-I/O outputs, recipe records, FP8 block scales).
mod round3;
/// 4. Results checked in their stored dtype; one definition per tensor.
mod stored_dtype;

use super::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Copies of the llama fixture (as the folder `model`) and of `qv_r8` (as `adapter`) in a fresh
/// folder, for tests that write beside or onto them: the folder and the two copies.
fn llama_and_qv_r8_copies(model: &str, adapter: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (dir, model) = scratch(model);
    copy_dir(&fixture("llama/base"), &model);
    let adapter = dir.path().join(adapter);
    copy_dir(&fixture("llama/adapters/qv_r8"), &adapter);
    (dir, model, adapter)
}

/// Asserts the run was refused as an output onto an input (exit 2, one line).
fn refused_as_input(out: &std::process::Output) {
    let line = one_line_error(out);
    assert!(line.contains("output is also an input"), "{line}");
}

fn write_adapter(dir: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)], cfg: serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, sh, _), b)| {
            (
                *n,
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, sh.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
}
