//! What a merge writes: shards and index, re-sharding, byte-identical reruns with provenance,
//! the JSON summary, non-float tensors, `--part` runs.

use super::*;

#[test]
fn sharded_in_sharded_out_with_valid_index() {
    let (_dir, out) = scratch("out");
    let base = fixture("llama/base_sharded");
    merge_qv_r8_into(&base, &out, &[]);
    // Same shard files, index and non-weight files as the base.
    assert_eq!(listing(&out), listing(&base));
    let index: serde_json::Value = read_json(out.join("model.safetensors.index.json"));
    let base_index: serde_json::Value = read_json(base.join("model.safetensors.index.json"));
    assert_eq!(index["weight_map"], base_index["weight_map"]);
    // Every tensor is in the shard the index names.
    for (tensor, shard) in index["weight_map"].as_object().unwrap() {
        assert!(
            read(&out.join(shard.as_str().unwrap())).contains_key(tensor),
            "{tensor} not in {shard}"
        );
    }
    let total: u64 = read_checkpoint(&out)
        .values()
        .map(|t| t.data.len() as u64)
        .sum();
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    let merged = read_checkpoint(&out);
    assert_matches_reference(
        &merged,
        &read_checkpoint(&base),
        &read(&fixture("llama/merged/qv_r8.safetensors")),
        TOL,
    );
    assert_eq!(
        read(&out.join("model-00001-of-00004.safetensors")).len(),
        read(&base.join("model-00001-of-00004.safetensors")).len()
    );
}

#[test]
fn reshard_with_max_shard_size() {
    let (_dir, out) = scratch("out");
    merge_qv_r8(&out, &["--max-shard-size", "120KB"]);
    let files = listing(&out);
    let shards: Vec<&String> = files
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    assert!(shards.len() >= 3, "{files:?}");
    assert!(shards[0].starts_with("model-00001-of-0000"), "{files:?}");
    for s in &shards {
        let len = std::fs::metadata(out.join(s)).unwrap().len();
        let data: u64 = read(&out.join(s))
            .values()
            .map(|t| t.data.len() as u64)
            .sum();
        // A shard exceeds the limit only when it holds one tensor larger than the limit.
        assert!(
            data <= 120_000 || read(&out.join(s)).len() == 1,
            "{s}: {len} bytes"
        );
    }
    assert!(files.contains(&"model.safetensors.index.json".to_string()));
    assert!(files.contains(&"config.json".to_string()));
    assert_matches_reference(
        &read_checkpoint(&out),
        &read_checkpoint(&fixture("llama/base")),
        &read(&fixture("llama/merged/qv_r8.safetensors")),
        TOL,
    );
}

#[test]
fn reruns_are_byte_identical_and_carry_provenance() {
    let (_dir, [o1, o2]) = scratch_all(["a.safetensors", "b.safetensors"]);
    for o in [&o1, &o2] {
        merge_fixtures(
            "llama/base/model.safetensors",
            "llama/adapters/dora",
            o,
            &[],
        );
    }
    let (a, b) = (std::fs::read(&o1).unwrap(), std::fs::read(&o2).unwrap());
    assert_eq!(a, b);
    let st = safetensors::SafeTensors::read_metadata(&a).unwrap().1;
    let meta = st.metadata().clone().unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    assert!(meta["lorakit.adapters"].contains("adapters/dora"));
    assert_eq!(meta["lorakit.operation"], "merge");
}

