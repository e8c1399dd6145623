//! Updates that depend on the base weight (diag-OFT, BOFT, IA3, GLoRA, norm layers; PEFT IA3
//! and OFT folders), merged against the wrapped modules' own forward.

use super::*;

/// The LyCORIS algorithms whose update depends on the base weight, and norm-layer training
/// (`fixtures/lycoris_w0/`, written by lycoris-lora, `fixtures/gen/lycoris_w0_fixtures.py`):
/// diag-OFT (plain; with `rescale` and a constraint that binds), LoKr with `train_norm`
/// (LayerNorm and GroupNorm `w_norm`/`b_norm`), IA3 (output side; input side on a linear and a
/// 3×3 conv), GLoRA (linear and 3×3 conv), and BOFT
/// (plain; with `rescale` and a binding constraint). Expected weights are probed from each
/// wrapped module's forward, as for the other algorithms.
const W0_CASES: &[(&str, usize)] = &[
    ("oft", 4),
    ("oft_rescale", 4),
    ("lokr_norm", 8),
    ("ia3", 4),
    ("ia3_input", 2),
    ("glora", 4),
    ("boft", 4),
    ("boft_rescale", 4),
];

fn w0_merged(dir: &Path, case: &str, extra: &[&str]) -> BTreeMap<String, T> {
    merged_from(dir, "lycoris_w0", case, extra)
}

#[test]
fn oft_ia3_and_norm_layers_merge_to_the_weight_their_forward_computes() {
    let dir = tempfile::tempdir().unwrap();
    let base = read(&fixture("lycoris_w0/base.safetensors"));
    for &(case, targeted) in W0_CASES {
        let out = w0_merged(dir.path(), case, &[]);
        let want = read(&fixture(&format!("lycoris_w0/{case}.merged.safetensors")));
        let changed = assert_merged_like(case, &base, &want, &out, Vacuity::BaseFarOff);
        assert_eq!(changed, targeted, "{case}: tensors changed");
    }
}

/// `--weight w` is LyCORIS' multiplier: linear in w for IA3, GLoRA, norm layers and OFT without
/// `rescale` (`ΔW = w·(R − I)ᵀW0`), so the reference is W0 + w·(W1 − W0) in f64.
#[test]
fn a_weight_scales_oft_ia3_and_norm_updates_as_the_lycoris_multiplier() {
    assert_weight_blends(
        "lycoris_w0",
        &["oft", "lokr_norm", "ia3", "ia3_input", "glora"],
    );
}

/// `--weight 0.375` on diag-OFT and BOFT, with and without `rescale`, against the weights
/// lycoris-lora's own modules compute at multiplier 0.375 (loaded by
/// `create_lycoris_from_weights(0.375, …)` and probed through the forward,
/// `fixtures/gen/lycoris_w0_weight_fixtures.py`): BOFT's stages `s·R + (1 − s)·I` and OFT's
/// rescale are not linear in the weight, so this is the only reference that can fail them.
#[test]
fn a_weight_on_oft_and_boft_matches_the_lycoris_modules_at_that_multiplier() {
    let dir = tempfile::tempdir().unwrap();
    let base = read(&fixture("lycoris_w0/base.safetensors"));
    for case in ["oft", "oft_rescale", "boft", "boft_rescale"] {
        let out = w0_merged(dir.path(), case, &["--weight", "0.375"]);
        let want = read(&fixture(&format!(
            "lycoris_w0/{case}.w0375.merged.safetensors"
        )));
        let full = read(&fixture(&format!("lycoris_w0/{case}.merged.safetensors")));
        // Not the weight-1 merge.
        let changed = assert_merged_like(case, &base, &want, &out, Vacuity::NotLike(&full, 100.0));
        assert_eq!(changed, 4, "{case}: four weights");
    }
}

