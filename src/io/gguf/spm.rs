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
//! Phi-3 ([`Added::Phi3`]: `Phi3MiniModel.set_vocab`, `conversion/phi.py`, its own copy of that
//! loop) differs in the added tokens only: `added_tokens_decoder` and then tokenizer.json's
//! `added_tokens`, each token as written (no `▁` replaced), CONTROL when its `special` is
//! truthy and USER_DEFINED otherwise (`does_token_look_special` is not consulted), -1000; an id
//! outside `vocab_size` is an IndexError there and refused here.
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

/// Which converter's rules for the tokens added on top of the SentencePiece pieces.
#[derive(Debug, Clone, Copy)]
pub enum Added<'a> {
    /// `ModelBase._create_vocab_sentencepiece`.
    Base,
    /// `Phi3MiniModel.set_vocab`: tokenizer_config.json's path (for errors) and tokenizer.json
    /// with its path, if the folder has one.
    Phi3 {
        tc_path: &'a Path,
        tokenizer_json: Option<(&'a Json, &'a Path)>,
    },
}

/// Python truthiness of a JSON value (`if foken_data.get("special"):`).
fn py_truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64() != Some(0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
    }
}

/// `Phi3MiniModel.set_vocab`'s overwrite of one added token.
fn phi3_added(
    t: &mut Tokens,
    id: Option<usize>,
    d: &Json,
    file: &Path,
    what: &str,
) -> InputResult<()> {
    let n = t.0.len();
    let id = id.filter(|&i| i < n).ok_or_else(|| {
        InputError::invalid(
            file,
            format!("{what}: id outside the {n} tokens of config.json's vocab_size (llama.cpp's Phi-3 converter fails with IndexError)"),
        )
    })?;
    let content = d["content"]
        .as_str()
        .ok_or_else(|| InputError::invalid(file, format!("{what}: no string `content`")))?;
    t.0[id] = content.to_owned();
    t.1[id] = -1000.0;
    t.2[id] = if d.get("special").is_some_and(py_truthy) {
        CONTROL
    } else {
        USER_DEFINED
    };
    Ok(())
}

/// The tokens, scores and types of `path` (see the module header).
pub fn tokens(
    path: &Path,
    vocab_size: Option<u64>,
    added_tokens: &Path,
    tc: Option<&Json>,
    rules: Added,
) -> InputResult<Tokens> {
    let bytes = crate::io::read_whole_file(path)?;
    let ps = pieces(&bytes).ok_or_else(|| {
        InputError::invalid(path, "not a SentencePiece model (malformed protobuf)")
    })?;
    let n = vocab_size.map_or(ps.len(), |v| v as usize);
    if matches!(rules, Added::Phi3 { .. }) && ps.len() > n {
        return Err(InputError::invalid(
            path,
            format!("{} pieces, more than config.json's vocab_size {n} (llama.cpp's Phi-3 converter fails with IndexError)", ps.len()),
        ));
    }
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
    if let Added::Phi3 {
        tc_path,
        tokenizer_json,
    } = rules
    {
        let mut t = (tokens, scores, types);
        for (k, d) in tc
            .and_then(|c| c["added_tokens_decoder"].as_object())
            .into_iter()
            .flatten()
        {
            let what = format!("added_tokens_decoder entry `{k}`");
            phi3_added(&mut t, k.parse().ok(), d, tc_path, &what)?;
        }
        if let Some((tj, tj_path)) = tokenizer_json {
            for d in tj["added_tokens"].as_array().into_iter().flatten() {
                let what = format!("added token {}", d["content"]);
                let id = d["id"].as_u64().and_then(|i| usize::try_from(i).ok());
                phi3_added(&mut t, id, d, tj_path, &what)?;
            }
        }
        return Ok(t);
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
