//! `resize`, `combine` and `convert` through the binary: against float64 SVDs of the
//! materialised `s·B·A`, against PEFT 0.21.2's `add_weighted_adapter` results
//! (fixtures/llama/adapters/{weighted_cat, linear_mix, ties_mix, svd_mix}), against diffusers'
//! kohya conversion (fixtures/kohya/te_from_peft.safetensors), and through lorakit merges that
//! the merge tests tie to PEFT's own.

use super::common::*;
use super::reference::*;
use lorakit::adapter::Adapter;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn fx(rel: &str) -> String {
    fixture(rel).display().to_string()
}

/// Runs lorakit with `--json` appended and parses the summary.
fn run_json(args: &[&str]) -> serde_json::Value {
    let mut v: Vec<&str> = args.to_vec();
    v.push("--json");
    serde_json::from_str(&run_ok(&v)).expect("json summary")
}

/// A module's `ΔW = s·B·A` in f64 (canonical `d × k`), with the module facts.
#[derive(Debug, Clone)]
struct Delta {
    rank: usize,
    alpha: f64,
    scale: f64,
    d: usize,
    k: usize,
    w: Vec<f64>,
}

/// Every module's ΔW of the adapter at `path`, read independently of lorakit's own reader (the
/// `safetensors` crate and the formats' own rules), so scale, alpha and rsLoRA are not taken
/// from the code under test:
/// - a PEFT folder: `r` from lora_A, alpha from the first `alpha_pattern` key matching as
///   PEFT's `get_pattern_key` (`^(.*\.)?(key)$`) else `lora_alpha`, scale `alpha/r` or
///   `alpha/√r` with `use_rslora`;
/// - a kohya file: `lora_down` [r, …], `lora_up` [out, r, …], scale `alpha/r` (alpha = r when
///   absent, as kohya's loader does); module names from lorakit's documented
///   `lorakit.module_names` metadata when present, else the kohya names.
fn deltas(path: &Path) -> BTreeMap<String, Delta> {
    deltas_with(path, true)
}

/// [`deltas`] with a kohya file's modules under their kohya names (no metadata map).
fn kohya_deltas(path: &Path) -> BTreeMap<String, Delta> {
    deltas_with(path, false)
}

fn deltas_with(path: &Path, mapped_names: bool) -> BTreeMap<String, Delta> {
    let product = |d: usize, r: usize, k: usize, b: &[f32], a: &[f32], s: f64| {
        let mut w = vec![0f64; d * k];
        for i in 0..d {
            for t in 0..r {
                let bit = b[i * r + t] as f64 * s;
                for j in 0..k {
                    w[i * k + j] += bit * a[t * k + j] as f64;
                }
            }
        }
        w
    };
    let mut out = BTreeMap::new();
    if path.is_dir() {
        let t = read(&path.join("adapter_model.safetensors"));
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path.join("adapter_config.json")).unwrap())
                .unwrap();
        let rslora = cfg["use_rslora"] == true;
        let alpha_for = |m: &str| peft_alpha_for(&cfg, m).unwrap_or(8.0);
        for (key, a) in &t {
            let (module, bkey) = if let Some(m) = key.strip_suffix(".lora_A.weight") {
                (m, format!("{m}.lora_B.weight"))
            } else if let Some(m) = key.strip_suffix(".lora_embedding_A") {
                (m, format!("{m}.lora_embedding_B"))
            } else {
                continue;
            };
            let b = &t[&bkey];
            let name = module.strip_prefix("base_model.model.").unwrap_or(module);
            let (r, d) = (a.shape[0], b.shape[0]);
            let k: usize = a.shape[1..].iter().product();
            let alpha = alpha_for(name);
            let scale = if rslora {
                alpha / (r as f64).sqrt()
            } else {
                alpha / r as f64
            };
            let w = product(d, r, k, &b.f32(), &a.f32(), scale);
            out.insert(
                name.to_owned(),
                Delta {
                    rank: r,
                    alpha,
                    scale,
                    d,
                    k,
                    w,
                },
            );
        }
    } else {
        let bytes = std::fs::read(path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let names: BTreeMap<String, String> = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("lorakit.module_names"))
            .filter(|_| mapped_names)
            .map(|j| serde_json::from_str(j).unwrap())
            .unwrap_or_default();
        let t = read(path);
        for (key, down) in &t {
            let Some(module) = key.strip_suffix(".lora_down.weight") else {
                continue;
            };
            let up = &t[&format!("{module}.lora_up.weight")];
            let (r, d) = (down.shape[0], up.shape[0]);
            let k: usize = down.shape[1..].iter().product();
            let alpha = t
                .get(&format!("{module}.alpha"))
                .map_or(r as f64, |a| match a.dtype {
                    Dtype::I64 => i64::from_le_bytes(a.data[..8].try_into().unwrap()) as f64,
                    Dtype::I32 => i32::from_le_bytes(a.data[..4].try_into().unwrap()) as f64,
                    _ => a.f32()[0] as f64,
                });
            let scale = alpha / r as f64;
            let w = product(d, r, k, &up.f32(), &down.f32(), scale);
            let name = names
                .get(module)
                .cloned()
                .unwrap_or_else(|| module.to_owned());
            out.insert(
                name,
                Delta {
                    rank: r,
                    alpha,
                    scale,
                    d,
                    k,
                    w,
                },
            );
        }
    }
    out
}

