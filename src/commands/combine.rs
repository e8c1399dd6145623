//! `lorakit combine`.
//!
//! Arguments → library options → plan → run → printed report. Must not validate or compute what the
//! library does, nor write to stdout/stderr except through `printer`.

use super::convert::{check_output, files_line, open_base, show};
use crate::adapter::{Adapter, Format};
use crate::cli::CombineArgs;
use crate::inspect::table_of;
use crate::ops::combine::{self, CombineOptions, Method, ModuleCombine, WeightedInput};
use crate::ops::convert;
use crate::ops::output::{self, Provenance, WriteSpec};
use anyhow::{bail, Result};
use serde_json::json;
use std::time::Instant;

/// One input of a combination.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputSummary {
    pub path: String,
    pub format: Format,
    pub weight: f64,
    pub module_count: usize,
}

/// What `combine` did (`--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CombineSummary {
    pub operation: &'static str,
    pub method: Method,
    pub out: String,
    pub format: Format,
    pub adapters: Vec<InputSummary>,
    /// Options that shaped the result (`rank`, `density`, `seed`, `majority_sign`, `pad`, only
    /// those the method uses).
    pub params: serde_json::Value,
    pub modules: Vec<ModuleCombine>,
    pub parameters: usize,
    pub files: Vec<String>,
    pub bytes_written: u64,
    pub seconds: f64,
}

fn options(a: &CombineArgs) -> Result<(CombineOptions, serde_json::Value)> {
    let m = a.method;
    if a.rank.is_some() && m != Method::Svd {
        bail!("--rank applies to --method svd only");
    }
    if a.rank == Some(0) {
        bail!("--rank must be at least 1");
    }
    if a.no_pad && m != Method::Cat {
        bail!("--no-pad applies to --method cat only");
    }
    match (m.uses_density(), a.density) {
        (true, None) => bail!(
            "--method {} needs --density (the fraction of entries kept, in (0, 1])",
            m.name()
        ),
        (false, Some(_)) => {
            bail!("--density applies to --method ties, dare_linear and dare_ties only")
        }
        (true, Some(d)) if !(d > 0.0 && d <= 1.0) => bail!("--density {d} must be in (0, 1]"),
        _ => {}
    }
    let mut params = serde_json::Map::new();
    params.insert("method".into(), json!(m));
    match m {
        Method::Cat => {
            params.insert("pad".into(), json!(!a.no_pad));
        }
        Method::Svd => {
            params.insert("rank".into(), json!(a.rank));
        }
        Method::Linear => {}
        Method::Ties => {
            params.insert("density".into(), json!(a.density));
            params.insert("majority_sign".into(), json!(a.majority_sign));
        }
        Method::DareLinear | Method::DareTies => {
            params.insert("density".into(), json!(a.density));
            params.insert("seed".into(), json!(a.seed));
            if m == Method::DareTies {
                params.insert("majority_sign".into(), json!(a.majority_sign));
            }
        }
    }
    let opts = CombineOptions {
        method: m,
        rank: a.rank,
        density: a.density,
        seed: a.seed,
        majority_sign: a.majority_sign,
        pad: !a.no_pad,
    };
    Ok((opts, serde_json::Value::Object(params)))
}

