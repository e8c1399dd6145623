//! What the sweeps with seeds 101/102 found (fixtures/gen/sweep14_fixtures.py), each against
//! the real library's own result.

use super::common::*;

/// PEFT's BEFT on `q_proj` (the base has its bias) and `down_proj` (`mlp_bias` false: none) of
/// fixtures/llama/base_attn_bias. PEFT's `PeftModel.from_pretrained` loads every saved tensor and
/// its forward adds `beft_bias` to down_proj's output all the same (`peft.json`, recorded by the
/// generator); only its `merge_and_unload` raises. `check --target peft` said the four
/// `down_proj.beft_bias` tensors were not found (`peft.not_found`, not applied;
/// check_tuner14_sweep.py, seed 100 case 2): it must say PEFT loads and applies them all, while
/// `merge` refuses naming the missing base bias, as PEFT's merge raises.
#[test]
fn beft_on_a_module_without_base_bias_is_applied_by_peft() {
    let base = fixture("llama/base_attn_bias");
    let adapter = fixture("sweep14/beft_partial/adapter");
    let peft: serde_json::Value = read_json(fixture("sweep14/beft_partial/peft.json"));
    assert_eq!(peft["loads_all"], true);
    assert_eq!(peft["applied"], true);
    let out = bin()
        .args(check_args(
            &adapter,
            &["--target", "peft", "--base", s(&base), "--json"],
        ))
        .output()
        .expect("spawn lorakit");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json");
    let t = &v["targets"][0];
    assert_eq!(t["loads"], true, "{t}");
    assert_eq!(t["applies_all"], true, "{t}");
    assert!(
        !t["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .any(|f| f["rule"] == "peft.not_found"),
        "{t}"
    );
    let (_dir, out) = scratch("out");
    let err = merge_refused(&base, &adapter, &out, &[]);
    assert!(peft["merge_raises"]
        .as_str()
        .is_some_and(|m| m.contains("no bias")));
    assert_mentions(
        &err,
        &[
            "model.layers.0.mlp.down_proj.beft_bias",
            "no base tensor `model.layers.0.mlp.down_proj.bias`",
        ],
    );
}
