//! `check --fix` for the diffusion loaders (diffusers, ComfyUI): the fixed adapter is a kohya
//! single file (`lora_unet_…`/`lora_te_…` names, `lora_down`/`lora_up`/`alpha`; a diffusers
//! single file for a transformer's modules), the naming both read (diffusers
//! `lora_conversion_utils.py` `_convert_non_diffusers_lora_to_diffusers`, ComfyUI
//! `comfy/lora.py` `model_lora_keys_unet`).
//!
//! - Modules of another algorithm (LoKr, LoHa, full, …), which diffusers refuses, become the
//!   rank-`r` LoRA nearest to their update (the lowering of `resize`,
//!   [`crate::ops::resize::lower_module`]: truncated SVD, Eckart–Young–Mirsky), with the error
//!   `‖ΔW − ΔW'‖_F` reported per module. ComfyUI reads them as they are: for a ComfyUI-only fix
//!   without a rank they are kept.
//! - Names: a diffusers single file's components (`unet.`, `text_encoder.`, `text_encoder_2.`)
//!   each get their kohya prefix in the one file (`name_components`); a transformer's
//!   (`transformer.…`, Flux/SD3) keeps the diffusers form, the one both loaders read by name.
//!   A LyCORIS conv module's flattened factors get the base weight's kernel back (with `--base`).
//! - Every LoRA module's scale is folded into its up factor (`up' = s·up`) with `alpha = rank`,
//!   so each loader's scale is 1 whether it reads `{module}.alpha` (diffusers, ComfyUI) or
//!   ignores metadata-only alphas (ComfyUI: `lora_adapter_metadata`), and
//!   `ΔW' = up'·down = s·up·down = ΔW` up to one f32 rounding per entry.
//!
//! Must not: write anything but through [`crate::ops::output::write_adapter`] or
//! [`crate::ops::output::write_diffusers`] (atomic).

