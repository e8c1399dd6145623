//! What diffusers' SD/SDXL loader (0.42.1, with PEFT 0.21.2 and transformers 5.24) does with a
//! kohya file's alphas, its UNet names and its factor shapes, past the key renames of
//! `diffusers_keys.rs`: the conditions `DiffusersUnetKeyLost`, `DiffusersUnetNonePlaced`,
//! `DiffusersAlphaLost` and `DiffusersConvFactors2d` of [`super::when::When`], item by item.
//! Split out of `facts.rs` and `diffusers_keys.rs` (their 800-line guard). Must not decide a
//! verdict or print; every statement here was checked by running diffusers on the files of
//! `fixtures/gen/review17_diffusion.py`.
//!
//! The alpha rule. `_convert_non_diffusers_lora_to_diffusers` (`lora_conversion_utils.py`)
//! names each module's alpha with `_get_alpha_name`: `{component}.{diffusers_name.split(".lora.")[0]}.alpha`.
//! An attention processor's key (`…attn1.processor.to_k_lora.down.weight`) has no `.lora.`, so
//! its alpha keeps the whole key; `get_peft_kwargs` (`utils/peft_utils.py`) sets `lora_alpha`
//! to the component's most common alpha (`Counter.most_common()[0]`: the first seen wins a
//! tie, keys in the file's sorted order) and turns the others into `alpha_pattern` entries,
//! which PEFT matches as `(.*\.)?{key}$` against module paths: the processor spelling matches
//! none, and a text encoder's entries (`text_model.encoder.…`, or `…self_attn` for q/k/v/out)
//! match none of transformers 5's `CLIPTextModel` (no `text_model.` level). Those modules are
//! applied at `most_common / r` instead of `alpha / r`.

use super::diffusers_keys::{lost_unet_module, unet_module_path};
use super::report::Placement;
use super::when::When;
use crate::adapter::formats::kohya;
use crate::adapter::{Adapter, Format, LoraModule};
use crate::io::Checkpoint;
use std::collections::BTreeSet;

/// The items of `when` (one of the four above, or `DiffusersNotInBase`: `diffusers_base.rs`), `None` when it needs the base and there is
/// none. `sd`: the file is a kohya file every key of which has an SD prefix, read by the SD/SDXL
/// loader (not a transformer pipeline's own converter).
pub(super) fn items(
    a: &Adapter,
    when: When,
    sd: bool,
    base: Option<&Checkpoint>,
    placements: &[Placement],
) -> Option<Vec<String>> {
    Some(match when {
        When::DiffusersUnetKeyLost | When::DiffusersUnetNonePlaced if sd => {
            let unet = a
                .modules
                .iter()
                .filter(|m| m.name.starts_with("lora_unet_"))
                .count();
            let lost = lost_unet(a);
            let none_placed = unet > 0 && lost.len() == unet;
            if none_placed == (when == When::DiffusersUnetNonePlaced) {
                lost
            } else {
                vec![]
            }
        }
        When::DiffusersAlphaLost if sd => alpha_lost(a),
        // Files a transformer pipeline's own converter reads have their own rules.
        When::DiffusersNotInBase
            if super::diffusers_pipelines::pipeline_of(a, base).is_some()
                || super::diffusers_mixture::flux_mixture(a, base).is_some() =>
        {
            vec![]
        }
        When::DiffusersNotInBase => match base {
            Some(b) => {
                let covered: Vec<String> = match sd {
                    true => lost_unet_paths(a).into_iter().map(|(m, _)| m).collect(),
                    false => vec![],
                };
                super::diffusers_base::not_in_base(a, b, placements, &covered)?
            }
            None => return None,
        },
        When::DiffusersConvFactors2d if a.format == Format::Kohya => {
            // A 2-D `lora_up` beside a 4-D `lora_down` needs no base: the down factor says
            // the module is a conv.
            let mut items = flat_up_on_conv(a);
            match base {
                Some(b) => items.extend(conv_factors_2d(a, b, placements)),
                // Without the base only a module the SD UNet has as a 1×1 conv can be one.
                None if maybe_conv_2d(a) => return None,
                None => {}
            }
            items
        }
        _ => vec![],
    })
}

