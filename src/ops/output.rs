//! The one adapter output of the adapter operations ([`super::resize`], [`super::combine`],
//! [`super::convert`]; extract and train still write their adapters on their own): it writes either format atomically through [`crate::io::Output`], refuses an output that is an
//! input, removes an output folder it created when anything fails, carries the input's
//! `__metadata__` and records provenance (`lorakit.version`, `lorakit.operation`,
//! `lorakit.inputs`, `lorakit.params`), then what the format records besides
//! ([`Layout::stamp_metadata`](crate::adapter::formats::Layout::stamp_metadata): a kohya file written from an adapter with dotted module names
//! also records `lorakit.module_names` and `lorakit.peft_config`, so that converting it back to
//! PEFT needs no base, [`super::convert::restore_from_metadata`]).
//!
//! Every format-specific answer (folder or file, the files written, where to lock, how to
//! write, how a module is named) comes from the format's [`Layout`](crate::adapter::formats::Layout); nothing here matches on a
//! [`Format`].
//!
//! Same inputs and options give byte-identical outputs: modules are processed in a fixed order,
//! the random masks of DARE come from a seeded generator keyed by module name (not by thread
//! schedule), and no timestamps are written. Must not: read a base model's weights, or print.

use crate::adapter::formats::{Shape, WriteArgs};
use crate::adapter::{Adapter, Data, Format};
use crate::dtype::Dtype;
use crate::error::{InputError, InputResult, Opt};
use crate::io::Output;
use std::path::{Path, PathBuf};

pub use crate::adapter::formats::kohya::{META_MODULE_NAMES, META_PEFT_CONFIG};

/// Where and how an adapter is written.
#[derive(Debug, Clone)]
pub struct WriteSpec {
    pub format: Format,
    /// A folder for PEFT, a `.safetensors` file for kohya.
    pub out: PathBuf,
    /// `Some(d)`: every tensor encoded as `d`. `None`: stored tensors copied byte for byte in
    /// their own dtype, computed values as F32.
    pub dtype: Option<Dtype>,
    /// kohya prefix for dotted module names (`lora_unet`, `lora_te`, …); `None` picks
    /// [`default_kohya_prefix`].
    pub kohya_prefix: Option<String>,
}

/// What an operation records in the output's `__metadata__`.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// `resize`, `combine`, `convert`.
    pub operation: &'static str,
    /// JSON list of the inputs (paths, with weights for combine).
    pub inputs: serde_json::Value,
    /// JSON object of the options that shaped the result.
    pub params: serde_json::Value,
}

/// Files an adapter write produced. Reports carry it flattened: `files` and `bytes_written`,
/// in that order.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    pub files: Vec<String>,
    /// Bytes of all `files` (headers and configs included).
    #[serde(rename = "bytes_written")]
    pub bytes: u64,
}

/// The kohya prefix used for dotted module names when none is given: `lora_te` when every
/// module is under `text_model.` (a CLIP text encoder, as kohya names SD 1.x ones), else
/// `lora_unet`.
pub fn default_kohya_prefix(adapter: &Adapter) -> &'static str {
    if !adapter.modules.is_empty()
        && adapter
            .modules
            .iter()
            .all(|m| m.name.starts_with("text_model."))
    {
        "lora_te"
    } else {
        "lora_unet"
    }
}

/// The prefix a write will use.
pub fn kohya_prefix_for(adapter: &Adapter, spec: &WriteSpec) -> String {
    spec.kohya_prefix
        .clone()
        .unwrap_or_else(|| default_kohya_prefix(adapter).to_owned())
}

/// The file name a module gets in `format` ([`Layout::written_name`](crate::adapter::formats::Layout::written_name): PEFT the module path,
/// kohya the kohya name).
pub fn written_name(name: &str, format: Format, prefix: &str) -> String {
    format.layout().written_name(name, prefix)
}

/// Every file reading `adapter` touches ([`Adapter::input_paths`]).
pub fn adapter_inputs(adapter: &Adapter) -> Vec<PathBuf> {
    adapter.input_paths()
}

/// Paths a write of `spec` creates or replaces.
pub fn output_paths(spec: &WriteSpec) -> Vec<PathBuf> {
    spec.format.layout().output_paths(&spec.out)
}

