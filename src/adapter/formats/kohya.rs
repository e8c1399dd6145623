//! kohya-ss sd-scripts LoRA files (`networks/lora.py`).
//!
//! Keys are `{prefix}_{module path with dots replaced by underscores}` followed by
//! `.lora_down.weight` (`A`: `[r, in]`, conv `[r, in, kh, kw]`), `.lora_up.weight` (`B`:
//! `[out, r]`, conv `[out, r, 1, 1]`) and `.alpha` (a scalar); prefixes `lora_unet`,
//! `lora_te`, `lora_te1`, `lora_te2`. The scale is `alpha / r`, and a missing `.alpha` means
//! `alpha = r` (scale 1), as in `networks/lora.py` `LoRAModule.__init__`. Underscored names are
//! resolved against a base model's tensor list by [`crate::adapter::mapping`].
//!
//! The same reader takes every single file whose factors carry one of
//! [`lycoris::SUFFIXES`], whatever its module names: OneTrainer's ORIGINAL_LORA (@23df383
//! `LoRASaverMixin._save_original`) writes the model's own single-file names with no prefix
//! (`input_blocks.4.1.proj_in.lora_A.weight`, `double_blocks.0.img_attn.qkv.alpha`), which land by
//! dotted suffix on a single-file base (`model.diffusion_model.…`). For SDXL, SD3 and Flux ComfyUI maps
//! none of them (`model_lora_keys_unet` has `diffusion_model.…`, `lora_unet_…` and diffusers names
//! there; it maps bare native names only for models such as Qwen-Image or Mochi), so it loads no
//! key of such a file (tests/it/lycoris/onetrainer_comfy.rs).
//!
//! Must not: take a module's factors apart or check their shapes (`lycoris/`'s [`lycoris::module`]
//! and [`lycoris::tensors`] do), nor parse a PEFT config itself ([`super::peft::PeftConfig`] does).

use super::diffusers;
use super::layout::{Facts, Holds, Layout, Shape, WriteArgs};
use super::lycoris;
use super::peft::config::PeftConfig;
use super::written::{encoded, stored_shape};
use crate::adapter::algo::{Factors, KronHalf};
use crate::adapter::data::Data;
use crate::adapter::formats::format::Format;
use crate::adapter::model::{scale_for, Adapter, DoraRule, FullTensor, LoraModule, ModuleKind};
use crate::dtype::Dtype;
use crate::error::{InputError, InputResult};
use crate::io::{Output, SafetensorsFile};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Metadata key: JSON object kohya module name → dotted module path.
pub const META_MODULE_NAMES: &str = "lorakit.module_names";
/// Metadata key: the PEFT `adapter_config.json` (compact JSON) the adapter has as PEFT.
pub const META_PEFT_CONFIG: &str = "lorakit.peft_config";

/// The prefix of the textual-inversion embeddings bundled in a LoRA file
/// ([`Adapter::bundled_embeddings`]): `bundle_emb.{embedding}.{key}` (A1111's
/// `extensions-builtin/Lora/networks.py` loads them; HCP-Diffusion `pack_to_bundle_lora` writes
/// them).
pub const BUNDLE_PREFIX: &str = "bundle_emb.";

/// Known prefixes, longest first so `lora_te1_` is not read as `lora_te_` + `1…`.
pub const PREFIXES: &[&str] = &[
    "lora_unet",
    "lora_prior_unet",
    "lora_transformer",
    "lora_te1",
    "lora_te2",
    "lora_te3",
    "lora_te",
    "lycoris",
];

