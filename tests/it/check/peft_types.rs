//! PEFT folders whose `peft_type` is not LORA, on a causal LM (rule `*.peft_type`,
//! `When::PeftTypeNotLora`): AdaLoRA (fixtures/llama/adapters/adalora: `lora_A`/`lora_E`/`lora_B`
//! without `.weight`), LoHa (check/peft_loha: `hada_*`) and IA3 (check/peft_ia3: `ia3_l`), the
//! last two written by PEFT 0.21.2 with fixtures/gen/check_peft_types_fixtures.py.
//!
//! PEFT loads and applies all three (recorded by that script in each VERDICT.json: no key
//! warning, logits changed) and llama.cpp's converter refuses all three (run by the same script:
//! `KeyError: 'lora_alpha'` for LoHa/IA3, "Not a lora_A or lora_B tensor" for AdaLoRA); those
//! verdicts are compared here. vLLM 0.34.0 and SGLang 0.5.23 do not install here, but the readers
//! that refuse these folders are plain Python and were run from the released sources
//! (fixtures/gen/check_peft_types_servers.py → check/peft_types_servers.json), compared here too.
//! LoRAX a7394ba (with the PEFT 0.4.0 it pins) does not run here: its verdict is the lines cited.

use super::{check_json, fired, fixture, one_line_error, outcome, read_json, run_exit, s, target};
use serde_json::Value;

const CASES: [(&str, &str, &str); 3] = [
    ("llama/adapters/adalora", "ADALORA", ".lora_E"),
    ("check/peft_loha", "LOHA", ".hada_w1_a"),
    ("check/peft_ia3", "IA3", ".ia3_l"),
];

const SERVING: &str = "vllm,sglang,lorax,llama.cpp,peft";

fn report(adapter: &str) -> Value {
    check_json(&fixture(adapter), &["--target", SERVING]).1
}

#[test]
fn non_lora_peft_types_fail_the_serving_stacks_and_load_in_peft() {
    for (adapter, peft_type, key) in CASES {
        let r = report(adapter);
        // vllm peft_helper.py:163-180 (from_dict: LoHa/IA3 configs lack lora_alpha; AdaLoRA's
        // rank_pattern masks fail __post_init__ :108-113) and utils.py:236 ("unsupported LoRA
        // weight"); sglang lora_config.py:43-44 (KeyError) and lora.py:67 (assert peft_type ==
        // "lora"); llama.cpp convert_lora_to_gguf.py:528 / :470-483, exit 1.
        serving_stacks_refuse_by_type(&r, adapter, peft_type, "base_model.model.", key);
        // PEFT itself loads every tuner it wrote: no rule.
        let t = target(&r, "peft");
        assert_eq!(outcome(t), "loads", "{adapter}: {t}");
        assert!(fired(t).is_empty(), "{adapter}: {t}");
    }
}

