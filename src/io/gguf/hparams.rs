//! The model metadata llama.cpp's `convert_hf_to_gguf.py` writes for a Hugging Face Llama
//! (`LlamaForCausalLM`, `MistralForCausalLM`: GGUF architecture `llama`) from its config.json,
//! key for key and in the same order, before the `tokenizer.*` keys ([`super::vocab`]).
//!
//! Ported from the llama.cpp tree vendored by llama-cpp-python 0.3.36: `conversion/base.py`
//! (`ModelBase.prepare_metadata`: `general.type = model`, `Metadata.set_gguf_meta_model`, then
//! `TextModel.set_gguf_parameters`, then `general.quantization_version = 2`;
//! `TextModel.__init__` for `rope_parameters`), `conversion/llama.py`
//! (`LlamaModel.set_gguf_parameters`: `vocab_size`, `rope.dimension_count`) and gguf-py
//! `metadata.py` (`Metadata.id_to_title`: the name from the model folder's name) and
//! `utility.py` (`size_label`, `model_weight_count_rounded_notation`).
//!
//! Not written, unlike the converter: what `Metadata.load` reads from a model card (README.md:
//! license, tags, base models, …) and what it parses out of the folder name (`basename`,
//! `size_label`, `finetune`, `version` from names such as `Llama-2-7b-chat`); the size label is
//! the parameter count's, which is the converter's for names without a size. Refused, naming
//! config.json: rope types the converter turns into extra tensors or keys lorakit does not
//! write (`llama3`'s `rope_freqs`, `yarn`, `longrope`), mixtures of experts, non-causal models.
//! Must not read weights or write files.

use super::writer::{kv_f32, kv_string, kv_u32};
use super::GgmlType;
use crate::error::{InputError, InputResult};
use serde_json::Value as Json;
use std::path::Path;

/// The Hugging Face architectures whose GGUF model lorakit writes, and their GGUF
/// architecture (`@ModelBase.register` of `LlamaModel`).
pub const HF_ARCHITECTURES: &[(&str, &str)] = &[
    ("LlamaForCausalLM", "llama"),
    ("MistralForCausalLM", "llama"),
];

/// `general.file_type` (gguf-py `LlamaFileType`) of a model whose 2-D weights are `ty`; the
/// K-quants as llama-quantize's `_S` mixes name them when every weight has the type.
pub fn file_type(ty: GgmlType) -> Option<u32> {
    Some(match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2_K => 10,
        GgmlType::Q3_K => 11,
        GgmlType::Q4_K => 14,
        GgmlType::Q5_K => 16,
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
        _ => return None,
    })
}

