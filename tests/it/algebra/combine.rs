//! `combine` through the binary: `cat`, `svd`, `linear`, `ties` against PEFT 0.21.2's
//! `add_weighted_adapter` results (fixtures/llama/adapters/{weighted_cat, linear_mix, ties_mix,
//! svd_mix}), DARE semantics, and the refusals.

use super::*;

fn assert_factors_close(got: &Path, want: &Path, tol: f64) {
    let g = read(&got.join("adapter_model.safetensors"));
    let w = read(&want.join("adapter_model.safetensors"));
    assert_eq!(
        g.keys().collect::<Vec<_>>(),
        w.keys().collect::<Vec<_>>(),
        "tensor names"
    );
    for (k, t) in &w {
        assert_eq!(g[k].shape, t.shape, "{k}: shape");
        let e = rel_err(&g[k].f32(), &t.f32());
        assert!(e <= tol, "{k}: relative error {e:e} > {tol:e}");
    }
}

fn weighted_sum(parts: &[(&str, f64)]) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (a, w) in parts {
        for (name, d) in deltas(&fixture(a)) {
            let e = out.entry(name).or_insert_with(|| vec![0.0; d.w.len()]);
            for (x, y) in e.iter_mut().zip(&d.w) {
                *x += w * y;
            }
        }
    }
    out
}

/// `combine` of two fixtures, each `(fixture, weight)`, into `out`, then `extra`.
fn pair_args(a: (&str, &str), b: (&str, &str), out: &Path, extra: &[&str]) -> Vec<String> {
    let (pa, pb) = (fixture(a.0), fixture(b.0));
    combine_args(&[(&pa, Some(a.1)), (&pb, Some(b.1))], out, extra)
}

/// PEFT's weighted-adapter fixtures as fixtures/gen weighs them (weighted_a × 0.7,
/// weighted_b × −0.4).
fn weighted_ab_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let (a, b) = ("llama/adapters/weighted_a", "llama/adapters/weighted_b");
    pair_args((a, "0.7"), (b, "-0.4"), out, extra)
}

/// The linear/TIES/DARE fixtures as fixtures/gen weighs them (linear_c × 0.6, linear_d × 0.3).
fn linear_cd_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let (c, d) = ("llama/adapters/linear_c", "llama/adapters/linear_d");
    pair_args((c, "0.6"), (d, "0.3"), out, extra)
}

#[test]
fn combine_cat_reproduces_peft_weighted_cat() {
    let (dir, out) = scratch("cat");
    let rep = run_json(&weighted_ab_args(&out, &["--method", "cat"]));
    // PEFT's layout: every module rank 10 = 4 + 6, packed then zero-padded; r = alpha = 10.
    assert_factors_close(&out, &fixture("llama/adapters/weighted_cat"), 1e-6);
    let cfg: serde_json::Value = read_json(out.join("adapter_config.json"));
    assert_eq!(
        (cfg["r"].as_u64(), cfg["lora_alpha"].as_u64()),
        (Some(10), Some(10))
    );
    assert_eq!(rep["modules"].as_array().unwrap().len(), 6);
    // ΔW = 0.7·Δa − 0.4·Δb exactly (to f32 rounding), module by module.
    let want = weighted_sum(&[
        ("llama/adapters/weighted_a", 0.7),
        ("llama/adapters/weighted_b", -0.4),
    ]);
    let got = deltas(&out);
    for (name, w) in &want {
        assert!(rel64(&got[name].w, w) < 1e-6, "{name}");
        assert_eq!(got[name].scale, 1.0);
    }
    // --no-pad: each module keeps the ranks of its own inputs, same ΔW.
    let out2 = dir.path().join("cat_nopad");
    run_ok(weighted_ab_args(&out2, &["--method", "cat", "--no-pad"]));
    let got = deltas(&out2);
    for (name, w) in &want {
        assert_eq!(got[name].rank, weighted_cat_rank(name), "{name}");
        assert!(rel64(&got[name].w, w) < 1e-6, "{name}");
    }
}

