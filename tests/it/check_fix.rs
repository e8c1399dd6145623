//! `check --fix` of saved embeddings and heads (issue #19): `modules_to_save` rows → PEFT
//! trainable tokens (exact) or a LoRA (measured), and the rules of every loader about trainable
//! tokens.
//!
//! The fixtures (`fixtures/check/saved_rows`, `saved_full`) were written by PEFT 0.21.2
//! (`fixtures/gen/check_saved_fixtures.py`). Without Python the tests check the written tensors
//! against the inputs in f64; with one (`LORAKIT_PYTHON`, else `python3`, needing torch,
//! transformers and peft) PEFT itself loads the original and the fixed adapter
//! (`fixtures/gen/check_saved_load.py`) and their merged weights and logits are compared. Without
//! it the Python half says so loudly and passes, unless `LORAKIT_REQUIRE_PEFT=1`.

use super::check::{check_fix, check_json, fired, target};
use super::common::*;
use serde_json::Value;
use std::path::Path;

/// PEFT loads both adapters onto the tiny Llama base, merges them, and runs one batch holding
/// every token id: the JSON of `check_saved_load.py`.
fn peft_compare(py: &Path, original: &Path, fixed: &Path) -> Value {
    let base = fixture("llama/base");
    let args = [original.as_os_str(), fixed.as_os_str(), base.as_os_str()];
    serde_json::from_slice(&python_ok(py, "check_saved_load.py", &args)).unwrap()
}

fn fix_json(adapter: &Path, out: &Path, targets: &str, extra: &[&str]) -> Value {
    check_fix(adapter, Some(&fixture("llama/base")), targets, out, extra).1
}

fn saved_entry<'a>(fix: &'a Value, module: &str) -> &'a Value {
    entry(&fix["saved"], "module", module)
}

/// Rows of a `[V, D]` tensor that differ, computed here from the two files.
fn changed_rows(w: &[f32], w0: &[f32], d: usize) -> Vec<usize> {
    (0..w.len() / d)
        .filter(|&i| w[i * d..(i + 1) * d] != w0[i * d..(i + 1) * d])
        .collect()
}

#[test]
fn fix_saved_rows_become_trainable_tokens_exactly() {
    let (_dir, out) = scratch("fixed");
    let adapter = fixture("check/saved_rows");
    let r = fix_json(&adapter, &out, "peft,vllm", &["--saved-tokens"]);
    // Before: vLLM refuses modules_to_save; after: trainable tokens, which vLLM cannot parse.
    assert!(fired(target(&r, "vllm")).contains(&"vllm.modules_to_save".to_string()));
    let after = &r["after"];
    assert_eq!(target(after, "peft")["verdict"], "loads", "{after}");
    assert_eq!(fired(target(after, "vllm")), ["vllm.trainable_tokens"]);

    let orig = read(&adapter.join("adapter_model.safetensors"));
    let base = read_checkpoint(&fixture("llama/base"));
    let fixed = read(&out.join("adapter_model.safetensors"));
    let cfg: Value = read_json(out.join("adapter_config.json"));
    assert!(cfg["modules_to_save"].is_null(), "{cfg}");
    for (module, leaf) in [
        ("model.embed_tokens", "embed_tokens"),
        ("lm_head", "lm_head"),
    ] {
        let w = orig[&format!("base_model.model.{module}.weight")].f32();
        let w0 = base[&format!("{module}.weight")].f32();
        let d = 64;
        let rows = changed_rows(&w, &w0, d);
        assert!(!rows.is_empty() && rows.len() < w.len() / d);
        let e = saved_entry(&r["fix"], module);
        assert_eq!(e["form"], "trainable_tokens");
        assert_eq!(e["rows_changed"], rows.len());
        let ids: Vec<usize> = cfg["trainable_token_indices"][leaf]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(ids, rows, "{module}");
        let t = &fixed[&format!("base_model.model.{module}.token_adapter.trainable_tokens_delta")];
        assert_eq!(t.shape, [rows.len(), d]);
        let got = t.f32();
        for (k, &i) in rows.iter().enumerate() {
            assert_eq!(
                got[k * d..(k + 1) * d],
                w[i * d..(i + 1) * d],
                "{module} row {i}"
            );
        }
        assert!(!fixed.contains_key(&format!("base_model.model.{module}.weight")));
    }
    let Some(py) = peft_python() else { return };
    let v = peft_compare(&py, &adapter, &out);
    assert_eq!(v["problems_original"], serde_json::json!([]), "{v}");
    assert_eq!(v["problems_fixed"], serde_json::json!([]), "{v}");
    // Exact: PEFT's merged weights and logits are the original's, bit for bit.
    assert_eq!(v["logits_max_abs"].as_f64().unwrap(), 0.0, "{v}");
    for (k, t) in v["tensors"].as_object().unwrap() {
        assert_eq!(t["max_abs"].as_f64().unwrap(), 0.0, "{k}: {t}");
    }
}

