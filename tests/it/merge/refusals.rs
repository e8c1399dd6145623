//! What a merge refuses, and how: unmatched modules, tied embeddings, outputs onto inputs,
//! ambiguous kohya names, usage errors, integer tensors.

use super::*;

#[test]
fn unmatched_modules_are_listed_and_nothing_is_written() {
    let (dir, out) = scratch("out");
    let err = merge_qv_r8_refused(&fixture("gpt2/base"), &out, &[]);
    assert!(err.contains("4 adapter module(s) do not match"), "{err}");
    assert_mentions(
        &err,
        &[
            "model.layers.0.self_attn.q_proj",
            "model.layers.1.self_attn.v_proj",
        ],
    );
    assert!(
        listing(dir.path()).is_empty(),
        "no temp files left: {:?}",
        listing(dir.path())
    );
}

#[test]
fn allow_unmatched_warns_and_merges_the_rest() {
    let (_dir, out) = scratch("out");
    // The lora_bias adapter on a base whose q/o projections have no bias: PEFT refuses to merge
    // it; lorakit lists each bias as unmatched, and with --allow-unmatched merges the weights.
    let line = merge_fixtures_refused("llama/base", "llama/adapters/bias_nobase", &out, &[]);
    assert!(line.contains("lora_B.bias"), "{line}");
    let allow = ["--allow-unmatched"];
    let stderr = ok_stderr(merge_fixtures_args(
        "llama/base",
        "llama/adapters/bias_nobase",
        &out,
        &allow,
    ));
    assert_eq!(stderr.matches("warning: ").count(), 4, "{stderr}");
    // The weights did merge: W = W0 + (alpha/r)·B·A in f64 from the adapter's own tensors
    // (read with the safetensors crate), the biases left as they were.
    let merged = read_checkpoint(&out);
    let base_t = read_checkpoint(&fixture("llama/base"));
    let ad = read(&fixture(
        "llama/adapters/bias_nobase/adapter_model.safetensors",
    ));
    let cfg: serde_json::Value =
        read_json(fixture("llama/adapters/bias_nobase/adapter_config.json"));
    let scale = cfg["lora_alpha"].as_f64().unwrap() / cfg["r"].as_f64().unwrap();
    let mut merged_modules = 0;
    for (module, a, b) in peft_lora_modules(&ad) {
        let (av, bv) = (a.f32(), b.f32());
        let (r, k, d) = (a.shape[0], a.shape[1], b.shape[0]);
        let name = format!("{module}.weight");
        let (w0, w) = (base_t[&name].f32(), merged[&name].f32());
        let product = crate::it::reference::scaled_product64(scale, &bv, &av, (d, r, k));
        let mut moved = 0f64;
        for i in 0..d {
            for j in 0..k {
                let delta = product[i * k + j];
                let want = w0[i * k + j] as f64 + delta;
                assert!(
                    (w[i * k + j] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{name}[{i},{j}]: {} vs {want}",
                    w[i * k + j]
                );
                moved += delta.abs();
            }
        }
        assert!(moved > 0.0, "{name}: the adapter changes nothing");
        merged_modules += 1;
    }
    assert_eq!(merged_modules, 4);
}

/// `--allow-unmatched` never lets a merge through that lands nothing: an adapter for another
/// architecture is an error, and no copy of the base is written.
#[test]
fn allow_unmatched_with_nothing_matched_is_an_error() {
    let (_dir, out) = scratch("out");
    let err = run_err(merge_fixtures_args(
        "gpt2/base",
        "llama/adapters/qv_r8",
        &out,
        &["--allow-unmatched"],
    ));
    assert_eq!(err.status.code(), Some(2));
    let line = one_line_error(&err);
    assert!(line.contains("no adapter module matches"), "{line}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn tied_embeddings_are_refused() {
    let (_dir, out) = scratch("out");
    let err = merge_fixtures_refused("llama/tied", "llama/adapters/embed", &out, &[]);
    assert_mentions(
        &err,
        &[
            "tie_word_embeddings",
            "embed_tokens",
            "--tied-embeddings shared",
        ],
    );
    // An adapter that leaves the embeddings alone merges into the tied base.
    merge_qv_r8_into(&fixture("llama/tied"), &out, &[]);
}

/// `--tied-embeddings shared` merges an embedding LoRA and trainable tokens into the tensor a
/// tied base shares with lm_head, as PEFT's `merge_and_unload` does on the tied model (its
/// output: fixtures/gen/tied_merge_fixture.py); the output keeps the tie and stores no
/// lm_head. A base that stores lm_head.weight beside the tie stays refused.
#[test]
fn tied_embeddings_shared_equals_peft() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/tied");
    for name in ["embed", "tokens"] {
        let out = dir.path().join(name);
        merge_ok(
            &base,
            &fixture(&format!("llama/adapters/{name}")),
            &out,
            &["--tied-embeddings", "shared", "--device", "cpu"],
        );
        let reference = fixture(&format!("llama/merged/tied_{name}.safetensors"));
        let tensors = read(&reference);
        assert!(tensors.contains_key("model.embed_tokens.weight"));
        let n = assert_merged_matches(&out, &base, &reference, 1e-6);
        assert_eq!(n, tensors.len());
        let cfg: serde_json::Value = read_json(out.join("config.json"));
        assert_eq!(cfg["tie_word_embeddings"], true);
    }
    // Both tensors stored beside the tie: no flag makes lorakit keep two tensors equal.
    let both = dir.path().join("both");
    std::fs::create_dir(&both).unwrap();
    for f in ["config.json", "generation_config.json"] {
        std::fs::copy(base.join(f), both.join(f)).unwrap();
    }
    let mut t = read(&base.join("model.safetensors"));
    let embed = t["model.embed_tokens.weight"].clone();
    t.insert("lm_head.weight".into(), embed);
    write_tensors(&both.join("model.safetensors"), &t);
    let out = dir.path().join("both-out");
    let err = merge_refused(
        &both,
        &fixture("llama/adapters/embed"),
        &out,
        &["--tied-embeddings", "shared"],
    );
    assert!(err.contains("also stores lm_head.weight"), "{err}");
}

#[test]
fn output_onto_input_is_refused() {
    let (dir, base) = scratch("base.safetensors");
    std::fs::copy(fixture("llama/base/model.safetensors"), &base).unwrap();
    let before = std::fs::read(&base).unwrap();
    let link = dir.path().join("link.safetensors");
    std::os::unix::fs::symlink(&base, &link).unwrap();
    for out in [&base, &link] {
        let res = run_err(merge_args(
            &base,
            &fixture("llama/adapters/qv_r8"),
            out,
            &[],
        ));
        let err = one_line_error(&res);
        assert!(err.contains("output is also an input"), "{err}");
    }
    assert_eq!(std::fs::read(&base).unwrap(), before);
    assert_eq!(
        listing(dir.path()),
        vec!["base.safetensors", "link.safetensors"]
    );
}

#[test]
fn kohya_names_that_match_two_base_tensors_are_ambiguous() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ad) = ambiguous_kohya_case(dir.path());
    let out = dir.path().join("o.safetensors");
    let res = run_err(merge_args(&base, &ad, &out, &[]));
    assert_ambiguous_kohya(&one_line_error(&res));
    assert!(!out.exists());
}

