//! NVIDIA ModelOpt NVFP4 and FP8 bases (`hf_quant_config.json`, `quant_method: "modelopt"`),
//! against nvidia-modelopt 0.47.0's own export and dequantization
//! (`fixtures/gen/modelopt_fixtures.py`).

use super::common::*;
use super::quant::{assert_dequantized_as, dequantize_refuses, edited, prefixed, quant, without};
use super::quant_requant::{assert_merged_exactly, merge_keeping};
use std::path::Path;

const MODELS: [(&str, &str); 2] = [("modelopt_nvfp4", "nv."), ("modelopt_fp8", "fp8.")];

/// `dequantize` equals ModelOpt's `NVFP4QTensor.dequantize` (bf16) and `FP8QTensor.dequantize`
/// (f32) bit for bit on all 14 weights; scales and input scales are dropped, and so are
/// `quantization_config` and hf_quant_config.json (TensorRT-LLM and vLLM would read the float
/// model as quantized again).
#[test]
fn dequantize_equals_modelopt_dequantize() {
    let dir = tempfile::tempdir().unwrap();
    for (model, prefix) in MODELS {
        let out = dir.path().join(model);
        assert_dequantized_as(model, &out, "ref/modelopt.safetensors", prefix);
        assert!(!out.join("hf_quant_config.json").exists(), "{model}");
    }
}

/// `merge --quant keep` packs each merged weight again with the stored scales, equal to
/// ModelOpt's `to_quantized_weight` of the dequantized weight plus PEFT's ΔW (rounded to bf16);
/// scales, global scales, input scales, every other tensor, config.json and hf_quant_config.json
/// are copied byte for byte.
#[test]
fn merge_keep_into_modelopt_is_its_quantizer() {
    for (model, prefix) in MODELS {
        let (got, input) = merge_keeping(model, "rslora_all", 14);
        let want = prefixed("qlora/modelopt_keep.safetensors", prefix);
        assert_eq!(want.len(), 14);
        assert_merged_exactly(&got, &input, &want, model);
    }
}

/// A dequantized merge is the merge into ModelOpt's dequantized weights (checked above), and it
/// leaves hf_quant_config.json out.
#[test]
fn merge_dequantized_is_the_merge_into_the_dequantized_model() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("llama/adapters/rslora_all");
    // NVFP4 only: a ModelOpt FP8 weight is dequantized by the FP8 code the other bases test.
    let model = "modelopt_nvfp4";
    let float = dir.path().join("float");
    run_ok(dequantize_args(&quant(model), &float, &[]));
    let want = dir.path().join("want");
    merge_ok(&float, &adapter, &want, &[]);
    let got = dir.path().join("got");
    merge_ok(&quant(model), &adapter, &got, &["--quant", "dequantize"]);
    assert_eq!(read_checkpoint(&got), read_checkpoint(&want));
    assert!(!got.join("hf_quant_config.json").exists());
}

/// `inspect` names the method per weight and `check --base` resolves the adapter against the
/// logical shapes (an NVFP4 weight is stored as `[rows, cols/2]` bytes).
#[test]
fn inspect_and_check_see_the_logical_weights() {
    let v = inspect_json(&quant("modelopt_nvfp4"), &[]);
    let q = &v["quantization"];
    assert_eq!(q["config"]["quant_method"], "modelopt");
    let t = q["tensors"].as_array().unwrap();
    assert_eq!(t.len(), 14);
    assert_eq!(t[0]["name"], "model.layers.0.mlp.down_proj.weight");
    assert_eq!(t[0]["method"], "modelopt-nvfp4");
    assert_eq!(t[0]["bits"], 4);
    assert_eq!(t[0]["shape"], serde_json::json!([64, 128]));
    let text = run_ok(inspect_args(&quant("modelopt_fp8"), &[]));
    assert_mentions(&text, &["fp8-e4m3", "modelopt"]);
    let adapter = fixture("llama/adapters/rslora_all");
    let check = |base: &Path| {
        let o = run_err(check_args(
            &adapter,
            &["--base", base.to_str().unwrap(), "--json"],
        ));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (o.status.code(), v["findings"].clone())
    };
    let float = check(&fixture("llama/base"));
    for (model, _) in MODELS {
        assert_eq!(check(&quant(model)), float, "{model}");
    }
}

