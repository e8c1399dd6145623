//! OneTrainer's OFT v2 single files (`{module}.oft_R.weight`, `.oft_R.scaled_oft`;
//! `fixtures/onetrainer_oft/`, built to OneTrainer @23df383 by
//! `fixtures/gen/onetrainer_oft_fixtures.py`, whose expected weights are probed from the
//! transcribed `OFTModule.forward`): merged, inspected, converted, refused when lowered or
//! malformed.

use super::*;

/// (case, what it covers): the KOHYA_LORA form (`lora_unet_…`, plain OFT, one block size per
/// module); the COMFY_LORA form (`diffusion_model.…`) with Scaled OFT and shared blocks.
const OT_CASES: &[&str] = &["oft2_kohya", "oft2_comfy_scaled"];

fn ot_base() -> std::path::PathBuf {
    fixture("lycoris_w0/base.safetensors")
}

fn ot(case: &str) -> std::path::PathBuf {
    fixture(&format!("onetrainer_oft/{case}.safetensors"))
}

/// Linear and conv (3×3 and 1×1) modules: a conv is rotated without the transpose a linear
/// gets, so a reader that rotated both alike fails the conv tensors; the scaled case fails
/// without the `2·√(s−1)` divisor.
#[test]
fn onetrainer_oft_v2_merges_to_the_weight_its_forward_computes() {
    let dir = tempfile::tempdir().unwrap();
    let base = read(&ot_base());
    for case in OT_CASES {
        let out = dir.path().join(format!("{case}.merged.safetensors"));
        merge_ok(&ot_base(), &ot(case), &out, &["--device", "cpu", "--quiet"]);
        let want = read(&fixture(&format!(
            "onetrainer_oft/{case}.merged.safetensors"
        )));
        let changed = assert_merged_like(case, &base, &want, &read(&out), Vacuity::BaseFarOff);
        assert_eq!(changed, 4, "{case}: tensors changed");
    }
}

#[test]
fn inspect_reports_onetrainer_oft_as_peft_oft() {
    for case in OT_CASES {
        let v: serde_json::Value = inspect_json(&ot(case), &[]);
        let modules = v["modules"].as_array().unwrap();
        assert_eq!(modules.len(), 4, "{case}");
        assert!(modules.iter().all(|m| m["algo"] == "peft-oft"), "{case}");
    }
}

/// `convert --to kohya` keeps the rotation exactly (the same bytes, the `scaled_oft` flag kept)
/// and the result merges like the input; a PEFT folder's OFT (which rotates a conv the other way)
/// and every lowering to LoRA are refused in one line, nothing written.
#[test]
fn onetrainer_oft_converts_to_kohya_exactly_and_is_never_lowered() {
    let dir = tempfile::tempdir().unwrap();
    for case in OT_CASES {
        let out = dir.path().join(format!("{case}.kohya.safetensors"));
        run_ok(convert_args(
            &ot(case),
            "kohya",
            &out,
            &["--prefix", "lora_unet"],
        ));
        let (src, got) = (read(&ot(case)), read(&out));
        assert_eq!(got.len(), src.len(), "{case}: tensors");
        for t in src.values() {
            assert!(
                got.values()
                    .any(|g| g.data == t.data && g.shape == t.shape && g.dtype == t.dtype),
                "{case}: a tensor was not copied byte for byte"
            );
        }
        let merged = dir.path().join(format!("{case}.kohya.merged.safetensors"));
        merge_ok(&ot_base(), &out, &merged, &["--quiet"]);
        let want = read(&fixture(&format!(
            "onetrainer_oft/{case}.merged.safetensors"
        )));
        let base = read(&ot_base());
        assert_eq!(
            assert_merged_like(case, &base, &want, &read(&merged), Vacuity::BaseFarOff),
            4
        );
        for (args, why) in [
            (
                convert_args(&ot(case), "peft", &dir.path().join("never"), &[]),
                "depends on the base weight",
            ),
            (
                convert_args(
                    &ot(case),
                    "diffusers",
                    &dir.path().join("never.safetensors"),
                    &["--base", s(&ot_base())],
                ),
                "depends on the base weight",
            ),
            (
                resize_args(
                    &ot(case),
                    &dir.path().join("never.safetensors"),
                    &["--rank", "2"],
                ),
                "base weight",
            ),
        ] {
            let line = one_line_error(&run_err(&args));
            assert!(line.contains(why) && line.contains("peft-oft"), "{line}");
        }
        assert!(!dir.path().join("never").exists());
        assert!(!dir.path().join("never.safetensors").exists());
    }
}

