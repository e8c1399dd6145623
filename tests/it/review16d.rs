//! Session 16's diffusion-conversion review findings (rev16c) fixed on branch fixd16
//! (`fixtures/review16/diffusion/`, `fixtures/gen/review16_diffusion.py`): LoRAs saved by
//! diffusers' own `save_lora_weights` (`unet.…lora_A.weight`, the config in
//! `lora_adapter_metadata`) converted to every format. The reference is diffusers 0.42.1's own
//! load + `fuse_lora` of the input: each output, merged by lorakit, must change the UNet as
//! diffusers changed it.

use super::common::*;
use std::path::{Path, PathBuf};

const DIR: &str = "review16/diffusion";

fn unet() -> PathBuf {
    fixture(&format!("{DIR}/unet"))
}

/// Merges `adapter` into the fixture UNet and compares the result with diffusers' fuse of the
/// input (`{case}_fused.safetensors`, the 32 attention weights it changed).
fn merges_as_diffusers_fused(adapter: &Path, case: &str, tmp: &Path, label: &str) {
    let merged = tmp.join(format!("{label}-merged"));
    run_ok(merge_args(
        &unet(),
        adapter,
        &merged,
        &["--device", "cpu", "--quiet"],
    ));
    let want = fixture(&format!("{DIR}/{case}_fused.safetensors"));
    let n = assert_merged_matches(&merged, &unet(), &want, 1e-5);
    assert_eq!(n, 32, "{label}");
}

fn convert(input: &Path, to: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["convert", s(input), "--to", to, "--out", s(out), "--quiet"];
    args.extend_from_slice(extra);
    run_ok(&args);
}

fn metadata(path: &Path) -> std::collections::HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

/// rsLoRA in a diffusers file (`use_rslora: true` in `lora_adapter_metadata`, r 4 alpha 8, one
/// module at r 2, one at alpha 3): every `convert` output keeps scale alpha/√r. Before: the
/// outputs stated alpha 8 under alpha/r (diffusers/PEFT `use_rslora: false`, kohya/comfy
/// `.alpha` 8), halving every ΔW at r 4 (0.67 off diffusers' fuse in the review's SD3 case).
#[test]
fn rslora_of_a_diffusers_file_survives_every_convert() {
    let src = fixture(&format!("{DIR}/rslora.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    merges_as_diffusers_fused(&src, "rslora", tmp.path(), "input");
    let base = unet();
    for (to, extra) in [
        ("diffusers", vec![]),
        ("peft", vec!["--base", s(&base)]),
        ("peft", vec![]),
        ("kohya", vec![]),
        ("comfy", vec![]),
    ] {
        let label = format!("{to}{}", extra.len());
        let out = tmp.path().join(if to == "peft" {
            label.clone()
        } else {
            format!("{label}.safetensors")
        });
        convert(&src, to, &out, &extra);
        merges_as_diffusers_fused(&out, "rslora", tmp.path(), &label);
    }
}

/// `convert --to kohya` of a diffusers file: the module names diffusers' own
/// `convert_state_dict_to_kohya` gives (`lora_unet_down_blocks_…`, what ComfyUI maps), no
/// `lora_adapter_metadata` beside them (diffusers raises "Both network_alphas and metadata cannot
/// be specified"), and the file merges as diffusers fused the input. Before:
/// `lora_unet_unet_down_blocks_…` (no loader's names) with the metadata carried; `resize` and
/// `combine` wrote the same names (rev16c F8).
#[test]
fn diffusers_file_to_kohya_gets_kohya_names_without_the_diffusers_config() {
    let src = fixture(&format!("{DIR}/plain.safetensors"));
    let want: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("{DIR}/plain_kohya_names.json"))).unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for to in ["kohya", "comfy"] {
        let out = tmp.path().join(format!("{to}.safetensors"));
        convert(&src, to, &out, &[]);
        let mut names: Vec<String> = read(&out)
            .keys()
            .map(|k| k.split('.').next().unwrap().to_owned())
            .collect();
        names.dedup();
        assert_eq!(names, want, "{to}");
        assert!(
            !metadata(&out).contains_key("lora_adapter_metadata"),
            "{to}: lora_adapter_metadata carried beside kohya names"
        );
        merges_as_diffusers_fused(&out, "plain", tmp.path(), to);
    }
    // resize writes the same kohya names.
    let out = tmp.path().join("resized.safetensors");
    run_ok([
        "resize",
        s(&src),
        "--rank",
        "4",
        "--out",
        s(&out),
        "--quiet",
    ]);
    let first = read(&out).keys().next().unwrap().clone();
    assert!(first.starts_with("lora_unet_down_blocks_0_"), "{first}");
    assert!(!metadata(&out).contains_key("lora_adapter_metadata"));
    // And combine (rev16c F8: lora_unet_unet_… before).
    let out = tmp.path().join("combined.safetensors");
    run_ok([
        "combine",
        "--adapter",
        s(&src),
        "--adapter",
        s(&src),
        "--method",
        "cat",
        "--out",
        s(&out),
        "--quiet",
    ]);
    let first = read(&out).keys().next().unwrap().clone();
    assert!(first.starts_with("lora_unet_down_blocks_0_"), "{first}");
}