/// In a kohya file some of whose keys have no SD prefix, which diffusers' SD/SDXL reader leaves
/// unconverted (`lora_state_dict` converts only when every key has one): `NotSdPrefixed`, the
/// modules without one (they fall under no pipeline component); `DiffusersKeyWithoutLora`, the
/// keys without `lora` in them (`load_lora_weights`: "Invalid LoRA checkpoint. Make sure all
/// LoRA param names contain `'lora'` substring." — a `lycoris_….alpha`, a bundled embedding's
/// `bundle_emb.…`; `dora_scale` keys are filtered out before). Bundled embeddings alone keep a
/// kohya SD file from being converted too: then every module is `NotSdPrefixed` (none is
/// converted); a file of diffusers' component names is not converted in any case.
pub(super) fn not_sd_prefixed(a: &Adapter, when: When) -> Vec<String> {
    use super::names::{is_kohya_sd_prefixed, is_sd_prefixed};
    let mut modules: Vec<String> = a
        .modules
        .iter()
        .filter(|m| !is_sd_prefixed(&m.name))
        .map(|m| m.name.clone())
        .collect();
    // Files of diffusers' own component names (`unet.…`, `transformer.…`) are not converted
    // anyway (and Flux's loader wants `lora` in any key, not every one).
    let kohya_sd = a.modules.iter().all(|m| is_kohya_sd_prefixed(&m.name));
    if modules.is_empty() && !a.bundled_embeddings.is_empty() && kohya_sd {
        modules = a.modules.iter().map(|m| m.name.clone()).collect();
    }
    // The SD/SDXL loaders want `lora` in every key of any file, converted or not: a bundled
    // embedding beside diffusers' own `unet.`/`text_encoder….` names raises as well (recorded by
    // fixtures/gen/bundle_emb_fixtures.py).
    let sd_named = !a.modules.is_empty()
        && a.modules
            .iter()
            .all(|m| m.name.starts_with("unet.") || m.name.starts_with("text_encoder"));
    let bundled_beside_sd_names = sd_named && !a.bundled_embeddings.is_empty();
    if when == When::NotSdPrefixed || (modules.is_empty() && !bundled_beside_sd_names) {
        return modules;
    }
    let Some(src) = a.source.as_ref() else {
        return vec![];
    };
    src.tensors()
        .iter()
        .map(|t| t.name.as_str())
        .filter(|k| !k.contains("lora") && !k.contains("dora_scale"))
        .map(str::to_owned)
        .collect()
}

/// The kohya UNet modules diffusers looks up under a path the UNet lacks, each with that path:
/// [`lost_unet_module`], and names that keep a pipeline component (`lora_unet_unet_…`,
/// `lora_unet_text_encoder_…`, `lora_unet_transformer_…`: what older converters made of a
/// diffusers-saved file), which become `unet.unet.…` and so `unet.…` inside the UNet.
fn lost_unet(a: &Adapter) -> Vec<String> {
    lost_unet_paths(a)
        .into_iter()
        .map(|(m, path)| format!("{m} (read as `{path}`)"))
        .collect()
}

/// [`lost_unet`]'s (module, path read) pairs.
fn lost_unet_paths(a: &Adapter) -> Vec<(String, String)> {
    a.modules
        .iter()
        .filter_map(|m| {
            let stem = m.name.strip_prefix("lora_unet_")?;
            let component = ["unet_", "text_encoder_", "transformer_"]
                .iter()
                .any(|c| stem.starts_with(c));
            let path = lost_unet_module(&m.name)
                .or_else(|| component.then(|| unet_module_path(&m.name)))?;
            Some((m.name.clone(), path))
        })
        .collect()
}

/// The pipeline component diffusers files a kohya module under.
fn component(name: &str) -> Option<&'static str> {
    if name.starts_with("lora_unet_") {
        Some("unet")
    } else if name.starts_with("lora_te_") || name.starts_with("lora_te1_") {
        Some("text_encoder")
    } else if name.starts_with("lora_te2_") {
        Some("text_encoder_2")
    } else {
        None
    }
}

/// Whether diffusers' `alpha_pattern` entry for this module's alpha matches no layer (module
/// header): a UNet attention processor module (`_convert_unet_lora_key` makes `to.q.lora`,
/// `to.k.lora`, `to.v.lora`, `to.out.0.lora` into `to_q_lora` … `to_out_lora`, leaving no
/// `.lora.`); a text encoder's attention projection (its entry names the `self_attn` module);
/// and any module of `text_encoder` named `lora_te{,1}_text_model_…`: transformers 5's
/// `CLIPTextModel` (SD 1.x, SDXL's first encoder) has no `text_model.` level for the entry to
/// match (`CLIPTextModelWithProjection`, SDXL's `text_encoder_2`, keeps it, and an entry without
/// it matches either as a suffix). Checked against diffusers' fuse by the LyCORIS sweep of
/// 2026-12-07 (`fixtures/gen/te_alpha_fixtures.py`).
fn alpha_entry_unmatched(name: &str) -> bool {
    match component(name) {
        Some("unet") => ["to_q", "to_k", "to_v", "to_out_0"]
            .iter()
            .any(|s| name.ends_with(s)),
        Some(c) => {
            let attn = ["q_proj", "k_proj", "v_proj", "out_proj"]
                .iter()
                .any(|s| name.ends_with(s));
            let stem = kohya::split_prefix(name).map_or(name, |(_, r)| r);
            attn || (c == "text_encoder" && stem.starts_with("text_model_"))
        }
        None => true,
    }
}

/// `collections.Counter(values).most_common()[0][0]`: the most frequent, the first seen on a tie.
fn most_common(values: &[f64]) -> Option<f64> {
    let mut best: Option<(f64, usize)> = None;
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            continue;
        }
        let n = values.iter().filter(|x| *x == v).count();
        if best.is_none_or(|(_, b)| n > b) {
            best = Some((*v, n));
        }
    }
    best.map(|(v, _)| v)
}

