//! `merge --device gpu` against PEFT's own `merge_and_unload` outputs (within the bound of the
//! output dtype's rounding) and bit-level against `--device cpu`, PEFT and LyCORIS files.

use super::*;

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
fn merge_on_gpu_equals_cpu() {
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // (base, adapter, flags, the peers' merge of it, bound on ‖gpu − reference‖_F/‖reference‖_F).
    // f32 outputs: 1e-6, as the CPU merge tests (the f32 product and sum against PEFT's torch
    // f32 merge). 16-bit outputs are the f32 merge rounded to nearest: ≤ u = 2⁻¹¹ (f16) or
    // 2⁻⁸ (bf16) relative per element, so in Frobenius norm; a bf16 base adds its own rounding
    // of W0 against PEFT's f32 base (another u).
    const F32: f64 = 1e-6;
    const F16: f64 = 1e-6 + 1.0 / 2048.0;
    const BF16: f64 = 1e-6 + 1.0 / 256.0;
    let cases: &[(&str, &str, &[&str], &str, f64)] = &[
        (
            "llama/base",
            "llama/adapters/qv_r8",
            &[],
            "llama/merged/qv_r8",
            F32,
        ),
        (
            "llama/base",
            "llama/adapters/dora",
            &[],
            "llama/merged/dora",
            F32,
        ),
        (
            "llama/base",
            "llama/adapters/embed",
            &[],
            "llama/merged/embed",
            F32,
        ),
        (
            "llama/base_bf16",
            "llama/adapters/rslora_all",
            &[],
            "llama/merged/rslora_all",
            2.0 * BF16,
        ),
        (
            "llama/base",
            "llama/adapters/patterns",
            &["--dtype", "f16"],
            "llama/merged/patterns",
            F16,
        ),
        (
            "llama/base",
            "llama/adapters/qv_r8",
            &["--dtype", "bf16"],
            "llama/merged/qv_r8",
            BF16,
        ),
        (
            "gpt2/base",
            "gpt2/adapters/fifo",
            &[],
            "gpt2/merged/fifo",
            F32,
        ),
        (
            "conv/base/model.safetensors",
            "conv/adapters/peft",
            &[],
            "conv/merged/peft",
            F32,
        ),
        (
            "kohya/te_base",
            "kohya/te_lora.safetensors",
            &[],
            "kohya/merged_te",
            F32,
        ),
    ];
    for (i, (base, adapter, extra, reference, tol)) in cases.iter().enumerate() {
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
        // Against the peers: every tensor the reference holds is the merged one, every other
        // tensor is the base's (converted to the output dtype where --dtype asks).
        let reference = read(&fixture(&format!("{reference}.safetensors")));
        let base_t = read_checkpoint(&fixture(base));
        let mut merged = 0;
        for (name, g) in gpu {
            let want = match reference.get(name) {
                Some(r) => {
                    merged += 1;
                    r
                }
                None => &base_t[name],
            };
            let e = rel_err(&g.f32(), &want.f32());
            assert!(
                e <= *tol,
                "{base}+{adapter}: {name}: {e:e} from the reference > {tol:e}"
            );
        }
        assert_eq!(merged, reference.len(), "{base}+{adapter}: merged tensors");
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

/// LyCORIS files on `--device gpu`: LoCon and DoRA terms (with LyCORIS' eps and its per-input
/// norm) run in the kernel, dense LoHa/LoKr/full terms and blended DoRA on the CPU backend; the
/// output is byte-identical to `--device cpu` either way, at weight 1 and at a blend weight.
#[test]
fn lycoris_merges_on_gpu_equal_cpu() {
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("lycoris/base.safetensors");
    // LoRA + DoRA with eps (kernel), LoHa + per-input DoRA (CPU: dense), LoKr (CPU: dense).
    for case in ["dora_out", "loha_dora_in", "lokr"] {
        for weight in ["1", "0.5"] {
            let adapter = fixture(&format!("lycoris/{case}.safetensors"));
            let out = |dev: &str| {
                let p = dir
                    .path()
                    .join(format!("{case}.{weight}.{dev}.safetensors"));
                merge_ok(&base, &adapter, &p, &["--device", dev, "--weight", weight]);
                std::fs::read(p).unwrap()
            };
            assert!(
                out("gpu") == out("cpu"),
                "{case} at weight {weight}: gpu != cpu"
            );
        }
    }
}
