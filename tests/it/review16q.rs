//! Session 16's quantized-base review findings fixed on branch fixq16
//! (fixtures/gen/review16_quant.py, compressed-tensors 0.20's own compressors): compressed-tensors
//! `actorder: "group"` read through `weight_g_idx`, the unpacked integer formats
//! (`int-quantized`, `naive-quantized`), the uncompressed `dense` format, and `check --base` on
//! quantized bases (vLLM's module list, PEFT's refusals of DoRA/VeLoRA on quantized layers).

use super::common::*;
use std::path::{Path, PathBuf};

const ADAPTER: &str = "review16/quant/adapter";

fn case(name: &str) -> PathBuf {
    fixture(&format!("review16/quant/{name}"))
}

/// The entries of `case`'s ref.safetensors under `kind.` (`deq`, `merged`, `keep`), by name.
fn refs(case_dir: &Path, kind: &str) -> TensorMap {
    read(&case_dir.join("ref.safetensors"))
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&format!("{kind}."))?.to_owned(), v)))
        .collect()
}

/// Every reference tensor equals the output's, byte for byte; returns how many.
fn assert_equal_to(out: &Path, want: &TensorMap, what: &str) -> usize {
    let got = read_checkpoint(out);
    for (name, w) in want {
        let g = got
            .get(name)
            .unwrap_or_else(|| panic!("{what}: {name} missing"));
        assert_eq!(g.dtype, w.dtype, "{what}: {name}");
        assert_eq!(g.shape, w.shape, "{what}: {name}");
        if g.data != w.data {
            let (gv, wv) = match g.dtype {
                safetensors::Dtype::BF16 => (g.f32(), w.f32()),
                _ => (
                    g.data.iter().map(|&b| b as i8 as f32).collect(),
                    w.data.iter().map(|&b| b as i8 as f32).collect(),
                ),
            };
            let n = gv.iter().zip(&wv).filter(|(a, b)| a != b).count();
            panic!("{what}: {name} differs in {n} places");
        }
    }
    want.len()
}

/// `dequantize`, `merge --quant dequantize` and `merge --quant keep` of `name` against the
/// library's dequantization, PEFT's merge on it, and the library's compression of that merge
/// with the stored scales. Returns the output folders' tensors of the keep merge.
fn reads_and_merges_as_the_library(name: &str) -> TensorMap {
    let dir = tempfile::tempdir().unwrap();
    let base = case(name);
    let deq = dir.path().join("deq");
    run_ok(["dequantize", s(&base), "--out", s(&deq), "--quiet"]);
    assert_eq!(assert_equal_to(&deq, &refs(&base, "deq"), name), 2);
    let out = dir.path().join("merged");
    merge_ok(
        &base,
        &fixture(ADAPTER),
        &out,
        &["--quant", "dequantize", "--quiet"],
    );
    assert_eq!(assert_equal_to(&out, &refs(&base, "merged"), name), 2);
    let keep = dir.path().join("keep");
    merge_ok(&base, &fixture(ADAPTER), &keep, &["--quiet"]);
    assert_eq!(assert_equal_to(&keep, &refs(&base, "keep"), name), 2);
    // The scales, zero points and g_idx are copied as they are.
    let input = read_checkpoint(&base);
    let got = read_checkpoint(&keep);
    for (k, v) in &input {
        if k.contains("weight_") && !k.ends_with("weight_packed") {
            assert_eq!(&got[k], v, "{name}: {k}");
        }
    }
    got
}

/// F6: `actorder: "group"` — column c of each row takes scale column `weight_g_idx[c]`, as
/// compressed-tensors' dequantize did before GROUP actorder was removed (and vLLM's WNA16 reads
/// it); keep requantizes with the same g_idx. Before: groups taken as contiguous (max |diff|
/// 0.03–0.05 on weights of ~0.1), `weight_g_idx` copied into the float output.
#[test]
fn ct_actorder_group_reads_weight_g_idx() {
    reads_and_merges_as_the_library("ct_actorder");
    let dir = tempfile::tempdir().unwrap();
    let deq = dir.path().join("deq");
    run_ok(["dequantize", s(&case("ct_actorder")), "--out", s(&deq)]);
    assert!(!read_checkpoint(&deq).keys().any(|k| k.contains("g_idx")));
    let inspect = run_ok(["inspect", s(&case("ct_actorder"))]);
    assert!(inspect.contains("act-order (weight_g_idx)"), "{inspect}");
}

/// A g_idx naming a group the scales lack, or of another length, is refused naming it.
#[test]
fn ct_bad_weight_g_idx_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = "model.layers.0.self_attn.q_proj.weight_g_idx";
    for (what, edit) in [
        (
            "group",
            &(|t: &mut T| t.data[8..12].copy_from_slice(&2i32.to_le_bytes())) as &dyn Fn(&mut T),
        ),
        ("short", &|t: &mut T| t.cut_to(&[63])),
    ] {
        let d = dir.path().join(what);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            case("ct_actorder").join("config.json"),
            d.join("config.json"),
        )
        .unwrap();
        let mut t = read(&case("ct_actorder").join("model.safetensors"));
        edit(t.get_mut(g).unwrap());
        write_tensors(&d.join("model.safetensors"), &t);
        let out = dir.path().join(format!("{what}-out"));
        let line = refused(["dequantize", s(&d), "--out", s(&out)], &out);
        assert_mentions(&line, &["model.safetensors", g]);
    }
}

