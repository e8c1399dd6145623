//! Writing a diffusers single-file LoRA (`pytorch_lora_weights.safetensors`), the form
//! diffusers' own `save_lora_weights` writes (`loaders/lora_base.py` `write_lora_layers`): keys
//! `{component}.{module}.lora_A.weight` / `.lora_B.weight` under the pipeline component
//! (`unet`, `transformer`, `text_encoder`, `text_encoder_2`), and each component's PEFT
//! `LoraConfig` in the `lora_adapter_metadata` entry of `__metadata__` with its keys prefixed by
//! the component (`_pack_dict_with_prefix`), which `load_lora_adapter` turns back into the config
//! (ranks, alphas, patterns, rsLoRA). lorakit's reader ([`super::kohya`]) reads the same file
//! back to the same modules, factors byte for byte.
//!
//! Only LoRA on linear and conv layers is written, with PEFT's DoRA on linear layers
//! (`lora_magnitude_vector`, `use_dora: true`): diffusers' LoRA loader has no place for LyCORIS
//! factors or `dora_scale`, `lora_B` biases, embeddings or full tensors, and refusing names what
//! would otherwise be lost.
//!
//! Must not read files (the kohya reader reads these back) or drop a module silently.

use super::peft;
use crate::adapter::formats::format::Format;
use crate::adapter::model::{Adapter, ModuleKind};
use crate::error::{InputError, InputResult, Opt};
use crate::io::TensorSpec;
use std::collections::BTreeMap;
use std::path::Path;

/// The metadata entry diffusers reads the config from.
pub const METADATA_KEY: &str = "lora_adapter_metadata";

/// Pipeline components a module name may already start with.
pub const COMPONENTS: &[&str] = &[
    "unet",
    "transformer",
    "text_encoder",
    "text_encoder_2",
    "prior",
];

/// The pipeline component a kohya prefix stands for (diffusers' `convert_state_dict_to_kohya`
/// and `_convert_non_diffusers_lora_to_diffusers` map them so: `lora_unet` ↔ `unet`, `lora_te`/
/// `lora_te1` ↔ `text_encoder`, `lora_te2` ↔ `text_encoder_2`; `lora_transformer` ↔
/// `transformer` (OneTrainer), `lora_prior_unet` ↔ `prior`).
pub fn component_of_kohya_prefix(prefix: &str) -> Option<&'static str> {
    Some(match prefix {
        "lora_unet" => "unet",
        "lora_te" | "lora_te1" => "text_encoder",
        "lora_te2" => "text_encoder_2",
        "lora_transformer" => "transformer",
        "lora_prior_unet" => "prior",
        _ => return None,
    })
}

/// The kohya prefix a pipeline component's modules get (the inverse of
/// [`component_of_kohya_prefix`]): `text_encoder` is `lora_te1` beside a `text_encoder_2` (SDXL,
/// as kohya names them) and `lora_te` alone (SD 1.x); `None` for `prior`, which has none here.
pub fn kohya_prefix_of_component(component: &str, two_encoders: bool) -> Option<&'static str> {
    Some(match component {
        "unet" => "lora_unet",
        "text_encoder" if two_encoders => "lora_te1",
        "text_encoder" => "lora_te",
        "text_encoder_2" => "lora_te2",
        "transformer" => "lora_transformer",
        _ => return None,
    })
}

/// The module name starts with a pipeline component.
pub fn has_component(name: &str) -> bool {
    split(name, None).is_some()
}

/// The top-level modules of diffusers' `UNet2DConditionModel` (0.42.1
/// `models/unets/unet_2d_condition.py` `__init__`): a module path under one of them is a UNet's.
const UNET_ROOTS: &[&str] = &[
    "conv_in",
    "time_embedding",
    "encoder_hid_proj",
    "class_embedding",
    "add_embedding",
    "down_blocks",
    "mid_block",
    "up_blocks",
    "conv_norm_out",
    "conv_out",
    "position_net",
];

