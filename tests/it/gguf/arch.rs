//! The architectures mapped after Llama and Qwen2 — Qwen3, Gemma2, and Gemma, Gemma3 adapters —
//! against llama.cpp's own converters, whose outputs fixtures/gen/gguf_arch.py committed under
//! fixtures/gguf/llamacpp/ (llama.cpp as vendored by llama-cpp-python 0.3.36): `convert --to
//! gguf` against `convert_lora_to_gguf.py`, `merge --base HF_FOLDER --out x.gguf` against
//! `convert_hf_to_gguf.py` of PEFT's merge_and_unload, and the refusals of what lorakit does
//! not write.

use super::*;

/// The one-line error of merging the fixture Qwen3 LoRA into the fixture Qwen3 folder copied to
/// `dir/name` with `config.json`'s `architectures` relabelled `arch` (output `dir/o.gguf`).
pub(super) fn relabelled_merge_error(dir: &Path, name: &str, arch: &str) -> String {
    let relabelled = qwen3_folder(dir, name);
    edit_json(relabelled.join("config.json"), |c| {
        c["architectures"] = serde_json::json!([arch])
    });
    let out = dir.join("o.gguf");
    let e = run_err(merge_args(
        &relabelled,
        &fixture("gguf/hf_qwen3/lora"),
        &out,
        &[],
    ));
    one_line_error(&e)
}

/// The fixture Qwen3 (fixtures/gguf/hf_qwen3: config.json, model.safetensors) with the Qwen2
/// tokenizer files it was converted with, in `dir/name` (the converter derives
/// `general.name` and the model-card keys from the folder name).
pub(super) fn qwen3_folder(dir: &Path, name: &str) -> std::path::PathBuf {
    model_folder(
        dir.join(name),
        ("gguf/hf_qwen3", &["config.json", "model.safetensors"]),
        (
            "gguf/hf_qwen2",
            &[
                "tokenizer.json",
                "tokenizer_config.json",
                "chat_template.jinja",
            ],
        ),
    )
}

/// `scale · B·A` of every pair of a GGUF LoRA adapter of architecture `arch`, per Hugging Face
/// weight name, in f64 rounded once (no permutation: Qwen3's converter has none).
pub(super) fn adapter_deltas(path: &Path, arch: &str) -> BTreeMap<String, Vec<f32>> {
    let m = GgufModel::open(path).unwrap();
    let h = m.header();
    assert_eq!(h.architecture(), Some(arch));
    let alpha = h.get("adapter.lora.alpha").unwrap().as_f64().unwrap();
    let mut out = BTreeMap::new();
    for (f, t) in m.tensors() {
        let Some(base) = t.name.strip_suffix(".lora_a") else {
            continue;
        };
        let (_, tb) = m.get(&format!("{base}.lora_b")).unwrap();
        let (a, b) = (f.dequantize(t).unwrap(), f.dequantize(tb).unwrap());
        let (r, rows, cols) = (tb.dims[0] as usize, tb.dims[1] as usize, t.dims[0] as usize);
        let scale = alpha / r as f64;
        let delta = (0..rows * cols)
            .map(|i| {
                let (row, col) = (i / cols, i % cols);
                let s: f64 = (0..r)
                    .map(|k| f64::from(b[row * r + k]) * f64::from(a[k * cols + col]))
                    .sum();
                (scale * s) as f32
            })
            .collect();
        out.insert(names::hf_name_in(arch, base).unwrap(), delta);
    }
    out
}

/// PEFT's ΔW per Hugging Face weight: llama.cpp's f32 GGUF of PEFT's merge_and_unload
/// (`reference`) minus the bf16 base, for the weights in `want`.
fn peft_deltas(reference: &str, base: &str, arch: &str, want: &[String]) -> Vec<Vec<f32>> {
    let base = read(&fixture(base));
    let m = GgufModel::open(fixture(reference)).unwrap();
    want.iter()
        .map(|hf| {
            let (_, t) = m
                .tensors()
                .find(|(_, t)| names::hf_name_in(arch, &t.name).as_deref() == Some(hf))
                .unwrap_or_else(|| panic!("{reference}: no {hf}"));
            let (f, _) = m.get(&t.name).unwrap();
            let merged = f.dequantize(t).unwrap();
            merged
                .iter()
                .zip(base[hf].f32())
                .map(|(m, b)| m - b)
                .collect()
        })
        .collect()
}