/// The modules diffusers applies at the component's most common alpha instead of their own
/// (module header), with both scales.
fn alpha_lost(a: &Adapter) -> Vec<String> {
    let Some(src) = a.source.as_ref() else {
        return vec![];
    };
    let alpha_keys: BTreeSet<&str> = src
        .tensors()
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| n.ends_with(".alpha"))
        .collect();
    let has_alpha = |m: &LoraModule| alpha_keys.contains(format!("{}.alpha", m.name).as_str());
    // diffusers reads the keys sorted (safetensors' `keys()`), so its alphas come in name order.
    let mut mods: Vec<&LoraModule> = a
        .modules
        .iter()
        .filter(|m| m.factors.lora().is_some() && component(&m.name).is_some())
        .collect();
    mods.sort_by(|x, y| x.name.cmp(&y.name));
    let mut out = Vec::new();
    for comp in ["unet", "text_encoder", "text_encoder_2"] {
        let in_comp: Vec<&LoraModule> = mods
            .iter()
            .copied()
            .filter(|m| component(&m.name) == Some(comp))
            .collect();
        let alphas: Vec<f64> = in_comp
            .iter()
            .filter(|m| has_alpha(m))
            .map(|m| m.alpha)
            .collect();
        let Some(common) = most_common(&alphas) else {
            continue; // no alpha in the component: diffusers and kohya both apply scale 1
        };
        for m in in_comp {
            if has_alpha(m) && !alpha_entry_unmatched(&m.name) {
                continue;
            }
            let theirs = common / m.rank as f64;
            if (theirs - m.scale).abs() > 1e-9 * m.scale.abs().max(theirs.abs()) {
                out.push(format!(
                    "{} (kohya scale {:.4} = alpha {} / rank {}; diffusers {theirs:.4} = {comp}'s most common alpha {common} / {})",
                    m.name, m.scale, m.alpha, m.rank, m.rank
                ));
            }
        }
    }
    out
}

/// Modules whose `lora_down` is 4-D (a conv's `[r, in, kh, kw]`) and whose `lora_up` is 2-D
/// (`[out, r]`), as LyCORIS' DyLoRA writes every conv (`DyLoraModule.custom_state_dict`,
/// `lycoris/modules/dylora.py`: the up blocks concatenated, never reshaped). PEFT's Conv2d LoRA
/// layer has `lora_B` `[out, r, 1, 1]` and `load_state_dict` raises a size mismatch
/// (`fixtures/review23/MANIFEST.json` records diffusers 0.42.1 doing so). ComfyUI and lorakit
/// apply such a file (`mm(up.flatten(1), down.flatten(1))`).
fn flat_up_on_conv(a: &Adapter) -> Vec<String> {
    let Some(src) = a.source.as_ref() else {
        return vec![];
    };
    let tensors = src.tensors();
    let shape = |n: &str| tensors.iter().find(|t| t.name == n).map(|t| &t.shape);
    tensors
        .iter()
        .filter_map(|t| {
            let module = t.name.strip_suffix(".lora_down.weight")?;
            let up = shape(&format!("{module}.lora_up.weight"))?;
            (t.shape.len() == 4 && up.len() == 2).then(|| {
                format!(
                    "{module} (lora_up {up:?} is 2-D beside the conv's lora_down {:?})",
                    t.shape
                )
            })
        })
        .collect()
}

/// Whether a module named as one of the SD UNet's 1×1 convs (`proj_in`, `proj_out`,
/// `conv_shortcut`, `skip_connection`) has 2-D factors: [`conv_factors_2d`] needs the base.
fn maybe_conv_2d(a: &Adapter) -> bool {
    let Some(src) = a.source.as_ref() else {
        return false;
    };
    src.tensors().iter().any(|t| {
        t.shape.len() == 2
            && t.name.strip_suffix(".lora_down.weight").is_some_and(|m| {
                ["proj_in", "proj_out", "conv_shortcut", "skip_connection"]
                    .iter()
                    .any(|c| m.ends_with(c))
            })
    })
}

/// With the base: modules whose file factors are 2-D (`[r, in]`, `[out, r]`) on a 4-D base
/// tensor (a 1×1 conv). PEFT builds a Conv2d LoRA layer for a Conv2d module, whose `lora_A`
/// weight is `[r, in, 1, 1]`, and `load_state_dict` raises a size mismatch.
fn conv_factors_2d(a: &Adapter, base: &Checkpoint, placements: &[Placement]) -> Vec<String> {
    let Some(src) = a.source.as_ref() else {
        return vec![];
    };
    let shape = |n: &str| {
        src.tensors()
            .iter()
            .find(|t| t.name == n)
            .map(|t| t.shape.clone())
    };
    placements
        .iter()
        .filter_map(|p| {
            let tensor = p.base_tensor.as_deref()?;
            let b = base.info(tensor)?;
            if b.shape.len() != 4 {
                return None;
            }
            let down = [".lora_down.weight", ".lora_A.weight"]
                .iter()
                .find_map(|s| shape(&format!("{}{s}", p.module)))?;
            (down.len() == 2).then(|| {
                format!(
                    "{} (factors {down:?} on the conv `{tensor}` {:?})",
                    p.module, b.shape
                )
            })
        })
        .collect()
}
