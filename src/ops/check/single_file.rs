//! `check --fix` for the diffusion loaders (diffusers, ComfyUI): the fixed adapter is a kohya
//! single file (`lora_unet_…`/`lora_te_…` names, `lora_down`/`lora_up`/`alpha`), the naming
//! both read (diffusers `lora_conversion_utils.py` `_convert_non_diffusers_lora_to_diffusers`,
//! ComfyUI `comfy/lora.py` `model_lora_keys_unet`).
//!
//! - Modules of another algorithm (LoKr, LoHa, full, …), which diffusers refuses, become the
//!   rank-`r` LoRA nearest to their update (the lowering of `resize`,
//!   [`crate::ops::resize::lower_module`]: truncated SVD, Eckart–Young–Mirsky), with the error
//!   `‖ΔW − ΔW'‖_F` reported per module. ComfyUI reads them as they are: for a ComfyUI-only fix
//!   without a rank they are kept.
//! - Every LoRA module's scale is folded into its up factor (`up' = s·up`) with `alpha = rank`,
//!   so each loader's scale is 1 whether it reads `{module}.alpha` (diffusers, ComfyUI) or
//!   ignores metadata-only alphas (ComfyUI: `lora_adapter_metadata`), and
//!   `ΔW' = up'·down = s·up·down = ΔW` up to one f32 rounding per entry.
//!
//! Must not: write anything but through [`crate::ops::output::write_adapter`] (atomic).

use super::fix::{FixOptions, FixReport, Lowered};
use super::{Plan, Report, Target};
use crate::adapter::{Data, Factors, Format};
use crate::error::{InputError, InputResult};
use crate::ops::output::{self, Provenance, WriteSpec};
use std::sync::Arc;

/// Strips the one pipeline component every module name starts with (`unet.`, `text_encoder.`,
/// `text_encoder_2.`) and returns its kohya prefix (`lora_unet`, `lora_te`, `lora_te2`); `None`
/// when the names have no component. Several components, or one with no SD kohya prefix, are
/// refused: no single kohya file names them for both loaders.
fn component_prefix(adapter: &mut crate::adapter::Adapter) -> InputResult<Option<String>> {
    use crate::adapter::formats::diffusers::COMPONENTS;
    let comp = |n: &str| {
        n.split_once('.')
            .map(|(c, _)| c.to_owned())
            .filter(|c| COMPONENTS.contains(&c.as_str()))
    };
    let comps: std::collections::BTreeSet<Option<String>> =
        adapter.modules.iter().map(|m| comp(&m.name)).collect();
    let Some(Some(c)) = comps.iter().next().cloned().filter(|_| comps.len() == 1) else {
        if comps.iter().any(|c| c.is_some()) {
            return Err(InputError::invalid(
                &adapter.path,
                format!(
                    "modules under several pipeline components ({}): one kohya file is written per component",
                    comps
                        .iter()
                        .map(|c| c.as_deref().unwrap_or("none"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        return Ok(None);
    };
    let prefix = match c.as_str() {
        "unet" => "lora_unet",
        "text_encoder" => "lora_te",
        "text_encoder_2" => "lora_te2",
        other => {
            return Err(InputError::invalid(
                &adapter.path,
                format!("modules under `{other}.`: the SD kohya prefixes name only unet and the text encoders"),
            ))
        }
    };
    for m in adapter.modules.iter_mut() {
        m.name = m.name[c.len() + 1..].to_owned();
    }
    Ok(Some(prefix.to_owned()))
}

pub(super) fn fix(plan: Plan, before: &Report, opts: &FixOptions) -> InputResult<FixReport> {
    let Plan {
        mut adapter, base, ..
    } = plan;
    // A diffusers single file names modules under their pipeline component (`unet.…`): the
    // kohya file names them under the component's prefix instead (`lora_unet_…`; diffusers'
    // `_convert_non_diffusers_lora_to_diffusers` and ComfyUI map them back). One component per
    // file: the writer has one prefix.
    let kohya_prefix = component_prefix(&mut adapter)?;
    let spec = WriteSpec {
        format: Format::Kohya,
        out: opts.out.clone(),
        dtype: Some(crate::dtype::Dtype::F32),
        kohya_prefix,
    };
    let mut inputs = output::adapter_inputs(&adapter);
    if let Some(b) = &base {
        inputs.extend(b.input_paths());
        inputs.push(b.root.clone());
    }
    output::check_output(&spec, &inputs)?;
    let mut actions = Vec::new();
    if adapter.format == Format::Peft {
        crate::ops::convert::prepare(&mut adapter, Format::Kohya, base.as_ref())?;
        actions.push("PEFT folder → kohya single file".into());
    }
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
        lowered.push(Lowered {
            module: m.name.clone(),
            algo: algo.to_string(),
            rank: m.rank,
            fro_error: rep.fro_error,
            rel_fro_error: if rep.fro_norm > 0.0 {
                rep.fro_error / rep.fro_norm
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
    actions.push("factors written as F32 in a kohya single file".into());
    let prov = Provenance {
        operation: "check",
        inputs: serde_json::json!([{"path": adapter.path.display().to_string()}]),
        params: serde_json::json!({"fix": true, "form": "kohya", "lower_rank": opts.lower_rank}),
    };
    let written = output::write_adapter(&adapter, &spec, &prov)?;
    Ok(FixReport {
        out: opts.out.display().to_string(),
        files: written.files,
        bytes_written: written.bytes,
        rank: adapter.modules.iter().map(|m| m.rank).max().unwrap_or(0),
        renamed: Vec::new(),
        dropped: Vec::new(),
        padded: Vec::new(),
        split: Vec::new(),
        dora_to_lora: Vec::new(),
        saved: Vec::new(),
        lowered,
        actions,
    })
}
