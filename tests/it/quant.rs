//! Quantized bases (issue #18) against the producing libraries' own outputs
//! (`fixtures/quant/`, made by `fixtures/gen/quant_fixtures.py`: bitsandbytes 0.50.2 and
//! transformers 5.24 on CPU): `dequantize` bit for bit, `merge` into a quantized base, the
//! QLoRA-correct `merge --as-trained-on`, `inspect`, and malformed quantized files.

use super::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `fp8_e5m2` is built to transformers' FP8 rule with E5M2 values (no producer writes them) and
/// dequantized by transformers' own `Fp8Dequantize` (`fixtures/gen/fp8_e5m2_fixture.py`);
/// `comfy_fp8` is ComfyUI's legacy scaled FP8 (`scale_weight`, `scaled_fp8` marker), built and
/// dequantized to ComfyUI's `comfy/quant_ops.py` (`fixtures/gen/comfy_fp8_fixture.py`).
const MODELS: [&str; 11] = [
    "nf4",
    "nf4_dq",
    "fp4",
    "nf4_bf16",
    "int8",
    "fp8_block",
    "fp8_e5m2",
    "ct_pack",
    "comfy_fp8",
    // compressed-tensors block FP8: one scale per weight smaller than a 128x128 block, and
    // partial 40x40 tiles (fixtures/gen/ct_block_fixtures.py).
    "ct_block128",
    "ct_block40",
];

/// `fixtures/quant/REL`.
pub(super) fn quant(rel: &str) -> PathBuf {
    fixture(&format!("quant/{rel}"))
}

/// The tensors of `fixtures/quant/<file>` whose names start with `prefix`, the prefix dropped.
pub(super) fn prefixed(file: &str, prefix: &str) -> BTreeMap<String, T> {
    read(&quant(file))
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_owned(), v)))
        .collect()
}

/// `dequantize` of `fixtures/quant/<model>` into `out` gives the 14 weights of `refs` (see
/// [`prefixed`]) byte for byte, under exactly the float llama base's tensor names, and a
/// config.json without `quantization_config`; returns the output's tensors and the reference's.
pub(super) fn assert_dequantized_as(
    model: &str,
    out: &Path,
    refs: &str,
    prefix: &str,
) -> (BTreeMap<String, T>, BTreeMap<String, T>) {
    let text = run_ok(dequantize_args(&quant(model), out, &[]));
    assert!(text.contains("dequantized 14 weights"), "{model}: {text}");
    let got = read_checkpoint(out);
    let base = read_checkpoint(&fixture("llama/base"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>(),
        "{model}: companions dropped, weights under their own names"
    );
    let want = prefixed(refs, prefix);
    assert_eq!(want.len(), 14, "{model}");
    for (name, w) in &want {
        assert_eq!(&got[name], w, "{model} {name}: not bit-exact");
    }
    let cfg: serde_json::Value = read_json(out.join("config.json"));
    assert!(cfg.get("quantization_config").is_none(), "{model}");
    (got, want)
}

/// The float tensors of the base the quantized fixtures were made from.
fn base_of(model: &str) -> PathBuf {
    fixture(if model == "nf4_bf16" {
        "llama/base_bf16"
    } else {
        "llama/base"
    })
}

#[test]
fn dequantize_equals_each_library_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    for model in MODELS {
        let out = dir.path().join(model);
        let text = run_ok(dequantize_args(&quant(model), &out, &[]));
        assert!(text.contains("dequantized 14 weights"), "{model}: {text}");
        let got = read_checkpoint(&out);
        let input = read_checkpoint(&quant(model));
        let base = read_checkpoint(&base_of(model));
        // Exactly the base model's tensor names: companions dropped, nothing added.
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            base.keys().collect::<Vec<_>>(),
            "{model}"
        );
        for (name, t) in &got {
            assert_eq!(t.shape, base[name].shape, "{model} {name}");
            if let Some(orig) = input.get(name).filter(|_| !name.ends_with("_proj.weight")) {
                // Tensors that were never quantized: byte for byte.
                assert_eq!(t, orig, "{model} {name}");
            }
        }
        for (name, want) in read(&quant(&format!("ref/{model}.safetensors"))) {
            if name.contains('@') {
                continue;
            }
            assert_eq!(got[&name].dtype, want.dtype, "{model} {name}");
            assert!(
                got[&name].data == want.data,
                "{model} {name}: not bit-exact"
            );
        }
        let cfg: serde_json::Value = read_json(out.join("config.json"));
        assert!(cfg.get("quantization_config").is_none(), "{model}");
        assert_eq!(cfg["model_type"], "llama");
    }
}