/// vLLM, SGLang and llama.cpp refuse `r` by its `peft_type` and LoRAX loads it applying
/// nothing (`*.peft_type`), each naming the type and its tensors (`prefix…`, one holding `key`).
fn serving_stacks_refuse_by_type(
    r: &Value,
    adapter: &str,
    peft_type: &str,
    prefix: &str,
    key: &str,
) {
    for (tgt, verdict) in [
        ("vllm", "fails"),
        ("sglang", "fails"),
        ("llama.cpp", "fails"),
        // lorax lora.py:75-84 reads the config with PEFT 0.4.0's LoraConfig.from_pretrained
        // (peft_type ignored) and lora.py:45-48 maps only `lora_A/lora_B.weight`: it loads
        // and applies nothing.
        ("lorax", "silent"),
    ] {
        let t = target(r, tgt);
        assert_eq!(outcome(t), verdict, "{adapter} {tgt}: {t}");
        let rule = format!("{tgt}.peft_type");
        let f = t["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["rule"] == rule.as_str())
            .unwrap_or_else(|| panic!("{adapter} {tgt}: no {rule} in {t}"));
        let item = f["items"][0].as_str().unwrap();
        assert!(
            item.starts_with(&format!("peft_type {peft_type}: {prefix}")) && item.contains(key),
            "{adapter} {tgt}: {item}"
        );
    }
}

#[test]
fn a_plain_lora_fires_no_peft_type_rule() {
    // qv_r8 says "peft_type": "LORA"; the same folder without the field is read as LORA by
    // vLLM/SGLang/LoRAX/llama.cpp, which never look at it; PEFT raises KeyError on it
    // (`peft.peft_type`, fixtures/review22/MANIFEST.json `no_peft_type`).
    let (_dir, copy) = super::scratch("no_type");
    super::copy_dir(&fixture("llama/adapters/qv_r8"), &copy);
    super::edit_json(copy.join("adapter_config.json"), |c| {
        c.as_object_mut().unwrap().remove("peft_type");
    });
    for (a, with_type) in [(fixture("llama/adapters/qv_r8"), true), (copy, false)] {
        let (code, r) = check_json(&a, &["--target", SERVING]);
        assert_eq!(code, i32::from(!with_type), "{r}");
        for t in r["targets"].as_array().unwrap() {
            let rules = fired(t);
            if t["target"] == "peft" && !with_type {
                assert_eq!(t["verdict"], "fails", "{t}");
                assert_eq!(rules, ["peft.peft_type"], "{t}");
            } else {
                assert_eq!(t["verdict"], "loads", "{t}");
                assert!(!rules.iter().any(|x| x.ends_with(".peft_type")), "{t}");
            }
        }
    }
}

/// lorakit's PEFT and llama.cpp verdicts are those PEFT 0.21.2 and llama.cpp's converter gave
/// (fixtures/gen/check_peft_types_fixtures.py), with the base.
#[test]
fn peft_types_verdicts_match_what_peft_and_llama_cpp_did() {
    let base = fixture("llama/base");
    let ada: Value = read_json(fixture("check/peft_types_llamacpp.json"));
    for (adapter, _, _) in CASES {
        let (_, r) = check_json(
            &fixture(adapter),
            &["--base", s(&base), "--target", "llama.cpp,peft"],
        );
        let lc = match adapter {
            "llama/adapters/adalora" => ada[adapter].clone(),
            _ => {
                let rec: Value = read_json(fixture(adapter).join("VERDICT.json"));
                assert_eq!(
                    outcome(target(&r, "peft")),
                    rec["peft"]["verdict"],
                    "{adapter}: PEFT did {rec}"
                );
                rec["llama.cpp"].clone()
            }
        };
        assert_eq!(
            outcome(target(&r, "llama.cpp")),
            lc["verdict"],
            "{adapter}: {lc}"
        );
        assert_eq!(lc["exit"], 1, "{adapter}: {lc}");
    }
}

/// vLLM's and SGLang's verdicts are what their own config and key readers did on the same
/// folders (fixtures/gen/check_peft_types_servers.py ran vLLM 0.34.0's `PEFTHelper.from_dict`
/// and `parse_fine_tuned_lora_name`, SGLang 0.5.23's `LoRAConfig` and `LoRAAdapter`'s
/// peft_type assert, from the released sources): an exception is "fails", none "loads".
#[test]
fn vllm_and_sglang_verdicts_match_what_their_readers_did() {
    let rec: Value = read_json(fixture("check/peft_types_servers.json"));
    let cases = rec["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 4, "{rec}");
    let mut seen = std::collections::BTreeSet::new();
    for (adapter, did) in cases {
        let (_, r) = check_json(&fixture(adapter), &["--target", "vllm,sglang"]);
        let raised = |v: &Value| v != "ok";
        let v = &did["vllm"];
        let vllm_fails = raised(&v["from_dict"]) || raised(&v["parse_fine_tuned_lora_name"]);
        let sglang_fails = raised(&did["sglang"]["load"]);
        for (tgt, fails) in [("vllm", vllm_fails), ("sglang", sglang_fails)] {
            let t = target(&r, tgt);
            let want = if fails { "fails" } else { "loads" };
            assert_eq!(outcome(t), want, "{adapter} {tgt}: {did} / {t}");
            let by_type = fired(t).contains(&format!("{tgt}.peft_type"));
            assert_eq!(by_type, fails, "{adapter} {tgt}: {t}");
            seen.insert(want);
        }
    }
    // qv_r8 loads in both: a constant verdict cannot pass.
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// Folders PEFT loads but whose weights lorakit cannot read (fixtures/gen/
/// check_peft_types_fixtures.py, PEFT 0.21.2): VeRA with `save_projection=False` (PEFT
/// regenerates `vera_A`/`vera_B` from a seed), FourierFT (only the spectrum is saved) and
/// prompt tuning (no weight update). `check` judges them from the config and tensor names
/// (`unread` says why, no module) instead of exiting 2: PEFT loads them (its VERDICT.json: no
/// key warning, logits changed), the serving stacks refuse them by `peft_type`; `--fix`, which
/// rewrites weights, is refused, and so is a NaN in a tensor lorakit does not otherwise read.
#[test]
fn unread_peft_types_are_judged_from_their_config() {
    let base = fixture("llama/base");
    for (adapter, peft_type, key) in [
        ("check/peft_vera_noproj", "VERA", ".vera_lambda_b"),
        ("check/peft_fourierft", "FOURIERFT", ".fourierft_spectrum"),
        // The same saved with `safe_serialization=False` (PEFT's pickle, `adapter_model.bin`).
        (
            "check/peft_fourierft_bin",
            "FOURIERFT",
            ".fourierft_spectrum",
        ),
        ("check/peft_prompt", "PROMPT_TUNING", "prompt_embeddings"),
    ] {
        let rec: Value = read_json(fixture(adapter).join("VERDICT.json"));
        assert_eq!(rec["peft"]["verdict"], "loads", "{adapter}: {rec}");
        for with_base in [false, true] {
            let mut args = vec!["--target", SERVING];
            if with_base {
                args.extend(["--base", s(&base)]);
            }
            let (code, r) = check_json(&fixture(adapter), &args);
            assert_eq!(code, 1, "{adapter}: {r}");
            assert_eq!(r["modules_count"], 0, "{adapter}: {r}");
            // A causal LM by the base's architecture, or without one by the config's
            // task_type (only the prompt-tuning config has one).
            let llm = with_base || peft_type == "PROMPT_TUNING";
            assert_eq!(
                r["kind"],
                if llm { "llm" } else { "other" },
                "{adapter}: {r}"
            );
            let why = r["unread"]
                .as_str()
                .unwrap_or_else(|| panic!("{adapter}: {r}"));
            assert!(why.contains(&format!("`{peft_type}`")), "{adapter}: {why}");
            assert_eq!(outcome(target(&r, "peft")), rec["peft"]["verdict"], "{r}");
            serving_stacks_refuse_by_type(&r, adapter, peft_type, "", key);
        }
        // Only PEFT asked for: no rule on the config fires (exit 0), and every rule on
        // modules is listed as not evaluated rather than passed (review 2026-12-07: PEFT
        // raises on a spectrum of another size or a base without the targets).
        let (code, r) = check_json(&fixture(adapter), &["--target", "peft", "--base", s(&base)]);
        assert_eq!(
            (code, r["pass"].as_bool()),
            (0, Some(true)),
            "{adapter}: {r}"
        );
        let skipped = target(&r, "peft")["not_evaluated"]
            .as_array()
            .unwrap()
            .clone();
        for rule in ["peft.not_found", "peft.shape", "peft.not_applied"] {
            assert!(skipped.contains(&rule.into()), "{adapter}: {rule} in {r}");
        }
    }
    // A LoRA folder that fails to read keeps its reader's error (no fallback).
    let (_dir, copy) = super::scratch("unread");
    let broken = copy.join("lora");
    super::copy_dir(&fixture("llama/adapters/qv_r8"), &broken);
    std::fs::write(
        broken.join("adapter_model.safetensors"),
        b"\x08\0\0\0\0\0\0\0{}",
    )
    .unwrap();
    let out = run_exit(["check", s(&broken), "--target", "peft"], 2);
    assert!(one_line_error(&out).contains("adapter_model.safetensors"));
    // A `peft_type` PEFT itself does not define: PEFT raises, so the refusal stands (exit 2).
    let unknown = copy.join("unknown");
    super::copy_dir(&fixture("check/peft_fourierft"), &unknown);
    super::edit_json(unknown.join("adapter_config.json"), |c| {
        c["peft_type"] = "NOT_A_TUNER".into();
    });
    let out = run_exit(["check", s(&unknown), "--target", "peft"], 2);
    assert!(one_line_error(&out).contains("NOT_A_TUNER"));
    // --fix would rewrite weights lorakit did not read.
    let fixed = copy.join("fixed");
    let out = run_exit(
        [
            "check",
            s(&fixture("check/peft_fourierft")),
            "--target",
            "vllm",
            "--fix",
            "--out",
            s(&fixed),
        ],
        2,
    );
    let err = one_line_error(&out);
    assert!(err.contains("cannot read") && !fixed.exists(), "{err}");
    // A NaN in the FourierFT spectrum (f32): refused, naming the tensor.
    let nan = copy.join("nan");
    super::copy_dir(&fixture("check/peft_fourierft"), &nan);
    let file = nan.join("adapter_model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&file, bytes).unwrap();
    let err = one_line_error(&run_exit(["check", s(&nan), "--target", "peft"], 2));
    assert!(
        err.contains("fourierft_spectrum") && err.contains("not finite"),
        "{err}"
    );
}