/// Reads a kohya-named file: plain LoRA or any LyCORIS algorithm lorakit applies
/// ([`super::lycoris`]). Every tensor must belong to a module; anything else is refused by name.
pub fn read(path: &Path, file: SafetensorsFile) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let mut parts: BTreeMap<String, lycoris::Parts> = BTreeMap::new();
    let mut namings: BTreeMap<String, lycoris::Naming> = BTreeMap::new();
    let names: std::collections::HashSet<&str> =
        file.tensors().iter().map(|t| t.name.as_str()).collect();
    // BFL's Flux control LoRAs (FLUX.1 Depth/Canny "-lora"), as diffusers 0.42.1 tells them
    // (`FluxLoraLoaderMixin.lora_state_dict`: any key with `query_norm.scale`): PEFT factors
    // with `lora_B.bias` (`lora_bias`), and the q/k RMSNorm scales as whole tensors, which
    // `_load_norm_into_transformer` loads over the model's (a replacement, whatever the scale).
    let bfl_control = names.iter().any(|k| k.contains("query_norm.scale"));
    let mut biases: BTreeMap<String, (String, Vec<usize>)> = BTreeMap::new();
    let mut full_tensors = Vec::new();
    let mut bundled_embeddings = Vec::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        if key.starts_with(BUNDLE_PREFIX) {
            bundled_embeddings.push(key.to_owned());
            continue;
        }
        if let Some(m) = key.strip_suffix(".lora_B.bias").filter(|m| !m.is_empty()) {
            biases.insert(m.to_owned(), (t.name.clone(), t.shape.clone()));
            continue;
        }
        if bfl_control && (key.ends_with(".query_norm.scale") || key.ends_with(".key_norm.scale")) {
            if t.shape.len() != 1 {
                return Err(InputError::invalid(
                    &fpath,
                    format!(
                        "tensor `{key}`: a norm scale must be 1-D, found {:?}",
                        t.shape
                    ),
                ));
            }
            full_tensors.push(FullTensor::stored_whole(key.to_owned(), key, &t.shape));
            continue;
        }
        // ComfyUI's `{module}.set_weight` (`comfy/lora.py` `load_lora`: a ("set", …) patch,
        // `calculate_weight` copies it over the weight whatever the strength): a whole tensor
        // replacing the module's weight.
        if let Some(m) = key.strip_suffix(".set_weight").filter(|m| !m.is_empty()) {
            full_tensors.push(FullTensor::stored_whole(
                format!("{m}.weight"),
                key,
                &t.shape,
            ));
            continue;
        }
        let ia3 = key
            .strip_suffix(lycoris::IA3_WEIGHT)
            .filter(|m| !m.is_empty() && names.contains(format!("{m}.on_input").as_str()))
            .map(|m| (m.to_owned(), "weight", lycoris::Naming::Kohya));
        let Some((module, role, naming)) = ia3.or_else(|| lycoris::split_key(key)) else {
            if let Some(algo) = lycoris::unsupported(key) {
                return Err(InputError::invalid(
                    &fpath,
                    format!("tensor `{key}`: {algo} modules are not supported yet (lorakit applies LoRA, LoCon, LoHa, LoKr, full/diff, norm layers, diag-OFT, IA3, GLoRA and DoRA scales)"),
                ));
            }
            return Err(InputError::invalid(
                &fpath,
                format!("tensor `{key}`: not a LoRA/LyCORIS tensor (no known suffix such as .lora_down.weight, .hada_w1_a, .lokr_w1, .diff, .alpha)"),
            ));
        };
        // `alpha` and the DoRA magnitude go with any spelling of the factors (ComfyUI reads
        // them beside every one; diffusers' `convert_state_dict_to_diffusers` renames a DoRA
        // file's factors to `.lora.up/.lora.down` and keeps `lora_magnitude_vector`, and
        // diffusers 0.42.1 loads and fuses that); the factors of one module must be spelled
        // one way.
        if !matches!(role, "alpha" | "dora_scale" | "lora_magnitude_vector") {
            let first = *namings.entry(module.clone()).or_insert(naming);
            if first != naming {
                return Err(InputError::invalid(
                    &fpath,
                    format!("tensor `{key}`: module `{module}` mixes {first} and {naming} names for its factors"),
                ));
            }
        }
        if let Some((other, _)) = parts
            .entry(module)
            .or_default()
            .insert(role, (t.name.clone(), t.shape.clone()))
        {
            return Err(InputError::invalid(
                &fpath,
                format!("tensors `{other}` and `{key}` define the same adapter tensor twice"),
            ));
        }
    }
    let configs = DiffusersConfigs::read(&file)?;
    let mut modules = Vec::with_capacity(parts.len());
    // Modules whose scale is rsLoRA's alpha/√r (their component's config says `use_rslora`).
    let mut rslora: BTreeSet<String> = BTreeSet::new();
    for (name, p) in &parts {
        let mut m = lycoris::module(&file, name, p)?;
        let peft_named = namings
            .get(name)
            .is_some_and(|n| *n != lycoris::Naming::Kohya);
        // No `.alpha` beside PEFT-named factors: the config diffusers saved in the file's
        // metadata gives it (`loaders/peft.py` `load_lora_adapter` → `_create_lora_config`);
        // without one, alpha = rank (diffusers `get_peft_kwargs`, ComfyUI's `alpha = 1.0`).
        if peft_named && !p.contains_key("alpha") && m.factors.lora().is_some() {
            if let Some((cfg, rel)) = configs.for_module(name) {
                let rank = cfg.rank_for(rel)?;
                if rank != m.rank {
                    return Err(InputError::invalid(
                        &fpath,
                        format!(
                            "module `{name}`: the `{}` metadata gives r = {rank} but its factors have rank {}",
                            DiffusersConfigs::KEY,
                            m.rank
                        ),
                    ));
                }
                m.alpha = cfg.alpha_for(rel)?;
                m.scale = scale_for(m.alpha, m.rank, cfg.use_rslora);
                if cfg.use_rslora {
                    rslora.insert(name.clone());
                }
            }
        }
        // A LoKr file diffusers' `save_lora_weights` wrote for a PEFT LoKr adapter (Z-Image,
        // Flux.2): no `.alpha`, the LoKrConfig in the metadata, which the loader builds PEFT's
        // layers from (`utils/peft_utils.py` `_create_lokr_config`: `LoKrConfig(**metadata)`),
        // and PEFT scales every LoKr ΔW by alpha/r, whole factors included (peft 0.21.2
        // `tuners/lokr/layer.py` `update_layer`: `scaling = alpha / r`; `get_delta_weight`).
        if !p.contains_key("alpha") && matches!(m.factors, Factors::Lokr { .. }) {
            if let Some((cfg, rel)) = configs
                .for_module(name)
                .filter(|(c, _)| c.peft_type == super::peft::config::PeftType::Lokr)
            {
                let rank = cfg.rank_for(rel)?;
                if let Factors::Lokr {
                    w2: KronHalf::LowRank { rank: r, .. },
                    ..
                } = &m.factors
                {
                    if *r != rank {
                        return Err(InputError::invalid(
                            &fpath,
                            format!(
                                "module `{name}`: the `{}` metadata gives r = {rank} but its lokr_w2 factors have rank {r}",
                                DiffusersConfigs::KEY
                            ),
                        ));
                    }
                }
                // PEFT builds each half whole or decomposed from r (`update_layer`: w1 whole
                // unless `decompose_both` and 2r < max(w1's sides), w2 whole iff 2r ≥ max(w2's
                // sides)); a file of the other layout does not load (unexpected keys, ΔW of the
                // init): refused, as `check` reports it (hostile round 13: r = 1 merged at 2×).
                // A Conv2d's decomposed w2 is 2-D and hides its kernel, so its in_n is known only
                // on the base: `peft_lokr_conv_misfit`, asked by the mapping.
                if let Factors::Lokr {
                    w1,
                    w2,
                    w1_shape,
                    w2_shape,
                } = &m.factors
                {
                    let both = cfg.raw.get("decompose_both").and_then(|v| v.as_bool());
                    let whole = |h: &KronHalf| matches!(h, KronHalf::Whole(_));
                    let peft_w1 = !(both == Some(true) && 2 * rank < w1_shape.0.max(w1_shape.1));
                    let peft_w2 = 2 * rank >= w2_shape.0.max(w2_shape.1);
                    let form = |w: bool| if w { "whole" } else { "decomposed" };
                    if !matches!(w2, KronHalf::Tucker { .. })
                        && (peft_w1 != whole(w1) || peft_w2 != whole(w2))
                    {
                        return Err(InputError::invalid(
                            &fpath,
                            format!(
                                "module `{name}`: the `{}` metadata gives r = {rank}, at which PEFT's LoKr builds w1 {} and w2 {}, but the file stores w1 {} and w2 {}: its factors would not load",
                                DiffusersConfigs::KEY,
                                form(peft_w1),
                                form(peft_w2),
                                form(whole(w1)),
                                form(whole(w2))
                            ),
                        ));
                    }
                }
                m.alpha = cfg.alpha_for(rel)?;
                m.scale = m.alpha / rank as f64;
            }
        }
        if let Some((key, shape)) = biases.remove(name) {
            // PEFT's `lora_bias` (peft 0.21.2 `tuners/lora/layer.py`): `bias += lora_B.bias ·
            // scaling` on merge, one value per output row.
            if m.factors.lora().is_none() || shape != [m.out_features] {
                return Err(InputError::invalid(
                    &fpath,
                    format!(
                        "tensor `{key}`: a lora_B bias needs a LoRA module of {} output rows, found shape {shape:?}",
                        m.out_features
                    ),
                ));
            }
            m.bias = Some(Data::Stored {
                key,
                transpose: false,
            });
        }
        modules.push(m);
    }
    if let Some((_, (key, _))) = biases.into_iter().next() {
        return Err(InputError::invalid(
            &fpath,
            format!("tensor `{key}`: no lora_A/lora_B factors beside this lora_B bias"),
        ));
    }
    let mut used: Vec<lycoris::Naming> = namings.into_values().collect();
    used.sort();
    used.dedup();
    // The writers state a module's scale from its alpha under the adapter's one rule
    // (`use_rslora`): rsLoRA for the adapter when every module is an rsLoRA one, else each
    // rsLoRA module's alpha becomes the one that gives its scale under alpha/r (alpha·√r), so no
    // output halves it (rev16c F4).
    let all_rslora = !modules.is_empty() && rslora.len() == modules.len();
    if !all_rslora {
        for m in modules.iter_mut().filter(|m| rslora.contains(&m.name)) {
            m.alpha = m.scale * m.rank as f64;
        }
    }
    let metadata = file.header().metadata.clone();
    Ok(Adapter {
        use_rslora: all_rslora,
        source: Some(file),
        metadata,
        namings: used,
        untargeted: Vec::new(),
        full_tensors,
        bundled_embeddings,
        ..Adapter::of_modules(Format::Kohya, path.to_path_buf(), modules)
    })
}