/// F4: compressed-tensors `int-quantized` (W8A8, per row and per tensor) and `naive-quantized`
/// (asymmetric, I8 zero points) read, merged and kept as `IntQuantizationCompressor` /
/// `NaiveQuantizationCompressor` compress and decompress. Before: every command refused them
/// calling the scale "an FP8 scale".
#[test]
fn ct_int8_and_naive_quantized_as_the_compressors() {
    for name in ["ct_int8_channel", "ct_int8_tensor", "ct_naive_asym"] {
        reads_and_merges_as_the_library(name);
        let inspect = run_ok(["inspect", s(&case(name))]);
        assert!(inspect.contains("ct-int8"), "{name}: {inspect}");
    }
}

/// F7: a checkpoint saved uncompressed (`format: "dense"`, status frozen): the float weight is
/// read as it is; keep writes bf16(W + ΔW) beside the kept scales (the loader's forward
/// fake-quantizes it, as PEFT's merge into that model runs), `--quant dequantize` drops them with
/// `quantization_config`. Before: refused as "an FP8 scale".
#[test]
fn ct_dense_is_read_as_its_float_weights() {
    let got = reads_and_merges_as_the_library("ct_dense");
    assert!(got.contains_key("model.layers.0.self_attn.q_proj.weight_zero_point"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f");
    merge_ok(
        &case("ct_dense"),
        &fixture(ADAPTER),
        &out,
        &["--quant", "dequantize", "--quiet"],
    );
    assert!(!read_checkpoint(&out)
        .keys()
        .any(|k| k.contains("weight_scale")));
    let cfg = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(!cfg.contains("quantization_config"), "{cfg}");
}

/// F4/F7's catch-all: a scale beside an I8 weight outside compressed-tensors is a format lorakit
/// does not read — listed by inspect, not called an FP8 scale; a dequantize refuses naming it.
#[test]
fn unknown_int8_scale_is_not_an_fp8_scale() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("b");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(
        case("ct_int8_channel").join("model.safetensors"),
        d.join("model.safetensors"),
    )
    .unwrap();
    let inspect = run_ok(["inspect", s(&d)]);
    assert!(inspect.contains("does not read"), "{inspect}");
    let out = dir.path().join("out");
    let line = refused(["dequantize", s(&d), "--out", s(&out)], &out);
    assert!(!line.contains("FP8"), "{line}");
    assert_mentions(&line, &["weight_scale", "does not read"]);
}

/// F3: vLLM's supported modules on a quantized base are its Linear modules under their logical
/// names (GPTQ/AWQ `qweight`, compressed-tensors `weight_packed`). Before: FAILS
/// (vllm.unsupported_module) for every module.
#[test]
fn check_vllm_knows_quantized_linears() {
    for base in [
        "quant/gptq4_v1",
        "quant/awq4",
        "quant/ct_pack",
        "review16/quant/ct_actorder",
    ] {
        let adapter = match base {
            "review16/quant/ct_actorder" => fixture(ADAPTER),
            _ => fixture("llama/adapters/qv_r8"),
        };
        let out = run_ok([
            "check",
            s(&adapter),
            "--base",
            s(&fixture(base)),
            "--target",
            "vllm",
        ]);
        assert!(
            out.lines()
                .any(|l| l.starts_with("vllm") && l.contains("LOADS")),
            "{base}: {out}"
        );
        assert!(!out.contains("unsupported_module"), "{base}: {out}");
    }
}

/// F9: PEFT 0.21.2 raises building DoRA or VeLoRA on GPTQ/AWQ layers and VeLoRA on
/// bitsandbytes layers (gptq.py:39-42, awq.py:36-39, bnb.py:58-59/336-337); DoRA on NF4 loads.
#[test]
fn check_peft_refuses_variants_quantized_layers_refuse() {
    for (adapter, base, verdict) in [
        ("dora", "gptq4_v1", "FAILS"),
        ("dora", "awq4", "FAILS"),
        ("init_velora", "gptq4_v1", "FAILS"),
        ("init_velora", "nf4", "FAILS"),
        ("dora", "nf4", "LOADS"),
    ] {
        let o = bin()
            .args([
                "check",
                s(&fixture(&format!("llama/adapters/{adapter}"))),
                "--base",
                s(&fixture(&format!("quant/{base}"))),
                "--target",
                "peft",
            ])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let line = out.lines().find(|l| l.starts_with("peft")).unwrap_or("");
        assert!(line.contains(verdict), "{adapter} on {base}: {out}");
        assert_eq!(
            out.contains("peft.quant_layer_variant"),
            verdict == "FAILS",
            "{adapter} on {base}: {out}"
        );
    }
}
