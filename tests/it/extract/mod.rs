//! `extract` against matrices with known singular values (Eckart–Young optimum known exactly),
//! PEFT-made fixtures (the merged delta of a real adapter, a committed extracted adapter that
//! PEFT loaded and merged), and the options, refusals and error cases.
//!
//! Reference arithmetic here is independent of lorakit: test matrices are built in f64 from
//! Gram–Schmidt-orthonormalised Gaussian matrices, adapters are read with the `safetensors`
//! crate and `s·B·A` is formed in f64.

/// Accuracy of `extract` against matrices with known spectra (the Eckart–Young optimum known
/// exactly) and against the PEFT-made fixtures.
mod accuracy;
/// `extract`'s refusals: bad inputs give one line and no output; `--help` lists the options.
mod errors;
/// Split runs: `extract --part I/N` in separate processes, then `finalize`, equal one run.
mod parts;
/// The rank rules (energy, sv-ratio) at their documented boundaries, and alpha rescaled per
/// module rank.
mod rank_rules;
/// What `extract` extracts, stores whole or skips: unchanged and changed tensors, targets and
/// excludes, embeddings, Conv1D and conv modules, kohya output, determinism, dtypes.
mod stored;

use super::common::*;
use super::reference::*;
use safetensors::Dtype;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Test data from the project's one seeded generator (`linalg::rng`, xoshiro256++ with
/// Box–Muller normals); only the data comes from lorakit, every reference is computed here.
struct Rng(lorakit::linalg::rng::Xoshiro256PlusPlus);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(lorakit::linalg::rng::Xoshiro256PlusPlus::seed_from_u64(
            seed,
        ))
    }
    fn uniform(&mut self) -> f64 {
        self.0.next_f64()
    }
    fn matrix(&mut self, n: usize, std: f64) -> Vec<f64> {
        (0..n).map(|_| self.0.next_gaussian() * std).collect()
    }
}

/// `m×k` (row-major) with orthonormal columns: modified Gram–Schmidt, each column twice.
fn orthonormal(m: usize, k: usize, rng: &mut Rng) -> Vec<f64> {
    let mut q = rng.matrix(m * k, 1.0);
    for j in 0..k {
        for _ in 0..2 {
            for i in 0..j {
                let dot: f64 = (0..m).map(|r| q[r * k + i] * q[r * k + j]).sum();
                for r in 0..m {
                    q[r * k + j] -= dot * q[r * k + i];
                }
            }
        }
        let norm: f64 = (0..m)
            .map(|r| q[r * k + j] * q[r * k + j])
            .sum::<f64>()
            .sqrt();
        for r in 0..m {
            q[r * k + j] /= norm;
        }
    }
    q
}

/// `U·diag(s)·Vᵀ` (`m×n`, f64) with random orthonormal `U`, `V`: singular values exactly `s`.
fn with_spectrum(m: usize, n: usize, s: &[f64], seed: u64) -> Vec<f64> {
    let k = s.len();
    let mut rng = Rng::new(seed);
    let u = orthonormal(m, k, &mut rng);
    let v = orthonormal(n, k, &mut rng);
    let mut d = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            d[i * n + j] = (0..k).map(|t| u[i * k + t] * s[t] * v[j * k + t]).sum();
        }
    }
    d
}

/// `G₁·G₂` with Gaussian `G₁` (`m×r`), `G₂` (`r×n`): rank `r`.
fn low_rank(m: usize, n: usize, r: usize, std: f64, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let g1 = rng.matrix(m * r, std);
    let g2 = rng.matrix(r * n, 1.0);
    let mut d = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            d[i * n + j] = (0..r).map(|t| g1[i * r + t] * g2[t * n + j]).sum();
        }
    }
    d
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn f32_tensor(name: &str, shape: &[usize], v: &[f32]) -> (String, Dtype, Vec<usize>, Vec<u8>) {
    (name.to_owned(), Dtype::F32, shape.to_vec(), bytes(v))
}