#[test]
fn json_summary_is_parseable() {
    let (_dir, out) = scratch("o.safetensors");
    let s = merge_fixtures(
        "llama/base/model.safetensors",
        "llama/adapters/qv_r8",
        &out,
        &[
            "--adapter",
            s(&fixture("llama/adapters/weighted_b")),
            "--weight",
            "1",
            "--weight",
            "0.5",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["adapters"][0]["modules_merged"], 4);
    assert_eq!(v["adapters"][1]["modules_merged"], 4);
    assert_eq!(v["adapters"][1]["weight"], 0.5);
    // q_proj of both layers is hit by both adapters: 4 + 4 − 2 tensors.
    assert_eq!(v["tensors_merged_count"], 6);
    assert_eq!(v["tensors_copied_count"], 15);
    assert_eq!(
        v["bytes_written"].as_u64(),
        Some(std::fs::metadata(&out).unwrap().len())
    );
    assert!(Path::new(v["out"].as_str().unwrap()).exists());
}

#[test]
fn non_float_tensors_are_copied_byte_for_byte_and_f64_is_read() {
    use safetensors::Dtype;
    let (dir, base) = scratch("base.safetensors");
    let w: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    let f64v: Vec<u8> = [1.5f64, -2.25, 1e-3]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let wb = f32_bytes(&w);
    write_views(
        &base,
        &[
            ("layer.weight", Dtype::F32, &[4, 3], &wb),
            ("q.int8", Dtype::I8, &[5], &[1, 255, 3, 128, 7]),
            ("q.fp8", Dtype::F8_E4M3, &[3], &[0x38, 0xb8, 0x7e]),
            ("q.u8", Dtype::U8, &[2], &[9, 250]),
            ("d.f64", Dtype::F64, &[3], &f64v),
        ],
    );
    let ad = dir.path().join("ad");
    let a: Vec<f32> = vec![0.5, -1.0, 2.0];
    let b: Vec<f32> = vec![1.0, 0.0, -1.0, 0.5];
    let (ab, bb) = (f32_bytes(&a), f32_bytes(&b));
    let tensors = shared_lora_tensors(&["layer".into()], (&[1, 3], &ab), (&[4, 1], &bb));
    write_peft_adapter(
        &ad,
        r#"{"peft_type":"LORA","r":1,"lora_alpha":2,"target_modules":["layer"]}"#,
        &tensors,
    );
    let out = dir.path().join("out.safetensors");
    merge_ok(&base, &ad, &out, &["--dtype", "bf16"]);
    let o = read(&out);
    let inb = read(&base);
    for n in ["q.int8", "q.fp8", "q.u8"] {
        assert_eq!(o[n], inb[n], "{n} copied unchanged");
    }
    assert_eq!(
        o["d.f64"].dtype,
        Dtype::BF16,
        "float tensors follow --dtype"
    );
    assert_eq!(
        o["d.f64"].f32(),
        vec![1.5, -2.25, half::bf16::from_f32(1e-3f64 as f32).to_f32()]
    );
    let merged = o["layer.weight"].f32();
    for i in 0..4 {
        for j in 0..3 {
            let want = w[i * 3 + j] + 2.0 * b[i] * a[j];
            let want_bf16 = half::bf16::from_f32(want).to_f32();
            assert_eq!(merged[i * 3 + j], want_bf16, "[{i},{j}]");
        }
    }
}

#[test]
fn three_parts_in_separate_processes_equal_one_run() {
    let (dir, one) = scratch("one");
    let split = dir.path().join("split");
    let base = fixture("llama/base_sharded");
    let common = |out: &Path| {
        merge_args(
            &base,
            &fixture("llama/adapters/rslora_all"),
            out,
            &["--dtype", "bf16"],
        )
    };
    let one_report: serde_json::Value =
        serde_json::from_str(&run_ok([common(&one), vec!["--json".into()]].concat())).unwrap();
    // Three processes at once, as three jobs would run.
    let children: Vec<_> = (1..=3)
        .map(|i| {
            let mut args = common(&split);
            args.extend(["--part".into(), format!("{i}/3"), "--json".into()]);
            let piped = std::process::Stdio::piped();
            bin().args(&args).stdout(piped).spawn().unwrap()
        })
        .collect();
    // Each part reports the shards it wrote (and only those) and which part it was.
    let mut part_files = Vec::new();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["part"], serde_json::json!([i + 1, 3]));
        for f in v["files"].as_array().unwrap() {
            part_files.push(f.as_str().unwrap().to_owned());
        }
    }
    for f in &part_files {
        assert!(Path::new(f).is_file(), "{f} listed but not written");
    }
    // Before finalize there is no index; finalize refuses while a part is missing.
    assert!(!split.join("model.safetensors.index.json").exists());
    let m2 = split.join(".lorakit-part-2-of-3.json");
    let saved = std::fs::read(&m2).unwrap();
    std::fs::remove_file(&m2).unwrap();
    let err = run_err(finalize_args(&split, &[]));
    assert!(one_line_error(&err).contains("parts not finished: 2/3"));
    std::fs::write(&m2, saved).unwrap();
    let finalized: serde_json::Value =
        serde_json::from_str(&run_ok(finalize_args(&split, &["--json"]))).unwrap();
    // finalize lists the final output's files as the one run lists its own: shards, index,
    // copied files, in that order.
    let expected: Vec<String> = one_report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().replacen(s(&one), s(&split), 1))
        .collect();
    assert!(expected.len() > 4, "{expected:?}");
    assert_eq!(finalized["files"], serde_json::json!(expected));
    part_files.sort();
    let shards: Vec<&String> = expected
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    assert_eq!(part_files.iter().collect::<Vec<_>>(), shards);
    assert_eq!(one_report["part"], serde_json::Value::Null);
    assert_eq!(listing(&one), listing(&split));
    for f in listing(&one) {
        assert!(
            std::fs::read(one.join(&f)).unwrap() == std::fs::read(split.join(&f)).unwrap(),
            "{f} differs"
        );
    }
}
