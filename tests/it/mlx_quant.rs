//! MLX-quantized bases (`fixtures/mlx_quant/`, written by `mlx_lm.convert -q` and `mlx_lm.fuse`:
//! `fixtures/gen/mlx_quant_fixtures.py`): lorakit's merge into them, kept quantized and
//! dequantized, against mlx-lm's fuse byte for byte, `inspect`, and refusals. The quantizer and
//! dequantizer themselves are checked against `mx.quantize` / `mx.dequantize` in
//! `src/io/quant/mlx.rs`.

use super::common::*;
use std::path::PathBuf;

fn mq(name: &str) -> PathBuf {
    fixture(&format!("mlx_quant/{name}"))
}

/// The tensors of `got` and `want` whose bytes, dtype or shape differ, and the tensors that
/// `want` changed from `base`.
pub(super) fn differing(
    got: &TensorMap,
    want: &TensorMap,
    base: &TensorMap,
) -> (Vec<String>, usize) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "tensor names"
    );
    let differ = want
        .iter()
        .filter(|(k, t)| {
            let g = &got[k.as_str()];
            (g.dtype, &g.shape, &g.data) != (t.dtype, &t.shape, &t.data)
        })
        .map(|(k, _)| k.clone())
        .collect();
    let changed = want
        .iter()
        .filter(|(k, t)| base.get(k.as_str()).is_none_or(|b| b.data != t.data))
        .count();
    (differ, changed)
}

/// The factors of the fixture adapters lie on a grid that makes every ΔW exact in f32 and bf16
/// (see the script), so lorakit's and mlx-lm's merged weights are the same numbers and the
/// quantized bytes must be equal: packed codes, scales and biases of every merged weight (4-bit
/// f32; 2/3/4/5/6/8-bit bf16 at group sizes 32 and 64, with one module and `down_proj` left
/// float; 8-bit f16), the embedding's LoRA included.
#[test]
fn merge_into_mlx_quantized_base_equals_mlx_fuse_byte_for_byte() {
    for (case, quantized_changed) in [("q4", 41), ("qmix_bf16", 40), ("q8_f16", 21)] {
        let (_dir, out) = scratch("out");
        run_ok(merge_args(
            &mq(case),
            &mq(&format!("lora_{case}")),
            &out,
            &["--quiet"],
        ));
        let got = read_checkpoint(&out);
        let want = read(&mq(&format!("fused_{case}/model.safetensors")));
        let base = read_checkpoint(&mq(case));
        let (differ, changed) = differing(&got, &want, &base);
        assert!(
            differ.is_empty(),
            "{case}: differ from mlx_lm.fuse: {differ:?}"
        );
        assert_eq!(changed, quantized_changed, "{case}: tensors mlx-lm changed");
        // The quantization settings stay in config.json, as mlx-lm's fuse keeps them.
        let cfg = read_json(out.join("config.json"));
        assert_eq!(
            cfg["quantization"],
            read_json(mq(&format!("fused_{case}/config.json")))["quantization"]
        );
    }
}

/// `--quant dequantize`: every weight as `mx.dequantize` gives it, merged in the model's dtype:
/// equal to `mlx_lm.fuse --dequantize`, and config.json loses both `quantization` and
/// `quantization_config` (mlx-lm would otherwise quantize the float weights' modules again).
#[test]
fn dequantized_merge_equals_mlx_fuse_dequantize() {
    for case in ["q4", "qmix_bf16", "q8_f16"] {
        let (_dir, out) = scratch("out");
        run_ok(merge_args(
            &mq(case),
            &mq(&format!("lora_{case}")),
            &out,
            &["--quiet", "--quant", "dequantize"],
        ));
        let got = read_checkpoint(&out);
        let want = read(&mq(&format!("fused_{case}_deq.safetensors")));
        let (differ, _) = differing(&got, &want, &TensorMap::new());
        assert!(differ.is_empty(), "{case}: differ: {differ:?}");
        let cfg = read_json(out.join("config.json"));
        assert!(cfg.get("quantization").is_none(), "{case}: {cfg}");
        assert!(cfg.get("quantization_config").is_none(), "{case}: {cfg}");
        assert_eq!(cfg["hidden_size"], 64);
    }
}

