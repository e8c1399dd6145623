//! Writing an adapter as a llama.cpp GGUF LoRA adapter (`llama-cli --lora FILE`).
//!
//! The layout is llama.cpp `convert_lora_to_gguf.py`: metadata `general.architecture`,
//! `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha` (FLOAT32, the config's
//! `lora_alpha`); per adapted base tensor `NAME.lora_a` (PyTorch shape `[r, in]`, ggml dims
//! `[in, r]`) and `NAME.lora_b` (`[out, r]`, dims `[r, out]`), NAME the GGUF tensor of the module
//! (`blk.N.attn_q.weight`, gguf-py `tensor_mapping.py`, see [`crate::io::gguf::names`]); for
//! architecture `llama` the rows of `q_proj`/`k_proj`'s B permuted by `LlamaModel.permute` as the
//! base weights were; for `token_embd` A transposed (`[vocab, r]`, as `llm_build_inp_embd`
//! reads it). What llama.cpp checks on load is `src/llama-adapter.cpp`
//! (`llama_adapter_lora_init_impl`): those keys, a model tensor per pair, `a.ne[0]` = the model
//! tensor's `ne[0]`, `b.ne[1]` its `ne[1]`, `a.ne[1] = b.ne[0]` (the rank).
//!
//! llama.cpp applies each pair with one scale, `alpha / rank` (rank = `b.ne[0]`; `alpha = 0`
//! means scale 1), and one alpha per file. A module whose PEFT scale differs from
//! `alpha / rank` (rsLoRA's `alpha / √rank`, `rank_pattern` / `alpha_pattern`) has the ratio
//! folded into its B, so `scale·B·A` is the module's ΔW exactly as PEFT computes it; the
//! converter writes such adapters unfolded (a wrong scale). What llama.cpp cannot apply is
//! refused naming the module: DoRA, `lora_bias`, non-LoRA algorithms (LoHa, LoKr, …), and full
//! tensors (`modules_to_save`; the converter refuses embeddings stored in full too), except
//! the copy of the base embedding PEFT saves beside an embedding LoRA (`base_layer.weight`),
//! which the converter and lorakit leave out.
//!
//! Must not merge (that is `ops/merge/gguf.rs`) or drop a module silently: what it cannot
//! write exactly is refused by name.

