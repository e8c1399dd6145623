//! Reading PEFT RoAd folders (`peft_type` ROAD; Liao et al., "2D Rotary Adaptation for
//! Efficient Fine-Tuning, Efficient Batching and Composability", 2024; PEFT 0.21.2
//! `tuners/road/`) into the one adapter model. Never writes.
//!
//! Each module stores `road_theta` and `road_alpha` (the config's `variant`: `road_1` [out/2],
//! `road_2` [out], `road_4` [2·out]) and PEFT merges `W' = R·W0`, `b' = R·b0` (`layer.py`
//! `Linear.merge`, `_get_delta_weight`), `R` acting on the output rows in groups of
//! `group_size` g (h = g/2): row `i` at position `j` of its group becomes
//! `c[i]·W0[i] − s[i]·W0[i+h]` for `j < h` and `c[i]·W0[i] + s[i]·W0[i−h]` for `j ≥ h`, with
//! `c = α·cos θ` and `s = α·sin θ` per row as `_prepare_cols` lays them out ([`Factors::Road`]).
//! Everything is in the saved folder; the input width comes from the base. Linear layers only
//! (PEFT's `dispatch_default` wraps `nn.Linear`); `fan_in_fan_out` is refused.

use super::assemble::{all_present, assemble, paired_by_suffixes};
use super::config::{stored_f32, PeftConfig};
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, DoraRule, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;
use std::sync::Arc;

/// Reads a PEFT RoAd adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    if cfg.fan_in_fan_out {
        return Err(bad(
            "`fan_in_fan_out` is true: PEFT's RoAd wraps nn.Linear only".into(),
        ));
    }
    // `RoadConfig.__post_init__`: variant road_1/road_2/road_4, group_size even and positive
    // (defaults road_1 and 64).
    let variant = match cfg.raw.get("variant") {
        None | Some(serde_json::Value::Null) => "road_1",
        Some(v) => match v.as_str() {
            Some(s @ ("road_1" | "road_2" | "road_4")) => s,
            _ => {
                return Err(bad(format!(
                    "`variant` {v} in adapter_config.json is not road_1, road_2 or road_4"
                )))
            }
        },
    };
    let group = match cfg.raw.get("group_size") {
        None | Some(serde_json::Value::Null) => 64,
        Some(v) => match v.as_u64() {
            Some(g) if g > 0 && g % 2 == 0 => g as usize,
            _ => {
                return Err(bad(format!(
                    "`group_size` {v} in adapter_config.json is not a positive even integer"
                )))
            }
        },
    };
    let (parts, full) = paired_by_suffixes(
        &file,
        [".road_theta", ".road_alpha"],
        "road_",
        &[],
        "RoAd tensor (road_theta, road_alpha)",
    )?;
    let mut modules = Vec::with_capacity(parts.len());
    for (name, keys) in parts {
        let [tkey, akey] = all_present(&file, &name, keys, "RoAd needs road_theta and road_alpha")?;
        let theta = stored_f32(&file, &tkey)?;
        let alpha = stored_f32(&file, &akey)?;
        let shape = |k: &str| file.view(k).map(|v| v.shape.to_vec());
        let (ts, as_) = (shape(&tkey)?, shape(&akey)?);
        // `update_layer`: one value per output pair (road_1), per output (road_2) or two per
        // output (road_4), for an output width divisible by the group size.
        let per_row = |n: usize| match variant {
            "road_1" => n * 2,
            "road_2" => n,
            _ => n / 2,
        };
        let d = per_row(theta.len());
        let ok = ts.len() == 1
            && ts == as_
            && d > 0
            && d.is_multiple_of(group)
            && (variant != "road_4" || theta.len().is_multiple_of(2));
        if !ok {
            return Err(bad(format!(
                "module `{name}`: road_theta {ts:?} and road_alpha {as_:?} are not one vector of the {variant} size for out rows in groups of {group}"
            )));
        }
        let (c, s) = columns(variant, group, &theta, &alpha);
        modules.push(LoraModule {
            name,
            kind: ModuleKind::Linear,
            rank: 1,
            alpha: 1.0,
            scale: 1.0,
            out_features: d,
            in_features: 0,
            // Marks the bias for the merge, which rotates it as PEFT does (`b' = R·b0`).
            bias: Some(Data::Owned(Arc::new(c.clone()))),
            factors: Factors::Road {
                cos: Data::Owned(Arc::new(c)),
                sin: Data::Owned(Arc::new(s)),
                group,
            },
            base_transposed: false,
            dora_magnitude: None,
            dora_rule: DoraRule::Peft,
        });
    }
    assemble(path, file, &cfg, modules, full)
}

/// PEFT's `_prepare_cols`: per output row `α·cos θ` and `α·sin θ`, each product in f32 as torch
/// computes it (road_1 shares each group's g/2 values between its two halves; road_4 holds per
/// group g values for the cosine column, then g for the sine column).
fn columns(variant: &str, g: usize, theta: &[f32], alpha: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let h = g / 2;
    let d = match variant {
        "road_1" => theta.len() * 2,
        "road_2" => theta.len(),
        _ => theta.len() / 2,
    };
    let (mut c, mut s) = (Vec::with_capacity(d), Vec::with_capacity(d));
    for i in 0..d {
        let (grp, j) = (i / g, i % g);
        let (ic, is) = match variant {
            "road_1" => {
                let p = grp * h + j % h;
                (p, p)
            }
            "road_2" => (i, i),
            _ => (grp * 2 * g + j, grp * 2 * g + g + j),
        };
        c.push(alpha[ic] * theta[ic].cos());
        s.push(alpha[is] * theta[is].sin());
    }
    (c, s)
}
