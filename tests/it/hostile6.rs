//! The sixth hostile round (`fuzz/hostile_round.py`, `fuzz/hostile_cases_round6.py`: LyCORIS
//! factors per algorithm, `.alpha` tensors, PEFT config types, DoRA magnitudes, safetensors
//! headers, sharded indexes, outputs onto inputs, NaN/inf per dtype): each test is one violation
//! that round found, failing before its fix. Inputs are committed fixtures with one lie written
//! into a copy (tensors rewritten with the independent `safetensors` crate, JSON edited).

use super::common::*;
use std::path::{Path, PathBuf};

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

/// `fan_in_fan_out: true` in a LoRA config for a llama base (no `Conv1D` layer): PEFT resets it
/// to false on every `nn.Linear` target ("fan_in_fan_out is set to True but the target module is
/// `torch.nn.Linear`. Setting fan_in_fan_out to False.", `tuners/lora/layer.py`
/// `dispatch_default`) and merges `W + (α/r)·B·A`. lorakit merged `(B·A)ᵀ`: the square q_proj
/// silently transposed (0.187 off PEFT's merge_and_unload, measured), v_proj [32, 64] refused.
/// The reference is computed here in f64 from the fixture's tensors.
#[test]
fn fan_in_fan_out_on_a_linear_model_merges_as_peft_does() {
    for q_only in [true, false] {
        fan_in_fan_out_merge_checked(q_only);
    }
}

/// [`fan_in_fan_out_on_a_linear_model_merges_as_peft_does`] with `qv_r8`, or with its q_proj
/// modules only (square: no shape check can tell the transpose).
fn fan_in_fan_out_merge_checked(q_only: bool) {
    fan_in_fan_out_merge_into(q_only, &fixture("llama/base"), false);
}

/// A composite model whose config.json names a `Conv1D` family below its top level (ViT-GPT2's
/// `vision-encoder-decoder` with a `gpt2` decoder): PEFT sets `fan_in_fan_out` per layer type,
/// so a module not named as a Conv1D layer (`q_proj` is an `nn.Linear` in every family) merges
/// untransposed, as on a plain Llama; the Conv1D layers of such a decoder stay transposed
/// (`gaps7::fan_in_fan_out_is_reset_on_a_linear_module_of_a_conv1d_family_base`, a real
/// bert2gpt2 merged by PEFT).
#[test]
fn fan_in_fan_out_is_reset_on_a_linear_name_where_a_nested_config_names_a_conv1d_model() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    for f in std::fs::read_dir(fixture("llama/base")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, base.join(f.file_name().unwrap())).unwrap();
    }
    let cfg = base.join("config.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    j["decoder"] = serde_json::json!({"model_type": "gpt2"});
    std::fs::write(&cfg, j.to_string()).unwrap();
    fan_in_fan_out_merge_into(true, &base, false);
}

/// Merges `qv_r8` with `fan_in_fan_out: true` (q_proj only, or q and v) into `base` and compares
/// with W0 + s·ΔW in f64, ΔW transposed where `transposed`.
fn fan_in_fan_out_merge_into(q_only: bool, base_dir: &Path, transposed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let qv = qv_with_config(dir.path(), |j| {
        j["fan_in_fan_out"] = true.into();
        if q_only {
            j["target_modules"] = serde_json::json!(["q_proj"]);
        }
    });
    if q_only {
        let file = qv.join("adapter_model.safetensors");
        let mut t = read(&file);
        t.retain(|k, _| k.contains("q_proj"));
        write_tensors(&file, &t);
    }
    let out = dir.path().join("o");
    merge_ok(base_dir, &qv, &out, &["--quiet"]);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(qv.join("adapter_config.json")).unwrap()).unwrap();
    let scale = cfg["lora_alpha"].as_f64().unwrap() / cfg["r"].as_f64().unwrap();
    let base = read(&fixture("llama/base/model.safetensors"));
    let got = read(&out.join("model.safetensors"));
    let ad = read(&qv.join("adapter_model.safetensors"));
    let modules = peft_lora_modules(&ad);
    assert_eq!(modules.len(), if q_only { 2 } else { 4 });
    for (m, a, b) in modules {
        let w = format!("{m}.weight");
        let (w0, av, bv) = (base[&w].f32(), a.f32(), b.f32());
        let (o, r, i) = (b.shape[0], a.shape[0], a.shape[1]);
        assert_eq!(base[&w].shape, [o, i]);
        let want: Vec<f32> = (0..o * i)
            .map(|x| {
                let (row, col) = match transposed {
                    // ΔWᵀ on the square weight: element (row, col) is ΔW's (col, row).
                    true => (x % i, x / i),
                    false => (x / i, x % i),
                };
                let d: f64 = (0..r)
                    .map(|k| bv[row * r + k] as f64 * av[k * i + col] as f64)
                    .sum();
                (w0[x] as f64 + scale * d) as f32
            })
            .collect();
        assert_f32_close(&w, &got[&w].f32(), &want, &w0);
    }
}

/// The same reset into a GGUF base (llama.cpp's `llama`, converted from Linear layers): a
/// `fan_in_fan_out: true` copy of `qv_r8` merges to the same tensors as `qv_r8` itself.
#[test]
fn fan_in_fan_out_on_a_gguf_llama_base_merges_as_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = qv_with_config(dir.path(), |j| j["fan_in_fan_out"] = true.into());
    let base = fixture("gguf/llama_f32.gguf");
    let (plain, with) = (dir.path().join("plain.gguf"), dir.path().join("fifo.gguf"));
    merge_ok(
        &base,
        &fixture("llama/adapters/qv_r8"),
        &plain,
        &["--quiet"],
    );
    merge_ok(&base, &fifo, &with, &["--quiet"]);
    // The provenance keys name the adapter's path; every tensor must be equal.
    diff_exit(&plain, &with, &["--tolerance", "0"], 0);
}
