//! OneTrainer's native-name outputs (`fixtures/onetrainer_native/`, built to OneTrainer @23df383 by
//! `fixtures/gen/onetrainer_native_fixtures.py`): ORIGINAL_LORA (the model's own single-file names,
//! no prefix, `lora_A`/`lora_B` with `.alpha` and `.dora_scale` kept), and the KOHYA_LORA and
//! COMFY_LORA forms built on the same per-model renames, for SDXL (sgm `input_blocks.…`), SD3
//! (`joint_blocks.…`, the final and the last block's context adaLN chunk-swapped) and Flux (BFL
//! `double_blocks.…`, fused qkv, the chunk-swapped final adaLN), plus OneTrainer's LoHa (a
//! conv's factors stored 4-D), LoKr and DoRA modules (DIFFUSERS_LORA's per-output DoRA as PEFT's
//! `lora_magnitude_vector.weight`). Each merges into a tiny base carrying the
//! real single-file names as the generator's f64 transcription of OneTrainer's forward; what has
//! no tensor in the base (LEGACY's split q/k/v on a fused BFL base) is refused.

use super::*;

/// (case, base, tensors changed, prefixes, naming, family; "" when the names identify none)
const NATIVE: &[(&str, &str, usize, &str, &str, &str)] = &[
    ("sdxl_original", "sdxl", 7, "", "peft", "SDXL"),
    (
        "sdxl_comfy_dora",
        "sdxl",
        7,
        "diffusion_model",
        "peft",
        "SDXL",
    ),
    (
        "sdxl_comfy_dora_out",
        "sdxl",
        7,
        "diffusion_model",
        "peft",
        "SDXL",
    ),
    (
        "sdxl_kohya",
        "sdxl",
        8,
        "lora_te1 lora_unet",
        "kohya",
        "SDXL",
    ),
    ("sdxl_comfy", "sdxl", 7, "diffusion_model", "peft", "SDXL"),
    ("sdxl_kohya_loha", "sdxl", 7, "lora_unet", "kohya", "SDXL"),
    ("sdxl_kohya_lokr", "sdxl", 6, "lora_unet", "kohya", "SDXL"),
    ("unet_diffusers_dora_out", "unet", 7, "unet", "peft", ""),
    ("unet_diffusers_dora_in", "unet", 7, "unet", "peft", ""),
    ("sd3_original", "sd3", 9, "", "peft", "SD3"),
    ("sd3_kohya", "sd3", 9, "lora_unet", "kohya", "SD3"),
    ("sd3_comfy", "sd3", 9, "diffusion_model", "peft", "SD3"),
    ("flux_original", "flux", 7, "", "peft", "Flux"),
    ("flux_kohya", "flux", 7, "lora_unet", "kohya", "Flux"),
    ("flux_comfy", "flux", 7, "diffusion_model", "peft", "Flux"),
];

fn native(name: &str) -> std::path::PathBuf {
    fixture(&format!("onetrainer_native/{name}.safetensors"))
}

/// Every adapted weight within [`TOL`] of the f64 reference, every other tensor byte-identical,
/// and the reference far from the base (so a merge that dropped a module, ignored `.alpha`, the
/// DoRA magnitude or the chunk swap, or flattened a 4-D LoHa factor the wrong way fails).
#[test]
fn onetrainer_native_names_merge_like_onetrainers_forward() {
    let dir = tempfile::tempdir().unwrap();
    for &(case, base, n, prefix, naming, family) in NATIVE {
        let base_path = native(&format!("{base}_base"));
        let out = dir.path().join(format!("{case}.out.safetensors"));
        merge_ok(
            &base_path,
            &native(case),
            &out,
            &["--device", "cpu", "--quiet"],
        );
        let reference = read(&native(&format!("{case}.merged")));
        let b = read(&base_path);
        assert_eq!(
            assert_matches_reference(&read(&out), &b, &reference, TOL),
            n,
            "{case}: tensors changed"
        );
        for (name, r) in &reference {
            assert!(
                rel_err(&b[name].f32(), &r.f32()) > 1e3 * TOL,
                "{case} {name}: reference is the base"
            );
        }
        let v = inspect_json(&native(case), &[]);
        let prefixes: Vec<&str> = prefix.split_whitespace().collect();
        assert_eq!(
            v["convention"]["prefixes"],
            serde_json::json!(prefixes),
            "{case}"
        );
        assert_eq!(
            v["convention"]["naming"],
            serde_json::json!([naming]),
            "{case}"
        );
        // The diffusers UNet names used here (one transformer block) do not tell SDXL from SD1.x.
        let family = (!family.is_empty()).then_some(family);
        assert_eq!(
            v["convention"]["family"],
            serde_json::json!(family),
            "{case}"
        );
    }
}

