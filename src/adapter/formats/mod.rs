//! Adapter file formats: the registration of every format ([`Format::layout`]), detection and
//! dispatch to the readers.
//!
//! Each format lives in its own file or folder (`peft/`, `kohya.rs`) and answers the
//! operations' layout questions through its [`Layout`]. Adding a format: its reader, writer and
//! `Layout` in `formats/NEW.rs`, a variant in [`Format`] (`format.rs`), its arm in
//! [`Format::layout`] below, and its detection in [`detect`] / [`open`]. Nothing in `ops/`
//! matches on a format. The diffusers and GGUF single files (`diffusers.rs`, `gguf.rs`) are
//! written by their own `convert` targets, not as a [`Format`]. What every writer shares (the
//! dtype, bytes and shape a tensor is written with) is `written.rs`, a leaf below them all.
//!
//! Must not: know an operation, or a format's key names (those live in the format's file).

pub mod diffusers;
pub(crate) mod format;
pub mod gguf;
pub mod kohya;
mod layout;
pub mod lycoris;
pub mod mlx;
pub mod peft;
mod written;

pub use format::Format;
pub use layout::{Facts, Holds, Layout, Shape, WriteArgs};

use super::model::Adapter;
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;

impl Format {
    /// The registration: each format's [`Layout`].
    pub fn layout(self) -> &'static dyn Layout {
        match self {
            Format::Peft => &peft::Peft,
            Format::Kohya => &kohya::Kohya,
            Format::Mlx => &mlx::Mlx,
        }
    }
}

/// The one spelling of a format in reports and messages, as in JSON: `peft`, `kohya`.
impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.layout().name())
    }
}

/// Opens an adapter file or PEFT folder, detecting its format from the tensor names.
pub fn open(path: &Path) -> InputResult<Adapter> {
    let meta = std::fs::metadata(path).map_err(|e| InputError::io(path, e))?;
    let (file_path, config_path) = if meta.is_dir() {
        let f = peft_weights(path);
        let m = path.join(mlx::WEIGHTS_NAME);
        if !f.exists() && m.exists() {
            return mlx::read(
                path,
                SafetensorsFile::open(&m)?,
                &path.join(peft::CONFIG_NAME),
            );
        }
        if !f.exists() {
            return Err(InputError::invalid(
                path,
                format!("no {} in this folder", peft::WEIGHTS_NAME),
            ));
        }
        (f, Some(path.join(peft::CONFIG_NAME)))
    } else {
        let beside = path.parent().map(|p| p.join(peft::CONFIG_NAME));
        (path.to_path_buf(), beside)
    };
    let file = SafetensorsFile::open(&file_path)?;
    // A lone file with PEFT names and no adapter_config.json beside it is a diffusers-style
    // single-file LoRA (`pytorch_lora_weights.safetensors`), read like the kohya-named ones.
    let has_config = config_path.as_ref().is_some_and(|p| p.exists());
    // A PEFT folder is read by the PEFT reader whatever its tensors are called (PEFT's LoHa and
    // LoKr use LyCORIS' suffixes under `base_model.model.`); so is a file with PEFT-prefixed
    // LyCORIS names and a config beside it.
    let peft_prefixed = || {
        file.tensors()
            .iter()
            .all(|t| t.name.starts_with(peft::PREFIX))
    };
    let detected = match detect(&file) {
        Some(_) if meta.is_dir() => Some(Format::Peft),
        Some(Format::Kohya) if has_config && peft_prefixed() => Some(Format::Peft),
        Some(Format::Peft) if !has_config => Some(Format::Kohya),
        d => d,
    };
    // An mlx-lm file (`adapters.safetensors`, a checkpoint `0000100_adapters.safetensors`, or
    // one with `….lora_a` names) is read with mlx-lm's config beside it.
    let mlx_named = detected == Some(Format::Mlx)
        || file_path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(mlx::WEIGHTS_NAME));
    if mlx_named {
        if let Some(cfg) = config_path.as_ref().filter(|p| p.exists()) {
            let text = crate::io::read_json_file(cfg)?;
            if serde_json::from_slice(&text).is_ok_and(|v| mlx::is_config(&v)) {
                return mlx::read(path, file, cfg);
            }
        }
    }
    match detected {
        Some(Format::Mlx) => Err(InputError::invalid(
            &file_path,
            format!(
                "has mlx-lm factor names (`….lora_a`) but no mlx-lm {} beside it (its lora_parameters.scale sets ΔW)",
                peft::CONFIG_NAME
            ),
        )),
        Some(Format::Kohya) => kohya::read(path, file),
        Some(Format::Peft) => {
            let cfg = config_path.filter(|p| p.exists() || meta.is_dir()).ok_or_else(|| {
                InputError::invalid(path, format!("PEFT adapter has no {} beside it", peft::CONFIG_NAME))
            })?;
            peft::read(path, file, &cfg)
        }
        None if !file.tensors().is_empty()
            && file
                .tensors()
                .iter()
                .all(|t| t.name.starts_with(kohya::BUNDLE_PREFIX)) =>
        {
            Err(InputError::invalid(
                &file_path,
                "holds only textual-inversion embeddings (`bundle_emb.…`), no LoRA tensors: load it as an embedding",
            ))
        }
        None => {
            // In a PEFT folder the config decides what the tensors are: a broken one is the
            // error to report, not the tensor names it would have explained.
            if let Some(cfg) = config_path.as_ref().filter(|p| p.is_file()) {
                let text = crate::io::read_json_file(cfg)?;
                let problem = match serde_json::from_slice::<serde_json::Value>(&text) {
                    Err(e) => Some(format!("not JSON: {e}")),
                    Ok(v) if !v.is_object() => Some("not a JSON object".to_owned()),
                    Ok(v) => match v.get("peft_type") {
                        Some(serde_json::Value::String(_)) => None,
                        None => Some("has no `peft_type` (PEFT raises KeyError on load)".to_owned()),
                        Some(other) => Some(format!("`peft_type` is {other}, not a string")),
                    },
                };
                if let Some(problem) = problem {
                    return Err(InputError::invalid(
                        cfg,
                        format!("{problem}; and its weights hold no LoRA tensors to read without it"),
                    ));
                }
            }
            Err(InputError::invalid(
                &file_path,
                "no LoRA tensors found (expected PEFT `lora_A`/`lora_B`, kohya `lora_down`/`lora_up` or LyCORIS `hada_`/`lokr_`/`diff`/`oft_blocks` names, PEFT `ia3_l`)",
            ))
        }
    }
}

