//! The vocabulary of the rules in [`super::rules`]: what a loader does ([`Severity`]), the scale
//! conventions ([`ScaleRule`]), the module lists ([`Supported`]) and the conditions ([`When`]).
//! Split out of rules.rs to keep it under 800 lines; nothing here names a loader or computes
//! anything (the conditions are evaluated in `facts.rs`).

/// What a loader does when a rule's condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Loads and applies everything; something to know (a server flag, a lossless padding).
    Warning,
    /// Loads without an error but does not apply everything as trained.
    Silent,
    /// Refuses to load.
    Error,
}

/// How a loader computes a module's scale (compared with PEFT's `alpha_m / r_m`, or
/// `alpha_m / √r_m` with rsLoRA, where `alpha_m`/`r_m` come from `alpha_pattern`/`rank_pattern`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRule {
    /// One `lora_alpha` and one `r` from adapter_config.json for every module; `rslora` says
    /// whether `use_rslora` is honoured (`alpha/√r`).
    GlobalAlphaGlobalRank { rslora: bool },
    /// One `lora_alpha` for every module over the module's own rank (its tensor's shape); no
    /// rsLoRA.
    GlobalAlphaModuleRank,
    /// Each module's `{module}.alpha` tensor over its rank, or scale 1 without one (PEFT folders
    /// have no alpha tensors).
    AlphaKeyOrOne,
}

/// Which module names a loader adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Supported {
    /// Every linear layer and the embedding modules of the base: with `--base`, the last name
    /// component of every 2-D `.weight` tensor; without, the given Llama-family list.
    BaseLinear(&'static [&'static str]),
    /// A fixed list of last name components (the model class's adapter layers).
    Fixed(&'static [&'static str]),
}

/// A diffusion transformer whose diffusers LoRA loader converts its trainers' names itself
/// (`loaders/lora_pipeline.py` 0.42.1), told from a file's module names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffusersModel {
    /// `Flux2LoraLoaderMixin`.
    Flux2,
    /// `HunyuanVideoLoraLoaderMixin`.
    HunyuanVideo,
    /// `ZImageLoraLoaderMixin`.
    ZImage,
    /// `Lumina2LoraLoaderMixin` (`diffusers_families.rs`).
    Lumina2,
    /// `LTXVideoLoraLoaderMixin` (`diffusers_families.rs`).
    LtxVideo,
    /// `LTX2LoraLoaderMixin` (`diffusers_families.rs`).
    Ltx2,
    /// `Flux3LoraLoaderMixin` (`diffusers_families.rs`).
    Flux3,
    /// `HiDreamImageLoraLoaderMixin` (`diffusers_families.rs`).
    HiDream,
    /// `AnimaLoraLoaderMixin` (`diffusers_converted.rs`, as the four below).
    Anima,
    /// `Krea2LoraLoaderMixin`.
    Krea2,
    /// `Ideogram4LoraLoaderMixin`.
    Ideogram4,
    /// `AceStepLoraLoaderMixin`.
    AceStep,
    /// `MiniMaxH3LoraLoaderMixin`.
    MiniMaxH3,
    /// `ErnieImageLoraLoaderMixin` (`diffusers_converted.rs`: prefixes renamed only).
    ErnieImage,
    /// `FluxLoraLoaderMixin` on fal's Flux Kontext names (`diffusers_families.rs`).
    FluxFal,
    /// `FluxLoraLoaderMixin` on BFL's Flux control LoRAs (`diffusers_families.rs`).
    FluxControl,
}

