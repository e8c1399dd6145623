//! mlx-lm adapters (`fixtures/mlx/`, written by mlx-lm 0.32.2's own trainer and fuse:
//! `fixtures/gen/mlx_fixtures.py`): lorakit's merge against `mlx_lm.fuse`, the bf16 merge against
//! the correctly rounded f64 sum, PEFT → mlx-lm conversion against PEFT's merge (and, with
//! `LORAKIT_MLX_PYTHON`, against mlx-lm's own fuse of lorakit's output), `check`, and refusals.

use super::common::*;
use std::path::{Path, PathBuf};

/// The mlx-lm fixture `name` (`lora`, `base`, …).
fn mlx(name: &str) -> PathBuf {
    fixture(&format!("mlx/{name}"))
}

/// Merges `fixtures/mlx/{case}` into `base` and checks the result against
/// `fused_{case}.safetensors` (what `mlx_lm.fuse` wrote): every tensor within 1e-6 relative, and
/// the same tensors changed from the base. Returns the max |lorakit − mlx-lm| and how many
/// tensors changed.
fn merge_matches_mlx_fuse(case: &str, base: &str) -> (f64, usize) {
    let (_dir, out) = scratch("out");
    run_ok(merge_args(&mlx(base), &mlx(case), &out, &["--quiet"]));
    let got = read_checkpoint(&out);
    let want = read(&mlx(&format!("fused_{case}.safetensors")));
    let b = read_checkpoint(&mlx(base));
    assert_matches_reference(&got, &b, &want, 1e-6);
    let changed = |m: &TensorMap| -> Vec<String> {
        m.iter()
            .filter(|(k, t)| t.data != b[k.as_str()].data)
            .map(|(k, _)| k.clone())
            .collect()
    };
    assert_eq!(
        changed(&got),
        changed(&want),
        "{case}: the tensors mlx-lm changed"
    );
    (max_abs_diff(&got, &want), changed(&want).len())
}

#[test]
fn mlx_lm_adapters_merge_as_mlx_fuse() {
    // lora: every Linear of the last two blocks, scale 20 (not divided by the rank); dora:
    // DoRALinear's magnitudes; embed: LoRAEmbedding (ΔE = scale·lora_a·lora_b) beside a Linear;
    // full: the trained block's tensors replace the base's.
    for (case, modules) in [("lora", 14), ("dora", 6), ("embed", 4), ("full", 9)] {
        let (worst, changed) = merge_matches_mlx_fuse(case, "base");
        eprintln!("{case}: max |lorakit − mlx_lm.fuse| = {worst:e}, {changed} tensors changed");
        assert!(worst <= 2.5e-7, "{case}: {worst:e}");
        assert_eq!(changed, modules, "{case}: tensors changed");
    }
}

/// `value` rounded to the nearest bfloat16, ties to even (a normal value of bf16's range).
fn bf16_nearest(value: f64) -> f32 {
    let bits = value.to_bits();
    let shift = 52 - 7;
    let lsb = (bits >> shift) & 1;
    let rounded = (bits + (1u64 << (shift - 1)) - 1 + lsb) >> shift << shift;
    f64::from_bits(rounded) as f32
}

