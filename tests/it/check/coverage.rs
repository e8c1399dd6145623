//! No silent rule: every rule id in lorakit's tables (`lorakit::ops::check::rules::RULES`) fires
//! on some case of the fixture matrix, and the rules an audit found unfired each have a case that
//! fires them and one that does not, with the loader's outcome on both.
//!
//! Where the loader runs here its outcome is the recorded one (`fixtures/check/MANIFEST.json`,
//! written by fixtures/gen/check_fixtures.py running PEFT and diffusers on the same files);
//! elsewhere the line of the loader's source that decides it is cited at the case: vLLM 0.34.0
//! (sdist, `_version.py` commit g62d4bc3c7), SGLang 0.5.23 (wheel), LoRAX `predibase/lorax`
//! a7394ba, llama.cpp as vendored by the llama-cpp-python 0.3.36 sdist.

use super::{check_json, entry, fired, fixture, manifest, outcome, read_json, s, strs, target};
use std::collections::BTreeSet;

/// One rule: on `fires` (adapter, base) the target's outcome is `verdict` and the rule fires; on
/// `quiet` the outcome is `quiet_verdict` and the rule does not fire.
struct Case {
    rule: &'static str,
    fires: (&'static str, Option<&'static str>),
    verdict: &'static str,
    quiet: (&'static str, Option<&'static str>),
    quiet_verdict: &'static str,
}

const BASE: Option<&str> = Some("llama/base");

