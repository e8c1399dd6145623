//! PEFT initialisations that rewrite the base (PiSSA, OLoRA, KaSA) and variants that save
//! training state (VeLoRA, MonteCLoRA), against PEFT's own reload-and-merge
//! (`PeftModel.from_pretrained` onto the checkpoint, then `merge_and_unload`) and against a
//! float64 reference of the same residual (fixtures/gen/peft_init_fixtures.py). Configs PEFT
//! cannot merge or reload onto the original base are refused with nothing written, and so is
//! every other operation that would read such an adapter as an update of the original weights.

use super::*;
use crate::it::reference::rel64 as rel;

/// A safetensors file's tensors as f64 (F64 or F32 storage).
fn read_f64(path: &Path) -> std::collections::BTreeMap<String, Vec<f64>> {
    read(path)
        .into_iter()
        .map(|(n, t)| {
            let v = match t.dtype {
                safetensors::Dtype::F64 => t
                    .data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                _ => t.f32().iter().map(|&x| x as f64).collect(),
            };
            (n, v)
        })
        .collect()
}

/// lorakit's merge of `init_<case>` is within f32 rounding of the f64 reference (relative
/// Frobenius error ≤ 1e-6, as every PEFT merge test), no further from PEFT's own result than
/// PEFT is from that reference (PEFT factors the f32 weight in f32: its residual carries the f32
/// SVD/QR's error, which the f64 reference does not), and leaves the other tensors untouched.
fn init_case(case: &str) {
    let (_dir, out) = scratch("out");
    run_ok(merge_args(
        &fixture("llama/base"),
        &fixture(&format!("llama/adapters/init_{case}")),
        &out,
        &["--device", "cpu"],
    ));
    assert_lands_like_peft(case, &out);
}

/// The bounds of [`init_case`] for the merged checkpoint at `out`.
fn assert_lands_like_peft(case: &str, out: &Path) {
    let merged = read_checkpoint(out);
    let base = read_checkpoint(&fixture("llama/base"));
    let peft = read_f64(&fixture(&format!("llama/merged/init_{case}.safetensors")));
    let exact = read_f64(&fixture(&format!(
        "llama/merged/init_{case}.f64.safetensors"
    )));
    assert_eq!(
        peft.keys().collect::<Vec<_>>(),
        exact.keys().collect::<Vec<_>>()
    );
    for (name, t) in &merged {
        let Some(want) = exact.get(name) else {
            assert!(
                t.data == base[name].data,
                "{case} {name}: untouched tensor changed"
            );
            continue;
        };
        let got: Vec<f64> = t.f32().iter().map(|&x| x as f64).collect();
        let (e_exact, e_peft, peft_off) = (
            rel(&got, want),
            rel(&got, &peft[name]),
            rel(&peft[name], want),
        );
        assert!(
            e_exact <= 1e-6,
            "{case} {name}: {e_exact:e} from the f64 reference"
        );
        assert!(
            e_peft <= peft_off + 1e-6,
            "{case} {name}: {e_peft:e} from PEFT, which is {peft_off:e} from the f64 reference"
        );
    }
}

#[test]
fn pissa_merges_into_the_residual_peft_rebuilds() {
    init_case("pissa");
}

#[test]
fn olora_merges_into_the_residual_peft_rebuilds() {
    init_case("olora");
}

#[test]
fn kasa_merges_its_diagonal_into_the_truncated_base() {
    init_case("kasa");
}

#[test]
fn velora_and_monteclora_training_state_is_left_out_as_peft_merges() {
    init_case("velora");
    init_case("monteclora");
}

/// The residual is computed, not skipped: the same PiSSA factors merged as a plain LoRA (the
/// init field removed) land far from PEFT's result.
#[test]
fn pissa_without_its_init_is_a_different_merge() {
    let dir = tempfile::tempdir().unwrap();
    let plain = adapter_with_config(dir.path(), "llama/adapters/init_pissa", |cfg| {
        cfg["init_lora_weights"] = serde_json::json!(true);
    });
    let out = dir.path().join("out");
    run_ok(merge_args(&fixture("llama/base"), &plain, &out, &[]));
    let merged = read_checkpoint(&out);
    let peft = read_f64(&fixture("llama/merged/init_pissa.safetensors"));
    for (name, want) in &peft {
        let got: Vec<f64> = merged[name].f32().iter().map(|&x| x as f64).collect();
        assert!(
            rel(&got, want) > 1e-2,
            "{name}: the residual made no difference"
        );
    }
}

