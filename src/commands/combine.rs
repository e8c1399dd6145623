//! `lorakit combine`.
//!
//! Arguments → library options → plan → run → printed report. Must not validate or compute what the
//! library does, nor write to stdout/stderr except through `printer`.

use super::convert::{files_line, name_base_flag_any};
use super::options;
use super::printer;
use crate::cli::CombineArgs;
use crate::inspect::table_of;
use crate::ops::combine::{
    CombineInput, CombineOptions, CombinePlan, CombineReport, Method, MethodOptions,
};
use anyhow::{bail, Result};

/// The library options `a` asks for. What only the command line can get wrong is refused here:
/// `--weight` values that do not pair with the `--adapter` values, and `--no-pad` (which the
/// library's `pad = false` only states) with a method other than cat.
pub fn options(a: &CombineArgs) -> Result<CombineOptions> {
    if !a.weights.is_empty() && a.weights.len() != a.adapters.len() {
        bail!(
            "{} --weight values for {} --adapter values; give one weight per adapter, or none",
            a.weights.len(),
            a.adapters.len()
        );
    }
    if a.no_pad && a.method != Method::Cat {
        bail!("--no-pad applies to --method cat only");
    }
    Ok(CombineOptions {
        inputs: a
            .adapters
            .iter()
            .enumerate()
            .map(|(i, p)| CombineInput {
                adapter: p.clone(),
                weight: a.weights.get(i).copied().unwrap_or(1.0),
            })
            .collect(),
        method: MethodOptions {
            method: a.method,
            rank: a.rank,
            density: a.density,
            seed: a.seed,
            majority_sign: a.majority_sign,
            pad: !a.no_pad,
        },
        output: options::output_options(a.format, &a.output),
    })
}

pub fn run(a: CombineArgs, quiet: bool) -> Result<i32> {
    let plan = CombinePlan::new(options(&a)?).map_err(name_base_flag_any)?;
    let bundled: Vec<String> = plan
        .adapters()
        .filter_map(printer::bundled_warning)
        .collect();
    let report = plan.run()?;
    for w in bundled {
        printer::warn(quiet, &w);
    }
    if let Some((r, capped)) = report.svd_rank_capped() {
        printer::warn(
            quiet,
            &format!(
                "--rank {r} capped at min(out, in) for {capped} of {} modules (a larger rank only adds zero columns)",
                report.modules.len()
            ),
        );
    }
    printer::print_report(a.output.json, "combine", &report, || render(&report))?;
    Ok(0)
}

fn render(s: &CombineReport) -> String {
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
                    .map(printer::percent)
                    .unwrap_or_else(|| "-".into()),
            ]
        },
    ));
    out.push_str(&format!(
        "\n{} modules, {} parameters; {}\n",
        s.modules.len(),
        s.parameters,
        files_line(&s.written, s.seconds)
    ));
    out
}
