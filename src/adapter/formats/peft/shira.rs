//! Reading PEFT SHiRA folders (`peft_type` SHIRA; Bhardwaj et al., "Sparse High Rank Adapters",
//! NeurIPS 2024; PEFT 0.21.2 `tuners/shira/`) into the one adapter model. Never writes.
//!
//! Each module stores `shira_weight` [n] and its positions `shira_indices` [2, n] (integers: the
//! rows, then the columns, `layer.py` `update_layer`; saved with the weights), and PEFT merges
//! `W' = W0 + sparse_coo_tensor(indices, weight · scaling, (out, in))` (`get_delta_weight`), the
//! scaling 1 (set only at inference by `set_scale`, never saved). The shape comes from the base
//! ([`Factors::Shira`]); every position must fall inside it. Linear layers only.

use super::assemble::{all_present, assemble, paired_by_suffixes};
use super::config::{stored_f32, stored_ints, PeftConfig};
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, DoraRule, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;
use std::sync::Arc;

/// Positions are carried as f32 values, exact below 2²⁴.
const MAX_INDEX: i64 = 1 << 24;

/// Reads a PEFT SHiRA adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let (parts, full) = paired_by_suffixes(
        &file,
        [".shira_weight", ".shira_indices"],
        "shira_",
        &[],
        "SHiRA tensor (shira_weight, shira_indices)",
    )?;
    let mut modules = Vec::with_capacity(parts.len());
    for (name, keys) in parts {
        let [wkey, ikey] = all_present(
            &file,
            &name,
            keys,
            "SHiRA needs shira_weight and shira_indices",
        )?;
        let values = stored_f32(&file, &wkey)?;
        let n = values.len();
        // PEFT's shira_weight is one vector [n] (hostile round 12: a [16, 16] one merged).
        let wshape = file.view(&wkey)?.shape.to_vec();
        if wshape != [n] {
            return Err(bad(format!(
                "tensor `{wkey}`: shape {wshape:?} is not [n] (SHiRA stores its values as one vector)"
            )));
        }
        let ishape = file.view(&ikey)?.shape.to_vec();
        if n == 0 || ishape != [2, n] {
            return Err(bad(format!(
                "tensor `{ikey}`: shape {ishape:?} is not [2, {n}] (shira_weight holds {n} values)"
            )));
        }
        let idx = stored_ints(&file, &ikey)?;
        if let Some(i) = idx.iter().position(|&x| !(0..MAX_INDEX).contains(&x)) {
            return Err(bad(format!(
                "tensor `{ikey}`: index {} at flat index {i} is negative or past 2^24",
                idx[i]
            )));
        }
        let out_features = idx[..n].iter().max().map_or(0, |&x| x as usize + 1);
        let in_features = idx[n..].iter().max().map_or(0, |&x| x as usize + 1);
        modules.push(LoraModule {
            name,
            kind: ModuleKind::Linear,
            rank: cfg.r,
            alpha: 1.0,
            scale: 1.0,
            out_features,
            in_features,
            bias: None,
            factors: Factors::Shira {
                values: Data::Stored {
                    key: wkey,
                    transpose: false,
                },
                indices: Data::Owned(Arc::new(idx.into_iter().map(|x| x as f32).collect())),
            },
            base_transposed: false,
            dora_magnitude: None,
            dora_rule: DoraRule::Peft,
        });
    }
    assemble(path, file, &cfg, modules, full)
}
