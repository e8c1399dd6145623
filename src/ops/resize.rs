//! Changing the rank of every module of an adapter, exactly in factor space.
//!
//! For a module `ΔW = s·B·A` (`B`: d×r, `A`: r×k) the SVD of `B·A` comes from the factors
//! ([`crate::linalg::factored_svd`]: thin QRs of `B` and `Aᵀ`, SVD of the r×r core — the d×k
//! matrix is never formed). Keeping the leading `r'` triplets gives `B' = U_r'·diag(σ_r')`,
//! `A' = V_r'ᵀ` (kohya `resize_lora.py`'s split: singular values in the up factor), and the
//! scale is kept: `alpha' = alpha·r'/r` (kohya: `new_alpha = scale·new_rank`), or
//! `alpha·√(r'/r)` with rsLoRA, so `s'·B'·A' = s·(B·A)_r'`, the best rank-`r'` approximation of
//! `ΔW` in Frobenius and spectral norm (Eckart–Young–Mirsky). A module whose rank does not change
//! is copied untouched (bit for bit). DoRA magnitudes, `lora_B` biases and full tensors are kept
//! as they are: only the low-rank part is resized.
//!
//! Rank rules: a fixed rank (`--rank`, capped at each module's rank as kohya does), the smallest
//! rank keeping a fraction of `‖ΔW‖_F²` ([`crate::linalg::rank_for_energy`]), or kohya's
//! `sv_ratio` rule ([`crate::linalg::rank_for_sv_ratio`]); the dynamic rules can be capped with a
//! maximum rank. A zero module keeps rank 1 (kohya does the same).

use crate::adapter::{scale_for, Adapter, Data, LoraModule};
use crate::error::InputResult;
use crate::linalg;
use rayon::prelude::*;
use std::sync::Arc;

/// How the new rank of each module is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RankRule {
    /// This rank, or the module's own when that is lower.
    Rank(usize),
    /// The smallest rank whose leading singular values carry at least this fraction of
    /// `‖ΔW‖_F²` (0 < energy ≤ 1), at most `max_rank`.
    Energy {
        energy: f64,
        max_rank: Option<usize>,
    },
    /// kohya `--dynamic_method sv_ratio`: keep `σᵢ > σ₁/ratio`, at most `max_rank`.
    SvRatio { ratio: f64, max_rank: Option<usize> },
}

impl RankRule {
    /// JSON form for reports and provenance.
    pub fn to_json(&self) -> serde_json::Value {
        match *self {
            RankRule::Rank(r) => serde_json::json!({"rule": "rank", "rank": r}),
            RankRule::Energy { energy, max_rank } => {
                serde_json::json!({"rule": "energy", "energy": energy, "max_rank": max_rank})
            }
            RankRule::SvRatio { ratio, max_rank } => {
                serde_json::json!({"rule": "sv_ratio", "sv_ratio": ratio, "max_rank": max_rank})
            }
        }
    }
}

/// What happened to one module.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleResize {
    pub name: String,
    pub rank_before: usize,
    pub rank_after: usize,
    pub alpha_before: f64,
    pub alpha_after: f64,
    /// The module's scale (unchanged by the resize).
    pub scale: f64,
    /// `Σ_{i<r'} σᵢ² / Σ σᵢ²` (1 for a zero module).
    pub energy_kept: f64,
    /// `‖ΔW‖_F` before.
    pub fro_norm: f64,
    /// `‖ΔW − ΔW'‖_F` (the Eckart–Young optimum `|s|·(Σ_{i≥r'} σᵢ²)^{1/2}`).
    pub fro_error: f64,
    /// False when the rank did not change and the module was copied untouched.
    pub changed: bool,
}

/// The rank `rule` picks for singular values `s` (non-increasing) of a module of rank `rank`:
/// at least 1, at most `min(rank, s.len())`; 1 when every value is 0.
pub fn choose_rank(s: &[f32], rank: usize, rule: &RankRule) -> usize {
    let cap = rank.min(s.len()).max(1);
    if s.first().is_none_or(|&x| x == 0.0) {
        return 1;
    }
    let k = match *rule {
        RankRule::Rank(r) => r,
        RankRule::Energy { energy, max_rank } => {
            linalg::rank_for_energy(s, energy).min(max_rank.unwrap_or(usize::MAX))
        }
        RankRule::SvRatio { ratio, max_rank } => {
            linalg::rank_for_sv_ratio(s, ratio).min(max_rank.unwrap_or(usize::MAX))
        }
    };
    k.clamp(1, cap)
}

/// Alpha that keeps `scale` at rank `new_rank`: `alpha·r'/r`, or `alpha·√(r'/r)` with rsLoRA.
pub fn resized_alpha(alpha: f64, rank: usize, new_rank: usize, rslora: bool) -> f64 {
    if new_rank == rank {
        alpha
    } else if rslora {
        alpha * (new_rank as f64 / rank as f64).sqrt()
    } else {
        alpha * new_rank as f64 / rank as f64
    }
}

