//! The loaders' rules, as data: one [`Rule`] per (target, condition), each with the file and
//! version of the loader it was read from. The engine in [`super`] evaluates every [`When`] once and
//! fires the rules of the requested targets; nothing here computes anything.
//!
//! Severity says what the loader does when the condition holds:
//! [`Severity::Error`] — it refuses the adapter (an exception, a non-zero exit);
//! [`Severity::Silent`] — it loads, but part of the adapter is not applied, or applied with another
//! scale, without failing (the no-op case); [`Severity::Warning`] — it loads and applies
//! everything, given a server setting or a note the user must know about.
//!
//! Versions: vLLM and SGLang are read at the `vllm-project/vllm` / `sgl-project/sglang` commits
//! named per rule (the newest stored copies, 2026); LoRAX at `predibase/lorax` a7394ba
//! (2026-05-28); llama.cpp `convert_lora_to_gguf.py` at 56bf500; diffusers 0.42.1 and PEFT 0.21.2
//! are the installed packages the fixtures were made with (`fixtures/gen/requirements.txt`),
//! and their verdicts on the fixtures are recorded by `fixtures/gen/check_fixtures.py`;
//! ComfyUI `comfy/lora.py` at 41444b5, `comfy/weight_adapter/lora.py` at 6fd406f.

use super::Target;

pub use super::when::{ScaleRule, Severity, Supported, When};

/// Where a rule was read.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub repo: &'static str,
    pub file: &'static str,
    /// Commit or released version.
    pub version: &'static str,
    /// The function or line the rule is in.
    pub at: &'static str,
}

/// One rule of one loader.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub id: &'static str,
    pub target: Target,
    pub when: When,
    pub severity: Severity,
    pub why: &'static str,
    pub source: Source,
}

const LLAMA_LINEAR: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "embed_tokens",
    "lm_head",
];

/// LoRAX `server/lorax_server/models/flash_llama.py` `ADAPTER_LAYERS` (also flash_mistral,
/// flash_qwen2: the same names).
const LORAX_LLAMA: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "lm_head",
];

const VLLM: &str = "vllm-project/vllm";
const SGLANG: &str = "sgl-project/sglang";
const LORAX: &str = "predibase/lorax";
const LLAMACPP: &str = "ggml-org/llama.cpp";
const DIFFUSERS: &str = "huggingface/diffusers";
const COMFY: &str = "comfyanonymous/ComfyUI";
const PEFT: &str = "huggingface/peft";

const fn src(
    repo: &'static str,
    file: &'static str,
    version: &'static str,
    at: &'static str,
) -> Source {
    Source {
        repo,
        file,
        version,
        at,
    }
}

const VLLM_HELPER: Source = src(
    VLLM,
    "vllm/lora/peft_helper.py",
    "e745baf",
    "PEFTHelper._validate_features / validate_legal",
);
const VLLM_UTILS: Source = src(
    VLLM,
    "vllm/lora/utils.py",
    "0fd1570",
    "parse_fine_tuned_lora_name",
);
const VLLM_MODEL: Source = src(
    VLLM,
    "vllm/lora/lora_model.py",
    "532cc25",
    "LoRAModel.from_local_checkpoint / from_lora_tensors",
);
const LORAX_LORA: Source = src(
    LORAX,
    "server/lorax_server/adapters/lora.py",
    "a7394ba",
    "LoraConfig.map_weights_for_model",
);
const LLAMACPP_CONVERT: Source = src(
    LLAMACPP,
    "convert_lora_to_gguf.py",
    "56bf500",
    "LoraModel.get_tensors",
);
const SGLANG_LORA: Source = src(
    SGLANG,
    "python/sglang/srt/lora/lora.py",
    "main (2026)",
    "LoRAAdapter.normalize_qkv_proj",
);
const COMFY_LORA: Source = src(COMFY, "comfy/lora.py", "41444b5", "load_lora");