#[test]
fn resize_gives_the_best_rank_r_approximation_and_keeps_scales() {
    let dir = tempfile::tempdir().unwrap();
    for (adapter, r) in [
        ("llama/adapters/qv_r8", 4usize),
        ("llama/adapters/patterns", 3),
    ] {
        let out = dir.path().join(adapter.replace('/', "_"));
        let rep = run_json(&[
            "resize",
            &fx(adapter),
            "--rank",
            &r.to_string(),
            "--out",
            s(&out),
        ]);
        let before = deltas(&fixture(adapter));
        let after = deltas(&out);
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>()
        );
        for (name, b) in &before {
            let a = &after[name];
            let want = r.min(b.rank);
            assert_eq!(a.rank, want, "{name}: rank");
            assert!(
                (a.scale - b.scale).abs() <= 1e-15 * b.scale.abs(),
                "{name}: scale {} vs {}",
                a.scale,
                b.scale
            );
            let sv = assert_best_rank(name, &a.w, &b.w, b.d, b.k, want);
            // Energy reported = Σ kept σ² / Σ σ².
            let m = rep["modules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == name.as_str())
                .unwrap();
            let kept: f64 = sv[..want].iter().map(|x| x * x).sum::<f64>()
                / sv.iter().map(|x| x * x).sum::<f64>();
            assert!(
                (m["energy_kept"].as_f64().unwrap() - kept).abs() < 1e-5,
                "{name}: energy"
            );
            assert_eq!(m["rank_before"], b.rank);
            assert_eq!(m["rank_after"], want);
        }
    }
    // patterns: k_proj (r = 2) is untouched, byte for byte; rank_pattern/alpha_pattern are
    // written for the modules that differ.
    let out = dir.path().join("llama_adapters_patterns");
    let got = read(&out.join("adapter_model.safetensors"));
    let orig = read(&fixture(
        "llama/adapters/patterns/adapter_model.safetensors",
    ));
    let k = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight";
    assert_eq!(got[k], orig[k]);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["r"], 3);
    assert_eq!(
        cfg["rank_pattern"]["model\\.layers\\.0\\.self_attn\\.k_proj"],
        2
    );
}

#[test]
fn resize_at_full_rank_is_exact_and_energy_one_drops_only_zero_padding() {
    let dir = tempfile::tempdir().unwrap();
    // weighted_cat pads k_proj (true rank 6) and v_proj (true rank 4) to rank 10 with zeros.
    let out = dir.path().join("e1");
    let rep = run_json(&[
        "resize",
        &fx("llama/adapters/weighted_cat"),
        "--energy",
        "1",
        "--out",
        s(&out),
    ]);
    let before = deltas(&fixture("llama/adapters/weighted_cat"));
    let after = deltas(&out);
    for (name, b) in &before {
        let want = if name.contains("k_proj") {
            6
        } else if name.contains("v_proj") {
            4
        } else {
            10
        };
        assert_eq!(after[name].rank, want, "{name}");
        let e = rel64(&after[name].w, &b.w);
        assert!(e < 1e-6, "{name}: exact to f32 rounding, got {e:e}");
    }
    assert_eq!(rep["modules_resized_count"], 4);
    // The same ranks through --rank: modules whose true rank fits are reproduced exactly.
    let out = dir.path().join("r6");
    run_ok([
        "resize",
        &fx("llama/adapters/weighted_cat"),
        "--rank",
        "6",
        "--out",
        s(&out),
    ]);
    let after = deltas(&out);
    for (name, b) in before.iter().filter(|(n, _)| !n.contains("q_proj")) {
        assert!(rel64(&after[name].w, &b.w) < 1e-6, "{name}");
    }
    // Rank not below the module's: copied untouched.
    let out = dir.path().join("same");
    let rep = run_json(&[
        "resize",
        &fx("llama/adapters/qv_r8"),
        "--rank",
        "8",
        "--out",
        s(&out),
    ]);
    assert_eq!(rep["modules_resized_count"], 0);
    let got = read(&out.join("adapter_model.safetensors"));
    let orig = read(&fixture("llama/adapters/qv_r8/adapter_model.safetensors"));
    assert_eq!(got, orig);
    // Embeddings: the saved embedding layer keeps its `base_layer` key, so the result still
    // merges (it is W0 there, not a replacement).
    let out = dir.path().join("embed4");
    run_ok([
        "resize",
        &fx("llama/adapters/embed"),
        "--rank",
        "4",
        "--out",
        s(&out),
    ]);
    let orig = read(&fixture("llama/adapters/embed/adapter_model.safetensors"));
    assert_eq!(read(&out.join("adapter_model.safetensors")), orig);
    let out = dir.path().join("embed2");
    run_ok([
        "resize",
        &fx("llama/adapters/embed"),
        "--rank",
        "2",
        "--out",
        s(&out),
    ]);
    let got = read(&out.join("adapter_model.safetensors"));
    let key = "base_model.model.model.embed_tokens.base_layer.weight";
    assert_eq!(got[key], orig[key]);
    assert_eq!(
        got["base_model.model.model.embed_tokens.lora_embedding_A"].shape,
        vec![2, 128]
    );
    let merged = dir.path().join("embed2_merged");
    run_ok([
        "merge",
        "--base",
        &fx("llama/base"),
        "--adapter",
        s(&out),
        "--out",
        s(&merged),
    ]);
}

