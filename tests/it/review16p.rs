//! Session 16's PEFT-name and `check` findings (review rev16b) fixed on branch fixp16
//! (fixtures/gen/review16_peft.py): `check` without `--base` judging only Llama-named adapters by
//! the Llama module list; adapters PEFT saved under the module names transformers 5 gives a
//! checkpoint at load (conversion_mapping.py) placed on the on-disk names.

use super::check::{check_json, fired, target};
use super::common::*;

/// `check --target vllm` (and SGLang, LoRAX) without `--base` on `all-linear` adapters of Phi-3
/// (fused `qkv_proj`, `gate_up_proj`) and OPT (`out_proj`, `fc1`, `fc2`): vLLM adapts every
/// `LinearBase` of the model (`get_supported_lora_modules`), and these are Phi-3's and OPT's own
/// linear layers; the Llama list cannot judge them without the base. Before: every such module
/// `vllm.unsupported_module` (FAILS), while the same folder with `--base` LOADS.
#[test]
fn check_without_base_judges_only_llama_names_by_the_llama_list() {
    for case in ["phi3_nobase", "opt_nobase"] {
        let adapter = fixture(&format!("review16/peft/{case}/adapter"));
        let (_, report) = check_json(&adapter, &["--target", "vllm,sglang,lorax"]);
        for t in ["vllm", "sglang", "lorax"] {
            let rule = format!("{t}.unsupported_module");
            assert!(
                !fired(target(&report, t)).contains(&rule),
                "{case}: {rule} fired: {report}"
            );
        }
    }
}

/// LoRAs PEFT saved under the names transformers 5.24 gives a checkpoint at load
/// (conversion_mapping.py): LLaVA's text model (`model.language_model.layers.N…`, on disk
/// `language_model.model.layers.N…`; Gemma-3, Mistral-3, PaliGemma share the converter) and ViT
/// (`vit.layers.N.attention.q_proj`, on disk `vit.encoder.layer.N.attention.attention.query`).
/// PEFT loads them on the saved base and merges; lorakit's merge equals its merge_and_unload,
/// and `check` says PEFT applies every module. Before: merge exit 2 (no base tensor
/// `model.language_model.layers.0.self_attn.q_proj.weight`), check `peft.not_found`.
#[test]
fn adapters_under_transformers_load_names_merge_as_peft() {
    let tmp = tempfile::tempdir().unwrap();
    for case in ["llava", "vit", "cliptext_hub"] {
        let (code, report) = merges_as_peft_and_loads(tmp.path(), case, 2);
        assert_eq!(code, 0, "{case}: {report}");
    }
}

/// Fixture `review16/peft/{case}` merged into `tmp`: `changed` tensors equal PEFT's
/// merge_and_unload (`merged.safetensors`) within 1e-6, and `check --target peft --base` says
/// PEFT loads it. Returns check's exit code and report.
fn merges_as_peft_and_loads(
    tmp: &std::path::Path,
    case: &str,
    changed: usize,
) -> (i32, serde_json::Value) {
    let dir = fixture(&format!("review16/peft/{case}"));
    let (base, adapter) = (dir.join("base"), dir.join("adapter"));
    let out = tmp.join(case);
    run_ok(merge_args(
        &base,
        &adapter,
        &out,
        &["--device", "cpu", "--quiet"],
    ));
    let want = dir.join("merged.safetensors");
    assert_eq!(
        assert_merged_matches(&out, &base, &want, 1e-6),
        changed,
        "{case}"
    );
    let (code, report) = check_json(&adapter, &["--target", "peft", "--base", s(&base)]);
    let peft = target(&report, "peft");
    assert_eq!(super::check::outcome(peft), "loads", "{case}: {report}");
    (code, report)
}

/// Adapters trained after `resize_token_embeddings` (32 -> 36 here), for which PEFT also saves
/// the embedding layers under their wrapper names: trainable tokens
/// (`embed_tokens.token_adapter.base_layer.weight` beside the token rows, and `lm_head.weight`)
/// and `modules_to_save` embeddings (`X.modules_to_save.weight` equal to the saved `X.weight`,
/// and `X.original_module.weight`). PEFT loads both folders on the resized base and merges;
/// lorakit's merge equals its merge_and_unload and `check` says PEFT applies everything. Before:
/// merge refused `model.embed_tokens.token_adapter.weight` (a), the four wrapper tensors (b).
#[test]
fn embedding_layers_saved_for_a_resized_vocabulary_merge_as_peft() {
    let tmp = tempfile::tempdir().unwrap();
    for (case, changed) in [("resized_tokens", 2), ("resized_mts", 3)] {
        merges_as_peft_and_loads(tmp.path(), case, changed);
    }
}

/// A `modules_to_save=["embed_tokens"]` adapter on a tied base: PEFT's ModulesToSaveWrapper
/// trains a copy, so its merge changes the embedding and leaves lm_head at the base's
/// (review16_peft.py checks the tie is broken). `--tied-embeddings shared` would change lm_head
/// too, so it is refused, with and without the flag, naming the untie, and no longer pointing at
/// `shared`. Before: `shared` merged it (lm_head changed with the embedding).
#[test]
fn tied_modules_to_save_embedding_is_not_merged_as_shared() {
    let dir = fixture("review16/peft/tied_mts");
    let (base, adapter) = (dir.join("base"), dir.join("adapter"));
    let tmp = tempfile::tempdir().unwrap();
    for extra in [&[][..], &["--tied-embeddings", "shared"][..]] {
        let out = tmp.path().join("out");
        let mut args = merge_args(&base, &adapter, &out, &["--device", "cpu", "--quiet"]);
        args.extend(extra.iter().map(|x| x.to_string()));
        let err = one_line_error(&run_exit(&args, 2));
        assert!(err.contains("ModulesToSaveWrapper"), "{extra:?}: {err}");
        assert!(
            !err.contains("--tied-embeddings shared"),
            "{extra:?}: {err}"
        );
        assert!(!out.exists(), "{extra:?}: nothing written");
    }
}

/// `modules_to_save=["embed_tokens", "lm_head"]` with `ensure_weight_tying` on a tied base: PEFT
/// keeps the tie (one wrapper, two bit-equal saved copies); `shared` writes its merge. Before:
/// refused, `lm_head.weight` having no base tensor.
#[test]
fn tied_modules_to_save_with_ensure_weight_tying_merges_as_shared() {
    let dir = fixture("review16/peft/tied_mts_ewt");
    let (base, adapter) = (dir.join("base"), dir.join("adapter"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let extra = ["--device", "cpu", "--quiet", "--tied-embeddings", "shared"];
    run_ok(merge_args(&base, &adapter, &out, &extra));
    let want = dir.join("merged.safetensors");
    assert_eq!(assert_merged_matches(&out, &base, &want, 1e-6), 2);
}
