//! ComfyUI's legacy "scaled FP8" diffusion checkpoints (`P.scale_weight` beside an E4M3
//! `P.weight`, a `scaled_fp8` marker; `fixtures/quant/comfy_fp8`, built to ComfyUI's
//! `comfy/utils.py` `convert_old_quants` and `comfy/quant_ops.py` `TensorCoreFP8Layout` by
//! `fixtures/gen/comfy_fp8_fixture.py`): the scale is applied, never dropped. Dequantization bit
//! for bit is in `quant.rs` (`MODELS`); here merges and refusals.

use super::common::*;
use super::quant::{dequantize_refuses, edited, quant, without};
use super::quant_gptq::assert_qv_r8_merged_against_f64;

/// `--quant dequantize`: ComfyUI's dequantization (`qdata.to(float32) * scale`) plus s·B·A in
/// f64; the marker, scales and input scale are gone (a float model that kept `scaled_fp8` would
/// be loaded as scaled FP8 again).
#[test]
fn merge_into_comfy_scaled_fp8_applies_the_scale() {
    let (_dir, out) = scratch("o");
    merge_qv_r8_into(
        &quant("comfy_fp8"),
        &out,
        &["--quant", "dequantize", "--dtype", "f32"],
    );
    let got = read_checkpoint(&out);
    let deq: std::collections::BTreeMap<_, _> = read(&quant("ref/comfy_fp8.safetensors"))
        .into_iter()
        .filter(|(k, _)| !k.contains('@'))
        .collect();
    assert_eq!(deq.len(), 14);
    assert_eq!(assert_qv_r8_merged_against_f64(&got, &deq, "comfy_fp8"), 4);
    let base = read_checkpoint(&fixture("llama/base"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>()
    );
}

/// Kept quantized, ComfyUI would write a fresh scale with stochastic rounding from a seed: not
/// reproducible, so refused with the way out, and nothing written.
#[test]
fn merge_keep_into_comfy_scaled_fp8_is_refused() {
    let (_dir, out) = scratch("o");
    let e = merge_qv_r8_refused(&quant("comfy_fp8"), &out, &[]);
    assert_mentions(
        &e,
        &[
            "model.layers.0.self_attn.q_proj.weight",
            "ComfyUI",
            "--quant dequantize",
        ],
    );
}

#[test]
fn malformed_comfy_scaled_fp8_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let q = "model.layers.0.self_attn.q_proj";
    let cases = [
        (
            "a scale per row",
            edited(dir.path(), "comfy_fp8", |t| {
                let s = t.get_mut(&format!("{q}.scale_weight")).unwrap();
                s.shape = vec![64];
                s.data = s.data.repeat(64);
            }),
            "one float per tensor",
        ),
        (
            "E5M2 values",
            edited(dir.path(), "comfy_fp8", |t| {
                let w = t.get_mut(&format!("{q}.weight")).unwrap();
                w.dtype = safetensors::Dtype::F8_E5M2;
                w.data.iter_mut().for_each(|b| *b &= 0x3f);
            }),
            "F8_E5M2",
        ),
        (
            "a scale without its weight",
            without(dir.path(), "comfy_fp8", &format!("{q}.weight")),
            "its weight is missing",
        ),
    ];
    for (what, model, want) in cases {
        dequantize_refuses(dir.path(), what, &model, want);
        dequantize_refuses(dir.path(), what, &model, q);
    }
}
