//! Quantized bases, continued (issue #18): `merge --part I/N` + `finalize` into sharded quantized
//! bases, byte-identical to one process, with the companions of a weight in the other shard.

use super::common::*;
use super::quant::{quant, with_config_of};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `fixtures/quant/<model>` as two shards and an index, tensors dealt alternately so that a
/// weight and its companions land in different shards.
fn sharded(dir: &Path, model: &str) -> PathBuf {
    let input = with_config_of(&dir.join(format!("{model}-sharded")), model);
    write_alternate_shards(&read(&quant(&format!("{model}/model.safetensors"))), &input);
    input
}

/// A merge of `llama/adapters/<adapter>` into `fixtures/quant/<model>` that keeps it quantized,
/// in a temporary folder: checks that `count` merged weights were quantized again, that the
/// output has the input's tensor names and that config.json (its quantization_config) is kept
/// byte for byte; returns the output's tensors and the input's.
pub(super) fn merge_keeping(
    model: &str,
    adapter: &str,
    count: usize,
) -> (BTreeMap<String, T>, BTreeMap<String, T>) {
    let (_dir, out) = scratch(&format!("{model}-{adapter}"));
    let input = quant(model);
    let text = merge_ok(
        &input,
        &fixture(&format!("llama/adapters/{adapter}")),
        &out,
        &[],
    );
    assert!(
        text.contains(&format!("{count} merged weights quantized again")),
        "{text}"
    );
    let (got, input_t) = (read_checkpoint(&out), read_checkpoint(&input));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        input_t.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        std::fs::read(input.join("config.json")).unwrap(),
        "quantization_config kept"
    );
    (got, input_t)
}

/// Every tensor of `input` that `want` does not list is copied to `got` unchanged.
fn assert_others_untouched(
    got: &BTreeMap<String, T>,
    input: &BTreeMap<String, T>,
    want: &BTreeMap<String, T>,
) {
    for (n, t) in input {
        if !want.contains_key(n) {
            assert_eq!(&got[n], t, "{n} changed");
        }
    }
}

/// Each tensor of `input` that `want` lists is `want`'s in `got` and not the input's (the merge
/// changed it); every other is the input's (`what` names the case in messages).
pub(super) fn assert_merged_exactly(
    got: &BTreeMap<String, T>,
    input: &BTreeMap<String, T>,
    want: &BTreeMap<String, T>,
    what: &str,
) {
    for (name, t) in input {
        match want.get(name) {
            Some(w) => {
                assert_eq!(&got[name], w, "{what} {name}");
                assert_ne!(&got[name], t, "{what} {name}: the merge changed nothing");
            }
            None => assert_eq!(&got[name], t, "{what} {name} changed"),
        }
    }
}

#[test]
fn merge_parts_into_sharded_quantized_bases_equal_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("llama/adapters/qv_r8");
    for model in [
        "nf4",
        "nf4_dq",
        "nf4_bf16",
        "gptq3_act",
        "fp8_block",
        "awq4",
    ] {
        let base = sharded(dir.path(), model);
        for mode in [&[][..], &["--quant", "dequantize", "--dtype", "bf16"][..]] {
            let tag = format!("{model}{}", mode.len());
            let whole = dir.path().join(format!("{tag}-whole"));
            let split = dir.path().join(format!("{tag}-split"));
            let merge = |out: &Path, part: &[&str]| {
                merge_ok(&base, &adapter, out, &[&["-q"], part, mode].concat());
            };
            assert_parts_equal_one_process(&whole, &split, merge, &tag);
            let cfg = std::fs::read_to_string(whole.join("config.json")).unwrap();
            assert_eq!(
                cfg.contains("quantization_config"),
                mode.is_empty(),
                "{tag}"
            );
        }
    }
}

/// `extract --part I/N` against a quantized base: each part and `finalize` take ΔW against the
/// same dequantization, so the joined adapter is the one-process adapter byte for byte.
#[test]
fn extract_parts_against_a_quantized_base_equal_one_process() {
    let (dir, tuned) = scratch("tuned");
    merge_qv_r8_into(&quant("gptq4_v1"), &tuned, &["--quant", "dequantize", "-q"]);
    let extract = |out: &Path, part: &[&str]| {
        let flags = [&["--rank", "8", "-q"], part].concat();
        run_ok(extract_args(&quant("gptq4_v1"), &tuned, out, &flags));
    };
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    assert_parts_equal_one_process(&whole, &split, extract, "extraction");
    // The adapter names the quantized base as given, not the temporary copy.
    let cfg = std::fs::read_to_string(whole.join("adapter_config.json")).unwrap();
    assert!(
        cfg.contains("gptq4_v1") && !cfg.contains("lorakit-dequantized"),
        "{cfg}"
    );
    // Four modules with a change, each recovered to f32 rounding.
    let got = read(&whole.join("adapter_model.safetensors"));
    assert_eq!(got.len(), 8);
}

