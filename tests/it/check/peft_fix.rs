//! `check --fix` outputs loaded in PEFT itself (issue #19, "Proof"): every fixed folder —
//! folded scales and patterns, zero-padded ranks, renamed prefixes, split packed projections,
//! DoRA → LoRA — loads with every file tensor landing in the model unchanged and no
//! missing/unexpected-key warning, and PEFT's `merge_and_unload` of it equals PEFT's merge of
//! the original: to f32 rounding for the exact fixes, within the reported ‖ΔW − B′A′‖_F for
//! DoRA → LoRA. All folders go through one Python process (`fixtures/gen/check_fix_peft.py`);
//! skipped loudly without PEFT, like every PEFT test.

use super::fix::{assert_qkv_split_merged, qkv_adapter};
use super::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What a fixed folder's PEFT merge is compared with.
enum Reference {
    /// PEFT's merge of the original folder (which PEFT loads whole).
    PeftOriginal,
    /// lorakit's merge of the original (PEFT leaves its keys out: `no_root_prefix`).
    LorakitOriginal,
    /// W0 + 2·B[rows]·A in f64 (a packed `qkv_proj` no PEFT Llama has).
    PackedF64(Vec<f32>, Vec<f32>),
    /// PEFT's merge of the original within each module's reported error.
    PeftOriginalWithin(BTreeMap<String, f64>),
}

struct Job {
    name: String,
    original: PathBuf,
    fixed: PathBuf,
    reference: Reference,
}

/// Runs PEFT on every folder of `folders` in one process; returns each one's problems and its
/// merged tensors (base checkpoint names).
fn peft_merges(
    py: &Path,
    dir: &Path,
    folders: &[&Path],
) -> Vec<(Vec<String>, BTreeMap<String, T>)> {
    let base = fixture("llama/base");
    let jobs: Vec<Value> = folders
        .iter()
        .enumerate()
        .map(|(i, f)| {
            serde_json::json!({
                "adapter": f,
                "base": base,
                "out": dir.join(format!("peft{i}.safetensors")),
            })
        })
        .collect();
    let list = dir.join("jobs.json");
    std::fs::write(&list, serde_json::to_vec(&jobs).unwrap()).unwrap();
    let o = std::process::Command::new(py)
        .arg(fixture("gen/check_fix_peft.py"))
        .arg(&list)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), folders.len());
    lines
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let problems = v["problems"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_owned())
                .collect();
            (problems, read(&dir.join(format!("peft{i}.safetensors"))))
        })
        .collect()
}

/// Elementwise within 4 f32 ulps of the larger magnitude (at least 1): the exact fixes change
/// only where `s·B` is rounded, once.
fn assert_same_to_rounding(name: &str, got: &BTreeMap<String, T>, want: &BTreeMap<String, T>) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{name}"
    );
    for (k, w) in want {
        for (p, q) in got[k].f32().iter().zip(w.f32()) {
            let tol = 4.0 * f32::EPSILON as f64 * (p.abs().max(q.abs()) as f64).max(1.0);
            assert!(
                (*p as f64 - q as f64).abs() <= tol,
                "{name} {k}: {p} vs {q}"
            );
        }
    }
}

