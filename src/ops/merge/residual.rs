//! The base a PiSSA, OLoRA or KaSA adapter is added to: PEFT rewrites each targeted Linear
//! weight when it builds the layer (on `get_peft_model`, and again on `PeftModel.from_pretrained`
//! from the checkpoint's weight), so its `merge_and_unload` is `W_res + s·B·A`, not
//! `W + s·B·A` (PEFT 0.21.2 `tuners/lora/layer.py` `pissa_init`, `olora_init`;
//! `tuners/lora/variants.py` `KasaLinearVariant._truncate_base_weight`). The residuals are
//! functions of `W` alone: the rank-`r` parts removed do not depend on the signs or the order
//! of the factorisation's vectors, so computing them here gives PEFT's residual up to its f32
//! rounding. Computed in f64 (faer, sequential so the bytes do not depend on the thread count),
//! rounded to f32 and then to the base's dtype, as PEFT casts its f32 residual back.
//! Must not read or write files: the merge hands it the decoded weight.

use crate::adapter::algo::thin_svd;
use crate::adapter::formats::peft::BaseResidual;
use faer::Mat;

/// `W_res` for the `rows × cols` weight `w` (row-major, as stored), the module's rank and its
/// PEFT scaling `scale`, or why PEFT would not build this layer: `W − s·B₀·A₀` with the
/// factors of [`removed_factors`].
pub fn residual(
    rule: BaseResidual,
    w: &[f32],
    (rows, cols): (usize, usize),
    rank: usize,
    scale: f64,
) -> Result<Vec<f32>, String> {
    let (b0, a0) = removed_factors(rule, w, (rows, cols), rank, scale)?;
    // Row by row, so no d×k f64 product is held beside the weight.
    let n = b0.ncols();
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        out.extend((0..cols).map(|j| {
            let r: f64 = (0..n).map(|t| b0[(i, t)] * a0[(t, j)]).sum();
            (w[i * cols + j] as f64 - scale * r) as f32
        }));
    }
    Ok(out)
}