/// The LoRA configs diffusers stores in a single-file adapter's metadata under
/// `lora_adapter_metadata` (`loaders/lora_base.py` `write_lora_layers`): one PEFT `LoraConfig`
/// dict, its keys prefixed with the pipeline component (`transformer.r`, `unet.lora_alpha`;
/// `_pack_dict_with_prefix`) when a pipeline saved it, unprefixed when a model did.
#[derive(Default)]
struct DiffusersConfigs {
    by_component: BTreeMap<String, PeftConfig>,
    plain: Option<PeftConfig>,
}

impl DiffusersConfigs {
    const KEY: &'static str = "lora_adapter_metadata";

    fn read(file: &SafetensorsFile) -> InputResult<Self> {
        Self::of(file.path(), &file.header().metadata)
    }

    /// The configs of a file's `metadata` (none without the key).
    fn of(path: &Path, metadata: &[(String, String)]) -> InputResult<Self> {
        let Some((_, text)) = metadata.iter().find(|(k, _)| k == Self::KEY) else {
            return Ok(Self::default());
        };
        let bad =
            |why: String| InputError::invalid(path, format!("metadata `{}`: {why}", Self::KEY));
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let mut grouped: BTreeMap<String, serde_json::Map<String, serde_json::Value>> =
            BTreeMap::new();
        let mut plain = serde_json::Map::new();
        for (k, val) in obj {
            match k.split_once('.') {
                Some((component, field)) => {
                    grouped
                        .entry(component.to_owned())
                        .or_default()
                        .insert(field.to_owned(), val.clone());
                }
                None => {
                    plain.insert(k.clone(), val.clone());
                }
            }
        }
        let parse = |m: serde_json::Map<String, serde_json::Value>| {
            let text = serde_json::Value::Object(m).to_string();
            PeftConfig::parse(path, text.as_bytes())
        };
        Ok(Self {
            by_component: grouped
                .into_iter()
                .map(|(c, m)| Ok((c, parse(m)?)))
                .collect::<InputResult<_>>()?,
            plain: if plain.is_empty() {
                None
            } else {
                Some(parse(plain)?)
            },
        })
    }

