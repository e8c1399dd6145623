//! `check --fix` against the loaders' own merges: folded scales, renames and drops, DoRA →
//! LoRA with its true error, duplicate keys, packed-projection splits, diffusers single files.
//! The verdict tests and the shared helpers are in `mod.rs`.

use super::*;

/// `--fix` makes every LLM loader's scale agree with PEFT's, and the fixed adapter merges to
/// the same weights as the original (lorakit merge, then diff to f32 rounding).
#[test]
fn fix_folds_patterns_and_merges_the_same() {
    let (dir, fixed) = scratch("fixed");
    let base = fixture("llama/base");
    // patterns: rank/alpha patterns; rslora_all: rsLoRA; weighted_b: k/q without v (SGLang);
    // embed: an embedding LoRA (its own factor layout) and a lone q_proj.
    // LoRAX never reads embedding LoRA (not fixable): embed is checked without it.
    let llm = "vllm,sglang,lorax,llama.cpp,peft";
    for (case, targets) in [
        ("llama/adapters/patterns", llm),
        ("llama/adapters/rslora_all", llm),
        ("llama/adapters/weighted_b", llm),
        ("llama/adapters/embed", "vllm,sglang,llama.cpp,peft"),
    ] {
        let _ = std::fs::remove_dir_all(&fixed);
        let (code, r) = check_fix(&fixture(case), Some(&base), targets, &fixed, &[]);
        assert_eq!(code, 0, "{case}: {}", r["after"]);
        assert_eq!(r["pass"], false, "{case}: the input itself does not pass");
        assert!(target(&r["after"], "sglang")["findings"]
            .as_array()
            .unwrap()
            .is_empty());
        assert_eq!(r["after"]["pass"], true);
        assert!(r["fix"]["files"].is_array());
        let cfg: Value = read_json(fixed.join("adapter_config.json"));
        assert_eq!(cfg["r"], cfg["lora_alpha"], "{cfg}");
        assert_eq!(cfg["rank_pattern"], serde_json::json!({}));
        assert_eq!(cfg["alpha_pattern"], serde_json::json!({}));
        assert_eq!(cfg["use_rslora"], false);
        let m1 = dir.path().join("m1");
        let m2 = dir.path().join("m2");
        let _ = std::fs::remove_dir_all(&m1);
        let _ = std::fs::remove_dir_all(&m2);
        merge_ok(&base, &fixture(case), &m1, &[]);
        merge_ok(&base, &fixed, &m2, &[]);
        let a = read_checkpoint(&m1);
        let b = read_checkpoint(&m2);
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        let mut worst = 0f64;
        for (k, ta) in &a {
            let (x, y) = (ta.f32(), b[k].f32());
            for (p, q) in x.iter().zip(&y) {
                let tol = 4.0 * f32::EPSILON as f64 * (p.abs().max(q.abs()) as f64).max(1.0);
                let d = (*p as f64 - *q as f64).abs();
                assert!(d <= tol, "{case} {k}: {p} vs {q}");
                worst = worst.max(d);
            }
        }
        assert!(worst < 1e-5, "{case}: {worst}");
    }
}

/// `--fix --drop-unmatched` removes what lands nowhere and renames root-prefix modules.
#[test]
fn fix_renames_and_drops_against_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    let out = dir.path().join("f1");
    let adapter = fixture("check/no_root_prefix");
    let (code, r) = check_fix(&adapter, Some(&base), "vllm,lorax,peft", &out, &[]);
    assert_eq!(code, 0, "{}", r["after"]);
    assert_eq!(r["fix"]["renamed"].as_array().unwrap().len(), 4);
    let out2 = dir.path().join("f2");
    let adapter = fixture("check/unknown_module");
    let (code, r) = check_fix(
        &adapter,
        Some(&base),
        "vllm,peft",
        &out2,
        &["--drop-unmatched"],
    );
    assert_eq!(code, 0, "{}", r["after"]);
    assert_eq!(r["fix"]["dropped"].as_array().unwrap().len(), 2);
    assert_eq!(r["after"]["modules_count"], 2);
}

