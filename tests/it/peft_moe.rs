//! PEFT `target_parameters` on fused MoE experts (`lora.ParamWrapper`, PEFT 0.21.2): `merge`
//! against PEFT's own `merge_and_unload` (fixtures/gen/peft_moe_fixtures.py), refusals, and the
//! writers that cannot express an expert.
//!
//! Two references per case. PEFT's merged tensors, within 1e-6 relative (Frobenius): PEFT's
//! `einsum` runs as a torch `bmm` whose CPU kernel fuses the second product into a multiply-add
//! (`fma(b1, a1, b0·a0)` for r = 2), where lorakit rounds every product (the arithmetic documented
//! on `backend::MergeJob`); the generator's `why` check and the plain q/v_proj of the `mixed`
//! case differ from PEFT in the same elements for that reason. And bit for bit, the einsum of
//! PEFT's `get_delta_weight` written out here from its reshapes — A as `(E, r, in)`, B as
//! `(out, r, E)` — in that documented arithmetic, read with the independent `safetensors` crate.

use super::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const TOL: f64 = 1e-6;
const L: &str = "model.layers.0.mlp.experts";

/// Merges `fixtures/moe/{family}/adapters/{case}` into its base on the CPU: the output's
/// tensors, the base's and the adapter's.
fn merged(family: &str, case: &str) -> [BTreeMap<String, T>; 3] {
    let (_dir, out) = scratch("out");
    let base = fixture(&format!("moe/{family}/base"));
    let adapter = fixture(&format!("moe/{family}/adapters/{case}"));
    run_ok(merge_args(&base, &adapter, &out, &["--device", "cpu"]));
    let adapter = read(&adapter.join("adapter_model.safetensors"));
    [read_checkpoint(&out), read_checkpoint(&base), adapter]
}

/// `W0 + s · einsum("o r e, e r i -> e i o" | "e o i", B.reshape(out, r, E), A.reshape(E, r, in))`
/// for parameter `[E, d1, d2]`, each sum in ascending r with every product rounded.
fn einsum_merge(w0: &T, a: &T, b: &T, r: usize, scale: f32, transposed: bool) -> Vec<f32> {
    let (w0, a_v, b_v) = (w0.f32(), a.f32(), b.f32());
    let (e_n, inf, outf) = (a.shape[0] / r, a.shape[1], b.shape[0]);
    assert_eq!(b.shape[1], r * e_n);
    let mut out = w0.clone();
    for e in 0..e_n {
        for o in 0..outf {
            for i in 0..inf {
                let mut acc = 0f32;
                for k in 0..r {
                    acc += b_v[o * r * e_n + k * e_n + e] * a_v[(e * r + k) * inf + i];
                }
                let at = if transposed {
                    (e * inf + i) * outf + o
                } else {
                    (e * outf + o) * inf + i
                };
                out[at] += scale * acc;
            }
        }
    }
    out
}

/// gpt-oss stores its experts fused and transposed (`[E, in, out]`); down_proj `[4, 32, 32]` is
/// square, so only the base's `model_type` tells the layout. Nested wrappers: gate_up_proj is
/// `experts.base_layer`, down_proj `experts`.
#[test]
fn gpt_oss_fused_experts_match_peft() {
    let [out, base, ad] = merged("gpt_oss", "experts");
    let peft = read(&fixture("moe/gpt_oss/merged_experts.safetensors"));
    assert_eq!(assert_matches_reference(&out, &base, &peft, TOL), 2);
    for (param, wrapper) in [
        ("gate_up_proj", format!("{L}.base_layer")),
        ("down_proj", L.to_owned()),
    ] {
        let key = format!("{L}.{param}");
        let f = |x: &str| &ad[&format!("base_model.model.{wrapper}.lora_{x}.weight")];
        let want = einsum_merge(&base[&key], f("A"), f("B"), 2, 2.0, true);
        assert_eq!(out[&key].f32(), want, "{key}: bit for bit");
    }
}

/// Ordinary target_modules beside the expert parameters, with rank_pattern / alpha_pattern on
/// down_proj (r 3, alpha 9: PEFT matches them against `…experts.down_proj`).
#[test]
fn gpt_oss_mixed_targets_and_patterns_match_peft() {
    let [out, base, ad] = merged("gpt_oss", "mixed");
    let peft = read(&fixture("moe/gpt_oss/merged_mixed.safetensors"));
    assert_eq!(assert_matches_reference(&out, &base, &peft, TOL), 4);
    let key = format!("{L}.down_proj");
    let f = |x: &str| &ad[&format!("base_model.model.{L}.lora_{x}.weight")];
    let want = einsum_merge(&base[&key], f("A"), f("B"), 3, 3.0, true);
    assert_eq!(out[&key].f32(), want, "{key}: bit for bit");
}