/// `Metadata.id_to_title`: `-` to spaces, lowercase words title-cased unless they look like a
/// version (`v1.2`) or start with a digit.
pub fn id_to_title(s: &str) -> String {
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let lower = w.chars().any(char::is_alphabetic)
                && !w.chars().any(|c| c.is_alphabetic() && !c.is_lowercase());
            let version = w.starts_with(|c: char| c.is_ascii_digit())
                || (w.starts_with('v')
                    && w.len() > 1
                    && w[1..]
                        .split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())));
            if lower && !version {
                // str.title(): a letter after a non-letter is upper case, others lower.
                let mut prev = false;
                w.chars()
                    .map(|c| {
                        let up = !prev;
                        prev = c.is_alphabetic();
                        if up {
                            c.to_uppercase().collect::<String>()
                        } else {
                            c.to_lowercase().collect()
                        }
                    })
                    .collect()
            } else {
                w.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `size_label` of a model without experts: `model_weight_count_rounded_notation(n, 2)`.
pub fn size_label(n: u64) -> String {
    let n = n as f64;
    let (x, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    // Python's round() is round-half-even; str() of the int, leading zeros stripped.
    let digits = format!("{}", x.round_ties_even() as u64);
    let digits = digits.trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(digits);
    format!("{x:.fix$}{suffix}")
}

fn uint(c: &Json, key: &str) -> Option<u32> {
    c.get(key)?.as_u64().and_then(|v| u32::try_from(v).ok())
}

/// The GGUF architecture of config.json's `architectures[0]`, or an error naming it.
pub fn architecture(config: &Json, path: &Path) -> InputResult<&'static str> {
    let hf = config["architectures"][0].as_str().unwrap_or("");
    HF_ARCHITECTURES
        .iter()
        .find(|(a, _)| *a == hf)
        .map(|&(_, g)| g)
        .ok_or_else(|| {
            InputError::invalid(
                path,
                format!(
                    "architecture `{hf}`: lorakit writes GGUF models for {} only (Qwen2 and others need llama.cpp's GPT-2 BPE vocabulary, not written yet)",
                    HF_ARCHITECTURES.iter().map(|(a, _)| *a).collect::<Vec<_>>().join(", ")
                ),
            )
        })
}

/// The metadata before the tokenizer: `general.*` and `llama.*` keys in the converter's order.
/// `name` is the model folder's name, `params` the element count of every written tensor.
pub fn entries(
    config: &Json,
    path: &Path,
    name: &str,
    params: u64,
    ty: GgmlType,
) -> InputResult<Vec<Vec<u8>>> {
    let arch = architecture(config, path)?;
    let bad = |m: String| InputError::invalid(path, m);
    let need = |key: &str| {
        uint(config, key)
            .ok_or_else(|| bad(format!("`{key}` is missing or not an unsigned integer")))
    };
    for k in ["num_local_experts", "num_experts"] {
        if config.get(k).is_some_and(|v| !v.is_null()) {
            return Err(bad(format!(
                "`{k}`: lorakit does not write GGUF mixtures of experts"
            )));
        }
    }
    if config["is_causal"] == Json::Bool(false) {
        return Err(bad(
            "`is_causal` is false: lorakit writes causal Llama models only".into(),
        ));
    }
    let k = |s: &str| format!("{arch}.{s}");
    let mut out = vec![
        kv_string("general.architecture", arch),
        kv_string("general.type", "model"),
        kv_string("general.name", &id_to_title(name)),
        kv_string("general.size_label", &size_label(params)),
        kv_u32(&k("block_count"), need("num_hidden_layers")?),
    ];
    if let Some(v) = uint(config, "max_position_embeddings") {
        out.push(kv_u32(&k("context_length"), v));
    }
    out.push(kv_u32(&k("embedding_length"), need("hidden_size")?));
    if let Some(v) = uint(config, "intermediate_size") {
        out.push(kv_u32(&k("feed_forward_length"), v));
    }
    let n_head = need("num_attention_heads")?;
    out.push(kv_u32(&k("attention.head_count"), n_head));
    if let Some(v) = uint(config, "num_key_value_heads") {
        out.push(kv_u32(&k("attention.head_count_kv"), v));
    }
    // TextModel.__init__: rope_parameters (or rope_scaling) with rope_theta mirrored in.
    let rope = match config.get("rope_parameters").or(config.get("rope_scaling")) {
        Some(Json::Object(o)) => Json::Object(o.clone()),
        _ => Json::Object(Default::default()),
    };
    if rope.get("full_attention").is_some() || rope.get("sliding_attention").is_some() {
        return Err(bad(
            "per-attention-type rope parameters: not a plain Llama".into()
        ));
    }
    let rope_type = rope["rope_type"].as_str().or(rope["type"].as_str());
    if let Some(t) = rope_type {
        match (t, rope["factor"].as_f64()) {
            ("linear", Some(f)) => {
                out.push(kv_string(&k("rope.scaling.type"), "linear"));
                out.push(kv_f32(&k("rope.scaling.factor"), f as f32));
            }
            // The converter warns about `default` and writes nothing.
            ("default", _) | ("linear", None) => {}
            (t, _) => {
                return Err(bad(format!(
                    "rope type `{t}`: lorakit does not yet write its GGUF keys or tensors (llama3's rope_freqs, yarn, longrope)"
                )))
            }
        }
    }
    let theta = rope["rope_theta"]
        .as_f64()
        .or_else(|| config["rope_theta"].as_f64());
    if let Some(t) = theta {
        out.push(kv_f32(&k("rope.freq_base"), t as f32));
    }
    if let Some(e) = config["rms_norm_eps"].as_f64() {
        out.push(kv_f32(&k("attention.layer_norm_rms_epsilon"), e as f32));
    }
    if config.get("layer_norm_eps").is_some_and(|v| !v.is_null()) {
        return Err(bad("`layer_norm_eps`: not a Llama (RMSNorm) config".into()));
    }
    let head_dim = uint(config, "head_dim");
    if let Some(h) = head_dim {
        out.push(kv_u32(&k("attention.key_length"), h));
        out.push(kv_u32(&k("attention.value_length"), h));
    }
    out.push(kv_u32(
        "general.file_type",
        file_type(ty).ok_or_else(|| bad(format!("no llama.cpp file type for {ty}")))?,
    ));
    out.push(kv_u32(&k("vocab_size"), need("vocab_size")?));
    let rope_dim = match head_dim {
        Some(h) => h,
        None => need("hidden_size")? / n_head.max(1),
    };
    out.push(kv_u32(&k("rope.dimension_count"), rope_dim));
    out.push(kv_u32("general.quantization_version", 2));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by gguf-py's own `Metadata.id_to_title` and
    /// `model_weight_count_rounded_notation` (the llama.cpp tree of llama-cpp-python 0.3.36).
    #[test]
    fn titles_and_size_labels_follow_gguf_py() {
        assert_eq!(id_to_title("tiny-llama"), "Tiny Llama");
        assert_eq!(id_to_title("Llama-2-7b-hf"), "Llama 2 7b Hf");
        assert_eq!(id_to_title("mistral-v0.3"), "Mistral v0.3");
        assert_eq!(size_label(90_432), "90K");
        assert_eq!(size_label(6_738_415_616), "6.7B");
        assert_eq!(size_label(400), "0.40K");
    }
}
