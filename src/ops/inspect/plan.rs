//! The `inspect` operation as every operation is shaped: [`InspectOptions`] →
//! [`InspectPlan::new`] (the input's kind decided, the options checked against it, the input
//! opened and the plot's destination checked, before anything is computed or written) →
//! [`InspectPlan::run`] → [`Report`] (`Serialize`).
//!
//! Must not print: the report goes back to the caller (the binary renders it with
//! `commands::inspect::render_text` or as JSON), and no message names a command-line flag (options are
//! named through [`OptionError`]).

use super::report::{
    AdapterReport, CheckpointReport, DtypeStats, FactorRow, ModuleRow, QuantReport, QuantRow,
    Report, SpectrumRow, TensorRow,
};
use crate::adapter::Adapter;
use crate::adapter::{self, ModuleKind};
use crate::dtype;
use crate::error::{InputError, Opt, OptionError};
use crate::io::checkpoint::Layout;
use crate::io::gguf::GgufModel;
use crate::io::{Checkpoint, Output};
use anyhow::Result;
use ndarray::ArrayView2;
use std::collections::BTreeMap;
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
        } else if is_adapter(path) {
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
            // The format comes from the extension: another one is bad usage, refused before
            // the spectra are computed (it was "cannot write", exit 3, after them).
            let ext = plot.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext.to_ascii_lowercase().as_str(), "svg" | "png") {
                return Err(InputError::invalid(plot, "plot file must end in .svg or .png").into());
            }
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
        super::plot::plot_spectra(report, plot, &tmp).map_err(|e| {
            match e.downcast::<OptionError>() {
                Ok(o) => anyhow::Error::new(InputError::new(&self.path, o)),
                Err(e) => InputError::write(
                    plot,
                    std::io::Error::other(format!("cannot draw the plot: {e:#}")),
                )
                .into(),
            }
        })?;
        out.commit()?;
        Ok(())
    }
}

/// True when `path` is an adapter (a PEFT or mlx-lm folder, or a file with LoRA tensor names).
pub fn is_adapter(path: &Path) -> bool {
    if path.is_dir() {
        return path.join(adapter::formats::peft::WEIGHTS_NAME).exists()
            || path
                .join(adapter::formats::peft::PICKLE_WEIGHTS_NAME)
                .exists()
            || path.join(adapter::formats::mlx::WEIGHTS_NAME).exists();
    }
    match crate::io::SafetensorsFile::open(path) {
        Ok(f) => adapter::formats::detect(&f).is_some(),
        Err(_) => false,
    }
}

/// The quantization section: `None` for a float checkpoint without `quantization_config`.
fn quant_report(c: &Checkpoint) -> Result<Option<QuantReport>> {
    let map = crate::io::quant::QuantMap::scan(c)?;
    if map.is_empty() && map.config.is_none() && map.unsupported.is_empty() {
        return Ok(None);
    }
    let tensors: Vec<QuantRow> = map
        .iter()
        .map(|q| QuantRow {
            name: q.name.clone(),
            method: q.method(),
            bits: q.bits(),
            blocks: q.blocks(),
            shape: q.shape.clone(),
            dtype: dtype::name(q.natural_dtype()),
        })
        .collect();
    Ok(Some(QuantReport {
        config: map.config.clone(),
        companion_tensors: map.iter().map(|q| q.companions.len()).sum(),
        tensors,
        unreadable: map.unsupported.iter().map(|e| e.kind.to_string()).collect(),
    }))
}

