//! Reading PEFT VB-LoRA folders (`peft_type` VBLORA; Li et al., "VB-LoRA: Extreme
//! Parameter Efficient Fine-Tuning with Vector Banks", NeurIPS 2024; PEFT 0.21.2
//! `tuners/vblora/`) into the one adapter model as plain LoRA modules. Never writes.
//!
//! One trained bank `base_model.vblora_vector_bank` [N, L] serves every layer. Each module stores
//! `vblora_logits_A` [r, in/L, N] and `vblora_logits_B` [out/L, r, N]; every length-L piece of
//! its factors is the softmax of its top-`topk` logits times their bank vectors
//! (`layer.py` `_get_low_rank_matrix`): `A` = the pieces of logits_A reshaped to [r, in], `B` =
//! those of logits_B transposed to [out/L, L, r] and reshaped to [out, r] (`_get_lora_matrices`),
//! and PEFT merges `ΔW = B·A` (`get_delta_weight`, no scale). With `save_only_topk_weights` the
//! file holds `{logits}_topk_indices` (int) and `{logits}_topk_weights` (the softmax weights
//! but the last, which is 1 − their sum); PEFT's reload turns them back into logits whose
//! softmax is those weights (`model.py` `_remap_adapter_state_dict_for_load`), so the pieces are
//! the weighted sums of the named vectors. Pieces are summed in f64, rounded once.

use super::assemble::{all_present, assemble, stored_full};
use super::config::{stored_f32, PeftConfig, PREFIX};
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, LoraModule};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const BANK: &str = "base_model.vblora_vector_bank";
const SUFFIXES: [&str; 2] = [".vblora_logits_A", ".vblora_logits_B"];

/// One factor's pieces: for each piece, its (bank index, weight) pairs.
type Pieces = Vec<Vec<(usize, f64)>>;

/// Where one factor is stored: the key of its logits, or of its top-k indices with the key of
/// their weights.
type Source = (String, Option<String>);

/// Reads a PEFT VB-LoRA adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let topk =
        match cfg.raw.get("topk") {
            None | Some(serde_json::Value::Null) => 2,
            Some(v) => v.as_u64().filter(|&k| k > 0).ok_or_else(|| {
                bad("`topk` in adapter_config.json must be a positive integer".into())
            })? as usize,
        };
    let Some(bank_info) = file.tensors().iter().find(|t| t.name == BANK) else {
        return Err(bad(format!(
            "VB-LoRA's vector bank `{BANK}` is not in the file"
        )));
    };
    let (n_vec, len) = match bank_info.shape[..] {
        [n, l] if n >= topk && l > 0 => (n, l),
        ref s => {
            return Err(bad(format!(
                "tensor `{BANK}`: shape {s:?} is not [num_vectors ≥ topk = {topk}, vector_length]"
            )))
        }
    };
    // PEFT builds the bank as [num_vectors, vector_length] from the config and refuses a
    // state dict of another shape (hostile round 11).
    for (field, stored) in [("num_vectors", n_vec), ("vector_length", len)] {
        if let Some(c) = cfg
            .raw
            .get(field)
            .and_then(serde_json::Value::as_u64)
            .filter(|&c| c != stored as u64)
        {
            return Err(bad(format!(
                "tensor `{BANK}` has shape {:?}, but `{field}` in adapter_config.json is {c}: PEFT builds the bank from the config and refuses the file",
                bank_info.shape
            )));
        }
    }
    let bank = stored_f32(&file, BANK)?;
    // module → [A, B] → (key of logits or of topk indices, key of topk weights)
    let mut parts: BTreeMap<String, [Option<Source>; 2]> = BTreeMap::new();
    let mut full = Vec::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        if key == BANK || key.ends_with("_topk_weights") {
            continue;
        }
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        let base = rel.strip_suffix("_topk_indices");
        let hit = SUFFIXES
            .iter()
            .enumerate()
            .find_map(|(i, s)| base.unwrap_or(rel).strip_suffix(s).map(|m| (m, i)));
        let Some((module, side)) = hit else {
            if rel.contains("vblora_") {
                return Err(bad(format!("tensor `{key}`: not a VB-LoRA tensor")));
            }
            full.push(stored_full(rel.to_owned(), t));
            continue;
        };
        let weights = base.map(|_| key.replace("_topk_indices", "_topk_weights"));
        let slot = &mut parts.entry(module.to_owned()).or_default()[side];
        if slot.is_some() {
            return Err(bad(format!(
                "module `{module}`: its logits are given twice"
            )));
        }
        *slot = Some((key.to_owned(), weights));
    }
    let mut modules = Vec::with_capacity(parts.len());
    for (name, keys) in parts {
        let [a, b] = all_present(
            &file,
            &name,
            keys,
            "VB-LoRA needs vblora_logits_A and vblora_logits_B",
        )?;
        let (ashape, apieces) = pieces(&file, &a, n_vec, topk)?;
        let (bshape, bpieces) = pieces(&file, &b, n_vec, topk)?;
        // logits_A [r, in/L, ·], logits_B [out/L, r, ·].
        let (r, in_tiles, out_tiles) = match (ashape, bshape) {
            ([r, i], [o, rb]) if r == rb && r > 0 && i > 0 && o > 0 => (r, i, o),
            _ => {
                return Err(bad(format!(
                    "module `{name}`: logits {ashape:?} and {bshape:?} are not [r, in/L] and [out/L, r]"
                )))
            }
        };
        let piece = |p: &[(usize, f64)], l: usize| -> f32 {
            p.iter()
                .map(|&(i, w)| w * bank[i * len + l] as f64)
                .sum::<f64>() as f32
        };
        let (k, d) = (in_tiles * len, out_tiles * len);
        let mut fa = vec![0f32; r * k];
        for t in 0..r {
            for c in 0..in_tiles {
                for l in 0..len {
                    fa[t * k + c * len + l] = piece(&apieces[t * in_tiles + c], l);
                }
            }
        }
        let mut fb = vec![0f32; d * r];
        for p in 0..out_tiles {
            for t in 0..r {
                for l in 0..len {
                    fb[(p * len + l) * r + t] = piece(&bpieces[p * r + t], l);
                }
            }
        }
        modules.push(LoraModule::linear_unit_scale(
            name,
            (d, k, r),
            (Data::Owned(Arc::new(fa)), Data::Owned(Arc::new(fb))),
            cfg.fan_in_fan_out,
        ));
    }
    assemble(path, file, &cfg, modules, full)
}

