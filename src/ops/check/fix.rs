//! `check --fix`: the exact rewrites that make an adapter load and apply the same everywhere.
//!
//! One canonical form serves every loader's scale rule ([`super::rules::ScaleRule`]): every
//! module gets the same rank `R` (the largest; smaller ones zero-padded: `A' = [A; 0]`,
//! `B' = [B 0]`, so `B'·A' = B·A`), its scale folded into `B` (`B' = s·B`, the `lora_B.bias` too,
//! as PEFT scales the lora_B output), `lora_alpha = r = R`, no `rank_pattern` / `alpha_pattern`,
//! no rsLoRA. Then every loader's scale is 1 — one alpha over one rank (vLLM, SGLang, LoRAX), one
//! alpha over each tensor's rank (llama.cpp), no alpha tensor (ComfyUI) — and
//! `ΔW' = B'·A' = s·B·A = ΔW` up to one f32 rounding of `s·B` (factors are written as F32).
//!
//! Names and modules (with the base): a kohya file becomes a PEFT folder (module paths from
//! `--base` or lorakit metadata); a module lorakit places on the base only by a dotted suffix is
//! renamed to the base tensor's exact name; a LoRA on a packed projection the base lacks
//! (`qkv_proj`, `gate_up_proj`) is split row-wise into the base's projections, and LoRAs on the
//! projections of a base that packs them are fused into one (`packed.rs`, both exact); a q/k/v or gate/up block SGLang cannot stack gets its missing sibling as a zero LoRA
//! (`add_zero_siblings`, exact); with `drop_unmatched`, modules and full tensors that land on
//! no base tensor are removed (and listed). Keys are written with PEFT's `base_model.model.`
//! prefix. With `dora_rank`, DoRA modules become the nearest plain LoRA of that rank
//! (`dora_to_plain`: measured, the error is reported). Nothing else changes: biases,
//! embeddings, full tensors (and DoRA without `dora_rank`) are kept, so the rules they fire still
//! fire on the fixed adapter (the report after the fix says so). The output goes through
//! [`crate::ops::output::write_adapter`] (atomic; an output that is an input is refused).

use super::fixing::{checked_spec, set_unit_scale_lora, within_tolerance};
pub use super::fixing::{DoraToLora, FixForm, FixOptions, FixReport, Lowered};
use super::packed::{fuse_packed, split_packed};
use super::plan::Plan;
use super::report::Report;
use super::saved;
use crate::adapter::{mapping, Data, Factors, Format};
use crate::error::{InputError, InputResult, Opt};
use crate::ops::output::{self, Provenance};
use std::sync::Arc;

