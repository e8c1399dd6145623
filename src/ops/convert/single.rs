//! The `convert` targets written by their own single-file writers rather than as adapter
//! files: a diffusers single file ([`DiffusersPlan`], written by
//! [`crate::adapter::formats::diffusers::write`]) and a llama.cpp GGUF adapter ([`GgufPlan`],
//! [`crate::adapter::formats::gguf::write`]). Each has the operation's shape: options →
//! `new` (inputs opened, every option and name checked, nothing written) → `run` (written
//! atomically) → a serialisable report.
//!
//! Must not parse flags or print: options are named as [`Opt`]s; `commands/convert.rs` renders
//! the reports.

use super::names::{check_onto, prepare, NameSource};
use super::options::{check_output, ConvertOptions, ConvertTo};
use crate::adapter::formats::{diffusers as d, gguf as g, kohya};
use crate::adapter::mapping::layouts;
use crate::adapter::{Adapter, Format, LoraModule};
use crate::error::{InputError, InputResult, Opt, OptionError};
use crate::io::gguf::GgmlType;
use crate::io::Checkpoint;
use crate::ops::output::{self, DtypeChoice, WriteSpec, Written};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `convert --to diffusers` did (`--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiffusersConvertReport {
    pub operation: &'static str,
    pub input: String,
    pub out: String,
    pub to: &'static str,
    pub base: Option<String>,
    pub component: Option<String>,
    pub names_from: NameSource,
    pub module_count: usize,
    /// The files written and their bytes (`files`, `bytes_written`).
    #[serde(flatten)]
    pub written: Written,
    pub seconds: f64,
}

/// What `convert --to gguf` did (`--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GgufConvertReport {
    pub operation: &'static str,
    pub input: String,
    pub out: String,
    pub to: &'static str,
    pub base: String,
    pub architecture: String,
    /// `adapter.lora.alpha` as written (llama.cpp scales each pair by alpha / rank).
    pub alpha: f64,
    pub dtype: String,
    pub modules: Vec<g::Written>,
    /// Modules whose PEFT scale differs from alpha / rank, folded into B.
    pub folded_count: usize,
    /// The files written and their bytes (`files`, `bytes_written`).
    #[serde(flatten)]
    pub written: Written,
    pub seconds: f64,
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// Resolves `adapter`'s modules on a diffusers pipeline folder `dir` (`model_index.json`,
/// `unet/`, `text_encoder/`, …; rev16c F5): each module on its component's folder (its dotted
/// component, else its kohya prefix's, `lora_unet` being the folder's `unet/` or, without one,
/// its `transformer/`, else `fallback`), named `{component}.{path}`. Returns where the names
/// came from and each module's name as the input gave it.
fn onto_pipeline(
    adapter: &mut Adapter,
    dir: &Path,
    spec: &WriteSpec,
    kohya_names: bool,
    fallback: Option<&'static str>,
) -> InputResult<(NameSource, Vec<String>)> {
    // The pipeline's own files are inputs too, those of the components no module uses
    // included: no output may replace its model_index.json or a component's weights.
    let mut inputs = output::adapter_inputs(adapter);
    inputs.extend([dir.join("model_index.json"), dir.to_path_buf()]);
    let entries = std::fs::read_dir(dir).map_err(|e| InputError::io(dir, e))?;
    for sub in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        if let Ok(files) = std::fs::read_dir(&sub) {
            inputs.extend(files.flatten().map(|e| e.path()));
        }
        inputs.push(sub);
    }
    output::check_output_fixed(spec, &inputs)?;
    let has = |c: &str| dir.join(c).is_dir();
    let denoiser = if has("unet") { "unet" } else { "transformer" };
    let format = adapter.format;
    let mut groups: Vec<(&'static str, Vec<LoraModule>)> = Vec::new();
    for mut m in std::mem::take(&mut adapter.modules) {
        let dotted = d::COMPONENTS
            .iter()
            .find(|c| m.name.strip_prefix(**c).is_some_and(|r| r.starts_with('.')));
        let comp = match dotted {
            Some(c) => {
                m.name = m.name[c.len() + 1..].to_owned();
                Some(*c)
            }
            None => kohya::split_prefix(&m.name)
                .and_then(|(p, _)| d::component_of_kohya_prefix(p))
                .or(fallback),
        };
        let comp = match comp {
            Some("unet") => denoiser,
            Some(c) => c,
            None => {
                return Err(InputError::invalid(
                    &adapter.path,
                    format!(
                        "module `{}` names no pipeline component ({})",
                        m.name,
                        d::COMPONENTS.join(", ")
                    ),
                ))
            }
        };
        match groups.iter_mut().find(|(c, _)| *c == comp) {
            Some((_, g)) => g.push(m),
            None => groups.push((comp, vec![m])),
        }
    }
    let (mut modules, mut origins) = (Vec::new(), Vec::new());
    for (comp, group) in groups {
        let folder = dir.join(comp);
        if !folder.is_dir() {
            let wanted = match comp {
                "unet" | "transformer" => "`unet/` or `transformer/` folder".to_owned(),
                _ => format!("`{comp}/` folder"),
            };
            return Err(InputError::invalid(
                &adapter.path,
                format!(
                    "module `{}` is for the pipeline component `{comp}`, and {} has no {wanted}",
                    group[0].name,
                    dir.display()
                ),
            ));
        }
        let ck = Checkpoint::open(&folder)?;
        check_output(spec, adapter, Some(&ck))?;
        adapter.format = format;
        adapter.modules = group;
        let before = if kohya_names {
            prepare(adapter, Format::Peft, Some(&ck))?.names_before
        } else {
            check_onto(adapter, &ck)?;
            adapter
                .modules
                .iter()
                .map(|m| format!("{comp}.{}", m.name))
                .collect()
        };
        for mut m in std::mem::take(&mut adapter.modules) {
            m.name = format!("{comp}.{}", m.name);
            modules.push(m);
        }
        origins.extend(before);
    }
    adapter.modules = modules;
    adapter.format = Format::Peft;
    let from = if kohya_names {
        NameSource::Base
    } else {
        NameSource::Adapter
    };
    Ok((from, origins))
}

/// A checked conversion to a diffusers single file: module names made dotted (kohya names
/// resolved against the base) and given their pipeline component, the output checked.
pub struct DiffusersPlan {
    opts: ConvertOptions,
    adapter: Adapter,
    spec: WriteSpec,
    /// The component of names that carry none (from `prefix`).
    fallback: Option<&'static str>,
    names_from: NameSource,
    start: Instant,
}

impl DiffusersPlan {
    /// Opens the adapter (and base), refuses an output that is an input, a `prefix` that names
    /// no pipeline component, and names that do not resolve or land on the base.
    pub fn new(opts: ConvertOptions) -> Result<DiffusersPlan> {
        debug_assert_eq!(opts.to, ConvertTo::Diffusers);
        let start = Instant::now();
        let mut adapter = Adapter::open(&opts.adapter)?;
        adapter.check_plain_base("converting it")?;
        // A diffusers pipeline folder: each module resolved on its component's folder.
        let pipeline = opts
            .base
            .as_deref()
            .filter(|b| b.join("model_index.json").is_file());
        let base = match pipeline {
            Some(_) => None,
            None => opts.base.as_deref().map(Checkpoint::open).transpose()?,
        };
        let spec = WriteSpec {
            format: Format::Kohya,
            out: opts.out.clone(),
            dtype: output::copy_dtype(opts.dtype),
            kohya_prefix: None,
        };
        check_output(&spec, &adapter, base.as_ref())?;
        let fallback = match opts.prefix.as_deref() {
            None => None,
            Some(p) => Some(d::component_of_kohya_prefix(p).ok_or_else(|| {
                let p = p.to_owned();
                OptionError::new(move |o| {
                    format!(
                        "{} names no diffusers pipeline component",
                        o.set(Opt::Prefix, &p)
                    )
                })
            })?),
        };
        let kohya_names = !adapter.format.layout().names_are_paths()
            && adapter.modules.iter().any(|m| !m.name.contains('.'));
        // Each module's name as the input gave it (a module split over several base tensors
        // reports the one it came from).
        let (names_from, origins) = if let Some(dir) = pipeline {
            onto_pipeline(&mut adapter, dir, &spec, kohya_names, fallback)?
        } else if kohya_names {
            let p = prepare(&mut adapter, Format::Peft, base.as_ref())?;
            (p.names_from, p.names_before)
        } else {
            if let Some(b) = base.as_ref() {
                check_onto(&adapter, b)?;
            }
            let names = adapter.modules.iter().map(|m| m.name.clone()).collect();
            (NameSource::Adapter, names)
        };
        // The pipeline component of each module: a dotted name's own, else its kohya prefix's
        // (lora_unet → the denoiser: unet or transformer), else the prefix option's.
        let rel = |name: &str| -> String {
            // ai-toolkit's `diffusion_model.` root is the denoiser itself, not a layer.
            name.strip_prefix("diffusion_model.")
                .unwrap_or(name)
                .to_owned()
        };
        let paths: Vec<String> = adapter.modules.iter().map(|m| rel(&m.name)).collect();
        let denoiser = match base.as_ref() {
            Some(b) => d::denoiser_of(b.names()),
            None => d::denoiser_of(paths.iter().map(String::as_str)),
        };
        // A base in an original single-file layout is refused whole: diffusers names none of
        // its denoiser's modules (a top-level one like BFL's `img_in` included).
        let original = |p: &str| d::original_layout(p) || layouts::original_layout_path(p);
        // Scanned once, and only if a denoiser module is converted onto a base.
        let original_base = std::cell::OnceCell::new();
        let original_base = || {
            original_base.get_or_init(|| {
                base.as_ref().and_then(|b| {
                    b.names()
                        .map(|n| n.strip_suffix(".weight").unwrap_or(n))
                        .find(|p| original(p))
                        .map(str::to_owned)
                })
            })
        };
        for ((m, origin), path) in adapter.modules.iter_mut().zip(&origins).zip(paths) {
            if d::has_component(&m.name) {
                continue;
            }
            let own =
                kohya::split_prefix(origin).and_then(|(p, _)| d::component_of_kohya_prefix(p));
            let Some(c) = own.or(fallback) else { continue };
            let c = if c == "unet" { denoiser } else { c };
            if c == "unet" || c == "transformer" {
                let on = match (original_base(), base.as_ref()) {
                    (Some(t), Some(b)) => Some(format!("base {} holds `{t}`", b.root.display())),
                    (None, None) if original(&path) => Some(format!("it is `{path}`")),
                    _ => None,
                };
                if let Some(on) = on {
                    return Err(InputError::invalid(
                        &adapter.path,
                        format!(
                            "module `{origin}`: {on}, a name of the model's original single-file layout, which diffusers names otherwise; convert onto the model in diffusers' layout (the pipeline's `unet/` or `transformer/` folder)"
                        ),
                    )
                    .into());
                }
            }
            m.name = format!("{c}.{path}");
        }
        Ok(DiffusersPlan {
            opts,
            adapter,
            spec,
            fallback,
            names_from,
            start,
        })
    }

    /// Writes the file (atomically, provenance in its metadata).
    pub fn run(self) -> InputResult<DiffusersConvertReport> {
        let spec = &self.spec;
        let mut out = output::single_file_output(&spec.out)?;
        let mut meta = output::provenance_head("convert").to_vec();
        meta.push((
            "lorakit.inputs".to_owned(),
            output::inputs_json(&[&self.opts.adapter], self.opts.base.as_deref()).to_string(),
        ));
        d::write(
            &self.adapter,
            self.fallback,
            &spec.out,
            &mut out,
            spec.dtype,
            &meta,
        )?;
        let bytes = out.commit()?;
        Ok(DiffusersConvertReport {
            operation: "convert",
            input: show(&self.opts.adapter),
            out: show(&spec.out),
            to: "diffusers",
            base: self.opts.base.as_deref().map(show),
            component: self.fallback.map(str::to_owned),
            names_from: self.names_from,
            module_count: self.adapter.modules.len(),
            written: Written {
                files: vec![show(&spec.out)],
                bytes,
            },
            seconds: self.start.elapsed().as_secs_f64(),
        })
    }
}

/// A checked conversion to a llama.cpp GGUF adapter: the base's architecture and head counts
/// read, the tensor type chosen.
pub struct GgufPlan {
    opts: ConvertOptions,
    base: PathBuf,
    adapter: Adapter,
    target: g::Target,
    ty: GgmlType,
    start: Instant,
}

impl GgufPlan {
    /// Opens the adapter and the base (required: llama.cpp's layout depends on the
    /// architecture and head counts); refuses a kohya prefix, which GGUF has no use for.
    pub fn new(opts: ConvertOptions) -> Result<GgufPlan> {
        debug_assert_eq!(opts.to, ConvertTo::Gguf);
        let start = Instant::now();
        let base = opts.base.clone().ok_or_else(|| {
            InputError::option(&opts.adapter, |o| {
                format!(
                    "{} needs {}: a GGUF model or a Hugging Face folder, for the architecture and head counts llama.cpp's tensor layout depends on",
                    o.set(Opt::To, "gguf"),
                    o.opt(Opt::Base)
                )
            })
        })?;
        if opts.prefix.is_some() {
            anyhow::bail!(OptionError::new(|o| format!(
                "{} names kohya modules; it means nothing for {}",
                o.opt(Opt::Prefix),
                o.set(Opt::To, "gguf")
            )));
        }
        let adapter = Adapter::open(&opts.adapter)?;
        adapter.check_plain_base("converting it")?;
        let target = g::Target::open(&base)?;
        let ty = match opts.dtype {
            DtypeChoice::F32 => GgmlType::F32,
            DtypeChoice::F16 => GgmlType::F16,
            DtypeChoice::Bf16 => GgmlType::BF16,
            // llama.cpp's converter writes f32 unless told otherwise; keep stores the input's.
            DtypeChoice::Keep => match output::stored_dtype(&adapter) {
                Some(crate::dtype::Dtype::F16) => GgmlType::F16,
                Some(crate::dtype::Dtype::BF16) => GgmlType::BF16,
                _ => GgmlType::F32,
            },
        };
        Ok(GgufPlan {
            opts,
            base,
            adapter,
            target,
            ty,
            start,
        })
    }

    /// Writes the GGUF adapter (atomically, provenance in its metadata).
    pub fn run(self) -> InputResult<GgufConvertReport> {
        let mut extra = output::provenance_head_gguf("convert");
        extra.push(crate::io::gguf::writer::kv_string(
            "lorakit.inputs",
            &output::inputs_json(&[&self.opts.adapter], Some(&self.base)).to_string(),
        ));
        let (modules, bytes) = g::write(
            &self.adapter,
            &self.target,
            self.ty,
            self.opts.dtype == DtypeChoice::Keep,
            &self.opts.out,
            extra,
        )?;
        Ok(GgufConvertReport {
            operation: "convert",
            input: show(&self.opts.adapter),
            out: show(&self.opts.out),
            to: "gguf",
            base: show(&self.base),
            architecture: self.target.architecture.clone(),
            alpha: g::file_alpha(&self.adapter),
            dtype: self.ty.name().to_lowercase(),
            folded_count: modules.iter().filter(|m| m.folded != 1.0).count(),
            modules,
            written: Written {
                files: vec![show(&self.opts.out)],
                bytes,
            },
            seconds: self.start.elapsed().as_secs_f64(),
        })
    }
}
