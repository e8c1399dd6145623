//! The output contract under hostile use (issue #13): no command writes onto one of its inputs,
//! part manifests are untrusted, multi-file outputs commit all or nothing, signals and a second
//! writer leave nothing half-done, results are checked in their stored dtype, hostile configs
//! and special files are refused at once, and every message stays one printable line.

use super::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Content of every file under `dir` (recursively), to show that nothing changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                v.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    v.sort();
    v
}

/// Asserts the run was refused as an output onto an input (exit 2, one line).
fn refused_as_input(out: &std::process::Output) {
    let line = one_line_error(out);
    assert!(line.contains("output is also an input"), "{line}");
}

// ---------------------------------------------------------------------------
// 1. No command writes onto one of its inputs
// ---------------------------------------------------------------------------

#[test]
fn no_command_writes_onto_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    copy_dir(&fixture("llama/base"), &base);
    let ad = dir.path().join("qv");
    copy_dir(&fixture("llama/adapters/qv_r8"), &ad);
    let before = (snapshot(&base), snapshot(&ad));
    let base_file = base.join("model.safetensors");

    // merge --out BASE_FOLDER with re-sharding: shards and index would land in the base.
    refused_as_input(&run_err([
        "merge",
        "--base",
        s(&base),
        "--adapter",
        s(&ad),
        "--out",
        s(&base),
        "--max-shard-size",
        "100KB",
    ]));
    // --out onto the adapter's weights or its config.
    for target in ["adapter_model.safetensors", "adapter_config.json"] {
        refused_as_input(&run_err([
            "merge",
            "--base",
            s(&base_file),
            "--adapter",
            s(&ad),
            "--out",
            s(&ad.join(target)),
        ]));
    }
    // extract --format kohya onto the base's config.json.
    let tuned = dir.path().join("tuned");
    run_ok([
        "merge",
        "--base",
        s(&fixture("llama/base")),
        "--adapter",
        s(&ad),
        "--out",
        s(&tuned),
        "--quiet",
    ]);
    refused_as_input(&run_err([
        "extract",
        "--base",
        s(&base),
        "--tuned",
        s(&tuned),
        "--rank",
        "4",
        "--format",
        "kohya",
        "--out",
        s(&base.join("config.json")),
    ]));
    // eval --logits onto the model's config or the adapter's weights.
    for target in [
        base.join("config.json"),
        ad.join("adapter_model.safetensors"),
    ] {
        refused_as_input(&run_err([
            "eval",
            "--model",
            s(&base),
            "--adapter",
            s(&ad),
            "--input-ids",
            s(&fixture("text/tiny_ids.safetensors")),
            "--logits",
            s(&target),
            "--device",
            "cpu",
        ]));
    }
    // train --init-adapter A --out A.
    refused_as_input(&run_err([
        "train",
        "--model",
        s(&base),
        "--data",
        s(&fixture("text/tiny_ids.safetensors")),
        "--seq-len",
        "8",
        "--steps",
        "1",
        "--init-adapter",
        s(&ad),
        "--out",
        s(&ad),
    ]));
    // inspect --plot through a hard link and a symlink to the adapter's weights.
    let hard = dir.path().join("hard.svg");
    std::fs::hard_link(ad.join("adapter_model.safetensors"), &hard).unwrap();
    let soft = dir.path().join("soft.svg");
    std::os::unix::fs::symlink(ad.join("adapter_config.json"), &soft).unwrap();
    for p in [&hard, &soft] {
        refused_as_input(&run_err(["inspect", s(&ad), "--plot", s(p)]));
    }
    assert_eq!(
        (snapshot(&base), snapshot(&ad)),
        before,
        "an input was changed"
    );
}

// ---------------------------------------------------------------------------
// 2. Part manifests and part files are untrusted
// ---------------------------------------------------------------------------

fn merge_parts(base: &Path, out: &Path) {
    for i in 1..=2 {
        run_ok([
            "merge",
            "--base",
            s(base),
            "--adapter",
            s(&fixture("llama/adapters/qv_r8")),
            "--out",
            s(out),
            "--part",
            &format!("{i}/2"),
            "--quiet",
        ]);
    }
}

