//! `lorakit resize`.
//!
//! Arguments → library options → plan → run → printed report. Must not validate or compute what the
//! library does, nor write to stdout/stderr except through `printer`.

use super::convert::{files_line, name_base_flag_any, num};
use super::options;
use super::printer;
use crate::cli::ResizeArgs;
use crate::inspect::table_of;
use crate::ops::resize::{RankRule, ResizeOptions, ResizePlan, ResizeReport};
use anyhow::Result;

fn rule_of(a: &ResizeArgs) -> Result<RankRule> {
    // --rank is the fixed rank, or the cap of a dynamic rule (also spelt --max-rank, as
    // extract spells it).
    let (cap, flag) = match a.max_rank {
        Some(m) => (Some(m), "--max-rank"),
        None => (a.rank, "--rank"),
    };
    options::rank_rule(a.rank, a.energy, a.sv_ratio, cap, flag)
}

/// The library options `a` asks for (the rank rule checked with its flags' names).
pub fn options(a: &ResizeArgs) -> Result<ResizeOptions> {
    Ok(ResizeOptions {
        adapter: a.adapter.clone(),
        rule: rule_of(a)?,
        output: options::output_options(a.format, &a.output),
    })
}

pub fn run(a: ResizeArgs, quiet: bool) -> Result<i32> {
    let plan = ResizePlan::new(options(&a)?).map_err(name_base_flag_any)?;
    let bundled = printer::bundled_warning(plan.adapter());
    let report = plan.run()?;
    // After the run, so that a failed run's stderr stays its one error line.
    if let Some(w) = bundled {
        printer::warn(quiet, &w);
    }
    printer::print_report(a.output.json, "resize", &report, || render(&report))?;
    Ok(0)
}

fn render(s: &ResizeReport) -> String {
    let mut out = format!(
        "resized {} ({}) → {} ({}), rule {}\n\n",
        s.input,
        s.from,
        s.out,
        s.to,
        rule_text(&s.rank_rule)
    );
    out.push_str(&table_of(
        &[
            "module",
            "rank",
            "→ rank",
            "alpha",
            "→ alpha",
            "scale",
            "energy kept",
            "‖ΔW−ΔW′‖_F",
        ],
        &[false, true, true, true, true, true, true, true],
        s.modules.iter(),
        |m| {
            vec![
                m.name.clone(),
                m.rank_before.to_string(),
                m.rank_after.to_string(),
                num(m.alpha_before),
                num(m.alpha_after),
                num(m.scale),
                printer::percent(m.energy_kept),
                format!("{:.4e}", m.fro_error),
            ]
        },
    ));
    out.push_str(&format!(
        "\n{} of {} modules resized, {} → {} parameters, {} of the energy kept; {}\n",
        s.modules_resized_count,
        s.modules.len(),
        s.parameters_before,
        s.parameters_after,
        printer::percent(s.energy_kept),
        files_line(&s.written, s.seconds)
    ));
    out
}

fn rule_text(r: &serde_json::Value) -> String {
    let max = r
        .get("max_rank")
        .and_then(|v| v.as_u64())
        .map(|m| format!(", at most rank {m}"))
        .unwrap_or_default();
    match r["rule"].as_str() {
        Some("rank") => format!("rank {}", r["rank"]),
        Some("energy") => format!("energy {}{max}", r["energy"]),
        _ => format!("sv_ratio {}{max}", r["sv_ratio"]),
    }
}