/// The factors `B₀` (`rows × n`) and `A₀` (`n × cols`) PEFT's init takes out of the base,
/// `W_res = W − s·B₀·A₀`, in f64: PiSSA's `U_r·√(S_r/s)` and `√(S_r/s)·V_rᵀ` (`pissa_init`
/// divides the singular values by the scaling), KaSA's the same over the `r` smallest triplets,
/// OLoRA's `Q_r` and `Q_rᵀ·W` (= `R_r`; `olora_init` does not divide by the scaling, so `s`
/// multiplies what it removes). A PEFT adapter for the original weights is then
/// `[B | −B₀]·[A; A₀]` at the same scaling, which is what PEFT's
/// `path_initial_model_for_weight_conversion` writes.
pub fn removed_factors(
    rule: BaseResidual,
    w: &[f32],
    (rows, cols): (usize, usize),
    rank: usize,
    scale: f64,
) -> Result<(Mat<f64>, Mat<f64>), String> {
    let k = rows.min(cols);
    let m = Mat::<f64>::from_fn(rows, cols, |i, j| w[i * cols + j] as f64);
    match rule {
        BaseResidual::Pissa | BaseResidual::Kasa => {
            let range = match rule {
                // PiSSA: the `r` largest singular triplets (all of them when r ≥ min(d, k)).
                BaseResidual::Pissa => 0..rank.min(k),
                // KaSA keeps `min(d, k) − r` principal ones and needs at least one.
                _ => {
                    if rank >= k {
                        return Err(format!(
                            "KaSA needs r ({rank}) below min(out, in) ({k}) so that one singular component of the base survives (PEFT raises the same)"
                        ));
                    }
                    k - rank..k
                }
            };
            let (u, sv, v) = thin_svd(&m)?;
            let root = |j: usize| (sv[range.start + j] / scale).sqrt();
            let n = range.len();
            let b0 = Mat::<f64>::from_fn(rows, n, |i, j| u[(i, range.start + j)] * root(j));
            let a0 = Mat::<f64>::from_fn(n, cols, |i, j| root(i) * v[(j, range.start + i)]);
            Ok((b0, a0))
        }
        BaseResidual::Olora => {
            if rank > k {
                return Err(format!(
                    "OLoRA needs r ({rank}) at most min(out, in) ({k}): PEFT's lora_B = Q[:, :r] has only {k} columns"
                ));
            }
            // Q_r·R_r = Q_r·Q_rᵀ·W: R = QᵀW, and Q_r is an orthonormal basis of W's first r
            // columns (Householder QR, as torch.linalg.qr, gives such a basis; the product
            // does not depend on which). Built by Gram–Schmidt with reorthogonalisation.
            let mut basis: Vec<Vec<f64>> = Vec::with_capacity(rank);
            for j in 0..rank {
                let mut c: Vec<f64> = (0..rows).map(|i| m[(i, j)]).collect();
                let norm0 = c.iter().map(|x| x * x).sum::<f64>().sqrt();
                for _ in 0..2 {
                    for b in &basis {
                        let d: f64 = c.iter().zip(b).map(|(x, y)| x * y).sum();
                        c.iter_mut().zip(b).for_each(|(x, y)| *x -= d * y);
                    }
                }
                let norm = c.iter().map(|x| x * x).sum::<f64>().sqrt();
                if norm.is_nan() || norm <= 1e-12 * norm0.max(f64::MIN_POSITIVE) {
                    return Err(format!(
                        "column {j} of the base weight depends on the ones before it, so OLoRA's Q_r (torch.linalg.qr) is not determined by the weight"
                    ));
                }
                basis.push(c.iter().map(|x| x / norm).collect());
            }
            let b0 = Mat::<f64>::from_fn(rows, rank, |i, j| basis[j][i]);
            let a0 = Mat::<f64>::from_fn(rank, cols, |i, j| {
                (0..rows).map(|x| basis[i][x] * m[(x, j)]).sum::<f64>()
            });
            Ok((b0, a0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::rng::Xoshiro256PlusPlus as Rng;

    fn random(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::seed_from_u64(seed);
        (0..rows * cols)
            .map(|_| (r.next_f64() - 0.5) as f32)
            .collect()
    }

    /// PiSSA and KaSA are checked against a float64 SVD (numpy's) on PEFT's fixtures in
    /// `tests/it/merge/peft_init.rs`; here, the refusals PEFT shares.
    #[test]
    fn ranks_peft_cannot_build_are_refused() {
        let w = random(12, 9, 3);
        assert!(residual(BaseResidual::Kasa, &w, (12, 9), 9, 1.0).is_err());
        assert!(residual(BaseResidual::Kasa, &w, (12, 9), 8, 1.0).is_ok());
        assert!(residual(BaseResidual::Olora, &w, (12, 9), 10, 1.0).is_err());
    }

    #[test]
    fn olora_removes_the_span_of_the_first_r_columns() {
        // (I − P)W with P the projector onto W's first r columns is the one matrix whose first r
        // columns are zero, whose columns are orthogonal to those r columns, and which differs
        // from W by a matrix in their span: checked here property by property, in f64.
        let (rows, cols, r) = (12, 9, 3);
        let w = random(rows, cols, 11);
        let res = residual(BaseResidual::Olora, &w, (rows, cols), r, 1.0).unwrap();
        let at = |v: &[f32], i: usize, j: usize| v[i * cols + j] as f64;
        for j in 0..cols {
            for c in 0..r {
                let dot: f64 = (0..rows).map(|i| at(&w, i, c) * at(&res, i, j)).sum();
                assert!(
                    dot.abs() < 1e-6,
                    "column {j} not orthogonal to W[:, {c}]: {dot}"
                );
            }
            if j < r {
                assert!(
                    (0..rows).all(|i| at(&res, i, j).abs() < 1e-6),
                    "column {j} not removed"
                );
            }
        }
        // W − res lies in span(W[:, :r]): least-squares fit by the normal equations (r = 3).
        let g: Vec<Vec<f64>> = (0..r)
            .map(|a| {
                (0..r)
                    .map(|b| (0..rows).map(|i| at(&w, i, a) * at(&w, i, b)).sum())
                    .collect()
            })
            .collect();
        for j in 0..cols {
            let d: Vec<f64> = (0..rows).map(|i| at(&w, i, j) - at(&res, i, j)).collect();
            let rhs: Vec<f64> = (0..r)
                .map(|a| (0..rows).map(|i| at(&w, i, a) * d[i]).sum())
                .collect();
            let x = solve3(&g, &rhs);
            for (i, di) in d.iter().enumerate() {
                let fit: f64 = (0..r).map(|a| x[a] * at(&w, i, a)).sum();
                assert!((fit - di).abs() < 1e-5, "[{i},{j}]: {fit} vs {di}");
            }
        }
    }

    /// Cramer's rule for a 3×3 system.
    fn solve3(g: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
        let det = |m: [[f64; 3]; 3]| {
            m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
        };
        let a = [
            [g[0][0], g[0][1], g[0][2]],
            [g[1][0], g[1][1], g[1][2]],
            [g[2][0], g[2][1], g[2][2]],
        ];
        let d = det(a);
        (0..3)
            .map(|c| {
                let mut m = a;
                for r in 0..3 {
                    m[r][c] = b[r];
                }
                det(m) / d
            })
            .collect()
    }
}
