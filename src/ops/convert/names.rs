//! Module names and alphas of a conversion: PEFT ↔ kohya/LyCORIS naming, restoring PEFT paths
//! from lorakit metadata or a base, and the component prefixes of LyCORIS and ComfyUI files.
//!
//! Factors are the same matrices in both formats (`lora_A` ≡ `lora_down`, `lora_B` ≡
//! `lora_up`, conv layouts identical; LyCORIS and PEFT spell LoHa/LoKr factors alike), so a
//! conversion copies them byte for byte (unless a dtype is asked for) and only names and the
//! scale's encoding change:
//!
//! * **PEFT → kohya.** A module path becomes `prefix_path_with_underscores`. kohya's scale is
//!   `alpha / rank`, so each module's alpha is written as is, or as `scale·rank` for rsLoRA
//!   (kohya has no `√r` rule) — per-module alphas (`alpha_pattern`) are naturally per-module in
//!   kohya. DoRA, `lora_B` biases, embeddings, `fan_in_fan_out` modules and full tensors have no
//!   kohya form and are refused. The PEFT module paths and the adapter_config.json are recorded
//!   in the file's metadata ([`crate::ops::output::META_MODULE_NAMES`], [`crate::ops::output::META_PEFT_CONFIG`]).
//! * **kohya → PEFT.** kohya names lost the dots of the module paths (`…_self_attn_q_proj`), and
//!   underscores inside names make the reverse ambiguous, so the paths come from the base's
//!   tensor list ([`crate::adapter::mapping::resolve`]: every module must land on exactly one base
//!   tensor of matching shape; an ambiguous or unmatched module is an error) — or, for a file
//!   lorakit wrote, from its metadata. A file lorakit converted from PEFT gets back the original
//!   config and every module's original alpha and rsLoRA flag when they still agree with the
//!   file's `.alpha` tensors, so PEFT → kohya → PEFT gives identical factors and identical
//!   per-module scales. Otherwise each module keeps its kohya alpha (`alpha_pattern` where they
//!   differ), which gives the same scale `alpha/rank`. With a base, a kohya 1×1-conv module on a
//!   linear base weight (or the reverse) takes the base's layout, so PEFT can load it.
//!
//! File metadata is carried over in both directions (see [`crate::ops::output::output_metadata`]).
//!
//! Must not write files or change a factor's values: it renames modules and sets their alphas
//! on the adapter model, and the writers in `adapter/formats/` write it.

use crate::adapter::formats::{kohya, peft::PeftConfig};
use crate::adapter::{mapping, scale_for, Adapter, Format, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::Checkpoint;

/// The end of the error a kohya → PEFT conversion without a base gives (the CLI names its flag).
pub const NEEDS_BASE: &str = "the base model the adapter is for is needed to restore them";

/// How module names were obtained for the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NameSource {
    /// The input's own names were kept.
    Adapter,
    /// lorakit metadata of a kohya file.
    Metadata,
    /// Resolved against the base model.
    Base,
}

/// What converting an adapter changed, before it is written.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Module names before, in module order.
    pub names_before: Vec<String>,
    /// Alphas before (as the input format states them).
    pub alphas_before: Vec<f64>,
    pub names_from: NameSource,
    /// The PEFT config and alphas were restored from lorakit metadata.
    pub config_restored: bool,
}

