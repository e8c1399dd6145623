//! Session 16's merge-arithmetic review findings (rev16a) fixed on branch fixm16
//! (fixtures/gen/review16_merge.py, references made by transformers 5.24 + bitsandbytes 0.50.2 on
//! the CPU and PEFT 0.21.2): GPT-2's Conv1D weights quantized transposed as transformers quantizes
//! them, `--as-trained-on` on a 16-bit base rounded as bitsandbytes dequantizes, QDoRA kept in a
//! 16-bit NF4 checkpoint as PEFT requantizes it, and PEFT's Embedding merge rounding.

use super::common::*;
use std::path::{Path, PathBuf};

fn case(rel: &str) -> PathBuf {
    fixture(&format!("review16/merge/{rel}"))
}

/// The reference tensors `{prefix}.{name}` of `ref.safetensors` in `folder`, by `name`.
fn refs(folder: &str, prefix: &str) -> Vec<(String, T)> {
    let p = format!("{prefix}.");
    read(&case(&format!("{folder}/ref.safetensors")))
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&p)?.to_owned(), v)))
        .collect()
}

/// How far lorakit may be from a reference: at most `tol` apart elementwise (0: bit for bit), or
/// (`Flips`) one 16-bit ulp apart in at most one element in a thousand — where PEFT's f32 ΔW,
/// summed in another order, lands on the other side of a bf16 midpoint.
#[derive(Clone, Copy)]
enum Within {
    Abs(f32),
    Flips,
}

/// One bf16 ulp at `x`.
fn bf16_ulp(x: f32) -> f32 {
    let b = x.abs().to_bits() & 0xffff_0000;
    f32::from_bits(b + 0x1_0000) - f32::from_bits(b)
}

/// Every `{prefix}.*` reference of `folder` against the same tensor of the model in `out`: the
/// same shape and dtype, and values [`Within`] the bound. Returns how many tensors were compared.
fn matches_refs(out: &Path, folder: &str, prefix: &str, within: Within) -> usize {
    let got = read_checkpoint(out);
    let want = refs(folder, prefix);
    assert!(!want.is_empty(), "no `{prefix}.*` references");
    for (k, w) in &want {
        let g = &got[k];
        assert_eq!((g.dtype, &g.shape), (w.dtype, &w.shape), "{prefix} {k}");
        let worst = g
            .f32()
            .iter()
            .zip(w.f32())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let differing = g
            .f32()
            .iter()
            .zip(w.f32())
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        eprintln!("{prefix} {k}: {differing} differ, max {worst:e}");
        match within {
            Within::Abs(tol) => {
                assert!(worst <= tol, "{prefix} {k}: max |lorakit − PEFT| {worst:e}")
            }
            Within::Flips => {
                let n = g.f32().len();
                assert!(
                    differing * 1000 <= n,
                    "{prefix} {k}: {differing} of {n} differ"
                );
                for (a, b) in g.f32().iter().zip(w.f32()) {
                    assert!((a - b).abs() <= bf16_ulp(b), "{prefix} {k}: {a} vs {b}");
                }
            }
        }
    }
    want.len()
}

/// GPT-2 (Conv1D weights stored [in, out]) merged `--as-trained-on nf4`: transformers quantizes
/// Wᵀ, so the QLoRA model's weight is dequant(Q(Wᵀ))ᵀ. Before: the stored layout was quantized,
/// 0.025 off PEFT's merge on the QLoRA model (twice the plain merge's error).
#[test]
fn as_trained_on_quantizes_a_conv1d_weight_transposed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ato");
    merge_ok(
        &case("gpt2/base"),
        &case("gpt2/ad"),
        &out,
        &["--as-trained-on", "nf4", "--device", "cpu", "-q"],
    );
    assert_eq!(matches_refs(&out, "gpt2", "ato", Within::Abs(1e-6)), 3);
}

/// `--as-trained-on nf4` on a bf16 base: bitsandbytes dequantizes to the bf16 state, and PEFT
/// adds the f32 ΔW to that. Before: 1 bf16 ulp off on a quarter of the values (ΔW added to the
/// f32 dequantization); now 1 of 4 096 on q_proj (PEFT's ΔW summed in another order).
#[test]
fn as_trained_on_a_bf16_base_rounds_the_dequantization_to_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ato");
    merge_ok(
        &case("bf16/base"),
        &case("bf16/lora"),
        &out,
        &["--as-trained-on", "nf4", "--device", "cpu", "-q"],
    );
    assert_eq!(matches_refs(&out, "bf16", "ato", Within::Flips), 2);
}

