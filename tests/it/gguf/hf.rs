//! `merge --base HF_FOLDER --out merged.gguf --outtype T` against llama.cpp's own
//! `convert_hf_to_gguf.py` run on PEFT's merge of the same adapter
//! (fixtures/gguf/llamacpp/hf_qv_r8.*.gguf, fixtures/gen/gguf_hf_convert.py), and refusals.

use super::*;

/// The fixture Llama with the fixture tokenizer, in a folder named `tiny-llama` as the
/// generator's (the converter derives `general.name` from the folder name).
pub(super) fn hf_folder(dir: &Path) -> std::path::PathBuf {
    hf_folder_with(dir, "tiny-llama", "llama/base", "gguf/hf_tokenizer")
}

/// Fixture model `model` with the tokenizer files of fixture folder `tokenizer`, in `dir/name`.
fn hf_folder_with(dir: &Path, name: &str, model: &str, tokenizer: &str) -> std::path::PathBuf {
    model_folder(dir.join(name), (model, &[]), (tokenizer, &[]))
}

/// lorakit's GGUF model of the fixture Llama merged with qv_r8, against the converter's GGUF
/// of PEFT's merge_and_unload of the same adapter, for --outtype f16 and q8_0 with the Llama
/// BPE tokenizer (tokenizer.json, `LlamaHfVocab`), and q8_0 with the SentencePiece one
/// (tokenizer.model padded to 128 tokens, added_tokens.json, added_tokens_decoder), and f16
/// for the fixture Mistral (an f16 base, linear rope scaling, q and k adapted: k permuted with
/// the kv heads) with a PEFT adapter made by the same generator; and (gguf_hf_bpe.py) the
/// fixture Qwen2 (bf16, q/k/v biases, tied embeddings, yarn rope scaling, no q/k permutation)
/// with a byte-level BPE tokenizer in Qwen2's configuration (model `gpt2`, merges, padded to
/// config.json's 128 ids, a non-special added token) and its q/k/v/o LoRA, and a Llama with
/// llama3 rope scaling (`rope_freqs.weight`) and a Llama-3-style BPE tokenizer (BOS template),
/// in a folder whose name carries model-card parts (basename, finetune, version):
/// - metadata: every key of the converter's file, in its order, with identical bytes (type and
///   value: hyperparameters, general.name/basename/finetune/version/size_label, the whole
///   tokenizer); lorakit adds only its `lorakit.*` provenance keys after them. The BPE
///   fixtures' pre-tokenizer hash is not one llama.cpp lists (110 trained tokens): the
///   generator gave the converter the family's name for it and lorakit gets the same name
///   through --gguf-tokenizer-pre (the refusal without it is tested below).
/// - tensors: the same names in the same order with the same types and dims (norms F32, q/k
///   permuted for Llama); every tensor the adapter does not touch byte for byte equal
///   (`rope_freqs.weight` included: computed as the script computes it in torch f32);
///   the merged ones equal up to the type's rounding of two merges that differ in the last
///   f32 bits (PEFT's torch merge vs lorakit's): for F16 one f16 step (2⁻¹⁰ relative to the
///   larger, 2⁻²⁴ for subnormals), for Q8_0 one step d = amax/127 of the block.
#[test]
fn hf_base_to_gguf_equals_llama_cpp_convert_hf_to_gguf() {
    let dir = tempfile::tempdir().unwrap();
    struct Case {
        outtype: &'static str,
        tok: &'static str,
        name: &'static str,
        model: &'static str,
        adapter: &'static str,
        reference: &'static str,
        merged: usize,
        pre: Option<&'static str>,
    }
    let llama = |outtype, tok, reference| Case {
        outtype,
        tok,
        name: "tiny-llama",
        model: "llama/base",
        adapter: "llama/adapters/qv_r8",
        reference,
        merged: 4,
        pre: None,
    };
    let cases = [
        llama("f16", "hf_tokenizer", "hf_qv_r8.f16.gguf"),
        llama("q8_0", "hf_tokenizer", "hf_qv_r8.q8_0.gguf"),
        llama("q8_0", "hf_spm", "hf_spm_qv_r8.q8_0.gguf"),
        Case {
            name: "tiny-mistral",
            model: "llama/mistral",
            adapter: "gguf/hf_mistral/adapter",
            ..llama("f16", "hf_spm", "hf_mistral.f16.gguf")
        },
        Case {
            name: "Qwen2-0.5B-lora",
            model: "llama/qwen2",
            adapter: "gguf/hf_qwen2/adapter",
            merged: 8,
            pre: Some("qwen2"),
            ..llama("f16", "hf_qwen2", "hf_qwen2.f16.gguf")
        },
        Case {
            name: "Tiny-Llama-3-8B-Instruct-v0.1",
            pre: Some("llama-bpe"),
            ..llama("q8_0", "hf_llama3", "hf_llama3_qv_r8.q8_0.gguf")
        },
    ];
    for c in cases {
        let (t, reference) = (c.outtype, c.reference);
        let ty = GgmlType::from_name(t).unwrap();
        let adapter = fixture(c.adapter);
        let tok_dir = format!("gguf/{}", c.tok);
        let base = hf_folder_with(
            &dir.path().join(format!("in-{reference}")),
            c.name,
            c.model,
            &tok_dir,
        );
        let out = dir.path().join(reference);
        let mut extra = vec!["--outtype", t];
        if let Some(p) = c.pre {
            extra.extend(["--gguf-tokenizer-pre", p]);
        }
        let v = merge_json(&base, &adapter, &out, &extra);
        assert_tensors_equal_converter(&out, reference, &v, c.merged, |a, dx, dy| {
            let row = a.dims[0] as usize;
            for (bx, by) in dx.chunks(32.min(row)).zip(dy.chunks(32.min(row))) {
                let amax = by.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (p, q) in bx.iter().zip(by) {
                    let bound = match ty {
                        GgmlType::F16 => f16_step(*p, *q),
                        _ => amax / 127.0 * 1.01,
                    };
                    assert!((p - q).abs() <= bound, "{reference} {}: {p} vs {q}", a.name);
                }
            }
        });
        // Every 1-D tensor F32, every matrix of the requested type.
        for (_, a) in GgufModel::open(&out).unwrap().tensors() {
            let want_ty = if a.dims.len() == 1 { GgmlType::F32 } else { ty };
            assert_eq!(a.ty, want_ty, "{reference} {}", a.name);
        }
    }
}