/// `convert --to gguf` of the Qwen3 adapters against llama.cpp's `convert_lora_to_gguf.py`:
/// - `lora` (one alpha, every linear module): the same tensors (names `blk.N.attn_q`, …,
///   `ffn_down`; ggml dims; F32) bit for bit, and every metadata key llama.cpp writes
///   (`general.architecture = qwen3`, `adapter.*`) equal, apart from the descriptive keys
///   llamacpp.rs explains; q/k not permuted.
/// - `rslora` (rsLoRA, an alpha_pattern): the same names; lorakit folds PEFT's scale into B
///   (`folded` 2 for rsLoRA r 4, 2·5/8 for the patterned o_proj), llama.cpp does not. Applied as
///   llama.cpp applies them (`alpha / r · B·A`), lorakit's pairs give PEFT's ΔW — the converter's
///   f32 GGUF of PEFT's merge_and_unload minus the base — within 1e-6, llama.cpp's miss it by
///   exactly that factor.
#[test]
fn qwen3_convert_to_gguf_equals_llama_cpp_converter() {
    let dir = tempfile::tempdir().unwrap();
    let base = qwen3_folder(dir.path(), "hf_qwen3");
    for (case, folded_count) in [("lora", 0), ("rslora", 6)] {
        let out = dir.path().join(format!("{case}.gguf"));
        let v = to_gguf(&fixture(&format!("gguf/hf_qwen3/{case}")), &base, &out);
        assert_eq!(v["architecture"], "qwen3");
        assert_eq!(v["folded_count"], folded_count, "{case}");
        let reference = format!("gguf/llamacpp/qwen3_{case}.gguf");
        let (lc, lk) = (
            GgufModel::open(fixture(&reference)).unwrap(),
            GgufModel::open(&out).unwrap(),
        );
        compare_with_llama_cpp(case, &lc, &lk, case == "lora");
        if case != "rslora" {
            continue;
        }
        // Applied as llama.cpp applies them, against PEFT's ΔW.
        let ours = adapter_deltas(&out, "qwen3");
        let theirs = adapter_deltas(&fixture(&reference), "qwen3");
        let hf: Vec<String> = ours.keys().cloned().collect();
        let want = peft_deltas(
            "gguf/llamacpp/hf_qwen3_rslora.f32.gguf",
            "gguf/hf_qwen3/model.safetensors",
            "qwen3",
            &hf,
        );
        let mut off = Vec::new();
        for (name, w) in hf.iter().zip(&want) {
            let e = rel_err(&ours[name], w);
            assert!(e <= 1e-6, "{case} {name}: lorakit {e:e}");
            let e = rel_err(&theirs[name], w);
            if e > 1e-6 {
                let ratio = norm(w) / norm(&theirs[name]);
                let scaled: Vec<f32> = theirs[name].iter().map(|x| x * ratio as f32).collect();
                assert!(rel_err(&scaled, w) <= 1e-6, "{case} {name}");
                off.push((name.as_str(), (ratio * 1000.0).round() / 1000.0));
            }
        }
        assert_eq!(off.len(), 6, "{off:?}");
        assert!(off.iter().all(|(n, r)| *r
            == if n.starts_with("model.layers.0.self_attn.o_proj") {
                1.25
            } else {
                2.0
            }));
    }
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

/// lorakit's GGUF model of `base` merged with `adapter` against the converter's GGUF
/// (`reference`) of PEFT's merge_and_unload of the same adapter: every metadata key in the
/// converter's order with identical bytes, then only lorakit's three provenance keys; the same
/// tensors in the same order, types and dims; the tensors the adapter leaves alone byte for
/// byte; the merged ones (`merged` of them) within the rounding of two f32 merges that differ in
/// the last bits (PEFT's torch merge vs lorakit's): one f16 step for F16 (2⁻¹⁰ relative to the
/// larger, 2⁻²⁴ among subnormals), 1e-6 relative per tensor for F32.
fn assert_equals_converter(
    base: &Path,
    adapter: &Path,
    outtype: &str,
    pre: Option<&str>,
    reference: &str,
    merged: usize,
) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let mut extra = vec!["--outtype", outtype];
    if let Some(p) = pre {
        extra.extend(["--gguf-tokenizer-pre", p]);
    }
    let v = merge_json(base, adapter, &out, &extra);
    assert_tensors_equal_converter(&out, reference, &v, merged, |a, x, y| match a.ty {
        GgmlType::F16 => {
            for (p, q) in x.iter().zip(y) {
                let bound = f16_step(*p, *q);
                assert!((p - q).abs() <= bound, "{reference} {}: {p} vs {q}", a.name);
            }
        }
        GgmlType::F32 => {
            let e = rel_err(x, y);
            assert!(e <= 1e-6, "{reference} {}: {e:e}", a.name);
        }
        t => panic!("{reference} {}: {t}", a.name),
    });
}