/// The pieces of one logits tensor (its two leading dimensions and, per piece, the bank
/// vectors and softmax weights of its top `topk` logits), or of its saved top-k indices and
/// weights.
fn pieces(
    file: &SafetensorsFile,
    (key, weights): &Source,
    n_vec: usize,
    topk: usize,
) -> InputResult<([usize; 2], Pieces)> {
    let bad = |m: String| InputError::invalid(file.path(), format!("tensor `{key}`: {m}"));
    let view = file.view(key)?;
    let lead = |last: usize| match view.shape {
        [a, b, l] if *l == last => Ok([*a, *b]),
        s => Err(bad(format!("shape {s:?} is not [·, ·, {last}]"))),
    };
    let Some(wkey) = weights else {
        let dims = lead(n_vec)?;
        let logits = stored_f32(file, key)?;
        let out = logits
            .chunks_exact(n_vec)
            .map(|row| {
                // `logits.topk(topk)`: the largest first, the lower index first among equals.
                let mut order: Vec<usize> = (0..n_vec).collect();
                order.sort_by(|&i, &j| row[j].total_cmp(&row[i]).then(i.cmp(&j)));
                order.truncate(topk);
                let max = row[order[0]] as f64;
                let e: Vec<f64> = order.iter().map(|&i| (row[i] as f64 - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                order
                    .into_iter()
                    .zip(e)
                    .map(|(i, x)| (i, x / sum))
                    .collect()
            })
            .collect();
        return Ok((dims, out));
    };
    let dims = lead(topk)?;
    let idx = super::config::stored_ints(file, key)?;
    if let Some(i) = idx.iter().position(|&i| i < 0 || i as usize >= n_vec) {
        return Err(bad(format!(
            "index {} at flat index {i} is outside the bank's {n_vec} vectors",
            idx[i]
        )));
    }
    let wview = file.view(wkey)?;
    if wview.shape != [dims[0], dims[1], topk - 1] {
        return Err(InputError::invalid(
            file.path(),
            format!(
                "tensor `{wkey}`: shape {:?} is not [{}, {}, {}]",
                wview.shape,
                dims[0],
                dims[1],
                topk - 1
            ),
        ));
    }
    let w = stored_f32(file, wkey)?;
    let rows: Vec<&[f32]> = match topk {
        1 => vec![&[][..]; dims[0] * dims[1]],
        _ => w.chunks_exact(topk - 1).collect(),
    };
    let out = idx
        .chunks_exact(topk)
        .zip(rows)
        .map(|(ids, ws)| {
            // The last weight as PEFT's reload rebuilds it: `1 − sum` in f32.
            let last = 1.0f32 - ws.iter().sum::<f32>();
            ids.iter()
                .zip(ws.iter().chain(std::iter::once(&last)))
                .map(|(&i, &x)| (i as usize, x as f64))
                .collect()
        })
        .collect();
    Ok((dims, out))
}
