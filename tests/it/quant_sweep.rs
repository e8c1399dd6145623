//! Quantized bases the sweep (`fixtures/gen/check_quant_sweep.py`) found lorakit wrong on, each
//! made by the real library (`fixtures/gen/quant_sweep_fixtures.py`: transformers 5.24,
//! bitsandbytes 0.50.2, peft 0.21.2 on CPU) and merged against PEFT's own `merge_and_unload` on
//! the quantized model, byte for byte.

use super::common::*;

/// `merge --quant keep` of `sweep/<case>/ad` into `sweep/<case>/q`: every tensor that the
/// library's merge changed (`want.safetensors`: PEFT's, or the producer's compressor) is the
/// library's, byte for byte; every other is the input's.
fn merge_equals_peft(case: &str) {
    let (_dir, out) = scratch(case);
    let base = fixture(&format!("quant/sweep/{case}/q"));
    merge_ok(
        &base,
        &fixture(&format!("quant/sweep/{case}/ad")),
        &out,
        &[],
    );
    let want = read(&fixture(&format!("quant/sweep/{case}/want.safetensors")));
    let (got, input) = (read_checkpoint(&out), read_checkpoint(&base));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        input.keys().collect::<Vec<_>>()
    );
    for (name, t) in &input {
        assert_eq!(&got[name], want.get(name).unwrap_or(t), "{case} {name}");
    }
}

/// `bnb_4bit_quant_storage=torch.float32` stores the packed NF4 nibbles as F32 elements; codes
/// 15/15 (bytes 0xFF) read as NaN there. The requantized codes were checked as float results and
/// the merge refused ("element … is NaN in F32"); they are opaque bytes, written as PEFT's.
#[test]
fn merge_into_nf4_with_f32_quant_storage_writes_the_packed_codes_like_peft() {
    merge_equals_peft("nf4_f32_storage");
}

/// A bf16 model in NF4: PEFT merges into `dequantize_4bit`'s bf16 output plus its f32 delta and
/// quantizes that f32 sum, recording `"dtype": "float32"` in the new quant_state. lorakit merged
/// into the unrounded f32 dequantization and quantized the sum rounded to bf16 (every absmax and
/// most codes off) and kept `"bfloat16"`.
#[test]
fn merge_into_nf4_of_a_bf16_model_quantizes_the_f32_sum_like_peft() {
    merge_equals_peft("nf4_bf16");
}

/// The same for an f16 model in FP4 with double quantization (the nested absmax and offset
/// follow the f32 absmax).
#[test]
fn merge_into_double_quant_fp4_of_an_f16_model_quantizes_the_f32_sum_like_peft() {
    merge_equals_peft("fp4_f16_dq");
}

/// compressed-tensors FP8 with `strategy: block` weight scales (llm-compressor's FP8_BLOCK):
/// the merged weights get fresh block scales as its observer and `calculate_qparams` compute
/// them, equal to `FloatQuantizationCompressor.compress` on the merge (`want.safetensors`).
/// Before, `--quant keep` refused every such model (11 of 21 float-quantized sweep cases).
#[test]
fn merge_keep_into_compressed_tensors_fp8_blocks_has_fresh_block_scales() {
    merge_equals_peft("ct_fp8_block");
}

/// compressed-tensors FP8_BLOCK weights that the blocks do not tile (24x40 and 48x48 blocks on
/// 64x64, 32x64, 128x64 and 64x128 weights: partial blocks in rows, columns or both, as
/// llm-compressor writes a dimension that is not a multiple of 128). Its observer zero-pads the
/// partial blocks, which changes no scale; `want.safetensors` is compressed-tensors' compressor
/// on the merge with those fresh scales (`fixtures/gen/ct_fp8_partial_fixtures.py`). Before,
/// `--quant keep` refused every such weight.
#[test]
fn merge_keep_into_compressed_tensors_fp8_partial_blocks_is_the_producers_requantization() {
    merge_equals_peft("ct_fp8_partial");
}