#[test]
fn usage_errors_exit_2() {
    let res = run_err(["merge", "--base", "x", "--out", "y"]);
    assert_eq!(res.status.code(), Some(2));
    let res = run_err(merge_fixtures_args(
        "llama/base",
        "llama/adapters/qv_r8",
        Path::new("/tmp/never-written-lorakit"),
        &["--weight", "1", "--weight", "2"],
    ));
    let line = one_line_error(&res);
    assert!(line.contains("2 --weight values for 1 --adapter"), "{line}");
    let help = run_ok(["merge", "--help"]);
    assert!(help.contains("Examples:") && help.contains("--unmerge"));
}

/// The `not_float` unmatched reason: a module aimed at an integer (quantized) base tensor is
/// listed with it, and with --allow-unmatched the float module still merges.
#[test]
fn a_module_on_an_integer_tensor_is_unmatched_as_not_float() {
    use safetensors::{tensor::TensorView, Dtype};
    let (dir, base) = scratch("base.safetensors");
    let q = vec![1u8; 16];
    let f: Vec<u8> = (0..16).flat_map(|i| (i as f32).to_le_bytes()).collect();
    write_views(
        &base,
        &[
            ("a.weight", Dtype::I8, &[4, 4], &q),
            ("b.weight", Dtype::F32, &[4, 4], &f),
        ],
    );
    let ad = dir.path().join("ad");
    std::fs::create_dir(&ad).unwrap();
    let av: Vec<u8> = [0.5f32; 4].iter().flat_map(|x| x.to_le_bytes()).collect();
    let bv: Vec<u8> = [0.25f32; 4].iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut views = Vec::new();
    for m in ["a", "b"] {
        views.push((
            format!("base_model.model.{m}.lora_A.weight"),
            TensorView::new(Dtype::F32, vec![1, 4], &av).unwrap(),
        ));
        views.push((
            format!("base_model.model.{m}.lora_B.weight"),
            TensorView::new(Dtype::F32, vec![4, 1], &bv).unwrap(),
        ));
    }
    safetensors::serialize_to_file(views, None, &ad.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        ad.join("adapter_config.json"),
        r#"{"peft_type":"LORA","r":1,"lora_alpha":1}"#,
    )
    .unwrap();
    let out = dir.path().join("out.safetensors");
    let line = merge_refused(&base, &ad, &out, &[]);
    assert_mentions(&line, &["a.weight", "I8"]);
    let json = merge_ok(&base, &ad, &out, &["--allow-unmatched", "--json", "-q"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["unmatched"][0]["reason"], "not_float", "{json}");
    let merged = read(&out);
    assert_eq!(
        merged["a.weight"].data, q,
        "the integer tensor is copied untouched"
    );
    let b = merged["b.weight"].f32();
    for (i, x) in b.iter().enumerate() {
        assert!((x - (i as f32 + 0.125)).abs() < 1e-6, "b[{i}] = {x}");
    }
}

/// The two conditions of a tied base, each alone: `tie_word_embeddings: true` with an
/// `lm_head` tensor saved anyway, and a CausalLM with no `lm_head` tensor and no
/// `tie_word_embeddings` key (transformers' default for Llama is tied). Both refuse an
/// adapter on the embeddings; an explicit `false` with an `lm_head` merges it.
#[test]
fn tied_embeddings_are_detected_by_either_condition_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tied_by_config = folder_with_json(dir.path(), "llama/base", "config.json", |c| {
        c["tie_word_embeddings"] = true.into();
    });
    let tied_by_absence = folder_with_json(dir.path(), "llama/tied", "config.json", |c| {
        c.as_object_mut().unwrap().remove("tie_word_embeddings");
    });
    let embed = fixture("llama/adapters/embed");
    for base in [&tied_by_config, &tied_by_absence] {
        let out = dir.path().join("out");
        let err = merge_refused(base, &embed, &out, &[]);
        assert!(err.contains("embed_tokens"), "{}: {err}", base.display());
    }
    let untied = folder_with_json(dir.path(), "llama/base", "config.json", |c| {
        c["tie_word_embeddings"] = false.into();
    });
    let out = dir.path().join("untied-out");
    merge_ok(&untied, &embed, &out, &[]);
    let before = read(&untied.join("model.safetensors"));
    let after = read(&out.join("model.safetensors"));
    assert_ne!(
        before["model.embed_tokens.weight"].data,
        after["model.embed_tokens.weight"].data
    );
    assert_eq!(before["lm_head.weight"].data, after["lm_head.weight"].data);
}

