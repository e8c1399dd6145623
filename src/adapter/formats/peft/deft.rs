//! Reading PEFT DEFT folders (`peft_type` DEFT, Decompositional Efficient Fine-Tuning; PEFT
//! 0.21.2 `tuners/deft/`) into the one adapter model. Never writes.
//!
//! Each module stores `deft_P` [out, r] and, unless `para`, `deft_R` [r, in] (r = min(`r`,
//! out), `layer.py` `update_layer`); PEFT merges `W' = W0 + Q·(s·R − rightᵀ·W0)`
//! (`get_delta_weight`), or `W0 − Q·rightᵀ·W0` with `para`, where `decomposition_method`
//! "relu" (the default) gives `Q = P`, `right = relu(P)` and "qr" `Q = right` = the reduced QR
//! factor of P, and `s = alpha / r` when `alpha` is set (and not 0), else 1. ΔW depends on
//! W0: [`BaseRule::Deft`]. On GPT-2's Conv1D (`fan_in_fan_out`) W0 is read as `[out, in]` and
//! ΔW stored back transposed, as PEFT's `transpose` does.

use super::assemble::{assemble, paired_by_suffixes};
use super::beft::{cfg_flag, cfg_number, on_base_module, stored};
use super::config::{stored_f32, PeftConfig};
use crate::adapter::algo::BaseRule;
use crate::adapter::model::Adapter;
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;

/// Reads a PEFT DEFT adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let qr = match cfg.raw.get("decomposition_method") {
        None | Some(serde_json::Value::Null) => false,
        Some(v) => match v.as_str() {
            Some("relu") => false,
            Some("qr") => true,
            _ => {
                return Err(bad(format!(
                "`decomposition_method` {v} in adapter_config.json is neither \"relu\" nor \"qr\""
            )))
            }
        },
    };
    let para = cfg_flag(&fpath, &cfg, "para", false)?;
    let alpha = cfg_number(&fpath, &cfg, "alpha", None)?.filter(|&a| a != 0.0);
    let (parts, full) = paired_by_suffixes(
        &file,
        [".deft_P", ".deft_R"],
        "deft_",
        &[],
        "DEFT tensor (deft_P, deft_R)",
    )?;
    let shape = |k: &str| -> InputResult<Vec<usize>> { Ok(file.view(k)?.shape.to_vec()) };
    let mut modules = Vec::with_capacity(parts.len());
    for (name, [p, rr]) in parts {
        let Some(pkey) = p else {
            return Err(bad(format!("module `{name}`: DEFT needs deft_P")));
        };
        let (d, r) = match shape(&pkey)?[..] {
            [d, r] if d > 0 && r > 0 => (d, r),
            ref s => return Err(bad(format!("tensor `{pkey}`: shape {s:?} is not [out, r]"))),
        };
        // PEFT builds P at min(r, out) columns and refuses a file of another rank.
        if r != cfg.r.min(d) {
            return Err(bad(format!(
                "tensor `{pkey}` has rank {r}, but `r` {} in adapter_config.json gives {} for its {d} rows: PEFT builds deft_P from the config and refuses the file",
                cfg.r,
                cfg.r.min(d)
            )));
        }
        stored_f32(&file, &pkey)?;
        let mut tensors = vec![stored(&pkey)];
        let k = match (rr, para) {
            (None, true) => 0,
            (Some(rkey), false) => match shape(&rkey)?[..] {
                [r2, k] if r2 == r && k > 0 => {
                    stored_f32(&file, &rkey)?;
                    tensors.push(stored(&rkey));
                    k
                }
                ref s => {
                    return Err(bad(format!(
                        "tensor `{rkey}`: shape {s:?} is not [{r}, in] (deft_P has rank {r})"
                    )))
                }
            },
            (None, false) => {
                return Err(bad(format!(
                    "module `{name}`: DEFT needs deft_R unless `para` is true"
                )))
            }
            (Some(rkey), true) => {
                return Err(bad(format!(
                    "tensor `{rkey}`: `para` is true in adapter_config.json, and PaRa has no deft_R"
                )))
            }
        };
        let scale = alpha.map_or(1.0, |a| a / r as f64);
        let rule = BaseRule::Deft { qr, para, scale };
        modules.push(on_base_module(
            name,
            (d, k, r),
            rule,
            tensors,
            cfg.fan_in_fan_out,
        ));
    }
    assemble(path, file, &cfg, modules, full)
}
