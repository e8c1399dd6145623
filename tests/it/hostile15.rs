//! The fifteenth hostile round (`fuzz/hostile_round.py`, `fuzz/hostile_cases_round15.py`): the
//! violations its cases found, each test failing before its fix.

use super::common::*;
use super::quant::quant;
use std::path::{Path, PathBuf};

const Q: &str = "model.layers.0.self_attn.q_proj";

/// A copy of `fixtures/quant/<model>` (every file) in `dir/name`, its tensors edited by `edit`.
fn quant_copy(dir: &Path, model: &str, name: &str, edit: impl FnOnce(&mut TensorMap)) -> PathBuf {
    let d = dir.join(name);
    copy_dir(&quant(model), &d);
    let file = d.join("model.safetensors");
    let mut t = read(&file);
    edit(&mut t);
    write_tensors(&file, &t);
    d
}

fn dequantize_refused(model: &Path) -> String {
    let out = model.with_extension("dq");
    refused(dequantize_args(model, &out, &[]), &out)
}

/// A ModelOpt config that gives a module another algorithm than its stored tensors (FP8 for an
/// NVFP4 weight, NVFP4 for an FP8 one, either through `quantized_layers` of a MIXED_PRECISION
/// export or through config.json alone) was never compared with them: merged and dequantized,
/// exit 0, a checkpoint TensorRT-LLM and vLLM build other layers for.
#[test]
fn a_modelopt_config_naming_another_algorithm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (model, other, stored) in [
        ("modelopt_nvfp4", "FP8", "NVFP4"),
        ("modelopt_fp8", "NVFP4", "FP8"),
    ] {
        let top = quant_copy(dir.path(), model, &format!("{model}-top"), |_| {});
        edit_json(top.join("hf_quant_config.json"), |j| {
            j["quantization"]["quant_algo"] = other.into()
        });
        let line = dequantize_refused(&top);
        // The first weight in file order is named (layer 0's down_proj).
        assert_mentions(
            &line,
            &["hf_quant_config.json", "model.layers.0.", other, stored],
        );
        // MIXED_PRECISION: every quantized module listed with its stored algorithm, but q_proj.
        let mixed = quant_copy(dir.path(), model, &format!("{model}-mixed"), |_| {});
        let mut layers = serde_json::Map::new();
        for name in read(&mixed.join("model.safetensors")).keys() {
            if let Some(p) = name.strip_suffix(".weight_scale") {
                let algo = if p == Q { other } else { stored };
                layers.insert(p.to_owned(), serde_json::json!({ "quant_algo": algo }));
            }
        }
        edit_json(mixed.join("hf_quant_config.json"), |j| {
            j["quantization"]["quant_algo"] = "MIXED_PRECISION".into();
            j["quantization"]["quantized_layers"] = layers.into();
        });
        let line = dequantize_refused(&mixed);
        assert_mentions(&line, &["hf_quant_config.json", Q, other]);
        let cfg = quant_copy(dir.path(), model, &format!("{model}-cfg"), |_| {});
        std::fs::remove_file(cfg.join("hf_quant_config.json")).unwrap();
        edit_json(cfg.join("config.json"), |j| {
            j["quantization_config"]["quant_algo"] = other.into()
        });
        let line = dequantize_refused(&cfg);
        assert_mentions(&line, &["config.json", "model.layers.0.", other]);
    }
}

