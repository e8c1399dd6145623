//! What the sweeps with seeds 41/42 and wider draws found (fixtures/gen/sweep8_fixtures.py),
//! each against the real library's own result.

use super::common::*;

/// PEFT `lora_bias=True` with `bias="lora_only"` (check_peft_sweep.py seed 42 case 33): the
/// file holds each module's `lora_B.bias` and the trained base bias `{module}.base_layer.bias`.
/// PEFT loads the trained bias into the layer and merges `lora_B.bias · scaling` onto it
/// (`Linear.merge`); lorakit refused the file ("changed by more than one adapter entry").
/// `reference.safetensors` is PEFT's `merge_and_unload` of the saved folder (the changed
/// tensors), f32.
#[test]
fn lora_bias_adds_to_the_trained_base_bias() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    merge_fixtures(
        "sweep8/lora_bias_trained_bias/base",
        "sweep8/lora_bias_trained_bias/adapter",
        &out,
        &[],
    );
    let n = assert_merged_matches(
        &out,
        &fixture("sweep8/lora_bias_trained_bias/base"),
        &fixture("sweep8/lora_bias_trained_bias/reference.safetensors"),
        1e-6,
    );
    assert_eq!(n, 4, "q/v weight and bias");
}
