//! The model metadata llama.cpp's `convert_hf_to_gguf.py` writes for a Hugging Face Llama
//! (`LlamaForCausalLM`, `MistralForCausalLM`: GGUF architecture `llama`), Qwen2
//! (`Qwen2ForCausalLM`: `qwen2`) or Qwen3 (`Qwen3ForCausalLM`: `qwen3`) from its config.json,
//! key for key and in the same order, before the `tokenizer.*` keys ([`super::vocab`]); and
//! Gemma / Gemma2 (`GemmaForCausalLM`: `gemma`, `Gemma2ForCausalLM`: `gemma2`; `GemmaModel`,
//! `Gemma2Model` of `conversion/gemma.py`, their own key lists: no rope keys, Gemma2's
//! softcapping and sliding-window keys) and text-only Gemma3 (`Gemma3ForCausalLM`: `gemma3`,
//! [`gemma3`]), and Phi-3/3.5/4 (`Phi3ForCausalLM`: `phi3`; `Phi3MiniModel` of
//! `conversion/phi.py`: its own key list, [`phi3_rope`] for the long-rope attention factor and
//! factor tensors; its vocabulary in `spm` / [`super::vocab`]).
//!
//! Ported from the llama.cpp tree vendored by llama-cpp-python 0.3.36: `conversion/base.py`
//! (`ModelBase.prepare_metadata`: `general.type = model`, `Metadata.set_gguf_meta_model`, then
//! `TextModel.set_gguf_parameters` — rope scaling `linear` and `yarn` keys, `llama3` left to
//! the `rope_freqs` tensor ([`rope_freqs`]) — then `general.quantization_version = 2`;
//! `TextModel.__init__` for `rope_parameters`), `conversion/llama.py`
//! (`LlamaModel.set_gguf_parameters`: `vocab_size`, `rope.dimension_count`;
//! `LlamaModel.generate_extra_tensors`), `conversion/qwen.py` (`Qwen2Model`: the base keys
//! only, and `_try_set_pooling_type` for sentence-transformers folders; `Qwen3Model(Qwen2Model)`:
//! the same keys — `head_dim` as `attention.key_length` / `value_length` comes from
//! `TextModel` — unless `_is_qwen3_reranker`) and gguf-py `metadata.py` ([`super::modelcard`]).
//!
//! Refused, naming the file: a model card (README.md with a YAML header, which the converter
//! turns into license/tags/base-model keys lorakit does not write), rope types whose keys or
//! tensors lorakit does not write (`longrope` outside Phi-3, `dynamic`, unknown ones), mixtures
//! of experts, non-causal models, Phi-3 configs its converter fails on or that transformers'
//! AutoConfig would rewrite ([`phi3_rope`]), Qwen2/Qwen3 embedding models (`modules.json`: pooling keys), Qwen3
//! rerankers (`Qwen3Model._is_qwen3_reranker`: a `# qwen3-reranker` README heading or the name
//! in the folder, `_name_or_path` or `model_type`; the converter writes a classifier head and
//! pooling keys). Must not read weights or write files.

use super::hf_config::{gemma_uint, rope_parameters, uint, GUESS};
pub use super::phi3::phi3_rope;
use super::writer::{kv_f32, kv_i32, kv_string, kv_u32};
use super::GgmlType;
use crate::error::{InputError, InputResult};
use serde_json::Value as Json;
use std::path::Path;

