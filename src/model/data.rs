//! Inputs of `eval` and `train`: token ids from a safetensors file, or text (plain or JSONL)
//! through a tokenizer.
//!
//! * `*.safetensors`: an integer tensor `input_ids` (`I64` or `I32`, shape `[batch, seq]` or
//!   `[seq]`), used as they are.
//! * `*.jsonl`: one JSON object per line with a string `"text"`; each record is encoded with the
//!   tokenizer's special tokens (BOS for Llama) and followed by the EOS id from `config.json`.
//! * anything else: plain UTF-8 text, encoded as one document (BOS added, no EOS).
//!
//! Must not tokenize by itself: text goes through [`super::tokenizer`].

use super::tokenizer::TextTokenizer;
use crate::dtype::Dtype;
use crate::error::InputError;
use crate::io::SafetensorsFile;
use anyhow::Result;
use std::path::Path;

/// Token ids as `rows` sequences of `cols` (row-major).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRows {
    pub ids: Vec<u32>,
    pub rows: usize,
    pub cols: usize,
}

/// Reads `input_ids` from a safetensors file.
pub fn read_input_ids(path: &Path) -> Result<TokenRows> {
    let f = SafetensorsFile::open(path)?;
    let v = f.view("input_ids")?;
    let bad = |m: String| anyhow::Error::new(InputError::invalid(path, m));
    let (rows, cols) = match v.shape {
        [r, c] => (*r, *c),
        [c] => (1, *c),
        s => {
            return Err(bad(format!(
                "tensor `input_ids`: shape {s:?}, expected [batch, seq]"
            )))
        }
    };
    let vals: Vec<i64> = match v.dtype {
        Dtype::I64 => v
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        Dtype::I32 => v
            .data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
            .collect(),
        d => {
            return Err(bad(format!(
                "tensor `input_ids`: dtype {}, expected I64 or I32",
                crate::dtype::name(d)
            )))
        }
    };
    if rows == 0 || cols == 0 {
        return Err(bad("tensor `input_ids` is empty".into()));
    }
    let mut ids = Vec::with_capacity(vals.len());
    for (i, &x) in vals.iter().enumerate() {
        if !(0..u32::MAX as i64).contains(&x) {
            return Err(bad(format!(
                "tensor `input_ids`: value {x} at flat index {i} is not a token id"
            )));
        }
        ids.push(x as u32);
    }
    Ok(TokenRows { ids, rows, cols })
}

/// Documents of a text file: JSONL records' `"text"` (by extension `.jsonl`), else the whole
/// file. Returns the texts and whether the file was JSONL.
pub fn read_documents(path: &Path) -> Result<(Vec<String>, bool)> {
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut crate::io::open_regular(path)?, &mut text)
        .map_err(|e| InputError::io(path, e))?;
    let text = String::from_utf8(text)
        .map_err(|e| InputError::invalid(path, format!("not UTF-8 text: {e}")))?;
    let jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    if !jsonl {
        return Ok((vec![text], false));
    }
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| InputError::invalid(path, format!("line {}: not JSON: {e}", i + 1)))?;
        match v.get("text").and_then(|t| t.as_str()) {
            Some(t) => docs.push(t.to_owned()),
            None => {
                return Err(InputError::invalid(
                    path,
                    format!("line {}: no string field `text`", i + 1),
                )
                .into())
            }
        }
    }
    Ok((docs, true))
}

/// One token stream from a data file: safetensors `input_ids` rows concatenated, or text
/// encoded as described in the module docs.
pub fn token_stream(
    path: &Path,
    tok: Option<&TextTokenizer>,
    eos: Option<u32>,
) -> Result<Vec<u32>> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    {
        return Ok(read_input_ids(path)?.ids);
    }
    let tok =
        tok.ok_or_else(|| anyhow::anyhow!("{}: text data needs a tokenizer", path.display()))?;
    let (docs, jsonl) = read_documents(path)?;
    let mut ids = Vec::new();
    for d in &docs {
        ids.extend(tok.encode(d, true)?);
        if jsonl {
            if let Some(e) = eos {
                ids.push(e);
            }
        }
    }
    Ok(ids)
}
