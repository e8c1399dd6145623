//! The rules of the two GPU serving stacks, vLLM and SGLang, as data (split out of `rules.rs`
//! to keep files under 800 lines; the vocabulary is in `when.rs`, the evaluation in `facts.rs`).
//!
//! Versions. vLLM: the `vllm` 0.34.0 release on PyPI (the sdist; `vllm/_version.py`: commit
//! g62d4bc3c7), every file and line below read there. SGLang: the `sglang` 0.5.23 wheel on
//! PyPI (its `_version.py` records no commit), every line read there. The stored GitHub copies of both repositories are over the 500 MiB that
//! `fetch` brings (1.2 GB and 1.1 GB), and the file versions the index returns by path are old
//! ones (SGLang `lora_config.py` @8487760 predates DoRA and added-token checks; vLLM
//! `peft_helper.py` @0214369 predates `validate_legal`), so the released packages are the
//! newest copies with a version that can be named. Nothing here computes anything.
//!
//! Read and deliberately not rules: an `lm_head` LoRA on a base that ties it to `embed_tokens`
//! is applied by both (vLLM's Llama/Qwen classes keep a `ParallelLMHead` tied with
//! `tie_weights` and `model_manager.py` wraps it; SGLang's `LoRAManager.init_lora_modules`
//! builds a separate `ParallelLMHead` sharing the embedding weight when `lm_head` is a target).
//! SGLang has no fixed rank limit: `--max-lora-rank` defaults to the largest `r` of the
//! adapters given at start (`init_lora_shapes`), and only an adapter loaded later with a larger
//! `r` is refused (`LoRAMemoryPool.can_support`), a server setting no file can show.

use super::rule::{src, Rule, LLAMA_LINEAR};
use crate::ops::check::target::Target;
use crate::ops::check::when::{ScaleRule, Severity, Supported, When};

const VLLM: &str = "vllm-project/vllm";
const SGLANG: &str = "sgl-project/sglang";
/// vLLM 0.34.0 (PyPI; `_version.py` commit_id g62d4bc3c7).
const V: &str = "0.34.0 (62d4bc3c7)";
/// SGLang 0.5.23 (the PyPI wheel; its `_version.py` has `commit_id = None`).
const S: &str = "0.5.23";

/// SGLang's Llama-family LoRA modules: the names `get_normalized_target_modules` maps onto
/// (`q/k/v_proj` → `qkv_proj`, `gate/up_proj` → `gate_up_proj`) and those
/// `get_default_hidden_dim` sizes (Llama, Mistral and Qwen2 define no `get_hidden_dim`); any
/// other name raises `NotImplementedError("get_hidden_dim not implemented for …")`
/// (python/sglang/srt/lora/utils.py, 0.5.23).
const SGLANG_LLAMA: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "qkv_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "gate_up_proj",
    "down_proj",
    "embed_tokens",
    "lm_head",
];

/// vLLM's inits that leave the base weights alone (`PEFTHelper._init_is_supported`; `true` and
/// `false` are not strings and pass).
pub(super) const VLLM_INITS: &[&str] = &["gaussian", "eva", "orthogonal", "mica", "lora_ga"];

