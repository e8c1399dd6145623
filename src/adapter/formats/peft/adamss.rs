//! Reading PEFT AdaMSS folders (`peft_type` ADAMSS, Adaptive Multi-Subspaces; PEFT 0.21.2
//! `tuners/adamss/`) into the one adapter model. Never writes.
//!
//! Each module stores per subspace i `adamss_A.{i}` [q, r] and `adamss_B.{i}` [rows_i, q], and
//! the projection `adamss_newB` [r, in + 1] (the base weight's right singular vectors with its
//! bias as an extra column; [r, in] without a bias), and PEFT merges the rows of
//! `B_i·A_i·newB` into the rows of W0 subspace i covers, the last column into the bias
//! (`layer.py` `get_delta_weight`, `get_delta_bias`). Which rows a subspace covers
//! (`scatter_index`) is never saved: PEFT recomputes it on load by K-means (scikit-learn,
//! `random_state` 123456789) over the base's singular vectors from `torch.svd_lowrank` seeded
//! by `random_seed`. With one subspace (`num_subspaces` 1) it is every row in order, so the
//! merge is `[ΔW | Δb] = B·A·newB` ([`BaseRule::Adamss`], Δb this module's bias); with more,
//! the folder is refused saying why. Linear layers only.

use super::assemble::{assemble, stored_full};
use super::beft::{on_base_module, stored};
use super::config::{stored_f32, PeftConfig, PREFIX};
use crate::adapter::algo::BaseRule;
use crate::adapter::data::Data;
use crate::adapter::model::Adapter;
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// One module's keys: `adamss_A.{i}` and `adamss_B.{i}` by index, and `adamss_newB`.
#[derive(Default)]
struct Parts {
    a: BTreeMap<usize, String>,
    b: BTreeMap<usize, String>,
    new_b: Option<String>,
}

/// Reads a PEFT AdaMSS adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let configured = |key: &str, default: u64| -> InputResult<u64> {
        match cfg.raw.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => v.as_u64().filter(|&x| x > 0).ok_or_else(|| {
                bad(format!(
                    "`{key}` in adapter_config.json must be a positive integer"
                ))
            }),
        }
    };
    let (r_cfg, subspaces) = (configured("r", 100)?, configured("num_subspaces", 5)?);
    let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
    let mut full = Vec::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        let Some(at) = rel.find(".adamss_") else {
            full.push(stored_full(rel.to_owned(), t));
            continue;
        };
        let (module, role) = (&rel[..at], &rel[at + 1..]);
        let p = parts.entry(module.to_owned()).or_default();
        let index = |s: Option<&str>| s.and_then(|i| i.parse::<usize>().ok());
        let dup = match role {
            "adamss_newB" => p.new_b.replace(key.to_owned()).is_some(),
            _ => match (
                index(role.strip_prefix("adamss_A.")),
                index(role.strip_prefix("adamss_B.")),
            ) {
                (Some(i), _) => p.a.insert(i, key.to_owned()).is_some(),
                (_, Some(i)) => p.b.insert(i, key.to_owned()).is_some(),
                _ => {
                    return Err(bad(format!(
                        "tensor `{key}`: not an AdaMSS tensor (adamss_A.N, adamss_B.N, adamss_newB)"
                    )))
                }
            },
        };
        if dup {
            return Err(bad(format!("tensor `{key}` is given twice")));
        }
    }
    let shape = |k: &str| -> InputResult<Vec<usize>> { Ok(file.view(k)?.shape.to_vec()) };
    let mut modules = Vec::with_capacity(parts.len());
    for (name, p) in parts {
        let Some(nkey) = p.new_b else {
            return Err(bad(format!("module `{name}`: AdaMSS needs adamss_newB")));
        };
        let (Some(akey), Some(bkey)) = (p.a.get(&0), p.b.get(&0)) else {
            return Err(bad(format!(
                "module `{name}`: AdaMSS needs adamss_A.0 and adamss_B.0"
            )));
        };
        let count = p.a.len().max(p.b.len());
        if count > 1 || p.a.len() != p.b.len() || p.a.keys().ne(p.b.keys()) {
            return Err(bad(format!(
                "module `{name}` has {count} subspaces (adamss_A.0 … adamss_A.{}): which rows of the weight each covers (scatter_index) is not saved; PEFT recomputes it on load by K-means (scikit-learn, random_state 123456789) over the base's singular vectors from torch.svd_lowrank seeded by `random_seed`, which lorakit cannot reproduce, so it merges AdaMSS with one subspace only (`num_subspaces` 1)",
                count - 1
            )));
        }
        let (r, cols, q, d) = match (&shape(&nkey)?[..], &shape(akey)?[..], &shape(bkey)?[..]) {
            ([r, c], [q, ra], [d, qb]) if ra == r && qb == q && *r > 0 && *c > 1 && *q > 0 && *d > 0 => {
                (*r, *c, *q, *d)
            }
            (sn, sa, sb) => {
                return Err(bad(format!(
                    "module `{name}`: adamss_newB {sn:?}, adamss_A.0 {sa:?} and adamss_B.0 {sb:?} are not [r, in(+1)], [q, r] and [out, q]"
                )))
            }
        };
        // PEFT clusters min(num_subspaces, out) subspaces: one only when that is 1.
        if subspaces.min(d as u64) != 1 {
            return Err(bad(format!(
                "module `{name}`: `num_subspaces` {subspaces} in adapter_config.json builds {} subspaces on its {d} rows, but the file holds one: PEFT would keep the others as initialised",
                subspaces.min(d as u64)
            )));
        }
        // slice_pca keeps min(r, out, in(+1)) singular vectors.
        if r as u64 != r_cfg.min(d as u64).min(cols as u64) {
            return Err(bad(format!(
                "tensor `{nkey}` has {r} rows, but `r` {r_cfg} in adapter_config.json gives {} for a {d}×{cols} weight: PEFT builds adamss_newB from the config and refuses the file",
                r_cfg.min(d as u64).min(cols as u64)
            )));
        }
        let (a, b, nb) = (
            stored_f32(&file, akey)?,
            stored_f32(&file, bkey)?,
            stored_f32(&file, &nkey)?,
        );
        // Δb = B·A·newB[:, last] (used only where the base has a bias, i.e. newB has in + 1
        // columns; mapping.rs decides).
        let last: Vec<f64> = (0..r).map(|t| nb[t * cols + cols - 1] as f64).collect();
        let an: Vec<f64> = (0..q)
            .map(|s| (0..r).map(|t| a[s * r + t] as f64 * last[t]).sum())
            .collect();
        let bias: Vec<f32> = (0..d)
            .map(|o| (0..q).map(|s| b[o * q + s] as f64 * an[s]).sum::<f64>() as f32)
            .collect();
        let tensors = vec![stored(bkey), stored(akey), stored(&nkey)];
        let mut m = on_base_module(
            name,
            (d, cols, q),
            BaseRule::Adamss { cols },
            tensors,
            false,
        );
        m.bias = Some(Data::Owned(Arc::new(bias)));
        modules.push(m);
    }
    assemble(path, file, &cfg, modules, full)
}
