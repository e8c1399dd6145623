//! `extract --device gpu` (the sketch kernels) against the f64 W − W0 and the CPU path.

use super::*;

/// `extract --device gpu` (W − W0 formed on the device by the sketch kernels) recovers W − W0
/// itself, computed here in f64 from the two files: tuned = base + PEFT's rank-8 merge, so the
/// rank-8 extraction is exact but for the f32 SVD's backward error, ≤ n·u·‖ΔW‖ with
/// n = min(d, k) (the bound `peft_merged_fixture_delta_is_recovered` derives). The CPU path is
/// held to the same bound, and the two devices agree with each other.
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
    let tuned_path = dir.path().join("tuned.safetensors");
    write_tensors(&tuned_path, &tuned);
    let mut factors = Vec::new();
    for device in ["cpu", "gpu"] {
        let out = dir.path().join(device);
        let flags = ["--rank", "8", "--device", device, "--json"];
        let s = run_ok(extract_args(
            &fixture("llama/base"),
            &tuned_path,
            &out,
            &flags,
        ));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert!(v["device"].as_str().unwrap().starts_with(device), "{s}");
        let base_t = read_checkpoint(&fixture("llama/base"));
        let got = peft_deltas(&out);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            peft_deltas(&fixture("llama/adapters/qv_r8"))
                .keys()
                .collect::<Vec<_>>(),
            "{device}: the adapter's modules"
        );
        for (m, d) in &got {
            let wn = format!("{m}.weight");
            let n = tuned[&wn].shape.iter().copied().min().unwrap() as f64;
            let e = rel64(d, &diff(&tuned, &base_t, &wn));
            assert!(
                e <= n * U32,
                "{device}: {m}: {e:e} from W − W0 > {:e}",
                n * U32
            );
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
