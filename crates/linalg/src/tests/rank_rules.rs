//! Energy and sv_ratio rank boundaries.
//!
//! Boundaries are computed from the stated spectra; must not compare a backend with itself.

use super::*;

// ---------------------------------------------------------------------------
// (4) energy boundary, (5) sv_ratio boundary
// ---------------------------------------------------------------------------

#[test]
fn rank_for_energy_boundaries_are_exact() {
    // σ² = 16,16,16,4,4,4,1,1,1,1: total 64; cumulative fractions
    // 0.25, 0.5, 0.75, 0.8125, 0.875, 0.9375, 61/64, 62/64, 63/64, 1 — all exact.
    let s = [4.0f32, 4.0, 4.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0];
    let cum = [
        0.25,
        0.5,
        0.75,
        0.8125,
        0.875,
        0.9375,
        61.0 / 64.0,
        62.0 / 64.0,
        63.0 / 64.0,
        1.0,
    ];
    for (i, &c) in cum.iter().enumerate() {
        let k = i + 1;
        assert_eq!(rank_for_energy(&s, c), k, "hit exactly at k = {k}");
        assert_eq!(rank_for_energy(&s, c - 1e-9), k, "just below at k = {k}");
        if k < s.len() {
            assert_eq!(
                rank_for_energy(&s, c + 1e-9),
                k + 1,
                "just above at k = {k}"
            );
        }
        // Inside the documented 1e-12 relative slack → still k; beyond it → k+1.
        assert_eq!(rank_for_energy(&s, c + 1e-13), k);
        if k < s.len() {
            assert_eq!(rank_for_energy(&s, c + 1e-11), k + 1);
        }
    }
    assert_eq!(rank_for_energy(&s, 0.0), 1);
    assert_eq!(rank_for_energy(&s, -1.0), 1);
    assert_eq!(rank_for_energy(&s, 1.5), 10);
    assert_eq!(rank_for_energy(&s, f64::NAN), 10);
    assert_eq!(rank_for_energy(&[0.0; 4], 0.9), 1);
    // Exact zeros at the tail are not needed for energy 1.
    assert_eq!(rank_for_energy(&[3.0, 1.0, 0.0, 0.0], 1.0), 2);
    assert_eq!(effective_rank(&s, 0.75), 3);
    // Energy accounting.
    assert_eq!(energy(&s), 64.0);
    assert_eq!(tail_energy(&s, 3), 16.0);
    assert_eq!(tail_energy(&s, 10), 0.0);
    assert_eq!(tail_energy(&s, 99), 0.0);
    let m = Array2::from_shape_vec((2, 2), vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(frobenius_norm_sq(m.view()), 30.0);
}

#[test]
fn rank_for_sv_ratio_matches_kohya_rule() {
    let s = [8.0f32, 4.0, 2.0, 1.0, 0.5];
    // ratio 4: min_sv = 2; kohya keeps S > 2 strictly → 8, 4.
    assert_eq!(rank_for_sv_ratio(&s, 4.0), 2);
    assert_eq!(rank_for_sv_ratio(&s, 4.0001), 3); // min_sv just below 2
    assert_eq!(rank_for_sv_ratio(&s, 3.9999), 2); // min_sv just above 2
    assert_eq!(rank_for_sv_ratio(&s, 8.0), 3); // min_sv = 1 excluded
    assert_eq!(rank_for_sv_ratio(&s, 16.0), 4); // min_sv = 0.5 excluded
    assert_eq!(rank_for_sv_ratio(&s, 16.001), 5);
    assert_eq!(rank_for_sv_ratio(&s, 1e9), 5);
    assert_eq!(rank_for_sv_ratio(&s, 2.0), 1); // only 8 > 4
    assert_eq!(rank_for_sv_ratio(&s, 1.0), 1); // none strictly above: clamped to 1
    assert_eq!(rank_for_sv_ratio(&s, 0.5), 1);
    assert_eq!(rank_for_sv_ratio(&[0.0; 3], 10.0), 1);
    // Ties at the top are all kept for ratio > 1.
    assert_eq!(rank_for_sv_ratio(&[3.0, 3.0, 3.0, 1.0], 1.5), 3);
    // The threshold is the f32 quotient: 1/3 rounds up in f32, so a value
    // equal to fl32(1/3) is not kept (strict >), matching torch's float32.
    let third = 1.0f32 / 3.0f32;
    assert_eq!(rank_for_sv_ratio(&[1.0, third], 3.0), 1);
    assert_eq!(
        rank_for_sv_ratio(&[1.0, f32::from_bits(third.to_bits() + 1)], 3.0),
        2
    );
    // 1.1 is not an f32: torch divides by fl32(1.1), giving fl32(1/fl32(1.1)),
    // one ulp below fl32(1/1.1). A value one ulp above torch's threshold is
    // kept (an f64 division would put the threshold on it and drop it).
    let torch = 1.0f32 / 1.1f32;
    let above = f32::from_bits(torch.to_bits() + 1);
    assert_eq!(above, (1.0f64 / 1.1) as f32);
    assert_eq!(rank_for_sv_ratio(&[1.0, torch], 1.1), 1);
    assert_eq!(rank_for_sv_ratio(&[1.0, above], 1.1), 2);
}