    /// The config for module `name` and the name relative to it.
    fn for_module<'n>(&self, name: &'n str) -> Option<(&PeftConfig, &'n str)> {
        if let Some((component, rel)) = name.split_once('.') {
            if let Some(c) = self.by_component.get(component) {
                return Some((c, rel));
            }
        }
        self.plain.as_ref().map(|c| (c, name))
    }
}

/// Why PEFT would not load module `m` of a diffusers-saved LoKr file (`lora_adapter_metadata`
/// a LoKrConfig) on a Conv2d base weight of `kernel` = kh·kw elements per channel pair, or `None`.
/// A decomposed `w2` that is not an effective conv is `lokr_w2_b` [r, in_n·kh·kw], 2-D (peft
/// 0.21.2 `tuners/lokr/layer.py` `create_adapter_parameters`), so the file hides the kernel and
/// the reader judged `w2` as a Linear's (`2r ≥ max(out_k, in_n·kh·kw)`); on the conv PEFT's
/// `update_layer` builds `w2` whole iff `r ≥ max(out_k, in_n)/2`, and then the file's
/// `lokr_w2_a`/`lokr_w2_b` are unexpected keys and the layer keeps its init.
pub fn peft_lokr_conv_misfit(adapter: &Adapter, m: &LoraModule, kernel: usize) -> Option<String> {
    let Factors::Lokr {
        w2: KronHalf::LowRank { rank, .. },
        w2_shape: (out_k, cols),
        ..
    } = &m.factors
    else {
        return None;
    };
    if m.kind != ModuleKind::Linear || kernel <= 1 || cols % kernel != 0 {
        return None;
    }
    let configs = DiffusersConfigs::of(&adapter.path, &adapter.metadata).ok()?;
    let (cfg, rel) = configs.for_module(&m.name)?;
    if cfg.peft_type != super::peft::config::PeftType::Lokr {
        return None;
    }
    let r = cfg.rank_for(rel).ok()?;
    let in_n = cols / kernel;
    (r == *rank && 2 * r >= (*out_k).max(in_n)).then(|| {
        format!(
            "a Conv2d of {kernel} kernel elements, on which PEFT's LoKr at the `{}` metadata's r = {r} builds w2 whole (r ≥ max(out_k = {out_k}, in_n = {in_n})/2), but the file stores w2 decomposed (lokr_w2_a/lokr_w2_b): its factors would not load",
            DiffusersConfigs::KEY
        )
    })
}

