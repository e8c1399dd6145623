//! PEFT's trainable-token rows (`trainable_token_indices`) as `check` judges them: whether
//! PEFT can load a module's rows onto the base. Owns: that one condition. Must not: decide a
//! verdict or read tensor data.

use super::base::last_component;

// PEFT's trainable-token rows are read by the PEFT reader; its helpers name them here too.
pub(crate) use crate::adapter::formats::peft::{token_indices, tokens_module, TOKENS_SUFFIX};

/// Why PEFT cannot load a module's trainable-token rows onto the base, or `None` when it can:
/// the module must have a 2-D base weight `[V, D]` (or be `lm_head` tied to `embed_tokens`),
/// the config must list its indices, each `< V`, and the rows must be `[len(indices), D]`
/// (`load_state_dict` refuses another size; `index_copy` another index).
pub(super) fn tokens_mismatch(
    cfg: Option<&serde_json::Value>,
    module: &str,
    shape: &[usize],
    base: &crate::io::Checkpoint,
) -> Option<String> {
    let weight = format!("{module}.weight");
    let info = base.info(&weight).or_else(|| {
        (last_component(module) == "lm_head")
            .then(|| {
                base.names()
                    .find(|n| n.ends_with("embed_tokens.weight"))
                    .and_then(|n| base.info(n))
            })
            .flatten()
    });
    let Some(info) = info else {
        return Some("no such module in the base".into());
    };
    if info.shape.len() != 2 {
        return Some(format!("base weight is {:?}, not a matrix", info.shape));
    }
    let (v, d) = (info.shape[0], info.shape[1]);
    let Some(ids) = token_indices(cfg, module) else {
        return Some("trainable_token_indices does not name this module".into());
    };
    if let Some(bad) = ids.iter().find(|&&i| i >= v as u64) {
        return Some(format!("token index {bad} ≥ the base's {v} rows"));
    }
    if shape != [ids.len(), d] {
        return Some(format!(
            "rows are {shape:?}, expected [{}, {d}] ({} indices)",
            ids.len(),
            ids.len()
        ));
    }
    None
}