/// Rewrites the plan's adapter into `opts.out`.
pub fn fix(plan: Plan, before: &Report, opts: &FixOptions) -> InputResult<FixReport> {
    if opts.tolerance.is_some_and(|t| !(t >= 0.0 && t.is_finite())) {
        return Err(InputError::option(&plan.adapter.path, |o| {
            format!("{} must be a finite number ≥ 0", o.opt(Opt::Tolerance))
        }));
    }
    if opts.form == FixForm::Kohya {
        return super::single_file::fix(plan, before, opts);
    }
    let Plan {
        mut adapter, base, ..
    } = plan;
    let spec = checked_spec(Format::Peft, &adapter, base.as_ref(), opts)?;
    if let Some(m) = adapter.modules.iter().find(|m| m.factors.lora().is_none()) {
        return Err(InputError::invalid(
            &adapter.path,
            format!(
                "module `{}` is {}: it has no LoRA form, so no loader-neutral rewrite exists (only ComfyUI loads it)",
                m.name,
                m.factors.algo()
            ),
        ));
    }
    let mut actions = Vec::new();
    let mut dropped = Vec::new();
    let mut renamed = Vec::new();
    let mut split = Vec::new();
    let mut fused = Vec::new();
    if let Some(b) = &base {
        if adapter.format.layout().names_are_paths() {
            adapter.load_all()?;
            split = split_packed(&mut adapter, b);
            if !split.is_empty() {
                actions.push(format!(
                    "split {} packed module(s) into the base's own projections (e.g. {} → {})",
                    split.len(),
                    split[0].0,
                    split[0].1.join(", ")
                ));
            }
            fused = fuse_packed(&mut adapter, b);
            if !fused.is_empty() {
                actions.push(format!(
                    "fused {} group(s) of projections into the base's packed modules (e.g. {} → {})",
                    fused.len(),
                    fused[0].1.join(", "),
                    fused[0].0
                ));
            }
        }
        let wants_siblings = before.targets.iter().any(|t| {
            t.findings.iter().any(|f| {
                matches!(
                    f.rule,
                    "sglang.q_without_v" | "sglang.kv_without_q" | "sglang.up_without_gate"
                )
            })
        });
        if wants_siblings {
            let added = add_zero_siblings(&mut adapter, b);
            if !added.is_empty() {
                actions.push(format!(
                    "added {} zero LoRA module(s) so every q/k/v and gate/up block is complete (ΔW = 0; SGLang stacks them): {}",
                    added.len(),
                    added.join(", ")
                ));
            }
        }
        let res = mapping::resolve(&adapter, b);
        if opts.drop_unmatched && !res.unmatched.is_empty() {
            // Trainable-token rows land on their module's weight, not on a tensor of their name.
            let gone: std::collections::BTreeSet<String> = res
                .unmatched
                .iter()
                .map(unmatched_name)
                .filter(|n| super::tokens::tokens_module(n).is_none())
                .collect();
            adapter.modules.retain(|m| {
                let drop =
                    gone.contains(&m.name) || gone.contains(&format!("{}.lora_B.bias", m.name));
                if drop {
                    dropped.push(m.name.clone());
                }
                !drop
            });
            adapter.full_tensors.retain(|f| {
                let drop = gone.contains(&f.name);
                if drop {
                    dropped.push(f.name.clone());
                }
                !drop
            });
            actions.push(format!(
                "dropped {} unmatched module(s)/tensor(s): {}",
                dropped.len(),
                dropped.join(", ")
            ));
        }
        if !adapter.format.layout().names_are_paths() {
            crate::ops::convert::prepare(&mut adapter, Format::Peft, Some(b))?;
            actions.push("kohya file → PEFT folder (module paths from the base)".into());
        } else {
            let res = mapping::resolve(&adapter, b);
            // As `rename_to_base` renames: modules on a whole tensor, row for row.
            for p in res.modules.iter().filter(|p| p.whole_in_order()) {
                let m = &adapter.modules[p.module];
                let exact = format!("{}.weight", m.name);
                if p.weight != exact {
                    renamed.push((m.name.clone(), p.weight.trim_end_matches(".weight").into()));
                }
            }
            if !renamed.is_empty() {
                mapping::rename_to_base(&mut adapter, &res);
                actions.push(format!(
                    "renamed {} module(s) to the base's exact names (e.g. {} → {})",
                    renamed.len(),
                    renamed[0].0,
                    renamed[0].1
                ));
            }
            for (fi, t) in &res.full {
                let f = &mut adapter.full_tensors[*fi];
                if f.name != *t {
                    renamed.push((f.name.clone(), t.clone()));
                    f.name = t.clone();
                }
            }
        }
    } else if !adapter.format.layout().names_are_paths() {
        crate::ops::convert::prepare(&mut adapter, Format::Peft, None)?;
        actions.push("kohya file → PEFT folder (module paths from lorakit metadata)".into());
    }
    if adapter.modules.is_empty() {
        return Err(InputError::invalid(
            &adapter.path,
            "no module is left to write (every module was dropped as unmatched)",
        ));
    }
    adapter.load_all()?;
    let mut saved_rw = Vec::new();
    if opts.saved.any() {
        let Some(b) = &base else {
            return Err(InputError::invalid(
                &adapter.path,
                "rewriting saved embeddings needs the base weights to compare them with",
            ));
        };
        saved_rw = saved::rewrite(&mut adapter, b, opts.saved)?;
        for s in &saved_rw {
            actions.push(match s.form {
                "dropped_equal_to_base" => format!("{}: saved tensor equals the base, dropped", s.module),
                "trainable_tokens" => format!(
                    "{}: {} of {} rows differ from the base → trainable_token_indices (exact)",
                    s.module, s.rows_changed, s.rows
                ),
                "lora" => format!(
                    "{}: saved tensor → rank-{} LoRA of its difference from the base (‖Δ − B·A‖_F = {:.3e}, {:.3e} relative)",
                    s.module,
                    s.rank.unwrap_or(0),
                    s.fro_error.unwrap_or(0.0),
                    s.rel_fro_error.unwrap_or(0.0)
                ),
                _ => format!(
                    "{}: saved tensor kept ({} of {} rows differ): {}",
                    s.module,
                    s.rows_changed,
                    s.rows,
                    s.why.as_deref().unwrap_or("")
                ),
            });
        }
    }
    let mut dora_to_lora = Vec::new();
    if let Some(r) = opts.dora_rank {
        let Some(b) = &base else {
            return Err(InputError::option(&adapter.path, |o| {
                format!(
                    "turning DoRA into LoRA needs the base weights: give {}",
                    o.opt(Opt::Base)
                )
            }));
        };
        dora_to_lora = dora_to_plain(&mut adapter, b, r)?;
        if !dora_to_lora.is_empty() {
            let worst = dora_to_lora
                .iter()
                .map(|d| d.rel_fro_error)
                .fold(0.0, f64::max);
            actions.push(format!(
                "replaced {} DoRA module(s) by rank-{r} LoRA of their effective update (largest relative Frobenius error {worst:.3e})",
                dora_to_lora.len()
            ));
        }
    }
    let rank = adapter.modules.iter().map(|m| m.rank).max().unwrap_or(1);
    // PiSSA/OLoRA/KaSA: PEFT rebuilds the residual base from the saved ranks and scales
    // (PiSSA removes the top-r singular triplets), so padding a rank or folding a scale
    // changes what PEFT subtracts (rev16b F10: 0.07 off the original's merge).
    if adapter
        .modules
        .iter()
        .any(|m| adapter.residual_of(m).is_some() && (m.rank != rank || m.scale != 1.0))
    {
        adapter.check_plain_base("padding ranks or folding scales (check --fix)")?;
    }
    let mut padded = Vec::new();
    let mut folded = 0usize;
    for m in adapter.modules.iter_mut() {
        let Factors::Lora { a, b } = &m.factors else {
            unreachable!("checked above: every module is plain LoRA")
        };
        let (Data::Owned(av), Data::Owned(bv)) = (a, b) else {
            unreachable!("load_all made every factor owned")
        };
        let (r, k, d) = (m.rank, m.in_features, m.out_features);
        let s = m.scale;
        // A' = [A; 0] (R×k); B' = [s·B 0] (d×R), the product rounded once per entry of B.
        let mut a2 = Vec::with_capacity(rank * k);
        a2.extend_from_slice(&av[..r * k]);
        a2.resize(rank * k, 0.0);
        let mut b2 = vec![0f32; d * rank];
        for i in 0..d {
            for j in 0..r {
                b2[i * rank + j] = (bv[i * r + j] as f64 * s) as f32;
            }
        }
        if s != 1.0 {
            folded += 1;
        }
        if let Some(Data::Owned(bias)) = &m.bias {
            let scaled: Vec<f32> = bias.iter().map(|&x| (x as f64 * s) as f32).collect();
            m.bias = Some(Data::Owned(Arc::new(scaled)));
        }
        if r != rank {
            padded.push((m.name.clone(), r));
        }
        set_unit_scale_lora(m, a2, b2, rank);
    }
    if folded > 0 {
        actions.push(format!(
            "folded the scale of {folded} module(s) into lora_B (lora_alpha = r = {rank}, no rank/alpha patterns{})",
            if adapter.use_rslora { ", rsLoRA off" } else { "" }
        ));
    }
    if !padded.is_empty() {
        actions.push(format!(
            "zero-padded {} module(s) to rank {rank}",
            padded.len()
        ));
    }
    adapter.use_rslora = false;
    if let Some(serde_json::Value::Object(cfg)) = adapter.config.as_mut() {
        cfg.insert("use_rslora".into(), serde_json::Value::Bool(false));
        if !dropped.is_empty() || !renamed.is_empty() {
            // Full module names are written instead (peft::config_json), matching exactly the
            // modules that are left.
            cfg.insert("target_modules".into(), serde_json::Value::Null);
        }
    }
    let unkeyed = before.targets.iter().any(|t| {
        t.findings
            .iter()
            .any(|f| f.rule.ends_with(".key_prefix") || f.rule.ends_with(".format"))
    });
    if adapter.format == Format::Mlx {
        actions.push(
            "mlx-lm folder → PEFT folder (lora_a/lora_b transposed to lora_A/lora_B, scale stated as lora_alpha = scale·r)"
                .into(),
        );
    } else if unkeyed {
        actions.push("keys written with PEFT's `base_model.model.` prefix".into());
    }
    actions.push("factors written as F32".into());
    let prov = Provenance {
        operation: "check",
        inputs: serde_json::json!([{"path": adapter.path.display().to_string()}]),
        params: serde_json::json!({"fix": true, "drop_unmatched": opts.drop_unmatched, "rank": rank}),
    };
    let approximations = dora_to_lora
        .iter()
        .map(|d| {
            (
                d.module.as_str(),
                format!("rank-{} LoRA", d.rank),
                d.rel_fro_error,
            )
        })
        .chain(saved_rw.iter().filter_map(|s| {
            let rel = s.rel_fro_error?;
            Some((s.module.as_str(), format!("rank-{} LoRA", s.rank?), rel))
        }));
    within_tolerance(&adapter, opts.tolerance, approximations)?;
    let written = output::write_adapter(&adapter, &spec, &prov)?;
    Ok(FixReport {
        out: opts.out.display().to_string(),
        written,
        rank,
        renamed,
        dropped,
        padded,
        split,
        fused,
        dora_to_lora,
        saved: saved_rw,
        lowered: Vec::new(),
        actions,
    })
}