/// Splits a kohya module name into its prefix and the underscored module path.
pub fn split_prefix(name: &str) -> Option<(&'static str, &str)> {
    PREFIXES.iter().find_map(|p| {
        name.strip_prefix(p)
            .and_then(|r| r.strip_prefix('_'))
            .map(|r| (*p, r))
    })
}

/// Kohya name of a module path: `prefix` + `_` + path with dots replaced by underscores.
pub fn kohya_name(prefix: &str, module: &str) -> String {
    format!("{prefix}_{}", module.replace('.', "_"))
}

/// The kohya name module `name` gets in a file written with `prefix`: a name with a kohya prefix
/// is kept; a dotted path under a pipeline component (`unet.`, `text_encoder.`,
/// `text_encoder_2.`, `transformer.`: what diffusers' `save_lora_weights` writes) gets the
/// component's prefix in place of the component ([`diffusers::kohya_prefix_of_component`]:
/// `unet.down_blocks.0…` → `lora_unet_down_blocks_0…`, as ComfyUI's `model_lora_keys_unet` and
/// diffusers' kohya loader read it; `prefix` + `unet_…` matches no module in either, rev16c F1);
/// any other path gets `prefix`.
pub fn written_kohya_name(name: &str, prefix: &str, two_encoders: bool) -> String {
    if split_prefix(name).is_some() {
        return name.to_owned();
    }
    if let Some((component, rest)) = name.split_once('.') {
        if let Some(p) = diffusers::kohya_prefix_of_component(component, two_encoders) {
            return kohya_name(p, rest);
        }
    }
    kohya_name(prefix, name)
}

/// Writes `adapter` (names already resolved to dotted module paths, or kohya names) as a kohya
/// file, every tensor encoded as `dtype`; see [`write_with`].
pub fn write(
    adapter: &Adapter,
    prefix: &str,
    out: &Path,
    output: &mut crate::io::Output,
    dtype: crate::dtype::Dtype,
    extra_metadata: &[(String, String)],
) -> InputResult<()> {
    write_with(adapter, prefix, out, output, Some(dtype), extra_metadata)
}