#[test]
fn combine_svd_at_full_rank_is_exact_and_matches_peft_svd_mix() {
    let (dir, out) = scratch("svd10");
    let rep = run_json(&weighted_ab_args(
        &out,
        &["--method", "svd", "--rank", "10"],
    ));
    let want = weighted_sum(&[
        ("llama/adapters/weighted_a", 0.7),
        ("llama/adapters/weighted_b", -0.4),
    ]);
    let got = deltas(&out);
    for (name, w) in &want {
        assert_eq!(got[name].rank, 10);
        assert!(
            rel64(&got[name].w, w) < 2e-6,
            "{name}: {:e}",
            rel64(&got[name].w, w)
        );
    }
    for m in rep["modules"].as_array().unwrap() {
        assert!((m["energy_kept"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    }

    // PEFT's svd_mix: linear_c·0.6 + linear_d·0.3 at rank 4 (the largest input rank).
    let out = dir.path().join("svd4");
    let c = fixture("llama/adapters/linear_c");
    let d = fixture("llama/adapters/linear_d");
    run_ok(combine_args(
        &[(&c, Some("0.6")), (&d, Some("0.3"))],
        &out,
        &["--method", "svd"],
    ));
    let peft = deltas(&fixture("llama/adapters/svd_mix"));
    let got = deltas(&out);
    let sum = weighted_sum(&[
        ("llama/adapters/linear_c", 0.6),
        ("llama/adapters/linear_d", 0.3),
    ]);
    for (name, p) in &peft {
        let g = &got[name];
        assert_eq!((g.rank, g.alpha, p.rank), (4, 4.0, 4));
        assert!(
            rel64(&g.w, &p.w) < 1e-5,
            "{name}: ΔW vs PEFT svd_mix {:e}",
            rel64(&g.w, &p.w)
        );
        assert_best_rank(name, &g.w, &sum[name], g.d, g.k, 4);
    }
    // Factors: PEFT's B = U·diag(σ), A = Vᵀ; equal up to the sign of each singular pair.
    let gt = read(&out.join("adapter_model.safetensors"));
    let pt = read(&fixture("llama/adapters/svd_mix/adapter_model.safetensors"));
    for key in pt.keys().filter(|k| k.ends_with("lora_A.weight")) {
        let bkey = key.replace("lora_A", "lora_B");
        let (ga, pa, gb, pb) = (
            gt[key].f32(),
            pt[key].f32(),
            gt[&bkey].f32(),
            pt[&bkey].f32(),
        );
        let (r, k) = (pt[key].shape[0], pt[key].shape[1]);
        let dd = pt[&bkey].shape[0];
        for j in 0..r {
            let row = |v: &[f32]| v[j * k..(j + 1) * k].to_vec();
            let col = |v: &[f32]| (0..dd).map(|i| v[i * r + j]).collect::<Vec<f32>>();
            let (g_a, p_a, g_b, p_b) = (row(&ga), row(&pa), col(&gb), col(&pb));
            let dot: f32 = g_a.iter().zip(&p_a).map(|(x, y)| x * y).sum();
            let sign = dot.signum();
            let flip = |v: &[f32]| v.iter().map(|x| x * sign).collect::<Vec<f32>>();
            assert!(
                rel_err(&flip(&g_a), &p_a) < 1e-4,
                "{key} row {j}: {:e}",
                rel_err(&flip(&g_a), &p_a)
            );
            assert!(rel_err(&flip(&g_b), &p_b) < 1e-4, "{bkey} column {j}");
        }
    }
}

#[test]
fn combine_linear_and_ties_match_peft() {
    let dir = tempfile::tempdir().unwrap();
    for (method, extra, reference) in [
        ("linear", &[][..], "linear_mix"),
        ("ties", &["--density", "0.5"][..], "ties_mix"),
    ] {
        let out = dir.path().join(method);
        run_ok(linear_cd_args(
            &out,
            &[&["--method", method][..], extra].concat(),
        ));
        let refdir = fixture(&format!("llama/adapters/{reference}"));
        assert_factors_close(&out, &refdir, 1e-6);
        let (got, want) = (deltas(&out), deltas(&refdir));
        for (name, w) in &want {
            assert_eq!(
                (got[name].rank, got[name].alpha),
                (w.rank, w.alpha),
                "{name}"
            );
            assert!(rel64(&got[name].w, &w.w) < 2e-6, "{method} {name}");
        }
    }
}

#[test]
fn combine_dare_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, rest: &[&str]| -> BTreeMap<String, T> {
        let out = dir.path().join(name);
        run_ok(linear_cd_args(&out, rest));
        read(&out.join("adapter_model.safetensors"))
    };
    // Density 1 drops nothing: DARE equals the undropped method, bit for bit.
    assert_eq!(
        run("dl1", &["--method", "dare_linear", "--density", "1"]),
        run("lin", &["--method", "linear"])
    );
    assert_eq!(
        run("dt1", &["--method", "dare_ties", "--density", "1"]),
        run("t1", &["--method", "ties", "--density", "1"])
    );
    // Seeded: same seed, same bytes; another seed, other masks.
    let a = run(
        "s7a",
        &["--method", "dare_linear", "--density", "0.5", "--seed", "7"],
    );
    assert_eq!(
        a,
        run(
            "s7b",
            &["--method", "dare_linear", "--density", "0.5", "--seed", "7"]
        )
    );
    assert_ne!(
        a,
        run(
            "s8",
            &["--method", "dare_linear", "--density", "0.5", "--seed", "8"]
        )
    );
    // With one input DARE-linear is that input pruned and rescaled: each entry of A is either 0
    // or the (signed √(w·s)-weighted) input divided by the density.
    let out = dir.path().join("single");
    run_ok(combine_args(
        &[(&fixture("llama/adapters/linear_c"), Some("0.5"))],
        &out,
        &["--method", "linear"],
    ));
    let lin = read(&out.join("adapter_model.safetensors"));
    let want = deltas(&fixture("llama/adapters/linear_c"));
    for (name, dl) in deltas(&out) {
        let w: Vec<f64> = want[&name].w.iter().map(|x| 0.5 * x).collect();
        assert!(
            rel64(&dl.w, &w) < 1e-6,
            "one adapter: linear is exact ({name})"
        );
    }
    assert!(!lin.is_empty());
}

/// DARE at density p < 1, checked against the inputs read independently (safetensors crate,
/// scale alpha/r from each config). With two inputs (with one, PEFT's add_weighted_adapter
/// falls back to linear) every output factor entry must be Σᵢ mᵢ·√(wᵢsᵢ)·xᵢ/p for some keep
/// masks mᵢ ∈ {0, 1}; the masks are recovered entry by entry and each input's kept fraction must
/// be p within 5 standard deviations of a binomial draw.
#[test]
fn dare_keeps_rescaled_entries_and_drops_one_minus_density() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = [
        fixture("llama/adapters/linear_c"),
        fixture("llama/adapters/linear_d"),
    ];
    let scale = |p: &Path| {
        let cfg: serde_json::Value = read_json(p.join("adapter_config.json"));
        cfg["lora_alpha"].as_f64().unwrap() / cfg["r"].as_f64().unwrap()
    };
    let sides: Vec<f64> = inputs.iter().map(|p| scale(p).sqrt()).collect();
    let tensors: Vec<_> = inputs
        .iter()
        .map(|p| read(&p.join("adapter_model.safetensors")))
        .collect();
    for density in [0.3f64, 0.7] {
        let out = dir.path().join(format!("dare{density}"));
        run_ok(combine_args(
            &[(&inputs[0], None), (&inputs[1], None)],
            &out,
            &[
                "--method",
                "dare_linear",
                "--density",
                &density.to_string(),
                "--seed",
                "11",
                "-q",
            ],
        ));
        let got = read(&out.join("adapter_model.safetensors"));
        let (mut kept, mut total) = ([0usize; 2], 0usize);
        for (key, t) in &got {
            if !(key.ends_with("lora_A.weight") || key.ends_with("lora_B.weight")) {
                continue;
            }
            let x: Vec<Vec<f32>> = tensors.iter().map(|ts| ts[key].f32()).collect();
            for (j, o) in t.f32().iter().enumerate() {
                let term = |i: usize| sides[i] * x[i][j] as f64 / density;
                let masks = [(0, 0), (1, 0), (0, 1), (1, 1)];
                let found = masks.iter().find(|(m0, m1)| {
                    let want = *m0 as f64 * term(0) + *m1 as f64 * term(1);
                    (*o as f64 - want).abs() <= 1e-6 * (term(0).abs() + term(1).abs()).max(1e-12)
                });
                let &(m0, m1) = found.unwrap_or_else(|| {
                    panic!(
                        "{key}[{j}]: {o} is no sum of kept, rescaled inputs ({} , {})",
                        term(0),
                        term(1)
                    )
                });
                kept[0] += m0;
                kept[1] += m1;
                total += 1;
            }
        }
        let sd = (density * (1.0 - density) / total as f64).sqrt();
        for (i, k) in kept.iter().enumerate() {
            let frac = *k as f64 / total as f64;
            assert!(
                (frac - density).abs() <= 5.0 * sd,
                "input {i}, density {density}: kept {frac:.4} of {total} entries, expected {density} ± {:.4}",
                5.0 * sd
            );
        }
    }
}

#[test]
fn combine_refuses_what_it_cannot_do() {
    let (_dir, out) = scratch("x");
    let a = fixture("llama/adapters/weighted_a");
    let b = fixture("llama/adapters/weighted_b");
    // Unequal ranks for a factor-wise method: one line naming the module.
    let res = run_err(combine_args(
        &[(&a, None), (&b, None)],
        &out,
        &["--method", "linear"],
    ));
    let line = one_line_error(&res);
    assert_mentions(&line, &["q_proj", "rank 6", "equal ranks"]);
    // Usage errors.
    for bad in [
        &["--method", "ties"][..],
        &["--method", "linear", "--density", "0.5"],
        &["--method", "cat", "--rank", "3"],
        &["--method", "dare_ties", "--density", "0"],
        &["--method", "cat", "--weight", "1"],
    ] {
        let res = run_err(combine_args(&[(&a, None), (&b, None)], &out, bad));
        one_line_error(&res);
    }
    // DoRA does not combine.
    let res = run_err(combine_args(
        &[(&fixture("llama/adapters/dora"), None), (&a, None)],
        &out,
        &["--method", "cat"],
    ));
    let line = one_line_error(&res);
    assert_mentions(&line, &["DoRA", "dora"]);
    // Output onto an input.
    let res = run_err(combine_args(
        &[(&a, None), (&b, None)],
        &b,
        &["--method", "cat"],
    ));
    assert!(one_line_error(&res).contains("output is also an input"));
    assert!(!out.exists());
}