/// Two base-dependent adapters on the same tensors, `--adapter A --adapter B`: B is computed
/// from the weight A left, as ComfyUI applies patches in the order given. The reference applies
/// lycoris-lora's modules one after another (A's forward-probed weights become the base B is
/// loaded onto, `fixtures/gen/lycoris_sequence_fixtures.py`); summing both updates computed
/// from W0 differs from it by far more than the tolerance (checked, so the test can fail).
#[test]
fn base_dependent_adapters_apply_in_sequence_as_comfyui_does() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = fixture("lycoris_w0/base.safetensors");
    let base = read(&base_path);
    for (a, b) in [
        ("oft", "boft"),
        ("oft_rescale", "boft_rescale"),
        ("boft_rescale", "glora"),
    ] {
        let out = dir.path().join(format!("{a}_{b}.safetensors"));
        let args = merge_args(
            &base_path,
            &fixture(&format!("lycoris_w0/{a}.safetensors")),
            &out,
            &[
                "--adapter",
                fixture(&format!("lycoris_w0/{b}.safetensors"))
                    .to_str()
                    .unwrap(),
                "--device",
                "cpu",
                "--quiet",
            ],
        );
        run_ok(args);
        let got = read(&out);
        let want = read(&fixture(&format!(
            "lycoris_w0/seq_{a}_{b}.merged.safetensors"
        )));
        let (wa, wb) = (
            read(&fixture(&format!("lycoris_w0/{a}.merged.safetensors"))),
            read(&fixture(&format!("lycoris_w0/{b}.merged.safetensors"))),
        );
        // Both updates from W0, summed: not what the sequence gives.
        let summed: BTreeMap<String, T> = base
            .iter()
            .map(|(name, w)| {
                let v: Vec<u8> = w
                    .f32()
                    .iter()
                    .zip(wa[name].f32().iter().zip(wb[name].f32()))
                    .flat_map(|(&w, (&x, y))| {
                        ((x as f64 + y as f64 - w as f64) as f32).to_le_bytes()
                    })
                    .collect();
                let t = T {
                    dtype: safetensors::Dtype::F32,
                    shape: w.shape.clone(),
                    data: v,
                };
                (name.clone(), t)
            })
            .collect();
        let case = format!("{a}+{b}");
        let changed =
            assert_merged_like(&case, &base, &want, &got, Vacuity::NotLike(&summed, 10.0));
        assert_eq!(changed, 4, "{a}+{b}: four weights");
    }
}

/// W0-dependent updates are named by inspect, rewritten exactly, and refused (by module, one
/// line, nothing written) where they would need a ΔW of their own: unmerge and lowering to LoRA.
#[test]
fn oft_and_ia3_are_inspected_rewritten_and_refused_where_they_need_the_base() {
    let dir = tempfile::tempdir().unwrap();
    for (case, algo, key) in [
        ("oft_rescale", "diag-oft", "rescale"),
        ("ia3", "ia3", "on_input"),
        ("lokr_norm", "norm", "b_norm"),
        ("glora", "glora", "b2.weight"),
        ("boft_rescale", "boft", "oft_blocks"),
    ] {
        let path = fixture(&format!("lycoris_w0/{case}.safetensors"));
        let v: serde_json::Value = inspect_json(&path, &[]);
        let algos: Vec<&str> = field_strs(&v["modules"], "algo");
        assert!(algos.contains(&algo), "{case}: {algos:?}");
        assert!(run_ok(inspect_args(&path, &[])).contains(algo));
        let conv = dir.path().join(format!("{case}.kohya.safetensors"));
        run_ok(convert_args(&path, "kohya", &conv, &[]));
        let (a, b) = (read(&path), read(&conv));
        assert_eq!(a, b, "{case}: tensors identical after the rewrite");
        assert!(a.keys().any(|k| k.ends_with(key)));
    }
    let w0_base = fixture("lycoris_w0/base.safetensors");
    for case in ["oft", "ia3", "glora"] {
        let src = fixture(&format!("lycoris_w0/{case}.safetensors"));
        let never = dir.path().join("never.safetensors");
        let line = refused(merge_args(&w0_base, &src, &never, &["--unmerge"]), &never);
        assert_mentions(
            &line,
            &["depends on the base weight", "lycoris_down_blocks_0_"],
        );
        let line = refused(resize_args(&src, &never, &["--rank", "2"]), &never);
        assert_mentions(&line, &["depends on the base weight", "cannot be lowered"]);
        let folder = dir.path().join("never_peft");
        let base = ["--base", s(&w0_base)];
        let line = refused(convert_args(&src, "peft", &folder, &base), &folder);
        assert!(line.contains("depends on the base weight"), "{line}");
    }
}

