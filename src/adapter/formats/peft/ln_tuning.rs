//! Reading PEFT LN-tuning folders (`peft_type` LN_TUNING; Zhao et al., "Tuning LayerNorm in
//! Attention", ICLR 2024; PEFT 0.21.2 `tuners/ln_tuning/`) into the one adapter model. Never
//! writes.
//!
//! LN tuning trains a whole copy of each targeted norm layer (`layer.py` `LNTuningLayer`:
//! `ln_tuning_layers` a ModuleDict of deep copies), saved as `{module}.ln_tuning_layers.weight`
//! (and `.bias` where the layer has one), and its merge swaps that copy in for the base layer
//! (`merge`: `self.base_layer, self.ln_tuning_layers[adapter] = …`). So each tensor is a
//! replacement of the base's `{module}.weight` / `.bias`, read as a full tensor; the adapter has
//! no low-rank module.

use super::assemble::{assemble, stored_full};
use super::config::{PeftConfig, PREFIX};
use crate::adapter::model::Adapter;
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;

/// Reads a PEFT LN-tuning adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let mut full = Vec::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        let name = match rel.split_once(".ln_tuning_layers.") {
            Some((module, param)) if !module.is_empty() && !param.contains('.') => {
                format!("{module}.{param}")
            }
            Some(_) => {
                return Err(InputError::invalid(
                    file.path(),
                    format!("tensor `{key}`: not an LN-tuning tensor ({{module}}.ln_tuning_layers.{{weight,bias}})"),
                ))
            }
            None => rel.to_owned(),
        };
        if let Some(other) = full
            .iter()
            .find(|f: &&crate::adapter::model::FullTensor| f.name == name)
        {
            return Err(InputError::invalid(
                file.path(),
                format!(
                    "tensor `{key}` and another tensor both replace base tensor `{}`",
                    other.name
                ),
            ));
        }
        full.push(stored_full(name, t));
    }
    assemble(path, file, &cfg, Vec::new(), full)
}
