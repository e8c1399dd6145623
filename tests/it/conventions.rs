//! Single-file LoRAs in every spelling the diffusion world uses (`fixtures/conventions/`, written
//! by diffusers and PEFT, or built to the peer's source where no installable tool writes them;
//! see `fixtures/gen/conventions_fixtures.py`): each merges into the tiny diffusers UNet exactly as
//! PEFT's own merge of the same factors, and `inspect` names the convention.

use super::common::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Relative Frobenius error against PEFT's f32 merge (the f32 product and sum, as in merge.rs).
const TOL: f64 = 1e-6;

/// (file, reference, namings `inspect` reports, prefix, every reference tensor applies?)
const CASES: &[(&str, &str, &[&str], &str, bool)] = &[
    // diffusers' own save: alpha (2·r) only in the `lora_adapter_metadata` JSON.
    ("diffusers_metadata", "reference", &["peft"], "unet", true),
    ("kohya", "reference_alpha_r", &["kohya"], "lora_unet", true),
    // diffusers' PEFT → DIFFUSERS map renames the attention projections only (`to_q.lora.up`),
    // so the file mixes two spellings (each module one).
    (
        "diffusers_old",
        "reference_alpha_r",
        &["lora-dot-up", "peft"],
        "unet",
        true,
    ),
    (
        "peft_default",
        "reference_alpha_r",
        &["peft-default"],
        "",
        true,
    ),
    // Attention projections only (the old processors had no other LoRA layers).
    (
        "attn_processor",
        "reference_alpha_r",
        &["attn-processor"],
        "unet",
        false,
    ),
    (
        "bare",
        "reference_alpha_r",
        &["peft-bare"],
        "diffusion_model",
        true,
    ),
];

fn unet() -> std::path::PathBuf {
    fixture("conventions/unet")
}

/// Merges `conventions/{case}.safetensors` (or `dir/{case}.safetensors` when it exists there)
/// into the UNet.
fn merge(dir: &Path, case: &str) -> BTreeMap<String, T> {
    let out = dir.join(format!("{case}.merged"));
    let local = dir.join(format!("{case}.safetensors"));
    let adapter = if local.exists() {
        local
    } else {
        fixture(&format!("conventions/{case}.safetensors"))
    };
    merge_ok(&unet(), &adapter, &out, &["--quiet"]);
    read_checkpoint(&out)
}

#[test]
fn every_convention_merges_like_peft() {
    let dir = tempfile::tempdir().unwrap();
    let base = read_checkpoint(&unet());
    for &(case, reference, _, _, all) in CASES {
        let out = merge(dir.path(), case);
        let reference = read(&fixture(&format!("conventions/{reference}.safetensors")));
        assert_eq!(out.len(), base.len(), "{case}: the base's tensors");
        let mut applied = 0;
        for (name, t) in &out {
            let b = &base[name];
            match reference.get(name) {
                Some(r) if all || t.data != b.data => {
                    let e = rel_err(&t.f32(), &r.f32());
                    assert!(e <= TOL, "{case} {name}: relative error {e:e}");
                    applied += 1;
                }
                _ => assert!(
                    t.data == b.data,
                    "{case} {name}: changed without a reference"
                ),
            }
        }
        if all {
            assert_eq!(
                applied,
                reference.len(),
                "{case}: every adapted tensor merged"
            );
        } else {
            // The attention projections: q, k, v, out of each attention block.
            assert!(
                applied >= 4 && applied < reference.len(),
                "{case}: {applied}"
            );
            assert!(out.keys().filter(|k| k.contains(".to_")).all(|k| {
                !reference.contains_key(k) || rel_err(&out[k].f32(), &reference[k].f32()) <= TOL
            }));
        }
    }
}

/// The metadata's alpha matters: ignoring it (alpha = rank) gives the alpha = r reference, which
/// differs from the diffusers merge by far more than the tolerance.
#[test]
fn diffusers_metadata_alpha_is_read() {
    let a = read(&fixture("conventions/reference.safetensors"));
    let b = read(&fixture("conventions/reference_alpha_r.safetensors"));
    let worst = a
        .iter()
        .map(|(k, t)| rel_err(&t.f32(), &b[k].f32()))
        .fold(0f64, f64::max);
    assert!(worst > 1e3 * TOL, "the two references differ: {worst:e}");
    let v: serde_json::Value =
        inspect_json(&fixture("conventions/diffusers_metadata.safetensors"), &[]);
    for m in v["modules"].as_array().unwrap() {
        assert_eq!(m["rank"], 4);
        assert_eq!(m["alpha"], 8.0, "{}", m["name"]);
    }
}

