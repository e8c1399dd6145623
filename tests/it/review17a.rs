//! Session 17's `--as-trained-on` findings (rev16a F11, F13) fixed on branch fixa17: the QLoRA
//! merge quantizes only the weights transformers' bitsandbytes quantizer converts, in the dtype
//! the QLoRA model was loaded in. References from fixtures/gen/review17_qlora.py: the tiny f32
//! base loaded by transformers 5.24 with `BitsAndBytesConfig(load_in_4bit=True)` (bitsandbytes
//! 0.50.2 on the CPU), the PEFT 0.21.2 adapter put on it, and per adapted module the weight PEFT
//! merges into (`dequantize_bnb_weight` on a `Linear4bit`, the float weight otherwise) plus
//! `get_delta_weight`, in f32 (`expected_<case>.safetensors`); `layers_<case>.json` names the
//! class transformers gave each layer.

use super::common::*;
use std::path::{Path, PathBuf};

fn case(rel: &str) -> PathBuf {
    fixture(&format!("review17/qlora/{rel}"))
}

/// lorakit's f32 merge against PEFT's: the same f32 values but for ΔW's own f32 rounding (PEFT
/// sums B·A in another order): at most 2.5e-7 apart on values below 1 (≤ 2 ulp; measured
/// ≤ 6e-8). Without the fixes the weights transformers leaves float were 1.1e-2 to 5.7e-2 off,
/// the bf16-loaded ones 2.5e-2.
const TOL: f32 = 2.5e-7;

