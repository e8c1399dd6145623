//! Text to token ids: a Hugging Face `tokenizer.json` (the `tokenizers` crate, pure Rust), or raw
//! UTF-8 bytes as ids for models without a tokenizer (`--tokenizer bytes`; every byte must be
//! below the vocabulary size).
//!
//! Must not reach the network: a tokenizer is a local file or the byte fallback.

use crate::error::{InputError, Opt};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// A tokenizer for `eval` and `train`.
pub enum TextTokenizer {
    /// The tokenizer and the file it was read from (named by errors it causes).
    Hf(Box<tokenizers::Tokenizer>, PathBuf),
    /// Byte `b` is token `b`; nothing is added.
    Bytes,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextTokenizer::Hf(..) => write!(f, "TextTokenizer::Hf"),
            TextTokenizer::Bytes => write!(f, "TextTokenizer::Bytes"),
        }
    }
}

impl TextTokenizer {
    /// `spec`: `bytes`, a `tokenizer.json` file, or a folder holding one; `None` looks for
    /// `tokenizer.json` in the model folder.
    pub fn resolve(model_folder: &Path, spec: Option<&str>) -> Result<TextTokenizer> {
        let path = match spec {
            Some("bytes") => return Ok(TextTokenizer::Bytes),
            Some(p) => {
                let p = Path::new(p);
                if p.is_dir() {
                    p.join("tokenizer.json")
                } else {
                    p.to_path_buf()
                }
            }
            None => {
                let p = model_folder.join("tokenizer.json");
                if !p.exists() {
                    anyhow::bail!(InputError::option(model_folder, |o| format!(
                        "no tokenizer.json in the model folder; pass {}, {}, or token ids ({})",
                        o.set(Opt::Tokenizer, "FILE"),
                        o.set(Opt::Tokenizer, "bytes"),
                        o.opt(Opt::InputIds)
                    )));
                }
                p
            }
        };
        let bytes = crate::io::read_json_file(&path)?;
        let tok = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            anyhow::Error::new(InputError::invalid(
                &path,
                format!("cannot load tokenizer: {e}"),
            ))
        })?;
        Ok(TextTokenizer::Hf(Box::new(tok), path))
    }

    /// Token ids of `text`; `add_special` adds what the tokenizer's post-processor adds (a BOS
    /// token for Llama tokenizers), as transformers does by default.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        match self {
            TextTokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            TextTokenizer::Hf(t, path) => Ok(t
                .encode(text, add_special)
                .map_err(|e| InputError::invalid(path, format!("cannot encode text: {e}")))?
                .get_ids()
                .to_vec()),
        }
    }

    /// Text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            TextTokenizer::Bytes => {
                let b: Vec<u8> = ids.iter().map(|&i| i.min(255) as u8).collect();
                String::from_utf8_lossy(&b).into_owned()
            }
            TextTokenizer::Hf(t, _) => t.decode(ids, true).unwrap_or_default(),
        }
    }

    /// `bytes` or `tokenizer.json (vocab N)`.
    pub fn describe(&self) -> String {
        match self {
            TextTokenizer::Bytes => "bytes".into(),
            TextTokenizer::Hf(t, _) => format!("tokenizer.json (vocab {})", t.get_vocab_size(true)),
        }
    }

    /// The `tokenizer.json` file read, if any.
    pub fn file(&self) -> Option<&Path> {
        match self {
            TextTokenizer::Bytes => None,
            TextTokenizer::Hf(_, path) => Some(path),
        }
    }
}