/// To bf16, each producer's own dequantization into bf16: transformers' (`fp8_block`, three
/// weights recorded) and ComfyUI's `qdata.to(bfloat16) * scale` (`comfy_fp8`, all 14).
#[test]
fn dequantize_fp8_to_bf16_equals_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for (model, count) in [("fp8_block", 3), ("comfy_fp8", 14)] {
        let out = dir.path().join(model);
        run_ok(dequantize_args(
            &quant(model),
            &out,
            &["--dtype", "bf16", "--quiet"],
        ));
        let got = read_checkpoint(&out);
        let mut n = 0;
        for (name, want) in read(&quant(&format!("ref/{model}.safetensors"))) {
            if let Some(w) = name.strip_suffix("@bf16") {
                assert_eq!(got[w].dtype, safetensors::Dtype::BF16);
                assert!(got[w].data == want.data, "{model} {w}");
                n += 1;
            }
        }
        assert_eq!(n, count, "{model}");
    }
}

#[test]
fn inspect_reports_quantization_per_tensor_and_the_config() {
    let v = inspect_json(&quant("nf4_dq"), &[]);
    let q = &v["quantization"];
    assert_eq!(q["config"]["bnb_4bit_use_double_quant"], true);
    assert_eq!(q["tensors"].as_array().unwrap().len(), 14);
    let t = &q["tensors"][0];
    assert_eq!(t["name"], "model.layers.0.mlp.down_proj.weight");
    assert_eq!(t["method"], "bnb-nf4");
    assert_eq!(t["bits"], 4);
    assert_eq!(t["blocks"], "blocksize 64, double-quant 256");
    assert_eq!(t["shape"], serde_json::json!([64, 128]));
    let text = run_ok(inspect_args(&quant("fp8_block"), &[]));
    assert_mentions(&text, &["fp8-e4m3", "32x32 blocks"]);
    let text = run_ok(inspect_args(&quant("int8"), &[]));
    assert_mentions(&text, &["bnb-int8", "per row"]);
    // A float checkpoint has no quantization section (and its JSON no key).
    let v = inspect_json(&fixture("llama/base"), &[]);
    assert!(v.get("quantization").is_none());
}

/// ‖a − b‖_F / ‖b‖_F over the tensors of `want`.
fn rel_to(got: &BTreeMap<String, T>, want: &BTreeMap<String, T>) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (n, w) in want {
        for (a, b) in got[n].f32().iter().zip(w.f32()) {
            num += ((a - b) as f64).powi(2);
            den += (b as f64).powi(2);
        }
    }
    (num / den).sqrt()
}

