//! Session 16's review findings on `eval`, `merge --weight` and `check` fixed on branch fixc16
//! (rev16b; fixtures/gen/review16_check.py, transformers 5.24 + PEFT 0.21.2 as the oracle):
//! trainable tokens on a tied base and on `lm_head` scored as PEFT scores them, a weight on a
//! replaced tensor refused, a T5/BART `lm_head` adapter on the `shared` tie, PiSSA on SGLang/LoRAX
//! and under `check --fix`, llama.cpp on a base architecture its converter lacks, a SEQ_CLS task
//! head, QALoRA's pooled file on GPTQ for SGLang/LoRAX and `merge`.

use super::check::{fails, loads};
use super::common::*;

fn f(rel: &str) -> std::path::PathBuf {
    fixture(&format!("review16/check/{rel}"))
}

/// `eval --logits` of `adapter` on `model` (unmerged, or `--merged`) against PEFT's logits.
fn eval_matches_peft(model: &str, adapter: &str, want: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let want = read(&f(want))["logits"].f32();
    let (ad, ids) = (f(adapter), f("ids.safetensors"));
    for extra in [&[][..], &["--merged"]] {
        let out = tmp.path().join("logits.safetensors");
        let mut args = vec![
            "--adapter",
            s(&ad),
            "--input-ids",
            s(&ids),
            "--logits",
            s(&out),
            "--device",
            "cpu",
            "-q",
        ];
        args.extend(extra);
        run_ok(eval_args(&f(model), &args));
        let got = read(&out)["logits"].f32();
        assert_eq!(got.len(), want.len());
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff < 1e-5,
            "{adapter} {extra:?}: max |logits − PEFT's| {diff}"
        );
    }
}

/// F12: `trainable_token_indices=[3, 7]` on a Qwen2 with tie_word_embeddings. PEFT ties the
/// token adapter to the tied lm_head (`peft/tuners/trainable_tokens/model.py:55-95`), so vocab
/// columns 3 and 7 of the logits change too. Before: lorakit kept the old lm_head rows (1.56
/// off PEFT's logits here, up to 3 in the review).
#[test]
fn trainable_tokens_on_a_tied_base_reach_the_output_rows() {
    eval_matches_peft("qwen2_tied", "tti", "tti_logits.safetensors");
}

/// F12 (related): `trainable_token_indices={"lm_head": [2, 9]}` (PEFT's TrainableTokens on the
/// output Linear) on an untied Llama. Before: refused ("apply to the input embedding here").
#[test]
fn trainable_tokens_on_lm_head_are_scored() {
    eval_matches_peft("llama", "tti_lmhead", "tti_lmhead_logits.safetensors");
}

/// F13: a weight ≠ 1 on an adapter with trainable-token rows (a tensor replacement, which has
/// no weighted form: PEFT's `add_weighted_adapter` combines only the low-rank modules) is
/// refused by `merge` and `eval`, naming the tensor. Before: `--weight 0` replaced the rows.
#[test]
fn a_weight_on_a_replaced_tensor_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for w in ["0", "0.5"] {
        let out = tmp.path().join(format!("m{w}"));
        let line = merge_refused(
            &f("llama"),
            &f("tti_lmhead"),
            &out,
            &["--weight", w, "--quiet"],
        );
        assert_mentions(&line, &["lm_head", "--weight 1"]);
        let logits = tmp.path().join(format!("l{w}.safetensors"));
        let line = one_line_error(&run_err(eval_args(
            &f("llama"),
            &[
                "--adapter",
                s(&f("tti_lmhead")),
                "--weight",
                w,
                "--input-ids",
                s(&f("ids.safetensors")),
                "--logits",
                s(&logits),
                "--device",
                "cpu",
            ],
        )));
        assert_mentions(&line, &["lm_head", "--weight 1"]);
        assert!(!logits.exists());
    }
}

/// F9: BART stores no `lm_head.weight` (tied to `model.shared.weight`); PEFT wraps the model's
/// lm_head and applies a modules_to_save copy or a LoRA on it (the generator measures the merged
/// lm_head moving by 0.32 / 0.19). Before: `peft.not_found`.
#[test]
fn bart_lm_head_on_the_shared_tie_loads_in_peft() {
    for case in ["review16/check/bart_mts", "review16/check/bart_lora_head"] {
        loads(case, "peft").on("review16/check/bart").assert();
    }
}

/// F10: PiSSA's factors belong on the residual base PEFT rebuilds at load; SGLang
/// (`lora_config.py` LoRAConfig) and LoRAX (`adapters/lora.py` LoraConfig.load) read no
/// `init_lora_weights` and add s·B·A to the original base. Before: both LOADS.
#[test]
fn pissa_is_silent_on_sglang_and_lorax() {
    for rule in ["sglang.init_weights", "lorax.init_weights"] {
        fails("review16/check/pissa", rule).assert();
    }
}

/// F8: llama.cpp's converter looks `architectures[0]` up in `TEXT_MODEL_MAP`
/// (`conversion/__init__.py:391-399`) and exits 1 "Model OPTForCausalLM is not supported"
/// (`convert_lora_to_gguf.py:398-405`); a Llama base still loads. Before: OPT LOADS.
#[test]
fn llamacpp_refuses_a_base_architecture_its_converter_lacks() {
    fails("review16/check/opt_lora", "llama.cpp.architecture")
        .on("review16/check/opt")
        .assert();
    loads("llama/adapters/qv_r8", "llama.cpp")
        .on("llama/base")
        .assert();
}

/// F11: a SEQ_CLS LoRA trained from a causal-LM folder saves the new `score` head
/// (modules_to_save, peft 0.21.2 `peft_model.py:1830`); PEFT's task model on that folder creates
/// the head and loads it from the adapter (the generator asserts it). Before: `peft.not_found`.
#[test]
fn a_task_head_of_a_seq_cls_adapter_loads_in_peft() {
    loads("review16/check/seqcls", "peft")
        .on("review16/check/llama")
        .assert();
}

/// F10 (related): `check --fix` on a PiSSA folder would fold its scale 2 into lora_B and keep
/// `init_lora_weights: "pissa"`, so PEFT would rebuild another residual base from it (0.07 off
/// the original's merge in the review). It is refused, nothing written. Before: written, rc 0.
#[test]
fn check_fix_refuses_to_rescale_a_pissa_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fixed");
    let line = refused(
        check_fix_args(&f("pissa"), None, &out, &["--target", "vllm"]),
        &out,
    );
    assert_mentions(&line, &["pissa", "check --fix"]);
}

/// rev16a F12: PEFT's pooled QALoRA file (fix13/qalora_pooled, lora_A [4, in/16]) on the GPTQ
/// base loads only in PEFT; SGLang and LoRAX read a plain LoRA (no `use_qalora`) and fail on the
/// pooled width; `merge` gives its QALoRA refusal (PEFT has no QALoRA merge), not a shape
/// mismatch. Before: both LOADS, and "has shape [64, 128], the adapter needs [64, 8]".
#[test]
fn pooled_qalora_on_gptq_fails_on_sglang_and_lorax() {
    for rule in ["sglang.qalora", "lorax.qalora"] {
        fails("fix13/qalora_pooled/adapter", rule)
            .on("quant/gptq4_v1")
            .assert();
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let line = merge_fixtures_refused("quant/gptq4_v1", "fix13/qalora_pooled/adapter", &out, &[]);
    assert_mentions(
        &line,
        &["use_qalora", "GPTQ", "model.layers.0.mlp.down_proj.weight"],
    );
    assert!(!line.contains("the adapter needs"), "{line}");
}