/// A family transformers saves one tensor per expert under `disk` (`{disk}.{e}.{part}.weight`):
/// the merge lands on those tensors, and PEFT's fused `[E, out, in]` result, split the same way
/// (`gate_up` = the `gate` parts' rows, then the `up` parts'), is the reference.
fn per_expert_checkpoint_matches_peft(
    family: &str,
    disk: &str,
    gate_up: [&str; 2],
    down: &str,
    scale: f32,
) {
    let [out, base, ad] = merged(family, "experts");
    let fused = read(&fixture(&format!(
        "moe/{family}/merged_experts.safetensors"
    )));
    // The fused base as transformers builds it (gate and up concatenated on the output axis).
    let stack = |parts: &[&str]| -> T {
        let mut data = Vec::new();
        for e in 0..4 {
            for p in parts {
                data.extend_from_slice(&base[&format!("{disk}.{e}.{p}.weight")].data);
            }
        }
        let first = &base[&format!("{disk}.0.{}.weight", parts[0])];
        let rows = first.shape[0] * parts.len();
        T {
            dtype: first.dtype,
            shape: vec![4, rows, first.shape[1]],
            data,
        }
    };
    let mut peft = BTreeMap::new();
    let mut exact = BTreeMap::new();
    for (param, parts, wrapper) in [
        ("gate_up_proj", &gate_up[..], format!("{L}.base_layer")),
        ("down_proj", &[down][..], L.to_owned()),
    ] {
        let f = |x: &str| &ad[&format!("base_model.model.{wrapper}.lora_{x}.weight")];
        let w0 = stack(parts);
        let want = einsum_merge(&w0, f("A"), f("B"), 2, scale, false);
        let theirs = fused[&format!("{L}.{param}")].f32();
        let per = w0.shape[1] / parts.len() * w0.shape[2];
        for e in 0..4 {
            for (j, p) in parts.iter().enumerate() {
                let at = (e * parts.len() + j) * per;
                let name = format!("{disk}.{e}.{p}.weight");
                let t = |v: &[f32]| T {
                    dtype: safetensors::Dtype::F32,
                    shape: base[&name].shape.clone(),
                    data: v[at..at + per]
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect(),
                };
                let (theirs, want) = (t(&theirs), t(&want));
                peft.insert(name.clone(), theirs);
                exact.insert(name, want);
            }
        }
    }
    assert_eq!(assert_matches_reference(&out, &base, &peft, TOL), 12);
    for (name, t) in &exact {
        assert_eq!(out[name].data, t.data, "{name}: bit for bit");
    }
}

/// Qwen3-MoE (`conversion_mapping.py` `qwen2_moe`: `experts.{e}.gate_proj` / `up_proj` /
/// `down_proj`), with rsLoRA: scale 8/√2.
#[test]
fn qwen3_moe_per_expert_checkpoint_matches_peft() {
    let scale = (8.0 / 2f64.sqrt()) as f32;
    per_expert_checkpoint_matches_peft(
        "qwen3_moe",
        L,
        ["gate_proj", "up_proj"],
        "down_proj",
        scale,
    );
}

/// Mixtral (`conversion_mapping.py` `mixtral`: `block_sparse_moe.experts.{e}.w1` / `w3` / `w2`).
#[test]
fn mixtral_per_expert_checkpoint_matches_peft() {
    per_expert_checkpoint_matches_peft(
        "mixtral",
        "model.layers.0.block_sparse_moe.experts",
        ["w1", "w3"],
        "w2",
        2.0,
    );
}

/// A copy of the gpt-oss `experts` adapter with `edit` applied to its tensors and config.
fn edited_adapter(
    dir: &Path,
    edit_tensors: impl Fn(&mut BTreeMap<String, T>),
    edit_config: impl Fn(&mut serde_json::Value),
) -> PathBuf {
    let to = dir.join("edited");
    copy_dir(&fixture("moe/gpt_oss/adapters/experts"), &to);
    let mut t = read(&to.join("adapter_model.safetensors"));
    edit_tensors(&mut t);
    write_tensors(&to.join("adapter_model.safetensors"), &t);
    let p = to.join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit_config(&mut cfg);
    std::fs::write(&p, cfg.to_string()).unwrap();
    to
}