#[test]
fn fix_outputs_load_in_peft_and_merge_as_the_original() {
    let Some(py) = peft_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    let llm = "vllm,sglang,lorax,llama.cpp,peft";
    let mut jobs = Vec::new();
    // Folds (rank/alpha patterns, rsLoRA), zero-pads (SGLang's one r: patterns' rank-2 k_proj)
    // and zero siblings (weighted_b: k/q without v), an embedding LoRA; renames (no_root_prefix).
    for (case, targets, reference) in [
        ("llama/adapters/patterns", llm, Reference::PeftOriginal),
        ("llama/adapters/rslora_all", llm, Reference::PeftOriginal),
        ("llama/adapters/weighted_b", llm, Reference::PeftOriginal),
        (
            "llama/adapters/embed",
            "vllm,sglang,llama.cpp,peft",
            Reference::PeftOriginal,
        ),
        (
            "check/no_root_prefix",
            "vllm,lorax,peft",
            Reference::LorakitOriginal,
        ),
    ] {
        let fixed = dir.path().join(case.replace('/', "_"));
        let (code, r) = check_fix(&fixture(case), Some(&base), targets, &fixed, &[]);
        assert_eq!(code, 0, "{case}: {}", r["after"]);
        jobs.push(Job {
            name: case.into(),
            original: fixture(case),
            fixed,
            reference,
        });
    }
    // Split: a packed qkv_proj becomes q/k/v_proj.
    let (qkv, a, b) = qkv_adapter(dir.path());
    let fixed = dir.path().join("qkv_fixed");
    let (code, r) = check_fix(&qkv, Some(&base), "vllm,peft", &fixed, &[]);
    assert_eq!(code, 0, "{}", r["after"]);
    jobs.push(Job {
        name: "qkv split".into(),
        original: qkv,
        fixed,
        reference: Reference::PackedF64(a, b),
    });
    // DoRA → LoRA at rank 4 (lossy: the error is reported per module).
    let dora = fixture("llama/adapters/dora");
    let fixed = dir.path().join("dora4");
    let (code, r) = check_fix(&dora, Some(&base), "", &fixed, &["--dora-rank", "4"]);
    assert_eq!(code, 0, "{}", r["after"]);
    let reported = r["fix"]["dora_to_lora"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                format!("{}.weight", c["module"].as_str().unwrap()),
                c["fro_error"].as_f64().unwrap(),
            )
        })
        .collect();
    jobs.push(Job {
        name: "dora → lora".into(),
        original: dora,
        fixed,
        reference: Reference::PeftOriginalWithin(reported),
    });

    // Every fixed folder, then the originals PEFT is the reference for.
    let mut folders: Vec<&Path> = jobs.iter().map(|j| j.fixed.as_path()).collect();
    let originals: Vec<&Path> = jobs
        .iter()
        .filter(|j| {
            matches!(
                j.reference,
                Reference::PeftOriginal | Reference::PeftOriginalWithin(_)
            )
        })
        .map(|j| j.original.as_path())
        .collect();
    folders.extend(&originals);
    let merges = peft_merges(&py, dir.path(), &folders);
    let mut next_original = jobs.len();
    for (j, (problems, got)) in jobs.iter().zip(&merges) {
        assert!(problems.is_empty(), "{}: PEFT: {problems:?}", j.name);
        assert!(!got.is_empty(), "{}: PEFT changed no weight", j.name);
        match &j.reference {
            Reference::PeftOriginal => {
                let (p, want) = &merges[next_original];
                next_original += 1;
                assert!(p.is_empty(), "{} original: {p:?}", j.name);
                assert_same_to_rounding(&j.name, got, want);
            }
            Reference::LorakitOriginal => {
                let m = dir.path().join("lorakit_merge");
                merge_ok(&base, &j.original, &m, &[]);
                let all = read_checkpoint(&m);
                let want: BTreeMap<String, T> =
                    got.keys().map(|k| (k.clone(), all[k].clone())).collect();
                assert_same_to_rounding(&j.name, got, &want);
            }
            Reference::PackedF64(a, b) => assert_qkv_split_merged(got, a, b),
            Reference::PeftOriginalWithin(reported) => {
                let (p, want) = &merges[next_original];
                next_original += 1;
                assert!(p.is_empty(), "{} original: {p:?}", j.name);
                assert_eq!(got.len(), reported.len(), "{}", j.name);
                for (k, err) in reported {
                    let diff = got[k]
                        .f32()
                        .iter()
                        .zip(want[k].f32())
                        .map(|(x, y)| (*x as f64 - y as f64).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    // PEFT's own DoRA merge vs PEFT's merge of the rank-4 LoRA: the reported
                    // error, to the f32 rounding of two merges.
                    assert!(
                        (diff - err).abs() <= 1e-3 * err,
                        "{k}: PEFT merges differ by {diff}, reported {err}"
                    );
                }
            }
        }
    }
}
