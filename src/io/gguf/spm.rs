//! The vocabulary llama.cpp's converter takes from a SentencePiece `tokenizer.model`
//! (`ModelBase._create_vocab_sentencepiece`, `conversion/base.py` of the llama.cpp tree
//! vendored by llama-cpp-python 0.3.36): `vocab_size` slots (config.json, else the model's
//! piece count) starting as `[PAD{i}]` / -10000 / UNUSED, the model's pieces with their scores
//! and types (UNKNOWN, CONTROL, UNUSED, BYTE, everything else NORMAL — user-defined pieces
//! included, as `SentencePieceProcessor.Is*` classify them), then `added_tokens.json`
//! (USER_DEFINED, -1000) and tokenizer_config.json's `added_tokens_decoder` (CONTROL when
//! `special` or `does_token_look_special`, else USER_DEFINED with `▁` turned into spaces;
//! -1000), ids outside `vocab_size` ignored.
//!
//! The model file is a protobuf `ModelProto` (sentencepiece `sentencepiece_model.proto`):
//! field 1 repeated `SentencePiece { piece = 1 (string), score = 2 (float), type = 3 (enum,
//! NORMAL = 1 by default) }`; other fields are skipped. Must not write files.

use super::tokens::{Tokens, BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED};
use crate::error::{InputError, InputResult};
use serde_json::Value as Json;
use std::path::Path;

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let x = *b.get(*i)?;
        *i += 1;
        v |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `(field, wire type, payload)` of each field of a message; `None` if malformed.
fn fields(b: &[u8]) -> Option<Vec<(u64, u64, &[u8])>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (field, wire) = (key >> 3, key & 7);
        let start = i;
        match wire {
            0 => {
                varint(b, &mut i)?;
            }
            1 => i += 8,
            2 => {
                let n = usize::try_from(varint(b, &mut i)?).ok()?;
                let s = i;
                i = i.checked_add(n)?;
                out.push((field, wire, b.get(s..i)?));
                continue;
            }
            5 => i += 4,
            _ => return None,
        }
        out.push((field, wire, b.get(start..i)?));
    }
    (i == b.len()).then_some(out)
}

/// `(piece, score, type)` of every piece of a `ModelProto`.
fn pieces(b: &[u8]) -> Option<Vec<(String, f32, i32)>> {
    let mut v = Vec::new();
    for (f, w, p) in fields(b)? {
        if f != 1 || w != 2 {
            continue;
        }
        let (mut piece, mut score, mut ty) = (None, 0f32, NORMAL);
        for (g, w, q) in fields(p)? {
            match (g, w) {
                (1, 2) => piece = Some(String::from_utf8(q.to_vec()).ok()?),
                (2, 5) => score = f32::from_le_bytes(q.try_into().ok()?),
                (3, 0) => ty = i32::try_from(varint(q, &mut 0)?).ok()?,
                _ => {}
            }
        }
        v.push((piece?, score, ty));
    }
    Some(v)
}

/// `does_token_look_special` (conversion/base.py).
fn looks_special(t: &str) -> bool {
    ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].contains(&t)
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// The tokens, scores and types of `path` (see the module header).
pub fn tokens(
    path: &Path,
    vocab_size: Option<u64>,
    added_tokens: &Path,
    tc: Option<&Json>,
) -> InputResult<Tokens> {
    let bytes = crate::io::read_whole_file(path)?;
    let ps = pieces(&bytes).ok_or_else(|| {
        InputError::invalid(path, "not a SentencePiece model (malformed protobuf)")
    })?;
    let n = vocab_size.map_or(ps.len(), |v| v as usize);
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000f32; n];
    let mut types = vec![UNUSED; n];
    for (id, (p, s, t)) in ps.into_iter().enumerate().take(n) {
        tokens[id] = p;
        scores[id] = s;
        types[id] = match t {
            UNKNOWN | CONTROL | UNUSED | BYTE => t,
            _ => NORMAL,
        };
    }
    if added_tokens.is_file() {
        let j: Json = serde_json::from_slice(&crate::io::read_json_file(added_tokens)?)
            .map_err(|e| InputError::invalid(added_tokens, format!("not JSON: {e}")))?;
        for (k, v) in j.as_object().into_iter().flatten() {
            let Some(id) = v.as_u64().map(|i| i as usize).filter(|&i| i < n) else {
                continue;
            };
            tokens[id] = k.clone();
            scores[id] = -1000.0;
            types[id] = USER_DEFINED;
        }
    }
    if let Some(dec) = tc.and_then(|c| c["added_tokens_decoder"].as_object()) {
        for (k, d) in dec {
            let Some(id) = k.parse::<usize>().ok().filter(|&i| i < n) else {
                continue;
            };
            let Some(t) = d["content"].as_str() else {
                continue;
            };
            let special = d["special"].as_bool() == Some(true) || looks_special(t);
            (tokens[id], types[id]) = if special {
                (t.to_owned(), CONTROL)
            } else {
                (t.replace('\u{2581}', " "), USER_DEFINED)
            };
            scores[id] = -1000.0;
        }
    }
    Ok((tokens, scores, types))
}
