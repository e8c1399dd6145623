//! PEFT itself loads the adapters lorakit writes (`extract`, `train`) and merges them to the
//! same weights as lorakit's merge: `fixtures/gen/check_peft_load.py` (PeftModel.from_pretrained,
//! no missing or unexpected keys, every file tensor in the model unchanged, merge_and_unload).
//!
//! Needs a Python with torch, transformers and peft (`fixtures/gen/requirements.txt`): taken from
//! `LORAKIT_PYTHON`, else `python3`. Without one the tests say so loudly and pass, unless
//! `LORAKIT_REQUIRE_PEFT=1`, where they fail. CI does not install it: torch's PyPI wheels pull
//! about 4.8 GB of CUDA libraries (measured in /work/venv), beyond CI's time budget.

use super::common::*;
use std::ffi::OsStr;
use std::path::Path;

/// PEFT loads `adapter` onto `base` and merges it; the tensors its merge changed must be the
/// ones lorakit's merge changed, to 1e-6 relative (the merge tests' tolerance against PEFT).
fn assert_peft_loads_and_merges_like_lorakit(py: &Path, adapter: &Path, base: &Path, dir: &Path) {
    let peft_out = dir.join("peft_merged.safetensors");
    let args = [adapter.as_os_str(), base.as_os_str(), peft_out.as_os_str()];
    let log = String::from_utf8_lossy(&python_ok(py, "check_peft_load.py", &args)).into_owned();
    let merged = dir.join("lorakit_merged");
    merge_ok(base, adapter, &merged, &[]);
    let n = assert_matches_reference(
        &read_checkpoint(&merged),
        &read_checkpoint(base),
        &read(&peft_out),
        1e-6,
    );
    assert!(n > 0, "PEFT's merge changed nothing:\n{log}");
}

/// What the tests on the llama fixture start with: the Python oracle ([`peft_python`]; `None`:
/// skipped), a fresh folder and the fixture's base.
fn peft_on_llama() -> Option<(std::path::PathBuf, tempfile::TempDir, std::path::PathBuf)> {
    let py = peft_python()?;
    Some((py, tempfile::tempdir().unwrap(), fixture("llama/base")))
}

/// An extraction with linear and embedding modules (tuned = base + PEFT's qv_r8 and embedding
/// merges, made by lorakit merges that the merge tests tie to PEFT's own).
#[test]
fn peft_loads_extract_output() {
    let Some((py, dir, base)) = peft_on_llama() else {
        return;
    };
    let (step, tuned) = (dir.path().join("step"), dir.path().join("tuned"));
    for (from, adapter, to) in [
        (&base, "llama/adapters/qv_r8", &step),
        (&step, "llama/adapters/embed", &tuned),
    ] {
        merge_ok(from, &fixture(adapter), to, &[]);
    }
    let ex = dir.path().join("extracted");
    let v: serde_json::Value = serde_json::from_str(&run_ok(extract_args(
        &base,
        &tuned,
        &ex,
        &["--rank", "8", "--json"],
    )))
    .unwrap();
    let names: Vec<&str> = module_names(&v);
    assert!(names.contains(&"model.embed_tokens"), "{names:?}");
    assert_peft_loads_and_merges_like_lorakit(&py, &ex, &base, dir.path());
}

/// A trained adapter (two steps from scratch on the fixture token ids, so B ≠ 0).
#[test]
fn peft_loads_train_output() {
    let Some((py, dir, base)) = peft_on_llama() else {
        return;
    };
    let out = dir.path().join("trained");
    run_ok(train_args(
        &base,
        &[
            &[
                "--data",
                s(&fixture("llama/logits.safetensors")),
                "--out",
                s(&out),
            ][..],
            &flags("--seq-len 8 --batch 2 --steps 2 --lr 1e-2 --targets q_proj,v_proj,down_proj"),
        ]
        .concat(),
    ));
    assert_peft_loads_and_merges_like_lorakit(&py, &out, &base, dir.path());
}

