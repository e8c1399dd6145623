//! Phi-3 / Phi-3.5 / Phi-4 (`Phi3ForCausalLM`, GGUF architecture `phi3`) against llama.cpp's own
//! converters, whose outputs fixtures/gen/gguf_phi3.py committed under fixtures/gguf/llamacpp/
//! (llama.cpp as vendored by llama-cpp-python 0.3.36): `convert --to gguf` against
//! `convert_lora_to_gguf.py`, `merge --base X.gguf` (F32 and Q8_0 `keep`) against
//! `convert_hf_to_gguf.py` of PEFT's merge_and_unload, and `merge --base HF_FOLDER --out X.gguf`
//! (F32, Q8_0, long-rope scaling) against `convert_hf_to_gguf.py` of PEFT's merge_and_unload.
//!
//! Phi-3 stores q/k/v fused as `self_attn.qkv_proj` (GGUF `attn_qkv`) and gate/up fused as
//! `mlp.gate_up_proj` (GGUF `ffn_up`); llama.cpp's converters write both whole, unpermuted.

use super::arch::{adapter_deltas, compare_with_llama_cpp};
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

/// The fixture Phi-3 as a Hugging Face folder `dir/hf_phi3` (the converter's folder name, which
/// gives `general.name`): fixture config `config` (a file of fixtures/gguf/hf_phi3) as
/// config.json and the weights under their Hugging Face names, read back from llama.cpp's F32
/// GGUF of the base through the `phi3` table (`convert_hf_to_gguf.py --outtype f32` stores them
/// unpermuted, unsplit and unrounded: the same f32 values as the folder the generator saved).
fn hf_phi3_folder(dir: &Path, config: &str) -> PathBuf {
    let base = dir.join("hf_phi3");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::copy(
        fixture(&format!("gguf/hf_phi3/{config}")),
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
    base
}

/// `merge --base HF_FOLDER --adapter lora --out X.gguf` of the fixture Phi-3 (with the
/// SentencePiece tokenizer of fixtures/gguf/hf_spm: 104 pieces padded to config.json's 128,
/// added_tokens.json, added_tokens_decoder with a special and a non-special `<|…|>` token)
/// against `convert_hf_to_gguf.py` of PEFT's merge_and_unload of the same adapter:
/// - `--outtype f32`, default rope (no sliding window: `attention.sliding_window` 0);
/// - `--outtype q8_0`, the same model, and with a tokenizer.json beside the SentencePiece files
///   (fixtures/gguf/hf_phi3/tokenizer: its added tokens override id 103 with a special token,
///   make 101 special and fill padding slot 110 with a non-special `▁user▁`, kept as written),
///   and with Phi-4's kind of vocabulary (tokenizer_config.json's `tokenizer_class`
///   GPT2Tokenizer: the GPT-2 vocabulary of the byte-level BPE fixture tokenizer, its merges);
/// - `--outtype f32` with long-rope scaling (partial rotary factor 0.5: 8 rope dimensions,
///   4 long and 4 short factors, context 256 over 64: `rope.scaling.attn_factor`, sliding
///   window 48) in each of its three config.json forms (transformers 5's `rope_parameters`, the
///   older `rope_scaling` longrope and `su`), which the converter turns into the same file.
///
/// Each: every metadata key and value of the converter's file equal, in the same order (the
/// model-card keys too: the folder has the converter's folder name, and no README), then
/// lorakit's three provenance keys; the same tensors in the same order (the generated
/// `rope_factors_long/short.weight` first, F32), names, dims and types; every tensor no adapter
/// touches byte for byte (the factors, norms, embeddings and output, Q8_0 ones included). The
/// 8 merged weights are two f32 merges of the same inputs: PEFT's `W + (B @ A) * s` runs torch's
/// sgemm, which fuses products into multiply-adds, where lorakit rounds every product
/// (`backend::MergeJob`), so about a third of their elements differ in the last bits (measured:
/// at most 5.6e-8 relative per tensor); asserted within 1e-6 relative per tensor in f32, within
/// one Q8_0 step (block amax / 127) per element in Q8_0. And every Q8_0 tensor is byte for byte
/// gguf-py's `quants.quantize` of lorakit's own f32 output of the same merge
/// (fixtures/gen/check_gguf_requant.py; skipped loudly without Python, [`gguf_python`]).
#[test]
fn phi3_hf_to_gguf_equals_converter_of_peft_merge() {
    let dir = tempfile::tempdir().unwrap();
    let py = gguf_python();
    let adapter = fixture("gguf/hf_phi3/lora");
    // The tokenizer files of each case: the SentencePiece fixture; the same with a tokenizer.json;
    // Phi-4's kind (the byte-level BPE fixture tokenizer, no tokenizer.model, a
    // tokenizer_config.json saying GPT2Tokenizer; its pre-tokenizer named as the generator did).
    let spm: &[(&str, &str)] = &[
        ("hf_spm", "tokenizer.model"),
        ("hf_spm", "tokenizer_config.json"),
        ("hf_spm", "added_tokens.json"),
    ];
    let with_json = &[spm, &[("hf_phi3/tokenizer", "tokenizer.json")]].concat();
    let gpt2: &[(&str, &str)] = &[
        ("hf_qwen2", "tokenizer.json"),
        ("hf_qwen2", "chat_template.jinja"),
        ("hf_phi3/gpt2", "tokenizer_config.json"),
    ];
    let (f32, both, q8) = (&["f32"][..], &["f32", "q8_0"][..], &["q8_0"][..]);
    let long = "hf_phi3_longrope_lora";
    for (config, tokenizer, outtypes, reference) in [
        ("config.json", spm, both, "hf_phi3_lora"),
        (
            "config.json",
            &with_json[..],
            q8,
            "hf_phi3_lora_tokenizer_json",
        ),
        ("config.json", gpt2, q8, "hf_phi3_lora_gpt2"),
        ("longrope.config.json", spm, f32, long),
        ("rope_scaling.config.json", spm, f32, long),
        ("su.config.json", spm, f32, long),
    ] {
        let case = dir.path().join(reference).join(config);
        let base = hf_phi3_folder(&case, config);
        for (from, f) in tokenizer {
            std::fs::copy(fixture(&format!("gguf/{from}/{f}")), base.join(f)).unwrap();
        }
        let pre: &[&str] = if tokenizer == gpt2 {
            &["--gguf-tokenizer-pre", "qwen2"]
        } else {
            &[]
        };
        for &outtype in outtypes {
            let label = format!("{reference} {config} {outtype}");
            let reference = format!("{reference}.{outtype}.gguf");
            let out = case.join(&reference);
            let v = merge_json(
                &base,
                &adapter,
                &out,
                &[&["--outtype", outtype], pre].concat(),
            );
            assert_eq!(v["architecture"], "phi3", "{label}");
            let mut merged = merged_names(&v);
            merged.sort_unstable();
            assert_eq!(merged, TARGETS, "{label}");
            let ty = GgmlType::from_name(outtype).unwrap();
            assert_tensors_equal_converter(&out, &reference, &v, 8, |a, x, y| {
                assert_eq!(a.ty, ty, "{label} {}", a.name);
                if ty == GgmlType::F32 {
                    let e = rel_err(x, y);
                    assert!(e <= 1e-6, "{label} {}: {e:e}", a.name);
                    return;
                }
                for (i, (p, q)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                    let step = p.iter().chain(q).fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                    for (a_, b) in p.iter().zip(q) {
                        assert!((a_ - b).abs() <= step, "{label} {} block {i}", a.name);
                    }
                }
            });
            let ours = tensors(&out);
            let extra = usize::from(reference.starts_with(long)) * 2;
            assert_eq!(ours.len(), 15 + extra, "{label}");
            if extra > 0 {
                assert_eq!(ours["rope_factors_long.weight"].2, [1.0, 1.25, 2.5, 7.75]);
                assert_eq!(ours["rope_factors_short.weight"].0, GgmlType::F32);
            }
            if ty != GgmlType::F32 {
                let f32_out = case.join("f32.gguf");
                merge_json(
                    &base,
                    &adapter,
                    &f32_out,
                    &[&["--outtype", "f32"], pre].concat(),
                );
                let quantized = ours.values().filter(|t| t.0 == ty).count();
                assert_eq!(quantized, 10, "{label}: every matrix in {ty}");
                if let Some(py) = &py {
                    let checked = requantized_by_gguf_py(py, &f32_out, &out, &label);
                    assert_eq!(checked.len(), quantized, "{label}: {checked:?}");
                }
            }
        }
    }
}

/// What llama.cpp's Phi-3 converter would fail on, or write in a way lorakit does not, is
/// refused in one line naming the file and the key, and nothing is written: long factors of
/// the wrong length (ValueError there), a yarn rope type, long factors under the default rope
/// type (NotImplementedError), config.json's and the rope dict's original context disagreeing,
/// an added token beyond vocab_size (IndexError), tokenizer_config.json without
/// `tokenizer_class` (KeyError), no tokenizer.model (ValueError).
#[test]
fn phi3_hf_to_gguf_refusals_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    /// A fixture config, the folder file to edit (`None`: delete tokenizer.model) and the edit,
    /// and what the error line must say.
    type Edit = fn(&mut serde_json::Value);
    struct Case {
        config: &'static str,
        edit: Option<(&'static str, Edit)>,
        want: &'static [&'static str],
    }
    let long = "longrope.config.json";
    let cases = [
        Case {
            config: long,
            edit: Some(("config.json", |c| {
                c["rope_parameters"]["long_factor"] = serde_json::json!([1.0, 2.0])
            })),
            want: &[
                "config.json",
                "long/short factors of 2 and 4",
                "rope dimensions / 2 = 4",
            ],
        },
        Case {
            config: long,
            edit: Some(("config.json", |c| {
                c["rope_parameters"]["rope_type"] = "yarn".into()
            })),
            want: &["config.json", "rope type `yarn`"],
        },
        Case {
            config: long,
            edit: Some(("config.json", |c| {
                c["rope_parameters"]["rope_type"] = "default".into()
            })),
            want: &["config.json", "`long_factor` with rope type `default`"],
        },
        Case {
            config: long,
            edit: Some(("config.json", |c| {
                c["original_max_position_embeddings"] = 32.into()
            })),
            want: &[
                "config.json",
                "`original_max_position_embeddings` (64) differs from config.json's (32)",
            ],
        },
        Case {
            config: "config.json",
            edit: Some(("config.json", |c| c["vocab_size"] = 102.into())),
            want: &[
                "tokenizer_config.json",
                "added_tokens_decoder entry `102`",
                "IndexError",
            ],
        },
        Case {
            config: "config.json",
            edit: Some(("tokenizer_config.json", |c| {
                c.as_object_mut().unwrap().remove("tokenizer_class");
            })),
            want: &["tokenizer_config.json", "no `tokenizer_class`"],
        },
        Case {
            config: "config.json",
            edit: None,
            want: &["tokenizer.model", "missing"],
        },
    ];
    for (i, c) in cases.into_iter().enumerate() {
        let case = dir.path().join(i.to_string());
        let base = hf_phi3_folder(&case, c.config);
        for f in [
            "tokenizer.model",
            "tokenizer_config.json",
            "added_tokens.json",
        ] {
            std::fs::copy(fixture(&format!("gguf/hf_spm/{f}")), base.join(f)).unwrap();
        }
        match c.edit {
            Some((file, edit)) => edit_json(base.join(file), edit),
            None => std::fs::remove_file(base.join("tokenizer.model")).unwrap(),
        }
        let before = listing(&case);
        let out = case.join("out.gguf");
        let line = one_line_error(&run_err(merge_args(
            &base,
            &fixture("gguf/hf_phi3/lora"),
            &out,
            &[],
        )));
        assert_mentions(&line, c.want);
        assert_eq!(listing(&case), before, "{i}: {line}");
    }
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
    let base = hf_phi3_folder(dir.path(), "config.json");
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
