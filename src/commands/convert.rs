//! `lorakit convert`: flags → [`ConvertOptions`] → plan → run → printed report, plus the
//! diffusers and GGUF targets, which write through their own writers. `resize` and `combine`
//! borrow its printing helpers (`files_line`, `num`, `name_base_flag`).
//!
//! Must not: decide a conversion (the library does) or print outside `commands::printer`'s rules.

use crate::adapter::{Adapter, Format};
use crate::cli::ConvertArgs;
use crate::inspect::{human_bytes, table_of};
use crate::io::Checkpoint;
use crate::ops::convert::{
    self, ConvertOptions, ConvertPlan, ConvertReport, ConvertTo, NameSource,
};
use crate::ops::output::{self, DtypeChoice, WriteSpec, Written};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `lorakit convert`: args → [`ConvertOptions`] → [`ConvertPlan`] → run → print. GGUF and
/// diffusers single files have their own writers below.
pub fn run(a: ConvertArgs, quiet: bool) -> Result<i32> {
    let start = Instant::now();
    if a.to.format().is_none() {
        return match a.to {
            ConvertTo::Diffusers => diffusers(a, start),
            _ => gguf(a, start),
        };
    }
    let opts = ConvertOptions {
        adapter: a.adapter.clone(),
        to: a.to,
        out: a.output.out.clone(),
        base: a.output.base.clone(),
        dtype: a.output.dtype,
        prefix: a.output.prefix.clone(),
    };
    let plan = ConvertPlan::new(opts).map_err(name_base_flag)?;
    let report = plan.run()?;
    if report.from == Format::Kohya && a.to == ConvertTo::Kohya
        || report.from == Format::Peft && a.to == ConvertTo::Peft
    {
        super::warn(
            quiet,
            &format!(
                "{} is already {}; rewrote it",
                a.adapter.display(),
                report.from
            ),
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    if a.output.json {
        #[derive(serde::Serialize)]
        struct WithTime<'a> {
            #[serde(flatten)]
            report: &'a ConvertReport,
            seconds: f64,
        }
        super::print_json(
            "convert",
            &WithTime {
                report: &report,
                seconds,
            },
        )?;
    } else {
        super::print(&render(&report, seconds))?;
    }
    Ok(0)
}

fn render(s: &ConvertReport, seconds: f64) -> String {
    let names = match s.names_from {
        NameSource::Adapter => String::new(),
        NameSource::Metadata => ", module paths from lorakit metadata".into(),
        NameSource::Base => format!(
            ", module paths from {}",
            s.base.as_deref().unwrap_or("the base")
        ),
    };
    let mut out = format!(
        "converted {} ({}) → {} ({}){names}{}\n\n",
        s.input,
        s.from,
        s.out,
        to_name(s.to),
        if s.config_restored {
            ", PEFT config restored"
        } else {
            ""
        }
    );
    let head_from = format!("module ({})", s.from);
    let head_to = format!("module ({})", to_name(s.to));
    out.push_str(&table_of(
        &[
            &head_from,
            &head_to,
            "algo",
            "rank",
            "alpha in",
            "alpha out",
            "scale",
        ],
        &[false, false, false, true, true, true, true],
        s.modules.iter(),
        |m| {
            vec![
                m.from.clone(),
                m.to.clone(),
                m.algo.to_string(),
                m.rank.to_string(),
                num(m.alpha_in),
                num(m.alpha_out),
                match m.folded {
                    Some(f) => format!("{} (folded into w1)", num(f)),
                    None => num(m.scale),
                },
            ]
        },
    ));
    out.push_str(&format!(
        "\n{} modules, {} metadata entries kept, {} files, {} written in {:.2} s\n",
        s.modules.len(),
        s.metadata_kept_count,
        s.files.len(),
        human_bytes(s.bytes_written),
        seconds
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// Shared by resize, combine and convert.

/// Opens `--base` when given.
pub(crate) fn open_base(path: Option<&Path>) -> Result<Option<Checkpoint>> {
    Ok(path.map(Checkpoint::open).transpose()?)
}

/// Refuses an output that is an input (adapters, their configs, the base) before any work.
pub(crate) fn check_output(
    spec: &WriteSpec,
    adapters: &[&Adapter],
    base: Option<&Checkpoint>,
) -> Result<()> {
    let mut inputs: Vec<PathBuf> = adapters
        .iter()
        .flat_map(|a| output::adapter_inputs(a))
        .collect();
    if let Some(b) = base {
        inputs.extend(b.input_paths());
        inputs.push(b.root.clone());
    }
    output::check_output(spec, &inputs)?;
    Ok(())
}

pub(crate) use crate::ops::output::inputs_json;

/// The library's "the base model … is needed" error, with the flag that gives it named (the
/// library never names flags).
pub(crate) fn name_base_flag(e: crate::error::InputError) -> anyhow::Error {
    if e.to_string().ends_with(convert::NEEDS_BASE) {
        anyhow::anyhow!("{e} (give --base)")
    } else {
        e.into()
    }
}

/// The target's name as `--to` spells it.
fn to_name(t: ConvertTo) -> &'static str {
    match t {
        ConvertTo::Peft => "peft",
        ConvertTo::Kohya => "kohya",
        ConvertTo::Gguf => "gguf",
        ConvertTo::Diffusers => "diffusers",
        ConvertTo::Lycoris => "lycoris",
        ConvertTo::Comfy => "comfy",
    }
}

pub(crate) fn show(p: &Path) -> String {
    p.display().to_string()
}

/// A number as in the tables: integers plainly, others with up to 6 significant digits.
pub(crate) fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        let s = format!("{x:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The files line of the text reports.
pub(crate) fn files_line(w: &Written, seconds: f64) -> String {
    format!(
        "{} files, {} written in {:.2} s",
        w.files.len(),
        human_bytes(w.bytes),
        seconds
    )
}

/// What `convert --to gguf` did (`--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GgufConvertSummary {
    pub operation: &'static str,
    pub input: String,
    pub out: String,
    pub to: &'static str,
    pub base: String,
    pub architecture: String,
    /// `adapter.lora.alpha` as written (llama.cpp scales each pair by alpha / rank).
    pub alpha: f64,
    pub dtype: String,
    pub modules: Vec<crate::adapter::formats::gguf::Written>,
    /// Modules whose PEFT scale differs from alpha / rank, folded into B.
    pub folded_count: usize,
    pub files: Vec<String>,
    pub bytes_written: u64,
    pub seconds: f64,
}

/// What `convert --to diffusers` did (`--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiffusersConvertSummary {
    pub operation: &'static str,
    pub input: String,
    pub out: String,
    pub to: &'static str,
    pub base: Option<String>,
    pub component: Option<String>,
    pub names_from: NameSource,
    pub module_count: usize,
    pub files: Vec<String>,
    pub bytes_written: u64,
    pub seconds: f64,
}

/// `convert --to diffusers`: names made dotted (kohya names resolved against `--base`), then
/// written by [`crate::adapter::formats::diffusers::write`] through the atomic writer.
fn diffusers(a: ConvertArgs, start: Instant) -> Result<i32> {
    use crate::adapter::formats::diffusers as d;
    let mut adapter = Adapter::open(&a.adapter)?;
    adapter.check_plain_base("converting it")?;
    let base = open_base(a.output.base.as_deref())?;
    let spec = WriteSpec {
        format: Format::Kohya,
        out: a.output.out.clone(),
        dtype: output::copy_dtype(a.output.dtype),
        kohya_prefix: None,
    };
    check_output(&spec, &[&adapter], base.as_ref())?;
    // The pipeline component of each module: a dotted name's own, else its kohya prefix's
    // (lora_unet → unet, …), else --prefix's.
    let from_kohya: Vec<Option<&'static str>> = adapter
        .modules
        .iter()
        .map(|m| {
            crate::adapter::formats::kohya::split_prefix(&m.name)
                .and_then(|(p, _)| d::component_of_kohya_prefix(p))
        })
        .collect();
    let fallback = match a.output.prefix.as_deref() {
        None => None,
        Some(p) => Some(d::component_of_kohya_prefix(p).ok_or_else(|| {
            anyhow::anyhow!("--prefix {p} names no diffusers pipeline component")
        })?),
    };
    let kohya_names =
        adapter.format == Format::Kohya && adapter.modules.iter().any(|m| !m.name.contains('.'));
    let names_from = if kohya_names {
        convert::prepare(&mut adapter, Format::Peft, base.as_ref())
            .map_err(name_base_flag)?
            .names_from
    } else {
        if let Some(b) = base.as_ref() {
            convert::check_onto(&adapter, b)?;
        }
        NameSource::Adapter
    };
    for (m, comp) in adapter.modules.iter_mut().zip(from_kohya) {
        if let (Some(c), false) = (comp, d::has_component(&m.name)) {
            m.name = format!("{c}.{}", m.name);
        }
    }
    let mut out = output::single_file_output(&spec.out)?;
    let mut meta = output::provenance_head("convert").to_vec();
    meta.push((
        "lorakit.inputs".to_owned(),
        inputs_json(&[&a.adapter], a.output.base.as_deref()).to_string(),
    ));
    d::write(&adapter, fallback, &spec.out, &mut out, spec.dtype, &meta)?;
    let bytes = out.commit()?;
    let s = DiffusersConvertSummary {
        operation: "convert",
        input: show(&a.adapter),
        out: show(&spec.out),
        to: "diffusers",
        base: a.output.base.as_deref().map(show),
        component: fallback.map(str::to_owned),
        names_from,
        module_count: adapter.modules.len(),
        files: vec![show(&spec.out)],
        bytes_written: bytes,
        seconds: start.elapsed().as_secs_f64(),
    };
    if a.output.json {
        super::print_json("convert", &s)?;
    } else {
        super::print(&format!(
            "{} modules, {} written to {} in {:.2} s\n",
            s.module_count,
            human_bytes(bytes),
            s.out,
            s.seconds
        ))?;
    }
    Ok(0)
}

fn gguf(a: ConvertArgs, start: Instant) -> Result<i32> {
    use crate::adapter::formats::gguf as g;
    use crate::io::gguf::GgmlType;
    let base = a.output.base.as_deref().ok_or_else(|| {
        crate::error::InputError::invalid(
            &a.adapter,
            "--to gguf needs --base: a GGUF model or a Hugging Face folder, for the architecture and head counts llama.cpp's tensor layout depends on",
        )
    })?;
    if a.output.prefix.is_some() {
        anyhow::bail!("--prefix names kohya modules; it means nothing for --to gguf");
    }
    let adapter = Adapter::open(&a.adapter)?;
    adapter.check_plain_base("converting it")?;
    let target = g::Target::open(base)?;
    let ty = match a.output.dtype {
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
    let kv = crate::io::gguf::writer::kv_string;
    let mut extra = output::provenance_head_gguf("convert");
    extra.push(kv(
        "lorakit.inputs",
        &inputs_json(&[&a.adapter], Some(base)).to_string(),
    ));
    let (modules, bytes) = g::write(&adapter, &target, ty, &a.output.out, extra)?;
    let s = GgufConvertSummary {
        operation: "convert",
        input: a.adapter.display().to_string(),
        out: a.output.out.display().to_string(),
        to: "gguf",
        base: base.display().to_string(),
        architecture: target.architecture.clone(),
        alpha: g::file_alpha(&adapter),
        dtype: ty.name().to_lowercase(),
        folded_count: modules.iter().filter(|m| m.folded != 1.0).count(),
        modules,
        files: vec![a.output.out.display().to_string()],
        bytes_written: bytes,
        seconds: start.elapsed().as_secs_f64(),
    };
    if a.output.json {
        super::print_json("convert", &s)?;
    } else {
        let mut out = format!(
            "wrote {} (llama.cpp LoRA adapter, {}, alpha {}, {})\n\n",
            s.out, s.architecture, s.alpha, s.dtype
        );
        out.push_str(&table_of(
            &[
                "module",
                "tensor",
                "rank",
                "scale",
                "folded into B",
                "permuted",
            ],
            &[false, false, true, true, true, false],
            s.modules.iter(),
            |m| {
                vec![
                    m.from.clone(),
                    m.to.clone(),
                    m.rank.to_string(),
                    format!("{}", m.scale),
                    if m.folded == 1.0 {
                        "-".into()
                    } else {
                        format!("{:.6}", m.folded)
                    },
                    if m.permuted {
                        "q/k rows".into()
                    } else {
                        "-".into()
                    },
                ]
            },
        ));
        out.push_str(&format!(
            "\n{} modules, {} written in {:.2} s\n",
            s.modules.len(),
            human_bytes(s.bytes_written),
            s.seconds
        ));
        super::print(&out)?;
    }
    Ok(0)
}
