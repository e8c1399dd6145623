//! `convert ADAPTER --to gguf` and llama.cpp GGUF adapters as merge inputs: the delta each
//! adapter applies as llama.cpp computes it, against PEFT; malformed adapters refused.

use super::*;

/// `ΔW` of every pair of a GGUF LoRA adapter as llama.cpp applies it (`src/llama-adapter.cpp`,
/// `llm_build_lora_mm` / `llm_build_inp_embd`): `alpha / rank · B·A` with rank = `b.ne[0]`,
/// `token_embd` with A stored `[vocab, r]`; rows of q/k un-permuted to Hugging Face order.
/// Returned by HF tensor name, `[out, in]` row-major (`[vocab, dim]` for the embedding).
pub(super) fn gguf_adapter_deltas(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let m = GgufModel::open(path).unwrap();
    let h = m.header();
    assert_eq!(
        h.get("general.type").and_then(|v| v.as_str()),
        Some("adapter")
    );
    assert_eq!(h.get("adapter.type").and_then(|v| v.as_str()), Some("lora"));
    assert_eq!(h.architecture(), Some("llama"));
    let alpha = h
        .get("adapter.lora.alpha")
        .and_then(|v| v.as_f64())
        .unwrap();
    let mut out = BTreeMap::new();
    for (f, t) in m.tensors() {
        let Some(base) = t.name.strip_suffix(".lora_a") else {
            assert!(t.name.ends_with(".lora_b"), "{}", t.name);
            continue;
        };
        let (_, tb) = m.get(&format!("{base}.lora_b")).unwrap();
        let (a, b) = (f.dequantize(t).unwrap(), f.dequantize(tb).unwrap());
        let r = tb.dims[0] as usize;
        let out_f = tb.dims[1] as usize;
        assert_eq!(t.dims.len(), 2);
        let scale = if alpha == 0.0 { 1.0 } else { alpha / r as f64 };
        let hf = names::hf_name(base).unwrap();
        // scale · Σₖ (term k of element (row, col)) in f64, row-major.
        let sum = |rows: usize, cols: usize, term: &dyn Fn(usize, usize, usize) -> f64| {
            (0..rows * cols)
                .map(|i| {
                    let s: f64 = (0..r).map(|k| term(i / cols, i % cols, k)).sum();
                    (scale * s) as f32
                })
                .collect::<Vec<f32>>()
        };
        let delta: Vec<f32> = if base == "token_embd.weight" {
            // lora_a is [vocab, r] (dims [r, vocab]); row t of ΔW is B·a_t.
            assert_eq!(t.dims[0] as usize, r);
            let vocab = t.dims[1] as usize;
            sum(vocab, out_f, &|tok, j, k| {
                b[j * r + k] as f64 * a[tok * r + k] as f64
            })
        } else {
            assert_eq!(t.dims[1] as usize, r, "lora_a is [r, in] (dims [in, r])");
            let in_f = t.dims[0] as usize;
            let d = sum(out_f, in_f, &|o, c, k| {
                b[o * r + k] as f64 * a[k * in_f + c] as f64
            });
            let heads = if base.ends_with("attn_q.weight") {
                Some(N_HEAD)
            } else if base.ends_with("attn_k.weight") {
                Some(N_HEAD_KV)
            } else {
                None
            };
            match heads {
                Some(hh) => names::unpermute_rows(&d, out_f, in_f, hh),
                None => d,
            }
        };
        out.insert(hf, delta);
    }
    out
}

/// A PEFT adapter written as a llama.cpp adapter applies, as llama.cpp computes it, exactly
/// PEFT's ΔW (its merge_and_unload minus the base; 1e-6 relative): q/k rows permuted like the
/// GGUF base, rsLoRA's scale folded into B (llama.cpp has one alpha / rank rule), the
/// embedding's A transposed. With a GGUF base or the Hugging Face folder alike.
#[test]
fn convert_to_gguf_applies_the_peft_delta_as_llama_cpp_computes_it() {
    let base = read(&fixture("llama/base/model.safetensors"));
    for (case, base_arg, folded) in [
        ("qv_r8", "gguf/llama_q8_0.gguf", 0),
        ("rslora_all", "llama/base", 14),
        ("embed", "gguf/llama_f32.gguf", 0),
    ] {
        let (_dir, out, v) = fixture_to_gguf(&format!("llama/adapters/{case}"), base_arg);
        assert_eq!(v["operation"], "convert");
        assert_eq!(v["folded_count"], folded, "{case}");
        let deltas = gguf_adapter_deltas(&out);
        for (name, want) in peft_deltas(case, &base, &deltas) {
            let e = rel_err(&deltas[&name], &want);
            assert!(e <= 1e-6, "{case} {name}: {e:e}");
        }
    }
}

