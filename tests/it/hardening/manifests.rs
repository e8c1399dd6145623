//! 2. Part manifests and part files are untrusted.

use super::*;

fn merge_parts(base: &Path, out: &Path) {
    for i in 1..=2 {
        let part = format!("{i}/2");
        merge_qv_r8_into(base, out, &["--part", &part, "--quiet"]);
    }
}

fn edit_manifests(out: &Path, edit: impl Fn(&mut serde_json::Value)) {
    for e in std::fs::read_dir(out).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(".lorakit-part-") {
            let mut v: serde_json::Value = read_json(e.path());
            edit(&mut v);
            std::fs::write(e.path(), serde_json::to_vec(&v).unwrap()).unwrap();
        }
    }
}

#[test]
fn finalize_never_writes_or_copies_outside_what_the_plan_may_hold() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base_sharded");
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "not for the output").unwrap();
    let victim_dir = dir.path().join("victim");
    std::fs::create_dir(&victim_dir).unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "index outside OUT",
            Box::new(|v| v["plan"]["index_name"] = "../victim/x.json".into()),
        ),
        (
            "shard outside OUT",
            Box::new(|v| v["plan"]["files"][0]["name"] = "../victim/x.safetensors".into()),
        ),
        (
            "a copied file that is not the base's",
            Box::new({
                let secret = secret.clone();
                move |v| {
                    v["plan"]["extra"]
                        .as_array_mut()
                        .unwrap()
                        .push(serde_json::json!([
                            secret.display().to_string(),
                            "secret.txt"
                        ]))
                }
            }),
        ),
        (
            "a copied file aimed outside OUT",
            Box::new(|v| v["plan"]["extra"][0][1] = "../victim/config.json".into()),
        ),
        (
            "a base that is not the checkpoint written",
            Box::new({
                let d = dir.path().display().to_string();
                move |v| v["plan"]["base"] = d.clone().into()
            }),
        ),
    ];
    for (what, edit) in cases {
        let out = dir.path().join("out");
        let _ = std::fs::remove_dir_all(&out);
        merge_parts(&base, &out);
        edit_manifests(&out, edit);
        let err = run_err(finalize_args(&out, &[]));
        one_line_error(&err);
        assert!(listing(&victim_dir).is_empty(), "{what}: wrote outside OUT");
        assert!(
            !out.join("secret.txt").exists(),
            "{what}: copied a foreign file"
        );
        assert!(
            !out.join("model.safetensors.index.json").exists(),
            "{what}: finalized"
        );
    }
    // Untouched manifests finalize.
    let out = dir.path().join("out");
    let _ = std::fs::remove_dir_all(&out);
    merge_parts(&base, &out);
    run_ok(finalize_args(&out, &["--quiet"]));
    assert!(out.join("model.safetensors.index.json").exists());
}

/// The output of an extract finalize comes from the command line: a part file whose recorded
/// `args.out` was edited still lands in OUT, and nothing appears at the edited path.
#[test]
fn extract_finalize_takes_out_from_the_command_line() {
    let (dir, out) = scratch("adapter");
    let elsewhere = dir.path().join("elsewhere");
    let tuned = dir.path().join("tuned");
    merge_qv_r8(&tuned, &["--quiet"]);
    for i in 1..=2 {
        run_ok(extract_args(
            &fixture("llama/base"),
            &tuned,
            &out,
            &[
                "--rank",
                "8",
                "--part",
                &format!("{i}/2"),
                "--quiet",
                "--device",
                "cpu",
            ],
        ));
    }
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut md = meta.metadata().clone().unwrap();
        let key = "lorakit.extract_part";
        let mut part: serde_json::Value = serde_json::from_str(&md[key]).unwrap();
        part["args"]["out"] = elsewhere.display().to_string().into();
        md.insert(key.into(), part.to_string());
        let tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
        safetensors::serialize_to_file(tensors, Some(md), &e.path()).unwrap();
    }
    run_ok(finalize_args(&out, &["--quiet"]));
    assert!(out.join("adapter_model.safetensors").exists());
    assert!(!elsewhere.exists(), "the edited path was written");
}
