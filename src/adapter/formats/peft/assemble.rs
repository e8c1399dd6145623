//! The adapter every PEFT reader returns ([`assemble`]) and the full-tensor entry of a stored
//! tensor ([`stored_full`]): the leaf that the LoRA, LoHa/LoKr, IA3, OFT ([`super::read`]) and
//! AdaLoRA ([`super::adalora`]) readers share, and the split of a one-tensor-per-module file by
//! key suffix. Must not read tensor values or parse configs.

use super::config::{PeftConfig, PeftType, PREFIX};
use crate::adapter::data::Data;
use crate::adapter::formats::format::Format;
use crate::adapter::model::{Adapter, FullTensor, LoraModule};
use crate::error::{InputError, InputResult};
use crate::io::header::TensorInfo;
use crate::io::SafetensorsFile;
use std::collections::BTreeMap;
use std::path::Path;

/// A stored tensor that replaces the base tensor `name` whole.
pub(super) fn stored_full(name: String, t: &TensorInfo) -> FullTensor {
    FullTensor {
        name,
        data: Data::Stored {
            key: t.name.clone(),
            transpose: false,
        },
        shape: t.shape.clone(),
        rows: None,
    }
}

/// The adapter every PEFT reader returns: its modules and full tensors, the config's base model,
/// `modules_to_save` and raw JSON, and rsLoRA / DoRA as a LoRA config states them (the other
/// tuners have neither), and the modules the config does not select, which PEFT would drop
/// ([`super::targets`]; [`Adapter::open`] refuses them).
pub(super) fn assemble(
    path: &Path,
    file: SafetensorsFile,
    cfg: &PeftConfig,
    modules: Vec<LoraModule>,
    full: Vec<FullTensor>,
) -> InputResult<Adapter> {
    let untargeted =
        super::targets::untargeted(&cfg.targets, modules.iter().map(|m| m.name.as_str()))
            .into_iter()
            .map(str::to_owned)
            .collect();
    for (i, f) in full.iter().enumerate() {
        if let Some(other) = full[..i].iter().find(|o| o.name == f.name) {
            let key = |t: &FullTensor| match &t.data {
                Data::Stored { key, .. } => key.clone(),
                Data::Owned(_) => "?".to_owned(),
            };
            return Err(InputError::invalid(
                file.path(),
                format!(
                    "tensors `{}` and `{}` both replace base tensor `{}`",
                    key(other),
                    key(f),
                    f.name
                ),
            ));
        }
    }
    tokens_conflict(file.path(), cfg, &modules, &full)?;
    let lora = cfg.peft_type == PeftType::Lora;
    Ok(Adapter {
        format: Format::Peft,
        path: path.to_path_buf(),
        metadata: file.header().metadata.clone(),
        source: Some(file),
        modules,
        full_tensors: full,
        base_model: cfg.base_model.clone(),
        use_rslora: lora && cfg.use_rslora,
        use_dora: lora && cfg.use_dora,
        modules_to_save: cfg.modules_to_save.clone(),
        config: Some(cfg.raw.clone()),
        namings: Vec::new(),
        untargeted,
        bundled_embeddings: Vec::new(),
    })
}

/// Per module path, the keys of a tuner's tensors, one slot per suffix ([`paired_by_suffixes`]).
pub(super) type Pairs<const N: usize = 2> = BTreeMap<String, [Option<String>; N]>;

/// The tensors of a tuner with `N` tensors per module (BOFT's `boft_R`/`boft_s`, VeRA's
/// `vera_lambda_d`/`vera_lambda_b`, GraLoRA's four): per module path (sorted) the keys named
/// `{PREFIX}{module}{suffixes[i]}`, slot `i`; tensors named in `skip` are left out, any other
/// whose name holds `family` (the tuner's own prefix, `boft_`) is an error naming it and `what`
/// (the tensors the tuner has), and the rest are full tensors named without the prefix.
pub(super) fn paired_by_suffixes<const N: usize>(
    file: &SafetensorsFile,
    suffixes: [&str; N],
    family: &str,
    skip: &[&str],
    what: &str,
) -> InputResult<(Pairs<N>, Vec<FullTensor>)> {
    let bad = |msg: String| InputError::invalid(file.path(), msg);
    let mut parts: Pairs<N> = BTreeMap::new();
    let mut full = Vec::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        if skip.contains(&key) {
            continue;
        }
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        let found = suffixes
            .iter()
            .enumerate()
            .find_map(|(i, s)| rel.strip_suffix(s).map(|m| (m, i)));
        let Some((module, side)) = found else {
            if rel.contains(family) {
                return Err(bad(format!("tensor `{key}`: not a {what}")));
            }
            full.push(loose(rel, t));
            continue;
        };
        let slot = &mut parts
            .entry(module.to_owned())
            .or_insert_with(|| std::array::from_fn(|_| None))[side];
        if slot.is_some() {
            return Err(bad(format!("tensor `{key}` is given twice")));
        }
        *slot = Some(key.to_owned());
    }
    Ok((parts, full))
}

