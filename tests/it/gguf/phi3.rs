//! Phi-3 / Phi-3.5 / Phi-4 (`Phi3ForCausalLM`, GGUF architecture `phi3`) against llama.cpp's own
//! converters, whose outputs fixtures/gen/gguf_phi3.py committed under fixtures/gguf/llamacpp/
//! (llama.cpp as vendored by llama-cpp-python 0.3.36): `convert --to gguf` against
//! `convert_lora_to_gguf.py`, `merge --base X.gguf` (F32 and Q8_0 `keep`) against
//! `convert_hf_to_gguf.py` of PEFT's merge_and_unload, and the refusal of a Phi-3 GGUF model
//! output from Hugging Face weights, which lorakit does not write.
//!
//! Phi-3 stores q/k/v fused as `self_attn.qkv_proj` (GGUF `attn_qkv`) and gate/up fused as
//! `mlp.gate_up_proj` (GGUF `ffn_up`); llama.cpp's converters write both whole, unpermuted.

use super::arch::{adapter_deltas, compare_with_llama_cpp, relabelled_merge_error};
use super::variants::{gguf_python, requantized_by_gguf_py, tensors};
use super::*;

/// The 8 weights every fixture adapter targets (qkv_proj, o_proj, gate_up_proj, down_proj of
/// the two layers), as GGUF names.
const TARGETS: [&str; 8] = [
    "blk.0.attn_output.weight",
    "blk.0.attn_qkv.weight",
    "blk.0.ffn_down.weight",
    "blk.0.ffn_up.weight",
    "blk.1.attn_output.weight",
    "blk.1.attn_qkv.weight",
    "blk.1.ffn_down.weight",
    "blk.1.ffn_up.weight",
];

fn llamacpp(name: &str) -> PathBuf {
    fixture(&format!("gguf/llamacpp/{name}"))
}

/// PEFT's ΔW of adapter `case` per Hugging Face weight name: the converter's f32 GGUF of PEFT's
/// merge_and_unload minus the converter's f32 GGUF of the base (no permutation in `phi3`).
fn peft_deltas(case: &str) -> BTreeMap<String, Vec<f32>> {
    let merged = tensors(&llamacpp(&format!("hf_phi3_{case}.f32.gguf")));
    let base = tensors(&llamacpp("hf_phi3_base.f32.gguf"));
    TARGETS
        .iter()
        .map(|g| {
            let d = merged[*g].2.iter().zip(&base[*g].2).map(|(m, b)| m - b);
            (names::hf_name_in("phi3", g).unwrap(), d.collect())
        })
        .collect()
}

