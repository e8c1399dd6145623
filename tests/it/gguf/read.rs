//! `inspect` and `diff` on GGUF files written by gguf-py, malformed files refused in one line,
//! and the GGUF reports' JSON vocabulary.

use super::*;

#[test]
fn inspect_gguf_json_speaks_the_report_vocabulary() {
    let j = run_ok(["inspect", &g("types.gguf"), "--tensors", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    let obj = v.as_object().unwrap();
    assert_eq!(obj.keys().next().map(String::as_str), Some("operation"));
    assert_eq!(v["operation"], "inspect");
    assert_eq!(v["kind"], "gguf");
    assert_eq!(v["files"], serde_json::json!(["types.gguf"]));
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["version"], 3);
    assert_eq!(v["tensor_count"], 17);
    assert_eq!(v["dtypes"]["Q8_0"]["tensor_count"], 2);
    assert_eq!(v["dtypes"]["Q6_K"]["bytes"], 840);
    assert_eq!(v["unsupported_types"], serde_json::json!(["IQ2_XXS"]));
    assert_eq!(v["metadata"]["test.u32"]["type"], "UINT32");
    assert_eq!(v["metadata"]["test.u32"]["value"], 4_000_000_000u64);
    assert_eq!(
        v["metadata"]["test.nested"]["values"],
        serde_json::json!([[1, 2], [3]])
    );
    let t = entry(&v["tensors"], "name", "t.q8_0_3d");
    // PyTorch order: ggml's dims [32, 3, 2] reversed.
    assert_eq!(t["shape"], serde_json::json!([2, 3, 32]));
    assert_eq!(t["dtype"], "Q8_0");
}

#[test]
fn inspect_a_split_gguf_lists_every_part() {
    let out = run_ok(["inspect", &g("split-00003-of-00003.gguf")]);
    assert_mentions(&out, &["layout      split (3 files)", "tensors     5"]);
}

#[test]
fn diff_of_gguf_files_compares_dequantized_values() {
    // types.f32.gguf holds gguf-py's dequantization of every tensor of types.gguf.
    let out = run_err(["diff", &g("types.gguf"), &g("types.f32.gguf"), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["operation"], "diff");
    assert_eq!(v["failed"], 1, "the IQ2_XXS tensor is only in A");
    assert_eq!(v["max_abs_diff"], 0.0);
    assert_eq!(v["dtype_changes"], 15);
    let out = run_ok([
        "diff",
        &g("types.gguf"),
        &g("types.f32.gguf"),
        "--common",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pass"], true);
    // A GGUF model against a Hugging Face checkpoint is compared in Hugging Face terms (names
    // mapped back, llama q/k rows un-permuted): the converted base equals its source exactly.
    for (gguf, hf) in [
        ("llama_f32.gguf", "llama/base"),
        ("qwen2_bf16.gguf", "llama/qwen2"),
    ] {
        let j = run_ok(diff_args(Path::new(&g(gguf)), &fixture(hf), &["--json"]));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["pass"], true, "{gguf}");
        assert_eq!(v["identical"], v["tensors_compared"], "{gguf}");
        assert_eq!(v["only_in_a"], 0);
        assert_eq!(v["only_in_b"], 0);
    }
    // A merged GGUF against PEFT's merge (which holds the changed tensors only), either order.
    let (_dir, m) = scratch("m.gguf");
    let adapter = fixture("llama/adapters/rslora_all");
    merge_json(g("llama_f32.gguf"), s(&adapter), &m, &[]);
    let peft = fixture("llama/merged/rslora_all.safetensors");
    let (m, peft) = (s(&m), s(&peft));
    run_ok(["diff", m, peft, "--common", "--tolerance", "1e-6"]);
    run_ok(["diff", peft, m, "--common", "--tolerance", "1e-6"]);
    assert_eq!(
        run_err(["diff", m, peft, "--common"]).status.code(),
        Some(1)
    );
}

/// Hostile GGUF files: one line naming the file and the problem, exit 2.
#[test]
fn malformed_gguf_files_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = std::fs::read(fixture("gguf/tiny.gguf")).unwrap();
    let find = |name: &[u8]| {
        let mut pat = (name.len() as u64).to_le_bytes().to_vec();
        pat.extend_from_slice(name);
        pat.extend_from_slice(&2u32.to_le_bytes());
        tiny.windows(pat.len()).position(|w| w == pat).unwrap() + pat.len()
    };
    // Tensor `b`: dims at +0, type at +16, offset at +20 (after its n_dims).
    let b = find(b"b");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            tiny[..tiny.len() - 40].to_vec(),
            "runs past the end",
        ),
        (
            "offset",
            {
                let mut t = tiny.clone();
                t[b + 20..b + 28].copy_from_slice(&0u64.to_le_bytes());
                t
            },
            "tensor `b`: data offset 0 is not the expected 512",
        ),
        (
            "type",
            {
                let mut t = tiny.clone();
                t[b + 16..b + 20].copy_from_slice(&99u32.to_le_bytes());
                t
            },
            "tensor `b`: unknown ggml type id 99",
        ),
        (
            "blocks",
            {
                let mut t = tiny.clone();
                t[b..b + 8].copy_from_slice(&48u64.to_le_bytes());
                t
            },
            "tensor `b`: row length 48 of type Q8_0 is not a multiple of its block size 32",
        ),
        (
            "count",
            {
                let mut t = tiny.clone();
                t[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
                t
            },
            "header claims 18446744073709551615 tensors",
        ),
    ];
    for (name, bytes, want) in cases {
        let p = dir.path().join(format!("{name}.gguf"));
        std::fs::write(&p, bytes).unwrap();
        for cmd in [vec!["inspect", s(&p)], { vec!["diff", s(&p), s(&p)] }] {
            let e = one_line_error(&run_err(&cmd));
            assert!(
                e.starts_with(&format!("error: {}: ", p.display())) && e.contains(want),
                "{name}: {e}"
            );
        }
    }
}

/// The GGUF reports speak the one JSON vocabulary (first_hour's rule): `operation` first,
/// `files` a list, and no key a number in one report and a list in another — checked together
/// with the safetensors inspect and merge reports.
#[test]
fn gguf_reports_share_the_json_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| s(&dir.path().join(n)).to_owned();
    let qv = s(&fixture("llama/adapters/qv_r8")).to_owned();
    let base = s(&fixture("llama/base")).to_owned();
    let lines = [
        format!("inspect {} --tensors", g("types.gguf")),
        format!("inspect {base} --tensors"),
        format!("merge --base {base} --adapter {qv} -o {}", d("hf")),
        format!(
            "merge --base {} --adapter {qv} -o {}",
            g("llama_q8_0.gguf"),
            d("m.gguf")
        ),
        format!(
            "merge --base {} --adapter {qv} -o {} --dry-run --max-shard-size 50KB",
            g("llama_q8_0.gguf"),
            d("n.gguf")
        ),
        format!("convert {qv} --to gguf --base {base} -o {}", d("a.gguf")),
        format!("diff {} {} --common", g("types.gguf"), g("types.f32.gguf")),
    ];
    assert_one_json_vocabulary(&lines, 0);
}