/// Malformed OneTrainer OFT files: one line naming the file and the key, nothing written.
#[test]
fn malformed_onetrainer_oft_files_are_refused_by_name() {
    let q = "lora_unet_down_blocks_0_to_q";
    let w = format!("{q}.oft_R.weight");
    let flag = format!("{q}.oft_R.scaled_oft");
    let scalar = |dtype, data: Vec<u8>| T {
        dtype,
        shape: vec![],
        data,
    };
    type Edit = Box<dyn Fn(&mut BTreeMap<String, T>)>;
    // An extra F32 scalar 1.0 under `key`.
    let one_f32 = move |key: String| -> Edit {
        Box::new(move |t| {
            let one = scalar(safetensors::Dtype::F32, 1f32.to_le_bytes().to_vec());
            t.insert(key.clone(), one);
        })
    };
    let cases: Vec<(&str, Edit, Vec<String>)> = vec![
        // 27 values per row is no block's triangle s(s−1)/2.
        (
            "triangle",
            Box::new({
                let w = w.clone();
                move |t| t.get_mut(&w).unwrap().cut_to(&[4, 27])
            }),
            vec![w.clone(), "s(s−1)/2".into()],
        ),
        // The flag without the rotation it scales (the missing half).
        (
            "half",
            Box::new({
                let (w, flag) = (w.clone(), flag.clone());
                move |t| {
                    t.remove(&w);
                    t.insert(flag.clone(), scalar(safetensors::Dtype::BOOL, vec![1]));
                }
            }),
            vec![w.clone()],
        ),
        // A flag that is neither true nor false.
        (
            "flag",
            Box::new({
                let flag = flag.clone();
                move |t| {
                    t.insert(flag.clone(), scalar(safetensors::Dtype::U8, vec![2]));
                }
            }),
            vec![flag.clone(), "true or false".into()],
        ),
        // An alpha, which OneTrainer never writes beside oft_R.
        (
            "alpha",
            one_f32(format!("{q}.alpha")),
            vec![q.into(), "alpha".into()],
        ),
        // A key no producer writes.
        (
            "unknown",
            one_f32(format!("{q}.oft_R.bias")),
            vec![format!("{q}.oft_R.bias")],
        ),
        // Blocks that do not tile the base's input side (3 blocks of 8 for to_q's 32 inputs).
        (
            "tiling",
            Box::new({
                let w = w.clone();
                move |t| t.get_mut(&w).unwrap().cut_to(&[3, 28])
            }),
            vec![q.into(), "[32, 32]".into()],
        ),
    ];
    for (name, edit, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut t = read(&ot("oft2_kohya"));
        edit(&mut t);
        let p = dir.path().join(format!("{name}.safetensors"));
        write(&p, &t);
        let before = listing(dir.path());
        let out = dir.path().join("out.safetensors");
        let line = one_line_error(&run_err(merge_args(&ot_base(), &p, &out, &[])));
        assert!(line.contains(&format!("{name}.safetensors")), "{line}");
        for e in &expect {
            assert!(line.contains(e.as_str()), "{name}: `{e}` not in: {line}");
        }
        assert_eq!(listing(dir.path()), before, "{name}: nothing written");
    }
}