/// The pipeline component a denoiser's modules go under, told from the module paths of the
/// model (a base's tensors, or the adapter's own modules). kohya names every denoiser's modules
/// `lora_unet_`: SD's UNet and sd-scripts' Flux and SD3 transformers alike
/// (`networks/lora_flux.py` and `lora_sd3.py`: `LORA_PREFIX_* = "lora_unet"`), while a diffusers
/// pipeline calls a UNet `unet` and a transformer `transformer`
/// (`FluxLoraLoaderMixin.transformer_name`; its `lora_state_dict` turns `lora_unet_` keys into
/// `transformer.` ones). A UNet has its `down_blocks`/`mid_block`/`up_blocks`; without one, paths
/// that all start at a UNet's top-level modules are a UNet's too. One answer for the whole model:
/// CogVideoX's transformer has a top-level `time_embedding` as well.
pub fn denoiser_of<'a>(paths: impl Iterator<Item = &'a str>) -> &'static str {
    let roots: Vec<&str> = paths.map(|p| p.split('.').next().unwrap_or(p)).collect();
    let blocks = roots
        .iter()
        .any(|r| ["down_blocks", "mid_block", "up_blocks"].contains(r));
    if blocks || (!roots.is_empty() && roots.iter().all(|r| UNET_ROOTS.contains(r))) {
        "unet"
    } else {
        "transformer"
    }
}

/// Whether module path `path` is named in a Stable Diffusion single file's layout (LDM/SGM:
/// `model.diffusion_model.input_blocks…`, `cond_stage_model.…`, `conditioner.embedders.…`), which
/// no diffusers pipeline component uses.
pub fn original_layout(path: &str) -> bool {
    let root = path.split('.').next().unwrap_or(path);
    path.starts_with("model.diffusion_model.")
        || [
            "input_blocks",
            "middle_block",
            "output_blocks",
            "cond_stage_model",
            "conditioner",
        ]
        .contains(&root)
}

/// `(component, module name relative to it)` of a module, `component` when its name has none.
fn split<'n>(name: &'n str, component: Option<&'n str>) -> Option<(&'n str, &'n str)> {
    if let Some((first, rest)) = name.split_once('.') {
        if COMPONENTS.contains(&first) {
            return Some((first, rest));
        }
    }
    component.map(|c| (c, name))
}