/// LEGACY_LORA keeps Flux's q/k/v split (`lora_transformer_transformer_blocks_0_attn_to_q`); a BFL
/// base stores them fused (`double_blocks.0.img_attn.qkv`). ComfyUI's Flux branch maps the name
/// to the fused weight's q rows through `flux_to_diffusers` (`comfy/lora.py`
/// `model_lora_keys_unet`), and so does lorakit since diffusion13: rows `[0, 8)` get
/// `(alpha/r)·up·down` (f64 here), every other row and tensor keeps its bytes.
#[test]
fn split_qkv_on_a_fused_base_lands_on_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    run_ok(merge_args(
        &native("flux_base"),
        &native("flux_legacy_split"),
        &out,
        &["--quiet"],
    ));
    let (got, base, lora) = (
        read(&out),
        read(&native("flux_base")),
        read(&native("flux_legacy_split")),
    );
    let m = "lora_transformer_transformer_blocks_0_attn_to_q";
    let up = lora[&format!("{m}.lora_up.weight")].f32();
    let down = lora[&format!("{m}.lora_down.weight")].f32();
    let scale = f64::from(lora[&format!("{m}.alpha")].f32()[0]) / 4.0;
    let qkv = "double_blocks.0.img_attn.qkv.weight";
    let (w0, w) = (base[qkv].f32(), got[qkv].f32());
    let mut want = w0.clone();
    for (i, row) in want.chunks_mut(8).take(8).enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            let d: f64 = (0..4)
                .map(|k| f64::from(up[i * 4 + k]) * f64::from(down[k * 8 + j]))
                .sum();
            *x = (f64::from(*x) + scale * d) as f32;
        }
    }
    assert_f32_close(qkv, &w, &want, &w0);
    assert_eq!(got[qkv].data[8 * 8 * 4..], base[qkv].data[8 * 8 * 4..]);
    for (name, t) in base.iter().filter(|(n, _)| n.as_str() != qkv) {
        assert_eq!(got[name].data, t.data, "{name}: same bytes");
    }
}

/// OneTrainer's 4-D LoHa conv factors survive `convert --to kohya` byte for byte (shape kept), and
/// a LoHa whose two up factors disagree in shape, or whose up factor has a kernel, is refused.
#[test]
fn onetrainer_loha_conv_factors_keep_their_shape_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = native("sdxl_kohya_loha");
    let out = dir.path().join("loha.kohya.safetensors");
    run_ok(convert_args(&src, "kohya", &out, &[]));
    assert_eq!(
        read(&out),
        read(&src),
        "tensors identical after the rewrite"
    );
    let conv = "lora_unet_input_blocks_1_0_in_layers_2";
    let flat = |t: &mut BTreeMap<String, T>| {
        let w = t.get_mut(&format!("{conv}.hada_w2_a")).unwrap();
        w.shape = vec![w.shape[0], w.shape[1]];
    };
    let kernel = |t: &mut BTreeMap<String, T>| {
        for f in ["hada_w1_a", "hada_w2_a"] {
            let w = t.get_mut(&format!("{conv}.{f}")).unwrap();
            // [8, 4, 1, 1] read as [8, 2, 2, 1]: the same bytes, an up factor with a kernel.
            w.shape = vec![8, 2, 2, 1];
        }
    };
    for name in ["flat_w2a", "kernel_up"] {
        let mut t = read(&src);
        if name == "flat_w2a" {
            flat(&mut t);
        } else {
            kernel(&mut t);
        }
        let line = edited_merge_refused(dir.path(), "sdxl_base", name, &t);
        assert!(line.contains(conv) && line.contains("hada_w1_a"), "{line}");
    }
}

/// The error line of a merge into the fixture base `base` of `tensors` (a fixture, edited),
/// written as `dir/NAME.safetensors`: it names that file, and nothing is written.
fn edited_merge_refused(
    dir: &Path,
    base: &str,
    name: &str,
    tensors: &BTreeMap<String, T>,
) -> String {
    let p = dir.join(format!("{name}.safetensors"));
    write(&p, tensors);
    let before = listing(dir);
    let never = dir.join("never.safetensors");
    let line = one_line_error(&run_err(merge_args(&native(base), &p, &never, &[])));
    assert!(line.contains(&format!("{name}.safetensors")), "{line}");
    assert_eq!(listing(dir), before, "{name}: nothing written");
    line
}

/// A `lora_magnitude_vector.weight` whose length is not the layer's rows, or one beside a
/// `dora_scale` (two magnitudes for one module), is refused by module, nothing written.
#[test]
fn bad_diffusers_dora_magnitudes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = "unet.down_blocks.1.attentions.0.proj_in";
    let mag = format!("{m}.lora_magnitude_vector.weight");
    for (name, expect) in [
        ("short", "lora_magnitude_vector has shape [15]"),
        ("both", "two DoRA magnitudes"),
    ] {
        let mut t = read(&native("unet_diffusers_dora_out"));
        if name == "short" {
            t.get_mut(&mag).unwrap().cut_to(&[15]);
        } else {
            let v = t[&mag].clone();
            t.insert(format!("{m}.dora_scale"), v);
        }
        let line = edited_merge_refused(dir.path(), "unet_base", name, &t);
        assert!(line.contains(m) && line.contains(expect), "{line}");
    }
}