/// With `--base`, each module says which targets do not apply it, and by which rule.
#[test]
fn every_module_says_where_it_is_not_applied() {
    let (_, r) = check_json(
        &fixture("check/no_root_prefix"),
        &["--base", s(&fixture("llama/base"))],
    );
    for p in r["modules"].as_array().unwrap() {
        assert_eq!(p["status"], "suffix", "{p}");
        let by: Vec<&str> = strs(&p["not_applied_by"]);
        assert_eq!(
            by,
            [
                "vllm: vllm.not_applied",
                "lorax: lorax.not_applied",
                "peft: peft.not_applied"
            ],
            "{p}"
        );
    }
    let (_, r) = check_json(
        &fixture("llama/adapters/qv_r8"),
        &["--base", s(&fixture("llama/base"))],
    );
    assert!(r["modules"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["not_applied_by"].as_array().unwrap().is_empty()));
}

/// `--fix --dora-rank R`: each DoRA module becomes the rank-R LoRA nearest to its effective
/// update. The error it reports is the real one: merging the fixed adapter differs from PEFT's
/// own DoRA merge (fixtures/llama/merged/dora.safetensors) by exactly the reported
/// ‖D − B′A′‖_F per module; at full rank the two merges agree to f32 rounding.
#[test]
fn fix_dora_to_lora_reports_its_true_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    let reference = read(&fixture("llama/merged/dora.safetensors"));
    for rank in ["4", "64"] {
        let fixed = dir.path().join(format!("plain{rank}"));
        let dora = fixture("llama/adapters/dora");
        let (code, r) = check_fix(&dora, Some(&base), "", &fixed, &["--dora-rank", rank]);
        assert_eq!(code, 0, "{}", r["after"]);
        let cfg: Value = read_json(fixed.join("adapter_config.json"));
        assert_eq!(cfg["use_dora"], false);
        let merged = dir.path().join(format!("m{rank}"));
        merge_ok(&base, &fixed, &merged, &[]);
        let got = read_checkpoint(&merged);
        let conv = r["fix"]["dora_to_lora"].as_array().unwrap();
        assert_eq!(conv.len(), 6);
        for c in conv {
            let module = c["module"].as_str().unwrap();
            let key = format!("{module}.weight");
            let (x, y) = (got[&key].f32(), reference[&key].f32());
            let diff: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let reported = c["fro_error"].as_f64().unwrap();
            if rank == "64" {
                assert!(
                    diff < 1e-5 && reported < 1e-5,
                    "{module}: {diff} {reported}"
                );
            } else {
                assert!(reported > 1e-3, "{module}: rank 4 cannot be exact here");
                assert_rel_close(diff, reported, 1e-3, &format!("{module}: merged, reported"));
            }
        }
    }
}

