//! The eighteenth hostile round (2026-12-08, a helper's campaign on the release CLI): each test
//! fails before its fix.

use super::common::*;

/// `--part I/N` with a huge N: `extract` panicked ("capacity overflow"), `merge` accepted it and
/// `finalize` then panicked, or with N = 10⁷ took 0.9 GB and printed a 178 MB line naming every
/// missing part. N is now bounded where it is parsed and where a manifest states it, and the
/// missing parts are listed up to a count.
#[test]
fn part_counts_are_bounded_and_missing_parts_listed_briefly() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    let adapter = fixture("llama/adapters/qv_r8");
    let out = dir.path().join("m");
    for part in ["1/18446744073709551615", "1/10001"] {
        let err = one_line_error(&run_err(merge_args(
            &base,
            &adapter,
            &out,
            &["--part", part],
        )));
        assert_mentions(&err, &["--part", "at most 10000 parts"]);
        let err = one_line_error(&run_err(extract_args(
            &base,
            &base,
            &out,
            &["--rank", "2", "--part", part],
        )));
        assert_mentions(&err, &["at most 10000 parts"]);
        assert!(!out.exists());
    }
    // A real part 1 of 10000: the other 9999 are missing, and the error names a few.
    run_ok(merge_args(
        &base,
        &adapter,
        &out,
        &["--part", "1/10000", "--quiet"],
    ));
    let err = one_line_error(&run_err(finalize_args(&out, &[])));
    assert_mentions(
        &err,
        &["parts not finished: 2/10000, 3/10000", "(9999 in all)"],
    );
    assert!(err.len() < 600, "{err}");
    // A manifest that lies about the count is refused before anything is sized by it.
    let manifest = out.join(".lorakit-part-1-of-10000.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let lying = text.replace("\"parts\": 10000", "\"parts\": 18446744073709551615");
    assert_ne!(lying, text);
    std::fs::write(&manifest, lying).unwrap();
    let err = one_line_error(&run_err(finalize_args(&out, &[])));
    assert_mentions(
        &err,
        &[".lorakit-part-1-of-10000.json", "a run has 1 to 10000"],
    );
}

/// BD-LoRA (`use_bdlora`): lorakit expands the block-diagonal factors when it reads them, but
/// `convert --to peft`, `resize`, `combine` and a kohya round trip copied `use_bdlora` into the
/// config of their dense factors, so lorakit's own merge (and PEFT: "size mismatch") refused
/// the output. The flag is now dropped with the blocks; the converted folders merge to what the
/// original does.
#[test]
fn bdlora_outputs_hold_dense_factors_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    let bd = fixture("llama/adapters/bdlora");
    let qv = fixture("llama/adapters/qv_r8");
    let p = |n: &str| dir.path().join(n);
    run_ok(merge_args(&base, &bd, &p("m_bd"), &["--quiet"]));
    run_ok(convert_args(&bd, "peft", &p("conv"), &["--quiet"]));
    run_ok(convert_args(
        &bd,
        "kohya",
        &p("k.safetensors"),
        &["--quiet"],
    ));
    run_ok(convert_args(
        &p("k.safetensors"),
        "peft",
        &p("back"),
        &["--quiet"],
    ));
    run_ok(resize_args(&bd, &p("rs"), &["--rank", "4", "--quiet"]));
    run_ok(combine_args(
        &[(&bd, None), (&qv, None)],
        &p("cb"),
        &["--method", "cat", "--quiet"],
    ));
    for out in ["conv", "back", "rs", "cb"] {
        let cfg: serde_json::Value = read_json(p(out).join("adapter_config.json"));
        assert!(cfg["use_bdlora"].is_null(), "{out}: {cfg}");
        let merged = p(&format!("m_{out}"));
        run_ok(merge_args(&base, &p(out), &merged, &["--quiet"]));
        if out == "conv" || out == "back" {
            run_ok(diff_args(&merged, &p("m_bd"), &["--tolerance", "1e-6"]));
        }
    }
}

/// A float in `rank_pattern` (`{"q_proj": 8.0}`) was accepted where a float `r` is refused;
/// PEFT builds the layer with it and raises TypeError. Now the same refusal as `r`'s.
#[test]
fn float_rank_pattern_values_are_refused_as_r_is() {
    let dir = tempfile::tempdir().unwrap();
    let ad = dir.path().join("ad");
    copy_dir(&fixture("llama/adapters/qv_r8"), &ad);
    let cfg_path = ad.join("adapter_config.json");
    let mut cfg: serde_json::Value = read_json(&cfg_path);
    cfg["rank_pattern"] = serde_json::json!({"q_proj": 8.0});
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = dir.path().join("o");
    let err = merge_refused(&fixture("llama/base"), &ad, &out, &[]);
    assert_mentions(
        &err,
        &[
            "rank_pattern",
            "rank for `q_proj` is not a positive integer",
        ],
    );
    cfg["rank_pattern"] = serde_json::json!({"q_proj": 8});
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    run_ok(merge_args(&fixture("llama/base"), &ad, &out, &["--quiet"]));
}

fn f64_file(path: &std::path::Path, v: &[f64]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_views(path, &[("t", safetensors::Dtype::F64, &[v.len()], &bytes)]);
}

fn f32_file(path: &std::path::Path, v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_views(path, &[("t", safetensors::Dtype::F32, &[v.len()], &bytes)]);
}

