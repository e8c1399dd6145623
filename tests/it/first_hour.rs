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

/// `--tensors` on an adapter and `--spectrum` / `--plot` on a checkpoint say what the flag is
/// for (exit 2, nothing written) instead of being ignored.
#[test]
fn inspect_flags_on_the_wrong_kind_of_input_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("llama/adapters/qv_r8");
    let base = fixture("llama/base");
    let e = one_line_error(&run_err(["inspect", s(&adapter), "--tensors"]));
    assert!(e.contains("an adapter") && e.contains("--tensors"), "{e}");
    let e = one_line_error(&run_err(["inspect", s(&base), "--spectrum"]));
    assert!(
        e.contains("not an adapter") && e.contains("--spectrum"),
        "{e}"
    );
    let plot = dir.path().join("p.svg");
    let e = one_line_error(&run_err(["inspect", s(&base), "--plot", s(&plot)]));
    assert!(e.contains("--plot"), "{e}");
    assert!(!plot.exists());
    // …and the right kinds still work.
    assert!(run_ok(["inspect", s(&base), "--tensors"]).contains("model.embed_tokens.weight"));
    assert!(run_ok(["inspect", s(&adapter), "--spectrum"]).contains("r90"));
}

/// A Hugging Face cache laid out as `huggingface_hub` writes it: refs/main → commit,
/// snapshots/COMMIT/* symlinks into blobs/.
fn hf_cache(root: &Path, id: &str, from: &Path) -> String {
    let commit = "4f1c0ffee0ddba11deadbeef0123456789abcdef";
    let repo = root.join(format!("models--{}", id.replace('/', "--")));
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let blob = repo
            .join("blobs")
            .join(format!("blob-{}", name.to_string_lossy()));
        std::fs::copy(e.path(), &blob).unwrap();
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(blob.file_name().unwrap()),
            snap.join(&name),
        )
        .unwrap();
    }
    commit.to_owned()
}