/// Writes a safetensors file with the `safetensors` crate.
fn synth(path: &Path, tensors: &Tensors) {
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.as_str(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A checkpoint file from a map of tensors read with [`read`] (any order).
/// `DIR/tuned.safetensors`: `llama/base` with every tensor of the merged file `merged` laid over
/// it (see [`llama_tuned`]).
fn llama_tuned_file(dir: &Path, merged: &str) -> std::path::PathBuf {
    llama_tuned_with(dir, merged).0
}

/// `dir/tuned.safetensors`, the llama fixture with the tensors of the fixture file `merged` laid
/// over it (see [`llama_tuned`]), and its tensors.
fn llama_tuned_with(dir: &Path, merged: &str) -> (std::path::PathBuf, TensorMap) {
    let tuned = dir.join("tuned.safetensors");
    let t = llama_tuned(&[(merged, None)]);
    write_tensors(&tuned, &t);
    (tuned, t)
}

/// Runs `extract --json` and parses the summary.
fn extract(base: &Path, tuned: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = extract_args(base, tuned, out, &["--json"]);
    args.extend(extra.iter().map(|s| s.to_string()));
    serde_json::from_str(&run_ok(&args)).unwrap()
}

fn run_extract_err(base: &Path, tuned: &Path, out: &Path, extra: &[&str]) -> String {
    one_line_error(&run_err(extract_args(base, tuned, out, extra)))
}

/// `llama/base` with the tensors of `merged` files laid over it.
fn llama_tuned(overlays: &[(&str, Option<&[&str]>)]) -> BTreeMap<String, T> {
    let mut t = read_checkpoint(&fixture("llama/base"));
    for (file, only) in overlays {
        for (k, v) in read(&fixture(file)) {
            if only.is_none_or(|o| o.contains(&k.as_str())) {
                assert!(t.contains_key(&k), "{k}");
                t.insert(k, v);
            }
        }
    }
    t
}

fn names_with_reason(v: &Value, list: &str, reason: &str) -> Vec<String> {
    v[list]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["reason"] == reason)
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

fn module_ranks(v: &Value) -> BTreeMap<String, u64> {
    v["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["rank"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// base/tuned: `layers.0.proj` (changed weight and bias), `layers.1.proj` (unchanged),
/// `layers.2.proj` (changed by 1e-6 relative), `norm` (weight changed, bias not).
fn mixed_pair(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut rng = Rng::new(3);
    let w: Vec<Vec<f32>> = (0..3).map(|_| f32s(&rng.matrix(40 * 30, 0.05))).collect();
    let d0 = low_rank(40, 30, 3, 0.02, 9);
    let bias0 = f32s(&rng.matrix(40, 0.1));
    let norm_w = vec![1.0f32; 30];
    let norm_b = vec![0.0f32; 30];
    let base: Tensors = vec![
        f32_tensor("layers.0.proj.weight", &[40, 30], &w[0]),
        f32_tensor("layers.0.proj.bias", &[40], &bias0),
        f32_tensor("layers.1.proj.weight", &[40, 30], &w[1]),
        f32_tensor("layers.2.proj.weight", &[40, 30], &w[2]),
        f32_tensor("norm.weight", &[30], &norm_w),
        f32_tensor("norm.bias", &[30], &norm_b),
    ];
    let mut tuned = base.clone();
    tuned[0].3 = bytes(
        &w[0]
            .iter()
            .zip(&d0)
            .map(|(&a, &b)| a + b as f32)
            .collect::<Vec<_>>(),
    );
    tuned[1].3 = bytes(&bias0.iter().map(|x| x + 0.125).collect::<Vec<_>>());
    tuned[3].3 = bytes(&w[2].iter().map(|x| x * (1.0 + 1e-6)).collect::<Vec<_>>());
    tuned[4].3 = bytes(&norm_w.iter().map(|x| x * 1.5).collect::<Vec<_>>());
    let (b, t) = (dir.join("base.safetensors"), dir.join("tuned.safetensors"));
    synth(&b, &base);
    synth(&t, &tuned);
    (b, t)
}