/// New canonical factors `(B′, A′)` of a resized module.
pub type Factors = (Vec<f32>, Vec<f32>);

/// Resizes one module given its canonical factors `b` (d×r) and `a` (r×k). Returns the new
/// factors (`None` when the rank is unchanged) and the report.
pub fn resize_module(
    m: &LoraModule,
    b: &[f32],
    a: &[f32],
    rslora: bool,
    rule: &RankRule,
) -> (Option<Factors>, ModuleResize) {
    let (d, r, k) = (m.out_features, m.rank, m.in_features);
    let svd = linalg::factored_svd(
        super::output::view(b, d, r),
        super::output::view(a, r, k),
        1.0,
    );
    let new_rank = choose_rank(&svd.s, r, rule);
    let total = linalg::energy(&svd.s);
    let tail = linalg::tail_energy(&svd.s, new_rank);
    let energy_kept = if total > 0.0 { 1.0 - tail / total } else { 1.0 };
    let changed = new_rank != r;
    let alpha_after = resized_alpha(m.alpha, r, new_rank, rslora);
    let report = ModuleResize {
        name: m.name.clone(),
        rank_before: r,
        rank_after: new_rank,
        alpha_before: m.alpha,
        alpha_after,
        scale: m.scale,
        energy_kept,
        fro_norm: m.scale.abs() * total.sqrt(),
        fro_error: if changed {
            m.scale.abs() * tail.sqrt()
        } else {
            0.0
        },
        changed,
    };
    let factors = changed.then(|| super::output::svd_factors(&svd, new_rank));
    (factors, report)
}

/// Resizes every module of `adapter` (modules in parallel; the result does not depend on the
/// thread schedule). The returned adapter keeps the input's format, config, metadata, DoRA
/// magnitudes, biases and full tensors.
pub fn resize(mut adapter: Adapter, rule: &RankRule) -> InputResult<(Adapter, Vec<ModuleResize>)> {
    let rslora = adapter.use_rslora;
    let results: Vec<InputResult<(Option<Factors>, ModuleResize)>> = adapter
        .modules
        .par_iter()
        .map(|m| {
            let (b, a) = adapter.factors(m)?;
            Ok(resize_module(m, &b, &a, rslora, rule))
        })
        .collect();
    let mut reports = Vec::with_capacity(results.len());
    for (m, res) in adapter.modules.iter_mut().zip(results) {
        let (factors, rep) = res?;
        if let Some((b, a)) = factors {
            m.rank = rep.rank_after;
            m.alpha = rep.alpha_after;
            m.scale = scale_for(m.alpha, m.rank, rslora);
            m.b = Data::Owned(Arc::new(b));
            m.a = Data::Owned(Arc::new(a));
        }
        reports.push(rep);
    }
    Ok((adapter, reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_rules() {
        let s = [4.0f32, 2.0, 1.0, 0.5];
        assert_eq!(choose_rank(&s, 4, &RankRule::Rank(2)), 2);
        assert_eq!(choose_rank(&s, 4, &RankRule::Rank(9)), 4);
        assert_eq!(choose_rank(&s, 3, &RankRule::Rank(9)), 3);
        // 16 / 21.25 = 0.753: rank 1 keeps 75.3 %, rank 2 keeps 94.1 %.
        assert_eq!(
            choose_rank(
                &s,
                4,
                &RankRule::Energy {
                    energy: 0.75,
                    max_rank: None
                }
            ),
            1
        );
        assert_eq!(
            choose_rank(
                &s,
                4,
                &RankRule::Energy {
                    energy: 0.76,
                    max_rank: None
                }
            ),
            2
        );
        assert_eq!(
            choose_rank(
                &s,
                4,
                &RankRule::Energy {
                    energy: 1.0,
                    max_rank: Some(3)
                }
            ),
            3
        );
        // kohya sv_ratio: keep σ > 4/3 → 2 values.
        assert_eq!(
            choose_rank(
                &s,
                4,
                &RankRule::SvRatio {
                    ratio: 3.0,
                    max_rank: None
                }
            ),
            2
        );
        assert_eq!(
            choose_rank(
                &s,
                4,
                &RankRule::SvRatio {
                    ratio: 100.0,
                    max_rank: Some(3)
                }
            ),
            3
        );
        assert_eq!(choose_rank(&[0.0, 0.0], 2, &RankRule::Rank(2)), 1);
    }

    #[test]
    fn alpha_keeps_the_scale() {
        for (alpha, r, k, rs) in [
            (16.0, 8, 4, false),
            (8.0, 6, 4, false),
            (8.0, 4, 2, true),
            (3.0, 5, 5, true),
        ] {
            let a2 = resized_alpha(alpha, r, k, rs);
            let (s1, s2) = (scale_for(alpha, r, rs), scale_for(a2, k, rs));
            assert!(
                (s1 - s2).abs() <= 1e-15 * s1.abs(),
                "{alpha} {r} {k} {rs}: {s1} vs {s2}"
            );
        }
        assert_eq!(resized_alpha(16.0, 8, 4, false), 8.0);
    }
}