/// `merge --base HF_FOLDER --out x.gguf` of the fixture Qwen3 (bf16, head_dim 16 ≠ hidden /
/// heads, q_norm/k_norm, tied embeddings, the Qwen2 byte-level BPE tokenizer) against
/// `convert_hf_to_gguf.py` of PEFT's merge_and_unload: the one-alpha LoRA on all 14 linear
/// weights as F16, the rsLoRA / alpha_pattern one (q/v/o: 6 weights) as F32
/// ([`assert_equals_converter`]). `attn_q_norm`/`attn_k_norm` are named as `tensor_mapping.py`
/// names them and stored F32 byte for byte; q/k are not permuted. The fixture tokenizer's
/// pre-tokenizer hash is not in llama.cpp's table: the generator named it `qwen2` and so does
/// `--gguf-tokenizer-pre` here.
#[test]
fn qwen3_hf_to_gguf_equals_convert_hf_to_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let base = qwen3_folder(dir.path(), "Qwen3-0.6B-lora");
    assert_equals_converter(
        &base,
        &fixture("gguf/hf_qwen3/lora"),
        "f16",
        Some("qwen2"),
        "hf_qwen3_lora.f16.gguf",
        14,
    );
    assert_equals_converter(
        &base,
        &fixture("gguf/hf_qwen3/rslora"),
        "f32",
        Some("qwen2"),
        "hf_qwen3_rslora.f32.gguf",
        6,
    );
}

/// What the converter writes differently for a Qwen3 folder, and lorakit does not, is refused
/// in one line naming the file, writing nothing: a reranker (`_is_qwen3_reranker`: the name in
/// the folder, or a `# Qwen3-Reranker` README heading: a classifier head and pooling keys) and
/// a sentence-transformers folder (`modules.json`: pooling keys).
#[test]
fn qwen3_hf_to_gguf_refuses_rerankers_and_embedding_models() {
    let dir = tempfile::tempdir().unwrap();
    let by_name = qwen3_folder(dir.path(), "Qwen3-Reranker-0.6B");
    let by_readme = qwen3_folder(dir.path(), "rr");
    std::fs::write(by_readme.join("README.md"), "# Qwen3-Reranker-0.6B\n").unwrap();
    let st = qwen3_folder(dir.path(), "st");
    std::fs::write(st.join("modules.json"), "[]").unwrap();
    let out = dir.path().join("o.gguf");
    let adapter = fixture("gguf/hf_qwen3/lora");
    for (base, file, want) in [
        (&by_name, "config.json", "names a Qwen3 reranker"),
        (&by_readme, "README.md", "a Qwen3 reranker"),
        (
            &st,
            "modules.json",
            "a sentence-transformers embedding model",
        ),
    ] {
        let e = run_err(merge_args(
            base,
            &adapter,
            &out,
            &["--gguf-tokenizer-pre", "qwen2"],
        ));
        let line = one_line_error(&e);
        assert!(line.contains(want) && line.contains(file), "{line}");
        assert!(!out.exists());
    }
}