/// `qv_r8` merged into the float llama base `--as-trained-on ON` is within 1e-6 (relative) of
/// `expected` (the tensors the merge changes, from the Python reference), and a merge with the
/// `other` flags is more than `factor` times further from it. Returns the `--json` report and
/// the tensors of the `--as-trained-on` merge.
fn assert_as_trained_on_beats(
    expected: &BTreeMap<String, T>,
    on: &str,
    other: &[&str],
    factor: f64,
) -> (serde_json::Value, BTreeMap<String, T>) {
    assert_eq!(expected.len(), 4);
    let (dir, out) = scratch("on");
    let json = merge_qv_r8(&out, &["--as-trained-on", on, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(entries(&v["qlora"]).len(), 4, "{v}");
    let got = read_checkpoint(&out);
    let on_err = rel_to(&got, expected);
    assert!(
        on_err < 1e-6,
        "--as-trained-on {on} vs reference: {on_err:e}"
    );
    let other_out = dir.path().join("other");
    merge_qv_r8(&other_out, other);
    let other_err = rel_to(&read_checkpoint(&other_out), expected);
    assert!(
        other_err > factor * on_err.max(1e-9),
        "{other:?} vs reference: {other_err:e}"
    );
    eprintln!("rel. error: --as-trained-on {on} {on_err:e}, {other:?} {other_err:e}");
    (v, got)
}

/// The QLoRA merge reference is PEFT's own view of adapters/qv_r8 on the NF4-quantized base:
/// bitsandbytes' dequantize_4bit of each target + PEFT's get_delta_weight. `--as-trained-on nf4`
/// reproduces it to f32 rounding; a plain merge into W carries the stray term (100 times
/// further).
#[test]
fn merge_as_trained_on_nf4_reproduces_peft_on_the_quantized_base() {
    let expected = read(&quant("qlora/qv_r8_expected.safetensors"));
    let (v, got) = assert_as_trained_on_beats(&expected, "nf4", &[], 100.0);
    for r in entries(&v["qlora"]) {
        assert!(r["stray_norm"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["delta_norm"].as_f64().unwrap() > 0.0, "{r}");
    }
    // Every other tensor is the base's, byte for byte.
    let base = read_checkpoint(&fixture("llama/base"));
    for (n, t) in &got {
        if !expected.contains_key(n) {
            assert_eq!(t, &base[n], "{n}");
        }
    }
}

/// `--as-trained-on nf4,double-quant`: the float base quantized with double quantization as
/// bitsandbytes does on load (nested absmax with `create_dynamic_map`), dequantized, plus the
/// delta; the reference is bitsandbytes' `dequantize_4bit(quantize_4bit(W, compress_statistics=
/// True))` + PEFT's `get_delta_weight` (`fixtures/gen/nf4_dq_fixtures.py`). Without double
/// quantization the absmax differ: measurably (10 times) further from the reference.
#[test]
fn merge_as_trained_on_nf4_double_quant_reproduces_bitsandbytes() {
    let expected = read(&quant("qlora/qv_r8_expected_dq.safetensors"));
    let nf4_alone = ["--as-trained-on", "nf4"];
    assert_as_trained_on_beats(&expected, "nf4,double-quant", &nf4_alone, 10.0);
}

/// Merging into the transformers-saved NF4 checkpoint itself gives the same weights: lorakit's
/// dequantization of bitsandbytes' bytes + the adapter, the untouched weights dequantized.
#[test]
fn merge_into_nf4_base_writes_float_and_matches_peft() {
    let (_dir, out) = scratch("m");
    let text = merge_qv_r8_into(&quant("nf4"), &out, &["--quant", "dequantize"]);
    assert!(text.contains("14 weights dequantized"), "{text}");
    let got = read_checkpoint(&out);
    let expected = read(&quant("qlora/qv_r8_expected.safetensors"));
    let err = rel_to(&got, &expected);
    assert!(err < 1e-6, "{err:e}");
    for (name, want) in read(&quant("ref/nf4.safetensors")) {
        if !expected.contains_key(&name) {
            assert!(got[&name].data == want.data, "{name}");
        }
    }
    assert_eq!(got.len(), 21);
    let cfg: serde_json::Value = read_json(out.join("config.json"));
    assert!(cfg.get("quantization_config").is_none());
}

/// Scales (absmax, weight_scale_inv) are maxima of the merged weight, which lorakit and PEFT
/// compute in f32 with different summation orders of s·B·A: they may differ in the last bits
/// while every quantized code is the same. Checked: codes byte-identical, scales within 2 ulp.
pub(super) fn assert_requantized_like(got: &BTreeMap<String, T>, reference: &Path) -> usize {
    let mut codes = 0;
    for (name, want) in read(reference) {
        let have = &got[&name];
        assert_eq!(
            (have.dtype, &have.shape),
            (want.dtype, &want.shape),
            "{name}"
        );
        let is_scale = name.ends_with(".absmax") || name.ends_with("_scale_inv");
        if is_scale {
            for (a, b) in have.f32().iter().zip(want.f32()) {
                let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
                assert!(ulps <= 2, "{name}: {a} vs {b}");
            }
        } else {
            assert!(have.data == want.data, "{name}: stored bytes differ");
            codes += 1;
        }
    }
    codes
}

/// `--quant keep` (the default): the merged NF4 weights are what PEFT's own merge into the
/// bitsandbytes model writes (dequantize, add, Params4bit quantizes again); untouched tensors,
/// companions and quantization_config are copied.
#[test]
fn merge_into_nf4_keeps_it_nf4_like_peft() {
    let (_dir, out) = scratch("m");
    let text = merge_qv_r8_into(&quant("nf4"), &out, &[]);
    assert!(text.contains("4 merged weights quantized again"), "{text}");
    let got = read_checkpoint(&out);
    // 4 weights + 4 absmax (the code books and quant_state blobs are unchanged, compared too).
    assert_eq!(
        assert_requantized_like(&got, &quant("qlora/peft_merged_nf4.safetensors")),
        12
    );
    let input = read_checkpoint(&quant("nf4"));
    assert_eq!(got.len(), input.len());
    let merged: Vec<&str> = [
        "0.self_attn.q",
        "0.self_attn.v",
        "1.self_attn.q",
        "1.self_attn.v",
    ]
    .to_vec();
    for (n, t) in &input {
        let touched = merged
            .iter()
            .any(|m| n.contains(&format!("layers.{m}_proj.weight")));
        if !touched || n.ends_with("quant_map") || n.contains("quant_state") {
            assert_eq!(&got[n], t, "{n} changed");
        }
    }
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        std::fs::read(quant("nf4/config.json")).unwrap()
    );
}

/// FP8 block-scaled base: merged weights quantized again with fresh 32x32 scales as
/// transformers' Fp8Quantize computes them.
#[test]
fn merge_into_fp8_requantizes_with_fresh_block_scales() {
    let (_dir, out) = scratch("m");
    merge_qv_r8_into(&quant("fp8_block"), &out, &["-q"]);
    let got = read_checkpoint(&out);
    assert_eq!(
        assert_requantized_like(&got, &quant("qlora/fp8_block_requantized.safetensors")),
        4
    );
    let input = read_checkpoint(&quant("fp8_block"));
    for (n, t) in &input {
        if !(n.contains("q_proj") || n.contains("v_proj")) {
            assert_eq!(&got[n], t, "{n} changed");
        }
    }
}

#[test]
fn merge_keep_refuses_what_it_cannot_requantize() {
    let (dir, out) = scratch("o");
    // FP8 E5M2 with block scales: transformers' Fp8Quantize writes E4M3 only, so there is no
    // producer rule to follow (every other fixture format is requantized now: quant_requant.rs,
    // quant_gptq.rs, merge_keep_into_compressed_tensors_is_its_compressors_rounding).
    let model = edited(dir.path(), "fp8_block", |t| {
        let w = t.get_mut("model.layers.0.self_attn.q_proj.weight").unwrap();
        w.dtype = safetensors::Dtype::F8_E5M2;
        // E4M3 bytes read as E5M2 can be infinite: small finite codes instead (E5M2 0x01..0x3f).
        for (i, b) in w.data.iter_mut().enumerate() {
            *b = (i % 64) as u8;
        }
    });
    let e = merge_qv_r8_refused(&model, &out, &[]);
    assert_mentions(
        &e,
        &[
            "model.layers.0.self_attn.q_proj.weight",
            "--quant dequantize",
        ],
    );
    // The float way works.
    merge_qv_r8_into(&model, &out, &["--quant", "dequantize", "-q"]);
}

/// DeepSeek-V3-style `weight_scale_inv` blocks that do not tile the weight (`weight_block_size`
/// 40x40 over fp8_block's 64x64, 32x64, 128x64 and 64x128 weights, whose stored grids are those
/// ceil grids). No producer publishes how it scales a partial block (DeepSeek-V3's
/// inference/kernel.py has only `weight_dequant`; transformers' `Fp8Quantize` leaves such weights
/// in float), so `--quant keep` refuses with that reason and writes nothing; the weights are read
/// (the grid is the dequantizer's), so `--quant dequantize` merges.
#[test]
fn merge_keep_refuses_partial_weight_scale_inv_blocks_with_the_reason() {
    let (dir, out) = scratch("o");
    let model = dir.path().join("fp8_partial");
    copy_dir(&quant("fp8_block"), &model);
    let cfg = model.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["quantization_config"]["weight_block_size"] = serde_json::json!([40, 40]);
    std::fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let e = merge_qv_r8_refused(&model, &out, &[]);
    assert_mentions(
        &e,
        &[
            "_proj.weight",
            "partial 40x40 weight_scale_inv blocks",
            "weight_dequant",
            "--quant dequantize",
        ],
    );
    merge_qv_r8_into(&model, &out, &["--quant", "dequantize", "-q"]);

    // Blocks larger than the weight (one scale each, 128x128 over weights of at most 128x128
    // that are not all 128x128): a partial block as well.
    let one = edited(dir.path(), "fp8_block", |t| {
        for (n, s) in t.iter_mut() {
            if n.ends_with("weight_scale_inv") {
                s.shape = vec![1, 1];
                s.data = 1f32.to_le_bytes().to_vec();
            }
        }
    });
    let cfg = one.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["quantization_config"]["weight_block_size"] = serde_json::json!([128, 128]);
    std::fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let e = merge_qv_r8_refused(&one, &dir.path().join("o2"), &[]);
    assert_mentions(&e, &["partial 128x128 weight_scale_inv blocks"]);
}

#[test]
fn as_trained_on_refusals() {
    let (_dir, out) = scratch("o");
    let adapter = fixture("llama/adapters/qv_r8");
    // A base that is already quantized.
    let e = merge_refused(&quant("nf4"), &adapter, &out, &["--as-trained-on", "nf4"]);
    assert!(e.contains("already quantized"), "{e}");
    let o = run_err(merge_args(
        &fixture("llama/base"),
        &adapter,
        &out,
        &["--as-trained-on", "int3"],
    ));
    assert_eq!(o.status.code(), Some(2));
}

/// `dequantize` of `input` fails with one line naming `model.safetensors`, a tensor and `want`,
/// and writes nothing (`what` names the case).
pub(super) fn dequantize_refuses(dir: &Path, what: &str, input: &Path, want: &str) {
    let out = dir.join("out");
    let e = refused(dequantize_args(input, &out, &[]), &out);
    assert!(e.contains(want), "{what}: {e}");
    assert!(
        e.contains("model.safetensors"),
        "{what}: names no file: {e}"
    );
    assert!(e.contains('`'), "{what}: names no tensor: {e}");
}

/// A copy of a quantized fixture with its tensors edited by `edit`, written with the
/// independent `safetensors` crate; returns the folder.
/// The folder `d`, created, holding the `config.json` of `fixtures/quant/<model>`.
pub(super) fn with_config_of(d: &Path, model: &str) -> PathBuf {
    std::fs::create_dir_all(d).unwrap();
    let config = quant(&format!("{model}/config.json"));
    std::fs::copy(config, d.join("config.json")).unwrap();
    d.to_path_buf()
}

pub(super) fn edited(
    dir: &Path,
    model: &str,
    edit: impl FnOnce(&mut BTreeMap<String, T>),
) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = with_config_of(&dir.join(format!("bad-{n}-{model}")), model);
    let mut tensors = read(&quant(&format!("{model}/model.safetensors")));
    edit(&mut tensors);
    write_tensors(&d.join("model.safetensors"), &tensors);
    d
}

/// A copy of `fixtures/quant/<model>` (see [`edited`]) without the tensor `name`.
pub(super) fn without(dir: &Path, model: &str, name: &str) -> PathBuf {
    edited(dir, model, |t| {
        t.remove(name)
            .unwrap_or_else(|| panic!("{model} has no {name}"));
    })
}

/// A copy of `fixtures/quant/<model>` (see [`edited`]) whose tensor `name` is cut to `shape`:
/// the elements that shape holds, from the first.
pub(super) fn cut_to(dir: &Path, model: &str, name: &str, shape: &[usize]) -> PathBuf {
    edited(dir, model, |t| {
        let x = t.get_mut(name);
        x.unwrap_or_else(|| panic!("{model} has no {name}"))
            .cut_to(shape);
    })
}

/// A copy of `fixtures/quant/<model>` (see [`edited`]) with one more tensor, `name`: zeros of
/// `dtype` and `shape`.
pub(super) fn with_zeros(
    dir: &Path,
    model: &str,
    name: &str,
    dtype: safetensors::Dtype,
    shape: &[usize],
) -> PathBuf {
    let data = vec![0; shape.iter().product::<usize>() * dtype.bitsize() / 8];
    let shape = shape.to_vec();
    edited(dir, model, |t| {
        let old = t.insert(name.into(), T { dtype, shape, data });
        assert!(old.is_none(), "{model} already has {name}");
    })
}

#[test]
fn malformed_quantized_checkpoints_are_one_line_errors_and_write_nothing() {
    use safetensors::Dtype::I32;
    let dir = tempfile::tempdir().unwrap();
    let q = "model.layers.0.self_attn.q_proj";
    let w = "model.layers.0.self_attn.q_proj.weight";
    let state = format!("{w}.quant_state.bitsandbytes__nf4");
    let blob = |t: &mut BTreeMap<String, T>, json: &str| {
        let b = json.as_bytes().to_vec();
        t.insert(
            state.clone(),
            T {
                dtype: safetensors::Dtype::U8,
                shape: vec![b.len()],
                data: b,
            },
        );
    };
    let nf4_state = |json: &str| edited(dir.path(), "nf4", |t| blob(t, json));
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "missing absmax",
            without(dir.path(), "nf4", &format!("{w}.absmax")),
            "without `model.layers.0.self_attn.q_proj.weight.absmax`",
        ),
        (
            "quant_state shape that does not match the packing",
            nf4_state(
                r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [64, 128]}"#,
            ),
            "packs into",
        ),
        (
            "quant_state that lies about the type",
            nf4_state(
                r#"{"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [64, 64]}"#,
            ),
            "stored as bitsandbytes__nf4",
        ),
        (
            "quant_state that is not JSON",
            nf4_state("{not json"),
            "not valid JSON",
        ),
        (
            "blocksize that disagrees with absmax",
            nf4_state(
                r#"{"quant_type": "nf4", "blocksize": 128, "dtype": "float32", "shape": [64, 64]}"#,
            ),
            "needs F32 with 32 elements",
        ),
        (
            "unknown bitsandbytes quantization",
            edited(dir.path(), "nf4", |t| {
                let v = t.remove(&state).unwrap();
                t.insert(format!("{w}.quant_state.bitsandbytes__nf3"), v);
            }),
            "unknown bitsandbytes quant_state `bitsandbytes__nf3`",
        ),
        (
            "a code book that is not NF4",
            edited(dir.path(), "nf4", |t| {
                let m = t.get_mut(&format!("{w}.quant_map")).unwrap();
                m.data[4] ^= 1;
            }),
            "is not bitsandbytes' nf4 code book",
        ),
        (
            "double-quant state without nested_absmax",
            without(dir.path(), "nf4_dq", &format!("{w}.nested_absmax")),
            "nested_absmax",
        ),
        (
            "int8 weight with a short SCB",
            cut_to(
                dir.path(),
                "int8",
                "model.layers.0.self_attn.q_proj.SCB",
                &[10],
            ),
            "one F32 per row",
        ),
        (
            "int8 weight without SCB",
            without(dir.path(), "int8", "model.layers.0.self_attn.q_proj.SCB"),
            "no quantization state",
        ),
        (
            "FP8 weight without its scale",
            without(dir.path(), "fp8_block", &format!("{q}.weight_scale_inv")),
            "without a `model.layers.0.self_attn.q_proj.weight_scale_inv`",
        ),
        (
            "FP8 scale grid that does not tile the weight",
            cut_to(
                dir.path(),
                "fp8_block",
                &format!("{q}.weight_scale_inv"),
                &[1, 4],
            ),
            "does not tile",
        ),
        (
            "compressed-tensors weight without its scale",
            without(dir.path(), "ct_pack", &format!("{q}.weight_scale")),
            "without `model.layers.0.self_attn.q_proj.weight_scale`",
        ),
        (
            "compressed-tensors weight_shape that does not match the packing",
            edited(dir.path(), "ct_pack", |t| {
                let s = t.get_mut(&format!("{q}.weight_shape")).unwrap();
                s.data[8..16].copy_from_slice(&1000i64.to_le_bytes());
            }),
            "do not pack 1000 elements",
        ),
        (
            "compressed-tensors zero point of the wrong shape",
            edited(dir.path(), "ct_pack", |t| {
                let z = t
                    .get_mut("model.layers.0.self_attn.v_proj.weight_zero_point")
                    .unwrap();
                z.shape = vec![z.shape[0] * z.shape[1]];
            }),
            "packed zero point",
        ),
        (
            "GPTQ packed weights",
            with_zeros(
                dir.path(),
                "nf4",
                "model.layers.0.mlp.qweight",
                I32,
                &[2, 2],
            ),
            "GPTQ/AWQ",
        ),
    ];
    for (what, input, want) in cases {
        dequantize_refuses(dir.path(), what, &input, want);
        if want == "GPTQ/AWQ" {
            // Valid, just not read: inspect lists it instead of failing.
            let text = run_ok(inspect_args(&input, &[]));
            assert_mentions(&text, &["not read", "qweight"]);
        } else {
            // inspect refuses a malformed file the same way.
            one_line_error(&run_err(inspect_args(&input, &[])));
        }
    }
    // A float checkpoint has nothing to dequantize.
    let out = dir.path().join("out");
    let e = refused(dequantize_args(&fixture("llama/base"), &out, &[]), &out);
    assert!(e.contains("no quantized weights"), "{e}");
}