/// Adds an all-zero LoRA module (ΔW = 0, exact) for the sibling a stacking loader needs:
/// `v_proj` beside a lone `q_proj`, `q_proj` beside `k_proj`/`v_proj`, `gate_proj` beside
/// `up_proj` (SGLang `lora.py` `normalize_qkv_proj` / `normalize_gate_up_proj`), shaped like the
/// base's weight, with the rank of the module it completes. Returns the names added.
fn add_zero_siblings(
    adapter: &mut crate::adapter::Adapter,
    base: &crate::io::Checkpoint,
) -> Vec<String> {
    use crate::adapter::ModuleKind;
    const NEEDS: &[(&[&str], &str)] = &[
        (&["q_proj"], "v_proj"),
        (&["k_proj", "v_proj"], "q_proj"),
        (&["up_proj"], "gate_proj"),
    ];
    let mut added = Vec::new();
    // Repeat until nothing changes: a lone k_proj gains q_proj, which then gains v_proj.
    loop {
        let names: std::collections::BTreeSet<String> =
            adapter.modules.iter().map(|m| m.name.clone()).collect();
        let mut new = Vec::new();
        for m in &adapter.modules {
            let leaf = m.name.rsplit('.').next().unwrap_or(&m.name);
            let Some((_, lacks)) = NEEDS.iter().find(|(has, _)| has.contains(&leaf)) else {
                continue;
            };
            let parent = &m.name[..m.name.len() - leaf.len()];
            let name = format!("{parent}{lacks}");
            if names.contains(&name)
                || new
                    .iter()
                    .any(|n: &crate::adapter::LoraModule| n.name == name)
            {
                continue;
            }
            let Some(info) = base.info(&format!("{name}.weight")) else {
                continue;
            };
            if info.shape.len() != 2 || m.kind != ModuleKind::Linear || m.base_transposed {
                continue;
            }
            let (d, k) = (info.shape[0], info.shape[1]);
            let mut z = m.clone();
            z.name = name;
            z.out_features = d;
            z.in_features = k;
            z.factors = Factors::Lora {
                a: Data::Owned(Arc::new(vec![0.0; m.rank * k])),
                b: Data::Owned(Arc::new(vec![0.0; d * m.rank])),
            };
            z.bias = None;
            z.dora_magnitude = None;
            new.push(z);
        }
        if new.is_empty() {
            break;
        }
        added.extend(new.iter().map(|m| m.name.clone()));
        adapter.modules.extend(new);
    }
    if !added.is_empty() {
        adapter.modules.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(serde_json::Value::Object(cfg)) = adapter.config.as_mut() {
            cfg.insert("target_modules".into(), serde_json::Value::Null);
        }
    }
    added
}

