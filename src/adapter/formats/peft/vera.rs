//! Reading PEFT VeRA folders (`peft_type` VERA; Kopiczko et al., "VeRA: Vector-based Random
//! Matrix Adaptation", ICLR 2024; PEFT 0.21.2 `tuners/vera/`) into the one adapter model. Never
//! writes.
//!
//! One pair of frozen random projections serves every layer: `base_model.vera_A` [r, K] and
//! `base_model.vera_B` [D, r], K and D the widest input and output among the targeted layers
//! (`model.py` `_find_dim`), saved when `save_projection` is true (the default;
//! `VeraModel._get_adapter_state_dict`). Each module stores `vera_lambda_d` [r] and
//! `vera_lambda_b` [out], and PEFT merges `ΔW = (λ_b ⊙ vera_B[:out])·(λ_d ⊙ vera_A[:, :in])`
//! (`layer.py` `get_delta_weight`, the λ products in the factors' dtype, as here), no scale.
//! With `save_projection` false the projections are not in the file: PEFT regenerates them with
//! torch's generator seeded by `projection_prng_key` (`_init_vera_A_vera_B`,
//! `kaiming_uniform_`), which lorakit cannot reproduce, so it refuses the folder.
//!
//! A module's input width is known only from its base (`vera_A` is sliced to it), so it is a
//! [`Factors::Vera`], built with the base at hand.

use super::assemble::{assemble, paired_by_suffixes};
use super::config::{stored_f32, PeftConfig};
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, LoraModule};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;
use std::sync::Arc;

const A_KEY: &str = "base_model.vera_A";
const B_KEY: &str = "base_model.vera_B";

/// Reads a PEFT VeRA adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let save_projection = cfg
        .raw
        .get("save_projection")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true);
    let has = |k: &str| file.tensors().iter().any(|t| t.name == k);
    if !save_projection || !has(A_KEY) || !has(B_KEY) {
        return Err(bad(format!(
            "VeRA's shared projections `{A_KEY}`/`{B_KEY}` are not in the file (`save_projection` is {save_projection}): PEFT regenerates them with torch's random generator seeded by `projection_prng_key`, which lorakit cannot reproduce; save the adapter with save_projection=True"
        )));
    }
    let shape = |k: &str| {
        file.tensors()
            .iter()
            .find(|t| t.name == k)
            .map(|t| t.shape.clone())
            .unwrap_or_default()
    };
    let (r, wide, tall) = match (&shape(A_KEY)[..], &shape(B_KEY)[..]) {
        ([r, k], [d, rb]) if r == rb && *r > 0 && *k > 0 && *d > 0 => (*r, *k, *d),
        (a, b) => {
            return Err(bad(format!(
                "tensors `{A_KEY}` {a:?} and `{B_KEY}` {b:?} are not [r, in] and [out, r]"
            )))
        }
    };
    // PEFT builds vera_A/vera_B and the lambdas at the config's `r` (no rank_pattern for VeRA)
    // and refuses a state dict of another rank (hostile round 11).
    if let Some(cr) = cfg.r_other_than(r) {
        return Err(bad(format!(
            "tensor `{A_KEY}` has rank {r}, but `r` in adapter_config.json is {cr}: PEFT builds VeRA at r and refuses the file"
        )));
    }
    let vera_a = stored_f32(&file, A_KEY)?;
    let vera_b = stored_f32(&file, B_KEY)?;
    let (lambdas, full) = paired_by_suffixes(
        &file,
        [".vera_lambda_d", ".vera_lambda_b"],
        "vera_",
        &[A_KEY, B_KEY],
        "VeRA tensor (vera_lambda_d, vera_lambda_b, base_model.vera_A/B)",
    )?;
    let mut modules = Vec::with_capacity(lambdas.len());
    for (name, [d_key, b_key]) in lambdas {
        let (Some(d_key), Some(b_key)) = (d_key, b_key) else {
            return Err(bad(format!(
                "module `{name}`: VeRA needs vera_lambda_d and vera_lambda_b"
            )));
        };
        let ld = stored_f32(&file, &d_key)?;
        let lb = stored_f32(&file, &b_key)?;
        let out = lb.len();
        if ld.len() != r || out == 0 || out > tall || shape(&d_key).len() != 1 {
            return Err(bad(format!(
                "tensor `{d_key}` ({} values) / `{b_key}` ({out} values): VeRA needs r = {r} and 1 to {tall} (vera_B's rows)",
                ld.len()
            )));
        }
        // PEFT: `lambda_d.unsqueeze(-1) * vera_A[:, :in]` and `lambda_b.unsqueeze(-1) *
        // vera_B[:out]`, f32 products (the slice of A is taken when the base is known).
        let a = scale_rows(&vera_a, wide, &ld);
        let b = scale_rows(&vera_b[..out * r], r, &lb);
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

/// `s.unsqueeze(-1) * m` over the row-major `m` (`cols` wide), as many rows as `s` has: each row
/// scaled by its λ, the products in f32 as PEFT's (VeRA's and PVeRA's factors).
pub(super) fn scale_rows(m: &[f32], cols: usize, s: &[f32]) -> Vec<f32> {
    m.chunks_exact(cols)
        .zip(s)
        .flat_map(|(row, &s)| row.iter().map(move |&x| s * x))
        .collect()
}