/// `extract` against a quantized base takes ΔW against the base's dequantization: a model
/// tuned from the NF4 checkpoint gives back exactly the adapter's modules (the other 10
/// quantized weights are unchanged, not stray differences), and merging the extracted adapter
/// into the dequantized base reproduces the tuned model.
#[test]
fn extract_against_a_quantized_base() {
    let (dir, tuned) = scratch("tuned");
    merge_qv_r8_into(&quant("nf4"), &tuned, &["--quant", "dequantize", "-q"]);
    let adapter = dir.path().join("a");
    // The temporary dequantized base goes to TMPDIR and is removed at exit.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let json = ok_stdout(bin().env("TMPDIR", &tmp).args(extract_args(
        &quant("nf4"),
        &tuned,
        &adapter,
        &["--rank", "8", "--json"],
    )));
    let left = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".lorakit-dequantized-base-")
        })
        .count();
    assert_eq!(left, 0, "temporary base left behind");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let cfg: serde_json::Value = read_json(adapter.join("adapter_config.json"));
    assert_eq!(
        cfg["base_model_name_or_path"],
        quant("nf4").display().to_string(),
        "{v}"
    );
    let tensors = read(&adapter.join("adapter_model.safetensors"));
    assert_eq!(tensors.len(), 8, "{:?}", tensors.keys().collect::<Vec<_>>());
    // Round trip: dequantized base + extracted adapter = tuned.
    let deq = dir.path().join("deq");
    run_ok(dequantize_args(&quant("nf4"), &deq, &["-q"]));
    let back = dir.path().join("back");
    merge_ok(&deq, &adapter, &back, &["-q"]);
    let (got, want) = (read_checkpoint(&back), read_checkpoint(&tuned));
    let err = rel_to(&got, &want);
    assert!(err < 1e-6, "{err:e}");
}

