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
