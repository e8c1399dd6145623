//! With `--base` one pipeline component (a UNet or transformer folder, or a text encoder's):
//! the modules of that component diffusers finds no layer for, the condition
//! [`super::when::When::DiffusersNotInBase`].
//!
//! diffusers 0.42.1 hands each component's keys to PEFT (`loaders/peft.py`
//! `load_lora_adapter`: `inject_adapter_in_model`, then `set_peft_model_state_dict`); a module the
//! model lacks gets no layer, and its tensors are logged as "Loading adapter weights from
//! state_dict led to unexpected keys found in the model" and not applied (recorded by
//! `fixtures/gen/pipeline_base_fixtures.py`, MANIFEST `diffusers_load`). A module of another
//! component (a text encoder's beside a UNet base) is that component's business: the base given
//! cannot say. Must not decide a verdict or print.

use super::report::Placement;
use crate::adapter::formats::{diffusers as d, kohya};
use crate::adapter::Adapter;
use crate::io::Checkpoint;
use std::collections::BTreeSet;

/// What a base is, as a pipeline component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// `unet`, `transformer` or `prior`: a diffusers model (`_class_name` in its config).
    Denoiser,
    /// A transformers text encoder (`architectures` in its config).
    TextEncoder,
}

/// The modules placed `not_found` on `base` that belong to the component `base` is, each named
/// with the base; empty when the base is no single component lorakit can tell (a VAE, an
/// all-in-one single file, a folder without `config.json` whose names are no denoiser's).
/// `covered`: modules another rule already reports as lost (kohya names diffusers converts to a
/// path no UNet has). `None` (not evaluated) where none of the base's component is missing but
/// some module the base lacks belongs to a component it cannot speak for (a text encoder's
/// beside a UNet base): only that component's own base can say.
pub(super) fn not_in_base(
    a: &Adapter,
    base: &Checkpoint,
    placements: &[Placement],
    covered: &[String],
) -> Option<Vec<String>> {
    let Some(part) = part_of(base) else {
        return Some(vec![]);
    };
    // Text encoders are numbered (`text_encoder`, `text_encoder_2`, …) and a base folder does not
    // say which it is: judged only when the adapter names one.
    let encoders: BTreeSet<&str> = a
        .modules
        .iter()
        .filter_map(|m| component(&m.name))
        .filter(|c| c.starts_with("text_encoder"))
        .collect();
    let judged = |name: &str| match component(name) {
        None => true,
        Some(c) if c.starts_with("text_encoder") => {
            part == Part::TextEncoder && encoders.len() == 1
        }
        Some(_) => part == Part::Denoiser,
    };
    let missing = || placements.iter().filter(|p| p.status == "not_found");
    let lost: Vec<String> = missing()
        .filter(|p| judged(&p.module) && !covered.iter().any(|c| c == &p.module))
        .map(|p| format!("{} (not in {})", p.module, base.root.display()))
        .collect();
    // No module of the base's component is missing, but others are, which it cannot judge.
    if lost.is_empty() && missing().any(|p| !judged(&p.module)) {
        return None;
    }
    Some(lost)
}

/// The pipeline component a module is named under: a dotted `unet.`/`transformer.`/
/// `text_encoder….` prefix, or a kohya prefix (`lora_unet_` → `unet`).
fn component(name: &str) -> Option<&'static str> {
    let dotted = name.split_once('.').map(|(first, _)| first);
    d::COMPONENTS
        .iter()
        .copied()
        .find(|c| Some(*c) == dotted)
        .or_else(|| kohya::split_prefix(name).and_then(|(p, _)| d::component_of_kohya_prefix(p)))
}

/// The component `base` is: from its folder's `config.json` (`_class_name`: a diffusers model,
/// `architectures`: a transformers one), else from its tensor names (a UNet's or a
/// transformer's blocks and nothing of a text encoder).
fn part_of(base: &Checkpoint) -> Option<Part> {
    let cfg = base.folder().join("config.json");
    if let Some(v) = std::fs::read(&cfg)
        .ok()
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
    {
        if let Some(class) = v.get("_class_name").and_then(|c| c.as_str()) {
            let vae = ["Autoencoder", "VQModel"].iter().any(|x| class.contains(x));
            return (!vae).then_some(Part::Denoiser);
        }
        if v.get("architectures").is_some() {
            return Some(Part::TextEncoder);
        }
        return None;
    }
    let roots: BTreeSet<&str> = base
        .names()
        .map(|n| n.split('.').next().unwrap_or(n))
        .collect();
    let denoiser = [
        "down_blocks",
        "mid_block",
        "up_blocks",
        "transformer_blocks",
        "single_transformer_blocks",
    ]
    .iter()
    .any(|r| roots.contains(r));
    let encoder = ["text_model", "encoder", "shared", "text_encoders", "model"]
        .iter()
        .any(|r| roots.contains(r));
    (denoiser && !encoder).then_some(Part::Denoiser)
}