/// Turns `adapter` into one ready to be written as `to`: kohya → PEFT restores module paths
/// (lorakit metadata, else `base`) and alphas; with a `base`, every module must land on it.
pub fn prepare(
    adapter: &mut Adapter,
    to: Format,
    base: Option<&Checkpoint>,
) -> InputResult<Prepared> {
    let mut names_before: Vec<String> = adapter.modules.iter().map(|m| m.name.clone()).collect();
    let mut alphas_before: Vec<f64> = adapter.modules.iter().map(|m| m.alpha).collect();
    let mut names_from = NameSource::Adapter;
    let mut config_restored = false;
    // Names that lost the dots of the module paths (kohya) are restored for a format that
    // names modules by path (PEFT); kohya → kohya keeps them (and the metadata that maps them).
    let to_paths = to.layout().names_are_paths();
    if !adapter.format.layout().names_are_paths() {
        let (restored, cfg) = if to_paths {
            restore_from_metadata(adapter)?
        } else {
            (0, false)
        };
        config_restored = cfg;
        if restored > 0 {
            names_from = NameSource::Metadata;
        }
        match base {
            Some(base) if to_paths && restored < adapter.modules.len() => {
                // A split module became several: each reports the module it came from.
                let origin = resolve_onto(adapter, base)?;
                names_before = origin.iter().map(|&i| names_before[i].clone()).collect();
                alphas_before = origin.iter().map(|&i| alphas_before[i]).collect();
                names_from = NameSource::Base;
            }
            Some(base) => check_onto(adapter, base)?,
            None if to_paths && restored < adapter.modules.len() => {
                let kohya_named = adapter
                    .modules
                    .iter()
                    .find(|m| kohya::split_prefix(&m.name).is_some() || !m.name.contains('.'));
                match kohya_named {
                    // A diffusers file (`save_lora_weights`): dotted module paths under a
                    // pipeline component, nothing lost (rev16c F2).
                    None => strip_component(adapter)?,
                    Some(m) => {
                        return Err(InputError::invalid(
                            &adapter.path,
                            format!(
                                "module `{}`: kohya names lost the dots of the module paths; {NEEDS_BASE}",
                                m.name
                            ),
                        ))
                    }
                }
            }
            None => {}
        }
        if to_paths && adapter.base_model.is_none() {
            adapter.base_model = base.map(|b| b.root.display().to_string());
        }
    } else if let Some(base) = base {
        check_onto(adapter, base)?;
        // sweep9: a PEFT LoHa on a Conv2d, lowered by resize, was written [r, in·kh·kw].
        let res = mapping::resolve(adapter, base);
        base_layouts(adapter, base, &res);
    }
    adapter.format = to;
    Ok(Prepared {
        names_before,
        alphas_before,
        names_from,
        config_restored,
    })
}

/// Module paths of a diffusers single file (`unet.down_blocks.0….to_k`, as diffusers'
/// `save_lora_weights` names them) relative to the model: the pipeline component is dropped, as
/// diffusers' loader drops it before PEFT sees the names (`lora_state_dict` → `load_lora_into_unet`
/// keeps the `unet.` keys and strips the prefix). A PEFT folder holds one model, so modules of
/// several components are refused, naming two.
fn strip_component(adapter: &mut Adapter) -> InputResult<()> {
    use crate::adapter::formats::diffusers;
    let component = |n: &str| {
        n.split_once('.')
            .map(|(c, _)| c)
            .filter(|c| diffusers::COMPONENTS.contains(c))
            .map(str::to_owned)
    };
    let Some((one, first)) = adapter
        .modules
        .iter()
        .find_map(|m| component(&m.name).map(|c| (m.name.clone(), c)))
    else {
        return Ok(());
    };
    if let Some(other) = adapter
        .modules
        .iter()
        .find(|m| component(&m.name).as_deref() != Some(first.as_str()))
    {
        return Err(InputError::invalid(
            &adapter.path,
            format!(
                "modules `{one}` and `{}` belong to different pipeline components; a PEFT folder holds one model's (convert each component's modules separately)",
                other.name
            ),
        ));
    }
    for m in adapter.modules.iter_mut() {
        m.name = m.name[first.len() + 1..].to_owned();
    }
    Ok(())
}

