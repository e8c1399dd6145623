//! Right refusals only, outputs that load: tied embeddings, empty extractions, integer buffers,
//! combine's rank cap, foreign files, merge output folders.

use super::*;

#[test]
fn tie_detection_follows_the_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let ad = embedding_adapter(dir.path());
    // An encoder without an LM head ties nothing: the embedding merges, ΔW = (B·A)ᵀ·s.
    let base = bert_base(dir.path(), "BertModel");
    let out = dir.path().join("merged");
    merge_ok(&base, &ad, &out, &["-q"]);
    let w = read_checkpoint(&out)["embeddings.word_embeddings.weight"].f32();
    for (i, x) in w.iter().enumerate() {
        // Every (B·A)ᵀ entry is 2 · 0.5 · 0.25 = 0.25.
        let want = i as f32 * 0.01 + 0.25;
        assert!((x - want).abs() < 1e-6, "[{i}] {x} vs {want}");
    }
    // A causal LM with no lm_head tensor does tie it: refused.
    let base = bert_base(dir.path(), "LlamaForCausalLM");
    let line = merge_refused(&base, &ad, &dir.path().join("x"), &[]);
    assert!(line.contains("tie_word_embeddings"), "{line}");
}

#[test]
fn extract_refuses_an_empty_result_and_takes_peft_style_targets() {
    let (dir, tuned) = scratch("tuned");
    merge_qv_r8(&tuned, &["-q"]);
    // Nothing changed: exit 2, nothing written.
    let out = dir.path().join("a");
    let line = refused(
        extract_args(
            &fixture("llama/base"),
            &fixture("llama/base"),
            &out,
            &["--rank", "4"],
        ),
        &out,
    );
    assert!(line.contains("no module differs"), "{line}");
    // A --targets list that matches nothing: exit 2, naming the syntax.
    let line = refused(
        extract_args(
            &fixture("llama/base"),
            &tuned,
            &out,
            &["--rank", "4", "--targets", "nothing_proj"],
        ),
        &out,
    );
    assert!(line.contains("--targets"), "{line}");
    // The comma list of train and PEFT, and re: for a regex, select the same modules.
    for targets in ["q_proj,v_proj", "re:(q|v)_proj$"] {
        let o = dir.path().join(format!("t{}", targets.len()));
        let flags = ["--rank", "8", "--targets", targets, "-q", "--device", "cpu"];
        run_ok(extract_args(&fixture("llama/base"), &tuned, &o, &flags));
        let t = read(&o.join("adapter_model.safetensors"));
        let mut mods: Vec<&str> = t
            .keys()
            .filter_map(|k| k.strip_suffix(".lora_A.weight"))
            .collect();
        mods.sort();
        assert_eq!(
            mods,
            vec![
                "base_model.model.model.layers.0.self_attn.q_proj",
                "base_model.model.model.layers.0.self_attn.v_proj",
                "base_model.model.model.layers.1.self_attn.q_proj",
                "base_model.model.model.layers.1.self_attn.v_proj",
            ],
            "{targets}"
        );
    }
}

