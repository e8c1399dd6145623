//! `merge` against PEFT's own `merge_and_unload` results (fixtures/llama/merged, gpt2, conv) and
//! kohya references computed in float64 by the fixture generator.

use super::*;

#[test]
fn peft_qv_r8() {
    llama_case("qv_r8");
}

#[test]
fn peft_rslora_all_linear() {
    llama_case("rslora_all");
}

#[test]
fn peft_rank_and_alpha_patterns() {
    llama_case("patterns");
}

#[test]
fn peft_dora() {
    llama_case("dora");
}

#[test]
fn peft_embedding_lora() {
    llama_case("embed");
}

#[test]
fn peft_lora_bias() {
    merge_case(
        "llama/base_attn_bias",
        &[("llama/adapters/bias", 1.0)],
        "llama/merged/bias.safetensors",
    );
}

#[test]
fn peft_modules_to_save() {
    llama_case("modules_to_save");
}

#[test]
fn two_adapters_with_weights_match_peft_weighted_cat() {
    merge_case(
        "llama/base",
        &[
            ("llama/adapters/weighted_a", 0.7),
            ("llama/adapters/weighted_b", -0.4),
        ],
        "llama/merged/weighted.safetensors",
    );
    // PEFT's own cat adapter merged with weight 1 gives the same tensors.
    merge_case(
        "llama/base",
        &[("llama/adapters/weighted_cat", 1.0)],
        "llama/merged/weighted.safetensors",
    );
}

#[test]
fn gpt2_fan_in_fan_out() {
    merge_case(
        "gpt2/base",
        &[("gpt2/adapters/fifo", 1.0)],
        "gpt2/merged/fifo.safetensors",
    );
}

#[test]
fn peft_conv_1x1_and_3x3() {
    merge_case(
        "conv/base/model.safetensors",
        &[("conv/adapters/peft", 1.0)],
        "conv/merged/peft.safetensors",
    );
}

#[test]
fn kohya_text_encoder_with_missing_alpha() {
    merge_case(
        "kohya/te_base",
        &[("kohya/te_lora.safetensors", 1.0)],
        "kohya/merged_te.safetensors",
    );
}

#[test]
fn kohya_locon_conv() {
    merge_case(
        "conv/base/model.safetensors",
        &[("kohya/locon.safetensors", 1.0)],
        "kohya/merged_locon.safetensors",
    );
}

#[test]
fn peft_text_encoder_and_its_diffusers_kohya_conversion_agree() {
    merge_case(
        "kohya/te_base",
        &[("kohya/adapters/te_peft", 1.0)],
        "kohya/merged/te_peft.safetensors",
    );
    merge_case(
        "kohya/te_base",
        &[("kohya/te_from_peft.safetensors", 1.0)],
        "kohya/merged/te_peft.safetensors",
    );
}

/// A PEFT adapter on `lm_head` (r = 2, alpha = 4: s = 2): merged into an untied base it moves
/// `lm_head.weight` by exactly s·B·A (checked in f64 from the raw factors); on a tied base,
/// which has no `lm_head` tensor, it is an unmatched module whose reason names the tie.
#[test]
fn an_adapter_on_lm_head_merges_into_an_untied_base_and_is_refused_on_a_tied_one() {
    let dir = tempfile::tempdir().unwrap();
    let base = read(&fixture("llama/base/model.safetensors"));
    let head = &base["lm_head.weight"];
    let (vocab, hidden) = (head.shape[0], head.shape[1]);
    let r = 2;
    let a: Vec<f32> = (0..r * hidden)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01)
        .collect();
    let b: Vec<f32> = (0..vocab * r)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.02)
        .collect();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (ab, bb) = (bytes(&a), bytes(&b));
    let ad = dir.path().join("head-lora");
    std::fs::create_dir_all(&ad).unwrap();
    write_views(
        &ad.join("adapter_model.safetensors"),
        &[
            (
                "base_model.model.lm_head.lora_A.weight",
                safetensors::Dtype::F32,
                &[r, hidden],
                &ab,
            ),
            (
                "base_model.model.lm_head.lora_B.weight",
                safetensors::Dtype::F32,
                &[vocab, r],
                &bb,
            ),
        ],
    );
    std::fs::write(
        ad.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["lm_head"],
            "task_type": "CAUSAL_LM", "fan_in_fan_out": false, "bias": "none"}"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    merge_ok(&fixture("llama/base"), &ad, &out, &[]);
    let merged = read(&out.join("model.safetensors"))["lm_head.weight"].f32();
    let w0 = head.f32();
    let mut worst = 0f64;
    for i in 0..vocab {
        for j in 0..hidden {
            let delta: f64 = (0..r)
                .map(|k| b[i * r + k] as f64 * a[k * hidden + j] as f64)
                .sum::<f64>()
                * 2.0;
            let want = w0[i * hidden + j] as f64 + delta;
            worst = worst.max((merged[i * hidden + j] as f64 - want).abs());
        }
    }
    // One f32 rounding of W0 + ΔW (|W| < 1 here): half an ulp of 1 at most.
    assert!(worst <= 6e-8, "lm_head merged off by {worst:e}");
    assert_eq!(
        read(&out.join("model.safetensors"))["model.embed_tokens.weight"].data,
        base["model.embed_tokens.weight"].data
    );
    let tied_out = dir.path().join("tied-out");
    let err = merge_refused(&fixture("llama/tied"), &ad, &tied_out, &[]);
    assert_mentions(&err, &["lm_head", "tied"]);
    assert!(!dir.path().join("tied-out").exists());
}