/// `convert --to peft` of a diffusers file without `--base`: the names are module paths under the
/// `unet` component, so the folder gets them without it and merges as diffusers fused the input.
/// Before: refused as "kohya names lost the dots", naming module `?`.
#[test]
fn diffusers_file_to_peft_needs_no_base() {
    let src = fixture(&format!("{DIR}/plain.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("peft");
    convert(&src, "peft", &out, &[]);
    let t = read(&out.join("adapter_model.safetensors"));
    assert!(
        t.keys()
            .all(|k| k.starts_with("base_model.model.") && !k.contains(".unet.")),
        "{:?}",
        t.keys().next()
    );
    merges_as_diffusers_fused(&out, "plain", tmp.path(), "peft");
}

/// sd-scripts' SDXL names (its SGM UNet: `lora_unet_input_blocks_4_1_…`, resnet `in_layers_2`,
/// `op`, `middle_block_1_…`, `output_blocks_2_2_conv`, `time_embed_0`, `label_emb_0_0`, `out_2`;
/// 183 modules) on a diffusers-layout SDXL UNet: they land where diffusers'
/// `_maybe_map_sgm_blocks_to_diffusers` + `_convert_unet_lora_key` put them, and the merge
/// changes the UNet as diffusers' fuse did; `convert --to diffusers --base` writes diffusers
/// names that merge the same. Before: all 183 refused ("no base tensor").
#[test]
fn sdxl_sgm_names_merge_into_a_diffusers_unet_as_diffusers_fuses_them() {
    let unet = fixture(&format!("{DIR}/sdxl/unet"));
    let src = fixture(&format!("{DIR}/sdxl/kohya.safetensors"));
    let want = fixture(&format!("{DIR}/sdxl/fused.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    let merged = tmp.path().join("merged");
    run_ok(merge_args(
        &unet,
        &src,
        &merged,
        &["--device", "cpu", "--quiet"],
    ));
    assert_eq!(assert_merged_matches(&merged, &unet, &want, 1e-5), 183);
    let out = tmp.path().join("diffusers.safetensors");
    convert(&src, "diffusers", &out, &["--base", s(&unet)]);
    let t = read(&out);
    assert!(
        t.contains_key(
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
        ),
        "{:?}",
        t.keys().next()
    );
    let merged = tmp.path().join("merged2");
    run_ok(merge_args(
        &unet,
        &out,
        &merged,
        &["--device", "cpu", "--quiet"],
    ));
    assert_eq!(assert_merged_matches(&merged, &unet, &want, 1e-5), 183);
}
