//! Reading PEFT OSF folders (`peft_type` OSF; Nayak et al., "Sculpting Subspaces: Constrained
//! Full Fine-Tuning in LLMs for Continual Learning", 2025; PEFT 0.21.2 `tuners/osf/`) into the
//! one adapter model. Never writes.
//!
//! PEFT splits each targeted Linear weight by its SVD (`utils.py` `decompose_weight_matrix`):
//! the top `effective_rank` triplets stay frozen, the rest are trained. Only the trained part is
//! saved, `osf_svd_params.U_low` [out, n], `S_low` [n] and `V_low` [n, in] (n = min(out, in) −
//! effective_rank); the frozen buffers are rebuilt from the base on reload, and
//! `merge_and_unload` adds `U_low·diag(S_low)·V_low − (W0's own low part)` (`layer.py`
//! `get_delta_weight`), i.e. `W' = W0's top effective_rank triplets + U_low·diag(S_low)·V_low`
//! ([`Factors::Osf`], the SVD of W0 taken at merge time). Linear layers only.

use super::assemble::{all_present, assemble, paired_by_suffixes};
use super::config::PeftConfig;
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, DoraRule, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;

/// Reads a PEFT OSF adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let (parts, full) = paired_by_suffixes(
        &file,
        [
            ".osf_svd_params.U_low",
            ".osf_svd_params.S_low",
            ".osf_svd_params.V_low",
        ],
        "osf_",
        &[],
        "OSF tensor (osf_svd_params.U_low, S_low, V_low)",
    )?;
    let mut modules = Vec::with_capacity(parts.len());
    for (name, keys) in parts {
        let [ukey, skey, vkey] = all_present(
            &file,
            &name,
            keys,
            "OSF needs osf_svd_params.U_low, S_low and V_low",
        )?;
        let shape = |k: &str| file.view(k).map(|v| v.shape.to_vec());
        let (us, ss, vs) = (shape(&ukey)?, shape(&skey)?, shape(&vkey)?);
        // n trained triplets of a [d, k] weight, fewer than min(d, k) (effective_rank ≥ 1);
        // none when effective_rank is min(d, k).
        let (d, n, k) = match (&us[..], &ss[..], &vs[..]) {
            ([d, n], [n2], [n3, k]) if n == n2 && n == n3 && *d > 0 && *k > 0 && n < d.min(k) => {
                (*d, *n, *k)
            }
            _ => {
                return Err(bad(format!(
                    "module `{name}`: U_low {us:?}, S_low {ss:?} and V_low {vs:?} are not [out, n], [n] and [n, in] with 0 ≤ n < min(out, in)"
                )))
            }
        };
        // PEFT builds U_low [out, min(out, in) − effective_rank] from the config (`model.py`
        // `_create_and_replace`, `utils.py` `decompose_weight_matrix`) and refuses other shapes.
        let min_dim = d.min(k);
        let eff = effective_rank(&cfg.raw, &name, min_dim).map_err(&bad)?;
        if min_dim - eff != n {
            return Err(bad(format!(
                "module `{name}`: S_low holds {n} trained triplets of a [{d}, {k}] weight, but adapter_config.json gives effective_rank {eff} (effective_rank or rank_pattern): PEFT builds U_low [{d}, {}] and refuses the file",
                min_dim - eff
            )));
        }
        // Nothing trained (effective_rank = min(out, in)): PEFT's `get_delta_weight` is the
        // empty U_low·diag(S_low)·V_low minus W0's empty low part, and `merge_and_unload`
        // leaves the weight as it was.
        if n == 0 {
            continue;
        }
        let stored = |key: String| Data::Stored {
            key,
            transpose: false,
        };
        modules.push(LoraModule {
            name,
            kind: ModuleKind::Linear,
            rank: n,
            alpha: 1.0,
            scale: 1.0,
            out_features: d,
            in_features: k,
            bias: None,
            factors: Factors::Osf {
                u: stored(ukey),
                s: stored(skey),
                v: stored(vkey),
            },
            base_transposed: false,
            dora_magnitude: None,
            dora_rule: DoraRule::Peft,
        });
    }
    assemble(path, file, &cfg, modules, full)
}

/// The preserved rank PEFT's `_create_and_replace` resolves for `module` (`_resolve_rank`): the
/// first `rank_pattern` key `re.search` finds in the module name, else `effective_rank`; `None`
/// is half of `min_dim`, a float in (0, 1] that fraction of it, any other number truncated;
/// then clamped to `0..=min_dim` (0 is refused by `update_layer`, as a non-number by `int`).
fn effective_rank(raw: &serde_json::Value, module: &str, min_dim: usize) -> Result<usize, String> {
    use serde_json::Value;
    let mut value = raw.get("effective_rank").unwrap_or(&Value::Null);
    let mut field = "effective_rank".to_owned();
    if let Some(Value::Object(patterns)) = raw.get("rank_pattern") {
        for (key, v) in patterns {
            let re = regex::Regex::new(key)
                .map_err(|_| format!("`rank_pattern` key {key:?} is not a valid regex"))?;
            if re.is_match(module) {
                value = v;
                field = format!("rank_pattern[{key:?}]");
                break;
            }
        }
    }
    let r: f64 = match value {
        Value::Null => return Ok(min_dim / 2),
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(x) => {
            let x = x.as_f64().unwrap_or(f64::INFINITY);
            if value.is_f64() && x > 0.0 && x <= 1.0 {
                (min_dim as f64 * x).trunc()
            } else {
                x.trunc()
            }
        }
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map(|x| x as f64)
            .map_err(|_| format!("{field} {value} in adapter_config.json is not a number"))?,
        other => {
            return Err(format!(
                "{field} {other} in adapter_config.json is not a number"
            ))
        }
    };
    if r.is_nan() || r <= 0.0 {
        return Err(format!(
            "{field} {value} in adapter_config.json gives module `{module}` no preserved rank (PEFT's update_layer refuses effective_rank ≤ 0)"
        ));
    }
    Ok(r.min(min_dim as f64) as usize)
}
