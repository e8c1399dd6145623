//! 1. No command writes onto one of its inputs.

use super::*;

#[test]
fn no_command_writes_onto_its_inputs() {
    let (dir, base, ad) = llama_and_qv_r8_copies("base", "qv");
    let before = (snapshot(&base), snapshot(&ad));
    let base_file = base.join("model.safetensors");

    // merge --out BASE_FOLDER with re-sharding: shards and index would land in the base.
    refused_as_input(&run_err(merge_args(
        &base,
        &ad,
        &base,
        &["--max-shard-size", "100KB"],
    )));
    // --out onto the adapter's weights or its config.
    for target in ["adapter_model.safetensors", "adapter_config.json"] {
        refused_as_input(&run_err(merge_args(&base_file, &ad, &ad.join(target), &[])));
    }
    // extract --format kohya onto the base's config.json.
    let tuned = dir.path().join("tuned");
    merge_ok(&fixture("llama/base"), &ad, &tuned, &["--quiet"]);
    refused_as_input(&run_err(extract_args(
        &base,
        &tuned,
        &base.join("config.json"),
        &["--rank", "4", "--format", "kohya"],
    )));
    // eval --logits onto the model's config or the adapter's weights.
    for target in [
        base.join("config.json"),
        ad.join("adapter_model.safetensors"),
    ] {
        refused_as_input(&run_err(eval_cpu_args(
            &base,
            &[
                "--adapter",
                s(&ad),
                "--input-ids",
                s(&fixture("text/tiny_ids.safetensors")),
                "--logits",
                s(&target),
            ],
        )));
    }
    // train --init-adapter A --out A.
    refused_as_input(&run_err(train_args(
        &base,
        &[
            "--data",
            s(&fixture("text/tiny_ids.safetensors")),
            "--seq-len",
            "8",
            "--steps",
            "1",
            "--init-adapter",
            s(&ad),
            "--out",
            s(&ad),
        ],
    )));
    // inspect --plot through a hard link and a symlink to the adapter's weights.
    let hard = dir.path().join("hard.svg");
    std::fs::hard_link(ad.join("adapter_model.safetensors"), &hard).unwrap();
    let soft = dir.path().join("soft.svg");
    std::os::unix::fs::symlink(ad.join("adapter_config.json"), &soft).unwrap();
    for p in [&hard, &soft] {
        refused_as_input(&run_err(inspect_args(&ad, &["--plot", s(p)])));
    }
    assert_eq!(
        (snapshot(&base), snapshot(&ad)),
        before,
        "an input was changed"
    );
}