/// `merge --quant keep` into the NF4 + double-quant checkpoint: every stored byte PEFT's own
/// merge_and_unload writes (Params4bit with compress_statistics: packed weight, absmax codes,
/// nested absmax, the quant_state JSON with the new offset), untouched tensors copied.
#[test]
fn merge_into_nf4_double_quant_keeps_it_like_peft() {
    let (got, input) = merge_keeping("nf4_dq", "qv_r8", 4);
    let want = read(&quant("qlora/peft_merged_nf4_dq.safetensors"));
    // weight, absmax, nested_absmax, quant_map, nested_quant_map, quant_state for 4 weights.
    assert_eq!(want.len(), 24);
    // The merged weight is W + s·B·A in f32, summed in another order than PEFT's, so a block's
    // maximum can differ in its last bit (ε relative). The nested absmax is max |absmax − offset|
    // with the offset about half the absmax, which doubles that relative difference: up to 4ε
    // allowed there, nothing else may differ (from identical inputs the requantizer is exact:
    // `bnb4_double_quant_requantizes_bit_exact`).
    let mut rounded = 0;
    for (name, w) in &want {
        let g = &got[name];
        if name.ends_with(".nested_absmax") && g != w {
            for (a, b) in g.f32().iter().zip(w.f32()) {
                let rel = ((a - b) / b).abs();
                assert!(rel <= 4.0 * f32::EPSILON, "{name}: {a} vs {b} ({rel:e})");
            }
            rounded += 1;
        } else {
            assert!(g == w, "{name}: differs from PEFT");
        }
    }
    assert!(rounded <= 2, "{rounded}");
    assert_others_untouched(&got, &input, &want);
}

/// `merge --quant keep` into the LLM.int8 checkpoint: the I8 weights and `SCB` PEFT's
/// merge_and_unload writes (Int8Params: float16, row absmax, round(A·127/SCB)), byte for byte;
/// `weight_format` and every untouched tensor copied.
#[test]
fn merge_into_int8_requantizes_like_peft() {
    let (got, input) = merge_keeping("int8", "qv_r8", 4);
    let want: BTreeMap<String, T> = read(&quant("qlora/peft_merged_int8.safetensors"))
        .into_iter()
        .filter(|(n, _)| !n.ends_with(".merged"))
        .collect();
    assert_eq!(want.len(), 8);
    for (name, w) in &want {
        assert!(&got[name] == w, "{name}: differs from PEFT");
    }
    assert_others_untouched(&got, &input, &want);
}

/// `merge --quant keep` into compressed-tensors pack-quantized (every scheme of `ct_pack`: 2..8
/// bits, symmetric and asymmetric, channel and group, f32/f16/bf16 scales, all seven projections
/// by `rslora_all`): each merged weight rounded to nearest with the stored scales and zero points,
/// equal to compressed-tensors 0.20's own `PackedQuantizationCompressor.compress` on
/// dequant(W) + PEFT's delta (`fixtures/gen/ct_keep_fixtures.py`). Scales, zero points, shapes and
/// config.json are copied byte for byte.
#[test]
fn merge_keep_into_compressed_tensors_is_its_compressors_rounding() {
    let (got, input) = merge_keeping("ct_pack", "rslora_all", 14);
    let want = read(&fixture("quant/qlora/ct_pack_keep.safetensors"));
    assert_eq!(want.len(), 14);
    assert_merged_exactly(&got, &input, &want, "ct_pack");
}

