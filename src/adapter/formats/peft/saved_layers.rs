//! The whole embedding layers PEFT saves beside an adapter trained on a resized vocabulary
//! (`save_embedding_layers="auto"`, peft 0.21.2 `utils/save_and_load.py`
//! `get_peft_model_state_dict`: the state dict of each embedding layer, under its wrapper's
//! names). Owns: which of those tensors a merge uses. Must not: place them on a base.
//!
//! A `modules_to_save` module `m` is saved three times: `m.weight` (the trained copy, as every
//! modules_to_save save writes it), `m.modules_to_save.weight` (the same copy, from the wrapper's
//! state dict) and `m.original_module.weight` (the base layer). PEFT loads the last two into the
//! wrapper and its `merge_and_unload` keeps only the trained copy (`ModulesToSaveWrapper`
//! replaced by `modules_to_save[adapter]`), so the original is dropped, and the wrapper's copy is
//! dropped when it equals `m.weight` bit for bit (refused, naming both keys, when it does not:
//! which one PEFT's merge ends with depends on load order). The trainable-token layer's base
//! (`m.token_adapter.base_layer.weight`) is read as `m.weight` by the caller, like every
//! `base_layer` copy.

use crate::adapter::data::Data;
use crate::adapter::model::FullTensor;
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;

const SAVED: &str = ".modules_to_save.";
const ORIGINAL: &str = ".original_module.";

/// Drops the wrapper copies of `full` that PEFT's merge does not use (module doc): any parameter
/// of the wrapper (`.weight`, and with `bias = "all"` `.bias` too), of the module itself
/// (`m.original_module.bias`, `m.modules_to_save.bias`) or of a submodule of a wrapped container
/// (`m.original_module.0.bias`, `m.modules_to_save.default.0.bias`: PEFT strips the adapter name
/// only from the last level).
pub(super) fn drop_wrapper_copies(
    file: &SafetensorsFile,
    full: &mut Vec<FullTensor>,
) -> InputResult<()> {
    let key = |f: &FullTensor| match &f.data {
        Data::Stored { key, .. } => Some(key.clone()),
        Data::Owned(_) => None,
    };
    let bare = |full: &[FullTensor], name: &str| full.iter().find(|f| f.name == name).and_then(key);
    let mut drop = vec![false; full.len()];
    for (i, f) in full.iter().enumerate() {
        if let Some((m, rest)) = f.name.split_once(ORIGINAL) {
            drop[i] = bare(full, &format!("{m}.{rest}")).is_some();
        } else if let Some((m, rest)) = f.name.split_once(SAVED) {
            // `m.modules_to_save.p` (adapter name stripped), or `m.modules_to_save.ADAPTER.sub.p`.
            let nested = rest.split_once('.').map(|(_, sub)| format!("{m}.{sub}"));
            let found = [Some(format!("{m}.{rest}")), nested]
                .into_iter()
                .flatten()
                .find_map(|n| bare(full, &n));
            let (Some(bare), Some(copy)) = (found, key(f)) else {
                continue;
            };
            let (a, b) = (file.view(&bare)?, file.view(&copy)?);
            if a.dtype != b.dtype || a.shape != b.shape || a.data != b.data {
                return Err(InputError::invalid(
                    file.path(),
                    format!("tensors `{bare}` and `{copy}` are both the trained copy of `{m}` (modules_to_save) but differ"),
                ));
            }
            drop[i] = true;
        }
    }
    let mut i = 0;
    full.retain(|_| {
        i += 1;
        !drop[i - 1]
    });
    Ok(())
}

/// Whether `rel` (a key without PEFT's prefix, of dtype `dtype`) belongs to the quantized
/// storage of a base layer PEFT saved beside a LoRA on an embedding or `lm_head`
/// (`save_embedding_layers="auto"` on a bitsandbytes model whose head is quantized: the
/// `Params4bit`/`Int8Params` state, `….base_layer.weight` packed as U8/I8 with its
/// `.absmax`, `.quant_map`, `.nested_*`, `.quant_state.bitsandbytes__*`, or `.SCB` and
/// `.weight_format`; FP8's scales). It is the base's own layer: PEFT loads it back into the same
/// quantized layer, and lorakit takes the base's tensor, as it does for every saved base copy
/// on a GGUF or MLX target ([`crate::adapter::Adapter::is_saved_base_copy`]). Reading it as a
/// full replacement compared its packed shape with the layer's (hostile round 18's QLoRA sweep:
/// "base tensor `lm_head.weight` has shape [100, 96], the adapter needs [4800, 1]").
pub(super) fn quantized_base_copy(rel: &str, dtype: crate::dtype::Dtype) -> bool {
    let Some((_, rest)) = rel.split_once(".base_layer.") else {
        return false;
    };
    match rest {
        "weight" => !crate::dtype::is_float_compute(dtype),
        "SCB" | "weight_format" | "weight_scale" | "weight_scale_inv" | "input_scale" => true,
        _ => rest.strip_prefix("weight.").is_some_and(|q| {
            matches!(
                q,
                "absmax" | "quant_map" | "nested_absmax" | "nested_quant_map"
            ) || q.starts_with("quant_state.bitsandbytes__")
        }),
    }
}
