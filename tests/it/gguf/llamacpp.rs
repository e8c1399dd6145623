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
        // qv_r8 as an aLoRA: `adapter.alora.invocation_tokens` [5, 6, 7] (UINT32 array).
        ("alora", "llama/base", 0),
    ] {
        let adapter = if case == "alora" {
            "gguf/alora".to_owned()
        } else {
            format!("llama/adapters/{case}")
        };
        let (_dir, out, v) = fixture_to_gguf(&adapter, base);
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
        for (name, want) in peft_deltas(case, &base, &deltas) {
            let name = &name;
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

// ---------------------------------------------------------------------------------------------
// llama.cpp itself (gated): it loads lorakit's adapters and merged models.
// ---------------------------------------------------------------------------------------------

/// `fixtures/gen/llama_logits.c` built against libllama, from `LORAKIT_LLAMA_LOGITS`. Without
/// it the tests say so loudly and pass, unless `LORAKIT_REQUIRE_LLAMA_CPP=1`, where they fail.
/// CI does not build llama.cpp (about 40 minutes of two cores here).
fn llama_logits_bin() -> Option<std::path::PathBuf> {
    let why = match std::env::var_os("LORAKIT_LLAMA_LOGITS") {
        Some(p) if Path::new(&p).is_file() => return Some(p.into()),
        Some(p) => format!(
            "LORAKIT_LLAMA_LOGITS={} is not a file",
            Path::new(&p).display()
        ),
        None => {
            "LORAKIT_LLAMA_LOGITS is not set (build fixtures/gen/llama_logits.c, see its header)"
                .into()
        }
    };
    if std::env::var("LORAKIT_REQUIRE_LLAMA_CPP").as_deref() == Ok("1") {
        panic!("LORAKIT_REQUIRE_LLAMA_CPP=1 but {why}");
    }
    eprintln!("LLAMA.CPP TEST SKIPPED: {why}");
    None
}

/// Token ids of the prompt (the fixture Llama has a vocabulary of 128).
const PROMPT: [&str; 8] = ["1", "17", "42", "99", "5", "63", "120", "7"];

/// llama.cpp's logits, `[position][token]`, for `model` with `adapter` applied at scale 1.
fn llama_logits(bin: &Path, model: &Path, adapter: Option<&Path>) -> Vec<Vec<f32>> {
    let a = adapter.map_or("-".into(), |p| p.display().to_string());
    ok_stdout(
        std::process::Command::new(bin)
            .arg(model)
            .arg(a)
            .args(PROMPT),
    )
    .lines()
    .map(|l| l.split(' ').map(|x| x.parse().unwrap()).collect())
    .collect()
}

/// `‖x − y‖_F / ‖y‖_F` over all positions.
fn logits_err(x: &[Vec<f32>], y: &[Vec<f32>]) -> f64 {
    rel_err(&x.concat(), &y.concat())
}

/// `src` with `tokenizer.ggml.model = "none"` added (llama.cpp requires the key; "none" is its
/// vocabulary-free mode), every other entry and tensor byte for byte.
fn loadable(src: &Path, dst: &Path) {
    use lorakit::io::gguf::writer::{header, kv_string, OutTensor};
    let m = GgufModel::open(src).unwrap();
    let f = &m.files[0];
    let mut entries: Vec<Vec<u8>> = f
        .header()
        .metadata
        .iter()
        .map(|kv| f.raw_kv(kv).to_vec())
        .collect();
    entries.push(kv_string("tokenizer.ggml.model", "none"));
    let infos: Vec<OutTensor> = f
        .tensors()
        .iter()
        .map(|t| OutTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
        })
        .collect();
    let align = f.header().alignment;
    let mut bytes = header(&entries, &infos, align);
    for t in f.tensors() {
        bytes.extend_from_slice(f.view(t).data);
        bytes.resize(bytes.len().div_ceil(align as usize) * align as usize, 0);
    }
    std::fs::write(dst, bytes).unwrap();
}

/// llama.cpp runs what lorakit writes. On the fixture Llama (made loadable): lorakit's adapter
/// applied by llama.cpp's runtime (`llama_set_adapters_lora`, as `--lora`) gives the logits of
/// lorakit's f32 merged model run by llama.cpp (1e-5 relative; measured 2e-7 … 4e-7), and so
/// does llama.cpp's own converter output where it is right (qv_r8: identical logits) — but not
/// for rsLoRA / alpha_pattern, where it is off by ≥ 1e-2 (measured 0.59 and 0.30). Into the
/// Q8_0 base, `keep` (merged q/v requantized to Q8_0, run with llama.cpp's Q8_0 kernels) is as
/// close to the exact merge as llama.cpp's own adapter on that base (≤ 1.25×; measured
/// 1.28e-2 against 1.31e-2), and within 2× of that error from it (measured 1.40e-2).
#[test]
fn llama_cpp_loads_lorakit_adapters_and_merged_models() {
    let Some(bin) = llama_logits_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    loadable(&fixture("gguf/llama_f32.gguf"), &p("f32.gguf"));
    loadable(&fixture("gguf/llama_q8_0.gguf"), &p("q8.gguf"));
    let base_f32 = llama_logits(&bin, &p("f32.gguf"), None);
    let base_q8 = llama_logits(&bin, &p("q8.gguf"), None);
    let mut exact = None;
    for case in ["qv_r8", "rslora_all", "patterns"] {
        let adapter = fixture(&format!("llama/adapters/{case}"));
        let lk = p(&format!("{case}.lk.gguf"));
        to_gguf(&adapter, &p("f32.gguf"), &lk);
        let merged = p(&format!("{case}.merged.gguf"));
        merge_json(p("f32.gguf"), s(&adapter), &merged, &["--outtype", "f32"]);
        let lc = fixture(&format!("gguf/llamacpp/{case}.gguf"));
        let l_merged = llama_logits(&bin, &merged, None);
        let l_lk = llama_logits(&bin, &p("f32.gguf"), Some(&lk));
        let l_lc = llama_logits(&bin, &p("f32.gguf"), Some(&lc));
        let (e_lk, e_lc) = (logits_err(&l_lk, &l_merged), logits_err(&l_lc, &l_merged));
        let moved = logits_err(&base_f32, &l_merged);
        eprintln!("{case}: lorakit adapter {e_lk:.2e}, llama.cpp adapter {e_lc:.2e}, base {moved:.2e} from the merge");
        assert!(moved > 1e-3, "{case}: the adapter does not move the logits");
        assert!(
            e_lk <= 1e-5,
            "{case}: lorakit's adapter in llama.cpp {e_lk:e}"
        );
        if case == "qv_r8" {
            assert_eq!(l_lc, l_lk, "{case}: same tensors, same logits");
            exact = Some(l_merged);
        } else {
            assert!(e_lc >= 1e-2, "{case}: llama.cpp's converter {e_lc:e}");
        }
    }
    // Q8_0 base. `exact`: the f32 merge into the F32 base (checked above against lorakit's
    // adapter and, in the merge tests, against PEFT). llama.cpp multiplies Q8_0 weights with
    // Q8_0-quantized activations, so every Q8_0 model is off `exact` by a quantization error;
    // `reference` (llama.cpp's own adapter on the Q8_0 base) shows how much.
    let adapter = fixture("llama/adapters/qv_r8");
    let exact = exact.expect("qv_r8 ran");
    let reference = llama_logits(
        &bin,
        &p("q8.gguf"),
        Some(&fixture("gguf/llamacpp/qv_r8.gguf")),
    );
    let keep = p("q8.keep.gguf");
    merge_json(p("q8.gguf"), &adapter, &keep, &[]);
    let l_keep = llama_logits(&bin, &keep, None);
    let (e_keep, e_ref) = (logits_err(&l_keep, &exact), logits_err(&reference, &exact));
    let e_between = logits_err(&l_keep, &reference);
    eprintln!(
        "q8_0 keep: {e_keep:.2e} from the exact merge, llama.cpp base + adapter {e_ref:.2e}, \
         between them {e_between:.2e}; Q8_0 base vs F32 base {:.2e}",
        logits_err(&base_q8, &base_f32)
    );
    assert!(e_keep <= 1.25 * e_ref, "{e_keep:e} vs {e_ref:e}");
    assert!(e_between <= 2.0 * e_ref, "{e_between:e} vs {e_ref:e}");
}

/// An aLoRA in GGUF (`adapter.alora.invocation_tokens`, as llama.cpp's converter writes it) is
/// read for what it is: its update applies only after the invocation tokens, so a merge into a
/// GGUF or a Hugging Face base refuses it, as it refuses the PEFT folder, instead of applying
/// the adapter to every token. The same adapter without the key merges.
#[test]
fn gguf_alora_adapters_are_refused_by_merge() {
    let lora = fixture("gguf/llamacpp/alora.gguf");
    let (_dir, [gguf_out, hf_out]) = scratch_all(["m.gguf", "hf"]);
    for (base, out) in [
        (fixture("gguf/llama_f32.gguf"), &gguf_out),
        (fixture("llama/base"), &hf_out),
    ] {
        let e = refused(merge_args(&base, &lora, out, &[]), out);
        assert_mentions(&e, &["alora.gguf", "aLoRA", "invocation tokens"]);
    }
    // The PEFT folder it came from is refused by the GGUF merge too (it was merged).
    let e = refused(
        merge_args(
            &fixture("gguf/llama_f32.gguf"),
            &fixture("gguf/alora"),
            &gguf_out,
            &[],
        ),
        &gguf_out,
    );
    assert_mentions(&e, &["adapter_config.json", "aLoRA"]);
    let plain = fixture("gguf/llamacpp/qv_r8.gguf");
    merge_ok(&fixture("gguf/llama_f32.gguf"), &plain, &gguf_out, &[]);
}