/// `convert --to gguf --base HF_FOLDER` of a one-alpha LoRA on every linear module of a tiny
/// Gemma, Gemma2 and Gemma3 (text) equals llama.cpp's `convert_lora_to_gguf.py`
/// (fixtures/gen/gguf_arch.py): `general.architecture` `gemma`/`gemma2`/`gemma3`, every other
/// key llama.cpp writes (bar the descriptive `general.name` and `general.quantization_version`),
/// and the 28 tensors (names, ggml dims, F32 values) bit for bit; no q/k permutation.
#[test]
fn gemma_convert_to_gguf_equals_llama_cpp_converter() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["gemma", "gemma2", "gemma3"] {
        let out = dir.path().join(format!("{arch}.gguf"));
        let base = fixture(&format!("gguf/hf_{arch}"));
        let v = to_gguf(&base.join("lora"), &base, &out);
        assert_eq!(v["architecture"], arch);
        assert_eq!(v["folded_count"], 0, "{arch}");
        let lc = GgufModel::open(fixture(&format!("gguf/llamacpp/{arch}_lora.gguf"))).unwrap();
        let lk = GgufModel::open(&out).unwrap();
        assert_eq!(lc.header().architecture(), Some(arch));
        let names = compare_with_llama_cpp(arch, &lc, &lk, true);
        assert_eq!(names.len(), 28, "{arch}");
    }
}

/// A Gemma LoRA on `lm_head`: llama.cpp's Gemma model has no output tensor (tied to
/// `token_embd`) and `GemmaModel.filter_tensors` drops `lm_head.weight`, so the converter
/// writes the q_proj pairs alone — the committed output holds 4 tensors, none for the head:
/// the adapter silently loses a module. lorakit refuses it in one line naming the adapter and
/// the module, writing nothing. A Gemma3 config.json in a layout transformers' AutoConfig
/// rewrites (no per-attention-type `rope_parameters`: here a Qwen3 folder relabelled
/// `Gemma3ForCausalLM`) is refused for a GGUF model output, naming config.json.
#[test]
fn gemma_lm_head_and_old_gemma3_configs_are_refused() {
    let lc = GgufModel::open(fixture("gguf/llamacpp/gemma_lm_head.gguf")).unwrap();
    let mut names: Vec<String> = lc.tensors().map(|(_, t)| t.name.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "blk.0.attn_q.weight.lora_a",
            "blk.0.attn_q.weight.lora_b",
            "blk.1.attn_q.weight.lora_a",
            "blk.1.attn_q.weight.lora_b"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let base = fixture("gguf/hf_gemma");
    let e = run_err(convert_args(
        &base.join("lm_head"),
        "gguf",
        &out,
        &["--base", s(&base)],
    ));
    let line = one_line_error(&e);
    assert!(
        line.contains("hf_gemma/lm_head: module `lm_head` (gemma)")
            && line.contains("silently drops lm_head LoRAs"),
        "{line}"
    );
    let line = relabelled_merge_error(dir.path(), "g2", "Gemma3ForCausalLM");
    assert!(
        line.contains("config.json")
            && line.contains("config.json: `rope_parameters` without `full_attention`: an older Gemma3 config layout"),
        "{line}"
    );
    assert_eq!(listing(dir.path()), ["g2"]);
}

/// `merge --base X.gguf` (outtype keep) on llama.cpp's own F16 conversions of the fixture Qwen3,
/// Gemma2 and Gemma3 (`convert_hf_to_gguf.py`: Gemma norms + 1, sandwich and q/k norms,
/// no lm_head) with their one-alpha LoRA on every linear module, against the converter's F16
/// GGUF of PEFT's merge_and_unload of the same adapter: the same tensors in the same order,
/// types and dims; the 14 merged weights (named back through the architecture's table)
/// within the two roundings that separate them — the reference is f16(W + ΔW) from PEFT's f32
/// merge, lorakit's f16(f16(W) + ΔW) from the F16 base: one f16 step of the result plus half a
/// step of W (f16 holds the bf16 Qwen3's weights exactly but among subnormals; the Gemmas were
/// saved f32) —; every other tensor, the norms included, byte for byte.
#[test]
fn gguf_base_merges_equal_converter_of_peft_merge() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, adapter) in [
        ("qwen3", "gguf/hf_qwen3/lora"),
        ("gemma2", "gguf/hf_gemma2/lora"),
        ("gemma3", "gguf/hf_gemma3/lora"),
    ] {
        let base = fixture(&format!("gguf/llamacpp/hf_{arch}_base.f16.gguf"));
        let base_model = GgufModel::open(&base).unwrap();
        let out = dir.path().join(format!("{arch}.gguf"));
        let v = merge_json(&base, fixture(adapter), &out, &[]);
        assert_eq!(v["architecture"], arch);
        assert_eq!(v["tensors_merged_count"], 14, "{arch}");
        assert_eq!(v["unmatched"].as_array().unwrap().len(), 0, "{arch}");
        let merged = field_strs(&v["merged_tensors"], "name");
        let reference = format!("gguf/llamacpp/hf_{arch}_lora.f16.gguf");
        let ours = GgufModel::open(&out).unwrap();
        let theirs = GgufModel::open(fixture(&reference)).unwrap();
        let (to, tt): (Vec<_>, Vec<_>) = (ours.tensors().collect(), theirs.tensors().collect());
        assert_eq!(to.len(), tt.len(), "{arch}");
        for ((fo, a), (ft, b)) in to.iter().zip(&tt) {
            assert_eq!((&a.name, &a.dims, a.ty), (&b.name, &b.dims, b.ty), "{arch}");
            if !merged.contains(&a.name.as_str()) {
                assert!(fo.view(a).data == ft.view(b).data, "{arch} {}", a.name);
                continue;
            }
            assert!(names::hf_name_in(arch, &a.name).is_some(), "{}", a.name);
            let (x, y) = (fo.dequantize(a).unwrap(), ft.dequantize(b).unwrap());
            let (fw, tw) = base_model.get(&a.name).unwrap();
            let w = fw.dequantize(tw).unwrap();
            for ((p, q), w) in x.iter().zip(&y).zip(&w) {
                let bound = step(p.abs().max(q.abs())) + 0.5 * step(w.abs());
                assert!((p - q).abs() <= bound, "{arch} {}: {p} vs {q}", a.name);
            }
        }
    }
}