/// Merges expecting a refusal: the one-line error, with nothing at the output path.
fn refused(base: &Path, adapter: &Path, dir: &Path) -> String {
    let out = dir.join("refused");
    let err = one_line_error(&run_err(merge_args(base, adapter, &out, &[])));
    assert!(!out.exists(), "nothing written: {err}");
    err
}

#[test]
fn wrong_expert_counts_and_unsupported_wrappers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("moe/gpt_oss/base");
    // Three experts' rows (r·3) for a four-expert base.
    let cut = |t: &mut BTreeMap<String, T>| {
        let a = t
            .get_mut(&format!("base_model.model.{L}.lora_A.weight"))
            .unwrap();
        a.shape[0] = 6;
        a.data.truncate(6 * 32 * 4);
        let b = t
            .get_mut(&format!("base_model.model.{L}.lora_B.weight"))
            .unwrap();
        b.data = b
            .data
            .chunks_exact(8 * 4)
            .flat_map(|row| row[..6 * 4].to_vec())
            .collect();
        b.shape[1] = 6;
    };
    let err = refused(&base, &edited_adapter(dir.path(), cut, |_| {}), dir.path());
    assert!(
        err.contains("3 expert(s)")
            && err.contains(&format!("`{L}.down_proj`"))
            && err.contains("has 4"),
        "{err}"
    );
    // Rows that are no multiple of r.
    let err = refused(
        &base,
        &edited_adapter(dir.path(), |_| {}, |c| c["r"] = serde_json::json!(3)),
        dir.path(),
    );
    assert!(
        err.contains("r = 3") && err.contains("lora_A has 8 rows") && err.contains(L),
        "{err}"
    );
    // PEFT's ParamWrapper refuses dropout; lorakit does not pretend it can be merged.
    let err = refused(
        &base,
        &edited_adapter(
            dir.path(),
            |_| {},
            |c| c["lora_dropout"] = serde_json::json!(0.1),
        ),
        dir.path(),
    );
    assert!(err.contains("lora_dropout") && err.contains(L), "{err}");
}

/// Without `config.json` the square down_proj `[4, 32, 32]` could be `[E, in, out]` or
/// `[E, out, in]`: refused, naming it. gate_up_proj `[4, 32, 64]` alone is told by its shape.
#[test]
fn square_experts_without_model_type_are_refused() {
    let (dir, base) = scratch("base");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::copy(
        fixture("moe/gpt_oss/base/model.safetensors"),
        base.join("model.safetensors"),
    )
    .unwrap();
    let err = refused(&base, &fixture("moe/gpt_oss/adapters/experts"), dir.path());
    assert!(
        err.contains(&format!("`{L}.down_proj`")) && err.contains("model_type"),
        "{err}"
    );
}

/// No writer rebuilds nested ParamWrappers: converting is refused, nothing written; inspect
/// lists one module per expert.
#[test]
fn convert_refuses_and_inspect_lists_experts() {
    let dir = tempfile::tempdir().unwrap();
    let ad = fixture("moe/gpt_oss/adapters/experts");
    for to in ["kohya", "peft"] {
        let out = dir.path().join(format!("to-{to}"));
        let err = one_line_error(&run_err(convert_args(&ad, to, &out, &[])));
        assert!(
            err.contains("gate_up_proj[") || err.contains("down_proj["),
            "{to}: {err}"
        );
        assert!(err.contains("fused MoE parameter"), "{to}: {err}");
        assert!(!out.exists(), "{to}: nothing written");
    }
    let v = inspect_json(&ad, &[]);
    let names: Vec<&str> = module_names(&v);
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(
        names.contains(&format!("{L}.gate_up_proj[3/4]").as_str()),
        "{names:?}"
    );
}

/// The GPU engine merges each expert slice to the same bytes as the CPU engine (the arithmetic
/// of `backend::MergeJob` is the same on both), fused and per-expert layouts alike.
#[test]
fn gpu_expert_merges_equal_cpu() {
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (family, case) in [("gpt_oss", "mixed"), ("qwen3_moe", "experts")] {
        let base = fixture(&format!("moe/{family}/base"));
        let ad = fixture(&format!("moe/{family}/adapters/{case}"));
        let outs: Vec<_> = ["cpu", "gpu"]
            .iter()
            .map(|d| {
                let out = dir.path().join(format!("{family}-{d}"));
                run_ok(merge_args(&base, &ad, &out, &["--device", d]));
                read_checkpoint(&out)
            })
            .collect();
        assert_eq!(outs[0], outs[1], "{family}/{case}: GPU = CPU byte for byte");
    }
}