/// A one-module PEFT adapter with `ΔW = 2·B·A`, `B·A = diag(σ)` padded: singular values known.
fn diag_adapter(dir: &Path, sigma: &[f32]) -> PathBuf {
    let (r, d, k) = (sigma.len(), sigma.len() + 2, sigma.len() + 1);
    let mut a = vec![0f32; r * k];
    let mut b = vec![0f32; d * r];
    for (i, &x) in sigma.iter().enumerate() {
        a[i * k + i] = 1.0;
        b[i * r + i] = x;
    }
    let folder = dir.join("diag");
    std::fs::create_dir_all(&folder).unwrap();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (ab, bb) = (bytes(&a), bytes(&b));
    let views = vec![
        (
            "base_model.model.proj.lora_A.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![r, k], &ab).unwrap(),
        ),
        (
            "base_model.model.proj.lora_B.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![d, r], &bb).unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, &folder.join("adapter_model.safetensors")).unwrap();
    let cfg = serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["proj"]});
    std::fs::write(folder.join("adapter_config.json"), cfg.to_string()).unwrap();
    folder
}

#[test]
fn resize_energy_boundary_and_sv_ratio_rules() {
    let dir = tempfile::tempdir().unwrap();
    // σ² = 16, 16, 16, 4, 4, 4, 4: total 64, the first three hold exactly 0.75.
    let ad = diag_adapter(dir.path(), &[4.0, 4.0, 4.0, 2.0, 2.0, 2.0, 2.0]);
    let rank_for = |args: &[&str]| -> u64 {
        let out = dir.path().join(format!("o{}", args.join("_")));
        let mut v = vec!["resize", s(&ad), "--out", s(&out)];
        v.extend_from_slice(args);
        let rep = run_json(&v);
        rep["modules"][0]["rank_after"].as_u64().unwrap()
    };
    assert_eq!(
        rank_for(&["--energy", "0.75"]),
        3,
        "a threshold hit exactly counts as reached"
    );
    assert_eq!(rank_for(&["--energy", "0.7500001"]), 4);
    assert_eq!(rank_for(&["--energy", "0.74"]), 3);
    assert_eq!(rank_for(&["--energy", "1"]), 7);
    assert_eq!(rank_for(&["--energy", "1", "--rank", "5"]), 5);
    // kohya sv_ratio keeps σ > σ₁/X strictly: X = 2 → 4/2 = 2 is not kept.
    assert_eq!(rank_for(&["--sv-ratio", "2"]), 3);
    assert_eq!(rank_for(&["--sv-ratio", "2.001"]), 7);
    assert_eq!(rank_for(&["--sv-ratio", "2.001", "--rank", "5"]), 5);
    // The kept part is exact: 2·diag(4, 4, 4).
    let out = dir.path().join("r3");
    run_ok(["resize", s(&ad), "--rank", "3", "--out", s(&out)]);
    let got = deltas(&out);
    let m = &got["proj"];
    assert_eq!((m.rank, m.alpha, m.scale), (3, 6.0, 2.0));
    for i in 0..m.d {
        for j in 0..m.k {
            let want = if i == j && i < 3 { 8.0 } else { 0.0 };
            assert!(
                (m.w[i * m.k + j] - want).abs() < 1e-6,
                "({i},{j}) = {}",
                m.w[i * m.k + j]
            );
        }
    }
    // Bad rules are usage errors.
    for bad in [
        &["--energy", "0"][..],
        &["--energy", "1.5"],
        &["--sv-ratio", "0.5"],
        &["--rank", "0"],
        &["--energy", "0.5", "--sv-ratio", "2"],
    ] {
        let mut v = vec!["resize", s(&ad), "--out", "/tmp/lorakit-never-written"];
        v.extend_from_slice(bad);
        let res = run_err(&v);
        assert_eq!(res.status.code(), Some(2), "{bad:?}");
    }
    assert!(!Path::new("/tmp/lorakit-never-written").exists());
}