/// PEFT injects layers only where `target_modules` (with `layers_to_transform`,
/// `exclude_modules`, `modules_to_save`) selects, and silently drops the other tensors: with
/// qv_r8's config cut to `q_proj`, PEFT 0.21.2's `merge_and_unload` changes the q projections
/// only. The file then means one thing to PEFT and another to its tensors, so every command
/// refuses it, naming the file and a tensor; the selection itself is checked against PEFT's
/// `check_target_module_exists` in `adapter::formats::peft::targets`.
#[test]
fn a_config_that_does_not_select_the_files_modules_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (field, value) in [
        ("target_modules", serde_json::json!(["q_proj"])),
        ("layers_to_transform", serde_json::json!([0])),
        ("exclude_modules", serde_json::json!(["v_proj"])),
    ] {
        let adapter = adapter_with_config(dir.path(), "llama/adapters/qv_r8", |cfg| {
            cfg[field] = value.clone();
        });
        let err = refused_merge(dir.path(), &adapter);
        assert!(
            err.contains("adapter_model.safetensors")
                && err.contains("is not selected by adapter_config.json")
                && err.contains(".lora_A.weight`"),
            "{field}: {err}"
        );
        let inspect = run_err(inspect_args(&adapter, &[]));
        assert!(
            one_line_error(&inspect).contains("is not selected"),
            "{field}"
        );
    }
    // The config as PEFT saved it selects every module: the same folder merges.
    run_ok(merge_args(
        &fixture("llama/base"),
        &adapter_with_config(dir.path(), "llama/adapters/qv_r8", |_| {}),
        &dir.path().join("ok"),
        &[],
    ));
}

/// Config features whose LoRA PEFT itself refuses to merge (PEFT 0.21.2: `layer_replication`
/// in `LoraModel._check_merge_allowed`, aLoRA's `merge_unsafe`): merged as plain updates they
/// would give a model PEFT never computes, so `merge` and `eval` refuse them, naming the config
/// file; `use_qalora` on a float base is a plain LoRA in PEFT (its variant is GPTQ-only) and
/// merges (tests/it/gaps12.rs).
#[test]
fn adapters_peft_cannot_merge_are_refused() {
    let (dir, out) = scratch("out");
    for (field, value, ok) in [
        (
            "layer_replication",
            serde_json::json!([[0, 2], [1, 2]]),
            false,
        ),
        ("alora_invocation_tokens", serde_json::json!([5, 6]), false),
        ("use_qalora", serde_json::json!(true), true),
        ("use_qalora", serde_json::json!(false), true),
    ] {
        let adapter = adapter_with_config(dir.path(), "llama/adapters/qv_r8", |cfg| {
            cfg[field] = value.clone();
        });
        if ok {
            let _ = std::fs::remove_dir_all(&out);
            run_ok(merge_args(&fixture("llama/base"), &adapter, &out, &[]));
            continue;
        }
        let err = refused_merge(dir.path(), &adapter);
        assert!(
            err.contains("adapter_config.json") && err.contains(field),
            "{field}: {err}"
        );
        let eval = run_err(eval_cpu_args(
            &fixture("llama/base"),
            &["--adapter", s(&adapter), "--prompt", "hi"],
        ));
        assert!(one_line_error(&eval).contains(field), "{field}: eval");
    }
}
