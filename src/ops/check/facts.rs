//! The conditions of the rules ([`super::rules::When`]), computed once per check from the
//! adapter and, with a base, from lorakit's one name matcher and the base's facts. Owns: what
//! each condition means, item by item. Must not: decide a verdict (that is [`super`]), write or
//! print anything.

use super::base::{last_component, output_bias};
use super::diffusers_keys::unet_key_rules_apply;
use super::diffusers_pipelines::converted;
use super::names::{is_lm_head_tensor, is_sd_prefixed, layers_index};
use super::plan::Plan;
use super::qalora;
use super::report::Placement;
use super::rules::When;
use super::target::Kind;
use super::tokens::{tokens_mismatch, tokens_module};
use crate::adapter::mapping::{self, Unmatched};
use crate::adapter::{Data, Format, ModuleKind};
use std::collections::{BTreeMap, BTreeSet};

mod modules;

pub(super) enum Evaluated {
    Items(Vec<String>),
    NeedsBase,
}

/// Everything the conditions are computed from, gathered once.
pub(super) struct Facts<'a> {
    plan: &'a Plan,
    /// `r` and `lora_alpha` of adapter_config.json (PEFT).
    cfg_r: Option<usize>,
    cfg_alpha: Option<f64>,
    resolution: Option<mapping::Resolution>,
    pub(super) placements: Vec<Placement>,
}

