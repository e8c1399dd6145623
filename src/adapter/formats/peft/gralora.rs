//! Reading PEFT GraLoRA folders (`peft_type` GRALORA; Jung et al., "GraLoRA: Granular Low-Rank
//! Adaptation for Parameter-Efficient Fine-Tuning", 2025; PEFT 0.21.2 `tuners/gralora/`) into the
//! one adapter model as full-difference modules. Never writes.
//!
//! Each module stores `gralora_A` [k, in/k, r] and `gralora_B` [k, r, out/k] (k = `gralora_k`,
//! r divisible by k, s = r/k), and with `hybrid_r` > 0 a plain LoRA `gralora_A_general.weight`
//! [h, in] and `gralora_B_general.weight` [out, h]. PEFT merges `W' = W0 + ΔW` (`layer.py`
//! `get_delta_weight`: the scatter, permute and einsum there) with, for output block j and input
//! block n, `ΔW[j·out/k + o, n·in/k + i] = Σ_{t<s} A[n, i, j·s + t]·B[j, n·s + t, o]`, plus
//! `B_general·A_general`, all times `alpha / (r + h)` (`update_layer`; `alpha` defaults to 64).
//! lorakit builds ΔW in f64 and rounds once. On GPT-2's Conv1D (`fan_in_fan_out`) the same ΔW is
//! added transposed to the stored `[in, out]` weight.

use super::assemble::{assemble, paired_by_suffixes};
use super::config::{stored_f32, PeftConfig};
use crate::adapter::model::Adapter;
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use serde_json::Value;
use std::path::Path;

/// Reads a PEFT GraLoRA adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let alpha = match cfg.raw.get("alpha") {
        None | Some(Value::Null) => 64.0,
        Some(v) => v
            .as_f64()
            .filter(|a| a.is_finite())
            .ok_or_else(|| bad("`alpha` in adapter_config.json must be a number".into()))?,
    };
    let (parts, full) = paired_by_suffixes(
        &file,
        [
            ".gralora_A",
            ".gralora_B",
            ".gralora_A_general.weight",
            ".gralora_B_general.weight",
        ],
        "gralora_",
        &[],
        "GraLoRA tensor (gralora_A, gralora_B, gralora_A_general.weight, gralora_B_general.weight)",
    )?;
    let shape = |k: &str| -> InputResult<Vec<usize>> { Ok(file.view(k)?.shape.to_vec()) };
    let mut modules = Vec::with_capacity(parts.len());
    for (name, [a, b, ag, bg]) in parts {
        let (Some(akey), Some(bkey)) = (a, b) else {
            return Err(bad(format!(
                "module `{name}`: GraLoRA needs gralora_A and gralora_B"
            )));
        };
        let (kb, ik, r, ok) = match (&shape(&akey)?[..], &shape(&bkey)?[..]) {
            ([k, ik, r], [k2, r2, ok])
                if k == k2 && r == r2 && *k > 0 && *ik > 0 && *ok > 0 && r % k == 0 =>
            {
                (*k, *ik, *r, *ok)
            }
            (sa, sb) => {
                return Err(bad(format!(
                    "module `{name}`: gralora_A {sa:?} and gralora_B {sb:?} are not [k, in/k, r] and [k, r, out/k] with r divisible by k"
                )))
            }
        };
        let (d, k, s) = (kb * ok, kb * ik, r / kb);
        let hybrid = match (ag, bg) {
            (None, None) => None,
            (Some(agk), Some(bgk)) => match (&shape(&agk)?[..], &shape(&bgk)?[..]) {
                ([h, kk], [dd, h2]) if h == h2 && *h > 0 && *kk == k && *dd == d => {
                    Some((*h, stored_f32(&file, &agk)?, stored_f32(&file, &bgk)?))
                }
                (sa, sb) => {
                    return Err(bad(format!(
                        "module `{name}`: gralora_A_general {sa:?} and gralora_B_general {sb:?} are not [h, {k}] and [{d}, h]"
                    )))
                }
            },
            _ => {
                return Err(bad(format!(
                    "module `{name}`: has only one of gralora_A_general / gralora_B_general"
                )))
            }
        };
        let h = hybrid.as_ref().map_or(0, |x| x.0);
        // PEFT builds the blocks from the config's r, gralora_k and hybrid_r (defaults 32, 2,
        // 0) and refuses a state dict of other shapes (hostile round 12).
        let configured =
            |key: &str, default: u64| cfg.raw.get(key).map_or(Some(default), Value::as_u64);
        for (key, default, stored) in [("r", 32, r), ("gralora_k", 2, kb), ("hybrid_r", 0, h)] {
            if configured(key, default) != Some(stored as u64) {
                return Err(bad(format!(
                    "module `{name}`: the stored tensors have {key} {stored}, but adapter_config.json gives {}: PEFT builds GraLoRA from the config and refuses the file",
                    cfg.raw.get(key).map_or(format!("none (default {default})"), |v| v.to_string())
                )));
            }
        }
        let scaling = alpha / (r + h) as f64;
        let av = stored_f32(&file, &akey)?;
        let bv = stored_f32(&file, &bkey)?;
        let mut diff = vec![0f32; d * k];
        for o in 0..d {
            let (j, oo) = (o / ok, o % ok);
            for c in 0..k {
                let (n, i) = (c / ik, c % ik);
                let mut acc: f64 = (0..s)
                    .map(|t| {
                        av[(n * ik + i) * r + j * s + t] as f64
                            * bv[(j * r + n * s + t) * ok + oo] as f64
                    })
                    .sum();
                if let Some((h, ga, gb)) = &hybrid {
                    acc += (0..*h)
                        .map(|t| gb[o * h + t] as f64 * ga[t * k + c] as f64)
                        .sum::<f64>();
                }
                diff[o * k + c] = (scaling * acc) as f32;
            }
        }
        let mut module = super::c3a::full_diff(name, (d, k), diff);
        // Conv1D (GPT-2): PEFT's `in_features, out_features = weight.shape` and
        // `transpose(delta_weight, fan_in_fan_out)`: the same [out, in] ΔW, stored transposed.
        module.base_transposed = cfg.fan_in_fan_out;
        modules.push(module);
    }
    assemble(path, file, &cfg, modules, full)
}
