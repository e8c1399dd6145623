//! lorakit against ComfyUI on OneTrainer's files: `fixtures/onetrainer_comfy/` holds what ComfyUI's
//! loader (`comfy/lora.py` `load_lora` and key maps, `comfy/weight_adapter/*.py`, transcribed by
//! `fixtures/gen/onetrainer_comfy_fixtures.py`, commits cited there) does with every fixture of
//! `onetrainer_native/` and `onetrainer_oft/`. Where ComfyUI applies a module, lorakit's merge
//! equals it; the places where it does not are recorded here, each with its reason, and lorakit
//! follows OneTrainer there (its forward is the reference in the other two test files).

use super::*;

/// (case, tensors where lorakit and ComfyUI agree, tensors ComfyUI leaves unchanged, tensors it
/// changes differently). Why ComfyUI skips or differs:
/// * `*_original`: OneTrainer's ORIGINAL_LORA names (`input_blocks.…`, `double_blocks.…`,
///   `joint_blocks.…`, no prefix) are in no SDXL, Flux or SD3 key map of ComfyUI (only
///   `diffusion_model.…`, `lora_unet_…` and diffusers names are), so every key is "not loaded".
/// * `oft2_*`: no ComfyUI weight adapter reads `oft_R.weight` (`oft.py` / `boft.py` read only
///   `oft_blocks`), so OneTrainer's OFT v2 is never applied.
/// * `sdxl_kohya_loha`: the two convs' `hada_w1_a` are 4-D (`[out, r, 1, 1]`) and `loha.py`
///   multiplies with `torch.mm` outside its `try`, which raises on them.
/// * `sdxl_kohya_lokr`: the Tucker conv's `lokr_t2` rebuild (an einsum) is not contiguous and
///   `torch.kron` raises on it (torch 2.15; OneTrainer's `make_kron` calls `.contiguous()` first);
///   `lokr.py` catches and logs it, leaving the weight.
/// * `sdxl_comfy_dora_out`: `weight_decompose` always normalises per input channel, while
///   OneTrainer's `lora_decompose_output_axis` DoRA stores and normalises per output row.
const COMFY: &[(&str, usize, usize, usize)] = &[
    ("sdxl_original", 0, 7, 0),
    ("sdxl_comfy_dora", 7, 0, 0),
    ("sdxl_comfy_dora_out", 0, 0, 7),
    ("sdxl_kohya", 8, 0, 0),
    ("sdxl_comfy", 7, 0, 0),
    ("sdxl_kohya_loha", 5, 2, 0),
    ("sdxl_kohya_lokr", 5, 1, 0),
    ("flux_original", 0, 7, 0),
    ("flux_kohya", 7, 0, 0),
    ("flux_comfy", 7, 0, 0),
    ("sd3_original", 0, 9, 0),
    ("sd3_kohya", 9, 0, 0),
    ("sd3_comfy", 9, 0, 0),
    ("oft2_kohya", 0, 4, 0),
    ("oft2_comfy_scaled", 0, 4, 0),
];

#[test]
fn lorakit_equals_comfyui_wherever_comfyui_applies_a_onetrainer_module() {
    compare_with_comfyui("onetrainer_comfy", COMFY);
}

