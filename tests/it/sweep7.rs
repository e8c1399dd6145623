//! What the sweeps with seeds 31/32 and wider draws found (fixtures/gen/sweep7_fixtures.py),
//! each against the real library: PEFT's own load of the folder, bitsandbytes' saved merge.

use super::common::*;

fn manifest() -> serde_json::Value {
    read_json(fixture("sweep7/MANIFEST.json"))
}

/// `lorakit check ADAPTER --base BASE --target peft --json`: (exit code, the PEFT target).
fn peft_check(case: &str) -> (i32, serde_json::Value) {
    let adapter = fixture(&format!("sweep7/{case}/adapter"));
    let base = fixture(&format!("sweep7/{case}/base"));
    let out = bin()
        .args(check_args(
            &adapter,
            &["--base", s(&base), "--target", "peft", "--json"],
        ))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{case}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v["targets"][0].clone())
}

/// PEFT `target_parameters` on MoE experts against a base transformers saved one tensor per
/// expert (Qwen2-MoE `mlp.experts.{e}.gate_proj`, Mixtral `block_sparse_moe.experts.{e}.w1` and
/// its router `block_sparse_moe.gate`, which PEFT's `all-linear` wraps as `mlp.gate`):
/// transformers fuses and renames them on load, and PEFT's `PeftModel.from_pretrained` loads
/// every tensor of the file (MANIFEST `peft_loads_all`). `check --target peft` said the expert
/// and router modules were names the base lacks (`peft.not_found`) while `merge` placed them.
#[test]
fn peft_check_places_experts_on_a_base_saved_per_expert() {
    let m = manifest();
    for case in ["qwen2_moe_experts", "mixtral_all_linear"] {
        assert_eq!(m[case]["peft_loads_all"], true, "{case}: PEFT's own load");
        let (code, t) = peft_check(case);
        assert_eq!(
            (code, &t["loads"], &t["applies_all"]),
            (
                0,
                &serde_json::Value::Bool(true),
                &serde_json::Value::Bool(true)
            ),
            "{case}: {t}"
        );
    }
}

/// A tied GPT-2 (no `lm_head` tensor on disk; its input embedding is `transformer.wte`) with
/// `modules_to_save=["lm_head"]`: PEFT loads the saved head onto the model's tied `lm_head`
/// (MANIFEST `peft_loads_all`); `check --target peft` looked for an `embed_tokens` tensor to
/// recognise the tie and called the head a name the base lacks.
#[test]
fn peft_check_knows_a_tied_gpt2_head() {
    assert_eq!(manifest()["gpt2_tied_head"]["peft_loads_all"], true);
    let (code, t) = peft_check("gpt2_tied_head");
    assert_eq!(
        (code, &t["loads"], &t["applies_all"]),
        (
            0,
            &serde_json::Value::Bool(true),
            &serde_json::Value::Bool(true)
        ),
        "{t}"
    );
}

/// `merge --quant keep` into an NF4 base with double quantization writes every tensor as
/// bitsandbytes does after PEFT's `merge_and_unload` (rank 1: no summation order to differ in),
/// including the quant_state JSON of a weight whose new `nested_offset` is a double exactly
/// halfway between two shortest digit strings: CPython writes the even one (`…812`), lorakit
/// wrote the upper (`…813`).
#[test]
fn nf4_merge_writes_a_halfway_offset_as_python_does() {
    let m = manifest();
    let tie = &m["nf4_tie"]["halfway_offsets"][0];
    let (_dir, out) = scratch("out");
    run_ok(merge_args(
        &fixture("sweep7/nf4_tie/base"),
        &fixture("sweep7/nf4_tie/adapter"),
        &out,
        &[],
    ));
    let got = read_checkpoint(&out);
    let want = read_checkpoint(&fixture("sweep7/nf4_tie/peft_merged"));
    let blob = format!(
        "{}.quant_state.bitsandbytes__nf4",
        tie["weight"].as_str().unwrap()
    );
    assert_eq!(
        String::from_utf8_lossy(&got[&blob].data),
        tie["blob"].as_str().unwrap()
    );
    assert_eq!(got.len(), want.len());
    for (k, w) in &want {
        let g = &got[k];
        assert!(
            g.dtype == w.dtype && g.shape == w.shape && g.data == w.data,
            "{k}: not bitsandbytes' bytes"
        );
    }
}

/// diffusion-pipe's HunyuanVideo form (`diffusion_model.` + Tencent's original names,
/// `.lora_A/.lora_B`, no alpha) on the top-level embedders: `vector_in.in_layer` is diffusers'
/// `time_text_embed.text_embedder.linear_1`, whose path the token refiner's
/// `context_embedder.time_text_embed.text_embedder.linear_1` ends with. lorakit refused the file
/// as ambiguous; it merges to diffusers' checkpoint converter applied to the original weights
/// plus up·down (f64, rounded once; fixtures/sweep7/hv_original).
#[test]
fn hunyuan_video_embedders_land_on_their_own_diffusers_paths() {
    let (_dir, out) = scratch("out");
    let base = fixture("sweep7/hv_original/base");
    run_ok(merge_args(
        &base,
        &fixture("sweep7/hv_original/dpipe_embedders.safetensors"),
        &out,
        &["--device", "cpu"],
    ));
    let want = read(&fixture(
        "sweep7/hv_original/dpipe_embedders_reference.safetensors",
    ));
    let n = assert_matches_reference(&read_checkpoint(&out), &read_checkpoint(&base), &want, 1e-6);
    assert_eq!(n, 5);
}

