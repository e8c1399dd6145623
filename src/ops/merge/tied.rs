//! A merge on a base that ties lm_head to the input embedding (`tie_word_embeddings`) and stores
//! one tensor for both: which adapter entries may change it, and under which
//! `--tied-embeddings` policy. Owns: the refusals. Must not: place or compute anything.
//!
//! PEFT issue #2018: a change to the shared tensor changes both matrices. PEFT's own merge on a
//! tied model: an embedding LoRA (or trainable tokens) merges into the one Parameter, and the
//! tie survives (`shared` writes that). A `modules_to_save` embedding is different: PEFT's
//! `ModulesToSaveWrapper` trains a copy of the embedding module, so the tie is broken, and after
//! `merge_and_unload` the embedding is the trained copy while lm_head still is the base's
//! (peft 0.21.2 `utils/other.py` `ModulesToSaveWrapper`; checked with `merge_and_unload` and
//! `save_pretrained`, which writes both tensors and `tie_word_embeddings: false`). `shared`
//! would change lm_head too, so it is refused for that, unless the config sets
//! `ensure_weight_tying`, where PEFT wraps both in one and keeps the tie.

use super::model::{
    ensures_weight_tying, is_embedding_name, is_lm_head_name, Action, TiedEmbeddings,
};
use crate::adapter::{Adapter, Data};
use crate::error::{InputError, Opt};
use anyhow::{bail, Result};
use std::collections::HashMap;

/// Refuses the entries of adapter `ai` (`touched`: entry name, base tensor) that change the
/// shared tensor other than as PEFT's merge does under `policy` (module doc).
pub(super) fn check(
    a: &Adapter,
    ai: usize,
    touched: &[(String, String)],
    actions: &HashMap<String, Action>,
    has_lm_head: bool,
    policy: TiedEmbeddings,
) -> Result<()> {
    for (module, tensor) in touched {
        if !(is_embedding_name(tensor) || is_lm_head_name(tensor)) {
            continue;
        }
        let (module, tensor) = (module.clone(), tensor.clone());
        if has_lm_head {
            // Both stored: the tie would have to hold between two tensors.
            bail!(InputError::invalid(
                &a.path,
                format!(
                    "`{module}` changes `{tensor}`, but the base ties lm_head to the input embedding (tie_word_embeddings) and also stores lm_head.weight; lorakit does not keep two stored tensors equal. Untie the base first, or leave embeddings out of the adapter"
                )
            ));
        }
        if is_untying_copy(a, ai, &tensor, actions) {
            bail!(InputError::invalid(
                &a.path,
                format!(
                    "`{module}` (modules_to_save) replaces `{tensor}`, which the base ties to lm_head (tie_word_embeddings), with a trained copy: PEFT's ModulesToSaveWrapper unties them, so its merge_and_unload changes the embedding and leaves lm_head at the base's (saved apart, tie_word_embeddings false), which lorakit does not write. Untie the base first (store lm_head.weight, tie_word_embeddings false), or set ensure_weight_tying in the adapter config if it was trained tied"
                )
            ));
        }
        if policy == TiedEmbeddings::Refuse {
            bail!(InputError::option(&a.path, move |o| {
                format!(
                    "`{module}` changes `{tensor}`, but the base ties lm_head to the input embedding (tie_word_embeddings); merging would change both silently (PEFT issue #2018). Pass {} to merge into the shared tensor as PEFT's merge_and_unload does (the output keeps the tie), untie the base first, or leave embeddings out of the adapter",
                    o.set(Opt::TiedEmbeddings, "shared")
                )
            }));
        }
    }
    Ok(())
}

/// Whether adapter `ai` replaces `tensor` with a `modules_to_save` copy (a whole tensor, not the
/// `base_layer` copy nor trainable-token rows) that PEFT does not keep tied.
fn is_untying_copy(
    a: &Adapter,
    ai: usize,
    tensor: &str,
    actions: &HashMap<String, Action>,
) -> bool {
    let Some(&Action::Replace(x, fi)) = actions.get(tensor) else {
        return false;
    };
    let f = &a.full_tensors[fi];
    let copy = !matches!(&f.data, Data::Stored { key, .. } if key.contains(".base_layer."));
    x == ai && f.rows.is_none() && copy && !ensures_weight_tying(a)
}
