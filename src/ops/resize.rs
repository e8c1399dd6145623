//! Changing the rank of every module of an adapter, exactly in factor space.
//!
//! For a module `ΔW = s·B·A` (`B`: d×r, `A`: r×k) the SVD of `B·A` comes from the factors
//! ([`crate::linalg::factored_svd`]: thin QRs of `B` and `Aᵀ`, SVD of the r×r core — the d×k
//! matrix is never formed). Keeping the leading `r'` triplets gives `B' = U_r'·diag(σ_r')`,
//! `A' = V_r'ᵀ` (kohya `resize_lora.py`'s split: singular values in the up factor), and the
//! scale is kept: `alpha' = alpha·r'/r` (kohya: `new_alpha = scale·new_rank`), or
//! `alpha·√(r'/r)` with rsLoRA, so `s'·B'·A' = s·(B·A)_r'`, the best rank-`r'` approximation of
//! `ΔW` in Frobenius and spectral norm (Eckart–Young–Mirsky). A module whose rank does not change
//! is copied untouched (bit for bit). DoRA magnitudes, `lora_B` biases and full tensors are kept
//! as they are: only the low-rank part is resized.
//!
//! The rank is chosen by [`RankRule`] (`super::rank`) from the module's whole spectrum: a fixed
//! rank is capped at the module's own (as kohya does); a zero module keeps rank 1 (kohya too).
//!
//! Modules of the other LyCORIS algorithms become plain LoRA here (for loaders that take only
//! LoRA: diffusers cannot load LoKr), through their exact SVD, still without forming d×k where
//! the structure allows it:
//! - LoHa (and LoCon with a Tucker core): the exact rank-r² product form
//!   ([`crate::adapter::algo::product_form`], row-wise Khatri–Rao), then the factored SVD above;
//! - LoKr: `kron(W₁, W₂) = (U₁ ⊗ U₂)(Σ₁ ⊗ Σ₂)(V₁ ⊗ V₂)ᵀ` from the SVDs of the two small halves
//!   (Van Loan 2000, "The ubiquitous Kronecker product"): the singular values are the products
//!   σ₁ᵢ·σ₂ⱼ, and the leading ones give the factors directly, O((d + k)·r′) memory;
//! - full (`diff`): the exact SVD of the stored matrix (it is d×k already).
//!
//! The result keeps the module's scale (alpha′ = scale·r′, or scale·√r′ with rsLoRA) and is the
//! Eckart–Young optimum at rank r′; the report gives `‖ΔW − ΔW′‖_F` per module.
//!
//! The operation: [`ResizeOptions`] → [`ResizePlan::new`] (the rule checked, the adapter and base
//! opened, the output checked against every input, names resolved for the target format;
//! nothing written) → [`ResizePlan::run`] (resize, write atomically) → [`ResizeReport`].
//!
//! Must not print, nor name a command-line flag (options are named as [`crate::error::Opt`]s).

use crate::adapter::{scale_for, Adapter, Data, Format, LoraModule};
use crate::error::InputResult;
use crate::linalg;
use crate::ops::output::{self, OutputOptions, Provenance, WriteSpec, Written};
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub use super::rank::RankRule;

/// What happened to one module.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleResize {
    pub name: String,
    /// The module's algorithm before (after a resize it is always plain LoRA).
    pub algo_before: crate::adapter::Algo,
    pub rank_before: usize,
    pub rank_after: usize,
    pub alpha_before: f64,
    pub alpha_after: f64,
    /// The module's scale (unchanged by the resize).
    pub scale: f64,
    /// `Σ_{i<r'} σᵢ² / Σ σᵢ²` (1 for a zero module).
    pub energy_kept: f64,
    /// `‖ΔW‖_F` before.
    pub fro_norm: f64,
    /// `‖ΔW − ΔW'‖_F` (the Eckart–Young optimum `|s|·(Σ_{i≥r'} σᵢ²)^{1/2}`).
    pub fro_error: f64,
    /// False when the rank did not change and the module was copied untouched.
    pub changed: bool,
}

/// Alpha that keeps `scale` at rank `new_rank`: `alpha·r'/r`, or `alpha·√(r'/r)` with rsLoRA.
pub fn resized_alpha(alpha: f64, rank: usize, new_rank: usize, rslora: bool) -> f64 {
    if new_rank == rank {
        alpha
    } else if rslora {
        alpha * (new_rank as f64 / rank as f64).sqrt()
    } else {
        alpha * new_rank as f64 / rank as f64
    }
}

