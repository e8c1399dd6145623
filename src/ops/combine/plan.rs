//! The `combine` operation around [`combine`]: [`CombineOptions`] → [`CombinePlan::new`]
//! (every weight and method setting checked, every input opened, lowered to its exact LoRA form
//! and named for the target format, the output checked against every input; nothing written) →
//! [`CombinePlan::run`] (combine, write atomically with provenance) → [`CombineReport`].
//!
//! Must not print, nor name a command-line flag: options are named as [`Opt`]s.

use super::methods::{combine, Method, MethodOptions, ModuleCombine, WeightedInput};
use crate::adapter::{Adapter, Format};
use crate::error::{Opt, OptionError};
use crate::ops::output::{self, show, OutputOptions, Provenance, WriteSpec, Written};
use anyhow::{bail, Result};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// One input adapter and its weight `wᵢ`.
#[derive(Debug, Clone)]
pub struct CombineInput {
    pub adapter: PathBuf,
    /// Finite; PEFT's default is 1.
    pub weight: f64,
}

/// What to combine, as a Rust caller states it.
#[derive(Debug, Clone)]
pub struct CombineOptions {
    /// At least one; all of one format after lowering (LyCORIS modules become exact LoRA).
    pub inputs: Vec<CombineInput>,
    pub method: MethodOptions,
    /// Where and how the result is written.
    pub output: OutputOptions,
}

/// One input of a combination.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputReport {
    pub path: String,
    pub format: Format,
    pub weight: f64,
    pub module_count: usize,
}

/// What `combine` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CombineReport {
    pub operation: &'static str,
    pub method: Method,
    pub out: String,
    pub format: Format,
    pub adapters: Vec<InputReport>,
    /// Options that shaped the result (`rank`, `density`, `seed`, `majority_sign`, `pad`, only
    /// those the method uses).
    pub params: serde_json::Value,
    pub modules: Vec<ModuleCombine>,
    pub parameters: usize,
    /// The files written and their bytes (`files`, `bytes_written`).
    #[serde(flatten)]
    pub written: Written,
    /// From [`CombinePlan::new`] to the end of [`CombinePlan::run`].
    pub seconds: f64,
    /// `svd`: the output rank asked for (a module smaller than it keeps `min(out, in)`).
    #[serde(skip)]
    pub svd_rank: Option<usize>,
}

impl CombineReport {
    /// `svd` only: `(rank asked, modules whose rank was capped below it at min(out, in))`, when
    /// any was.
    pub fn svd_rank_capped(&self) -> Option<(usize, usize)> {
        let r = self.svd_rank?;
        let capped = self.modules.iter().filter(|m| m.rank < r).count();
        (capped > 0).then_some((r, capped))
    }
}

/// A validated combination, ready to run: nothing has been written.
#[derive(Debug)]
pub struct CombinePlan {
    opts: CombineOptions,
    /// The method's settings with `svd`'s default rank resolved.
    method: MethodOptions,
    /// Opened, lowered to LoRA and named for the target format.
    inputs: Vec<WeightedInput>,
    adapters: Vec<InputReport>,
    spec: WriteSpec,
    /// `lorakit.params` as recorded in the output.
    params: serde_json::Value,
    started: Instant,
}

