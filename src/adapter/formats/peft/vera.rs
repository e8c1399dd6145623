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

use super::assemble::{all_present, assemble, paired_by_suffixes};
use super::config::{saved_projections, stored_f32, PeftConfig};
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, LoraModule};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;
use std::sync::Arc;

/// VeRA or PVeRA: how they are named and how tall their down-projection is.
pub(super) struct Kind {
    /// As messages name it.
    pub name: &'static str,
    /// The stem of its tensor names: `base_model.{stem}_A`, `….{stem}_lambda_d`.
    pub stem: &'static str,
    /// Rows of the shared A and of each λ_d per rank: 1 for VeRA, 2 for PVeRA (the mean and the
    /// log-variance halves; the merge takes the first).
    pub halves: usize,
}

/// VeRA itself (PVeRA's is `pvera.rs`'s).
pub(super) const VERA: Kind = Kind {
    name: "VeRA",
    stem: "vera",
    halves: 1,
};

/// Reads a PEFT VeRA or PVeRA adapter (see the module header):
/// `ΔW = (λ_b ⊙ B[:out])·(λ_d[:r] ⊙ A[:r, :in])`.
pub(super) fn read(
    path: &Path,
    file: SafetensorsFile,
    cfg: PeftConfig,
    kind: &Kind,
) -> InputResult<Adapter> {
    let Kind {
        name: what,
        stem,
        halves,
    } = *kind;
    let (a_key, b_key) = (
        format!("base_model.{stem}_A"),
        format!("base_model.{stem}_B"),
    );
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let what_shared = format!("{what}'s shared projections");
    let (sa, sb) = saved_projections(&file, &cfg, &what_shared, [&a_key, &b_key])?;
    // `r` or `2·r` as messages name A's rows.
    let rows = if halves == 1 { "r" } else { "2·r" };
    let (r, wide, tall) = match (sa, sb) {
        ([ra, k], [d, r]) if *ra == halves * r && *r > 0 && *k > 0 && *d > 0 => (*r, *k, *d),
        (a, b) => {
            return Err(bad(format!(
                "tensors `{a_key}` {a:?} and `{b_key}` {b:?} are not [{rows}, in] and [out, r]"
            )))
        }
    };
    // PEFT builds A/B and the lambdas at the config's `r` (no rank_pattern for either) and
    // refuses a state dict of another rank (hostile round 11).
    if let Some(cr) = cfg.r_other_than(r) {
        return Err(bad(format!(
            "tensors `{a_key}` {sa:?} and `{b_key}` {sb:?} have rank {r}, but `r` in adapter_config.json is {cr}: PEFT builds {what} at r and refuses the file"
        )));
    }
    let shared_a = stored_f32(&file, &a_key)?;
    let shared_b = stored_f32(&file, &b_key)?;
    let suffixes = [format!(".{stem}_lambda_d"), format!(".{stem}_lambda_b")];
    let (lambdas, full) = paired_by_suffixes(
        &file,
        [suffixes[0].as_str(), suffixes[1].as_str()],
        &format!("{stem}_"),
        &[a_key.as_str(), b_key.as_str()],
        &format!("{what} tensor ({stem}_lambda_d, {stem}_lambda_b, base_model.{stem}_A/B)"),
    )?;
    let mut modules = Vec::with_capacity(lambdas.len());
    for (name, keys) in lambdas {
        let [d_key, b_key] = all_present(
            &file,
            &name,
            keys,
            &format!("{what} needs {stem}_lambda_d and {stem}_lambda_b"),
        )?;
        let ld = stored_f32(&file, &d_key)?;
        let lb = stored_f32(&file, &b_key)?;
        let out = lb.len();
        let one_d = |k: &str| file.info(k).is_some_and(|t| t.shape.len() == 1);
        if ld.len() != halves * r || out == 0 || out > tall || !one_d(&d_key) || !one_d(&b_key) {
            return Err(bad(format!(
                "tensor `{d_key}` ({} values) / `{b_key}` ({out} values): {what} needs {rows} = {} and 1 to {tall} ({stem}_B's rows)",
                ld.len(),
                halves * r
            )));
        }
        // PEFT: `lambda_d[:r].unsqueeze(-1) * A[:r, :in]` and `lambda_b.unsqueeze(-1) *
        // B[:out]`, f32 products (the slice of A's columns is taken when the base is known).
        let a = scale_rows(&shared_a[..r * wide], wide, &ld[..r]);
        let b = scale_rows(&shared_b[..out * r], r, &lb);
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
