//! Session 13's review findings that the lead fixed (fixtures/gen/review13_fixtures.py): the
//! correctly rounded merge of updates that are not `B·A`, PEFT C3A's own `block_size_pattern`
//! rule, and a plain LoRA beside a Flux control LoRA under `merge --expand-base`.

use super::common::*;

/// `--exact-rounding` on dense updates (RoAd's `R·W0 − W0`, VeRA's sliced projections): it
/// panicked ("range end index 128 out of range for slice of length 0") summing the absent `A`
/// of a dense term; now it merges as PEFT does.
#[test]
fn exact_rounding_merges_dense_updates() {
    assert_eq!(
        merge_matches_peft_fixture(
            "gaps12/road1",
            "llama/base_attn_bias",
            &["--exact-rounding"]
        ),
        6
    );
    assert_eq!(
        merge_matches_peft_fixture("gaps10/vera", "llama/base", &["--exact-rounding"]),
        6
    );
}

/// C3A's `block_size_pattern` as PEFT's `_create_and_replace` reads it: `re.match(rf".*\.{key}$")`
/// with the key unwrapped (`q_proj|v_proj` gives v_proj the default), the regex pass before the
/// exact module name. Before: both refused ("has blocks of 16, but adapter_config.json gives
/// block_size 8").
#[test]
fn c3a_block_size_pattern_is_read_as_peft_matches_it() {
    for case in ["c3a_alt", "c3a_fullkey"] {
        assert_eq!(
            merge_matches_peft_fixture(&format!("review13/{case}"), "llama/base", &[]),
            4,
            "{case}"
        );
    }
}

/// A plain LoRA on `x_embedder` at its stored width, after a control LoRA that widens it:
/// diffusers pads the plain `lora_A` with zero columns and fuses both; `merge --expand-base`
/// with both adapters equals its fuse. Before: "base tensor `x_embedder.weight` has shape
/// [16, 8], the adapter needs [16, 4]".
#[test]
fn plain_lora_beside_a_control_lora_is_padded_as_diffusers_pads_it() {
    let (_dir, out) = scratch("flux-plain");
    let base = fixture("diffusion12/flux_control/base");
    let plain = fixture("review13/flux_plain/plain.safetensors");
    run_ok(merge_args(
        &base,
        &fixture("diffusion12/flux_control/diffusers.safetensors"),
        &out,
        &[
            "--adapter",
            s(&plain),
            "--expand-base",
            "--device",
            "cpu",
            "--quiet",
        ],
    ));
    let got = read_checkpoint(&out);
    let input = read_checkpoint(&base);
    let want = read(&fixture("review13/flux_plain/diffusers_fused.safetensors"));
    assert_eq!(want.len(), 4);
    for (name, t) in &got {
        match want.get(name) {
            Some(w) => {
                assert_eq!(t.shape, w.shape, "{name}");
                let e = rel_err(&t.f32(), &w.f32());
                assert!(e <= 1e-6, "{name}: relative error {e:e}");
            }
            None => assert_eq!(t, &input[name], "{name} changed"),
        }
    }
}
