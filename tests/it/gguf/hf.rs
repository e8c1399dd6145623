//! `merge --base HF_FOLDER --out merged.gguf --outtype T` against llama.cpp's own
//! `convert_hf_to_gguf.py` run on PEFT's merge of the same adapter
//! (fixtures/gguf/llamacpp/hf_qv_r8.*.gguf, fixtures/gen/gguf_hf_convert.py), and refusals.

use super::*;

/// The fixture Llama with the fixture tokenizer, in a folder named `tiny-llama` as the
/// generator's (the converter derives `general.name` from the folder name).
fn hf_folder(dir: &Path) -> std::path::PathBuf {
    hf_folder_with(dir, "tiny-llama", "llama/base", "gguf/hf_tokenizer")
}

/// Fixture model `model` with the tokenizer files of fixture folder `tokenizer`, in `dir/name`.
fn hf_folder_with(dir: &Path, name: &str, model: &str, tokenizer: &str) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for src in [model, tokenizer] {
        for e in std::fs::read_dir(fixture(src)).unwrap().flatten() {
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
    }
    d
}

/// `(key, raw entry bytes)` of every metadata entry, in file order.
fn metadata(m: &GgufModel) -> Vec<(String, Vec<u8>)> {
    let f = &m.files[0];
    f.header()
        .metadata
        .iter()
        .map(|kv| (kv.key.clone(), f.raw_kv(kv).to_vec()))
        .collect()
}

/// lorakit's GGUF model of the fixture Llama merged with qv_r8, against the converter's GGUF
/// of PEFT's merge_and_unload of the same adapter, for --outtype f16 and q8_0 with the Llama
/// BPE tokenizer (tokenizer.json, `LlamaHfVocab`), and q8_0 with the SentencePiece one
/// (tokenizer.model padded to 128 tokens, added_tokens.json, added_tokens_decoder), and f16
/// for the fixture Mistral (an f16 base, linear rope scaling, q and k adapted: k permuted with
/// the kv heads) with a PEFT adapter made by the same generator:
/// - metadata: every key of the converter's file, in its order, with identical bytes (type and
///   value: hyperparameters, general.name/size_label, the whole tokenizer); lorakit adds only
///   its `lorakit.*` provenance keys after them.
/// - tensors: the same names in the same order with the same types and dims (norms F32, q/k
///   permuted); every tensor the adapter does not touch byte for byte equal;
///   the 4 merged ones equal up to the type's rounding of two merges that differ in the last
///   f32 bits (PEFT's torch merge vs lorakit's): for F16 one f16 step (2⁻¹⁰ relative to the
///   larger, 2⁻²⁴ for subnormals), for Q8_0 one step d = amax/127 of the block.
#[test]
fn hf_base_to_gguf_equals_llama_cpp_convert_hf_to_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("f16", "hf_tokenizer", "llama", "hf_qv_r8.f16.gguf"),
        ("q8_0", "hf_tokenizer", "llama", "hf_qv_r8.q8_0.gguf"),
        ("q8_0", "hf_spm", "llama", "hf_spm_qv_r8.q8_0.gguf"),
        ("f16", "hf_spm", "mistral", "hf_mistral.f16.gguf"),
    ];
    for (t, tok, model, reference) in cases {
        let ty = GgmlType::from_name(t).unwrap();
        let (name, base_dir, adapter) = match model {
            "llama" => ("tiny-llama", "llama/base", "llama/adapters/qv_r8"),
            _ => ("tiny-mistral", "llama/mistral", "gguf/hf_mistral/adapter"),
        };
        let adapter = fixture(adapter);
        let tok_dir = format!("gguf/{tok}");
        let base = hf_folder_with(
            &dir.path().join(format!("in-{reference}")),
            name,
            base_dir,
            &tok_dir,
        );
        let out = dir.path().join(reference);
        let v = merge_json(
            base.to_str().unwrap(),
            adapter.to_str().unwrap(),
            &out,
            &["--outtype", t],
        );
        assert_eq!(v["tensors_merged_count"], 4, "{t}");
        let ours = GgufModel::open(&out).unwrap();
        let theirs = GgufModel::open(fixture(&format!("gguf/llamacpp/{reference}"))).unwrap();
        let (mo, mt) = (metadata(&ours), metadata(&theirs));
        assert_eq!(mo.len(), mt.len() + 3, "{t}");
        for ((ko, vo), (kt, vt)) in mo.iter().zip(&mt) {
            assert_eq!(ko, kt, "{t}: key order");
            assert!(vo == vt, "{t}: metadata `{kt}` differs");
        }
        let extra: Vec<&str> = mo[mt.len()..].iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            extra,
            ["lorakit.version", "lorakit.operation", "lorakit.adapters"]
        );
        let to: Vec<_> = ours.tensors().collect();
        let tt: Vec<_> = theirs.tensors().collect();
        assert_eq!(to.len(), tt.len());
        let merged: Vec<&str> = v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["merged"] == true)
            .map(|x| x["name"].as_str().unwrap())
            .collect();
        let mut exact = 0;
        for ((fo, a), (ft, b)) in to.iter().zip(&tt) {
            assert_eq!((&a.name, &a.dims, a.ty), (&b.name, &b.dims, b.ty), "{t}");
            let want_ty = if a.dims.len() == 1 { GgmlType::F32 } else { ty };
            assert_eq!(a.ty, want_ty, "{t} {}", a.name);
            let (x, y) = (fo.view(a).data, ft.view(b).data);
            if !merged.contains(&a.name.as_str()) {
                assert!(
                    x == y,
                    "{t} {}: untouched tensor not byte-identical",
                    a.name
                );
                exact += 1;
                continue;
            }
            let (dx, dy) = (fo.dequantize(a).unwrap(), ft.dequantize(b).unwrap());
            let row = a.dims[0] as usize;
            for (bx, by) in dx.chunks(32.min(row)).zip(dy.chunks(32.min(row))) {
                let amax = by.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (p, q) in bx.iter().zip(by) {
                    let bound = match ty {
                        // One f16 step: 2⁻¹⁰ relative, 2⁻²⁴ among subnormals.
                        GgmlType::F16 => {
                            (p.abs().max(q.abs()) * 2f32.powi(-10)).max(2f32.powi(-24))
                        }
                        _ => amax / 127.0 * 1.01,
                    };
                    assert!((p - q).abs() <= bound, "{t} {}: {p} vs {q}", a.name);
                }
            }
        }
        assert_eq!(exact, to.len() - 4, "{t}");
    }
}