/// New canonical factors `(B′, A′)` of a resized module.
pub type Factors = (Vec<f32>, Vec<f32>);

/// Resizes one module given its canonical factors `b` (d×r) and `a` (r×k). Returns the new
/// factors (`None` when the rank is unchanged) and the report.
pub fn resize_module(
    m: &LoraModule,
    b: &[f32],
    a: &[f32],
    rslora: bool,
    rule: &RankRule,
) -> (Option<Factors>, ModuleResize) {
    let (d, r, k) = (m.out_features, m.rank, m.in_features);
    let svd = linalg::factored_svd(
        super::output::view(b, d, r),
        super::output::view(a, r, k),
        1.0,
    );
    let new_rank = rule.choose(&svd.s, linalg::energy(&svd.s), r);
    let total = linalg::energy(&svd.s);
    let tail = linalg::tail_energy(&svd.s, new_rank);
    let energy_kept = if total > 0.0 { 1.0 - tail / total } else { 1.0 };
    let changed = new_rank != r;
    let alpha_after = resized_alpha(m.alpha, r, new_rank, rslora);
    let report = ModuleResize {
        name: m.name.clone(),
        algo_before: m.factors.algo(),
        rank_before: r,
        rank_after: new_rank,
        alpha_before: m.alpha,
        alpha_after,
        scale: m.scale,
        energy_kept,
        fro_norm: m.scale.abs() * total.sqrt(),
        fro_error: if changed {
            m.scale.abs() * tail.sqrt()
        } else {
            0.0
        },
        changed,
    };
    let factors = changed.then(|| super::output::svd_factors(&svd, new_rank));
    (factors, report)
}

/// Refuses a module whose `‖B‖_F·‖A‖_F` (f64) passes `f32::MAX`: `B·A` may then overflow f32,
/// and the SVD of the QR core [`resize_module`] takes would not converge on its infinities
/// (found by the hostile round 11: factors of 3e38 panicked inside faer).
fn fits_f32(adapter: &Adapter, m: &LoraModule, b: &[f32], a: &[f32]) -> InputResult<()> {
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let bound = norm(b) * norm(a);
    if bound <= f64::from(f32::MAX) {
        return Ok(());
    }
    Err(crate::error::InputError::invalid(
        &adapter.path,
        format!(
            "module `{}`: ‖B‖·‖A‖ = {bound:e} passes the f32 range, so ΔW = B·A cannot be factored in f32",
            m.name
        ),
    ))
}

