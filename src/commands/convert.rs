//! `lorakit convert`, and what `resize` and `combine` share with it: opening a base, checking
//! the output, writing, and the module table.

use crate::adapter::{Adapter, Format};
use crate::cli::ConvertArgs;
use crate::inspect::{human_bytes, table};
use crate::io::Checkpoint;
use crate::ops::convert::{self, ConvertTo, NameSource};
use crate::ops::output::{self, DtypeChoice, Provenance, WriteSpec, Written};
use anyhow::Result;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One module of a conversion.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleConvert {
    /// Name in the input file's terms (PEFT module path or kohya name).
    pub from: String,
    /// Name in the output file's terms.
    pub to: String,
    pub rank: usize,
    /// Alpha as the input stated it.
    pub alpha_in: f64,
    /// Alpha as written (kohya: `.alpha`, rounded to f32).
    pub alpha_out: f64,
    /// `ΔW = scale·B·A`, the same before and after.
    pub scale: f64,
}

/// What `convert` did (`--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertSummary {
    pub operation: &'static str,
    pub input: String,
    pub out: String,
    pub from: Format,
    pub to: Format,
    pub base: Option<String>,
    /// kohya prefix used for module paths (kohya output).
    pub prefix: Option<String>,
    pub names_from: NameSource,
    /// The PEFT config and alphas came back from lorakit metadata.
    pub config_restored: bool,
    pub dtype: DtypeChoice,
    pub modules: Vec<ModuleConvert>,
    /// `__metadata__` entries carried from the input.
    pub metadata_kept_count: usize,
    pub files: Vec<String>,
    pub bytes_written: u64,
    pub seconds: f64,
}

pub fn run(a: ConvertArgs, quiet: bool) -> Result<i32> {
    let start = Instant::now();
    let Some(to) = a.to.format() else {
        return match a.to {
            ConvertTo::Diffusers => diffusers(a, start),
            _ => gguf(a, start),
        };
    };
    let mut adapter = Adapter::open(&a.adapter)?;
    let base = open_base(a.output.base.as_deref())?;
    let spec = WriteSpec {
        format: to,
        out: a.output.out.clone(),
        dtype: output::copy_dtype(a.output.dtype),
        kohya_prefix: a.output.prefix.clone(),
    };
    check_output(&spec, &[&adapter], base.as_ref())?;
    if to == Format::Peft {
        if let Some(m) = adapter.modules.iter().find(|m| m.factors.needs_base()) {
            anyhow::bail!(crate::error::InputError::invalid(
                &adapter.path,
                format!(
                    "module `{}` is {}, which a PEFT LoRA folder cannot hold; its update depends on the base weight, so it has no fixed ΔW to lower to LoRA (merge it into the base instead)",
                    m.name,
                    m.factors.algo()
                )
            ));
        }
        if let Some(m) = adapter.modules.iter().find(|m| m.factors.lora().is_none()) {
            anyhow::bail!(crate::error::InputError::invalid(
                &adapter.path,
                format!(
                    "module `{}` is {}, which a PEFT LoRA folder cannot hold; lower it to LoRA at a chosen rank with `lorakit resize {} --rank R --format peft` (the error is reported per module)",
                    m.name,
                    m.factors.algo(),
                    a.adapter.display()
                )
            ));
        }
    }
    let from = adapter.format;
    if from == to {
        super::warn(
            quiet,
            &format!(
                "{} is already {}; rewriting it",
                a.adapter.display(),
                format_name(from)
            ),
        );
    }
    let prep = convert::prepare(&mut adapter, to, base.as_ref())?;
    let prefix = (to == Format::Kohya).then(|| output::kohya_prefix_for(&adapter, &spec));
    let prov = Provenance {
        operation: "convert",
        inputs: inputs_json(&[&a.adapter], a.output.base.as_deref()),
        params: json!({"from": from, "to": to, "prefix": prefix, "dtype": a.output.dtype}),
    };
    let written = output::write_adapter(&adapter, &spec, &prov)?;
    let modules = adapter
        .modules
        .iter()
        .zip(prep.names_before.iter().zip(&prep.alphas_before))
        .map(|(m, (before, &alpha_in))| ModuleConvert {
            from: before.clone(),
            to: output::written_name(&m.name, to, prefix.as_deref().unwrap_or("")),
            rank: m.rank,
            alpha_in,
            alpha_out: convert::kohya_or_peft_alpha(&adapter, m, to),
            scale: m.scale,
        })
        .collect();
    let summary = ConvertSummary {
        operation: "convert",
        input: show(&a.adapter),
        out: show(&a.output.out),
        from,
        to,
        base: a.output.base.as_deref().map(show),
        prefix,
        names_from: prep.names_from,
        config_restored: prep.config_restored,
        dtype: a.output.dtype,
        modules,
        metadata_kept_count: metadata_kept(&adapter),
        files: written.files,
        bytes_written: written.bytes,
        seconds: start.elapsed().as_secs_f64(),
    };
    if a.json {
        super::print_json("convert", &summary)?;
    } else {
        super::print(&render(&summary))?;
    }
    Ok(0)
}