/// Refuses settings the method does not use or cannot work with, and returns the JSON of those
/// it uses (with `method`).
fn check_method(m: &MethodOptions) -> Result<serde_json::Value> {
    let method = m.method;
    if m.rank.is_some() && method != Method::Svd {
        bail!(OptionError::new(|o| format!(
            "{} applies to {} only",
            o.opt(Opt::Rank),
            o.set(Opt::Method, "svd")
        )));
    }
    if m.rank == Some(0) {
        bail!(OptionError::new(|o| format!(
            "{} must be at least 1",
            o.opt(Opt::Rank)
        )));
    }
    match (method.uses_density(), m.density) {
        (true, None) => bail!(OptionError::new(move |o| format!(
            "{} needs {} (the fraction of entries kept, in (0, 1])",
            o.set(Opt::Method, method.name()),
            o.opt(Opt::Density)
        ))),
        (false, Some(_)) => bail!(OptionError::new(|o| format!(
            "{} applies to {}, dare_linear and dare_ties only",
            o.opt(Opt::Density),
            o.set(Opt::Method, "ties")
        ))),
        (true, Some(d)) if !(d > 0.0 && d <= 1.0) => bail!(OptionError::new(move |o| format!(
            "{} must be in (0, 1]",
            o.set(Opt::Density, d)
        ))),
        _ => {}
    }
    let mut params = serde_json::Map::new();
    params.insert("method".into(), json!(method));
    match method {
        Method::Cat => {
            params.insert("pad".into(), json!(m.pad));
        }
        Method::Svd => {
            params.insert("rank".into(), json!(m.rank));
        }
        Method::Linear => {}
        Method::Ties => {
            params.insert("density".into(), json!(m.density));
            params.insert("majority_sign".into(), json!(m.majority_sign));
        }
        Method::DareLinear | Method::DareTies => {
            params.insert("density".into(), json!(m.density));
            params.insert("seed".into(), json!(m.seed));
            if method == Method::DareTies {
                params.insert("majority_sign".into(), json!(m.majority_sign));
            }
        }
    }
    Ok(serde_json::Value::Object(params))
}

impl CombinePlan {
    /// Checks everything before anything is written: each weight finite, the method's settings
    /// (`rank` for `svd` only and ≥ 1, `density` in (0, 1] exactly for the pruning methods),
    /// every adapter (plain-base LoRA family), the base, the output against every input, and
    /// the module names in the target format ([`crate::ops::convert::prepare`]).
    pub fn new(opts: CombineOptions) -> Result<CombinePlan> {
        let started = Instant::now();
        if opts.inputs.is_empty() {
            bail!("nothing to combine: no input adapters");
        }
        if let Some(w) = opts
            .inputs
            .iter()
            .map(|i| i.weight)
            .find(|w| !w.is_finite())
        {
            bail!(OptionError::new(move |o| format!(
                "{} is not a finite number",
                o.set(Opt::Weight, w)
            )));
        }
        let mut params = check_method(&opts.method)?;
        let mut adapters = Vec::with_capacity(opts.inputs.len());
        for i in &opts.inputs {
            let adapter = Adapter::open(&i.adapter)?;
            adapter.check_plain_base("combining it")?;
            adapters.push(adapter);
        }
        let (spec, base) = opts.output.open_for(&adapters.iter().collect::<Vec<_>>())?;
        let to = spec.format;
        let mut reports = Vec::new();
        let mut inputs = Vec::new();
        for (adapter, i) in adapters.into_iter().zip(&opts.inputs) {
            reports.push(InputReport {
                path: show(&i.adapter),
                format: adapter.format,
                weight: i.weight,
                module_count: adapter.modules.len(),
            });
            // LyCORIS modules take part as the exact LoRA form of their ΔW (every nonzero
            // singular triplet), so every method sees B and A.
            let mut adapter = crate::ops::resize::lower_exactly(adapter)?;
            crate::ops::convert::prepare(&mut adapter, to, base.as_ref())?;
            inputs.push(WeightedInput {
                adapter,
                weight: i.weight,
            });
        }
        let mut method = opts.method.clone();
        if method.method == Method::Svd && method.rank.is_none() {
            // PEFT's default: the largest input rank.
            let max = inputs
                .iter()
                .flat_map(|wi| wi.adapter.modules.iter().map(|m| m.rank))
                .max();
            method.rank = Some(max.unwrap_or(1));
            if let Some(o) = params.as_object_mut() {
                o.insert("rank".into(), json!(method.rank));
            }
        }
        if let Some(o) = params.as_object_mut() {
            let weights: Vec<f64> = opts.inputs.iter().map(|i| i.weight).collect();
            o.insert("weights".into(), json!(weights));
            o.insert("to".into(), json!(to));
            o.insert("dtype".into(), json!(opts.output.dtype));
        }
        Ok(CombinePlan {
            opts,
            method,
            inputs,
            adapters: reports,
            spec,
            params,
            started,
        })
    }

    /// Combines the modules ([`combine`]) and writes the result atomically, stamped with its
    /// provenance.
    /// The adapters being combined, as read.
    pub fn adapters(&self) -> impl Iterator<Item = &Adapter> {
        self.inputs.iter().map(|i| &i.adapter)
    }

