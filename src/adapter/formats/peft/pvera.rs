//! Reading PEFT PVeRA folders (`peft_type` PVERA; "PVeRA: Probabilistic Vector-Based Random
//! Matrix Adaptation"; PEFT 0.21.2 `tuners/pvera/`) into the one adapter model. Never writes.
//!
//! VeRA with a probabilistic down-projection: the shared `base_model.pvera_A` [2r, K] and
//! `base_model.pvera_B` [D, r] (saved with `save_projection`, the default; `PveraModel.
//! _get_adapter_state_dict`), per module `pvera_lambda_d` [2r] and `pvera_lambda_b` [out]. The
//! forward samples from `(μ, log σ²) = (λ_d ⊙ A·x).chunk(2)`; the merge takes the mean alone:
//! `ΔW = (λ_b ⊙ pvera_B[:out])·(λ_d[:r] ⊙ pvera_A[:r, :in])` (`layer.py` `get_delta_weight`),
//! no scale — VeRA's formula on the first halves, so it is a [`Factors::Vera`] (the λ products
//! in f32, as PEFT's). Without `save_projection` the projections are regenerated from
//! `projection_prng_key` by torch's generator and the folder is refused (`config.rs`).

use super::assemble::{assemble, paired_by_suffixes};
use super::config::{stored_f32, PeftConfig};
use super::vera::scale_rows;
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, LoraModule};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;
use std::sync::Arc;

const A_KEY: &str = "base_model.pvera_A";
const B_KEY: &str = "base_model.pvera_B";

/// Reads a PEFT PVeRA adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let shape = |k: &str| {
        file.tensors()
            .iter()
            .find(|t| t.name == k)
            .map(|t| t.shape.clone())
    };
    let (Some(sa), Some(sb)) = (shape(A_KEY), shape(B_KEY)) else {
        return Err(bad(format!(
            "PVeRA's shared projections `{A_KEY}`/`{B_KEY}` are not in the file: PEFT regenerates them with torch's random generator seeded by `projection_prng_key`, which lorakit cannot reproduce; save the adapter with save_projection=True"
        )));
    };
    let (r, wide, tall) = match (&sa[..], &sb[..]) {
        ([r2, k], [d, r]) if *r2 == 2 * r && *r > 0 && *k > 0 && *d > 0 => (*r, *k, *d),
        (a, b) => {
            return Err(bad(format!(
                "tensors `{A_KEY}` {a:?} and `{B_KEY}` {b:?} are not [2·r, in] and [out, r]"
            )))
        }
    };
    if let Some(cr) = cfg.r_other_than(r) {
        return Err(bad(format!(
            "tensor `{B_KEY}` has rank {r}, but `r` in adapter_config.json is {cr}: PEFT builds PVeRA at r and refuses the file"
        )));
    }
    let pa = stored_f32(&file, A_KEY)?;
    let pb = stored_f32(&file, B_KEY)?;
    let (lambdas, full) = paired_by_suffixes(
        &file,
        [".pvera_lambda_d", ".pvera_lambda_b"],
        "pvera_",
        &[A_KEY, B_KEY],
        "PVeRA tensor (pvera_lambda_d, pvera_lambda_b, base_model.pvera_A/B)",
    )?;
    let mut modules = Vec::with_capacity(lambdas.len());
    for (name, [d_key, b_key]) in lambdas {
        let (Some(d_key), Some(b_key)) = (d_key, b_key) else {
            return Err(bad(format!(
                "module `{name}`: PVeRA needs pvera_lambda_d and pvera_lambda_b"
            )));
        };
        let ld = stored_f32(&file, &d_key)?;
        let lb = stored_f32(&file, &b_key)?;
        let out = lb.len();
        let one_d = |k: &str| shape(k).is_some_and(|s| s.len() == 1);
        if ld.len() != 2 * r || out == 0 || out > tall || !one_d(&d_key) || !one_d(&b_key) {
            return Err(bad(format!(
                "tensor `{d_key}` ({} values) / `{b_key}` ({out} values): PVeRA needs 2·r = {} and 1 to {tall} (pvera_B's rows)",
                ld.len(),
                2 * r
            )));
        }
        // `lambda_d[:r] * pvera_A[:r, :in]` and `lambda_b * pvera_B[:out]`, f32 products.
        let a = scale_rows(&pa[..r * wide], wide, &ld[..r]);
        let b = scale_rows(&pb[..out * r], r, &lb);
        modules.push(LoraModule::peft_linear(
            name,
            (out, wide, r),
            1.0,
            Factors::Vera {
                a: Data::Owned(Arc::new(a)),
                b: Data::Owned(Arc::new(b)),
            },
            cfg.fan_in_fan_out,
        ));
    }
    assemble(path, file, &cfg, modules, full)
}