/// On a bf16 base mlx-lm rounds ΔW to bf16 and then the sum (`weight + delta.astype(bf16)`,
/// `LoRALinear.fuse`): two roundings. lorakit's `--exact-rounding` stores the correctly rounded
/// W0 + s·lora_bᵀ·lora_aᵀ, computed here in f64 from the fixture's tensors; mlx-lm's lies within
/// half a bf16 step of ΔW plus one of the sum from it.
#[test]
fn mlx_lm_bf16_merge_is_the_correctly_rounded_sum() {
    let (_dir, out) = scratch("out");
    run_ok(merge_args(
        &mlx("base_bf16"),
        &mlx("lora_bf16"),
        &out,
        &["--quiet", "--exact-rounding"],
    ));
    let cfg = read_json(mlx("lora_bf16/adapter_config.json"));
    let scale = cfg["lora_parameters"]["scale"].as_f64().unwrap();
    let got = read_checkpoint(&out);
    let base = read_checkpoint(&mlx("base_bf16"));
    let fused = read(&mlx("fused_lora_bf16.safetensors"));
    let factors = read(&mlx("lora_bf16/adapters.safetensors"));
    let (mut modules, mut mlx_off) = (0, 0usize);
    for (key, a) in &factors {
        let Some(module) = key.strip_suffix(".lora_a") else {
            continue;
        };
        let b = &factors[&format!("{module}.lora_b")];
        let (k_in, r, out_f) = (a.shape[0], a.shape[1], b.shape[1]);
        let name = format!("{module}.weight");
        let (av, bv, w0) = (a.f32(), b.f32(), base[&name].f32());
        let (g, f) = (got[&name].f32(), fused[&name].f32());
        for o in 0..out_f {
            for i in 0..k_in {
                let delta: f64 = (0..r)
                    .map(|j| bv[j * out_f + o] as f64 * av[i * r + j] as f64)
                    .sum();
                let want = bf16_nearest(w0[o * k_in + i] as f64 + scale * delta);
                assert_eq!(g[o * k_in + i], want, "{name}[{o},{i}]");
                // mlx-lm's error: half a bf16 step of ΔW, then one of the sum.
                let bound =
                    (scale * delta).abs() * 2f64.powi(-8) + want.abs() as f64 * 2f64.powi(-7);
                let off = (f[o * k_in + i] - want).abs() as f64;
                assert!(off <= bound, "{name}[{o},{i}]: mlx-lm {off:e} > {bound:e}");
                mlx_off += usize::from(f[o * k_in + i] != want);
            }
        }
        modules += 1;
    }
    assert_eq!(modules, 14);
    eprintln!("bf16: mlx-lm's double rounding is differs from the correctly rounded sum in {mlx_off} elements");
}

/// A PEFT adapter with `rank_pattern` and `alpha_pattern` (and an embedding LoRA) written as an
/// mlx-lm folder: one rank (down_proj's r=2 padded with zeros), one scale (v_proj's folded into
/// its lora_b), and the modules' full paths as the `keys` that `linear_to_lora_layers` matches. Merged back by lorakit it equals PEFT's own merge of the PEFT adapter.
#[test]
fn peft_to_mlx_lm_keeps_every_delta() {
    let (_dir, [out, merged]) = scratch_all(["mlx", "merged"]);
    run_ok(convert_args(&mlx("peft_mixed"), "mlx", &out, &["--quiet"]));
    let cfg = read_json(out.join("adapter_config.json"));
    assert_eq!(cfg["fine_tune_type"], "lora");
    assert_eq!(cfg["num_layers"], -1);
    let params = &cfg["lora_parameters"];
    assert_eq!(params["rank"], 4);
    assert_eq!(params["scale"], 2.0); // lora_alpha 8 / r 4, the most common scale
                                      // Full module paths: mlx-lm builds exactly these layers (block-relative keys would build
                                      // one in every block).
    let keys = strs(&params["keys"]);
    assert_eq!(keys.len(), 10);
    assert!(keys.contains(&"model.embed_tokens"));
    assert!(keys.contains(&"model.layers.2.self_attn.v_proj"));
    let t = read(&out.join("adapters.safetensors"));
    let down = &t["model.layers.0.mlp.down_proj.lora_a"];
    assert_eq!(down.shape, [24, 4]);
    let v = down.f32();
    assert!(
        v.chunks(4).all(|row| row[2] == 0.0 && row[3] == 0.0),
        "padded columns are zero"
    );
    assert!(
        v.chunks(4).any(|row| row[0] != 0.0),
        "the rank-2 factor is kept"
    );
    assert_eq!(t["model.embed_tokens.lora_a"].shape, [48, 4]);
    merges_as_peft_mixed(&out, &merged);
}

/// mlx-lm's own fuse (`python -m mlx_lm fuse`) of lorakit's mlx-lm folder equals PEFT's merge
/// of the PEFT adapter it came from. Needs `LORAKIT_MLX_PYTHON` (a Python with
/// fixtures/gen/requirements-mlx.txt); without it the test says so and passes.
#[test]
fn mlx_lm_fuses_lorakit_output_as_peft_merges() {
    let Some(py) = std::env::var_os("LORAKIT_MLX_PYTHON").map(PathBuf::from) else {
        eprintln!("MLX TEST SKIPPED: set LORAKIT_MLX_PYTHON to a Python with fixtures/gen/requirements-mlx.txt");
        return;
    };
    let (_dir, [out, fused]) = scratch_all(["mlx", "fused"]);
    run_ok(convert_args(&mlx("peft_mixed"), "mlx", &out, &["--quiet"]));
    let o = std::process::Command::new(&py)
        .args(["-m", "mlx_lm", "fuse", "--model"])
        .arg(mlx("base"))
        .arg("--adapter-path")
        .arg(&out)
        .arg("--save-path")
        .arg(&fused)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n = assert_matches_reference(
        &read(&fused.join("model.safetensors")),
        &read_checkpoint(&mlx("base")),
        &read(&mlx("fused_peft_mixed.safetensors")),
        1e-6,
    );
    assert_eq!(n, 10);
}

