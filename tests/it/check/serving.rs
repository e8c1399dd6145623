//! vLLM 0.34.0 and SGLang 0.5.23 (the PyPI releases; src/ops/check/rules/serving.rs says why
//! not a stored GitHub copy): neither installs on this CPU machine, so each case asserts the
//! rule read from the released source, cited at the case. The config-only fixtures are made by
//! fixtures/gen/check_config_fixtures.py from a PEFT-written adapter.

use super::{
    assert_rules, check_json, edit_json, entry, fails, fired, fixture, item_modules, loads, s,
    scratch, server_base_cases, target,
};

#[test]
fn sglang_rank_rules_read_from_mem_pool() {
    // mem_pool.py load_lora_weight_to_buffer: every module goes into
    // `buffer[buffer_id, :r * stacked, :]` with r = adapter_config.json's r, and
    // load_lora_weight_tensor asserts `buffer_view.shape == weight.shape`. patterns has r 4 and
    // rank_pattern {k_proj: 2, layers.1.self_attn.q_proj: 6}: those modules fail; qv_r8 (every
    // module at r) does not.
    let (_, r) = check_json(&fixture("llama/adapters/patterns"), &["--target", "sglang"]);
    let t = target(&r, "sglang");
    assert_eq!(t["verdict"], "fails", "{t}");
    let f = entry(&t["findings"], "rule", "sglang.rank_pattern");
    assert_eq!(
        item_modules(f),
        vec![
            "model.layers.0.self_attn.k_proj",
            "model.layers.1.self_attn.k_proj",
            "model.layers.1.self_attn.q_proj",
        ]
    );
    loads("llama/adapters/qv_r8", "sglang").assert();
    // --fix zero-pads every module to the largest rank and writes r = that rank (exact):
    // SGLang's buffers then fit every module, and its one alpha/r is every module's scale.
    let (_dir, out) = scratch("fixed");
    let (_, r) = check_json(
        &fixture("llama/adapters/patterns"),
        &["--target", "sglang", "--fix", "--out", s(&out)],
    );
    let after = target(&r["after"], "sglang");
    assert_eq!(after["verdict"], "loads", "{after}");
}

#[test]
fn sglang_module_and_shape_rules() {
    assert_rules(&[
        // utils.py get_normalized_target_modules: a string other than "all"/"all-linear" raises.
        fails("check/target_regex", "sglang.target_modules_string"),
        // vLLM keeps target_modules: list | str and loads it.
        loads("check/target_regex", "vllm"),
    ]);
    // utils.py copy_weight_into_buffer casts to the buffers' (the server's) dtype.
    // utils.py get_default_hidden_dim: "get_hidden_dim not implemented for w_proj".
    // mem_pool.py: the embedding A buffer has the base vocabulary's columns.
    assert_rules(&server_base_cases(
        "sglang",
        ["sglang.dtype", "sglang.unsupported_module", "sglang.vocab"],
    ));
}

#[test]
fn sglang_applies_an_lm_head_lora_on_a_tied_base() {
    // lora_manager.py init_lora_modules: with lm_head a target and lm_head `is` embed_tokens,
    // SGLang builds a separate ParallelLMHead sharing the embedding weight and wraps it: no rule
    // fires on lm_head. (tied_lm_head targets q_proj without v_proj, which normalize_qkv_proj
    // refuses: that is the only finding.)
    let (_, r) = check_json(
        &fixture("check/tied_lm_head"),
        &["--base", s(&fixture("llama/tied")), "--target", "sglang"],
    );
    let t = target(&r, "sglang");
    assert_eq!(fired(t), vec!["sglang.q_without_v"], "{t}");
    let items = t["findings"][0]["items"].to_string();
    assert!(!items.contains("lm_head"), "{items}");
    assert!(t["not_evaluated"].as_array().unwrap().is_empty(), "{t}");
}

#[test]
fn vllm_config_rules_read_from_peft_helper() {
    assert_rules(&[
        // peft_helper.py PEFTHelper._init_is_supported: only gaussian/eva/orthogonal/mica/lora_ga
        // strings pass; "vLLM does not support init_lora_weights='pissa'".
        fails("check/init_pissa", "vllm.init_weights"),
        // _validate_features: "vLLM does not support Activated LoRA (aLoRA)."
        fails("check/alora", "vllm.peft_features"),
        // The unchanged adapter: init_lora_weights true, no aLoRA.
        loads("llama/adapters/qv_r8", "vllm"),
    ]);
}

/// vllm 0.34.0 peft_helper.py `PEFTHelper._validate_features`: `modules_to_save` entries other
/// than "classifier" and "score" are refused ("vLLM only supports modules_to_save being either
/// None or [\"classifier\", \"score\"] for classification models"); a configured classification
/// head alone passes. qv_r8 with only its config edited, so no full tensor is in the file.
#[test]
fn vllm_accepts_a_classification_head_in_modules_to_save() {
    for (saved, verdict, rule) in [
        (serde_json::json!(["score"]), "loads", ""),
        (serde_json::json!(["classifier", "score"]), "loads", ""),
        (
            serde_json::json!(["lm_head"]),
            "fails",
            "vllm.modules_to_save",
        ),
        (
            serde_json::json!(["score", "embed_tokens"]),
            "fails",
            "vllm.modules_to_save",
        ),
    ] {
        let (_dir, a) = scratch("a");
        super::super::common::copy_dir(&fixture("llama/adapters/qv_r8"), &a);
        edit_json(a.join("adapter_config.json"), |v| {
            v["modules_to_save"] = saved.clone()
        });
        let (_, r) = check_json(&a, &["--target", "vllm"]);
        let t = target(&r, "vllm");
        assert_eq!(t["verdict"], verdict, "{saved}: {t}");
        let rules = fired(t);
        assert_eq!(
            rules.iter().any(|x| x == "vllm.modules_to_save"),
            !rule.is_empty(),
            "{saved}: {rules:?}"
        );
    }
}
