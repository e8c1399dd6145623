//! `lorakit inspect`.

use crate::cli::InspectArgs;
use crate::error::InputError;
use crate::inspect::{self, InspectOptions, Report};
use crate::io::Output;
use anyhow::Result;
use std::path::Path;

pub fn run(mut a: InspectArgs) -> Result<i32> {
    a.path = crate::io::hub::resolve_input(&a.path)?;
    let opts = InspectOptions {
        tensors: a.tensors,
        spectrum: a.spectrum || a.plot.is_some(),
    };
    if crate::io::gguf::is_gguf(&a.path) {
        return gguf(a, &opts);
    }
    // Flags that mean nothing for this kind of input are refused before anything is read.
    let adapter = inspect::is_adapter(&a.path);
    if adapter && a.tensors {
        return Err(InputError::invalid(
            &a.path,
            "an adapter: --tensors lists a checkpoint's tensors; an adapter's module table \
             shows each module's A and B shapes (all of them with --json)",
        )
        .into());
    }
    if !adapter && opts.spectrum {
        let flag = if a.plot.is_some() {
            "--plot"
        } else {
            "--spectrum"
        };
        return Err(InputError::invalid(
            &a.path,
            format!(
                "a checkpoint, not an adapter: {flag} draws the singular values of an \
                 adapter's s·B·A per LoRA module (extract an adapter from a fine-tune first: \
                 lorakit extract --base BASE --tuned TUNED --out ADAPTER)"
            ),
        )
        .into());
    }
    let report = inspect::inspect(&a.path, adapter, &opts)?;
    if let (Some(plot), Report::Adapter(ad)) = (&a.plot, &report) {
        write_plot(ad, &a.path, plot)?;
    }
    if a.json {
        super::print_json("inspect", &report)?;
    } else {
        super::print(&inspect::render_text(&report))?;
        if let Some(plot) = &a.plot {
            super::status(&format!("spectra drawn to {}", plot.display()));
        }
    }
    Ok(0)
}

/// Draws the plot through the one overwrite check and the atomic writer: never onto the
/// inspected adapter (or through a link to it), never a half-written file.
fn write_plot(report: &inspect::AdapterReport, input: &Path, plot: &Path) -> Result<()> {
    let mut reads = vec![input.to_path_buf()];
    if let Some(parent) = input.parent().filter(|_| input.is_file()) {
        reads.push(parent.join(crate::adapter::formats::peft::CONFIG_NAME));
    }
    crate::io::writer::check_writes(&reads, &[plot.to_path_buf()], &[])?;
    let mut out = Output::new();
    out.create_dir_all(&crate::parts::out_dir(plot))?;
    let tmp = out.external_file(plot)?;
    inspect::plot_spectra(report, plot, &tmp).map_err(|e| {
        InputError::write(
            plot,
            std::io::Error::other(format!("cannot draw the plot: {e:#}")),
        )
    })?;
    out.commit()?;
    Ok(())
}

/// A GGUF model: header facts only; `--spectrum`/`--plot` are adapter views.
fn gguf(a: InspectArgs, opts: &InspectOptions) -> Result<i32> {
    if opts.spectrum {
        return Err(InputError::invalid(
            &a.path,
            "a GGUF model: --spectrum and --plot draw the singular values of an adapter's modules",
        )
        .into());
    }
    let m = crate::io::gguf::GgufModel::open(&a.path)?;
    let report = Report::Gguf(inspect::gguf::report(&m, &a.path, a.tensors));
    if a.json {
        super::print_json("inspect", &report)?;
    } else {
        super::print(&inspect::render_text(&report))?;
    }
    Ok(0)
}