/// Merges every case of `{folder}/MANIFEST.json` (a transcription of ComfyUI's loader run on the
/// fixtures) and counts, per case, the tensors where lorakit's merge equals ComfyUI's, those
/// ComfyUI leaves unchanged (with the keys it did not load or the patch that raised as the
/// recorded reason) and those it changes differently, against `cases`.
fn compare_with_comfyui(folder: &str, cases: &[(&str, usize, usize, usize)]) {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("{folder}/MANIFEST.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["cases"].as_object().unwrap().len(),
        cases.len(),
        "{folder}: every case of the manifest is counted"
    );
    let dir = tempfile::tempdir().unwrap();
    for &(case, n_agree, n_skipped, n_differ) in cases {
        let m = &manifest["cases"][case];
        let base_path = fixture(m["base"].as_str().unwrap());
        let out = dir.path().join(format!("{case}.safetensors"));
        merge_ok(
            &base_path,
            &fixture(m["adapter"].as_str().unwrap()),
            &out,
            &["--quiet"],
        );
        let (out, base) = (read(&out), read(&base_path));
        let comfy = if m["changed"].as_array().unwrap().is_empty() {
            BTreeMap::new()
        } else {
            read(&fixture(&format!("{folder}/{case}.comfy.safetensors")))
        };
        let errors: Vec<&str> = field_strs(&m["errors"], "tensor");
        let not_loaded = !m["not_loaded"].as_array().unwrap().is_empty();
        let (mut agree, mut skipped, mut differ) = (0, 0, 0);
        for (name, t) in &out {
            match comfy.get(name) {
                Some(c) => {
                    let e = rel_err(&t.f32(), &c.f32());
                    if e <= TOL {
                        agree += 1;
                    } else {
                        assert!(e > 1e3 * TOL, "{case} {name}: near ComfyUI, {e:e}");
                        differ += 1;
                    }
                }
                None if t.data != base[name].data => {
                    // lorakit changed it and ComfyUI did not: the manifest says why.
                    assert!(
                        not_loaded || errors.contains(&name.as_str()),
                        "{case} {name}: ComfyUI skipped it without a recorded reason"
                    );
                    skipped += 1;
                }
                None => {}
            }
        }
        assert_eq!(
            (agree, skipped, differ),
            (n_agree, n_skipped, n_differ),
            "{case}: (agree, ComfyUI skips, differ)"
        );
        assert_eq!(
            comfy.len(),
            agree + differ,
            "{case}: ComfyUI changes only tensors lorakit changes"
        );
    }
}

/// (case, agree, ComfyUI skips, differ) for DIFFUSERS-format files, transcribed by
/// `fixtures/gen/diffusers_comfy_fixtures.py` into `conventions_te/comfy/` (ComfyUI
/// `model_lora_keys_unet` / `model_lora_keys_clip` @41444b5 for diffusers names; commits cited
/// there). Why ComfyUI skips or differs:
/// * `unet_diffusers_*`, `ot_unet_dora_*`: ComfyUI maps a diffusers attention projection only
///   under its attention-processor name (`….attn1.processor.to_q`, `….processor.to_out`), so
///   PEFT's and `save_lora_weights`' `unet.….attn1.to_q` / `.to_out.0` modules are "not loaded";
///   every other module (`proj_in`, `ff.net.2`, resnet convs) maps as `unet.{path}` and is
///   applied. The attention-processor file itself (`unet_attn_processor`) loads whole.
/// * `unet_diffusers_metadata`: alpha lives only in the `lora_adapter_metadata` JSON
///   (lora_alpha = 2·r), which ComfyUI does not read: it applies scale 1, lorakit PEFT's 2.
/// * `ot_unet_dora_out`: OneTrainer's per-output DoRA magnitude is stored as PEFT's
///   `lora_magnitude_vector.weight`, which ComfyUI does not read ("not loaded"): it adds the
///   plain LoRA where lorakit applies the DoRA update.
/// * `ot_diffusers_te2` (on a lone CLIP-L, SD1.x): `text_encoder_2.` maps only onto `clip_g`
///   beside `clip_l` (SDXL); lorakit puts a one-encoder base's only encoder under it.
/// * `sdxl_diffusers_te`: ComfyUI splits the SDXL file's OpenCLIP `in_proj_weight` into q/k/v and
///   patches each; lorakit's row-slice merge gives the same tensors.
const COMFY_DIFFUSERS: &[(&str, usize, usize, usize)] = &[
    ("unet_diffusers_metadata", 0, 32, 28),
    ("unet_diffusers_old", 28, 32, 0),
    ("unet_attn_processor", 32, 0, 0),
    ("ot_unet_dora_out", 0, 2, 5),
    ("ot_unet_dora_in", 5, 2, 0),
    ("te_lora_linear_layer", 12, 0, 0),
    ("ot_diffusers_te2", 0, 6, 0),
    ("sdxl_diffusers_te", 20, 0, 0),
];

#[test]
fn lorakit_equals_comfyui_wherever_comfyui_applies_a_diffusers_module() {
    compare_with_comfyui("conventions_te/comfy", COMFY_DIFFUSERS);
}