/// `check --fix` output (issue #19): PEFT loads the fixed adapter with no missing or unexpected
/// keys, and its merge of it equals PEFT's own merge of the original adapter (the fixture's
/// merged file, made by merge_and_unload) within 1e-5 — the fix only regroups the scale.
#[test]
fn peft_loads_check_fix_output_and_merges_like_the_original() {
    let Some((py, dir, base)) = peft_on_llama() else {
        return;
    };
    // embed: an embedding LoRA and a lone q_proj, completed by a zero v_proj for SGLang.
    for case in ["patterns", "rslora_all", "embed"] {
        let fixed = dir.path().join(format!("fixed_{case}"));
        let adapter = fixture(&format!("llama/adapters/{case}"));
        // LoRAX never reads embedding LoRA: not fixable, so not asked for here.
        let targets = "vllm,sglang,llama.cpp,peft";
        let flags = [
            "--base",
            s(&base),
            "--target",
            targets,
            "--fix",
            "--out",
            s(&fixed),
        ];
        run_exit(check_args(&adapter, &flags), 0);
        let merged = dir.path().join(format!("peft_{case}.safetensors"));
        let reference = fixture(&format!("llama/merged/{case}.safetensors"));
        let args = [&fixed, &base, &merged, Path::new("--compare"), &reference];
        let args: Vec<&OsStr> = args.iter().map(|p| p.as_os_str()).collect();
        let tol = ["--tol", "1e-5"].map(OsStr::new);
        python_ok(&py, "check_peft_load.py", &[&args[..], &tol].concat());
    }
    for (adapter, fixed) in [
        // k/q without v (weighted_b), completed with zero v_proj LoRAs.
        ("llama/adapters/weighted_b", "fixed_wb"),
        // A renamed (root prefix) adapter: PEFT loads every tensor of the fixed folder.
        ("check/no_root_prefix", "fixed_root"),
    ] {
        let fixed = dir.path().join(fixed);
        let adapter = fixture(adapter);
        run_ok(check_args(
            &adapter,
            &["--base", s(&base), "--fix", "--out", s(&fixed)],
        ));
        assert_peft_loads_and_merges_like_lorakit(&py, &fixed, &base, dir.path());
    }
}

/// diffusers itself loads what `convert --to diffusers` writes, from a diffusers single file with
/// its `lora_adapter_metadata` alpha (≠ rank) and from a kohya file (names restored with
/// `--base`), as `pipe.load_lora_weights` does (`fixtures/gen/check_diffusers_load.py`), and its
/// fused UNet equals lorakit's merge of the input to 1e-6.
#[test]
fn diffusers_loads_convert_to_diffusers_output_and_fuses_like_lorakit() {
    let Some(py) = peft_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unet = fixture("conventions/unet");
    for (input, extra) in [
        ("diffusers_metadata", vec![]),
        (
            "kohya",
            vec!["--base".to_string(), unet.display().to_string()],
        ),
        (
            "bare",
            vec!["--prefix".to_string(), "lora_unet".to_string()],
        ),
    ] {
        let src = fixture(&format!("conventions/{input}.safetensors"));
        let out = dir.path().join(format!("{input}.diffusers.safetensors"));
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        run_ok(convert_args(&src, "diffusers", &out, &extra));
        let fused = dir.path().join(format!("{input}.fused.safetensors"));
        python_ok(
            &py,
            "check_diffusers_load.py",
            &[out.as_os_str(), fused.as_os_str()],
        );
        let merged = dir.path().join(format!("{input}.lorakit"));
        merge_ok(&unet, &src, &merged, &["--quiet"]);
        let (a, b) = (read(&fused), read_checkpoint(&merged));
        assert_eq!(a.len(), b.len(), "{input}: same tensors");
        for (name, t) in &b {
            let e = rel_err(&a[name].f32(), &t.f32());
            assert!(e <= 1e-6, "{input} {name}: diffusers vs lorakit {e:e}");
        }
    }
}