/// `--tolerance E` bounds the relative error of every approximate rewrite: with E just under the
/// worst module's error (`--dora-rank 4`, `--lower-rank 2`) the fix is refused in one line naming
/// a module over it, exit 2, nothing written; at E = that error it is written. A tolerance that
/// is no finite number ≥ 0 is a usage error naming the flag.
#[test]
fn fix_tolerance_refuses_an_approximation_over_it_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    let cases = [
        (
            fixture("llama/adapters/dora"),
            Some(base.as_path()),
            "",
            "--dora-rank",
            "dora_to_lora",
            "plain",
        ),
        (
            fixture("check/lokr_unet.safetensors"),
            None,
            "diffusers,comfy",
            "--lower-rank",
            "lowered",
            "low.safetensors",
        ),
    ];
    for (adapter, b, targets, flag, field, name) in &cases {
        let out = dir.path().join(name);
        let rank = if *flag == "--dora-rank" { "4" } else { "2" };
        let (code, r) = check_fix(adapter, *b, targets, &out, &[flag, rank]);
        assert_eq!(code, 0, "{}", r["after"]);
        let errs: Vec<(String, f64)> = r["fix"][field]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["module"].as_str().unwrap().to_owned(),
                    c["rel_fro_error"].as_f64().unwrap(),
                )
            })
            .collect();
        let worst = errs.iter().map(|e| e.1).fold(0.0, f64::max);
        assert!(worst > 1e-3, "{flag}: an approximation, not exact");
        std::fs::remove_dir_all(&out)
            .or_else(|_| std::fs::remove_file(&out))
            .unwrap();
        // Just under the worst error: refused, naming a module whose error is over it.
        let tol = format!("{:e}", worst * (1.0 - 1e-6));
        let mut args = vec![];
        if let Some(b) = b {
            args.extend(["--base", s(b)]);
        }
        if !targets.is_empty() {
            args.extend(["--target", targets]);
        }
        args.extend(["--fix", "--out", s(&out), flag, rank, "--tolerance", &tol]);
        let o = run_err(check_args(adapter, &args));
        assert_eq!(o.status.code(), Some(2));
        let line = one_line_error(&o);
        let named: Vec<&(String, f64)> = errs
            .iter()
            .filter(|(m, _)| line.contains(&format!("`{m}`")))
            .collect();
        assert!(
            named.len() == 1 && named[0].1 > worst * (1.0 - 1e-6),
            "{line}"
        );
        assert!(
            line.contains("--tolerance") && line.contains("nothing written"),
            "{line}"
        );
        assert!(!out.exists(), "{flag}: nothing written");
        // At the worst error itself: written.
        let tol = format!("{worst:e}");
        let (code, r) = check_fix(
            adapter,
            *b,
            targets,
            &out,
            &[flag, rank, "--tolerance", &tol],
        );
        assert_eq!(code, 0, "{}", r["after"]);
        assert!(out.exists());
        std::fs::remove_dir_all(&out)
            .or_else(|_| std::fs::remove_file(&out))
            .unwrap();
    }
    for bad in ["nan", "-1", "inf"] {
        let (_d, fixed) = scratch("fixed");
        let flag = format!("--tolerance={bad}");
        let o = run_err(check_fix_args(
            &fixture("llama/adapters/dora"),
            Some(&base),
            &fixed,
            &["--dora-rank", "4", &flag],
        ));
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let line = one_line_error(&o);
        assert!(
            line.contains("--tolerance must be a finite number ≥ 0"),
            "{bad}: {line}"
        );
        assert!(!fixed.exists());
    }
}

/// A usage error raised by the library (`dora_rank` of 0) reaches the user of the binary with
/// the flag they typed (`--dora-rank`, through `error::Opt` and `cli::flags`), on one line,
/// exit 2, and nothing is written.
#[test]
fn fix_usage_errors_name_the_flag_typed() {
    let (_dir, fixed) = scratch("fixed");
    let out = run_err(check_fix_args(
        &fixture("llama/adapters/dora"),
        Some(&fixture("llama/base")),
        &fixed,
        &["--dora-rank", "0"],
    ));
    assert_eq!(out.status.code(), Some(2));
    let line = one_line_error(&out);
    assert!(line.contains("--dora-rank must be at least 1"), "{line}");
    assert!(!line.contains("dora_rank"), "{line}");
    assert!(!fixed.exists(), "nothing written");
}

/// Duplicate keys (`x.lora_A.weight` beside `base_model.model.x.lora_A.weight`) define one module
/// twice; which one a loader keeps depends on dict order (vLLM's parse_fine_tuned_lora_name maps
/// both to the same module, the later one silently wins). The adapter reader refuses it: exit 2
/// with one line naming both keys, whatever the target.
#[test]
fn duplicate_keys_are_refused_naming_both() {
    let (_dir, a) = scratch("dup");
    let m = "model.layers.0.self_attn.q_proj";
    let bytes_a = vec![0u8; 2 * 64 * 4];
    let bytes_b = vec![0u8; 64 * 2 * 4];
    let mut t = shared_lora_tensors(&[m.to_string()], (&[2, 64], &bytes_a), (&[64, 2], &bytes_b));
    t.push((format!("{m}.lora_A.weight"), vec![2, 64], bytes_a.clone()));
    write_peft_adapter(
        &a,
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]}"#,
        &t,
    );
    let out = run_err(check_args(&a, &["--target", "vllm"]));
    assert_eq!(out.status.code(), Some(2));
    let line = one_line_error(&out);
    assert!(
        line.contains(&format!("base_model.model.{m}.lora_A.weight"))
            && line.contains(&format!("`{m}.lora_A.weight`")),
        "{line}"
    );
}

