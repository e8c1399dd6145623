//! The 2026-12-08 reviews' findings, each against what the peer does with a peer-made file
//! (`fixtures/gen/review23_fixtures.py`, outcomes in `fixtures/review23/MANIFEST.json`).

use super::check::{check_json, fired, outcome, target};
use super::common::*;
use serde_json::Value;

fn f(rel: &str) -> std::path::PathBuf {
    fixture(&format!("review23/{rel}"))
}

fn manifest() -> Value {
    read_json(f("MANIFEST.json"))
}

/// The diffusers target of `check ADAPTER --target diffusers [ARGS]`: (exit code, target).
fn diffusers(adapter: &std::path::Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--target", "diffusers"];
    all.extend_from_slice(args);
    let (code, r) = check_json(adapter, &all);
    (code, target(&r, "diffusers").clone())
}

/// LyCORIS' DyLoRA on an SD UNet's convs writes `lora_up` 2-D beside a 4-D `lora_down`
/// (`DyLoraModule.custom_state_dict`). diffusers' `load_lora_weights` raises a size mismatch on
/// every such conv. Before: `diffusers LOADS … PASS`, with and without the base. Now
/// `diffusers.conv_factors_2d` fails it and names exactly the modules diffusers named, without
/// the base too (the down factor says the module is a conv); the Linear `time_emb_proj`
/// modules, whose factors are both 2-D, are not named. `convert --to diffusers` is the remedy
/// the rule gives, and its file checks clean.
#[test]
fn dylora_conv_with_a_flat_up_fails_for_diffusers() {
    let m = &manifest()["dylora_sd"]["diffusers_load"];
    assert_eq!(
        (m["loaded"].as_bool(), m["error"].as_str()),
        (Some(false), Some("RuntimeError")),
        "{m}"
    );
    let mut want: Vec<String> = strs(&m["size_mismatch_lora_B"])
        .iter()
        .map(|p| format!("lora_unet_{}", p.replace('.', "_")))
        .collect();
    want.sort();
    assert!(want.len() > 10, "{m}");
    let src = f("dylora_sd.safetensors");
    let base = fixture("pipeline_sd1/unet");
    for args in [vec![], vec!["--base", s(&base)]] {
        let (code, t) = diffusers(&src, &args);
        assert_eq!((code, outcome(&t)), (1, "fails"), "{args:?} {t}");
        assert_eq!(fired(&t), vec!["diffusers.conv_factors_2d"], "{t}");
        let finding = entry(&t["findings"], "rule", "diffusers.conv_factors_2d");
        assert_eq!(item_modules(finding), want, "{args:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("diffusers.safetensors");
    run_ok(convert_args(
        &src,
        "diffusers",
        &out,
        &["--base", s(&base), "--quiet"],
    ));
    let (code, t) = diffusers(&out, &["--base", s(&base)]);
    assert_eq!((code, outcome(&t)), (0, "loads"), "{t}");
}

/// `bias="lora_only"` (PEFT's own save): the LoRA modules' trained biases are
/// `{module}.base_layer.bias`. llama.cpp's converter exits 1 on them ("Unexpected name",
/// recorded in the MANIFEST) and vLLM's `from_lora_tensors` raises "unsupported LoRA weight"
/// (source read); `check` said LOADS for both. Now both fail, naming the keys; PEFT loads it.
#[test]
fn saved_base_layer_biases_fail_llama_cpp_and_vllm() {
    let m = &manifest()["bias_lora_only"];
    assert_eq!(m["peft_load"], "ok", "{m}");
    let conv = &m["llama_cpp_convert"];
    assert_eq!(conv["exit"], 1, "{m}");
    assert!(
        conv["last_line"]
            .as_str()
            .unwrap()
            .contains("base_layer.bias': Not a lora_A or lora_B tensor"),
        "{m}"
    );
    let base = fixture("sweep8/lora_bias_trained_bias/base");
    let (code, r) = check_json(&f("bias_lora_only"), &["--base", s(&base)]);
    assert_eq!(code, 1, "{r}");
    let want = vec![
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias",
        "base_model.model.model.layers.0.self_attn.v_proj.base_layer.bias",
    ];
    for (t, rule) in [
        ("llama.cpp", "llama.cpp.base_layer_bias"),
        ("vllm", "vllm.base_layer_bias"),
    ] {
        let t = target(&r, t);
        assert_eq!(
            (outcome(t), fired(t)),
            ("fails", vec![rule.to_string()]),
            "{t}"
        );
        assert_eq!(item_modules(entry(&t["findings"], "rule", rule)), want);
    }
    assert_eq!(outcome(target(&r, "peft")), "loads");
}

/// llama.cpp's converter permutes q/k biases as it permutes their weights
/// (`LlamaModel.modify_tensors`). `diff` in Hugging Face terms un-permuted the weights only, so
/// the converter's exact output failed on `q_proj.bias`/`k_proj.bias` (max abs 0.28); `merge`
/// into the GGUF refused PEFT's trained q/k biases (`bias="lora_only"`) as "cannot be permuted"
/// and called them modules_to_save. Now the conversion compares identical and the merge equals
/// the converter's output of PEFT's `merge_and_unload` (f32 rounding of ΔW aside).
#[test]
fn llama_q_k_biases_are_permuted_in_diff_and_merge() {
    let d = f("llama_attn_bias");
    let (code, r) = diff_json(&d.join("base.f32.gguf"), &d.join("base"), &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["identical"], r["tensors_compared"], "{r}");
    for b in [
        "model.layers.0.self_attn.q_proj.bias",
        "model.layers.0.self_attn.k_proj.bias",
    ] {
        assert_eq!(entry(&r["tensors"], "name", b)["identical"], true, "{r}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    run_ok(merge_args(
        &d.join("base.f32.gguf"),
        &d.join("lora_only"),
        &out,
        &["--quiet"],
    ));
    let (code, r) = diff_json(&out, &d.join("merged.f32.gguf"), &["--tolerance", "1e-6"]);
    assert_eq!(code, 0, "{r}");
    // The biases are replaced, not computed: bit for bit.
    for b in [
        "blk.0.attn_q.bias",
        "blk.0.attn_k.bias",
        "blk.0.attn_output.bias",
    ] {
        assert_eq!(
            entry(&r["tensors"], "name", b)["identical"],
            true,
            "{b}: {r}"
        );
    }
}

/// Gemma's converters store every `*norm.weight` + 1 (`conversion/gemma.py`). `diff` in Hugging
/// Face terms compared them unshifted: an exact conversion failed with max abs 1.000 on every
/// norm. Now the checkpoint side is shifted as the converter shifts it, and the converter's
/// norms (F32) compare identical.
#[test]
fn gemma_norms_compare_as_the_converter_stores_them() {
    for g in ["gemma", "gemma2", "gemma3"] {
        let gguf = fixture(&format!("gguf/llamacpp/hf_{g}_base.f16.gguf"));
        let (code, r) = diff_json(
            &gguf,
            &fixture(&format!("gguf/hf_{g}")),
            &["--tolerance", "1e-3"],
        );
        assert_eq!(code, 0, "{g}: {r}");
        let norms: Vec<&Value> = r["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"].as_str().unwrap().ends_with("norm.weight"))
            .collect();
        assert!(norms.len() >= 3, "{g}: {r}");
        assert!(norms.iter().all(|t| t["identical"] == true), "{g}: {r}");
    }
}

/// A LoRA on the quantized `lm_head` of a bitsandbytes NF4 model: PEFT saves the quantized base
/// head beside it (`lm_head.base_layer.weight` U8 + `.absmax`, `.quant_map`, `.quant_state.…`).
/// lorakit read those as full replacements: `merge` refused ("has shape [96, 64], the adapter
/// needs [3072, 1]", the companions "no base tensor") and `check` said PEFT fails, which loads
/// it. Now they are the base layer's copy, and the merge equals PEFT's `merge_and_unload`
/// (requantized by PEFT) within f32 rounding of absmax.
#[test]
fn quantized_saved_base_head_is_the_base_layer() {
    let m = &manifest()["bnb_lm_head"];
    assert_eq!(strs(&m["saved_base_layer"]).len(), 4, "{m}");
    let d = f("bnb_lm_head");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    run_ok(merge_args(&d.join("q"), &d.join("ad"), &out, &["--quiet"]));
    let (code, r) = diff_json(&out, &d.join("peft_merged"), &["--tolerance", "1e-6"]);
    assert_eq!(code, 0, "{r}");
    // The head's packed 4-bit codes are PEFT's bytes.
    assert_eq!(
        entry(&r["tensors"], "name", "lm_head.weight")["identical"],
        true,
        "{r}"
    );
    let (code, r) = check_json(
        &d.join("ad"),
        &["--base", s(&d.join("q")), "--target", "peft"],
    );
    assert_eq!((code, outcome(target(&r, "peft"))), (0, "loads"), "{r}");
}

/// `eval` and `train` on a quantized checkpoint (bitsandbytes NF4 here) failed on the first
/// packed tensor: "num_attention_heads and head_dim give [64, 64], the checkpoint has
/// [2048, 1]" for NF4, "dtype I8 is not a float type" for int8 and FP8. Now both name the
/// checkpoint and the way out (`dequantize`), whose output `eval` reads.
#[test]
fn eval_and_train_on_a_quantized_model_say_dequantize_first() {
    let q = f("bnb_lm_head/q");
    let tmp = tempfile::tempdir().unwrap();
    // Token ids below the fixture's vocabulary of 96.
    let ids = tmp.path().join("ids.safetensors");
    let bytes: Vec<u8> = [1i64, 5, 9, 2, 7, 3]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    write_views(
        &ids,
        &[("input_ids", safetensors::Dtype::I64, &[1, 6], &bytes)],
    );
    let err = one_line_error(&run_err(eval_cpu_args(&q, &["--input-ids", s(&ids)])));
    assert_mentions(
        &err,
        &[
            "bnb_lm_head/q",
            "quantized weight(s) (bitsandbytes",
            "eval reads float weights",
            "lorakit dequantize",
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ad");
    let err = one_line_error(&run_err(one_step_train(
        &q,
        &fixture("text/tiny.txt"),
        &out,
        &[],
    )));
    assert_mentions(&err, &["quantized weight(s)", "train reads float weights"]);
    assert!(!out.exists());
    let dq = tmp.path().join("dq");
    run_ok(vec!["dequantize", s(&q), "--out", s(&dq), "--quiet"]);
    run_ok(eval_cpu_args(&dq, &["--input-ids", s(&ids)]));
}

/// A newcomer's first hour (2026-12-08 trial of a fresh clone): a mistyped flag or command lost
/// clap's suggestion in the one-line error ("unexpected argument '--output' found (see --help)");
/// `resize`/`extract --out x.safetensors` made a folder named like a file where `merge`
/// refuses it. Now the tip stays on the line, and the adapter commands refuse the name and
/// leave nothing behind.
#[test]
fn first_hour_mistakes_get_the_way_out() {
    let err = one_line_error(&run_err(["merge", "--output", "x"]));
    assert_mentions(
        &err,
        &["'--output'", "tip: a similar argument exists: '--out'"],
    );
    let err = one_line_error(&run_err(["inspec", "x"]));
    assert_mentions(&err, &["tip: a similar subcommand exists: 'inspect'"]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("small.safetensors");
    let qv = fixture("llama/adapters/qv_r8");
    let base = fixture("llama/base");
    for args in [
        resize_args(&qv, &out, &["--rank", "4"]),
        extract_args(&base, &base, &out, &["--rank", "2"]),
        combine_args(&[(&qv, None)], &out, &["--method", "cat"]),
    ] {
        let err = one_line_error(&run_err(args));
        assert_mentions(
            &err,
            &["small.safetensors", "a PEFT adapter is a folder", "kohya"],
        );
        assert!(!out.exists());
    }
    run_ok(resize_args(
        &qv,
        &out,
        &["--rank", "4", "--format", "kohya", "--quiet"],
    ));
    assert!(out.is_file());
}
