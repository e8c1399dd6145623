//! `check` (issue #19): lorakit's verdict per loader against what the loader does.
//!
//! PEFT and diffusers run here: `fixtures/gen/check_fixtures.py` ran them on every fixture and
//! recorded their outcome in `fixtures/check/MANIFEST.json` (PEFT: from_pretrained raised / warned
//! about missing or unexpected keys or left a file tensor out / loaded everything; diffusers: the
//! SD reader raised / dropped DoRA keys or kept keys under no pipeline component / loaded). The
//! tests compare lorakit's verdict with those records, case by case. vLLM, SGLang, LoRAX and
//! llama.cpp do not install here: their cases assert the rule read from their source, cited at
//! each case (the same citation is printed by `check` and kept in src/ops/check/rules.rs).
//! This file holds the verdict tests and the shared helpers; `fix.rs` holds the `--fix` tests.

use super::common::*;
use serde_json::Value;
use std::path::Path;

/// A kohya LoRA with bundled textual-inversion embeddings (`bundle_emb.…`).
mod bundle_emb;
/// Every rule of the tables fires on some fixture; the audited rules on one case and not another.
mod coverage;
/// diffusers' Flux.2, HunyuanVideo and Z-Image loaders, against its recorded runs.
mod diffusers_loaders;
/// `--fix` and the remaining single-file cases (split out to keep files under 800 lines).
mod fix;
/// `--fix` outputs loaded in PEFT and merged as the originals.
mod peft_fix;
/// PEFT folders whose peft_type is not LORA (AdaLoRA, LoHa, IA3) on a causal LM.
mod peft_types;
/// vLLM 0.34.0 and SGLang 0.5.23 rules, each case citing the line it was read from.
mod serving;

/// `lorakit check ADAPTER EXTRA… --json`, its exit status (0 or 1, asserted) and report.
pub(super) fn check_json(adapter: &Path, extra: &[&str]) -> (i32, Value) {
    let out = bin()
        .args(check_args(adapter, &[extra, &["--json"]].concat()))
        .output()
        .expect("spawn lorakit");
    let code = out.status.code().expect("exit code");
    let args = (adapter.display(), extra);
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

/// `check ADAPTER [--base BASE] [--target TARGETS] --fix --out OUT EXTRA… --json` (no
/// `--target` when `targets` is empty).
pub(crate) fn check_fix(
    adapter: &Path,
    base: Option<&Path>,
    targets: &str,
    out: &Path,
    extra: &[&str],
) -> (i32, Value) {
    let mut args = vec![];
    if let Some(b) = base {
        args.extend(["--base", s(b)]);
    }
    if !targets.is_empty() {
        args.extend(["--target", targets]);
    }
    args.extend(["--fix", "--out", s(out)]);
    args.extend_from_slice(extra);
    check_json(adapter, &args)
}

/// The targets of a report, in its order.
fn target_names(report: &Value) -> Vec<&str> {
    field_strs(&report["targets"], "target")
}

pub(super) fn target<'a>(report: &'a Value, name: &str) -> &'a Value {
    entry(&report["targets"], "target", name)
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

