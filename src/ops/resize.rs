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
//! The rank is chosen by [`RankRule`] (`super::rank`) from the module's whole spectrum: a fixed
//! rank is capped at the module's own (as kohya does); a zero module keeps rank 1 (kohya too).

use crate::adapter::{scale_for, Adapter, Data, LoraModule};
use crate::error::InputResult;
use crate::linalg;
use rayon::prelude::*;
use std::sync::Arc;

pub use super::rank::RankRule;

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
    let new_rank = rule.choose(&svd.s, linalg::energy(&svd.s), r);
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
            m.factors = crate::adapter::Factors::Lora {
                a: Data::Owned(Arc::new(a)),
                b: Data::Owned(Arc::new(b)),
            };
        }
        reports.push(rep);
    }
    Ok((adapter, reports))
}

#[cfg(test)]
mod tests {
    use super::*;

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
