//! `lorakit diff`.

use crate::diff::{diff, DiffOptions, DiffReport};
use crate::inspect::table;
use crate::io::Checkpoint;
use anyhow::Result;
use clap::{Args, ValueHint};
use std::path::PathBuf;

/// Compare two checkpoints tensor by tensor; exit 0 when they agree, 1 when they do not.
///
/// For each tensor: present in one only, dtype/shape differences, max absolute difference and
/// relative Frobenius difference ‖A − B‖/‖B‖ (f64). Float tensors pass when the relative
/// difference is ≤ --tolerance (default 0: values must be equal) and, with --max-abs, every
/// element is within it; float tensors in different dtypes (F32/F16/BF16/F64) are compared by
/// value and the dtype change is reported. Other dtypes must be byte-identical. A tensor in one
/// checkpoint only fails unless --common; another shape always fails.
///
/// The default tolerance 0 demands equal values. One bf16 rounding of an f32 tensor differs by
/// up to 2⁻⁹ ≈ 2e-3 relative per element (≈ 1.1e-3 relative Frobenius for random data), so
/// compare a bf16 merge with its f32 reference at --tolerance 4e-3.
///
/// Examples:
///   lorakit diff merged/ reference/                     # exact
///   lorakit diff merged.safetensors ref.safetensors --tolerance 1e-6
///   lorakit diff a/ b/ --json | jq '.tensors[] | select(.pass | not)'
///   lorakit diff merged/ changed-only.safetensors --common --tolerance 1e-6
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DiffArgs {
    /// First checkpoint (file or folder, or a repo id in the local Hugging Face cache).
    #[arg(value_hint = ValueHint::AnyPath)]
    pub a: PathBuf,
    /// Second checkpoint, the reference of the relative difference.
    #[arg(value_hint = ValueHint::AnyPath)]
    pub b: PathBuf,
    /// Largest accepted relative Frobenius difference per float tensor.
    #[arg(long, default_value_t = 0.0)]
    pub tolerance: f64,
    /// Largest accepted absolute difference of any element.
    #[arg(long)]
    pub max_abs: Option<f64>,
    /// Judge only the tensors both hold (a reference with just the changed tensors).
    #[arg(long)]
    pub common: bool,
    /// List every tensor, not only those that fail.
    #[arg(long)]
    pub all: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(mut a: DiffArgs) -> Result<i32> {
    a.a = crate::io::hub::resolve_input(&a.a)?;
    a.b = crate::io::hub::resolve_input(&a.b)?;
    anyhow::ensure!(
        a.tolerance >= 0.0 && a.tolerance.is_finite(),
        "--tolerance must be a finite number ≥ 0"
    );
    let (ca, cb) = (Checkpoint::open(&a.a)?, Checkpoint::open(&a.b)?);
    let report = diff(
        &ca,
        &cb,
        &DiffOptions {
            tolerance: a.tolerance,
            max_abs: a.max_abs,
            common: a.common,
        },
    )?;
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