/// Kohya alpha that gives module `m` its scale under kohya's `alpha / rank` rule: `alpha`
/// itself, or `scale · rank` for rsLoRA (kohya has no `√r` rule).
pub fn kohya_alpha(adapter: &Adapter, m: &LoraModule) -> f64 {
    if adapter.use_rslora {
        m.scale * m.rank as f64
    } else {
        m.alpha
    }
}

/// Writes `adapter` as a kohya file. Modules with a kohya prefix keep their name; dotted module
/// paths become `prefix_path_with_underscores` (two modules that would get the same kohya name
/// are an error). The scale is carried as `.alpha` ([`kohya_alpha`]), always stored as an F32
/// scalar so a half-precision file does not round it. `dtype`: `Some(d)` encodes every factor
/// as `d`; `None` copies stored factors byte for byte (see [`encoded`]).
pub fn write_with(
    adapter: &Adapter,
    prefix: &str,
    out: &Path,
    output: &mut crate::io::Output,
    dtype: Option<crate::dtype::Dtype>,
    extra_metadata: &[(String, String)],
) -> InputResult<()> {
    use crate::io::TensorSpec;
    let mut specs = Vec::new();
    let mut payload: Vec<Vec<u8>> = Vec::new();
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let two_encoders = adapter
        .modules
        .iter()
        .any(|m| m.name.starts_with("text_encoder_2."));
    for m in &adapter.modules {
        if let Factors::Ia3 { rule, .. } = m.factors {
            if rule != crate::adapter::algo::Ia3Rule::Lycoris {
                return Err(InputError::invalid(
                    &adapter.path,
                    format!("module `{}`: PEFT's IA3 (W0 ⊙ l, bias scaled too) has no LyCORIS/kohya form (W0 ⊙ (1 + w))", m.name),
                ));
            }
        }
        if m.factors.peft_only() {
            return Err(InputError::invalid(
                &adapter.path,
                format!(
                    "module `{}`: PEFT's {} has no LyCORIS/kohya form",
                    m.name,
                    m.factors.algo()
                ),
            ));
        }
        if let Factors::PeftOft {
            conv,
            coft_eps,
            cayley,
            ..
        } = m.factors
        {
            // OneTrainer's kohya form holds its own OFT v2 only: PEFT's rotates a conv the other
            // way round, and may use coft or another Cayley series.
            let onetrainer = conv == crate::adapter::algo::OftConv::Plain
                && coft_eps.is_none()
                && cayley == crate::adapter::algo::PeftCayley::Neumann(5);
            if !onetrainer {
                return Err(InputError::invalid(
                    &adapter.path,
                    format!("module `{}`: PEFT's OFT (input-side rotation, packed oft_R) has no LyCORIS/kohya form (OneTrainer's oft_R rotates a conv untransposed, with 5 Cayley–Neumann terms and no coft)", m.name),
                ));
            }
        }
        if let Factors::Lokr {
            w1: crate::adapter::algo::KronHalf::Whole(_),
            w2: crate::adapter::algo::KronHalf::Whole(_),
            ..
        } = m.factors
        {
            // LyCORIS and ComfyUI ignore alpha when both halves are whole (scale 1).
            if m.scale != 1.0 {
                return Err(InputError::invalid(
                    &adapter.path,
                    format!("module `{}`: a LoKr module with both halves whole has scale 1 in LyCORIS files, and this one's is {} (fold it into lokr_w1 first)", m.name, m.scale),
                ));
            }
        }
        let lycoris_dora = matches!(m.dora_rule, DoraRule::Lycoris { .. });
        let full = matches!(m.factors, Factors::Full { .. });
        let bias_ok = matches!(m.factors, Factors::Full { .. } | Factors::Norm { .. });
        if (m.dora_magnitude.is_some() && !lycoris_dora)
            || (m.bias.is_some() && !bias_ok)
            || m.kind == ModuleKind::Embedding
            || m.base_transposed
        {
            return Err(InputError::invalid(
                &adapter.path,
                format!("module `{}`: kohya format cannot hold PEFT DoRA, lora bias, embedding or fan_in_fan_out modules", m.name),
            ));
        }
        let base = written_kohya_name(&m.name, prefix, two_encoders);
        if let Some(other) = seen.insert(base.clone(), &m.name) {
            return Err(InputError::invalid(
                &adapter.path,
                format!(
                    "modules `{other}` and `{}` both become kohya module `{base}`",
                    m.name
                ),
            ));
        }
        let no_alpha = matches!(
            m.factors,
            Factors::Norm { .. } | Factors::Ia3 { .. } | Factors::PeftOft { .. }
        );
        if !full && !no_alpha {
            let alpha = kohya_alpha(adapter, m) as f32;
            specs.push(TensorSpec::new(format!("{base}.alpha"), Dtype::F32, vec![]));
            payload.push(alpha.to_le_bytes().to_vec());
        }
        if let Factors::Ia3 { on_input, .. } = m.factors {
            // LyCORIS' `on_input` buffer (saved in the file's dtype; F32 here, like alpha).
            let flag = if on_input { 1f32 } else { 0f32 };
            specs.push(TensorSpec::new(
                format!("{base}.on_input"),
                Dtype::F32,
                vec![],
            ));
            payload.push(flag.to_le_bytes().to_vec());
        }
        if let Factors::PeftOft { scaled: true, .. } = m.factors {
            // OneTrainer's `scaled_oft` buffer: `torch.tensor(True)`.
            specs.push(TensorSpec::new(
                format!("{base}.oft_R.scaled_oft"),
                Dtype::BOOL,
                vec![],
            ));
            payload.push(vec![1u8]);
        }
        for (suffix, data, canonical) in lycoris::tensors(m) {
            // A stored tensor keeps the shape it was stored with (LyCORIS writes a LoHa conv's
            // `hada_w1_b` flattened, sd-scripts a conv's factors 4-D), so conversions are exact.
            let shape = stored_shape(adapter, data, canonical);
            if shape.iter().product::<usize>() != adapter.numel(data) {
                return Err(InputError::invalid(
                    &adapter.path,
                    format!(
                        "module `{}`: {suffix} holds {} values, which does not fit shape {shape:?}",
                        m.name,
                        adapter.numel(data)
                    ),
                ));
            }
            let (dt, bytes) = encoded(adapter, data, dtype)?;
            specs.push(TensorSpec::new(format!("{base}.{suffix}"), dt, shape));
            payload.push(bytes);
        }
    }
    if let Some(f) = adapter.full_tensors.first() {
        return Err(InputError::invalid(
            &adapter.path,
            format!("tensor `{}`: kohya format cannot hold full tensors (modules_to_save, saved embedding layers)", f.name),
        ));
    }
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by(|&i, &j| specs[i].name.cmp(&specs[j].name));
    let specs: Vec<TensorSpec> = order.iter().map(|&i| specs[i].clone()).collect();
    let mut w = output.safetensors(out, extra_metadata, specs.clone())?;
    for (spec, &i) in specs.iter().zip(&order) {
        w.write_tensor(&spec.name, &payload[i])?;
    }
    w.finish()?;
    Ok(())
}

