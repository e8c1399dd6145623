//! The PEFT tuners closed on branch gaps11 (fixtures/gen/gaps11_fixtures.py), each against
//! PEFT 0.21.2's own reload + `merge_and_unload` of a tiny seeded adapter on fixtures/llama/base:
//! MiSS (plain with a remainder, `bat`, `mini`), SHiRA, C3A, GraLoRA (with and without its
//! hybrid LoRA) and RandLoRA merge as PEFT does; RandLoRA without its saved bases is refused; bad shapes and indices are refused naming the tensor;
//! serving loaders' `check` refuses them all and `inspect` names the type.

use super::common::*;
/// `check ADAPTER --target TARGET --json`: the report.
use super::gaps10::peft_type_refused_by_loaders;

/// MiSS, r = 3 on 64- and 128-wide inputs: `ΔW[o, c] = block[c mod 3, o]`, the last column
/// past the whole shards included. Before: "is `MISS`; lorakit reads … (not `MISS` yet)".
#[test]
fn miss_merges_as_peft_with_a_remainder() {
    assert_eq!(
        merge_matches_peft_fixture("gaps11/miss", "llama/base", &[]),
        6
    );
}

/// MiSS `bat`: `W0 + W0_blk·B[p] + B[p]` per 4×4 block, and `mini`: the [4, 8] block repeated
/// down the rows.
#[test]
fn miss_bat_and_mini_merge_as_peft() {
    assert_eq!(
        merge_matches_peft_fixture("gaps11/miss_bat", "llama/base", &[]),
        6
    );
    assert_eq!(
        merge_matches_peft_fixture("gaps11/miss_mini", "llama/base", &[]),
        6
    );
}

/// SHiRA: the saved values added at the saved (int32) positions.
#[test]
fn shira_merges_as_peft() {
    assert_eq!(
        merge_matches_peft_fixture("gaps11/shira", "llama/base", &[]),
        6
    );
}

/// C3A: the block-circulant ΔW (`kernel[p, q, (t − u) mod b] / in`), built exactly where PEFT
/// goes through FFTs.
#[test]
fn c3a_merges_as_peft() {
    assert_eq!(
        merge_matches_peft_fixture("gaps11/c3a", "llama/base", &[]),
        6
    );
}

/// GraLoRA: k×k blocks `B_{j,n}·A_{n,j}` times alpha / (r + h), with and without the hybrid
/// LoRA.
#[test]
fn gralora_merges_as_peft_with_and_without_hybrid() {
    assert_eq!(
        merge_matches_peft_fixture("gaps11/gralora", "llama/base", &[]),
        6
    );
    assert_eq!(
        merge_matches_peft_fixture("gaps11/gralora_hybrid", "llama/base", &[]),
        6
    );
}

/// RandLoRA: the shared bases scaled by each module's λ and γ, `UB·UA` on q_proj/v_proj
/// (in ≤ out) and its transpose on down_proj (in > out). Before: "is `RANDLORA`; lorakit reads
/// … (not `RANDLORA` yet)".
#[test]
fn randlora_merges_as_peft_in_both_orientations() {
    assert_eq!(
        merge_matches_peft_fixture("gaps11/randlora", "llama/base", &[]),
        6
    );
}

/// RandLoRA without its saved bases (`save_projection` false: PEFT regenerates them from
/// `projection_prng_key`) is refused naming the seed; a layer's copy of the bases that differs
/// from the shared one is refused naming it.
#[test]
fn randlora_without_bases_or_with_a_stray_copy_is_refused() {
    let base = fixture("llama/base");
    let (_dir, out) = scratch("out");
    let dir = tempfile::tempdir().unwrap();
    let noproj = dir.path().join("noproj");
    copy_dir(&fixture("gaps11/randlora/adapter"), &noproj);
    let cfg = noproj.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("\"save_projection\": true"));
    std::fs::write(
        &cfg,
        text.replace("\"save_projection\": true", "\"save_projection\": false"),
    )
    .unwrap();
    let err = merge_refused(&base, &noproj, &out, &[]);
    assert_mentions(
        &err,
        &["RANDLORA", "projection_prng_key", "save_projection"],
    );

    let stray = dir.path().join("stray");
    copy_dir(&fixture("gaps11/randlora/adapter"), &stray);
    let file = stray.join("adapter_model.safetensors");
    let mut t = read(&file);
    let key = "base_model.model.model.layers.1.self_attn.v_proj.randlora_B";
    let b = t.get_mut(key).unwrap();
    b.data[..4].copy_from_slice(&1.5f32.to_le_bytes());
    write_tensors(&file, &t);
    let err = merge_refused(&base, &stray, &out, &[]);
    assert_mentions(&err, &[key, "base_model.randlora_B"]);
}

/// BOFT with `boft_block_size` 1 (PEFT accepts it): each 1×1 rotation is the identity, so the
/// merge is `W0 ⊙ boft_s`. Before: "shape [1, 64, 1, 1] is not [1, n, b, b]".
#[test]
fn boft_block_size_one_merges_as_peft() {
    assert_eq!(
        merge_matches_peft_fixture("gaps11/boft_b1", "llama/base", &[]),
        6
    );
}