#[test]
fn resize_kohya_keeps_format_metadata_and_scale() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("te_r2.safetensors");
    run_ok([
        "resize",
        &fx("kohya/te_lora.safetensors"),
        "--rank",
        "2",
        "--out",
        s(&out),
    ]);
    let t = read(&out);
    // kohya names and alphas: alpha' = alpha·2/4 (1.0; 2.0 where alpha was missing = rank 4).
    let a = t["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"].f32();
    assert_eq!(a, vec![1.0]);
    let a = t["lora_te_text_model_encoder_layers_1_self_attn_v_proj.alpha"].f32();
    assert_eq!(a, vec![2.0]);
    assert_eq!(
        t["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"].shape,
        vec![2, 32]
    );
    let before = deltas(&fixture("kohya/te_lora.safetensors"));
    let after = deltas(&out);
    for (name, b) in &before {
        assert_best_rank(name, &after[name].w, &b.w, b.d, b.k, 2);
    }
    let f = lorakit::io::SafetensorsFile::open(&out).unwrap();
    let meta = &f.header().metadata;
    let get = |k: &str| {
        meta.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("ss_network_module"), Some("networks.lora"));
    assert_eq!(get("ss_network_dim"), Some("2"));
    assert_eq!(get("ss_network_alpha"), Some("Dynamic"));
    assert_eq!(get("lorakit.operation"), Some("resize"));
    assert!(
        get("lorakit.version").is_some()
            && get("lorakit.inputs")
                .unwrap()
                .contains("te_lora.safetensors")
    );
}

#[test]
fn resize_changes_format_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    // kohya → PEFT needs the base for module paths.
    let out = dir.path().join("te_peft_r2");
    let args = [
        "resize",
        &fx("kohya/te_lora.safetensors"),
        "--rank",
        "2",
        "--format",
        "peft",
        "--base",
        &fx("kohya/te_base"),
        "--out",
        s(&out),
    ];
    run_ok(args);
    let before = deltas(&fixture("kohya/te_lora.safetensors"));
    let after = deltas(&out);
    assert!(after.contains_key("text_model.encoder.layers.0.self_attn.q_proj"));
    assert_eq!(before.len(), after.len());
    for (dotted, a) in &after {
        let b = &before[&format!("lora_te_{}", dotted.replace('.', "_"))];
        assert_best_rank(dotted, &a.w, &b.w, b.d, b.k, 2);
    }
    let first = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let first_cfg = std::fs::read(out.join("adapter_config.json")).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    run_ok(args);
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        first,
        "byte-identical rerun"
    );
    assert_eq!(
        std::fs::read(out.join("adapter_config.json")).unwrap(),
        first_cfg
    );
    // Without a base it is an error naming the module, and nothing is written.
    let out2 = dir.path().join("nobase");
    let res = run_err([
        "resize",
        &fx("kohya/te_lora.safetensors"),
        "--rank",
        "2",
        "--format",
        "peft",
        "--out",
        s(&out2),
    ]);
    let line = one_line_error(&res);
    assert!(
        line.contains("--base") && line.contains("lora_te_text_model"),
        "{line}"
    );
    assert!(!out2.exists());
}

// ------------------------------------------------------------------------------------------
// combine

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

#[test]
fn combine_cat_reproduces_peft_weighted_cat() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cat");
    let a = fx("llama/adapters/weighted_a");
    let b = fx("llama/adapters/weighted_b");
    let rep = run_json(&[
        "combine",
        "--adapter",
        &a,
        "--weight",
        "0.7",
        "--adapter",
        &b,
        "--weight",
        "-0.4",
        "--method",
        "cat",
        "--out",
        s(&out),
    ]);
    // PEFT's layout: every module rank 10 = 4 + 6, packed then zero-padded; r = alpha = 10.
    assert_factors_close(&out, &fixture("llama/adapters/weighted_cat"), 1e-6);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
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
    run_ok([
        "combine",
        "--adapter",
        &a,
        "--weight",
        "0.7",
        "--adapter",
        &b,
        "--weight",
        "-0.4",
        "--method",
        "cat",
        "--no-pad",
        "--out",
        s(&out2),
    ]);
    let got = deltas(&out2);
    for (name, w) in &want {
        let r = if name.contains("q_proj") {
            10
        } else if name.contains("k_proj") {
            6
        } else {
            4
        };
        assert_eq!(got[name].rank, r, "{name}");
        assert!(rel64(&got[name].w, w) < 1e-6, "{name}");
    }
}