/// GPT-2 saved by transformers with `load_in_4bit` / `load_in_8bit`: the Conv1D weights are
/// quantized as [out, in]. `dequantize` writes them as the float model stores them, [in, out]
/// (what `GPT2LMHeadModel.from_pretrained` loads), equal to bitsandbytes' dequantization.
/// Before: [out, in] tensors transformers refused (size mismatch).
#[test]
fn dequantize_writes_bnb_conv1d_weights_as_the_float_model_stores_them() {
    let tmp = tempfile::tempdir().unwrap();
    for kind in ["nf4", "int8"] {
        let out = tmp.path().join(kind);
        run_ok([
            "dequantize",
            s(&case(&format!("gpt2/{kind}"))),
            "--out",
            s(&out),
            "--dtype",
            "f32",
            "-q",
        ]);
        // c_attn, attn.c_proj, mlp.c_proj (the adapter's targets).
        assert_eq!(
            matches_refs(&out, "gpt2", kind, Within::Abs(0.0)),
            3,
            "{kind}"
        );
    }
}

/// The fan_in_fan_out adapter merged into those checkpoints as PEFT merges it on the quantized
/// model (`dequantize_bnb_weight + ΔW`, transposed back): `--quant dequantize` into NF4 and
/// int8, and `--quant keep` into NF4 byte for byte as PEFT's merge_and_unload + save_pretrained
/// requantized it; `check --target peft` says it loads (PEFT applies it there). Before: merges
/// refused by shape ([192, 64] against the adapter's [64, 192]), `check` said FAILS.
#[test]
fn adapters_merge_into_bnb_conv1d_weights_as_peft_merges_them() {
    let tmp = tempfile::tempdir().unwrap();
    let ad = case("gpt2/ad");
    for (kind, prefix) in [("nf4", "ato"), ("int8", "int8m")] {
        let out = tmp.path().join(kind);
        merge_ok(
            &case(&format!("gpt2/{kind}")),
            &ad,
            &out,
            &[
                "--quant",
                "dequantize",
                "--dtype",
                "f32",
                "--device",
                "cpu",
                "-q",
            ],
        );
        assert_eq!(
            matches_refs(&out, "gpt2", prefix, Within::Abs(1e-6)),
            3,
            "{kind}"
        );
    }
    let keep = tmp.path().join("keep");
    merge_ok(&case("gpt2/nf4"), &ad, &keep, &["--device", "cpu", "-q"]);
    let got = read_checkpoint(&keep);
    let want = read(&case("gpt2/keep.safetensors"));
    assert_eq!(want.len(), 6);
    for (k, w) in &want {
        if k.ends_with(".absmax") {
            // Block maxima of the merged weight: PEFT's ΔW summed in another order moves them
            // by f32 ulps.
            assert_eq!(got[k].shape, w.shape, "{k}");
            for (a, b) in got[k].f32().iter().zip(w.f32()) {
                assert!(
                    (a - b).abs() <= 4.0 * f32::EPSILON * b.abs(),
                    "{k}: {a} vs {b}"
                );
            }
        } else {
            assert_eq!(&got[k], w, "{k}");
        }
    }
    let out = run_ok([
        "check",
        s(&ad),
        "--base",
        s(&case("gpt2/nf4")),
        "--target",
        "peft",
    ]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("peft") && l.ends_with("LOADS")),
        "{out}"
    );
}

/// QDoRA (DoRA built on the NF4 copy of a bf16 model) merged with `--quant keep`: PEFT's DoRA
/// merge casts the result to bf16 before bitsandbytes quantizes it, and the quant_state keeps
/// `"dtype": "bfloat16"`; lorakit writes PEFT's bytes. Before: the f32 sum was quantized (every
/// absmax off) and the state said float32.
#[test]
fn qdora_kept_in_a_bf16_nf4_checkpoint_is_peft_s_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("keep");
    merge_ok(
        &case("bf16/nf4"),
        &case("bf16/dora"),
        &out,
        &["--device", "cpu", "-q"],
    );
    let got = read_checkpoint(&out);
    let want = read(&case("bf16/qdora_keep.safetensors"));
    assert!(want.len() >= 4, "{:?}", want.keys());
    for (k, w) in &want {
        assert_eq!(&got[k], w, "{k}");
    }
    // PEFT's save_pretrained left every quant_state as it was (bfloat16).
    let base = read_checkpoint(&case("bf16/nf4"));
    for (k, b) in base.iter().filter(|(k, _)| k.contains(".quant_state.")) {
        assert_eq!(&got[k], b, "{k}");
    }
}

/// A LoRA on `embed_tokens` (and q_proj) merged into a bf16 model: PEFT's `Embedding.merge`
/// rounds ΔW to bf16 before adding it (`Linear.merge` adds the f32 ΔW), on the CPU and on the
/// GPU engine alike, bit for bit with PEFT's merge_and_unload. Before: ΔW added in f32, 1 bf16
/// ulp off on 2 334 of 8 192 embedding values.
#[test]
fn a_bf16_embedding_merges_with_peft_s_rounded_delta() {
    let tmp = tempfile::tempdir().unwrap();
    let mut devices = vec!["cpu"];
    if gpu_available() {
        devices.push("gpu");
    }
    for device in devices {
        let out = tmp.path().join(device);
        merge_ok(
            &case("bf16/base"),
            &case("bf16/emb"),
            &out,
            &["--device", device, "-q"],
        );
        assert_eq!(
            matches_refs(&out, "bf16", "emb", Within::Abs(0.0)),
            2,
            "{device}"
        );
    }
}
