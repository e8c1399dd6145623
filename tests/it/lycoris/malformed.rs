//! Malformed LyCORIS files (every algorithm, OFT/IA3/norm included): one line naming the file
//! and the key, nothing written.

use super::*;

#[test]
fn malformed_lycoris_files_are_refused_by_name() {
    // A LoHa factor of the wrong shape.
    refused_edit(
        "loha",
        |t| {
            let k = format!("{CONV}.hada_w2_b");
            let mut x = t.remove(&k).unwrap();
            x.shape = vec![2, 108];
            t.insert(k, x);
        },
        &[CONV, "hada_w2_b"],
    );
    // Only one of the two Tucker cores.
    refused_edit(
        "loha_tucker",
        |t| {
            t.remove(&format!("{CONV}.hada_t2"));
        },
        &[CONV, "hada_t1"],
    );
    // Two algorithms' tensors in one module.
    refused_edit(
        "loha",
        |t| {
            let x = t[&format!("{CONV}.hada_w1_a")].clone();
            t.insert(format!("{CONV}.lokr_w1"), x);
        },
        &[CONV, "LoHa", "LoKr"],
    );
    // A LoKr half given neither whole nor as a product.
    refused_edit(
        "lokr",
        |t| {
            t.retain(|k, _| !(k.starts_with(CONV) && k.contains("lokr_w2")));
        },
        &[CONV, "lokr_w2"],
    );
    // An algorithm lorakit recognises but does not apply: refused by key, never skipped.
    refused_edit(
        "loha",
        |t| {
            let x = t[&format!("{CONV}.hada_w1_a")].clone();
            t.insert("lycoris_down_blocks_0_to_q.lambda_layer".into(), x);
        },
        &["lambda_layer", "T-LoRA"],
    );
    // A tensor with no known suffix.
    refused_edit(
        "full",
        |t| {
            let x = t[&format!("{CONV}.diff_b")].clone();
            t.insert(format!("{CONV}.mystery"), x);
        },
        &["mystery"],
    );
    // A DoRA scale that fits neither axis.
    refused_edit(
        "dora_out",
        |t| {
            let k = "lycoris_down_blocks_0_to_q.dora_scale".to_string();
            let mut x = t.remove(&k).unwrap();
            x.shape = vec![2, 16];
            t.insert(k, x);
        },
        &["dora_scale", "to_q"],
    );
    // NaN in a stored factor: refused naming the adapter tensor.
    let dir = tempfile::tempdir().unwrap();
    let mut t = read(&fixture("lycoris/lokr.safetensors"));
    let k = format!("{CONV}.lokr_w1");
    t.get_mut(&k).unwrap().data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let p = dir.path().join("nan.safetensors");
    write(&p, &t);
    let out = dir.path().join("out.safetensors");
    let line = merge_refused(&fixture("lycoris/base.safetensors"), &p, &out, &[]);
    assert!(line.contains(&k) && line.contains("not finite"), "{line}");
}

/// Malformed OFT / IA3 / norm files: one line naming the file and the key, nothing written.
#[test]
fn malformed_oft_ia3_and_norm_files_are_refused_by_name() {
    let refused_w0 = |case: &str, edit: &dyn Fn(&mut BTreeMap<String, T>), expect: &[&str]| {
        refused_in("lycoris_w0", case, edit, expect)
    };
    let ff = "lycoris_down_blocks_0_ff_out";
    let reshape = |key: String, shape: Vec<usize>| {
        move |t: &mut BTreeMap<String, T>| {
            let mut x = t.remove(&key).unwrap();
            x.shape = shape.clone();
            t.insert(key.clone(), x);
        }
    };
    // Blocks that are not square.
    refused_w0(
        "oft",
        &reshape(format!("{ff}.oft_blocks"), vec![4, 4, 9]),
        &[ff, "oft_blocks"],
    );
    // A rescale of the wrong length.
    refused_w0(
        "oft_rescale",
        &reshape(format!("{ff}.rescale"), vec![24, 2]),
        &[ff, "rescale"],
    );
    // BOFT stages that the block count cannot pair (4 stages of 1 block).
    refused_w0(
        "oft",
        &reshape(format!("{ff}.oft_blocks"), vec![4, 1, 6, 6]),
        &[ff, "BOFT"],
    );
    // An IA3 on_input that is neither 0 nor 1.
    refused_w0(
        "ia3",
        &|t: &mut BTreeMap<String, T>| {
            let x = t.get_mut(&format!("{ff}.on_input")).unwrap();
            x.data = 2f32.to_le_bytes().to_vec();
        },
        &[ff, "on_input"],
    );
    // An IA3 vector without its on_input: an unknown `.weight` tensor, by name.
    refused_w0(
        "ia3",
        &|t: &mut BTreeMap<String, T>| {
            t.remove(&format!("{ff}.on_input"));
        },
        &[&format!("{ff}.weight")],
    );
    // A b_norm of the wrong length; b_norm without w_norm.
    let norm = "lycoris_down_blocks_0_norm1";
    refused_w0(
        "lokr_norm",
        &|t: &mut BTreeMap<String, T>| {
            let x = t.get_mut(&format!("{norm}.b_norm")).unwrap();
            x.shape = vec![31];
            x.data.truncate(31 * 4);
        },
        &[norm, "b_norm"],
    );
    refused_w0(
        "lokr_norm",
        &|t: &mut BTreeMap<String, T>| {
            t.remove(&format!("{norm}.w_norm"));
        },
        &[norm, "w_norm"],
    );
    // GLoRA halves that do not fit; a GLoRA Tucker core.
    refused_w0(
        "glora",
        &reshape(format!("{ff}.b2.weight"), vec![2, 64]),
        &[ff, "GLoRA", "b2.weight"],
    );
    refused_w0(
        "glora",
        &|t: &mut BTreeMap<String, T>| {
            let x = t[&format!("{ff}.a1.weight")].clone();
            t.insert(format!("{ff}.bm.weight"), x);
        },
        &[ff, "bm.weight"],
    );
    // Two algorithms in one module.
    refused_w0(
        "oft",
        &|t: &mut BTreeMap<String, T>| {
            let x = t[&format!("{ff}.oft_blocks")].clone();
            t.insert(format!("{ff}.w_norm"), x);
        },
        &[ff, "norm", "OFT"],
    );
}