/// PEFT trainable tokens (`trainable_token_indices`): `merge_and_unload` writes the stored rows
/// into the embedding by `index_copy`. The reference is PEFT's own merge
/// (fixtures/gen/peft_features_fixtures.py); the replaced rows must be the stored values bit
/// for bit (they are copied, not computed), in the config's order (unsorted, [0, 5, 7, 2]).
#[test]
fn peft_trainable_tokens_replace_rows() {
    llama_case("tokens");
    let dir = tempfile::tempdir().unwrap();
    let reference = read(&fixture("llama/merged/tokens.safetensors"));
    let want = reference["model.embed_tokens.weight"].clone();
    // The dict form names the module; it means the same rows.
    let with_ids = |ids: serde_json::Value| {
        adapter_with_config(dir.path(), "llama/adapters/tokens", move |cfg| {
            assert_eq!(
                cfg["trainable_token_indices"],
                serde_json::json!([0, 5, 7, 2])
            );
            cfg["trainable_token_indices"] = ids.clone();
        })
    };
    let adapter = with_ids(serde_json::json!({ "embed_tokens": [0, 5, 7, 2] }));
    for a in [fixture("llama/adapters/tokens"), adapter.clone()] {
        let out = dir.path().join("out");
        let _ = std::fs::remove_dir_all(&out);
        run_ok(merge_args(&fixture("llama/base"), &a, &out, &[]));
        let got = &read_checkpoint(&out)["model.embed_tokens.weight"];
        assert_eq!(got.data, want.data, "{}: embedding rows", a.display());
    }
    // Indices that do not fit the stored rows (one too few, or repeated) are refused.
    for bad in [
        serde_json::json!([0, 5, 7]),
        serde_json::json!([0, 5, 5, 2]),
    ] {
        let err = refused_merge(dir.path(), &with_ids(bad.clone()));
        assert!(err.contains("trainable_tokens_delta"), "{bad}: {err}");
    }
}

/// PEFT BD-LoRA (`use_bdlora`): block-diagonal lora_A (q_proj) and lora_B (v_proj) stored as
/// their stacked diagonal blocks, expanded on read; equal to PEFT's own `merge_and_unload`
/// (fixtures/gen/peft_features_fixtures.py). A block count that does not split the stored rows is
/// refused, naming the tensor.
#[test]
fn peft_block_diagonal_lora() {
    llama_case("bdlora");
    let dir = tempfile::tempdir().unwrap();
    let adapter = adapter_with_config(dir.path(), "llama/adapters/bdlora", |cfg| {
        cfg["use_bdlora"]["nblocks"] = serde_json::json!(3);
    });
    let err = refused_merge(dir.path(), &adapter);
    assert_mentions(&err, &["nblocks = 3", "q_proj.lora_A"]);
}

/// PEFT AdaLoRA (`peft_type` ADALORA), trained with its rank allocator so that the file is pruned
/// as real ones are (ranks 6, 4, 2 and 0 per module; fixtures/gen/peft_adalora_fixture.py):
/// `ΔW = B·(A ⊙ E)·lora_alpha / (init_r + 1e-5)` equals PEFT's reload + `merge_and_unload`, and
/// the pruned-away modules change nothing. `inspect` lists the kept modules with their ranks; a
/// lora_E that does not match lora_A's rows is refused by module.
#[test]
fn peft_adalora_pruned_ranks() {
    llama_case("adalora");
    let v = inspect_json(&fixture("llama/adapters/adalora"), &[]);
    let mut ranks: Vec<u64> = v["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["rank"].as_u64().unwrap())
        .collect();
    ranks.sort();
    assert_eq!(ranks, [2, 4, 6, 6]);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad");
    copy_dir(&fixture("llama/adapters/adalora"), &bad);
    let mut t = read(&bad.join("adapter_model.safetensors"));
    let k = "base_model.model.model.layers.0.mlp.down_proj.lora_E";
    t.get_mut(k).unwrap().shape = vec![2, 2];
    write_tensors(&bad.join("adapter_model.safetensors"), &t);
    let err = refused_merge(dir.path(), &bad);
    assert_mentions(&err, &["model.layers.0.mlp.down_proj", "lora_E"]);
}