/// `merge --quant keep` into compressed-tensors float-quantized FP8 (`ct_fp8`: per-channel and
/// per-tensor `weight_scale` in bf16, f16 and f32): fresh scales and E4M3 values as the producer
/// computes them (llm-compressor's min/max observer, compressed-tensors 0.20's
/// `calculate_qparams` and `FloatQuantizationCompressor.compress`, run by
/// `fixtures/gen/ct_fp8_fixtures.py` on dequant(W) + `rslora_all`'s delta), byte for byte for
/// the bf16/f16 weights. The f32 weights (up/down) keep the last bit of the f32 merge, where
/// lorakit's `s·B·A` and torch's `b @ a` may differ by an ulp: their quantizer is checked on the
/// identical recorded input by the library test `ct_fp8_requantizes_bit_exact`; here they must
/// be requantized (changed) and leave everything else untouched.
#[test]
fn merge_keep_into_compressed_tensors_fp8_has_the_producers_fresh_scales() {
    let (got, input) = merge_keeping("ct_fp8", "rslora_all", 14);
    let want = read(&fixture("quant/qlora/ct_fp8_keep.safetensors"));
    assert_eq!(want.len(), 42);
    let (mut exact, mut scales_changed) = (0, 0);
    for (name, t) in &input {
        let Some(w) = want.get(name) else {
            assert_eq!(&got[name], t, "{name} changed");
            continue;
        };
        if name.ends_with(".weight") {
            assert_ne!(&got[name], t, "{name}: the merge changed nothing");
        }
        if name.contains("up_proj") || name.contains("down_proj") {
            assert_eq!(got[name].dtype, w.dtype, "{name}");
            assert_eq!(got[name].shape, w.shape, "{name}");
            continue;
        }
        assert_eq!(&got[name], w, "{name}");
        exact += 1;
        if name.ends_with("_scale") && &got[name] != t {
            scales_changed += 1;
        }
    }
    assert_eq!(exact, 20);
    assert!(
        scales_changed > 0,
        "no fresh scale differs from the stored one"
    );
}

/// A quantization method lorakit does not read (`quant_method: hqq`, its packed weight stored
/// as U8 under the weight's name) is refused, never read as something else: `dequantize`, a
/// float merge and a merge that keeps the base quantized each stop with one line naming the
/// checkpoint and the method, and write nothing.
#[test]
fn unknown_quantization_methods_are_refused_by_name() {
    let (dir, model) = scratch("hqq");
    copy_dir(&fixture("llama/base"), &model);
    edit_json(model.join("config.json"), |cfg| {
        cfg["quantization_config"] = serde_json::json!({"quant_method": "hqq", "nbits": 4})
    });
    let st = model.join("model.safetensors");
    let mut t = read(&st);
    let w = "model.layers.0.self_attn.q_proj.weight";
    let n = t[w].shape.iter().product::<usize>() / 2;
    t.insert(
        w.into(),
        T {
            dtype: safetensors::Dtype::U8,
            shape: vec![n],
            data: (0..n).map(|i| i as u8).collect(),
        },
    );
    write_tensors(&st, &t);
    let out = dir.path().join("out");
    let adapter = fixture("llama/adapters/qv_r8");
    for args in [
        dequantize_args(&model, &out, &[]),
        merge_args(&model, &adapter, &out, &["--quant", "dequantize"]),
        merge_args(&model, &adapter, &out, &[]),
    ] {
        let e = one_line_error(&run_err(&args));
        assert!(e.contains("hqq"), "{args:?}: method not named: {e}");
        assert!(
            e.contains(&model.display().to_string()),
            "{args:?}: checkpoint not named: {e}"
        );
        assert!(!out.exists(), "{args:?}: wrote output");
    }
}

/// `merge --quant keep` (the default) into the bitsandbytes FP4 checkpoint: the merged weights
/// are what PEFT's own merge_and_unload into the FP4 model writes (dequantize_4bit, add the
/// delta, Params4bit quantizes again; `qlora/peft_merged_fp4.safetensors`,
/// `fixtures/gen/fp4_keep_fixture.py`): FP4 codes byte for byte, absmax within 2 ulp (see
/// `assert_requantized_like`); every other tensor and config.json copied.
#[test]
fn merge_into_fp4_keeps_it_fp4_like_peft() {
    let (got, input) = merge_keeping("fp4", "qv_r8", 4);
    // 4 packed weights, their quant_map and quant_state blobs; 4 absmax within 2 ulp.
    assert_eq!(
        super::quant::assert_requantized_like(&got, &quant("qlora/peft_merged_fp4.safetensors")),
        12
    );
    let mut changed = 0;
    for (n, t) in &input {
        let merged = [
            "layers.0.self_attn.q",
            "layers.0.self_attn.v",
            "layers.1.self_attn.q",
            "layers.1.self_attn.v",
        ]
        .iter()
        .any(|m| n.starts_with(&format!("model.{m}_proj.weight")));
        if merged && (n.ends_with("_proj.weight") || n.ends_with(".absmax")) {
            changed += usize::from(&got[n] != t);
        } else {
            assert_eq!(&got[n], t, "{n} changed");
        }
    }
    assert_eq!(changed, 8, "the merged weights and their absmax");
}