#[test]
fn convert_to_gguf_refuses_what_llama_cpp_cannot_apply() {
    let (_dir, out) = scratch("a.gguf");
    let o = s(&out);
    let base = fixture("llama/base");
    let b = s(&base);
    for (case, extra, want) in [
        (
            "dora",
            vec!["--base", b],
            "is DoRA, which llama.cpp adapters cannot hold",
        ),
        (
            "modules_to_save",
            vec!["--base", b],
            "(modules_to_save): a llama.cpp adapter holds LoRA pairs only",
        ),
        ("qv_r8", vec![], "--to gguf needs --base"),
        (
            "qv_r8",
            vec!["--base", &g("tiny.gguf")],
            "no tensor `blk.0.attn_q.weight`",
        ),
    ] {
        let a = fixture(&format!("llama/adapters/{case}"));
        let mut args = vec!["convert", s(&a), "--to", "gguf", "-o", o];
        args.extend(extra);
        let e = one_line_error(&run_err(&args));
        assert!(e.contains(want), "{case}: {e}");
        assert!(!out.exists());
    }
}

/// llama.cpp GGUF adapters as merge inputs: lorakit's conversion of a PEFT adapter, merged into
/// the GGUF base and into the Hugging Face base, equals PEFT's own merge (1e-6), so reading
/// undoes exactly what writing did (names, q/k permutation, embedding layout, folded scales).
#[test]
fn gguf_adapters_merge_into_gguf_and_hf_bases_as_peft() {
    let hf_base = read(&fixture("llama/base/model.safetensors"));
    for case in ["qv_r8", "rslora_all", "embed"] {
        let (dir, ad, _) = fixture_to_gguf(&format!("llama/adapters/{case}"), "llama/base");
        let reference = read(&fixture(&format!("llama/merged/{case}.safetensors")));
        // Into the GGUF base.
        let out = dir.path().join("m.gguf");
        merge_json(g("llama_f32.gguf"), s(&ad), &out, &[]);
        let got = hf_view(&out);
        for (name, r) in &reference {
            let e = rel_err(&got[name].2, &r.f32());
            assert!(e <= 1e-6, "{case} gguf {name}: {e:e}");
        }
        // Into the Hugging Face base.
        let out = dir.path().join("m.safetensors");
        run_ok(merge_args(
            &fixture("llama/base/model.safetensors"),
            &ad,
            &out,
            &[],
        ));
        assert_matches_reference(&read(&out), &hf_base, &reference, 1e-6);
    }
    // A GGUF model is not an adapter; an adapter for another architecture is refused.
    let (dir, o) = scratch("o.gguf");
    let (f32_base, q8_0) = (
        fixture("gguf/llama_f32.gguf"),
        fixture("gguf/llama_q8_0.gguf"),
    );
    let e = one_line_error(&run_err(merge_args(&f32_base, &q8_0, &o, &[])));
    assert!(e.contains("is a GGUF model (general.type ``"), "{e}");
    let ad = dir.path().join("a.gguf");
    to_gguf(
        &fixture("llama/adapters/qv_r8"),
        &fixture("llama/base"),
        &ad,
    );
    let qwen2 = fixture("llama/qwen2");
    let e = one_line_error(&run_err(merge_args(
        &qwen2,
        &ad,
        &dir.path().join("q"),
        &[],
    )));
    assert_mentions(
        &e,
        &["adapter architecture `llama` does not match the base's `qwen2`"],
    );
    assert_eq!(listing(dir.path()), ["a.gguf"]);
}