/// One f16 step at magnitude `x`: 2⁻¹⁰ relative, 2⁻²⁴ among subnormals.
fn step(x: f32) -> f32 {
    (x * 2f32.powi(-10)).max(2f32.powi(-24))
}

/// `merge --base HF_FOLDER --out x.gguf --outtype f16` of the fixture Gemma2 (f32, softcapping,
/// sliding window, sandwich norms, tied embeddings) with its LoRA on every linear module and
/// the fixture SentencePiece tokenizer, against `convert_hf_to_gguf.py` of PEFT's
/// merge_and_unload ([`assert_equals_converter`]): `Gemma2Model`'s own key list and order,
/// `add_space_prefix` false after the vocabulary, no `output` (lm_head dropped), and every
/// `*norm.weight` + 1 — byte for byte, as they are untouched by the adapter.
/// The same for the fixture Gemma (no softcapping keys; `tokenizer.ggml.eot_token_id` 107 from
/// `GemmaModel.set_vocab`'s second SpecialVocab) and Gemma3 (text: `TextModel`'s keys with the
/// full-attention `rope.freq_base` and the sliding `rope.freq_base_swa`, overrides in place,
/// `attention.sliding_window` appended; q/k norms; norms + 1).
#[test]
fn gemma_and_gemma2_hf_to_gguf_equal_convert_hf_to_gguf() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["gemma", "gemma2", "gemma3"] {
        let d = gemma_folder(dir.path(), arch);
        assert_equals_converter(
            &d,
            &fixture(&format!("gguf/hf_{arch}/lora")),
            "f16",
            None,
            &format!("hf_{arch}_lora.f16.gguf"),
            14,
        );
    }
}

/// The fixture Gemma or Gemma2 (`arch`) with the fixture SentencePiece tokenizer, in
/// `dir/{name}/hf_{arch}` (the folder name the generator converted).
fn gemma_folder_in(dir: &Path, name: &str, arch: &str) -> std::path::PathBuf {
    model_folder(
        dir.join(name).join(format!("hf_{arch}")),
        (
            &format!("gguf/hf_{arch}"),
            &["config.json", "model.safetensors"],
        ),
        (
            "gguf/hf_spm",
            &[
                "tokenizer.model",
                "tokenizer_config.json",
                "added_tokens.json",
            ],
        ),
    )
}