const CASES: &[Case] = &[
    // vllm/lora/model_manager.py:378-393 (activate_adapter): LoRA is looked up for each module of
    // the model by its name; weights for `layers.5` of a 2-layer model are loaded and never set.
    // PEFT, run on the same file, leaves them out too (MANIFEST: silent).
    Case {
        rule: "vllm.not_found",
        fires: ("check/layer_past_base", BASE),
        verdict: "silent",
        quiet: ("check/rank7", BASE),
        quiet_verdict: "loads",
    },
    // vllm/lora/peft_helper.py:200-209 (validate_legal): max(r, rank_pattern) > max_lora_rank
    // raises; vllm/config/lora.py:26 MaxLoRARanks ends at 512. Rank 32 needs only the flag.
    Case {
        rule: "vllm.max_rank",
        fires: ("check/rank513", None),
        verdict: "fails",
        quiet: ("check/rank32", None),
        quiet_verdict: "loads",
    },
    // lorax adapters/lora.py:45-48 (map_weights_for_model): only
    // `base_model.model.{name}.lora_A.weight` is looked up, `continue` otherwise. PEFT leaves
    // these keys out as well (MANIFEST: silent).
    Case {
        rule: "lorax.key_prefix",
        fires: ("check/no_peft_prefix", None),
        verdict: "silent",
        quiet: ("check/rank7", None),
        quiet_verdict: "loads",
    },
    // lorax models/flash_llama.py:55-79 (adapter_target_to_layer): names only the model's own
    // layers; lora.py:45-48 looks up nothing else.
    Case {
        rule: "lorax.not_found",
        fires: ("check/layer_past_base", BASE),
        verdict: "silent",
        quiet: ("check/rank7", BASE),
        quiet_verdict: "loads",
    },
    // lorax models/flash_llama.py:26 ADAPTER_LAYERS: q/k/v/o, gate/up/down, lm_head (no w_proj).
    Case {
        rule: "lorax.unsupported_module",
        fires: ("check/unknown_module", None),
        verdict: "silent",
        quiet: ("check/rank7", None),
        quiet_verdict: "loads",
    },
    // lorax adapters/lora.py:45-48: lora_A.weight and lora_B.weight only (no lora_B.bias).
    Case {
        rule: "lorax.lora_bias",
        fires: ("llama/adapters/bias", None),
        verdict: "silent",
        quiet: ("llama/adapters/qv_r8", None),
        quiet_verdict: "loads",
    },
    // same lines: a full tensor (modules_to_save) is no lora_A/lora_B pair.
    Case {
        rule: "lorax.modules_to_save",
        fires: ("llama/adapters/modules_to_save", None),
        verdict: "silent",
        quiet: ("llama/adapters/qv_r8", None),
        quiet_verdict: "loads",
    },
    // ComfyUI comfy/lora.py @41444b5 load_lora: a key no entry of the model's key map
    // (model_lora_keys_clip: the text model's layers 0-1) names prints "lora key not loaded".
    Case {
        rule: "comfy.not_found",
        fires: ("check/te_extra_layer.safetensors", Some("kohya/te_base")),
        verdict: "silent",
        quiet: ("kohya/te_lora.safetensors", Some("kohya/te_base")),
        quiet_verdict: "loads",
    },
    // comfy/lora.py load_lora reads lora_A/lora_B pairs; lora_B.bias is left over (and the
    // adapter is an LLM's: comfy.llm fires on both).
    Case {
        rule: "comfy.extra_keys",
        fires: ("llama/adapters/bias", None),
        verdict: "fails",
        quiet: ("llama/adapters/qv_r8", None),
        quiet_verdict: "fails",
    },
    // diffusers, run on the folder's safetensors (MANIFEST): every key stays under no pipeline
    // component; a kohya text-encoder file converts and loads. (Not kohya/te_lora.safetensors:
    // its layers_1 v_proj has no `.alpha`, and diffusers applies it at the file's alpha 2 / 4, not
    // kohya's 1: `diffusers.alpha_lost`, found running load_lora_into_text_encoder on
    // kohya/te_base; the MANIFEST recorder compares keys only.)
    Case {
        rule: "diffusers.peft_prefix",
        fires: ("kohya/adapters/te_peft", None),
        verdict: "silent",
        quiet: ("kohya/te_from_peft.safetensors", None),
        quiet_verdict: "loads",
    },
    // sglang lora/lora.py:282-300 (normalize_qkv_proj) stacks from q_proj only; utils.py:298-300
    // maps k/v_proj targets to qkv_proj; mem_pool.py:983 get_target_module_name(k_proj, {qkv_proj})
    // raises "Cannot find target module name" (utils.py:368).
    Case {
        rule: "sglang.kv_without_q",
        fires: ("check/kv_only", None),
        verdict: "fails",
        quiet: ("llama/adapters/weighted_cat", None),
        quiet_verdict: "loads",
    },
    // sglang lora/lora.py:462-499 (normalize_gate_up_proj) stacks from gate_proj, orphan up_proj
    // kept; utils.py:302-303 maps up_proj to gate_up_proj; mem_pool.py:983 raises as above.
    Case {
        rule: "sglang.up_without_gate",
        fires: ("check/up_down", None),
        verdict: "fails",
        quiet: ("check/gate_up_down", None),
        quiet_verdict: "loads",
    },
    // sglang lora/lora.py:83-87 one slot per num_hidden_layers, lora.py:176-178
    // self.layers[get_layer_id(name)]: layer 5 of a 2-layer base is an IndexError.
    Case {
        rule: "sglang.layer_past_base",
        fires: ("check/layer_past_base", BASE),
        verdict: "fails",
        quiet: ("check/rank7", BASE),
        quiet_verdict: "loads",
    },
    // llama.cpp convert_lora_to_gguf.py:470-483 (get_tensors): lora_magnitude_vector is
    // "Not a lora_A or lora_B tensor", sys.exit(1).
    Case {
        rule: "llama.cpp.dora",
        fires: ("llama/adapters/dora", None),
        verdict: "fails",
        quiet: ("llama/adapters/qv_r8", None),
        quiet_verdict: "loads",
    },
    // llama.cpp conversion/base.py:627-630 (map_tensor_name): `model.layers.5.…` of a 2-block
    // base maps to no GGUF tensor: "Can not map tensor", the converter stops.
    Case {
        rule: "llama.cpp.not_found",
        fires: ("check/layer_past_base", BASE),
        verdict: "fails",
        quiet: ("check/rank7", BASE),
        quiet_verdict: "loads",
    },
    // PEFT, run (check/untargeted/VERDICT.json: merge_and_unload changes q_proj only, no warning).
    Case {
        rule: "peft.untargeted",
        fires: ("check/untargeted", BASE),
        verdict: "silent",
        quiet: ("llama/adapters/qv_r8", BASE),
        quiet_verdict: "loads",
    },
    // diffusers, run (pipeline_sd1/MANIFEST.json diffusers_load: 10 of the stray file's 12
    // tensors loaded, "unexpected keys" logged for the module the UNet lacks; the clean file's
    // text-encoder modules are not the UNet's, and load whole).
    Case {
        rule: "diffusers.not_in_base",
        fires: ("pipeline_sd1/stray.safetensors", Some("pipeline_sd1/unet")),
        verdict: "silent",
        quiet: ("pipeline_sd1/clean.safetensors", Some("pipeline_sd1/unet")),
        quiet_verdict: "loads",
    },
    // diffusers, run (te_alpha/MANIFEST.json raised): LyCORIS' `lycoris_` prefix is not
    // converted, and load_lora_weights raises on its `.alpha` keys ("… contain 'lora'
    // substring"); without them it loads and builds no LoRA layer.
    Case {
        rule: "diffusers.key_without_lora",
        fires: ("te_alpha/lycoris_prefix.safetensors", None),
        verdict: "fails",
        quiet: ("te_alpha/lycoris_prefix_noalpha.safetensors", None),
        quiet_verdict: "silent",
    },
    // PEFT, run (MANIFEST: silent, "Found missing adapter keys").
    Case {
        rule: "peft.key_prefix",
        fires: ("check/no_peft_prefix", BASE),
        verdict: "silent",
        quiet: ("check/rank7", BASE),
        quiet_verdict: "loads",
    },
];