/// A PEFT folder (or a file with its adapter_config.json beside it) whose weights lorakit cannot
/// read although PEFT loads it ([`peft::unread_weights`]: a tuner lorakit does not read, seeded
/// projections not saved), as an adapter of no modules: its config, its tensor file (validated
/// like any other; safetensors or PEFT's pickle), the reason. For `check`, which judges it from its config and tensor names; `None` for any
/// other input, whose reader's error stands.
pub fn open_unread(path: &Path) -> InputResult<Option<(Adapter, String)>> {
    let (weights, config) = if path.is_dir() {
        (peft_weights(path), path.join(peft::CONFIG_NAME))
    } else {
        let Some(beside) = path.parent().map(|p| p.join(peft::CONFIG_NAME)) else {
            return Ok(None);
        };
        (path.to_path_buf(), beside)
    };
    if !config.is_file() || !weights.is_file() {
        return Ok(None);
    }
    let text = crate::io::read_json_file(&config)?;
    // Not JSON: not such a folder (the reader's error stands).
    let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return Ok(None);
    };
    let Some(why) = peft::unread_weights(&cfg) else {
        return Ok(None);
    };
    let file = SafetensorsFile::open(&weights)?;
    let adapter = Adapter {
        base_model: cfg
            .get("base_model_name_or_path")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        metadata: file.header().metadata.clone(),
        config: Some(cfg),
        source: Some(file),
        ..Adapter::of_modules(Format::Peft, path.to_path_buf(), Vec::new())
    };
    Ok(Some((adapter, why)))
}

/// A PEFT folder's weights file: `adapter_model.safetensors`, or with PEFT's
/// `safe_serialization=False` (its default before 0.6) the same state dict through `torch.save`
/// (`adapter_model.bin`, read by `io::torch`) where only that one exists.
fn peft_weights(folder: &Path) -> std::path::PathBuf {
    let f = folder.join(peft::WEIGHTS_NAME);
    let pickle = folder.join(peft::PICKLE_WEIGHTS_NAME);
    if !f.exists() && pickle.exists() {
        pickle
    } else {
        f
    }
}

/// Guesses the format from tensor names.
pub fn detect(file: &SafetensorsFile) -> Option<Format> {
    let names = || file.tensors().iter().map(|t| t.name.as_str());
    // kohya-named files: sd-scripts LoRA and every LyCORIS algorithm (recognised ones that
    // lorakit does not apply are detected too, so the reader refuses them by name).
    let named = |want: fn(lycoris::Naming) -> bool| {
        names().any(|n| {
            lycoris::split_key(n).is_some_and(|(_, role, naming)| role != "alpha" && want(naming))
        })
    };
    // ComfyUI's `{module}.set_weight` (`comfy/lora.py` `load_lora`), which a file may hold alone.
    if named(|n| n == lycoris::Naming::Kohya)
        || names().any(|n| lycoris::unsupported(n).is_some() || n.ends_with(".set_weight"))
    {
        return Some(Format::Kohya);
    }
    if names().any(|n| {
        n.contains(".lora_A.")
            || n.contains(".lora_B.")
            || n.ends_with(".lora_embedding_A")
            || n.ends_with(".lora_A")
            || n.ends_with(".ia3_l")
            || n.ends_with(".oft_R.weight")
            || peft::tuner_tensor(n)
    }) {
        return Some(Format::Peft);
    }
    if names().any(mlx::is_factor_name) {
        return Some(Format::Mlx);
    }
    // diffusers' other spellings (`.lora.up.weight`, `_lora.up.weight`, `.lora_linear_layer.…`).
    if named(|_| true) {
        return Some(Format::Kohya);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each format's name is its JSON spelling (serde's), and no two formats share one.
    #[test]
    fn names_are_the_json_spellings() {
        for f in Format::ALL {
            let json = serde_json::to_value(f).unwrap();
            assert_eq!(json, serde_json::Value::String(f.to_string()));
            let back: Format = serde_json::from_value(json).unwrap();
            assert_eq!(back, *f);
        }
        let mut names: Vec<_> = Format::ALL.iter().map(|f| f.layout().name()).collect();
        names.dedup();
        assert_eq!(names.len(), Format::ALL.len());
    }
}
