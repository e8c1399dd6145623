//! The leftovers closed on branch gaps14 (fixtures/gen/gaps14_fixtures.py): a re-sharded
//! diffusers component named as diffusers names and finds it (`from_pretrained` loads it);
//! `--unmerge` of VeRA, SHiRA and RandLoRA, whose ΔW does not depend on the base's values, as
//! PEFT's `unmerge_adapter`.

use super::common::*;

/// `--max-shard-size` on a diffusers transformer: diffusers 0.42.1 opens only
/// `diffusion_pytorch_model.safetensors.index.json` (`_fetch_index_file`), so shards named
/// `model-*` with `model.safetensors.index.json` (what lorakit wrote before) do not load. The
/// names are diffusers' own `save_pretrained(max_shard_size=40000)`'s, and (with
/// `LORAKIT_DIFFUSERS_LOAD=1`) diffusers' `from_pretrained` loads the folder, every parameter
/// equal to the shards'.
#[test]
fn diffusers_shards_named_as_diffusers_and_load() {
    let (_dir, out) = scratch("out");
    merge_fixtures(
        "check/flux_tiny",
        "check/flux_lora.safetensors",
        &out,
        &["--quiet", "--max-shard-size", "40000"],
    );
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("gaps14/flux_shards.json")).unwrap())
            .unwrap();
    let got = listing(&out);
    let mut expected: Vec<String> = want["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    expected.push(want["index"].as_str().unwrap().to_owned());
    expected.push("config.json".into());
    expected.sort();
    assert_eq!(got, expected);
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join(want["index"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let mut files: Vec<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    files.sort();
    files.dedup();
    assert_eq!(serde_json::json!(files), want["weight_map_files"]);
    // lorakit reads its own output back as the same checkpoint.
    assert_eq!(
        read_checkpoint(&out).keys().collect::<Vec<_>>(),
        read_checkpoint(&fixture("check/flux_tiny"))
            .keys()
            .collect::<Vec<_>>()
    );
    // diffusers' own load (an import of ~11 s CPU, past a test module's budget): on request.
    if std::env::var("LORAKIT_DIFFUSERS_LOAD").as_deref() != Ok("1") {
        eprintln!("DIFFUSERS LOAD SKIPPED: set LORAKIT_DIFFUSERS_LOAD=1 to run fixtures/gen/gaps14_load.py");
    } else if let Some(py) = peft_python() {
        let v: serde_json::Value =
            serde_json::from_slice(&python_ok(&py, "gaps14_load.py", &[out.as_os_str()])).unwrap();
        assert_eq!(v["class"], "FluxTransformer2DModel", "{v}");
        assert_eq!(v["equal"], true, "{v}");
    }
}

/// `convert --to peft` and `resize` refuse VeRA, SHiRA and RandLoRA for what they are: their ΔW
/// needs no base values (they unmerge, above) but its shape comes from the base (VeRA's shared
/// `vera_A` is sliced to each module's input width, which the file does not record), so the
/// refusal no longer says the update "depends on the base weight"; OFT's still does.
#[test]
fn shared_projection_tuners_are_refused_lowering_for_the_right_reason() {
    let (_dir, [out]) = scratch_all(["out"]);
    for case in ["gaps10/vera", "gaps11/shira", "gaps11/randlora"] {
        let adapter = fixture(&format!("{case}/adapter"));
        for argv in [
            convert_args(&adapter, "peft", &out, &[]),
            resize_args(&adapter, &out, &["--rank", "4"]),
        ] {
            let e = refused(argv, &out);
            assert_mentions(&e, &["shared projections", "base weight's shape"]);
            assert!(!e.contains("depends on the base weight"), "{case}: {e}");
        }
    }
    let e = refused(
        resize_args(&fixture("gaps10/boft/adapter"), &out, &["--rank", "4"]),
        &out,
    );
    assert_mentions(&e, &["depends on the base weight", "cannot be lowered"]);
}

/// VeRA, SHiRA and RandLoRA: ΔW is built from the adapter alone (the base gives only its
/// shape), so `--unmerge` subtracts it as PEFT's `unmerge` does. lorakit's merge then unmerge
/// equals PEFT's `merge_adapter` then `unmerge_adapter` (both W0 up to f32 rounding); before
/// this branch it was refused as "depends on the base weight".
#[test]
fn vera_shira_randlora_unmerge_as_peft() {
    for (case, name) in [
        ("gaps10/vera", "vera"),
        ("gaps11/shira", "shira"),
        ("gaps11/randlora", "randlora"),
    ] {
        let (_dir, [merged, back]) = scratch_all(["merged", "back"]);
        let base = fixture("llama/base");
        let adapter = fixture(&format!("{case}/adapter"));
        merge_ok(&base, &adapter, &merged, &["--device", "cpu", "--quiet"]);
        merge_ok(
            &merged,
            &adapter,
            &back,
            &["--device", "cpu", "--quiet", "--unmerge"],
        );
        let got = read_checkpoint(&back);
        let w0 = read_checkpoint(&base);
        let peft = read(&fixture(&format!("gaps14/unmerge_{name}.safetensors")));
        let once = read_checkpoint(&merged);
        for (k, want) in &peft {
            assert_ne!(once[k].data, w0[k].data, "{name} {k}: the merge changed it");
            let e = rel_err(&got[k].f32(), &want.f32());
            assert!(e <= 1e-6, "{name} {k}: |lorakit − PEFT| relative {e:e}");
            let e0 = rel_err(&got[k].f32(), &w0[k].f32());
            assert!(e0 <= 1e-6, "{name} {k}: |unmerged − W0| relative {e0:e}");
        }
        assert_eq!(peft.len(), 3, "{name}");
    }
}

/// GLoRA on layers with a bias: PEFT merges `b' = b0 + b0·D + E + W0·C` beside the weight's
/// `W0 + W0 ⊙ A + B`, with C a low-rank column and D, E constants (the defaults) or all three
/// vectors; on the Llama q/v (a zero bias) and on TinyConvNet's fc (a bias not zero, so
/// `b0·D` counts). Before this branch a non-zero C, D or E was refused.
#[test]
fn glora_with_bias_merges_as_peft() {
    for (case, base, n) in [
        ("glora_bias", "llama/base_attn_bias", 8),
        ("glora_bias_vec", "llama/base_attn_bias", 8),
        ("glora_fc", "conv/base", 2),
        ("glora_fc_vec", "conv/base", 2),
    ] {
        assert_eq!(
            merge_matches_peft_fixture(&format!("gaps14/{case}"), base, &[]),
            n,
            "{case}"
        );
    }
}

/// TinyLoRA with several vectors: `weight_tying` 0 (PEFT's default, one vector per module) and
/// 0.5 (pairs of modules in `named_modules()` order, one pair across the two layers). Each
/// module's model-order position is found from its saved `tinylora_P` (torch.normal seeded by
/// `projection_seed` + position); the merge equals PEFT's. Before this branch: refused.
#[test]
fn tinylora_several_vectors_merge_as_peft() {
    for case in ["tinylora_wt0", "tinylora_wt05"] {
        assert_eq!(
            merge_matches_peft_fixture(&format!("gaps14/{case}"), "llama/base", &[]),
            6,
            "{case}"
        );
    }
}

/// TinyLoRA and HiRA cases PEFT loads that the seed search and the rank checks refused (rev15): several
/// vectors on a bf16 model, whose saved `tinylora_P` are the draws rounded to bf16, and `r = 40`
/// over modules PEFT builds at `min(r, out, in)` (40 and 32, each P drawn at that rank), and a
/// negative `projection_seed` (torch seeds with its two's complement; lorakit read 42); HiRA
/// with a `rank_pattern`, which PEFT's `dispatch_default` ignores for a new module.
#[test]
fn tinylora_and_hira_cases_peft_loads_merge_as_peft() {
    for (case, base) in [
        ("bf16_groups", "llama/base_bf16"),
        ("r_above", "llama/base"),
        ("neg_seed", "llama/base"),
        ("hira_pattern", "llama/base"),
    ] {
        assert_eq!(
            merge_matches_peft_fixture(&format!("rev15/{case}"), base, &[]),
            4,
            "{case}"
        );
    }
}

/// Super-Tuning saved without its positions (`save_precomputed_indices=False`): PEFT's reload
/// recomputes them by `torch.topk` over |W0| (the largest, or with `select_top=False` the
/// smallest; with `r` set the LoRA is added too) and lorakit does the same, equal to PEFT's
/// `merge_and_unload`. Before this branch it was refused.
#[test]
fn supertuning_without_positions_merges_as_peft() {
    for case in ["super_noidx", "super_noidx_low", "supra_noidx"] {
        assert_eq!(
            merge_matches_peft_fixture(&format!("gaps14/{case}"), "llama/base", &[]),
            4,
            "{case}"
        );
    }
}

/// Where |W0| ties decide torch.topk's choice (two of the largest magnitudes equal) lorakit
/// cannot know torch's order: refused naming the positions, nothing written.
#[test]
fn supertuning_without_positions_refuses_ties() {
    let (_dir, [base, out]) = scratch_all(["base", "out"]);
    std::fs::create_dir(&base).unwrap();
    std::fs::copy(fixture("llama/base/config.json"), base.join("config.json")).unwrap();
    let mut tensors = read_checkpoint(&fixture("llama/base"));
    let q = tensors
        .get_mut("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(q.dtype, safetensors::Dtype::F32);
    q.data[..4].copy_from_slice(&9.5f32.to_le_bytes());
    q.data[4..8].copy_from_slice(&(-9.5f32).to_le_bytes());
    write_tensors(&base.join("model.safetensors"), &tensors);
    let err = merge_refused(&base, &fixture("gaps14/super_noidx/adapter"), &out, &[]);
    assert_mentions(
        &err,
        &[
            "model.layers.0.self_attn.q_proj",
            "ties at flat positions 0 and 1",
            "save_precomputed_indices=True",
        ],
    );
}

/// BOFT with `boft_n_butterfly_factor` 2 (block size 4) and 3 (8 blocks): the factors composed
/// through PEFT's `block_butterfly_perm` permutations, equal to PEFT's own merge (its CUDA
/// block diagonal done in torch, fixtures/gen/gaps14_fixtures.py `FakeFbd`). Before this branch
/// they were refused.
#[test]
fn boft_several_butterfly_factors_merge_as_peft() {
    for case in ["boft_m2", "boft_m3"] {
        assert_eq!(
            merge_matches_peft_fixture(&format!("gaps14/{case}"), "llama/base", &[]),
            6,
            "{case}"
        );
    }
}
