//! `lorakit diff`: arguments → [`DiffOptions`] → [`DiffPlan`] → report, printed as a table of
//! the failing tensors (all of them with `--all`) or JSON; exit status 1 when one fails.
//!
//! Must not validate or compute what [`DiffPlan`] does, nor write to stdout/stderr except through
//! `printer`.

use super::printer;
use crate::cli::DiffArgs;
use crate::diff::{DiffOptions, DiffPlan, DiffReport};
use crate::inspect::table;
use anyhow::Result;

pub fn run(mut a: DiffArgs) -> Result<i32> {
    a.a = crate::io::hub::resolve_input(&a.a)?;
    a.b = crate::io::hub::resolve_input(&a.b)?;
    let report = DiffPlan::new(&a.a, &a.b, options(&a))?.run()?;
    printer::print_report(a.json, "diff", &report, || render(&report, a.all))?;
    Ok(if report.pass { 0 } else { 1 })
}

/// The library options `a` asks for.
pub fn options(a: &DiffArgs) -> DiffOptions {
    DiffOptions {
        tolerance: a.tolerance,
        max_abs: a.max_abs,
        common: a.common,
    }
}

fn render(r: &DiffReport, all: bool) -> String {
    let fmt = |x: Option<f64>| x.map(|v| format!("{v:.3e}")).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = r
        .tensors
        .iter()
        .filter(|t| all || !t.pass)
        .map(|t| {
            let what = match t.presence {
                "only_a" => "only in A".to_string(),
                "only_b" => "only in B".to_string(),
                _ if t.dtype_a != t.dtype_b => format!(
                    "dtype {} vs {}",
                    t.dtype_a.as_deref().unwrap_or("?"),
                    t.dtype_b.as_deref().unwrap_or("?")
                ),
                _ if t.shape_a != t.shape_b => format!(
                    "shape {:?} vs {:?}",
                    t.shape_a.clone().unwrap_or_default(),
                    t.shape_b.clone().unwrap_or_default()
                ),
                _ if t.identical => "identical".into(),
                _ => "values".into(),
            };
            vec![
                t.name.clone(),
                what,
                fmt(t.max_abs_diff),
                fmt(t.rel_fro_diff),
                if t.pass { "ok" } else { "FAIL" }.into(),
            ]
        })
        .collect();
    let mut s = String::new();
    if !rows.is_empty() {
        s.push_str(&table(
            &["tensor", "difference", "max |a-b|", "rel fro", ""],
            &rows,
            &[false, false, true, true, false],
        ));
        s.push('\n');
    }
    s.push_str(&format!(
        "{}: {} tensors compared, {} identical, {} failed, {} only in A, {} only in B; max rel {:.3e}, max abs {:.3e} (tolerance {:e})\n",
        if r.pass { "PASS" } else { "FAIL" },
        r.tensors_compared,
        r.identical,
        r.failed,
        r.only_in_a,
        r.only_in_b,
        r.max_rel_fro_diff,
        r.max_abs_diff,
        r.tolerance
    ));
    s
}
