//! Merges into K-quant GGUF bases: `keep` stores each merged tensor in its base type with ggml's
//! reference quantizer (`quantize_row_q*_K_ref`, which lorakit matches byte for byte, see
//! `io::gguf::tests::k_quantization_equals_ggml_reference_byte_for_byte`), and the report
//! states the quantization error against the f32 merge.

use super::*;
use lorakit::io::gguf::quant;
use lorakit::io::gguf::writer::{header, kv_string, OutTensor};

/// `(module, GGUF tensor, type)`: one adapted tensor per K-quant type, plus an untouched one.
const TENSORS: [(&str, &str, GgmlType); 6] = [
    ("self_attn.v_proj", "blk.0.attn_v.weight", GgmlType::Q2_K),
    (
        "self_attn.o_proj",
        "blk.0.attn_output.weight",
        GgmlType::Q3_K,
    ),
    ("mlp.gate_proj", "blk.0.ffn_gate.weight", GgmlType::Q4_K),
    ("mlp.up_proj", "blk.0.ffn_up.weight", GgmlType::Q5_K),
    ("mlp.down_proj", "blk.0.ffn_down.weight", GgmlType::Q6_K),
    ("", "blk.1.attn_v.weight", GgmlType::Q4_K),
];

/// A llama-architecture GGUF whose tensors are `[512, 2]` (two rows of two super-blocks) in the
/// types of [`TENSORS`], their bytes ggml's own quantization of normal noise (super-blocks
/// 45…48 of each `q.TYPE` in fixtures/gguf/kquant.gguf, made by `quantize_row_q*_K_ref`).
fn k_base(path: &Path) {
    let src = GgufModel::open(fixture("gguf/kquant.gguf")).unwrap();
    let infos: Vec<OutTensor> = TENSORS
        .iter()
        .map(|(_, name, ty)| OutTensor {
            name: (*name).into(),
            dims: vec![512, 2],
            ty: *ty,
        })
        .collect();
    let mut bytes = header(&[kv_string("general.architecture", "llama")], &infos, 32);
    for (_, _, ty) in TENSORS {
        let (f, t) = src.get(&format!("q.{}", ty.name().to_lowercase())).unwrap();
        let ts = ty.type_size();
        bytes.extend_from_slice(&f.view(t).data[45 * ts..49 * ts]);
        bytes.resize(bytes.len().div_ceil(32) * 32, 0);
    }
    std::fs::write(path, bytes).unwrap();
}

/// A rank-2 PEFT adapter (alpha 4) on the five modules of [`TENSORS`]: `B` is `[2, 2]`, `A` is
/// `[2, 512]`, values a fixed pseudo-random pattern of magnitude ~0.05.
fn k_adapter(dir: &Path) -> BTreeMap<String, Vec<f64>> {
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut tensors = Vec::new();
    let mut deltas = BTreeMap::new();
    for (k, (module, gguf, _)) in TENSORS.iter().enumerate().take(5) {
        let val = |i: usize, salt: usize| {
            let h = (i * 2654435761 + salt * 40503 + k * 97) % 1000;
            (h as f32 / 1000.0 - 0.5) * 0.1
        };
        let a: Vec<f32> = (0..2 * 512).map(|i| val(i, 1)).collect();
        let b: Vec<f32> = (0..4).map(|i| val(i, 2) * 10.0).collect();
        let p = format!("base_model.model.model.layers.0.{module}");
        tensors.push((format!("{p}.lora_A.weight"), vec![2, 512], le(&a)));
        tensors.push((format!("{p}.lora_B.weight"), vec![2, 2], le(&b)));
        // ΔW = alpha / r · B·A in float64, [out = 2, in = 512] row-major.
        let d: Vec<f64> = (0..2 * 512)
            .map(|i| {
                let (o, c) = (i / 512, i % 512);
                2.0 * (0..2)
                    .map(|r| f64::from(b[o * 2 + r]) * f64::from(a[r * 512 + c]))
                    .sum::<f64>()
            })
            .collect();
        deltas.insert((*gguf).to_owned(), d);
    }
    write_peft_adapter(
        dir,
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}"#,
        &tensors,
    );
    deltas
}