/// Bad ModelOpt tensors are one-line errors naming the file and the tensor, nothing written.
#[test]
fn malformed_modelopt_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = "model.layers.0.self_attn.q_proj";
    let cases = [
        (
            "NVFP4 weight without weight_scale_2",
            without(dir.path(), "modelopt_nvfp4", &format!("{q}.weight_scale_2")),
            "without `model.layers.0.self_attn.q_proj.weight_scale_2`",
        ),
        (
            "NVFP4 scales of the wrong shape",
            edited(dir.path(), "modelopt_nvfp4", |t| {
                t.get_mut(&format!("{q}.weight_scale"))
                    .unwrap()
                    .cut_to(&[64, 2]);
            }),
            "[64, 64/16]",
        ),
        (
            "an E4M3 NaN block scale",
            edited(dir.path(), "modelopt_nvfp4", |t| {
                t.get_mut(&format!("{q}.weight_scale")).unwrap().data[5] = 0x7F;
            }),
            "block 5 (byte 0x7f)",
        ),
        (
            "a NaN weight_scale_2",
            edited(dir.path(), "modelopt_nvfp4", |t| {
                t.get_mut(&format!("{q}.weight_scale_2")).unwrap().data =
                    f32::NAN.to_le_bytes().to_vec();
            }),
            "a global scale must be finite and positive",
        ),
        (
            "a weight_scale_2 of two values",
            edited(dir.path(), "modelopt_nvfp4", |t| {
                let g = t.get_mut(&format!("{q}.weight_scale_2")).unwrap();
                g.shape = vec![2];
                g.data = [1f32, 1.0].iter().flat_map(|x| x.to_le_bytes()).collect();
            }),
            "F32 []",
        ),
        (
            "a weight_scale_2 without its NVFP4 weight",
            edited(dir.path(), "modelopt_nvfp4", |t| {
                let g = t[&format!("{q}.weight_scale_2")].clone();
                t.insert("model.layers.0.self_attn.x_proj.weight_scale_2".into(), g);
            }),
            "is a ModelOpt NVFP4 global scale",
        ),
    ];
    for (what, input, want) in cases {
        dequantize_refuses(dir.path(), what, &input, want);
    }
}

/// An algorithm lorakit does not read (W4A8_AWQ, or one layer of a MIXED_PRECISION export) is
/// refused by name by `dequantize` and by a merge that must read it; `inspect` lists it.
#[test]
fn unread_modelopt_algorithms_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let in_config = edited(dir.path(), "modelopt_nvfp4", |_| {});
    let cfg = in_config.join("config.json");
    let mut v: serde_json::Value = read_json(&cfg);
    v["quantization_config"]["quant_algo"] = "W4A8_AWQ".into();
    std::fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let mixed = edited(dir.path(), "modelopt_nvfp4", |_| {});
    let hf = serde_json::json!({
        "producer": {"name": "modelopt", "version": "0.47.0"},
        "quantization": {"quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": null,
            "quantized_layers": {
                "model.layers.0.self_attn.q_proj": {"quant_algo": "NVFP4", "group_size": 16},
                "model.layers.0.mlp.up_proj": {"quant_algo": "W4A16_AWQ", "group_size": 128}}}
    });
    std::fs::write(
        mixed.join("hf_quant_config.json"),
        serde_json::to_vec(&hf).unwrap(),
    )
    .unwrap();
    for (input, file, algo) in [
        (&in_config, "config.json", "`W4A8_AWQ`"),
        (&mixed, "hf_quant_config.json", "`W4A16_AWQ`"),
    ] {
        let out = dir.path().join("out");
        let e = refused(dequantize_args(input, &out, &[]), &out);
        assert_mentions(&e, &[file, algo, "not one lorakit reads"]);
    }
    let out = dir.path().join("out");
    let adapter = fixture("llama/adapters/rslora_all");
    let e = refused(merge_args(&in_config, &adapter, &out, &[]), &out);
    assert_mentions(&e, &["`W4A8_AWQ`"]);
    assert_mentions(&run_ok(inspect_args(&mixed, &[])), &["`W4A16_AWQ`"]);
}

