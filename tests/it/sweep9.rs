//! What the sweeps with seeds 51/52 and wider draws found (fixtures/gen/sweep9_fixtures.py),
//! each against the real library's own result.

use super::common::*;

/// `resize --rank R` of `adapter` (plus `extra`) into a fresh folder: the written tensors, and
/// per module the largest |s·B·A − reference| over max |reference| (`reference.safetensors`:
/// `{module}.weight` in f64, numpy's truncation of PEFT's own ΔW). Each module must hold rank R.
pub(super) fn lowered_errors(
    adapter: &str,
    rank: usize,
    extra: &[&str],
) -> (TensorMap, Vec<(String, f64)>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lowered");
    let adapter_dir = fixture(&format!("{adapter}/adapter"));
    let rank_s = rank.to_string();
    let mut args = vec![
        "resize",
        s(&adapter_dir),
        "--rank",
        &rank_s,
        "--out",
        s(&out),
        "-q",
    ];
    args.extend(extra);
    run_ok(args);
    let cfg = read_json(out.join("adapter_config.json"));
    let tensors = read(&out.join("adapter_model.safetensors"));
    let reference = read(&fixture(&format!("{adapter}/reference.safetensors")));
    let modules = peft_lora_modules(&tensors);
    assert_eq!(modules.len(), reference.len(), "{:?}", tensors.keys());
    let mut errors = Vec::new();
    for (m, a, b) in modules {
        let r = a.shape[0];
        assert_eq!((r, b.shape[1]), (rank, rank), "{m}: rank {rank}");
        let scale = peft_alpha_for(&cfg, m).unwrap() / r as f64;
        let e = lowrank_error(a, b, scale, &reference[&format!("{m}.weight")]);
        errors.push((m.to_owned(), e));
    }
    (tensors, errors)
}

/// A PEFT LoHa lowered to a rank-1 LoRA by `resize` (check_combine_sweep.py's sweep9 draws):
/// the result must be the best rank-1 approximation of PEFT's own ΔW (`get_delta_weight`),
/// `reference.safetensors` by numpy's f64 SVD. Layer 1's σ₁ and σ₂ lie 2 % apart, and the f32
/// factored SVD of the LoHa's Khatri–Rao form moved its singular vectors by ε₃₂·σ₁/gap: 1.6e-5
/// of max |ΔW| off. Computed in f64 and rounded once, only the f32 storage of the factors is
/// left (~1e-7); 1e-6 holds that with a margin.
#[test]
fn loha_lowered_to_lora_is_the_f64_truncation() {
    let (_, errors) = lowered_errors("sweep9/loha_lowered", 1, &[]);
    for (m, e) in errors {
        assert!(
            e <= 1e-6,
            "{m}: rank-1 LoRA {e:.2e} of max |ΔW| from the f64 truncation"
        );
    }
}

/// A PEFT LoHa on a 3x3 and a 1x1 Conv2d stores its factors flat (`hada_w1_b` [r, in·kh·kw],
/// MANIFEST `hada_w1_b_shapes`), as a Linear's. Lowered with `--base`, the LoRA must take PEFT's
/// Conv2d layout, lora_A [r, in, kh, kw] and lora_B [out, r, 1, 1], or PEFT refuses to load it
/// (check_combine_sweep.py seeds 51/52, 5 cases: lorakit wrote lora_A [r, in·kh·kw]); and be
/// the f64 rank-2 truncation of PEFT's ΔW.
#[test]
fn loha_on_a_conv_lowered_with_the_base_takes_the_conv_layout() {
    let base = fixture("sweep9/loha_conv_flat/base.safetensors");
    let (tensors, errors) = lowered_errors("sweep9/loha_conv_flat", 2, &["--base", s(&base)]);
    for (name, a, b) in [
        ("c3", [2, 4, 3, 3], [8, 2, 1, 1]),
        ("c1", [2, 8, 1, 1], [6, 2, 1, 1]),
    ] {
        let key = |f: &str| format!("base_model.model.{name}.{f}.weight");
        assert_eq!(tensors[&key("lora_A")].shape, a, "{name}: lora_A");
        assert_eq!(tensors[&key("lora_B")].shape, b, "{name}: lora_B");
    }
    for (m, e) in errors {
        assert!(
            e <= 1e-6,
            "{m}: rank-2 LoRA {e:.2e} of max |ΔW| from the f64 truncation"
        );
    }
}
