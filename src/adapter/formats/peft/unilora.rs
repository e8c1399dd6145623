//! Reading PEFT UniLoRA folders (`peft_type` UNILORA; PEFT 0.21.2 `tuners/unilora/`) into the
//! one adapter model. Never writes.
//!
//! One trained vector `base_model.unilora_theta_d` [L] holds every LoRA parameter of the model:
//! each module's `A` [r, in] and `B` [out, r] gather from it by the index buffers
//! `unilora_indices_A`/`_B` (int64) times the normalising `unilora_scales_A`/`_B` (`layer.py`
//! `_get_lora_matrices`: `theta_d[indices] * scales`, f32 products), and PEFT merges
//! `ΔW = B·A` (`get_delta_weight`), no scale, transposed with `fan_in_fan_out` — a
//! [`Factors::Lora`] once gathered. The indices and scales are saved only with `save_indices`
//! (default false); without them PEFT regenerates the indices with numpy's generator and the
//! folder is refused (`config.rs`).

use super::assemble::{assemble, paired_by_suffixes};
use super::config::{stored_f32, stored_ints, PeftConfig};
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, LoraModule};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;
use std::sync::Arc;

const THETA: &str = "base_model.unilora_theta_d";

/// Reads a PEFT UniLoRA adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    if !file.tensors().iter().any(|t| t.name == THETA) {
        return Err(bad(format!(
            "UniLoRA's trained vector `{THETA}` is not in the file"
        )));
    }
    let theta = stored_f32(&file, THETA)?;
    // PEFT builds theta_d at the config's `theta_d_length` (a positive integer) and refuses a
    // stored vector of another length (hostile round 14).
    let want = match cfg.raw.get("theta_d_length") {
        None | Some(serde_json::Value::Null) => Some(256), // UniLoraConfig's default
        Some(x) => x.as_u64(),
    };
    if want != Some(theta.len() as u64) || file.view(THETA)?.shape.len() != 1 {
        return Err(bad(format!(
            "tensor `{THETA}` {:?} is not [theta_d_length] with theta_d_length {} from adapter_config.json: PEFT builds it at that length and refuses the file",
            file.view(THETA)?.shape,
            cfg.raw.get("theta_d_length").map_or("absent (256)".to_owned(), |x| x.to_string())
        )));
    }
    let (parts, full) = paired_by_suffixes(
        &file,
        [
            ".unilora_indices_A",
            ".unilora_indices_B",
            ".unilora_scales_A",
            ".unilora_scales_B",
        ],
        "unilora_",
        &[THETA],
        "UniLoRA tensor (unilora_indices_A/B, unilora_scales_A/B, base_model.unilora_theta_d)",
    )?;
    let shape = |k: &str| file.view(k).map(|x| x.shape.to_vec());
    let mut modules = Vec::with_capacity(parts.len());
    for (name, slots) in parts {
        let [Some(ia), Some(ib), Some(sa), Some(sb)] = slots else {
            return Err(bad(format!(
                "module `{name}`: UniLoRA needs unilora_indices_A/B and unilora_scales_A/B"
            )));
        };
        let (a_shape, b_shape) = (shape(&ia)?, shape(&ib)?);
        let (r, k, d) = match (&a_shape[..], &b_shape[..]) {
            ([r, k], [d, r2]) if r == r2 && *r > 0 && *k > 0 && *d > 0 => (*r, *k, *d),
            _ => {
                return Err(bad(format!(
                    "module `{name}`: tensors `{ia}` {a_shape:?} and `{ib}` {b_shape:?} are not [r, in] and [out, r]"
                )))
            }
        };
        // UniLoRA has no rank_pattern: PEFT builds every module's index buffers at `r`.
        if let Some(cr) = cfg.r_other_than(r) {
            return Err(bad(format!(
                "tensor `{ia}` has rank {r}, but `r` in adapter_config.json is {cr}: PEFT builds UniLoRA's indices at r and refuses the file"
            )));
        }
        // `theta_d[indices] * scales`, each product in f32.
        let gather = |ikey: &str, skey: &str, want: &[usize]| -> InputResult<Vec<f32>> {
            if shape(skey)? != want {
                return Err(bad(format!(
                    "tensor `{skey}`: shape {:?} is not {want:?} like `{ikey}`",
                    shape(skey)?
                )));
            }
            let idx = stored_ints(&file, ikey)?;
            let s = stored_f32(&file, skey)?;
            idx.iter()
                .zip(&s)
                .map(|(&i, &x)| {
                    usize::try_from(i)
                        .ok()
                        .and_then(|i| theta.get(i))
                        .map(|&t| t * x)
                        .ok_or_else(|| {
                            bad(format!(
                                "tensor `{ikey}`: index {i} is outside `{THETA}` ({} values)",
                                theta.len()
                            ))
                        })
                })
                .collect()
        };
        let a = gather(&ia, &sa, &a_shape)?;
        let b = gather(&ib, &sb, &b_shape)?;
        modules.push(LoraModule::peft_linear(
            name,
            (d, k, r),
            // No scale: alpha = r gives scale 1 under the LoRA rule alpha / r the writers use.
            r as f64,
            Factors::Lora {
                a: Data::Owned(Arc::new(a)),
                b: Data::Owned(Arc::new(b)),
            },
            cfg.fan_in_fan_out,
        ));
    }
    assemble(path, file, &cfg, modules, full)
}
