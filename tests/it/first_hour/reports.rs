//! Repo ids resolved in the local Hugging Face cache, and one JSON vocabulary over every
//! command's report.

use super::*;

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
    let (dir, hub) = scratch("hub");
    let base = fixture("llama/base");
    let commit = hf_cache(&hub, "tiny-org/tiny-llama", &base);
    hf_cache(&hub, "tiny-org/tiny-lora", &fixture("llama/adapters/qv_r8"));
    let expected = run_ok(inspect_args(&base, &["--json"]));
    let expected: serde_json::Value = serde_json::from_str(&expected).unwrap();
    // lorakit with one cache variable set (the other removed), run from the temp folder.
    let with_cache = |args: &[String], var: &str, val: &Path| {
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
        let out = with_cache(&inspect_args(Path::new(arg), &["--json"]), var, val);
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
        &diff_args(Path::new("tiny-org/tiny-llama"), &base, &[]),
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
        let e = one_line_error(&with_cache(
            &inspect_args(Path::new(arg), &[]),
            "HF_HUB_CACHE",
            &hub,
        ));
        assert_mentions(&e, &["Hugging Face cache", "never downloads"]);
    }
}

/// One JSON vocabulary: every command's report is an object whose first key is `operation`,
/// `files` is always a list, and no key is a count in one report and a list in another (counts
/// are `*_count`); the rank rule is spelled the same by extract and resize.
#[test]
fn every_json_report_shares_one_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| s(&dir.path().join(n)).to_owned();
    let base = s(&fixture("llama/base")).to_owned();
    let qv = s(&fixture("llama/adapters/qv_r8")).to_owned();
    let merged = s(&fixture("llama/merged/qv_r8.safetensors")).to_owned();
    let ids = s(&fixture("text/tiny_ids.safetensors")).to_owned();
    let (m, m2, x, x2, r, c, k) = (d("m"), d("m2"), d("x"), d("x2"), d("r"), d("c"), d("k.st"));
    let nf4 = s(&fixture("quant/nf4_dq")).to_owned();
    let (dq, qm, km) = (d("dq"), d("qm"), d("km"));
    let km_base = s(&fixture("quant/nf4")).to_owned();
    let gguf = s(&fixture("gguf/llama_f32.gguf")).to_owned();
    let runs = [
        format!("inspect {base} --tensors"),
        format!("inspect {qv} --spectrum"),
        format!("merge --base {base} --adapter {qv} -o {m}"),
        format!("merge --base {base} --adapter {qv} -o {m2} --dry-run"),
        format!("extract --base {base} --tuned {m} --rank 4 -o {x}"),
        format!("extract --base {base} --tuned {m} --rank 4 -o {x2} --dry-run"),
        format!("resize {qv} --energy 0.9 -o {r}"),
        format!("combine --method cat --adapter {qv} --adapter {qv} -o {c}"),
        format!("convert {qv} --to kohya -o {k}.safetensors"),
        format!("diff {merged} {m}/model.safetensors"),
        format!("check {qv} --base {base}"),
        format!("eval --model {base} --adapter {qv} --input-ids {ids} --device cpu"),
        format!("inspect {nf4}"),
        format!("dequantize {nf4} -o {dq}"),
        format!("merge --base {base} --adapter {qv} -o {qm} --as-trained-on nf4"),
        format!("merge --base {km_base} --adapter {qv} -o {km}"),
        format!("merge --base {gguf} --adapter {qv} -o {}", d("g.gguf")),
        format!(
            "extract --base {base} --tuned {m} --rank 4 -o {} --part 1/2",
            d("xp")
        ),
    ];
    let reports = assert_one_json_vocabulary(&runs, 1);
    // An extract part lists the one file it wrote, as every report lists its files.
    let part = reports
        .iter()
        .find(|v| v["operation"] == "extract" && v["part"].is_number())
        .unwrap();
    assert_eq!(part["files"], serde_json::json!([part["path"]]), "{part}");
    assert!(std::path::Path::new(part["path"].as_str().unwrap()).is_file());
    let rules: Vec<serde_json::Value> = reports
        .iter()
        .filter_map(|v| v.get("rank_rule").cloned())
        .collect();
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

