//! compressed-tensors NVFP4, MXFP4, MXFP6 and MXFP8 bases (`nvfp4-pack-quantized`,
//! `mxfp4-pack-quantized`, `mxfp6-pack-quantized`, `mxfp8-quantized`), against compressed-tensors
//! 0.20's own compressors (`fixtures/gen/ct_fp4_fixtures.py`, `fixtures/gen/ct_mx_fixtures.py`).

use super::common::*;
use super::quant::{assert_dequantized_as, dequantize_refuses, edited, prefixed, quant, without};
use super::quant_requant::{assert_merged_exactly, merge_keeping};
use std::collections::BTreeMap;

/// (model, reference file stem, prefix of its tensors in the reference files).
const MODELS: [(&str, &str, &str); 4] = [
    ("ct_nvfp4", "ct_fp4", "nv."),
    ("ct_mxfp4", "ct_fp4", "mx."),
    ("ct_mxfp6", "ct_mx", "mx6."),
    ("ct_mxfp8", "ct_mx", "mx8."),
];

/// `dequantize` equals the compressor's `decompress` (bf16) bit for bit on all 14 weights;
/// companions (scales, global scales) are dropped and so is `quantization_config`.
#[test]
fn dequantize_equals_compressed_tensors_decompress() {
    let dir = tempfile::tempdir().unwrap();
    for (model, refs, prefix) in MODELS {
        let refs = format!("ref/{refs}.safetensors");
        assert_dequantized_as(model, &dir.path().join(model), &refs, prefix);
    }
}

/// `merge --quant keep` packs each merged weight again with the stored scales, equal to the
/// compressor's `compress` of the decompressed weight plus PEFT's ΔW (rounded to bf16); scales,
/// global scales, every other tensor and config.json are copied byte for byte.
#[test]
fn merge_keep_into_fp4_is_the_compressors_rounding() {
    for (model, refs, prefix) in MODELS {
        let (got, input) = merge_keeping(model, "rslora_all", 14);
        let want = prefixed(&format!("qlora/{refs}_keep.safetensors"), prefix);
        assert_eq!(want.len(), 14);
        assert_merged_exactly(&got, &input, &want, model);
    }
}

/// Bad FP4 companions are one-line errors naming the file and the tensor, nothing written.
#[test]
fn malformed_fp4_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = "model.layers.0.self_attn.q_proj";
    let set = |t: &mut BTreeMap<String, T>, name: &str, i: usize, b: u8| {
        t.get_mut(name).unwrap().data[i] = b;
    };
    let cases = [
        (
            "NVFP4 weight without its global scale",
            without(dir.path(), "ct_nvfp4", &format!("{q}.weight_global_scale")),
            "without `model.layers.0.self_attn.q_proj.weight_global_scale`",
        ),
        (
            "NVFP4 scales of the wrong shape",
            edited(dir.path(), "ct_nvfp4", |t| {
                t.get_mut(&format!("{q}.weight_scale"))
                    .unwrap()
                    .cut_to(&[64, 2]);
            }),
            "[64, 64/16]",
        ),
        (
            "an E4M3 NaN scale",
            edited(dir.path(), "ct_nvfp4", |t| {
                set(t, &format!("{q}.weight_scale"), 5, 0x7F)
            }),
            "group 5 (byte 0x7f)",
        ),
        (
            "a zero global scale",
            edited(dir.path(), "ct_nvfp4", |t| {
                t.get_mut(&format!("{q}.weight_global_scale")).unwrap().data = vec![0; 4];
            }),
            "a global scale must be finite and non-zero",
        ),
        (
            "an E8M0 byte 255 (2^128)",
            edited(dir.path(), "ct_mxfp4", |t| {
                set(t, &format!("{q}.weight_scale"), 3, 255)
            }),
            "byte 0xff",
        ),
        (
            "a global scale beside MXFP4",
            edited(dir.path(), "ct_mxfp4", |t| {
                let g = read(&quant("ct_nvfp4/model.safetensors"))
                    .remove(&format!("{q}.weight_global_scale"))
                    .unwrap();
                t.insert(format!("{q}.weight_global_scale"), g);
            }),
            "no global scale",
        ),
    ];
    for (what, input, want) in cases {
        dequantize_refuses(dir.path(), what, &input, want);
    }
}

/// MXFP6's packing and config are checked as MXFP4's: a row of bytes that does not pack whole
/// quads, scales of the wrong shape, a config that says 4 bits, an E8M0 byte 255 in MXFP8.
#[test]
fn malformed_mxfp6_and_mxfp8_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = "model.layers.0.self_attn.q_proj";
    let cases = [
        (
            "MXFP6 rows that are not whole quads",
            edited(dir.path(), "ct_mxfp6", |t| {
                t.get_mut(&format!("{q}.weight_packed"))
                    .unwrap()
                    .cut_to(&[64, 47]);
            }),
            "not a multiple of 3",
        ),
        (
            "MXFP6 scales of the wrong shape",
            edited(dir.path(), "ct_mxfp6", |t| {
                t.get_mut(&format!("{q}.weight_scale"))
                    .unwrap()
                    .cut_to(&[64, 1]);
            }),
            "MXFP6 scales of a 64x64 weight",
        ),
        (
            "an E8M0 byte 255 in MXFP8",
            edited(dir.path(), "ct_mxfp8", |t| {
                t.get_mut(&format!("{q}.weight_scale")).unwrap().data[3] = 255;
            }),
            "weight_scale",
        ),
    ];
    for (what, input, want) in cases {
        dequantize_refuses(dir.path(), what, &input, want);
    }
    // The config's 4 bits against MXFP6's packing: named, not guessed.
    let input = dir.path().join("mx6_says_4");
    copy_dir(&quant("ct_mxfp6"), &input);
    let cfg = input.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"num_bits\": 6", "\"num_bits\": 4")).unwrap();
    dequantize_refuses(
        dir.path(),
        "MXFP6 bytes under a 4-bit config",
        &input,
        "MXFP4 scales",
    );
}