/// Configs with no merge onto the checkpoint PEFT names: one line naming the config, nothing
/// written.
#[test]
fn inits_peft_cannot_reload_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (field, value, says) in [
        ("init_lora_weights", serde_json::json!("corda"), "corda"),
        ("init_lora_weights", serde_json::json!("loftq"), "loftq"),
        ("init_lora_weights", serde_json::json!("lora_ga"), "lora_ga"),
        (
            "init_lora_weights",
            serde_json::json!("pissa_niter_4"),
            "pissa_niter_4",
        ),
        (
            "init_lora_weights",
            serde_json::json!("fancy"),
            "does not know",
        ),
        ("arrow_config", serde_json::json!({"top_k": 2}), "Arrow"),
    ] {
        let sub = dir.path().join(says.replace(' ', "_"));
        std::fs::create_dir_all(&sub).unwrap();
        let adapter = adapter_with_config(&sub, "llama/adapters/qv_r8", |cfg| {
            cfg[field] = value.clone();
        });
        let err = refused_merge(&sub, &adapter);
        assert!(
            err.contains(says) && err.contains("adapter_config.json"),
            "{field}={value}: {err}"
        );
    }
}

/// A PiSSA adapter cannot be unmerged, stacked with another adapter on the same tensor, or
/// converted / resized / combined / run unmerged as if it were an update of the original
/// weights; each refusal names the adapter's config and writes nothing.
#[test]
fn residual_adapters_are_refused_where_the_residual_cannot_apply() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    let pissa = fixture("llama/adapters/init_pissa");
    let out = dir.path().join("out");
    let err = one_line_error(&run_err(merge_args(&base, &pissa, &out, &["--unmerge"])));
    assert_mentions(&err, &["cannot be unmerged", "pissa"]);
    let qv = fixture("llama/adapters/qv_r8");
    let err = one_line_error(&run_err(merge_args(
        &base,
        &pissa,
        &out,
        &["--adapter", s(&qv)],
    )));
    assert!(err.contains("another adapter also changes"), "{err}");
    let kohya = dir.path().join("k.safetensors");
    let err = one_line_error(&run_err(convert_args(&pissa, "kohya", &kohya, &[])));
    assert_mentions(&err, &["converting it", "adapter_config.json"]);
    let err = one_line_error(&run_err(resize_args(&pissa, &out, &["--rank", "2"])));
    assert!(err.contains("resizing it"), "{err}");
    assert!(!out.exists() && !kohya.exists(), "nothing written");
}

/// `convert --base` writes each residual adapter as the plain rank-2r LoRA for the checkpoint
/// (PEFT's `path_initial_model_for_weight_conversion` form): merged as an ordinary LoRA it lands
/// where PEFT's reload of the original lands (same bounds as [`init_case`]), its config no
/// longer asks for the init, and without `--base` the conversion is refused.
#[test]
fn residual_adapters_convert_to_plain_lora_for_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    for case in ["pissa", "olora", "kasa"] {
        let plain = dir.path().join(format!("plain_{case}"));
        let adapter = fixture(&format!("llama/adapters/init_{case}"));
        run_ok(convert_args(
            &adapter,
            "peft",
            &plain,
            &["--base", s(&base)],
        ));
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(plain.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["init_lora_weights"], serde_json::json!(true), "{case}");
        assert!(cfg.get("kasa_config").is_none(), "{case}");
        assert_eq!(cfg["r"], serde_json::json!(8), "{case}: rank doubled");
        assert_eq!(
            cfg["lora_alpha"],
            serde_json::json!(16),
            "{case}: alpha doubled"
        );
        let out = dir.path().join(format!("merged_{case}"));
        run_ok(merge_args(&base, &plain, &out, &["--device", "cpu"]));
        assert_lands_like_peft(case, &out);
    }
    let (pissa, out) = (
        fixture("llama/adapters/init_pissa"),
        dir.path().join("no_base"),
    );
    let err = refused(convert_args(&pissa, "peft", &out, &[]), &out);
    assert!(err.contains("without --base"), "{err}");
    // A base without the adapter's modules: refused, not converted half-way.
    let err = one_line_error(&run_err(convert_args(
        &fixture("llama/adapters/init_pissa"),
        "peft",
        &out,
        &["--base", s(&fixture("moe/gpt_oss/base"))],
    )));
    assert!(err.contains("every module needs its base weight"), "{err}");
    assert!(!out.exists());
}