/// A LoRA on a packed `qkv_proj` (how vLLM stacks q/k/v, `packed_modules_mapping`) does not load
/// on a Llama base whose projections are separate (vLLM: not an expected module); `--fix` splits
/// it exactly into q/k/v LoRAs — `A` shared, `B` split by the base's row counts — and the merge
/// of the fixed adapter equals `W0 + s·B[rows]·A` computed here in f64.
#[test]
fn fix_splits_packed_projections_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    let (adapter, a, b) = qkv_adapter(dir.path());
    assert_rule_at(&adapter, &base, "vllm", "fails", "vllm.unsupported_module");
    let fixed = dir.path().join("fixed");
    let (code, rep) = check_fix(&adapter, Some(&base), "vllm,peft", &fixed, &[]);
    assert_eq!(code, 0, "{}", rep["after"]);
    assert_eq!(rep["fix"]["split"][0][1].as_array().unwrap().len(), 3);
    let merged = dir.path().join("merged");
    merge_ok(&base, &fixed, &merged, &[]);
    assert_qkv_split_merged(&read_checkpoint(&merged), &a, &b);
}

/// A PEFT folder with one packed `model.layers.0.self_attn.qkv_proj` LoRA (r 2, alpha 4) on the
/// Llama fixture's shapes: A [2, 64], B [128, 2] (q 64 + k 32 + v 32 rows). Returns the folder
/// and A, B.
pub(super) fn qkv_adapter(dir: &Path) -> (std::path::PathBuf, Vec<f32>, Vec<f32>) {
    let m = "model.layers.0.self_attn.qkv_proj";
    let (r, k, d) = (2usize, 64usize, 128usize);
    let a: Vec<f32> = (0..r * k)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01)
        .collect();
    let b: Vec<f32> = (0..d * r)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.02)
        .collect();
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let adapter = dir.join("qkv");
    write_peft_adapter(
        &adapter,
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["qkv_proj"]}"#,
        &shared_lora_tensors(&[m.to_string()], (&[r, k], &le(&a)), (&[d, r], &le(&b))),
    );
    (adapter, a, b)
}

/// The merged q/k/v weights of the split `qkv_adapter` equal W0 + 2·B[rows]·A computed here in
/// f64, to 1e-6 relative.
pub(super) fn assert_qkv_split_merged(
    got: &std::collections::BTreeMap<String, T>,
    a: &[f32],
    b: &[f32],
) {
    let (r, k) = (2usize, 64usize);
    let w0 = read_checkpoint(&fixture("llama/base"));
    let mut lo = 0;
    for (p, n) in [("q_proj", 64usize), ("k_proj", 32), ("v_proj", 32)] {
        let key = format!("model.layers.0.self_attn.{p}.weight");
        let (w, w0v) = (got[&key].f32(), w0[&key].f32());
        for i in 0..n {
            for j in 0..k {
                let delta: f64 = (0..r)
                    .map(|t| b[(lo + i) * r + t] as f64 * a[t * k + j] as f64)
                    .sum::<f64>()
                    * 2.0;
                let want = w0v[i * k + j] as f64 + delta;
                let e = (w[i * k + j] as f64 - want).abs();
                assert!(
                    e <= 1e-6 * want.abs().max(1.0),
                    "{key}[{i},{j}]: {} vs {want}",
                    w[i * k + j]
                );
            }
        }
        lo += n;
    }
}

fn assert_rule_at(adapter: &Path, base: &Path, tgt: &str, verdict: &str, rule: &str) {
    let (_, r) = check_json(adapter, &["--base", s(base), "--target", tgt]);
    let t = target(&r, tgt);
    assert_eq!(t["verdict"], verdict, "{t}");
    assert!(fired(t).iter().any(|x| x == rule), "{t}");
}

/// diffusers' own single file (`unet.…lora_A.weight`, alpha 2·r only in `lora_adapter_metadata`):
/// diffusers applies it (tests/it/peft_load.rs runs diffusers on it and on what `convert --to
/// diffusers` writes), ComfyUI reads no metadata and applies scale 1 instead of 2 — the
/// `weight_adapter/lora.py` rule — so it is a silent failure there, naming every module.
#[test]
fn diffusers_single_files_load_in_diffusers_and_lose_their_alpha_in_comfy() {
    let p = fixture("conventions/diffusers_metadata.safetensors");
    let (code, r) = check_json(&p, &["--target", "diffusers,comfy"]);
    assert_eq!(code, 1);
    assert_eq!(target(&r, "diffusers")["verdict"], "loads", "{r}");
    let comfy = target(&r, "comfy");
    assert_eq!(outcome(comfy), "silent", "{comfy}");
    assert_eq!(fired(comfy), vec!["comfy.scale".to_string()]);
    let text = comfy.to_string();
    assert!(text.contains("scale 1 instead of 2"), "{text}");
    // The same factors with alpha = r (the kohya conversion) load the same in both.
    let p = fixture("conventions/kohya.safetensors");
    let (code, r) = check_json(&p, &["--target", "diffusers,comfy"]);
    assert_eq!(code, 0, "{r}");
}