/// Where and how an adapter operation ([`super::resize`], [`super::combine`]) writes its result.
#[derive(Debug, Clone)]
pub struct OutputOptions {
    /// Format written; `None` keeps the (first) input's.
    pub format: Option<Format>,
    pub out: PathBuf,
    /// The model the adapters are for: restores dotted module paths of kohya names written as
    /// PEFT, and every module must land on it.
    pub base: Option<PathBuf>,
    pub dtype: DtypeChoice,
    /// kohya prefix for dotted module names (kohya output).
    pub prefix: Option<String>,
}

impl OutputOptions {
    /// Opens the base (when given) and returns it with the write of the result of `adapters`
    /// (format and dtype defaulting to the first's), checked by [`check_output`] against every
    /// file the adapters and the base were read from. Writes nothing. Panics when `adapters`
    /// is empty.
    pub fn open_for(
        &self,
        adapters: &[&Adapter],
    ) -> InputResult<(WriteSpec, Option<crate::io::Checkpoint>)> {
        let base = self
            .base
            .as_deref()
            .map(crate::io::Checkpoint::open)
            .transpose()?;
        let first = adapters.first().expect("at least one adapter");
        let spec = WriteSpec {
            format: self.format.unwrap_or(first.format),
            out: self.out.clone(),
            dtype: Some(computed_dtype(self.dtype, first)),
            kohya_prefix: self.prefix.clone(),
        };
        let mut inputs: Vec<PathBuf> = adapters.iter().flat_map(|a| adapter_inputs(a)).collect();
        if let Some(b) = &base {
            inputs.extend(b.input_paths());
            inputs.push(b.root.clone());
        }
        check_output(&spec, &inputs)?;
        Ok((spec, base))
    }
}

/// Refuses (before anything is written) an output that is one of `inputs` or holds one, and an
/// output path of the wrong kind (a file where a PEFT folder goes, a folder where a kohya file
/// goes), offering the `format` option's other layout.
pub fn check_output(spec: &WriteSpec, inputs: &[PathBuf]) -> InputResult<()> {
    check_output_offering(spec, inputs, true)
}

/// [`check_output`] for an operation whose output format is not a `format` option (convert
/// names its target instead): a path of the wrong kind is refused without offering one.
pub fn check_output_fixed(spec: &WriteSpec, inputs: &[PathBuf]) -> InputResult<()> {
    check_output_offering(spec, inputs, false)
}