fn render(s: &ConvertSummary) -> String {
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
        format_name(s.from),
        s.out,
        format_name(s.to),
        if s.config_restored {
            ", PEFT config restored"
        } else {
            ""
        }
    );
    let rows: Vec<Vec<String>> = s
        .modules
        .iter()
        .map(|m| {
            vec![
                m.from.clone(),
                m.to.clone(),
                m.rank.to_string(),
                num(m.alpha_in),
                num(m.alpha_out),
                num(m.scale),
            ]
        })
        .collect();
    let head_from = format!("module ({})", format_name(s.from));
    let head_to = format!("module ({})", format_name(s.to));
    out.push_str(&table(
        &[
            &head_from,
            &head_to,
            "rank",
            "alpha in",
            "alpha out",
            "scale",
        ],
        &rows,
        &[false, false, true, true, true, true],
    ));
    out.push_str(&format!(
        "\n{} modules, {} metadata entries kept, {} files, {} written in {:.2} s\n",
        s.modules.len(),
        s.metadata_kept_count,
        s.files.len(),
        human_bytes(s.bytes_written),
        s.seconds
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

/// `lorakit.inputs` of a single- or multi-adapter operation (paths as given).
pub(crate) fn inputs_json(adapters: &[&Path], base: Option<&Path>) -> serde_json::Value {
    let mut v: Vec<serde_json::Value> = adapters.iter().map(|p| json!({"path": show(p)})).collect();
    if let Some(b) = base {
        v.push(json!({"path": show(b), "role": "base"}));
    }
    serde_json::Value::Array(v)
}

/// Metadata entries an output carries over from `adapter`.
pub(crate) fn metadata_kept(adapter: &Adapter) -> usize {
    adapter
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("lorakit.") && k != "format")
        .count()
}

pub(crate) fn format_name(f: Format) -> &'static str {
    match f {
        Format::Peft => "peft",
        Format::Kohya => "kohya",
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
    use crate::io::Output;
    let mut adapter = Adapter::open(&a.adapter)?;
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
        convert::prepare(&mut adapter, Format::Peft, base.as_ref())?.names_from
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
    let folder = spec
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut out = Output::new();
    out.create_dir_all(&folder)?;
    out.lock(&spec.out, crate::io::writer::LockMode::Exclusive)?;
    let meta = vec![
        (
            "lorakit.version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
        ("lorakit.operation".to_owned(), "convert".to_owned()),
        (
            "lorakit.inputs".to_owned(),
            inputs_json(&[&a.adapter], a.output.base.as_deref()).to_string(),
        ),
    ];
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
    if a.json {
        super::print_json("convert", &s)?;
    } else {
        println!(
            "{} modules, {} written to {} in {:.2} s",
            s.module_count,
            human_bytes(bytes),
            s.out,
            s.seconds
        );
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
    let extra = vec![
        crate::io::gguf::writer::kv_string("lorakit.version", env!("CARGO_PKG_VERSION")),
        crate::io::gguf::writer::kv_string("lorakit.operation", "convert"),
        crate::io::gguf::writer::kv_string(
            "lorakit.inputs",
            &inputs_json(&[&a.adapter], Some(base)).to_string(),
        ),
    ];
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
    if a.json {
        super::print_json("convert", &s)?;
    } else {
        let rows: Vec<Vec<String>> = s
            .modules
            .iter()
            .map(|m| {
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
            })
            .collect();
        let mut out = format!(
            "wrote {} (llama.cpp LoRA adapter, {}, alpha {}, {})\n\n",
            s.out, s.architecture, s.alpha, s.dtype
        );
        out.push_str(&table(
            &[
                "module",
                "tensor",
                "rank",
                "scale",
                "folded into B",
                "permuted",
            ],
            &rows,
            &[false, false, true, true, true, false],
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
