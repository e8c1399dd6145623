//! What the sweeps with seeds 51/52 and wider draws found (fixtures/gen/sweep9_fixtures.py),
//! each against the real library's own result.

use super::common::*;

/// f64 values of a tensor stored F64 (the references are numpy's f64 results).
fn f64s(t: &T) -> Vec<f64> {
    assert_eq!(t.dtype, safetensors::Dtype::F64);
    t.data
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A PEFT LoHa lowered to a rank-1 LoRA by `resize` (check_combine_sweep.py's sweep9 draws):
/// the result must be the best rank-1 approximation of PEFT's own ΔW (`get_delta_weight`),
/// `reference.safetensors` by numpy's f64 SVD. Layer 1's σ₁ and σ₂ lie 2 % apart, and the f32
/// factored SVD of the LoHa's Khatri–Rao form moved its singular vectors by ε₃₂·σ₁/gap: 1.6e-5
/// of max |ΔW| off. Computed in f64 and rounded once, only the f32 storage of the factors is
/// left (~1e-7); 1e-6 holds that with a margin.
#[test]
fn loha_lowered_to_lora_is_the_f64_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r1");
    run_ok([
        "resize",
        s(&fixture("sweep9/loha_lowered/adapter")),
        "--rank",
        "1",
        "--out",
        s(&out),
        "-q",
    ]);
    let cfg = read_json(out.join("adapter_config.json"));
    let tensors = read(&out.join("adapter_model.safetensors"));
    let reference = read(&fixture("sweep9/loha_lowered/reference.safetensors"));
    let modules = peft_lora_modules(&tensors);
    assert_eq!(modules.len(), reference.len(), "{:?}", tensors.keys());
    for (m, a, b) in modules {
        let (d, r, k) = (b.shape[0], a.shape[0], a.shape[1]);
        assert_eq!((r, b.shape[1]), (1, 1), "{m}: rank 1");
        let scale = peft_alpha_for(&cfg, m).unwrap() / r as f64;
        let want = f64s(&reference[&format!("{m}.weight")]);
        assert_eq!(want.len(), d * k, "{m}");
        let (av, bv) = (a.f32(), b.f32());
        let top = want.iter().fold(0f64, |x, y| x.max(y.abs()));
        let worst = (0..d * k)
            .map(|ij| {
                let (i, j) = (ij / k, ij % k);
                let got: f64 = (0..r)
                    .map(|t| bv[i * r + t] as f64 * av[t * k + j] as f64)
                    .sum::<f64>()
                    * scale;
                (got - want[ij]).abs()
            })
            .fold(0f64, f64::max);
        assert!(
            worst <= 1e-6 * top,
            "{m}: rank-1 LoRA {:.2e} of max |ΔW| from the f64 truncation",
            worst / top
        );
    }
}
