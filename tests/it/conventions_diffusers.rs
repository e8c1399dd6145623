//! What `fixtures/gen/check_diffusers_sweep.py` found, on fixtures the real diffusers 0.42.1
//! wrote (`fixtures/gen/diffusers_sweep_fixtures.py`, `fixtures/diffusers_sweep/`):
//!
//! - a diffusers file's `transformer.context_embedder.time_text_embed.…` (HunyuanVideo, whose
//!   token refiner holds its own `time_text_embed`) lands on that module, as diffusers' fuse does,
//!   not "ambiguous" with the top-level `time_text_embed.…`;
//! - `check --target diffusers` names the kohya UNet modules diffusers' key conversion sends
//!   nowhere (SDXL `add_embedding.linear_1/2` in diffusers' own kohya form), as diffusers' loaded
//!   modules (MANIFEST.json) show;
//! - it no longer says diffusers drops PEFT-named DoRA magnitudes (only `dora_scale` is filtered;
//!   diffusers loads and fuses `lora_magnitude_vector`, and lorakit merges it as diffusers fuses);
//! - it refuses a text encoder whose keys diffusers cannot type, and names the kohya encoder keys
//!   diffusers leaves unconverted (MANIFEST.json: diffusers' error, the modules it loaded), and
//!   the denoiser modules in diffusers' older names it skips when a PEFT-named key sorts first.

use super::check::check_json;
use super::common::*;

#[test]
fn a_longer_root_lands_on_the_module_diffusers_fuses() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged.safetensors");
    merge_fixtures(
        "diffusers_sweep/hunyuan_base.safetensors",
        "diffusers_sweep/hunyuan_lora.safetensors",
        &out,
        &["--quiet"],
    );
    let got = read(&out);
    let want = read(&fixture("diffusers_sweep/hunyuan_reference.safetensors"));
    let base = read(&fixture("diffusers_sweep/hunyuan_base.safetensors"));
    let mut changed = 0;
    for (name, w) in &want {
        let (w, b) = (w.f32(), base[name].f32());
        changed += usize::from(w != b);
        assert_f32_close(name, &got[name].f32(), &w, &b);
    }
    // Both roots' linear_1 and linear_2 weights: the test sees the ambiguous pair.
    assert_eq!(changed, 4, "diffusers changed four weights");
}

#[test]
fn check_names_the_kohya_unet_modules_diffusers_reads_elsewhere() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("diffusers_sweep/MANIFEST.json")).unwrap())
            .unwrap();
    let case = &manifest["sdxl_kohya_add_embedding"];
    let dropped: Vec<String> = case["diffusers_dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("lora_unet_{}", m.as_str().unwrap().replace('.', "_")))
        .collect();
    assert!(!dropped.is_empty());
    let adapter = fixture("diffusers_sweep/sdxl_kohya_add_embedding.safetensors");
    let (code, v) = check_json(&adapter, &["--target", "diffusers"]);
    assert_eq!(code, 1, "diffusers did not apply every module");
    let t = &v["targets"][0];
    assert_eq!(t["applies_all"], false);
    let named = item_modules(entry(&t["findings"], "rule", "diffusers.unet_key"));
    assert_eq!(named, dropped, "exactly the modules diffusers did not load");
    let n =
        case["file_modules"].as_u64().unwrap() - case["diffusers_loaded_modules"].as_u64().unwrap();
    assert_eq!(named.len() as u64, n);
}

/// MANIFEST.json of `fixtures/diffusers_sweep/`: what diffusers did with each file.
fn manifest() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("diffusers_sweep/MANIFEST.json")).unwrap())
        .unwrap()
}

/// The diffusers target's report on `fixtures/diffusers_sweep/{file}`: (exit code, target).
fn diffusers_check(file: &str) -> (i32, serde_json::Value) {
    let adapter = fixture(&format!("diffusers_sweep/{file}"));
    let (code, v) = check_json(&adapter, &["--target", "diffusers"]);
    (code, v["targets"][0].clone())
}

