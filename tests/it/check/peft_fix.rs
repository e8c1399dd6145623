//! `check --fix` outputs loaded in PEFT itself (issue #19, "Proof"): every fixed folder —
//! folded scales and patterns, zero-padded ranks, renamed prefixes, split packed projections,
//! q/k/v and gate/up fused into a Phi-3 base's `qkv_proj`/`gate_up_proj` (loaded on
//! transformers' `Phi3ForCausalLM`, merge equal to W0 + s·B·A per part in f64), DoRA → LoRA —
//! loads with every file tensor landing in the model unchanged and no
//! missing/unexpected-key warning, and PEFT's `merge_and_unload` of it equals PEFT's merge of
//! the original: to f32 rounding for the exact fixes, within the reported ‖ΔW − B′A′‖_F for
//! DoRA → LoRA. All folders go through one Python process (`fixtures/gen/check_fix_peft.py`);
//! skipped loudly without PEFT, like every PEFT test.

use super::fix::{assert_qkv_split_merged, packed_merge_f64, qkv_adapter};
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
    /// W0 + s·B·A per part in f64 from the original's factors, on the Phi-3 base whose packed
    /// `qkv_proj`/`gate_up_proj` the fix fused the parts into (`packed_merge_f64`).
    FusedF64,
    /// PEFT's merge of the original within each module's reported error.
    PeftOriginalWithin(BTreeMap<String, f64>),
}

struct Job {
    name: String,
    original: PathBuf,
    fixed: PathBuf,
    /// The base PEFT loads `fixed` on (fixtures/llama/base unless fused for Phi-3).
    base: PathBuf,
    reference: Reference,
}

/// Runs PEFT on every (adapter folder, base) of `folders` in one process; returns each one's
/// problems and its merged tensors (base checkpoint names).
fn peft_merges(
    py: &Path,
    dir: &Path,
    folders: &[(&Path, &Path)],
) -> Vec<(Vec<String>, BTreeMap<String, T>)> {
    let jobs: Vec<Value> = folders
        .iter()
        .enumerate()
        .map(|(i, (f, base))| {
            serde_json::json!({
                "adapter": f,
                "base": base,
                "out": dir.join(format!("peft{i}.safetensors")),
            })
        })
        .collect();
    let list = dir.join("jobs.json");
    std::fs::write(&list, serde_json::to_vec(&jobs).unwrap()).unwrap();
    let stdout = python_ok(py, "check_fix_peft.py", &[list.as_os_str()]);
    let lines: Vec<Value> = String::from_utf8(stdout)
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
            base: base.clone(),
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
        base: base.clone(),
        reference: Reference::PackedF64(a, b),
    });
    // Fuse: LoRAs on q/k/v and gate/up (PEFT adapters of the Llama layout) become one LoRA on
    // the packed qkv_proj / gate_up_proj of a transformers Phi-3 base, loaded there by PEFT.
    // qv_r8 lacks k_proj and the MLP; rslora_all has all parts, o/down_proj, scale alpha/√r.
    let phi3 = fixture("check/phi3_base");
    for case in ["llama/adapters/qv_r8", "llama/adapters/rslora_all"] {
        let fixed = dir.path().join(format!("phi3_{}", case.replace('/', "_")));
        let (code, r) = check_fix(&fixture(case), Some(&phi3), "vllm,peft", &fixed, &[]);
        assert_eq!(code, 0, "{case}: {}", r["after"]);
        assert!(!r["fix"]["fused"].as_array().unwrap().is_empty(), "{case}");
        jobs.push(Job {
            name: format!("{case} fused for phi3"),
            original: fixture(case),
            fixed,
            base: phi3.clone(),
            reference: Reference::FusedF64,
        });
    }
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
        base: base.clone(),
        reference: Reference::PeftOriginalWithin(reported),
    });

    // Every fixed folder, then the originals PEFT is the reference for.
    let mut folders: Vec<(&Path, &Path)> = jobs
        .iter()
        .map(|j| (j.fixed.as_path(), j.base.as_path()))
        .collect();
    let originals: Vec<(&Path, &Path)> = jobs
        .iter()
        .filter(|j| {
            matches!(
                j.reference,
                Reference::PeftOriginal | Reference::PeftOriginalWithin(_)
            )
        })
        .map(|j| (j.original.as_path(), j.base.as_path()))
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
            Reference::FusedF64 => {
                let want = packed_merge_f64(&read_checkpoint(&j.base), &j.original);
                assert_eq!(
                    got.keys().collect::<Vec<_>>(),
                    want.keys().collect::<Vec<_>>(),
                    "{}",
                    j.name
                );
                for (k, w) in &want {
                    for (x, y) in got[k].f32().iter().zip(w) {
                        // One f32 rounding of s·B, one of the f32 matmul, one of the sum.
                        assert!(
                            (*x as f64 - y).abs() <= 1e-6 * y.abs().max(1.0),
                            "{} {k}: {x} vs {y}",
                            j.name
                        );
                    }
                }
            }
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
