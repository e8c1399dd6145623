//! 5. Hostile configs and special files.

use super::*;

#[test]
fn absurd_config_sizes_are_one_line_errors() {
    let (_dir, model) = scratch("m");
    copy_dir(&fixture("llama/base"), &model);
    let cfg: serde_json::Value = read_json(fixture("llama/base/config.json"));
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
        let res = run_err(eval_cpu_args(
            &model,
            &["--input-ids", s(&fixture("text/tiny_ids.safetensors"))],
        ));
        let line = one_line_error(&res);
        assert!(line.contains("config.json"), "{key}={value}: {line}");
    }
}

#[test]
fn fifos_and_devices_are_refused_at_once() {
    let (_dir, model, ad) = llama_and_qv_r8_copies("m", "a");
    let fifo = |p: &Path| {
        let _ = std::fs::remove_file(p);
        let c = std::ffi::CString::new(s(p)).unwrap();
        // SAFETY: a valid C string path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    };
    fifo(&ad.join("adapter_config.json"));
    fifo(&model.join("config.json"));
    let run = |args: &[String]| {
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
    run(&inspect_args(&ad, &[]));
    run(&eval_args(
        &model,
        &["--input-ids", s(&fixture("text/tiny_ids.safetensors"))],
    ));
    let line = one_line_error(&run_err(inspect_args(Path::new("/dev/zero"), &[])));
    assert!(line.contains("device"), "{line}");
}

#[test]
fn modules_to_save_onto_an_integer_tensor_is_an_error() {
    use safetensors::Dtype;
    let (dir, base) = scratch("base.safetensors");
    let ids: Vec<u8> = (0..4i64).flat_map(|x| x.to_le_bytes()).collect();
    let w: Vec<u8> = vec![0; 16];
    write_views(
        &base,
        &[
            ("position_ids", Dtype::I64, &[4], &ids),
            ("proj.weight", Dtype::F32, &[2, 2], &w),
        ],
    );
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
    let line = merge_refused(&base, &ad, &dir.path().join("o.safetensors"), &[]);
    assert_mentions(&line, &["position_ids", "I64"]);
}