/// Applies the module paths and PEFT config lorakit records in a kohya file it writes. Names
/// are taken for every module listed; the config (alphas, rsLoRA, the rest of
/// adapter_config.json) only when every module's rank and stored alpha agree with it (a file
/// edited or resized by another tool since keeps its own alphas). Returns (modules renamed,
/// config restored).
pub fn restore_from_metadata(adapter: &mut Adapter) -> InputResult<(usize, bool)> {
    let meta = |k: &str| {
        adapter
            .metadata
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let Some(names) = meta(crate::ops::output::META_MODULE_NAMES) else {
        return Ok((0, false));
    };
    let names: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(&names) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => {
            return Err(InputError::invalid(
                &adapter.path,
                format!(
                    "metadata `{}` is not a JSON object of names",
                    crate::ops::output::META_MODULE_NAMES
                ),
            ))
        }
    };
    // The metadata is the file's word, not lorakit's: a path is taken only where it is a module
    // path (dot-separated identifiers, none a PEFT tensor suffix `lora_*`) that this kohya name
    // spells (`{prefix}_{path with _ for .}`), and no two modules take the same one.
    let bad = |name: &str, why: String| {
        InputError::invalid(
            &adapter.path,
            format!(
                "metadata `{}`: module `{name}`: {why}",
                crate::ops::output::META_MODULE_NAMES
            ),
        )
    };
    let mut taken = std::collections::BTreeSet::new();
    let mut renamed = 0;
    for m in adapter.modules.iter_mut() {
        let Some(v) = names.get(&m.name) else {
            continue;
        };
        let Some(dotted) = v.as_str() else {
            return Err(bad(&m.name, format!("{v} is not a module path")));
        };
        let ident = |c: &str| {
            !c.is_empty()
                && !c.starts_with("lora_")
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        };
        if !dotted.split('.').all(ident) {
            return Err(bad(
                &m.name,
                format!("`{dotted}` is not a module path (dot-separated names of letters, digits and _)"),
            ));
        }
        let spelled = dotted.replace('.', "_");
        let spells = m
            .name
            .strip_suffix(&spelled)
            .is_some_and(|p| p.is_empty() || p.ends_with('_'));
        if !spells {
            return Err(bad(
                &m.name,
                format!("`{dotted}` is not the module this kohya name spells"),
            ));
        }
        if !taken.insert(dotted.to_owned()) {
            return Err(bad(&m.name, format!("`{dotted}` is given to two modules")));
        }
        m.name = dotted.to_owned();
        renamed += 1;
    }
    let Some(text) = meta(crate::ops::output::META_PEFT_CONFIG) else {
        return Ok((renamed, false));
    };
    let Ok(cfg) = PeftConfig::parse(&adapter.path, text.as_bytes()) else {
        return Ok((renamed, false));
    };
    // A config that would not target every module (PEFT would drop the rest) is not restored.
    let untargeted = crate::adapter::formats::peft::targets::untargeted(
        &cfg.targets,
        adapter.modules.iter().map(|m| m.name.as_str()),
    );
    if renamed != adapter.modules.len() || !untargeted.is_empty() {
        return Ok((renamed, false));
    }
    let mut alphas = Vec::with_capacity(adapter.modules.len());
    for m in &adapter.modules {
        let (Ok(rank), Ok(alpha)) = (cfg.rank_for(&m.name), cfg.alpha_for(&m.name)) else {
            return Ok((renamed, false));
        };
        let kohya_alpha = if cfg.use_rslora {
            scale_for(alpha, rank, true) * rank as f64
        } else {
            alpha
        };
        if rank != m.rank || kohya_alpha as f32 != m.alpha as f32 {
            return Ok((renamed, false));
        }
        alphas.push(alpha);
    }
    for (m, alpha) in adapter.modules.iter_mut().zip(alphas) {
        m.alpha = alpha;
        m.scale = scale_for(alpha, m.rank, cfg.use_rslora);
    }
    adapter.use_rslora = cfg.use_rslora;
    adapter.base_model = cfg.base_model.clone();
    adapter.config = Some(cfg.raw.clone());
    Ok((renamed, true))
}

/// Every module must land on exactly one base tensor; the error lists every one that does not.
fn unmatched_error(
    adapter: &Adapter,
    base: &Checkpoint,
    res: &mapping::Resolution,
) -> InputResult<()> {
    if res.unmatched.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = res.unmatched.iter().map(|u| u.to_string()).collect();
    Err(InputError::invalid(
        &adapter.path,
        format!(
            "{} module(s) do not match the base {}: {}",
            list.len(),
            base.root.display(),
            list.join("; ")
        ),
    ))
}

/// Checks that every module lands on `base` (names are not changed).
pub fn check_onto(adapter: &Adapter, base: &Checkpoint) -> InputResult<()> {
    let res = mapping::resolve(adapter, base);
    unmatched_error(adapter, base, &res)
}

/// Renames modules to the base module paths they land on and gives 1×1 modules the base's
/// layout (linear on a 2-D weight, 1×1 conv on a 4-D one).
/// Returns, per module of the result, the index of the module it came from (a split module
/// gives several, [`split_parts`]).
pub fn resolve_onto(adapter: &mut Adapter, base: &Checkpoint) -> InputResult<Vec<usize>> {
    let res = mapping::resolve(adapter, base);
    unmatched_error(adapter, base, &res)?;
    // A module split over several tensors (BFL Flux `img_attn.qkv` on diffusers' to_q/to_k/to_v,
    // `adapter::mapping::layouts`), or whose rows the tensor holds in another order (SD3's final
    // adaLN halves), is written as one module per tensor after the renaming below
    // ([`split_parts`]); what cannot be split that way is refused here.
    if let Some(p) = res
        .modules
        .iter()
        .find(|p| p.part.is_some() && splittable(adapter, p.module, &res).is_err())
    {
        let m = &adapter.modules[p.module];
        let on: Vec<&str> = res
            .modules
            .iter()
            .filter(|q| q.module == p.module)
            .map(|q| q.weight.as_str())
            .collect();
        let how = match on.as_slice() {
            [one] => format!(
                "lands on base tensor {one} with its rows reordered ({})",
                p.part.as_ref().expect("found by its part")
            ),
            _ => format!(
                "is split over base tensors {} (rows of its lora_up each)",
                on.join(", ")
            ),
        };
        let why = splittable(adapter, p.module, &res).expect_err("found as not splittable");
        return Err(InputError::invalid(
            &adapter.path,
            format!(
                "module `{}` {how}, and {why}, so it cannot be written as one module per tensor; merge it instead",
                m.name
            ),
        ));
    }
    let mut seen = std::collections::BTreeMap::new();
    for p in &res.modules {
        if let Some(other) = seen.insert(p.weight.clone(), p.module) {
            return Err(InputError::invalid(
                &adapter.path,
                format!(
                    "modules `{}` and `{}` both land on base tensor `{}`",
                    adapter.modules[other].name, adapter.modules[p.module].name, p.weight
                ),
            ));
        }
    }
    mapping::rename_to_base(adapter, &res);
    base_layouts(adapter, base, &res);
    split_parts(adapter, &res)
}

