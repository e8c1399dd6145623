//! `check` (issue #19): lorakit's verdict per loader against what the loader does.
//!
//! PEFT and diffusers run here: `fixtures/gen/check_fixtures.py` ran them on every fixture and
//! recorded their outcome in `fixtures/check/MANIFEST.json` (PEFT: from_pretrained raised / warned
//! about missing or unexpected keys or left a file tensor out / loaded everything; diffusers: the
//! SD reader raised / dropped DoRA keys or kept keys under no pipeline component / loaded). The
//! tests compare lorakit's verdict with those records, case by case. vLLM, SGLang, LoRAX and
//! llama.cpp do not install here: their cases assert the rule read from their source, cited at
//! each case (the same citation is printed by `check` and kept in src/ops/check/rules.rs).

use super::common::*;
use serde_json::Value;
use std::path::Path;

pub(super) fn check_json(args: &[&str]) -> (i32, Value) {
    let out = bin()
        .arg("check")
        .args(args)
        .arg("--json")
        .output()
        .expect("spawn lorakit");
    let code = out.status.code().expect("exit code");
    assert!(
        code == 0 || code == 1,
        "check {args:?} exited {code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check {args:?}: not JSON ({e})"));
    assert_eq!(v["operation"], "check");
    (code, v)
}

pub(super) fn target<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == name)
        .unwrap_or_else(|| panic!("no target {name} in {report}"))
}

/// The loader's outcome in the manifest's words: `fails`, `silent`, `loads`.
pub(super) fn outcome(t: &Value) -> &'static str {
    if !t["loads"].as_bool().unwrap() {
        "fails"
    } else if !t["applies_all"].as_bool().unwrap() {
        "silent"
    } else {
        "loads"
    }
}

