//! The non-linear 4-bit types lorakit reads but does not write (`IQ4_NL`, `IQ4_XS`, the popular
//! "IQ4_XS" model files): a merge into an `IQ4_NL` base with `--outtype f32` equals the merge
//! into the same model stored as gguf-py's F32 dequantization of its bytes
//! (`llama_iq4_nl.f32.gguf`, fixtures/gen/gguf_fixtures.py), and `keep` is refused naming the
//! tensor and type, nothing written.

use super::*;

#[test]
fn merge_into_iq4_nl_equals_merge_into_its_gguf_py_dequantization() {
    let dir = tempfile::tempdir().unwrap();
    let qv = fixture("llama/adapters/qv_r8");
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    for (base, out) in [("llama_iq4_nl.gguf", &a), ("llama_iq4_nl.f32.gguf", &b)] {
        run_ok([
            "merge",
            "--base",
            &g(base),
            "--adapter",
            s(&qv),
            "--out",
            s(out),
            "--outtype",
            "f32",
            "--quiet",
        ]);
    }
    // Every tensor, merged or copied, bit for bit (tolerance 0 on the dequantized values).
    let out = run_ok(["diff", s(&a), s(&b), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["max_abs_diff"], 0.0, "{v}");
    let keep = dir.path().join("keep.gguf");
    let e = one_line_error(&run_exit(
        [
            "merge",
            "--base",
            &g("llama_iq4_nl.gguf"),
            "--adapter",
            s(&qv),
            "--out",
            s(&keep),
        ],
        2,
    ));
    assert!(e.contains("is IQ4_NL") && e.contains("--outtype"), "{e}");
    assert!(!keep.exists());
}
