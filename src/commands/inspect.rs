//! `lorakit inspect`: arguments → [`InspectOptions`] → [`InspectPlan`] → report, printed as
//! tables or JSON.
//!
//! Must not validate or compute what [`InspectPlan`] does, nor write to stdout/stderr except
//! through `printer`.

use super::printer;
use crate::cli::InspectArgs;
use crate::inspect::{InspectOptions, InspectPlan};
use anyhow::Result;

mod render;
pub use render::render_text;

pub fn run(mut a: InspectArgs) -> Result<i32> {
    a.path = crate::io::hub::resolve_input(&a.path)?;
    let plan = InspectPlan::new(&a.path, options(&a))?;
    let report = plan.run()?;
    if a.json {
        printer::print_json("inspect", &report)?;
    } else {
        printer::print(&render_text(&report))?;
        if let Some(plot) = &a.plot {
            printer::status(&format!("spectra drawn to {}", plot.display()));
        }
    }
    Ok(0)
}

/// The library options `a` asks for.
pub fn options(a: &InspectArgs) -> InspectOptions {
    InspectOptions {
        tensors: a.tensors,
        spectrum: a.spectrum,
        plot: a.plot.clone(),
    }
}