impl<'a> Facts<'a> {
    pub(super) fn compute(plan: &'a Plan) -> Facts<'a> {
        let cfg = plan.adapter.config.as_ref();
        let cfg_r = cfg
            .and_then(|c| c.get("r"))
            .and_then(|v| v.as_u64())
            .map(|r| r as usize)
            .or(cfg.map(|_| 8));
        let cfg_alpha = cfg
            .and_then(|c| c.get("lora_alpha"))
            .and_then(|v| v.as_f64())
            .or(cfg.map(|_| 8.0));
        // Placed as a merge places it (PEFT experts on a base saved per expert): Plan::placed.
        let placed = plan.placed.as_ref().unwrap_or(&plan.adapter);
        let resolution = plan.base.as_ref().map(|b| qalora::resolve(placed, b));
        let placements = resolution
            .as_ref()
            .map(|r| {
                super::base::placements(
                    placed,
                    r,
                    plan.base.as_ref().expect("a resolution needs the base"),
                )
            })
            .unwrap_or_default();
        Facts {
            plan,
            cfg_r,
            cfg_alpha,
            resolution,
            placements,
        }
    }

    pub(super) fn items(&self, when: When) -> Evaluated {
        let a = &self.plan.adapter;
        let names = |f: &dyn Fn(&crate::adapter::LoraModule) -> bool| -> Vec<String> {
            a.modules
                .iter()
                .filter(|m| f(m))
                .map(|m| m.name.clone())
                .collect()
        };
        let v = match when {
            When::NotPeft => match a.format {
                Format::Peft => vec![],
                Format::Kohya => vec![format!("{} (kohya/LyCORIS file)", a.path.display())],
                Format::Mlx => vec![format!("{} (mlx-lm adapter)", a.path.display())],
            },
            When::PeftKeys => match (a.format, self.plan.kind) {
                (Format::Peft, Kind::Other) => vec![format!("{} (PEFT folder)", a.path.display())],
                _ => vec![],
            },
            When::LlmAdapter => match self.plan.kind {
                Kind::Llm => vec!["causal-LM module names".to_string()],
                Kind::Other => vec![],
            },
            When::NonLoraAlgoSdPrefixed => {
                if a.format != Format::Kohya || !self.sd_prefixed() || self.own_loader() {
                    vec![]
                } else {
                    a.modules
                        .iter()
                        .filter(|m| m.factors.lora().is_none())
                        .map(|m| format!("{} ({})", m.name, m.factors.algo()))
                        .collect()
                }
            }
            When::NotSdPrefixed | When::DiffusersKeyWithoutLora => {
                // A transformer pipeline converts these names itself (diffusers_keys.rs); SD3's
                // original names have their own rule.
                if !unet_key_rules_apply(a) || self.own_loader() || self.flux_mixture().is_some() {
                    vec![]
                } else if super::diffusers_mixture::pipeline_dependent(a, self.plan.base.as_ref()) {
                    return Evaluated::NeedsBase;
                } else {
                    super::diffusers_kohya::not_sd_prefixed(a, when)
                }
            }
            // Without `--base`, a file of names Flux and HunyuanVideo share is judged as Flux's.
            When::DiffusersFluxOrHunyuanVideo if self.plan.base.is_some() || self.own_loader() => {
                vec![]
            }
            When::DiffusersFluxOrHunyuanVideo => {
                super::diffusers_pipelines::flux_hunyuan_video_shared(a)
            }
            When::DiffusersLumina2OrZImage if self.plan.base.is_some() => vec![],
            When::DiffusersLumina2OrZImage => super::diffusers_pipelines::lumina2_or_z_image(a),
            When::DiffusersFluxMixtureRefused => self.flux_mixture().unwrap_or_default().refused,
            When::DiffusersFluxMixtureDropped => self.flux_mixture().unwrap_or_default().dropped,
            When::DiffusersFluxKohyaDropped if self.own_loader() => vec![],
            When::DiffusersFluxKohyaDropped => super::diffusers_keys::flux_kohya_dropped(a),
            When::DiffusersModelDropped(model) => {
                super::diffusers_pipelines::pipeline_findings(a, self.plan.base.as_ref(), model).1
            }
            When::DiffusersModelRefused(model) => {
                super::diffusers_pipelines::pipeline_findings(a, self.plan.base.as_ref(), model).0
            }
            When::DiffusersConvertedRefused => converted(a, self.plan.base.as_ref()).0,
            When::DiffusersConvertedDropped => converted(a, self.plan.base.as_ref()).1,
            When::DiffusersModelMisapplied(model) => {
                let base = self.plan.base.as_ref();
                if super::diffusers_pipelines::pipeline_of(a, base) != Some(model) {
                    vec![]
                } else {
                    super::diffusers_lokr::misapplied(a, model)
                }
            }
            When::DiffusersFlux2FinalUnswapped => {
                let base = self.plan.base.as_ref();
                if super::diffusers_pipelines::pipeline_of(a, base)
                    != Some(super::when::DiffusersModel::Flux2)
                {
                    vec![]
                } else {
                    super::diffusers_lokr::final_unswapped(a)
                }
            }
            When::DiffusersSd3Unconverted | When::DiffusersSd3Refused => {
                match super::diffusers_keys::sd3_original(a) {
                    Some((names, no_lora)) if no_lora == (when == When::DiffusersSd3Refused) => {
                        names
                    }
                    _ => vec![],
                }
            }
            When::DiffusersUnetKeyLost
            | When::DiffusersUnetNonePlaced
            | When::DiffusersAlphaLost
            | When::DiffusersConvFactors2d
            | When::DiffusersNotInBase => {
                let sd = self.sd_prefixed() && unet_key_rules_apply(a) && !self.own_loader();
                let (base, p) = (self.plan.base.as_ref(), &self.placements);
                match super::diffusers_kohya::items(a, when, sd, base, p) {
                    Some(v) => v,
                    None => return Evaluated::NeedsBase,
                }
            }
            When::DiffusersTextEncoderUntyped
            | When::DiffusersTextEncoderKeyLost
            | When::DiffusersTextEncoderRank => {
                let sd = self.sd_prefixed() && !self.own_loader();
                let (refused, skipped, unbuilt) =
                    super::diffusers_keys::text_encoder_findings(a, sd);
                match when {
                    When::DiffusersTextEncoderUntyped => refused,
                    When::DiffusersTextEncoderKeyLost => skipped,
                    _ => unbuilt,
                }
            }
            When::DiffusersOldNamesUnconverted => super::diffusers_keys::unconverted_old_names(a),
            When::Dora => names(&|m| m.dora_magnitude.is_some()),
            When::DoraScale => names(&|m| {
                m.dora_magnitude.is_some()
                    && matches!(m.dora_rule, crate::adapter::DoraRule::Lycoris { .. })
            }),
            When::LoraBias => names(&|m| has_lora_bias(m)),
            // LoRA folders only: other tuners' tensors are the peft_type rules' business.
            When::VariantTensors => match (&a.format, &a.source, &a.config) {
                (Format::Peft, Some(f), Some(c))
                    if c.get("peft_type").is_none_or(|t| t == "LORA") =>
                {
                    crate::adapter::formats::peft::variant_tensors(
                        f.tensors().iter().map(|t| t.name.as_str()),
                    )
                }
                _ => vec![],
            },
            When::ModulesToSaveUnlessLmHeadOn(types) => {
                let dropped =
                    self.plan.base_facts.as_ref().is_some_and(|b| {
                        b.model_type.as_deref().is_some_and(|t| types.contains(&t))
                    });
                match self.items(When::ModulesToSave) {
                    Evaluated::Items(v) => v
                        .into_iter()
                        .filter(|n| !(dropped && is_lm_head_tensor(n)))
                        .collect(),
                    e => return e,
                }
            }
            When::ModulesToSave | When::ModulesToSaveBeyondHead => {
                let mut v: Vec<String> = a
                    .full_tensors
                    .iter()
                    .filter(|f| !is_saved_base_layer(f) && tokens_module(&f.name).is_none())
                    .map(|f| f.name.clone())
                    .collect();
                if v.is_empty() {
                    let heads_pass = when == When::ModulesToSaveBeyondHead;
                    v = a
                        .modules_to_save
                        .iter()
                        .filter(|m| !(heads_pass && matches!(m.as_str(), "classifier" | "score")))
                        .map(|m| format!("{m} (modules_to_save)"))
                        .collect();
                }
                v
            }
            When::EmbeddingLora => names(&|m| m.kind == ModuleKind::Embedding),
            When::ExpertParameters => {
                let mut params: Vec<String> = a
                    .modules
                    .iter()
                    .filter_map(|m| {
                        crate::adapter::formats::peft::params::parse_expert(&m.name)
                            .map(|(p, _, n)| format!("{p} ({n} experts)"))
                    })
                    .collect();
                params.dedup();
                params
            }
            When::TrainableTokens => a
                .full_tensors
                .iter()
                .filter_map(|f| {
                    tokens_module(&f.name)?;
                    Some(format!(
                        "{} ({} token rows)",
                        f.name,
                        f.shape.first().unwrap_or(&0)
                    ))
                })
                .collect(),
            When::TrainableTokensMismatch => match &self.plan.base {
                None => return Evaluated::NeedsBase,
                Some(b) => a
                    .full_tensors
                    .iter()
                    .filter_map(|f| {
                        let m = tokens_module(&f.name)?;
                        let why = tokens_mismatch(a.config.as_ref(), m, &f.shape, b)?;
                        Some(format!("{} ({why})", f.name))
                    })
                    .collect(),
            },
            When::SiblingMissing { has, lacks } => {
                let present: BTreeSet<&str> = a.modules.iter().map(|m| m.name.as_str()).collect();
                a.modules
                    .iter()
                    .filter_map(|m| {
                        let leaf = last_component(&m.name);
                        if !has.contains(&leaf) {
                            return None;
                        }
                        let parent = &m.name[..m.name.len() - leaf.len()];
                        let sibling = format!("{parent}{lacks}");
                        (!present.contains(sibling.as_str()))
                            .then(|| format!("{} (no {lacks} beside it)", m.name))
                    })
                    .collect()
            }
            When::RankAbove(n) => a
                .modules
                .iter()
                .filter(|m| m.rank > n)
                .map(|m| format!("{} (rank {})", m.name, m.rank))
                .collect(),
            When::RankDiffersFromConfig => match (a.format, self.cfg_r) {
                (Format::Peft, Some(r)) => a
                    .modules
                    .iter()
                    .filter(|m| m.rank != r)
                    .map(|m| format!("{} (rank {}, config r {r})", m.name, m.rank))
                    .collect(),
                _ => vec![],
            },
            When::TargetModulesString(allowed) => match self.cfg_str("target_modules") {
                Some(t) if !allowed.contains(&t) => vec![format!("target_modules \"{t}\"")],
                _ => vec![],
            },
            When::InitWeightsNot(allowed) => match self.cfg_str("init_lora_weights") {
                Some(i) if !allowed.contains(&i.to_lowercase().as_str()) => {
                    vec![format!("init_lora_weights \"{i}\"")]
                }
                _ => vec![],
            },
            When::QuantLayerRefusesVariant => match (&self.resolution, &self.plan.base) {
                (Some(r), Some(b)) => {
                    qalora::refused_variants(self.plan.placed.as_ref().unwrap_or(a), r, b)
                }
                _ => return Evaluated::NeedsBase,
            },
            When::ConfigMissing(key) => match (&a.format, &a.config) {
                (Format::Peft, Some(c)) if c.get(key).is_none_or(|v| v.is_null()) => {
                    vec![format!("adapter_config.json has no `{key}`")]
                }
                _ => vec![],
            },
            When::ConfigSet(keys) => keys
                .iter()
                .filter_map(|k| {
                    let v = a.config.as_ref()?.get(*k)?;
                    let set = match v {
                        serde_json::Value::Null | serde_json::Value::Bool(false) => false,
                        serde_json::Value::Array(x) => !x.is_empty(),
                        serde_json::Value::Object(x) => !x.is_empty(),
                        serde_json::Value::String(x) => !x.is_empty(),
                        _ => true,
                    };
                    set.then(|| format!("{k}: {v}"))
                })
                .collect(),
            When::ScaleDiffers(rule) => self.scale_differs(rule),
            When::ModuleNotSupported(s) => match super::supported::supported(self.plan, s) {
                None => return Evaluated::NeedsBase,
                Some(set) => a
                    .modules
                    .iter()
                    .filter(|m| !set.contains(last_component(&m.name)))
                    .map(|m| m.name.clone())
                    .collect(),
            },
            When::KeyPrefixMissing => a
                .modules
                .iter()
                .filter(|m| match m.factors.lora() {
                    Some((Data::Stored { key, .. }, _)) => {
                        a.format == Format::Peft
                            && !key.starts_with(crate::adapter::formats::peft::PREFIX)
                    }
                    _ => false,
                })
                .map(|m| m.name.clone())
                .collect(),
            When::Untargeted => a.untargeted.clone(),
            When::SavedBaseLayerUnwrapped => a
                .full_tensors
                .iter()
                .filter_map(|f| {
                    let Data::Stored { key, .. } = &f.data else {
                        return None;
                    };
                    // Biases only: a `base_layer.weight` is also what PEFT's other wrappers
                    // (trainable tokens, saved embeddings) hold, which its reload builds.
                    let module = key
                        .strip_prefix(crate::adapter::formats::peft::PREFIX)
                        .unwrap_or(key)
                        .strip_suffix(".base_layer.bias")?;
                    (a.format == Format::Peft && !a.modules.iter().any(|m| m.name == module))
                        .then(|| key.clone())
                })
                .collect(),
            When::SavedBaseLayerBias => a
                .full_tensors
                .iter()
                .filter_map(|f| match &f.data {
                    Data::Stored { key, .. }
                        if a.format == Format::Peft && key.ends_with(".base_layer.bias") =>
                    {
                        Some(key.clone())
                    }
                    _ => None,
                })
                .collect(),
            When::PartialLayers => self.partial_layers(),
            When::LayerPastBase => {
                let Some(n) = self
                    .plan
                    .base_facts
                    .as_ref()
                    .and_then(|b| b.num_hidden_layers)
                else {
                    return Evaluated::NeedsBase;
                };
                a.modules
                    .iter()
                    .filter_map(|m| {
                        let i = layers_index(&m.name)?;
                        (i >= n).then(|| format!("{} (layer {i}, the base has {n})", m.name))
                    })
                    .collect()
            }
            When::AddedTokens => {
                // SGLang counts only ids at or past the base vocabulary (LoRAConfig filters
                // "fake" added tokens copied from the base tokenizer): without the base's
                // vocab_size that cannot be decided.
                if self.plan.added_tokens.is_empty() {
                    vec![]
                } else {
                    let Some(vocab) = self.plan.base_facts.as_ref().and_then(|b| b.vocab_size)
                    else {
                        return Evaluated::NeedsBase;
                    };
                    self.plan
                        .added_tokens
                        .iter()
                        .filter(|(_, id)| *id >= vocab as u64)
                        .map(|(t, id)| format!("{t} (id {id})"))
                        .collect()
                }
            }
            When::AdapterDtype(list) => {
                let Some(src) = a.source.as_ref() else {
                    return Evaluated::Items(vec![]);
                };
                let mut count: BTreeMap<String, usize> = BTreeMap::new();
                for m in &a.modules {
                    for d in m.factors.data() {
                        if let Data::Stored { key, .. } = d {
                            if let Some(t) = src.header().get(key) {
                                let n = crate::dtype::name(t.dtype);
                                if list.contains(&n.as_str()) {
                                    *count.entry(n).or_default() += 1;
                                }
                            }
                        }
                    }
                }
                count
                    .into_iter()
                    .map(|(d, n)| format!("{d} factors ({n} tensors)"))
                    .collect()
            }
            When::DtypeDiffersFromBase => match (&self.resolution, &self.plan.base) {
                (Some(r), Some(b)) => {
                    let own = crate::ops::output::stored_dtype(a);
                    let mut pairs: BTreeSet<(String, String)> = BTreeSet::new();
                    // A quantized weight's is the dtype it dequantizes to (the model's).
                    let q = crate::io::quant::QuantMap::scan(b).ok();
                    let q = |w: &str| q.as_ref()?.get(w).map(|t| t.natural_dtype());
                    for p in &r.modules {
                        let base = q(&p.weight).or(b.info(&p.weight).map(|i| i.dtype));
                        if let (Some(own), Some(base)) = (own, base) {
                            if own != base {
                                pairs.insert((crate::dtype::name(own), crate::dtype::name(base)));
                            }
                        }
                    }
                    pairs
                        .into_iter()
                        .map(|(x, y)| format!("{x} factors: base weights are {y}"))
                        .collect()
                }
                _ => return Evaluated::NeedsBase,
            },
            When::NameNotFoundAfterReplication => match self.items(When::NameNotFound) {
                Evaluated::Items(v) => v
                    .into_iter()
                    .filter(|m| !self.replicated_layer_found(m))
                    .collect(),
                e => return e,
            },
            When::NameNotFound => match &self.resolution {
                None => return Evaluated::NeedsBase,
                Some(r) => r
                    .unmatched
                    .iter()
                    .filter_map(|u| match u {
                        Unmatched::NotFound { module, .. } if self.tied_or_saved(module) => None,
                        // Trainable-token rows are placed by their module, not their own name
                        // (checked by When::TrainableTokensMismatch).
                        Unmatched::NotFound { module, .. } if tokens_module(module).is_some() => {
                            None
                        }
                        // A lora_B or BEFT bias needs no base bias: PEFT adds it to the layer's
                        // output (merging needs one, which is a merge concern, not a loader's).
                        Unmatched::NotFound { module, .. } if output_bias(module) => None,
                        Unmatched::NotFound { module, .. } => Some(module.clone()),
                        Unmatched::Ambiguous { module, candidates } => {
                            Some(format!("{module} (ambiguous: {})", candidates.join(", ")))
                        }
                        u @ (Unmatched::OtherComponent { .. }
                        | Unmatched::UnknownOrder { .. }
                        | Unmatched::WouldNotLoad { .. }) => Some(u.to_string()),
                        _ => None,
                    })
                    .collect(),
            },
            When::NameNotExact => match &self.resolution {
                None => return Evaluated::NeedsBase,
                Some(_) => self
                    .placements
                    .iter()
                    .filter(|p| p.status == "suffix")
                    .map(|p| {
                        format!(
                            "{} (base has {})",
                            p.module,
                            p.base_tensor.as_deref().unwrap_or("?")
                        )
                    })
                    .collect(),
            },
            When::ShapeMismatch | When::VocabMismatch => match &self.resolution {
                None => return Evaluated::NeedsBase,
                Some(r) => {
                    let vocab = when == When::VocabMismatch;
                    r.unmatched
                        .iter()
                        .filter_map(|u| match u {
                            Unmatched::ShapeMismatch {
                                module,
                                expected,
                                found,
                                ..
                            } => {
                                let is_embedding = a
                                    .module(module)
                                    .is_some_and(|m| m.kind == ModuleKind::Embedding);
                                (is_embedding == vocab).then(|| {
                                    format!("{module} (adapter {expected:?}, base {found:?})")
                                })
                            }
                            _ => None,
                        })
                        .collect()
                }
            },
            When::LmHeadOn(types) => match &self.plan.base_facts {
                None => return Evaluated::NeedsBase,
                Some(b) if b.model_type.as_deref().is_some_and(|t| types.contains(&t)) => {
                    let mut v = names(&|m| last_component(&m.name) == "lm_head");
                    v.extend(
                        a.full_tensors
                            .iter()
                            .filter(|f| !is_saved_base_layer(f) && is_lm_head_tensor(&f.name))
                            .map(|f| f.name.clone()),
                    );
                    v
                }
                Some(_) => vec![],
            },
            When::QaloraPooledOnGptq => match (&self.resolution, &self.plan.base) {
                (Some(r), Some(b)) => qalora::pooled_on_gptq(a, b, r),
                _ => return Evaluated::NeedsBase,
            },
            When::BaseArchitectureNot(known) => match &self.plan.base_facts {
                None => return Evaluated::NeedsBase,
                Some(b) => b
                    .text_architectures
                    .first()
                    .or(b.architectures.first())
                    .filter(|arch| !known.contains(&arch.as_str()))
                    .map(|arch| vec![format!("{arch} (the base's architecture)")])
                    .unwrap_or_default(),
            },
            When::TiedLmHead { unless } => match &self.plan.base_facts {
                None => return Evaluated::NeedsBase,
                Some(b) if b.model_type.as_deref().is_some_and(|t| unless.contains(&t)) => vec![],
                Some(b) if b.tie_word_embeddings || !b.has_lm_head => {
                    let mut v = names(&|m| last_component(&m.name) == "lm_head");
                    v.extend(
                        a.full_tensors
                            .iter()
                            .filter(|f| {
                                f.name.starts_with("lm_head.") || f.name.contains(".lm_head.")
                            })
                            .map(|f| f.name.clone()),
                    );
                    v
                }
                Some(_) => vec![],
            },
            When::PeftExtraKeys => {
                if a.format != Format::Peft {
                    vec![]
                } else {
                    let mut v = Vec::new();
                    for m in &a.modules {
                        if m.dora_magnitude.is_some() {
                            v.push(format!("{}.lora_magnitude_vector", m.name));
                        }
                        if has_lora_bias(m) {
                            v.push(format!("{}.lora_B.bias", m.name));
                        }
                        if m.kind == ModuleKind::Embedding {
                            v.push(format!("{}.lora_embedding_A/B", m.name));
                        }
                    }
                    v.extend(a.full_tensors.iter().map(|f| f.name.clone()));
                    v
                }
            }
            When::PeftTypeNotLora => self.peft_type_not_lora(),
            When::BundledEmbeddings => a.bundled_embeddings.clone(),
            When::Comfy(gap) => super::comfy_gaps::items(a, gap),
        };
        Evaluated::Items(v)
    }

    /// [`When::PeftTypeNotLora`]: `peft_type X: key, key, key, … (N tensors)` for a PEFT folder
    /// whose config names another tuner than LoRA (absent means LORA, as PEFT's
    /// `PeftConfigMixin` default and lorakit's reader take it); empty otherwise.
    fn peft_type_not_lora(&self) -> Vec<String> {
        let a = &self.plan.adapter;
        if a.format != Format::Peft {
            return vec![];
        }
        let Some(t) = self.cfg_str("peft_type").filter(|t| *t != "LORA") else {
            return vec![];
        };
        // Every tensor of the file, not the modules' factors: the AdaLoRA reader folds
        // `lora_E` into an owned `lora_A` and keeps no module of rank 0.
        let keys: BTreeSet<&str> = a
            .source
            .iter()
            .flat_map(|src| src.tensors().iter().map(|t| t.name.as_str()))
            .collect();
        const SHOWN: usize = 3;
        let mut shown: Vec<&str> = keys.iter().copied().take(SHOWN).collect();
        if keys.len() > SHOWN {
            shown.push("…");
        }
        vec![format!(
            "peft_type {t}: {} ({} tensors)",
            shown.join(", "),
            keys.len()
        )]
    }

    /// A name that has no tensor of its own in the base but a module in the model: `lm_head`
    /// of a base that ties it to `embed_tokens` (transformers does not save it; the module
    /// exists and loaders adapt it), or the base-layer copy PEFT saves beside a targeted
    /// embedding or tied head (`…base_layer.weight`, skipped by the loaders).
    fn tied_or_saved(&self, name: &str) -> bool {
        let a = &self.plan.adapter;
        if a.full_tensors
            .iter()
            .any(|f| f.name == name && is_saved_base_layer(f))
        {
            return true;
        }
        // The task head PEFT's task model creates and loads from the adapter even where the
        // base checkpoint (a causal LM a reward model was trained from) has none: peft 0.21.2
        // `peft_model.py:1830` (SEQ_CLS), `:2680` (TOKEN_CLS), `:2915` (QUESTION_ANS).
        let task_heads: &[&str] = match self.cfg_str("task_type") {
            Some("SEQ_CLS" | "TOKEN_CLS") => &["classifier", "score"],
            Some("QUESTION_ANS") => &["qa_outputs"],
            _ => &[],
        };
        let module = name
            .strip_suffix(".weight")
            .or_else(|| name.strip_suffix(".bias"))
            .unwrap_or(name);
        if task_heads.contains(&last_component(module))
            && a.full_tensors.iter().any(|f| f.name == name)
        {
            return true;
        }
        let tied = self
            .plan
            .base_facts
            .as_ref()
            .is_some_and(|b| b.tie_word_embeddings || !b.has_lm_head);
        let head = name.strip_suffix(".weight").unwrap_or(name);
        // The input embedding by any of the names PEFT's `_get_input_embeddings_name` meets
        // (GPT-2's `transformer.wte`, GPT-NeoX's `gpt_neox.embed_in`): a tied GPT-2 with
        // `modules_to_save=["lm_head"]` loads whole in PEFT (sweep7, PEFT seed 32 case 49).
        // T5's `shared.weight` and BART/mBART/Pegasus/Marian's `model.shared.weight` too: PEFT
        // wraps their `lm_head` over that Parameter (`_tied_weights_keys`).
        const INPUT_EMBEDDINGS: [&str; 4] = [
            "embed_tokens.weight",
            "wte.weight",
            "embed_in.weight",
            "shared.weight",
        ];
        tied && last_component(head) == "lm_head"
            && self.plan.base.as_ref().is_some_and(|b| {
                b.names()
                    .any(|n| INPUT_EMBEDDINGS.iter().any(|e| n.ends_with(e)))
            })
    }

    /// A string field of adapter_config.json.
    fn cfg_str(&self, key: &str) -> Option<&str> {
        self.plan.adapter.config.as_ref()?.get(key)?.as_str()
    }

    /// Every module of a kohya file has an SD prefix.
    /// What diffusers' Flux loader does with a OneTrainer Flux file (`diffusers_mixture.rs`).
    fn flux_mixture(&self) -> Option<super::diffusers_mixture::Mixture> {
        super::diffusers_mixture::flux_mixture(&self.plan.adapter, self.plan.base.as_ref())
    }

    /// Whether a transformer pipeline's own loader reads this file (`diffusers_pipelines.rs`).
    fn own_loader(&self) -> bool {
        super::diffusers_pipelines::pipeline_of(&self.plan.adapter, self.plan.base.as_ref())
            .is_some()
    }

    /// Every key has an SD prefix, so diffusers' SD/SDXL reader converts the file (a bundled
    /// embedding's `bundle_emb.…` key has none).
    fn sd_prefixed(&self) -> bool {
        let a = &self.plan.adapter;
        a.bundled_embeddings.is_empty() && a.modules.iter().all(|m| is_sd_prefixed(&m.name))
    }
}

/// A `lora_B.bias` tensor (PEFT `lora_bias`). PEFT's IA3 also carries a bias term (its vector
/// scales the base bias on the output side, `tuners/ia3/layer.py` `merge`), but that is no
/// tensor of the file: the loaders' bias rules are not about it.
fn has_lora_bias(m: &crate::adapter::LoraModule) -> bool {
    m.bias.is_some() && !matches!(m.factors, crate::adapter::Factors::Ia3 { .. })
}

/// A full tensor read from `{module}.base_layer.weight` (the base copy PEFT saves beside a
/// targeted embedding), which loaders skip on purpose (vLLM `is_base_embeddding_weights`,
/// llama.cpp `.base_layer.weight`).
pub(super) fn is_saved_base_layer(f: &crate::adapter::FullTensor) -> bool {
    matches!(&f.data, Data::Stored { key, .. } if key.contains(".base_layer."))
}
