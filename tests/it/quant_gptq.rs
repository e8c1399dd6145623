//! Native GPTQ and AWQ bases (issue #18) against gptqmodel 7.7's and AutoAWQ 0.2.9's own code
//! (`fixtures/quant/{gptq4_v1,gptq3_act,gptq2_v1,gptq8_v2,awq4}`, made by
//! `fixtures/gen/gptq_awq_fixtures.py`): `dequantize` bit for bit, `merge --quant keep` as the
//! packer's round-to-nearest with the stored scales and zeros, `--quant dequantize` against an
//! f64 recomputation, `inspect`, and malformed files.

use super::common::*;
use super::quant::{assert_dequantized_as, cut_to, edited, prefixed, quant, with_zeros, without};
use super::quant_requant::{assert_merged_exactly, merge_keeping};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MODELS: [&str; 5] = ["gptq4_v1", "gptq3_act", "gptq2_v1", "gptq8_v2", "awq4"];

/// `<fixture>/<tensor>` entries of a reference file, for one fixture.
fn refs_of(file: &str, model: &str) -> BTreeMap<String, T> {
    prefixed(file, &format!("{model}/"))
}

#[test]
fn dequantize_gptq_awq_equals_gptqmodel_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let base = read_checkpoint(&fixture("llama/base"));
    for model in MODELS {
        // float16 as gptqmodel's dequantize_weight returns it, byte for byte.
        let (got, want) = assert_dequantized_as(
            model,
            &dir.path().join(model),
            "ref/gptq_awq.safetensors",
            &format!("{model}/"),
        );
        for (name, t) in &got {
            if !want.contains_key(name) {
                assert_eq!(t, &base[name], "{model} {name}");
            }
        }
    }
}

/// `merge --quant keep` (the default) into GPTQ/AWQ: each merged weight is rounded to nearest
/// with the checkpoint's own scales, zeros and g_idx; the reference is gptqmodel's packer run on
/// dequant(W) + PEFT's delta with those scales. Everything else, qzeros/scales/g_idx included,
/// and config.json are copied byte for byte.
#[test]
fn merge_keep_into_gptq_awq_is_the_packers_round_to_nearest() {
    for model in MODELS {
        let (got, input) = merge_keeping(model, "qv_r8", 4);
        let want = refs_of("qlora/gptq_awq_keep.safetensors", model);
        assert_eq!(want.len(), 4);
        assert_merged_exactly(&got, &input, &want, model);
    }
}

/// `--quant dequantize`: the merged weights are the producer's dequantization plus s·B·A,
/// recomputed here in f64 from the reference and the adapter file.
#[test]
fn merge_dequantize_gptq_awq_against_f64() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["gptq3_act", "awq4"] {
        let out = dir.path().join(model);
        merge_qv_r8_into(
            &quant(model),
            &out,
            &["--quant", "dequantize", "--dtype", "f32"],
        );
        let got = read_checkpoint(&out);
        let deq = refs_of("ref/gptq_awq.safetensors", model);
        let merged = assert_qv_r8_merged_against_f64(&got, &deq, model);
        assert_eq!(merged, 4);
        assert!(!got
            .keys()
            .any(|k| k.ends_with("qweight") || k.ends_with("scales")));
        let cfg: serde_json::Value = read_json(out.join("config.json"));
        assert!(cfg.get("quantization_config").is_none());
    }
}

/// `got` (a `--dtype f32` merge of `llama/adapters/qv_r8`) against `deq` (the producer's
/// dequantized weights) plus s·B·A recomputed in f64 from the adapter file, to 1e-6 relative;
/// weights the adapter does not touch equal their dequantization. Returns how many it merged.
pub(super) fn assert_qv_r8_merged_against_f64(
    got: &BTreeMap<String, T>,
    deq: &BTreeMap<String, T>,
    model: &str,
) -> usize {
    let adapter = read(&fixture("llama/adapters/qv_r8/adapter_model.safetensors"));
    let scaling = 16.0 / 8.0;
    let mut merged = 0;
    for (name, w) in deq {
        let g = got[name].f32();
        let w0 = w.f32();
        let m = name.strip_suffix(".weight").unwrap();
        let (Some(a), Some(b)) = (
            adapter.get(&format!("base_model.model.{m}.lora_A.weight")),
            adapter.get(&format!("base_model.model.{m}.lora_B.weight")),
        ) else {
            assert_eq!(g, w0, "{model} {name}: untouched = its dequantization");
            continue;
        };
        merged += 1;
        let (a, b) = (a.f32(), b.f32());
        let (rows, cols, r) = (w.shape[0], w.shape[1], 8);
        let (mut num, mut den) = (0f64, 0f64);
        for i in 0..rows {
            for j in 0..cols {
                let d: f64 = (0..r)
                    .map(|k| b[i * r + k] as f64 * a[k * cols + j] as f64)
                    .sum();
                let want = w0[i * cols + j] as f64 + scaling * d;
                num += (g[i * cols + j] as f64 - want).powi(2);
                den += want * want;
            }
        }
        let rel = (num / den).sqrt();
        assert!(rel < 1e-6, "{model} {name}: {rel:e}");
    }
    merged
}