/// `check --json`: `modules_count` is the adapter's module count with or without `--base`;
/// `modules` places each entry in the base, so it is empty without `--base` and holds one
/// placement per module and full tensor with it (counted from `inspect`'s lists).
#[test]
fn check_modules_count_and_modules_say_what_the_readme_says() {
    let base = fixture("llama/base");
    for adapter in [
        "llama/adapters/qv_r8",
        "check/saved_full",
        "check/added_tokens",
    ] {
        let adapter = fixture(adapter);
        let inspected = inspect_json(&adapter, &[]);
        let modules = inspected["modules"].as_array().unwrap().len();
        let full = inspected["full_tensors"].as_array().unwrap().len();
        let check = |extra: &[&str]| -> serde_json::Value {
            let mut args = vec!["check", s(&adapter), "--json"];
            args.extend(extra);
            let out = bin().args(&args).output().unwrap();
            serde_json::from_slice(&out.stdout).unwrap()
        };
        let alone = check(&[]);
        assert_eq!(alone["modules_count"], modules, "{}", adapter.display());
        assert_eq!(alone["modules"], serde_json::json!([]));
        let placed = check(&["--base", s(&base)]);
        assert_eq!(placed["modules_count"], modules);
        assert_eq!(alone["full_tensors_count"], full);
        assert_eq!(placed["full_tensors_count"], full);
        assert_eq!(
            placed["modules"].as_array().unwrap().len(),
            modules + full,
            "{}",
            adapter.display()
        );
    }
}

/// Every command that writes an adapter reports its `files` and, right after them,
/// `bytes_written`: the bytes of those files as they are on disk (resize, combine, convert to
/// each single-file or folder format, check --fix).
#[test]
fn writing_reports_give_files_then_their_bytes_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let (base, qv) = (fixture("llama/base"), fixture("llama/adapters/qv_r8"));
    let (a, b) = (
        fixture("llama/adapters/weighted_a"),
        fixture("llama/adapters/weighted_b"),
    );
    let runs = [
        resize_args(&qv, &d("r"), &["--rank", "4"]),
        combine_args(&[(&a, None), (&b, None)], &d("c"), &["--method", "cat"]),
        convert_args(&qv, "kohya", &d("k.safetensors"), &[]),
        convert_args(&qv, "gguf", &d("a.gguf"), &["--base", s(&base)]),
        convert_args(
            &fixture("conventions/kohya.safetensors"),
            "diffusers",
            &d("u.safetensors"),
            &["--base", s(&fixture("conventions/unet"))],
        ),
        check_fix_args(
            &fixture("llama/adapters/patterns"),
            Some(&base),
            &d("fixed"),
            &["--target", "vllm,sglang"],
        ),
    ];
    for argv in runs {
        let out = bin().args(&argv).arg("--json").output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{argv:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        // `check --fix` reports what it wrote under `fix`.
        let w = if v["operation"] == "check" {
            &v["fix"]
        } else {
            &v
        };
        let keys: Vec<&str> = w.as_object().unwrap().keys().map(String::as_str).collect();
        let at = keys.iter().position(|k| *k == "files");
        assert!(
            at.is_some_and(|i| keys.get(i + 1) == Some(&"bytes_written")),
            "{argv:?}: {keys:?}"
        );
        let files = w["files"].as_array().unwrap();
        assert!(!files.is_empty(), "{argv:?}");
        let on_disk: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f.as_str().unwrap()).unwrap().len())
            .sum();
        assert_eq!(w["bytes_written"].as_u64(), Some(on_disk), "{argv:?}: {w}");
    }
}