/// PEFT's own IA3 and OFT folders (`fixtures/peft_w0/`, PEFT 0.21 with random parameters,
/// `fixtures/gen/peft_w0_fixtures.py`) merge as `merge_and_unload` does. IA3: `W' = W0 ⊙ l` on
/// the output rows (and the bias, `b' = b0 ⊙ l`) or, for `feedforward_modules`, on the input
/// side; linear and conv, each side.
#[test]
fn peft_ia3_and_oft_folders_merge_like_merge_and_unload() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = fixture("conv/base");
    let base = read_checkpoint(&base_path);
    // (case, tensors changed: weights and the biases of output-side modules). PEFT OFT:
    // Cayley–Neumann (5 terms, block 4), exact Cayley with COFT (block 2), one shared block with
    // 3 terms; W' = W0·blockdiag(R)ᵀ on linear and conv weights.
    for (case, changed) in [
        ("ia3", 5),
        ("ia3_ff", 4),
        ("oft", 3),
        ("oft_exact_coft", 3),
        ("oft_share", 3),
    ] {
        let n = merged_like_peft(dir.path(), (&base_path, &base), "peft_w0", case);
        assert_eq!(n, changed, "{case}");
        if !case.starts_with("oft") {
            continue;
        }
        let v: serde_json::Value = inspect_json(&fixture(&format!("peft_w0/{case}")), &[]);
        assert!(v["modules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["algo"] == "peft-oft"));
    }
    // PEFT's OFT (a conv rotated W0·Rᵀ) and IA3 (W0 ⊙ l) have no LyCORIS/kohya form.
    for (case, algo) in [("oft", "OFT"), ("ia3", "IA3")] {
        let never = dir.path().join("never.safetensors");
        let line = one_line_error(&run_err(convert_args(
            &fixture(&format!("peft_w0/{case}")),
            "kohya",
            &never,
            &[],
        )));
        assert!(line.contains(algo), "{line}");
        assert!(!never.exists());
    }
    // A tensor of the wrong shape is refused by key: an IA3 vector, and an OFT rotation whose
    // row length is no block's triangle (4 is not s(s−1)/2).
    for (case, key, shape, why) in [
        ("ia3", "fc.ia3_l", [3, 2], "IA3"),
        ("oft", "fc.oft_R.weight", [3, 4], "s(s−1)/2"),
    ] {
        let bad = dir.path().join(format!("bad_{case}"));
        copy_dir(&fixture(&format!("peft_w0/{case}")), &bad);
        let mut t = read(&bad.join("adapter_model.safetensors"));
        let k = format!("base_model.model.{key}");
        t.get_mut(&k).unwrap().shape = shape.to_vec();
        write(&bad.join("adapter_model.safetensors"), &t);
        let out = dir.path().join("never");
        let line = merge_refused(&base_path, &bad, &out, &[]);
        assert!(line.contains(&k) && line.contains(why), "{line}");
    }
}

/// PEFT IA3 on GPT-2's Conv1D layers (`fan_in_fan_out`, weights stored `[in, out]`;
/// `fixtures/peft_w0/gpt2_ia3*`, PEFT 0.21.2 on `fixtures/gpt2/base`): the vector scales the
/// stored weight's columns (output side) or rows (feed-forward, input side), as
/// `merge_and_unload` does with `transpose(ia3_l, fan_in_fan_out)`.
#[test]
fn peft_ia3_on_conv1d_merges_like_merge_and_unload() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = fixture("gpt2/base");
    let base = read_checkpoint(&base_path);
    for (case, changed) in [("gpt2_ia3", 8), ("gpt2_ia3_ff", 4)] {
        let out = dir.path().join(case);
        merge_ok(
            &base_path,
            &fixture(&format!("peft_w0/{case}")),
            &out,
            &["--quiet"],
        );
        let reference = read(&fixture(&format!("peft_w0/{case}.merged.safetensors")));
        let n = assert_matches_reference(&read_checkpoint(&out), &base, &reference, TOL);
        assert_eq!(n, changed, "{case}");
    }
}