/// Malformed llama.cpp adapters are refused as llama.cpp refuses them, in one line, nothing
/// written: half a pair, a tensor with an unexpected suffix, a lora_a whose rank differs from its
/// lora_b.
#[test]
fn malformed_gguf_adapters_are_refused() {
    let (dir, ad, _) = fixture_to_gguf("llama/adapters/qv_r8", "llama/base");
    let bytes = std::fs::read(&ad).unwrap();
    let find = |pat: &[u8]| bytes.windows(pat.len()).position(|w| w == pat).unwrap();
    let name = b"blk.0.attn_q.weight.lora_b";
    let at = find(name);
    let mut pair = bytes.clone();
    pair[at + name.len() - 1] = b'c';
    let mut suffix = bytes.clone();
    let at_a = find(b"blk.0.attn_q.weight.lora_a");
    suffix[at_a + name.len() - 1] = b'c';
    // lora_a of blk.0.attn_q: dims [64, 8] follow its name and n_dims; claim rank 4 instead.
    let a_name = b"blk.0.attn_q.weight.lora_a";
    let dims = find(a_name) + a_name.len() + 4;
    let mut rank = bytes.clone();
    rank[dims..dims + 8].copy_from_slice(&32u64.to_le_bytes());
    rank[dims + 8..dims + 16].copy_from_slice(&16u64.to_le_bytes());
    for (case, b, want) in [
        ("pair", pair, "has no `blk.0.attn_q.weight.lora_b`"),
        ("suffix", suffix, "has an unexpected suffix"),
        ("rank", rank, "lora_a ne[1] 16 is not lora_b ne[0] 8"),
    ] {
        let p = dir.path().join(format!("{case}.gguf"));
        std::fs::write(&p, b).unwrap();
        let o = dir.path().join(format!("{case}.out.gguf"));
        let f32_base = fixture("gguf/llama_f32.gguf");
        let e = one_line_error(&run_err(merge_args(&f32_base, &p, &o, &[])));
        assert!(e.contains(want), "{case}: {e}");
        assert!(!o.exists());
    }
}

/// A bf16 adapter whose q_proj alpha differs (`alpha_pattern`: fold 1.5 into B): with
/// `--dtype keep` the folded B was written back as BF16, so the ΔW llama.cpp applies missed
/// PEFT's by ~2e-3 relative (no warning; `--dtype f32` was exact). Now a B folded by a factor
/// other than a power of two is written F32 under `keep`, and the GGUF adapter merges to what
/// the bf16 PEFT folder merges to, within f32 rounding.
#[test]
fn keep_writes_an_inexactly_folded_b_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("llama/adapters/qv_r8");
    let ad = dir.path().join("bf16");
    std::fs::create_dir_all(&ad).unwrap();
    let mut cfg: serde_json::Value = read_json(src.join("adapter_config.json"));
    cfg["alpha_pattern"] = serde_json::json!({"q_proj": 24});
    std::fs::write(ad.join("adapter_config.json"), cfg.to_string()).unwrap();
    let bf16: Vec<(String, Vec<usize>, Vec<u8>)> = read(&src.join("adapter_model.safetensors"))
        .into_iter()
        .map(|(n, t)| {
            let b = t
                .data
                .chunks_exact(4)
                .flat_map(|c| {
                    let x = f32::from_le_bytes(c.try_into().unwrap());
                    half::bf16::from_f32(x).to_le_bytes()
                })
                .collect();
            (n, t.shape, b)
        })
        .collect();
    write_all_as(
        &ad.join("adapter_model.safetensors"),
        safetensors::Dtype::BF16,
        &bf16,
        None,
    );
    let base = fixture("llama/base");
    let gguf = dir.path().join("a.gguf");
    run_ok(convert_args(
        &ad,
        "gguf",
        &gguf,
        &["--base", s(&base), "--quiet"],
    ));
    let m = GgufModel::open(&gguf).unwrap();
    let types: BTreeMap<String, GgmlType> =
        m.tensors().map(|(_, t)| (t.name.clone(), t.ty)).collect();
    assert_eq!(types["blk.0.attn_q.weight.lora_b"], GgmlType::F32);
    assert_eq!(types["blk.0.attn_q.weight.lora_a"], GgmlType::BF16);
    // v_proj keeps alpha 16 = the file's: no fold, BF16 as stored.
    assert_eq!(types["blk.0.attn_v.weight.lora_b"], GgmlType::BF16);
    let (from_peft, from_gguf) = (dir.path().join("p"), dir.path().join("g"));
    run_ok(merge_args(&base, &ad, &from_peft, &["--quiet"]));
    run_ok(merge_args(&base, &gguf, &from_gguf, &["--quiet"]));
    run_ok(diff_args(&from_gguf, &from_peft, &["--tolerance", "1e-6"]));
}