pub fn run(a: CombineArgs, quiet: bool) -> Result<i32> {
    let start = Instant::now();
    if !a.weights.is_empty() && a.weights.len() != a.adapters.len() {
        bail!(
            "{} --weight values for {} --adapter values; give one weight per adapter, or none",
            a.weights.len(),
            a.adapters.len()
        );
    }
    if let Some(w) = a.weights.iter().find(|w| !w.is_finite()) {
        bail!("--weight {w} is not a finite number");
    }
    let (opts, mut params) = options(&a)?;
    let mut adapters = Vec::with_capacity(a.adapters.len());
    for p in &a.adapters {
        let adapter = Adapter::open(p)?;
        adapter.check_plain_base("combining it")?;
        adapters.push(adapter);
    }
    let base = open_base(a.output.base.as_deref())?;
    let to = a.format.unwrap_or(adapters[0].format);
    let dtype = output::computed_dtype(a.output.dtype, &adapters[0]);
    let spec = WriteSpec {
        format: to,
        out: a.output.out.clone(),
        dtype: Some(dtype),
        kohya_prefix: a.output.prefix.clone(),
    };
    check_output(&spec, &adapters.iter().collect::<Vec<_>>(), base.as_ref())?;
    let weights: Vec<f64> = (0..adapters.len())
        .map(|i| a.weights.get(i).copied().unwrap_or(1.0))
        .collect();
    let mut summaries = Vec::new();
    let mut inputs = Vec::new();
    for ((adapter, weight), path) in adapters.into_iter().zip(&weights).zip(&a.adapters) {
        summaries.push(InputSummary {
            path: show(path),
            format: adapter.format,
            weight: *weight,
            module_count: adapter.modules.len(),
        });
        // LyCORIS modules take part as the exact LoRA form of their ΔW (every nonzero singular
        // triplet), so every method sees B and A.
        let mut adapter = crate::ops::resize::lower_exactly(adapter)?;
        convert::prepare(&mut adapter, to, base.as_ref())
            .map_err(super::convert::name_base_flag)?;
        inputs.push(WeightedInput {
            adapter,
            weight: *weight,
        });
    }
    let mut opts = opts;
    if opts.method == Method::Svd && opts.rank.is_none() {
        // PEFT's default: the largest input rank.
        let max = inputs
            .iter()
            .flat_map(|wi| wi.adapter.modules.iter().map(|m| m.rank))
            .max();
        opts.rank = Some(max.unwrap_or(1));
        if let Some(o) = params.as_object_mut() {
            o.insert("rank".into(), json!(opts.rank));
        }
    }
    let (combined, modules) = combine::combine(&inputs, &opts)?;
    if let (Method::Svd, Some(r)) = (opts.method, opts.rank) {
        let capped = modules.iter().filter(|m| m.rank < r).count();
        if capped > 0 {
            super::warn(
                quiet,
                &format!(
                    "--rank {r} capped at min(out, in) for {capped} of {} modules (a larger rank only adds zero columns)",
                    modules.len()
                ),
            );
        }
    }
    if let Some(o) = params.as_object_mut() {
        o.insert("weights".into(), json!(weights));
        o.insert("to".into(), json!(to));
        o.insert("dtype".into(), json!(a.output.dtype));
    }
    let mut input_list: Vec<serde_json::Value> = a
        .adapters
        .iter()
        .zip(&weights)
        .map(|(p, w)| json!({"path": show(p), "weight": w}))
        .collect();
    if let Some(b) = &a.output.base {
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
    let summary = CombineSummary {
        operation: "combine",
        method: opts.method,
        out: show(&a.output.out),
        format: to,
        adapters: summaries,
        params,
        parameters: combined.parameter_count(),
        modules,
        files: written.files.clone(),
        bytes_written: written.bytes,
        seconds: start.elapsed().as_secs_f64(),
    };
    super::print_report(a.output.json, "combine", &summary, || {
        render(&summary, &written)
    })?;
    Ok(0)
}

fn render(s: &CombineSummary, w: &output::Written) -> String {
    let mut out = format!(
        "combined ({}) → {} ({})\n\n",
        s.method.name(),
        s.out,
        s.format
    );
    out.push_str(&table_of(
        &["", "adapter", "format", "weight", "modules"],
        &[false, false, false, true, true],
        s.adapters.iter().enumerate(),
        |(i, a)| {
            vec![
                format!("#{i}"),
                a.path.clone(),
                a.format.to_string(),
                format!("{}", a.weight),
                a.module_count.to_string(),
            ]
        },
    ));
    out.push('\n');
    out.push_str(&table_of(
        &["module", "inputs (#:rank)", "rank", "energy kept"],
        &[false, false, true, true],
        s.modules.iter(),
        |m| {
            let from: Vec<String> = m
                .inputs
                .iter()
                .zip(&m.input_ranks)
                .map(|(i, r)| format!("#{i}:{r}"))
                .collect();
            vec![
                m.name.clone(),
                from.join(" "),
                m.rank.to_string(),
                m.energy_kept
                    .map(|e| format!("{:.2}%", 100.0 * e))
                    .unwrap_or_else(|| "-".into()),
            ]
        },
    ));
    out.push_str(&format!(
        "\n{} modules, {} parameters; {}\n",
        s.modules.len(),
        s.parameters,
        files_line(w, s.seconds)
    ));
    out
}
