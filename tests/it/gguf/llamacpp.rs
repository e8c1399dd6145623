//! lorakit against llama.cpp's own outputs, committed under fixtures/gguf/llamacpp/ by
//! fixtures/gen/gguf_llamacpp.py (llama.cpp as vendored by llama-cpp-python 0.3.36), so CI
//! checks them without llama.cpp.

use super::adapter::gguf_adapter_deltas;
use super::*;

/// Metadata llama.cpp's converter copies from the Hugging Face model card and file names
/// (`general.name`, `general.base_model.*`, `general.tags`) and `general.quantization_version`:
/// descriptive, read by no code path of `llama-adapter.cpp` (which reads `general.type`,
/// `general.architecture`, `adapter.type`, `adapter.lora.alpha`); lorakit does not write them.
fn descriptive(key: &str) -> bool {
    key == "general.name"
        || key == "general.quantization_version"
        || key == "general.tags"
        || key.starts_with("general.base_model.")
}

/// `convert --to gguf` equals llama.cpp's `convert_lora_to_gguf.py` tensor for tensor (names,
/// ggml dims, types, and values bit for bit), and metadata key for key apart from the
/// descriptive keys above and lorakit's `lorakit.*` provenance; the one difference in values is
/// B of the modules whose PEFT scale is not `lora_alpha / r` (rsLoRA, `alpha_pattern`), which
/// lorakit multiplies by the `folded` factor its report names and llama.cpp leaves as is.
#[test]
fn convert_to_gguf_equals_llama_cpp_converter_output() {
    for (case, base, folded_count) in [
        ("qv_r8", "llama/base", 0),
        ("rslora_all", "llama/base", 14),
        ("patterns", "llama/base", 3),
        ("embed", "llama/base", 0),
        ("qwen2_lora", "llama/qwen2", 0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.gguf");
        let j = run_ok([
            "convert",
            fixture(&format!("llama/adapters/{case}")).to_str().unwrap(),
            "--to",
            "gguf",
            "--base",
            fixture(base).to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["folded_count"], folded_count, "{case}");
        let folded: BTreeMap<String, f32> = v["modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let t = m["to"].as_str().unwrap().to_owned();
                (t, m["folded"].as_f64().unwrap() as f32)
            })
            .collect();
        let lc = GgufModel::open(fixture(&format!("gguf/llamacpp/{case}.gguf"))).unwrap();
        let lk = GgufModel::open(&out).unwrap();
        let (hc, hk) = (lc.header(), lk.header());
        for kv in &hc.metadata {
            if descriptive(&kv.key) {
                continue;
            }
            assert_eq!(hk.get(&kv.key), Some(&kv.value), "{case}: key {}", kv.key);
        }
        for kv in &hk.metadata {
            assert!(
                kv.key.starts_with("lorakit.") || hc.get(&kv.key).is_some(),
                "{case}: lorakit writes {} that llama.cpp does not",
                kv.key
            );
        }
        let names = |m: &GgufModel| m.tensors().map(|(_, t)| t.name.clone()).collect::<Vec<_>>();
        let (mut nc, mut nk) = (names(&lc), names(&lk));
        nc.sort();
        nk.sort();
        assert_eq!(nc, nk, "{case}");
        for name in &nc {
            let ((fc, tc), (fk, tk)) = (lc.get(name).unwrap(), lk.get(name).unwrap());
            assert_eq!((tc.ty, &tc.dims), (tk.ty, &tk.dims), "{case} {name}");
            let f = match name.strip_suffix(".lora_b") {
                Some(w) => folded[w],
                None => 1.0,
            };
            if f == 1.0 {
                assert_eq!(fc.view(tc).data, fk.view(tk).data, "{case} {name}");
            } else {
                let (c, k) = (fc.dequantize(tc).unwrap(), fk.dequantize(tk).unwrap());
                let want: Vec<f32> = c.iter().map(|x| x * f).collect();
                assert!(rel_err(&k, &want) <= 1e-6, "{case} {name}: folded {f}");
                assert!(rel_err(&k, &c) > 0.1, "{case} {name}");
            }
        }
    }
}

/// Who is right where the two differ: applied as llama.cpp applies an adapter (`alpha / rank ·
/// B·A` per pair, `llama-adapter.cpp`), llama.cpp's own conversion of rsLoRA and `alpha_pattern`
/// modules misses PEFT's ΔW (its merge_and_unload minus the base) by exactly the factor lorakit
/// folds — off by 2× for rsLoRA r=4 (`alpha/√r` vs `alpha/r`), 5/8 and 3/8 for the patterned
/// alphas — while every other module, and lorakit's conversion of all of them
/// (`convert_to_gguf_applies_the_peft_delta_as_llama_cpp_computes_it`), equals PEFT (1e-6).
#[test]
fn llama_cpp_converter_ignores_rslora_and_alpha_pattern() {
    let base = read(&fixture("llama/base/model.safetensors"));
    let mut wrong = Vec::new();
    for case in ["qv_r8", "rslora_all", "patterns", "embed"] {
        let deltas = gguf_adapter_deltas(&fixture(&format!("gguf/llamacpp/{case}.gguf")));
        let reference = read(&fixture(&format!("llama/merged/{case}.safetensors")));
        assert_eq!(
            deltas.keys().collect::<Vec<_>>(),
            reference.keys().collect::<Vec<_>>(),
            "{case}"
        );
        for (name, r) in &reference {
            let want: Vec<f32> = r
                .f32()
                .iter()
                .zip(base[name].f32())
                .map(|(m, b)| m - b)
                .collect();
            if rel_err(&deltas[name], &want) <= 1e-6 {
                continue;
            }
            // Off by one factor: the ratio of the norms, and nothing else.
            let (dn, wn) = (norm(&deltas[name]), norm(&want));
            let ratio = wn / dn;
            let scaled: Vec<f32> = deltas[name].iter().map(|x| x * ratio as f32).collect();
            assert!(rel_err(&scaled, &want) <= 1e-6, "{case} {name}");
            wrong.push((case, name.clone(), (ratio * 1000.0).round() / 1000.0));
        }
    }
    let rs = wrong.iter().filter(|w| w.0 == "rslora_all").count();
    assert_eq!(rs, 14, "{wrong:?}");
    assert!(wrong
        .iter()
        .filter(|w| w.0 == "rslora_all")
        .all(|w| w.2 == 2.0));
    let mut pat: Vec<_> = wrong
        .iter()
        .filter(|w| w.0 == "patterns")
        .map(|w| (w.1.as_str(), w.2))
        .collect();
    pat.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        pat,
        [
            ("model.layers.0.self_attn.o_proj.weight", 0.625),
            ("model.layers.0.self_attn.v_proj.weight", 0.375),
            ("model.layers.1.self_attn.v_proj.weight", 0.375),
        ]
    );
    assert_eq!(wrong.len(), 17, "{wrong:?}");
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}
