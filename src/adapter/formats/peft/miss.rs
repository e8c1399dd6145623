//! Reading PEFT MiSS folders (`peft_type` MISS; Kang and Yin, "MiSS: Balancing LoRA Performance
//! and Efficiency with Simple Shard Sharing", formerly Bone; PEFT 0.21.2 `tuners/miss/`) into the
//! one adapter model. Never writes.
//!
//! Each module stores one `miss_block`, and `config.init_weights` says how PEFT merges it
//! (`layer.py` `MissLinear.merge`):
//! - `true`/`false`: `miss_block` [r, out], `W' = W0 + ΔW` with `ΔW[o, c] = block[c mod r, o]`
//!   (`get_delta_weight_miss`: W0's columns cut into r-wide shards, the block added to each, the
//!   columns past the last whole shard taking its first ones);
//! - `"mini"`: `miss_block` [r, mini_r], repeated `out / mini_r` times along the rows first;
//! - `"bat"`: `miss_block` [out/r, r, r], `W' = W0 + W0_blk·block[p] + block[p]` on each r×r
//!   block of W0 in row block `p` (`get_delta_weight`).
//!
//! The input width is known only from the base, so the module is a [`Factors::Miss`] built with
//! the base at hand. Linear layers only (PEFT's MiSS wraps nn.Linear alone).
//!
//! Bone (`peft_type` BONE, older PEFT releases, `tuners/bone/layer.py`, gone from 0.21.2) stores
//! `bone_block` and merges by the same code (`get_delta_weight_bone`, `get_delta_weight` at
//! huggingface/peft@093b431), without `mini`; it is read here under that name.

use super::assemble::{assemble, split_by_suffix};
use super::config::PeftConfig;
use crate::adapter::algo::{Factors, MissMode};
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, DoraRule, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use serde_json::Value;
use std::path::Path;

/// Reads a PEFT MiSS adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let bone = cfg.peft_type == super::config::PeftType::Bone;
    let (suffix, family, what) = if bone {
        (".bone_block", "bone_", "Bone")
    } else {
        (".miss_block", "miss_", "MiSS")
    };
    let mode = match cfg.raw.get("init_weights") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => MissMode::Plain,
        Some(Value::String(s)) if s == "bat" => MissMode::Bat,
        Some(Value::String(s)) if s == "mini" && !bone => {
            let mini_r = cfg
                .raw
                .get("mini_r")
                .and_then(Value::as_u64)
                .filter(|&m| m > 0)
                .ok_or_else(|| {
                    bad("`mini_r` in adapter_config.json must be a positive integer with init_weights \"mini\"".into())
                })?;
            MissMode::Mini {
                mini_r: mini_r as usize,
            }
        }
        Some(v) => {
            return Err(bad(format!(
                "`init_weights` in adapter_config.json is {v}: {what} takes true, false, \"bat\"{}",
                if bone { "" } else { " or \"mini\"" }
            )))
        }
    };
    let (named, full) = split_by_suffix(&file, suffix);
    if let Some(f) = full.iter().find(|f| f.name.contains(family)) {
        return Err(bad(format!(
            "tensor `{}`: not a {what} tensor ({})",
            f.name,
            &suffix[1..]
        )));
    }
    let mut modules = Vec::with_capacity(named.len());
    for (name, t) in named {
        let key = t.name.as_str();
        // (out_features, in_features): the base's rows where the file gives them (0 for
        // `mini`), and the least input width, r.
        let sides = match (mode, &t.shape[..]) {
            (MissMode::Plain, [r, d]) if *r > 0 && *d > 0 => Some((*d, *r)),
            (MissMode::Mini { mini_r }, [r, m]) if *r > 0 && *m == mini_r => Some((0, *r)),
            (MissMode::Bat, [n, r, r2]) if *n > 0 && *r > 0 && r == r2 => Some((n * r, *r)),
            _ => None,
        };
        let Some((out_features, in_features)) = sides else {
            let want = match mode {
                MissMode::Plain => "[r, out]".to_owned(),
                MissMode::Mini { mini_r } => format!("[r, mini_r = {mini_r}]"),
                MissMode::Bat => "[out/r, r, r] (init_weights \"bat\")".to_owned(),
            };
            return Err(bad(format!(
                "tensor `{key}`: shape {:?} is not {want}",
                t.shape
            )));
        };
        // PEFT builds the block at the config's `r` and refuses another (hostile round 12).
        if let Some(cr) = cfg.r_other_than(in_features) {
            return Err(bad(format!(
                "tensor `{key}` has r {in_features}, but `r` in adapter_config.json is {cr}: PEFT builds {what} at r and refuses the file"
            )));
        }
        // Finite float values, checked once here (the merge reads them again).
        super::config::stored_f32(&file, key)?;
        modules.push(LoraModule {
            name: name.to_owned(),
            kind: ModuleKind::Linear,
            rank: in_features,
            alpha: 1.0,
            scale: 1.0,
            out_features,
            in_features,
            bias: None,
            factors: Factors::Miss {
                block: Data::Stored {
                    key: key.to_owned(),
                    transpose: false,
                },
                mode,
            },
            base_transposed: false,
            dora_magnitude: None,
            dora_rule: DoraRule::Peft,
        });
    }
    assemble(path, file, &cfg, modules, full)
}
