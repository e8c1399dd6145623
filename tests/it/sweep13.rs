//! What the sweeps with seeds 91/92 and wider draws found (fixtures/gen/sweep13_fixtures.py),
//! each against the real library's own result.

use super::common::*;

/// PEFT's OSF with `effective_rank` and `rank_pattern` as fractions of min(out, in) (0.25, and
/// 0.5 / 0.75 per module): OSF's `rank_pattern` holds the frozen rank, not a LoRA rank, and the
/// file's shapes say what it resolved to. lorakit refused the folder ("`rank_pattern` rank for
/// `o_proj` is not a positive integer"; check_peft_sweep.py's sweep13 tuner draws, seed 93).
/// Held, as gaps12's OSF, to the same merge in f64 within 1e-6 relative and to PEFT's own
/// (an f32 SVD of W0) within the 1e-5 its generator asserts.
#[test]
fn osf_fraction_rank_pattern_merges_as_peft() {
    let base = fixture("llama/base");
    let (_o, out) = scratch("out");
    run_ok(merge_args(
        &base,
        &fixture("sweep13/osf_fraction/adapter"),
        &out,
        &["--device", "cpu", "--quiet"],
    ));
    let got = read_checkpoint(&out);
    let base = read_checkpoint(&base);
    let f64_ref = read(&fixture("sweep13/osf_fraction/reference_f64.safetensors"));
    let peft = read(&fixture("sweep13/osf_fraction/merged.safetensors"));
    assert_eq!(assert_matches_reference(&got, &base, &f64_ref, 1e-6), 6);
    assert_eq!(assert_matches_reference(&got, &base, &peft, 1e-5), 6);
}

/// A PEFT C3A with block_size 1 (a dense ΔW = kernel / in) lowered to a rank-1 LoRA by
/// `resize` (check_combine_sweep.py's sweep13 resize draws, seed 93): the result must be the best
/// rank-1 approximation of PEFT's ΔW (`reference.safetensors`, numpy's f64 SVD of PEFT's
/// `get_circulant_fast` on the f64 kernel). Layer 1's σ₁ and σ₂ lie 0.36 % apart (MANIFEST), and
/// the f32 SVD of the dense ΔW moved the kept singular vectors by ε₃₂·σ₁/gap: 9.7e-5 of max |ΔW|
/// off. In f64 only the f32 storage of the factors is left; 1e-6 holds it with a margin.
#[test]
fn c3a_lowered_to_lora_is_the_f64_truncation() {
    let (_, errors) = super::sweep9::lowered_errors("sweep13/c3a_lowered", 1, &[]);
    assert_eq!(errors.len(), 2);
    for (m, e) in errors {
        assert!(
            e <= 1e-6,
            "{m}: rank-1 LoRA {e:.2e} of max |ΔW| from the f64 truncation"
        );
    }
}