/// A diffusers-written file with two pipeline components (`unet.…` and `text_encoder.…`, alphas
/// only in `lora_adapter_metadata`: unet 8/4, text encoder 2/4; made by
/// fixtures/gen/check_multi_component.py) becomes one kohya file for both loaders: every module
/// under its component's prefix, its scale folded (ComfyUI reads no metadata). The factors are
/// checked in f64 against `s·B·A` of the original, then diffusers loads both files onto the tiny
/// UNet and CLIP text encoder and the fused weights of every component must agree.
#[test]
fn fix_names_every_component_of_a_diffusers_file_for_kohya_loaders() {
    use super::super::reference::{rel64, U32};
    let (_dir, src, out) = fix_metadata_alpha_for_diffusion("check/unet_te.safetensors");
    let orig = read(&src);
    let fixed = read(&out);
    assert_eq!(
        fixed.len(),
        orig.len() / 2 * 3,
        "lora_down, lora_up, alpha per module"
    );
    let mut modules = 0;
    for (key, a) in &orig {
        let Some(m) = key.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let (comp, rest) = m.split_once('.').unwrap();
        let (prefix, scale) = match comp {
            "unet" => ("lora_unet", 8.0 / 4.0),
            "text_encoder" => ("lora_te", 2.0 / 4.0),
            other => panic!("component {other}"),
        };
        let k = format!("{prefix}_{}", rest.replace('.', "_"));
        let b = &orig[&format!("{m}.lora_B.weight")];
        let (down, up) = (
            &fixed[&format!("{k}.lora_down.weight")],
            &fixed[&format!("{k}.lora_up.weight")],
        );
        assert_eq!((&down.shape, &up.shape), (&a.shape, &b.shape), "{k}");
        let r = a.shape[0];
        assert_eq!(fixed[&format!("{k}.alpha")].f32(), [r as f32], "{k}");
        let (d, n) = (b.shape[0], a.data.len() / 4 / r);
        let want = ba64(&b.f32(), &a.f32(), (d, r, n), scale);
        let got = ba64(&up.f32(), &down.f32(), (d, r, n), 1.0);
        // One f32 rounding of s·B per entry: a relative error of at most U32 per factor entry.
        assert!(
            rel64(&got, &want) <= 4.0 * U32,
            "{k}: {}",
            rel64(&got, &want)
        );
        modules += 1;
    }
    assert_eq!(modules, 72);
    let merged = assert_diffusers_merges_agree("check_multi_component.py", &src, &out);
    assert!(merged.is_empty() || merged.iter().any(|k| k.starts_with("text_encoder.")));
}

/// A Flux LoRA as diffusers writes it (`transformer.…` names, alpha 8 over r 4 only in
/// `lora_adapter_metadata`; fixtures/gen/check_flux.py, on a tiny FluxTransformer2DModel): there
/// are no SD kohya names for it, so the fix keeps the diffusers form (which ComfyUI maps for Flux)
/// with the scale folded (ComfyUI reads no metadata). Factors checked in f64 against `s·B·A`;
/// then diffusers loads both files onto the tiny transformer and the merged weights must agree.
#[test]
fn fix_keeps_a_transformer_lora_in_diffusers_form_with_its_scale_folded() {
    use super::super::reference::{rel64, U32};
    let (_dir, src, out) = fix_metadata_alpha_for_diffusion("check/flux_lora.safetensors");
    let (orig, fixed) = (read(&src), read(&out));
    assert_eq!(
        orig.keys().collect::<Vec<_>>(),
        fixed.keys().collect::<Vec<_>>(),
        "the same diffusers keys"
    );
    let mut n = 0;
    for (key, a) in &orig {
        let Some(m) = key.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let b = &orig[&format!("{m}.lora_B.weight")];
        let (a2, b2) = (&fixed[key], &fixed[&format!("{m}.lora_B.weight")]);
        let dims = (b.shape[0], a.shape[0], a.shape[1]);
        let want = ba64(&b.f32(), &a.f32(), dims, 8.0 / 4.0);
        let got = ba64(&b2.f32(), &a2.f32(), dims, 1.0);
        assert!(
            rel64(&got, &want) <= 4.0 * U32,
            "{m}: {}",
            rel64(&got, &want)
        );
        n += 1;
    }
    assert!(n > 0);
    assert_diffusers_merges_agree("check_flux.py", &src, &out);
}

