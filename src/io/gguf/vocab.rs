//! The `tokenizer.*` metadata llama.cpp's `convert_hf_to_gguf.py` writes for a Hugging Face
//! Llama, Qwen2/Qwen3, Gemma or Gemma2 tokenizer (`GemmaModel` / `Gemma2Model.set_vocab`,
//! `conversion/gemma.py`: the SentencePiece path, Gemma's eot id 107, then `add_space_prefix`
//! false), from `tokenizer.json`,
//! `tokenizer_config.json` and `config.json`.
//!
//! Ported from the llama.cpp tree vendored by llama-cpp-python 0.3.36: `conversion/llama.py`
//! (`LlamaModel.set_vocab`: `add_prefix_space` → `tokenizer.ggml.add_space_prefix`, then
//! `_set_vocab_sentencepiece`, falling back to `_set_vocab_llama_hf`), `conversion/base.py`
//! (`_set_vocab_llama_hf`: model `llama`, pre `default`, tokens, scores, token types, then
//! `SpecialVocab(n_vocab=len(tokens))`) and `gguf-py/gguf/vocab.py` (`LlamaHfVocab`,
//! `SpecialVocab`: special token ids from tokenizer_config's `*_token` entries looked up in
//! tokenizer.json's `added_tokens`, then config.json's `*_token_id`; `add_*_token` from the
//! post-processor and tokenizer_config; the chat template; normalizer flags).
//!
//! Covered: a SentencePiece `tokenizer.model` (`_set_vocab_sentencepiece`, read by
//! [`super::spm`]); for Llama without one, the tokenizer kind `LlamaHfVocab` converts — a `BPE`
//! model with `byte_fallback` and a `Sequence` decoder in tokenizer.json; every other
//! tokenizer.json (Llama 3, and Qwen2 always) as the GPT-2 vocabulary of `_set_vocab_gpt2`
//! ([`super::bpe`]: model `gpt2`, the pre-tokenizer named by its hash, no scores, then
//! `SpecialVocab(load_merges=True)`: the merges before the special ids). Phi-3
//! (`Phi3MiniModel.set_vocab`, `conversion/phi.py`): tokenizer_config.json's `tokenizer_class`
//! GPT2Tokenizer (Phi-4) takes that GPT-2 path, anything else the SentencePiece one with Phi-3's
//! own added-token rules (`spm::Added::Phi3`), no `add_space_prefix`. Refused, naming
//! the file: chat templates given as lists.
//!
//! Special ids (`CONTROL` token type) are those transformers' `all_special_ids` gives for such
//! a tokenizer: the tokens tokenizer_config.json names as `bos`/`eos`/`unk`/`sep`/`pad`/`cls`/
//! `mask` token and its `additional_special_tokens`.
//!
//! Must not guess: a tokenizer kind the converter would handle otherwise, or a setting it would take
//! from elsewhere, is refused naming the file, never written one way.

use super::tokens::*;
use super::writer::{kv_bool, kv_f32s, kv_i32s, kv_string, kv_strings, kv_u32};
use crate::error::{InputError, InputResult};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::Path;

/// `SpecialVocab.special_token_types` (default) and the GGUF key of each id (`add_*_token_id`
/// handlers of `GGUFWriter`; `cls` has none and is skipped, as gguf-py does with a warning).
const TYPES: &[&str] = &["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

fn id_key(typ: &str) -> Option<&'static str> {
    Some(match typ {
        "bos" => "tokenizer.ggml.bos_token_id",
        "eos" => "tokenizer.ggml.eos_token_id",
        "unk" => "tokenizer.ggml.unknown_token_id",
        "sep" => "tokenizer.ggml.seperator_token_id",
        "pad" => "tokenizer.ggml.padding_token_id",
        "mask" => "tokenizer.ggml.mask_token_id",
        "eot" => "tokenizer.ggml.eot_token_id",
        "eom" => "tokenizer.ggml.eom_token_id",
        _ => return None,
    })
}

fn add_key(typ: &str) -> Option<&'static str> {
    Some(match typ {
        "bos" => "tokenizer.ggml.add_bos_token",
        "eos" => "tokenizer.ggml.add_eos_token",
        "sep" => "tokenizer.ggml.add_sep_token",
        _ => return None,
    })
}

