//! Reading PEFT BEFT folders (`peft_type` BEFT; "BEFT: Bias-Efficient Fine-Tuning",
//! arXiv:2509.15974; PEFT 0.21.2 `tuners/beft/`) into the one adapter model. Never writes.
//!
//! Each module stores `beft_bias` [1, out] (`layer.py` `update_layer`), and PEFT merges
//! `b' = b0 + beft_bias` into the base Linear's bias, the weight unchanged (`Linear.merge`; a
//! base without a bias is refused there, and here as an unmatched bias). The module is
//! [`BaseRule::Beft`] with `beft_bias` as its bias. Linear layers only.

use super::assemble::{assemble, split_by_suffix};
use super::config::{stored_f32, PeftConfig};
use crate::adapter::algo::{BaseRule, Factors};
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, LoraModule};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;

/// A module of PEFT's tuners that `on_base.rs` merges: its rule, tensors and the shape bounds
/// the base is checked against ([`crate::adapter::algo::on_base_fits`]), at scale 1.
pub(super) fn on_base_module(
    name: String,
    dims: (usize, usize, usize),
    rule: BaseRule,
    tensors: Vec<Data>,
    base_transposed: bool,
) -> LoraModule {
    let alpha = dims.2 as f64;
    LoraModule::peft_linear(
        name,
        dims,
        alpha,
        Factors::OnBase { rule, tensors },
        base_transposed,
    )
}

/// A stored tensor as a factor.
pub(super) fn stored(key: &str) -> Data {
    Data::Stored {
        key: key.to_owned(),
        transpose: false,
    }
}

/// Reads a PEFT BEFT adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let (named, full) = split_by_suffix(&file, ".beft_bias");
    let mut modules = Vec::with_capacity(named.len());
    for (name, t) in named {
        let key = t.name.as_str();
        let d = match t.shape[..] {
            [1, d] if d > 0 => d,
            ref s => {
                return Err(bad(format!(
                    "tensor `{key}`: shape {s:?} is not [1, out] (PEFT's beft_bias)"
                )))
            }
        };
        stored_f32(&file, key)?;
        let mut m = on_base_module(name.to_owned(), (d, 0, 1), BaseRule::Beft, vec![], false);
        m.bias = Some(stored(key));
        modules.push(m);
    }
    assemble(path, file, &cfg, modules, full)
}

/// adapter_config.json's number `key` (`default` when absent or null), refused unless finite.
pub(super) fn cfg_number(
    fpath: &Path,
    cfg: &PeftConfig,
    key: &str,
    default: Option<f64>,
) -> InputResult<Option<f64>> {
    match cfg.raw.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| {
                InputError::invalid(
                    fpath,
                    format!("`{key}` in adapter_config.json must be a number"),
                )
            }),
    }
}

/// adapter_config.json's true/false `key` (`default` when absent or null).
pub(super) fn cfg_flag(
    fpath: &Path,
    cfg: &PeftConfig,
    key: &str,
    default: bool,
) -> InputResult<bool> {
    match cfg.raw.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(_) => Err(InputError::invalid(
            fpath,
            format!("`{key}` in adapter_config.json must be true or false"),
        )),
    }
}