/// `convert --to gguf --base HF_FOLDER` of the Phi-3 adapters against `convert_lora_to_gguf.py`:
/// - `lora` (one alpha; qkv_proj, o_proj, gate_up_proj, down_proj): the 16 tensors
///   (`blk.N.attn_qkv.weight.lora_a`, …, `ffn_up` for gate_up_proj; ggml dims; F32) bit for bit
///   and every metadata key llama.cpp writes (`general.architecture = phi3`, `adapter.*`) equal,
///   bar the descriptive `general.name`/`general.quantization_version`; nothing permuted.
/// - `patterns` (rank_pattern r 2 on layer 0's qkv_proj, alpha_pattern 5 on layer 1's down_proj):
///   the same names, types and dims; every pair byte-equal but layer 1's down_proj B, where
///   lorakit folds PEFT's scale (5/4) into B against the file's alpha/r (8/4): `folded` 5/8 on
///   that module alone (the rank pattern needs no fold: llama.cpp scales by alpha / each tensor's
///   rank, 8/2 as PEFT). Applied as llama.cpp applies them, lorakit's pairs give PEFT's ΔW
///   (converter's GGUF of PEFT's merge minus the base's) within 1e-6 on all 8 weights;
///   llama.cpp's own pairs miss down_proj by exactly 8/5 and no other.
#[test]
fn phi3_convert_to_gguf_equals_llama_cpp_converter() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("gguf/hf_phi3");
    for (case, folded) in [("lora", 0), ("patterns", 1)] {
        let out = dir.path().join(format!("{case}.gguf"));
        let v = to_gguf(&base.join(case), &base, &out);
        assert_eq!(v["architecture"], "phi3");
        assert_eq!(v["folded_count"], folded, "{case}");
        let lc = GgufModel::open(llamacpp(&format!("phi3_{case}.gguf"))).unwrap();
        let lk = GgufModel::open(&out).unwrap();
        assert_eq!(lc.header().architecture(), Some("phi3"));
        let names = compare_with_llama_cpp(case, &lc, &lk, case == "lora");
        assert_eq!(names.len(), 16, "{case}");
        assert!(names.contains(&"blk.1.attn_qkv.weight.lora_b".to_owned()));
        if case == "lora" {
            continue;
        }
        let mut differ = Vec::new();
        for name in &names {
            let ((fc, tc), (fk, tk)) = (lc.get(name).unwrap(), lk.get(name).unwrap());
            if fc.view(tc).data != fk.view(tk).data {
                differ.push(name.as_str());
            }
        }
        assert_eq!(differ, ["blk.1.ffn_down.weight.lora_b"]);
        let (ours, theirs) = (
            adapter_deltas(&out, "phi3"),
            adapter_deltas(&lc_path(case), "phi3"),
        );
        let want = peft_deltas(case);
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (hf, w) in &want {
            let e = rel_err(&ours[hf], w);
            assert!(e <= 1e-6, "{case} {hf}: lorakit {e:e}");
            let e = rel_err(&theirs[hf], w);
            if hf == "model.layers.1.mlp.down_proj.weight" {
                let scaled: Vec<f32> = theirs[hf].iter().map(|x| x * 5.0 / 8.0).collect();
                assert!(rel_err(&scaled, w) <= 1e-6, "{case} {hf}");
                assert!(e > 0.3, "{case} {hf}: llama.cpp {e:e}");
            } else {
                assert!(e <= 1e-6, "{case} {hf}: llama.cpp {e:e}");
            }
        }
    }
}

fn lc_path(case: &str) -> PathBuf {
    llamacpp(&format!("phi3_{case}.gguf"))
}

/// `merge --base X.gguf` into llama.cpp's F32 conversion of the fixture Phi-3 (fused
/// `attn_qkv`/`ffn_up`, untied `output`), with each PEFT adapter and with llama.cpp's own GGUF
/// of the one-alpha adapter, against the converter's F32 GGUF of PEFT's merge_and_unload: the
/// same tensors in the same order, names, dims and types; the 8 merged weights (exactly
/// [`TARGETS`]) within 1e-6 relative per tensor (two f32 merges); every other tensor byte for
/// byte. The GGUF adapter (alpha and factors from llama.cpp's converter) gives the PEFT
/// folder's merge byte for byte.
#[test]
fn phi3_f32_gguf_merges_equal_converter_of_peft_merge() {
    let dir = tempfile::tempdir().unwrap();
    let base = llamacpp("hf_phi3_base.f32.gguf");
    for (case, adapter) in [
        ("lora", fixture("gguf/hf_phi3/lora")),
        ("patterns", fixture("gguf/hf_phi3/patterns")),
        ("lora", lc_path("lora")),
    ] {
        let out = dir.path().join(format!("{case}.gguf"));
        let v = merge_json(&base, &adapter, &out, &[]);
        assert_eq!(v["architecture"], "phi3");
        assert_eq!(v["unmatched"].as_array().unwrap().len(), 0, "{case}");
        let mut merged = field_strs(&v["merged_tensors"], "name");
        merged.sort_unstable();
        assert_eq!(merged, TARGETS, "{case}");
        let reference = llamacpp(&format!("hf_phi3_{case}.f32.gguf"));
        let (ours, theirs) = (
            GgufModel::open(&out).unwrap(),
            GgufModel::open(&reference).unwrap(),
        );
        let (to, tt): (Vec<_>, Vec<_>) = (ours.tensors().collect(), theirs.tensors().collect());
        assert_eq!(to.len(), 15, "{case}");
        assert_eq!(to.len(), tt.len(), "{case}");
        for ((fo, a), (ft, b)) in to.iter().zip(&tt) {
            assert_eq!((&a.name, &a.dims, a.ty), (&b.name, &b.dims, b.ty), "{case}");
            if merged.contains(&a.name.as_str()) {
                let e = rel_err(&fo.dequantize(a).unwrap(), &ft.dequantize(b).unwrap());
                assert!(e <= 1e-6, "{case} {}: {e:e}", a.name);
            } else {
                assert!(fo.view(a).data == ft.view(b).data, "{case} {}", a.name);
            }
        }
    }
    let (folder, gguf) = (
        dir.path().join("lora.gguf"),
        dir.path().join("from_gguf.gguf"),
    );
    merge_json(&base, fixture("gguf/hf_phi3/lora"), &folder, &[]);
    merge_json(&base, lc_path("lora"), &gguf, &[]);
    let (a, b) = (tensors(&folder), tensors(&gguf));
    for (name, t) in &a {
        assert!(t.3 == b[name].3, "{name}: GGUF adapter merge differs");
    }
}

