//! The GPT-2 style byte-level BPE vocabulary (`tokenizer.ggml.model = gpt2`) llama.cpp's
//! `convert_hf_to_gguf.py` writes from a Hugging Face `tokenizer.json` (Qwen2, Llama 3, …).
//!
//! Ported from the llama.cpp tree vendored by llama-cpp-python 0.3.36, `conversion/base.py`:
//! `TextModel.get_vocab_base` (tokens by id up to config.json's `vocab_size`, `[PAD{i}]` /
//! `UNUSED` for ids no token has; added tokens `CONTROL` when special or when
//! `does_token_look_special`, else `USER_DEFINED` with `▁` turned into a space; added tokens
//! that are not `normalized` replaced by `decode(encode(token))`), and
//! `TextModel.get_vocab_base_pre`: the pre-tokenizer's name is looked up by the sha256 of
//! `str(tokenizer.encode(chktxt))` in the table the script ships ([`super::pre_table`]).
//! That hash is computed here exactly as the script does — the tokenizer.json loaded by the
//! Hugging Face `tokenizers` crate (the library transformers' fast tokenizers wrap), the text
//! encoded with special tokens, the ids printed as Python prints a list — rather than
//! recognising the pre-tokenizer's configuration: the hash also depends on the vocabulary and
//! merges, and the script names only hashes it lists, so only the same computation gives the
//! same answer (and the same refusal) on every tokenizer. gguf-py `vocab.py`
//! (`SpecialVocab._try_load_from_tokenizer_json`) for the merges.
//!
//! An unknown hash is refused as the script refuses it, naming tokenizer.json and the hash,
//! unless the caller names the pre-tokenizer (what a user of the script does by adding the
//! hash to `convert_hf_to_gguf_update.py`). Must not read weights or write files.

use super::tokens::{Tokens, CONTROL, NORMAL, UNUSED, USER_DEFINED};
use crate::error::{InputError, InputResult, Opt};
use serde_json::Value as Json;
use std::path::Path;

/// `TextModel.does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

fn load(tj_path: &Path) -> InputResult<tokenizers::Tokenizer> {
    let bytes = crate::io::read_json_file(tj_path)?;
    tokenizers::Tokenizer::from_bytes(&bytes)
        .map_err(|e| InputError::invalid(tj_path, format!("not a tokenizers tokenizer.json: {e}")))
}

/// The GPT-2 vocabulary of the `tokenizer.json` at `tj_path`: tokens, scores
/// (none: empty) and token types, and the `tokenizer.ggml.pre` name. `pre` names the
/// pre-tokenizer when the script's table does not know its hash.
pub fn tokens(
    tj_path: &Path,
    vocab_size: Option<u64>,
    pre: Option<&str>,
) -> InputResult<(Tokens, String)> {
    let tok = load(tj_path)?;
    let bad = |m: String| InputError::invalid(tj_path, m);
    let enc = |text: &str, special: bool| {
        tok.encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| bad(format!("encoding {text:?} fails: {e}")))
    };
    // get_vocab_base_pre: sha256 of Python's str() of the id list.
    let ids = enc(super::pre_table::CHKTXT, true)?;
    let text = format!(
        "[{}]",
        ids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let hash = hex(&sha256(text.as_bytes()));
    let known = super::pre_table::HASHES
        .iter()
        .rev()
        .find(|(h, _)| *h == hash)
        .map(|&(_, n)| n);
    let name = match (known, pre) {
        (Some(k), Some(p)) if k != p => {
            return Err(bad(format!(
                "pre-tokenizer hash {hash} is llama.cpp's `{k}`, not the `{p}` asked for"
            )))
        }
        (Some(k), _) => k.to_owned(),
        (None, Some(p)) => p.to_owned(),
        (None, None) => {
            return Err(InputError::option(tj_path, move |o| {
                format!(
                    "BPE pre-tokenizer not recognized (chkhsh {hash}): llama.cpp's convert_hf_to_gguf.py refuses it too; name it with {} if you know which llama.cpp pre-tokenizer it is",
                    o.opt(Opt::GgufTokenizerPre)
                )
            }))
        }
    };
    let vocab = tok.get_vocab(true);
    let n = vocab_size.unwrap_or(vocab.len() as u64);
    if let Some((t, &id)) = vocab.iter().find(|(_, &id)| u64::from(id) >= n) {
        return Err(bad(format!(
            "token {t:?} has id {id}, not below config.json's vocab_size {n}"
        )));
    }
    let mut by_id = vec![None; n as usize];
    for (t, &id) in &vocab {
        by_id[id as usize] = Some(t.clone());
    }
    let added = tok.get_added_tokens_decoder();
    let mut tokens = Vec::with_capacity(by_id.len());
    let mut types = Vec::with_capacity(by_id.len());
    for (i, t) in by_id.into_iter().enumerate() {
        let Some(mut t) = t else {
            tokens.push(format!("[PAD{i}]"));
            types.push(UNUSED);
            continue;
        };
        match added.get(&(i as u32)).filter(|a| a.content == t) {
            None => types.push(NORMAL),
            Some(a) => {
                if !a.normalized {
                    let ids = enc(&t, false)?;
                    t = tok
                        .decode(&ids, false)
                        .map_err(|e| bad(format!("decoding {t:?} fails: {e}")))?;
                }
                if a.special || looks_special(&t) {
                    types.push(CONTROL);
                } else {
                    t = t.replace('\u{2581}', " ");
                    types.push(USER_DEFINED);
                }
            }
        }
        tokens.push(t);
    }
    Ok(((tokens, Vec::new(), types), name))
}

/// `SpecialVocab` merges from tokenizer.json's `model.merges`: `"a b"` strings as they are,
/// `[a, b]` pairs joined by a space with spaces inside them written as U+0120.
pub fn merges(tj: &Json, tj_path: &Path) -> InputResult<Vec<String>> {
    let Some(list) = tj["model"]["merges"].as_array().filter(|l| !l.is_empty()) else {
        return Ok(Vec::new());
    };
    let bad = || InputError::invalid(tj_path, "model.merges: unknown tokenizer merges format");
    if list[0].is_string() {
        return list
            .iter()
            .map(|m| m.as_str().map(str::to_owned).ok_or_else(bad))
            .collect();
    }
    list.iter()
        .map(|m| {
            let pair = m.as_array().filter(|p| p.len() == 2).ok_or_else(bad)?;
            let part = |v: &Json| {
                v.as_str()
                    .map(|s| s.replace(' ', "\u{120}"))
                    .ok_or_else(bad)
            };
            Ok(format!("{} {}", part(&pair[0])?, part(&pair[1])?))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256 (FIPS 180-4), for the pre-tokenizer hash only.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digests printed by Python's `hashlib.sha256(...).hexdigest()` (3.11): empty input, a
    /// short one, and one that needs a second padding block (56 bytes).
    #[test]
    fn sha256_equals_hashlib() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"[1, 2, 3]")),
            "a36b1f2c3f84522dd1005145646617d7054c0851e97c72a039c0bdfac9fa07f3"
        );
        assert_eq!(
            hex(&sha256(&[b'x'; 56])),
            "04c26261370ee7541549d16dee320c723e3fd14671e66a099afe0a377c16888e"
        );
    }
}