use super::fixing::{within_tolerance, FixOptions, FixReport, Lowered};
use super::plan::Plan;
use super::report::Report;
use super::target::Target;
use crate::adapter::{Data, Factors, Format, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::ops::output::{self, Provenance};
use std::sync::Arc;

/// Renames every module under a pipeline component (a diffusers single file: `unet.…`,
/// `text_encoder.…`, `text_encoder_2.…`) to its kohya name under that component's prefix, so
/// one file holds every component: `lora_unet_`, `lora_te2_` for `text_encoder_2`, and for
/// `text_encoder` `lora_te1_` beside a second encoder (SDXL) or `lora_te_` alone (SD 1.x).
/// diffusers maps them back (`lora_conversion_utils.py` `_convert_non_diffusers_lora_to_diffusers`:
/// `lora_te_`/`lora_te1_` → `text_encoder`, `lora_te2_` → `text_encoder_2`), and ComfyUI reads
/// `lora_te_`/`lora_te1_` for CLIP-L and `lora_te2_` for CLIP-G (`comfy/lora.py`
/// `model_lora_keys_clip`). Returns the components renamed. Refused: `prior.`, `transformer.`
/// beside another component (Cascade, Flux, SD3: their kohya names are the single-file
/// checkpoints' paths, not a renaming of the diffusers ones; a transformer alone keeps the
/// diffusers form), and a file mixing names with and without a component.
fn name_components(adapter: &mut crate::adapter::Adapter) -> InputResult<Vec<String>> {
    use crate::adapter::formats::diffusers::{kohya_prefix_of_component, COMPONENTS};
    let comp = |n: &str| {
        n.split_once('.')
            .map(|(c, _)| c.to_owned())
            .filter(|c| COMPONENTS.contains(&c.as_str()))
    };
    let comps: std::collections::BTreeSet<Option<String>> =
        adapter.modules.iter().map(|m| comp(&m.name)).collect();
    if comps.iter().all(|c| c.is_none()) {
        return Ok(Vec::new());
    }
    if comps.contains(&None) {
        return Err(InputError::invalid(
            &adapter.path,
            "some modules are under a pipeline component (`unet.`, `text_encoder.`) and some are not: no kohya prefix names both",
        ));
    }
    let two_encoders = comps.contains(&Some("text_encoder_2".to_owned()));
    for m in adapter.modules.iter_mut() {
        let c = comp(&m.name).expect("every module has a component");
        let prefix = match kohya_prefix_of_component(&c, two_encoders) {
            Some(p) if c != "transformer" => p,
            _ => {
                return Err(InputError::invalid(
                    &adapter.path,
                    format!("module `{}` is under `{c}.`: the SD kohya prefixes name only unet and the text encoders", m.name),
                ))
            }
        };
        m.name = crate::adapter::formats::kohya::kohya_name(prefix, &m.name[c.len() + 1..]);
    }
    Ok(comps.into_iter().flatten().collect())
}

pub(super) fn fix(plan: Plan, before: &Report, opts: &FixOptions) -> InputResult<FixReport> {
    let Plan {
        mut adapter, base, ..
    } = plan;
    // A diffusers single file names modules under their pipeline components (`unet.…`,
    // `text_encoder.…`): the kohya file names each under its component's prefix. A
    // transformer's (Flux, SD3: `transformer.…`) stays a diffusers file, which both loaders read
    // by these names (diffusers natively; ComfyUI's `model_lora_keys_unet` maps
    // `transformer.{diffusers name}` for Flux through `comfy.utils.flux_to_diffusers`).
    let transformer = !adapter.modules.is_empty()
        && adapter
            .modules
            .iter()
            .all(|m| m.name.starts_with("transformer."));
    let components = if transformer {
        Vec::new()
    } else {
        name_components(&mut adapter)?
    };
    let spec = super::fixing::checked_spec(Format::Kohya, &adapter, base.as_ref(), opts)?;
    let mut actions = Vec::new();
    if !components.is_empty() {
        actions.push(format!(
            "named the modules of {} under their kohya prefixes",
            components.join(", ")
        ));
    }
    if adapter.format == Format::Peft {
        crate::ops::convert::prepare(&mut adapter, Format::Kohya, base.as_ref())?;
        actions.push("PEFT folder → kohya single file".into());
    }
    // A LoHa/LoKr conv module stores its factors flattened (`hada_w1_b` `[r, in·kh·kw]`), so
    // the file does not give its kernel; diffusers builds a Conv2d LoRA for it and refuses a 2-D
    // `lora_down`. With the base, the kernel is the base weight's `[out, in, kh, kw]` (the same
    // values, reshaped: exact).
    let kernels: std::collections::BTreeMap<usize, Vec<usize>> = match &base {
        Some(b) => crate::adapter::mapping::resolve(&adapter, b)
            .modules
            .iter()
            .filter_map(|p| {
                let shape = &b.info(&p.weight)?.shape;
                (shape.len() == 4).then(|| (p.module, shape[2..].to_vec()))
            })
            .collect(),
        None => Default::default(),
    };
    adapter.load_all()?;
    let diffusers = before.targets.iter().any(|t| t.target == Target::Diffusers);
    let mut lowered = Vec::new();
    for i in 0..adapter.modules.len() {
        let m = &adapter.modules[i];
        if m.factors.lora().is_some() {
            continue;
        }
        let Some(r) = opts.lower_rank else {
            if diffusers {
                return Err(InputError::invalid(
                    &adapter.path,
                    format!(
                        "module `{}` is {}, which diffusers cannot load: lowering it to LoRA needs a rank",
                        m.name,
                        m.factors.algo()
                    ),
                ));
            }
            continue;
        };
        if r == 0 {
            return Err(InputError::invalid(
                &adapter.path,
                "the rank to lower modules to must be at least 1",
            ));
        }
        let rule = crate::ops::rank::RankRule::Fixed(r);
        let (factors, rep) = crate::ops::resize::lower_module(&adapter, m, false, &rule)?;
        let algo = m.factors.algo();
        let m = &mut adapter.modules[i];
        if let Some((b, a)) = factors {
            m.rank = rep.rank_after;
            m.alpha = rep.alpha_after;
            m.factors = Factors::Lora {
                a: Data::Owned(Arc::new(a)),
                b: Data::Owned(Arc::new(b)),
            };
        }
        if let (ModuleKind::Linear, Some(kernel)) = (&m.kind, kernels.get(&i)) {
            m.kind = ModuleKind::Conv {
                kernel: kernel.clone(),
            };
        }
        lowered.push(Lowered {
            module: m.name.clone(),
            algo: algo.to_string(),
            rank: m.rank,
            // A norm: never printed as "-0.000e0" (a lossless lowering's sign of zero).
            fro_error: rep.fro_error.abs(),
            rel_fro_error: if rep.fro_norm > 0.0 {
                rep.fro_error.abs() / rep.fro_norm
            } else {
                0.0
            },
        });
    }
    if !lowered.is_empty() {
        let worst = lowered.iter().map(|l| l.rel_fro_error).fold(0.0, f64::max);
        actions.push(format!(
            "lowered {} module(s) to rank-{} LoRA (largest relative Frobenius error {worst:.3e})",
            lowered.len(),
            lowered[0].rank
        ));
        if diffusers && base.is_none() {
            // LyCORIS stores a conv module's factors flattened, so without the base nothing says
            // which lowered modules sit over a Conv2d; diffusers refuses a 2-D `lora_down` there.
            actions.push(format!(
                "wrote the {} lowered module(s) as linear LoRA: without the base model their kernels are unknown, and diffusers refuses one that sits over a conv layer (give the base model to restore them)",
                lowered.len()
            ));
        }
    }
    let mut folded = 0usize;
    for m in adapter.modules.iter_mut() {
        let s = m.scale;
        let Factors::Lora { b, .. } = &mut m.factors else {
            continue;
        };
        let Data::Owned(bv) = b else {
            unreachable!("load_all made every factor owned")
        };
        if s != 1.0 {
            let scaled: Vec<f32> = bv.iter().map(|&x| (x as f64 * s) as f32).collect();
            *b = Data::Owned(Arc::new(scaled));
            if let Some(Data::Owned(bias)) = &m.bias {
                let scaled: Vec<f32> = bias.iter().map(|&x| (x as f64 * s) as f32).collect();
                m.bias = Some(Data::Owned(Arc::new(scaled)));
            }
            folded += 1;
        }
        m.alpha = m.rank as f64;
        m.scale = 1.0;
    }
    adapter.use_rslora = false;
    // Its alphas are folded now; diffusers refuses a file with both `.alpha` tensors and this
    // metadata ("Both `network_alphas` and `metadata` cannot be specified", lora_pipeline.py).
    let meta_key = crate::adapter::formats::diffusers::METADATA_KEY;
    if adapter.metadata.iter().any(|(k, _)| k == meta_key) {
        adapter.metadata.retain(|(k, _)| k != meta_key);
        actions.push(format!(
            "dropped the `{meta_key}` metadata (its alphas are folded)"
        ));
    }
    if folded > 0 {
        actions.push(format!(
            "folded the scale of {folded} module(s) into lora_up (alpha = rank: scale 1 in every loader)"
        ));
    }
    actions.push(if transformer {
        "factors written as F32 in a diffusers single file (`transformer.` names, lora_alpha = r)"
            .into()
    } else {
        "factors written as F32 in a kohya single file".into()
    });
    let prov = Provenance {
        operation: "check",
        inputs: serde_json::json!([{"path": adapter.path.display().to_string()}]),
        params: serde_json::json!({"fix": true, "form": "kohya", "lower_rank": opts.lower_rank}),
    };
    let approximations = lowered.iter().map(|l| {
        let what = format!("rank-{} LoRA (lowered from {})", l.rank, l.algo);
        (l.module.as_str(), what, l.rel_fro_error)
    });
    within_tolerance(&adapter, opts.tolerance, approximations)?;
    let written = if transformer {
        output::write_diffusers(&adapter, &spec, &prov)?
    } else {
        output::write_adapter(&adapter, &spec, &prov)?
    };
    Ok(FixReport {
        out: opts.out.display().to_string(),
        written,
        rank: adapter.modules.iter().map(|m| m.rank).max().unwrap_or(0),
        renamed: Vec::new(),
        dropped: Vec::new(),
        padded: Vec::new(),
        split: Vec::new(),
        fused: Vec::new(),
        dora_to_lora: Vec::new(),
        saved: Vec::new(),
        lowered,
        actions,
    })
}