/// Into llama.cpp's Q8_0 conversion of the fixture Phi-3, `keep` requantizes the 8 merged
/// weights to Q8_0 as gguf-py's `quants.quantize` of lorakit's own f32 merge (`--outtype f32`)
/// does, byte for byte (fixtures/gen/check_gguf_requant.py; skipped loudly without Python,
/// [`gguf_python`]); each stays within one Q8_0 step (block amax / 127) of the converter's F32
/// GGUF of PEFT's merge; every other tensor (Q8_0 embeddings and output, F32 norms) is a byte
/// copy of the base and keeps its type.
#[test]
fn phi3_q8_0_keep_is_gguf_py_quantize_of_the_f32_merge() {
    let dir = tempfile::tempdir().unwrap();
    let py = gguf_python();
    let base = llamacpp("hf_phi3_base.q8_0.gguf");
    for case in ["lora", "patterns"] {
        let adapter = fixture(&format!("gguf/hf_phi3/{case}"));
        let (f32_out, keep_out) = (
            dir.path().join(format!("{case}.f32.gguf")),
            dir.path().join(format!("{case}.keep.gguf")),
        );
        merge_json(&base, &adapter, &f32_out, &["--outtype", "f32"]);
        let v = merge_json(&base, &adapter, &keep_out, &[]);
        let mut merged = field_strs(&v["merged_tensors"], "name");
        merged.sort_unstable();
        assert_eq!(merged, TARGETS, "{case}");
        let (got, qbase) = (tensors(&keep_out), tensors(&base));
        let peft = tensors(&llamacpp(&format!("hf_phi3_{case}.f32.gguf")));
        for (name, (ty, _, vals, bytes)) in &got {
            assert_eq!(*ty, qbase[name].0, "{case} {name}: type kept");
            if !merged.contains(&name.as_str()) {
                assert!(bytes == &qbase[name].3, "{case} {name}: not a byte copy");
                continue;
            }
            assert_eq!(*ty, GgmlType::Q8_0, "{case} {name}");
            for (i, (x, y)) in vals.chunks(32).zip(peft[name].2.chunks(32)).enumerate() {
                let step = x.iter().chain(y).fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                for (a, b) in x.iter().zip(y) {
                    assert!((a - b).abs() <= step, "{case} {name} block {i}: {a} vs {b}");
                }
            }
        }
        let Some(py) = &py else { continue };
        assert_eq!(
            requantized_by_gguf_py(py, &f32_out, &keep_out, case),
            TARGETS,
            "{case}"
        );
    }
}

/// `merge --base HF_FOLDER --out x.gguf` of a `Phi3ForCausalLM` folder (the fixture Qwen3's
/// weights under a Phi-3 config.json: the refusal comes from config.json, before any weight is
/// read) is refused in one line naming config.json and what llama.cpp's `Phi3MiniModel` writes
/// that lorakit does not, and nothing is written.
#[test]
fn phi3_hf_to_gguf_is_refused_naming_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let line = relabelled_merge_error(dir.path(), "phi", "Phi3ForCausalLM");
    assert_mentions(
        &line,
        &[
            "phi/config.json",
            "architecture `Phi3ForCausalLM`: no GGUF model output from Hugging Face weights",
            "rope_factors_long/short",
            "--base MODEL.gguf",
        ],
    );
    assert_eq!(listing(dir.path()), ["phi"]);
}