fn checkpoint_report(c: &Checkpoint, opts: &InspectOptions) -> CheckpointReport {
    let mut dtypes: BTreeMap<String, DtypeStats> = BTreeMap::new();
    let mut params = 0u64;
    for (_, t) in c.infos() {
        let s = dtypes.entry(dtype::name(t.dtype)).or_insert(DtypeStats {
            tensor_count: 0,
            parameters: 0,
            bytes: 0,
        });
        s.tensor_count += 1;
        s.parameters += t.numel() as u64;
        s.bytes += t.byte_len();
        params += t.numel() as u64;
    }
    let file_name = |i: usize| {
        c.shards[i]
            .path()
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let tensor_list = opts.tensors.then(|| {
        c.infos()
            .map(|(s, t)| TensorRow {
                name: t.name.clone(),
                dtype: dtype::name(t.dtype),
                shape: t.shape.clone(),
                bytes: t.byte_len(),
                file: file_name(s),
            })
            .collect()
    });
    CheckpointReport {
        path: c.root.display().to_string(),
        layout: match c.layout {
            Layout::File => "file",
            Layout::Folder { .. } => "folder",
            Layout::Sharded { .. } => "sharded",
        },
        files: (0..c.shards.len()).map(file_name).collect(),
        tensor_count: c.len(),
        parameters: params,
        bytes: c.total_bytes(),
        dtypes,
        metadata: c.metadata().iter().cloned().collect(),
        tensors: tensor_list,
        quantization: None,
    }
}

fn adapter_report(a: &Adapter, opts: &InspectOptions) -> Result<AdapterReport> {
    let mut modules = Vec::new();
    for m in &a.modules {
        let spectrum = if opts.spectrum && !m.factors.needs_base() {
            let s = if m.factors.lora().is_some() {
                let (b, av) = a.factors(m)?;
                let bv = ArrayView2::from_shape((m.out_features, m.rank), b.as_slice())?;
                let avv = ArrayView2::from_shape((m.rank, m.in_features), av.as_slice())?;
                crate::linalg::spectrum_of_factors(bv, avv, m.scale as f32)
            } else {
                // No low-rank factors: the exact SVD of the rebuilt ΔW (d×k, small modules).
                let delta = a.delta(m)?;
                let dv = ArrayView2::from_shape((m.out_features, m.in_features), delta.as_slice())?;
                crate::linalg::spectrum_of_values(crate::linalg::exact_svd(dv).s.to_vec())
            };
            Some(SpectrumRow {
                singular_values: s.singular_values,
                fro_norm: s.fro_norm,
                rank90: s.rank90,
                rank99: s.rank99,
            })
        } else {
            None
        };
        let key_shape = |d: &adapter::Data, fallback: Vec<usize>| match (d, &a.source) {
            (adapter::Data::Stored { key, .. }, Some(src)) => {
                src.info(key).map(|i| i.shape.clone()).unwrap_or(fallback)
            }
            _ => fallback,
        };
        modules.push(ModuleRow {
            name: m.name.clone(),
            kind: m.kind.to_string(),
            rank: m.rank,
            alpha: m.alpha,
            scale: m.scale,
            shape: [m.out_features, m.in_features],
            algo: m.factors.algo(),
            a_shape: m
                .factors
                .lora()
                .map(|(d, _)| key_shape(d, vec![m.rank, m.in_features])),
            b_shape: m
                .factors
                .lora()
                .map(|(_, d)| key_shape(d, vec![m.out_features, m.rank])),
            factors: m
                .factors
                .data()
                .into_iter()
                .map(|d| FactorRow {
                    key: match d {
                        adapter::Data::Stored { key, .. } => key.clone(),
                        adapter::Data::Owned(_) => String::new(),
                    },
                    shape: key_shape(d, vec![a.numel(d)]),
                })
                .collect(),
            fan_in_fan_out: m.base_transposed && m.kind == ModuleKind::Linear,
            dora: m.dora_magnitude.is_some(),
            // RoAd's `bias` only marks the base bias for its rotation (peft/road.rs).
            bias: m.bias.is_some() && !matches!(m.factors, adapter::Factors::Road { .. }),
            spectrum,
        });
    }
    let bytes = a.source.as_ref().map(|s| s.header().data_len).unwrap_or(0);
    Ok(AdapterReport {
        path: a.path.display().to_string(),
        format: a.format,
        convention: adapter::convention::describe(a),
        peft_type: a
            .config
            .as_ref()
            .and_then(|c| c.get("peft_type")?.as_str())
            .filter(|t| *t != "LORA" && a.format == adapter::Format::Peft)
            .map(str::to_owned),
        base_model: a.base_model.clone(),
        use_rslora: a.use_rslora,
        dora: a.modules.iter().any(|m| m.dora_magnitude.is_some()),
        modules,
        modules_to_save: a.modules_to_save.clone(),
        full_tensors: a.full_tensors.iter().map(|f| f.name.clone()).collect(),
        bundled_embeddings: a.bundled_embeddings.clone(),
        parameters: a.parameter_count(),
        bytes,
        metadata: a.metadata.iter().cloned().collect(),
    })
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