fn run(rule: &str, (adapter, base): (&str, Option<&str>)) -> serde_json::Value {
    let tgt = rule.rsplit_once('.').unwrap().0;
    let a = fixture(adapter);
    let b = base.map(fixture);
    let mut args = vec!["--target", tgt];
    if let Some(b) = &b {
        args.extend(["--base", s(b)]);
    }
    target(&check_json(&a, &args).1, tgt).clone()
}

#[test]
fn each_audited_rule_fires_on_one_case_and_not_on_another() {
    for c in CASES {
        let t = run(c.rule, c.fires);
        assert_eq!(outcome(&t), c.verdict, "{}: {t}", c.rule);
        assert!(fired(&t).iter().any(|r| r == c.rule), "{}: {t}", c.rule);
        let t = run(c.rule, c.quiet);
        assert_eq!(outcome(&t), c.quiet_verdict, "{} (quiet case): {t}", c.rule);
        assert!(!fired(&t).iter().any(|r| r == c.rule), "{}: {t}", c.rule);
    }
}

/// The outcomes the loaders that run here gave on the cases above agree with the table: a
/// verdict written into it cannot drift from the recorded one.
#[test]
fn audited_cases_agree_with_the_recorded_loaders() {
    let m = manifest();
    let cases = m["cases"].as_object().unwrap();
    let mut compared = 0;
    for c in CASES {
        let tgt = c.rule.rsplit_once('.').unwrap().0;
        for ((adapter, _), verdict) in [(c.fires, c.verdict), (c.quiet, c.quiet_verdict)] {
            if let Some(rec) = cases.get(adapter).and_then(|r| r.get(tgt)) {
                assert_eq!(rec["verdict"], verdict, "{adapter} {tgt}: {rec}");
                compared += 1;
            }
        }
    }
    // peft.key_prefix and diffusers.peft_prefix, both cases each.
    assert!(compared >= 4, "only {compared} recorded outcomes compared");
}