/// Every rule lorakit knows, in report order (per target, errors first).
pub const RULES: &[Rule] = &[
    // ---------------------------------------------------------------- vLLM
    Rule {
        id: "vllm.format",
        target: Target::Vllm,
        when: When::NotPeft,
        severity: Severity::Error,
        why: "vLLM loads a PEFT folder (adapter_config.json + adapter_model.safetensors); a kohya/LyCORIS file is not read (convert it to a PEFT folder with lorakit's convert operation and the base model)",
        source: src(VLLM, "vllm/lora/lora_model.py", "532cc25", "LoRAModel.from_local_checkpoint (\"doesn't contain tensors\")"),
    },
    Rule {
        id: "vllm.dora",
        target: Target::Vllm,
        when: When::Dora,
        severity: Severity::Error,
        why: "vLLM does not support DoRA (\"vLLM does not yet support DoRA.\")",
        source: VLLM_HELPER,
    },
    Rule {
        id: "vllm.modules_to_save",
        target: Target::Vllm,
        when: When::ModulesToSave,
        severity: Severity::Error,
        why: "vLLM refuses modules_to_save (\"vLLM only supports modules_to_save being None.\"), and a full tensor is not a LoRA weight",
        source: VLLM_HELPER,
    },
    Rule {
        id: "vllm.lora_bias",
        target: Target::Vllm,
        when: When::LoraBias,
        severity: Severity::Error,
        why: "a `lora_B.bias` tensor is \"unsupported LoRA weight\": only lora_A/lora_B.weight and lora_embedding_A/B are parsed",
        source: VLLM_UTILS,
    },
    Rule {
        id: "vllm.trainable_tokens",
        target: Target::Vllm,
        when: When::TrainableTokens,
        severity: Severity::Error,
        why: "`…token_adapter.trainable_tokens_delta` is \"unsupported LoRA weight\": only lora_A/lora_B.weight and lora_embedding_A/B are parsed (trainable_token_indices is not a PEFTHelper field); a LoRA on the embedding or lm_head loads instead",
        source: VLLM_UTILS,
    },
    Rule {
        id: "vllm.max_rank",
        target: Target::Vllm,
        when: When::RankAbove(512),
        severity: Severity::Error,
        why: "rank above 512, the largest --max-lora-rank vLLM accepts (MaxLoRARanks = 1, 8, 16, 32, 64, 128, 256, 320, 512)",
        source: src(VLLM, "vllm/config/lora.py", "a78dc92", "MaxLoRARanks"),
    },
    Rule {
        id: "vllm.unsupported_module",
        target: Target::Vllm,
        when: When::ModuleNotSupported(Supported::BaseLinear(LLAMA_LINEAR)),
        severity: Severity::Error,
        why: "a module that is not a linear or embedding layer of the model: \"expected target modules in … but received …\"",
        source: src(VLLM, "vllm/lora/lora_model.py", "532cc25", "check_unexpected_modules (utils.get_supported_lora_modules: every LinearBase + embedding_modules)"),
    },
    Rule {
        id: "vllm.shape",
        target: Target::Vllm,
        when: When::ShapeMismatch,
        severity: Severity::Error,
        why: "factor shapes do not fit the base layer (set_lora copies into buffers of the base's size)",
        source: src(VLLM, "vllm/lora/model_manager.py", "bb1d76e", "activate_adapter → module.set_lora"),
    },
    Rule {
        id: "vllm.vocab",
        target: Target::Vllm,
        when: When::VocabMismatch,
        severity: Severity::Error,
        why: "\"The embedding LoRA size must be consistent with the base model's vocabulary size\"",
        source: VLLM_MODEL,
    },
    Rule {
        id: "vllm.not_applied",
        target: Target::Vllm,
        when: When::NameNotExact,
        severity: Severity::Silent,
        why: "LoRA is set only on modules named exactly as the model's; these names (another root prefix) load and are never applied",
        source: src(VLLM, "vllm/lora/model_manager.py", "bb1d76e", "activate_adapter (modules without a LoRA are reset)"),
    },
    Rule {
        id: "vllm.not_found",
        target: Target::Vllm,
        when: When::NameNotFound,
        severity: Severity::Silent,
        why: "no module of the base has this name: the weights load and are never applied",
        source: src(VLLM, "vllm/lora/model_manager.py", "bb1d76e", "activate_adapter"),
    },
    Rule {
        id: "vllm.scale",
        target: Target::Vllm,
        when: When::ScaleDiffers(ScaleRule::GlobalAlphaGlobalRank { rslora: true }),
        severity: Severity::Silent,
        why: "vLLM scales every module by lora_alpha/r (√r with use_rslora) from the top-level fields: rank_pattern and alpha_pattern are dropped by PEFTHelper.from_dict",
        source: src(VLLM, "vllm/lora/peft_helper.py", "e745baf", "PEFTHelper.from_dict / __post_init__ (vllm_lora_scaling_factor)"),
    },
    Rule {
        id: "vllm.rank_flag",
        target: Target::Vllm,
        when: When::RankAbove(16),
        severity: Severity::Warning,
        why: "rank above the default --max-lora-rank 16: start vLLM with --max-lora-rank at least this rank (one of 32, 64, 128, 256, 320, 512)",
        source: VLLM_HELPER,
    },
    Rule {
        id: "vllm.dtype",
        target: Target::Vllm,
        when: When::DtypeDiffersFromBase,
        severity: Severity::Warning,
        why: "factors are cast to lora_dtype, which \"auto\" (the default) sets to the model's dtype: the adapter is applied in the base's precision, not its own",
        source: src(VLLM, "vllm/config/lora.py", "a78dc92", "LoRAConfig.verify_with_model_config; lora_model.py from_lora_tensors (tensor.to(dtype))"),
    },
    // ---------------------------------------------------------------- SGLang
    Rule {
        id: "sglang.format",
        target: Target::Sglang,
        when: When::NotPeft,
        severity: Severity::Error,
        why: "SGLang reads adapter_config.json and the adapter's safetensors (a PEFT folder)",
        source: src(SGLANG, "python/sglang/srt/lora/lora_config.py", "main (2026)", "LoRAConfig.get_lora_config"),
    },
    Rule {
        id: "sglang.dora",
        target: Target::Sglang,
        when: When::Dora,
        severity: Severity::Error,
        why: "\"LoRA serving currently doesn't support DoRA adapters\"",
        source: src(SGLANG, "python/sglang/srt/lora/lora_manager.py", "main (2026)", "LoRAManager.validate_new_adapter"),
    },
    Rule {
        id: "sglang.added_tokens",
        target: Target::Sglang,
        when: When::AddedTokens,
        severity: Severity::Error,
        why: "\"LoRA serving currently doesn't support adapters that add tokens to the vocabulary\" (added_tokens.json ids ≥ the base vocabulary)",
        source: src(SGLANG, "python/sglang/srt/lora/lora_manager.py", "main (2026)", "LoRAManager.validate_new_adapter / lora_config.py lora_added_tokens_size"),
    },
    Rule {
        id: "sglang.scale",
        target: Target::Sglang,
        when: When::ScaleDiffers(ScaleRule::GlobalAlphaGlobalRank { rslora: false }),
        severity: Severity::Silent,
        why: "SGLang scales every module by lora_alpha/r from the top-level fields (no use_rslora, rank_pattern or alpha_pattern: LoRAConfig reads r, lora_alpha, target_modules, use_dora)",
        source: src(SGLANG, "python/sglang/srt/lora/lora.py", "main (2026)", "LoRAAdapter.__init__ (self.scaling = lora_alpha / r)"),
    },
    Rule {
        id: "sglang.lora_bias",
        target: Target::Sglang,
        when: When::LoraBias,
        severity: Severity::Silent,
        why: "every tensor of a layer whose name lacks \"lora_A\" is loaded into the lora_B slot of its module, so `lora_B.bias` (read first: keys are sorted) is overwritten by `lora_B.weight` and never applied",
        source: src(SGLANG, "python/sglang/srt/lora/mem_pool.py", "main (2026)", "LoRAMemoryPool.load_lora_weight_to_buffer (if \"lora_A\" in name … else temp_B_buffer)"),
    },
    Rule {
        id: "sglang.modules_to_save",
        target: Target::Sglang,
        when: When::ModulesToSave,
        severity: Severity::Silent,
        why: "full embed_tokens/lm_head tensors are kept only when the module is in target_modules (then as LoRA weights), else skipped with a debug log (\"Skipping … not in adapter's target_modules\"); modules_to_save is not read",
        source: src(SGLANG, "python/sglang/srt/lora/lora.py", "main (2026)", "LoRAAdapter._process_weight"),
    },
    Rule {
        id: "sglang.trainable_tokens",
        target: Target::Sglang,
        when: When::TrainableTokens,
        severity: Severity::Silent,
        why: "trainable-token rows are handled like full embed_tokens/lm_head tensors: skipped unless the module is a LoRA target (trainable_token_indices is not read)",
        source: src(SGLANG, "python/sglang/srt/lora/lora.py", "main (2026)", "LoRAAdapter._process_weight"),
    },
    Rule {
        id: "sglang.q_without_v",
        target: Target::Sglang,
        when: When::SiblingMissing { has: &["q_proj"], lacks: "v_proj" },
        severity: Severity::Error,
        why: "q/k/v LoRAs are stacked into qkv_proj and a missing k is zero-filled from v's shape: a block with q_proj but no v_proj raises KeyError",
        source: SGLANG_LORA,
    },
    Rule {
        id: "sglang.kv_without_q",
        target: Target::Sglang,
        when: When::SiblingMissing { has: &["k_proj", "v_proj"], lacks: "q_proj" },
        severity: Severity::Silent,
        why: "stacking into qkv_proj starts from q_proj (\"every lora adaptor should contain lora modules for q_proj\"): k/v LoRAs of a block without q_proj are never stacked",
        source: SGLANG_LORA,
    },
    Rule {
        id: "sglang.up_without_gate",
        target: Target::Sglang,
        when: When::SiblingMissing { has: &["up_proj"], lacks: "gate_proj" },
        severity: Severity::Silent,
        why: "stacking into gate_up_proj starts from gate_proj (a missing up_proj is zero-filled, not the reverse): up_proj LoRAs of a block without gate_proj are never stacked",
        source: src(SGLANG, "python/sglang/srt/lora/lora.py", "main (2026)", "LoRAAdapter.normalize_gate_up_proj"),
    },
    // ---------------------------------------------------------------- LoRAX
    Rule {
        id: "lorax.format",
        target: Target::Lorax,
        when: When::NotPeft,
        severity: Severity::Error,
        why: "LoRAX reads the adapter config with PEFT's LoraConfig.from_pretrained (a PEFT folder)",
        source: src(LORAX, "server/lorax_server/adapters/lora.py", "a7394ba", "LoraConfig.load"),
    },
    Rule {
        id: "lorax.unsupported_module",
        target: Target::Lorax,
        when: When::ModuleNotSupported(Supported::Fixed(LORAX_LLAMA)),
        severity: Severity::Silent,
        why: "only the model's adapter layers (q/k/v/o/gate/up/down_proj, lm_head for Llama, Mistral, Qwen2) are mapped; other tensors are never read and not reported",
        source: src(LORAX, "server/lorax_server/models/flash_llama.py", "a7394ba", "ADAPTER_LAYERS / adapter_target_to_layer"),
    },
    Rule {
        id: "lorax.key_prefix",
        target: Target::Lorax,
        when: When::KeyPrefixMissing,
        severity: Severity::Silent,
        why: "weights are looked up as `base_model.model.{module}.lora_A.weight`: keys without that prefix are never read",
        source: LORAX_LORA,
    },
    Rule {
        id: "lorax.dora",
        target: Target::Lorax,
        when: When::Dora,
        severity: Severity::Silent,
        why: "lora_magnitude_vector is never read: a DoRA adapter is applied as plain LoRA",
        source: LORAX_LORA,
    },
    Rule {
        id: "lorax.lora_bias",
        target: Target::Lorax,
        when: When::LoraBias,
        severity: Severity::Silent,
        why: "lora_B.bias is never read",
        source: LORAX_LORA,
    },
    Rule {
        id: "lorax.modules_to_save",
        target: Target::Lorax,
        when: When::ModulesToSave,
        severity: Severity::Silent,
        why: "full tensors (modules_to_save) are never read",
        source: LORAX_LORA,
    },
    Rule {
        id: "lorax.embedding",
        target: Target::Lorax,
        when: When::EmbeddingLora,
        severity: Severity::Silent,
        why: "lora_embedding_A/B are never read (embed_tokens is not an adapter layer)",
        source: LORAX_LORA,
    },
    Rule {
        id: "lorax.trainable_tokens",
        target: Target::Lorax,
        when: When::TrainableTokens,
        severity: Severity::Silent,
        why: "only lora_A/lora_B weights of adapter layers are looked up: trainable-token rows are never read",
        source: LORAX_LORA,
    },
    Rule {
        id: "lorax.partial_layers",
        target: Target::Lorax,
        when: When::PartialLayers,
        severity: Severity::Silent,
        why: "LoraWeights.load returns None for a layer type as soon as one decoder layer lacks it: the whole type is dropped in every layer",
        source: src(LORAX, "server/lorax_server/adapters/lora.py", "a7394ba", "LoraWeights.load (\"if weight_name not in module_map: return None\")"),
    },
    Rule {
        id: "lorax.not_applied",
        target: Target::Lorax,
        when: When::NameNotExact,
        severity: Severity::Silent,
        why: "modules are looked up by the model's own names (model.layers.N.…): these names are never read",
        source: src(LORAX, "server/lorax_server/models/flash_llama.py", "a7394ba", "adapter_target_to_layer"),
    },
    Rule {
        id: "lorax.not_found",
        target: Target::Lorax,
        when: When::NameNotFound,
        severity: Severity::Silent,
        why: "no module of the base has this name: never read",
        source: LORAX_LORA,
    },
    Rule {
        id: "lorax.scale",
        target: Target::Lorax,
        when: When::ScaleDiffers(ScaleRule::GlobalAlphaGlobalRank { rslora: true }),
        severity: Severity::Silent,
        why: "LoRAX scales every module by lora_alpha/r (√r with use_rslora) from the top-level fields: rank_pattern and alpha_pattern are not read",
        source: src(LORAX, "server/lorax_server/adapters/lora.py", "a7394ba", "LoraWeights.load → get_scaling_factor(config.lora_alpha, config.r)"),
    },
    Rule {
        id: "lorax.dtype",
        target: Target::Lorax,
        when: When::DtypeDiffersFromBase,
        severity: Severity::Warning,
        why: "lora_A/lora_B are loaded with .to(model.dtype): the adapter is applied in the base's precision, not its own",
        source: src(LORAX, "server/lorax_server/adapters/lora.py", "a7394ba", "LoraWeights.load → utils/weights.py load_module_weight (f.get_tensor(name).to(dtype))"),
    },
    // ---------------------------------------------------------------- llama.cpp
    Rule {
        id: "llama.cpp.format",
        target: Target::LlamaCpp,
        when: When::NotPeft,
        severity: Severity::Error,
        why: "convert_lora_to_gguf.py reads a PEFT folder (adapter_config.json + adapter_model.safetensors)",
        source: src(LLAMACPP, "convert_lora_to_gguf.py", "56bf500", "__main__ (lora_config = dir_lora / \"adapter_config.json\")"),
    },
    Rule {
        id: "llama.cpp.dora",
        target: Target::LlamaCpp,
        when: When::Dora,
        severity: Severity::Error,
        why: "lora_magnitude_vector is \"Not a lora_A or lora_B tensor\": the converter exits 1",
        source: LLAMACPP_CONVERT,
    },
    Rule {
        id: "llama.cpp.lora_bias",
        target: Target::LlamaCpp,
        when: When::LoraBias,
        severity: Severity::Error,
        why: "lora_B.bias is \"Not a lora_A or lora_B tensor\": the converter exits 1",
        source: LLAMACPP_CONVERT,
    },
    Rule {
        id: "llama.cpp.modules_to_save",
        target: Target::LlamaCpp,
        when: When::ModulesToSave,
        severity: Severity::Error,
        why: "full tensors (modules_to_save, e.g. embed_tokens/lm_head from added tokens) are refused: \"Unexpected name\", exit 1 (llama.cpp #9948)",
        source: LLAMACPP_CONVERT,
    },
    Rule {
        id: "llama.cpp.trainable_tokens",
        target: Target::LlamaCpp,
        when: When::TrainableTokens,
        severity: Severity::Error,
        why: "trainable-token rows are \"Not a lora_A or lora_B tensor\": the converter exits 1 (only lora_A/B, lora_embedding_A/B, saved base layers and norms are accepted)",
        source: LLAMACPP_CONVERT,
    },
    Rule {
        id: "llama.cpp.tied_lm_head",
        target: Target::LlamaCpp,
        when: When::TiedLmHead,
        severity: Severity::Error,
        why: "\"lm_head is present in adapter, but is ignored in base model\" (tied embeddings, llama.cpp #9065)",
        source: src(LLAMACPP, "convert_lora_to_gguf.py", "56bf500", "LoraModel.modify_tensors"),
    },
    Rule {
        id: "llama.cpp.not_found",
        target: Target::LlamaCpp,
        when: When::NameNotFound,
        severity: Severity::Error,
        why: "a tensor name the base architecture does not have cannot be mapped to a GGUF tensor",
        source: src(LLAMACPP, "convert_lora_to_gguf.py", "56bf500", "LoraModel.modify_tensors → ModelBase.modify_tensors / map_tensor_name"),
    },
    Rule {
        id: "llama.cpp.shape",
        target: Target::LlamaCpp,
        when: When::ShapeMismatch,
        severity: Severity::Error,
        why: "the runtime refuses factors that do not fit the model tensor: \"tensor … has incorrect shape (hint: maybe wrong base model?)\"",
        source: src(LLAMACPP, "src/llama-adapter.cpp", "master (2026)", "llama_adapter_lora_init_impl (validate tensor shape)"),
    },
    Rule {
        id: "llama.cpp.vocab",
        target: Target::LlamaCpp,
        when: When::VocabMismatch,
        severity: Severity::Error,
        why: "an embedding LoRA is checked against token_embd's vocabulary: \"tensor … has incorrect shape (hint: maybe wrong base model?)\"",
        source: src(LLAMACPP, "src/llama-adapter.cpp", "master (2026)", "llama_adapter_lora_init_impl (is_token_embd shape check)"),
    },
    Rule {
        id: "llama.cpp.scale",
        target: Target::LlamaCpp,
        when: When::ScaleDiffers(ScaleRule::GlobalAlphaModuleRank),
        severity: Severity::Silent,
        why: "the GGUF holds one adapter.lora.alpha (the top-level lora_alpha) and the runtime scales by alpha/rank of each tensor: alpha_pattern and use_rslora are lost",
        source: src(LLAMACPP, "src/llama-adapter.h", "master (2026)", "llama_adapter_lora_weight::get_scale; convert_lora_to_gguf.py set_gguf_parameters"),
    },
    Rule {
        id: "llama.cpp.dtype",
        target: Target::LlamaCpp,
        when: When::AdapterDtype(&["F64"]),
        severity: Severity::Warning,
        why: "the converter reads F64/F32/BF16/F16/F8 tensors but writes the GGUF adapter as --outtype f32 (the default), f16, bf16 or q8_0: f64 factors are rounded to f32 at best",
        source: src(LLAMACPP, "convert_lora_to_gguf.py", "master (2026)", "parse_args (--outtype choices) / LazyTorchTensor._dtype_str_map"),
    },
    // ---------------------------------------------------------------- diffusers
    Rule {
        id: "diffusers.llm",
        target: Target::Diffusers,
        when: When::LlmAdapter,
        severity: Severity::Error,
        why: "diffusers loads LoRAs into diffusion pipelines (UNet/transformer, text encoders); this adapter is for a causal LM",
        source: src(DIFFUSERS, "src/diffusers/loaders/lora_pipeline.py", "0.42.1", "LoraLoaderMixin classes"),
    },
    Rule {
        id: "diffusers.lycoris",
        target: Target::Diffusers,
        when: When::NonLoraAlgoSdPrefixed,
        severity: Severity::Error,
        why: "kohya-named LoHa/LoKr/Tucker/full keys are not converted: \"The following keys have not been correctly renamed\" (diffusers #13137)",
        source: src(DIFFUSERS, "src/diffusers/loaders/lora_conversion_utils.py", "0.42.1", "_convert_non_diffusers_lora_to_diffusers"),
    },
    Rule {
        id: "diffusers.dtype",
        target: Target::Diffusers,
        when: When::AdapterDtype(&["F64"]),
        severity: Severity::Warning,
        why: "load_lora_into_unet builds the LoRA layers in the pipeline component's dtype and copies the file's tensors into them (PEFT set_peft_model_state_dict): f64 factors are applied rounded (F8/F16/BF16 factors convert exactly to an f32 or wider component)",
        source: src(DIFFUSERS, "src/diffusers/loaders/peft.py", "0.42.1", "PeftAdapterMixin.load_lora_adapter (inject_adapter_in_model, set_peft_model_state_dict); checked with fixtures/gen/check_diffusers_dtype.py"),
    },
    Rule {
        id: "diffusers.prefix",
        target: Target::Diffusers,
        when: When::NotSdPrefixed,
        severity: Severity::Silent,
        why: "kohya names are converted only when every key starts with lora_unet_/lora_te_/lora_te1_/lora_te2_; these keys keep their names, fall under no pipeline component (`unet.`, `text_encoder.`) and nothing is applied (SD/SDXL pipelines)",
        source: src(DIFFUSERS, "src/diffusers/loaders/lora_pipeline.py", "0.42.1", "StableDiffusionLoraLoaderMixin.lora_state_dict; lora_base.py prefix filter"),
    },
    Rule {
        id: "diffusers.dora",
        target: Target::Diffusers,
        when: When::Dora,
        severity: Severity::Silent,
        why: "dora_scale keys are filtered out with a warning: the adapter is applied as plain LoRA",
        source: src(DIFFUSERS, "src/diffusers/loaders/lora_pipeline.py", "0.42.1", "StableDiffusionLoraLoaderMixin.lora_state_dict (is_dora_scale_present)"),
    },
    Rule {
        id: "diffusers.peft_prefix",
        target: Target::Diffusers,
        when: When::PeftKeys,
        severity: Severity::Silent,
        why: "a pipeline keeps only keys under its component prefixes (`unet.`, `text_encoder.`, `transformer.`); PEFT's `base_model.model.` keys match none: \"No LoRA keys associated … found\" is logged and nothing is applied",
        source: src(DIFFUSERS, "src/diffusers/loaders/lora_base.py", "0.42.1", "_load_lora_into_text_encoder; loaders/peft.py load_lora_adapter (prefix filter)"),
    },
    // ---------------------------------------------------------------- ComfyUI
    Rule {
        id: "comfy.llm",
        target: Target::Comfy,
        when: When::LlmAdapter,
        severity: Severity::Error,
        why: "ComfyUI patches diffusion models and their text encoders; this adapter is for a causal LM",
        source: src(COMFY, "comfy/lora.py", "41444b5", "model_lora_keys_unet / model_lora_keys_clip"),
    },
    Rule {
        id: "comfy.peft_prefix",
        target: Target::Comfy,
        when: When::PeftKeys,
        severity: Severity::Silent,
        why: "`base_model.model.` keys are mapped only for SD3 and HunyuanDiT models; for other models every key prints \"lora key not loaded\" and is skipped",
        source: src(COMFY, "comfy/lora.py", "41444b5", "model_lora_keys_unet"),
    },
    Rule {
        id: "comfy.extra_keys",
        target: Target::Comfy,
        when: When::PeftExtraKeys,
        severity: Severity::Silent,
        why: "only lora_A/lora_B pairs (and kohya/LyCORIS keys) are read; these print \"lora key not loaded\" and are skipped (PEFT DoRA magnitudes, lora_B.bias, embedding LoRA, full tensors)",
        source: COMFY_LORA,
    },
    Rule {
        id: "comfy.not_found",
        target: Target::Comfy,
        when: When::NameNotFound,
        severity: Severity::Silent,
        why: "a key that maps to no model weight prints \"lora key not loaded\" and is skipped",
        source: COMFY_LORA,
    },
    Rule {
        id: "comfy.scale",
        target: Target::Comfy,
        when: When::ScaleDiffers(ScaleRule::AlphaKeyOrOne),
        severity: Severity::Silent,
        why: "the scale is `{module}.alpha`/rank, or 1 without an alpha tensor: a PEFT folder's lora_alpha (adapter_config.json) and diffusers' lora_adapter_metadata are not read",
        source: src(COMFY, "comfy/weight_adapter/lora.py", "6fd406f", "LoRAAdapter.calculate_weight (alpha = 1.0 when v[2] is None)"),
    },
    // ---------------------------------------------------------------- PEFT
    Rule {
        id: "peft.format",
        target: Target::Peft,
        when: When::NotPeft,
        severity: Severity::Error,
        why: "PeftModel.from_pretrained needs adapter_config.json beside the weights (convert it to a PEFT folder with lorakit's convert operation and the base model)",
        source: src(PEFT, "src/peft/peft_model.py", "0.21.2", "PeftModel.from_pretrained"),
    },
    Rule {
        id: "peft.shape",
        target: Target::Peft,
        when: When::ShapeMismatch,
        severity: Severity::Error,
        why: "load_state_dict refuses a size mismatch between the adapter and the LoRA layer built on the base",
        source: src(PEFT, "src/peft/utils/save_and_load.py", "0.21.2", "set_peft_model_state_dict"),
    },
    Rule {
        id: "peft.vocab",
        target: Target::Peft,
        when: When::VocabMismatch,
        severity: Severity::Error,
        why: "lora_embedding_A is sized by the base's vocabulary: a size mismatch on load",
        source: src(PEFT, "src/peft/utils/save_and_load.py", "0.21.2", "set_peft_model_state_dict"),
    },
    Rule {
        id: "peft.trainable_tokens",
        target: Target::Peft,
        when: When::TrainableTokensMismatch,
        severity: Severity::Error,
        why: "trainable-token rows must be [len(indices), embedding dim] of a base module that trainable_token_indices names, with every index below its vocabulary: load_state_dict refuses another size",
        source: src(PEFT, "src/peft/tuners/trainable_tokens/layer.py", "0.21.2", "TrainableTokensLayer.update_layer; utils/save_and_load.py set_peft_model_state_dict"),
    },
    Rule {
        id: "peft.not_found",
        target: Target::Peft,
        when: When::NameNotFound,
        severity: Severity::Silent,
        why: "no module of the base has this name: its weights are unexpected keys, left out with a warning",
        source: src(PEFT, "src/peft/utils/save_and_load.py", "0.21.2", "set_peft_model_state_dict (unexpected_keys)"),
    },
    Rule {
        id: "peft.not_applied",
        target: Target::Peft,
        when: When::NameNotExact,
        severity: Severity::Silent,
        why: "keys name modules under another root prefix: the LoRA layers PEFT builds keep their zero init and the keys are left out with a warning",
        source: src(PEFT, "src/peft/utils/save_and_load.py", "0.21.2", "set_peft_model_state_dict (unexpected_keys)"),
    },
    Rule {
        id: "peft.dtype",
        target: Target::Peft,
        when: When::AdapterDtype(&["F64"]),
        severity: Severity::Warning,
        why: "the LoRA weights PEFT builds are float32 (autocast_adapter_dtype=True) and load_state_dict copies the file's tensors into them: f64 factors are applied rounded to f32 (F8/F16/BF16 factors convert exactly)",
        source: src(PEFT, "src/peft/peft_model.py", "0.21.2", "PeftModel.from_pretrained → load_adapter (autocast_adapter_dtype); checked with fixtures/gen/check_dtype_load.py"),
    },
];

/// The rules of one target, in table order.
pub fn for_target(t: Target) -> impl Iterator<Item = &'static Rule> {
    RULES.iter().filter(move |r| r.target == t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are unique and spelled `{target}.{what}`; every rule says where it was read; every
    /// target has rules.
    #[test]
    fn the_table_is_well_formed() {
        let mut ids = std::collections::BTreeSet::new();
        for r in RULES {
            assert!(ids.insert(r.id), "duplicate rule id {}", r.id);
            let (t, what) = r.id.rsplit_once('.').unwrap();
            assert_eq!(t, r.target.name(), "{}", r.id);
            assert!(!what.is_empty());
            assert!(!r.why.is_empty() && !r.why.ends_with('.'), "{}", r.id);
            let s = r.source;
            assert!(
                s.repo.contains('/')
                    && !s.file.is_empty()
                    && !s.version.is_empty()
                    && !s.at.is_empty(),
                "{}",
                r.id
            );
        }
        for t in Target::ALL {
            assert!(for_target(t).count() > 0, "{t:?} has no rules");
        }
    }
}