/// A Hugging Face folder `name` under `dir`: the fixture model `model` with the tokenizer
/// files of `tok`, then `edit` applied to it.
fn edited(dir: &Path, name: &str, model: &str, tok: &str, edit: impl Fn(&Path)) -> String {
    let d = hf_folder_with(dir, name, model, tok);
    edit(&d);
    s(&d).to_owned()
}

/// Rewrites `dir/config.json` with `f`.
fn with_config(dir: &Path, f: impl Fn(&mut serde_json::Value)) {
    edit_json(dir.join("config.json"), f);
}

/// What lorakit cannot write as llama.cpp would is refused in one line naming the file and
/// the key, writing nothing: a BPE tokenizer whose pre-tokenizer hash llama.cpp does not list
/// (the message carries the hash convert_hf_to_gguf.py printed for the same tokenizer, the
/// generator's `.chkhsh` file: lorakit's encoding and sha256 are the script's), a
/// tokenizer.json the tokenizers library cannot load, a malformed tokenizer.model, a folder
/// without a tokenizer, `--outtype keep`, yarn scaling without its original context length,
/// a rope type lorakit does not write, a model card, and --gguf-tokenizer-pre for a
/// safetensors output.
#[test]
fn hf_to_gguf_refusals_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = hf_folder(dir.path());
    let qv = fixture("llama/adapters/qv_r8");
    let qv = s(&qv);
    let sp = edited(dir.path(), "sp", "llama/base", "gguf/hf_tokenizer", |d| {
        std::fs::write(d.join("tokenizer.model"), b"not read").unwrap();
    });
    let bad_tj = edited(dir.path(), "tj", "llama/base", "gguf/hf_tokenizer", |d| {
        std::fs::write(d.join("tokenizer.json"), br#"{"model": {"type": "Nope"}}"#).unwrap();
    });
    let yarn = edited(dir.path(), "yarn", "llama/base", "gguf/hf_tokenizer", |d| {
        with_config(d, |c| {
            c["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "factor": 2.0});
        })
    });
    let longrope = edited(dir.path(), "lr", "llama/base", "gguf/hf_tokenizer", |d| {
        with_config(d, |c| c["rope_parameters"]["rope_type"] = "longrope".into())
    });
    let card = edited(dir.path(), "card", "llama/base", "gguf/hf_tokenizer", |d| {
        std::fs::write(d.join("README.md"), "---\nlicense: mit\n---\n").unwrap();
    });
    let qwen = edited(dir.path(), "qwen", "llama/qwen2", "gguf/hf_qwen2", |_| {});
    let qwen_lora = fixture("gguf/hf_qwen2/adapter");
    let chkhsh = std::fs::read_to_string(fixture("gguf/llamacpp/hf_qwen2.f16.gguf.chkhsh"))
        .unwrap()
        .trim()
        .to_owned();
    let not_recognized = format!("BPE pre-tokenizer not recognized (chkhsh {chkhsh})");
    let bare = fixture("llama/base");
    let bare = s(&bare);
    let out = dir.path().join("o.gguf");
    let b = s(&base);
    let st = dir.path().join("o.safetensors");
    let outtype_keep: &[&str] = &["--outtype", "keep"];
    let tokenizer_pre: &[&str] = &["--out", s(&st), "--gguf-tokenizer-pre", "qwen2"];
    // (base, adapter, further arguments, the file the line names, what it says)
    let cases: [(&str, &str, &[&str], &str, &str); 9] = [
        (&qwen, s(&qwen_lora), &[], "tokenizer.json", &not_recognized),
        (
            &bad_tj,
            qv,
            &[],
            "tokenizer.json",
            "not a tokenizers tokenizer.json",
        ),
        (
            &sp,
            qv,
            &[],
            "tokenizer.model",
            "not a SentencePiece model (malformed protobuf)",
        ),
        (
            bare,
            qv,
            &[],
            "base",
            "no tokenizer.json or tokenizer.model",
        ),
        (
            b,
            qv,
            outtype_keep,
            "",
            "--outtype keep: a safetensors base has no GGUF types to keep",
        ),
        (
            &yarn,
            qv,
            &[],
            "config.json",
            "yarn rope scaling without an integer `original_max_position_embeddings`",
        ),
        (&longrope, qv, &[], "config.json", "rope type `longrope`"),
        (&card, qv, &[], "README.md", "a model card"),
        (
            b,
            qv,
            tokenizer_pre,
            "o.safetensors",
            "the output must end in .gguf",
        ),
    ];
    for (base, adapter, extra, file, want) in cases {
        let mut full = vec!["merge"];
        if !extra.contains(&"--out") {
            full.extend(["--out", s(&out)]);
        }
        full.extend(["--base", base, "--adapter", adapter]);
        full.extend(extra);
        let e = run_err(&full);
        let line = one_line_error(&e);
        assert!(
            line.contains(want) && line.contains(file),
            "{full:?}: {line}"
        );
        assert!(!out.exists());
    }
    assert_eq!(
        listing(dir.path()),
        ["card", "lr", "qwen", "sp", "tiny-llama", "tj", "yarn"]
    );
}

/// `--outtype q4_k` on the fixture Llama, whose rows hold 64 or 128 values (never whole
/// blocks of 256): every 2-D weight takes llama-quantize's fallback for Q4_K, Q5_0
/// (`tensor_type_fallback`, src/llama-quant.cpp), is reported with the type it replaced, and
/// holds the same bytes as `--outtype q5_0`, which needs no fallback (its quantizer is checked
/// against gguf-py elsewhere); Q6_K falls back to Q8_0 likewise. 1-D tensors stay F32, and
/// `general.file_type` names the K type asked for, as llama-quantize's does.
#[test]
fn hf_to_gguf_kquant_rows_take_llama_quantize_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let base = hf_folder(dir.path());
    let qv = fixture("llama/adapters/qv_r8");
    for (k, fallback) in [("q4_k", "q5_0"), ("q6_k", "q8_0")] {
        let a = dir.path().join(format!("{k}.gguf"));
        let b = dir.path().join(format!("{fallback}.gguf"));
        let va = merge_json(s(&base), s(&qv), &a, &["--outtype", k]);
        merge_json(s(&base), s(&qv), &b, &["--outtype", fallback]);
        let (ma, mb) = (GgufModel::open(&a).unwrap(), GgufModel::open(&b).unwrap());
        let mut fell = 0;
        for (((fa, ta), (fb, tb)), r) in ma
            .tensors()
            .zip(mb.tensors())
            .zip(va["tensors"].as_array().unwrap())
        {
            assert_eq!((&ta.name, ta.ty), (&tb.name, tb.ty), "{k}");
            assert!(fa.view(ta).data == fb.view(tb).data, "{k} {}", ta.name);
            if ta.dims.len() == 2 {
                assert_eq!(ta.ty.name(), fallback.to_uppercase(), "{k} {}", ta.name);
                assert_eq!(r["fallback_from"], k.to_uppercase(), "{k} {}", ta.name);
                fell += 1;
            } else {
                assert_eq!(ta.ty, GgmlType::F32);
                assert!(r.get("fallback_from").is_none());
            }
        }
        assert!(fell > 0);
        // The header differs only in general.file_type (the K type asked for).
        let ft = |m: &GgufModel| m.header().get("general.file_type").and_then(|v| v.as_u64());
        assert_eq!(
            (ft(&ma), ft(&mb)),
            (
                Some(if k == "q4_k" { 14 } else { 18 }),
                Some(if k == "q4_k" { 8 } else { 7 })
            )
        );
    }
}

