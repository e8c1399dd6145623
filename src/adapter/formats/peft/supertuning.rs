//! Reading PEFT Super-Tuning folders (`peft_type` SUPERTUNING, arXiv:2607.09287; PEFT 0.21.2
//! `tuners/supertuning/`) into the one adapter model. Never writes.
//!
//! Each module stores `supertuning_values` [n] (f32) and, with `save_precomputed_indices` (the
//! default), `supertuning_indices` [n] (int32 flat positions in W0, `layer.py` `update_layer`);
//! with `r` set (Supra) also `supertuning_lora_A.weight` [r, in] and `supertuning_lora_B.weight`
//! [out, r]. PEFT merges `W0.flatten().scatter_add_(indices, values)` plus
//! `lora_alpha / r · B·A` (`Linear.merge`), n being `int(out·in·(1 − sparsity))`
//! ([`BaseRule::Supertuning`]). Without saved indices (`save_precomputed_indices` false) PEFT
//! recomputes them on load by `torch.topk` over |W0| (`select_top`), and so does lorakit at
//! merge time ([`SuperPositions::Topk`]), refusing a base whose ties would decide them.

use super::assemble::{assemble, paired_by_suffixes};
use super::beft::{cfg_number, on_base_module, stored};
use super::config::{stored_f32, stored_ints, PeftConfig};
use crate::adapter::algo::{BaseRule, SuperPositions};
use crate::adapter::data::Data;
use crate::adapter::model::Adapter;
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;
use std::sync::Arc;

/// Positions are carried as two f32 each (`p / 2²⁴`, `p mod 2²⁴`): exact up to 2⁴⁸.
const SPLIT: i64 = 1 << 24;

/// Reads a PEFT Super-Tuning adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let sparsity = cfg_number(&fpath, &cfg, "sparsity", Some(0.99))?.unwrap_or(0.99);
    if !(0.0..1.0).contains(&sparsity) {
        return Err(bad(format!(
            "`sparsity` {sparsity} in adapter_config.json is not in [0, 1)"
        )));
    }
    // `select_top` (default true): which end of |W0| PEFT's topk keeps when it recomputes the
    // positions. `null` is no default: PEFT passes it to `torch.topk(largest=None)` in
    // `update_layer`, which raises.
    let select_top = match cfg.raw.get("select_top") {
        None => true,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(v) => {
            return Err(bad(format!(
                "`select_top` {v} in adapter_config.json is not true or false"
            )))
        }
    };
    // `r` null: no LoRA (Super); set: Supra, `lora_alpha` defaulting to 2r.
    let lora = match cfg.raw.get("r") {
        None | Some(serde_json::Value::Null) => None,
        Some(_) => {
            let alpha = cfg_number(&fpath, &cfg, "lora_alpha", Some(2.0 * cfg.r as f64))?
                .unwrap_or(2.0 * cfg.r as f64);
            Some((cfg.r, alpha / cfg.r as f64))
        }
    };
    let (parts, full) = paired_by_suffixes(
        &file,
        [
            ".supertuning_values",
            ".supertuning_indices",
            ".supertuning_lora_A.weight",
            ".supertuning_lora_B.weight",
        ],
        "supertuning_",
        &[],
        "Super-Tuning tensor (supertuning_values, supertuning_indices, supertuning_lora_A.weight, supertuning_lora_B.weight)",
    )?;
    let shape = |k: &str| -> InputResult<Vec<usize>> { Ok(file.view(k)?.shape.to_vec()) };
    let mut modules = Vec::with_capacity(parts.len());
    for (name, [v, i, a, b]) in parts {
        let Some(vkey) = v else {
            return Err(bad(format!(
                "module `{name}`: Super-Tuning needs supertuning_values"
            )));
        };
        let n = match shape(&vkey)?[..] {
            [n] if n > 0 => n,
            ref s => return Err(bad(format!("tensor `{vkey}`: shape {s:?} is not [n]"))),
        };
        stored_f32(&file, &vkey)?;
        let (positions, split) = match i {
            // `save_precomputed_indices` false: PEFT recomputes them on load from W0.
            None => (
                SuperPositions::Topk {
                    largest: select_top,
                },
                Vec::new(),
            ),
            Some(ikey) => {
                if shape(&ikey)? != [n] {
                    return Err(bad(format!(
                        "tensor `{ikey}`: shape {:?} is not [{n}] (supertuning_values holds {n} values)",
                        shape(&ikey)?
                    )));
                }
                let idx = stored_ints(&file, &ikey)?;
                if let Some(j) = idx.iter().position(|&x| !(0..SPLIT * SPLIT).contains(&x)) {
                    return Err(bad(format!(
                        "tensor `{ikey}`: position {} at index {j} is negative or past 2^48",
                        idx[j]
                    )));
                }
                let max_index = idx.iter().copied().max().unwrap_or(0) as u64;
                let split: Vec<f32> = idx
                    .iter()
                    .map(|&p| (p / SPLIT) as f32)
                    .chain(idx.iter().map(|&p| (p % SPLIT) as f32))
                    .collect();
                (SuperPositions::Saved { max_index }, split)
            }
        };
        let mut tensors = vec![stored(&vkey), Data::Owned(Arc::new(split))];
        let (out, inp) = match (lora, a, b) {
            (None, None, None) => (0, 0),
            (Some((r, _)), Some(akey), Some(bkey)) => match (&shape(&akey)?[..], &shape(&bkey)?[..]) {
                ([ra, k], [d, rb]) if *ra == r && *rb == r && *k > 0 && *d > 0 => {
                    stored_f32(&file, &akey)?;
                    stored_f32(&file, &bkey)?;
                    tensors.push(stored(&akey));
                    tensors.push(stored(&bkey));
                    (*d, *k)
                }
                (sa, sb) => {
                    return Err(bad(format!(
                        "module `{name}`: supertuning_lora_A {sa:?} and supertuning_lora_B {sb:?} are not [{r}, in] and [out, {r}] (`r` {r} in adapter_config.json)"
                    )))
                }
            },
            (None, a, b) => {
                let key = a.or(b).expect("one of them");
                return Err(bad(format!(
                    "tensor `{key}`: `r` in adapter_config.json is null, so PEFT builds no LoRA for it"
                )));
            }
            (Some(_), ..) => {
                return Err(bad(format!(
                    "module `{name}`: `r` is set in adapter_config.json, so Super-Tuning needs supertuning_lora_A.weight and supertuning_lora_B.weight"
                )))
            }
        };
        let rule = BaseRule::Supertuning {
            lora_scale: lora.map(|(_, s)| s),
            sparsity,
            count: n,
            positions,
        };
        let rank = lora.map_or(1, |(r, _)| r);
        modules.push(on_base_module(name, (out, inp, rank), rule, tensors, false));
    }
    assemble(path, file, &cfg, modules, full)
}