/// Lowers a non-LoRA module to LoRA under `rule`: the new factors (always) and the report.
pub fn lower_module(
    adapter: &Adapter,
    m: &LoraModule,
    rslora: bool,
    rule: &RankRule,
) -> InputResult<(Option<Factors>, ModuleResize)> {
    use crate::adapter::algo;
    if m.factors.needs_base() {
        return Err(crate::error::InputError::invalid(
            &adapter.path,
            format!(
                "module `{}` is {}: {}",
                m.name,
                m.factors.algo(),
                m.factors.needs_base_why()
            ),
        ));
    }
    let (d, k) = (m.out_features, m.in_features);
    let kk = match &m.kind {
        crate::adapter::ModuleKind::Conv { kernel } => kernel.iter().product::<usize>().max(1),
        _ => 1,
    };
    let values = m
        .factors
        .data()
        .into_iter()
        .map(|x| adapter.values(x))
        .collect::<InputResult<Vec<_>>>()?;
    let loaded = algo::Loaded {
        factors: &m.factors,
        values,
    };
    // (spectrum of ΔW/scale, factors of the kept rank-r′ part given r′)
    let (s, factors): (Vec<f32>, Box<dyn Fn(usize) -> Factors>) =
        if let Some((p, q, big)) = algo::product_form(&loaded, d, k, m.rank, kk) {
            // In f64: a LoHa's Khatri–Rao factors cancel, and the f32 path's rounding moved
            // singular vectors by ε₃₂·σ₁/gap (sweep9, fixtures/sweep9/loha_lowered).
            let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
            let (p, q) = (f64s(&p), f64s(&q));
            let svd = linalg::factored_svd_f64(
                ndarray::ArrayView2::from_shape((d, big), &p).expect("product_form: d×big"),
                ndarray::ArrayView2::from_shape((big, k), &q).expect("product_form: big×k"),
            );
            let s = svd.s.clone();
            (s, Box::new(move |r| super::output::svd_factors(&svd, r)))
        } else if let Some(((w1, a, c), (w2, b, n2))) = algo::kron_halves(&loaded, kk) {
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let (w1, w2) = (f32s(&w1), f32s(&w2));
            let s1 = linalg::exact_svd(super::output::view(&w1, a, c));
            let s2 = linalg::exact_svd(super::output::view(&w2, b, n2));
            // Every product σ₁ᵢσ₂ⱼ, largest first (ties in index order: deterministic).
            let mut pairs: Vec<(f64, usize, usize)> = (0..s1.s.len())
                .flat_map(|i| (0..s2.s.len()).map(move |j| (i, j)))
                .map(|(i, j)| (s1.s[i] as f64 * s2.s[j] as f64, i, j))
                .collect();
            pairs.sort_by(|x, y| y.0.total_cmp(&x.0).then((x.1, x.2).cmp(&(y.1, y.2))));
            let s = pairs.iter().map(|p| p.0 as f32).collect();
            (
                s,
                Box::new(move |r| {
                    let mut bm = vec![0f32; d * r];
                    let mut am = vec![0f32; r * k];
                    for (t, &(sv, i, j)) in pairs.iter().take(r).enumerate() {
                        for i1 in 0..a {
                            let u1 = s1.u[[i1, i]] as f64 * sv;
                            for i2 in 0..b {
                                bm[(i1 * b + i2) * r + t] = (u1 * s2.u[[i2, j]] as f64) as f32;
                            }
                        }
                        let row = &mut am[t * k..(t + 1) * k];
                        for j1 in 0..c {
                            let v1 = s1.vt[[i, j1]] as f64;
                            for j2 in 0..n2 {
                                row[j1 * n2 + j2] = (v1 * s2.vt[[j, j2]] as f64) as f32;
                            }
                        }
                    }
                    (bm, am)
                }),
            )
        } else {
            // Full: the stored d×k difference itself, its SVD in f64 (an f32 one moves the
            // kept singular vectors by ε₃₂·σ₁/gap: 2e-5 off the truncation of a PEFT C3A at a
            // 1 % gap, sweep13, fixtures/sweep13/c3a_lowered; as extract's, sweep10).
            // The f32 ΔW, its f64 copy and the SVD's factors.
            crate::io::memory::check_fits(
                &adapter.path,
                || format!("module `{}`: the SVD of its dense ΔW ({d}×{k})", m.name),
                (d as u128) * (k as u128) * 28,
            )?;
            let dense = algo::delta(&loaded, d, k, m.rank, kk, 1.0);
            let svd = linalg::exact_svd_f64(super::output::view(&dense, d, k));
            let s = svd.s.clone();
            (s, Box::new(move |r| super::output::svd_factors(&svd, r)))
        };
    let total = linalg::energy(&s);
    let new_rank = rule.choose(&s, total, s.len()).max(1);
    crate::io::memory::check_fits(
        &adapter.path,
        || {
            format!(
                "module `{}`: rank-{new_rank} factors ({d}×{new_rank}, {new_rank}×{k})",
                m.name
            )
        },
        ((d + k) as u128) * (new_rank as u128) * 4,
    )?;
    let tail = linalg::tail_energy(&s, new_rank);
    let alpha_after = if rslora {
        m.scale * (new_rank as f64).sqrt()
    } else {
        m.scale * new_rank as f64
    };
    let report = ModuleResize {
        name: m.name.clone(),
        algo_before: m.factors.algo(),
        rank_before: m.rank,
        rank_after: new_rank,
        alpha_before: m.alpha,
        alpha_after,
        scale: m.scale,
        energy_kept: if total > 0.0 { 1.0 - tail / total } else { 1.0 },
        fro_norm: m.scale.abs() * total.sqrt(),
        fro_error: m.scale.abs() * tail.sqrt(),
        changed: true,
    };
    Ok((Some(factors(new_rank)), report))
}

/// Every non-LoRA module of `adapter` replaced by the LoRA form of its whole ΔW (all singular
/// triplets: exact up to f32 rounding), for operations that work on `B` and `A` (combine). LoRA
/// modules are left untouched.
pub fn lower_exactly(mut adapter: Adapter) -> InputResult<Adapter> {
    if adapter.modules.iter().all(|m| m.factors.lora().is_some()) {
        return Ok(adapter);
    }
    let rslora = adapter.use_rslora;
    let all = RankRule::Fixed(usize::MAX);
    let lowered: Vec<Option<(Option<Factors>, ModuleResize)>> = adapter
        .modules
        .iter()
        .map(|m| {
            (m.factors.lora().is_none())
                .then(|| lower_module(&adapter, m, rslora, &all))
                .transpose()
        })
        .collect::<InputResult<_>>()?;
    for (m, l) in adapter.modules.iter_mut().zip(lowered) {
        if let Some((Some((b, a)), rep)) = l {
            install(m, b, a, &rep, rslora);
        }
    }
    Ok(adapter)
}