/// Why a module whose placements split or reorder its rows cannot be written as one module per
/// tensor: only a plain LoRA (`ΔW = s·B·A`) splits exactly, into `B`'s row bands over the shared
/// `A` with the same alpha, as diffusers' own `_convert_to_ai_toolkit_cat` writes a fused
/// kohya module (`loaders/lora_conversion_utils.py`).
fn splittable(adapter: &Adapter, i: usize, res: &mapping::Resolution) -> Result<(), String> {
    use crate::adapter::Factors;
    let m = &adapter.modules[i];
    if !matches!(m.factors, Factors::Lora { .. }) {
        return Err("only a plain LoRA's lora_up splits into row bands".into());
    }
    if m.dora_magnitude.is_some() || m.bias.is_some() {
        return Err("its DoRA magnitude or lora bias has no per-tensor form here".into());
    }
    if !matches!(m.kind, ModuleKind::Linear) {
        return Err("it is not a linear module".into());
    }
    if res
        .modules
        .iter()
        .any(|p| p.module == i && p.rows.is_some())
    {
        return Err("a band lands inside a fused base tensor".into());
    }
    Ok(())
}

/// Replaces each module whose placements carry a [`mapping::Part`] by one module per base
/// tensor: named after the tensor, `A` and alpha shared, `B` the tensor's rows of it in the
/// tensor's order. `ΔW`'s rows are the same dot products of the same factors, so a merge of the
/// result equals the merge of the original bit for bit.
fn split_parts(adapter: &mut Adapter, res: &mapping::Resolution) -> InputResult<Vec<usize>> {
    use crate::adapter::{Data, Factors};
    if res.modules.iter().all(|p| p.part.is_none()) {
        return Ok((0..adapter.modules.len()).collect());
    }
    let old = std::mem::take(&mut adapter.modules);
    let mut modules = Vec::with_capacity(old.len());
    let mut origin = Vec::with_capacity(old.len());
    for (i, m) in old.into_iter().enumerate() {
        let parts: Vec<&mapping::Placement> =
            res.modules.iter().filter(|p| p.module == i).collect();
        if parts.iter().all(|p| p.part.is_none()) {
            modules.push(m);
            origin.push(i);
            continue;
        }
        let Factors::Lora { a, b } = &m.factors else {
            unreachable!("checked by splittable");
        };
        let b_values = adapter.values(b)?;
        for p in parts {
            let rows = match &p.part {
                Some(part) => part.gather(&b_values, m.rank),
                None => b_values.to_vec(),
            };
            let mut n = m.clone();
            n.name = p
                .weight
                .strip_suffix(".weight")
                .unwrap_or(&p.weight)
                .to_owned();
            n.out_features = rows.len() / m.rank.max(1);
            n.factors = Factors::Lora {
                a: a.clone(),
                b: Data::Owned(std::sync::Arc::new(rows)),
            };
            modules.push(n);
            origin.push(i);
        }
    }
    adapter.modules = modules;
    Ok(origin)
}

/// Gives 1×1 modules and flat factors the base's layout: linear on a 2-D weight, conv with the
/// base's kernel on a 4-D one (a PEFT LoHa/LoKr stores a Conv2d's factors flat, `[r, in·kh·kw]`,
/// as a Linear's; a LoRA lowered from it needs the kernel for PEFT's `[r, in, kh, kw]`).
fn base_layouts(adapter: &mut Adapter, base: &Checkpoint, res: &mapping::Resolution) {
    for p in &res.modules {
        let shape = base.info(&p.weight).expect("resolved").shape.clone();
        let m = &mut adapter.modules[p.module];
        match &m.kind {
            ModuleKind::Conv { kernel } if kernel.iter().all(|&k| k == 1) && shape.len() == 2 => {
                m.kind = ModuleKind::Linear
            }
            ModuleKind::Linear if shape.len() > 2 => {
                m.kind = ModuleKind::Conv {
                    kernel: shape[2..].to_vec(),
                }
            }
            _ => {}
        }
    }
}