fn edit_manifests(out: &Path, edit: impl Fn(&mut serde_json::Value)) {
    for e in std::fs::read_dir(out).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(".lorakit-part-") {
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
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
        let err = run_err(["finalize", s(&out)]);
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
    run_ok(["finalize", s(&out), "--quiet"]);
    assert!(out.join("model.safetensors.index.json").exists());
}

/// The output of an extract finalize comes from the command line: a part file whose recorded
/// `args.out` was edited still lands in OUT, and nothing appears at the edited path.
#[test]
fn extract_finalize_takes_out_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter");
    let elsewhere = dir.path().join("elsewhere");
    let tuned = dir.path().join("tuned");
    run_ok([
        "merge",
        "--base",
        s(&fixture("llama/base")),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "--out",
        s(&tuned),
        "--quiet",
    ]);
    for i in 1..=2 {
        run_ok([
            "extract",
            "--base",
            s(&fixture("llama/base")),
            "--tuned",
            s(&tuned),
            "--rank",
            "8",
            "--out",
            s(&out),
            "--part",
            &format!("{i}/2"),
            "--quiet",
            "--device",
            "cpu",
        ]);
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
    run_ok(["finalize", s(&out), "--quiet"]);
    assert!(out.join("adapter_model.safetensors").exists());
    assert!(!elsewhere.exists(), "the edited path was written");
}

// ---------------------------------------------------------------------------
// 3. All or nothing, nothing leaks
// ---------------------------------------------------------------------------

#[test]
fn created_folders_and_temp_files_never_outlive_a_failed_run() {
    let dir = tempfile::tempdir().unwrap();
    // Fails in the middle of the merge (F16 overflow), after the folders were created.
    let out = dir.path().join("a/b/c");
    let line = one_line_error(&run_err([
        "merge",
        "--base",
        s(&fixture("llama/base")),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "--weight",
        "1e9",
        "--dtype",
        "f16",
        "--out",
        s(&out),
        "--device",
        "cpu",
    ]));
    assert!(line.contains("F16") && line.contains("self_attn"), "{line}");
    assert!(
        listing(dir.path()).is_empty(),
        "left: {:?}",
        listing(dir.path())
    );
    // `--out new/` for a single-file base: a file inside the new folder, nothing in the cwd.
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let o = bin()
        .current_dir(&cwd)
        .args([
            "merge",
            "--base",
            s(&fixture("llama/base/model.safetensors")),
            "--adapter",
            s(&fixture("llama/adapters/qv_r8")),
            "--out",
            "new/",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(listing(&cwd), vec!["new"]);
    assert_eq!(listing(&cwd.join("new")), vec!["model.safetensors"]);
}

/// An `--out` folder holding an older sharded checkpoint opens as the new model afterwards:
/// the old index and its shards are gone, unrelated files stay.
#[test]
fn an_older_layout_in_the_output_folder_does_not_survive() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    run_ok([
        "merge",
        "--base",
        s(&fixture("llama/base_sharded")),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "--out",
        s(&out),
        "--quiet",
    ]);
    assert!(out.join("model.safetensors.index.json").exists());
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    run_ok([
        "merge",
        "--base",
        s(&fixture("llama/base")),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "--out",
        s(&out),
        "--quiet",
    ]);
    assert_eq!(
        listing(&out),
        vec![
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "notes.txt"
        ]
    );
}

/// A ~100 MB f32 base and a rank-16 adapter: a merge runs long enough to be interrupted.
fn slow_case(dir: &Path) -> (PathBuf, PathBuf) {
    big_case(dir, 2048)
}

fn slow_merge(base: &Path, ad: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.args([
        "merge",
        "--base",
        s(base),
        "--adapter",
        s(ad),
        "--out",
        s(out),
        "--device",
        "cpu",
        "--quiet",
    ]);
    c
}

#[test]
fn sigint_and_sigterm_mid_write_remove_temp_files_and_created_folders() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (base, ad) = slow_case(dir.path());
    let parent = dir.path().join("new");
    let out = parent.join("deeper/merged.safetensors");
    let mut during_write = 0;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut child = slow_merge(&base, &ad, &out).spawn().unwrap();
        let writing = wait_for_temp(&parent.join("deeper"), &mut child);
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        if writing {
            during_write += 1;
            assert_eq!(status.signal(), Some(sig), "dies by the signal: {status:?}");
        }
        assert!(
            !parent.exists(),
            "after signal {sig}: {:?} left",
            listing(&parent)
        );
    }
    assert_eq!(during_write, 2, "the signals did not land during a write");
}