/// Fixtures outside MANIFEST.json, with the base they are checked on: the dtype cases, whose
/// loaders' verdicts fixtures/gen/check_dtype_load.py and check_diffusers_dtype.py record, and
/// the non-LoRA PEFT folders (check_peft_types_fixtures.py).
const EXTRA: &[(&str, Option<&str>)] = &[
    ("check/dtype_f64", BASE),
    ("check/dtype_f8", BASE),
    ("check/dtype_f64_unet.safetensors", None),
    ("check/untargeted", BASE),
    // peft.quant_layer_variant: DoRA on a GPTQ base (tests/it/review16q.rs).
    ("llama/adapters/dora", Some("quant/gptq4_v1")),
    // fixtures/gen/check_peft_types_fixtures.py (VERDICT.json): the `*.peft_type` rules.
    ("check/peft_loha", BASE),
    // PEFT's KaSA save (lora_diag): the `*.variant_tensors` rules and `lorax.kasa`.
    ("llama/adapters/init_kasa", None),
    // fixtures/gen/review22_fixtures.py: a LoRA config without peft_type (`peft.peft_type`).
    ("review22/no_peft_type", None),
    // fixtures/gen/bundle_emb_fixtures.py: embeddings bundled in a kohya LoRA.
    ("bundle_emb/bundle.safetensors", None),
    // fixtures/gen/diffusers_sweep_fixtures.py (MANIFEST.json): the diffusers key-conversion rules.
    ("diffusers_sweep/sdxl_kohya_add_embedding.safetensors", None),
    ("diffusers_sweep/sdxl_te2_untyped.safetensors", None),
    ("diffusers_sweep/sd1_kohya_te_q_fc1.safetensors", None),
    ("diffusers_sweep/sdxl_old_mixed.safetensors", None),
    // fixtures/gen/diffusers_formats_fixtures.py: diffusers.flux_kohya_global.
    ("diffusers_formats/flux_kohya_global.safetensors", None),
    // fixtures/gen/gguf_arch.py: llama.cpp.gemma_lm_head (tests/it/gguf/sweep.rs).
    ("gguf/hf_gemma/lm_head", Some("gguf/hf_gemma")),
    // fixtures/gen/sd3_layout_fixtures.py (MANIFEST.json): diffusers.sd3_unconverted and
    // diffusers.sd3_invalid (tests/it/conventions_layouts.rs).
    ("sd3_layout/kohya.safetensors", None),
    ("sd3_layout/comfy.safetensors", None),
    // fixtures/gen/diffusers_loaders_fixtures.py (MANIFEST.json): the Flux.2, HunyuanVideo and
    // Z-Image loaders' rules (tests/it/check/diffusers_loaders.rs).
    ("diffusers_loaders/flux2_kohya.safetensors", None),
    ("diffusers_loaders/flux2_comfy_alpha.safetensors", None),
    ("diffusers_loaders/hunyuan_video_kohya.safetensors", None),
    (
        "diffusers_loaders/hunyuan_video_kohya_no_qkv.safetensors",
        None,
    ),
    ("diffusers_loaders/z_image_kohya.safetensors", None),
    ("diffusers_loaders/z_image_comfy_alpha.safetensors", None),
    // fixtures/gen/diffusion8_fixtures.py: the Lumina 2, LTX-Video, HiDream and fal Kontext
    // loaders' rules and diffusers.flux_or_hunyuan_video (tests/it/diffusion8.rs).
    ("diffusion8/lumina2_wide/kohya.safetensors", None),
    ("diffusion8/lumina2_wide/alpha.safetensors", None),
    ("diffusion8/ltx_video/mixed.safetensors", None),
    ("diffusion8/hidream/mixed.safetensors", None),
    ("diffusion8/flux_kontext/fal.safetensors", None),
    ("diffusion8/flux_hunyuan_video/kohya.safetensors", None),
    // fixtures/gen/diffusion9_fixtures.py: diffusers.flux_control_refused (tests/it/diffusion9.rs).
    ("diffusion9/flux_control/bfl.safetensors", None),
    // diffusers.lumina2_or_z_image: a tiny Lumina 2 file, no base.
    ("diffusion8/lumina2/comfy.safetensors", None),
    // diffusers.ltx2_dropped.
    ("diffusion9/ltx2/mixed.safetensors", None),
    // diffusers.flux3_dropped.
    ("diffusion9/flux3/mixed.safetensors", None),
    // fixtures/gen/diffusion10_fixtures.py: diffusers.flux2_final_unswapped and
    // diffusers.flux2_lokr_rebuilt (with the Flux.2 base; tests/it/diffusion10.rs).
    (
        "diffusion10/flux2_lokr/aitk_final.safetensors",
        Some("diffusion10/flux2_lokr/base.safetensors"),
    ),
    (
        "diffusion10/flux2_lokr/lycoris_rebuilt.safetensors",
        Some("diffusion10/flux2_lokr/base.safetensors"),
    ),
    // fixtures/gen/diffusion11_fixtures.py: diffusers.converted_refused (an Anima file with
    // `.alpha` keys) and diffusers.converted_dropped (kohya Anima names; tests/it/diffusion11.rs).
    ("diffusion11/anima/comfy.safetensors", None),
    ("diffusion11/anima/kohya.safetensors", None),
    // comfy.shape: a Flux control LoRA on the base it widens (tests/it/diffusion12.rs).
    (
        "diffusion12/flux_control/diffusers.safetensors",
        Some("diffusion12/flux_control/base"),
    ),
    // fixtures/gen/flux_mixture_fixtures.py: diffusers.flux_mixture (a block's norm1.linear)
    // and diffusers.flux_mixture_unet (a lora_unet_ module beside them; tests/it/flux_mixture.rs).
    ("flux_mixture/norm.safetensors", None),
    ("flux_mixture/unet.safetensors", None),
    // diffusers.te_rank (fixtures/gen/sweep10_fixtures.py, tests/it/sweep10.rs).
    ("sweep10/te_projection_rank/rank2.safetensors", None),
    // fixtures/gen/sweep7_fixtures.py (MANIFEST.json): llama.cpp.expert_parameters.
    (
        "sweep7/qwen2_moe_experts/adapter",
        Some("sweep7/qwen2_moe_experts/base"),
    ),
    // fixtures/gen/sweep8_fixtures.py (MANIFEST.json): peft.base_layer_unwrapped.
    (
        "sweep8/bias_of_second_adapter/adapter",
        Some("sweep8/bias_of_second_adapter/base"),
    ),
    // fixtures/gen/sweep15_fixtures.py (MANIFEST.json: ComfyUI's own verdicts): the comfy rules
    // for LyCORIS modules it loads but does not apply as trained (tests/it/sweep15.rs).
    ("sweep15/ia3.safetensors", None),
    ("sweep15/lokr_tucker.safetensors", None),
    ("sweep15/dora_out.safetensors", None),
    ("sweep15/oft_rescale.safetensors", None),
    // fixtures/gen/review16_check.py (tests/it/review16c.rs): sglang/lorax.init_weights (PiSSA),
    // llama.cpp.architecture (an OPT base); sglang/lorax.qalora (PEFT's pooled QALoRA on GPTQ).
    ("review16/check/pissa", None),
    ("review16/check/opt_lora", Some("review16/check/opt")),
    ("fix13/qalora_pooled/adapter", Some("quant/gptq4_v1")),
    // fixtures/gen/review17_diffusion.py (tests/it/review17s.rs): diffusers.alpha_lost,
    // diffusers.unet_none_placed, diffusers.conv_factors_2d.
    ("review17/diffusion/dynalpha.safetensors", None),
    ("review17/diffusion/unet_named.safetensors", None),
    (
        "review17/diffusion/conv1x1_2d.safetensors",
        Some("review16/diffusion/unet"),
    ),
];