/// Every loader lorakit models reads PEFT folders, not mlx-lm's: `check` says so for each, and
/// `--fix` writes the PEFT folder that merges as mlx-lm fused the original.
#[test]
fn check_refuses_mlx_lm_folders_and_fix_converts_them() {
    let report: serde_json::Value =
        serde_json::from_slice(&run_exit(check_args(&mlx("lora"), &["--json"]), 1).stdout).unwrap();
    assert_eq!(report["format"], "mlx");
    for t in entries(&report["targets"]) {
        let rules = field_strs(&t["findings"], "rule");
        assert!(
            rules.iter().any(|r| r.ends_with(".format")),
            "{}: {rules:?}",
            t["target"]
        );
    }
    let (_dir, [fixed, merged]) = scratch_all(["fixed", "merged"]);
    run_exit(
        check_fix_args(&mlx("lora"), Some(&mlx("base")), &fixed, &[]),
        1,
    );
    assert!(fixed.join("adapter_model.safetensors").exists());
    run_ok(merge_args(&mlx("base"), &fixed, &merged, &["--quiet"]));
    assert_merged_matches(&merged, &mlx("base"), &mlx("fused_lora.safetensors"), 1e-6);
}

/// Merges the mlx-lm folder `adapter` into the base at `merged` and checks it against PEFT's
/// merge of `peft_mixed` (the 10 tensors it changed, within 1e-6; the rest byte for byte).
fn merges_as_peft_mixed(adapter: &Path, merged: &Path) {
    run_ok(merge_args(&mlx("base"), adapter, merged, &["--quiet"]));
    let n = assert_merged_matches(
        merged,
        &mlx("base"),
        &mlx("fused_peft_mixed.safetensors"),
        1e-6,
    );
    assert_eq!(n, 10);
}

/// Copies the mlx-lm fixture `case` into `dir/case` and edits its config with `edit`.
fn edited(dir: &Path, case: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let to = dir.join(case);
    copy_dir(&mlx(case), &to);
    edit_json(to.join("adapter_config.json"), edit);
    to
}