/// `check --target llama.cpp --base HF_FOLDER` on the Phi-3 adapters agrees with what llama.cpp's
/// converter was measured to do above: the one-alpha LoRA loads and every module is applied
/// (exit 0); with patterns, only layer 1's down_proj (alpha_pattern) is flagged
/// `llama.cpp.scale` — the rank_pattern module is not, as llama.cpp scales by alpha / each
/// tensor's rank — (exit 1). The base folder holds the fixture Phi-3's weights under their Hugging
/// Face names (read back from llama.cpp's F32 GGUF through the `phi3` table), so every module
/// lands on its exact tensor; `convert --to gguf` onto that folder (which decides tied-ness from
/// the weights: `lm_head.weight` present) writes the same tensors, bytes and metadata (bar
/// lorakit's provenance, which names the base) as onto config.json alone.
#[test]
fn phi3_check_llama_cpp_verdicts_agree_with_the_converter() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("hf_phi3");
    std::fs::create_dir(&base).unwrap();
    std::fs::copy(
        fixture("gguf/hf_phi3/config.json"),
        base.join("config.json"),
    )
    .unwrap();
    let weights: TensorMap = tensors(&llamacpp("hf_phi3_base.f32.gguf"))
        .into_iter()
        .map(|(g, (ty, dims, vals, _))| {
            assert_eq!(ty, GgmlType::F32, "{g}");
            let t = T {
                dtype: safetensors::Dtype::F32,
                shape: dims.iter().rev().map(|&d| d as usize).collect(),
                data: vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            (names::hf_name_in("phi3", &g).unwrap(), t)
        })
        .collect();
    assert!(weights.contains_key("model.layers.1.mlp.gate_up_proj.weight"));
    write_tensors(&base.join("model.safetensors"), &weights);
    for (case, code, flagged) in [
        ("lora", 0, &[][..]),
        ("patterns", 1, &["model.layers.1.mlp.down_proj"][..]),
    ] {
        let adapter = fixture(&format!("gguf/hf_phi3/{case}"));
        let o = bin()
            .args(check_args(
                &adapter,
                &["--base", s(&base), "--target", "llama.cpp", "--json"],
            ))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(code), "{case}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let modules = v["modules"].as_array().unwrap();
        assert_eq!(modules.len(), 8, "{case}");
        let mut got = Vec::new();
        for m in modules {
            assert_eq!(m["status"], "exact", "{case} {m}");
            match m["not_applied_by"].as_array().unwrap().as_slice() {
                [] => {}
                [x] if x == "llama.cpp: llama.cpp.scale" => got.push(m["module"].as_str().unwrap()),
                other => panic!("{case} {m}: {other:?}"),
            }
        }
        assert_eq!(got, flagged, "{case}");
        let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
        to_gguf(&adapter, &base, &a);
        to_gguf(&adapter, &fixture("gguf/hf_phi3"), &b);
        let (ma, mb) = (GgufModel::open(&a).unwrap(), GgufModel::open(&b).unwrap());
        let kv = |m: &GgufModel| -> Vec<(String, Vec<u8>)> {
            metadata(m)
                .into_iter()
                .filter(|(k, _)| !k.starts_with("lorakit."))
                .collect()
        };
        assert_eq!(kv(&ma), kv(&mb), "{case}");
        let (ta, tb) = (tensors(&a), tensors(&b));
        assert_eq!(ta.len(), 16, "{case}");
        for (name, t) in &ta {
            assert!(t.3 == tb[name].3, "{case} {name}");
        }
        drop((ma, mb));
        std::fs::remove_file(&a).unwrap();
        std::fs::remove_file(&b).unwrap();
    }
}