/// transformers 5 no longer saves `embeddings.position_ids`: an integer buffer in one side only
/// is reported and skipped; `--exclude` also takes tensor names.
#[test]
fn extract_skips_integer_buffers_present_on_one_side() {
    let dir = tempfile::tempdir().unwrap();
    let mk = |name: &str, with_buffer: bool, shift: f32| {
        let p = dir.path().join(name);
        let w: Vec<f32> = (0..64)
            .map(|i| (i % 7) as f32 * 0.1 + if i % 9 == 0 { shift } else { 0.0 })
            .collect();
        let wb = f32_bytes(&w);
        let ids: Vec<u8> = (0..8i64).flat_map(|x| x.to_le_bytes()).collect();
        let mut v = vec![(
            "encoder.proj.weight",
            TensorView::new(Dtype::F32, vec![8, 8], &wb).unwrap(),
        )];
        if with_buffer {
            v.push((
                "embeddings.position_ids",
                TensorView::new(Dtype::I64, vec![1, 8], &ids).unwrap(),
            ));
        }
        safetensors::serialize_to_file(v, None, &p).unwrap();
        p
    };
    let base = mk("base.safetensors", true, 0.0);
    let tuned = mk("tuned.safetensors", false, 0.5);
    let out = dir.path().join("a");
    let err = ok_stderr(extract_args(
        &base,
        &tuned,
        &out,
        &flags("--rank 2 --device cpu"),
    ));
    assert!(err.contains("embeddings.position_ids"), "reported: {err}");
    assert!(out.join("adapter_model.safetensors").exists());
    // A float tensor missing on one side is still an error, unless excluded by tensor name.
    let tuned2 = dir.path().join("t2.safetensors");
    let w = f32_bytes(&[0.0; 64]);
    let e = f32_bytes(&[1.0; 8]);
    write_views(
        &tuned2,
        &[
            ("encoder.proj.weight", Dtype::F32, &[8, 8], &w),
            ("encoder.extra.bias", Dtype::F32, &[8], &e),
        ],
    );
    let b = dir.path().join("b");
    one_line_error(&run_err(extract_args(&base, &tuned2, &b, &["--rank", "2"])));
    run_ok(extract_args(
        &base,
        &tuned2,
        &dir.path().join("c"),
        &flags("--rank 2 --exclude encoder.extra.bias -q --device cpu"),
    ));
}

#[test]
fn combine_svd_caps_the_rank_at_the_module_size() {
    let (_dir, out) = scratch("mix");
    let qv = fixture("llama/adapters/qv_r8");
    let svd = flags("--method svd --rank 1000");
    let err = ok_stderr(combine_args(&[(&qv, None), (&qv, None)], &out, &svd));
    assert!(err.contains("capped"), "{err}");
    for (k, t) in read(&out.join("adapter_model.safetensors")) {
        if k.ends_with("lora_A.weight") {
            assert!(t.shape[0] <= 64, "{k}: rank {}", t.shape[0]);
        }
    }
}

#[test]
fn foreign_files_are_named_by_format() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, want) in [
        (
            "model.gguf",
            b"GGUF\x03\x00\x00\x00\x00\x00\x00\x00".to_vec(),
            "GGUF",
        ),
        (
            "pytorch_model.bin",
            b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00".to_vec(),
            "PyTorch",
        ),
        (
            "old.pt",
            b"\x80\x02}q\x00(X\x05\x00\x00\x00".to_vec(),
            "pickle",
        ),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let line = one_line_error(&run_err(inspect_args(&p, &[])));
        assert!(line.contains(want) && line.contains(name), "{line}");
    }
}

#[test]
fn merge_copies_subfolders_and_refuses_a_file_name_for_a_folder_output() {
    let (dir, base) = scratch("st");
    std::fs::create_dir_all(base.join("1_Pooling")).unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixture(&format!("llama/base/{f}")), base.join(f)).unwrap();
    }
    std::fs::write(
        base.join("1_Pooling/config.json"),
        r#"{"pooling_mode_mean_tokens": true}"#,
    )
    .unwrap();
    std::fs::write(base.join("modules.json"), "[]").unwrap();
    // Missing parents are created and named in the summary.
    let out = dir.path().join("new/parent/out");
    let text = merge_qv_r8_into(&base, &out, &[]);
    assert_mentions(&text, &["created folder", "new/parent"]);
    assert_eq!(
        std::fs::read(out.join("1_Pooling/config.json")).unwrap(),
        std::fs::read(base.join("1_Pooling/config.json")).unwrap()
    );
    assert!(out.join("modules.json").exists());
    // A folder base into `x.safetensors`: refused, nothing made.
    let x = dir.path().join("x.safetensors");
    let line = merge_qv_r8_refused(&base, &x, &[]);
    assert!(line.contains("folder"), "{line}");
}
