//! LyCORIS → LoRA lowering (`resize`) at the optimal error, and `combine` of LyCORIS inputs,
//! checked against ΔW rebuilt here in f64.

use super::*;

/// ΔW of a LyCORIS module rebuilt here in f64 from the file's factors (independently of lorakit's
/// code): LoHa `(w1a·w1b) ⊙ (w2a·w2b)`, LoKr `kron(w1, w2)` (halves whole or `a·b`), times the
/// scale LyCORIS itself recorded for the module (MANIFEST.json). Returns (ΔW, d, k).
fn lycoris_delta64(case: &str, module: &str) -> (Vec<f64>, usize, usize) {
    let t = read(&fixture(&format!("lycoris/{case}.safetensors")));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("lycoris/MANIFEST.json")).unwrap())
            .unwrap();
    let scale = manifest["cases"][case]["modules"][module]["scale"]
        .as_f64()
        .unwrap();
    let key = format!("lycoris_{}", module.replace('.', "_"));
    let get = |s: &str| t.get(&format!("{key}.{s}"));
    // (values, rows, cols) of a matrix stored whole or as a·b.
    let mat = |whole: &str, a: &str, b: &str| -> (Vec<f64>, usize, usize) {
        if let Some(w) = get(whole) {
            let cols = w.shape[1..].iter().product();
            return (
                w.f32().iter().map(|&x| x as f64).collect(),
                w.shape[0],
                cols,
            );
        }
        let (a, b) = (get(a).unwrap(), get(b).unwrap());
        let (rows, r, cols) = (
            a.shape[0],
            a.shape[1],
            b.shape[1..].iter().product::<usize>(),
        );
        let (av, bv) = (a.f32(), b.f32());
        let v = (0..rows * cols)
            .map(|p| {
                (0..r)
                    .map(|q| av[(p / cols) * r + q] as f64 * bv[q * cols + p % cols] as f64)
                    .sum()
            })
            .collect();
        (v, rows, cols)
    };
    if get("hada_w1_a").is_some() {
        let (x, d, k) = mat("", "hada_w1_a", "hada_w1_b");
        let (y, _, _) = mat("", "hada_w2_a", "hada_w2_b");
        let v = x.iter().zip(&y).map(|(a, b)| a * b * scale).collect();
        return (v, d, k);
    }
    let (w1, a, c) = mat("lokr_w1", "lokr_w1_a", "lokr_w1_b");
    let (w2, b, n2) = mat("lokr_w2", "lokr_w2_a", "lokr_w2_b");
    let (d, k) = (a * b, c * n2);
    let v = (0..d * k)
        .map(|p| {
            let (row, col) = (p / k, p % k);
            w1[(row / b) * c + col / n2] * w2[(row % b) * n2 + col % n2] * scale
        })
        .collect();
    (v, d, k)
}

/// `resize` of `fixtures/lycoris/{case}.safetensors` with `rule` into `out`: its JSON report.
fn resize_json(case: &str, rule: &[&str], out: &Path) -> serde_json::Value {
    let input = fixture(&format!("lycoris/{case}.safetensors"));
    let args = resize_args(&input, out, &[rule, &["--json"]].concat());
    serde_json::from_str(&run_ok(args)).unwrap()
}

/// The lowered module `key` of the written LoRA `t` against the true ΔW `want` (d×k): its rank
/// and ‖(alpha/r)·up·down − ΔW‖_F in f64.
fn lowered_error(
    t: &BTreeMap<String, T>,
    key: &str,
    want: &[f64],
    d: usize,
    k: usize,
) -> (usize, f64) {
    let up = t[&format!("{key}.lora_up.weight")].f32();
    let down = t[&format!("{key}.lora_down.weight")].f32();
    let alpha = t[&format!("{key}.alpha")].f32()[0] as f64;
    let r = up.len() / d;
    assert_eq!(
        (up.len(), down.len()),
        (d * r, r * k),
        "{key}: factor sizes"
    );
    let err2: f64 = (0..d * k)
        .map(|p| {
            let got = (0..r)
                .map(|q| up[(p / k) * r + q] as f64 * down[q * k + p % k] as f64)
                .sum::<f64>()
                * alpha
                / r as f64;
            (got - want[p]).powi(2)
        })
        .sum();
    (r, err2.sqrt())
}

/// The report's row for module `key`.
fn reported<'a>(rep: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    entry(&rep["modules"], "name", key)
}

/// LyCORIS → plain LoRA (`resize --rank R` on a LyCORIS file): each module's error is the
/// Eckart–Young optimum of its true ΔW at rank R (an f64 Jacobi SVD of the ΔW rebuilt above),
/// the report states that error, and the written LoRA is plain `lora_up`/`lora_down`.
#[test]
fn lycoris_lowers_to_lora_at_the_optimal_error() {
    use super::super::reference::{jacobi_svd, norm64};
    let dir = tempfile::tempdir().unwrap();
    let modules = [
        "down_blocks.0.to_q",
        "down_blocks.0.ff_out",
        "down_blocks.0.proj_out",
    ];
    for case in ["loha", "lokr", "lokr_full"] {
        for rank in [2usize, 5] {
            let out = dir.path().join(format!("{case}.r{rank}.safetensors"));
            let rep = resize_json(case, &["--rank", &rank.to_string()], &out);
            let t = read(&out);
            assert!(t
                .keys()
                .all(|k| k.contains(".lora_") || k.ends_with(".alpha")));
            for module in modules {
                let key = format!("lycoris_{}", module.replace('.', "_"));
                let (want, d, k) = lycoris_delta64(case, module);
                let (_, s, _) = jacobi_svd(&want, d, k);
                let r = rank.min(s.len());
                let optimal = s[r..].iter().map(|x| x * x).sum::<f64>().sqrt();
                let (got_rank, err) = lowered_error(&t, &key, &want, d, k);
                assert_eq!(got_rank, r, "{case} {module}: rank");
                // f32 factors round each entry once: a few ulps of ‖ΔW‖ on top of the optimum.
                let slack = 1e-6 * norm64(&want);
                assert!(
                    err <= 1.001 * optimal + slack,
                    "{case} {module} rank {r}: error {err:e}, optimum {optimal:e}"
                );
                let fro_error = reported(&rep, &key)["fro_error"].as_f64().unwrap();
                assert!(
                    (fro_error - err).abs() <= 1e-3 * err + slack,
                    "{case} {module}: reported {fro_error:e}, measured {err:e}"
                );
            }
        }
    }
}

