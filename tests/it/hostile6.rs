//! The sixth hostile round (`fuzz/hostile_round.py`, `fuzz/hostile_cases_round6.py`: LyCORIS
//! factors per algorithm, `.alpha` tensors, PEFT config types, DoRA magnitudes, safetensors
//! headers, sharded indexes, outputs onto inputs, NaN/inf per dtype): each test is one violation
//! that round found, failing before its fix. Inputs are committed fixtures with one lie written
//! into a copy (tensors rewritten with the independent `safetensors` crate, JSON edited).

use super::common::*;
use std::path::{Path, PathBuf};

/// Every file under `dir` with its bytes, to show that nothing was written or removed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let b = std::fs::read(&p).unwrap();
                v.push((p, b));
            }
        }
    }
    v.sort();
    v
}

/// Runs `argv` in `dir`, expecting a one-line refusal (exit 2) that mentions `parts`, and
/// nothing changed in `dir`.
fn refused_in(dir: &Path, argv: Vec<String>, parts: &[&str]) {
    let before = snapshot(dir);
    let line = one_line_error(&run_exit(&argv, 2));
    assert_mentions(&line, parts);
    assert_eq!(snapshot(dir), before, "something was written: {line}");
}

/// A copy of the LyCORIS fixture `rel` (with its `__metadata__`) as `dir/ad.safetensors`, the
/// tensor `name` replaced by `(shape, f32 values)`.
fn lycoris_with(dir: &Path, rel: &str, name: &str, shape: &[usize], vals: &[f32]) -> PathBuf {
    let bytes = std::fs::read(fixture(rel)).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut t = read(&fixture(rel));
    let e = t
        .get_mut(name)
        .unwrap_or_else(|| panic!("{rel}: no {name}"));
    e.dtype = safetensors::Dtype::F32;
    e.shape = shape.to_vec();
    e.data = f32_bytes(vals);
    let p = dir.join("ad.safetensors");
    let views = t.iter().map(|(n, t)| {
        let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data);
        (n.clone(), view.unwrap())
    });
    safetensors::tensor::serialize_to_file(views, meta.metadata().clone(), &p).unwrap();
    p
}

/// The f32 values of tensor `name` of fixture `rel`.
fn values(rel: &str, name: &str) -> Vec<f32> {
    read(&fixture(rel))[name].f32()
}

/// A copy of the `qv_r8` adapter folder as `dir/qv`, its config edited by `edit`.
fn qv_with_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let qv = dir.join("qv");
    copy_dir(&fixture("llama/adapters/qv_r8"), &qv);
    let cfg = qv.join("adapter_config.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    edit(&mut j);
    std::fs::write(&cfg, serde_json::to_vec(&j).unwrap()).unwrap();
    qv
}

/// A sharded index whose `weight_map` is `{}`: the merge panicked ("index out of bounds: the len
/// is 0" in `Checkpoint::metadata`, the first shard of none); inspect and diff too.
#[test]
fn an_index_naming_no_tensor_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    copy_dir(&fixture("llama/base_sharded"), &base);
    let idx = base.join("model.safetensors.index.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&idx).unwrap()).unwrap();
    j["weight_map"] = serde_json::json!({});
    std::fs::write(&idx, serde_json::to_vec(&j).unwrap()).unwrap();
    let parts = ["model.safetensors.index.json", "weight_map", "no tensor"];
    let qv = fixture("llama/adapters/qv_r8");
    refused_in(
        dir.path(),
        merge_args(&base, &qv, &dir.path().join("o"), &[]),
        &parts,
    );
    refused_in(dir.path(), inspect_args(&base, &[]), &parts);
}