#[test]
fn fix_saved_full_becomes_lora_with_the_reported_error() {
    let (_dir, out) = scratch("fixed");
    let adapter = fixture("check/saved_full");
    let r = fix_json(
        &adapter,
        &out,
        "peft,vllm,llama.cpp",
        &["--saved-tokens", "--saved-rank", "2"],
    );
    for t in ["peft", "vllm", "llama.cpp"] {
        assert_eq!(
            target(&r["after"], t)["verdict"],
            "loads",
            "{t}: {}",
            r["after"]
        );
    }
    // embed_tokens equals the base: dropped. lm_head differs in every row: a rank-2 LoRA.
    assert_eq!(
        saved_entry(&r["fix"], "model.embed_tokens")["form"],
        "dropped_equal_to_base"
    );
    let e = saved_entry(&r["fix"], "lm_head");
    assert_eq!(e["form"], "lora");
    assert_eq!(e["rows_changed"], 128);
    let reported = e["fro_error"].as_f64().unwrap();
    // The reported error is the written factors' true error, recomputed here in f64:
    // ‖(W − W0) − B·A‖_F with B, A as written (scale 1 after the fix: lora_alpha = r).
    let orig = read(&adapter.join("adapter_model.safetensors"));
    let base = read_checkpoint(&fixture("llama/base"));
    let fixed = read(&out.join("adapter_model.safetensors"));
    let cfg: Value = read_json(out.join("adapter_config.json"));
    assert_eq!(cfg["r"], cfg["lora_alpha"]);
    let w = orig["base_model.model.lm_head.weight"].f32();
    let w0 = base["lm_head.weight"].f32();
    let a = &fixed["base_model.model.lm_head.lora_A.weight"];
    let b = &fixed["base_model.model.lm_head.lora_B.weight"];
    let rank = a.shape[0];
    let (av, bv) = (a.f32(), b.f32());
    let (v, d) = (128, 64);
    let mut err2 = 0f64;
    let mut norm2 = 0f64;
    for i in 0..v {
        for j in 0..d {
            let ba: f64 = (0..rank)
                .map(|k| bv[i * rank + k] as f64 * av[k * d + j] as f64)
                .sum();
            let delta = w[i * d + j] as f64 - w0[i * d + j] as f64;
            err2 += (delta - ba).powi(2);
            norm2 += delta * delta;
        }
    }
    assert!(
        (err2.sqrt() - reported).abs() <= 1e-5 * reported,
        "reported {reported}, recomputed {}",
        err2.sqrt()
    );
    // The update is rank 2 plus noise: the error is that of the noise, not of the update.
    assert!(reported > 0.0 && reported < 0.1 * norm2.sqrt());
    let Some(py) = peft_python() else { return };
    let p = peft_compare(&py, &adapter, &out);
    assert_eq!(p["problems_fixed"], serde_json::json!([]), "{p}");
    for (k, t) in p["tensors"].as_object().unwrap() {
        let fro = t["fro"].as_f64().unwrap();
        if k == "lm_head.weight" {
            // PEFT's merged head differs from the original's by the reported error.
            assert!(
                (fro - reported).abs() <= 1e-4 * reported,
                "PEFT merged lm_head differs by {fro}, reported {reported}"
            );
        } else {
            assert_eq!(t["max_abs"].as_f64().unwrap(), 0.0, "{k}: {t}");
        }
    }
}