/// `combine` takes LyCORIS inputs as the exact LoRA form of their ΔW: `cat` of a LoHa and a LoKr
/// file at weights ½ merges to W0 + ½ΔW₁ + ½ΔW₂, the reference computed here in f64 from the two
/// forward-probed fixtures. A flat LoHa conv and a LoKr conv of the same layout combine.
#[test]
fn combine_takes_lycoris_inputs_exactly() {
    let (dir, out) = scratch("mix.safetensors");
    run_ok(combine_args(
        &[
            (&fixture("lycoris/loha.safetensors"), Some("0.5")),
            (&fixture("lycoris/lokr.safetensors"), Some("0.5")),
        ],
        &out,
        &["--method", "cat"],
    ));
    let merged = dir.path().join("merged.safetensors");
    merge_ok(
        &fixture("lycoris/base.safetensors"),
        &out,
        &merged,
        &["--quiet"],
    );
    let base = read(&fixture("lycoris/base.safetensors"));
    let (m1, m2) = (
        read(&fixture("lycoris/loha.merged.safetensors")),
        read(&fixture("lycoris/lokr.merged.safetensors")),
    );
    for (name, t) in read(&merged) {
        let want: Vec<f32> = base[&name]
            .f32()
            .iter()
            .zip(m1[&name].f32())
            .zip(m2[&name].f32())
            .map(|((&x, y), z)| {
                let x = x as f64;
                (x + 0.5 * (y as f64 - x) + 0.5 * (z as f64 - x)) as f32
            })
            .collect();
        let e = rel_err(&t.f32(), &want);
        assert!(e <= TOL, "{name}: relative error {e:e}");
    }
}

/// LyCORIS → LoRA by `--energy E`, convs included (a 3×3 LoHa/LoKr conv lowers to a flat
/// `lora_down` [r, in·kh·kw]): each module gets the smallest rank whose leading singular values
/// of the true ΔW (f64 Jacobi SVD of the ΔW rebuilt above, LoHa's up to rank r², LoKr's up to the
/// product of its halves' ranks) hold a fraction ≥ E of ‖ΔW‖², and its error is the
/// Eckart–Young optimum at that rank.
#[test]
fn lycoris_lowers_to_lora_by_energy() {
    use super::super::reference::{jacobi_svd, norm64};
    let dir = tempfile::tempdir().unwrap();
    let energy = 0.95;
    let mut modules_checked = 0;
    for case in ["loha", "lokr", "lokr_full"] {
        let out = dir.path().join(format!("{case}.e.safetensors"));
        let rep = resize_json(case, &["--energy", &energy.to_string()], &out);
        let t = read(&out);
        for module in [
            "down_blocks.0.to_q",
            "down_blocks.0.ff_out",
            "down_blocks.0.proj_out",
            "down_blocks.0.conv_in",
        ] {
            let key = format!("lycoris_{}", module.replace('.', "_"));
            let (want, d, k) = lycoris_delta64(case, module);
            let (_, s, _) = jacobi_svd(&want, d, k);
            let total: f64 = s.iter().map(|x| x * x).sum();
            let mut kept = 0.0;
            let r = s
                .iter()
                .position(|x| {
                    kept += x * x;
                    kept >= energy * total
                })
                .unwrap()
                + 1;
            // The rule is decided by rounding only when a cumulative energy sits at E.
            let cum = |n: usize| s[..n].iter().map(|x| x * x).sum::<f64>() / total;
            assert!(
                (cum(r) - energy).abs() > 1e-5 && (cum(r - 1) - energy).abs() > 1e-5,
                "{case} {module}: energy {energy} too close to a cumulative energy"
            );
            let down = &t[&format!("{key}.lora_down.weight")];
            assert_eq!(
                down.shape[1..].iter().product::<usize>(),
                k,
                "{case} {module}: flat down"
            );
            let (got_rank, err) = lowered_error(&t, &key, &want, d, k);
            assert_eq!(got_rank, r, "{case} {module}: rank");
            let optimal = s[r..].iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!(
                err <= 1.001 * optimal + 1e-6 * norm64(&want),
                "{case} {module} rank {r}: error {err:e}, optimum {optimal:e}"
            );
            let row = reported(&rep, &key);
            assert_eq!(row["rank_after"], r, "{case} {module}: reported rank");
            let e = row["energy_kept"].as_f64().unwrap();
            assert!(
                (e - cum(r)).abs() <= 1e-5,
                "{case} {module}: energy kept {e}, {}",
                cum(r)
            );
            modules_checked += 1;
        }
    }
    assert_eq!(modules_checked, 12);
}