fn read_json(path: &Path) -> InputResult<Json> {
    let bytes = crate::io::read_json_file(path)?;
    serde_json::from_slice(&bytes).map_err(|e| InputError::invalid(path, format!("not JSON: {e}")))
}

fn read_opt(path: &Path) -> InputResult<Option<Json>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// The content of a `*_token` entry (a string or `{"content": …}`).
fn token_content(v: Option<&Json>) -> Option<&str> {
    match v? {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// Python truthiness of a JSON value (`if special_bos:`).
fn truthy(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|s| !s.is_empty())
}

/// `tokenizer.ggml.model`, `.pre`, the tokens, their scores (SentencePiece and LlamaHfVocab
/// only) and types.
fn push_model(out: &mut Vec<Vec<u8>>, model: &str, pre: &str, t: &Tokens) {
    out.push(kv_string("tokenizer.ggml.model", model));
    out.push(kv_string("tokenizer.ggml.pre", pre));
    out.push(kv_strings("tokenizer.ggml.tokens", &t.0));
    if !t.1.is_empty() {
        out.push(kv_f32s("tokenizer.ggml.scores", &t.1));
    }
    out.push(kv_i32s("tokenizer.ggml.token_type", &t.2));
}

/// The `tokenizer.*` entries (raw GGUF key/values) for the Hugging Face folder `dir` of a
/// model of GGUF architecture `arch`, in the order convert_hf_to_gguf.py writes them; `pre`
/// names a BPE pre-tokenizer whose hash llama.cpp's table lacks ([`super::bpe`]).
pub fn entries(dir: &Path, arch: &str, pre: Option<&str>) -> InputResult<Vec<Vec<u8>>> {
    let tj_path = dir.join("tokenizer.json");
    let tc_path = dir.join("tokenizer_config.json");
    let mut tc = read_opt(&tc_path)?;
    let config = read_opt(&dir.join("config.json"))?;
    let tj = read_opt(&tj_path)?;
    let vocab_size = config.as_ref().and_then(|c| c["vocab_size"].as_u64());
    if let Some(n @ (32016 | 49152)) = vocab_size.filter(|_| arch == "llama") {
        // LlamaModel.set_vocab: CodeLlama's FIM tokens, granite's add_bos_token.
        return Err(InputError::invalid(
            dir.join("config.json"),
            format!("vocab_size {n}: llama.cpp's converter special-cases this vocabulary (CodeLlama / Granite), which lorakit does not yet write"),
        ));
    }
    let spm_path = dir.join("tokenizer.model");
    let gemma = arch == "gemma" || arch == "gemma2" || arch == "gemma3";
    if gemma && !spm_path.is_file() {
        // GemmaModel / Gemma2Model.set_vocab (conversion/gemma.py): _set_vocab_sentencepiece,
        // no fallback. Gemma3Model falls back to _set_vocab_gpt2 and trims token_embd to that
        // vocabulary, which lorakit does not write yet.
        return Err(InputError::invalid(
            dir,
            "no tokenizer.model: lorakit writes Gemma models with a SentencePiece tokenizer only (llama.cpp's Gemma and Gemma2 converters read nothing else)",
        ));
    }
    if arch == "gemma" {
        // GemmaModel.set_vocab's second SpecialVocab: eot at 107 unless the files name one
        // (which that SpecialVocab would take instead; not emulated).
        let named = config
            .as_ref()
            .is_some_and(|c| !c["eot_token_id"].is_null())
            || tc.as_ref().is_some_and(|c| !c["eot_token"].is_null());
        if named {
            return Err(InputError::invalid(
                dir,
                "an eot token in config.json / tokenizer_config.json: llama.cpp's Gemma converter then reads it where lorakit writes id 107; not yet written",
            ));
        }
    }
    let mut out = Vec::new();
    if arch == "llama" {
        if let Some(b) = tc.as_ref().and_then(|c| c["add_prefix_space"].as_bool()) {
            out.push(kv_bool("tokenizer.ggml.add_space_prefix", b));
        }
    }
    // Phi-4 (a GPT2Tokenizer): Phi3MiniModel's _set_vocab_gpt2, whatever else is there.
    let phi4 = arch == "phi3" && phi3_vocab_kind(tc.as_ref(), &tc_path, &spm_path)?;
    let mut merges = Vec::new();
    // _set_vocab_gpt2's SpecialVocab has no n_vocab: no id is out of range there.
    let mut gpt2 = false;
    let (tokens, _, _) = if spm_path.is_file() && !phi4 {
        let rules = match arch {
            "phi3" => super::spm::Added::Phi3 {
                tc_path: &tc_path,
                tokenizer_json: tj.as_ref().map(|j| (j, tj_path.as_path())),
            },
            _ => super::spm::Added::Base,
        };
        let t = super::spm::tokens(
            &spm_path,
            vocab_size,
            &dir.join("added_tokens.json"),
            tc.as_ref(),
            rules,
        )?;
        push_model(&mut out, "llama", "default", &t);
        t
    } else {
        let Some(tj) = &tj else {
            return Err(InputError::invalid(
                dir,
                "no tokenizer.json or tokenizer.model: a GGUF model needs the tokenizer (tokenizer.ggml.*)",
            ));
        };
        // LlamaModel.set_vocab: LlamaHfVocab where it applies, else (as Qwen2Model always)
        // _set_vocab_gpt2, which loads the merges.
        if arch == "llama" && is_llama_hf(tj) {
            let t = llama_hf_tokens(tj, &tj_path, tc.as_ref())?;
            push_model(&mut out, "llama", "default", &t);
            t
        } else {
            let (t, name) = super::bpe::tokens(&tj_path, vocab_size, pre)?;
            push_model(&mut out, "gpt2", &name, &t);
            merges = super::bpe::merges(tj, &tj_path)?;
            gpt2 = true;
            t
        }
    };
    let n_vocab = if gpt2 { u64::MAX } else { tokens.len() as u64 };
    let tj = tj.unwrap_or(Json::Null);
    let added = added_tokens(&tj);
    if !merges.is_empty() {
        out.push(kv_strings("tokenizer.ggml.merges", &merges));
    }

    // SpecialVocab (its merges are above).
    let mut lowercase = None;
    let mut strip_accents = None;
    if let Some(n) = tj.get("normalizer").filter(|n| !n.is_null()) {
        parse_normalizer(n, &mut lowercase, &mut strip_accents);
    }
    let mut types_list: Vec<String> = TYPES.iter().map(|s| s.to_string()).collect();
    let mut add: Vec<(String, bool)> = Vec::new();
    let set_add = |add: &mut Vec<(String, bool)>, typ: &str, v: bool, default: bool| match add
        .iter_mut()
        .find(|(t, _)| t == typ)
    {
        Some(e) if !default => e.1 = v,
        Some(_) => {}
        None => add.push((typ.to_owned(), v)),
    };
    let get = |tc: &Option<Json>, k: &str| -> Option<String> {
        tc.as_ref()
            .and_then(|c| token_content(c.get(k)))
            .map(str::to_owned)
    };
    let set = |tc: &mut Option<Json>, k: &str, v: &Option<String>| {
        if let Some(Json::Object(o)) = tc.as_mut() {
            o.insert(k.to_owned(), v.clone().map_or(Json::Null, Json::String));
        }
    };
    let has_tc = |tc: &Option<Json>| {
        tc.as_ref()
            .is_some_and(|c| c.as_object().is_some_and(|o| !o.is_empty()))
    };
    let mut sbos = get(&tc, "bos_token");
    let mut scls = get(&tc, "cls_token");
    let mut seos = get(&tc, "eos_token");
    let mut ssep = get(&tc, "sep_token");
    let has_tj = !tj.is_null();
    if has_tj && !truthy(&sbos) && truthy(&scls) && has_tc(&tc) {
        sbos = scls.clone();
        set(&mut tc, "bos_token", &sbos);
    }
    if has_tj && !truthy(&seos) && truthy(&ssep) && has_tc(&tc) {
        seos = ssep.clone();
        set(&mut tc, "eos_token", &seos);
    }
    if let Some(pp) = tj.get("post_processor").filter(|p| !p.is_null()) {
        let procs: Vec<&Json> = match pp["processors"].as_array() {
            Some(a) => a.iter().collect(),
            None => vec![pp],
        };
        for p in procs {
            match p["type"].as_str() {
                Some("ByteLevel") => {
                    set_add(&mut add, "bos", false, true);
                    set_add(&mut add, "eos", false, true);
                }
                Some("RobertaProcessing") => {
                    for t in ["bos", "eos", "sep"] {
                        set_add(&mut add, t, true, false);
                    }
                    if !truthy(&scls) && has_tc(&tc) {
                        scls = p["cls"][0].as_str().map(str::to_owned).or(sbos.clone());
                        set(&mut tc, "cls_token", &scls);
                    }
                    if !truthy(&ssep) && has_tc(&tc) {
                        ssep = p["sep"][0].as_str().map(str::to_owned).or(seos.clone());
                        set(&mut tc, "sep_token", &ssep);
                    }
                }
                Some("TemplateProcessing") => {
                    let single = p["single"].as_array().cloned().unwrap_or_default();
                    let pair = p["pair"].as_array().cloned().unwrap_or_default();
                    let special = |v: &Json| v["SpecialToken"]["id"].as_str().map(str::to_owned);
                    let mut first = None;
                    let mut last = None;
                    if single.len() > 1 {
                        first = special(&single[0]).filter(|s| !s.is_empty());
                        if let Some(f) = &first {
                            let f = Some(f.clone());
                            if !has_tc(&tc) {
                                sbos = f.clone();
                            } else if f != sbos && f != scls {
                                if !truthy(&sbos) {
                                    sbos = f.clone();
                                    set(&mut tc, "bos_token", &sbos);
                                }
                                if !truthy(&scls) {
                                    scls = f.clone();
                                    set(&mut tc, "cls_token", &scls);
                                }
                            }
                            set_add(&mut add, "bos", f == sbos || f == scls, false);
                        }
                        last = special(&single[single.len() - 1]).filter(|s| !s.is_empty());
                        if let Some(l) = &last {
                            let l = Some(l.clone());
                            if !has_tc(&tc) {
                                seos = l.clone();
                            } else if l != seos {
                                for extra in ["eot", "eom"] {
                                    if !types_list.iter().any(|t| t == extra) {
                                        types_list.push(extra.to_owned());
                                        set(&mut tc, &format!("{extra}_token"), &seos);
                                        break;
                                    }
                                }
                                seos = l.clone();
                                set(&mut tc, "eos_token", &seos);
                            }
                            set_add(&mut add, "eos", l == seos, false);
                        }
                    }
                    if !pair.is_empty() {
                        let start = usize::from(first.is_some() && special(&pair[0]) == first);
                        let stop = if last.is_some() && special(&pair[pair.len() - 1]) == last {
                            pair.len() - 1
                        } else {
                            pair.len()
                        };
                        let mid = if start < stop {
                            &pair[start..stop]
                        } else {
                            &[][..]
                        };
                        if !mid.is_empty() {
                            let a = mid[0]["Sequence"]["id"].as_str();
                            let b = mid[mid.len() - 1]["Sequence"]["id"].as_str();
                            if a == Some("A") && b == Some("B") && mid.len() > 2 {
                                let inner = &mid[1..mid.len() - 1];
                                let mut add_sep = false;
                                let e = special(&inner[0]);
                                if e.is_some() && (e == ssep || e == seos) && last.is_none() {
                                    add_sep = true;
                                }
                                if inner.len() == 2 {
                                    let e = special(&inner[1]);
                                    if e.is_some() && (e == ssep || e == seos) {
                                        add_sep = true;
                                    }
                                }
                                set_add(&mut add, "sep", add_sep, false);
                                if add_sep && !truthy(&ssep) && has_tc(&tc) {
                                    set(&mut tc, "sep_token", &seos);
                                }
                            } else if a == Some("A") && b == Some("B") {
                                // `tmpl_pair[1:-1]` is empty: nothing is set.
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut ids: Vec<(String, u64)> = Vec::new();
    let set_id = |ids: &mut Vec<(String, u64)>, typ: &str, id: Option<u64>| {
        if let Some(id) = id.filter(|&i| i < n_vocab) {
            if !ids.iter().any(|(t, _)| t == typ) {
                ids.push((typ.to_owned(), id));
            }
        }
    };
    let mut chat_template = None;
    if has_tc(&tc) {
        let c = tc.as_ref().expect("checked");
        let alt = if dir.join("chat_template.jinja").is_file() {
            if dir.join("additional_chat_templates").is_dir() {
                return Err(InputError::invalid(
                    dir.join("additional_chat_templates"),
                    "several chat templates: lorakit does not yet write tokenizer.chat_template.NAME entries",
                ));
            }
            let b = crate::io::read_whole_file(&dir.join("chat_template.jinja"))?;
            Some(Json::String(String::from_utf8_lossy(&b).into_owned()))
        } else {
            read_opt(&dir.join("chat_template.json"))?.map(|j| j["chat_template"].clone())
        };
        let t = match c.get("chat_template") {
            Some(v) => Some(v.clone()),
            None => alt,
        };
        match t {
            None | Some(Json::Null) => {}
            Some(Json::String(s)) => chat_template = Some(s),
            Some(Json::Array(_)) => {
                return Err(InputError::invalid(
                    &tc_path,
                    "chat_template is a list of named templates: lorakit does not yet write tokenizer.chat_template.NAME entries",
                ))
            }
            // gguf-py ignores it with a warning.
            Some(_) => {}
        }
        for typ in &types_list {
            if let Some(b) = c[format!("add_{typ}_token").as_str()].as_bool() {
                set_add(&mut add, typ, b, true);
            }
            let Some(content) = token_content(c.get(format!("{typ}_token").as_str())) else {
                continue;
            };
            let id = added.iter().find(|(_, t)| t == content).map(|&(id, _)| id);
            set_id(&mut ids, typ, id);
        }
    }
    if let Some(cfg) = &config {
        for typ in &types_list {
            let k = format!("{typ}_token_id");
            let v = cfg.get(&k).or_else(|| cfg["text_config"].get(&k));
            set_id(&mut ids, typ, v.and_then(Json::as_u64));
        }
    }
    for (typ, id) in &ids {
        if let Some(k) = id_key(typ) {
            out.push(kv_u32(k, *id as u32));
        }
    }
    for (typ, v) in &add {
        if let Some(k) = add_key(typ) {
            out.push(kv_bool(k, *v));
        }
    }
    if let Some(t) = chat_template {
        out.push(kv_string("tokenizer.chat_template", &t));
    }
    if let Some(v) = lowercase {
        out.push(kv_bool("tokenizer.ggml.normalizer.lowercase", v));
    }
    if let Some(v) = strip_accents {
        out.push(kv_bool("tokenizer.ggml.normalizer.strip_accents", v));
    }
    if arch == "gemma" {
        // GemmaModel.set_vocab: a second SpecialVocab whose fixed prefix/suffix/middle/fsep ids
        // have no GGUFWriter handler (skipped) and whose eot is 107 (add_eot_token_id); its
        // add_* flags rewrite the same values in place.
        out.push(kv_u32("tokenizer.ggml.eot_token_id", 107));
    }
    if gemma {
        // add_add_space_prefix(False) after the SentencePiece vocabulary.
        out.push(kv_bool("tokenizer.ggml.add_space_prefix", false));
    }
    Ok(out)
}

/// `Phi3MiniModel.set_vocab` (`conversion/phi.py`): tokenizer_config.json's `tokenizer_class`
/// (read as `tokenizer_config_json['tokenizer_class']`: refused when absent) picks the
/// vocabulary — GPT-2's for `GPT2Tokenizer` (Phi-4; `true`), else the padded SentencePiece one
/// of `tokenizer.model` (`false`; refused when the file is missing, as the converter raises).
fn phi3_vocab_kind(tc: Option<&Json>, tc_path: &Path, spm_path: &Path) -> InputResult<bool> {
    if let Some(c) = tc {
        match c.get("tokenizer_class") {
            None => {
                return Err(InputError::invalid(
                    tc_path,
                    "no `tokenizer_class`: llama.cpp's Phi-3 converter reads it to choose the vocabulary (KeyError)",
                ))
            }
            Some(Json::String(s)) if s == "GPT2Tokenizer" => return Ok(true),
            Some(_) => {}
        }
    }
    if !spm_path.is_file() {
        return Err(InputError::invalid(
            spm_path,
            "missing: llama.cpp's Phi-3 converter reads the SentencePiece tokenizer.model (or, for Phi-4, tokenizer_config.json's GPT2Tokenizer)",
        ));
    }
    Ok(false)
}

/// `tokenizer.json`'s `added_tokens` as `(id, content)`.
fn added_tokens(tj: &Json) -> Vec<(u64, String)> {
    tj["added_tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| Some((t["id"].as_u64()?, t["content"].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether gguf-py's `LlamaHfVocab` takes tokenizer.json (a `BPE` model with `byte_fallback`
/// and a `Sequence` decoder); LlamaModel.set_vocab falls back to the GPT-2 vocabulary otherwise.
fn is_llama_hf(tj: &Json) -> bool {
    let model = &tj["model"];
    model["type"] == "BPE"
        && model["byte_fallback"].as_bool() == Some(true)
        && tj["decoder"]["type"] == "Sequence"
}

/// `LlamaHfVocab`: base tokens by id, then added tokens beyond the base vocabulary.
fn llama_hf_tokens(tj: &Json, tj_path: &Path, tc: Option<&Json>) -> InputResult<Tokens> {
    let bad = |msg: String| InputError::invalid(tj_path, msg);
    let added = added_tokens(tj);
    let vocab = tj["model"]["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object".into()))?;
    let mut by_id: BTreeMap<u64, String> = BTreeMap::new();
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("token {t:?} has no integer id")))?;
        by_id.insert(id, t.clone());
    }
    let base = vocab.len() as u64;
    let mut full = by_id.clone();
    for (id, t) in &added {
        full.insert(*id, t.clone());
    }
    let lookup = |content: &str| full.iter().find(|(_, t)| *t == content).map(|(&i, _)| i);
    let mut special_ids = Vec::new();
    if let Some(c) = tc {
        let named = TYPES
            .iter()
            .filter_map(|typ| token_content(c.get(format!("{typ}_token").as_str())));
        let extra = c["additional_special_tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| token_content(Some(v)));
        for t in named.chain(extra) {
            if let Some(id) = lookup(t) {
                special_ids.push(id);
            }
        }
    }
    let mut tokens = Vec::new();
    let mut types = Vec::new();
    for id in 0..base {
        let t = by_id
            .get(&id)
            .ok_or_else(|| bad(format!("no token has id {id} of the {base} in model.vocab")))?;
        let byte = t.len() == 6
            && t.starts_with("<0x")
            && t.ends_with('>')
            && t[3..5].bytes().all(|b| b.is_ascii_hexdigit());
        types.push(if byte {
            BYTE
        } else if special_ids.contains(&id) {
            CONTROL
        } else {
            NORMAL
        });
        tokens.push(t.clone());
    }
    let mut beyond: Vec<&(u64, String)> = added.iter().filter(|(id, _)| *id >= base).collect();
    beyond.sort();
    for (i, (id, t)) in beyond.iter().enumerate() {
        if *id != base + i as u64 {
            return Err(bad(format!(
                "added token {t:?} has id {id}; llama.cpp numbers added tokens after the {base} base tokens without gaps"
            )));
        }
        tokens.push(t.clone());
        types.push(if special_ids.contains(id) {
            CONTROL
        } else {
            USER_DEFINED
        });
    }
    let scores = vec![-1000.0; tokens.len()];
    Ok((tokens, scores, types))
}

/// `SpecialVocab._parse_normalizer`.
fn parse_normalizer(n: &Json, lowercase: &mut Option<bool>, strip: &mut Option<bool>) {
    match n["type"].as_str() {
        Some("Lowercase") => *lowercase = Some(true),
        Some("StripAccents") => *strip = Some(true),
        Some("BertNormalizer") => {
            if let Some(b) = n["lowercase"].as_bool() {
                *lowercase = Some(b);
            }
            if let Some(b) = n["strip_accents"].as_bool() {
                *strip = Some(b);
            }
        }
        Some("Sequence") => {
            for m in n["normalizers"].as_array().into_iter().flatten() {
                parse_normalizer(m, lowercase, strip);
            }
        }
        _ => {}
    }
}