/// Puts the new factors `B′`, `A′` of `m` in place with the rank and alpha of `rep` (and the
/// scale they give).
fn install(m: &mut LoraModule, b: Vec<f32>, a: Vec<f32>, rep: &ModuleResize, rslora: bool) {
    m.rank = rep.rank_after;
    m.alpha = rep.alpha_after;
    m.scale = scale_for(m.alpha, m.rank, rslora);
    m.factors = crate::adapter::Factors::Lora {
        a: Data::Owned(Arc::new(a)),
        b: Data::Owned(Arc::new(b)),
    };
}

/// Resizes every module of `adapter` (modules in parallel; the result does not depend on the
/// thread schedule). The returned adapter keeps the input's format, config, metadata, DoRA
/// magnitudes, biases and full tensors.
pub fn resize(mut adapter: Adapter, rule: &RankRule) -> InputResult<(Adapter, Vec<ModuleResize>)> {
    let rslora = adapter.use_rslora;
    let results: Vec<InputResult<(Option<Factors>, ModuleResize)>> = adapter
        .modules
        .par_iter()
        .map(|m| {
            if m.factors.lora().is_none() {
                return lower_module(&adapter, m, rslora, rule);
            }
            let (b, a) = adapter.factors(m)?;
            fits_f32(&adapter, m, &b, &a)?;
            Ok(resize_module(m, &b, &a, rslora, rule))
        })
        .collect();
    let mut reports = Vec::with_capacity(results.len());
    for (m, res) in adapter.modules.iter_mut().zip(results) {
        let (factors, rep) = res?;
        if let Some((b, a)) = factors {
            install(m, b, a, &rep, rslora);
        }
        reports.push(rep);
    }
    Ok((adapter, reports))
}

/// What to resize, as a Rust caller states it.
#[derive(Debug, Clone)]
pub struct ResizeOptions {
    pub adapter: PathBuf,
    /// How each module's new rank is chosen (validated by [`ResizePlan::new`]).
    pub rule: RankRule,
    /// Where and how the result is written.
    pub output: OutputOptions,
}

/// What `resize` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResizeReport {
    pub operation: &'static str,
    pub input: String,
    pub out: String,
    pub from: Format,
    pub to: Format,
    /// `{"rule": "rank", "rank": R}`, `{"rule": "energy", "energy": E, "max_rank": R|null}` or
    /// `{"rule": "sv_ratio", "sv_ratio": X, "max_rank": R|null}`.
    pub rank_rule: serde_json::Value,
    pub modules: Vec<ModuleResize>,
    pub modules_resized_count: usize,
    pub parameters_before: usize,
    pub parameters_after: usize,
    /// Energy kept over all modules: `Σ ‖ΔW′‖²_F / Σ ‖ΔW‖²_F`.
    pub energy_kept: f64,
    /// The files written and their bytes (`files`, `bytes_written`).
    #[serde(flatten)]
    pub written: Written,
    /// From [`ResizePlan::new`] to the end of [`ResizePlan::run`].
    pub seconds: f64,
}

/// A validated resize, ready to run: nothing has been written.
#[derive(Debug)]
pub struct ResizePlan {
    opts: ResizeOptions,
    /// Opened, and renamed for the target format.
    adapter: Adapter,
    spec: WriteSpec,
    from: Format,
    parameters_before: usize,
    started: Instant,
}

impl ResizePlan {
    /// Checks everything before anything is written: the rank rule, the adapter (a plain-base
    /// LoRA family adapter), the base, the output against every input, and the module names
    /// in the target format ([`super::convert::prepare`]).
    pub fn new(opts: ResizeOptions) -> anyhow::Result<ResizePlan> {
        let started = Instant::now();
        opts.rule.validate()?;
        let mut adapter = Adapter::open(&opts.adapter)?;
        adapter.check_plain_base("resizing it")?;
        let (spec, base) = opts.output.open_for(&[&adapter])?;
        let from = adapter.format;
        let to = spec.format;
        let parameters_before = adapter.parameter_count();
        super::convert::prepare(&mut adapter, to, base.as_ref())?;
        Ok(ResizePlan {
            opts,
            adapter,
            spec,
            from,
            parameters_before,
            started,
        })
    }

