//! `inspect`: what a checkpoint or adapter holds, from headers alone unless a spectrum is asked.
//!
//! The report is one serialisable value ([`Report`]) printed either as aligned tables for
//! people or as JSON for scripts (schema in the README). Reading a checkpoint's report costs
//! what its headers cost; `--spectrum` reads adapter factors and computes the singular values
//! of `s·B·A` from the factors (QR of B and Aᵀ, SVD of the r×r core), never forming d×k.
//!
//! This file is the module's front: it re-exports the operation (`plan.rs`: options, plan, the
//! report builders), the report's shape (`report.rs`), the GGUF report and the plot, and keeps
//! the text helpers other commands borrow ([`table`], [`table_of`], [`human_bytes`],
//! [`human_count`]). Must not hold logic its children need: they import from each other, never
//! from here.

use std::fmt::Write as _;

pub mod gguf;
mod plan;
pub mod plot;
mod report;
pub use plan::{is_adapter, InspectOptions, InspectPlan};
pub use plot::plot_spectra;
pub use report::{
    AdapterReport, CheckpointReport, DtypeStats, FactorRow, ModuleRow, QuantReport, QuantRow,
    Report, SpectrumRow, TensorRow,
};

/// A [`table`] with one row per item of `items`, whose cells `row` gives.
pub fn table_of<T>(
    head: &[&str],
    right: &[bool],
    items: impl IntoIterator<Item = T>,
    row: impl FnMut(T) -> Vec<String>,
) -> String {
    let rows: Vec<Vec<String>> = items.into_iter().map(row).collect();
    table(head, &rows, right)
}

/// Aligned columns; `right[i]` right-aligns column i.
pub fn table(head: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let n = head.len();
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut s = String::new();
    let line = |cells: &[String], s: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = w[i] - c.chars().count();
                if right.get(i).copied().unwrap_or(false) {
                    format!("{}{c}", " ".repeat(pad))
                } else {
                    format!("{c}{}", " ".repeat(pad))
                }
            })
            .collect();
        let _ = writeln!(s, "{}", parts.join("  ").trim_end());
    };
    line(
        &head.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        &mut s,
    );
    line(
        &w.iter().map(|&x| "-".repeat(x)).collect::<Vec<_>>(),
        &mut s,
    );
    for r in rows {
        line(r, &mut s);
    }
    s
}

pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}

pub fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}
