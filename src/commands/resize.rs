//! `lorakit resize`.
//!
//! Arguments → library options → plan → run → printed report. Must not validate or compute what the
//! library does, nor write to stdout/stderr except through `printer`.

use super::convert::{check_output, files_line, inputs_json, num, open_base, show};
use crate::adapter::{Adapter, Format};
use crate::cli::ResizeArgs;
use crate::inspect::table_of;
use crate::ops::convert;
use crate::ops::output::{self, Provenance, WriteSpec};
use crate::ops::resize::{self, ModuleResize, RankRule};
use anyhow::Result;
use serde_json::json;
use std::time::Instant;

/// What `resize` did (`--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResizeSummary {
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
    pub files: Vec<String>,
    pub bytes_written: u64,
    pub seconds: f64,
}

fn rule_of(a: &ResizeArgs) -> Result<RankRule> {
    // --rank is the fixed rank, or the cap of a dynamic rule.
    super::rank_rule(a.rank, a.energy, a.sv_ratio, a.rank, "--rank")
}

pub fn run(a: ResizeArgs, _quiet: bool) -> Result<i32> {
    let start = Instant::now();
    let rule = rule_of(&a)?;
    let mut adapter = Adapter::open(&a.adapter)?;
    adapter.check_plain_base("resizing it")?;
    let base = open_base(a.output.base.as_deref())?;
    let from = adapter.format;
    let to = a.format.unwrap_or(from);
    let dtype = output::computed_dtype(a.output.dtype, &adapter);
    let spec = WriteSpec {
        format: to,
        out: a.output.out.clone(),
        dtype: Some(dtype),
        kohya_prefix: a.output.prefix.clone(),
    };
    check_output(&spec, &[&adapter], base.as_ref())?;
    let parameters_before = adapter.parameter_count();
    convert::prepare(&mut adapter, to, base.as_ref()).map_err(super::convert::name_base_flag)?;
    let (mut resized, modules) = resize::resize(adapter, &rule)?;
    update_kohya_metadata(&mut resized, &modules);
    let prov = Provenance {
        operation: "resize",
        inputs: inputs_json(&[&a.adapter], a.output.base.as_deref()),
        params: json!({"rule": rule, "to": to, "dtype": a.output.dtype}),
    };
    let written = output::write_adapter(&resized, &spec, &prov)?;
    let (kept, total) = modules.iter().fold((0.0, 0.0), |(k, t), m| {
        let e = m.fro_norm * m.fro_norm;
        (k + e * m.energy_kept, t + e)
    });
    let summary = ResizeSummary {
        operation: "resize",
        input: show(&a.adapter),
        out: show(&a.output.out),
        from,
        to,
        rank_rule: serde_json::to_value(rule)?,
        modules_resized_count: modules.iter().filter(|m| m.changed).count(),
        modules,
        parameters_before,
        parameters_after: resized.parameter_count(),
        energy_kept: if total > 0.0 { kept / total } else { 1.0 },
        files: written.files.clone(),
        bytes_written: written.bytes,
        seconds: start.elapsed().as_secs_f64(),
    };
    super::print_report(a.output.json, "resize", &summary, || {
        render(&summary, &written)
    })?;
    Ok(0)
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

fn render(s: &ResizeSummary, w: &output::Written) -> String {
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
                format!("{:.2}%", 100.0 * m.energy_kept),
                format!("{:.4e}", m.fro_error),
            ]
        },
    ));
    out.push_str(&format!(
        "\n{} of {} modules resized, {} → {} parameters, {:.2}% of the energy kept; {}\n",
        s.modules_resized_count,
        s.modules.len(),
        s.parameters_before,
        s.parameters_after,
        100.0 * s.energy_kept,
        files_line(w, s.seconds)
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
