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

use super::assemble::{assemble, paired_by_suffixes};
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
    let ranks = EffectiveRanks::parse(&cfg.raw)
        .map_err(|e| InputError::invalid(fpath.with_file_name("adapter_config.json"), e))?;
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
    for (name, [ukey, skey, vkey]) in parts {
        let (Some(ukey), Some(skey), Some(vkey)) = (ukey, skey, vkey) else {
            return Err(bad(format!(
                "module `{name}`: OSF needs osf_svd_params.U_low, S_low and V_low"
            )));
        };
        let shape = |k: &str| file.view(k).map(|v| v.shape.to_vec());
        let (us, ss, vs) = (shape(&ukey)?, shape(&skey)?, shape(&vkey)?);
        // n trained triplets of a [d, k] weight, fewer than min(d, k) (effective_rank ≥ 1).
        let (d, n, k) = match (&us[..], &ss[..], &vs[..]) {
            ([d, n], [n2], [n3, k]) if n == n2 && n == n3 && *n > 0 && n < d.min(k) => (*d, *n, *k),
            _ => {
                return Err(bad(format!(
                    "module `{name}`: U_low {us:?}, S_low {ss:?} and V_low {vs:?} are not [out, n], [n] and [n, in] with 0 < n < min(out, in)"
                )))
            }
        };
        // PEFT builds U_low [out, min − effective_rank] from the config and refuses another
        // shape on load ("size mismatch for … S_low").
        let (rank, from) = ranks.for_module(&name, d.min(k));
        if d.min(k) - rank != n {
            return Err(bad(format!(
                "module `{name}`: S_low holds {n} trained triplets, but {from} gives effective_rank {rank}, so PEFT builds min({d}, {k}) − {rank} = {} and refuses the file",
                d.min(k) - rank
            )));
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

/// OSF's `effective_rank` and `rank_pattern` (PEFT 0.21.2 `tuners/osf/model.py`
/// `_create_and_replace`): a JSON float in (0, 1] is a fraction of min(out, in) (truncated), any
/// other number is truncated to an integer; the rank is clamped to [0, min(out, in)]; no value
/// means min(out, in)/2. `rank_pattern` keys are regexes searched (`re.search`, unanchored) in
/// the module name, the first in file order that matches wins.
struct EffectiveRanks {
    default: Option<OsfRank>,
    pattern: Vec<(String, regex::Regex, OsfRank)>,
}

/// A configured effective rank as PEFT's `_resolve_rank` reads a JSON number.
#[derive(Clone, Copy)]
enum OsfRank {
    /// `isinstance(value, float) and 0 < value <= 1`: a fraction of min(out, in) (`1.0` is one,
    /// `1` is not).
    Fraction(f64),
    /// Any other number, `int(value)`.
    Count(f64),
}

fn osf_rank(v: &serde_json::Value) -> Option<OsfRank> {
    let x = v.as_f64()?;
    Some(if v.is_f64() && x > 0.0 && x <= 1.0 {
        OsfRank::Fraction(x)
    } else {
        OsfRank::Count(x)
    })
}

impl EffectiveRanks {
    fn parse(raw: &serde_json::Value) -> Result<Self, String> {
        use serde_json::Value;
        let default = match raw.get("effective_rank") {
            None | Some(Value::Null) => None,
            Some(v) => Some(osf_rank(v).ok_or("`effective_rank` must be a number")?),
        };
        let pattern = match raw.get("rank_pattern") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(key, v)| {
                    let x = osf_rank(v).ok_or_else(|| {
                        format!("`rank_pattern` value for `{key}` is not a number")
                    })?;
                    let re = regex::Regex::new(key).map_err(|e| {
                        format!(
                            "`rank_pattern` key {key:?} is not a valid regex: {}",
                            super::config::one_line_regex_error(&e)
                        )
                    })?;
                    Ok((key.clone(), re, x))
                })
                .collect::<Result<_, String>>()?,
            Some(_) => return Err("`rank_pattern` must be an object".into()),
        };
        Ok(EffectiveRanks { default, pattern })
    }

    /// The effective rank of `module` (min(out, in) = `min_dim`) and where it comes from.
    fn for_module(&self, module: &str, min_dim: usize) -> (usize, String) {
        let resolve = |x: Option<OsfRank>| -> usize {
            let r = match x {
                None => return min_dim / 2,
                Some(OsfRank::Fraction(f)) => (min_dim as f64 * f).trunc(),
                Some(OsfRank::Count(x)) => x.trunc(),
            };
            r.clamp(0.0, min_dim as f64) as usize
        };
        match self.pattern.iter().find(|(_, re, _)| re.is_match(module)) {
            Some((key, _, x)) => (resolve(Some(*x)), format!("`rank_pattern` {key:?}")),
            None => (
                resolve(self.default),
                match self.default {
                    Some(_) => "`effective_rank`".into(),
                    None => "the default effective_rank (min/2)".into(),
                },
            ),
        }
    }
}
