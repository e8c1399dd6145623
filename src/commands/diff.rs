//! `lorakit diff`.

use crate::cli::DiffArgs;
use crate::diff::{diff, diff_gguf, DiffOptions, DiffReport};
use crate::inspect::table;
use crate::io::gguf;
use crate::io::Checkpoint;
use anyhow::Result;

pub fn run(mut a: DiffArgs) -> Result<i32> {
    a.a = crate::io::hub::resolve_input(&a.a)?;
    a.b = crate::io::hub::resolve_input(&a.b)?;
    anyhow::ensure!(
        a.tolerance >= 0.0 && a.tolerance.is_finite(),
        "--tolerance must be a finite number ≥ 0"
    );
    let opts = DiffOptions {
        tolerance: a.tolerance,
        max_abs: a.max_abs,
        common: a.common,
    };
    let report = match (gguf::is_gguf(&a.a), gguf::is_gguf(&a.b)) {
        (true, true) => {
            let (ga, gb) = (gguf::GgufModel::open(&a.a)?, gguf::GgufModel::open(&a.b)?);
            let name = |p: &std::path::Path| p.display().to_string();
            diff_gguf(&ga, &gb, name(&a.a), name(&a.b), &opts)?
        }
        (false, false) => diff(&Checkpoint::open(&a.a)?, &Checkpoint::open(&a.b)?, &opts)?,
        (ga, _) => {
            // One GGUF model, one Hugging Face checkpoint: compared in Hugging Face terms.
            let (gp, cp) = if ga { (&a.a, &a.b) } else { (&a.b, &a.a) };
            let g = gguf::GgufModel::open(gp)?;
            let c = Checkpoint::open(cp)?;
            let name = |p: &std::path::Path| p.display().to_string();
            crate::diff::diff_gguf_checkpoint(&g, &c, ga, (name(&a.a), name(&a.b)), &opts)?
        }
    };
    if a.json {
        super::print_json("diff", &report)?;
    } else {
        super::print(&render(&report, a.all))?;
    }
    Ok(if report.pass { 0 } else { 1 })
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
