//! What the sweeps with seeds 81/82 and wider draws found (fixtures/gen/sweep12_fixtures.py),
//! each against the real library's own result.

use super::check::check_json;
use super::common::*;
use super::conventions_common::{manifest_of, merges_as_reference_on};

/// The merge of `case` into fixtures/gpt2/base (its config.json names GPT-2, whose Conv1D
/// layers the merge lays out by name) and into a copy of its `model.safetensors` alone (no
/// config: the adapter's own `fan_in_fan_out` decides), each equal to PEFT's; the tensors
/// changed.
fn merges_as_peft_with_and_without_config(case: &str) -> usize {
    let n = merge_matches_peft_fixture(case, "gpt2/base", &[]);
    let (_dir, [bare, out]) = scratch_all(["bare", "out"]);
    std::fs::create_dir_all(&bare).unwrap();
    let base = bare.join("model.safetensors");
    std::fs::copy(fixture("gpt2/base/model.safetensors"), &base).unwrap();
    run_ok(merge_args(
        &base,
        &fixture(&format!("{case}/adapter")),
        &out,
        &["--device", "cpu", "--quiet"],
    ));
    let peft = read(&fixture(&format!("{case}/merged.safetensors")));
    assert_eq!(
        assert_matches_reference(&read_checkpoint(&out), &read(&base), &peft, 1e-6),
        n
    );
    n
}

/// PEFT's RandLoRA on GPT-2's Conv1D layers (`fan_in_fan_out`, forced by PEFT on Conv1D): PEFT
/// merges the [out, in] update transposed onto the stored [in, out] weight, on a square
/// `attn.c_proj` and on `mlp.c_proj` (in > out, PEFT's transposed product). lorakit refused
/// ("RandLoRA on Conv1D bases is not supported yet"; check_peft_sweep.py, seed 82).
#[test]
fn randlora_on_conv1d_merges_as_peft() {
    assert_eq!(
        merges_as_peft_with_and_without_config("sweep12/randlora_gpt2"),
        2
    );
}

/// PEFT's GraLoRA (with its hybrid LoRA) on GPT-2's Conv1D `c_attn` and `c_fc`: the same
/// refusal, the same transposed update.
#[test]
fn gralora_on_conv1d_merges_as_peft() {
    assert_eq!(
        merges_as_peft_with_and_without_config("sweep12/gralora_gpt2"),
        2
    );
}

/// MiniMax-H3 in musubi-tuner's flattened names (diffusion11's family writer on its tiny model):
/// `lora_unet_time_embedder_proj_in` ends, at an underscore, like the base's `proj_in` (what
/// `lora_unet_video_patch_proj` means), so lorakit took that suffix and refused its shape
/// (check_diffusers_formats_sweep.py, seed 83), where diffusers' converter reads the whole
/// name and loads it on `time_embedder.linear_1` (MANIFEST: loaded, every module applied, its
/// fuse equal to the f64 reference). The layout row now wins over a misfitting suffix, as it
/// did for the dotted `diffusion_model.time_embedder.proj_in`.
#[test]
fn minimax_h3_musubi_time_embedder_lands_where_diffusers_loads_it() {
    let folder = "sweep12/minimax_h3";
    let rec = &manifest_of(folder)["musubi_time"];
    assert_eq!(rec["diffusers"], "loaded", "{rec}");
    assert_eq!(rec["not_applied"], serde_json::json!([]), "{rec}");
    merges_as_reference_on(folder, "base.safetensors", "musubi_time", false);
    let base = fixture(&format!("{folder}/base.safetensors"));
    let file = fixture(&format!("{folder}/musubi_time.safetensors"));
    let (_, r) = check_json(&file, &["--target", "diffusers", "--base", s(&base)]);
    assert!(!r.to_string().contains("shape_mismatch"), "{r}");
    assert_eq!(r["targets"][0]["applies_all"], true, "{r}");
}