/// diffusers' `FluxPipeline` loads what `convert --to diffusers --base` writes for sd-scripts'
/// Flux file (`fixtures/diffusers_formats/flux_kohya`: BFL names, fused qkv), every module on a
/// layer, and its fuse equals diffusers' own fuse of the original file (`assert_f32_close`: 1e-5
/// of the update plus 4 ulps of the weight).
#[test]
fn diffusers_loads_a_kohya_flux_file_converted_to_diffusers() {
    let Some(py) = peft_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("diffusers_formats/flux_base.safetensors");
    let src = fixture("diffusers_formats/flux_kohya.safetensors");
    let out = dir.path().join("flux.diffusers.safetensors");
    run_ok(convert_args(&src, "diffusers", &out, &["--base", s(&base)]));
    let fused = dir.path().join("fused.safetensors");
    python_ok(
        &py,
        "check_diffusers_load.py",
        &[
            out.as_os_str(),
            fused.as_os_str(),
            OsStr::new("--flux"),
            base.as_os_str(),
        ],
    );
    let (got, want, base) = (
        read(&fused),
        read(&fixture(
            "diffusers_formats/flux_kohya_reference.safetensors",
        )),
        read(&base),
    );
    for (name, w) in &want {
        assert_f32_close(name, &got[name].f32(), &w.f32(), &base[name].f32());
    }
}

/// diffusers' `StableDiffusionLoraLoaderMixin.load_lora_weights` loads every tensor of what
/// `convert --to diffusers --base PIPELINE` writes for sd-scripts' SD1 file with UNet and text
/// encoder modules (`fixtures/pipeline_sd1`), and fuses it to the f64 reference. The original
/// kohya file it does not load whole (its text-encoder `q_proj` keys stay `to_q_lora`, which no
/// layer has: `check`'s `diffusers.te_key`), which the script's own check catches.
#[test]
fn diffusers_loads_a_kohya_sd1_file_converted_onto_its_pipeline() {
    let Some(py) = peft_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pipeline = fixture("pipeline_sd1");
    let out = dir.path().join("sd1.diffusers.safetensors");
    let src = pipeline.join("kohya.safetensors");
    run_ok(convert_args(
        &src,
        "diffusers",
        &out,
        &["--base", s(&pipeline)],
    ));
    let fused = dir.path().join("fused.safetensors");
    let args = |lora: &Path| {
        [
            lora.as_os_str().to_owned(),
            fused.as_os_str().to_owned(),
            "--pipeline".into(),
            pipeline.as_os_str().to_owned(),
        ]
    };
    let original = python_run(
        &py,
        "check_diffusers_load.py",
        &args(&src).each_ref().map(|a| a.as_os_str()),
    );
    assert!(
        !original.status.success()
            && String::from_utf8_lossy(&original.stderr).contains("8 LoRA tensors for 10"),
        "diffusers now loads the kohya file whole: {}",
        String::from_utf8_lossy(&original.stderr)
    );
    python_ok(
        &py,
        "check_diffusers_load.py",
        &args(&out).each_ref().map(|a| a.as_os_str()),
    );
    let (got, want) = (read(&fused), read(&pipeline.join("reference.safetensors")));
    for (name, w) in &want {
        let (comp, rest) = name.split_once('.').unwrap();
        let base = read_checkpoint(&pipeline.join(comp));
        assert_f32_close(name, &got[name].f32(), &w.f32(), &base[rest].f32());
    }
}

/// PEFT loads the plain LoRA `convert --base` writes for a PiSSA / OLoRA / KaSA adapter (rank
/// 2r, no init in its config) and merges it as lorakit does.
#[test]
fn peft_loads_residual_adapters_converted_for_the_checkpoint() {
    let Some((py, dir, base)) = peft_on_llama() else {
        return;
    };
    for case in ["pissa", "olora", "kasa"] {
        let plain = dir.path().join(format!("plain_{case}"));
        run_ok(convert_args(
            &fixture(&format!("llama/adapters/init_{case}")),
            "peft",
            &plain,
            &["--base", s(&base)],
        ));
        let sub = dir.path().join(case);
        std::fs::create_dir_all(&sub).unwrap();
        assert_peft_loads_and_merges_like_lorakit(&py, &plain, &base, &sub);
    }
}
