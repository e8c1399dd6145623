//! MLX bases quantized in the floating-point modes (`mlx_lm.convert -q --q-mode mxfp4|nvfp4|
//! mxfp8`: `fixtures/mlx_quant_fp/`, written by MLX 0.32.4 / mlx-lm 0.32.2,
//! `fixtures/gen/mlx_quant_fp_fixtures.py`): lorakit's merge into them, kept quantized and
//! dequantized, against mlx-lm's fuse byte for byte, `inspect`, and refusals. The quantizer and
//! dequantizer themselves are checked against `mx.quantize` / `mx.dequantize` in
//! `src/io/quant/mlx_fp.rs`.

use super::common::*;
use super::mlx_quant::{differing, quant_weight};
use std::path::PathBuf;

fn fq(name: &str) -> PathBuf {
    fixture(&format!("mlx_quant_fp/{name}"))
}

/// Every ΔW of the fixture adapters is exact in bf16 (factors on a grid, see the script), so
/// lorakit and mlx-lm requantize the same bf16 numbers and the stored bytes must be equal:
/// packed codes and scales of every merged weight, in mxfp4 (f32 model, the embedding's LoRA
/// included), nvfp4 (bf16), mxfp8 (f16), and mxfp4 with gpt_oss-style 8-bit affine entries
/// for q/k and one module left float (bf16); and a Mixtral whose experts are 3-D packed
/// (`QuantizedSwitchLinear`), affine and mxfp4, with mlx-lm's expert LoRA (`LoRASwitchLinear`)
/// on two of their projections.
#[test]
fn merge_into_mlx_fp_quantized_base_equals_mlx_fuse_byte_for_byte() {
    for (case, changed_by_mlx) in [
        // Tensors mlx-lm's fuse changed (most E8M0 exponents stay put under a small ΔW).
        ("mxfp4", 19),
        ("nvfp4_bf16", 28),
        ("mxfp8_f16", 14),
        ("mix_bf16", 24),
        // Mixtral with 3-D experts, mlx-lm's LoRA on q/v and on the experts' gate and down
        // projections (LoRASwitchLinear): up_proj's experts are copied.
        ("moe_q4", 12),
        ("moe_mxfp4", 5),
    ] {
        let (_dir, out) = scratch("out");
        run_ok(merge_args(
            &fq(case),
            &fq(&format!("lora_{case}")),
            &out,
            &["--quiet"],
        ));
        let want = read(&fq(&format!("fused_{case}/model.safetensors")));
        let (differ, changed) =
            differing(&read_checkpoint(&out), &want, &read_checkpoint(&fq(case)));
        assert!(
            differ.is_empty(),
            "{case}: differ from mlx_lm.fuse: {differ:?}"
        );
        assert_eq!(changed, changed_by_mlx, "{case}: tensors mlx-lm changed");
        let cfg = read_json(out.join("config.json"));
        assert_eq!(
            cfg["quantization"],
            read_json(fq(&format!("fused_{case}/config.json")))["quantization"],
            "{case}"
        );
    }
}

/// `--quant dequantize`: these modes dequantize to bf16 (`mx.dequantize`'s default for them,
/// whatever the model's dtype), where mlx-lm's fuse also adds the delta: equal to
/// `mlx_lm.fuse --dequantize` (the Mixtral's 3-D experts included), and config.json loses its
/// quantization.
#[test]
fn dequantized_merge_equals_mlx_fuse_dequantize() {
    for case in [
        "mxfp4",
        "nvfp4_bf16",
        "mxfp8_f16",
        "mix_bf16",
        "moe_q4",
        "moe_mxfp4",
    ] {
        let (_dir, out) = scratch("out");
        run_ok(merge_args(
            &fq(case),
            &fq(&format!("lora_{case}")),
            &out,
            &["--quiet", "--quant", "dequantize"],
        ));
        let want = read(&fq(&format!("fused_{case}_deq.safetensors")));
        let (differ, _) = differing(&read_checkpoint(&out), &want, &TensorMap::new());
        assert!(differ.is_empty(), "{case}: differ: {differ:?}");
        let cfg = read_json(out.join("config.json"));
        assert!(cfg.get("quantization").is_none(), "{case}: {cfg}");
        assert!(cfg.get("quantization_config").is_none(), "{case}: {cfg}");
    }
}

#[test]
fn inspect_names_each_module_mode_from_the_config() {
    let v = inspect_json(&fq("mix_bf16"), &[]);
    let find = |n: &str| quant_weight(&v, n);
    for (name, method, bits, group) in [
        (
            "model.layers.0.self_attn.q_proj.weight",
            "mlx-affine",
            8,
            "group 64",
        ),
        (
            "model.layers.0.self_attn.v_proj.weight",
            "mlx-mxfp4",
            4,
            "group 32",
        ),
        ("model.embed_tokens.weight", "mlx-mxfp4", 4, "group 32"),
    ] {
        let w = find(name);
        assert_eq!(w["method"], method, "{name}");
        assert_eq!(w["bits"], bits, "{name}");
        assert_eq!(w["blocks"], group, "{name}");
        assert_eq!(w["dtype"], "BF16", "{name}");
    }
    let v = inspect_json(&fq("nvfp4_bf16"), &[]);
    let w = &v["quantization"]["tensors"][0];
    assert_eq!(
        (&w["method"], &w["blocks"]),
        (&"mlx-nvfp4".into(), &"group 16".into())
    );
}

