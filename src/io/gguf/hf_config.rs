//! Values of a Hugging Face `config.json` as llama.cpp's converters read them: an unsigned key,
//! one a model needs, the rope parameters transformers leaves (`rope_parameters` or the older
//! `rope_scaling`). Shared by [`super::hparams`] and [`super::phi3`].
//!
//! Must not write GGUF keys (that is `hparams.rs`).

use crate::error::{InputError, InputResult};
use serde_json::Value as Json;
use std::path::Path;

pub(super) fn uint(c: &Json, key: &str) -> Option<u32> {
    c.get(key)?.as_u64().and_then(|v| u32::try_from(v).ok())
}
/// Why a Gemma config.json key is refused rather than defaulted.
pub(super) const GUESS: &str =
    "llama.cpp's converter would take transformers' default, which lorakit does not guess";
/// A Gemma config's unsigned key, or the refusal naming it ([`GUESS`]): what the Gemma
/// converters read as `hparams["…"]` after AutoConfig filled in what lorakit will not guess.
pub(super) fn gemma_uint(config: &Json, key: &str, path: &Path) -> InputResult<u32> {
    uint(config, key).ok_or_else(|| {
        InputError::invalid(
            path,
            format!("`{key}` is missing or not an unsigned integer ({GUESS})"),
        )
    })
}
/// config.json's rope parameters as `TextModel.__init__` leaves them: `rope_parameters` (or
/// `rope_scaling`) with `rope_theta`, `rope_type` (from `type`) and
/// `original_max_position_embeddings` mirrored in from the top level.
pub(super) fn rope_parameters(config: &Json) -> serde_json::Map<String, Json> {
    let mut rope = match config.get("rope_parameters").or(config.get("rope_scaling")) {
        Some(Json::Object(o)) => o.clone(),
        _ => Default::default(),
    };
    if rope.contains_key("full_attention") || rope.contains_key("sliding_attention") {
        return rope;
    }
    if !rope.contains_key("rope_theta") {
        if let Some(t) = config.get("rope_theta").filter(|v| !v.is_null()) {
            rope.insert("rope_theta".into(), t.clone());
        }
    }
    if !rope.contains_key("rope_type") {
        if let Some(t) = rope.get("type").filter(|v| !v.is_null()).cloned() {
            rope.insert("rope_type".into(), t);
        }
    }
    let orig = "original_max_position_embeddings";
    if !rope.contains_key(orig) {
        if let Some(v) = config.get(orig).filter(|v| !v.is_null()) {
            rope.insert(orig.into(), v.clone());
        }
    }
    rope
}
