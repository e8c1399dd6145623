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

/// A PEFT folder saved from a model holding a second adapter, with `bias="lora_only"`: PEFT
/// writes the trained bias of every LoRA layer into it, `…v_proj.base_layer.bias` included,
/// though this adapter has no LoRA on v_proj (check_peft_sweep.py seed 42 case 33). PEFT's own
/// reload wraps no v_proj, so that key matches nothing and is dropped without an error
/// (MANIFEST `peft_dropped`); `check --target peft` said every tensor applies.
#[test]
fn peft_check_flags_a_base_layer_tensor_with_no_wrapper() {
    let m = read_json(fixture("sweep8/MANIFEST.json"));
    let dropped = &m["bias_of_second_adapter"]["peft_dropped"];
    assert_eq!(dropped.as_array().map(Vec::len), Some(1), "{dropped}");
    let out = bin()
        .args(check_args(
            &fixture("sweep8/bias_of_second_adapter/adapter"),
            &[
                "--base",
                s(&fixture("sweep8/bias_of_second_adapter/base")),
                "--target",
                "peft",
                "--json",
            ],
        ))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let t = &v["targets"][0];
    assert_eq!(t["loads"], true, "{t}");
    assert_eq!(t["applies_all"], false, "{t}");
    let f = t["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "peft.base_layer_unwrapped")
        .unwrap_or_else(|| panic!("no peft.base_layer_unwrapped finding: {t}"));
    assert!(
        f.to_string().contains(dropped[0].as_str().unwrap()),
        "the finding names the key PEFT drops: {f}"
    );
}