fn check_output_offering(spec: &WriteSpec, inputs: &[PathBuf], offer: bool) -> InputResult<()> {
    let layout = spec.format.layout();
    let folders = match layout.shape() {
        Shape::Folder => std::slice::from_ref(&spec.out),
        Shape::File => &[],
    };
    // The wrong kind of path gets the adapter-specific wording below.
    let wrong_kind = match layout.shape() {
        Shape::Folder => spec.out.is_file(),
        Shape::File => spec.out.is_dir(),
    };
    crate::io::writer::check_writes(inputs, &layout.files(&spec.out), folders).or_else(|e| {
        if wrong_kind {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    if !wrong_kind {
        return Ok(());
    }
    let (label, shape) = (layout.label(), layout.shape());
    // The first format written the other way, offered instead.
    let other = Format::ALL
        .iter()
        .find(|f| f.layout().shape() != shape)
        .map_or_else(String::new, |f| f.to_string());
    Err(InputError::option(&spec.out, move |o| {
        let or = match offer {
            true => format!(", or {}", o.set(Opt::Format, &other)),
            false => String::new(),
        };
        match shape {
            Shape::Folder => format!(
                "is a file, but a {label} adapter is written as a folder (choose a folder{or})"
            ),
            Shape::File => format!(
                "is a folder, but a {label} adapter is written as one .safetensors file (choose a file name{or})"
            ),
        }
    }))
}

/// `--dtype` of the adapter-writing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtypeChoice {
    /// The input's dtype (convert: every tensor copied byte for byte; merge: each base
    /// tensor keeps its own).
    #[default]
    Keep,
    F32,
    F16,
    Bf16,
}

impl DtypeChoice {
    /// Output dtype of a tensor stored as `d` (non-float tensors are never converted).
    pub fn apply(self, d: Dtype) -> Dtype {
        if !crate::dtype::is_float_storage(d) {
            return d;
        }
        copy_dtype(self).unwrap_or(d)
    }
}

/// The dtype computed factors are written in: `--dtype`, or with `keep` the dtype of the
/// input's first stored factor (F32 when there is none).
pub fn computed_dtype(choice: DtypeChoice, input: &Adapter) -> Dtype {
    copy_dtype(choice)
        .or_else(|| stored_dtype(input))
        .unwrap_or(Dtype::F32)
}

/// The dtype policy of a pure rewrite (convert): `keep` (`None`) copies stored tensors byte
/// for byte.
pub fn copy_dtype(choice: DtypeChoice) -> Option<Dtype> {
    match choice {
        DtypeChoice::Keep => None,
        DtypeChoice::F32 => Some(Dtype::F32),
        DtypeChoice::F16 => Some(Dtype::F16),
        DtypeChoice::Bf16 => Some(Dtype::BF16),
    }
}

/// The stored dtype of an adapter's first factor.
pub fn stored_dtype(a: &Adapter) -> Option<Dtype> {
    let src = a.source.as_ref()?;
    a.modules
        .iter()
        .find_map(|m| match m.factors.data().first() {
            Some(Data::Stored { key, .. }) => src.header().get(key).map(|t| t.dtype),
            _ => None,
        })
}

/// The first provenance keys of every output lorakit writes, safetensors `__metadata__` and GGUF
/// key/values alike: `lorakit.version`, then `lorakit.operation`. What follows is the
/// operation's (`lorakit.inputs` and `lorakit.params` here, a merge's `lorakit.adapters`).
pub fn provenance_head(operation: &str) -> [(String, String); 2] {
    [
        ("lorakit.version".into(), env!("CARGO_PKG_VERSION").into()),
        ("lorakit.operation".into(), operation.into()),
    ]
}

/// [`provenance_head`] as GGUF string key/values, for the GGUF writers (a merge into a GGUF
/// model, Hugging Face → GGUF, a GGUF adapter).
pub fn provenance_head_gguf(operation: &str) -> Vec<Vec<u8>> {
    provenance_head(operation)
        .iter()
        .map(|(k, v)| crate::io::gguf::writer::kv_string(k, v))
        .collect()
}

/// The `__metadata__` an output gets: [`carried_metadata`], then what the format records
/// besides ([`Layout::stamp_metadata`](crate::adapter::formats::Layout::stamp_metadata): for a kohya output of an adapter with dotted names the
/// PEFT names and config).
pub fn output_metadata(
    adapter: &Adapter,
    spec: &WriteSpec,
    prov: &Provenance,
) -> Vec<(String, String)> {
    let mut meta = carried_metadata(adapter, prov);
    let prefix = kohya_prefix_for(adapter, spec);
    spec.format
        .layout()
        .stamp_metadata(adapter, &prefix, &mut meta);
    meta
}

/// The input's `__metadata__` (minus earlier `lorakit.*` keys, the `format` key writers set
/// themselves, and a diffusers file's `lora_adapter_metadata`: the diffusers writer states the
/// config anew, and beside kohya names diffusers' loader refuses it, "Both network_alphas and
/// metadata cannot be specified", rev16c F1), then provenance.
pub fn carried_metadata(adapter: &Adapter, prov: &Provenance) -> Vec<(String, String)> {
    use crate::adapter::formats::diffusers;
    let mut meta: Vec<(String, String)> = adapter
        .metadata
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("lorakit.") && k != "format" && k != diffusers::METADATA_KEY
        })
        .cloned()
        .collect();
    meta.extend(provenance_head(prov.operation));
    meta.push(("lorakit.inputs".into(), prov.inputs.to_string()));
    meta.push(("lorakit.params".into(), prov.params.to_string()));
    meta
}

/// Writes `adapter` as `spec` says, atomically: nothing lands unless everything succeeded, and
/// folders this call created (the PEFT output folder, a kohya file's missing parents) are
/// removed again on failure.
pub fn write_adapter(
    adapter: &Adapter,
    spec: &WriteSpec,
    prov: &Provenance,
) -> InputResult<Written> {
    let layout = spec.format.layout();
    crate::adapter::formats::peft::params::refuse_write(adapter, layout.name())?;
    let meta = output_metadata(adapter, spec, prov);
    let mut output = adapter_output(spec.format, &spec.out)?;
    let prefix = kohya_prefix_for(adapter, spec);
    let args = WriteArgs {
        out: &spec.out,
        dtype: spec.dtype,
        metadata: &meta,
        prefix: &prefix,
    };
    layout.write(adapter, &mut output, args)?;
    let files = layout.files(&spec.out).iter().map(|p| show(p)).collect();
    let bytes = output.commit()?;
    Ok(Written { files, bytes })
}