/// A sharded quantized checkpoint whose companions sit in the other shard than their weight:
/// dequantized exactly, the index rewritten without the companions.
#[test]
fn dequantize_sharded_with_companions_across_shards() {
    let (dir, input) = scratch("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::copy(quant("nf4_dq/config.json"), input.join("config.json")).unwrap();
    write_alternate_shards(&read(&quant("nf4_dq/model.safetensors")), &input);
    let out = dir.path().join("out");
    run_ok(dequantize_args(&input, &out, &["-q"]));
    let got = read_checkpoint(&out);
    assert_eq!(got.len(), 21);
    for (name, want) in read(&quant("ref/nf4_dq.safetensors")) {
        assert!(got[&name].data == want.data, "{name}");
    }
    let index: serde_json::Value = read_json(out.join("model.safetensors.index.json"));
    assert_eq!(index["weight_map"].as_object().unwrap().len(), 21);
}

/// compressed-tensors lowercases a config's `type` and `strategy` and still reads
/// `block_structure` as `"MxN"` (`quant_args.py`: `validate_type`, `validate_strategy`,
/// `validate_block_structure`): such a config dequantizes as the canonical one does, and the
/// string form is compared with the stored blocks, not ignored.
#[test]
fn compressed_tensors_config_spellings_it_accepts_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let model = "ct_block128";
    let spelled = |name: &str, block: &str| {
        let d = dir.path().join(name);
        copy_dir(&quant(model), &d);
        let cfg = d.join("config.json");
        let mut v: serde_json::Value = read_json(&cfg);
        let g = &mut v["quantization_config"]["config_groups"]["group_0"];
        g["weights"]["type"] = "FLOAT".into();
        g["weights"]["strategy"] = "Block".into();
        g["weights"]["block_structure"] = block.into();
        g["input_activations"]["type"] = "Float".into();
        g["input_activations"]["strategy"] = "GROUP".into();
        std::fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        d
    };
    let want = dir.path().join("want");
    run_ok(dequantize_args(&quant(model), &want, &[]));
    let input = spelled("spelled", "128x128");
    let got = dir.path().join("got");
    run_ok(dequantize_args(&input, &got, &[]));
    assert_eq!(read_checkpoint(&got), read_checkpoint(&want));
    let input = spelled("wrong_blocks", "64x64");
    let out = dir.path().join("out");
    let e = refused(dequantize_args(&input, &out, &[]), &out);
    assert_mentions(
        &e,
        &[
            "`model.layers.0.mlp.down_proj.weight_scale`",
            "64x64 blocks",
        ],
    );
}