/// A SHiRA position outside the base, a MiSS `mini` block whose width is not `mini_r` and a
/// GraLoRA pair that does not fit are refused naming the tensor; nothing is written.
#[test]
fn bad_shapes_and_positions_are_refused_naming_the_tensor() {
    let base = fixture("llama/base");
    let (_dir, out) = scratch("out");
    let dir = tempfile::tempdir().unwrap();

    let shira = dir.path().join("shira");
    copy_dir(&fixture("gaps11/shira/adapter"), &shira);
    let file = shira.join("adapter_model.safetensors");
    let mut t = read(&file);
    let key = "base_model.model.model.layers.0.self_attn.v_proj.shira_indices";
    let idx = t.get_mut(key).unwrap();
    // The first row index (int32, little-endian) past v_proj's 32 rows.
    idx.data[..4].copy_from_slice(&40i32.to_le_bytes());
    write_tensors(&file, &t);
    let err = merge_refused(&base, &shira, &out, &[]);
    assert_mentions(
        &err,
        &[
            "model.layers.0.self_attn.v_proj",
            "[32, 64]",
            "needs [41, 64]",
        ],
    );

    let mini = dir.path().join("mini");
    copy_dir(&fixture("gaps11/miss_mini/adapter"), &mini);
    let cfg = mini.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"mini_r\": 8", "\"mini_r\": 4")).unwrap();
    let err = merge_refused(&base, &mini, &out, &[]);
    assert_mentions(&err, &["miss_block", "mini_r = 4"]);

    let gra = dir.path().join("gra");
    copy_dir(&fixture("gaps11/gralora/adapter"), &gra);
    let file = gra.join("adapter_model.safetensors");
    let mut t = read(&file);
    let key = "base_model.model.model.layers.0.self_attn.q_proj.gralora_B";
    t.get_mut(key).unwrap().shape = vec![2, 16, 16];
    write_tensors(&file, &t);
    let err = merge_refused(&base, &gra, &out, &[]);
    assert_mentions(&err, &["model.layers.0.self_attn.q_proj", "gralora_B"]);
}

/// Serving loaders read LoRA only: `check` refuses every new type by the existing
/// `*.peft_type` rules, and `inspect` names the type and the algorithm.
#[test]
fn loaders_refuse_and_inspect_names_the_new_types() {
    for (case, ty, algo) in [
        ("miss", "MISS", "miss"),
        ("miss_bat", "MISS", "miss"),
        ("shira", "SHIRA", "shira"),
        ("c3a", "C3A", "full"),
        ("gralora", "GRALORA", "full"),
        ("randlora", "RANDLORA", "randlora"),
    ] {
        let v = peft_type_refused_by_loaders(&fixture(&format!("gaps11/{case}/adapter")), ty);
        assert_eq!(v["modules"][0]["algo"], algo, "{v:#}");
    }
}

/// Bone (`peft_type` BONE of older PEFT releases; 0.21.2 no longer has it) merged by the same code as
/// MiSS (huggingface/peft@093b431 `tuners/bone/layer.py`: `get_delta_weight_bone` and `bat`'s
/// `get_delta_weight` are MiSS's with `bone_block` for `miss_block`): the MiSS fixtures renamed
/// to Bone's key and type merge to PEFT's MiSS merge; `mini`, which Bone never had, is refused.
#[test]
fn bone_folders_merge_as_their_miss_twins() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["miss", "miss_bat"] {
        let bone = dir.path().join(case).join("adapter");
        copy_dir(&fixture(&format!("gaps11/{case}/adapter")), &bone);
        let cfg = bone.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.contains("\"peft_type\": \"MISS\""));
        std::fs::write(
            &cfg,
            text.replace("\"peft_type\": \"MISS\"", "\"peft_type\": \"BONE\""),
        )
        .unwrap();
        let file = bone.join("adapter_model.safetensors");
        let t = read(&file)
            .into_iter()
            .map(|(k, v)| (k.replace(".miss_block", ".bone_block"), v))
            .collect();
        write_tensors(&file, &t);
        let (_o, out) = scratch("out");
        let base = fixture("llama/base");
        run_ok(merge_args(
            &base,
            &bone,
            &out,
            &["--device", "cpu", "--quiet"],
        ));
        let peft = read(&fixture(&format!("gaps11/{case}/merged.safetensors")));
        let got = read_checkpoint(&out);
        assert_eq!(
            assert_matches_reference(&got, &read_checkpoint(&base), &peft, 1e-6),
            6
        );
    }
    let mini = dir.path().join("mini");
    copy_dir(&fixture("gaps11/miss_mini/adapter"), &mini);
    let cfg = mini.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"peft_type\": \"MISS\"", "\"peft_type\": \"BONE\""),
    )
    .unwrap();
    let (_o, out) = scratch("out");
    let err = merge_refused(&fixture("llama/base"), &mini, &out, &[]);
    assert_mentions(&err, &["init_weights", "Bone takes"]);
}
