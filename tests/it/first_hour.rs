//! A new user's first hour (issue #22): right refusals only, outputs that load, and one
//! consistent command line.

use super::common::*;
use safetensors::{tensor::TensorView, Dtype};
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A BERT-shaped base folder: word embeddings and one query projection, no `lm_head`, a config
/// naming `architectures` and no `tie_word_embeddings`.
fn bert_base(dir: &Path, architecture: &str) -> PathBuf {
    let base = dir.join(format!("bert-{architecture}"));
    std::fs::create_dir_all(&base).unwrap();
    let emb: Vec<f32> = (0..40).map(|i| i as f32 * 0.01).collect();
    let q: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
    let (eb, qb) = (f32_bytes(&emb), f32_bytes(&q));
    safetensors::serialize_to_file(
        vec![
            (
                "embeddings.word_embeddings.weight",
                TensorView::new(Dtype::F32, vec![10, 4], &eb).unwrap(),
            ),
            (
                "encoder.layer.0.attention.self.query.weight",
                TensorView::new(Dtype::F32, vec![4, 4], &qb).unwrap(),
            ),
        ],
        None,
        &base.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        base.join("config.json"),
        serde_json::json!({"architectures": [architecture], "model_type": "bert"}).to_string(),
    )
    .unwrap();
    base
}

/// A PEFT adapter on `embeddings.word_embeddings` (rank 2, scale 1).
fn embedding_adapter(dir: &Path) -> PathBuf {
    let ad = dir.join("emb-adapter");
    std::fs::create_dir_all(&ad).unwrap();
    let a = f32_bytes(&[0.5; 20]); // lora_embedding_A: [r, vocab]
    let b = f32_bytes(&[0.25; 8]); // lora_embedding_B: [dim, r]
    safetensors::serialize_to_file(
        vec![
            (
                "base_model.model.embeddings.word_embeddings.lora_embedding_A",
                TensorView::new(Dtype::F32, vec![2, 10], &a).unwrap(),
            ),
            (
                "base_model.model.embeddings.word_embeddings.lora_embedding_B",
                TensorView::new(Dtype::F32, vec![4, 2], &b).unwrap(),
            ),
        ],
        None,
        &ad.join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        ad.join("adapter_config.json"),
        r#"{"peft_type":"LORA","r":2,"lora_alpha":2,"target_modules":["word_embeddings"]}"#,
    )
    .unwrap();
    ad
}

#[test]
fn tie_detection_follows_the_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let ad = embedding_adapter(dir.path());
    // An encoder without an LM head ties nothing: the embedding merges, ΔW = (B·A)ᵀ·s.
    let base = bert_base(dir.path(), "BertModel");
    let out = dir.path().join("merged");
    run_ok([
        "merge",
        "--base",
        s(&base),
        "--adapter",
        s(&ad),
        "--out",
        s(&out),
        "-q",
    ]);
    let w = read_checkpoint(&out)["embeddings.word_embeddings.weight"].f32();
    for (i, x) in w.iter().enumerate() {
        // Every (B·A)ᵀ entry is 2 · 0.5 · 0.25 = 0.25.
        let want = i as f32 * 0.01 + 0.25;
        assert!((x - want).abs() < 1e-6, "[{i}] {x} vs {want}");
    }
    // A causal LM with no lm_head tensor does tie it: refused.
    let base = bert_base(dir.path(), "LlamaForCausalLM");
    let line = one_line_error(&run_err([
        "merge",
        "--base",
        s(&base),
        "--adapter",
        s(&ad),
        "--out",
        s(&dir.path().join("x")),
    ]));
    assert!(line.contains("tie_word_embeddings"), "{line}");
}

