//! The semantics of `combine` over opened inputs ([`combine`]): PEFT's `add_weighted_adapter`
//! rules (`cat`, `svd`, `linear`, `ties`, `dare_linear`, `dare_ties`) as [`super`]'s
//! documentation states them, module by module and side by side.
//!
//! Must not open or write files, print, nor name a command-line flag: [`super::plan`] owns
//! the operation around it.

use crate::adapter::{Adapter, Data, Factors, FullTensor, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::linalg::{self, rng::Xoshiro256PlusPlus};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A combination method (`--method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Exact: concatenate the factors (rank = Σ rᵢ).
    Cat,
    /// Exact sum re-compressed by SVD to --rank.
    Svd,
    /// PEFT's factor-wise weighted sum (equal ranks).
    Linear,
    /// TIES: magnitude pruning, sign election, disjoint mean (equal ranks).
    Ties,
    /// DARE: random pruning with rescaling, then linear (equal ranks).
    DareLinear,
    /// DARE pruning, then TIES sign election and disjoint mean (equal ranks).
    DareTies,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Cat => "cat",
            Method::Svd => "svd",
            Method::Linear => "linear",
            Method::Ties => "ties",
            Method::DareLinear => "dare_linear",
            Method::DareTies => "dare_ties",
        }
    }

    /// Methods that combine `A` and `B` entry by entry (equal ranks needed).
    pub fn is_factor_wise(self) -> bool {
        matches!(
            self,
            Method::Linear | Method::Ties | Method::DareLinear | Method::DareTies
        )
    }

    /// Methods that use `density`.
    pub fn uses_density(self) -> bool {
        matches!(self, Method::Ties | Method::DareLinear | Method::DareTies)
    }
}

/// How TIES elects the sign of each entry (PEFT `majority_sign_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MajoritySign {
    /// Sign of the sum of the pruned inputs.
    #[default]
    Total,
    /// Sign of the sum of their signs (majority vote).
    Frequency,
}

/// How [`combine`] combines the modules: the method and its settings (the `method` of
/// [`CombineOptions`](super::CombineOptions), checked by
/// [`CombinePlan::new`](super::CombinePlan::new)).
#[derive(Debug, Clone)]
pub struct MethodOptions {
    pub method: Method,
    /// Output rank of `svd` (default: the largest input rank).
    pub rank: Option<usize>,
    /// Fraction of entries kept by `ties` / `dare_*` pruning, in (0, 1].
    pub density: Option<f64>,
    /// Seed of the DARE masks.
    pub seed: u64,
    pub majority_sign: MajoritySign,
    /// `cat`: pad every module to PEFT's common rank `Σᵢ max-rank(adapterᵢ)`.
    pub pad: bool,
}

impl Default for MethodOptions {
    fn default() -> Self {
        MethodOptions {
            method: Method::Cat,
            rank: None,
            density: None,
            seed: 0,
            majority_sign: MajoritySign::Total,
            pad: true,
        }
    }
}

/// An input adapter and its weight.
#[derive(Debug)]
pub struct WeightedInput {
    pub adapter: Adapter,
    pub weight: f64,
}

/// What was done for one output module.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleCombine {
    pub name: String,
    /// Positions (0-based, in input order) of the adapters that hold the module.
    pub inputs: Vec<usize>,
    /// Rank of each of those inputs' module.
    pub input_ranks: Vec<usize>,
    pub rank: usize,
    /// `svd`: fraction of `‖Σ wᵢsᵢBᵢAᵢ‖_F²` the rank-`rank` result keeps; `null` otherwise.
    pub energy_kept: Option<f64>,
}

/// PEFT's per-side weights for weight `w` and scale `s`: `(sign(ws)·√|ws|, √|ws|)`, sign of 0
/// taken as +.
pub fn side_weights(w: f64, s: f64) -> (f64, f64) {
    let x = w * s;
    let root = x.abs().sqrt();
    (if x >= 0.0 { root } else { -root }, root)
}

/// PEFT `magnitude_based_pruning`: keeps the `⌊density·n⌋` entries of largest magnitude (ties
/// broken by position), zeroes the rest; `density ≥ 1` keeps everything.
pub fn magnitude_prune(t: &[f32], density: f64) -> Vec<f64> {
    if density >= 1.0 {
        return t.iter().map(|&x| x as f64).collect();
    }
    let k = (density * t.len() as f64) as usize;
    let mut idx: Vec<usize> = (0..t.len()).collect();
    idx.sort_unstable_by(|&i, &j| t[j].abs().total_cmp(&t[i].abs()).then(i.cmp(&j)));
    let mut out = vec![0f64; t.len()];
    for &i in &idx[..k.min(t.len())] {
        out[i] = t[i] as f64;
    }
    out
}

/// PEFT `random_pruning(rescale=True)`: keeps each entry with probability `density` (a uniform
/// draw `u < density`), divides kept entries by `density`; `density ≥ 1` keeps everything.
pub fn random_prune(t: &[f32], density: f64, rng: &mut Xoshiro256PlusPlus) -> Vec<f64> {
    if density >= 1.0 {
        return t.iter().map(|&x| x as f64).collect();
    }
    t.iter()
        .map(|&x| {
            if rng.next_f64() < density {
                x as f64 / density
            } else {
                0.0
            }
        })
        .collect()
}

/// PEFT `task_arithmetic`: `Σ wᵢ·tᵢ`.
pub fn weighted_sum(ts: &[Vec<f64>], w: &[f64]) -> Vec<f32> {
    let n = ts.first().map_or(0, Vec::len);
    (0..n)
        .map(|j| ts.iter().zip(w).map(|(t, &wi)| wi * t[j]).sum::<f64>() as f32)
        .collect()
}

/// PEFT `calculate_majority_sign_mask` + `disjoint_merge`: the elected sign of entry `j` comes
/// from the unweighted `ts` (`total`: `Σ tᵢ[j]`, `frequency`: `Σ sign tᵢ[j]`; `≥ 0` → +), the
/// result is `Σ wᵢ·tᵢ[j]` over the inputs whose `sign tᵢ[j]` is the elected one, divided by
/// their count (at least 1). Zeros carry no sign and never count.
pub fn disjoint_merge(ts: &[Vec<f64>], w: &[f64], majority: MajoritySign) -> Vec<f32> {
    let n = ts.first().map_or(0, Vec::len);
    let sign = |x: f64| {
        if x > 0.0 {
            1.0
        } else if x < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    (0..n)
        .map(|j| {
            let mag: f64 = match majority {
                MajoritySign::Total => ts.iter().map(|t| t[j]).sum(),
                MajoritySign::Frequency => ts.iter().map(|t| sign(t[j])).sum(),
            };
            let elected = if mag >= 0.0 { 1.0 } else { -1.0 };
            let (mut sum, mut count) = (0f64, 0usize);
            for (t, &wi) in ts.iter().zip(w) {
                if sign(t[j]) == elected {
                    sum += wi * t[j];
                    count += 1;
                }
            }
            (sum / count.max(1) as f64) as f32
        })
        .collect()
}

/// The generator of one DARE mask: keyed by the seed, the module, the side (`A`/`B`) and the
/// input's position, so masks do not depend on processing order.
pub fn mask_rng(seed: u64, module: &str, side: char, input: usize) -> Xoshiro256PlusPlus {
    // FNV-1a over the key, then SplitMix64 seeding inside xoshiro.
    let h = crate::linalg::rng::Fnv1a::new()
        .feed(&seed.to_le_bytes())
        .feed(module.as_bytes())
        .feed(&[0, side as u8])
        .feed(&(input as u64).to_le_bytes())
        .finish();
    Xoshiro256PlusPlus::seed_from_u64(h)
}

/// One side (`A` or `B`) of a factor-wise method: `ts` are the inputs' tensors, `w` the side
/// weights.
#[allow(clippy::too_many_arguments)]
pub fn combine_side(
    method: Method,
    ts: &[&[f32]],
    w: &[f64],
    density: f64,
    majority: MajoritySign,
    seed: u64,
    module: &str,
    side: char,
) -> Vec<f32> {
    match method {
        Method::Linear => weighted_sum(
            &ts.iter()
                .map(|t| t.iter().map(|&x| x as f64).collect())
                .collect::<Vec<_>>(),
            w,
        ),
        Method::Ties => {
            let pruned: Vec<Vec<f64>> = ts.iter().map(|t| magnitude_prune(t, density)).collect();
            disjoint_merge(&pruned, w, majority)
        }
        Method::DareLinear | Method::DareTies => {
            let pruned: Vec<Vec<f64>> = ts
                .iter()
                .enumerate()
                .map(|(i, t)| random_prune(t, density, &mut mask_rng(seed, module, side, i)))
                .collect();
            if method == Method::DareLinear {
                weighted_sum(&pruned, w)
            } else {
                disjoint_merge(&pruned, w, majority)
            }
        }
        Method::Cat | Method::Svd => unreachable!("not a factor-wise method"),
    }
}

/// Two modules' layouts agree: the same kind, or a linear (flat) one and a conv of the same
/// `[out, in·kh·kw]` (LyCORIS stores a LoHa conv flat and does not say its kernel).
fn same_layout(a: &ModuleKind, b: &ModuleKind) -> bool {
    a == b
        || matches!(
            (a, b),
            (ModuleKind::Linear, ModuleKind::Conv { .. })
                | (ModuleKind::Conv { .. }, ModuleKind::Linear)
        )
}

/// One module's inputs: (input position, module).
type Parts<'a> = Vec<(usize, &'a LoraModule)>;

/// Combines `inputs` (all of one format) as `opts` says. The result is an adapter of owned
/// values in the inputs' format, modules sorted by name, config taken from the first input
/// (targets rewritten to the exact module list), scale 1 everywhere.
pub fn combine(
    inputs: &[WeightedInput],
    opts: &MethodOptions,
) -> InputResult<(Adapter, Vec<ModuleCombine>)> {
    let first = &inputs.first().expect("at least one input").adapter;
    for wi in inputs {
        let a = &wi.adapter;
        if a.format != first.format {
            return Err(InputError::invalid(
                &a.path,
                format!(
                    "is a {} adapter but {} is {}; convert one first (lorakit convert) so module names agree",
                    a.format,
                    first.path.display(),
                    first.format
                ),
            ));
        }
        for m in &a.modules {
            if m.dora_magnitude.is_some() {
                return Err(InputError::invalid(
                    &a.path,
                    format!("module `{}`: DoRA magnitudes do not combine; combine supports plain LoRA only", m.name),
                ));
            }
            if m.bias.is_some() {
                return Err(InputError::invalid(
                    &a.path,
                    format!("module `{}`: lora_B biases (lora_bias) are not combined; combine supports plain LoRA only", m.name),
                ));
            }
        }
    }
    let method = if inputs.len() == 1 && opts.method.is_factor_wise() {
        Method::Linear
    } else {
        opts.method
    };
    let density = opts.density.unwrap_or(1.0);

    // Modules by name, in name order; each present input once.
    let mut by_name: BTreeMap<&str, Parts<'_>> = BTreeMap::new();
    for (i, wi) in inputs.iter().enumerate() {
        for m in &wi.adapter.modules {
            let parts = by_name.entry(m.name.as_str()).or_default();
            if parts.iter().any(|(j, _)| *j == i) {
                return Err(InputError::invalid(
                    &wi.adapter.path,
                    format!("module `{}` appears twice", m.name),
                ));
            }
            if let Some((j, m0)) = parts.first() {
                if !same_layout(&m0.kind, &m.kind)
                    || m0.out_features != m.out_features
                    || m0.in_features != m.in_features
                    || m0.base_transposed != m.base_transposed
                {
                    return Err(InputError::invalid(
                        &wi.adapter.path,
                        format!(
                            "module `{}`: {} [{}×{}] does not fit {} [{}×{}] in {}",
                            m.name,
                            kind_name(&m.kind, m.base_transposed),
                            m.out_features,
                            m.in_features,
                            kind_name(&m0.kind, m0.base_transposed),
                            m0.out_features,
                            m0.in_features,
                            inputs[*j].adapter.path.display()
                        ),
                    ));
                }
                if method.is_factor_wise() && m0.rank != m.rank {
                    return Err(InputError::invalid(
                        &wi.adapter.path,
                        format!(
                            "module `{}`: rank {} differs from rank {} in {}; method {} needs equal ranks (use cat or svd)",
                            m.name,
                            m.rank,
                            m0.rank,
                            inputs[*j].adapter.path.display(),
                            method.name()
                        ),
                    ));
                }
            }
            parts.push((i, m));
        }
    }
    let max_rank = |a: &Adapter| a.modules.iter().map(|m| m.rank).max().unwrap_or(0);
    let pad_rank: usize = inputs.iter().map(|wi| max_rank(&wi.adapter)).sum();
    let svd_rank = opts.rank.unwrap_or_else(|| {
        inputs
            .iter()
            .map(|wi| max_rank(&wi.adapter))
            .max()
            .unwrap_or(1)
    });

    let jobs: Vec<(&str, Parts<'_>)> = by_name.into_iter().collect();
    let results: Vec<InputResult<(LoraModule, ModuleCombine)>> = jobs
        .par_iter()
        .map(|(name, parts)| {
            let mut factors = Vec::with_capacity(parts.len());
            for &(i, m) in parts {
                factors.push(inputs[i].adapter.factors(m)?);
            }
            let m0 = parts[0].1;
            let (d, k) = (m0.out_features, m0.in_features);
            let ws: Vec<f64> = parts
                .iter()
                .map(|&(i, m)| inputs[i].weight * m.scale)
                .collect();
            let mut energy_kept = None;
            let (rank, b, a) = match method {
                Method::Cat => {
                    let sum: usize = parts.iter().map(|(_, m)| m.rank).sum();
                    let rank = if opts.pad { pad_rank } else { sum };
                    let mut a = vec![0f32; rank * k];
                    let mut b = vec![0f32; d * rank];
                    let mut off = 0;
                    for ((_, m), ((bi, ai), &w)) in parts.iter().zip(factors.iter().zip(&ws)) {
                        let r = m.rank;
                        for (dst, &x) in a[off * k..(off + r) * k].iter_mut().zip(ai.iter()) {
                            *dst = (w * x as f64) as f32;
                        }
                        for row in 0..d {
                            b[row * rank + off..row * rank + off + r]
                                .copy_from_slice(&bi[row * r..(row + 1) * r]);
                        }
                        off += r;
                    }
                    (rank, b, a)
                }
                Method::Svd => {
                    // The SVD takes each wᵢ·sᵢ as an f32 (and requires it finite).
                    for (&(i, m), &w) in parts.iter().zip(&ws) {
                        if !(w as f32).is_finite() {
                            return Err(InputError::invalid(
                                &inputs[i].adapter.path,
                                format!(
                                    "module `{}`: weight {} × scale {} = {w:e} overflows f32",
                                    m.name, inputs[i].weight, m.scale
                                ),
                            ));
                        }
                    }
                    let terms: Vec<_> = parts
                        .iter()
                        .zip(factors.iter().zip(&ws))
                        .map(|((_, m), ((bi, ai), &w))| {
                            (
                                crate::ops::output::view(bi, d, m.rank),
                                crate::ops::output::view(ai, m.rank, k),
                                w as f32,
                            )
                        })
                        .collect();
                    let svd = linalg::stacked_factored_svd(&terms);
                    let total = linalg::energy(&svd.s);
                    energy_kept = Some(if total > 0.0 {
                        1.0 - linalg::tail_energy(&svd.s, svd_rank) / total
                    } else {
                        1.0
                    });
                    // A rank above min(d, k) adds only zero columns: capped, as extract does
                    // (the report's `rank` says what each module got).
                    let rank = svd_rank.min(d.min(k));
                    let (b, a) = crate::ops::output::svd_factors(&svd, rank);
                    (rank, b, a)
                }
                _ => {
                    let (wa, wb): (Vec<f64>, Vec<f64>) =
                        ws.iter().map(|&x| side_weights(x, 1.0)).unzip();
                    let as_: Vec<&[f32]> = factors.iter().map(|(_, a)| a.as_slice()).collect();
                    let bs: Vec<&[f32]> = factors.iter().map(|(b, _)| b.as_slice()).collect();
                    let seed = opts.seed;
                    let maj = opts.majority_sign;
                    let a = combine_side(method, &as_, &wa, density, maj, seed, name, 'A');
                    let b = combine_side(method, &bs, &wb, density, maj, seed, name, 'B');
                    (m0.rank, b, a)
                }
            };
            // A conv kind where one input says it (a flat LoHa conv does not).
            let kind = parts
                .iter()
                .map(|(_, m)| &m.kind)
                .find(|k| matches!(k, ModuleKind::Conv { .. }))
                .unwrap_or(&m0.kind)
                .clone();
            let module = LoraModule {
                name: name.to_string(),
                kind,
                rank,
                alpha: rank as f64,
                scale: 1.0,
                out_features: d,
                in_features: k,
                factors: Factors::Lora {
                    a: Data::Owned(Arc::new(a)),
                    b: Data::Owned(Arc::new(b)),
                },
                base_transposed: m0.base_transposed,
                dora_magnitude: None,
                dora_rule: Default::default(),
                bias: None,
            };
            let report = ModuleCombine {
                name: name.to_string(),
                inputs: parts.iter().map(|(i, _)| *i).collect(),
                input_ranks: parts.iter().map(|(_, m)| m.rank).collect(),
                rank,
                energy_kept,
            };
            Ok((module, report))
        })
        .collect();
    let mut modules = Vec::with_capacity(results.len());
    let mut reports = Vec::with_capacity(results.len());
    for r in results {
        let (m, rep) = r?;
        modules.push(m);
        reports.push(rep);
    }
    let full_tensors = carried_full_tensors(inputs)?;
    let config = first.config.as_ref().map(|c| {
        let mut c = c.clone();
        if let Some(o) = c.as_object_mut() {
            // Targets become the exact module list (written by the PEFT writer); filters that
            // could hide modules of the other inputs go.
            for k in [
                "target_modules",
                "layers_to_transform",
                "layers_pattern",
                "exclude_modules",
                "modules_to_save",
            ] {
                o.insert(k.to_owned(), serde_json::Value::Null);
            }
            o.insert("use_rslora".into(), serde_json::Value::Bool(false));
        }
        c
    });
    let adapter = Adapter {
        full_tensors,
        base_model: first.base_model.clone(),
        config,
        ..Adapter::of_modules(first.format, first.path.clone(), modules)
    };
    Ok((adapter, reports))
}

/// Full tensors of the inputs that pass into the result: saved embedding layers
/// (`….base_layer.weight`, copies of the base weight) when every input holding one agrees;
/// anything else (`modules_to_save`) is an error.
fn carried_full_tensors(inputs: &[WeightedInput]) -> InputResult<Vec<FullTensor>> {
    let mut out: Vec<(FullTensor, usize)> = Vec::new();
    for (i, wi) in inputs.iter().enumerate() {
        let a = &wi.adapter;
        for f in &a.full_tensors {
            let saved_layer =
                matches!(&f.data, Data::Stored { key, .. } if key.contains(".base_layer."));
            if !saved_layer {
                return Err(InputError::invalid(
                    &a.path,
                    format!(
                        "tensor `{}`: modules_to_save / full tensors replace base weights and cannot be combined",
                        f.name
                    ),
                ));
            }
            let v = a.values(&f.data)?;
            match out.iter().find(|(g, _)| g.name == f.name) {
                Some((g, j)) => {
                    let Data::Owned(gv) = &g.data else {
                        unreachable!("owned")
                    };
                    if g.shape != f.shape || **gv != *v {
                        return Err(InputError::invalid(
                            &a.path,
                            format!(
                                "tensor `{}`: the saved embedding layer differs from the one in {} (different bases?)",
                                f.name,
                                inputs[*j].adapter.path.display()
                            ),
                        ));
                    }
                }
                None => out.push((
                    FullTensor {
                        name: f.name.clone(),
                        data: Data::Owned(v),
                        shape: f.shape.clone(),
                        rows: f.rows.clone(),
                    },
                    i,
                )),
            }
        }
    }
    Ok(out.into_iter().map(|(f, _)| f).collect())
}

/// A module's kind as [`ModuleKind`]'s `Display` spells it, marking PEFT's fan_in_fan_out
/// layout (a transposed base weight), which must agree between combined adapters too.
fn kind_name(k: &ModuleKind, transposed: bool) -> String {
    if transposed {
        format!("fan_in_fan_out {k}")
    } else {
        k.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pruned(t: &[f32]) -> Vec<f64> {
        t.iter().map(|&x| x as f64).collect()
    }

    #[test]
    fn side_weights_carry_the_sign_on_a() {
        assert_eq!(side_weights(0.5, 2.0), (1.0, 1.0));
        assert_eq!(side_weights(-0.25, 4.0), (-1.0, 1.0));
        let (a, b) = side_weights(-0.4, 1.0);
        assert!((a * b + 0.4).abs() < 1e-15);
    }

    #[test]
    fn magnitude_prune_keeps_floor_density_n_largest() {
        let t = [0.1f32, -3.0, 2.0, -0.5, 1.0];
        // ⌊0.5·5⌋ = 2 entries.
        assert_eq!(magnitude_prune(&t, 0.5), vec![0.0, -3.0, 2.0, 0.0, 0.0]);
        assert_eq!(magnitude_prune(&t, 1.0), pruned(&t));
        assert_eq!(magnitude_prune(&t, 0.1), vec![0.0; 5]);
        // Equal magnitudes: the earlier position wins.
        assert_eq!(magnitude_prune(&[1.0, -1.0, 1.0], 0.5), vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn disjoint_merge_follows_peft() {
        // Entry 0: +1 and −3 → total −2 → elected −, only input 1 counts: w1·(−3) / 1.
        // Entry 1: +2 and +2 → both count, mean of weighted values.
        // Entry 2: 0 and 0 → elected +, nothing counts → 0.
        // Entry 3: +1, −1 → total 0 → +; frequency 0 → +.
        let ts = vec![vec![1.0, 2.0, 0.0, 1.0], vec![-3.0, 2.0, 0.0, -1.0]];
        let w = [0.5, 2.0];
        assert_eq!(
            disjoint_merge(&ts, &w, MajoritySign::Total),
            vec![-6.0, 2.5, 0.0, 0.5]
        );
        // Frequency: entry 0 has one + and one − → + wins: w0·1.
        assert_eq!(
            disjoint_merge(&ts, &w, MajoritySign::Frequency),
            vec![0.5, 2.5, 0.0, 0.5]
        );
        // Signs are elected from the unweighted inputs even when a weight is negative.
        let ts = vec![vec![1.0], vec![0.5]];
        assert_eq!(
            disjoint_merge(&ts, &[-1.0, 1.0], MajoritySign::Total),
            vec![-0.25]
        );
    }

    #[test]
    fn dare_at_density_one_is_the_undropped_method() {
        let a: Vec<f32> = (0..50)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..50)
            .map(|i| ((i * 13 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let w = [0.7, -0.4];
        let run = |m| combine_side(m, &[&a, &b], &w, 1.0, MajoritySign::Total, 9, "m", 'A');
        assert_eq!(run(Method::DareLinear), run(Method::Linear));
        assert_eq!(run(Method::DareTies), run(Method::Ties));
    }

    #[test]
    fn dare_rescales_kept_entries_and_keeps_the_expected_value() {
        let t: Vec<f32> = (0..4000).map(|i| 1.0 + (i % 7) as f32).collect();
        let density = 0.3;
        let p = random_prune(&t, density, &mut mask_rng(1, "m", 'A', 0));
        let mut kept = 0;
        for (x, y) in t.iter().zip(&p) {
            if *y != 0.0 {
                kept += 1;
                assert_eq!(
                    *y,
                    *x as f64 / density,
                    "kept entries are rescaled by 1/density"
                );
            }
        }
        let frac = kept as f64 / t.len() as f64;
        assert!((frac - density).abs() < 0.03, "kept fraction {frac}");
        // E[dare_linear] = linear: average many masks.
        let a: Vec<f32> = (0..64)
            .map(|i| ((i * 29 % 23) as f32 - 11.0) / 5.0)
            .collect();
        let b: Vec<f32> = (0..64).map(|i| ((i * 7 % 19) as f32 - 9.0) / 4.0).collect();
        let w = [0.6, 0.3];
        let run = |m, density, seed| {
            combine_side(
                m,
                &[&a, &b],
                &w,
                density,
                MajoritySign::Total,
                seed,
                "m",
                'A',
            )
        };
        let linear = run(Method::Linear, 1.0, 0);
        let n = 4000;
        let mut mean = vec![0f64; a.len()];
        for seed in 0..n {
            let s = run(Method::DareLinear, 0.5, seed);
            for (m, x) in mean.iter_mut().zip(&s) {
                *m += *x as f64 / n as f64;
            }
        }
        let err: f64 = mean
            .iter()
            .zip(&linear)
            .map(|(m, l)| (m - *l as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = linear
            .iter()
            .map(|l| (*l as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        // Per-entry std of the mean ≈ |w·x|/√n: relative error ≈ 1/√4000 ≈ 0.016.
        assert!(
            err / norm < 0.05,
            "relative error of the mean {}",
            err / norm
        );
    }

    #[test]
    fn masks_depend_on_seed_module_side_and_input() {
        let draw = |s, m, c, i| mask_rng(s, m, c, i).next_u64();
        let base = draw(0, "a", 'A', 0);
        assert_eq!(base, draw(0, "a", 'A', 0));
        assert_ne!(base, draw(1, "a", 'A', 0));
        assert_ne!(base, draw(0, "b", 'A', 0));
        assert_ne!(base, draw(0, "a", 'B', 0));
        assert_ne!(base, draw(0, "a", 'A', 1));
    }
}
