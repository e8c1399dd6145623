//! The `inspect` operation as every operation is shaped: [`InspectOptions`] →
//! [`InspectPlan::new`] (the input's kind decided, the options checked against it, the input
//! opened and the plot's destination checked, before anything is computed or written) →
//! [`InspectPlan::run`] → [`Report`] (`Serialize`).
//!
//! Must not print: the report goes back to the caller (the binary renders it with
//! `commands::inspect::render_text` or as JSON), and no message names a command-line flag (options are
//! named through [`OptionError`]).

use super::{adapter_report, checkpoint_report, quant_report, AdapterReport, Report};
use crate::adapter::Adapter;
use crate::error::{InputError, Opt, OptionError};
use crate::io::gguf::GgufModel;
use crate::io::{Checkpoint, Output};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Options of `inspect`.
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// List a checkpoint's tensors (checkpoints and GGUF models only).
    pub tensors: bool,
    /// Compute each LoRA module's singular values (adapters only).
    pub spectrum: bool,
    /// Draw the spectra to this SVG or PNG file (adapters only; implies `spectrum`).
    pub plot: Option<PathBuf>,
}

/// The input, opened, with what was decided about its kind.
enum Source {
    Checkpoint(Checkpoint),
    Adapter(Box<Adapter>),
    Gguf(GgufModel),
}

/// A validated `inspect`: the input opened and of a kind the options apply to.
pub struct InspectPlan {
    path: PathBuf,
    source: Source,
    options: InspectOptions,
}

impl InspectPlan {
    /// Decides what `path` is (GGUF model, adapter or checkpoint), refuses options that mean
    /// nothing for that kind before reading more than its header, opens it, and checks that
    /// the plot (if any) is never written onto the input (or through a link to it).
    pub fn new(path: &Path, options: InspectOptions) -> Result<Self> {
        let spectrum = options.spectrum || options.plot.is_some();
        // The option that asked for a spectrum, as the message names it.
        let asked = if options.plot.is_some() {
            Opt::Plot
        } else {
            Opt::Spectrum
        };
        let source = if crate::io::gguf::is_gguf(path) {
            if spectrum {
                return Err(InputError::option(path, |o| {
                    format!(
                        "a GGUF model: {} and {} draw the singular values of an adapter's modules",
                        o.opt(Opt::Spectrum),
                        o.opt(Opt::Plot)
                    )
                })
                .into());
            }
            Source::Gguf(GgufModel::open(path)?)
        } else if super::is_adapter(path) {
            if options.tensors {
                return Err(InputError::option(path, |o| {
                    format!(
                        "an adapter: {} lists a checkpoint's tensors; an adapter's module table \
                         shows each module's A and B shapes (all of them in the JSON report)",
                        o.opt(Opt::Tensors)
                    )
                })
                .into());
            }
            Source::Adapter(Box::new(Adapter::open(path)?))
        } else {
            if spectrum {
                return Err(InputError::option(path, move |o| {
                    format!(
                        "a checkpoint, not an adapter: {} draws the singular values of an \
                         adapter's s·B·A per LoRA module (extract an adapter from a fine-tune \
                         first: lorakit extract {} {} {})",
                        o.opt(asked),
                        o.set(Opt::Base, "BASE"),
                        o.set(Opt::Tuned, "TUNED"),
                        o.set(Opt::Out, "ADAPTER")
                    )
                })
                .into());
            }
            Source::Checkpoint(Checkpoint::open(path)?)
        };
        if let Some(plot) = &options.plot {
            let mut reads = vec![path.to_path_buf()];
            if let Some(parent) = path.parent().filter(|_| path.is_file()) {
                reads.push(parent.join(crate::adapter::formats::peft::CONFIG_NAME));
            }
            crate::io::writer::check_writes(&reads, std::slice::from_ref(plot), &[])?;
        }
        Ok(InspectPlan {
            path: path.to_path_buf(),
            source,
            options: InspectOptions {
                spectrum,
                ..options
            },
        })
    }

    /// The report; with a plot asked, the spectra are drawn to it first (atomically: never a
    /// half-written file).
    pub fn run(&self) -> Result<Report> {
        let o = &self.options;
        let report = match &self.source {
            Source::Gguf(m) => Report::Gguf(super::gguf::report(m, &self.path, o.tensors)),
            Source::Adapter(a) => Report::Adapter(adapter_report(a, o)?),
            Source::Checkpoint(c) => {
                let mut report = checkpoint_report(c, o);
                report.quantization = quant_report(c)?;
                Report::Checkpoint(report)
            }
        };
        if let (Some(plot), Report::Adapter(ad)) = (&o.plot, &report) {
            self.write_plot(ad, plot)?;
        }
        Ok(report)
    }

    /// Draws the plot through the atomic writer. A drawing failure is a failure to write the
    /// plot (exit status 3 in the binary), except a report with nothing to draw, which is a
    /// usage error about the input.
    fn write_plot(&self, report: &AdapterReport, plot: &Path) -> Result<()> {
        let mut out = Output::new();
        out.create_dir_all(&crate::parts::out_dir(plot))?;
        let tmp = out.external_file(plot)?;
        super::plot_spectra(report, plot, &tmp).map_err(|e| match e.downcast::<OptionError>() {
            Ok(o) => anyhow::Error::new(InputError::new(&self.path, o)),
            Err(e) => InputError::write(
                plot,
                std::io::Error::other(format!("cannot draw the plot: {e:#}")),
            )
            .into(),
        })?;
        out.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(rel)
    }

    /// Options that mean nothing for the kind of input are refused naming the library option,
    /// before a report is built; the right kinds run.
    #[test]
    fn options_are_checked_against_the_kind_of_input() {
        let adapter = fixture("llama/adapters/qv_r8");
        let base = fixture("llama/base");
        let refused = |path: &Path, options: InspectOptions| -> Vec<Opt> {
            let e = InspectPlan::new(path, options).err().expect("refused");
            let i = e.downcast_ref::<InputError>().expect("an input error");
            assert_eq!(i.path, path);
            match &i.kind {
                crate::error::InputErrorKind::Option(o) => o.options(),
                k => panic!("not an option error: {k}"),
            }
        };
        let tensors = InspectOptions {
            tensors: true,
            ..Default::default()
        };
        assert_eq!(refused(&adapter, tensors.clone()), vec![Opt::Tensors]);
        let spectrum = InspectOptions {
            spectrum: true,
            ..Default::default()
        };
        assert_eq!(refused(&base, spectrum.clone())[0], Opt::Spectrum);
        let plot = InspectOptions {
            plot: Some("p.svg".into()),
            ..Default::default()
        };
        assert_eq!(refused(&base, plot)[0], Opt::Plot);
        let r = InspectPlan::new(&base, tensors).unwrap().run().unwrap();
        assert!(matches!(r, Report::Checkpoint(c) if c.tensors.is_some()));
        let r = InspectPlan::new(&adapter, spectrum).unwrap().run().unwrap();
        let Report::Adapter(a) = r else {
            panic!("an adapter report")
        };
        assert!(a.modules.iter().all(|m| m.spectrum.is_some()));
    }
}
