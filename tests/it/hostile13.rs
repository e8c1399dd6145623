//! The thirteenth hostile round (`fuzz/hostile_round.py`, `fuzz/hostile_cases_round13.py`): the
//! violations its cases found, each test failing before its fix.

use super::common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Copies the MLX base `rel` to `dir/base` with `P.weight` and `P.scales` (and `P.biases`
/// where the fixture has them) replaced by zero-size tensors of the shapes given.
fn zero_size_mlx_base(dir: &Path, rel: &str, prefix: &str, weight: &[usize], scales: &[usize]) {
    let base = dir.join("base");
    copy_dir(&fixture(rel), &base);
    let file = base.join("model.safetensors");
    let mut tensors = read(&file);
    tensors
        .get_mut(&format!("{prefix}.weight"))
        .unwrap()
        .cut_to(weight);
    for leaf in ["scales", "biases"] {
        if let Some(t) = tensors.get_mut(&format!("{prefix}.{leaf}")) {
            t.cut_to(scales);
        }
    }
    write_tensors(&file, &tensors);
}

/// An MLX weight of zero rows whose header claims 2^62 words per row (mxfp4 and affine): the
/// logical width `words · 32 / bits` overflowed `usize` in the scan, a panic (exit 101) in
/// merge, dequantize, inspect and check. Now one line naming the weight, exit 2.
#[test]
fn an_mlx_weight_whose_packed_width_overflows_is_refused_not_a_panic() {
    let p = "model.layers.0.self_attn.q_proj";
    for rel in ["mlx_quant_fp/mxfp4", "mlx_quant/q4"] {
        let dir = tempfile::tempdir().unwrap();
        zero_size_mlx_base(dir.path(), rel, p, &[0, 1 << 62], &[0, 1 << 56]);
        let base = dir.path().join("base");
        let out = dir.path().join("dq");
        let line = refused(dequantize_args(&base, &out, &[]), &out);
        assert_mentions(
            &line,
            &["model.safetensors", &format!("{p}.weight"), "overflow"],
        );
        let ad = fixture(&rel.replace('/', "/lora_"));
        let line = merge_refused(&base, &ad, &dir.path().join("o"), &[]);
        assert_mentions(&line, &[&format!("{p}.weight"), "overflow"]);
    }
}

/// A zero-size MLX weight of 2^62 rows (`[2^62, 0]`, scales `[2^62, 0]`: a consistent base of
/// no values) is dequantized at once. The kernels looped once per row: `dequantize` ran past
/// the round's 120 s limit (hours). Pre-fix this test fails by its own 60 s limit.
#[test]
fn a_zero_size_mlx_weight_of_2_62_rows_dequantizes_at_once() {
    let p = "model.layers.0.self_attn.q_proj";
    for rel in ["mlx_quant_fp/nvfp4_bf16", "mlx_quant/q4"] {
        let dir = tempfile::tempdir().unwrap();
        zero_size_mlx_base(dir.path(), rel, p, &[1 << 62, 0], &[1 << 62, 0]);
        let out = dir.path().join("dq");
        let mut child = bin()
            .args(dequantize_args(
                &dir.path().join("base"),
                &out,
                &["--quiet"],
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("{rel}: dequantize of a [2^62, 0] weight still running after 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{rel}: {status}");
        let got = read_checkpoint(&out);
        assert_eq!(got[&format!("{p}.weight")].shape, vec![1 << 62, 0]);
    }
}

/// PEFT OSF builds `U_low [out, min(out, in) − effective_rank]` from adapter_config.json
/// (`_resolve_rank`: null is half of min(out, in), a float in (0, 1] a fraction, another number
/// truncated, then clamped; the first `rank_pattern` key `re.search` finds wins; ≤ 0 raises)
/// and refuses a state dict of other shapes. lorakit ignored the field and merged the stored
/// triplets (exit 0). Each verdict below is PEFT 0.21.2's `PeftModel.from_pretrained` on
/// fixtures/llama/base with the edited gaps12/osf folder (measured, not lorakit's output).
#[test]
fn osf_effective_rank_contradicting_the_stored_triplets_is_refused() {
    use serde_json::json;
    let cases: [(&str, serde_json::Value, serde_json::Value, bool); 9] = [
        ("eff_8", json!(8), json!(null), false),
        ("eff_0", json!(0), json!(null), false),
        ("eff_1000", json!(1000), json!(null), false),
        ("quarter", json!(0.25), json!(null), false),
        ("half", json!(0.5), json!(null), true),
        ("x", json!("x"), json!(null), false),
        ("trunc_32_7", json!(32.7), json!(null), false),
        ("pattern_8", json!(null), json!({"q_proj": 8}), false),
        ("pattern_32", json!(null), json!({"q_proj": 32}), true),
    ];
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    for (name, eff, pattern, peft_loads) in cases {
        let ad = edited_copy(dir.path(), "gaps12/osf/adapter", name, |c| {
            c["effective_rank"] = eff;
            c["rank_pattern"] = pattern;
        });
        let out = dir.path().join(format!("o_{name}"));
        if peft_loads {
            run_ok(merge_args(&base, &ad, &out, &["--quiet"]));
        } else {
            let line = merge_refused(&base, &ad, &out, &[]);
            assert_mentions(&line, &["adapter_model.safetensors", "effective_rank"]);
        }
    }
}

/// Sets `lora_adapter_metadata` (diffusers' LoKrConfig, keys prefixed `transformer.`) entries of
/// the safetensors file `path`, its tensors untouched.
fn set_lokr_metadata(path: &Path, entries: &[(&str, serde_json::Value)]) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = &mut header["__metadata__"]["lora_adapter_metadata"];
    let mut cfg: serde_json::Value = serde_json::from_str(meta.as_str().unwrap()).unwrap();
    for (k, v) in entries {
        cfg[format!("transformer.{k}")] = v.clone();
    }
    *meta = cfg.to_string().into();
    let mut h = serde_json::to_vec(&header).unwrap();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

/// A diffusers-saved LoKr file (Z-Image, whole `lokr_w1`/`lokr_w2`) whose metadata `r` is one
/// at which PEFT's LoKr decomposes a half (`update_layer`: w2 whole iff 2r ≥ max(w2's sides),
/// w1 decomposed where `decompose_both` and 2r < max(w1's sides)): the file's whole factor is
/// an unexpected key and does not load, yet lorakit merged it at alpha/r (r = 1: twice the
/// saved file's scale). Now refused naming the module and r. The layouts are PEFT 0.21.2's
/// `get_peft_model(LoKrConfig(r=…))` on Linear layers of the fixture's shapes: r = 1 and 3
/// decompose w2 of [8, 4] and [4, 7]; r = 8 keeps every half whole.
#[test]
fn a_lokr_metadata_r_at_which_peft_builds_other_factors_is_refused() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("diffusion12/z_image_lokr/base.safetensors");
    type Entries = Vec<(&'static str, serde_json::Value)>;
    let cases: [(&str, Entries, bool); 5] = [
        ("r1", vec![("r", json!(1))], false),
        ("r3", vec![("r", json!(3))], false),
        (
            "both_r3",
            vec![("r", json!(3)), ("decompose_both", json!(true))],
            false,
        ),
        (
            "pattern_q1",
            vec![("rank_pattern", json!({"to_q": 1}))],
            false,
        ),
        ("r8", vec![("r", json!(8))], true),
    ];
    for (name, entries, peft_loads) in cases {
        let ad = dir.path().join(format!("{name}.safetensors"));
        std::fs::copy(fixture("diffusion12/z_image_lokr/saved.safetensors"), &ad).unwrap();
        set_lokr_metadata(&ad, &entries);
        let out = dir.path().join(format!("o_{name}.safetensors"));
        if peft_loads {
            run_ok(merge_args(&base, &ad, &out, &["--quiet"]));
        } else {
            let line = merge_refused(&base, &ad, &out, &[]);
            assert_mentions(
                &line,
                &[&format!("{name}.safetensors"), "r = ", "would not load"],
            );
        }
    }
}

/// `merge --expand-base` of a Flux control LoRA into a base whose config.json `in_channels`
/// (16, or already the widened 8) is not its `x_embedder.weight`'s 4 stored columns: the
/// rewrite took the config's value for the old width, wrote `out_channels` 16 beside a 4-row
/// `proj_out` and exit 0 (a model that does not load). diffusers 0.42.1's
/// `FluxTransformer2DModel.from_pretrained` refuses that base itself (proj_out.bias expected
/// [16], got [4]; measured). Now refused naming config.json, nothing written.
#[test]
fn expand_base_refuses_an_in_channels_that_is_not_the_stored_width() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("diffusion12/flux_control/diffusers.safetensors");
    for lie in [16, 8] {
        let base = dir.path().join(format!("base{lie}"));
        copy_dir(&fixture("diffusion12/flux_control/base"), &base);
        let cfg = base.join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
        c["in_channels"] = lie.into();
        std::fs::write(&cfg, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
        let out = dir.path().join(format!("o{lie}"));
        let line = merge_refused(&base, &adapter, &out, &["--expand-base"]);
        assert_mentions(
            &line,
            &["config.json", &format!("in_channels {lie}"), "4 columns"],
        );
    }
}