/// `check --fix` for diffusers and ComfyUI of a file whose alphas are only in
/// `lora_adapter_metadata`: before, ComfyUI (which reads no metadata) is the one that fails, on
/// its scale rule; after, both load and apply everything (exit 0). The fix of the fixture `src`
/// is written to `fixed.safetensors` in a fresh folder: returns the folder and the two paths.
fn fix_metadata_alpha_for_diffusion(
    src: &str,
) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (dir, out) = scratch("fixed.safetensors");
    let src = fixture(src);
    let (code, r) = check_fix(&src, None, "diffusers,comfy", &out, &[]);
    assert_eq!(fired(target(&r, "comfy")), vec!["comfy.scale".to_string()]);
    assert_eq!(code, 0, "{}", r["after"]);
    for t in ["diffusers", "comfy"] {
        assert_eq!(target(&r["after"], t)["verdict"], "loads", "{t}");
    }
    (dir, src, out)
}

/// `s·B·A` in f64 (`B` `d×r`, `A` `r×k`, row-major).
fn ba64(b: &[f32], a: &[f32], (d, r, k): (usize, usize, usize), s: f64) -> Vec<f64> {
    (0..d * k)
        .map(|p| {
            s * (0..r)
                .map(|q| b[(p / k) * r + q] as f64 * a[q * k + p % k] as f64)
                .sum::<f64>()
        })
        .collect()
}

/// diffusers loads and merges the original and the fixed file (`fixtures/gen/{script} fuse`);
/// every merged weight must agree: `W0 + ΔW` rounded to f32 twice, from ΔWs that differ by one
/// rounding of `s·B` (8 units of f32 roundoff, relative). Returns the merged weights' names;
/// none without Python (skipped loudly, or failing with `LORAKIT_REQUIRE_PEFT=1`).
fn assert_diffusers_merges_agree(script: &str, original: &Path, fixed: &Path) -> Vec<String> {
    use super::super::reference::{rel64, U32};
    let Some(py) = peft_python() else {
        return Vec::new();
    };
    let dir = tempfile::tempdir().unwrap();
    let fuse = |lora: &Path, name: &str| {
        let fused = dir.path().join(name);
        python_ok(
            &py,
            script,
            &["fuse".as_ref(), lora.as_os_str(), fused.as_os_str()],
        );
        read(&fused)
    };
    let (a, b) = (
        fuse(original, "a.safetensors"),
        fuse(fixed, "b.safetensors"),
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, x) in &a {
        let x: Vec<f64> = x.f32().iter().map(|&v| v as f64).collect();
        let y: Vec<f64> = b[k].f32().iter().map(|&v| v as f64).collect();
        assert!(rel64(&y, &x) <= 8.0 * U32, "{k}: {}", rel64(&y, &x));
    }
    a.into_keys().collect()
}

