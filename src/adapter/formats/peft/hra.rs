//! Reading PEFT HRA folders (`peft_type` HRA; Yuan et al., "Bridging The Gap between Low-rank
//! and Orthogonal Adaptation via Householder Reflection Adaptation", NeurIPS 2024; PEFT 0.21.2
//! `tuners/hra/`) into the one adapter model. Never writes.
//!
//! Each module stores `hra_u` [in, r], and PEFT merges `W' = W0·H` (`layer.py` `Linear.merge`:
//! `torch.mm(W0, get_delta_weight())`) with `H` the product of the r Householder reflections of
//! the normalised columns, or `I − 2·U·Uᵀ` of their Gram–Schmidt basis with `apply_GS`
//! ([`Factors::Hra`]). On a Conv2d (`HRAConv2d.merge`) `hra_u` is [in·kh·kw, r] and `H` acts on
//! the weight viewed as [out, in·kh·kw]; the file does not say which, the base does.
//! `fan_in_fan_out` is refused (HRA wraps no Conv1D).

use super::assemble::assemble;
use super::config::PeftConfig;
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, LoraModule};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;

/// Reads a PEFT HRA adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    if cfg.fan_in_fan_out {
        return Err(bad(
            "`fan_in_fan_out` is true: PEFT's HRA wraps nn.Linear and Conv2d only".into(),
        ));
    }
    let gram_schmidt = match cfg.raw.get("apply_GS") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                "`apply_GS` in adapter_config.json must be true or false".into(),
            ))
        }
    };
    let (named, full) = super::assemble::split_by_suffix(&file, ".hra_u");
    let mut modules = Vec::with_capacity(named.len());
    for (name, t) in named {
        let key = t.name.as_str();
        let (k, r) = match t.shape[..] {
            [k, r] if k > 0 && r > 0 => (k, r),
            ref s => return Err(bad(format!("tensor `{key}`: shape {s:?} is not [in, r]"))),
        };
        // PEFT builds hra_u at the config's `r` (HRA has no rank_pattern) and refuses another
        // (hostile round 11).
        if let Some(cr) = cfg.r_other_than(r) {
            return Err(bad(format!(
                "tensor `{key}` has rank {r}, but `r` in adapter_config.json is {cr}: PEFT builds hra_u at r and refuses the file"
            )));
        }
        // A zero column has no reflection: PEFT's division by its norm gives NaN.
        let u = super::config::stored_f32(&file, key)?;
        if let Some(i) = (0..r).find(|&i| (0..k).all(|j| u[j * r + i] == 0.0)) {
            return Err(bad(format!(
                "tensor `{key}`: column {i} is zero, so its Householder reflection is undefined (PEFT's merge gives NaN)"
            )));
        }
        modules.push(LoraModule::peft_linear(
            name.to_owned(),
            (0, k, r),
            1.0,
            Factors::Hra {
                u: Data::Stored {
                    key: key.to_owned(),
                    transpose: false,
                },
                gram_schmidt,
            },
            false,
        ));
    }
    assemble(path, file, &cfg, modules, full)
}