/// check/untargeted as PEFT itself loaded it (fixtures/gen/check_untargeted_fixture.py): the
/// verdict is PEFT's, and the modules `peft.untargeted` lists are exactly those whose weights
/// PEFT's merge left unchanged.
#[test]
fn untargeted_modules_are_the_ones_peft_dropped() {
    let rec: serde_json::Value = read_json(fixture("check/untargeted/VERDICT.json"));
    let t = run("peft.untargeted", ("check/untargeted", BASE));
    assert_eq!(outcome(&t), rec["peft_verdict"], "{t}");
    let finding = entry(&t["findings"], "rule", "peft.untargeted");
    let changed: Vec<&str> = strs(&rec["peft_changed"]);
    let items = finding["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{finding}");
    for i in items {
        let m = i.as_str().unwrap();
        assert!(
            !changed.iter().any(|c| c.starts_with(m)),
            "{m} was applied by PEFT"
        );
    }
}

/// Every rule id of the tables fires on some case of the fixture matrix (each MANIFEST case
/// with its base where one is recorded, and `EXTRA`; every target): a rule added without a
/// fixture that fires it fails here.
#[test]
fn every_rule_in_the_tables_fires_on_the_fixture_matrix() {
    let declared: BTreeSet<&str> = lorakit::ops::check::rules::RULES
        .iter()
        .flat_map(|t| t.iter())
        .map(|r| r.id)
        .collect();
    let m = manifest();
    let mut seen = BTreeSet::new();
    let cases = m["cases"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(case, rec)| (case.as_str(), rec.get("base").and_then(|b| b.as_str())));
    for (case, base) in cases.chain(EXTRA.iter().copied()) {
        let a = fixture(case);
        let b = base.map(fixture);
        let all = "vllm,sglang,lorax,llama.cpp,diffusers,comfy,peft";
        let mut args = vec!["--target", all];
        if let Some(b) = &b {
            args.extend(["--base", s(b)]);
        }
        let (_, r) = check_json(&a, &args);
        for t in r["targets"].as_array().unwrap() {
            seen.extend(fired(t));
        }
    }
    let never: Vec<&&str> = declared.iter().filter(|id| !seen.contains(**id)).collect();
    assert!(never.is_empty(), "rules no fixture fires: {never:?}");
    assert!(
        seen.iter().all(|id| declared.contains(id.as_str())),
        "{seen:?}"
    );
}