pub(super) fn fired(t: &Value) -> Vec<String> {
    t["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap().to_owned())
        .collect()
}

fn manifest() -> Value {
    let text = std::fs::read(fixture("check/MANIFEST.json")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

#[test]
fn peft_verdicts_match_what_peft_did() {
    let m = manifest();
    let cases = m["cases"].as_object().unwrap();
    let mut compared = 0;
    let mut seen = std::collections::BTreeSet::new();
    for (case, rec) in cases {
        let Some(peft) = rec.get("peft") else {
            continue;
        };
        let base = fixture(rec["base"].as_str().unwrap());
        let adapter = fixture(case);
        let (_, r) = check_json(&[s(&adapter), "--base", s(&base), "--target", "peft"]);
        let t = target(&r, "peft");
        assert_eq!(
            outcome(t),
            peft["verdict"].as_str().unwrap(),
            "{case}: PEFT did {peft}, lorakit says {t}"
        );
        seen.insert(outcome(t));
        compared += 1;
    }
    assert!(compared >= 20, "only {compared} PEFT cases");
    // The matrix holds every outcome, so a constant verdict cannot pass.
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn diffusers_verdicts_match_what_diffusers_did() {
    let m = manifest();
    let mut seen = std::collections::BTreeSet::new();
    for (case, rec) in m["cases"].as_object().unwrap() {
        let Some(d) = rec.get("diffusers") else {
            continue;
        };
        let (_, r) = check_json(&[s(&fixture(case)), "--target", "diffusers"]);
        let t = target(&r, "diffusers");
        assert_eq!(
            outcome(t),
            d["verdict"].as_str().unwrap(),
            "{case}: diffusers did {d}, lorakit says {t}"
        );
        seen.insert(outcome(t));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

pub(super) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One documented rule: running `check` on `adapter` (with `base`) for `target` gives `verdict`
/// and fires `rule` (or no rule when `rule` is empty).
fn assert_rule(adapter: &str, base: Option<&str>, tgt: &str, verdict: &str, rule: &str) {
    let a = fixture(adapter);
    let b = base.map(fixture);
    let mut args = vec![s(&a), "--target", tgt];
    if let Some(b) = &b {
        args.extend(["--base", s(b)]);
    }
    let (_, r) = check_json(&args);
    let t = target(&r, tgt);
    assert_eq!(t["verdict"], verdict, "{adapter} {tgt}: {t}");
    let rules = fired(t);
    if rule.is_empty() {
        assert!(rules.is_empty(), "{adapter} {tgt}: {rules:?}");
    } else {
        assert!(
            rules.iter().any(|x| x == rule),
            "{adapter} {tgt}: {rules:?}"
        );
    }
}

#[test]
fn vllm_rules_read_from_its_source() {
    // peft_helper.py @e745baf PEFTHelper._validate_features: "vLLM does not yet support DoRA."
    assert_rule("llama/adapters/dora", None, "vllm", "fails", "vllm.dora");
    // same: "vLLM only supports modules_to_save being None."
    assert_rule(
        "llama/adapters/modules_to_save",
        None,
        "vllm",
        "fails",
        "vllm.modules_to_save",
    );
    // utils.py @0fd1570 parse_fine_tuned_lora_name: "… is unsupported LoRA weight" for .lora_B.bias
    assert_rule(
        "llama/adapters/bias",
        None,
        "vllm",
        "fails",
        "vllm.lora_bias",
    );
    // peft_helper.py __post_init__: alpha/√r with use_rslora — rsLoRA is honoured.
    assert_rule("llama/adapters/rslora_all", None, "vllm", "loads", "");
    // from_dict keeps only dataclass fields: rank_pattern / alpha_pattern are dropped.
    assert_rule(
        "llama/adapters/patterns",
        None,
        "vllm",
        "fails",
        "vllm.scale",
    );
    // config/lora.py @a78dc92: max_lora_rank defaults to 16.
    assert_rule(
        "check/rank32",
        None,
        "vllm",
        "loads_with_warnings",
        "vllm.rank_flag",
    );
    assert_rule("check/rank7", None, "vllm", "loads", "");
    // config/lora.py verify_with_model_config: lora_dtype "auto" = the model's dtype, so F32
    // factors on a BF16 base are applied in BF16 (a warning: it loads and applies).
    assert_rule(
        "llama/adapters/qv_r8",
        Some("llama/base_bf16"),
        "vllm",
        "loads_with_warnings",
        "vllm.dtype",
    );
    assert_rule(
        "llama/adapters/qv_r8",
        Some("llama/base"),
        "vllm",
        "loads",
        "",
    );
    // model_manager.py @bb1d76e activate_adapter: a LoRA whose module name is not the model's
    // is never set (vllm #34186).
    assert_rule(
        "check/no_root_prefix",
        Some("llama/base"),
        "vllm",
        "fails",
        "vllm.not_applied",
    );
    // lora_model.py @532cc25 check_unexpected_modules: w_proj is no linear layer of the model.
    assert_rule(
        "check/unknown_module",
        Some("llama/base"),
        "vllm",
        "fails",
        "vllm.unsupported_module",
    );
    // lora_model.py from_lora_tensors: embedding LoRA size must equal the vocabulary.
    assert_rule(
        "check/added_tokens",
        Some("llama/base"),
        "vllm",
        "fails",
        "vllm.vocab",
    );
}

#[test]
fn scale_rules_name_exactly_the_modules_whose_scale_changes() {
    // patterns: rank_pattern {k_proj: 2, layers.1.self_attn.q_proj: 6}, alpha_pattern
    // {v_proj: 3, layers.0.self_attn.o_proj: 5}, r 4, alpha 8. vLLM/LoRAX/SGLang use alpha/r = 2
    // everywhere: wrong for k (8/2 = 4), layer-1 q (8/6), v (3/4) and layer-0 o (5/4): 6 modules.
    // llama.cpp uses the global alpha over each tensor's rank: only the alpha_pattern modules
    // (v_proj ×2, layer-0 o_proj) differ.
    let (_, r) = check_json(&[s(&fixture("llama/adapters/patterns"))]);
    let items = |tgt: &str, rule: &str| -> Vec<String> {
        let t = target(&r, tgt);
        let f = t["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["rule"] == rule)
            .unwrap_or_else(|| panic!("{tgt}: no {rule}"));
        f["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().split(':').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(items("vllm", "vllm.scale").len(), 6);
    assert_eq!(items("lorax", "lorax.scale").len(), 6);
    assert_eq!(
        items("llama.cpp", "llama.cpp.scale"),
        vec![
            "model.layers.0.self_attn.o_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.1.self_attn.v_proj"
        ]
    );
    // rsLoRA: SGLang's alpha/r ignores use_rslora (lora.py), llama.cpp's alpha/rank too.
    assert_rule(
        "llama/adapters/rslora_all",
        None,
        "sglang",
        "fails",
        "sglang.scale",
    );
    assert_rule(
        "llama/adapters/rslora_all",
        None,
        "llama.cpp",
        "fails",
        "llama.cpp.scale",
    );
    assert_rule("llama/adapters/rslora_all", None, "lorax", "loads", "");
}

#[test]
fn sglang_lorax_llamacpp_rules_read_from_their_source() {
    // sglang lora.py LoRAAdapter.normalize_qkv_proj: q/k/v are stacked from q_proj, a missing k
    // zero-filled from v: q_proj without v_proj is a KeyError (weighted_b: k and q only).
    assert_rule(
        "llama/adapters/weighted_b",
        None,
        "sglang",
        "fails",
        "sglang.q_without_v",
    );
    assert_rule("llama/adapters/qv_r8", None, "sglang", "loads", "");
    // sglang lora_manager.py validate_new_adapter: DoRA and added tokens refused.
    assert_rule(
        "llama/adapters/dora",
        None,
        "sglang",
        "fails",
        "sglang.dora",
    );
    assert_rule(
        "check/added_tokens",
        Some("llama/base"),
        "sglang",
        "fails",
        "sglang.added_tokens",
    );
    // lorax adapters/lora.py @a7394ba map_weights_for_model reads only lora_A/B.weight.
    assert_rule("llama/adapters/dora", None, "lorax", "fails", "lorax.dora");
    assert_rule(
        "llama/adapters/embed",
        None,
        "lorax",
        "fails",
        "lorax.embedding",
    );
    // LoraWeights.load returns None when one layer lacks the module type.
    assert_rule(
        "check/partial_layers",
        Some("llama/base"),
        "lorax",
        "fails",
        "lorax.partial_layers",
    );
    assert_rule("check/rank7", Some("llama/base"), "lorax", "loads", "");
    // convert_lora_to_gguf.py @56bf500: "Not a lora_A or lora_B tensor" → exit 1.
    assert_rule(
        "llama/adapters/bias",
        None,
        "llama.cpp",
        "fails",
        "llama.cpp.lora_bias",
    );
    assert_rule(
        "llama/adapters/modules_to_save",
        None,
        "llama.cpp",
        "fails",
        "llama.cpp.modules_to_save",
    );
    // modify_tensors: "lm_head is present in adapter, but is ignored in base model" (tied).
    assert_rule(
        "check/tied_lm_head",
        Some("llama/tied"),
        "llama.cpp",
        "fails",
        "llama.cpp.tied_lm_head",
    );
    assert_rule(
        "check/tied_lm_head",
        Some("llama/tied"),
        "peft",
        "loads",
        "",
    );
    // Without the base, the tied rule is not guessed: listed as not evaluated.
    let (_, r) = check_json(&[s(&fixture("check/tied_lm_head")), "--target", "llama.cpp"]);
    let t = target(&r, "llama.cpp");
    assert!(t["not_evaluated"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "llama.cpp.tied_lm_head"));
}

#[test]
fn kohya_files_are_for_the_diffusion_loaders() {
    // Default targets of a kohya file: diffusers and ComfyUI; ComfyUI loads LoHa (comfy/lora.py
    // load_lora reads hada_*), vLLM needs a PEFT folder.
    let (code, r) = check_json(&[s(&fixture("lycoris/loha.safetensors"))]);
    let names: Vec<&str> = r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["diffusers", "comfy"]);
    assert_eq!(target(&r, "comfy")["verdict"], "loads");
    assert_eq!(code, 1, "diffusers drops lycoris_ keys");
    assert_rule(
        "kohya/te_lora.safetensors",
        None,
        "vllm",
        "fails",
        "vllm.format",
    );
    // A PEFT folder in ComfyUI: no alpha tensors, so scale 1 instead of alpha/r = 2
    // (comfy/weight_adapter/lora.py @6fd406f calculate_weight).
    assert_rule("llama/adapters/qv_r8", None, "comfy", "fails", "comfy.llm");
    assert_rule("conv/adapters/peft", None, "comfy", "fails", "comfy.scale");
    assert_rule(
        "kohya/adapters/te_peft",
        None,
        "comfy",
        "fails",
        "comfy.peft_prefix",
    );
}

#[test]
fn exit_status_and_targets() {
    // Everything loads everywhere: exit 0.
    let (code, r) = check_json(&[
        s(&fixture("llama/adapters/qv_r8")),
        "--base",
        s(&fixture("llama/base")),
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["pass"], true);
    assert_eq!(r["targets"].as_array().unwrap().len(), 5);
    let placements = r["modules"].as_array().unwrap();
    assert_eq!(placements.len(), 4);
    assert!(placements.iter().all(|p| p["status"] == "exact"));
    // A warning alone (rank 32 in vLLM) keeps exit 0.
    let (code, _) = check_json(&[s(&fixture("check/rank32")), "--target", "vllm"]);
    assert_eq!(code, 0);
    // Comma list and repetition, deduplicated, aliases accepted.
    let (code, r) = check_json(&[
        s(&fixture("llama/adapters/dora")),
        "--target",
        "vllm,llamacpp",
        "--target",
        "vllm",
    ]);
    assert_eq!(code, 1);
    let names: Vec<&str> = r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vllm", "llama.cpp"]);
    // Text output: one verdict line per target, the rule and its source.
    let out = bin()
        .args([
            "check",
            s(&fixture("llama/adapters/dora")),
            "--target",
            "vllm",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("vllm       FAILS"), "{text}");
    assert!(text.contains("vllm.dora"), "{text}");
    assert!(text.contains("vllm/lora/peft_helper.py"), "{text}");
}

#[test]
fn bad_input_is_one_line_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    // Unknown target.
    let out = bin()
        .args([
            "check",
            s(&fixture("llama/adapters/qv_r8")),
            "--target",
            "tgi",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Unreadable adapter.
    let missing = dir.path().join("nope");
    let out = run_err(["check", s(&missing)]);
    assert_eq!(out.status.code(), Some(2));
    one_line_error(&out);
    // Not an adapter (a base checkpoint).
    let out = run_err(["check", s(&fixture("llama/base/model.safetensors"))]);
    assert_eq!(out.status.code(), Some(2));
    one_line_error(&out);
    // --fix onto the input itself is refused, nothing written.
    let copy = dir.path().join("a");
    copy_dir(&fixture("llama/adapters/patterns"), &copy);
    let before = listing(&copy);
    let out = run_err(["check", s(&copy), "--fix", "--out", s(&copy)]);
    assert_eq!(out.status.code(), Some(2));
    one_line_error(&out);
    assert_eq!(listing(&copy), before);
    // --drop-unmatched without --base.
    let out = run_err([
        "check",
        s(&copy),
        "--fix",
        "--out",
        s(&dir.path().join("x")),
        "--drop-unmatched",
    ]);
    assert_eq!(out.status.code(), Some(2));
    one_line_error(&out);
    assert!(!dir.path().join("x").exists());
}

/// `--fix` makes every LLM loader's scale agree with PEFT's, and the fixed adapter merges to
/// the same weights as the original (lorakit merge, then diff to f32 rounding).
#[test]
fn fix_folds_patterns_and_merges_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let fixed = dir.path().join("fixed");
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
        let (code, r) = check_json(&[
            s(&fixture(case)),
            "--base",
            s(&base),
            "--target",
            targets,
            "--fix",
            "--out",
            s(&fixed),
        ]);
        assert_eq!(code, 0, "{case}: {}", r["after"]);
        assert_eq!(r["pass"], false, "{case}: the input itself does not pass");
        assert!(target(&r["after"], "sglang")["findings"]
            .as_array()
            .unwrap()
            .is_empty());
        assert_eq!(r["after"]["pass"], true);
        assert!(r["fix"]["files"].is_array());
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(fixed.join("adapter_config.json")).unwrap())
                .unwrap();
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
    let (code, r) = check_json(&[
        s(&fixture("check/no_root_prefix")),
        "--base",
        s(&base),
        "--target",
        "vllm,lorax,peft",
        "--fix",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{}", r["after"]);
    assert_eq!(r["fix"]["renamed"].as_array().unwrap().len(), 4);
    let out2 = dir.path().join("f2");
    let (code, r) = check_json(&[
        s(&fixture("check/unknown_module")),
        "--base",
        s(&base),
        "--target",
        "vllm,peft",
        "--fix",
        "--out",
        s(&out2),
        "--drop-unmatched",
    ]);
    assert_eq!(code, 0, "{}", r["after"]);
    assert_eq!(r["fix"]["dropped"].as_array().unwrap().len(), 2);
    assert_eq!(r["after"]["modules_count"], 2);
}

/// With `--base`, each module says which targets do not apply it, and by which rule.
#[test]
fn every_module_says_where_it_is_not_applied() {
    let (_, r) = check_json(&[
        s(&fixture("check/no_root_prefix")),
        "--base",
        s(&fixture("llama/base")),
    ]);
    for p in r["modules"].as_array().unwrap() {
        assert_eq!(p["status"], "suffix", "{p}");
        let by: Vec<&str> = p["not_applied_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
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
    let (_, r) = check_json(&[
        s(&fixture("llama/adapters/qv_r8")),
        "--base",
        s(&fixture("llama/base")),
    ]);
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
        let (code, r) = check_json(&[
            s(&fixture("llama/adapters/dora")),
            "--base",
            s(&base),
            "--fix",
            "--dora-rank",
            rank,
            "--out",
            s(&fixed),
        ]);
        assert_eq!(code, 0, "{}", r["after"]);
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(fixed.join("adapter_config.json")).unwrap())
                .unwrap();
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
                assert!(
                    (diff - reported).abs() <= 1e-3 * reported,
                    "{module}: merged differs by {diff}, reported {reported}"
                );
            }
        }
    }
}

/// Duplicate keys (`x.lora_A.weight` beside `base_model.model.x.lora_A.weight`) define one module
/// twice; which one a loader keeps depends on dict order (vLLM's parse_fine_tuned_lora_name maps
/// both to the same module, the later one silently wins). The adapter reader refuses it: exit 2
/// with one line naming both keys, whatever the target.
#[test]
fn duplicate_keys_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("dup");
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
    let out = run_err(["check", s(&a), "--target", "vllm"]);
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
    let m = "model.layers.0.self_attn.qkv_proj";
    let (r, k, d) = (2usize, 64usize, 128usize);
    let a: Vec<f32> = (0..r * k)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01)
        .collect();
    let b: Vec<f32> = (0..d * r)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.02)
        .collect();
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let adapter = dir.path().join("qkv");
    write_peft_adapter(
        &adapter,
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["qkv_proj"]}"#,
        &shared_lora_tensors(&[m.to_string()], (&[r, k], &le(&a)), (&[d, r], &le(&b))),
    );
    assert_rule_at(&adapter, &base, "vllm", "fails", "vllm.unsupported_module");
    let fixed = dir.path().join("fixed");
    let (code, rep) = check_json(&[
        s(&adapter),
        "--base",
        s(&base),
        "--target",
        "vllm,peft",
        "--fix",
        "--out",
        s(&fixed),
    ]);
    assert_eq!(code, 0, "{}", rep["after"]);
    assert_eq!(rep["fix"]["split"][0][1].as_array().unwrap().len(), 3);
    let merged = dir.path().join("merged");
    merge_ok(&base, &fixed, &merged, &[]);
    let got = read_checkpoint(&merged);
    let w0 = read_checkpoint(&base);
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
    let (_, r) = check_json(&[s(adapter), "--base", s(base), "--target", tgt]);
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
    let (code, r) = check_json(&[s(&p), "--target", "diffusers,comfy"]);
    assert_eq!(code, 1);
    assert_eq!(target(&r, "diffusers")["verdict"], "loads", "{r}");
    let comfy = target(&r, "comfy");
    assert_eq!(outcome(comfy), "silent", "{comfy}");
    assert_eq!(fired(comfy), vec!["comfy.scale".to_string()]);
    let text = comfy.to_string();
    assert!(text.contains("scale 1 instead of 2"), "{text}");
    // The same factors with alpha = r (the kohya conversion) load the same in both.
    let p = fixture("conventions/kohya.safetensors");
    let (code, r) = check_json(&[s(&p), "--target", "diffusers,comfy"]);
    assert_eq!(code, 0, "{r}");
}