/// The other writable types against gguf-py, which quantized fixtures/gguf/llama_{f32,q8_0,q4_0}.gguf
/// from the same base (gguf_fixtures.py: the converter's layout, `gguf.quants.quantize`):
/// lorakit's HF → GGUF output with `--outtype f32|q8_0|q4_0` holds the fixture's tensors and
/// types; every tensor the adapter leaves alone is byte-identical to gguf-py's; the merged
/// ones, read back in Hugging Face row order, equal PEFT's merge (1e-6 relative for F32, and
/// within the type's rounding bound per block of 32 for Q8_0/Q4_0). `general.file_type` is
/// llama.cpp's `LlamaFileType` of the type.
#[test]
fn hf_base_to_gguf_other_types_match_gguf_py() {
    let dir = tempfile::tempdir().unwrap();
    let base = hf_folder(dir.path());
    let adapter = fixture("llama/adapters/qv_r8");
    let peft = read(&fixture("llama/merged/qv_r8.safetensors"));
    for (t, ty, file_type) in [
        ("f32", GgmlType::F32, 0),
        ("q8_0", GgmlType::Q8_0, 7),
        ("q4_0", GgmlType::Q4_0, 2),
    ] {
        let out = dir.path().join(format!("m.{t}.gguf"));
        merge_json(s(&base), s(&adapter), &out, &["--outtype", t]);
        let m = GgufModel::open(&out).unwrap();
        assert_eq!(
            m.header().get("general.file_type").and_then(|v| v.as_u64()),
            Some(file_type)
        );
        let got = hf_view(&out);
        let want = hf_view(&fixture(&format!("gguf/llama_{t}.gguf")));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (name, (gty, shape, vals, bytes)) in &got {
            let (wty, wshape, _, wbytes) = &want[name];
            assert_eq!((gty, shape), (wty, wshape), "{t} {name}");
            let Some(r) = peft.get(name) else {
                assert!(bytes == wbytes, "{t} {name}: not gguf-py's bytes");
                continue;
            };
            let r = r.f32();
            if ty == GgmlType::F32 {
                let e = rel_err(vals, &r);
                assert!(e <= 1e-6, "{t} {name}: {e:e}");
                continue;
            }
            for (gb, wb) in vals.chunks(32).zip(r.chunks(32)) {
                let bound = super::merge::block_bound(ty, wb);
                for (x, y) in gb.iter().zip(wb) {
                    assert!((x - y).abs() <= bound, "{t} {name}: {x} vs {y}");
                }
            }
        }
    }
}