#[test]
fn combine_svd_at_full_rank_is_exact_and_matches_peft_svd_mix() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("svd10");
    let a = fx("llama/adapters/weighted_a");
    let b = fx("llama/adapters/weighted_b");
    let rep = run_json(&[
        "combine",
        "--adapter",
        &a,
        "--weight",
        "0.7",
        "--adapter",
        &b,
        "--weight",
        "-0.4",
        "--method",
        "svd",
        "--rank",
        "10",
        "--out",
        s(&out),
    ]);
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
    let c = fx("llama/adapters/linear_c");
    let d = fx("llama/adapters/linear_d");
    run_ok([
        "combine",
        "--adapter",
        &c,
        "--weight",
        "0.6",
        "--adapter",
        &d,
        "--weight",
        "0.3",
        "--method",
        "svd",
        "--out",
        s(&out),
    ]);
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
    let c = fx("llama/adapters/linear_c");
    let d = fx("llama/adapters/linear_d");
    let base = [
        "combine",
        "--adapter",
        &c,
        "--weight",
        "0.6",
        "--adapter",
        &d,
        "--weight",
        "0.3",
    ];
    for (method, extra, reference) in [
        ("linear", &[][..], "linear_mix"),
        ("ties", &["--density", "0.5"][..], "ties_mix"),
    ] {
        let out = dir.path().join(method);
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["--method", method]);
        args.extend_from_slice(extra);
        args.extend(["--out", s(&out)]);
        run_ok(&args);
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
    let c = fx("llama/adapters/linear_c");
    let d = fx("llama/adapters/linear_d");
    let run = |name: &str, rest: &[&str]| -> BTreeMap<String, T> {
        let out = dir.path().join(name);
        let mut args = vec![
            "combine",
            "--adapter",
            &c,
            "--weight",
            "0.6",
            "--adapter",
            &d,
            "--weight",
            "0.3",
        ];
        args.extend_from_slice(rest);
        args.extend(["--out", s(&out)]);
        run_ok(&args);
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
    run_ok([
        "combine",
        "--adapter",
        &c,
        "--weight",
        "0.5",
        "--method",
        "linear",
        "--out",
        s(&out),
    ]);
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
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p.join("adapter_config.json")).unwrap()).unwrap();
        cfg["lora_alpha"].as_f64().unwrap() / cfg["r"].as_f64().unwrap()
    };
    let sides: Vec<f64> = inputs.iter().map(|p| scale(p).sqrt()).collect();
    let tensors: Vec<_> = inputs
        .iter()
        .map(|p| read(&p.join("adapter_model.safetensors")))
        .collect();
    for density in [0.3f64, 0.7] {
        let out = dir.path().join(format!("dare{density}"));
        run_ok([
            "combine",
            "--adapter",
            s(&inputs[0]),
            "--adapter",
            s(&inputs[1]),
            "--method",
            "dare_linear",
            "--density",
            &density.to_string(),
            "--seed",
            "11",
            "--out",
            s(&out),
            "-q",
        ]);
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
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let a = fx("llama/adapters/weighted_a");
    let b = fx("llama/adapters/weighted_b");
    // Unequal ranks for a factor-wise method: one line naming the module.
    let res = run_err([
        "combine",
        "--adapter",
        &a,
        "--adapter",
        &b,
        "--method",
        "linear",
        "--out",
        s(&out),
    ]);
    let line = one_line_error(&res);
    assert!(
        line.contains("q_proj") && line.contains("rank 6") && line.contains("equal ranks"),
        "{line}"
    );
    // Usage errors.
    for bad in [
        &["--method", "ties"][..],
        &["--method", "linear", "--density", "0.5"],
        &["--method", "cat", "--rank", "3"],
        &["--method", "dare_ties", "--density", "0"],
        &["--method", "cat", "--weight", "1"],
    ] {
        let mut v = vec![
            "combine",
            "--adapter",
            a.as_str(),
            "--adapter",
            b.as_str(),
            "--out",
            s(&out),
        ];
        v.extend_from_slice(bad);
        let res = run_err(&v);
        one_line_error(&res);
    }
    // DoRA does not combine.
    let res = run_err([
        "combine",
        "--adapter",
        &fx("llama/adapters/dora"),
        "--adapter",
        &a,
        "--method",
        "cat",
        "--out",
        s(&out),
    ]);
    let line = one_line_error(&res);
    assert!(line.contains("DoRA") && line.contains("dora"), "{line}");
    // Output onto an input.
    let res = run_err([
        "combine",
        "--adapter",
        &a,
        "--adapter",
        &b,
        "--method",
        "cat",
        "--out",
        &b,
    ]);
    assert!(one_line_error(&res).contains("output is also an input"));
    assert!(!out.exists());
}

// ------------------------------------------------------------------------------------------
// convert

fn merged(dir: &Path, base: &str, adapter: &Path, name: &str) -> Vec<u8> {
    let out = dir.join(name);
    run_ok([
        "merge",
        "--base",
        &fx(base),
        "--adapter",
        s(adapter),
        "--out",
        s(&out),
        "--device",
        "cpu",
    ]);
    let f = if out.is_dir() {
        out.join("model.safetensors")
    } else {
        out
    };
    // Tensor bytes only: provenance metadata names the adapter path.
    read(&f)
        .into_iter()
        .flat_map(|(k, t)| k.into_bytes().into_iter().chain(t.data))
        .collect()
}

