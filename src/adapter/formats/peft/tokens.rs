//! Reading PEFT trainable-token folders (`peft_type` TRAINABLE_TOKENS; PEFT 0.21.2
//! `tuners/trainable_tokens/`) into the one adapter model. Never writes.
//!
//! The tuner of its own of what a LoRA folder's `trainable_token_indices` does: each targeted
//! embedding stores `{module}.trainable_tokens_delta` [len(token_indices), dim] (`layer.py`
//! `update_layer`; the key as `save_pretrained` writes it, without LoRA's `token_adapter.`), and
//! `merge_and_unload` writes those rows over the embedding's rows `token_indices` (`merge`:
//! `index_copy`). On a tied base PEFT wraps the tied lm_head too, with the embedding's adapter
//! (`TrainableTokensModel.inject_adapter`, `tied_adapter`), and saves that same delta again
//! under `lm_head`: a copy equal to another module's delta is dropped (the tied lm_head is the
//! embedding's tensor, changed once). It is read as the same
//! row replacement as LoRA's ([`TOKENS_SUFFIX`]), so merge, check and the GGUF writer treat both
//! alike.

use super::assemble::{assemble, stored_full};
use super::config::{PeftConfig, PREFIX, TOKENS_SUFFIX};
use crate::adapter::model::Adapter;
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;

const SUFFIX: &str = ".trainable_tokens_delta";

/// Reads a PEFT TRAINABLE_TOKENS adapter (see the module header).
pub(super) fn read(
    path: &Path,
    file: SafetensorsFile,
    cfg: PeftConfig,
    cfg_path: &Path,
) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let ids: Vec<u64> = cfg
        .raw
        .get("token_indices")
        .and_then(|v| v.as_array())
        .and_then(|a| a.iter().map(|x| x.as_u64()).collect::<Option<_>>())
        .filter(|ids: &Vec<u64>| !ids.is_empty())
        .ok_or_else(|| {
            InputError::invalid(
                cfg_path,
                "`token_indices` must be a non-empty list of token ids",
            )
        })?;
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != ids.len() {
        return Err(InputError::invalid(
            cfg_path,
            "`token_indices` repeats a token id (PEFT's index_copy keeps an unspecified one)",
        ));
    }
    let mut full = Vec::new();
    let mut found = false;
    for t in file.tensors() {
        let key = t.name.as_str();
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        let Some(module) = rel.strip_suffix(SUFFIX).filter(|m| !m.is_empty()) else {
            if rel.contains("trainable_tokens") {
                return Err(bad(format!("tensor `{key}`: not a trainable-token tensor")));
            }
            full.push(stored_full(rel.to_owned(), t));
            continue;
        };
        if t.shape.len() != 2 || t.shape[0] != ids.len() || t.shape[1] == 0 {
            return Err(bad(format!(
                "tensor `{key}`: shape {:?} is not [{}, dim], one row per `token_indices` entry",
                t.shape,
                ids.len()
            )));
        }
        let mut f = stored_full(format!("{module}{TOKENS_SUFFIX}"), t);
        f.rows = Some(ids.iter().map(|&i| i as usize).collect());
        full.push(f);
        found = true;
    }
    if !found {
        return Err(bad(format!("no `…{SUFFIX}` tensor in the file")));
    }
    // The tied lm_head's copy of the embedding's delta (see the module header).
    let values = |f: &crate::adapter::model::FullTensor| match &f.data {
        crate::adapter::data::Data::Stored { key, .. } => file.view(key).ok().map(|v| v.data),
        crate::adapter::data::Data::Owned(_) => None,
    };
    let tied_copy: Vec<usize> = (0..full.len())
        .filter(|&i| {
            let f = &full[i];
            f.rows.is_some()
                && f.name.rsplit('.').nth(2) == Some("lm_head")
                && full.iter().enumerate().any(|(j, g)| {
                    j != i && g.rows.is_some() && values(g).is_some() && values(g) == values(f)
                })
        })
        .collect();
    for i in tied_copy.into_iter().rev() {
        full.remove(i);
    }
    assemble(path, file, &cfg, Vec::new(), full)
}