/// The Hugging Face architectures whose GGUF model lorakit writes, and their GGUF
/// architecture (`@ModelBase.register` of `LlamaModel`, `Qwen2Model` and `Qwen3Model`).
pub const HF_ARCHITECTURES: &[(&str, &str)] = &[
    ("LlamaForCausalLM", "llama"),
    ("MistralForCausalLM", "llama"),
    ("Qwen2ForCausalLM", "qwen2"),
    ("Qwen3ForCausalLM", "qwen3"),
    ("GemmaForCausalLM", "gemma"),
    ("Gemma2ForCausalLM", "gemma2"),
    ("Gemma3ForCausalLM", "gemma3"),
    ("Phi3ForCausalLM", "phi3"),
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

/// The model folder's own name (resolved through `.` and links), which the converters read hints
/// from (`general.name`, size labels, reranker checks).
fn folder_name(dir: &Path) -> String {
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
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
                    "architecture `{hf}`: lorakit writes GGUF models for {} only",
                    HF_ARCHITECTURES
                        .iter()
                        .map(|(a, _)| *a)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

/// `Qwen3Model._is_qwen3_reranker` (`conversion/qwen.py`): the converter turns such a model into
/// a classifier (`cls.output` from the yes/no rows, pooling and rerank-template keys), which
/// lorakit does not write; refused naming what gave it away.
fn qwen3_reranker(config: &Json, path: &Path, dir: &Path) -> InputResult<()> {
    const NAMES: [&str; 2] = ["qwen3-reranker", "qwen3-vl-reranker"];
    let readme = dir.join("README.md");
    if readme.is_file() {
        let text = String::from_utf8_lossy(&crate::io::read_whole_file(&readme)?).to_lowercase();
        if NAMES.iter().any(|n| text.contains(&format!("# {n}"))) {
            return Err(InputError::invalid(
                &readme,
                "a Qwen3 reranker: convert_hf_to_gguf.py writes it as a classifier, which lorakit does not",
            ));
        }
    }
    let folder = folder_name(dir);
    let hints = [
        folder.as_str(),
        config["_name_or_path"].as_str().unwrap_or(""),
        config["model_type"].as_str().unwrap_or(""),
    ];
    if let Some(h) = hints
        .iter()
        .find(|h| NAMES.iter().any(|n| h.to_lowercase().contains(n)))
    {
        return Err(InputError::invalid(
            path,
            format!("`{h}` names a Qwen3 reranker: convert_hf_to_gguf.py writes it as a classifier, which lorakit does not"),
        ));
    }
    Ok(())
}

/// `GemmaModel.set_gguf_parameters` / `Gemma2Model.set_gguf_parameters` (`conversion/gemma.py`),
/// which replace `TextModel`'s: their keys in their order, each read as `hparams["…"]` (Gemma2
/// adds the softcapping and sliding-window keys). The converter reads config.json through
/// transformers' `AutoConfig`, which fills in the class defaults; lorakit does not guess them
/// and refuses a config.json without one of these keys (or with a null).
fn gemma(arch: &str, config: &Json, path: &Path, ty: GgmlType) -> InputResult<Vec<Vec<u8>>> {
    let bad = |m: String| InputError::invalid(path, m);
    let need = |key: &str| gemma_uint(config, key, path);
    let float = |key: &str| {
        config[key]
            .as_f64()
            .map(|v| v as f32)
            .ok_or_else(|| bad(format!("`{key}` is missing or not a number ({GUESS})")))
    };
    let k = |s: &str| format!("{arch}.{s}");
    let n_head = need("num_attention_heads")?;
    let head_dim = need("head_dim")?;
    let mut out = vec![
        kv_u32(&k("context_length"), need("max_position_embeddings")?),
        kv_u32(&k("embedding_length"), need("hidden_size")?),
        kv_u32(&k("block_count"), need("num_hidden_layers")?),
        kv_u32(&k("feed_forward_length"), need("intermediate_size")?),
        kv_u32(&k("attention.head_count"), n_head),
        kv_u32(
            &k("attention.head_count_kv"),
            match config.get("num_key_value_heads") {
                Some(_) => need("num_key_value_heads")?,
                None => n_head,
            },
        ),
        kv_f32(
            &k("attention.layer_norm_rms_epsilon"),
            float("rms_norm_eps")?,
        ),
        kv_u32(&k("attention.key_length"), head_dim),
        kv_u32(&k("attention.value_length"), head_dim),
        kv_u32(
            "general.file_type",
            file_type(ty).ok_or_else(|| bad(format!("no llama.cpp file type for {ty}")))?,
        ),
    ];
    if arch == "gemma2" {
        out.extend([
            kv_f32(
                &k("attn_logit_softcapping"),
                float("attn_logit_softcapping")?,
            ),
            kv_f32(
                &k("final_logit_softcapping"),
                float("final_logit_softcapping")?,
            ),
            kv_u32(&k("attention.sliding_window"), need("sliding_window")?),
        ]);
    }
    Ok(out)
}

/// `Gemma3Model.set_gguf_parameters` (`conversion/gemma.py`): `TextModel`'s keys with the
/// full-attention rope parameters (`rope.freq_base`, linear scaling) and the sliding ones'
/// `rope.freq_base_swa`, then its overrides — the same keys rewritten in place (gguf-py's
/// writer keeps a key's first position) — and `final_logit_softcapping` (when set) and
/// `attention.sliding_window` appended. Refused where AutoConfig (which the converter reads
/// config.json through) would rewrite or default what lorakit reads raw: a config without
/// per-attention-type `rope_parameters` (older layouts with `rope_local_base_freq`), with
/// `sliding_window_pattern`, or missing a key; `attn_logit_softcapping` (the converter asserts
/// it absent); rope types other than default and linear.
fn gemma3(config: &Json, path: &Path, ty: GgmlType) -> InputResult<Vec<Vec<u8>>> {
    let bad = |m: String| InputError::invalid(path, m);
    let need = |key: &str| gemma_uint(config, key, path);
    let full = config["rope_parameters"]
        .get("full_attention")
        .filter(|v| v.is_object())
        .ok_or_else(|| bad("`rope_parameters` without `full_attention`: an older Gemma3 config layout, which transformers' AutoConfig rewrites and lorakit does not".into()))?;
    if config.get("sliding_window_pattern").is_some() {
        return Err(bad(
            "`sliding_window_pattern`: transformers rewrites it into layer types; lorakit does not"
                .into(),
        ));
    }
    if !config["attn_logit_softcapping"].is_null() {
        return Err(bad(
            "`attn_logit_softcapping`: llama.cpp's Gemma3 converter asserts it is absent".into(),
        ));
    }
    let k = |s: &str| format!("gemma3.{s}");
    let mut out = vec![
        kv_u32(&k("block_count"), need("num_hidden_layers")?),
        kv_u32(&k("context_length"), need("max_position_embeddings")?),
        kv_u32(&k("embedding_length"), need("hidden_size")?),
        kv_u32(&k("feed_forward_length"), need("intermediate_size")?),
        kv_u32(&k("attention.head_count"), need("num_attention_heads")?),
        kv_u32(&k("attention.head_count_kv"), need("num_key_value_heads")?),
    ];
    match (full["rope_type"].as_str(), full["factor"].as_f64()) {
        (None | Some("default"), _) => {}
        (Some("linear"), Some(factor)) => {
            out.push(kv_string(&k("rope.scaling.type"), "linear"));
            out.push(kv_f32(&k("rope.scaling.factor"), factor as f32));
        }
        (Some(t), _) => {
            return Err(bad(format!(
            "full-attention rope type `{t}`: lorakit writes Gemma3's default and linear rope only"
        )))
        }
    }
    let theta = full["rope_theta"].as_f64().ok_or_else(|| {
        bad(format!(
            "`rope_parameters.full_attention.rope_theta` is missing ({GUESS})"
        ))
    })?;
    out.push(kv_f32(&k("rope.freq_base"), theta as f32));
    if let Some(t) = config["rope_parameters"]["sliding_attention"]["rope_theta"].as_f64() {
        out.push(kv_f32(&k("rope.freq_base_swa"), t as f32));
    }
    let eps = config["rms_norm_eps"]
        .as_f64()
        .ok_or_else(|| bad(format!("`rms_norm_eps` is missing ({GUESS})")))?;
    out.push(kv_f32(&k("attention.layer_norm_rms_epsilon"), eps as f32));
    let head_dim = need("head_dim")?;
    out.push(kv_u32(&k("attention.key_length"), head_dim));
    out.push(kv_u32(&k("attention.value_length"), head_dim));
    out.push(kv_u32(
        "general.file_type",
        file_type(ty).ok_or_else(|| bad(format!("no llama.cpp file type for {ty}")))?,
    ));
    // `if (final_logit_softcap := hparams.get(...))`: written when truthy.
    if let Some(c) = config["final_logit_softcapping"]
        .as_f64()
        .filter(|c| *c != 0.0)
    {
        out.push(kv_f32(&k("final_logit_softcapping"), c as f32));
    }
    out.push(kv_u32(
        &k("attention.sliding_window"),
        need("sliding_window")?,
    ));
    Ok(out)
}

/// `Phi3MiniModel.set_gguf_parameters` (`conversion/phi.py`), which replaces `TextModel`'s: its
/// keys in its order; `attention.sliding_window` 0 where config.json has none (null or absent,
/// "to distinguish Phi-4"). `num_key_value_heads` null or absent is `num_attention_heads`
/// (`Phi3Config.__post_init__`); other keys missing are refused ([`GUESS`]).
fn phi3(config: &Json, path: &Path, ty: GgmlType) -> InputResult<Vec<Vec<u8>>> {
    let bad = |m: String| InputError::invalid(path, m);
    let need = |key: &str| gemma_uint(config, key, path);
    let rope = phi3_rope(config, path)?;
    let k = |s: &str| format!("phi3.{s}");
    let n_head = need("num_attention_heads")?;
    let n_head_kv = match config.get("num_key_value_heads") {
        None | Some(Json::Null) => n_head,
        Some(_) => need("num_key_value_heads")?,
    };
    let eps = config["rms_norm_eps"].as_f64().ok_or_else(|| {
        bad(format!(
            "`rms_norm_eps` is missing or not a number ({GUESS})"
        ))
    })?;
    let sliding = match config.get("sliding_window") {
        None | Some(Json::Null) => 0,
        Some(_) => need("sliding_window")?,
    };
    Ok(vec![
        kv_u32(&k("context_length"), rope.context),
        kv_u32(
            &k("rope.scaling.original_context_length"),
            rope.original_context,
        ),
        kv_u32(&k("embedding_length"), need("hidden_size")?),
        kv_u32(&k("feed_forward_length"), need("intermediate_size")?),
        kv_u32(&k("block_count"), need("num_hidden_layers")?),
        kv_u32(&k("attention.head_count"), n_head),
        kv_u32(&k("attention.head_count_kv"), n_head_kv),
        kv_f32(&k("attention.layer_norm_rms_epsilon"), eps as f32),
        kv_u32(&k("rope.dimension_count"), rope.dims),
        kv_f32(&k("rope.freq_base"), rope.theta),
        kv_u32(
            "general.file_type",
            file_type(ty).ok_or_else(|| bad(format!("no llama.cpp file type for {ty}")))?,
        ),
        kv_u32(&k("attention.sliding_window"), sliding),
    ])
}

/// The GGUF type of a `general.sampling.*` entry.
#[derive(Clone, Copy)]
enum Sampling {
    I32,
    F32,
}

/// The numeric sampling entries after `sequence`, in `set_gguf_meta_model`'s order: the
/// generation_config.json keys (the first present wins), the `general.sampling.` key, its type.
const SAMPLING: &[(&[&str], &str, Sampling)] = &[
    (&["top_k"], "top_k", Sampling::I32),
    (&["top_p"], "top_p", Sampling::F32),
    (&["min_p"], "min_p", Sampling::F32),
    (&["xtc_probability"], "xtc_probability", Sampling::F32),
    (&["xtc_threshold"], "xtc_threshold", Sampling::F32),
    (&["temperature"], "temp", Sampling::F32),
    (&["penalty_last_n"], "penalty_last_n", Sampling::I32),
    (
        &["penalty_repeat", "repetition_penalty"],
        "penalty_repeat",
        Sampling::F32,
    ),
    (&["mirostat"], "mirostat", Sampling::I32),
    (&["mirostat_tau"], "mirostat_tau", Sampling::F32),
    (&["mirostat_eta"], "mirostat_eta", Sampling::F32),
];

/// `Metadata.load`'s sampling defaults from generation_config.json (`general.sampling.*`, in
/// `set_gguf_meta_model`'s order; an unreadable file gives none, as in gguf-py).
fn sampling(path: &Path) -> Vec<Vec<u8>> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let Ok(g) = serde_json::from_slice::<Json>(&bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let num = |k: &str| g.get(k).and_then(Json::as_f64);
    let int = |k: &str| {
        g.get(k)
            .and_then(Json::as_i64)
            .and_then(|v| i32::try_from(v).ok())
    };
    if let Some(v) = g.get("sequence").and_then(Json::as_str) {
        out.push(kv_string("general.sampling.sequence", v));
    }
    for &(srcs, key, ty) in SAMPLING {
        let key = format!("general.sampling.{key}");
        out.extend(match ty {
            Sampling::I32 => srcs.iter().find_map(|k| int(k)).map(|v| kv_i32(&key, v)),
            Sampling::F32 => srcs
                .iter()
                .find_map(|k| num(k))
                .map(|v| kv_f32(&key, v as f32)),
        });
    }
    out
}

/// The metadata before the tokenizer: `general.*` and `ARCH.*` keys in the converter's order.
/// `dir` is the model folder (its name gives the model-card keys), `params` the element count
/// of every written tensor.
pub fn entries(
    config: &Json,
    path: &Path,
    dir: &Path,
    params: u64,
    ty: GgmlType,
) -> InputResult<Vec<Vec<u8>>> {
    let arch = architecture(config, path)?;
    let bad = |m: String| InputError::invalid(path, m);
    let need = |key: &str| {
        uint(config, key)
            .ok_or_else(|| bad(format!("`{key}` is missing or not an unsigned integer")))
    };
    for k in ["num_local_experts", "num_experts", "n_routed_experts"] {
        if config.get(k).is_some_and(|v| !v.is_null()) {
            return Err(bad(format!(
                "`{k}`: lorakit does not write GGUF mixtures of experts"
            )));
        }
    }
    if config["is_causal"] == Json::Bool(false) {
        return Err(bad(
            "`is_causal` is false: lorakit writes causal models only".into(),
        ));
    }
    let readme = dir.join("README.md");
    if readme.is_file() {
        let text = crate::io::read_whole_file(&readme)?;
        if text.starts_with(b"---") {
            return Err(InputError::invalid(
                &readme,
                "a model card: convert_hf_to_gguf.py writes its license, tags and base models as general.* keys, which lorakit does not yet write; move it out of the folder",
            ));
        }
    }
    if matches!(arch, "qwen2" | "qwen3") && dir.join("modules.json").is_file() {
        return Err(InputError::invalid(
            dir.join("modules.json"),
            "a sentence-transformers embedding model: lorakit does not write its pooling keys",
        ));
    }
    if arch == "qwen3" {
        qwen3_reranker(config, path, dir)?;
    }
    // Metadata.load: config.json's _name_or_path, then the folder name; the size label from
    // the parameter count when neither gave one.
    let mut card = super::modelcard::IdComponents::default();
    let total = params as i64;
    if let Some(id) = config["_name_or_path"]
        .as_str()
        .filter(|s| s.matches('/').count() <= 1)
    {
        card.fill(super::modelcard::components(id, total));
    }
    let folder = folder_name(dir);
    card.fill(super::modelcard::components(&folder, total));
    let k = |s: &str| format!("{arch}.{s}");
    let mut out = vec![
        kv_string("general.architecture", arch),
        kv_string("general.type", "model"),
    ];
    out.extend(sampling(&dir.join("generation_config.json")));
    out.push(kv_string(
        "general.name",
        card.name.as_deref().unwrap_or(&folder),
    ));
    // set_gguf_meta_model's order.
    for (key, v) in [
        ("general.version", &card.version),
        ("general.organization", &card.organization),
        ("general.finetune", &card.finetune),
        ("general.basename", &card.basename),
    ] {
        if let Some(v) = v {
            out.push(kv_string(key, v));
        }
    }
    let size = card
        .size_label
        .clone()
        .unwrap_or_else(|| super::modelcard::size_label(params));
    out.push(kv_string("general.size_label", &size));
    if arch == "phi3" {
        // generate_extra_tensors runs before the metadata (ModelBase.write: prepare_tensors,
        // then prepare_metadata), so its attn_factor follows general.architecture, which
        // GGUFWriter's constructor writes.
        if let Some(l) = phi3_rope(config, path)?.long {
            out.insert(1, kv_f32(&k("rope.scaling.attn_factor"), l.attn_factor));
        }
        out.extend(phi3(config, path, ty)?);
        out.push(kv_u32("general.quantization_version", 2));
        return Ok(out);
    }
    if arch == "gemma3" {
        out.extend(gemma3(config, path, ty)?);
        out.push(kv_u32("general.quantization_version", 2));
        return Ok(out);
    }
    if arch == "gemma" || arch == "gemma2" {
        out.extend(gemma(arch, config, path, ty)?);
        out.push(kv_u32("general.quantization_version", 2));
        return Ok(out);
    }
    out.push(kv_u32(&k("block_count"), need("num_hidden_layers")?));
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
    let rope = rope_parameters(config);
    if rope.contains_key("full_attention") || rope.contains_key("sliding_attention") {
        return Err(bad(
            "per-attention-type rope parameters: lorakit does not write them".into(),
        ));
    }
    if rope.contains_key("mrope_section") {
        return Err(bad(
            "`mrope_section`: multimodal rope sections are not written by lorakit".into(),
        ));
    }
    let f = |key: &str| rope.get(key).and_then(Json::as_f64);
    if let Some(t) = rope.get("rope_type").and_then(Json::as_str) {
        match (t, f("factor")) {
            ("linear", Some(factor)) => {
                out.push(kv_string(&k("rope.scaling.type"), "linear"));
                out.push(kv_f32(&k("rope.scaling.factor"), factor as f32));
            }
            ("yarn", Some(factor)) => {
                out.push(kv_string(&k("rope.scaling.type"), "yarn"));
                out.push(kv_f32(&k("rope.scaling.factor"), factor as f32));
                let orig = rope
                    .get("original_max_position_embeddings")
                    .and_then(Json::as_u64)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| bad("yarn rope scaling without an integer `original_max_position_embeddings`".into()))?;
                out.push(kv_u32(&k("rope.scaling.original_context_length"), orig));
                let attn = f("attention_factor").or(f("attn_factor"));
                for (key, v) in [
                    ("yarn_ext_factor", f("extrapolation_factor")),
                    ("yarn_attn_factor", attn),
                    ("yarn_beta_fast", f("beta_fast")),
                    ("yarn_beta_slow", f("beta_slow")),
                ] {
                    if let Some(v) = v {
                        out.push(kv_f32(&k(&format!("rope.scaling.{key}")), v as f32));
                    }
                }
            }
            // `default` and factor-less linear/yarn: the converter writes nothing; llama3:
            // the rope_freqs tensor (Llama) or nothing (Qwen2).
            ("default" | "linear" | "yarn", None) | ("llama3", _) => {}
            (t, _) if t.eq_ignore_ascii_case("llama3") => {}
            (t, _) => {
                return Err(bad(format!(
                    "rope type `{t}`: lorakit writes the GGUF keys of linear, yarn and llama3 rope scaling only"
                )))
            }
        }
    }
    if let Some(t) = f("rope_theta") {
        out.push(kv_f32(&k("rope.freq_base"), t as f32));
    }
    if let Some(e) = config["rms_norm_eps"].as_f64() {
        out.push(kv_f32(&k("attention.layer_norm_rms_epsilon"), e as f32));
    }
    if config.get("layer_norm_eps").is_some_and(|v| !v.is_null()) {
        return Err(bad("`layer_norm_eps`: not an RMSNorm model config".into()));
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
    if arch == "llama" {
        out.push(kv_u32(&k("vocab_size"), need("vocab_size")?));
        let rope_dim = match head_dim {
            Some(h) => h,
            None => need("hidden_size")? / n_head.max(1),
        };
        out.push(kv_u32(&k("rope.dimension_count"), rope_dim));
    }
    out.push(kv_u32("general.quantization_version", 2));
    Ok(out)
}

/// `LlamaModel.generate_extra_tensors`: the `rope_freqs.weight` factors of llama3 rope
/// scaling (one per pair of rotary dimensions), `None` for other rope types. Computed as the
/// script computes them in torch float32: the frequencies `1 / base^(2i/dim)`, then per
/// frequency, every python scalar rounded to f32 where it meets the f32 tensor.
pub fn rope_freqs(config: &Json, path: &Path) -> InputResult<Option<Vec<f32>>> {
    let rope = rope_parameters(config);
    let is_llama3 = rope
        .get("rope_type")
        .and_then(Json::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("llama3"));
    if !is_llama3 {
        return Ok(None);
    }
    let f = |key: &str, d: f64| rope.get(key).and_then(Json::as_f64).unwrap_or(d);
    let base = f("rope_theta", 10000.0) as f32;
    let dim = match uint(config, "head_dim") {
        Some(h) => h,
        None => {
            let need = |key: &str| {
                uint(config, key).ok_or_else(|| {
                    InputError::invalid(
                        path,
                        format!("`{key}` is missing or not an unsigned integer"),
                    )
                })
            };
            need("hidden_size")? / need("num_attention_heads")?.max(1)
        }
    };
    let factor = f("factor", 8.0);
    let low = f("low_freq_factor", 1.0);
    let high = f("high_freq_factor", 4.0);
    let old = f("original_max_position_embeddings", 8192.0);
    // Python floats, compared with / combined into f32 tensors: rounded to f32 there.
    let low_wavelen = (old / low) as f32;
    let high_wavelen = (old / high) as f32;
    let out = (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0f32 / base.powf(i as f32 / dim as f32);
            let wavelen = (2.0 * std::f64::consts::PI) as f32 / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor as f32
            } else {
                let smooth = ((old as f32) / wavelen - low as f32) / ((high - low) as f32);
                1.0f32 / ((1.0f32 - smooth) / factor as f32 + smooth)
            }
        })
        .collect();
    Ok(Some(out))
}
