//! The faults fixtures/gen/check_gguf_sweep.py found in lorakit's llama.cpp path, each pinned
//! against llama.cpp's own converter output (fixtures/gen/gguf_sweep_fixtures.py, llama.cpp as
//! vendored by llama-cpp-python 0.3.36) on the tied fixture Qwen3 (fixtures/gguf/hf_qwen3).

use super::*;

/// `lorakit check ADAPTER --base fixtures/gguf/hf_qwen3 --target llama.cpp --json`.
fn check_llamacpp(adapter: &str) -> serde_json::Value {
    check_llamacpp_on(adapter, "hf_qwen3")
}

/// The llama.cpp target's part of [`check_llamacpp_report`].
fn check_llamacpp_on(adapter: &str, base: &str) -> serde_json::Value {
    check_llamacpp_report(adapter, base)["targets"][0].clone()
}

/// `lorakit check ADAPTER --base BASE --target llama.cpp --json` (both under fixtures/gguf/,
/// exit 1: something does not apply): the whole report.
fn check_llamacpp_report(adapter: &str, base: &str) -> serde_json::Value {
    let args = ["--base", &g(base), "--target", "llama.cpp", "--json"];
    let out = run_exit(check_args(Path::new(&g(adapter)), &args), 1);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The report `t` says the adapter loads but does not apply whole, for one finding only:
/// `llama.cpp.gemma_lm_head` on `items`.
fn assert_loads_without_the_gemma_head(t: &serde_json::Value, items: serde_json::Value) {
    assert_eq!(
        (t["loads"].as_bool(), t["applies_all"].as_bool()),
        (Some(true), Some(false)),
        "{t}"
    );
    assert_eq!(
        field_strs(&t["findings"], "rule"),
        ["llama.cpp.gemma_lm_head"],
        "{t}"
    );
    assert_eq!(t["findings"][0]["items"], items, "{t}");
}

/// An `lm_head` LoRA on a base with tied embeddings: llama.cpp's converter writes the pair as
/// `output.weight.lora_a/b`, but llama.cpp's GGUF of that base has no `output.weight` (the
/// converter writes it from `lm_head.weight`, which a tied checkpoint lacks), so the runtime
/// refuses the file (`llama-adapter.cpp`: "does not exist in base model"). lorakit wrote the
/// same unusable file from a Hugging Face `--base`; it refuses, naming the module, and writes
/// nothing — as it already did from the GGUF base, and as `check` predicts.
#[test]
fn lm_head_lora_on_a_tied_base_is_refused_as_llama_cpp_refuses_it() {
    let lc = GgufModel::open(g("llamacpp/qwen3_lm_head_tied.gguf")).unwrap();
    assert!(lc.get("output.weight.lora_a").is_some());
    let base = GgufModel::open(g("llamacpp/hf_qwen3_base.f16.gguf")).unwrap();
    assert!(base.get("output.weight").is_none());
    assert!(base.get("token_embd.weight").is_some());

    for b in [g("hf_qwen3"), g("llamacpp/hf_qwen3_base.f16.gguf")] {
        let (_dir, out) = scratch("a.gguf");
        let e = one_line_error(&run_exit(
            convert_args(
                Path::new(&g("hf_qwen3/lm_head_tied")),
                "gguf",
                &out,
                &["--base", &b],
            ),
            2,
        ));
        assert!(e.contains("lm_head") && e.contains("output.weight"), "{e}");
        assert!(!out.exists());
    }
    let t = check_llamacpp("hf_qwen3/lm_head_tied");
    assert_eq!(t["loads"], false, "{t}");
    assert!(t["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["rule"] == "llama.cpp.tied_lm_head"));
    // The same adapter's other module, alone, still converts (q_proj: a tensor the base has).
    fixture_to_gguf("gguf/hf_qwen3/lora", "gguf/hf_qwen3");
}

/// `lora_alpha = 0`: PEFT's scale is 0 (ΔW = 0); llama.cpp's converter writes
/// `adapter.lora.alpha = 0` and B as trained, which `llama-adapter.h` `get_scale` applies at
/// scale 1 (`alpha ? alpha / rank : adapter_scale`). `check` said llama.cpp applies everything;
/// it names every module's wrong scale now. lorakit's own file folds the 0 into B, so what
/// llama.cpp applies is PEFT's ΔW.
#[test]
fn lora_alpha_zero_is_scale_one_in_llama_cpp() {
    let lc = GgufModel::open(g("llamacpp/qwen3_alpha0.gguf")).unwrap();
    assert_eq!(
        lc.header()
            .get("adapter.lora.alpha")
            .and_then(|v| v.as_f64()),
        Some(0.0)
    );
    let (f, t) = lc.get("blk.0.attn_q.weight.lora_b").unwrap();
    assert!(f.dequantize(t).unwrap().iter().any(|x| *x != 0.0));

    let t = check_llamacpp("hf_qwen3/alpha0");
    assert_eq!(
        (t["loads"].as_bool(), t["applies_all"].as_bool()),
        (Some(true), Some(false)),
        "{t}"
    );
    let f = entry(&t["findings"], "rule", "llama.cpp.scale");
    let items = f["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{f}");
    assert!(items
        .iter()
        .all(|i| i.as_str().unwrap().ends_with("scale 1 instead of 0")));

    let (_dir, out, v) = fixture_to_gguf("gguf/hf_qwen3/alpha0", "gguf/hf_qwen3");
    assert_eq!(v["folded_count"], 4, "{v}");
    let lk = GgufModel::open(&out).unwrap();
    for (f, t) in lk.tensors() {
        if t.name.ends_with(".lora_b") {
            assert!(
                f.dequantize(t).unwrap().iter().all(|x| *x == 0.0),
                "{}",
                t.name
            );
        }
    }
}

/// An `lm_head` LoRA on a Gemma base: `GemmaModel.filter_tensors` drops `lm_head.weight`
/// before the converter could refuse a tied head, so llama.cpp's file simply lacks the pair
/// (fixtures/gguf/llamacpp/gemma_lm_head.gguf, gguf_arch.py) and the runtime loads the rest.
/// `check` said the converter refuses it (`llama.cpp.tied_lm_head`, the Llama/Qwen behaviour);
/// it says now that it loads and silently leaves `lm_head` out.
#[test]
fn gemma_lm_head_lora_is_dropped_not_refused_by_llama_cpp() {
    let lc = GgufModel::open(g("llamacpp/gemma_lm_head.gguf")).unwrap();
    assert!(lc.get("output.weight.lora_a").is_none());
    assert!(lc.get("blk.0.attn_q.weight.lora_a").is_some());

    let v = check_llamacpp_report("hf_gemma/lm_head", "hf_gemma");
    assert_eq!(v["base"]["tie_word_embeddings"], true, "{v}");
    assert_loads_without_the_gemma_head(&v["targets"][0], serde_json::json!(["lm_head"]));
}

/// `modules_to_save = ["lm_head"]` on a Gemma2: the same `filter_tensors` drops the full
/// `lm_head.weight` before the converter's "Unexpected name" refusal, so llama.cpp's file holds
/// the q pairs only (fixtures/gguf/llamacpp/gemma2_lm_head_saved.gguf). `check` said the
/// converter refuses it (`llama.cpp.modules_to_save`); it loads and leaves the head out.
#[test]
fn gemma_modules_to_save_lm_head_is_dropped_not_refused_by_llama_cpp() {
    let lc = GgufModel::open(g("llamacpp/gemma2_lm_head_saved.gguf")).unwrap();
    let names: Vec<&str> = lc.tensors().map(|(_, t)| t.name.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().all(|n| n.contains("attn_q")), "{names:?}");

    let t = check_llamacpp_on("hf_gemma2/lm_head_saved", "hf_gemma2");
    assert_loads_without_the_gemma_head(&t, serde_json::json!(["lm_head.weight"]));
}
