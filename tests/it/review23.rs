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