#[test]
fn convert_round_trip_peft_kohya_peft_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    for (adapter, base) in [
        ("kohya/adapters/te_peft", "kohya/te_base"),
        ("llama/adapters/patterns", "llama/base"),
        ("llama/adapters/rslora_all", "llama/base"),
        ("conv/adapters/peft", "conv/base/model.safetensors"),
    ] {
        let tag = adapter.replace('/', "_");
        let k = dir.path().join(format!("{tag}.safetensors"));
        let back = dir.path().join(format!("{tag}_back"));
        let rep = run_json(&["convert", &fx(adapter), "--to", "kohya", "--out", s(&k)]);
        assert_eq!(rep["to"], "kohya");
        let rep = run_json(&["convert", s(&k), "--to", "peft", "--out", s(&back)]);
        assert_eq!(
            (rep["names_from"].as_str(), rep["config_restored"].as_bool()),
            (Some("metadata"), Some(true)),
            "{adapter}"
        );
        // Factors byte for byte.
        let orig = read(&fixture(adapter).join("adapter_model.safetensors"));
        let got = read(&back.join("adapter_model.safetensors"));
        assert_eq!(orig, got, "{adapter}: factors");
        // Per-module rank, alpha and scale identical.
        let (o, g) = (
            Adapter::open(fixture(adapter)).unwrap(),
            Adapter::open(&back).unwrap(),
        );
        assert_eq!(o.use_rslora, g.use_rslora);
        for (mo, mg) in o.modules.iter().zip(&g.modules) {
            assert_eq!(
                (&mo.name, mo.rank, mo.alpha, mo.scale),
                (&mg.name, mg.rank, mg.alpha, mg.scale)
            );
        }
        // Merges: the kohya file and the round trip both merge exactly like the original.
        let m0 = merged(dir.path(), base, &fixture(adapter), &format!("{tag}_m0"));
        assert_eq!(
            m0,
            merged(dir.path(), base, &back, &format!("{tag}_m1")),
            "{adapter}: merge after round trip"
        );
        if !adapter.contains("rslora") {
            assert_eq!(
                m0,
                merged(dir.path(), base, &k, &format!("{tag}_m2")),
                "{adapter}: merge of the kohya file"
            );
        }
    }
    // A lorakit kohya file resized as kohya keeps its names and the map back to module paths; the
    // PEFT config no longer fits the new ranks, so only the names come back, with kohya's alphas
    // (same scales).
    let k = dir.path().join("te1.safetensors");
    run_ok([
        "convert",
        &fx("kohya/adapters/te_peft"),
        "--to",
        "kohya",
        "--prefix",
        "lora_te1",
        "--out",
        s(&k),
    ]);
    let k2 = dir.path().join("te1_r2.safetensors");
    run_ok(["resize", s(&k), "--rank", "2", "--out", s(&k2)]);
    assert!(read(&k2).contains_key("lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha"));
    let back = dir.path().join("te1_r2_peft");
    let rep = run_json(&["convert", s(&k2), "--to", "peft", "--out", s(&back)]);
    assert_eq!(
        (rep["names_from"].as_str(), rep["config_restored"].as_bool()),
        (Some("metadata"), Some(false))
    );
    let direct = dir.path().join("te_r2_direct");
    run_ok([
        "resize",
        &fx("kohya/adapters/te_peft"),
        "--rank",
        "2",
        "--out",
        s(&direct),
    ]);
    let (g, w) = (deltas(&back), deltas(&direct));
    assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>());
    for (name, d) in &w {
        assert!(rel64(&g[name].w, &d.w) < 1e-6, "{name}");
    }
    // rsLoRA in kohya: alpha = scale·rank (4·4 = 16 for r = 4, alpha 8, √r scaling).
    let k = read(&dir.path().join("llama_adapters_rslora_all.safetensors"));
    assert_eq!(
        k["lora_unet_model_layers_0_self_attn_q_proj.alpha"].f32(),
        vec![16.0]
    );
}

#[test]
fn convert_te_peft_to_kohya_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("te1.safetensors");
    run_ok([
        "convert",
        &fx("kohya/adapters/te_peft"),
        "--to",
        "kohya",
        "--prefix",
        "lora_te1",
        "--out",
        s(&out),
    ]);
    let got = read(&out);
    let want = read(&fixture("kohya/te_from_peft.safetensors"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "diffusers' names"
    );
    for (k, t) in &want {
        if k.ends_with(".alpha") {
            // diffusers writes alpha = rank as I64; lorakit the PEFT alpha (also 4) as F32.
            assert_eq!(t.dtype, safetensors::Dtype::I64);
            assert_eq!(
                i64::from_le_bytes(t.data[..8].try_into().unwrap()) as f32,
                got[k].f32()[0]
            );
        } else {
            assert_eq!(&got[k], t, "{k}: factors byte for byte");
        }
    }
    // ΔW per module equal (the independent kohya reader on both files, kohya names).
    let (g, w) = (
        kohya_deltas(&out),
        kohya_deltas(&fixture("kohya/te_from_peft.safetensors")),
    );
    for (name, d) in &w {
        assert_eq!(g[name].w, d.w, "{name}");
    }
    // Default prefix for a text encoder: lora_te.
    let out = dir.path().join("te.safetensors");
    run_ok([
        "convert",
        &fx("kohya/adapters/te_peft"),
        "--to",
        "kohya",
        "--out",
        s(&out),
    ]);
    assert!(read(&out)
        .contains_key("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"));
}

