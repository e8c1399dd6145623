//! `extract`'s refusals: bad inputs give one line and no output; `--help` lists the options.

use super::*;

#[test]
fn bad_inputs_give_one_line_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let (base, tuned) = mixed_pair(dir.path());
    let out = dir.path().join("out");
    let check = |b: &Path, t: &Path, o: &Path, extra: &[&str], want: &[&str]| {
        let e = run_extract_err(b, t, o, extra);
        for w in want {
            assert!(e.contains(w), "`{w}` not in: {e}");
        }
        assert!(!o.exists(), "{} was created", o.display());
    };
    let mut t = read(&tuned);
    // Shape mismatch: names the tensor and the tuned file; --exclude lifts it.
    let bad = dir.path().join("shape.safetensors");
    let mut t2 = t.clone();
    t2.insert(
        "layers.1.proj.weight".into(),
        T {
            dtype: Dtype::F32,
            shape: vec![30, 40],
            data: t["layers.1.proj.weight"].data.clone(),
        },
    );
    write_tensors(&bad, &t2);
    check(
        &base,
        &bad,
        &out,
        &["--rank", "2"],
        &[
            "shape.safetensors",
            "`layers.1.proj.weight`",
            "[30, 40]",
            "[40, 30]",
        ],
    );
    extract(
        &base,
        &bad,
        &dir.path().join("excluded"),
        &["--rank", "2", "--exclude", r"re:layers\.1"],
    );
    // dtype mismatch.
    let mut t3 = t.clone();
    let w = t3["layers.1.proj.weight"].f32();
    t3.insert(
        "layers.1.proj.weight".into(),
        T {
            dtype: Dtype::F16,
            shape: vec![40, 30],
            data: w
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
        },
    );
    write_tensors(&bad, &t3);
    check(
        &base,
        &bad,
        &out,
        &["--rank", "2"],
        &["`layers.1.proj.weight`", "F16", "F32"],
    );
    // A tensor in the base only, and one in the tuned checkpoint only.
    let mut t4 = t.clone();
    t4.remove("norm.bias");
    write_tensors(&bad, &t4);
    check(
        &base,
        &bad,
        &out,
        &["--rank", "2"],
        &["`norm.bias`", "not in this checkpoint"],
    );
    let mut t5 = t.clone();
    t5.insert("extra.weight".into(), t["norm.bias"].clone());
    write_tensors(&bad, &t5);
    check(
        &base,
        &bad,
        &out,
        &["--rank", "2"],
        &["`extra.weight`", "is not in the base"],
    );
    // Non-finite value.
    let mut v = t["layers.0.proj.weight"].f32();
    v[7] = f32::NAN;
    t.get_mut("layers.0.proj.weight").unwrap().data = bytes(&v);
    write_tensors(&bad, &t);
    check(
        &base,
        &bad,
        &out,
        &["--rank", "2"],
        &["`layers.0.proj.weight`", "not finite", "flat index 7"],
    );
    // Output onto an input (the tuned file as a kohya output; the base folder as a PEFT output).
    let before = std::fs::read(&tuned).unwrap();
    let e = run_extract_err(&base, &tuned, &tuned, &["--rank", "2", "--format", "kohya"]);
    assert!(e.contains("output is also an input"), "{e}");
    assert_eq!(std::fs::read(&tuned).unwrap(), before);
    let lb = fixture("llama/base");
    let e = run_extract_err(&lb, &lb, &lb, &["--rank", "2"]);
    assert!(e.contains("output is also an input"), "{e}");
    // Usage errors.
    check(&base, &tuned, &out, &["--energy", "1.5"], &["--energy"]);
    check(
        &base,
        &tuned,
        &out,
        &["--rank", "2", "--targets", "re:("],
        &["--targets `re:(`: not a valid regex"],
    );
    check(
        &base,
        &tuned,
        &out,
        &["--rank", "2", "--exclude", ","],
        &["--exclude `,` names no module"],
    );
    // A missing file.
    check(
        &base,
        &dir.path().join("nope.safetensors"),
        &out,
        &["--rank", "2"],
        &["nope.safetensors"],
    );
}

#[test]
fn help_lists_the_options() {
    let h = run_ok(["extract", "--help"]);
    for flag in [
        "--rank",
        "--energy",
        "--sv-ratio",
        "--max-rank",
        "--targets",
        "--exclude",
        "--format",
        "--alpha",
        "--embeddings",
        "--exact",
        "--oversample",
        "--power-iters",
        "--seed",
        "--min-diff",
        "--save-changed",
        "--fan-in-fan-out",
        "--prefix",
        "--device",
        "--json",
        "Examples:",
    ] {
        assert!(h.contains(flag), "{flag} missing from --help");
    }
}