/// The modules a finding names (each item up to its first space), sorted.
fn finding_modules(t: &serde_json::Value, rule: &str) -> Vec<String> {
    match entries(&t["findings"]).iter().find(|f| f["rule"] == rule) {
        Some(f) => item_modules(f).into_iter().map(String::from).collect(),
        None => vec![],
    }
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// A DoRA LoRA saved by diffusers' `save_lora_weights`, in diffusers' own spelling of the
/// magnitude (`….lora_magnitude_vector`, as PEFT's `get_peft_model_state_dict` writes it) and in
/// OneTrainer's (`….lora_magnitude_vector.weight`): `check` says diffusers applies every tensor,
/// and the merge equals diffusers' `fuse_lora`.
#[test]
fn peft_dora_magnitudes_load_in_diffusers_and_merge_as_it_fuses() {
    let m = &manifest()["unet_dora_weight"];
    assert_eq!(
        m["diffusers_params_equal_to_a_file_tensor"],
        m["file_tensors"]
    );
    for file in ["unet_dora.safetensors", "unet_dora_weight.safetensors"] {
        let (code, t) = diffusers_check(file);
        assert_eq!(finding_modules(&t, "diffusers.dora"), Vec::<String>::new());
        assert_eq!(
            (code, &t["applies_all"]),
            (0, &serde_json::Value::Bool(true)),
            "{file}"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged.safetensors");
        merge_fixtures(
            "diffusers_sweep/unet_dora_base.safetensors",
            &format!("diffusers_sweep/{file}"),
            &out,
            &["--quiet"],
        );
        let (got, base) = (
            read(&out),
            read(&fixture("diffusers_sweep/unet_dora_base.safetensors")),
        );
        let want = read(&fixture("diffusers_sweep/unet_dora_reference.safetensors"));
        // A, B and the magnitude per module: every adapted to_k has its reference.
        assert_eq!(want.len() as u64 * 3, m["file_tensors"].as_u64().unwrap());
        for (name, w) in &want {
            assert_f32_close(name, &got[name].f32(), &w.f32(), &base[name].f32());
        }
    }
}

#[test]
fn check_refuses_a_text_encoder_diffusers_cannot_type() {
    let m = &manifest()["sdxl_te2_untyped"];
    assert_eq!(
        m["diffusers_error"],
        "Could not automatically infer state dict type"
    );
    let (code, t) = diffusers_check("sdxl_te2_untyped.safetensors");
    assert_eq!((code, &t["loads"]), (1, &serde_json::Value::Bool(false)));
    let want: Vec<String> = strings(&m["text_encoder_2_modules"])
        .iter()
        .map(|n| format!("text_encoder_2.{n}"))
        .collect();
    assert_eq!(finding_modules(&t, "diffusers.te_type"), want);
}

#[test]
fn check_names_the_kohya_encoder_keys_diffusers_skips() {
    let m = &manifest()["sd1_kohya_te_q_fc1"];
    let loaded = strings(&m["diffusers_loaded_from_file"]);
    let skipped: Vec<String> = strings(&m["file_modules"])
        .into_iter()
        .filter(|n| !loaded.contains(n))
        .map(|n| format!("lora_te1_{}", n.replace('.', "_")))
        .collect();
    assert_eq!(skipped.len(), 2, "both q_proj modules");
    let (code, t) = diffusers_check("sd1_kohya_te_q_fc1.safetensors");
    assert_eq!(
        (code, &t["applies_all"]),
        (1, &serde_json::Value::Bool(false))
    );
    assert_eq!(finding_modules(&t, "diffusers.te_key"), skipped);
}

#[test]
fn check_names_older_diffusers_names_diffusers_leaves_unconverted() {
    let m = &manifest()["sdxl_old_mixed"];
    assert!(m["first_key"].as_str().unwrap().contains("lora_A"));
    let loaded = strings(&m["diffusers_loaded_from_file"]);
    let skipped: Vec<String> = strings(&m["file_modules"])
        .into_iter()
        .filter(|n| !loaded.contains(n))
        .map(|n| format!("unet.{n}"))
        .collect();
    assert!(!skipped.is_empty() && !loaded.is_empty());
    let (code, t) = diffusers_check("sdxl_old_mixed.safetensors");
    assert_eq!(
        (code, &t["applies_all"]),
        (1, &serde_json::Value::Bool(false))
    );
    assert_eq!(finding_modules(&t, "diffusers.old_names"), skipped);
}