#[test]
fn extract_refuses_an_empty_result_and_takes_peft_style_targets() {
    let dir = tempfile::tempdir().unwrap();
    let tuned = dir.path().join("tuned");
    run_ok([
        "merge",
        "--base",
        s(&fixture("llama/base")),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "--out",
        s(&tuned),
        "-q",
    ]);
    // Nothing changed: exit 2, nothing written.
    let out = dir.path().join("a");
    let line = one_line_error(&run_err([
        "extract",
        "--base",
        s(&fixture("llama/base")),
        "--tuned",
        s(&fixture("llama/base")),
        "--rank",
        "4",
        "--out",
        s(&out),
    ]));
    assert!(line.contains("no module differs"), "{line}");
    assert!(!out.exists());
    // A --targets list that matches nothing: exit 2, naming the syntax.
    let line = one_line_error(&run_err([
        "extract",
        "--base",
        s(&fixture("llama/base")),
        "--tuned",
        s(&tuned),
        "--rank",
        "4",
        "--targets",
        "nothing_proj",
        "--out",
        s(&out),
    ]));
    assert!(line.contains("--targets"), "{line}");
    assert!(!out.exists());
    // The comma list of train and PEFT, and re: for a regex, select the same modules.
    for targets in ["q_proj,v_proj", "re:(q|v)_proj$"] {
        let o = dir.path().join(format!("t{}", targets.len()));
        run_ok([
            "extract",
            "--base",
            s(&fixture("llama/base")),
            "--tuned",
            s(&tuned),
            "--rank",
            "8",
            "--targets",
            targets,
            "--out",
            s(&o),
            "-q",
            "--device",
            "cpu",
        ]);
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
    let o = bin()
        .args([
            "extract",
            "--base",
            s(&base),
            "--tuned",
            s(&tuned),
            "--rank",
            "2",
            "--out",
            s(&out),
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("embeddings.position_ids"), "reported: {err}");
    assert!(out.join("adapter_model.safetensors").exists());
    // A float tensor missing on one side is still an error, unless excluded by tensor name.
    let tuned2 = dir.path().join("t2.safetensors");
    let w = f32_bytes(&[0.0; 64]);
    let e = f32_bytes(&[1.0; 8]);
    safetensors::serialize_to_file(
        vec![
            (
                "encoder.proj.weight",
                TensorView::new(Dtype::F32, vec![8, 8], &w).unwrap(),
            ),
            (
                "encoder.extra.bias",
                TensorView::new(Dtype::F32, vec![8], &e).unwrap(),
            ),
        ],
        None,
        &tuned2,
    )
    .unwrap();
    one_line_error(&run_err([
        "extract",
        "--base",
        s(&base),
        "--tuned",
        s(&tuned2),
        "--rank",
        "2",
        "--out",
        s(&dir.path().join("b")),
    ]));
    run_ok([
        "extract",
        "--base",
        s(&base),
        "--tuned",
        s(&tuned2),
        "--rank",
        "2",
        "--exclude",
        "encoder.extra.bias",
        "--out",
        s(&dir.path().join("c")),
        "-q",
        "--device",
        "cpu",
    ]);
}

#[test]
fn combine_svd_caps_the_rank_at_the_module_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mix");
    let o = bin()
        .args([
            "combine",
            "--adapter",
            s(&fixture("llama/adapters/qv_r8")),
            "--adapter",
            s(&fixture("llama/adapters/qv_r8")),
            "--method",
            "svd",
            "--rank",
            "1000",
            "--out",
            s(&out),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
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
        let line = one_line_error(&run_err(["inspect", s(&p)]));
        assert!(line.contains(want) && line.contains(name), "{line}");
    }
}

#[test]
fn merge_copies_subfolders_and_refuses_a_file_name_for_a_folder_output() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("st");
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
    let text = run_ok([
        "merge",
        "--base",
        s(&base),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "-o",
        s(&out),
    ]);
    assert!(
        text.contains("created folder") && text.contains("new/parent"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(out.join("1_Pooling/config.json")).unwrap(),
        std::fs::read(base.join("1_Pooling/config.json")).unwrap()
    );
    assert!(out.join("modules.json").exists());
    // A folder base into `x.safetensors`: refused, nothing made.
    let x = dir.path().join("x.safetensors");
    let line = one_line_error(&run_err([
        "merge",
        "--base",
        s(&base),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "--out",
        s(&x),
    ]));
    assert!(line.contains("folder"), "{line}");
    assert!(!x.exists());
}

#[test]
fn one_command_line() {
    let dir = tempfile::tempdir().unwrap();
    // torch spellings of dtypes, -o, --prefix (and the old --kohya-prefix, hidden).
    let out = dir.path().join("bf");
    run_ok([
        "merge",
        "--base",
        s(&fixture("llama/base")),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "--dtype",
        "bfloat16",
        "-o",
        s(&out),
        "-q",
    ]);
    assert!(read_checkpoint(&out)
        .values()
        .all(|t| t.dtype == Dtype::BF16));
    let tuned = dir.path().join("tuned");
    run_ok([
        "merge",
        "--base",
        s(&fixture("llama/base")),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "-o",
        s(&tuned),
        "-q",
    ]);
    for flag in ["--prefix", "--kohya-prefix"] {
        let k = dir.path().join(format!("k{}.safetensors", flag.len()));
        run_ok([
            "extract",
            "--base",
            s(&fixture("llama/base")),
            "--tuned",
            s(&tuned),
            "--rank",
            "4",
            "--format",
            "kohya",
            flag,
            "lora_te",
            "-o",
            s(&k),
            "--dtype",
            "float16",
            "-q",
            "--device",
            "cpu",
        ]);
        assert!(read(&k).keys().all(|n| n.starts_with("lora_te_")));
    }
    // -q silences the report; --json still prints what was asked for.
    let quiet = run_ok([
        "merge",
        "--base",
        s(&fixture("llama/base")),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "-o",
        s(&dir.path().join("q")),
        "-q",
    ]);
    assert!(quiet.is_empty(), "{quiet}");
    let json = run_ok([
        "merge",
        "--base",
        s(&fixture("llama/base")),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "-o",
        s(&dir.path().join("j")),
        "-q",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["operation"], "merge");
    // --version names the revision and the features.
    let v = run_ok(["--version"]);
    assert!(v.contains("rev ") && v.contains("features: gpu"), "{v}");
}

#[test]
fn diff_compares_across_dtypes_and_only_common_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("m");
    run_ok([
        "merge",
        "--base",
        s(&fixture("llama/base")),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "-o",
        s(&merged),
        "-q",
    ]);
    // Against PEFT's merge_and_unload, which holds only the changed tensors.
    let reference = fixture("llama/merged/qv_r8.safetensors");
    let o = bin()
        .args(["diff", s(&merged), s(&reference), "--tolerance", "1e-6"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "tensors only in A fail by default"
    );
    run_ok([
        "diff",
        s(&merged),
        s(&reference),
        "--common",
        "--tolerance",
        "1e-6",
    ]);
    // A bf16 copy: values compared, the dtype change reported; within bf16 rounding it passes.
    let bf = dir.path().join("bf");
    run_ok([
        "merge",
        "--base",
        s(&fixture("llama/base")),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "--dtype",
        "bf16",
        "-o",
        s(&bf),
        "-q",
    ]);
    let j = run_ok(["diff", s(&bf), s(&merged), "--tolerance", "4e-3", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["pass"], true, "{j}");
    assert_eq!(v["dtype_changes"], 21);
    let max = v["max_rel_fro_diff"].as_f64().unwrap();
    assert!(max > 0.0 && max < 4e-3, "{max}");
    let o = bin().args(["diff", s(&bf), s(&merged)]).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "tolerance 0 still demands equal values"
    );
}

#[test]
fn merge_and_extract_dry_runs_plan_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let j = run_ok([
        "merge",
        "--base",
        s(&fixture("llama/base_sharded")),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "-o",
        s(&out),
        "--dry-run",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["modules_matched_count"], 4);
    assert_eq!(v["tensors_merged_count"], 4);
    let planned: u64 = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(planned, v["bytes"].as_u64().unwrap());
    assert!(!out.exists(), "a dry run wrote");
    // The plan is the run: the same files, the same tensor bytes.
    run_ok([
        "merge",
        "--base",
        s(&fixture("llama/base_sharded")),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "-o",
        s(&out),
        "-q",
    ]);
    for f in v["files"].as_array().unwrap() {
        let p = PathBuf::from(f["path"].as_str().unwrap());
        let t = read(&p);
        assert_eq!(t.len() as u64, f["tensors_count"].as_u64().unwrap());
        assert_eq!(
            t.values().map(|x| x.data.len() as u64).sum::<u64>(),
            f["bytes"].as_u64().unwrap()
        );
    }
    let a = dir.path().join("a");
    let j = run_ok([
        "extract",
        "--base",
        s(&fixture("llama/base")),
        "--tuned",
        s(&out),
        "--rank",
        "4",
        "--targets",
        "q_proj",
        "-o",
        s(&a),
        "--dry-run",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["low_rank_candidates_count"], 2);
    assert!(!a.exists(), "a dry run wrote");
}

#[test]
fn every_subcommand_has_a_man_page() {
    for c in [
        "inspect", "merge", "extract", "resize", "combine", "convert", "eval", "train", "diff",
        "finalize", "run",
    ] {
        let page = run_ok(["man", c]);
        assert!(
            page.contains(&format!("lorakit\\-{c}")) || page.contains(&format!("lorakit-{c}")),
            "{c}: {}",
            &page[..200.min(page.len())]
        );
    }
    one_line_error(&run_err(["man", "nonsense"]));
}