/// LyCORIS and ComfyUI give a LoKr module with both halves whole scale 1 whatever its alpha
/// (`lycoris/modules/lokr.py`: `if self.use_w2 and self.use_w1: alpha = lora_dim`; ComfyUI
/// `weight_adapter/lokr.py`: `dim` is `None`, so `alpha` is ignored). A module read from PEFT
/// (scale `alpha / r`) keeps its ΔW only with the scale folded into `w1`: `w1 ← s·w1` in f64,
/// rounded once to f32. Returns the folded scale per module.
pub fn fold_whole_lokr(adapter: &mut Adapter) -> InputResult<Vec<Option<f64>>> {
    let mut folded = vec![None; adapter.modules.len()];
    #[allow(clippy::needless_range_loop)] // `adapter` is borrowed again inside (values)
    for i in 0..adapter.modules.len() {
        let m = &adapter.modules[i];
        let Factors::Lokr {
            w1: KronHalf::Whole(w1),
            w2: KronHalf::Whole(_),
            ..
        } = &m.factors
        else {
            continue;
        };
        if m.scale == 1.0 {
            continue;
        }
        let s = m.scale;
        let scaled = adapter.scaled_values(w1, s, &m.name, "lokr_w1")?;
        let m = &mut adapter.modules[i];
        if let Factors::Lokr {
            w1: KronHalf::Whole(w1),
            ..
        } = &mut m.factors
        {
            *w1 = Data::Owned(std::sync::Arc::new(scaled));
        }
        m.scale = 1.0;
        m.alpha = 1.0;
        folded[i] = Some(s);
    }
    Ok(folded)
}

