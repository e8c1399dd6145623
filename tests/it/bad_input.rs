//! Malformed and contradictory inputs: each gives one `error:` line naming the file (and the
//! tensor where there is one), exit status 2, no panic, and no output file.

use super::common::*;
use std::path::{Path, PathBuf};

/// Runs inspect and a merge over `path` (as the base) and checks the error both times.
fn check_rejected(path: &Path, expect: &[&str]) {
    let dir = path.parent().unwrap();
    let before = listing(dir);
    let inspect = run_err(inspect_args(path, &[]));
    let line = one_line_error(&inspect);
    assert!(
        line.contains(s(Path::new(path.file_name().unwrap()))),
        "file not named: {line}"
    );
    for e in expect {
        assert!(line.contains(e), "`{e}` not in: {line}");
    }
    let out = dir.join("out.safetensors");
    let merge = run_err(merge_args(
        path,
        &fixture("llama/adapters/qv_r8"),
        &out,
        &[],
    ));
    let line = one_line_error(&merge);
    for e in expect {
        assert!(line.contains(e), "merge: `{e}` not in: {line}");
    }
    assert_eq!(listing(dir), before, "nothing written");
}

/// [`check_rejected`] of the file `name` that [`raw_file`] writes from `header` and `data` zero
/// bytes in a fresh folder.
fn raw_rejected(name: &str, header: &str, data: usize, expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    check_rejected(&raw_file(dir.path(), name, header, data), expect);
}

const OK: &str = r#"{"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = raw_file(dir.path(), "trunc.safetensors", OK, 16);
    truncate_by(&p, 5);
    check_rejected(&p, &["tensor `t`", "beyond"]);
}

#[test]
fn too_short_for_header_length() {
    let (dir, p) = scratch("short.safetensors");
    std::fs::write(&p, [1u8, 2, 3]).unwrap();
    check_rejected(&p, &["too short"]);
    let e = dir.path().join("empty.safetensors");
    std::fs::write(&e, []).unwrap();
    check_rejected(&e, &["0 bytes"]);
}

#[test]
fn header_length_beyond_file() {
    let (_dir, p) = scratch("beyond.safetensors");
    let mut b = 4096u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}      ");
    std::fs::write(&p, b).unwrap();
    check_rejected(&p, &["header length 4096 runs past the end"]);
}

#[test]
fn huge_header_length() {
    let (_dir, p) = scratch("huge.safetensors");
    let mut b = (200_000_000u64).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}      ");
    std::fs::write(&p, b).unwrap();
    check_rejected(&p, &["exceeds"]);
}

#[test]
fn header_not_json() {
    raw_rejected(
        "notjson.safetensors",
        "{\"t\": [1, 2",
        0,
        &["not valid JSON"],
    );
}

#[test]
fn header_not_utf8() {
    let (_dir, p) = scratch("notutf8.safetensors");
    let mut b = 8u64.to_le_bytes().to_vec();
    b.extend_from_slice(&[b'{', 0xff, 0xfe, b'}', b' ', b' ', b' ', b' ']);
    std::fs::write(&p, b).unwrap();
    check_rejected(&p, &["not valid UTF-8"]);
}

#[test]
fn overlapping_offsets() {
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    raw_rejected("overlap.safetensors", h, 12, &["tensor `b`", "overlap"]);
}

#[test]
fn offsets_out_of_bounds() {
    raw_rejected(
        "oob.safetensors",
        OK,
        8,
        &["tensor `t`", "beyond the 8-byte data section"],
    );
}

#[test]
fn offsets_not_covering_the_data() {
    raw_rejected(
        "gap.safetensors",
        OK,
        24,
        &["cover 16 bytes but the data section holds 24"],
    );
}

#[test]
fn shape_times_dtype_is_not_the_byte_length() {
    let h = r#"{"t":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}}"#;
    raw_rejected(
        "len.safetensors",
        h,
        16,
        &["tensor `t`", "needs 8 bytes", "give 16"],
    );
}

#[test]
fn unknown_dtype_and_duplicate_keys() {
    let h = r#"{"t":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,8]}}"#;
    raw_rejected(
        "dtype.safetensors",
        h,
        8,
        &["tensor `t`", "unknown dtype `Q4_K`"],
    );
    let h = r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    raw_rejected("dup.safetensors", h, 8, &["duplicate key `t`"]);
}

