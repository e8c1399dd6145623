//! Session 17's diffusion findings of review rev16c fixed on branch fixs17
//! (fixtures/gen/review17_diffusion.py; diffusers 0.42.1 + PEFT 0.21.2 + transformers 5.24 as
//! the oracle, their verdicts in fixtures/review17/diffusion/verdicts.json): `check --target
//! diffusers` on per-module kohya alphas, `lora_unet_unet_…` names and 2-D factors on 1×1 convs.

use super::check::{check_json, fired, outcome, target};
use super::common::*;
use serde_json::Value;

fn f(rel: &str) -> std::path::PathBuf {
    fixture(&format!("review17/diffusion/{rel}"))
}

fn verdicts() -> Value {
    read_json(f("verdicts.json"))
}

/// The diffusers target of `check ADAPTER --target diffusers [--base BASE]`: (exit code, target).
fn diffusers(adapter: &std::path::Path, base: Option<&std::path::Path>) -> (i32, Value) {
    let mut args = vec!["--target", "diffusers"];
    if let Some(b) = base {
        args.extend(["--base", s(b)]);
    }
    let (code, r) = check_json(adapter, &args);
    (code, target(&r, "diffusers").clone())
}

fn unet() -> std::path::PathBuf {
    fixture("review16/diffusion/unet")
}

/// rev16c F6: a kohya SD1.x file with per-module alphas (sd-scripts' `resize_lora.py
/// --dynamic_method`). diffusers applies its UNet attention-processor modules and its text
/// encoder's modules at their component's most common alpha. Before: `LOADS … PASS`. Now the
/// silent rule names exactly the modules diffusers scaled otherwise, with both scales.
#[test]
fn per_module_alphas_diffusers_drops_are_named_with_both_scales() {
    let v = verdicts();
    let wrong = v["dynalpha"]["misapplied"].as_object().unwrap();
    assert!(wrong.keys().any(|k| k.starts_with("lora_te_")));
    assert!(wrong.keys().any(|k| k.ends_with("to_out_0")));
    for base in [None, Some(unet())] {
        let (code, t) = diffusers(&f("dynalpha.safetensors"), base.as_deref());
        assert_eq!(code, 1, "{t}");
        assert_eq!(outcome(&t), "silent", "{t}");
        let finding = entry(&t["findings"], "rule", "diffusers.alpha_lost");
        let want: Vec<&str> = wrong.keys().map(String::as_str).collect();
        assert_eq!(item_modules(finding), want);
        for item in strs(&finding["items"]) {
            let name = item.split(' ').next().unwrap();
            let scales = wrong[name].as_array().unwrap();
            let (kohya, theirs) = (scales[0].as_f64().unwrap(), scales[1].as_f64().unwrap());
            assert_mentions(
                item,
                &[
                    &format!("kohya scale {kohya:.4}"),
                    &format!("diffusers {theirs:.4}"),
                ],
            );
        }
    }
    // One alpha over the whole file (the common case): diffusers applies it everywhere.
    let (code, t) = diffusers(&fixture("conventions/kohya.safetensors"), None);
    assert_eq!((code, outcome(&t)), (0, "loads"), "{t}");
}

/// rev16c F1 (check): every module named `lora_unet_unet_…` (a diffusers-saved file as older
/// converters wrote it): diffusers raises NoMatchingPeftModuleError. Half so named: it loads the
/// others and skips these. Before: `LOADS … PASS` on both.
#[test]
fn component_named_unet_modules_fail_or_are_dropped_as_in_diffusers() {
    let v = verdicts();
    let all = &v["unet_named"];
    assert_eq!(all["error"], "NoMatchingPeftModuleError");
    let (code, t) = diffusers(&f("unet_named.safetensors"), None);
    assert_eq!((code, outcome(&t)), (1, "fails"), "{t}");
    let finding = entry(&t["findings"], "rule", "diffusers.unet_none_placed");
    assert_eq!(item_modules(finding), strs(&all["component_named"]));
    let mixed = &v["unet_named_mixed"];
    assert_eq!(mixed["error"], Value::Null);
    let (code, t) = diffusers(&f("unet_named_mixed.safetensors"), Some(&unet()));
    assert_eq!((code, outcome(&t)), (1, "silent"), "{t}");
    assert_eq!(fired(&t), vec!["diffusers.unet_key"], "{t}");
    let named = item_modules(entry(&t["findings"], "rule", "diffusers.unet_key"));
    assert_eq!(named, strs(&mixed["component_named"]));
    let dropped = mixed["modules"].as_u64().unwrap() - mixed["loaded"].as_u64().unwrap();
    assert_eq!(named.len() as u64, dropped);
}

