//! Reading PEFT FRoD folders (`peft_type` FROD; PEFT 0.21.2 `tuners/frod/`) into the one adapter
//! model. Never writes.
//!
//! Modules of one role (`_category_from_key`: the last two components of the module path,
//! `self_attn_q_proj`; the last alone after a number) share `base_model.frod_V.{category}` [k, k]
//! (computed from the base weights, `_projection_from_weights`) and the positions of a sparse
//! k×k `S`, `base_model.frod_s_indices.{category}` [2, n] (int64) of size
//! `base_model.frod_s_size.{category}` [2]; each module stores `frod_lambda_l` [k] and
//! `frod_lambda_s_values` [n]. `U` is not saved: PEFT rebuilds it from the base on reload, and
//! merges `ΔW = U·(S + diag λ)·Vᵀ − W0` ([`Factors::Frod`]). The shared tensors are saved with
//! `save_projection` (the default); without them the folder is refused (`config.rs`).

use super::assemble::{all_present, assemble, paired_by_suffixes};
use super::config::{stored_f32, stored_ints, PeftConfig};
use crate::adapter::algo::{Factors, FrodParts};
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, DoraRule, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;
use std::sync::Arc;

const SHARED: [&str; 3] = [
    "base_model.frod_V.",
    "base_model.frod_s_indices.",
    "base_model.frod_s_size.",
];

/// PEFT's `_category_from_key` (without its BERT `attention.output.dense` special case, which
/// [`read`] refuses when a module would need it).
fn category(module: &str) -> String {
    let parts: Vec<&str> = module.split('.').collect();
    match parts[..] {
        [one] => one.to_owned(),
        [.., a, b] if a.bytes().all(|c| c.is_ascii_digit()) && !a.is_empty() => b.to_owned(),
        [.., a, b] => format!("{a}_{b}"),
        [] => String::new(),
    }
}

/// Reads a PEFT FRoD adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let shared: Vec<&str> = file
        .tensors()
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| SHARED.iter().any(|p| n.starts_with(p)))
        .collect();
    let (parts, full) = paired_by_suffixes(
        &file,
        [".frod_lambda_l", ".frod_lambda_s_values"],
        "frod_",
        &shared,
        "FRoD tensor (frod_lambda_l, frod_lambda_s_values, base_model.frod_V/s_indices/s_size)",
    )?;
    let shape = |k: &str| file.view(k).map(|x| x.shape.to_vec());
    let mut modules = Vec::with_capacity(parts.len());
    for (name, keys) in parts {
        let [lkey, skey] = all_present(
            &file,
            &name,
            keys,
            "FRoD needs frod_lambda_l and frod_lambda_s_values",
        )?;
        let cat = category(&name);
        if cat == "output_dense" && name.split('.').rev().nth(2) == Some("attention") {
            return Err(bad(format!(
                "module `{name}`: FRoD files its attention output under `attention_output`, which lorakit does not read yet"
            )));
        }
        let [vkey, ikey, zkey] = SHARED.map(|p| format!("{p}{cat}"));
        for k in [&vkey, &ikey, &zkey] {
            if !shared.contains(&k.as_str()) {
                return Err(bad(format!(
                    "module `{name}`: the shared FRoD tensor `{k}` of its category is not in the file"
                )));
            }
        }
        let k = match shape(&vkey)?[..] {
            [a, b] if a == b && a > 0 => a,
            ref s => return Err(bad(format!("tensor `{vkey}`: shape {s:?} is not [k, k]"))),
        };
        let size = stored_ints(&file, &zkey)?;
        let idx = stored_ints(&file, &ikey)?;
        let n = idx.len() / 2;
        let in_range = |x: &i64| usize::try_from(*x).is_ok_and(|x| x < k && x < 1 << 24);
        if size != [k as i64, k as i64] || shape(&ikey)? != [2, n] || !idx.iter().all(in_range) {
            return Err(bad(format!(
                "tensors `{ikey}` {:?} / `{zkey}` {size:?}: not [2, n] positions inside [{k}, {k}]",
                shape(&ikey)?
            )));
        }
        // PEFT builds the positions buffer [2, nnz] from `sparse_rate` (`model.py`
        // `_init_frod_projections`: nnz = min(int(k·k·rate), k·k − k), at least 1 for a positive
        // rate) and refuses stored positions of another count (hostile round 14).
        let rate = match cfg.raw.get("sparse_rate") {
            None | Some(serde_json::Value::Null) => Some(0.01), // FrodConfig's default
            Some(x) => x.as_f64().filter(|r| (0.0..=1.0).contains(r)),
        };
        let Some(rate) = rate else {
            return Err(bad(format!(
                "module `{name}`: `sparse_rate` {} in adapter_config.json is not a number between 0 and 1 (PEFT's FrodConfig refuses it)",
                cfg.raw["sparse_rate"]
            )));
        };
        let off_diagonal = k * k - k;
        let mut nnz = ((k * k) as f64 * rate).min(off_diagonal as f64) as usize;
        if rate > 0.0 && off_diagonal > 0 {
            nnz = nnz.max(1);
        }
        if nnz != n {
            return Err(bad(format!(
                "tensor `{ikey}` holds {n} positions, but `sparse_rate` {rate} in adapter_config.json makes PEFT build {nnz} for k = {k} and refuse the file"
            )));
        }
        let lambda = stored_f32(&file, &lkey)?;
        let values = stored_f32(&file, &skey)?;
        if lambda.len() != k || shape(&lkey)?.len() != 1 || shape(&skey)? != [n] {
            return Err(bad(format!(
                "module `{name}`: `{lkey}` {:?} and `{skey}` {:?} are not [{k}] and [{n}]",
                shape(&lkey)?,
                shape(&skey)?
            )));
        }
        stored_f32(&file, &vkey)?;
        modules.push(LoraModule {
            name,
            kind: ModuleKind::Linear,
            rank: k,
            alpha: 1.0,
            scale: 1.0,
            out_features: 0,
            in_features: k,
            bias: None,
            factors: Factors::Frod(FrodParts {
                v: Data::Stored {
                    key: vkey,
                    transpose: false,
                },
                lambda: Data::Owned(Arc::new(lambda)),
                positions: Data::Owned(Arc::new(idx.iter().map(|&x| x as f32).collect())),
                values: Data::Owned(Arc::new(values)),
            }),
            base_transposed: cfg.fan_in_fan_out,
            dora_magnitude: None,
            dora_rule: DoraRule::Peft,
        });
    }
    assemble(path, file, &cfg, modules, full)
}
