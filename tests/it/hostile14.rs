//! The fourteenth hostile round (`fuzz/hostile_round.py`, `fuzz/hostile_cases_round14.py`): the
//! violations its cases found, each test failing before its fix.

use super::common::*;
use super::hostile11::each_config_edit_is_refused;
use super::quant::{dequantize_refuses, edited, quant};
use std::path::{Path, PathBuf};

const Q: &str = "model.layers.0.self_attn.q_proj";

/// An NVFP4 global scale of ±inf made every group's scale `e4m3 / inf = 0`, finite: the weight
/// dequantized to zeros and merged, exit 0. Refused like 0 and NaN, naming the global scale.
#[test]
fn an_infinite_nvfp4_global_scale_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for g in [f32::INFINITY, f32::NEG_INFINITY] {
        let base = edited(dir.path(), "ct_nvfp4", |t| {
            t.get_mut(&format!("{Q}.weight_global_scale")).unwrap().data = g.to_le_bytes().to_vec();
        });
        dequantize_refuses(
            dir.path(),
            &format!("global scale {g}"),
            &base,
            "a global scale must be finite and non-zero",
        );
        let line = merge_refused(
            &base,
            &fixture("llama/adapters/rslora_all"),
            &dir.path().join("o"),
            &[],
        );
        assert_mentions(&line, &[&format!("{Q}.weight_global_scale"), "finite"]);
    }
}

/// The copy of `fixtures/quant/<model>` in `dir/name` whose config group's `weights` are
/// edited by `edit`.
fn config_edited(
    dir: &Path,
    model: &str,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let d = dir.join(name);
    copy_dir(&quant(model), &d);
    let p = d.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut c["quantization_config"]["config_groups"]["group_0"]["weights"]);
    std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
    d
}

/// A config group whose weights are `type: int` (compressed-tensors then reads the module as
/// integer pack-quantized), of a `type` its validator refuses, or asymmetric (a zero point FP4
/// never stores) was not compared with the FP4 tensors: merged and dequantized, exit 0. Now
/// refused naming config.json, the group and the module; `type: float` and `symmetric: true`
/// (what llm-compressor writes) still load.
#[test]
fn fp4_config_type_and_symmetry_are_compared_with_the_tensors() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["ct_nvfp4", "ct_mxfp4"] {
        for (name, key, value, want) in [
            ("int", "type", serde_json::json!("int"), "integer weights"),
            ("nope", "type", serde_json::json!("nope"), "weights.type"),
            ("num", "type", serde_json::json!(4), "weights.type"),
            ("asym", "symmetric", serde_json::json!(false), "asymmetric"),
        ] {
            let base = config_edited(dir.path(), model, &format!("{model}-{name}"), |w| {
                w[key] = value
            });
            let out = dir.path().join("dq");
            let line = refused(dequantize_args(&base, &out, &[]), &out);
            assert_mentions(&line, &["config.json", "group_0", want]);
        }
        let base = config_edited(dir.path(), model, &format!("{model}-ok"), |w| {
            w["type"] = "float".into();
            w["symmetric"] = true.into();
        });
        run_ok(dequantize_args(
            &base,
            &dir.path().join(format!("dq-{model}")),
            &["--quiet"],
        ));
    }
}

/// A GLoRA lora path stored with `.Xu` alone (its `.Xd` missing): the reader indexed the
/// `.zeros` leaf it did not have, a panic (exit 101) in merge, inspect and check.
#[test]
fn a_glora_path_missing_half_of_its_factors_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let ad = dir.path().join("ad");
    copy_dir(&fixture("gaps13a/glora/adapter"), &ad);
    let file = ad.join("adapter_model.safetensors");
    let mut t = read(&file);
    t.remove("base_model.model.model.layers.0.mlp.down_proj.glora_A.Xd")
        .unwrap();
    write_tensors(&file, &t);
    let line = merge_refused(&fixture("llama/base"), &ad, &dir.path().join("o"), &[]);
    assert_mentions(
        &line,
        &["adapter_model.safetensors", "down_proj", "glora_A"],
    );
}

/// adapter_config.json values that make PEFT build tensors of other shapes than the stored
/// ones, so that `PeftModel.from_pretrained` refuses the folder (checked with PEFT 0.21.2 by
/// `fixtures/gen/hostile14_peft_check.py`), were ignored and the stored tensors merged, exit 0:
/// HiRA `r`, TinyLoRA `u` and `r`, UniLoRA `theta_d_length` and `r`, FRoD `sparse_rate` (the
/// positions PEFT draws), GLoRA `config_A_B` and `r`. A GLoRA `config_C` of another kind still
/// merges: PEFT builds C only where the base has a bias.
#[test]
fn tuner_configs_contradicting_the_stored_shapes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    let cases: [(&str, &str, serde_json::Value, &str); 9] = [
        ("gaps13a/hira/adapter", "r", 8.into(), "rank 4"),
        ("gaps13a/tinylora/adapter", "u", 4.into(), "u = 8"),
        ("gaps13a/tinylora/adapter", "r", 4.into(), "rank 2"),
        (
            "gaps13a/unilora/adapter",
            "theta_d_length",
            32.into(),
            "theta_d_length",
        ),
        ("gaps13a/unilora/adapter", "r", 8.into(), "rank 4"),
        ("gaps13a/frod/adapter", "sparse_rate", 0.5.into(), "2048"),
        (
            "gaps13a/frod/adapter",
            "sparse_rate",
            2.0.into(),
            "sparse_rate",
        ),
        (
            "gaps13a/glora/adapter",
            "config_A_B",
            "vector".into(),
            "config_A_B",
        ),
        ("gaps13a/glora/adapter", "r", 8.into(), "rank 4"),
    ];
    each_config_edit_is_refused(dir.path(), &cases, &["adapter_config.json"]);
    let ad = edited_copy(dir.path(), "gaps13a/glora/adapter", "c_vector", |c| {
        c["config_C"] = "vector".into()
    });
    run_ok(merge_args(
        &base,
        &ad,
        &dir.path().join("o_c"),
        &["--quiet"],
    ));
}