/// `--fix` on a base with packed projections fuses the adapter's q/k/v (gate/up) LoRAs into one
/// LoRA on `qkv_proj` (`gate_up_proj`), exactly: merging the fixed adapter onto the Phi-3 base
/// (fixtures/check/phi3_base: the Llama base's weights in transformers' Phi-3 layout) gives W0 + [s·B_q·A_q; s·B_k·A_k; s·B_v·A_v] computed here in f64 from the original factors,
/// a part the adapter lacks (qv_r8 has no k_proj) staying W0. rslora_all checks a scale other
/// than alpha/r (rsLoRA: alpha/√r).
#[test]
fn fix_fuses_projections_into_a_packed_base_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("check/phi3_base");
    let w0 = read_checkpoint(&base);
    for case in ["llama/adapters/qv_r8", "llama/adapters/rslora_all"] {
        let original = fixture(case);
        let (_, before) = check_json(&original, &["--base", s(&base), "--target", "vllm,peft"]);
        assert!(
            fired(target(&before, "vllm")).contains(&"vllm.not_found".into()),
            "{case}"
        );
        let fixed = dir.path().join(case.replace('/', "_"));
        let (code, r) = check_fix(&original, Some(&base), "vllm,peft", &fixed, &[]);
        assert_eq!(code, 0, "{case}: {}", r["after"]);
        assert!(!r["fix"]["fused"].as_array().unwrap().is_empty(), "{case}");
        let merged = dir.path().join(format!("{}_m", case.replace('/', "_")));
        merge_ok(&base, &fixed, &merged, &[]);
        let got = read_checkpoint(&merged);
        let want = packed_merge_f64(&w0, &original);
        assert!(want.keys().any(|k| k.contains("qkv_proj")), "{case}");
        for (key, w) in &w0 {
            let y: Vec<f64> = want
                .get(key)
                .cloned()
                .unwrap_or_else(|| w.f32().iter().map(|&x| x as f64).collect());
            for (x, y) in got[key].f32().iter().zip(&y) {
                assert!(
                    (*x as f64 - y).abs() <= 1e-6 * y.abs().max(1.0),
                    "{case} {key}: {x} vs {y}"
                );
            }
        }
    }
}

/// W0 + s·B·A in f64, from `original`'s own factors and config, for every tensor of the base
/// `w0` one of its LoRAs lands on, where the base may pack q/k/v into `self_attn.qkv_proj` and
/// gate/up into `mlp.gate_up_proj` (Phi-3): a part's LoRA adds to its rows of the stack (row
/// counts from fixtures/llama/base, the unpacked twin), a part the adapter lacks stays W0.
/// Scale alpha/r, alpha/√r with rsLoRA; patterns through `peft_alpha_for`.
pub(super) fn packed_merge_f64(
    w0: &std::collections::BTreeMap<String, T>,
    original: &Path,
) -> std::collections::BTreeMap<String, Vec<f64>> {
    const GROUPS: [(&str, &[&str]); 2] = [
        (
            "self_attn.qkv_proj",
            &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ),
        ("mlp.gate_up_proj", &["mlp.gate_proj", "mlp.up_proj"]),
    ];
    let unpacked = read_checkpoint(&fixture("llama/base"));
    let cfg: Value = read_json(original.join("adapter_config.json"));
    let lora = read(&original.join("adapter_model.safetensors"));
    let mut want = std::collections::BTreeMap::new();
    for (module, a, b) in peft_lora_modules(&lora) {
        // (base tensor, first row of this module's part in it)
        let (key, row0) = if w0.contains_key(&format!("{module}.weight")) {
            (format!("{module}.weight"), 0)
        } else {
            let (prefix, packed, parts, part) = GROUPS
                .iter()
                .find_map(|(packed, parts)| {
                    parts
                        .iter()
                        .position(|p| module.ends_with(&format!(".{p}")))
                        .map(|i| (&module[..module.len() - parts[i].len()], *packed, *parts, i))
                })
                .unwrap_or_else(|| panic!("{module}: no base tensor"));
            let row0 = parts[..part]
                .iter()
                .map(|p| unpacked[&format!("{prefix}{p}.weight")].shape[0])
                .sum();
            (format!("{prefix}{packed}.weight"), row0)
        };
        let w = &w0[&key];
        let k = w.shape[1];
        let acc: &mut Vec<f64> = want
            .entry(key.clone())
            .or_insert_with(|| w.f32().iter().map(|&x| x as f64).collect());
        let r = a.shape[0];
        let alpha = peft_alpha_for(&cfg, module).unwrap();
        let sc = if cfg["use_rslora"] == true {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        let (av, bv) = (a.f32(), b.f32());
        assert_eq!(a.shape[1], k, "{module}");
        for i in 0..b.shape[0] {
            for j in 0..k {
                let d: f64 = (0..r)
                    .map(|t| bv[i * r + t] as f64 * av[t * k + j] as f64)
                    .sum();
                acc[(row0 + i) * k + j] += sc * d;
            }
        }
    }
    want
}