/// A copy of a PEFT adapter folder with its config edited.
fn edited_adapter(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let a = dir.join("adapter");
    std::fs::create_dir_all(&a).unwrap();
    let src = fixture("llama/adapters/qv_r8");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        a.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value = read_json(src.join("adapter_config.json"));
    edit(&mut cfg);
    std::fs::write(
        a.join("adapter_config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    a
}

fn merge_err(dir: &Path, adapter: &Path) -> String {
    merge_err_with(dir, adapter, &[])
}

fn merge_err_with(dir: &Path, adapter: &Path, extra: &[&str]) -> String {
    let out = dir.join("out");
    let res = run_err(merge_args(&fixture("llama/base"), adapter, &out, extra));
    let line = one_line_error(&res);
    assert!(!out.exists());
    line
}

#[test]
fn adapter_config_contradicts_the_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let a = edited_adapter(dir.path(), |c| c["r"] = serde_json::json!(4));
    let line = merge_err(dir.path(), &a);
    assert_mentions(
        &line,
        &[
            "adapter_model.safetensors",
            "q_proj",
            "r = 4 but lora_A has 8 rows",
        ],
    );
}

#[test]
fn adapter_config_missing_or_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let a = edited_adapter(dir.path(), |_| {});
    std::fs::remove_file(a.join("adapter_config.json")).unwrap();
    let line = merge_err(dir.path(), &a);
    assert!(line.contains("adapter_config.json"), "{line}");
    std::fs::write(a.join("adapter_config.json"), "{ not json").unwrap();
    let line = merge_err(dir.path(), &a);
    assert_mentions(&line, &["adapter_config.json: not valid JSON"]);
}

/// Writes an adapter file with the given factor shapes/values for q_proj of layer 0.
fn adapter_with(
    dir: &Path,
    a_shape: [usize; 2],
    b_shape: [usize; 2],
    poison: Option<f32>,
) -> PathBuf {
    let a = dir.join("bad_adapter");
    std::fs::create_dir_all(&a).unwrap();
    let mut av: Vec<f32> = vec![0.01; a_shape[0] * a_shape[1]];
    if let Some(p) = poison {
        av[3] = p;
    }
    let bv: Vec<f32> = vec![0.02; b_shape[0] * b_shape[1]];
    let to_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (ab, bb) = (to_bytes(&av), to_bytes(&bv));
    let tensors = vec![
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, a_shape.to_vec(), &ab)
                .unwrap(),
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, b_shape.to_vec(), &bb)
                .unwrap(),
        ),
    ];
    safetensors::serialize_to_file(tensors, None, &a.join("adapter_model.safetensors")).unwrap();
    let cfg = serde_json::json!({"peft_type": "LORA", "r": a_shape[0], "lora_alpha": 8, "target_modules": ["q_proj"]});
    std::fs::write(a.join("adapter_config.json"), cfg.to_string()).unwrap();
    a
}

#[test]
fn a_and_b_of_different_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let a = adapter_with(dir.path(), [4, 64], [64, 3], None);
    let line = merge_err(dir.path(), &a);
    assert_mentions(
        &line,
        &[
            "model.layers.0.self_attn.q_proj",
            "lora_A has rank 4",
            "3 columns",
        ],
    );
    let i = run_err(inspect_args(&a, &[]));
    one_line_error(&i);
}

#[test]
fn adapter_module_with_another_shape() {
    let dir = tempfile::tempdir().unwrap();
    let a = adapter_with(dir.path(), [4, 48], [64, 4], None);
    let line = merge_err(dir.path(), &a);
    assert_mentions(&line, &["has shape [64, 64], the adapter needs [64, 48]"]);
}

#[test]
fn nan_in_adapter_factors() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let a = adapter_with(dir.path(), [4, 64], [64, 4], Some(bad));
        let line = merge_err(dir.path(), &a);
        assert_mentions(&line, &["lora_A.weight", "not finite"]);
        // `check` refuses it too: every loader would apply it and answer NaN.
        let line = one_line_error(&run_err(check_args(&a, &[])));
        assert_mentions(
            &line,
            &["adapter_model.safetensors", "lora_A.weight", "not finite"],
        );
    }
}

/// A NaN or ±∞ as stored in a 16-bit factor (a bit pattern no f32 check before encoding sees)
/// is refused by `check` in the stored dtype, naming the file and the tensor.
#[test]
fn check_refuses_non_finite_16_bit_factors() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("llama/adapters/qv_r8");
    for (bits, what) in [(0x7fc0u16, "NaN in BF16"), (0x7f80, "inf in BF16")] {
        let a = dir.path().join(format!("a{bits:x}"));
        std::fs::create_dir(&a).unwrap();
        std::fs::copy(
            src.join("adapter_config.json"),
            a.join("adapter_config.json"),
        )
        .unwrap();
        let t = read(&src.join("adapter_model.safetensors"));
        let key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
        let mut tensors = Vec::new();
        for (k, v) in &t {
            let mut b: Vec<u8> = v
                .f32()
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect();
            if k == key {
                b[6..8].copy_from_slice(&bits.to_le_bytes());
            }
            tensors.push((k.clone(), v.shape.clone(), b));
        }
        let file = a.join("adapter_model.safetensors");
        write_all_as(&file, safetensors::Dtype::BF16, &tensors, None);
        let line = one_line_error(&run_err(check_args(&a, &[])));
        assert!(
            line.contains(&format!(
                "{}:",
                a.join("adapter_model.safetensors").display()
            )) && line.contains(key)
                && line.contains("flat index 3")
                && line.contains(what),
            "{line}"
        );
    }
}