#[test]
fn inspect_names_each_module_bits_and_group_from_the_config() {
    let v = inspect_json(&mq("qmix_bf16"), &[]);
    let find = |n: &str| quant_weight(&v, n);
    for (name, bits, group) in [
        ("model.layers.0.self_attn.q_proj.weight", 3, "group 32"),
        ("model.layers.0.self_attn.k_proj.weight", 5, "group 64"),
        ("model.layers.0.mlp.gate_proj.weight", 8, "group 32"),
        ("lm_head.weight", 4, "group 32"),
    ] {
        let w = find(name);
        assert_eq!(w["method"], "mlx-affine", "{name}");
        assert_eq!(w["bits"], bits, "{name}");
        assert_eq!(w["blocks"], group, "{name}");
        assert_eq!(w["dtype"], "BF16", "{name}");
    }
    // The module the config leaves float is not listed.
    assert!(v["quantization"]["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .all(|w| w["name"] != "model.layers.1.mlp.up_proj.weight"));
}

/// `inspect --json`'s entry for quantized weight `name`.
pub(super) fn quant_weight<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    let weights = v["quantization"]["tensors"].as_array().expect("tensors");
    weights
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {weights:?}"))
}

/// A copy of the q4 fixture whose config.json `quantization` is `edit`ed.
fn q4_with_config(edit: impl FnOnce(&mut serde_json::Value)) -> (tempfile::TempDir, PathBuf) {
    let (dir, base) = scratch("base");
    copy_dir(&mq("q4"), &base);
    let mut cfg = read_json(base.join("config.json"));
    edit(&mut cfg);
    std::fs::write(base.join("config.json"), cfg.to_string()).unwrap();
    (dir, base)
}

#[test]
fn lying_or_missing_quantization_settings_are_refused_naming_the_tensor() {
    // 2 bits would make 128 columns, two groups of 64 each, where the scales have one.
    let (_d, base) = q4_with_config(|c| {
        c["quantization"]["bits"] = 2.into();
        c["quantization_config"] = c["quantization"].clone();
    });
    let (_o, out) = scratch("out");
    let line = merge_refused(&base, &mq("lora_q4"), &out, &[]);
    assert_mentions(
        &line,
        &["model.safetensors", ".scales", "2 bits in groups of 64"],
    );

    // 2^32 + 4 bits is not 4 bits (a cast first took it for 4: hostile round 12).
    let (_d, base) = q4_with_config(|c| {
        c["quantization"]["bits"] = (1u64 << 32 | 4).into();
        c["quantization_config"] = c["quantization"].clone();
    });
    let line = merge_refused(&base, &mq("lora_q4"), &out, &[]);
    assert_mentions(&line, &["config.json", "bits 4294967300"]);

    // No config at all: named as unreadable where the adapter needs it, nothing written.
    let (_d, base) = q4_with_config(|c| {
        c.as_object_mut().unwrap().remove("quantization");
        c.as_object_mut().unwrap().remove("quantization_config");
    });
    let line = merge_refused(&base, &mq("lora_q4"), &out, &[]);
    assert_mentions(&line, &["MLX-quantized", "no `quantization`"]);

    // Another MLX mode with settings that mode cannot have (mx.quantize refuses mxfp4 in
    // groups of 64), not read as affine.
    let (_d, base) = q4_with_config(|c| c["quantization"]["mode"] = "mxfp4".into());
    let line = merge_refused(&base, &mq("lora_q4"), &out, &[]);
    assert_mentions(
        &line,
        &["config.json", "mxfp4 takes group size 32", "not 64 and 4"],
    );
}

#[test]
fn non_finite_scale_is_refused_naming_it() {
    let (_d, base) = scratch("base");
    copy_dir(&mq("q4"), &base);
    let file = base.join("model.safetensors");
    let mut t = read(&file);
    let s = t.get_mut("model.layers.0.self_attn.q_proj.scales").unwrap();
    s.data[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    write_tensors(&file, &t);
    let before = snapshot(&base);
    let (_o, out) = scratch("out");
    let line = merge_refused(&base, &mq("lora_q4"), &out, &[]);
    assert_mentions(
        &line,
        &["model.layers.0.self_attn.q_proj.scales", "element 1 is NaN"],
    );
    assert_eq!(snapshot(&base), before, "the base changed");
}

/// `check --base` on a quantized base places each module on its weight by the weight's logical
/// shape (it reported `shape_mismatch` against the packed storage before, and every serving
/// target failed a QLoRA adapter on its own bitsandbytes base), and compares the factors'
/// dtype with the dtype the weight dequantizes to.
#[test]
fn check_places_modules_on_quantized_weights_by_their_logical_shape() {
    for (adapter, base, modules, vllm) in [
        (
            fixture("quant/qlora/trained_nf4"),
            fixture("quant/nf4"),
            14,
            "loads",
        ),
        (mq("lora_qmix_bf16"), mq("qmix_bf16"), 14, "fails"),
    ] {
        // Exit 1 where a target fails (the mlx-lm folder): the report is on stdout either way.
        let out = bin()
            .args(check_args(&adapter, &["--base", s(&base), "--json"]))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let placed = v["modules"].as_array().unwrap();
        assert_eq!(placed.len(), modules, "{}", adapter.display());
        for p in placed {
            assert_eq!(p["status"], "exact", "{p}");
        }
        let vllm_v = v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == "vllm");
        let vllm_v = vllm_v.expect("vllm");
        // The mlx-lm folder fails vLLM on its format only (vLLM reads PEFT folders).
        assert_eq!(vllm_v["verdict"], vllm, "{vllm_v}");
        let rules: Vec<&str> = vllm_v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["rule"].as_str().unwrap())
            .collect();
        assert!(!rules.contains(&"vllm.shape"), "{rules:?}");
        let dtype = format!("{}", vllm_v["findings"]);
        assert!(!dtype.contains("U32") && !dtype.contains("U8"), "{dtype}");
    }
}