    /// Resizes every module ([`resize`]) and writes the result atomically, stamped with its
    /// provenance.
    /// The adapter being resized, as read.
    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    pub fn run(self) -> anyhow::Result<ResizeReport> {
        let (opts, spec) = (&self.opts, &self.spec);
        let (mut resized, modules) = resize(self.adapter, &opts.rule)?;
        update_kohya_metadata(&mut resized, &modules);
        let prov = Provenance {
            operation: "resize",
            inputs: output::inputs_json(&[&opts.adapter], opts.output.base.as_deref()),
            params: serde_json::json!({"rule": opts.rule, "to": spec.format, "dtype": opts.output.dtype}),
        };
        let written = output::write_adapter(&resized, spec, &prov)?;
        let (kept, total) = modules.iter().fold((0.0, 0.0), |(k, t), m| {
            let e = m.fro_norm * m.fro_norm;
            (k + e * m.energy_kept, t + e)
        });
        Ok(ResizeReport {
            operation: "resize",
            input: output::show(&opts.adapter),
            out: output::show(&opts.output.out),
            from: self.from,
            to: spec.format,
            rank_rule: serde_json::to_value(opts.rule)?,
            modules_resized_count: modules.iter().filter(|m| m.changed).count(),
            modules,
            parameters_before: self.parameters_before,
            parameters_after: resized.parameter_count(),
            energy_kept: if total > 0.0 { kept / total } else { 1.0 },
            written,
            seconds: self.started.elapsed().as_secs_f64(),
        })
    }
}

/// kohya's resize_lora.py records the new dim and alpha (`Dynamic` when they vary).
fn update_kohya_metadata(adapter: &mut Adapter, modules: &[ModuleResize]) {
    let uniform = |f: &dyn Fn(&ModuleResize) -> String| {
        let first = modules.first().map(f);
        if modules.iter().all(|m| Some(f(m)) == first) {
            first.unwrap_or_else(|| "Dynamic".into())
        } else {
            "Dynamic".into()
        }
    };
    let dim = uniform(&|m| m.rank_after.to_string());
    let alpha = uniform(&|m| format!("{:?}", m.alpha_after));
    for (k, v) in adapter.metadata.iter_mut() {
        match k.as_str() {
            "ss_network_dim" => *v = dim.clone(),
            "ss_network_alpha" => *v = alpha.clone(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_keeps_the_scale() {
        for (alpha, r, k, rs) in [
            (16.0, 8, 4, false),
            (8.0, 6, 4, false),
            (8.0, 4, 2, true),
            (3.0, 5, 5, true),
        ] {
            let a2 = resized_alpha(alpha, r, k, rs);
            let (s1, s2) = (scale_for(alpha, r, rs), scale_for(a2, k, rs));
            assert!(
                (s1 - s2).abs() <= 1e-15 * s1.abs(),
                "{alpha} {r} {k} {rs}: {s1} vs {s2}"
            );
        }
        assert_eq!(resized_alpha(16.0, 8, 4, false), 8.0);
    }

    /// The rank rule is checked before the adapter is opened.
    #[test]
    fn the_rule_is_checked_before_the_adapter_is_opened() {
        let opts = |rule| ResizeOptions {
            adapter: PathBuf::from("/nonexistent/lorakit-resize"),
            rule,
            output: OutputOptions {
                format: None,
                out: PathBuf::from("/nonexistent/lorakit-resize-out"),
                base: None,
                dtype: output::DtypeChoice::Keep,
                prefix: None,
            },
        };
        for (rule, param) in [
            (RankRule::Fixed(0), super::super::rank::RankParam::Rank),
            (
                RankRule::Energy {
                    energy: 1.5,
                    max_rank: None,
                },
                super::super::rank::RankParam::Energy,
            ),
        ] {
            let e = ResizePlan::new(opts(rule)).expect_err("refused");
            let r = e
                .downcast_ref::<super::super::rank::RankRuleError>()
                .expect("a rank rule error");
            assert_eq!(r.param, param);
        }
        let e = ResizePlan::new(opts(RankRule::Fixed(2))).expect_err("refused");
        assert!(e.to_string().contains("lorakit-resize"), "{e:#}");
    }
}