#[test]
fn a_second_writer_of_the_same_output_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ad) = slow_case(dir.path());
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("merged.safetensors");
    let mut first = slow_merge(&base, &ad, &out).spawn().unwrap();
    assert!(
        wait_for_temp(&outdir, &mut first),
        "first merge never wrote"
    );
    let second = slow_merge(&base, &ad, &out).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "{err}");
    assert!(err.contains("another lorakit process"), "{err}");
    assert!(
        first.wait().unwrap().success(),
        "the first writer was disturbed"
    );
    // The result is the first run's, whole: equal to a fresh run.
    let fresh = dir.path().join("fresh.safetensors");
    run_ok(
        slow_merge(&base, &ad, &fresh)
            .get_args()
            .map(|a| a.to_owned())
            .collect::<Vec<_>>(),
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&fresh).unwrap());
    assert_eq!(listing(&outdir), vec!["merged.safetensors"]);
}

#[test]
fn unwritable_destinations_exit_3_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    let Some(_guard) = small_tmpfs(&ro, "size=1m,ro") else {
        return;
    };
    for out in [
        ro.join("merged.safetensors"),
        ro.join("a/b/merged.safetensors"),
    ] {
        let res = run_err([
            "merge",
            "--base",
            s(&fixture("llama/base/model.safetensors")),
            "--adapter",
            s(&fixture("llama/adapters/qv_r8")),
            "--out",
            s(&out),
        ]);
        let err = String::from_utf8_lossy(&res.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(res.status.code(), Some(3), "{err}");
        assert!(err.contains(s(&ro)), "names the path: {err}");
    }
    let res = run_err([
        "inspect",
        s(&fixture("llama/adapters/qv_r8")),
        "--plot",
        s(&ro.join("p.svg")),
    ]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(3), "{err}");
    assert!(err.contains("p.svg"), "{err}");
}

// ---------------------------------------------------------------------------
// 4. Results checked in their stored dtype; one definition per tensor
// ---------------------------------------------------------------------------

fn write_adapter(dir: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)], cfg: serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, sh, _), b)| {
            (
                *n,
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, sh.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
}

#[test]
fn f16_overflow_is_an_error_in_every_writer() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    // 1e5 is a finite f32 and ±inf in F16.
    write_adapter(
        &big,
        &[
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                vec![2, 64],
                vec![1e5; 128],
            ),
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                vec![64, 2],
                vec![1.0; 128],
            ),
        ],
        serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]}),
    );
    let out = dir.path().join("out");
    for args in [
        vec![
            "convert",
            s(&big),
            "--to",
            "kohya",
            "--dtype",
            "f16",
            "--out",
            "x.safetensors",
        ],
        vec![
            "resize",
            s(&big),
            "--rank",
            "1",
            "--dtype",
            "f16",
            "--out",
            "x",
        ],
        vec![
            "combine",
            "--adapter",
            s(&big),
            "--adapter",
            s(&big),
            "--method",
            "cat",
            "--dtype",
            "f16",
            "--out",
            "x",
        ],
        vec![
            "merge",
            "--base",
            s(&fixture("llama/base")),
            "--adapter",
            s(&big),
            "--dtype",
            "f16",
            "--out",
            "x",
            "--device",
            "cpu",
        ],
    ] {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with('x') {
                    out.join(a).display().to_string()
                } else {
                    a.to_string()
                }
            })
            .collect();
        let line = one_line_error(&run_err(&args));
        assert!(
            line.contains("F16") && line.contains("q_proj") && line.contains("inf"),
            "{}: {line}",
            args[0]
        );
        assert!(!out.exists(), "{}: wrote {:?}", args[0], listing(&out));
    }
}

#[test]
fn a_module_defined_twice_is_an_error_naming_both_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ad = dir.path().join("twice");
    let a = vec![0.01f32; 2 * 64];
    let b = vec![0.02f32; 64 * 2];
    write_adapter(
        &ad,
        &[
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                vec![2, 64],
                a.clone(),
            ),
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                vec![64, 2],
                b.clone(),
            ),
            (
                "model.layers.0.self_attn.q_proj.lora_A.weight",
                vec![2, 64],
                a,
            ),
        ],
        serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 2}),
    );
    let line = one_line_error(&run_err(["inspect", s(&ad)]));
    assert!(
        line.contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
            && line.contains("`model.layers.0.self_attn.q_proj.lora_A.weight`")
            && line.contains("twice"),
        "{line}"
    );
}