/// `keep` into Q2_K…Q6_K: each merged tensor keeps its type and its bytes are exactly ggml's
/// reference quantization of lorakit's f32 merge (which equals `W0 + ΔW` computed in float64
/// here, 1e-6); the reported errors are those of the stored tensor against that f32 merge; the
/// untouched tensor is a byte copy.
#[test]
fn keep_requantizes_k_quant_tensors_with_ggml_reference_quantizers() {
    let (dir, base) = scratch("k.gguf");
    k_base(&base);
    let ad = dir.path().join("ad");
    let deltas = k_adapter(&ad);
    let (f32_out, keep_out) = (dir.path().join("f32.gguf"), dir.path().join("keep.gguf"));
    let (b, a) = (s(&base), s(&ad));
    merge_json(b, a, &f32_out, &["--outtype", "f32"]);
    let v = merge_json(b, a, &keep_out, &[]);
    let (bm, fm, km) = (
        GgufModel::open(&base).unwrap(),
        GgufModel::open(&f32_out).unwrap(),
        GgufModel::open(&keep_out).unwrap(),
    );
    let report = v["merged_tensors"].as_array().unwrap();
    assert_eq!(report.len(), 5);
    for (_, name, ty) in TENSORS {
        let (bf, bt) = bm.get(name).unwrap();
        let (kf, kt) = km.get(name).unwrap();
        assert_eq!(kt.ty, ty, "{name}");
        let Some(delta) = deltas.get(name) else {
            assert_eq!(
                kf.view(kt).data,
                bf.view(bt).data,
                "{name}: not a byte copy"
            );
            continue;
        };
        let w0 = bf.dequantize(bt).unwrap();
        let (ff, ft) = fm.get(name).unwrap();
        let merged = ff.dequantize(ft).unwrap();
        let want: Vec<f32> = w0
            .iter()
            .zip(delta)
            .map(|(w, d)| (f64::from(*w) + d) as f32)
            .collect();
        assert!(rel_err(&merged, &want) <= 1e-6, "{name}");
        let stored = kf.view(kt).data;
        assert_eq!(
            stored,
            quant::quantize_par(ty, &merged).unwrap().as_slice(),
            "{name}: keep is not the reference quantization of the f32 merge"
        );
        assert_ne!(
            stored,
            bf.view(bt).data,
            "{name}: the merge changed nothing"
        );
        let back = kf.dequantize(kt).unwrap();
        let num: f64 = back
            .iter()
            .zip(&merged)
            .map(|(q, m)| (f64::from(*q) - f64::from(*m)).powi(2))
            .sum();
        let den: f64 = merged.iter().map(|m| f64::from(*m).powi(2)).sum();
        let max = back
            .iter()
            .zip(&merged)
            .map(|(q, m)| (f64::from(*q) - f64::from(*m)).abs())
            .fold(0f64, f64::max);
        let r = report.iter().find(|r| r["name"] == name).unwrap();
        assert_eq!(r["type"], ty.name(), "{name}");
        assert_eq!(r["base_type"], ty.name(), "{name}");
        let rel = r["quant_rel_fro_error"].as_f64().unwrap();
        assert!(
            rel > 0.0 && (rel - (num / den).sqrt()).abs() <= 1e-9 * rel,
            "{name}: reported {rel}, measured {}",
            (num / den).sqrt()
        );
        let rmax = r["quant_max_abs_error"].as_f64().unwrap();
        assert!((rmax - max).abs() <= 1e-9 * max, "{name}: {rmax} vs {max}");
    }
}

/// `--outtype q4_k` onto the fixture Llama, whose rows are 64 values: every merged tensor takes
/// llama-quantize's fallback (`tensor_type_fallback`, src/llama-quant.cpp: Q4_K → Q5_0), is
/// reported with the type it replaced, and holds the same bytes as `--outtype q5_0`.
#[test]
fn k_quant_outtype_on_short_rows_takes_llama_quantize_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("llama/adapters/qv_r8");
    let run = |t: &str| {
        let out = dir.path().join(format!("{t}.gguf"));
        let v = merge_json(g("llama_f32.gguf"), s(&adapter), &out, &["--outtype", t]);
        (out, v)
    };
    let ((a, va), (b, vb)) = (run("q4_k"), run("q5_0"));
    let merged = va["merged_tensors"].as_array().unwrap();
    assert_eq!(merged.len(), 4);
    for (x, y) in merged.iter().zip(vb["merged_tensors"].as_array().unwrap()) {
        assert_eq!(
            (&x["type"], &x["fallback_from"]),
            (&"Q5_0".into(), &"Q4_K".into())
        );
        assert!(y.get("fallback_from").is_none());
    }
    let (ma, mb) = (GgufModel::open(&a).unwrap(), GgufModel::open(&b).unwrap());
    assert_eq!(ma.len(), mb.len());
    for ((fa, ta), (fb, tb)) in ma.tensors().zip(mb.tensors()) {
        assert_eq!((&ta.name, ta.ty), (&tb.name, tb.ty));
        assert!(fa.view(ta).data == fb.view(tb).data, "{}", ta.name);
    }
}
