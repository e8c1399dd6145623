//! ComfyUI's own quantized checkpoints: layers marked by a U8 `P.comfy_quant` (JSON
//! `{"format": …}`), made by comfy_kitchen 0.2.40's own `Layout.quantize`
//! (`fixtures/comfy_quant`, `fixtures/gen/comfy_quant_fixtures.py`). Their NVFP4 layers carry
//! ModelOpt's names and dtypes with another packing: never read as ModelOpt's.

use super::common::*;

fn comfy(rel: &str) -> std::path::PathBuf {
    fixture(&format!("comfy_quant/{rel}"))
}

/// A format lorakit does not read (`int8_tensorwise`) is a one-line refusal naming the file and
/// the tensor, and `inspect` says what it is.
#[test]
fn unread_comfy_quant_format_is_refused_and_inspected() {
    let (_dir, out) = scratch("o");
    let e = refused(dequantize_args(&comfy("unread"), &out, &[]), &out);
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            "`blocks.0.linear.weight`",
            "int8_tensorwise",
            "comfy_quant",
        ],
    );
    let v = inspect_json(&comfy("unread"), &[]);
    let unreadable = v["quantization"]["unreadable"].to_string();
    assert_mentions(&unreadable, &["blocks.0.linear.weight", "int8_tensorwise"]);
}

/// ModelOpt's U8 weight beside an F8_E4M3 `weight_scale`, without the ModelOpt config that says
/// whose packing it is (ComfyUI's NVFP4 stores the same names and dtypes): refused, not guessed.
#[test]
fn nvfp4_pair_without_modelopt_config_is_refused() {
    let (dir, out) = scratch("o");
    let lone = dir.path().join("lone");
    std::fs::create_dir_all(&lone).unwrap();
    std::fs::copy(
        fixture("quant/modelopt_nvfp4/model.safetensors"),
        lone.join("model.safetensors"),
    )
    .unwrap();
    let e = refused(dequantize_args(&lone, &out, &[]), &out);
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            ".weight`",
            "ModelOpt config",
            "comfy_quant",
        ],
    );
}

/// Every quantized layer (NVFP4 with ModelOpt's 128x64 shapes and with padded scale tiles,
/// MXFP8, float8_e4m3fn) dequantized bit for bit as comfy_kitchen's own `Layout.dequantize` in
/// the model dtype: bf16 for a file without config.json, f16 and f32 as config.json's `dtype`
/// says. The markers and scales are gone (ComfyUI would load the float weight as quantized).
#[test]
fn comfy_quant_dequantizes_as_comfy_kitchen() {
    let reference = read(&comfy("ref.safetensors"));
    for (tag, dtype, count) in [
        ("", None, 13),
        ("@f16", Some("float16"), 3),
        ("@f32", Some("float32"), 3),
    ] {
        let (dir, out) = scratch("o");
        let model = dir.path().join("m");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::copy(comfy("model.safetensors"), model.join("model.safetensors")).unwrap();
        if let Some(d) = dtype {
            std::fs::write(model.join("config.json"), format!("{{\"dtype\": \"{d}\"}}")).unwrap();
        }
        run_ok(dequantize_args(&model, &out, &[]));
        let got = read_checkpoint(&out);
        assert!(
            got.keys()
                .all(|k| !k.ends_with("comfy_quant") && !k.contains("weight_scale")),
            "{:?}",
            got.keys().collect::<Vec<_>>()
        );
        let mut n = 0;
        for (k, want) in &reference {
            let name = match k.split_once('@') {
                None if tag.is_empty() => k.as_str(),
                Some((name, t)) if !tag.is_empty() && tag[1..] == *t => name,
                _ => continue,
            };
            assert_eq!(&got[name], want, "{name}{tag}");
            n += 1;
        }
        assert_eq!(n, count, "{tag}");
    }
}

/// Merged as dequantized: each weight is comfy_kitchen's dequantization plus s·B·A (in f64).
#[test]
fn merge_into_comfy_quant_adds_to_its_dequantization() {
    let (_dir, out) = scratch("o");
    merge_qv_r8_into(
        &comfy(""),
        &out,
        &["--quant", "dequantize", "--dtype", "f32"],
    );
    let got = read_checkpoint(&out);
    let deq: std::collections::BTreeMap<_, _> = read(&comfy("ref.safetensors"))
        .into_iter()
        .filter(|(k, _)| !k.contains('@'))
        .collect();
    assert_eq!(
        super::quant_gptq::assert_qv_r8_merged_against_f64(&got, &deq, "comfy_quant"),
        4
    );
    assert!(got.keys().all(|k| !k.ends_with("comfy_quant")));
}

/// Kept quantized, ComfyUI writes fresh scales with stochastic rounding from a seed: refused.
#[test]
fn merge_keep_into_comfy_quant_is_refused() {
    let (_dir, out) = scratch("o");
    let e = merge_qv_r8_refused(&comfy(""), &out, &["--quant", "keep"]);
    assert_mentions(
        &e,
        &["model.layers.0.self_attn.q_proj.weight", "ComfyUI", "nvfp4"],
    );
}
