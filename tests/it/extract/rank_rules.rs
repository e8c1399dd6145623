//! The rank rules (energy, sv-ratio) at their documented boundaries, and alpha rescaled per
//! module rank.

use super::*;

/// Singular values 8, 4, 2, 1, 0.5, …: energies 64, 16, 4, 1, … The cumulative fraction reaches
/// E_k exactly at k; E a little above needs k + 1, a little below k.
fn spectrum_pair(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<f64>) {
    let sigma: Vec<f64> = (0..10).map(|i| 8.0 * 0.5f64.powi(i)).collect();
    let (m, n) = (90, 70);
    let d = with_spectrum(m, n, &sigma, 5);
    let base = dir.join("base.safetensors");
    let tuned = dir.join("tuned.safetensors");
    synth(
        &base,
        &vec![f32_tensor("x.weight", &[m, n], &vec![0.0; m * n])],
    );
    synth(&tuned, &vec![f32_tensor("x.weight", &[m, n], &f32s(&d))]);
    (base, tuned, sigma)
}

/// The rank `extract RULE VALUE EXTRA…` picks for the one module `x` of `[base, tuned]`, written
/// afresh to `dir/o`, whose file is checked to hold that rank.
fn picked_rank(
    dir: &Path,
    [base, tuned]: [&Path; 2],
    rule: &str,
    value: f64,
    extra: &[&str],
) -> u64 {
    let out = dir.join("o");
    let _ = std::fs::remove_dir_all(&out);
    let value = value.to_string();
    let v = extract(
        base,
        tuned,
        &out,
        &[&[rule, value.as_str()], extra].concat(),
    );
    let r = v["modules"][0]["rank"].as_u64().unwrap();
    let a = &read(&out.join("adapter_model.safetensors"))["base_model.model.x.lora_A.weight"];
    assert_eq!(a.shape[0] as u64, r, "the file holds that rank");
    r
}

#[test]
fn energy_picks_the_documented_rank_at_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let (base, tuned, sigma) = spectrum_pair(dir.path());
    let total: f64 = sigma.iter().map(|s| s * s).sum();
    let cum = |k: usize| sigma[..k].iter().map(|s| s * s).sum::<f64>() / total;
    let rank =
        |e: f64, extra: &[&str]| picked_rank(dir.path(), [&base, &tuned], "--energy", e, extra);
    // Default cap (128 ≥ min(d, k): exact SVD) and --max-rank 12 (randomized, 22 samples).
    for cap in [&[][..], &["--max-rank", "12"][..]] {
        for k in [1usize, 2, 3, 5] {
            // The margins are relative to the energy left, 1 − E_k; the σ computed in f32 are
            // within ~1e-6 relative of the true ones, far inside them.
            let (below, above) = (
                cum(k) - 1e-4 * (1.0 - cum(k)),
                cum(k) + 1e-2 * (1.0 - cum(k)),
            );
            assert_eq!(rank(below, cap), k as u64, "just below E_{k} {cap:?}");
            assert_eq!(rank(above, cap), k as u64 + 1, "just above E_{k} {cap:?}");
        }
        // σ₁₀ holds 2.9e-6 of the energy; the f32 rounding of the file and of the SVD leaves
        // ~1e-7 (either way) outside the true rank, so E = 1 itself depends on rounding.
        assert_eq!(rank(1.0 - 1e-6, cap), 10, "the true rank, {cap:?}");
    }
    assert_eq!(
        rank(cum(5) + 1e-2 * (1.0 - cum(5)), &["--max-rank", "3"]),
        3,
        "capped by --max-rank"
    );
}

#[test]
fn sv_ratio_picks_the_documented_rank_and_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let (base, tuned, _) = spectrum_pair(dir.path());
    let rank =
        |x: f64, extra: &[&str]| picked_rank(dir.path(), [&base, &tuned], "--sv-ratio", x, extra);
    // keep σ > 8/x: x = 4 puts the threshold on σ₃ = 2 (kept only when strictly above).
    for cap in [&[][..], &["--max-rank", "12"][..]] {
        assert_eq!(rank(4.0 * 0.999, cap), 2);
        assert_eq!(rank(4.0 * 1.001, cap), 3);
        assert_eq!(rank(100.0, cap), 7);
    }
    assert_eq!(rank(100.0, &["--max-rank", "4"]), 4);
    assert_eq!(rank(1.0, &[]), 1, "at least one (no σ > σ₁)");
    // Below 1 no singular value can pass: refused as resize refuses it (one rank rule).
    let e = run_extract_err(&base, &tuned, &dir.path().join("o"), &["--sv-ratio", "0.5"]);
    assert_mentions(&e, &["--sv-ratio 0.5 must be a finite number ≥ 1"]);
}

#[test]
fn alpha_rescales_factors_per_module_rank() {
    let dir = tempfile::tempdir().unwrap();
    let sig_a: Vec<f64> = vec![3.0, 2.0, 1.0];
    let sig_b: Vec<f64> = vec![5.0, 4.0, 3.0, 2.0, 1.0];
    let da = with_spectrum(40, 30, &sig_a, 1);
    let db = with_spectrum(50, 36, &sig_b, 2);
    let base = dir.path().join("base.safetensors");
    let tuned = dir.path().join("tuned.safetensors");
    synth(
        &base,
        &vec![
            f32_tensor("a.weight", &[40, 30], &vec![0.0; 1200]),
            f32_tensor("b.weight", &[50, 36], &vec![0.0; 1800]),
        ],
    );
    synth(
        &tuned,
        &vec![
            f32_tensor("a.weight", &[40, 30], &f32s(&da)),
            f32_tensor("b.weight", &[50, 36], &f32s(&db)),
        ],
    );
    let out = dir.path().join("out");
    let v = extract(&base, &tuned, &out, &flags("--energy 0.9999 --alpha 16"));
    assert_eq!(
        module_ranks(&v),
        BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 5)])
    );
    let cfg: Value = read_json(out.join("adapter_config.json"));
    assert_eq!(cfg["lora_alpha"], 16);
    assert_eq!(cfg["alpha_pattern"], serde_json::json!({}));
    assert_eq!(cfg["rank_pattern"].as_object().unwrap().len(), 1);
    let got = peft_deltas(&out);
    assert!(rel64(&got["a"], &da) <= 1e-5);
    assert!(rel64(&got["b"], &db) <= 1e-5);
}
