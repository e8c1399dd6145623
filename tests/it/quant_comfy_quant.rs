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

/// A ComfyUI NVFP4 layer of ModelOpt's shapes (`layers.0.mlp.gate_proj`, 128x64) was dequantized
/// as ModelOpt NVFP4 (low nibble first, row-major scales) with exit 0: now it is not read as that.
#[test]
fn comfy_nvfp4_is_not_read_as_modelopt() {
    let (_dir, out) = scratch("o");
    let e = refused(dequantize_args(&comfy(""), &out, &[]), &out);
    assert_mentions(&e, &["model.safetensors", "comfy_quant", "`model.layers."]);
}