/// Writes `adapter` (dotted module names) as a diffusers single file at `out`. Modules whose
/// names carry no component go under `component`; without one that is an error naming the
/// module. Tensors are encoded as `dtype` (`None`: stored tensors in their own dtype).
pub fn write(
    adapter: &Adapter,
    component: Option<&str>,
    out: &Path,
    output: &mut crate::io::Output,
    dtype: Option<crate::dtype::Dtype>,
    extra_metadata: &[(String, String)],
) -> InputResult<()> {
    let refuse = |what: String| InputError::invalid(&adapter.path, what);
    if let Some(f) = adapter.full_tensors.first() {
        return Err(refuse(format!(
            "tensor `{}`: a diffusers LoRA file cannot hold full tensors (modules_to_save)",
            f.name
        )));
    }
    let mut groups: BTreeMap<&str, Vec<crate::adapter::model::LoraModule>> = BTreeMap::new();
    let mut specs = Vec::new();
    let mut payload: Vec<Vec<u8>> = Vec::new();
    for m in &adapter.modules {
        let Some((a, b)) = m.factors.lora() else {
            // OFT, IA3, GLoRA: no ΔW of their own, so no LoRA to lower them to.
            let (name, algo, needs_base) =
                (m.name.clone(), m.factors.algo(), m.factors.needs_base());
            return Err(InputError::option(&adapter.path, move |o| {
                let fix = if needs_base {
                    "its update depends on the base weight, so it has no LoRA form (merge it into the base instead)".to_string()
                } else {
                    format!(
                        "lower it to LoRA first (resize with {})",
                        o.set(Opt::Rank, "R")
                    )
                };
                format!(
                    "module `{name}` is {algo}, which diffusers' LoRA loader cannot hold; {fix}"
                )
            }));
        };
        // PEFT's DoRA on a Linear layer is written as diffusers' `save_lora_weights` writes it
        // (`get_peft_model_state_dict`: `{module}.lora_magnitude_vector`, one per output row;
        // `use_dora: true` in the component's LoraConfig), which `load_lora_adapter` rebuilds.
        // LyCORIS' `dora_scale` is another formula and PEFT's conv magnitude another shape.
        let peft_dora =
            m.dora_rule == crate::adapter::model::DoraRule::Peft && m.kind == ModuleKind::Linear;
        if (m.dora_magnitude.is_some() && !peft_dora)
            || m.bias.is_some()
            || m.kind == ModuleKind::Embedding
            || m.base_transposed
        {
            return Err(refuse(format!(
                "module `{}`: a diffusers LoRA file cannot hold LyCORIS or conv DoRA, lora bias, embedding or fan_in_fan_out modules",
                m.name
            )));
        }
        if kohya_named(adapter, &m.name) {
            let name = m.name.clone();
            return Err(InputError::option(&adapter.path, move |o| {
                format!(
                    "module `{name}`: kohya names lost the dots of the module paths; give {} (the model the adapter is for) to restore them",
                    o.opt(Opt::Base)
                )
            }));
        }
        let (comp, rel) = split(&m.name, component).ok_or_else(|| {
            let name = m.name.clone();
            InputError::option(&adapter.path, move |o| {
                format!(
                    "module `{name}` names no pipeline component ({}): give {} with the component's kohya prefix (lora_unet, lora_te, lora_te2, lora_transformer)",
                    COMPONENTS.join(", "),
                    o.opt(Opt::Prefix)
                )
            })
        })?;
        // ai-toolkit's `diffusion_model.` root is the denoiser itself, not a layer.
        let rel = rel.strip_prefix("diffusion_model.").unwrap_or(rel);
        let mut rel_module = m.clone();
        rel_module.name = rel.to_owned();
        groups.entry(comp).or_default().push(rel_module);
        let (ashape, bshape) = peft::factor_shapes(m);
        for (suffix, data, shape) in [("lora_A.weight", a, ashape), ("lora_B.weight", b, bshape)] {
            let (dt, bytes) = peft::encoded(adapter, data, dtype)?;
            specs.push(TensorSpec::new(format!("{comp}.{rel}.{suffix}"), dt, shape));
            payload.push(bytes);
        }
        if let Some(d) = &m.dora_magnitude {
            let (dt, bytes) = peft::encoded(adapter, d, dtype)?;
            let key = format!("{comp}.{rel}.lora_magnitude_vector");
            specs.push(TensorSpec::new(key, dt, vec![m.out_features]));
            payload.push(bytes);
        }
    }
    // Each component's LoraConfig, keys prefixed by the component, sorted (json.dumps with
    // sort_keys=True).
    let mut config = BTreeMap::new();
    for (comp, modules) in groups {
        // `use_dora` is one flag per LoraConfig: PEFT would give a module without a magnitude
        // one from its base weight's norm, a different update.
        let dora = modules
            .iter()
            .filter(|m| m.dora_magnitude.is_some())
            .count();
        if dora > 0 && dora < modules.len() {
            let plain = modules.iter().find(|m| m.dora_magnitude.is_none());
            return Err(refuse(format!(
                "module `{comp}.{}`: DoRA and plain LoRA modules under one pipeline component cannot share its LoraConfig (use_dora)",
                plain.map_or("?", |m| m.name.as_str())
            )));
        }
        let sub = Adapter {
            use_rslora: adapter.use_rslora,
            ..Adapter::of_modules(Format::Peft, adapter.path.clone(), modules)
        };
        if let serde_json::Value::Object(c) = peft::config_json(&sub) {
            for (k, v) in c {
                config.insert(format!("{comp}.{k}"), v);
            }
        }
    }
    let mut meta = vec![("format".to_owned(), "pt".to_owned())];
    meta.push((
        METADATA_KEY.to_owned(),
        serde_json::to_string_pretty(&config).expect("JSON of JSON values"),
    ));
    meta.extend(extra_metadata.iter().cloned());
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by(|&i, &j| specs[i].name.cmp(&specs[j].name));
    let specs: Vec<TensorSpec> = order.iter().map(|&i| specs[i].clone()).collect();
    let mut w = output.safetensors(out, &meta, specs.clone())?;
    for (spec, &i) in specs.iter().zip(&order) {
        w.write_tensor(&spec.name, &payload[i])?;
    }
    w.finish()?;
    Ok(())
}

/// A kohya-named module (`lora_unet_…`, no dots): its paths must be restored first.
fn kohya_named(adapter: &Adapter, name: &str) -> bool {
    !adapter.format.layout().names_are_paths() && !name.contains('.')
}
