//! A PiSSA, OLoRA or KaSA adapter rewritten as a plain LoRA for the checkpoint's own weights,
//! as PEFT's `save_pretrained(path_initial_model_for_weight_conversion=…)` does
//! (`peft_model.py` `save_mutated_as_lora`, `tuners/lora/model.py` `subtract_mutated_init`):
//! each module becomes `[B | −B₀]·[A; A₀]` at rank 2r with the same scaling (PEFT doubles `r`
//! and `lora_alpha`), where `s·B₀·A₀` is what PEFT's init removed from the base. PEFT takes
//! `B₀`, `A₀` from the initial model saved at training time; lorakit recomputes them from the
//! base ([`crate::ops::merge::residual::removed_factors`]), which is the same rank-r part of `W`
//! (it does not depend on the factorisation's signs or order). Reads the base; writes nothing.

use crate::adapter::formats::peft::BaseResidual;
use crate::adapter::{mapping, Adapter, Data, Factors};
use crate::error::{InputError, InputResult};
use crate::io::Checkpoint;
use std::sync::Arc;

/// Rewrites every Linear module of `adapter` (whose config has a [`BaseResidual`]) in place,
/// and its config so that it no longer asks PEFT to rewrite the base. `base` must be the
/// checkpoint the adapter was trained from.
pub fn unfold_residual(
    adapter: &mut Adapter,
    rule: BaseResidual,
    base: &Checkpoint,
) -> InputResult<()> {
    let res = mapping::resolve_in(adapter, base, None);
    let config_file = adapter.config_file();
    let err = |m: String| InputError::invalid(&config_file, format!("{}: {m}", rule.label()));
    // Every module needs its base weight: one left as it is would silently keep its meaning
    // relative to the rewritten base.
    if let Some(u) = res.unmatched.first() {
        return Err(err(format!(
            "{u}; every module needs its base weight to be written for the original checkpoint"
        )));
    }
    for p in &res.modules {
        let m = &adapter.modules[p.module];
        if adapter.residual_of(m).is_none() {
            continue;
        }
        if m.dora_magnitude.is_some() {
            return Err(err(format!(
                "module `{}` is DoRA: its magnitude is relative to the rewritten base, so it has no plain-LoRA form for the original weights",
                m.name
            )));
        }
        if rule == BaseResidual::Olora && m.base_transposed {
            return Err(err(format!(
                "module `{}`: PEFT's OLoRA factors a fan_in_fan_out weight as stored, which does not fit the layer",
                m.name
            )));
        }
        if !p.whole_in_order() {
            return Err(err(format!(
                "module `{}` lands on {}, not on a whole base weight in its own row order, so the residual PEFT removed cannot be read from it",
                m.name,
                p.describe()
            )));
        }
        let info = base.info(&p.weight).expect("resolved tensor");
        let (rows, cols) = (info.shape[0], info.shape[1..].iter().product::<usize>());
        let mut w = base.read_f32(&p.weight)?;
        // Canonical [out, in]: PiSSA and KaSA factor the weight as PEFT's layer sees it.
        let (d, k) = if m.base_transposed {
            w = crate::adapter::transpose(&w, rows, cols);
            (cols, rows)
        } else {
            (rows, cols)
        };
        let (b0, a0) =
            crate::ops::merge::residual::removed_factors(rule, &w, (d, k), m.rank, m.scale)
                .map_err(|why| {
                    err(format!(
                        "module `{}` (base tensor `{}`): {why}",
                        m.name, p.weight
                    ))
                })?;
        let (b, a) = adapter.factors(m)?;
        let (r, n) = (m.rank, b0.ncols());
        let wide = r + n;
        let mut nb = vec![0f32; d * wide];
        for i in 0..d {
            nb[i * wide..i * wide + r].copy_from_slice(&b[i * r..(i + 1) * r]);
            for j in 0..n {
                nb[i * wide + r + j] = -b0[(i, j)] as f32;
            }
        }
        let mut na = a[..r * k].to_vec();
        na.extend((0..n * k).map(|x| a0[(x / k, x % k)] as f32));
        let m = &mut adapter.modules[p.module];
        m.factors = Factors::Lora {
            a: Data::Owned(Arc::new(na)),
            b: Data::Owned(Arc::new(nb)),
        };
        // Same scaling at the new rank: PEFT doubles lora_alpha (× √2 with rsLoRA).
        m.alpha = if adapter.use_rslora {
            m.scale * (wide as f64).sqrt()
        } else {
            m.scale * wide as f64
        };
        m.rank = wide;
    }
    if let Some(cfg) = adapter.config.as_mut().and_then(|c| c.as_object_mut()) {
        cfg.insert("init_lora_weights".into(), serde_json::json!(true));
        cfg.remove("kasa_config");
    }
    Ok(())
}