/// A copy of fixture `case` with `edit` applied to its tensors (and its config.json edited by
/// `cfg`), and what a merge of its adapter says.
fn refusal(
    case: &str,
    edit: impl FnOnce(&mut TensorMap),
    cfg: impl FnOnce(&mut serde_json::Value),
) -> String {
    let (_d, base) = scratch("base");
    copy_dir(&fq(case), &base);
    let file = base.join("model.safetensors");
    let mut t = read(&file);
    edit(&mut t);
    write_tensors(&file, &t);
    // One file now: the index would not list added tensors.
    let _ = std::fs::remove_file(base.join("model.safetensors.index.json"));
    let mut c = read_json(base.join("config.json"));
    cfg(&mut c);
    std::fs::write(base.join("config.json"), c.to_string()).unwrap();
    let before = snapshot(&base);
    let (_o, out) = scratch("out");
    let line = merge_refused(&base, &fq(&format!("lora_{case}")), &out, &[]);
    assert_eq!(snapshot(&base), before, "the base changed");
    line
}

#[test]
fn lying_fp_quantization_is_refused_naming_the_file_and_tensor() {
    let q = "model.layers.0.self_attn.q_proj";
    // mx.quantize takes mxfp4 in groups of 32 only.
    let line = refusal(
        "mxfp4",
        |_| {},
        |c| c["quantization"]["group_size"] = 64.into(),
    );
    assert_mentions(
        &line,
        &["config.json", "mxfp4 takes group size 32", "not 64 and 4"],
    );
    // A biases tensor in a mode without them.
    let line = refusal(
        "mxfp4",
        |t| {
            let s = t[&format!("{q}.scales")].clone();
            t.insert(format!("{q}.biases"), s);
        },
        |_| {},
    );
    assert_mentions(
        &line,
        &["model.safetensors", &format!("{q}.biases"), "no biases"],
    );
    // Scales stored as floats (an affine file mislabelled mxfp8).
    let line = refusal(
        "mxfp8_f16",
        |t| {
            let s = t.get_mut(&format!("{q}.scales")).unwrap();
            s.dtype = safetensors::Dtype::I8;
        },
        |_| {},
    );
    assert_mentions(&line, &[&format!("{q}.scales"), "needs U8"]);
    // E8M0 byte 255 is 2^128: infinite values, refused naming the scales.
    let line = refusal(
        "mxfp4",
        |t| t.get_mut(&format!("{q}.scales")).unwrap().data[3] = 255,
        |_| {},
    );
    assert_mentions(
        &line,
        &[&format!("{q}.scales"), "scale byte 255", "element [1, 32]"],
    );
    // An mxfp8 code 0x7F is NaN in MLX 0.32.4: refused naming the weight (that fixture's
    // adapter has the last block only).
    let q1 = "model.layers.1.self_attn.q_proj";
    let line = refusal(
        "mxfp8_f16",
        |t| t.get_mut(&format!("{q1}.weight")).unwrap().data[5] = 0x7F,
        |_| {},
    );
    assert_mentions(&line, &[&format!("{q1}.weight"), "NaN code", "[0, 5]"]);
}

/// nvfp4 with a tensor-wide `global_scale` (mlx-lm writes one for MoE experts) is not read:
/// named where the adapter needs it, copied byte for byte where it does not.
#[test]
fn nvfp4_global_scale_is_named_not_misread() {
    let q = "model.layers.0.self_attn.q_proj";
    let add = |t: &mut TensorMap| {
        t.insert(
            format!("{q}.global_scale"),
            T {
                dtype: safetensors::Dtype::F32,
                shape: vec![],
                data: 1.0f32.to_le_bytes().to_vec(),
            },
        );
    };
    let line = refusal("nvfp4_bf16", add, |_| {});
    assert_mentions(
        &line,
        &[&format!("{q}.weight"), "global_scale", "does not read"],
    );
}

/// mlx-lm adapts only the last `num_layers` blocks (`linear_to_lora_layers`): expert factors in
/// an earlier block are refused as the 2-D ones are (they were merged; found by review).
#[test]
fn expert_factors_outside_the_last_blocks_are_refused() {
    let (_d, a) = scratch("adapter");
    copy_dir(&fq("lora_moe_q4"), &a);
    let file = a.join("adapters.safetensors");
    let t: TensorMap = read(&file)
        .into_iter()
        .map(|(k, v)| (k.replace("layers.0.self_attn", "layers.1.self_attn"), v))
        .collect();
    write_tensors(&file, &t);
    let (_o, out) = scratch("out");
    let line = merge_refused(&fq("moe_q4"), &a, &out, &[]);
    assert_mentions(
        &line,
        &[
            "model.layers.0.block_sparse_moe.switch_mlp",
            "num_layers is 1",
        ],
    );
}