/// Refused by a merge into `{folder}/base.safetensors` (the file alone is well-formed, so
/// `inspect` reads it): one line naming the adapter file and `expect`, nothing written.
fn refused_by_merge(
    folder: &str,
    case: &str,
    edit: &dyn Fn(&mut BTreeMap<String, T>),
    expect: &[&str],
) {
    let dir = tempfile::tempdir().unwrap();
    let mut t = read(&fixture(&format!("{folder}/{case}.safetensors")));
    edit(&mut t);
    let p = dir.path().join("bad.safetensors");
    write(&p, &t);
    run_ok(inspect_args(&p, &[]));
    let before = listing(dir.path());
    let line = merge_refused(
        &fixture(&format!("{folder}/base.safetensors")),
        &p,
        &dir.path().join("out.safetensors"),
        &[],
    );
    assert!(line.contains("bad.safetensors"), "file not named: {line}");
    for e in expect {
        assert!(line.contains(e), "`{e}` not in: {line}");
    }
    assert_eq!(listing(dir.path()), before, "nothing written");
}

/// Factors that agree with each other but whose product is not the shape of the weight they
/// name: a LoKr whose `kron(w1, w2)` is 16×64 for the 32×32 `to_q`, a LoHa whose Hadamard
/// halves are 32×16. Refused by a merge naming the file, the module and both shapes.
#[test]
fn factors_whose_product_misses_the_target_shape_are_refused() {
    let to_q = "lycoris_down_blocks_0_to_q";
    refused_by_merge(
        "lycoris",
        "lokr_full",
        &|t: &mut BTreeMap<String, T>| {
            t.get_mut(&format!("{to_q}.lokr_w2")).unwrap().shape = vec![4, 16];
        },
        &[to_q, "[32, 32]", "[16, 64]"],
    );
    refused_by_merge(
        "lycoris",
        "loha",
        &|t: &mut BTreeMap<String, T>| {
            for half in ["hada_w1_b", "hada_w2_b"] {
                let x = t.get_mut(&format!("{to_q}.{half}")).unwrap();
                x.shape = vec![4, 16];
                x.data.truncate(4 * 16 * 4);
            }
        },
        &[to_q, "[32, 32]", "[32, 16]"],
    );
}

/// A plain LoRA module with one half (kohya `lora_up` without `lora_down`, diffusers `lora_B`
/// without `lora_A`): refused by inspect and merge, naming the file, the module and the half
/// that is missing; nothing written.
#[test]
fn lora_modules_missing_a_half_are_refused_by_name() {
    let proj_in = "down_blocks_0_attentions_0_proj_in";
    // (file, base, key removed, the half named, the module named)
    for (case, base, key, missing, module) in [
        (
            "conventions/kohya",
            "conventions/unet",
            format!("lora_unet_{proj_in}.lora_down.weight"),
            "lora_down",
            "proj_in",
        ),
        (
            "conventions/diffusers_metadata",
            "conventions/unet",
            "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight".to_string(),
            "lora_A",
            "proj_in",
        ),
        // OneTrainer's COMFY_LORA text encoder and LEGACY mixture transformer.
        (
            "conventions_prefix/ot_comfy_te1",
            "kohya/te_base",
            "text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.lora_A.weight"
                .to_string(),
            "lora_A",
            "mlp.fc1",
        ),
        (
            "conventions_prefix/ot_mixture_transformer",
            "lycoris_w0/base.safetensors",
            "lora_transformer_down_blocks_0_to_q.lora_up.weight".to_string(),
            "lora_up",
            "to_q",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut t = read(&fixture(&format!("{case}.safetensors")));
        assert!(t.remove(&key).is_some(), "{key}");
        let p = dir.path().join("half.safetensors");
        write(&p, &t);
        let before = listing(dir.path());
        for args in [
            inspect_args(&p, &[]),
            merge_args(&fixture(base), &p, &dir.path().join("out"), &[]),
        ] {
            let line = one_line_error(&run_err(&args));
            assert!(line.contains("half.safetensors"), "{case}: {line}");
            assert!(line.contains(module), "{case}: module not named: {line}");
            assert!(line.contains(missing), "{case}: `{missing}` not in: {line}");
        }
        assert_eq!(listing(dir.path()), before, "{case}: nothing written");
    }
}