/// The kohya format's [`Layout`]: one `.safetensors` file, kohya names, an `.alpha` tensor per
/// module, plain linear and conv modules only (no full tensors, embeddings or `Conv1D`).
pub struct Kohya;

impl Layout for Kohya {
    fn facts(&self) -> &'static Facts {
        &Facts {
            name: "kohya",
            label: "kohya",
            shape: Shape::File,
            names_are_paths: false,
            alpha_tensors: true,
            holds: Holds {
                full_tensors: false,
                embeddings: false,
                fan_in_fan_out: false,
            },
        }
    }

    fn files(&self, out: &Path) -> Vec<PathBuf> {
        vec![out.to_path_buf()]
    }

    fn read_paths(&self, _path: &Path) -> Vec<PathBuf> {
        Vec::new()
    }

    /// A name that already has a kohya prefix is kept; a dotted path gets `prefix`.
    fn written_name(&self, name: &str, prefix: &str) -> String {
        written_kohya_name(name, prefix, false)
    }

    /// Refused by the writer ([`write_with`]), module by module.
    fn check_modules(&self, _adapter: &Adapter) -> InputResult<()> {
        Ok(())
    }

    /// [`fold_whole_lokr`].
    fn fold_scales(&self, adapter: &mut Adapter) -> InputResult<Vec<Option<f64>>> {
        fold_whole_lokr(adapter)
    }

    /// Each module's rank and [`kohya_alpha`] as the F32 `.alpha` tensor stores it.
    fn written_ranks_alphas(&self, adapter: &Adapter) -> InputResult<Vec<(usize, f64)>> {
        Ok(adapter
            .modules
            .iter()
            .map(|m| (m.rank, kohya_alpha(adapter, m) as f32 as f64))
            .collect())
    }

    /// The input's `format` entry kept in front (files kohya writes carry none; PEFT's writer
    /// sets its own). For an adapter whose modules are all dotted module paths, the map kohya
    /// name → path ([`META_MODULE_NAMES`]) and the adapter_config.json PEFT output would have
    /// ([`META_PEFT_CONFIG`]), so that converting the file back to PEFT needs no base and
    /// restores every module's alpha exactly (`ops::convert::restore_from_metadata`). An
    /// adapter that keeps its kohya names carries both entries of its input, which the reader
    /// checks against the file's ranks and alphas before trusting the config.
    fn stamp_metadata(&self, adapter: &Adapter, prefix: &str, meta: &mut Vec<(String, String)>) {
        if let Some(f) = adapter.metadata.iter().find(|(k, _)| k == "format") {
            meta.insert(0, f.clone());
        }
        let dotted: Vec<_> = adapter
            .modules
            .iter()
            .filter(|m| split_prefix(&m.name).is_none())
            .collect();
        if !dotted.is_empty() && dotted.len() == adapter.modules.len() {
            let names: serde_json::Map<String, serde_json::Value> = adapter
                .modules
                .iter()
                .map(|m| {
                    (
                        kohya_name(prefix, &m.name),
                        serde_json::Value::String(m.name.clone()),
                    )
                })
                .collect();
            meta.push((
                META_MODULE_NAMES.into(),
                serde_json::Value::Object(names).to_string(),
            ));
            meta.push((
                META_PEFT_CONFIG.into(),
                super::peft::config_json(adapter).to_string(),
            ));
        } else if dotted.is_empty() {
            for key in [META_MODULE_NAMES, META_PEFT_CONFIG] {
                if let Some(kv) = adapter.metadata.iter().find(|(k, _)| k == key) {
                    meta.push(kv.clone());
                }
            }
        }
    }

    fn write(&self, adapter: &Adapter, output: &mut Output, args: WriteArgs) -> InputResult<()> {
        write_with(
            adapter,
            args.prefix,
            args.out,
            output,
            args.dtype,
            args.metadata,
        )
    }
}