/// `diff` of F64 tensors compared them after rounding to f32: `[1, 2, 3, 4]` against
/// `[1 + 1e-12, 2, 3, 4 + 1e-9]` passed at the default tolerance 0, as did 1e-60 against 0.
/// Now F64 is compared in f64.
#[test]
fn f64_tensors_are_compared_in_f64() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    f64_file(&a, &[1.0, 2.0, 3.0, 4.0]);
    f64_file(&b, &[1.0 + 1e-12, 2.0, 3.0, 4.0 + 1e-9]);
    let (code, r) = diff_json(&a, &b, &[]);
    assert_eq!(code, 1, "{r}");
    let mx = r["max_abs_diff"].as_f64().unwrap();
    assert!((mx - 1e-9).abs() < 1e-15, "{mx}");
    let (code, _) = diff_json(&a, &b, &["--tolerance", "1e-9"]);
    assert_eq!(code, 0);
    f64_file(&a, &[1e-60]);
    f64_file(&b, &[0.0]);
    let (code, r) = diff_json(&a, &b, &[]);
    assert_eq!((code, r["max_abs_diff"].as_f64()), (1, Some(1e-60)), "{r}");
}

/// Infinities in `diff`: the same +inf on both sides counted as an infinite difference (a
/// 1e-6 difference elsewhere then failed any tolerance, where a shared NaN passed), and +inf
/// against −inf gave a NaN relative difference the summary dropped ("max rel 0"). Now equal
/// infinities are no difference (as two NaNs), the others' relative size is judged from the
/// finite values, and opposite infinities are an infinite difference.
#[test]
fn infinities_compare_like_the_values_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let inf = f32::INFINITY;
    f32_file(&a, &[inf, 1.0, 2.0]);
    f32_file(&b, &[inf, 1.0 + 1e-6, 2.0]);
    let (code, r) = diff_json(&a, &b, &["--tolerance", "0.1"]);
    assert_eq!(code, 0, "{r}");
    let mx = r["max_abs_diff"].as_f64().unwrap();
    assert!(mx > 0.0 && mx < 2e-6, "{r}");
    // Tolerance 0 still sees the 1e-6: the shared infinity does not make it relative 0.
    let (code, r) = diff_json(&a, &b, &[]);
    assert_eq!(code, 1, "{r}");
    assert!(r["max_rel_fro_diff"].as_f64().unwrap() > 0.0, "{r}");
    f32_file(&b, &[-inf, 1.0, 2.0]);
    let (code, _) = diff_json(&a, &b, &["--tolerance", "1e30"]);
    assert_eq!(code, 1);
    let text = run_raw(diff_args(&a, &b, &[]));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("max rel inf"), "{text}");
}

fn run_raw(args: Vec<String>) -> std::process::Output {
    bin().args(args).output().expect("spawn lorakit")
}

fn f64s(t: &T) -> Vec<f64> {
    match t.dtype {
        safetensors::Dtype::F64 => t
            .data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        _ => t
            .data
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
    }
}

/// `merge` into an F64 checkpoint wrote F64 but computed in f32: W0 rounded to f32, so every
/// merged weight sat up to 1.1e-8 from `W0 + s·B·A` in f64, which PEFT's merge on the f64 model
/// gives (it casts the adapter to f64). Now an F64 output is merged in f64: equal to that sum
/// (the products of f32 factors are exact in f64; ascending k, as computed here), a 1e-12
/// perturbation of W0 kept.
#[test]
fn an_f64_base_is_merged_in_f64() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("llama/base");
    let base = dir.path().join("base");
    copy_dir(&src, &base);
    let q = "model.layers.0.self_attn.q_proj.weight";
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = read(&src.join("model.safetensors"))
        .into_iter()
        .map(|(n, t)| {
            let mut v = f64s(&t);
            if n == q {
                v[0] += 1e-12;
            }
            (n, t.shape, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    write_all_as(
        &base.join("model.safetensors"),
        safetensors::Dtype::F64,
        &tensors,
        None,
    );
    let ad = fixture("llama/adapters/qv_r8");
    let out = dir.path().join("m");
    run_ok(merge_args(
        &base,
        &ad,
        &out,
        &["--device", "cpu", "--quiet"],
    ));
    let merged = read(&out.join("model.safetensors"));
    let got = f64s(&merged[q]);
    let w0 = f64s(&read(&base.join("model.safetensors"))[q]);
    let a = read(&ad.join("adapter_model.safetensors"));
    let p = "base_model.model.model.layers.0.self_attn.q_proj";
    let (b, at) = (
        &a[&format!("{p}.lora_B.weight")],
        &a[&format!("{p}.lora_A.weight")],
    );
    let (bv, av) = (f64s(b), f64s(at));
    let (rows, r, cols) = (b.shape[0], b.shape[1], at.shape[1]);
    let mut worst = 0f64;
    for i in 0..rows {
        for j in 0..cols {
            let ba: f64 = (0..r).fold(0.0, |s, k| s + bv[i * r + k] * av[k * cols + j]);
            let want = w0[i * cols + j] + 2.0 * ba;
            worst = worst.max((got[i * cols + j] - want).abs());
        }
    }
    assert_eq!(merged[q].dtype, safetensors::Dtype::F64);
    assert!(worst <= 1e-15, "max |lorakit − f64 sum| = {worst:e}");
}