/// A condition over the adapter (and the base, with `--base`). Conditions that need the base
/// are not evaluated without one (the report says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// The adapter is not a PEFT folder (a kohya / LyCORIS single file).
    NotPeft,
    /// The adapter is for a causal LM (its module names or the base's config say so).
    LlmAdapter,
    /// Modules of an algorithm other than plain LoRA (LoHa, LoKr, LoCon-Tucker, full diff) in a
    /// kohya file whose every key has an SD prefix (`lora_unet_`, `lora_te_`, `lora_te1_`,
    /// `lora_te2_`), the files diffusers' SD/SDXL reader converts.
    NonLoraAlgoSdPrefixed,
    /// A kohya file with keys outside the SD prefixes (`lycoris_`, `lora_transformer_`, …).
    NotSdPrefixed,
    /// The same files: keys without `lora` in them, which make diffusers' SD loader raise.
    DiffusersKeyWithoutLora,
    /// Textual-inversion embeddings bundled in a kohya file (`bundle_emb.…`,
    /// [`crate::adapter::Adapter::bundled_embeddings`]).
    BundledEmbeddings,
    /// In a kohya file whose every key has an SD prefix: a `lora_unet_` module whose name
    /// diffusers' key conversion turns into a path the UNet lacks (`diffusers_keys.rs`).
    DiffusersUnetKeyLost,
    /// The same files when no `lora_unet_` module lands (every one is a
    /// [`DiffusersUnetKeyLost`](When::DiffusersUnetKeyLost) item, or is named under a pipeline
    /// component, `lora_unet_unet_…`): PEFT raises (`diffusers_kohya.rs`).
    DiffusersUnetNonePlaced,
    /// In the same files: modules diffusers applies at their component's most common alpha
    /// instead of their own (`diffusers_kohya.rs`).
    DiffusersAlphaLost,
    /// Modules whose `lora_up` is 2-D beside a 4-D `lora_down` (LyCORIS DyLoRA's convs), and,
    /// with `--base`, modules whose file factors are both 2-D on a 4-D (1×1 conv) base tensor.
    DiffusersConvFactors2d,
    /// With `--base` one pipeline component: that component's modules it has no layer for
    /// (`diffusers_base.rs`).
    DiffusersNotInBase,
    /// kohya Flux modules outside the blocks (`lora_unet_img_in`, …), which diffusers' Flux
    /// converter drops (`diffusers_keys.rs`).
    DiffusersFluxKohyaDropped,
    /// In a OneTrainer Flux file (`lora_transformer_…`) for a Flux pipeline: the modules that
    /// make diffusers' converter for those names raise (`diffusers_mixture.rs`).
    DiffusersFluxMixtureRefused,
    /// The same files: the `lora_unet_` modules that converter drops.
    DiffusersFluxMixtureDropped,
    /// Without `--base`: every module of a file read as Flux's is named as HunyuanVideo names
    /// one too (`diffusers_pipelines.rs` `flux_hunyuan_video_shared`).
    DiffusersFluxOrHunyuanVideo,
    /// Without `--base`: a file of Lumina 2's (= Z-Image's) original names at neither model's
    /// width, read as Z-Image's (`diffusers_pipelines.rs` `lumina2_or_z_image`).
    DiffusersLumina2OrZImage,
    /// Every module of a file in SD3's original layout (`joint_blocks.N.…`, kohya or ComfyUI
    /// names), whose keys all hold `lora`: SD3's loader converts none of them (`diffusers_keys.rs`).
    DiffusersSd3Unconverted,
    /// The same file with a key lacking `lora` (a ComfyUI `.alpha`): SD3's loader raises.
    DiffusersSd3Refused,
    /// In a file that diffusers' loader for this model converts itself (`diffusers_keys.rs`
    /// `pipeline_of`): the modules it loads nothing of.
    DiffusersModelDropped(DiffusersModel),
    /// The same files: the keys that make that loader raise.
    DiffusersModelRefused(DiffusersModel),
    /// [`DiffusersModelDropped`](When::DiffusersModelDropped) for whichever of Anima, Krea 2,
    /// Ideogram 4, ACE-Step and MiniMax-H3 reads the file (`diffusers_converted.rs`).
    DiffusersConvertedDropped,
    /// [`DiffusersModelRefused`](When::DiffusersModelRefused) for the same loaders.
    DiffusersConvertedRefused,
    /// The same files: the LoKr modules that loader's PEFT tuner rebuilds with other factors
    /// than the file's (`diffusers_lokr.rs`).
    DiffusersModelMisapplied(DiffusersModel),
    /// A Flux.2 `diffusion_model.` file's final modulation, renamed without the halves' swap.
    DiffusersFlux2FinalUnswapped,
    /// Text-encoder modules whose keys diffusers cannot type (`diffusers_keys.rs`): it raises.
    DiffusersTextEncoderUntyped,
    /// Text-encoder modules whose keys diffusers leaves in a form no layer has (skipped).
    DiffusersTextEncoderKeyLost,
    /// Text-encoder modules whose rank diffusers does not infer (`diffusers_keys.rs`): it raises.
    DiffusersTextEncoderRank,
    /// Denoiser modules in diffusers' older names beside PEFT-named ones that sort first.
    DiffusersOldNamesUnconverted,
    /// DoRA magnitudes (`lora_magnitude_vector`, `dora_scale`).
    Dora,
    /// DoRA magnitudes in LyCORIS/kohya's `dora_scale` spelling (not PEFT's
    /// `lora_magnitude_vector`).
    DoraScale,
    /// `lora_B.bias` (PEFT `lora_bias=True`).
    LoraBias,
    /// A PEFT LoRA file's tensors of a variant beyond plain LoRA and DoRA (KaSA `lora_diag`,
    /// VeLoRA `lora_velora_embed`, MonteCLoRA `lora_monteclora_sampler.*`, any other `.lora_*`):
    /// `peft::variant_tensors`.
    VariantTensors,
    /// Full tensors replacing base tensors (`modules_to_save`), or `modules_to_save` configured.
    ModulesToSave,
    /// As [`When::ModulesToSave`], except that a configured `modules_to_save` of only
    /// classification heads (`classifier`, `score`) with no full tensor in the file does not
    /// count: vLLM's `PEFTHelper._validate_features` accepts exactly that configuration.
    ModulesToSaveBeyondHead,
    /// As [`When::ModulesToSave`], less the `lm_head` tensors when the base's `model_type` is
    /// one of these (a converter that drops them before it could refuse them: [`When::LmHeadOn`]).
    ModulesToSaveUnlessLmHeadOn(&'static [&'static str]),
    /// LoRA on an embedding (`lora_embedding_A/B`).
    EmbeddingLora,
    /// PEFT trainable tokens (`trainable_token_indices`): `{module}.token_adapter.trainable_tokens_delta`
    /// rows that replace rows of an embedding or `lm_head`.
    TrainableTokens,
    /// PEFT `target_parameters` (a `ParamWrapper` on a fused MoE expert parameter, saved as
    /// `…experts.lora_A.weight` or nested `…experts.base_layer.lora_A.weight`).
    ExpertParameters,
    /// With `--base`: trainable-token rows PEFT cannot place (no such module, indices missing
    /// from the config or past the vocabulary, rows of another size).
    TrainableTokensMismatch,
    /// A module named `…{parent}.{x}` for some `x` in `has`, with no `…{parent}.{lacks}` beside
    /// it (per parent path: per attention or MLP block).
    SiblingMissing {
        has: &'static [&'static str],
        lacks: &'static str,
    },
    /// A module rank above the given value.
    RankAbove(usize),
    /// A module whose rank (its factors' shape) differs from adapter_config.json's `r` (a
    /// `rank_pattern` entry, or factors written another way).
    RankDiffersFromConfig,
    /// adapter_config.json's `target_modules` is one string (PEFT: a regex, or a shorthand)
    /// other than these.
    TargetModulesString(&'static [&'static str]),
    /// adapter_config.json's `init_lora_weights` is a string other than these (compared
    /// lowercase): an init that changes the base weights when PEFT loads it (PiSSA, OLoRA, …).
    InitWeightsNot(&'static [&'static str]),
    /// adapter_config.json fields set to a value other than their default (`null`, `false`,
    /// empty).
    ConfigSet(&'static [&'static str]),
    /// A PEFT folder whose adapter_config.json lacks this key (or has it `null`).
    ConfigMissing(&'static str),
    /// With `--base`: modules on a quantized weight whose PEFT layer class refuses the adapter's
    /// variant (DoRA or VeLoRA on GPTQ/AWQ, VeLoRA on bitsandbytes; `qalora.rs`).
    QuantLayerRefusesVariant,
    /// The loader's scale differs from PEFT's for some module.
    ScaleDiffers(ScaleRule),
    /// A module whose last name component the loader does not adapt.
    ModuleNotSupported(Supported),
    /// Tensor keys without PEFT's `base_model.model.` prefix.
    KeyPrefixMissing,
    /// Modules the PEFT config does not select (`target_modules`, `exclude_modules`,
    /// `layers_to_transform`, `modules_to_save`; [`crate::adapter::Adapter::untargeted`]).
    Untargeted,
    /// PEFT keys `{module}.base_layer.bias` (a trained base bias saved beside a LoRA wrapper's
    /// factors) for a module the adapter holds no LoRA factors for.
    SavedBaseLayerUnwrapped,
    /// PEFT keys `{module}.base_layer.bias`, wrapped or not (`bias="lora_only"`/`"all"` save a
    /// LoRA module's trained bias so): loaders that parse every key as a LoRA factor refuse them.
    SavedBaseLayerBias,
    /// A module kind present in some decoder layers but not all (base's `num_hidden_layers`).
    PartialLayers,
    /// `added_tokens.json` beside the adapter with ids at or past the base vocabulary.
    AddedTokens,
    /// With `--base`: the adapter's factors are stored in another float dtype than the base
    /// weights they land on.
    DtypeDiffersFromBase,
    /// Factor tensors stored in one of these dtypes (safetensors names: `F64`, `F8_E4M3`, …).
    AdapterDtype(&'static [&'static str]),
    /// With `--base`: a module that names no base tensor at all.
    NameNotFound,
    /// [`When::NameNotFound`] in the model PEFT builds: with `layer_replication`, a decoder
    /// layer past the base's is the copy of a base layer (`tuners_utils.py` `replicate_layers`).
    NameNotFoundAfterReplication,
    /// With `--base`: a module whose first `layers.N.` component has N at or past the base's
    /// `num_hidden_layers` (a loader that files weights into per-layer slots by that index).
    LayerPastBase,
    /// With `--base`: a module that lorakit places only by a dotted-suffix match (a different
    /// root prefix); loaders that look modules up by their exact name do not find it.
    NameNotExact,
    /// With `--base`: a module whose shape differs from its base tensor's.
    ShapeMismatch,
    /// With `--base`: an embedding LoRA whose vocabulary differs from the base's.
    VocabMismatch,
    /// With `--base`: the adapter touches `lm_head` and the base ties it to `embed_tokens`,
    /// unless the base's `model_type` is one of these (whose converter drops `lm_head` before
    /// it could refuse it: [`When::LmHeadOn`]).
    TiedLmHead { unless: &'static [&'static str] },
    /// With `--base`: the architecture a converter reads (`text_config.architectures[0]`, else
    /// `architectures[0]`, as llama.cpp's `get_model_architecture`) is none of these.
    BaseArchitectureNot(&'static [&'static str]),
    /// With `--base`: QALoRA modules placed pooled on GPTQ weights (`lora_A` [r, in/group]).
    QaloraPooledOnGptq,
    /// With `--base`: `lm_head` modules and full tensors (modules_to_save) when the base's
    /// `model_type` is one of these.
    LmHeadOn(&'static [&'static str]),
    /// A PEFT folder (keys `base_model.model.{module}.lora_A.weight`, config in
    /// adapter_config.json).
    PeftKeys,
    /// Tensors of a PEFT folder that are not LoRA A/B factors of a kohya-style loader's key
    /// scheme (`lora_magnitude_vector`, `lora_B.bias`, `lora_embedding_*`, full tensors).
    PeftExtraKeys,
    /// A PEFT folder whose adapter_config.json `peft_type` is not `LORA` (ADALORA, LOHA, LOKR,
    /// IA3, OFT): its tensors are not `lora_A.weight`/`lora_B.weight` pairs (AdaLoRA's
    /// `lora_A`/`lora_E`/`lora_B` have no `.weight`; `hada_*`, `lokr_*`, `ia3_l`,
    /// `oft_R.weight`). One item naming the type and a few of its keys.
    PeftTypeNotLora,
    /// kohya/LyCORIS modules ComfyUI loads other than the trainer's forward applies them
    /// (`comfy_gaps.rs`).
    Comfy(ComfyGap),
}

/// How ComfyUI's `load_lora` and `comfy/weight_adapter/*.py` part from the trainer's forward on
/// a kohya/LyCORIS module (found by `fixtures/gen/check_comfy_sweep.py` running those files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComfyGap {
    /// Tensors no ComfyUI weight adapter reads (IA3's `weight`/`on_input`, OFT v2's `oft_R`).
    Unread,
    /// A patch that raises inside `calculate_weight`'s `try` (LoKr with a Tucker `lokr_t2`).
    PatchRaises,
    /// A `dora_scale` per output row, normed over W0 instead of W0 + ΔW.
    DoraOutputNorm,
    /// diag-OFT's `rescale`, loaded and not applied.
    OftRescaleDropped,
}
