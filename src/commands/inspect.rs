//! `lorakit inspect`.

use crate::cli::InspectArgs;
use crate::inspect::{self, InspectOptions, Report};
use anyhow::Result;

pub fn run(a: InspectArgs) -> Result<i32> {
    let opts = InspectOptions {
        tensors: a.tensors,
        spectrum: a.spectrum || a.plot.is_some(),
    };
    let report = inspect::inspect(&a.path, &opts)?;
    if let Some(plot) = &a.plot {
        match &report {
            Report::Adapter(ad) => inspect::plot_spectra(ad, plot)?,
            Report::Checkpoint(_) => anyhow::bail!(
                "{}: --plot needs an adapter (spectra are per LoRA module)",
                a.path.display()
            ),
        }
    }
    if a.json {
        super::print_json(&report)?;
    } else {
        super::print(&inspect::render_text(&report))?;
        if let Some(plot) = &a.plot {
            eprintln!("spectra drawn to {}", plot.display());
        }
    }
    Ok(0)
}