/// Merges `adapter` into `base` with `--as-trained-on nf4` and `extra`, checks every reference
/// of `expected_<name>` within [`TOL`] and that the report calls a weight quantized exactly where
/// transformers made its layer a `Linear4bit`. Returns the report's entries by tensor.
fn check(
    name: &str,
    base: &str,
    adapter: &str,
    extra: &[&str],
) -> Vec<(String, serde_json::Value)> {
    let (_dir, out) = scratch("m");
    let mut args = vec!["--as-trained-on", "nf4", "--json"];
    args.extend_from_slice(extra);
    let report: serde_json::Value =
        serde_json::from_str(&merge_ok(&case(base), &case(adapter), &out, &args)).unwrap();
    compare(&out, name);
    let layers: serde_json::Value = read_json(case(&format!("layers_{name}.json")));
    let entries: Vec<(String, serde_json::Value)> = report["qlora"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    for (k, class) in layers.as_object().unwrap() {
        let e = &entries.iter().find(|(n, _)| n == k).expect(k).1;
        let quantized = class.as_str().unwrap().starts_with("Linear4bit");
        assert_eq!(
            e["not_quantized"].is_null(),
            quantized,
            "{k}: {e} vs {class}"
        );
    }
    entries
}

fn compare(out: &Path, name: &str) {
    let got = read_checkpoint(out);
    let want = read(&case(&format!("expected_{name}.safetensors")));
    for (k, w) in &want {
        let worst = got[k]
            .f32()
            .iter()
            .zip(w.f32())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("{name} {k}: max |lorakit − QLoRA model's merge| {worst:e}");
        assert!(worst <= TOL, "{name} {k}: {worst:e}");
    }
}

fn why(entries: &[(String, serde_json::Value)], k: &str) -> String {
    let e = &entries.iter().find(|(n, _)| n == k).expect(k).1;
    e["not_quantized"].as_str().unwrap_or_default().to_owned()
}

/// F11: the output embedding and an Embedding stay float in the QLoRA model
/// (`get_keys_to_not_convert`; bitsandbytes replaces nn.Linear/Conv1D only); q_proj is NF4. An
/// adapter saved without the base copies (`save_embedding_layers=False`) merges lm_head and
/// embed_tokens into W (before the fix, merged into dequant(Q(W)), both 1.1e-2 off).
#[test]
fn lm_head_and_embedding_merge_into_w_as_transformers_leaves_them_float() {
    let e = check("lmhead", "llama", "ad_lmhead", &[]);
    assert!(why(&e, "lm_head.weight").contains("output embedding"));
    assert!(why(&e, "model.embed_tokens.weight").contains("Embedding"));
}

/// F11: T5's `_keep_in_fp32_modules = ["wo"]` is added to `modules_to_not_convert`: both `wo`
/// stay float (they were 4.9e-2 / 5.7e-2 off), the q projections are NF4.
#[test]
fn t5_wo_in_keep_in_fp32_modules_is_not_quantized() {
    let e = check("t5", "t5", "ad_t5", &[]);
    for k in [
        "encoder.block.0.layer.1.DenseReluDense.wo.weight",
        "decoder.block.0.layer.2.DenseReluDense.wo.weight",
    ] {
        assert!(why(&e, k).contains("_keep_in_fp32_modules `wo`"), "{k}");
    }
}

/// `--as-trained-on-skip` is `llm_int8_skip_modules`: as in transformers, the list replaces the
/// default skips, so q_proj stays float and lm_head is quantized.
#[test]
fn skip_list_replaces_the_default_skips_as_llm_int8_skip_modules() {
    let e = check(
        "skip",
        "llama",
        "ad_lmhead",
        &["--as-trained-on-skip", "q_proj"],
    );
    assert!(why(&e, "model.layers.0.self_attn.q_proj.weight").contains("skip list"));
}

/// F13: the usual recipe loads the f32 checkpoint with `dtype=torch.bfloat16`: transformers casts
/// W to bf16 before bitsandbytes quantizes it and dequantizes to bf16, and the float lm_head is
/// bf16(W). `--trained-dtype bf16` merges into those; the default (transformers' `dtype="auto"`,
/// config.json's float32 here) quantizes the f32 W and is 2.3e-2 off that model's merge (as
/// lorakit was before, `--dtype bf16` or not: 2.5e-2).
#[test]
fn trained_dtype_bf16_merges_into_the_bf16_loaded_qlora_model() {
    let e = check("bf16", "llama", "ad_bf16", &["--trained-dtype", "bf16"]);
    for (k, v) in &e {
        assert_eq!(v["load_dtype"], "BF16", "{k}");
    }
    let (_dir, out) = scratch("auto");
    merge_ok(
        &case("llama"),
        &case("ad_bf16"),
        &out,
        &["--as-trained-on", "nf4", "-q"],
    );
    let (got, want) = (
        read_checkpoint(&out),
        read(&case("expected_bf16.safetensors")),
    );
    let k = "model.layers.0.self_attn.q_proj.weight";
    let worst = got[k]
        .f32()
        .iter()
        .zip(want[k].f32())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst > 1e-3,
        "the f32-loaded merge is {worst:e} from the bf16-loaded one"
    );
}

/// F13 with `_keep_in_fp32_modules`: T5 loaded with `dtype=torch.float16` keeps `wo` in f32
/// (modeling_utils.py `_get_dtype_plan`) and float; its q projections are quantized from f16(W)
/// and dequantized to f16. `--trained-dtype f16` merges `wo` into the f32 W, the q projections
/// into the f16 dequantization.
#[test]
fn trained_dtype_f16_keeps_t5_wo_in_f32_as_transformers_loads_it() {
    let e = check("t5f16", "t5", "ad_t5", &["--trained-dtype", "f16"]);
    for (k, v) in &e {
        let want = if k.ends_with(".wo.weight") {
            "F32"
        } else {
            "F16"
        };
        assert_eq!(v["load_dtype"], want, "{k}");
    }
}

/// A skip pattern that is not a regular expression (transformers compiles each as one) is refused
/// in one line naming the base and the pattern, exit 2, nothing written.
#[test]
fn a_skip_pattern_that_is_not_a_regex_is_refused() {
    let (_dir, out) = scratch("m");
    let o = run_exit(
        merge_args(
            &case("llama"),
            &case("ad_lmhead"),
            &out,
            &["--as-trained-on", "nf4", "--as-trained-on-skip", "q_proj,("],
        ),
        2,
    );
    let line = one_line_error(&o);
    assert!(line.contains("llama") && line.contains("`(`"), "{line}");
    assert!(!out.exists());
}
