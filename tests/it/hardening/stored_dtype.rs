//! 4. Results checked in their stored dtype; one definition per tensor.

use super::*;

#[test]
fn f16_overflow_is_an_error_in_every_writer() {
    let (dir, big) = scratch("big");
    // 1e5 is a finite f32 and ±inf in F16.
    write_adapter(
        &big,
        &[
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                vec![2, 64],
                vec![1e5; 128],
            ),
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                vec![64, 2],
                vec![1.0; 128],
            ),
        ],
        serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]}),
    );
    let out = dir.path().join("out");
    let (xf, x) = (out.join("x.safetensors"), out.join("x"));
    for args in [
        convert_args(&big, "kohya", &xf, &["--dtype", "f16"]),
        resize_args(&big, &x, &["--rank", "1", "--dtype", "f16"]),
        combine_args(
            &[(&big, None), (&big, None)],
            &x,
            &["--method", "cat", "--dtype", "f16"],
        ),
        merge_args(
            &fixture("llama/base"),
            &big,
            &x,
            &["--dtype", "f16", "--device", "cpu"],
        ),
    ] {
        let line = one_line_error(&run_err(&args));
        assert!(
            line.contains("F16") && line.contains("q_proj") && line.contains("inf"),
            "{}: {line}",
            args[0]
        );
        assert!(!out.exists(), "{}: wrote {:?}", args[0], listing(&out));
    }
}

#[test]
fn a_module_defined_twice_is_an_error_naming_both_keys() {
    let (_dir, ad) = scratch("twice");
    let a = vec![0.01f32; 2 * 64];
    let b = vec![0.02f32; 64 * 2];
    write_adapter(
        &ad,
        &[
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                vec![2, 64],
                a.clone(),
            ),
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                vec![64, 2],
                b.clone(),
            ),
            (
                "model.layers.0.self_attn.q_proj.lora_A.weight",
                vec![2, 64],
                a,
            ),
        ],
        serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 2}),
    );
    let line = one_line_error(&run_err(inspect_args(&ad, &[])));
    assert_mentions(
        &line,
        &[
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "`model.layers.0.self_attn.q_proj.lora_A.weight`",
            "twice",
        ],
    );
}

#[test]
fn duplicate_fields_inside_a_tensor_entry_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"t":{"dtype":"F32","shape":[1],"dtype":"F16","data_offsets":[0,4]}}"#;
    let p = raw_file(dir.path(), "dup.safetensors", header, 4);
    let line = one_line_error(&run_err(inspect_args(&p, &[])));
    assert_mentions(&line, &["dup.safetensors", "duplicate key `t.dtype`"]);
}

#[test]
fn resume_from_invalid_adam_moments_is_refused() {
    let (dir, out) = scratch("run");
    let data = fixture("text/tiny_ids.safetensors");
    let train = |extra: &[&str]| {
        let flags = ["--data", s(&data), "--seq-len", "16", "--batch", "2"];
        let flags = [&flags[..], &["--seed", "1", "--quiet"], extra].concat();
        train_args(&fixture("llama/base"), &flags)
    };
    run_ok(train(&["--steps", "2", "--out", s(&out)]));
    // Resuming the untouched state works (the test can fail only for the poison below).
    let again = dir.path().join("again");
    run_ok(train(&[
        "--resume",
        s(&out),
        "--steps",
        "3",
        "--out",
        s(&again),
    ]));
    let state = out.join("trainer_state.safetensors");
    let bytes = std::fs::read(&state).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let victim = owned
        .iter_mut()
        .find(|(n, _, _)| n.ends_with("exp_avg_sq"))
        .unwrap();
    victim.2[..4].copy_from_slice(&(-1.0f32).to_le_bytes());
    let name = victim.0.clone();
    let metadata = meta.metadata().clone();
    write_all_as(&state, safetensors::Dtype::F32, &owned, metadata);
    let line = one_line_error(&run_err(train(&[
        "--resume",
        s(&out),
        "--steps",
        "3",
        "--out",
        s(&dir.path().join("x")),
    ])));
    assert!(line.contains(&name) && line.contains("-1"), "{line}");
}