/// An atomic output for an adapter written as `format` at `out`: the folder it goes in
/// ([`Layout::folder`](crate::adapter::formats::Layout::folder)) created when missing (and removed again if the write fails), `out`
/// (the adapter folder or file) locked against concurrent writers.
pub fn adapter_output(format: Format, out: &Path) -> InputResult<Output> {
    refuse_folder_named_like_a_file(format, out)?;
    let mut output = Output::new();
    output.create_dir_all(&format.layout().folder(out))?;
    output.lock(out, crate::io::writer::LockMode::Exclusive)?;
    Ok(output)
}

/// A folder format (PEFT, MLX) written to a new `out` that ends in `.safetensors`: refused, as
/// `merge` refuses it for a folder checkpoint, instead of making a folder named like a file.
pub fn refuse_folder_named_like_a_file(format: Format, out: &Path) -> InputResult<()> {
    let folder = format.layout().folder(out) == out;
    if folder && !out.exists() && out.extension().is_some_and(|e| e == "safetensors") {
        return Err(InputError::invalid(
            out,
            format!(
                "a {} adapter is a folder, so this would be a folder named like a file; give a folder name (one .safetensors file is the kohya format)",
                format.layout().label()
            ),
        ));
    }
    Ok(())
}

/// An atomic output for one file at `out`: its missing parent folders are created (and removed
/// again if the write fails) and `out` is locked against concurrent writers.
pub fn single_file_output(out: &Path) -> InputResult<Output> {
    let folder = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut output = Output::new();
    output.create_dir_all(&folder)?;
    output.lock(out, crate::io::writer::LockMode::Exclusive)?;
    Ok(output)
}

/// Writes `adapter` (module names under their pipeline component: `transformer.…`) as a
/// diffusers single file at `spec.out` ([`crate::adapter::formats::diffusers::write`], which
/// writes each component's config as `lora_adapter_metadata`), atomically, with the provenance
/// of [`write_adapter`].
pub fn write_diffusers(
    adapter: &Adapter,
    spec: &WriteSpec,
    prov: &Provenance,
) -> InputResult<Written> {
    use crate::adapter::formats::diffusers;
    crate::adapter::formats::peft::params::refuse_write(adapter, "a diffusers file")?;
    // The input's metadata and provenance, without an old config (carried_metadata).
    let meta = carried_metadata(adapter, prov);
    let mut output = single_file_output(&spec.out)?;
    diffusers::write(adapter, None, &spec.out, &mut output, spec.dtype, &meta)?;
    let bytes = output.commit()?;
    Ok(Written {
        files: vec![show(&spec.out)],
        bytes,
    })
}

/// Row-major `r × c` view of canonical values.
pub(crate) fn view<'a>(v: &'a [f32], r: usize, c: usize) -> ndarray::ArrayView2<'a, f32> {
    ndarray::ArrayView2::from_shape((r, c), v).expect("canonical factor shape")
}

/// `B' = U_k·diag(s_k)` (`d×k`, zero columns past the SVD's rank) and `A' = V_kᵀ` (`k×n`), the
/// factor split of PEFT's `svd` combination and kohya's `resize_lora.py` (singular values in
/// the up/B factor).
pub(crate) fn svd_factors(svd: &crate::linalg::Svd, k: usize) -> (Vec<f32>, Vec<f32>) {
    let (d, n) = (svd.u.nrows(), svd.vt.ncols());
    let mut b = vec![0f32; d * k];
    let mut a = vec![0f32; k * n];
    for j in 0..k.min(svd.s.len()) {
        let s = svd.s[j];
        for i in 0..d {
            b[i * k + j] = svd.u[[i, j]] * s;
        }
        for c in 0..n {
            a[j * n + c] = svd.vt[[j, c]];
        }
    }
    (b, a)
}

/// Path shown in reports.
pub(crate) fn show(p: &Path) -> String {
    p.display().to_string()
}

/// `lorakit.inputs` of a single- or multi-adapter operation (paths as given).
pub fn inputs_json(adapters: &[&Path], base: Option<&Path>) -> serde_json::Value {
    let mut v: Vec<serde_json::Value> = adapters
        .iter()
        .map(|p| serde_json::json!({"path": p.display().to_string()}))
        .collect();
    if let Some(b) = base {
        v.push(serde_json::json!({"path": b.display().to_string(), "role": "base"}));
    }
    serde_json::Value::Array(v)
}

/// Metadata entries an output carries over from `adapter`.
pub fn metadata_kept(adapter: &Adapter) -> usize {
    adapter
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("lorakit.") && k != "format")
        .count()
}
