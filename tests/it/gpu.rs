//! End-to-end `merge --device gpu` equals `--device cpu` on the PEFT fixtures. Skips loudly
//! when no wgpu adapter exists, unless LORAKIT_REQUIRE_GPU=1 (CI), where it fails.

use super::common::*;

fn gpu_available() -> bool {
    let out = bin().args(["gpu-info", "--json"]).output().unwrap();
    if out.status.success() {
        return true;
    }
    let why = String::from_utf8_lossy(&out.stderr).into_owned();
    if std::env::var("LORAKIT_REQUIRE_GPU").as_deref() == Ok("1") {
        panic!("LORAKIT_REQUIRE_GPU=1 but no GPU adapter: {why}");
    }
    eprintln!("GPU TEST SKIPPED: no wgpu adapter: {}", why.trim());
    false
}

/// Largest difference in units in the last place between two f32 tensors.
fn max_ulps(a: &[f32], b: &[f32]) -> u32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let (x, y) = (x.to_bits() as i64, y.to_bits() as i64);
            (x - y).unsigned_abs() as u32
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn gpu_info_describes_the_adapter() {
    if !gpu_available() {
        return;
    }
    let s = run_ok(["gpu-info", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert!(
        v["limits"]["max_storage_buffer_binding_size"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(!v["name"].as_str().unwrap().is_empty());
}

#[test]
fn merge_on_gpu_equals_cpu() {
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        ("llama/base", "llama/adapters/qv_r8", &[]),
        ("llama/base", "llama/adapters/dora", &[]),
        ("llama/base", "llama/adapters/embed", &[]),
        ("llama/base_bf16", "llama/adapters/rslora_all", &[]),
        ("llama/base", "llama/adapters/patterns", &["--dtype", "f16"]),
        ("llama/base", "llama/adapters/qv_r8", &["--dtype", "bf16"]),
        ("gpt2/base", "gpt2/adapters/fifo", &[]),
        ("conv/base/model.safetensors", "conv/adapters/peft", &[]),
        ("kohya/te_base", "kohya/te_lora.safetensors", &[]),
    ];
    for (i, (base, adapter, extra)) in cases.iter().enumerate() {
        let mut outs = Vec::new();
        for device in ["cpu", "gpu"] {
            let out = dir.path().join(format!("{i}-{device}"));
            let mut args = vec![
                "merge".to_string(),
                "--base".into(),
                fixture(base).display().to_string(),
                "--adapter".into(),
                fixture(adapter).display().to_string(),
                "--out".into(),
                out.display().to_string(),
                "--device".into(),
                device.into(),
                "--json".into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let s = run_ok(&args);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert!(v["device"].as_str().unwrap().starts_with(device), "{s}");
            outs.push(read_checkpoint(&out));
        }
        let (cpu, gpu) = (&outs[0], &outs[1]);
        assert_eq!(
            cpu.keys().collect::<Vec<_>>(),
            gpu.keys().collect::<Vec<_>>()
        );
        for (name, c) in cpu {
            let g = &gpu[name];
            assert_eq!(
                (c.dtype, &c.shape),
                (g.dtype, &g.shape),
                "{base}+{adapter}: {name}"
            );
            if c.dtype == safetensors::Dtype::F32 {
                let u = max_ulps(&c.f32(), &g.f32());
                assert!(u <= 1, "{base}+{adapter}: {name}: {u} ulps");
            } else {
                assert!(
                    c.data == g.data,
                    "{base}+{adapter}: {name}: bf16/f16 output not bit-identical"
                );
            }
        }
    }
}

#[test]
fn device_gpu_without_adapter_is_a_clear_error() {
    // Point the Vulkan loader at no driver at all.
    let out = bin()
        .env("VK_ICD_FILENAMES", "/nonexistent.json")
        .env("VK_DRIVER_FILES", "/nonexistent.json")
        .env("WGPU_BACKEND", "vulkan")
        .args(["gpu-info"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.to_lowercase().contains("adapter"),
        "{err}"
    );
    // auto falls back to the CPU.
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("o.safetensors");
    let out = bin()
        .env("VK_ICD_FILENAMES", "/nonexistent.json")
        .env("VK_DRIVER_FILES", "/nonexistent.json")
        .env("WGPU_BACKEND", "vulkan")
        .args([
            "merge",
            "--base",
            fixture("llama/base/model.safetensors").to_str().unwrap(),
            "--adapter",
            fixture("llama/adapters/qv_r8").to_str().unwrap(),
            "--out",
            o.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["device"].as_str().unwrap().starts_with("cpu"));
}

/// `extract --device gpu` (W − W0 formed on the device by the sketch kernels) recovers the same
/// ΔW as the CPU path: both within rounding of the exact-rank delta of a PEFT merge.
#[test]
fn extract_on_gpu_matches_cpu() {
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // tuned = base with PEFT's qv_r8 merge overlaid (rank-8 deltas on q and v).
    let mut tuned = read_checkpoint(&fixture("llama/base"));
    for (k, t) in read(&fixture("llama/merged/qv_r8.safetensors")) {
        tuned.insert(k, t);
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tuned
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    let tuned_path = dir.path().join("tuned.safetensors");
    safetensors::serialize_to_file(views, None, &tuned_path).unwrap();
    let mut factors = Vec::new();
    for device in ["cpu", "gpu"] {
        let out = dir.path().join(device);
        let s = run_ok([
            "extract",
            "--base",
            fixture("llama/base").to_str().unwrap(),
            "--tuned",
            tuned_path.to_str().unwrap(),
            "--rank",
            "8",
            "--out",
            out.to_str().unwrap(),
            "--device",
            device,
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert!(v["device"].as_str().unwrap().starts_with(device), "{s}");
        for m in v["modules"].as_array().unwrap() {
            assert!(m["rel_error"].as_f64().unwrap() < 1e-5, "{device}: {m}");
        }
        factors.push(read(&out.join("adapter_model.safetensors")));
    }
    // ΔW = B·A per module agrees between devices (factors may differ by signs).
    let (c, g) = (&factors[0], &factors[1]);
    for k in c.keys().filter(|k| k.ends_with("lora_A.weight")) {
        let kb = k.replace("lora_A", "lora_B");
        let delta = |t: &std::collections::BTreeMap<String, T>| {
            let (a, b) = (t[k].f32(), t[&kb].f32());
            let (r, cols, rows) = (t[k].shape[0], t[k].shape[1], t[&kb].shape[0]);
            (0..rows * cols)
                .map(|p| {
                    (0..r)
                        .map(|q| b[(p / cols) * r + q] * a[q * cols + p % cols])
                        .sum::<f32>()
                })
                .collect::<Vec<f32>>()
        };
        let e = rel_err(&delta(g), &delta(c));
        assert!(e < 1e-5, "{k}: gpu vs cpu ΔW differ by {e:e}");
    }
}