#[test]
fn duplicate_fields_inside_a_tensor_entry_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"t":{"dtype":"F32","shape":[1],"dtype":"F16","data_offsets":[0,4]}}"#;
    let p = raw_file(dir.path(), "dup.safetensors", header, 4);
    let line = one_line_error(&run_err(["inspect", s(&p)]));
    assert!(
        line.contains("dup.safetensors") && line.contains("duplicate key `t.dtype`"),
        "{line}"
    );
}

#[test]
fn resume_from_invalid_adam_moments_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let train = |extra: &[&str]| {
        let mut a = vec![
            "train",
            "--model",
            s(&fixture("llama/base")),
            "--data",
            s(&fixture("text/tiny_ids.safetensors")),
            "--seq-len",
            "16",
            "--batch",
            "2",
            "--seed",
            "1",
            "--quiet",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    run_ok(train(&["--steps", "2", "--out", s(&out)]));
    // Resuming the untouched state works (the test can fail only for the poison below).
    let again = dir.path().join("again");
    run_ok(train(&[
        "--resume",
        s(&out),
        "--steps",
        "3",
        "--out",
        s(&again),
    ]));
    let state = out.join("trainer_state.safetensors");
    let bytes = std::fs::read(&state).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let victim = owned
        .iter_mut()
        .find(|(n, _, _)| n.ends_with("exp_avg_sq"))
        .unwrap();
    victim.2[..4].copy_from_slice(&(-1.0f32).to_le_bytes());
    let name = victim.0.clone();
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, sh, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, sh.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, meta.metadata().clone(), &state).unwrap();
    let line = one_line_error(&run_err(train(&[
        "--resume",
        s(&out),
        "--steps",
        "3",
        "--out",
        s(&dir.path().join("x")),
    ])));
    assert!(line.contains(&name) && line.contains("-1"), "{line}");
}

// ---------------------------------------------------------------------------
// 5. Hostile configs and special files
// ---------------------------------------------------------------------------

#[test]
fn absurd_config_sizes_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    copy_dir(&fixture("llama/base"), &model);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("llama/base/config.json")).unwrap()).unwrap();
    for (key, value) in [
        ("num_hidden_layers", serde_json::json!(1_000_000_000u64)),
        ("num_hidden_layers", serde_json::json!(1e18)),
        (
            "num_hidden_layers",
            serde_json::json!(1_000_000_000_000_000_000u64),
        ),
        ("num_hidden_layers", serde_json::json!(3)),
        ("hidden_size", serde_json::json!(100_000_000_000u64)),
        ("vocab_size", serde_json::json!(1_000_000_000_000u64)),
        ("intermediate_size", serde_json::json!(7)),
    ] {
        let mut c = cfg.clone();
        c[key] = value.clone();
        std::fs::write(model.join("config.json"), c.to_string()).unwrap();
        let res = run_err([
            "eval",
            "--model",
            s(&model),
            "--input-ids",
            s(&fixture("text/tiny_ids.safetensors")),
            "--device",
            "cpu",
        ]);
        let line = one_line_error(&res);
        assert!(line.contains("config.json"), "{key}={value}: {line}");
    }
}