/// Replaces each PEFT DoRA module by the rank-`r` LoRA nearest (Frobenius) to its effective
/// update. PEFT's merge (`tuners/lora/dora.py`, `DoraLinearVariant.merge_safe`) gives
/// `W' = f ⊙ (W0 + ΔW)` with `f_i = m_i / ‖(W0 + ΔW)_i‖` per output feature, so the update is
/// `D = f ⊙ (W0 + ΔW) − W0` — full rank in general (it holds `(f − 1) ⊙ W0`), hence measured, not
/// exact: the SVD of `D` (d×k, dense) keeps its leading `r` triplets, `B' = U_r·diag(σ_r)`,
/// `A' = V_rᵀ`, scale 1, and the error `(Σ_{i>r} σᵢ²)^{1/2}` (Eckart–Young–Mirsky) is reported.
fn dora_to_plain(
    adapter: &mut crate::adapter::Adapter,
    base: &crate::io::Checkpoint,
    r: usize,
) -> InputResult<Vec<DoraToLora>> {
    use crate::adapter::{DoraRule, ModuleKind};
    if r == 0 {
        return Err(InputError::option(&adapter.path, |o| {
            format!("{} must be at least 1", o.opt(Opt::DoraRank))
        }));
    }
    let res = mapping::resolve(adapter, base);
    let mut out = Vec::new();
    for p in &res.modules {
        let m = &adapter.modules[p.module];
        let Some(Data::Owned(mag)) = &m.dora_magnitude else {
            continue;
        };
        if m.kind != ModuleKind::Linear || m.base_transposed || m.dora_rule != DoraRule::Peft {
            return Err(InputError::invalid(
                &adapter.path,
                format!(
                    "module `{}`: DoRA → LoRA is implemented for PEFT DoRA on linear layers stored [out, in] only",
                    m.name
                ),
            ));
        }
        if !p.whole_in_order() {
            return Err(InputError::invalid(
                &adapter.path,
                format!(
                    "module `{}` lands on {}, not on a whole base weight in its own row order; DoRA → LoRA reads W0 as the module's [out, in]",
                    m.name,
                    p.describe()
                ),
            ));
        }
        let (d, k) = (m.out_features, m.in_features);
        let w0 = base.read_f32(&p.weight)?;
        if w0.len() != d * k {
            return Err(InputError::invalid(
                &base.root,
                format!(
                    "tensor `{}` has {} values, expected {d}×{k}",
                    p.weight,
                    w0.len()
                ),
            ));
        }
        let delta = adapter.delta(m)?;
        let mut dm = vec![0f32; d * k];
        let mut norm_sq = 0f64;
        for i in 0..d {
            let row = i * k..(i + 1) * k;
            let n: f64 = w0[row.clone()]
                .iter()
                .zip(&delta[row.clone()])
                .map(|(&w, &x)| (w as f64 + x as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let f = if n > 0.0 { mag[i] as f64 / n } else { 1.0 };
            for j in row {
                let v = f * (w0[j] as f64 + delta[j] as f64) - w0[j] as f64;
                dm[j] = v as f32;
                norm_sq += v * v;
            }
        }
        let view = crate::ops::output::view(&dm, d, k);
        let svd = crate::linalg::exact_svd(view);
        // A rank above min(d, k) adds only zero columns: capped, as combine and extract do
        // (`--dora-rank 1000000000` allocated d·r values and aborted); the fix pads every
        // module to the largest rank afterwards.
        let r = r.min(d.min(k));
        let keep = r.min(svd.s.len());
        let tail: f64 = svd.s[keep..]
            .iter()
            .fold(0.0, |acc, &x| acc + (x as f64).powi(2));
        let (bn, an) = crate::ops::output::svd_factors(&svd, r);
        let name = m.name.clone();
        let m = &mut adapter.modules[p.module];
        set_unit_scale_lora(m, an, bn, r);
        m.dora_magnitude = None;
        out.push(DoraToLora {
            module: name,
            rank: r,
            fro_error: tail.sqrt().abs(),
            rel_fro_error: if norm_sq > 0.0 {
                (tail / norm_sq).sqrt().abs()
            } else {
                0.0
            },
        });
    }
    adapter.use_dora = adapter.modules.iter().any(|m| m.dora_magnitude.is_some());
    if let Some(serde_json::Value::Object(cfg)) = adapter.config.as_mut() {
        cfg.insert("use_dora".into(), serde_json::Value::Bool(adapter.use_dora));
    }
    Ok(out)
}

fn unmatched_name(u: &mapping::Unmatched) -> String {
    match u {
        mapping::Unmatched::NotFound { module, .. }
        | mapping::Unmatched::ShapeMismatch { module, .. }
        | mapping::Unmatched::Ambiguous { module, .. }
        | mapping::Unmatched::NotFloat { module, .. }
        | mapping::Unmatched::OtherComponent { module, .. }
        | mapping::Unmatched::UnknownOrder { module, .. }
        | mapping::Unmatched::WouldNotLoad { module, .. }
        | mapping::Unmatched::NoGgufName { module, .. } => module.clone(),
    }
}