#[test]
fn convert_kohya_to_peft_merges_like_the_kohya_file() {
    let dir = tempfile::tempdir().unwrap();
    for (kohya, base, reference) in [
        (
            "kohya/te_lora.safetensors",
            "kohya/te_base",
            "kohya/merged_te.safetensors",
        ),
        (
            "kohya/locon.safetensors",
            "conv/base/model.safetensors",
            "kohya/merged_locon.safetensors",
        ),
    ] {
        let tag = kohya.replace('/', "_");
        let peft = dir.path().join(format!("{tag}_peft"));
        let rep = run_json(&[
            "convert",
            &fx(kohya),
            "--to",
            "peft",
            "--base",
            &fx(base),
            "--out",
            s(&peft),
        ]);
        assert_eq!(rep["names_from"], "base");
        // Factors byte for byte.
        let k = read(&fixture(kohya));
        let p = read(&peft.join("adapter_model.safetensors"));
        for (name, t) in &k {
            if let Some(m) = name.strip_suffix(".lora_down.weight") {
                let dotted = rep["modules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["from"] == m)
                    .unwrap()["to"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert_eq!(
                    &p[&format!("base_model.model.{dotted}.lora_A.weight")],
                    t,
                    "{name}"
                );
            }
        }
        let out = dir.path().join(format!("{tag}_merged.safetensors"));
        let base_path = fixture(base);
        let out_path = if base_path.is_dir() {
            dir.path().join(format!("{tag}_merged"))
        } else {
            out
        };
        run_ok([
            "merge",
            "--base",
            s(&base_path),
            "--adapter",
            s(&peft),
            "--out",
            s(&out_path),
            "--device",
            "cpu",
        ]);
        let merged = read_checkpoint(&out_path);
        assert_matches_reference(
            &merged,
            &read_checkpoint(&base_path),
            &read(&fixture(reference)),
            1e-6,
        );
    }
    // The missing alpha of te_lora (alpha = rank = 4) is an alpha_pattern entry.
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("kohya_te_lora.safetensors_peft/adapter_config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["lora_alpha"], 2);
    assert_eq!(
        cfg["alpha_pattern"]["text_model\\.encoder\\.layers\\.1\\.self_attn\\.v_proj"],
        4
    );
    assert_eq!(cfg["base_model_name_or_path"], fx("kohya/te_base"));
}

#[test]
fn convert_errors_are_one_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // kohya → PEFT without base.
    let out = dir.path().join("p");
    let line = one_line_error(&run_err([
        "convert",
        &fx("kohya/te_lora.safetensors"),
        "--to",
        "peft",
        "--out",
        s(&out),
    ]));
    assert!(
        line.contains("te_lora.safetensors") && line.contains("--base"),
        "{line}"
    );
    assert!(!out.exists());
    // A base the modules do not fit.
    let line = one_line_error(&run_err([
        "convert",
        &fx("kohya/te_lora.safetensors"),
        "--to",
        "peft",
        "--base",
        &fx("llama/base"),
        "--out",
        s(&out),
    ]));
    assert!(
        line.contains("do not match the base")
            && line.contains("lora_te_text_model_encoder_layers_0_mlp_fc1"),
        "{line}"
    );
    assert!(!out.exists());
    // Ambiguous kohya names: `a.b_c` and `a_b.c` both read `a_b_c`.
    let base = dir.path().join("base.safetensors");
    let z: Vec<u8> = [0f32; 4].iter().flat_map(|x| x.to_le_bytes()).collect();
    let one: Vec<u8> = [1f32; 2].iter().flat_map(|x| x.to_le_bytes()).collect();
    let mk = |n: &'static str, sh: Vec<usize>, b: &Vec<u8>| (n, sh, b.clone());
    let write = |p: &Path, ts: Vec<(&str, Vec<usize>, Vec<u8>)>| {
        let views: Vec<(&str, safetensors::tensor::TensorView)> = ts
            .iter()
            .map(|(n, sh, b)| {
                (
                    *n,
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, sh.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, p).unwrap();
    };
    write(
        &base,
        vec![
            mk("a.b_c.weight", vec![2, 2], &z),
            mk("a_b.c.weight", vec![2, 2], &z),
        ],
    );
    let k = dir.path().join("k.safetensors");
    write(
        &k,
        vec![
            mk("lora_unet_a_b_c.lora_down.weight", vec![1, 2], &one),
            mk("lora_unet_a_b_c.lora_up.weight", vec![2, 1], &one),
        ],
    );
    let line = one_line_error(&run_err([
        "convert",
        s(&k),
        "--to",
        "peft",
        "--base",
        s(&base),
        "--out",
        s(&out),
    ]));
    assert!(
        line.contains("ambiguous")
            && line.contains("a.b_c.weight")
            && line.contains("a_b.c.weight"),
        "{line}"
    );
    assert!(!out.exists());
    // No kohya form: the error names the module; folders created for the output are removed.
    let nested = dir.path().join("new/sub/e.safetensors");
    let line = one_line_error(&run_err([
        "convert",
        &fx("llama/adapters/embed"),
        "--to",
        "kohya",
        "--out",
        s(&nested),
    ]));
    assert!(
        line.contains("embed_tokens") && line.contains("kohya format cannot hold"),
        "{line}"
    );
    assert!(
        !dir.path().join("new").exists(),
        "created folders are removed on failure"
    );
    // Output onto the input (file, and PEFT folder).
    let line = one_line_error(&run_err([
        "convert",
        &fx("kohya/te_lora.safetensors"),
        "--to",
        "kohya",
        "--out",
        &fx("kohya/te_lora.safetensors"),
    ]));
    assert!(line.contains("output is also an input"), "{line}");
    let line = one_line_error(&run_err([
        "convert",
        &fx("llama/adapters/qv_r8"),
        "--to",
        "peft",
        "--out",
        &fx("llama/adapters/qv_r8"),
    ]));
    assert!(line.contains("output is also an input"), "{line}");
    let line = one_line_error(&run_err([
        "resize",
        &fx("llama/adapters/qv_r8"),
        "--rank",
        "2",
        "--out",
        &fx("llama/adapters/qv_r8"),
    ]));
    assert!(line.contains("output is also an input"), "{line}");
}

#[test]
fn outputs_record_provenance_keep_metadata_and_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("te.safetensors");
    let args = [
        "convert",
        &fx("kohya/te_lora.safetensors"),
        "--to",
        "kohya",
        "--dtype",
        "f16",
        "--out",
        s(&out),
    ];
    run_ok(args);
    let first = std::fs::read(&out).unwrap();
    run_ok(args);
    assert_eq!(std::fs::read(&out).unwrap(), first);
    let f = lorakit::io::SafetensorsFile::open(&out).unwrap();
    let meta: BTreeMap<_, _> = f.header().metadata.iter().cloned().collect();
    assert_eq!(meta["ss_network_module"], "networks.lora");
    assert_eq!(meta["lorakit.operation"], "convert");
    assert_eq!(meta["lorakit.version"], env!("CARGO_PKG_VERSION"));
    let inputs: serde_json::Value = serde_json::from_str(&meta["lorakit.inputs"]).unwrap();
    assert_eq!(inputs[0]["path"], fx("kohya/te_lora.safetensors"));
    let t = read(&out);
    assert_eq!(
        t["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"].dtype,
        safetensors::Dtype::F16
    );
    assert_eq!(
        t["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"].dtype,
        safetensors::Dtype::F32
    );
    // combine: rerun is byte-identical, and the metadata names every input with its weight.
    let out = dir.path().join("mix");
    let args = [
        "combine",
        "--adapter",
        &fx("llama/adapters/linear_c"),
        "--weight",
        "0.6",
        "--adapter",
        &fx("llama/adapters/linear_d"),
        "--weight",
        "0.3",
        "--method",
        "svd",
        "--out",
        s(&out),
    ];
    run_ok(args);
    let first = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    run_ok(args);
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        first
    );
    let f = lorakit::io::SafetensorsFile::open(out.join("adapter_model.safetensors")).unwrap();
    let meta: BTreeMap<_, _> = f.header().metadata.iter().cloned().collect();
    assert_eq!(meta["format"], "pt");
    let inputs: serde_json::Value = serde_json::from_str(&meta["lorakit.inputs"]).unwrap();
    assert_eq!(inputs[1]["weight"], 0.3);
    let params: serde_json::Value = serde_json::from_str(&meta["lorakit.params"]).unwrap();
    assert_eq!(params["method"], "svd");
}

#[test]
fn help_has_examples() {
    for cmd in ["resize", "combine", "convert"] {
        let help = run_ok([cmd, "--help"]);
        assert!(
            help.contains("Examples:") && help.contains("--out"),
            "{cmd}"
        );
    }
    // Text reports are tables.
    let dir = tempfile::tempdir().unwrap();
    let text = run_ok([
        "resize",
        &fx("llama/adapters/qv_r8"),
        "--rank",
        "2",
        "--out",
        s(&dir.path().join("r")),
    ]);
    assert!(
        text.contains("energy kept") && text.contains("model.layers.0.self_attn.q_proj"),
        "{text}"
    );
}