#[test]
fn inspect_names_the_convention_and_family() {
    for &(case, _, naming, prefix, _) in CASES {
        let p = fixture(&format!("conventions/{case}.safetensors"));
        let v: serde_json::Value = inspect_json(&p, &[]);
        let c = &v["convention"];
        assert_eq!(c["naming"], serde_json::json!(naming), "{case}");
        let prefixes: Vec<&str> = strs(&c["prefixes"]);
        let want: Vec<&str> = if prefix.is_empty() {
            vec![]
        } else {
            vec![prefix]
        };
        assert_eq!(prefixes, want, "{case}");
        assert_eq!(c["family"], "SD1.x/SD2.x", "{case}");
    }
    let text = run_ok(inspect_args(&fixture("kohya/te_lora.safetensors"), &[]));
    assert!(text.contains("CLIP text encoder"), "{text}");
}

/// Writes `tensors` as a safetensors file with `metadata` (also the LyCORIS tests' writer).
pub(super) fn write(path: &Path, tensors: &BTreeMap<String, T>, metadata: Option<(&str, &str)>) {
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.as_str(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    let meta = metadata.map(|(k, v)| [(k.to_string(), v.to_string())].into_iter().collect());
    safetensors::serialize_to_file(views, meta, path).unwrap();
}

#[test]
fn contradictory_single_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = read(&fixture("conventions/diffusers_metadata.safetensors"));
    let module = "unet.down_blocks.0.attentions.0.proj_in";
    /// (name, tensors, metadata entry, what the error must say)
    type Case<'a> = (
        &'a str,
        BTreeMap<String, T>,
        Option<(&'a str, &'a str)>,
        Vec<&'a str>,
    );
    let cases: Vec<Case> = vec![
        // One module's factors in two spellings.
        (
            "mixed",
            {
                let mut t = src.clone();
                let up = t.remove(&format!("{module}.lora_B.weight")).unwrap();
                t.insert(format!("{module}.lora.up.weight"), up);
                t
            },
            None,
            vec![module, "mixes"],
        ),
        // The same factor twice.
        (
            "twice",
            {
                let mut t = src.clone();
                let up = t[&format!("{module}.lora_B.weight")].clone();
                t.insert(format!("{module}.lora_B.default.weight"), up);
                t
            },
            None,
            vec!["lora_B", "twice"],
        ),
        // Metadata whose rank contradicts the factors.
        (
            "rank",
            src.clone(),
            Some((
                "lora_adapter_metadata",
                r#"{"unet.r": 8, "unet.lora_alpha": 8}"#,
            )),
            vec!["r = 8", "rank 4"],
        ),
        // Metadata that is not JSON.
        (
            "json",
            src.clone(),
            Some(("lora_adapter_metadata", "{not json")),
            vec!["lora_adapter_metadata", "JSON"],
        ),
    ];
    for (name, tensors, meta, expect) in cases {
        let p = dir.path().join(format!("{name}.safetensors"));
        write(&p, &tensors, meta);
        let out = dir.path().join(format!("{name}.out"));
        let line = merge_refused(&unet(), &p, &out, &[]);
        assert!(line.contains(&format!("{name}.safetensors")), "{line}");
        for e in expect {
            assert!(line.contains(e), "{name}: `{e}` not in {line}");
        }
        assert!(!out.exists(), "{name}: nothing written");
    }
}