#[test]
fn overflowing_merge_result_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = adapter_with(dir.path(), [4, 64], [64, 4], Some(f32::MAX));
    let line = merge_err_with(dir.path(), &a, &["--weight", "1e6"]);
    assert_mentions(
        &line,
        &["model.layers.0.self_attn.q_proj.weight", "not finite"],
    );
}

#[test]
fn sharded_index_naming_missing_shard_or_traversal() {
    let (dir, base) = scratch("base");
    std::fs::create_dir(&base).unwrap();
    let src = fixture("llama/base_sharded");
    for f in listing(&src) {
        std::fs::copy(src.join(&f), base.join(&f)).unwrap();
    }
    let index_path = base.join("model.safetensors.index.json");
    let original = std::fs::read_to_string(&index_path).unwrap();
    let edit =
        |from: &str, to: &str| std::fs::write(&index_path, original.replacen(from, to, 1)).unwrap();
    let first_shard = "model-00001-of-00004.safetensors";
    for (replacement, expect) in [
        ("../../etc/passwd", "not a plain file name"),
        ("model-00009-of-00004.safetensors", "is missing"),
        ("model-00002-of-00004.safetensors", "index places it in"),
    ] {
        edit(&format!("\"{first_shard}\""), &format!("\"{replacement}\""));
        let out = dir.path().join("out");
        let res = run_err(inspect_args(&base, &[]));
        let line = one_line_error(&res);
        assert!(line.contains(expect), "{replacement}: {line}");
        let res = run_err(merge_args(
            &base,
            &fixture("llama/adapters/qv_r8"),
            &out,
            &[],
        ));
        one_line_error(&res);
        assert!(!out.exists());
    }
}

#[test]
fn deeply_nested_json() {
    let deep = format!("{{\"t\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    raw_rejected("deep.safetensors", &deep, 0, &["not valid JSON"]);
}

#[test]
fn negative_offsets() {
    let h = r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}"#;
    raw_rejected(
        "neg.safetensors",
        h,
        8,
        &["tensor `t`", "not a non-negative integer"],
    );
}

#[test]
fn shape_product_overflowing_usize() {
    let h = r#"{"t":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}}"#;
    raw_rejected("overflow.safetensors", h, 8, &["tensor `t`", "overflows"]);
}

/// A header declaring a 10 TB tensor over a tiny file: rejected from the header alone, with no
/// allocation of the declared size (the process would be killed if it tried).
#[test]
fn ten_terabyte_tensor_is_not_allocated() {
    let n: u64 = 10_000_000_000_000;
    let h = format!(r#"{{"t":{{"dtype":"U8","shape":[{n}],"data_offsets":[0,{n}]}}}}"#);
    raw_rejected(
        "tb.safetensors",
        &h,
        16,
        &["tensor `t`", "beyond the 16-byte data section"],
    );
}

#[test]
fn header_with_wrong_types() {
    for (i, (h, expect)) in [
        (
            r#"{"t":{"dtype":"F32","shape":"2","data_offsets":[0,8]}}"#,
            "missing array `shape`",
        ),
        (
            r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,16]}}"#,
            "exactly two entries",
        ),
        (
            r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}}"#,
            "unexpected field `extra`",
        ),
        (r#"{"t":7}"#, "entry is not an object"),
        (
            r#"{"__metadata__":{"k":[1]}}"#,
            "`__metadata__` must map strings to strings",
        ),
    ]
    .iter()
    .enumerate()
    {
        raw_rejected(&format!("types{i}.safetensors"), h, 8, &[expect]);
    }
}

#[test]
fn empty_adapter_and_unknown_tensor_kinds() {
    let dir = tempfile::tempdir().unwrap();
    // A safetensors file with no LoRA tensors is not an adapter.
    let p = raw_file(dir.path(), "plain.safetensors", OK, 16);
    let out = dir.path().join("o.safetensors");
    let res = run_err(merge_args(&fixture("llama/base"), &p, &out, &[]));
    assert!(one_line_error(&res).contains("no LoRA tensors found"));
    // A LyCORIS LoHa module missing three of its factors is refused naming the first missing.
    let h = r#"{"lora_unet_x.hada_w1_a":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]}}"#;
    let k = raw_file(dir.path(), "loha.safetensors", h, 8);
    let res = run_err(inspect_args(&k, &[]));
    let line = one_line_error(&res);
    assert_mentions(&line, &["lora_unet_x", "hada_w1_b"]);
    assert!(!out.exists());
}