#[test]
fn inspect_reports_gptq_and_awq() {
    for (model, method, bits, blocks) in [
        ("gptq3_act", "gptq-v2", 3, "group 32, act-order, asymmetric"),
        ("gptq4_v1", "gptq", 4, "group 32, symmetric"),
        ("gptq8_v2", "gptq-v2", 8, "per channel, symmetric"),
        ("awq4", "awq", 4, "group 32, asymmetric"),
    ] {
        let v: serde_json::Value = inspect_json(&quant(model), &[]);
        let q = &v["quantization"];
        let t = entry(
            &q["tensors"],
            "name",
            "model.layers.0.self_attn.v_proj.weight",
        );
        assert_eq!(
            (t["method"].as_str().unwrap(), t["bits"].as_u64().unwrap()),
            (method, bits),
            "{model}"
        );
        assert_eq!(t["blocks"], blocks, "{model}");
        assert_eq!(t["shape"], serde_json::json!([32, 64]), "{model}");
        assert_eq!(q["tensors"].as_array().unwrap().len(), 14);
        assert!(q["unreadable"].as_array().is_none_or(|u| u.is_empty()));
    }
}

/// A copy of a fixture with its quantization_config edited.
fn config_edited(
    dir: &Path,
    model: &str,
    cfg_edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let d = edited(dir, model, |_| {});
    edit_json(d.join("config.json"), |cfg| {
        cfg_edit(&mut cfg["quantization_config"])
    });
    d
}

#[test]
fn malformed_gptq_awq_checkpoints_are_one_line_errors_and_write_nothing() {
    use safetensors::Dtype::I32;
    let dir = tempfile::tempdir().unwrap();
    let p = "model.layers.0.self_attn.q_proj";
    let i32s = |v: &[i32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let cases: Vec<(&str, PathBuf, String)> = vec![
        (
            "missing qzeros",
            without(dir.path(), "gptq4_v1", &format!("{p}.qzeros")),
            format!("GPTQ qweight without `{p}.qzeros`"),
        ),
        (
            "missing scales",
            without(dir.path(), "awq4", &format!("{p}.scales")),
            format!("AWQ qweight without `{p}.scales`"),
        ),
        (
            "scales of the wrong group count",
            cut_to(dir.path(), "gptq3_act", &format!("{p}.scales"), &[1, 64]),
            "needs [2, 64]".into(),
        ),
        (
            "qweight rows that do not pack in_features",
            cut_to(dir.path(), "gptq4_v1", &format!("{p}.qweight"), &[7, 64]),
            "pack into 8".into(),
        ),
        (
            "g_idx pointing past the groups",
            edited(dir.path(), "gptq3_act", |t| {
                let g = t.get_mut(&format!("{p}.g_idx")).unwrap();
                g.data[4..8].copy_from_slice(&i32s(&[2]));
            }),
            "input channel 1 is in group 2".into(),
        ),
        (
            // rev16a F10: 63 channels left 8 rows of 4-bit codes holding 64; the last code was
            // dropped and a [64, 63] weight written.
            "g_idx one entry short",
            cut_to(dir.path(), "gptq4_v1", &format!("{p}.g_idx"), &[63]),
            "gives 63 input channels, but 8 rows of 32 bits hold 64 4-bit codes".into(),
        ),
        (
            "act-order without g_idx",
            without(dir.path(), "gptq3_act", &format!("{p}.g_idx")),
            "without `model.layers.0.self_attn.q_proj.g_idx`".into(),
        ),
        (
            "qzeros of the wrong width",
            cut_to(dir.path(), "awq4", &format!("{p}.qzeros"), &[2, 4]),
            "pack into [2, 8]".into(),
        ),
        (
            "qzeros without its qweight",
            with_zeros(
                dir.path(),
                "gptq8_v2",
                "model.layers.0.mlp.extra.qzeros",
                I32,
                &[1, 1],
            ),
            "its `qweight` is missing".into(),
        ),
        (
            "unknown GPTQ checkpoint format",
            config_edited(dir.path(), "gptq4_v1", |c| {
                c["format"] = "marlin".into();
                c["checkpoint_format"] = "marlin".into();
            }),
            "checkpoint format `marlin`".into(),
        ),
        (
            "AWQ GEMV",
            config_edited(dir.path(), "awq4", |c| c["version"] = "gemv".into()),
            "AWQ version `gemv`".into(),
        ),
        (
            "GPTQ 5 bits",
            config_edited(dir.path(), "gptq4_v1", |c| c["bits"] = 5.into()),
            "GPTQ bits 5".into(),
        ),
    ];
    for (what, input, want) in cases {
        super::quant::dequantize_refuses(dir.path(), what, &input, &want);
        let out = dir.path().join("out");
        // The same from a merge that writes float.
        let e = merge_qv_r8_refused(&input, &out, &["--quant", "dequantize"]);
        assert!(e.contains(&want), "{what}: {e}");
        assert!(!out.exists(), "{what}: wrote output");
    }
}