#[test]
fn malformed_mlx_lm_adapters_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = mlx("base");
    // No scale: mlx-lm's linear_to_lora_layers raises too (it has no alpha).
    let a = edited(dir.path(), "lora", |c| {
        c["lora_parameters"]
            .as_object_mut()
            .unwrap()
            .remove("scale");
    });
    let line = merge_refused(&base, &a, &out, &[]);
    assert_mentions(&line, &["adapter_config.json", "lora_parameters.scale"]);
    // A rank the factors do not have: load_adapters' shape check refuses the file.
    std::fs::remove_dir_all(&a).unwrap();
    let a = edited(dir.path(), "lora", |c| {
        c["lora_parameters"]["rank"] = 8.into()
    });
    let line = merge_refused(&base, &a, &out, &[]);
    assert_mentions(
        &line,
        &[
            "adapters.safetensors",
            "rank 4",
            "lora_parameters.rank is 8",
        ],
    );
    std::fs::remove_dir_all(&a).unwrap();
    let a = edited(dir.path(), "lora", |c| c["fine_tune_type"] = "qlora".into());
    let line = merge_refused(&base, &a, &out, &[]);
    assert_mentions(&line, &["fine_tune_type", "qlora"]);
    // mlx-lm factors without mlx-lm's config beside them.
    std::fs::remove_dir_all(&a).unwrap();
    let a = dir.path().join("alone");
    std::fs::create_dir(&a).unwrap();
    std::fs::copy(
        mlx("lora/adapters.safetensors"),
        a.join("weights.safetensors"),
    )
    .unwrap();
    let line = merge_refused(&base, &a.join("weights.safetensors"), &out, &[]);
    assert_mentions(&line, &["weights.safetensors", "adapter_config.json"]);
    // Mixture-of-experts factors (LoRASwitchLinear, 3-D) of two expert counts.
    let moe = dir.path().join("moe");
    std::fs::create_dir(&moe).unwrap();
    std::fs::copy(
        mlx("lora/adapter_config.json"),
        moe.join("adapter_config.json"),
    )
    .unwrap();
    let zeros = vec![0u8; 3 * 4 * 16 * 4];
    write_views(
        &moe.join("adapters.safetensors"),
        &[
            (
                "model.layers.0.mlp.switch_mlp.gate_proj.lora_a",
                safetensors::Dtype::F32,
                &[2, 4, 16],
                &zeros[..2 * 4 * 16 * 4],
            ),
            (
                "model.layers.0.mlp.switch_mlp.gate_proj.lora_b",
                safetensors::Dtype::F32,
                &[3, 16, 4],
                &zeros,
            ),
        ],
    );
    let line = merge_refused(&base, &moe, &out, &[]);
    assert_mentions(
        &line,
        &[
            "model.layers.0.mlp.switch_mlp.gate_proj",
            "[E, r, in]` and `[E, out, r]",
        ],
    );
    // A tensor that is no mlx-lm parameter.
    let odd = dir.path().join("odd");
    std::fs::create_dir(&odd).unwrap();
    std::fs::copy(
        mlx("lora/adapter_config.json"),
        odd.join("adapter_config.json"),
    )
    .unwrap();
    let one = 1f32.to_le_bytes();
    write_views(
        &odd.join("adapters.safetensors"),
        &[(
            "model.layers.0.mlp.up_proj.lora_scale",
            safetensors::Dtype::F32,
            &[1],
            &one,
        )],
    );
    let line = merge_refused(&base, &odd, &out, &[]);
    assert_mentions(
        &line,
        &["model.layers.0.mlp.up_proj.lora_scale", "load_adapters"],
    );
}

/// `inspect` names the format and reads the scale as mlx-lm applies it (alpha = scale · r).
#[test]
fn inspect_reads_mlx_lm_folders() {
    let v = inspect_json(&mlx("dora"), &[]);
    assert_eq!(v["format"], "mlx");
    assert_eq!(v["dora"], true);
    let mods = entries(&v["modules"]);
    assert_eq!(mods.len(), 6);
    for m in mods {
        assert_eq!(m["scale"], 3.5);
        assert_eq!(m["rank"], 2);
    }
}

/// `combine --method cat` of two mlx-lm adapters writes an mlx-lm folder (ranks 4 and 3 summed
/// per module and padded to one rank, the scales folded into one): merged, it equals merging
/// the sum of mlx-lm's two fuses, `fused_lora + fused_embed − W0` (both adapters change the
/// down_proj of blocks 1 and 2).
#[test]
fn combined_mlx_lm_adapters_stay_mlx_lm() {
    let (_dir, [both, merged]) = scratch_all(["both", "merged"]);
    run_ok(combine_args(
        &[(&mlx("lora"), None), (&mlx("embed"), None)],
        &both,
        &["--method", "cat", "--quiet"],
    ));
    let cfg = read_json(both.join("adapter_config.json"));
    assert_eq!(cfg["fine_tune_type"], "lora");
    run_ok(merge_args(&mlx("base"), &both, &merged, &["--quiet"]));
    let got = read_checkpoint(&merged);
    let base = read_checkpoint(&mlx("base"));
    let (lora, embed) = (
        read(&mlx("fused_lora.safetensors")),
        read(&mlx("fused_embed.safetensors")),
    );
    let mut want = TensorMap::new();
    for (k, b) in &base {
        if lora[k].data == b.data && embed[k].data == b.data {
            continue;
        }
        let sum: Vec<f32> = (lora[k].f32().iter().zip(embed[k].f32()))
            .zip(b.f32())
            .map(|((&l, e), w)| (l as f64 + e as f64 - w as f64) as f32)
            .collect();
        let t = T {
            data: f32_bytes(&sum),
            ..b.clone()
        };
        want.insert(k.clone(), t);
    }
    assert_eq!(assert_matches_reference(&got, &base, &want, 1e-6), 16);
}

