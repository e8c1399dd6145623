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

/// `fixtures/llama/base`'s weights with `config` as its config.json, in `dir/name`.
fn base_with_config(dir: &std::path::Path, name: &str, config: &[u8]) -> std::path::PathBuf {
    let model = dir.join(name);
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(
        fixture("llama/base/model.safetensors"),
        model.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(model.join("config.json"), config).unwrap();
    model
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
        let config = fixture(&format!("review22/eval_configs/{case}/config.json"));
        let model = base_with_config(dir.path(), case, &std::fs::read(config).unwrap());
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
        let mut cfg = cfg0.clone();
        for (k, v) in patch.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let model = base_with_config(dir.path(), name, cfg.to_string().as_bytes());
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

/// `lorakit.module_names` (the module paths lorakit records in the kohya files it writes) was
/// taken as it stood by `convert --to peft`: a path like `../../../tmp/evil`, `/etc/passwd`, one
/// ending in `.lora_A`, or the paths of two modules swapped, went into the PEFT folder's tensor
/// names, which lorakit itself then refused to read. Each is now refused naming the metadata
/// key and the module; the untouched file still converts back exactly.
#[test]
fn module_paths_in_kohya_metadata_must_be_what_the_names_spell() {
    let dir = tempfile::tempdir().unwrap();
    let kohya = dir.path().join("k.safetensors");
    run_ok(convert_args(
        &fixture("llama/adapters/qv_r8"),
        "kohya",
        &kohya,
        &[],
    ));
    let bytes = std::fs::read(&kohya).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    let names: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&meta["lorakit.module_names"]).unwrap();
    let q = "lora_unet_model_layers_0_self_attn_q_proj";
    assert_eq!(names[q], "model.layers.0.self_attn.q_proj", "{names:?}");
    let back = dir.path().join("back");
    run_ok(convert_args(&kohya, "peft", &back, &[]));
    assert_eq!(
        read(&back.join("adapter_model.safetensors")),
        read(&fixture("llama/adapters/qv_r8/adapter_model.safetensors"))
    );
    for (i, (path, want)) in [
        ("../../../tmp/evil", "is not a module path"),
        ("/etc/passwd", "is not a module path"),
        (
            "model.layers.0.self_attn.q_proj.lora_A",
            "is not a module path",
        ),
        (
            "model.layers.0.self_attn.v_proj",
            "is not the module this kohya name spells",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut lying = names.clone();
        lying.insert(q.into(), path.into());
        let mut m = meta.clone();
        m.insert(
            "lorakit.module_names".into(),
            serde_json::Value::Object(lying).to_string(),
        );
        let file = dir.path().join(format!("lying{i}.safetensors"));
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            st.tensors().into_iter().collect();
        safetensors::serialize_to_file(views, Some(m), &file).unwrap();
        let out = dir.path().join(format!("out{i}"));
        let err = refused(convert_args(&file, "peft", &out, &[]), &out);
        assert_mentions(&err, &["lorakit.module_names", q, path, want]);
    }
}

/// The first part of a split GGUF model under a name that is not a split name read as a whole
/// model with most tensors missing: `inspect` showed it, `merge --allow-unmatched` wrote a
/// partial model without its `split.*` keys. Its metadata now refuses it, naming the keys.
#[test]
fn a_split_part_under_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    run_ok(merge_args(
        &fixture("gguf/llama_f32.gguf"),
        &fixture("llama/adapters/qv_r8"),
        &out,
        &["--max-shard-size", "100KB"],
    ));
    let first = dir.path().join("m-00001-of-00004.gguf");
    let odd = dir.path().join("first.gguf");
    std::fs::rename(&first, &odd).unwrap();
    for args in [
        inspect_args(&odd, &[]),
        merge_args(
            &odd,
            &fixture("llama/adapters/qv_r8"),
            &dir.path().join("again.gguf"),
            &["--allow-unmatched"],
        ),
    ] {
        let err = one_line_error(&run_err(args));
        assert_mentions(
            &err,
            &["first.gguf", "split.no=0 split.count=4", "split names"],
        );
    }
    assert!(!dir.path().join("again.gguf").exists());
    // Under its own name it opens as part of the whole model again.
    std::fs::rename(&odd, &first).unwrap();
    run_ok(inspect_args(&first, &[]));
}

/// A folder of non-LoRA tensors (prompt tuning's `prompt_embeddings`) with a broken
/// adapter_config.json was refused as "no LoRA tensors found" in the weights file; the config
/// is the fault and is now named. A `.bin` that is no torch.save archive was parsed as
/// safetensors ("header length 7526676540175443304 exceeds …").
#[test]
fn a_broken_config_beside_other_tensors_is_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    write_views(
        &weights,
        &[(
            "prompt_embeddings",
            safetensors::Dtype::F32,
            &[4, 2],
            &[0u8; 32],
        )],
    );
    for (i, (config, want)) in [
        ("[1, 2]", "not a JSON object"),
        ("", "not JSON"),
        (r#"{"task_type": "CAUSAL_LM"}"#, "has no `peft_type`"),
        (r#"{"peft_type": 7}"#, "`peft_type` is 7"),
    ]
    .into_iter()
    .enumerate()
    {
        let folder = dir.path().join(format!("p{i}"));
        std::fs::create_dir(&folder).unwrap();
        std::fs::copy(&weights, folder.join("adapter_model.safetensors")).unwrap();
        std::fs::write(folder.join("adapter_config.json"), config).unwrap();
        let err = one_line_error(&run_err(check_args(&folder, &[])));
        assert_mentions(&err, &["adapter_config.json", want]);
    }
    let bin = dir.path().join("b");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(
        fixture("llama/adapters/qv_r8/adapter_config.json"),
        bin.join("adapter_config.json"),
    )
    .unwrap();
    std::fs::write(bin.join("adapter_model.bin"), b"hello, not a pickle at all").unwrap();
    let err = one_line_error(&run_err(inspect_args(&bin, &[])));
    assert_mentions(&err, &["adapter_model.bin", "torch.save zip archive"]);
}