#[test]
fn fifos_and_devices_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    copy_dir(&fixture("llama/base"), &model);
    let ad = dir.path().join("a");
    copy_dir(&fixture("llama/adapters/qv_r8"), &ad);
    let fifo = |p: &Path| {
        let _ = std::fs::remove_file(p);
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    };
    fifo(&ad.join("adapter_config.json"));
    fifo(&model.join("config.json"));
    let run = |args: &[&str]| {
        let t = Instant::now();
        let mut child = bin()
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        loop {
            if let Some(_st) = child.try_wait().unwrap() {
                break;
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("{args:?} blocked on a FIFO");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let line = one_line_error(&out);
        assert!(line.contains("FIFO"), "{line}");
    };
    run(&["inspect", s(&ad)]);
    run(&[
        "eval",
        "--model",
        s(&model),
        "--input-ids",
        s(&fixture("text/tiny_ids.safetensors")),
    ]);
    let line = one_line_error(&run_err(["inspect", "/dev/zero"]));
    assert!(line.contains("device"), "{line}");
}

#[test]
fn modules_to_save_onto_an_integer_tensor_is_an_error() {
    use safetensors::{tensor::TensorView, Dtype};
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.safetensors");
    let ids: Vec<u8> = (0..4i64).flat_map(|x| x.to_le_bytes()).collect();
    let w: Vec<u8> = vec![0; 16];
    safetensors::serialize_to_file(
        vec![
            (
                "position_ids",
                TensorView::new(Dtype::I64, vec![4], &ids).unwrap(),
            ),
            (
                "proj.weight",
                TensorView::new(Dtype::F32, vec![2, 2], &w).unwrap(),
            ),
        ],
        None,
        &base,
    )
    .unwrap();
    let ad = dir.path().join("ad");
    write_adapter(
        &ad,
        &[
            (
                "base_model.model.proj.lora_A.weight",
                vec![1, 2],
                vec![0.1, 0.2],
            ),
            (
                "base_model.model.proj.lora_B.weight",
                vec![2, 1],
                vec![0.3, 0.4],
            ),
            ("base_model.model.position_ids", vec![4], vec![9.0; 4]),
        ],
        serde_json::json!({"peft_type": "LORA", "r": 1, "lora_alpha": 1, "modules_to_save": ["position_ids"]}),
    );
    let line = one_line_error(&run_err([
        "merge",
        "--base",
        s(&base),
        "--adapter",
        s(&ad),
        "--out",
        s(&dir.path().join("o.safetensors")),
    ]));
    assert!(
        line.contains("position_ids") && line.contains("I64"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------
// 6. Messages stay one line and safe
// ---------------------------------------------------------------------------

#[test]
fn names_with_control_characters_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let ad = dir.path().join("evil");
    let evil = "base_model.model.model.layers.0.self_attn.q\n\u{1b}[2Jproj\r";
    let a = format!("{evil}.lora_A.weight");
    let b = format!("{evil}.lora_B.weight");
    write_adapter(
        &ad,
        &[
            (&a, vec![2, 64], vec![0.01; 128]),
            (&b, vec![64, 2], vec![0.02; 128]),
        ],
        serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 2}),
    );
    let res = run_err([
        "merge",
        "--base",
        s(&fixture("llama/base")),
        "--adapter",
        s(&ad),
        "--out",
        s(&dir.path().join("o")),
    ]);
    let line = one_line_error(&res);
    assert!(
        !res.stderr.contains(&0x1b) && !res.stderr.contains(&b'\r'),
        "{line}"
    );
    assert!(line.contains("\\n") && line.contains("\\u{1b}"), "{line}");
}

#[test]
fn an_invalid_rank_pattern_is_one_line_naming_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let ad = dir.path().join("a");
    copy_dir(&fixture("llama/adapters/qv_r8"), &ad);
    let cfg_path = ad.join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["rank_pattern"] = serde_json::json!({"q_proj(": 4});
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let line = one_line_error(&run_err(["inspect", s(&ad)]));
    assert!(
        line.contains(s(&cfg_path)) && line.contains("rank_pattern"),
        "{line}"
    );
}

/// A base laid out as the Hugging Face hub cache: every file a symlink into `blobs/`. The merge
/// follows them, copies config.json and generation_config.json as files, and writes none of
/// its outputs through a link.
#[test]
fn a_hub_cache_snapshot_merges_with_its_configs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models--org--tiny");
    let blobs = repo.join("blobs");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    for (i, f) in ["config.json", "generation_config.json", "model.safetensors"]
        .iter()
        .enumerate()
    {
        let blob = blobs.join(format!("blob{i}"));
        std::fs::copy(fixture(&format!("llama/base/{f}")), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob{i}"), snap.join(f)).unwrap();
    }
    let blobs_before = snapshot(&blobs);
    let out = dir.path().join("out");
    run_ok([
        "merge",
        "--base",
        s(&snap),
        "--adapter",
        s(&fixture("llama/adapters/qv_r8")),
        "--out",
        s(&out),
        "--quiet",
    ]);
    assert_eq!(
        listing(&out),
        vec!["config.json", "generation_config.json", "model.safetensors"]
    );
    for f in listing(&out) {
        assert!(!std::fs::symlink_metadata(out.join(&f))
            .unwrap()
            .file_type()
            .is_symlink());
    }
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        std::fs::read(fixture("llama/base/config.json")).unwrap()
    );
    assert_eq!(snapshot(&blobs), blobs_before);
}