/// A base MLX-quantized in a mode lorakit does not know (`mxfp6` here, laid out as the fp
/// modes are: `P.weight` packed uint32, `P.scales` U8, no biases) is named as such, never taken
/// for a float tensor of another shape: `merge` and `dequantize` refuse it in one line,
/// `inspect` lists it as not read. (Affine bases are read: `tests/it/mlx_quant.rs`; mxfp4,
/// nvfp4 and mxfp8: `tests/it/mlx_quant_fp.rs`.)
#[test]
fn mlx_quantized_bases_of_other_modes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (base, adapter, out) = (
        dir.path().join("base"),
        dir.path().join("adapter"),
        dir.path().join("out"),
    );
    std::fs::create_dir(&base).unwrap();
    let (packed, groups) = (vec![0u8; 64 * 8 * 4], vec![127u8; 64 * 2]);
    write_views(
        &base.join("model.safetensors"),
        &[
            (
                "model.layers.0.self_attn.q_proj.weight",
                safetensors::Dtype::U32,
                &[64, 8],
                &packed,
            ),
            (
                "model.layers.0.self_attn.q_proj.scales",
                safetensors::Dtype::U8,
                &[64, 2],
                &groups,
            ),
        ],
    );
    std::fs::write(
        base.join("config.json"),
        r#"{"model_type": "llama", "quantization": {"group_size": 32, "bits": 4, "mode": "mxfp6"}}"#,
    )
    .unwrap();
    let ones = f32_bytes(&[0.5; 128]);
    write_peft_adapter(
        &adapter,
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]}"#,
        &[
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".into(),
                vec![2, 64],
                ones.clone(),
            ),
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight".into(),
                vec![64, 2],
                ones,
            ),
        ],
    );
    let named = [
        "model.layers.0.self_attn.q_proj.weight",
        "MLX-quantized in mode `mxfp6`",
    ];
    let line = merge_refused(&base, &adapter, &out, &[]);
    assert_mentions(&line, &named);
    let line = refused(dequantize_args(&base, &out, &[]), &out);
    assert_mentions(&line, &named);
    let text = run_ok(inspect_args(&base, &[]));
    assert_mentions(&text, &["not read", "MLX-quantized"]);
}

/// `resize` (and `extract`) write without `convert`'s scale fold: the mlx-lm writer folds each
/// module's own scale into its lora_b itself. A PEFT adapter with `alpha_pattern` resized at its
/// own ranks into an mlx-lm folder still merges as PEFT merged it.
#[test]
fn resize_into_mlx_lm_keeps_each_module_scale() {
    let (_dir, [out, merged]) = scratch_all(["mlx", "merged"]);
    run_ok(resize_args(
        &mlx("peft_mixed"),
        &out,
        &["--rank", "4", "--format", "mlx", "--quiet"],
    ));
    merges_as_peft_mixed(&out, &merged);
}

/// What mlx-lm's `load_adapters` refuses, lorakit refuses too: a config without `rank`,
/// `dropout` or `num_layers` (KeyError / AttributeError there), a module `keys` does not name,
/// and without `keys` a module outside the blocks.
#[test]
fn mlx_lm_config_and_keys_are_checked_as_mlx_lm_does() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = mlx("base");
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &[&str]); 5] = [
        (
            "lora",
            |c| drop(c["lora_parameters"].as_object_mut().unwrap().remove("rank")),
            &["lora_parameters.rank"],
        ),
        (
            "lora",
            |c| {
                drop(
                    c["lora_parameters"]
                        .as_object_mut()
                        .unwrap()
                        .remove("dropout"),
                )
            },
            &["lora_parameters.dropout"],
        ),
        (
            "lora",
            |c| drop(c.as_object_mut().unwrap().remove("num_layers")),
            &["num_layers"],
        ),
        (
            "dora",
            |c| c["lora_parameters"]["keys"] = serde_json::json!(["self_attn.q_proj"]),
            &["self_attn.v_proj", "keys does not name it"],
        ),
        (
            "embed",
            |c| drop(c["lora_parameters"].as_object_mut().unwrap().remove("keys")),
            &["model.embed_tokens", "outside the blocks"],
        ),
    ];
    for (i, (case, edit, words)) in cases.into_iter().enumerate() {
        let sub = dir.path().join(i.to_string());
        std::fs::create_dir(&sub).unwrap();
        let a = edited(&sub, case, edit);
        let line = merge_refused(&base, &a, &out, &[]);
        assert_mentions(&line, words);
    }
}