/// `lora_alpha` (or an `alpha_pattern` value) of 1e300, a finite JSON number whose scale
/// overflows every f32 ΔW: merge blamed the *base* tensor ("merged value … is not finite"),
/// convert blamed its *output* ("o.safetensors: … alpha … is inf"), resize wrote an adapter.
#[test]
fn an_alpha_beyond_the_f32_range_is_refused_naming_the_config() {
    for (key, edit) in [
        (
            "lora_alpha",
            Box::new(|j: &mut serde_json::Value| j["lora_alpha"] = serde_json::json!(1e300))
                as Box<dyn Fn(&mut serde_json::Value)>,
        ),
        (
            "alpha_pattern",
            Box::new(|j: &mut serde_json::Value| {
                j["alpha_pattern"] = serde_json::json!({"q_proj": 1e300})
            }),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let qv = qv_with_config(dir.path(), edit);
        let parts = ["adapter_config.json", key, "f32 range"];
        let out = dir.path().join("o");
        refused_in(
            dir.path(),
            merge_args(&fixture("llama/base"), &qv, &out, &[]),
            &parts,
        );
        refused_in(dir.path(), resize_args(&qv, &out, &["--rank", "2"]), &parts);
        refused_in(
            dir.path(),
            convert_args(&qv, "kohya", &dir.path().join("o.safetensors"), &[]),
            &parts,
        );
    }
}

/// `"peft_type": 7` was read as LORA (only strings were compared): PEFT looks the type up by
/// name and fails (`PEFT_TYPE_TO_CONFIG_MAPPING[7]`).
#[test]
fn a_peft_type_that_is_no_string_is_refused() {
    for v in [serde_json::json!(7), serde_json::json!(null)] {
        let dir = tempfile::tempdir().unwrap();
        let qv = qv_with_config(dir.path(), |j| j["peft_type"] = v.clone());
        refused_in(
            dir.path(),
            resize_args(&qv, &dir.path().join("o"), &["--rank", "2"]),
            &["adapter_config.json", "peft_type", "must be a string"],
        );
    }
}

/// A LyCORIS `dora_scale` or `rescale` stored flat (`[32]`) instead of `[32, 1]` on the square
/// `to_q` was merged as per-output; LyCORIS refuses the shape (its parameter is `[out, 1]`) and
/// ComfyUI would broadcast `[32]` along the input side (`weight_decompose`: `dora_scale /
/// weight_norm` of shape `[32, 1]` makes a 32×32 matrix).
#[test]
fn a_flat_dora_scale_or_rescale_is_refused() {
    for (rel, name) in [
        (
            "lycoris/dora_out.safetensors",
            "lycoris_down_blocks_0_to_q.dora_scale",
        ),
        (
            "lycoris_w0/oft_rescale.safetensors",
            "lycoris_down_blocks_0_to_q.rescale",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let v = values(rel, name);
        assert_eq!(v.len(), 32);
        let ad = lycoris_with(dir.path(), rel, name, &[32], &v);
        let base = dir.path().join("base.safetensors");
        let base_rel = format!("{}/base.safetensors", rel.split('/').next().unwrap());
        std::fs::copy(fixture(&base_rel), &base).unwrap();
        let role = name.rsplit('.').next().unwrap();
        refused_in(
            dir.path(),
            merge_args(&base, &ad, &dir.path().join("o.safetensors"), &[]),
            &["ad.safetensors", "to_q", role, "[32]"],
        );
    }
}

/// A per-input `dora_scale` of a LoHa conv (`hada_w1_b` flattened `[r, in·kh·kw]` = `[3, 72]`)
/// with 9 channels instead of the base's 8: 9 divides 72, so the file alone allows it, and the
/// merge normed groups of 8 columns against 9 magnitudes. The base's `[12, 8, 3, 3]` says 8.
#[test]
fn a_per_input_dora_scale_must_match_the_base_input_channels() {
    let dir = tempfile::tempdir().unwrap();
    let rel = "lycoris/loha_dora_in.safetensors";
    let name = "lycoris_down_blocks_0_conv_in.dora_scale";
    let mut v = values(rel, name);
    assert_eq!(v.len(), 8);
    v.push(v[7]);
    let ad = lycoris_with(dir.path(), rel, name, &[1, 9, 1, 1], &v);
    let base = dir.path().join("base.safetensors");
    std::fs::copy(fixture("lycoris/base.safetensors"), &base).unwrap();
    refused_in(
        dir.path(),
        merge_args(&base, &ad, &dir.path().join("o.safetensors"), &[]),
        &[
            "ad.safetensors",
            "conv_in",
            "dora_scale",
            "9 input channels",
        ],
    );
}
