//! `check` rules added for issue #19's audit: dtypes (PEFT checked here by running it), SGLang's
//! `lora_B.bias` and `modules_to_save` (read from its loader), and the rest of the list.
//!
//! Cases whose loader runs here (PEFT) are compared with what it does
//! (`fixtures/gen/check_dtype_load.py`, gated on `LORAKIT_PYTHON` like every PEFT test); the
//! others assert the rule read from the loader's source, cited at each case and in
//! src/ops/check/rules.rs.

use super::check::{check_json, fired, target};
use super::common::*;

/// Runs a loader script on `case` and reads its JSON verdict, which must be the one every loader
/// run here gives a float adapter: loaded, into float32 LoRA weights equal to the file's values
/// cast to f32.
fn loads_as_f32_cast(script: &mut std::process::Command, case: &str) -> serde_json::Value {
    let out = script.output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{case}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["loads"], true, "{case}: {v}");
    assert_eq!(
        v["param_dtypes"],
        serde_json::json!(["torch.float32"]),
        "{case}"
    );
    assert_eq!(v["equal_to_cast"], true, "{case}");
    v
}

#[test]
fn dtype_rules_match_what_peft_does_and_what_the_converters_read() {
    let base = fixture("llama/base");
    let all = "peft,llama.cpp,vllm,lorax";
    let (code, f64r) = check_json(
        &fixture("check/dtype_f64"),
        &["--base", s(&base), "--target", all],
    );
    // Warnings only: every target loads and applies everything.
    assert_eq!(code, 0);
    assert_eq!(fired(target(&f64r, "peft")), ["peft.dtype"]);
    // convert_lora_to_gguf.py: --outtype f32 (default)/f16/bf16/q8_0, F64 read.
    assert_eq!(fired(target(&f64r, "llama.cpp")), ["llama.cpp.dtype"]);
    // vLLM casts to the model dtype (lora_dtype "auto"): F64 on an F32 base. LoRAX too
    // (lora.py LoraWeights.load → load_module_weight(…, model.dtype)).
    assert_eq!(fired(target(&f64r, "vllm")), ["vllm.dtype"]);
    assert_eq!(fired(target(&f64r, "lorax")), ["lorax.dtype"]);
    let (code, f8r) = check_json(
        &fixture("check/dtype_f8"),
        &["--base", s(&base), "--target", all],
    );
    assert_eq!(code, 0);
    assert!(fired(target(&f8r, "peft")).is_empty());
    assert!(fired(target(&f8r, "llama.cpp")).is_empty());
    assert_eq!(fired(target(&f8r, "vllm")), ["vllm.dtype"]);
    let Some(py) = peft_python() else { return };
    for (case, rounded) in [("check/dtype_f64", true), ("check/dtype_f8", false)] {
        // PEFT loads both into float32 LoRA weights equal to the file's values cast to f32.
        loads_as_f32_cast(
            std::process::Command::new(&py)
                .arg(fixture("gen/check_dtype_load.py"))
                .arg(fixture(case))
                .arg(&base),
            case,
        );
        // The warning fires exactly where the cast rounds (f64 → f32), not where it is exact.
        let r = if rounded { &f64r } else { &f8r };
        assert_eq!(
            fired(target(r, "peft")).contains(&"peft.dtype".into()),
            rounded
        );
    }
}

#[test]
fn sglang_bias_and_modules_to_save_are_silently_dropped() {
    // sglang mem_pool.py load_lora_weight_to_buffer: a layer tensor without "lora_A" in its name
    // goes to the lora_B slot, where lora_B.weight (sorted after lora_B.bias) overwrites it.
    let (_, r) = check_json(&fixture("llama/adapters/bias"), &["--target", "sglang"]);
    // (This fixture also has q_proj without v_proj, which SGLang refuses: sglang.q_without_v.)
    assert_eq!(target(&r, "sglang")["verdict"], "fails");
    assert!(fired(target(&r, "sglang")).contains(&"sglang.lora_bias".into()));
    // sglang lora.py _process_weight: embed_tokens/lm_head tensors of modules that are no LoRA
    // target are skipped with a debug log (saved_rows: q/v LoRA + saved embed_tokens, lm_head).
    let (_, r) = check_json(&fixture("check/saved_rows"), &["--target", "sglang"]);
    assert_eq!(target(&r, "sglang")["loads"], true);
    assert_eq!(fired(target(&r, "sglang")), ["sglang.modules_to_save"]);
    // Neither fires on a plain q/v adapter.
    let (code, r) = check_json(&fixture("llama/adapters/qv_r8"), &["--target", "sglang"]);
    assert_eq!(code, 0);
    assert!(fired(target(&r, "sglang")).is_empty());
}

#[test]
fn llama_cpp_refuses_shapes_and_vocabularies_that_do_not_fit() {
    // llama-adapter.cpp llama_adapter_lora_init_impl: "tensor … has incorrect shape (hint:
    // maybe wrong base model?)", for token_embd against the vocabulary too. added_tokens is an
    // embed_tokens LoRA over 130 tokens on a 128-token base (PEFT refuses it: MANIFEST.json).
    let base = fixture("llama/base");
    let (code, r) = check_json(
        &fixture("check/added_tokens"),
        &["--base", s(&base), "--target", "llama.cpp,peft"],
    );
    assert_eq!(code, 1);
    assert!(fired(target(&r, "llama.cpp")).contains(&"llama.cpp.vocab".into()));
    assert_eq!(target(&r, "peft")["verdict"], "fails");
    let (code, r) = check_json(
        &fixture("llama/adapters/qv_r8"),
        &["--base", s(&base), "--target", "llama.cpp"],
    );
    assert_eq!(code, 0);
    assert!(fired(target(&r, "llama.cpp")).is_empty());
}

/// diffusers with F64 and F8_E4M3 LoRA files (fixtures/gen/check_diffusers_dtype.py, which ran
/// diffusers 0.42.1 on them): both load, into float32 LoRA layers holding the file's values cast
/// to f32 — the f64 file's values are not representable in f32, so they are rounded, and only
/// there does `diffusers.dtype` warn.
#[test]
fn diffusers_dtype_rule_matches_what_diffusers_does() {
    let (_, f64r) = check_json(
        &fixture("check/dtype_f64_unet.safetensors"),
        &["--target", "diffusers"],
    );
    assert_eq!(fired(target(&f64r, "diffusers")), ["diffusers.dtype"]);
    assert_eq!(target(&f64r, "diffusers")["verdict"], "loads_with_warnings");
    let (_, f8r) = check_json(
        &fixture("check/dtype_f8_unet.safetensors"),
        &["--target", "diffusers"],
    );
    assert!(fired(target(&f8r, "diffusers")).is_empty());
    let Some(py) = peft_python() else { return };
    for (case, rounded) in [
        ("check/dtype_f64_unet.safetensors", true),
        ("check/dtype_f8_unet.safetensors", false),
    ] {
        let v = loads_as_f32_cast(
            std::process::Command::new(&py)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .arg(fixture("gen/check_diffusers_dtype.py"))
                .arg("load")
                .arg(fixture(case)),
            case,
        );
        assert_eq!(v["file_exact_in_f32"], !rounded, "{case}");
    }
}