pub(super) fn manifest() -> Value {
    let text = std::fs::read(fixture("check/MANIFEST.json")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// Runs `check --target TGT` on every manifest case that recorded what the loader `tgt` did
/// (against the case's base when `with_base`) and hands `f` the case, that record and lorakit's
/// verdict for the target. Returns how many cases were compared.
fn each_recorded_case(
    tgt: &str,
    with_base: bool,
    mut f: impl FnMut(&str, &Value, &Value),
) -> usize {
    let m = manifest();
    let mut compared = 0;
    for (case, rec) in m["cases"].as_object().unwrap() {
        let Some(did) = rec.get(tgt) else {
            continue;
        };
        let a = fixture(case);
        let b = fixture(rec["base"].as_str().unwrap_or_default());
        let mut args = vec!["--target", tgt];
        if with_base {
            args.extend(["--base", s(&b)]);
        }
        let (_, r) = check_json(&a, &args);
        f(case, did, target(&r, tgt));
        compared += 1;
    }
    compared
}

#[test]
fn peft_verdicts_match_what_peft_did() {
    let mut seen = std::collections::BTreeSet::new();
    let compared = each_recorded_case("peft", true, |case, peft, t| {
        assert_eq!(
            outcome(t),
            peft["verdict"].as_str().unwrap(),
            "{case}: PEFT did {peft}, lorakit says {t}"
        );
        seen.insert(outcome(t));
    });
    assert!(compared >= 20, "only {compared} PEFT cases");
    // The matrix holds every outcome, so a constant verdict cannot pass.
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// llama.cpp's verdict is what convert_lora_to_gguf.py and `llama_cpp.Llama(lora_path=…)` + one
/// eval did on each LLM fixture (fixtures/gen/check_llamacpp_verdicts.py, llama-cpp-python
/// 0.3.36): "fails" where the converter refused it or the loader did not load it, else it
/// loads; and where PEFT loads it too, `same_as_peft` says whether llama.cpp's logits equal
/// PEFT's (every tensor applied at PEFT's scale: lorakit "loads") or not (lorakit "silent":
/// it loads and does something else).
#[test]
fn llamacpp_verdicts_match_what_llama_cpp_did() {
    let mut seen = std::collections::BTreeSet::new();
    let compared = each_recorded_case("llama.cpp", true, |case, l, t| {
        let want = l["verdict"].as_str().unwrap();
        let loads = if t["loads"].as_bool().unwrap() {
            "loads"
        } else {
            "fails"
        };
        assert_eq!(loads, want, "{case}: llama.cpp did {l}, lorakit says {t}");
        seen.insert(want.to_owned());
        if let Some(same) = l["same_as_peft"].as_bool() {
            let applies = if same { "loads" } else { "silent" };
            assert_eq!(
                outcome(t),
                applies,
                "{case}: llama.cpp did {l}, lorakit says {t}"
            );
            seen.insert(applies.to_owned());
        }
    });
    assert!(compared >= 30, "only {compared} llama.cpp cases");
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn diffusers_verdicts_match_what_diffusers_did() {
    let mut seen = std::collections::BTreeSet::new();
    each_recorded_case("diffusers", false, |case, d, t| {
        assert_eq!(
            outcome(t),
            d["verdict"].as_str().unwrap(),
            "{case}: diffusers did {d}, lorakit says {t}"
        );
        seen.insert(outcome(t));
    });
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// One documented rule: running `check` on the fixture `adapter` (with the fixture `base`) for
/// `target` gives `verdict` and fires `rule` (or no rule when `rule` is empty). Written
/// [`fails`], [`warns`] or [`loads`], one line a case.
#[derive(Clone, Copy)]
pub(super) struct Rule {
    adapter: &'static str,
    base: Option<&'static str>,
    target: &'static str,
    verdict: &'static str,
    rule: &'static str,
}

/// `adapter` fails by `rule`, whose target is the rule id up to its last dot (`llama.cpp.scale`:
/// llama.cpp).
pub(super) fn fails(adapter: &'static str, rule: &'static str) -> Rule {
    let target = rule.rsplit_once('.').expect("a rule id is TARGET.NAME").0;
    Rule {
        adapter,
        base: None,
        target,
        verdict: "fails",
        rule,
    }
}

/// `adapter` loads with a warning, `rule`.
pub(super) fn warns(adapter: &'static str, rule: &'static str) -> Rule {
    Rule {
        verdict: "loads_with_warnings",
        ..fails(adapter, rule)
    }
}

/// `adapter` loads on `target` and no rule fires.
pub(super) fn loads(adapter: &'static str, target: &'static str) -> Rule {
    Rule {
        adapter,
        base: None,
        target,
        verdict: "loads",
        rule: "",
    }
}

impl Rule {
    /// The same case checked against the fixture `base`.
    pub(super) fn on(self, base: &'static str) -> Rule {
        Rule {
            base: Some(base),
            ..self
        }
    }

    /// Runs `check` and asserts the verdict and the rule.
    pub(super) fn assert(&self) {
        let Rule {
            adapter,
            base,
            target: tgt,
            verdict,
            rule,
        } = *self;
        let a = fixture(adapter);
        let b = base.map(fixture);
        let mut args = vec!["--target", tgt];
        if let Some(b) = &b {
            args.extend(["--base", s(b)]);
        }
        let (_, r) = check_json(&a, &args);
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
}

/// [`Rule::assert`] for each case.
pub(super) fn assert_rules(cases: &[Rule]) {
    cases.iter().for_each(Rule::assert);
}

/// The cases against a base that vLLM and SGLang share, on the same fixtures (each server's
/// source is cited at the call): `qv_r8`'s F32 factors warn by `dtype` on a BF16 base and load
/// on the F32 one; a module the base lacks (`check/unknown_module`) fails by `unsupported`; an
/// embedding LoRA over added tokens fails by `vocab`.
pub(super) fn server_base_cases(
    target: &'static str,
    [dtype, unsupported, vocab]: [&'static str; 3],
) -> [Rule; 4] {
    [
        warns("llama/adapters/qv_r8", dtype).on("llama/base_bf16"),
        loads("llama/adapters/qv_r8", target).on("llama/base"),
        fails("check/unknown_module", unsupported).on("llama/base"),
        fails("check/added_tokens", vocab).on("llama/base"),
    ]
}

/// The wrong base: qv_r8 (hidden 64) against the Qwen2 fixture (hidden 32). Every LLM loader
/// refuses a LoRA whose factors do not fit the base layer — PEFT and SGLang through torch's
/// `copy_`/`load_state_dict` size check, vLLM's `set_lora` slicing into buffers of the base's
/// size, llama.cpp's `llama_adapter_lora_init` ("tensor '…' has incorrect shape (hint: maybe
/// wrong base model?)", src/llama-adapter.cpp) — and `--base`
/// lists every module as a shape mismatch with both shapes, not as applied.
#[test]
fn a_wrong_base_fails_every_llm_target_by_shape() {
    let a = fixture("llama/adapters/qv_r8");
    let b = fixture("llama/qwen2");
    let (code, r) = check_json(
        &a,
        &["--base", s(&b), "--target", "vllm,sglang,llama.cpp,peft"],
    );
    assert_eq!(code, 1, "{r}");
    for t in ["vllm", "sglang", "llama.cpp", "peft"] {
        let v = target(&r, t);
        assert_eq!(v["verdict"], "fails", "{t}: {v}");
        assert_eq!(fired(v), [format!("{t}.shape")], "{t}");
    }
    let modules = r["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 4, "{r}");
    for m in modules {
        assert_eq!(m["status"], "shape_mismatch", "{m}");
        let d = m["detail"].as_str().unwrap();
        assert_mentions(d, &["has shape [", "the adapter needs ["]);
    }
    // The same adapter on its own base applies everywhere.
    let (code, r) = check_json(
        &a,
        &[
            "--base",
            s(&fixture("llama/base")),
            "--target",
            "vllm,sglang,llama.cpp,peft",
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert!(r["modules"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["status"] != "shape_mismatch"));
}

#[test]
fn vllm_rules_read_from_its_source() {
    assert_rules(&[
        // vllm 0.34.0 peft_helper.py PEFTHelper._validate_features: "vLLM does not yet support DoRA."
        fails("llama/adapters/dora", "vllm.dora"),
        // same: "vLLM only supports modules_to_save being None."
        fails("llama/adapters/modules_to_save", "vllm.modules_to_save"),
        // utils.py parse_fine_tuned_lora_name: "… is unsupported LoRA weight" for .lora_B.bias
        fails("llama/adapters/bias", "vllm.lora_bias"),
        // peft_helper.py __post_init__: alpha/√r with use_rslora — rsLoRA is honoured.
        loads("llama/adapters/rslora_all", "vllm"),
        // PEFTHelper.get_rank_and_scaling (lora_weights.py from_config): rank_pattern and
        // alpha_pattern are matched as PEFT's get_pattern_key does, so every scale is PEFT's; the
        // largest rank (6) is within the default --max-lora-rank 16.
        loads("llama/adapters/patterns", "vllm"),
        // utils.py parse_fine_tuned_lora_name on every key: a LoRA variant's own tensors (KaSA
        // lora_diag, VeLoRA lora_velora_embed, MonteCLoRA lora_monteclora_sampler.*; PEFT's
        // saves) are "unsupported LoRA weight" (check said LOADS before, 2026-12-08 review).
        fails("llama/adapters/init_kasa", "vllm.variant_tensors"),
        fails("llama/adapters/init_velora", "vllm.variant_tensors"),
        fails("llama/adapters/init_monteclora", "vllm.variant_tensors"),
        // config/lora.py: max_lora_rank defaults to 16.
        warns("check/rank32", "vllm.rank_flag"),
        loads("check/rank7", "vllm"),
        // model_manager.py activate_adapter: a LoRA whose module name is not the model's
        // is never set (vllm #34186).
        fails("check/no_root_prefix", "vllm.not_applied").on("llama/base"),
    ]);
    // config/lora.py verify_with_model_config: lora_dtype "auto" = the model's dtype, so F32
    // factors on a BF16 base are applied in BF16 (a warning: it loads and applies).
    // lora_model.py check_unexpected_modules: w_proj is no linear layer of the model.
    // lora_model.py from_lora_tensors: embedding LoRA size must equal the vocabulary.
    assert_rules(&server_base_cases(
        "vllm",
        ["vllm.dtype", "vllm.unsupported_module", "vllm.vocab"],
    ));
}

#[test]
fn scale_rules_name_exactly_the_modules_whose_scale_changes() {
    // patterns: rank_pattern {k_proj: 2, layers.1.self_attn.q_proj: 6}, alpha_pattern
    // {v_proj: 3, layers.0.self_attn.o_proj: 5}, r 4, alpha 8. LoRAX uses alpha/r = 2
    // everywhere: wrong for k (8/2 = 4), layer-1 q (8/6), v (3/4) and layer-0 o (5/4): 6 modules.
    // vLLM 0.34.0 reads both patterns (PEFTHelper.get_rank_and_scaling): no scale rule.
    // llama.cpp uses the global alpha over each tensor's rank: only the alpha_pattern modules
    // (v_proj ×2, layer-0 o_proj) differ.
    let (_, r) = check_json(&fixture("llama/adapters/patterns"), &[]);
    let items = |tgt: &str, rule: &str| -> Vec<String> {
        let t = target(&r, tgt);
        let f = entry(&t["findings"], "rule", rule);
        f["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().split(':').next().unwrap().to_owned())
            .collect()
    };
    assert!(fired(target(&r, "vllm"))
        .iter()
        .all(|f| !f.contains("scale")));
    assert_eq!(items("lorax", "lorax.scale").len(), 6);
    assert_eq!(
        items("llama.cpp", "llama.cpp.scale"),
        vec![
            "model.layers.0.self_attn.o_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.1.self_attn.v_proj"
        ]
    );
    assert_rules(&[
        // rsLoRA: SGLang's alpha/r ignores use_rslora (lora.py), llama.cpp's alpha/rank too.
        fails("llama/adapters/rslora_all", "sglang.scale"),
        fails("llama/adapters/rslora_all", "llama.cpp.scale"),
        loads("llama/adapters/rslora_all", "lorax"),
    ]);
}

#[test]
fn sglang_lorax_llamacpp_rules_read_from_their_source() {
    assert_rules(&[
        // sglang lora.py LoRAAdapter.normalize_qkv_proj: q/k/v are stacked from q_proj, a missing k
        // zero-filled from v: q_proj without v_proj is a KeyError (weighted_b: k and q only).
        fails("llama/adapters/weighted_b", "sglang.q_without_v"),
        loads("llama/adapters/qv_r8", "sglang"),
        // sglang lora_manager.py validate_new_adapter: DoRA and added tokens refused.
        fails("llama/adapters/dora", "sglang.dora"),
        fails("check/added_tokens", "sglang.added_tokens").on("llama/base"),
        // lorax adapters/lora.py @a7394ba map_weights_for_model reads only lora_A/B.weight.
        fails("llama/adapters/dora", "lorax.dora"),
        fails("llama/adapters/embed", "lorax.embedding"),
        // LoraWeights.load returns None when one layer lacks the module type.
        fails("check/partial_layers", "lorax.partial_layers").on("llama/base"),
        // peft config.py _get_peft_type: KeyError without peft_type (fixtures/review22 MANIFEST);
        // vLLM never reads it.
        fails("review22/no_peft_type", "peft.peft_type"),
        // tuners_utils.py replicate_layers: layer_replication builds layer 2 from layer 1 before
        // loading, and PEFT loads its LoRA (MANIFEST `layer_repl`); LoRAX has no layer 2.
        loads("review22/layer_repl", "peft").on("llama/base"),
        fails("review22/layer_repl", "lorax.not_found").on("llama/base"),
        loads("review22/no_peft_type", "vllm"),
        // … and kasa_config is not read: KaSA's lora_diag and truncated base are left out; VeLoRA's
        // and MonteCLoRA's extra tensors are training-only (PEFT's merge is plain s·B·A too).
        fails("llama/adapters/init_kasa", "lorax.kasa"),
        loads("llama/adapters/init_velora", "lorax"),
        loads("llama/adapters/init_monteclora", "lorax"),
        loads("check/rank7", "lorax").on("llama/base"),
        // convert_lora_to_gguf.py @56bf500: "Not a lora_A or lora_B tensor" → exit 1.
        fails("llama/adapters/bias", "llama.cpp.lora_bias"),
        fails("llama/adapters/init_kasa", "llama.cpp.variant_tensors"),
        fails(
            "llama/adapters/init_monteclora",
            "llama.cpp.variant_tensors",
        ),
        fails(
            "llama/adapters/modules_to_save",
            "llama.cpp.modules_to_save",
        ),
        // modify_tensors: "lm_head is present in adapter, but is ignored in base model" (tied).
        fails("check/tied_lm_head", "llama.cpp.tied_lm_head").on("llama/tied"),
        loads("check/tied_lm_head", "peft").on("llama/tied"),
        // vLLM applies an lm_head LoRA on a tied base: the model class still has an `lm_head`
        // module (tied to embed_tokens) and declares it in `embedding_modules`; model_manager.py
        // `_create_lora_modules` wraps it and LogitsProcessorWithLoRA adds the LoRA to the logits
        // (vllm model_executor/models/qwen3.py, lora/model_manager.py, lora/layers/logits_processor.py).
        // It loads, with every module applied, as in PEFT.
        loads("check/tied_lm_head", "vllm").on("llama/tied"),
    ]);
    // Without the base, the tied rule is not guessed: listed as not evaluated.
    let (_, r) = check_json(&fixture("check/tied_lm_head"), &["--target", "llama.cpp"]);
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
    let (code, r) = check_json(&fixture("lycoris/loha.safetensors"), &[]);
    assert_eq!(target_names(&r), ["diffusers", "comfy"]);
    assert_eq!(target(&r, "comfy")["verdict"], "loads");
    assert_eq!(code, 1, "diffusers drops lycoris_ keys");
    assert_rules(&[
        fails("kohya/te_lora.safetensors", "vllm.format"),
        // A PEFT folder in ComfyUI: no alpha tensors, so scale 1 instead of alpha/r = 2
        // (comfy/weight_adapter/lora.py @6fd406f calculate_weight).
        fails("llama/adapters/qv_r8", "comfy.llm"),
        fails("conv/adapters/peft", "comfy.scale"),
        fails("kohya/adapters/te_peft", "comfy.peft_prefix"),
    ]);
}

#[test]
fn exit_status_and_targets() {
    // Everything loads everywhere: exit 0.
    let (code, r) = check_json(
        &fixture("llama/adapters/qv_r8"),
        &["--base", s(&fixture("llama/base"))],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["pass"], true);
    assert_eq!(r["targets"].as_array().unwrap().len(), 5);
    let placements = r["modules"].as_array().unwrap();
    assert_eq!(placements.len(), 4);
    assert!(placements.iter().all(|p| p["status"] == "exact"));
    // A warning alone (rank 32 in vLLM) keeps exit 0.
    let (code, _) = check_json(&fixture("check/rank32"), &["--target", "vllm"]);
    assert_eq!(code, 0);
    // Comma list and repetition, deduplicated, aliases accepted.
    let (code, r) = check_json(
        &fixture("llama/adapters/dora"),
        &["--target", "vllm,llamacpp", "--target", "vllm"],
    );
    assert_eq!(code, 1);
    assert_eq!(target_names(&r), ["vllm", "llama.cpp"]);
    // Text output: one verdict line per target, the rule and its source.
    let dora = fixture("llama/adapters/dora");
    let out = run_exit(check_args(&dora, &["--target", "vllm"]), 1);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_mentions(
        &text,
        &["vllm       FAILS", "vllm.dora", "vllm/lora/peft_helper.py"],
    );
}

#[test]
fn bad_input_is_one_line_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    // Unknown target.
    run_exit(
        check_args(&fixture("llama/adapters/qv_r8"), &["--target", "tgi"]),
        2,
    );
    // Unreadable adapter.
    let missing = dir.path().join("nope");
    let out = run_err(check_args(&missing, &[]));
    assert_eq!(out.status.code(), Some(2));
    one_line_error(&out);
    // Not an adapter (a base checkpoint).
    let out = run_err(check_args(&fixture("llama/base/model.safetensors"), &[]));
    assert_eq!(out.status.code(), Some(2));
    one_line_error(&out);
    // --fix onto the input itself is refused, nothing written.
    let copy = dir.path().join("a");
    copy_dir(&fixture("llama/adapters/patterns"), &copy);
    let before = listing(&copy);
    let out = run_err(check_args(&copy, &["--fix", "--out", s(&copy)]));
    assert_eq!(out.status.code(), Some(2));
    one_line_error(&out);
    assert_eq!(listing(&copy), before);
    // --drop-unmatched without --base.
    let out = run_err(check_args(
        &copy,
        &[
            "--fix",
            "--out",
            s(&dir.path().join("x")),
            "--drop-unmatched",
        ],
    ));
    assert_eq!(out.status.code(), Some(2));
    one_line_error(&out);
    assert!(!dir.path().join("x").exists());
}
