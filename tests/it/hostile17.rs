//! The seventeenth hostile round and the PEFT differential review of 2026-12-08 (helpers'
//! campaigns on the release CLI against PEFT 0.21.2 and transformers 5.24): each test fails
//! before its fix. Peer-made cases: `fixtures/review22/` (`fixtures/gen/review22_fixtures.py`,
//! what PEFT does with each recorded in its MANIFEST).

use super::common::*;

/// Trainable-token rows on a module PEFT has already wrapped: beside a LoRA on the embedding
/// (PEFT raises TypeError on load) and on a `modules_to_save` module (PEFT's own save; its
/// forward raises and `merge_and_unload` leaves the wrapper). lorakit merged both (the rows
/// over the LoRA or the copy) and evaluated them; now every command refuses, naming the module.
#[test]
fn trainable_tokens_on_a_wrapped_module_are_refused() {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("review22/MANIFEST.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    let ids = fixture("llama/logits.safetensors");
    for (case, want) in [
        ("tokens_lora_embed", "is also a LoRA target"),
        ("tokens_mts", "is in modules_to_save"),
    ] {
        // The peer refuses: on load, or in the forward.
        let peft = &manifest[case]["peft"];
        let refused = |k: &str| peft[k].as_str().is_some_and(|v| v != "ok");
        assert!(refused("load") || refused("forward"), "{case}: {peft}");
        let adapter = fixture(&format!("review22/{case}"));
        let out = dir.path().join(case);
        let err = merge_refused(&base, &adapter, &out, &[]);
        assert_mentions(
            &err,
            &["model.embed_tokens", "trainable_token_indices", want],
        );
        let eval = eval_cpu_args(&base, &["--adapter", s(&adapter), "--input-ids", s(&ids)]);
        assert_mentions(&one_line_error(&run_err(eval)), &[want]);
        let err = one_line_error(&run_err(check_args(&adapter, &[])));
        assert_mentions(&err, &[want]);
    }
}

/// config.json as transformers 5 reads it: a non-empty `rope_scaling` wins over
/// `rope_parameters` (lorakit took `rope_parameters`: 4.7e-3 off), and `tie_word_embeddings`
/// over a stored `lm_head.weight` that differs from the embedding leaves them untied (lorakit
/// used the embedding: 1.69 off). Logits from transformers (`fixtures/review22/eval_configs`).
#[test]
fn eval_reads_rope_and_tie_settings_as_transformers_does() {
    let dir = tempfile::tempdir().unwrap();
    let refs = read(&fixture("review22/eval_configs/logits.safetensors"));
    let ids = fixture("llama/logits.safetensors");
    let base_logits = read(&ids)["logits_base"].f32();
    for case in ["rope_both", "tie_stored"] {
        let model = dir.path().join(case);
        std::fs::create_dir(&model).unwrap();
        std::fs::copy(
            fixture("llama/base/model.safetensors"),
            model.join("model.safetensors"),
        )
        .unwrap();
        std::fs::copy(
            fixture(&format!("review22/eval_configs/{case}/config.json")),
            model.join("config.json"),
        )
        .unwrap();
        let out = dir.path().join(format!("{case}.safetensors"));
        run_ok(eval_cpu_args(
            &model,
            &["--input-ids", s(&ids), "--logits", s(&out)],
        ));
        let got = read(&out)["logits"].f32();
        let want = refs[case].f32();
        // The setting matters: the rope factor moves transformers' logits off the base's; the
        // stored lm_head differs from the embedding a tie would put there.
        let moved = rel_err(&want, &base_logits);
        if case == "rope_both" {
            assert!(
                moved > 1e-4,
                "the rope variant does not change the logits ({moved})"
            );
        } else {
            let w = read(&fixture("llama/base/model.safetensors"));
            let apart = rel_err(
                &w["lm_head.weight"].f32(),
                &w["model.embed_tokens.weight"].f32(),
            );
            assert!(apart > 0.1, "lm_head equals the embedding ({apart})");
        }
        let err = rel_err(&got, &want);
        assert!(
            err < 1e-6,
            "{case}: {err} off transformers (the variant moves {moved})"
        );
    }
}

/// Rope settings transformers cannot compute with (a zero or list-valued setting, a rope type
/// that is a number, a base so small the frequencies overflow f32) gave NaN losses or were
/// skipped silently; each is now one line naming config.json and the key.
#[test]
fn eval_refuses_rope_settings_that_cannot_be_computed() {
    let dir = tempfile::tempdir().unwrap();
    let ids = fixture("llama/logits.safetensors");
    let cfg0: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("llama/base/config.json")).unwrap())
            .unwrap();
    let cases: [(&str, serde_json::Value, &str); 6] = [
        (
            "factor0",
            serde_json::json!({"rope_parameters": {"rope_type": "linear", "factor": 0.0, "rope_theta": 1e4}}),
            "rope_parameters.factor",
        ),
        (
            "list",
            serde_json::json!({"rope_parameters": [1, 2]}),
            "`rope_parameters` is [1,2]",
        ),
        (
            "type_int",
            serde_json::json!({"rope_parameters": {"rope_type": 5}}),
            "rope_type` is 5",
        ),
        (
            "low_freq0",
            serde_json::json!({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}),
            "low_freq_factor",
        ),
        (
            "theta_tiny",
            serde_json::json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e-300}}),
            "rotary frequency",
        ),
        (
            "scaling_string",
            serde_json::json!({"rope_scaling": "linear"}),
            "`rope_scaling` is \"linear\"",
        ),
    ];
    for (name, patch, want) in cases {
        let model = dir.path().join(name);
        std::fs::create_dir(&model).unwrap();
        std::fs::copy(
            fixture("llama/base/model.safetensors"),
            model.join("model.safetensors"),
        )
        .unwrap();
        let mut cfg = cfg0.clone();
        for (k, v) in patch.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
        let err = one_line_error(&run_err(eval_cpu_args(&model, &["--input-ids", s(&ids)])));
        assert_mentions(&err, &["config.json", want]);
    }
}

/// A `--weight` or `--alpha` finite in f64 but past f32's range: eval printed a NaN loss and
/// train wrote an adapter its own merge refuses. Both are refused as the flag, nothing written.
#[test]
fn weights_and_alphas_past_f32_are_refused_as_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ids) = (fixture("llama/base"), fixture("llama/logits.safetensors"));
    let adapter = fixture("llama/adapters/qv_r8");
    let eval = eval_cpu_args(
        &base,
        &[
            "--adapter",
            s(&adapter),
            "--weight",
            "1e39",
            "--input-ids",
            s(&ids),
        ],
    );
    assert_mentions(&one_line_error(&run_err(eval)), &["--weight", "f32"]);
    let out = dir.path().join("t");
    let train = one_step_train(&base, &fixture("text/tiny.txt"), &out, &["--alpha", "1e39"]);
    let err = refused(train, &out);
    assert_mentions(&err, &["--alpha", "f32"]);
}