/// ModelOpt FP8 stores one F32 [] `weight_scale` per weight; a [2] or U8 scale was tiled as a
/// block grid by the generic FP8 reader and merged (exit 0). A `group_size` that is no size was
/// ignored; an hf_quant_config.json that is a FIFO was skipped for config.json's description.
#[test]
fn modelopt_scales_and_config_fields_of_another_kind_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let scale = format!("{Q}.weight_scale");
    for (i, (dtype, shape, data)) in [
        (
            safetensors::Dtype::F32,
            vec![2],
            [0.01f32.to_le_bytes(); 2].concat(),
        ),
        (safetensors::Dtype::U8, vec![4], vec![0u8; 4]),
    ]
    .into_iter()
    .enumerate()
    {
        let base = quant_copy(dir.path(), "modelopt_fp8", &format!("s{i}"), |t| {
            t.insert(scale.clone(), T { dtype, shape, data });
        });
        let line = dequantize_refused(&base);
        assert_mentions(&line, &["model.safetensors", &scale, "F32 []"]);
    }
    let base = quant_copy(dir.path(), "modelopt_nvfp4", "g", |_| {});
    edit_json(base.join("hf_quant_config.json"), |j| {
        j["quantization"]["group_size"] = "32".into()
    });
    assert_mentions(
        &dequantize_refused(&base),
        &["hf_quant_config.json", "group_size"],
    );
    let base = quant_copy(dir.path(), "modelopt_nvfp4", "fifo", |_| {});
    let hf = base.join("hf_quant_config.json");
    std::fs::remove_file(&hf).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&hf)
        .status()
        .unwrap();
    assert!(status.success());
    assert_mentions(
        &dequantize_refused(&base),
        &["hf_quant_config.json", "not a regular file"],
    );
}

/// An FP8 base of a ModelOpt algorithm lorakit does not read (`W4A16_AWQ`): dequantize named
/// the config, but merge said "adapter module(s) do not match the base … is F8_E4M3" (the FP8
/// weights are left out of the map and met as plain F8 tensors).
#[test]
fn merge_onto_an_unread_modelopt_fp8_algorithm_names_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let base = quant_copy(dir.path(), "modelopt_fp8", "awq", |_| {});
    edit_json(base.join("hf_quant_config.json"), |j| {
        j["quantization"]["quant_algo"] = "W4A16_AWQ".into()
    });
    let line = merge_refused(
        &base,
        &fixture("llama/adapters/rslora_all"),
        &dir.path().join("o"),
        &[],
    );
    assert_mentions(&line, &["hf_quant_config.json", "W4A16_AWQ"]);
}