pub(super) const RULES: &[Rule] = &[
    // ---------------------------------------------------------------- vLLM
    Rule {
        id: "vllm.format",
        target: Target::Vllm,
        when: When::NotPeft,
        severity: Severity::Error,
        why: "vLLM loads a PEFT folder (adapter_config.json + adapter_model.safetensors); a kohya/LyCORIS file or an mlx-lm folder is not read (convert it to a PEFT folder with lorakit's convert operation and the base model)",
        source: src(VLLM, "vllm/lora/lora_model.py", V, "lora_model.py:323 LoRAModel.from_local_checkpoint (\"doesn't contain tensors\")"),
    },
    Rule {
        id: "vllm.peft_type",
        target: Target::Vllm,
        when: When::PeftTypeNotLora,
        severity: Severity::Error,
        why: "vLLM serves LoRA only and never reads peft_type (not a PEFTHelper field; from_dict drops unknown keys): LoHa/LoKr/OFT configs have no lora_alpha and IA3 none of r and lora_alpha (\"Missing required configuration fields\"), AdaLoRA's rank_pattern of boolean masks is refused (\"must be a positive integer\"), and any tensor but lora_A/lora_B.weight and lora_embedding_A/B (AdaLoRA's lora_A/lora_E/lora_B, hada_*, lokr_*, ia3_l, oft_R.weight) is \"unsupported LoRA weight\"",
        source: src(VLLM, "vllm/lora/peft_helper.py", V, "peft_helper.py:21-52 PEFTHelper fields (no peft_type), :163-180 from_dict (missing required r/lora_alpha/target_modules raise at :176), :108-113 __post_init__ (rank_pattern values must be positive ints); utils.py:223-236 parse_fine_tuned_lora_name (\"is unsupported LoRA weight\"), called by lora_model.py:263 check_unexpected_modules"),
    },
    Rule {
        id: "vllm.dora",
        target: Target::Vllm,
        when: When::Dora,
        severity: Severity::Error,
        why: "vLLM does not support DoRA (\"vLLM does not yet support DoRA.\")",
        source: src(VLLM, "vllm/lora/peft_helper.py", V, "peft_helper.py:68 PEFTHelper._validate_features, raised by validate_legal:208-209"),
    },
    Rule {
        id: "vllm.variant_tensors",
        target: Target::Vllm,
        when: When::VariantTensors,
        severity: Severity::Error,
        why: "a LoRA variant's own tensors (KaSA `lora_diag`, VeLoRA `lora_velora_embed`, MonteCLoRA `lora_monteclora_sampler.*`) are \"unsupported LoRA weight\": every key must be lora_A/lora_B.weight or lora_embedding_A/B",
        source: src(VLLM, "vllm/lora/utils.py", V, "utils.py:223-236 parse_fine_tuned_lora_name (\"is unsupported LoRA weight\"), called for every key by lora_model.py:263 check_unexpected_modules"),
    },
    Rule {
        id: "vllm.modules_to_save",
        target: Target::Vllm,
        when: When::ModulesToSaveBeyondHead,
        severity: Severity::Error,
        why: "vLLM refuses modules_to_save other than a classification head (\"vLLM only supports modules_to_save being either None or [\\\"classifier\\\", \\\"score\\\"]\"), and a full tensor is not a LoRA weight",
        source: src(VLLM, "vllm/lora/peft_helper.py", V, "peft_helper.py:57-66 PEFTHelper._validate_features (modules_to_save other than classifier/score)"),
    },
    Rule {
        id: "vllm.lora_bias",
        target: Target::Vllm,
        when: When::LoraBias,
        severity: Severity::Error,
        why: "\"vLLM does not support LoRA bias (lora_bias).\", and a `lora_B.bias` tensor is \"unsupported LoRA weight\": only lora_A/lora_B.weight and lora_embedding_A/B are parsed",
        source: src(VLLM, "vllm/lora/utils.py", V, "utils.py:236 parse_fine_tuned_lora_name (\"is unsupported LoRA weight\"); peft_helper.py:69-70"),
    },
    Rule {
        id: "vllm.base_layer_bias",
        target: Target::Vllm,
        when: When::SavedBaseLayerBias,
        severity: Severity::Error,
        why: "PEFT saves a LoRA module's trained bias (bias=\"lora_only\"/\"all\") as `{module}.base_layer.bias`: the unexpected-module scan skips `base_layer` names, but building the LoRA model parses every key and raises \"… is unsupported LoRA weight\" (only the embeddings' `base_layer.weight` is skipped there)",
        source: src(VLLM, "vllm/lora/lora_model.py", V, "LoRAModel.from_lora_tensors (skips is_base_embedding_weights only), then utils.py:236 parse_fine_tuned_lora_name (\"is unsupported LoRA weight\")"),
    },
    Rule {
        id: "vllm.trainable_tokens",
        target: Target::Vllm,
        when: When::TrainableTokens,
        severity: Severity::Error,
        why: "`…token_adapter.trainable_tokens_delta` is \"unsupported LoRA weight\": only lora_A/lora_B.weight and lora_embedding_A/B are parsed (trainable_token_indices is not a PEFTHelper field); a LoRA on the embedding or lm_head loads instead",
        source: src(VLLM, "vllm/lora/utils.py", V, "utils.py:236 parse_fine_tuned_lora_name (\"is unsupported LoRA weight\")"),
    },
    Rule {
        id: "vllm.init_weights",
        target: Target::Vllm,
        when: When::InitWeightsNot(VLLM_INITS),
        severity: Severity::Error,
        why: "\"vLLM does not support init_lora_weights=…\": PiSSA, OLoRA, CorDA and LoftQ change the base weights when PEFT loads the adapter (convert with PEFT's path_initial_model_for_weight_conversion)",
        source: src(VLLM, "vllm/lora/peft_helper.py", V, "peft_helper.py:71-73 PEFTHelper._validate_features; :90 _init_is_supported"),
    },
    Rule {
        id: "vllm.peft_features",
        target: Target::Vllm,
        when: When::ConfigSet(&["alora_invocation_tokens", "layer_replication", "use_bdlora", "use_qalora"]),
        severity: Severity::Error,
        why: "PEFT features vLLM refuses: Activated LoRA, layer_replication, block-diagonal LoRA, QALoRA (\"vLLM does not support …\")",
        source: src(VLLM, "vllm/lora/peft_helper.py", V, "peft_helper.py:80-87 PEFTHelper._validate_features"),
    },
    Rule {
        id: "vllm.max_rank",
        target: Target::Vllm,
        when: When::RankAbove(512),
        severity: Severity::Error,
        why: "rank above 512, the largest --max-lora-rank vLLM accepts (MaxLoRARanks = 1, 8, 16, 32, 64, 128, 256, 320, 512); validate_legal compares max(r, rank_pattern values) with it",
        source: src(VLLM, "vllm/config/lora.py", V, "config/lora.py:26 MaxLoRARanks; peft_helper.py:200-204 validate_legal"),
    },
    Rule {
        id: "vllm.unsupported_module",
        target: Target::Vllm,
        when: When::ModuleNotSupported(Supported::BaseLinear(LLAMA_LINEAR)),
        severity: Severity::Error,
        why: "a module that is not a linear or embedding layer of the model: \"expected target modules in … but received …\"",
        source: src(VLLM, "vllm/lora/lora_model.py", V, "lora_model.py:250-278 check_unexpected_modules; utils.py:252-259 get_supported_lora_modules (every LinearBase + embedding_modules)"),
    },
    Rule {
        id: "vllm.shape",
        target: Target::Vllm,
        when: When::ShapeMismatch,
        severity: Severity::Error,
        why: "factor shapes do not fit the base layer (set_lora copies into buffers of the base's size)",
        source: src(VLLM, "vllm/lora/model_manager.py", V, "model_manager.py:396 activate_adapter → module.set_lora"),
    },
    Rule {
        id: "vllm.vocab",
        target: Target::Vllm,
        when: When::VocabMismatch,
        severity: Severity::Error,
        why: "\"The embedding LoRA size(…) must be consistent with the base model's vocabulary size(…)\"",
        source: src(VLLM, "vllm/lora/lora_model.py", V, "lora_model.py:160-167 LoRAModel.from_lora_tensors"),
    },
    Rule {
        id: "vllm.not_applied",
        target: Target::Vllm,
        when: When::NameNotExact,
        severity: Severity::Silent,
        why: "LoRA is set only on modules named exactly as the model's; these names (another root prefix) load and are never applied",
        source: src(VLLM, "vllm/lora/model_manager.py", V, "model_manager.py:378-393 activate_adapter (a model module without LoRA weights is reset; weights under other names are never looked up)"),
    },
    Rule {
        id: "vllm.not_found",
        target: Target::Vllm,
        when: When::NameNotFound,
        severity: Severity::Silent,
        why: "no module of the base has this name: the weights load and are never applied",
        source: src(VLLM, "vllm/lora/model_manager.py", V, "model_manager.py:378-393 activate_adapter (a model module without LoRA weights is reset; weights under other names are never looked up)"),
    },
    Rule {
        id: "vllm.rank_flag",
        target: Target::Vllm,
        when: When::RankAbove(16),
        severity: Severity::Warning,
        why: "rank above the default --max-lora-rank 16: start vLLM with --max-lora-rank at least this rank (one of 32, 64, 128, 256, 320, 512)",
        source: src(VLLM, "vllm/config/lora.py", V, "config/lora.py:33 max_lora_rank = 16; peft_helper.py:200-204 validate_legal"),
    },
    Rule {
        id: "vllm.dtype",
        target: Target::Vllm,
        when: When::DtypeDiffersFromBase,
        severity: Severity::Warning,
        why: "factors are cast to lora_dtype, which \"auto\" (the default) sets to the model's dtype: the adapter is applied in the base's precision, not its own",
        source: src(VLLM, "vllm/config/lora.py", V, "config/lora.py:150-151 verify_with_model_config (lora_dtype auto = the model's); lora_model.py:169,173 tensor.to(dtype)"),
    },
    // ---------------------------------------------------------------- SGLang
    Rule {
        id: "sglang.format",
        target: Target::Sglang,
        when: When::NotPeft,
        severity: Severity::Error,
        why: "SGLang reads adapter_config.json and the adapter's safetensors (a PEFT folder)",
        source: src(SGLANG, "python/sglang/srt/lora/lora_config.py", S, "lora_config.py:75-83 LoRAConfig.get_lora_config"),
    },
    Rule {
        id: "sglang.peft_type",
        target: Target::Sglang,
        when: When::PeftTypeNotLora,
        severity: Severity::Error,
        why: "SGLang serves LoRA only: LoRAConfig reads r and lora_alpha by key (a KeyError for LoHa/LoKr/OFT configs, which have no lora_alpha, and IA3, which has neither), and LoRAAdapter asserts peft_type is \"lora\" (AdaLoRA); the load returns success=False, or a RuntimeError for --lora-paths at start",
        source: src(SGLANG, "python/sglang/srt/lora/lora_config.py", S, "lora_config.py:42-44 LoRAConfig.__init__ (hf_config[\"r\"], hf_config[\"lora_alpha\"]); lora.py:67 LoRAAdapter.__init__ (assert peft_type.lower() == \"lora\"); lora_manager.py:305-324 _load_lora_adapter, :757-762 init_state (RuntimeError)"),
    },
    Rule {
        id: "sglang.dora",
        target: Target::Sglang,
        when: When::Dora,
        severity: Severity::Error,
        why: "\"LoRA serving currently doesn't support DoRA adapters\"",
        source: src(SGLANG, "python/sglang/srt/lora/lora_manager.py", S, "lora_manager.py:351 LoRAManager.validate_new_adapter"),
    },
    Rule {
        id: "sglang.added_tokens",
        target: Target::Sglang,
        when: When::AddedTokens,
        severity: Severity::Error,
        why: "\"LoRA serving currently doesn't support adapters that add tokens to the vocabulary\" (added_tokens.json ids ≥ the base vocabulary)",
        source: src(SGLANG, "python/sglang/srt/lora/lora_manager.py", S, "lora_manager.py:346 LoRAManager.validate_new_adapter; lora_config.py:58 lora_added_tokens_size"),
    },
    Rule {
        id: "sglang.target_modules_string",
        target: Target::Sglang,
        when: When::TargetModulesString(&["all", "all-linear"]),
        severity: Severity::Error,
        why: "target_modules as one string (a PEFT regex) is refused: \"Only 'all' or 'all-linear' can be used as the string for target module\" / \"SGLang does not recognize target_modules=…\"",
        source: src(SGLANG, "python/sglang/srt/lora/utils.py", S, "utils.py:294 get_normalized_target_modules; lora_manager.py:846 LoRAManager.init_lora_shapes"),
    },
    Rule {
        id: "sglang.unsupported_module",
        target: Target::Sglang,
        when: When::ModuleNotSupported(Supported::Fixed(SGLANG_LLAMA)),
        severity: Severity::Error,
        why: "the memory pool sizes only q/k/v/o, gate/up/down, embed_tokens and lm_head for Llama-family models: \"get_hidden_dim not implemented for …\" (or, loaded at run time, \"incompatible with the current LoRA memory pool configuration\")",
        source: src(SGLANG, "python/sglang/srt/lora/utils.py", S, "utils.py:172-274 get_default_hidden_dim (NotImplementedError at :274); mem_pool.py:238 LoRAMemoryPool.can_support"),
    },
    Rule {
        id: "sglang.rank_pattern",
        target: Target::Sglang,
        when: When::RankDiffersFromConfig,
        severity: Severity::Error,
        why: "every module is copied into a buffer slice of the config's r rows (`buffer[:, :r * stacked]`): a module of another rank (rank_pattern) fails \"LoRA buffer shape … does not match weight shape …\" (rank_pattern is not read)",
        source: src(SGLANG, "python/sglang/srt/lora/mem_pool.py", S, "mem_pool.py:1265 load_lora_weight_to_buffer (buffer[buffer_id, :lora_rank * c, :], lora_rank = config r) and :909 (assert buffer shape == weight shape)"),
    },
    Rule {
        id: "sglang.shape",
        target: Target::Sglang,
        when: When::ShapeMismatch,
        severity: Severity::Error,
        why: "factors are copied into buffers sized from the base model: \"LoRA buffer shape … does not match weight shape …\"",
        source: src(SGLANG, "python/sglang/srt/lora/mem_pool.py", S, "mem_pool.py:909 load_lora_weight_tensor (assert buffer shape == weight shape)"),
    },
    Rule {
        id: "sglang.vocab",
        target: Target::Sglang,
        when: When::VocabMismatch,
        severity: Severity::Error,
        why: "embedding LoRA A is copied into a buffer of the base vocabulary (plus added tokens): \"LoRA buffer shape … does not match weight shape …\"",
        source: src(SGLANG, "python/sglang/srt/lora/mem_pool.py", S, "mem_pool.py:1387-1417 load_lora_weight_to_buffer (embedding_A_buffer[…, :org_vocab_size + lora_added_tokens_size])"),
    },
    Rule {
        id: "sglang.q_without_v",
        target: Target::Sglang,
        when: When::SiblingMissing { has: &["q_proj"], lacks: "v_proj" },
        severity: Severity::Error,
        why: "q/k/v LoRAs are stacked into qkv_proj and a missing k is zero-filled from v's shape: a block with q_proj but no v_proj raises KeyError",
        source: src(SGLANG, "python/sglang/srt/lora/lora.py", S, "lora.py:264-300 LoRAAdapter.normalize_qkv_proj (:282 stacks from q_proj, reads weights[v_name] unconditionally)"),
    },
    Rule {
        id: "sglang.kv_without_q",
        target: Target::Sglang,
        when: When::SiblingMissing { has: &["k_proj", "v_proj"], lacks: "q_proj" },
        severity: Severity::Error,
        why: "stacking into qkv_proj starts from q_proj (\"every lora adaptor should contain lora modules for q_proj\"): k/v LoRAs of a block without q_proj keep their names, match no target module (qkv_proj) and load_lora_weight_to_buffer raises \"Cannot find target module name for …\"",
        source: src(SGLANG, "python/sglang/srt/lora/lora.py", S, "lora.py:282 normalize_qkv_proj (stacks from q_proj only); utils.py:298-300 (k/v_proj → qkv_proj); mem_pool.py:983 get_target_module_name raises (utils.py:368)"),
    },
    Rule {
        id: "sglang.up_without_gate",
        target: Target::Sglang,
        when: When::SiblingMissing { has: &["up_proj"], lacks: "gate_proj" },
        severity: Severity::Error,
        why: "stacking into gate_up_proj starts from gate_proj (\"Orphan up_proj weights … are kept as-is\"): the up_proj LoRA matches no target module (gate_up_proj) and load_lora_weight_to_buffer raises \"Cannot find target module name for …\"",
        source: src(SGLANG, "python/sglang/srt/lora/lora.py", S, "lora.py:462-499 LoRAAdapter.normalize_gate_up_proj (orphan up_proj kept); utils.py:302-303 (up_proj → gate_up_proj); mem_pool.py:983 get_target_module_name raises (utils.py:368)"),
    },
    Rule {
        id: "sglang.layer_past_base",
        target: Target::Sglang,
        when: When::LayerPastBase,
        severity: Severity::Error,
        why: "weights are filed into one slot per decoder layer by the `layers.N.` index of their name, and the adapter holds num_hidden_layers slots: an index past the base raises IndexError",
        source: src(SGLANG, "python/sglang/srt/lora/lora.py", S, "lora.py:83-87 (self.layers: one LoRALayer per base_hf_config.num_hidden_layers), lora.py:176-178 (_process_weight: self.layers[get_layer_id(name)]); layers/utils/common.py:14 (get_layer_id)"),
    },
    Rule {
        id: "sglang.scale",
        target: Target::Sglang,
        when: When::ScaleDiffers(ScaleRule::GlobalAlphaGlobalRank { rslora: false }),
        severity: Severity::Silent,
        why: "SGLang scales every module by lora_alpha/r from the top-level fields (no use_rslora or alpha_pattern: LoRAConfig reads r, lora_alpha, target_modules, use_dora)",
        source: src(SGLANG, "python/sglang/srt/lora/lora.py", S, "lora.py:71 self.scaling = lora_alpha / r; lora_config.py:42-45 (r, lora_alpha, target_modules, use_dora read)"),
    },
    Rule {
        id: "sglang.qalora",
        target: Target::Sglang,
        when: When::QaloraPooledOnGptq,
        severity: Severity::Error,
        why: "QALoRA's pooled lora_A [r, in/group] on a GPTQ base: SGLang reads a plain LoRA (no use_qalora) and copies lora_A into an [r, in] buffer, which fails on the size",
        source: src(SGLANG, "python/sglang/srt/lora/lora_config.py", "0ceb81f", "lora_config.py:47-60 LoRAConfig.__init__ (no use_qalora); mem_pool.py load_lora_weight_to_buffer (buffer_view.copy_ of an [r, in] slot)"),
    },
    Rule {
        id: "sglang.init_weights",
        target: Target::Sglang,
        when: When::InitWeightsNot(VLLM_INITS),
        severity: Severity::Silent,
        why: "PiSSA, OLoRA, CorDA and LoftQ factors belong on the residual base PEFT makes when it loads them; SGLang adds s·B·A to the original base (init_lora_weights is not read), so the effect differs",
        source: src(SGLANG, "python/sglang/srt/lora/lora_config.py", "0ceb81f", "lora_config.py:47-60 LoRAConfig.__init__ (reads target_modules, r, lora_alpha, rank_pattern, alpha_pattern, use_dora; no init_lora_weights)"),
    },
    Rule {
        id: "sglang.lora_bias",
        target: Target::Sglang,
        when: When::LoraBias,
        severity: Severity::Silent,
        why: "every tensor of a layer whose name lacks \"lora_A\" is loaded into the lora_B slot of its module, so `lora_B.bias` (read first: keys are sorted) is overwritten by `lora_B.weight` and never applied",
        source: src(SGLANG, "python/sglang/srt/lora/mem_pool.py", S, "mem_pool.py:1050-1054 load_lora_weight_to_buffer (\"lora_A\" in name … else temp_B_buffer)"),
    },
    Rule {
        id: "sglang.modules_to_save",
        target: Target::Sglang,
        when: When::ModulesToSave,
        severity: Severity::Silent,
        why: "full embed_tokens/lm_head tensors are kept only when the module is in target_modules (then as LoRA weights), else skipped with a debug log (\"Skipping … not in adapter's target_modules\"); modules_to_save is not read",
        source: src(SGLANG, "python/sglang/srt/lora/lora.py", S, "lora.py:164-193 LoRAAdapter._process_weight (\"Skipping …\" at :192)"),
    },
    Rule {
        id: "sglang.trainable_tokens",
        target: Target::Sglang,
        when: When::TrainableTokens,
        severity: Severity::Silent,
        why: "trainable-token rows are handled like full embed_tokens/lm_head tensors: skipped unless the module is a LoRA target (trainable_token_indices is not read)",
        source: src(SGLANG, "python/sglang/srt/lora/lora.py", S, "lora.py:164-193 LoRAAdapter._process_weight (\"Skipping …\" at :192)"),
    },
    Rule {
        id: "sglang.dtype",
        target: Target::Sglang,
        when: When::DtypeDiffersFromBase,
        severity: Severity::Warning,
        why: "the LoRA buffers are allocated in the server's dtype (the model's) and copy_weight_into_buffer casts the factors into them: the adapter is applied in the base's precision, not its own",
        source: src(SGLANG, "python/sglang/srt/lora/utils.py", S, "utils.py:126-143 copy_weight_into_buffer (weight.to(dtype=buffer_view.dtype))"),
    },
];