    pub fn run(self) -> Result<CombineReport> {
        let CombinePlan {
            opts,
            method,
            inputs,
            adapters,
            spec,
            mut params,
            started,
        } = self;
        let (combined, modules) = combine(&inputs, &method)?;
        let mut input_list: Vec<serde_json::Value> = opts
            .inputs
            .iter()
            .map(|i| json!({"path": show(&i.adapter), "weight": i.weight}))
            .collect();
        if let Some(b) = &opts.output.base {
            input_list.push(json!({"path": show(b), "role": "base"}));
        }
        let prov = Provenance {
            operation: "combine",
            inputs: serde_json::Value::Array(input_list),
            params: params.clone(),
        };
        let written = output::write_adapter(&combined, &spec, &prov)?;
        if let Some(o) = params.as_object_mut() {
            for k in ["weights", "to", "method"] {
                o.remove(k);
            }
        }
        Ok(CombineReport {
            operation: "combine",
            method: method.method,
            out: show(&opts.output.out),
            format: spec.format,
            adapters,
            params,
            parameters: combined.parameter_count(),
            modules,
            written,
            seconds: started.elapsed().as_secs_f64(),
            svd_rank: (method.method == Method::Svd)
                .then_some(method.rank)
                .flatten(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings are refused before any input is opened, naming the library's options; the
    /// binary spells them as the command line did before the plan existed (the strings are
    /// those of the pre-plan `commands/combine.rs`).
    #[test]
    fn settings_are_checked_first_and_named_as_options() {
        let missing = PathBuf::from("/nonexistent/lorakit-combine");
        let opts = |weight: f64, method: MethodOptions| CombineOptions {
            inputs: vec![CombineInput {
                adapter: missing.clone(),
                weight,
            }],
            method,
            output: OutputOptions {
                format: None,
                out: PathBuf::from("/nonexistent/lorakit-combine-out"),
                base: None,
                dtype: output::DtypeChoice::Keep,
                prefix: None,
            },
        };
        let m = |method, rank, density| MethodOptions {
            method,
            rank,
            density,
            ..MethodOptions::default()
        };
        for (o, opts_named, library, cli) in [
            (
                opts(f64::NAN, m(Method::Cat, None, None)),
                vec![Opt::Weight],
                "`weight = NaN` is not a finite number",
                "--weight NaN is not a finite number",
            ),
            (
                opts(1.0, m(Method::Linear, Some(3), None)),
                vec![Opt::Rank, Opt::Method],
                "`rank` applies to `method = svd` only",
                "--rank applies to --method svd only",
            ),
            (
                opts(1.0, m(Method::Svd, Some(0), None)),
                vec![Opt::Rank],
                "`rank` must be at least 1",
                "--rank must be at least 1",
            ),
            (
                opts(1.0, m(Method::Ties, None, None)),
                vec![Opt::Method, Opt::Density],
                "`method = ties` needs `density` (the fraction of entries kept, in (0, 1])",
                "--method ties needs --density (the fraction of entries kept, in (0, 1])",
            ),
            (
                opts(1.0, m(Method::Linear, None, Some(0.5))),
                vec![Opt::Density, Opt::Method],
                "`density` applies to `method = ties`, dare_linear and dare_ties only",
                "--density applies to --method ties, dare_linear and dare_ties only",
            ),
            (
                opts(1.0, m(Method::DareTies, None, Some(1.5))),
                vec![Opt::Density],
                "`density = 1.5` must be in (0, 1]",
                "--density 1.5 must be in (0, 1]",
            ),
        ] {
            let e = CombinePlan::new(o).expect_err("refused");
            let o = e.downcast_ref::<OptionError>().expect("an option error");
            assert_eq!(o.options(), opts_named);
            assert_eq!(o.to_string(), library);
            assert_eq!(o.render(&crate::cli::flags::spell), cli);
        }
        // Valid settings reach the inputs, and the missing file is the error.
        let e = CombinePlan::new(opts(-2.0, m(Method::DareLinear, None, Some(1.0))))
            .expect_err("refused");
        assert!(e.downcast_ref::<OptionError>().is_none(), "{e:#}");
        assert!(e.to_string().contains("lorakit-combine"), "{e:#}");
    }
}