/// A float output written into a folder that holds an older ModelOpt export kept its
/// hf_quant_config.json, which loaders read before config.json: the float weights would load
/// as NVFP4/FP8. It goes with the older checkpoint's other files.
#[test]
fn a_float_output_removes_an_older_hf_quant_config() {
    let dir = tempfile::tempdir().unwrap();
    for (model, args) in [
        ("modelopt_nvfp4", vec!["dequantize"]),
        ("modelopt_fp8", vec!["merge", "--quant", "dequantize"]),
    ] {
        let out = dir.path().join(format!("o-{model}"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::copy(
            quant(&format!("{model}/hf_quant_config.json")),
            out.join("hf_quant_config.json"),
        )
        .unwrap();
        std::fs::write(out.join("notes.txt"), "kept").unwrap();
        let argv = if args[0] == "dequantize" {
            dequantize_args(&quant(model), &out, &["--quiet"])
        } else {
            merge_args(
                &quant(model),
                &fixture("llama/adapters/rslora_all"),
                &out,
                &["--quiet", "--quant", "dequantize"],
            )
        };
        run_ok(argv);
        assert!(out.join("model.safetensors").is_file(), "{model}");
        assert!(!out.join("hf_quant_config.json").exists(), "{model}");
        assert!(out.join("notes.txt").is_file(), "{model}");
    }
}

/// compressed-tensors MXFP8 (an FP8 weight with E8M0 `U8` group scales) was read by the generic
/// FP8 reader without the config's group size, scale dtype or symmetry, and with a zero point,
/// a global scale or a lying `weight_shape` beside it ignored: scales of 16-wide groups, float
/// scales, `symmetric: false` all merged, exit 0.
#[test]
fn mxfp8_scales_and_companions_are_compared_with_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let scale = format!("{Q}.weight_scale");
    let wide = quant_copy(dir.path(), "ct_mxfp8", "wide", |t| {
        let s = t.get_mut(&scale).unwrap();
        s.data = [s.data.clone(), s.data.clone()].concat();
        s.shape = vec![64, 4];
    });
    assert_mentions(
        &dequantize_refused(&wide),
        &["config.json", "group_0", Q, "groups of 32"],
    );
    let float = quant_copy(dir.path(), "ct_mxfp8", "float", |t| {
        let n = t[&scale].data.len();
        t.insert(
            scale.clone(),
            T {
                dtype: safetensors::Dtype::F32,
                shape: vec![64, 2],
                data: [1f32.to_le_bytes()].repeat(n).concat(),
            },
        );
    });
    assert_mentions(
        &dequantize_refused(&float),
        &["config.json", "group_0", "scale_dtype"],
    );
    let zp = quant_copy(dir.path(), "ct_mxfp8", "zp", |t| {
        let s = T {
            dtype: t[&scale].dtype,
            shape: t[&scale].shape.clone(),
            data: vec![0; t[&scale].data.len()],
        };
        t.insert(format!("{Q}.weight_zero_point"), s);
    });
    assert_mentions(
        &dequantize_refused(&zp),
        &["model.safetensors", &format!("{Q}.weight_zero_point")],
    );
    let asym = quant_copy(dir.path(), "ct_mxfp8", "asym", |_| {});
    edit_json(asym.join("config.json"), |j| {
        j["quantization_config"]["config_groups"]["group_0"]["weights"]["symmetric"] = false.into()
    });
    assert_mentions(&dequantize_refused(&asym), &["config.json", "asymmetric"]);
}

/// GLoRA's C, D and E paths stored as another kind than `config_C` / `config_D_E` make PEFT
/// build (a lora C under `vector`, constant D/E under `vector`): PEFT loads none of them into
/// the paths it builds, lorakit merged the stored ones (exit 0).
#[test]
fn glora_bias_paths_of_another_kind_than_the_config_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base_attn_bias");
    for (i, (key, value, path)) in [
        ("config_C", "vector", "glora_C"),
        ("config_D_E", "vector", "glora_D"),
    ]
    .into_iter()
    .enumerate()
    {
        let ad = edited_copy(
            dir.path(),
            "gaps14/glora_bias/adapter",
            &format!("ad{i}"),
            |c| c[key] = value.into(),
        );
        let line = merge_refused(&base, &ad, &dir.path().join(format!("o{i}")), &[]);
        assert_mentions(&line, &["adapter_model.safetensors", key, path]);
    }
}

/// Config values PEFT refuses or fails on, read as their defaults and merged (exit 0): TinyLoRA
/// `weight_tying` "x" (TinyLoraConfig compares it with 0 and 1) and `projection_seed` "42"
/// (torch's `manual_seed`), Super-Tuning `select_top` null (`torch.topk(largest=None)`).
#[test]
fn tuner_config_values_peft_fails_on_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    for (i, (fx, key, value)) in [
        (
            "gaps14/tinylora_wt0",
            "weight_tying",
            serde_json::json!("x"),
        ),
        (
            "gaps14/tinylora_wt0",
            "projection_seed",
            serde_json::json!("42"),
        ),
        ("gaps14/super_noidx", "select_top", serde_json::Value::Null),
    ]
    .into_iter()
    .enumerate()
    {
        let ad = edited_copy(
            dir.path(),
            &format!("{fx}/adapter"),
            &format!("ad{i}"),
            |c| c[key] = value,
        );
        let line = merge_refused(&base, &ad, &dir.path().join(format!("o{i}")), &[]);
        assert_mentions(&line, &["adapter_config.json", key]);
    }
}

/// `inspect --plot` to a file of another extension computed the spectra and then failed as
/// "cannot write" (exit 3); it is bad usage, refused before any work (exit 2).
#[test]
fn a_plot_of_another_format_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("spectra.json");
    let out = run_err(inspect_args(
        &fixture("llama/adapters/qv_r8"),
        &["--spectrum", "--plot", plot.to_str().unwrap()],
    ));
    assert_eq!(out.status.code(), Some(2));
    assert_mentions(&one_line_error(&out), &["spectra.json", ".svg or .png"]);
    assert!(!plot.exists());
}