/// A per-module entry is passed to MLX's `to_quantized` as it is: its own `mode` (else affine)
/// and group size and bits (else that mode's defaults), never the top-level ones. mlx-lm's
/// granite/gpt_oss/qwen3_moe predicates write `{"group_size": 64, "bits": 8}` with no mode
/// into mxfp4 models; here every quantized module of the 4-bit fixture gets `{"bits": 4}` (the
/// affine default group, 64) under a top level of mxfp4: the same bytes as mlx-lm's fuse.
#[test]
fn per_module_entries_take_their_own_mode_and_its_defaults() {
    let (_d, base) = q4_with_config(|c| {
        let q = c["quantization"].as_object_mut().unwrap();
        q.insert("mode".into(), "mxfp4".into());
        q.insert("group_size".into(), 32.into());
        let mut modules = vec!["lm_head".to_owned(), "model.embed_tokens".to_owned()];
        for l in 0..2 {
            for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                modules.push(format!("model.layers.{l}.self_attn.{m}"));
            }
            for m in ["gate_proj", "up_proj"] {
                modules.push(format!("model.layers.{l}.mlp.{m}"));
            }
        }
        for m in modules {
            q.insert(m, serde_json::json!({ "bits": 4 }));
        }
        c["quantization_config"] = c["quantization"].clone();
    });
    let (_o, out) = scratch("out");
    run_ok(merge_args(&base, &mq("lora_q4"), &out, &["--quiet"]));
    let want = read(&mq("fused_q4/model.safetensors"));
    let (differ, _) = differing(&read_checkpoint(&out), &want, &TensorMap::new());
    assert!(differ.is_empty(), "differ: {differ:?}");
}

/// MLX-quantized experts (`QuantizedSwitchLinear`: `[E, rows, words]` packed, mlx-lm's MoE
/// models) are read with their logical shape `[E, rows, cols]` (merges against mlx-lm:
/// `tests/it/mlx_quant_fp.rs`), and scales that do not follow the expert dimension are refused
/// naming them (before, experts were not read, and before that the whole scan failed).
#[test]
fn mlx_quantized_experts_are_read_with_their_expert_dimension() {
    let (_d, base) = scratch("base");
    copy_dir(&mq("q4"), &base);
    let file = base.join("model.safetensors");
    let mut t = read(&file);
    let p = "model.layers.0.mlp.switch_mlp.gate_proj";
    let packed: Vec<u8> = (0..2 * 96 * 8 * 4).map(|i| (i * 7 % 251) as u8).collect();
    let groups: Vec<u8> = (0..2 * 96).flat_map(|_| 0.01f32.to_le_bytes()).collect();
    for (name, dtype, shape, data) in [
        (
            format!("{p}.weight"),
            safetensors::Dtype::U32,
            vec![2, 96, 8],
            packed,
        ),
        (
            format!("{p}.scales"),
            safetensors::Dtype::F32,
            vec![2, 96, 1],
            groups.clone(),
        ),
        (
            format!("{p}.biases"),
            safetensors::Dtype::F32,
            vec![2, 96, 1],
            groups,
        ),
    ] {
        t.insert(name, T { dtype, shape, data });
    }
    write_tensors(&file, &t);
    // One file now: the index would not list the new tensors.
    std::fs::remove_file(base.join("model.safetensors.index.json")).unwrap();
    let v = inspect_json(&base, &[]);
    let w = quant_weight(&v, &format!("{p}.weight"));
    assert_eq!(w["method"], "mlx-affine");
    assert_eq!(w["shape"], serde_json::json!([2, 96, 64]));
    // Scales flattened over the experts: refused naming them, nothing written.
    let s = t.get_mut(&format!("{p}.scales")).unwrap();
    s.shape = vec![192, 1];
    t.get_mut(&format!("{p}.biases")).unwrap().shape = vec![192, 1];
    write_tensors(&file, &t);
    let (_o, out) = scratch("out");
    let line = refused(dequantize_args(&base, &out, &[]), &out);
    assert_mentions(&line, &[&format!("{p}.scales"), "needs [2, 96, 1]"]);
}