/// `convert --to diffusers` writes `COMPONENT.MODULE.lora_A/B.weight` with the config in
/// `lora_adapter_metadata`: the factors are the input's bytes, the file merges like the input,
/// and what has no diffusers form (no component, a LoHa module) is refused in one line.
#[test]
fn convert_to_diffusers_keeps_factors_and_scales() {
    let dir = tempfile::tempdir().unwrap();
    for (case, reference, extra) in [
        ("diffusers_metadata", "reference", vec![]),
        ("kohya", "reference_alpha_r", vec!["--base", "UNET"]),
        (
            "peft_default",
            "reference_alpha_r",
            vec!["--prefix", "lora_unet"],
        ),
    ] {
        let src = fixture(&format!("conventions/{case}.safetensors"));
        let out = dir.path().join(format!("{case}.d.safetensors"));
        let unet = unet();
        let extra: Vec<&str> = extra
            .iter()
            .map(|a| if *a == "UNET" { s(&unet) } else { a })
            .collect();
        run_ok(convert_args(&src, "diffusers", &out, &extra));
        let t = read(&out);
        assert!(
            t.keys()
                .all(|k| k.starts_with("unet.") && k.contains(".lora_")),
            "{case}"
        );
        // Byte for byte: every written factor is one of the input's.
        let input: Vec<Vec<u8>> = read(&src).into_values().map(|x| x.data).collect();
        assert!(
            t.values().all(|x| input.contains(&x.data)),
            "{case}: factors copied"
        );
        let merged = merge(dir.path(), &format!("{case}.d"));
        let r = read(&fixture(&format!("conventions/{reference}.safetensors")));
        for (name, want) in &r {
            let e = rel_err(&merged[name].f32(), &want.f32());
            assert!(e <= TOL, "{case} {name}: {e:e}");
        }
    }
    // No pipeline component in the names and none given.
    let out = dir.path().join("none.safetensors");
    let peft_default = fixture("conventions/peft_default.safetensors");
    let line = refused(convert_args(&peft_default, "diffusers", &out, &[]), &out);
    assert_mentions(&line, &["component", "--prefix"]);
    // A LoHa module has no diffusers LoRA form.
    let (loha, base) = (
        fixture("lycoris/loha.safetensors"),
        fixture("lycoris/base.safetensors"),
    );
    let flags = ["--base", s(&base), "--prefix", "lora_unet"];
    let line = refused(convert_args(&loha, "diffusers", &out, &flags), &out);
    assert_mentions(&line, &["loha", "resize"]);
}

/// OneTrainer's LoRA output formats (`fixtures/conventions_prefix/`, built to OneTrainer @23df383
/// by `fixtures/gen/onetrainer_formats_fixtures.py`): KOHYA_LORA's `lora_te2_`/`lora_te3_`,
/// COMFY_LORA's `text_encoders.clip_l.transformer.` and `diffusion_model.`, DIFFUSERS_LORA's
/// `text_encoder_2.` and `transformer.` (alpha folded into `lora_B`), the LEGACY mixture's
/// `lora_transformer_` and the INTERNAL canonical dict (`transformer.` with `lora_down`/`alpha`).
/// Each merges into the base its names map onto as the generator's f64 merge of the saved
/// factors, and `inspect` names its prefix and spelling.
#[test]
fn onetrainer_formats_merge_like_an_f64_reference() {
    /// (case, base, prefix, naming)
    const OT: &[(&str, &str, &str, &str)] = &[
        ("ot_kohya_te2", "kohya/te_base", "lora_te2", "kohya"),
        ("ot_kohya_te3", "kohya/te_base", "lora_te3", "kohya"),
        ("ot_comfy_te1", "kohya/te_base", "text_encoders", "peft"),
        (
            "ot_diffusers_te2",
            "kohya/te_base",
            "text_encoder_2",
            "peft",
        ),
        (
            "ot_mixture_transformer",
            "lycoris_w0/base.safetensors",
            "lora_transformer",
            "kohya",
        ),
        (
            "ot_diffusers_transformer",
            "lycoris_w0/base.safetensors",
            "transformer",
            "peft",
        ),
        (
            "ot_comfy_transformer",
            "lycoris_w0/base.safetensors",
            "diffusion_model",
            "peft",
        ),
        (
            "ot_internal_transformer",
            "lycoris_w0/base.safetensors",
            "transformer",
            "kohya",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for &(case, base, prefix, naming) in OT {
        let adapter = fixture(&format!("conventions_prefix/{case}.safetensors"));
        let out = dir.path().join(format!("{case}.out"));
        merge_ok(&fixture(base), &adapter, &out, &["--quiet"]);
        let reference = read(&fixture(&format!(
            "conventions_prefix/{case}.merged.safetensors"
        )));
        let b = read_checkpoint(&fixture(base));
        let n = assert_matches_reference(&read_checkpoint(&out), &b, &reference, TOL);
        // Not vacuous: every reference tensor is far from the base.
        for (name, r) in &reference {
            assert!(
                rel_err(&b[name].f32(), &r.f32()) > 1e3 * TOL,
                "{case} {name}"
            );
        }
        assert!(n >= 2, "{case}: {n}");
        let v: serde_json::Value = inspect_json(&adapter, &[]);
        assert_eq!(
            v["convention"]["prefixes"],
            serde_json::json!([prefix]),
            "{case}"
        );
        assert_eq!(
            v["convention"]["naming"],
            serde_json::json!([naming]),
            "{case}"
        );
    }
}