/// The same original names under `transformer.` and no `img_attn_qkv` key: diffusers'
/// HunyuanVideo loader converts a file only when a key contains `img_attn_qkv`, so PEFT finds
/// none of these modules and `load_lora_weights` raises NoMatchingPeftModuleError (MANIFEST);
/// `check --target diffusers` said it loads and applies everything.
#[test]
fn hunyuan_video_original_names_under_transformer_are_refused_by_diffusers() {
    let m = manifest();
    let load = m["hv_original"]["transformer_prefix"]["diffusers_load"]
        .as_str()
        .unwrap();
    assert!(load.starts_with("NoMatchingPeftModuleError"), "{load}");
    let out = bin()
        .args(check_args(
            &fixture("sweep7/hv_original/transformer_prefix.safetensors"),
            &["--target", "diffusers", "--json"],
        ))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &v["targets"][0];
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(t["loads"], false, "{t}");
    assert_eq!(
        field_strs(&t["findings"], "rule"),
        ["diffusers.hunyuan_video_refused"]
    );
}

/// `lorakit check FILE --target diffusers --json` on a fixture of hv_original: (exit code, the
/// target's `loads`, its rule ids).
fn diffusers_check(file: &str) -> (Option<i32>, serde_json::Value, Vec<String>) {
    let out = bin()
        .args(check_args(
            &fixture(&format!("sweep7/hv_original/{file}")),
            &["--target", "diffusers", "--json"],
        ))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &v["targets"][0];
    let rules = field_strs(&t["findings"], "rule")
        .into_iter()
        .map(str::to_owned)
        .collect();
    (out.status.code(), t["loads"].clone(), rules)
}

/// diffusion-pipe files diffusers does convert (an `img_attn_qkv` key): its converter treats
/// PEFT's `lora_A` as it treats `lora_B`. The final modulation's `lora_A` rows get their halves
/// swapped too, so at rank 2 it loads and fuses another ΔW (MANIFEST: `norm_out.linear` off the
/// converter's arithmetic by a relative 0.7); the token refiner's `self_attn_qkv.lora_A` is
/// chunked in three, and at rank 3 the load fails on a size mismatch. `check` said both apply.
#[test]
fn hunyuan_video_lora_a_chunked_by_diffusers_is_flagged() {
    let m = manifest();
    let fin = &m["hv_original"]["converted_final_mod"];
    assert_eq!(fin["diffusers_load"], "loaded");
    assert!(fin["norm_out_linear_rel_err"].as_f64().unwrap() > 0.1);
    let qkv = m["hv_original"]["converted_refiner_qkv"]["diffusers_load"]
        .as_str()
        .unwrap();
    assert!(qkv.contains("size mismatch"), "{qkv}");

    let (code, loads, rules) = diffusers_check("converted_final_mod.safetensors");
    assert_eq!(
        (code, loads, rules),
        (
            Some(1),
            serde_json::Value::Bool(true),
            vec!["diffusers.hunyuan_video_unconverted".to_owned()]
        )
    );
    let (code, loads, rules) = diffusers_check("converted_refiner_qkv.safetensors");
    assert_eq!(
        (code, loads, rules),
        (
            Some(1),
            serde_json::Value::Bool(false),
            vec!["diffusers.hunyuan_video_refused".to_owned()]
        )
    );
}

/// llama.cpp's `convert_lora_to_gguf.py` on PEFT `target_parameters` experts exits 1 ("Can not
/// map tensor" for the wrapper's keys, "Unprocessed experts" in Qwen2-MoE's converter;
/// MANIFEST): `check --target llama.cpp` said Qwen2-MoE's loads and applies everything.
#[test]
fn llama_cpp_check_refuses_peft_expert_parameters() {
    let m = manifest();
    for case in ["qwen2_moe_experts", "mixtral_all_linear"] {
        let conv = m[case]["convert_lora_to_gguf"].as_str().unwrap();
        assert!(conv.starts_with("exit 1: ValueError"), "{case}: {conv}");
        let out = bin()
            .args(check_args(
                &fixture(&format!("sweep7/{case}/adapter")),
                &[
                    "--base",
                    s(&fixture(&format!("sweep7/{case}/base"))),
                    "--target",
                    "llama.cpp",
                    "--json",
                ],
            ))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = &v["targets"][0];
        assert_eq!(
            (out.status.code(), &t["loads"]),
            (Some(1), &serde_json::Value::Bool(false)),
            "{case}: {t}"
        );
        assert!(
            field_strs(&t["findings"], "rule").contains(&"llama.cpp.expert_parameters"),
            "{case}: {t}"
        );
    }
}