/// What lorakit cannot yet write as llama.cpp would is refused in one line, writing nothing:
/// Qwen2 (GPT-2 BPE vocabulary), a malformed tokenizer.model, a folder without a tokenizer, `--outtype keep`, and a K-quant on rows of 64 values (not whole blocks).
#[test]
fn hf_to_gguf_refusals_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = hf_folder(dir.path());
    let qv = fixture("llama/adapters/qv_r8");
    let sp = dir.path().join("sp");
    std::fs::create_dir(&sp).unwrap();
    for e in std::fs::read_dir(&base).unwrap().flatten() {
        std::fs::copy(e.path(), sp.join(e.file_name())).unwrap();
    }
    std::fs::write(sp.join("tokenizer.model"), b"not read").unwrap();
    let bare = fixture("llama/base");
    let qwen = fixture("llama/qwen2");
    let qwen_lora = fixture("llama/adapters/qwen2_lora");
    let out = dir.path().join("o.gguf");
    let o = out.to_str().unwrap();
    let b = base.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--base",
                qwen.to_str().unwrap(),
                "--adapter",
                qwen_lora.to_str().unwrap(),
            ],
            "architecture `Qwen2ForCausalLM`: lorakit writes GGUF models for LlamaForCausalLM",
        ),
        (
            vec![
                "--base",
                sp.to_str().unwrap(),
                "--adapter",
                qv.to_str().unwrap(),
            ],
            "tokenizer.model: not a SentencePiece model (malformed protobuf)",
        ),
        (
            vec![
                "--base",
                bare.to_str().unwrap(),
                "--adapter",
                qv.to_str().unwrap(),
            ],
            "no tokenizer.json or tokenizer.model",
        ),
        (
            vec![
                "--base",
                b,
                "--adapter",
                qv.to_str().unwrap(),
                "--outtype",
                "keep",
            ],
            "--outtype keep: a safetensors base has no GGUF types to keep",
        ),
        (
            vec![
                "--base",
                b,
                "--adapter",
                qv.to_str().unwrap(),
                "--outtype",
                "q4_k",
            ],
            "rows of 64 values are not whole Q4_K blocks of 256",
        ),
    ];
    for (args, want) in cases {
        let mut full = vec!["merge"];
        full.extend(args);
        full.extend(["--out", o]);
        let e = run_err(&full);
        assert_ne!(e.status.code(), Some(0));
        let line = one_line_error(&e);
        assert!(line.contains(want), "{full:?}: {line}");
        assert!(!out.exists());
    }
    assert_eq!(listing(dir.path()), ["sp", "tiny-llama"]);
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
        merge_json(
            base.to_str().unwrap(),
            adapter.to_str().unwrap(),
            &out,
            &["--outtype", t],
        );
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