/// ModelOpt's weight-only `W4A16_NVFP4` and `W4A8_NVFP4_FP8` store NVFP4 weights exactly as
/// `NVFP4` does (one branch for the three in `unified_export_hf.py` and `quant_utils.py`), the
/// former without `input_scale`: relabelled copies of the NVFP4 fixture dequantize to ModelOpt's
/// NVFP4 dequantization bit for bit, and keep-merge with its quantizer.
#[test]
fn nvfp4_weight_only_and_fp8_activation_exports_read_as_nvfp4() {
    let dir = tempfile::tempdir().unwrap();
    let want = prefixed("ref/modelopt.safetensors", "nv.");
    let keep = prefixed("qlora/modelopt_keep.safetensors", "nv.");
    for algo in ["W4A16_NVFP4", "W4A8_NVFP4_FP8"] {
        let input = edited(dir.path(), "modelopt_nvfp4", |t| {
            if algo == "W4A16_NVFP4" {
                t.retain(|n, _| !n.ends_with(".input_scale"));
            }
        });
        let cfg = input.join("config.json");
        let mut v: serde_json::Value = read_json(&cfg);
        v["quantization_config"]["quant_algo"] = algo.into();
        std::fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        let mut hf: serde_json::Value = read_json(quant("modelopt_nvfp4/hf_quant_config.json"));
        hf["quantization"]["quant_algo"] = algo.into();
        std::fs::write(
            input.join("hf_quant_config.json"),
            serde_json::to_vec_pretty(&hf).unwrap(),
        )
        .unwrap();
        let out = dir.path().join(format!("{algo}-float"));
        let text = run_ok(dequantize_args(&input, &out, &[]));
        assert!(text.contains("dequantized 14 weights"), "{algo}: {text}");
        let got = read_checkpoint(&out);
        for (name, w) in &want {
            assert_eq!(&got[name], w, "{algo} {name}: not bit-exact");
        }
        let out = dir.path().join(format!("{algo}-keep"));
        let adapter = fixture("llama/adapters/rslora_all");
        merge_ok(&input, &adapter, &out, &["--quant", "keep"]);
        let got = read_checkpoint(&out);
        for (name, w) in &keep {
            assert_eq!(&got[name], w, "{algo} {name}: keep-merge differs");
        }
    }
}

/// A float output never carries a ModelOpt `hf_quant_config.json`: neither the base's (not
/// copied, not reported) nor one an earlier `--quant keep` run left in the output folder
/// (removed on commit, as a stale shard is), since TensorRT-LLM and vLLM would load the float
/// weights as NVFP4 again.
#[test]
fn float_outputs_carry_no_modelopt_quant_config() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("llama/adapters/rslora_all");
    let out = dir.path().join("out");
    merge_ok(
        &quant("modelopt_nvfp4"),
        &adapter,
        &out,
        &["--quant", "keep"],
    );
    assert!(out.join("hf_quant_config.json").exists());
    let text = run_ok(merge_args(
        &quant("modelopt_nvfp4"),
        &adapter,
        &out,
        &["--quant", "dequantize", "--json"],
    ));
    assert!(!out.join("hf_quant_config.json").exists());
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files = report["files"].as_array().expect("files");
    assert!(!files.is_empty(), "{report}");
    for f in files {
        let f = f.as_str().unwrap();
        assert!(!f.ends_with("hf_quant_config.json"), "{report}");
        assert!(Path::new(f).exists(), "{f} reported but not written");
    }
    let out = dir.path().join("float");
    let text = run_ok(dequantize_args(&quant("modelopt_nvfp4"), &out, &["--json"]));
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    for f in report["files"].as_array().expect("files") {
        assert!(Path::new(f.as_str().unwrap()).exists(), "{report}");
    }
}
