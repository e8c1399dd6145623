//! FRoD on a base other than its training base: PEFT recomputes the projection from the base
//! it loads onto and builds `frod_U` from that, which lorakit cannot reproduce, so a merge whose
//! saved `frod_V` is not the projection of the base's own weights is refused before anything is
//! written ([`crate::adapter::algo::projection_mismatch`], `adapter/algo/frod.rs`).
//!
//! Must not merge or write.

use crate::adapter::algo::{projection_mismatch, Factors, FrodParts};
use crate::adapter::mapping::Resolution;
use crate::adapter::{Adapter, Data};
use crate::error::InputError;
use crate::io::quant::QuantMap;
use crate::io::Checkpoint;
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// Largest [`projection_mismatch`] taken as the training base: 100× the f32 rounding of PEFT's
/// own projection (about 1e-6), below a bf16 copy's (about 1e-3).
const TOLERANCE: f64 = 1e-4;

/// A FRoD category's saved `frod_V` and the base weights of its modules (name, whether the base
/// stores it transposed).
type Category<'a> = (&'a Data, Vec<(String, bool)>);

/// Refuses `a` if some FRoD category's saved `frod_V` is not the projection of the base
/// weights its modules resolved to (`res`), read as the merge reads them (dequantized).
pub(super) fn check(
    a: &Adapter,
    res: &Resolution,
    base: &Checkpoint,
    quant: &QuantMap,
) -> Result<()> {
    // The category's V (its stored key) → (its Data, the base weights of its modules).
    let mut cats: BTreeMap<String, Category> = BTreeMap::new();
    for p in &res.modules {
        let m = &a.modules[p.module];
        if let Factors::Frod(FrodParts {
            v: v @ Data::Stored { key, .. },
            ..
        }) = &m.factors
        {
            cats.entry(key.clone())
                .or_insert_with(|| (v, Vec::new()))
                .1
                .push((p.weight.clone(), m.base_transposed));
        }
    }
    for (key, (v, weights)) in cats {
        let vv = a.values(v)?;
        let k = (vv.len() as f64).sqrt() as usize;
        let mut read = Vec::with_capacity(weights.len());
        for (w, transposed) in &weights {
            let vals = match quant.get(w) {
                Some(q) => quant.dequantize(base, q)?,
                None => base.read_f32(w)?,
            };
            let rows = vals.len() / k.max(1);
            // PEFT reads a Conv1D's weight transposed (`module.weight.T`), as `[out, in]`.
            let vals = if *transposed {
                crate::adapter::transpose(&vals, k, rows)
            } else {
                vals
            };
            read.push((vals, rows));
        }
        let refs: Vec<(&[f32], usize)> = read.iter().map(|(v, r)| (v.as_slice(), *r)).collect();
        let off = projection_mismatch(&vv, k, &refs);
        // NaN (a non-finite base weight) is refused too.
        if off.is_nan() || off > TOLERANCE {
            bail!(InputError::invalid(
                &a.path,
                format!(
                    "tensor `{key}`: this FRoD projection is not the one of the base's {} weights ({}; relative distance {off:.2e}): the adapter was trained on another base, and PEFT rebuilds frod_U from a projection it recomputes from the base it loads onto, which lorakit cannot reproduce; merge into the training base",
                    weights.len(),
                    weights.first().map_or(String::new(), |(w, _)| format!("`{w}`, …"))
                )
            ));
        }
    }
    Ok(())
}