use crate::adapter::model::{Adapter, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::gguf::names::{self, Rope};
use crate::io::gguf::writer::{kv_f32, kv_string, kv_u32s, GgufWriter, OutTensor};
use crate::io::gguf::{quant, GgmlType, GgufModel, Value, ValueType};
use crate::io::writer::{check_writes, LockMode};
use crate::io::Output;
use std::path::{Path, PathBuf};

/// The model an adapter is converted for: its GGUF architecture and head counts.
#[derive(Debug)]
pub struct Target {
    pub architecture: String,
    /// Whether q/k rows are permuted (architecture `llama`).
    pub permute: bool,
    pub n_head: Option<usize>,
    pub n_head_kv: Option<usize>,
    /// A GGUF base, whose tensors every module must land on with matching shape.
    pub base: Option<GgufModel>,
    /// A Hugging Face base whose model has no `output.weight` in llama.cpp: tied embeddings
    /// ([`hf_output_tied`]). `None` for a GGUF base (its tensor list is checked instead).
    pub tied_output: Option<bool>,
    pub base_path: PathBuf,
}

/// HF `architectures[0]` → GGUF architecture, as llama.cpp's converter registers them
/// (`LlamaModel`: `LlamaForCausalLM`, `MistralForCausalLM`, …; `Qwen2Model`: `Qwen2ForCausalLM`;
/// `Qwen3Model`: `Qwen3ForCausalLM`, llama.cpp `conversion/qwen.py`; `GemmaModel`, `Gemma2Model`,
/// `Gemma3Model`: `GemmaForCausalLM`, `Gemma2ForCausalLM`, text-only `Gemma3ForCausalLM`,
/// `conversion/gemma.py`; `Phi3MiniModel`: `Phi3ForCausalLM`, `conversion/phi.py:39`).
const HF_ARCHS: &[(&str, &str)] = &[
    ("LlamaForCausalLM", "llama"),
    ("LLaMAForCausalLM", "llama"),
    ("LlamaModel", "llama"),
    ("MistralForCausalLM", "llama"),
    ("Qwen2ForCausalLM", "qwen2"),
    ("Qwen2Model", "qwen2"),
    ("Qwen3ForCausalLM", "qwen3"),
    ("GemmaForCausalLM", "gemma"),
    ("Gemma2ForCausalLM", "gemma2"),
    ("Gemma3ForCausalLM", "gemma3"),
    ("Phi3ForCausalLM", "phi3"),
];

impl Target {
    /// Reads the architecture from a GGUF model or a Hugging Face folder's `config.json`.
    pub fn open(path: &Path) -> InputResult<Target> {
        if crate::io::gguf::is_gguf(path) {
            let m = GgufModel::open(path)?;
            let arch = m.architecture().unwrap_or("").to_owned();
            let count = |k: &str| {
                m.header()
                    .get(&format!("{arch}.attention.{k}"))
                    .and_then(Value::as_u64)
                    .map(|v| v as usize)
            };
            let (n_head, n_head_kv) = (count("head_count"), count("head_count_kv"));
            return Self::new(arch, n_head, n_head_kv, Some(m), path);
        }
        let cfg_path = if path.is_dir() {
            path.join("config.json")
        } else {
            path.with_file_name("config.json")
        };
        let cfg: serde_json::Value = serde_json::from_slice(&crate::io::read_json_file(&cfg_path)?)
            .map_err(|e| InputError::invalid(&cfg_path, format!("not valid JSON: {e}")))?;
        let hf = cfg["architectures"][0].as_str().unwrap_or("");
        let arch = HF_ARCHS
            .iter()
            .find(|(h, _)| *h == hf)
            .map(|(_, g)| (*g).to_owned())
            .ok_or_else(|| {
                InputError::invalid(
                    &cfg_path,
                    format!(
                        "architecture `{hf}`: lorakit writes GGUF adapters for {}",
                        HF_ARCHS
                            .iter()
                            .map(|(h, _)| *h)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
        let n = |k: &str| cfg[k].as_u64().map(|v| v as usize);
        let n_head = n("num_attention_heads");
        let mut t = Self::new(
            arch,
            n_head,
            n("num_key_value_heads").or(n_head),
            None,
            path,
        )?;
        t.tied_output = Some(hf_output_tied(path, &cfg));
        Ok(t)
    }

    fn new(
        architecture: String,
        n_head: Option<usize>,
        n_head_kv: Option<usize>,
        base: Option<GgufModel>,
        path: &Path,
    ) -> InputResult<Target> {
        let permute = names::permutes_or_refuse(&architecture, path)?;
        Ok(Target {
            architecture,
            permute,
            n_head,
            n_head_kv: n_head_kv.or(n_head),
            base,
            tied_output: None,
            base_path: path.to_path_buf(),
        })
    }
}

/// Whether llama.cpp's GGUF of the Hugging Face model at `path` has no `output.weight`, so
/// that an `lm_head` LoRA has no tensor to land on. `convert_hf_to_gguf.py` writes `output`
/// from the checkpoint's `lm_head.weight`, which transformers does not save for tied
/// embeddings; so the weights decide when the folder has them, else config.json's
/// `tie_word_embeddings` (absent: untied, the Llama/Mistral/Qwen2/Qwen3 configs' default).
/// llama.cpp's `convert_lora_to_gguf.py` (llama-cpp-python 0.3.36's vendor/llama.cpp) reads
/// config.json only and writes the pair as `output.weight.lora_a/b` all the same, and
/// `llama_adapter_lora_init_impl` (`src/llama-adapter.cpp:335`) then refuses the file: "LoRA
/// tensor 'output.weight.lora_a' does not exist in base model".
fn hf_output_tied(path: &Path, cfg: &serde_json::Value) -> bool {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let has_weights = dir.join("model.safetensors").is_file()
        || dir.join("model.safetensors.index.json").is_file();
    if has_weights {
        if let Ok(c) = crate::io::Checkpoint::open(dir) {
            return c.info("lm_head.weight").is_none();
        }
    }
    cfg["tie_word_embeddings"].as_bool().unwrap_or(false)
}

/// One written module.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    pub from: String,
    pub to: String,
    pub rank: usize,
    pub alpha_in: f64,
    /// PEFT's scale of the module, which `alpha / rank` times the fold reproduces.
    pub scale: f64,
    /// The factor multiplied into B (1 when the file's alpha gives the module's scale).
    pub folded: f64,
    pub permuted: bool,
}

/// The file's single alpha: the config's `lora_alpha`, else the first module's.
pub fn file_alpha(adapter: &Adapter) -> f64 {
    adapter
        .config
        .as_ref()
        .and_then(|c| c["lora_alpha"].as_f64())
        .or_else(|| adapter.modules.first().map(|m| m.alpha))
        .unwrap_or(0.0)
}

/// llama.cpp's key for an aLoRA's invocation tokens (`LLM_KV_ADAPTER_ALORA_INVOCATION_TOKENS`):
/// an `ARRAY` of `UINT32`; `llama-adapter.cpp` throws on another type, and llama-server applies
/// the adapter only after those tokens.
const ALORA_TOKENS: &str = "adapter.alora.invocation_tokens";

/// A PEFT aLoRA's `alora_invocation_tokens`, written as `convert_lora_to_gguf.py`
/// (`set_gguf_parameters`) writes them. Its other source, `invocation_string` without tokens,
/// needs the base model's tokenizer (the converter tokenizes it and drops the first token), so
/// it is refused, naming the key; so is a token list that is not of `u32` ids.
fn alora_tokens(adapter: &Adapter) -> InputResult<Option<Vec<u32>>> {
    let Some(cfg) = adapter.config.as_ref() else {
        return Ok(None);
    };
    let bad = |why: String| Err(InputError::invalid(adapter.config_file(), why));
    match cfg.get("alora_invocation_tokens") {
        Some(serde_json::Value::Array(a)) if !a.is_empty() => {
            let ids: Option<Vec<u32>> = a
                .iter()
                .map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect();
            match ids {
                Some(ids) => Ok(Some(ids)),
                None => bad(format!(
                    "alora_invocation_tokens {} are not token ids (llama.cpp stores them as UINT32)",
                    serde_json::Value::Array(a.clone())
                )),
            }
        }
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::Array(_)) => {
            match cfg.get("invocation_string") {
                Some(serde_json::Value::String(s)) if !s.is_empty() => bad(format!(
                    "aLoRA invocation_string {s:?} without alora_invocation_tokens: llama.cpp's converter tokenizes it with the base model's tokenizer, which lorakit does not run; set alora_invocation_tokens"
                )),
                _ => Ok(None),
            }
        }
        Some(v) => bad(format!(
            "alora_invocation_tokens {v} is not a list of token ids"
        )),
    }
}

/// Writes `adapter` as a GGUF LoRA adapter at `out` (F32, F16 or BF16 factors), atomically.
/// `keep_folds_exact` (`--dtype keep`): a B folded by a factor other than a power of two is
/// written as F32, which holds `fold·B` to f32 rounding where a 16-bit type would round it again
/// (a bf16 adapter's ΔW off PEFT's by ~2e-3 relative). `extra` are provenance metadata entries.
pub fn write(
    adapter: &Adapter,
    target: &Target,
    ty: GgmlType,
    keep_folds_exact: bool,
    out: &Path,
    extra: Vec<Vec<u8>>,
) -> InputResult<(Vec<Written>, u64)> {
    let path = &adapter.path;
    super::peft::params::refuse_write(adapter, "a llama.cpp GGUF adapter")?;
    // PEFT saves the base embedding beside a LoRA on it (`embed_tokens.base_layer.weight`; also
    // `lm_head`'s: `EMBEDDING_LAYER_NAMES`, peft/utils/constants.py); llama.cpp's converter
    // skips `.base_layer.weight` tensors, and so does lorakit. Any other full tensor would
    // replace a base tensor, which a llama.cpp adapter cannot.
    for f in &adapter.full_tensors {
        if !adapter.is_saved_base_copy(f) {
            return Err(InputError::invalid(
                path,
                format!(
                    "full tensor `{}` (modules_to_save): a llama.cpp adapter holds LoRA pairs only",
                    f.name
                ),
            ));
        }
    }
    let alpha = file_alpha(adapter);
    let alora = alora_tokens(adapter)?;
    let mut plan = Vec::new();
    let mut tensors = Vec::new();
    for m in &adapter.modules {
        let why = if m.dora_magnitude.is_some() {
            Some("DoRA")
        } else if m.bias.is_some() {
            Some("lora_bias")
        } else if m.factors.lora().is_none() {
            Some("not plain LoRA")
        } else if matches!(m.kind, ModuleKind::Conv { .. }) {
            Some("a convolution")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(InputError::invalid(
                path,
                format!(
                    "module `{}` is {why}, which llama.cpp adapters cannot hold",
                    m.name
                ),
            ));
        }
        let arch = &target.architecture;
        let (g, rope) = names::gguf_module_in(arch, &m.name).ok_or_else(|| {
            let why = names::why_unmapped(arch, &m.name).unwrap_or("no GGUF tensor name");
            InputError::invalid(path, format!("module `{}` ({arch}): {why}", m.name))
        })?;
        if g == "output" && target.tied_output == Some(true) {
            return Err(InputError::invalid(
                path,
                format!(
                    "module `{}`: the base {} ties its embeddings, so llama.cpp's model has no `output.weight` and refuses an adapter holding one (llama-adapter.cpp: \"does not exist in base model\")",
                    m.name,
                    target.base_path.display()
                ),
            ));
        }
        let name = format!("{g}.weight");
        let embed = m.kind == ModuleKind::Embedding;
        // The model tensor's ggml dims: [in, out] ([dim, vocab] for the embedding).
        let dims = if embed {
            [m.out_features as u64, m.in_features as u64]
        } else {
            [m.in_features as u64, m.out_features as u64]
        };
        if let Some(base) = &target.base {
            match base.get(&name) {
                None => {
                    return Err(InputError::invalid(
                        &target.base_path,
                        format!("no tensor `{name}` for module `{}`", m.name),
                    ))
                }
                Some((_, t)) if t.dims != dims => {
                    return Err(InputError::invalid(
                        &target.base_path,
                        format!(
                            "tensor `{name}` has dims {:?}, module `{}` needs {dims:?}",
                            t.dims, m.name
                        ),
                    ))
                }
                _ => {}
            }
        }
        let heads = match (target.permute, rope) {
            (true, Rope::Q) => Some(target.n_head),
            (true, Rope::K) => Some(target.n_head_kv),
            _ => None,
        };
        let heads = match heads {
            Some(Some(h)) if names::permutable(m.out_features, h) => Some(h),
            Some(_) => {
                return Err(InputError::invalid(
                    &target.base_path,
                    format!("the head count needed to permute `{name}` as llama.cpp does is missing or does not divide its {} rows", m.out_features),
                ))
            }
            None => None,
        };
        let llama_scale = if alpha == 0.0 {
            1.0
        } else {
            alpha / m.rank as f64
        };
        let fold = m.scale / llama_scale;
        let r = m.rank as u64;
        let a_dims = if embed {
            vec![r, m.in_features as u64]
        } else {
            vec![m.in_features as u64, r]
        };
        // A fold by a power of two is exact in any float type; another one rounds B once more
        // in a 16-bit type, so a folded B is written as F32 there unless the type was asked.
        let exact = fold.abs().log2().fract() == 0.0;
        let b_ty = if keep_folds_exact && !exact && ty != GgmlType::F32 {
            GgmlType::F32
        } else {
            ty
        };
        for (suffix, d, ty) in [
            ("lora_a", a_dims, ty),
            ("lora_b", vec![r, m.out_features as u64], b_ty),
        ] {
            let t = OutTensor {
                name: format!("{name}.{suffix}"),
                dims: d,
                ty,
            };
            if !t.dims[0].is_multiple_of(ty.block_size() as u64) {
                return Err(InputError::invalid(
                    path,
                    format!(
                        "tensor `{}`: rows of {} are not whole {ty} blocks",
                        t.name, t.dims[0]
                    ),
                ));
            }
            tensors.push(t);
        }
        plan.push((m, name, heads, fold, b_ty));
    }
    let mut reads = adapter.input_paths();
    if let Some(b) = &target.base {
        reads.extend(b.paths());
    }
    check_writes(&reads, &[out.to_path_buf()], &[])?;
    let mut entries = vec![
        kv_string("general.architecture", &target.architecture),
        kv_string("general.type", "adapter"),
        kv_string("adapter.type", "lora"),
        kv_f32("adapter.lora.alpha", alpha as f32),
    ];
    if let Some(tokens) = alora {
        entries.push(kv_u32s(ALORA_TOKENS, &tokens));
    }
    entries.extend(extra);
    let mut output = Output::new();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        output.create_dir_all(dir)?;
    }
    output.lock(out, LockMode::Exclusive)?;
    let mut rows = Vec::new();
    let bytes;
    {
        let file = output.raw_file(out)?;
        let mut w = GgufWriter::new(file, out, &entries, tensors, 32)?;
        for (m, name, heads, fold, b_ty) in plan {
            let (b, a) = adapter.factors(m)?;
            let a = if m.kind == ModuleKind::Embedding {
                crate::adapter::data::transpose(&a, m.rank, m.in_features)
            } else {
                a.to_vec()
            };
            let mut b = b.to_vec();
            if fold != 1.0 {
                b.iter_mut().for_each(|x| *x = (*x as f64 * fold) as f32);
            }
            if let Some(h) = heads {
                b = names::permute_rows(&b, m.out_features, m.rank, h);
            }
            for (suffix, v, ty) in [("lora_a", &a, ty), ("lora_b", &b, b_ty)] {
                let mut enc = Vec::new();
                quant::quantize_into(ty, v, &mut enc);
                w.write_tensor(&format!("{name}.{suffix}"), &enc)?;
            }
            rows.push(Written {
                from: m.name.clone(),
                to: name,
                rank: m.rank,
                alpha_in: m.alpha,
                scale: m.scale,
                folded: fold,
                permuted: heads.is_some(),
            });
        }
        bytes = w.finish()?;
    }
    output.commit()?;
    Ok((rows, bytes))
}

/// Reads a llama.cpp GGUF LoRA adapter into the adapter model, in Hugging Face terms: module
/// paths from the GGUF names (`blk.N.attn_q.weight` → `model.layers.N.self_attn.q_proj`),
/// `B` rows of q/k un-permuted when `target` is a `llama` model, `token_embd`'s A (stored
/// `[vocab, r]`) transposed back, and `scale = alpha / rank` as llama.cpp applies it (`alpha = 0`:
/// scale 1). Checked as `llama_adapter_lora_init_impl` checks a file: `general.type = adapter`,
/// `adapter.type = lora`, the architecture of `target`, both halves of every pair, `a.ne[1] =
/// b.ne[0]`; `*_norm.weight` tensors are skipped as llama.cpp skips them, any other tensor is an
/// error. The model records format PEFT: its modules are PEFT module paths with PEFT's
/// canonical factors (held in memory, no backing file).
pub fn read(path: &Path, target: &Target) -> InputResult<Adapter> {
    use crate::adapter::algo::Factors;
    use crate::adapter::data::Data;
    use crate::adapter::model::{DoraRule, LoraModule};
    use std::sync::Arc;
    let m = GgufModel::open(path)?;
    let h = m.header();
    let s = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let err = |msg: String| InputError::invalid(path, msg);
    if s("general.type") != "adapter" || s("adapter.type") != "lora" {
        return Err(err(format!(
            "is a GGUF {} (general.type `{}`, adapter.type `{}`), not a llama.cpp LoRA adapter",
            if s("general.type") == "adapter" {
                "adapter of another kind"
            } else {
                "model"
            },
            s("general.type"),
            s("adapter.type")
        )));
    }
    if s("general.architecture") != target.architecture {
        return Err(err(format!(
            "adapter architecture `{}` does not match the base's `{}`",
            s("general.architecture"),
            target.architecture
        )));
    }
    // llama.cpp reads the key as a FLOAT32 (gguf_get_val_f32 asserts the type); absent is 0.
    // Another type (an integer, F64, a bool, …) is a file llama.cpp aborts on, and no
    // converter writes one (convert_lora_to_gguf.py: add_float32): refused, not read as a
    // number (a U64 of 2^64-1 merged with a scale of 10^18).
    let alpha = match h.get("adapter.lora.alpha") {
        None => 0.0,
        Some(Value::F32(a)) if a.is_finite() => f64::from(*a),
        Some(v @ Value::F32(_)) => {
            return Err(err(format!(
                "adapter.lora.alpha is {}, not a finite number",
                v.to_json()
            )))
        }
        Some(v) => {
            return Err(err(format!(
                "adapter.lora.alpha is {} stored as {:?}; llama.cpp reads it only as a FLOAT32 \
                 (gguf_get_val_f32 asserts the type)",
                v.to_json(),
                v.value_type()
            )))
        }
    };
    // An aLoRA (its update applies only after the invocation tokens): kept as the PEFT config
    // key it came from, so that a merge refuses it as it refuses the PEFT folder
    // ([`super::peft::merge_refusal`]); a type llama.cpp throws on is refused here.
    let alora = match h.get(ALORA_TOKENS) {
        None => None,
        Some(Value::Array(ValueType::U32, items)) => Some(
            items
                .iter()
                .map(|v| match v {
                    Value::U32(x) => *x,
                    _ => unreachable!("a U32 array holds U32 values"),
                })
                .collect::<Vec<u32>>(),
        ),
        Some(v) => {
            return Err(err(format!(
            "{ALORA_TOKENS} is {} stored as {:?}; llama.cpp reads it only as an ARRAY of UINT32",
            v.to_json(),
            v.value_type()
        )))
        }
    };
    let mut modules = Vec::new();
    for (f, ta) in m.tensors() {
        let name = &ta.name;
        let Some(stem) = name.strip_suffix(".lora_a") else {
            if let Some(stem) = name.strip_suffix(".lora_b") {
                // llama_adapter_lora_init_impl: "LoRA tensor pair for '%s' is missing one component".
                if m.get(&format!("{stem}.lora_a")).is_none() {
                    return Err(err(format!("`{name}` has no `{stem}.lora_a`")));
                }
                continue;
            }
            if name.ends_with("_norm.weight") {
                continue;
            }
            return Err(err(format!(
                "tensor `{name}` has an unexpected suffix (llama.cpp refuses it too)"
            )));
        };
        let (fb, tb) = m
            .get(&format!("{stem}.lora_b"))
            .ok_or_else(|| err(format!("`{name}` has no `{stem}.lora_b`")))?;
        if ta.dims.len() != 2 || tb.dims.len() != 2 {
            return Err(err(format!("`{stem}`: lora_a and lora_b must be 2-D")));
        }
        let hf = names::hf_name_in(&target.architecture, stem)
            .and_then(|n| n.strip_suffix(".weight").map(str::to_owned))
            .ok_or_else(|| err(format!("tensor `{stem}` has no Hugging Face module name")))?;
        let (a, b) = (f.dequantize(ta)?, fb.dequantize(tb)?);
        let r = tb.dims[0] as usize;
        let out_f = tb.dims[1] as usize;
        let embed = stem == "token_embd.weight";
        let (in_f, a) = if embed {
            if ta.dims[0] as usize != r {
                return Err(err(format!(
                    "`{stem}`: lora_a dims {:?} do not hold rank {r}",
                    ta.dims
                )));
            }
            let vocab = ta.dims[1] as usize;
            (vocab, crate::adapter::data::transpose(&a, vocab, r))
        } else {
            if ta.dims[1] as usize != r {
                return Err(err(format!(
                    "`{stem}`: lora_a ne[1] {} is not lora_b ne[0] {r} (llama.cpp: lora_a is not transposed)",
                    ta.dims[1]
                )));
            }
            (ta.dims[0] as usize, a)
        };
        let (_, rope) = names::gguf_module_in(&target.architecture, &hf).expect("mapped back");
        let heads = match (target.permute, rope) {
            (true, Rope::Q) => target.n_head,
            (true, Rope::K) => target.n_head_kv,
            _ => None,
        };
        let b = match heads {
            Some(hh) if names::permutable(out_f, hh) => names::unpermute_rows(&b, out_f, r, hh),
            Some(_) => {
                return Err(err(format!(
                    "`{stem}`: {out_f} rows do not split into the base's heads"
                )))
            }
            None if target.permute && rope != Rope::None => {
                return Err(err(format!(
                    "`{stem}`: the base's head counts are needed to un-permute its rows"
                )))
            }
            None => b,
        };
        let (alpha_m, scale) = if alpha == 0.0 {
            (r as f64, 1.0)
        } else {
            (alpha, alpha / r as f64)
        };
        modules.push(LoraModule {
            name: hf,
            kind: if embed {
                ModuleKind::Embedding
            } else {
                ModuleKind::Linear
            },
            rank: r,
            alpha: alpha_m,
            scale,
            out_features: out_f,
            in_features: in_f,
            factors: Factors::Lora {
                a: Data::Owned(Arc::new(a)),
                b: Data::Owned(Arc::new(b)),
            },
            base_transposed: embed,
            dora_magnitude: None,
            dora_rule: DoraRule::Peft,
            bias: None,
        });
    }
    let mut adapter = Adapter::of_modules(
        crate::adapter::formats::format::Format::Peft,
        path.to_path_buf(),
        modules,
    );
    if let Some(tokens) = alora {
        adapter.config = Some(serde_json::json!({ "alora_invocation_tokens": tokens }));
    }
    Ok(adapter)
}