#[test]
fn trainable_tokens_rules_per_loader() {
    let (dir, out) = scratch("tokens");
    let base = fixture("llama/base");
    fix_json(
        &fixture("check/saved_rows"),
        &out,
        "peft",
        &["--saved-tokens"],
    );
    let (_, r) = check_json(
        &out,
        &[
            "--base",
            s(&base),
            "--target",
            "vllm,sglang,lorax,llama.cpp,peft",
        ],
    );
    // vLLM utils.py parse_fine_tuned_lora_name: "… is unsupported LoRA weight".
    assert_eq!(target(&r, "vllm")["verdict"], "fails");
    assert!(fired(target(&r, "vllm")).contains(&"vllm.trainable_tokens".into()));
    // llama.cpp convert_lora_to_gguf.py: "Not a lora_A or lora_B tensor", exit 1.
    assert_eq!(target(&r, "llama.cpp")["verdict"], "fails");
    assert!(fired(target(&r, "llama.cpp")).contains(&"llama.cpp.trainable_tokens".into()));
    // SGLang lora.py _process_weight skips embed_tokens/lm_head tensors of modules that are no
    // LoRA target; LoRAX never reads them.
    assert_eq!(fired(target(&r, "sglang")), ["sglang.trainable_tokens"]);
    assert!(fired(target(&r, "lorax")).contains(&"lorax.trainable_tokens".into()));
    assert_eq!(target(&r, "peft")["verdict"], "loads");
    let rows: Vec<&Value> = r["modules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "rows")
        .collect();
    assert_eq!(rows.len(), 2, "{}", r["modules"]);

    // Indices that do not fit the rows: PEFT refuses (load_state_dict size mismatch).
    let bad = dir.path().join("bad");
    copy_dir(&out, &bad);
    let cfg_path = bad.join("adapter_config.json");
    let mut cfg: Value = read_json(&cfg_path);
    cfg["trainable_token_indices"]["lm_head"] = serde_json::json!([7]);
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let (code, r) = check_json(&bad, &["--base", s(&base), "--target", "peft"]);
    assert_eq!(code, 1);
    assert_eq!(fired(target(&r, "peft")), ["peft.trainable_tokens"]);
    let Some(py) = peft_python() else { return };
    let o = std::process::Command::new(&py)
        .arg(fixture("gen/check_saved_load.py"))
        .arg(fixture("check/saved_rows"))
        .arg(&bad)
        .arg(&base)
        .output()
        .unwrap();
    assert!(!o.status.success(), "PEFT loaded rows that do not fit");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("size mismatch"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `ΔW = w1 ⊗ w2` (LyCORIS LoKr with both factors full: scale 1), in f64.
fn kron(w1: &[f32], (a, c): (usize, usize), w2: &[f32], (b, d): (usize, usize)) -> Vec<f64> {
    let (rows, cols) = (a * b, c * d);
    let mut out = vec![0f64; rows * cols];
    for i1 in 0..a {
        for i2 in 0..b {
            for j1 in 0..c {
                for j2 in 0..d {
                    out[(i1 * b + i2) * cols + j1 * d + j2] =
                        w1[i1 * c + j1] as f64 * w2[i2 * d + j2] as f64;
                }
            }
        }
    }
    out
}

#[test]
fn fix_for_diffusers_lowers_lokr_and_diffusers_fuses_it_within_the_reported_error() {
    let (_dir, out) = scratch("lora.safetensors");
    let lokr = fixture("check/lokr_unet.safetensors");
    let (code, r) = check_fix(&lokr, None, "diffusers,comfy", &out, &["--lower-rank", "4"]);
    assert_eq!(code, 0, "{}", r["after"]);
    assert!(fired(target(&r, "diffusers")).contains(&"diffusers.lycoris".into()));
    for t in ["diffusers", "comfy"] {
        assert_eq!(target(&r["after"], t)["verdict"], "loads", "{t}");
    }
    let orig = read(&lokr);
    let fixed = read(&out);
    let lowered = r["fix"]["lowered"].as_array().unwrap();
    assert_eq!(lowered.len(), 24);
    // The reported error is the written factors' true error against w1 ⊗ w2, in f64.
    let mut reported = std::collections::BTreeMap::new();
    for l in lowered {
        let m = l["module"].as_str().unwrap();
        assert_eq!(l["algo"], "lokr");
        let rep = l["fro_error"].as_f64().unwrap();
        let dw = kron(
            &orig[&format!("{m}.lokr_w1")].f32(),
            (2, 2),
            &orig[&format!("{m}.lokr_w2")].f32(),
            (4, 4),
        );
        let down = fixed[&format!("{m}.lora_down.weight")].f32();
        let up = fixed[&format!("{m}.lora_up.weight")].f32();
        assert_eq!(fixed[&format!("{m}.alpha")].f32(), [4.0]);
        let mut err2 = 0f64;
        for i in 0..8 {
            for j in 0..8 {
                let ba: f64 = (0..4)
                    .map(|k| up[i * 4 + k] as f64 * down[k * 8 + j] as f64)
                    .sum();
                err2 += (dw[i * 8 + j] - ba).powi(2);
            }
        }
        assert!(
            (err2.sqrt() - rep).abs() <= 1e-5 * rep + 1e-7,
            "{m}: reported {rep}, recomputed {}",
            err2.sqrt()
        );
        reported.insert(m.to_owned(), (rep, dw));
    }
    assert_diffusers_fuses_within(&lokr, &out, &reported);
}

/// diffusers loads `fixed` onto the tiny UNet (fixtures/conventions/unet) and fuses it; every
/// module of `original` (placed by lorakit's matcher, as `check --base` reports) must land within
/// its reported error of the exact merge `W0 + ΔW` (`reported`: module → (error, ΔW in f64)),
/// and every other weight must be unchanged. Skipped loudly without Python.
fn assert_diffusers_fuses_within(
    original: &Path,
    fixed: &Path,
    reported: &std::collections::BTreeMap<String, (f64, Vec<f64>)>,
) {
    let Some(py) = peft_python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let fused_path = tmp.path().join("fused.safetensors");
    python_ok(
        &py,
        "check_diffusers_load.py",
        &[fixed.as_os_str(), fused_path.as_os_str()],
    );
    let unet = fixture("conventions/unet");
    let base = read_checkpoint(&unet);
    let fused = read(&fused_path);
    // Where each module lands, by lorakit's matcher (the placements `check --base` reports).
    let (_, placed) = check_json(original, &["--base", s(&unet), "--target", "comfy"]);
    let mut seen = 0;
    for p in placed["modules"].as_array().unwrap() {
        let m = p["module"].as_str().unwrap();
        let t = p["base_tensor"].as_str().unwrap();
        let (rep, dw) = &reported[m];
        let (w0, wf) = (base[t].f32(), fused[t].f32());
        let err: f64 = wf
            .iter()
            .zip(&w0)
            .zip(dw)
            .map(|((&f, &b), &d)| (f as f64 - b as f64 - d).powi(2))
            .sum::<f64>()
            .sqrt();
        // diffusers' fused weight differs from the exact merge of the original by the reported
        // error (up to the f32 rounding of W0 + ΔW).
        assert!(
            (err - rep).abs() <= 1e-3 * rep + 1e-6,
            "{m} → {t}: diffusers is {err} from the original's merge, reported {rep}"
        );
        seen += 1;
    }
    assert_eq!(seen, reported.len());
    for (k, t) in &base {
        if !placed["modules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["base_tensor"] == k.as_str())
        {
            assert_eq!(fused[k].data, t.data, "{k} changed");
        }
    }
}

/// LoHa (diffusers #13137 covers it with LoKr: diffusers converts no LyCORIS keys) lowered for
/// diffusers, linear and conv modules alike (`conv_in`: a 3×3 conv, ΔW `[12, 8·3·3]`;
/// `proj_out`: 1×1). ΔW is rebuilt in f64 by LyCORIS' rule (`lycoris/modules/loha.py`:
/// `(w1a·w1b) ⊙ (w2a·w2b)` times `alpha / dim`, dim the rows of `w1b`); each reported error must
/// be the Eckart–Young optimum `sqrt(Σ_{i>r} σᵢ²)` of that ΔW (an independent f64 Jacobi SVD) and
/// the written factors' true error. The file stores conv factors flattened; with `--base` the
/// conv modules are written 4-D (`lora_down [r, in, kh, kw]`, `lora_up [out, r, 1, 1]`), the
/// shapes diffusers' Conv2d LoRA layers take. (These modules are the LyCORIS test base's, not
/// the tiny UNet's: the diffusers load of a fixed conv LoRA is the multi-component test's.)
#[test]
fn fix_for_diffusers_lowers_loha_and_conv_at_the_optimal_error() {
    use super::reference::jacobi_svd;
    let (dir, out) = scratch("lora.safetensors");
    let loha = fixture("check/loha_unet.safetensors");
    let rank = 2usize;
    let base = fixture("lycoris/base.safetensors");
    let rank_arg = rank.to_string();
    let (code, r) = check_fix(
        &loha,
        Some(&base),
        "diffusers",
        &out,
        &["--lower-rank", &rank_arg],
    );
    assert_eq!(code, 0, "{}", r["after"]);
    assert!(fired(target(&r, "diffusers")).contains(&"diffusers.lycoris".into()));
    assert_eq!(target(&r["after"], "diffusers")["verdict"], "loads");
    let orig = read(&loha);
    let fixed = read(&out);
    let lowered = r["fix"]["lowered"].as_array().unwrap();
    assert_eq!(lowered.len(), 4, "{lowered:?}");
    let mut conv = 0;
    for l in lowered {
        let m = l["module"].as_str().unwrap();
        assert_eq!(l["algo"], "loha");
        let rep = l["fro_error"].as_f64().unwrap();
        let t = |x: &str| &orig[&format!("{m}.hada_{x}")];
        let (w1a, w1b, w2a, w2b) = (t("w1_a"), t("w1_b"), t("w2_a"), t("w2_b"));
        let (d, dim, k) = (w1a.shape[0], w1a.shape[1], w1b.shape[1]);
        let scale = orig[&format!("{m}.alpha")].f32()[0] as f64 / dim as f64;
        let prod = |a: &[f32], b: &[f32], i: usize, j: usize| -> f64 {
            (0..dim)
                .map(|q| a[i * dim + q] as f64 * b[q * k + j] as f64)
                .sum()
        };
        let (a1, b1, a2, b2) = (w1a.f32(), w1b.f32(), w2a.f32(), w2b.f32());
        let dw: Vec<f64> = (0..d * k)
            .map(|p| scale * prod(&a1, &b1, p / k, p % k) * prod(&a2, &b2, p / k, p % k))
            .collect();
        let (_, sv, _) = jacobi_svd(&dw, d, k);
        let optimal = sv[rank..].iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(
            (rep - optimal).abs() <= 1e-4 * optimal + 1e-7,
            "{m}: reported {rep}, Eckart–Young optimum {optimal}"
        );
        let down = &fixed[&format!("{m}.lora_down.weight")];
        let up = &fixed[&format!("{m}.lora_up.weight")];
        let leaf = m.strip_prefix("lora_unet_down_blocks_0_").unwrap();
        let w0 = &read(&base)[&format!("down_blocks.0.{leaf}.weight")];
        if w0.shape.len() == 4 {
            conv += 1;
            assert_eq!(down.shape, [&[rank][..], &w0.shape[1..]].concat(), "{m}");
            assert_eq!(up.shape, vec![d, rank, 1, 1], "{m}");
        }
        assert_eq!(fixed[&format!("{m}.alpha")].f32(), [rank as f32]);
        let (down, up) = (down.f32(), up.f32());
        let err = (0..d * k)
            .map(|p| {
                let ba: f64 = (0..rank)
                    .map(|q| up[(p / k) * rank + q] as f64 * down[q * k + p % k] as f64)
                    .sum();
                (dw[p] - ba).powi(2)
            })
            .sum::<f64>()
            .sqrt();
        assert!(
            (err - rep).abs() <= 1e-5 * rep + 1e-7,
            "{m}: reported {rep}, written factors are {err} away"
        );
    }
    assert_eq!(conv, 2, "conv_in and proj_out are convolutions");
    let warned = |r: &serde_json::Value| {
        r["fix"]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("their kernels are unknown"))
    };
    assert!(!warned(&r), "{}", r["fix"]);
    // Without the base nothing says which flattened LyCORIS modules are convolutions: the fix
    // lowers them as linear LoRA and says so, rather than claiming diffusers loads them all.
    let out2 = dir.path().join("lora2.safetensors");
    let (_, r2) = check_fix(
        &loha,
        None,
        "diffusers",
        &out2,
        &["--lower-rank", &rank_arg],
    );
    assert!(warned(&r2), "{}", r2["fix"]);
    assert!(read(&out2)
        .iter()
        .filter(|(k, _)| k.ends_with(".lora_down.weight"))
        .all(|(_, t)| t.shape.len() == 2));
}

#[test]
fn fix_for_comfy_folds_a_metadata_alpha_into_the_factors() {
    let (dir, out) = scratch("lora.safetensors");
    let orig_path = fixture("conventions/diffusers_metadata.safetensors");
    let (code, r) = check_fix(&orig_path, None, "comfy,diffusers", &out, &[]);
    // Before: ComfyUI reads no alpha (scale 1 instead of the metadata's 2); after: loads.
    assert_eq!(fired(target(&r, "comfy")), ["comfy.scale"]);
    assert_eq!(code, 0, "{}", r["after"]);
    let unet = fixture("conventions/unet");
    let (code, after) = check_json(&out, &["--base", s(&unet), "--target", "comfy,diffusers"]);
    assert_eq!(code, 0, "{after}");
    // ComfyUI's scale is `{module}.alpha`/rank (comfy/weight_adapter/lora.py): alpha = rank now,
    // and lora_up carries the metadata's scale: up'·down = 2·B·A per module.
    let orig = read(&orig_path);
    let fixed = read(&out);
    let mut modules = 0;
    for (k, t) in &orig {
        let Some(m) = k.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let kohya = format!(
            "lora_unet_{}",
            m.strip_prefix("unet.").unwrap().replace('.', "_")
        );
        let up = &fixed[&format!("{kohya}.lora_up.weight")];
        let down = &fixed[&format!("{kohya}.lora_down.weight")];
        let rank = down.shape[0];
        assert_eq!(fixed[&format!("{kohya}.alpha")].f32(), [rank as f32]);
        assert_eq!(down.f32(), t.f32(), "{m}: lora_down is lora_A");
        let b = orig[&format!("{m}.lora_B.weight")].f32();
        for (x, y) in up.f32().iter().zip(&b) {
            assert_eq!(*x, (2.0 * *y as f64) as f32, "{m}");
        }
        modules += 1;
    }
    assert_eq!(modules, 60);
    let Some(py) = peft_python() else { return };
    // diffusers fuses the original (alpha from its metadata) and the fix to the same UNet.
    let fuse = |lora: &Path, name: &str| {
        let p = dir.path().join(name);
        python_ok(
            &py,
            "check_diffusers_load.py",
            &[lora.as_os_str(), p.as_os_str()],
        );
        read(&p)
    };
    let a = fuse(&orig_path, "a.safetensors");
    let b = fuse(&out, "b.safetensors");
    for (k, t) in &a {
        let e = rel_err(&t.f32(), &b[k].f32());
        assert!(e <= 1e-6, "{k}: fused weights differ by {e}");
    }
}