/// `diffusers.not_in_base`'s text-encoder branch: a module of a three-layer CLIP in a file
/// loaded onto the tiny pipeline's two-layer encoder (`pipeline_sd1/stray_te.safetensors`,
/// fixtures/gen/pipeline_base_fixtures.py; MANIFEST `diffusers_load`: 10 of its 12 tensors
/// loaded). Judged with the text encoder as base; a UNet base cannot say (the file names one
/// text encoder, which the UNet is not), and the rule is then not evaluated (review 2026-12-07:
/// it had passed).
#[test]
fn a_text_encoder_module_the_encoder_base_lacks_is_not_in_base() {
    let rec = read_json(fixture("pipeline_sd1/MANIFEST.json"));
    let did = &rec["diffusers_load"]["stray_te"];
    assert_eq!(
        (&did["loaded"], &did["tensors"]),
        (&10.into(), &12.into()),
        "{did}"
    );
    let t = run(
        "diffusers.not_in_base",
        (
            "pipeline_sd1/stray_te.safetensors",
            Some("pipeline_sd1/text_encoder"),
        ),
    );
    assert_eq!(outcome(&t), "silent", "{t}");
    assert_eq!(fired(&t), ["diffusers.not_in_base"], "{t}");
    let items = t["findings"][0]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{t}");
    let item = items[0].as_str().unwrap();
    assert!(
        item.starts_with("text_encoder.encoder.layers.2.self_attn.q_proj (not in "),
        "{item}"
    );
    for (adapter, base) in [
        (
            "pipeline_sd1/clean.safetensors",
            "pipeline_sd1/text_encoder",
        ),
        ("pipeline_sd1/stray_te.safetensors", "pipeline_sd1/unet"),
    ] {
        // Nothing of the base's component is missing; the other component's modules, which
        // it lacks, it cannot judge: not evaluated rather than a pass.
        let t = run("diffusers.not_in_base", (adapter, Some(base)));
        assert_eq!(outcome(&t), "loads", "{adapter} on {base}: {t}");
        let skipped = t["not_evaluated"].as_array().unwrap();
        assert!(skipped.contains(&"diffusers.not_in_base".into()), "{t}");
    }
}
