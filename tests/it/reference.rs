//! Independent float64 references for the tests: relative errors, a one-sided Jacobi SVD
//! (Hestenes) that shares no code or precision with lorakit's faer/Householder path, the
//! Eckart–Young best rank-r approximation, the assertion that a result is that optimum, and
//! ΔW read from files by the peers' rules (PEFT's scale and orientation), not by lorakit's reader.

use super::common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Unit roundoff of f32 (round to nearest): 2⁻²⁴.
pub const U32: f64 = 1.0 / (1u64 << 24) as f64;

pub fn rel64(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Thin SVD of a `d × k` matrix in f64 by one-sided Jacobi (Hestenes): returns `(U d×n, σ, V k×n)`
/// with `n = min(d, k)`, σ non-increasing. Independent of lorakit's faer path.
pub fn jacobi_svd(m: &[f64], d: usize, k: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    // Work on the wide side's transpose so columns are the short dimension's count.
    if d < k {
        let mt: Vec<f64> = (0..k * d).map(|x| m[(x % d) * k + x / d]).collect();
        let (u, s, v) = jacobi_svd(&mt, k, d);
        return (v, s, u);
    }
    let n = k;
    let mut a = m.to_vec(); // d × k, columns rotated in place
    let mut v = vec![0f64; k * k];
    for i in 0..k {
        v[i * k + i] = 1.0;
    }
    for _sweep in 0..60 {
        let mut off = 0f64;
        for p in 0..n {
            for q in p + 1..n {
                let (mut alpha, mut beta, mut gamma) = (0f64, 0f64, 0f64);
                for i in 0..d {
                    let (x, y) = (a[i * k + p], a[i * k + q]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma.abs() <= 1e-300 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                off = off.max(gamma.abs() / (alpha * beta).sqrt());
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let sn = c * t;
                for i in 0..d {
                    let (x, y) = (a[i * k + p], a[i * k + q]);
                    a[i * k + p] = c * x - sn * y;
                    a[i * k + q] = sn * x + c * y;
                }
                for i in 0..k {
                    let (x, y) = (v[i * k + p], v[i * k + q]);
                    v[i * k + p] = c * x - sn * y;
                    v[i * k + q] = sn * x + c * y;
                }
            }
        }
        if off < 1e-15 {
            break;
        }
    }
    let mut sig: Vec<(f64, usize)> = (0..n)
        .map(|j| ((0..d).map(|i| a[i * k + j].powi(2)).sum::<f64>().sqrt(), j))
        .collect();
    sig.sort_by(|x, y| y.0.total_cmp(&x.0));
    let mut u = vec![0f64; d * n];
    let mut vv = vec![0f64; k * n];
    let mut s = Vec::with_capacity(n);
    for (c, &(sv, j)) in sig.iter().enumerate() {
        s.push(sv);
        for i in 0..d {
            u[i * n + c] = if sv > 0.0 { a[i * k + j] / sv } else { 0.0 };
        }
        for i in 0..k {
            vv[i * n + c] = v[i * k + j];
        }
    }
    (u, s, vv)
}

/// Best rank-`r` approximation `U_r·diag(σ_r)·V_rᵀ` of a `d × k` matrix (f64), and the singular
/// values.
pub fn best_rank(m: &[f64], d: usize, k: usize, r: usize) -> (Vec<f64>, Vec<f64>) {
    let (u, sv, v) = jacobi_svd(m, d, k);
    let n = sv.len();
    let mut out = vec![0f64; d * k];
    for t in 0..r.min(n) {
        for i in 0..d {
            let x = u[i * n + t] * sv[t];
            for j in 0..k {
                out[i * k + j] += x * v[j * n + t];
            }
        }
    }
    (out, sv)
}

/// Asserts that `x` (rank ≤ `r` by construction) is the best rank-`r` approximation of `m`:
/// its Frobenius error is the Eckart–Young optimum `(Σ_{i≥r} σᵢ²)^{1/2}` (to 10⁻⁶ of ‖m‖), and it
/// equals the truncated f64 SVD to f32 rounding amplified by the gap `σ_r − σ_{r+1}` (which
/// conditions the kept subspace). Returns the singular values.
pub fn assert_best_rank(
    what: &str,
    x: &[f64],
    m: &[f64],
    d: usize,
    k: usize,
    r: usize,
) -> Vec<f64> {
    let (best, sv) = best_rank(m, d, k, r);
    let fro = |v: &[f64]| v.iter().map(|y| y * y).sum::<f64>().sqrt();
    let diff: Vec<f64> = m.iter().zip(x).map(|(a, b)| a - b).collect();
    let opt = sv[r.min(sv.len())..]
        .iter()
        .map(|y| y * y)
        .sum::<f64>()
        .sqrt();
    assert!(
        fro(&diff) <= opt + 1e-6 * fro(m),
        "{what}: error {} above the rank-{r} optimum {opt}",
        fro(&diff)
    );
    let gap = if r < sv.len() {
        sv[r - 1] - sv[r]
    } else {
        sv[r - 1]
    };
    let tol = 1e-6 + 16.0 * f32::EPSILON as f64 * sv[0] / gap.max(1e-30);
    let e = rel64(x, &best);
    assert!(e < tol, "{what}: vs truncated SVD {e:e} > {tol:e}");
    sv
}

#[test]
fn jacobi_reference_reconstructs() {
    let (d, k) = (5, 3);
    let m: Vec<f64> = (0..d * k)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0)
        .collect();
    let (full, sv) = best_rank(&m, d, k, 3);
    assert!(rel64(&full, &m) < 1e-13);
    assert!(sv.windows(2).all(|w| w[0] >= w[1]));
    let mt: Vec<f64> = (0..k * d).map(|x| m[(x % d) * k + x / d]).collect();
    let (full_t, _) = best_rank(&mt, k, d, 3);
    assert!(rel64(&full_t, &mt) < 1e-13);
}

// ------------------------------------------------------------------------------------------
// resize

/// Frobenius norm in f64.
pub fn norm64(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// `ΔW` of every module of a PEFT adapter folder, `scale·B·A` in f64, in the base's stored
/// orientation (transposed for embeddings and fan_in_fan_out), flattened row-major. Rank and
/// alpha per module follow PEFT: `r` from lora_A, alpha from the first `alpha_pattern` key with
/// `re.match(rf"(.*\.)?({key})$", module)`, else `lora_alpha`.
pub fn peft_deltas(dir: &Path) -> BTreeMap<String, Vec<f64>> {
    let t = read(&dir.join("adapter_model.safetensors"));
    let cfg: Value = read_json(dir.join("adapter_config.json"));
    assert_eq!(cfg["use_rslora"], false);
    let fifo = cfg["fan_in_fan_out"] == true;
    let alpha_for = |m: &str| peft_alpha_for(&cfg, m).unwrap();
    let mut out = BTreeMap::new();
    for (key, a) in &t {
        let (module, embedding) = if let Some(m) = key.strip_suffix(".lora_A.weight") {
            (m, false)
        } else if let Some(m) = key.strip_suffix(".lora_embedding_A") {
            (m, true)
        } else {
            continue;
        };
        let b = if embedding {
            &t[&format!("{module}.lora_embedding_B")]
        } else {
            &t[&format!("{module}.lora_B.weight")]
        };
        let name = module.strip_prefix("base_model.model.").unwrap();
        let r = a.shape[0];
        let k: usize = a.shape[1..].iter().product();
        let d = b.shape[0];
        assert_eq!(b.shape[1], r);
        let s = alpha_for(name) / r as f64;
        let (av, bv) = (a.f32(), b.f32());
        let mut delta = scaled_product64(s, &bv, &av, (d, r, k));
        if embedding || (fifo && a.shape.len() == 2) {
            let mut tr = vec![0f64; d * k];
            for i in 0..d {
                for j in 0..k {
                    tr[j * d + i] = delta[i * k + j];
                }
            }
            delta = tr;
        }
        out.insert(name.to_owned(), delta);
    }
    out
}

/// `s·B·A` in f64 for factors `B` `d×r` and `A` `r×k` (row-major f32), row-major `d×k`:
/// each entry `s · Σ_q B[i,q]·A[q,j]`, the sum in ascending `q`.
pub fn scaled_product64(
    s: f64,
    b: &[f32],
    a: &[f32],
    (d, r, k): (usize, usize, usize),
) -> Vec<f64> {
    assert_eq!((b.len(), a.len()), (d * r, r * k), "factor sizes");
    let mut out = vec![0f64; d * k];
    for i in 0..d {
        for j in 0..k {
            out[i * k + j] = s
                * (0..r)
                    .map(|q| b[i * r + q] as f64 * a[q * k + j] as f64)
                    .sum::<f64>();
        }
    }
    out
}

/// `W − W0` of one tensor of two checkpoint maps, in f64 (exact: both are f32).
pub fn diff(tuned: &BTreeMap<String, T>, base: &BTreeMap<String, T>, name: &str) -> Vec<f64> {
    tuned[name]
        .f32()
        .iter()
        .zip(base[name].f32())
        .map(|(&w, w0)| w as f64 - w0 as f64)
        .collect()
}