/// A Gemma2 folder lorakit cannot write as the converter would is refused in one line naming
/// the file, writing nothing: a config.json without `attn_logit_softcapping` (the converter
/// would take transformers' default through AutoConfig) and a folder without tokenizer.model
/// (`Gemma2Model.set_vocab` reads SentencePiece only).
#[test]
fn gemma2_hf_to_gguf_refusals_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let no_cap = gemma_folder_in(dir.path(), "no_cap", "gemma2");
    edit_json(no_cap.join("config.json"), |c| {
        c.as_object_mut().unwrap().remove("attn_logit_softcapping");
    });
    let no_spm = gemma_folder_in(dir.path(), "no_spm", "gemma2");
    std::fs::remove_file(no_spm.join("tokenizer.model")).unwrap();
    let out = dir.path().join("o.gguf");
    for (base, want) in [
        (&no_cap, "config.json: `attn_logit_softcapping` is missing"),
        (&no_spm, "no_spm/hf_gemma2: no tokenizer.model"),
    ] {
        let e = run_err(merge_args(base, &fixture("gguf/hf_gemma2/lora"), &out, &[]));
        let line = one_line_error(&e);
        assert!(line.contains(want), "{line}");
        assert!(!out.exists());
    }
}

fn gemma_folder(dir: &Path, arch: &str) -> std::path::PathBuf {
    gemma_folder_in(dir, arch, arch)
}

/// A PEFT LoRA on `lm_head` (and q_proj) of the untied fixture Llama: PEFT saves the head's base
/// weight beside the pair (`lm_head.base_layer.weight`, as it does for embeddings), which
/// llama.cpp's converter skips (`.base_layer.weight`) and so does lorakit, which refused the
/// adapter as `modules_to_save` before. `convert --to gguf` equals llama.cpp's output:
/// `output.weight.lora_a/b` and the permuted q pairs, bit for bit, and the same non-descriptive
/// keys.
#[test]
fn lm_head_lora_converts_as_llama_cpp_converts_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.gguf");
    to_gguf(
        &fixture("gguf/hf_llama_lm_head"),
        &fixture("llama/base"),
        &out,
    );
    let lc = GgufModel::open(fixture("gguf/llamacpp/llama_lm_head.gguf")).unwrap();
    let lk = GgufModel::open(&out).unwrap();
    for kv in &lc.header().metadata {
        if kv.key == "general.name" || kv.key == "general.quantization_version" {
            continue;
        }
        assert_eq!(lk.header().get(&kv.key), Some(&kv.value), "{}", kv.key);
    }
    let names = |m: &GgufModel| {
        let mut v: Vec<String> = m.tensors().map(|(_, t)| t.name.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&lc), names(&lk));
    assert!(names(&lk).contains(&"output.weight.lora_b".to_owned()));
    for name in names(&lc) {
        let ((fc, tc), (fk, tk)) = (lc.get(&name).unwrap(), lk.get(&name).unwrap());
        assert_eq!((tc.ty, &tc.dims), (tk.ty, &tk.dims), "{name}");
        assert_eq!(fc.view(tc).data, fk.view(tk).data, "{name}");
    }
}

/// lorakit's GGUF adapter `lk` against llama.cpp's `lc` for the same PEFT adapter (`label` names
/// the case): every metadata key llama.cpp writes (bar the descriptive `general.name` and
/// `general.quantization_version`) with the same value, no key of lorakit's beyond its own
/// `lorakit.*`, the same tensor names, each with the same ggml type and dims and, with
/// `values`, the same bytes. Returns the tensor names, sorted.
pub(super) fn compare_with_llama_cpp(
    label: &str,
    lc: &GgufModel,
    lk: &GgufModel,
    values: bool,
) -> Vec<String> {
    for kv in &lc.header().metadata {
        if kv.key == "general.name" || kv.key == "general.quantization_version" {
            continue;
        }
        assert_eq!(
            lk.header().get(&kv.key),
            Some(&kv.value),
            "{label} {}",
            kv.key
        );
    }
    for kv in &lk.header().metadata {
        assert!(
            kv.key.starts_with("lorakit.") || lc.header().get(&kv.key).is_some(),
            "{label}: {}",
            kv.key
        );
    }
    let names = |m: &GgufModel| {
        let mut v: Vec<String> = m.tensors().map(|(_, t)| t.name.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(names(lc), names(lk), "{label}");
    for name in names(lc) {
        let ((fc, tc), (fk, tk)) = (lc.get(&name).unwrap(), lk.get(&name).unwrap());
        assert_eq!((tc.ty, &tc.dims), (tk.ty, &tk.dims), "{label} {name}");
        if values {
            assert_eq!(fc.view(tc).data, fk.view(tk).data, "{label} {name}");
        }
    }
    names(lc)
}