/// rev16c F10: 2-D kohya factors on the UNet's 1×1 convs. diffusers' load raises a size
/// mismatch; `convert --to diffusers --base` writes them 4-D and that file checks clean. Before:
/// `all 13 modules land on their exact base tensor … diffusers LOADS … PASS`.
#[test]
fn two_d_factors_on_a_conv_fail_for_diffusers_with_the_base() {
    let v = &verdicts()["conv1x1_2d"];
    assert!(
        v["error"].as_str().unwrap().starts_with("RuntimeError"),
        "{v}"
    );
    let src = f("conv1x1_2d.safetensors");
    let (code, t) = diffusers(&src, Some(&unet()));
    assert_eq!((code, outcome(&t)), (1, "fails"), "{t}");
    assert_eq!(fired(&t), vec!["diffusers.conv_factors_2d"], "{t}");
    let finding = entry(&t["findings"], "rule", "diffusers.conv_factors_2d");
    assert_eq!(item_modules(finding), strs(&v["conv_2d"]));
    // The remedy the rule names.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("diffusers.safetensors");
    run_ok(convert_args(
        &src,
        "diffusers",
        &out,
        &["--base", s(&unet()), "--quiet"],
    ));
    let (code, t) = diffusers(&out, Some(&unet()));
    assert_eq!((code, outcome(&t)), (0, "loads"), "{t}");
}

/// rev16c F9: a diffusers-saved PEFT DoRA LoRA (`StableDiffusionPipeline.save_lora_weights`:
/// `unet.….lora_magnitude_vector`, `unet.use_dora: true`) converts `--to diffusers` into the file
/// diffusers wrote (every tensor byte for byte, `use_dora` kept), whose merge equals diffusers'
/// own load + `fuse_lora` (the 32 attention weights). LyCORIS' `dora_scale` is still refused.
/// Before: "a diffusers LoRA file cannot hold DoRA".
#[test]
fn peft_dora_is_written_to_a_diffusers_file_as_diffusers_saves_it() {
    let src = f("dora.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dora.safetensors");
    run_ok(convert_args(&src, "diffusers", &out, &["--quiet"]));
    let (want, got) = (read(&src), read(&out));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        want.keys()
            .filter(|k| k.ends_with(".lora_magnitude_vector"))
            .count(),
        32
    );
    for (k, w) in &want {
        let g = &got[k];
        assert!(
            g.dtype == w.dtype && g.shape == w.shape && g.data == w.data,
            "{k}"
        );
    }
    let config = |p: &std::path::Path| -> Value {
        let bytes = std::fs::read(p).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["lora_adapter_metadata"]).unwrap()
    };
    let (cw, cg) = (config(&src), config(&out));
    for k in [
        "unet.use_dora",
        "unet.r",
        "unet.lora_alpha",
        "unet.use_rslora",
    ] {
        assert_eq!(cg[k], cw[k], "{k}");
    }
    assert_eq!(cg["unet.use_dora"], true);
    let merged = tmp.path().join("merged");
    run_ok(merge_args(
        &unet(),
        &out,
        &merged,
        &["--device", "cpu", "--quiet"],
    ));
    let n = assert_merged_matches(&merged, &unet(), &f("dora_fused.safetensors"), 1e-5);
    assert_eq!(n, 32);
    // LyCORIS' dora_scale (another formula) has no diffusers form.
    let line = one_line_error(&run_err(convert_args(
        &fixture("lycoris/dora_out.safetensors"),
        "diffusers",
        &tmp.path().join("lyco.safetensors"),
        &["--base", s(&fixture("lycoris/base.safetensors")), "--quiet"],
    )));
    assert_mentions(&line, &["DoRA"]);
    assert!(!tmp.path().join("lyco.safetensors").exists());
}