/// Read-only commands take a cache snapshot folder and a repo id found in the local cache
/// (`HF_HUB_CACHE`, else `HF_HOME/hub`), and never reach for the network for one that is not.
#[test]
fn read_only_commands_resolve_repo_ids_in_the_local_hf_cache() {
    let dir = tempfile::tempdir().unwrap();
    let hub = dir.path().join("hub");
    let base = fixture("llama/base");
    let commit = hf_cache(&hub, "tiny-org/tiny-llama", &base);
    hf_cache(&hub, "tiny-org/tiny-lora", &fixture("llama/adapters/qv_r8"));
    let expected = run_ok(["inspect", s(&base), "--json"]);
    let expected: serde_json::Value = serde_json::from_str(&expected).unwrap();
    // lorakit with one cache variable set (the other removed), run from the temp folder.
    let with_cache = |args: &[&str], var: &str, val: &Path| {
        bin()
            .args(args)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_HOME")
            .env(var, val)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let inspect = |arg: &str, var: &str, val: &Path| {
        let out = with_cache(&["inspect", arg, "--json"], var, val);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    for arg in [
        "tiny-org/tiny-llama".to_owned(),
        "tiny-org/tiny-llama@main".to_owned(),
        format!("tiny-org/tiny-llama@{commit}"),
    ] {
        for (var, val) in [
            ("HF_HUB_CACHE", hub.clone()),
            ("HF_HOME", dir.path().to_path_buf()),
        ] {
            let got = inspect(&arg, var, &val);
            assert_eq!(got["parameters"], expected["parameters"], "{arg} via {var}");
            assert_eq!(
                got["tensor_count"], expected["tensor_count"],
                "{arg} via {var}"
            );
        }
    }
    // The snapshot folder itself (symlinks into blobs/) is an ordinary model folder.
    let snap = hub
        .join("models--tiny-org--tiny-llama/snapshots")
        .join(&commit);
    assert_eq!(
        inspect(s(&snap), "HF_HUB_CACHE", &hub)["parameters"],
        expected["parameters"]
    );
    // An adapter repo, and diff between an id and a path.
    let ad = inspect("tiny-org/tiny-lora", "HF_HUB_CACHE", &hub);
    assert_eq!(ad["format"], "peft", "{ad}");
    let out = with_cache(
        &["diff", "tiny-org/tiny-llama", s(&base)],
        "HF_HUB_CACHE",
        &hub,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not in the cache: one line that says where it looked and that nothing is downloaded.
    for arg in ["tiny-org/absent", "tiny-org/tiny-llama@v9"] {
        let e = one_line_error(&with_cache(&["inspect", arg], "HF_HUB_CACHE", &hub));
        assert!(
            e.contains("Hugging Face cache") && e.contains("never downloads"),
            "{e}"
        );
    }
}

/// Every key of a JSON value, with the kind of value it holds, recursively.
fn key_kinds(v: &serde_json::Value, path: &str, out: &mut Vec<(String, &'static str, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let kind = match x {
                    serde_json::Value::Array(_) => "list",
                    serde_json::Value::Number(_) => "number",
                    serde_json::Value::Object(_) => "object",
                    serde_json::Value::String(_) => "string",
                    serde_json::Value::Bool(_) => "bool",
                    serde_json::Value::Null => "null",
                };
                out.push((k.clone(), kind, format!("{path}.{k}")));
                key_kinds(x, &format!("{path}.{k}"), out);
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                key_kinds(x, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

/// One JSON vocabulary: every command's report is an object whose first key is `operation`,
/// `files` is always a list, and no key is a count in one report and a list in another (counts
/// are `*_count`); the rank rule is spelled the same by extract and resize.
#[test]
fn every_json_report_shares_one_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let base = s(&fixture("llama/base")).to_owned();
    let qv = s(&fixture("llama/adapters/qv_r8")).to_owned();
    let merged = s(&fixture("llama/merged/qv_r8.safetensors")).to_owned();
    let ids = s(&fixture("text/tiny_ids.safetensors")).to_owned();
    let (m, m2, x, x2, r, c, k) = (d("m"), d("m2"), d("x"), d("x2"), d("r"), d("c"), d("k.st"));
    let nf4 = s(&fixture("quant/nf4_dq")).to_owned();
    let (dq, qm, km) = (d("dq"), d("qm"), d("km"));
    let km_base = s(&fixture("quant/nf4")).to_owned();
    let runs: Vec<(&str, String)> = vec![
        ("inspect", format!("inspect {base} --tensors")),
        ("inspect", format!("inspect {qv} --spectrum")),
        (
            "merge",
            format!("merge --base {base} --adapter {qv} -o {m}"),
        ),
        (
            "merge",
            format!("merge --base {base} --adapter {qv} -o {m2} --dry-run"),
        ),
        (
            "extract",
            format!("extract --base {base} --tuned {m} --rank 4 -o {x}"),
        ),
        (
            "extract",
            format!("extract --base {base} --tuned {m} --rank 4 -o {x2} --dry-run"),
        ),
        ("resize", format!("resize {qv} --energy 0.9 -o {r}")),
        (
            "combine",
            format!("combine --method cat --adapter {qv} --adapter {qv} -o {c}"),
        ),
        (
            "convert",
            format!("convert {qv} --to kohya -o {k}.safetensors"),
        ),
        ("diff", format!("diff {merged} {m}/model.safetensors")),
        ("check", format!("check {qv} --base {base}")),
        (
            "eval",
            format!("eval --model {base} --adapter {qv} --input-ids {ids} --device cpu"),
        ),
        ("inspect", format!("inspect {nf4}")),
        ("dequantize", format!("dequantize {nf4} -o {dq}")),
        (
            "merge",
            format!("merge --base {base} --adapter {qv} -o {qm} --as-trained-on nf4"),
        ),
        (
            "merge",
            format!("merge --base {km_base} --adapter {qv} -o {km}"),
        ),
    ];
    let mut seen: Vec<(String, &'static str, String)> = Vec::new();
    let mut rules = Vec::new();
    for (op, line) in &runs {
        // Paths here hold no spaces (a tempdir and the fixtures folder).
        let argv: Vec<&str> = line.split_whitespace().collect();
        let out = bin().args(&argv).arg("--json").output().unwrap();
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{argv:?}: not JSON ({e})"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("{argv:?}: not an object"));
        assert_eq!(
            obj.keys().next().map(String::as_str),
            Some("operation"),
            "{argv:?}"
        );
        assert_eq!(v["operation"], *op, "{argv:?}");
        if let Some(r) = v.get("rank_rule") {
            rules.push(r.clone());
        }
        key_kinds(&v, op, &mut seen);
    }
    for (k, kind, at) in &seen {
        if k == "files" {
            assert_eq!(*kind, "list", "{at} is not a list");
        }
        if *kind == "number" {
            if let Some((_, _, other)) = seen.iter().find(|(k2, kd, _)| k2 == k && *kd == "list") {
                panic!("{k} is a number at {at} and a list at {other}: name the count {k}_count");
            }
        }
    }
    // extract --rank 4 and resize --energy 0.9: one spelling of the rule.
    assert!(
        rules.iter().any(|r| r["rule"] == "rank" && r["rank"] == 4),
        "{rules:?}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r["rule"] == "energy" && r["energy"] == 0.9),
        "{rules:?}"
    );
}