/// A module's keys from [`paired_by_suffixes`], each one present, or the error naming the module
/// and what is missing as `needs` says it ("BOFT needs boft_R and boft_s").
pub(super) fn all_present<T, const N: usize>(
    file: &SafetensorsFile,
    module: &str,
    keys: [Option<T>; N],
    needs: &str,
) -> InputResult<[T; N]> {
    keys.into_iter()
        .collect::<Option<Vec<T>>>()
        .and_then(|v| <[T; N]>::try_from(v).ok())
        .ok_or_else(|| InputError::invalid(file.path(), format!("module `{module}`: {needs}")))
}

/// The tensors of a tuner with one tensor per module (IA3, OFT, HRA): those named
/// `{PREFIX}{module}{suffix}`, with the module name, in file order; every other tensor is a full
/// tensor named without the prefix.
pub(super) fn split_by_suffix<'f>(
    file: &'f SafetensorsFile,
    suffix: &str,
) -> (Vec<(&'f str, &'f TensorInfo)>, Vec<FullTensor>) {
    let mut named = Vec::new();
    let mut full = Vec::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        match rel.strip_suffix(suffix).filter(|n| !n.is_empty()) {
            Some(name) => named.push((name, t)),
            None => full.push(loose(rel, t)),
        }
    }
    (named, full)
}

/// A tensor that is no tuner factor: a full tensor of the base. PEFT saves the bias a tuner
/// trains (`bias="hra_only"`, `"boft_only"`, `"all"`) as `{module}.base_layer.bias` (the layer
/// it wraps), so `.base_layer.` is dropped as the LoRA reader does ([`super::read`]); two
/// tensors that name the same base tensor are refused by [`assemble`].
fn loose(rel: &str, t: &TensorInfo) -> FullTensor {
    stored_full(rel.replace(".base_layer.", "."), t)
}

/// Refuses trainable-token rows on a module that PEFT has already wrapped otherwise, which
/// PEFT 0.21.2 cannot apply: on a LoRA target, `TrainableTokensWrapper.check_module` raises
/// `TypeError` on load ("trainable_token_indices cannot be applied to modules of type
/// lora.layer.Embedding", `utils/other.py`); on a `modules_to_save` module (a folder PEFT itself
/// saves, the trained copy under `token_adapter.base_layer`), the forward raises `ValueError`
/// ("TrainableTokensLayer wraps an unknown layer type", `tuners/trainable_tokens/layer.py`) and
/// `merge_and_unload` leaves the wrapper unmerged. Applying both would be a guess.
fn tokens_conflict(
    path: &Path,
    cfg: &PeftConfig,
    modules: &[LoraModule],
    full: &[FullTensor],
) -> InputResult<()> {
    for f in full {
        let Some(m) = super::config::tokens_module(&f.name) else {
            continue;
        };
        let why = if modules.iter().any(|x| x.name == m) {
            "is also a LoRA target: PEFT raises on load (TypeError: trainable_token_indices cannot be applied to a LoRA layer)"
        } else if cfg.targets.saves(m) {
            "is in modules_to_save: PEFT's forward raises (ValueError: TrainableTokensLayer wraps an unknown layer type) and its merge leaves the module unmerged"
        } else {
            continue;
        };
        return Err(InputError::invalid(
            path,
            format!("module `{m}` has trainable-token rows (trainable_token_indices) and {why}; keep one of the two"),
        ));
    }
    Ok(())
}
