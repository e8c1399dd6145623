//! `inspect`: what a checkpoint or adapter holds, from headers alone unless a spectrum is asked.
//!
//! The report is one serialisable value ([`Report`]) printed either as aligned tables for
//! people or as JSON for scripts (schema in the README). Reading a checkpoint's report costs
//! what its headers cost; `--spectrum` reads adapter factors and computes the singular values
//! of `s·B·A` from the factors (QR of B and Aᵀ, SVD of the r×r core), never forming d×k.

use crate::adapter::{self, Adapter, Format, ModuleKind};
use crate::dtype;
use crate::io::checkpoint::Layout;
use crate::io::Checkpoint;
use anyhow::Result;
use ndarray::ArrayView2;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

pub mod gguf;
mod plan;
pub mod plot;
pub use plan::{InspectOptions, InspectPlan};
pub use plot::plot_spectra;

/// A checkpoint or adapter report.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Report {
    Checkpoint(CheckpointReport),
    Adapter(AdapterReport),
    /// A GGUF model (llama.cpp), one file or a split set.
    Gguf(gguf::GgufReport),
}

#[derive(Debug, Serialize)]
pub struct DtypeStats {
    pub tensor_count: usize,
    pub parameters: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct TensorRow {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: u64,
    pub file: String,
}

#[derive(Debug, Serialize)]
pub struct CheckpointReport {
    pub path: String,
    /// `file`, `folder` or `sharded`.
    pub layout: &'static str,
    pub files: Vec<String>,
    pub tensor_count: usize,
    pub parameters: u64,
    pub bytes: u64,
    pub dtypes: BTreeMap<String, DtypeStats>,
    pub metadata: BTreeMap<String, String>,
    /// With `tensors`: every tensor (the list `diff` reports under the same key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorRow>>,
    /// Quantized weights and config.json's `quantization_config`; absent for a float checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantReport>,
}

/// What `inspect` says about a quantized checkpoint (see [`crate::io::quant`]).
#[derive(Debug, Serialize)]
pub struct QuantReport {
    /// config.json `quantization_config`, as written.
    pub config: Option<serde_json::Value>,
    /// Number of companion tensors (scales, code books, states) beside the weights.
    pub companion_tensors: usize,
    pub tensors: Vec<QuantRow>,
    /// Quantized tensors lorakit recognises but does not read (GPTQ/AWQ, …), with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// One quantized weight.
#[derive(Debug, Serialize)]
pub struct QuantRow {
    pub name: String,
    /// `bnb-nf4`, `bnb-fp4`, `bnb-int8`, `fp8-e4m3`, `fp8-e5m2`.
    pub method: String,
    pub bits: u32,
    /// Block or group: `blocksize 64`, `blocksize 64, double-quant 256`, `per row`,
    /// `128x128 blocks`, `per tensor`, `per channel`.
    pub blocks: String,
    /// Logical shape.
    pub shape: Vec<usize>,
    /// The dtype the producer dequantizes to.
    pub dtype: String,
}

#[derive(Debug, Serialize)]
pub struct ModuleRow {
    pub name: String,
    pub kind: String,
    pub rank: usize,
    pub alpha: f64,
    pub scale: f64,
    /// `[out, in]` (`in` includes the kernel area for convolutions).
    pub shape: [usize; 2],
    /// The algorithm (`lora`, `lora-tucker`, `loha`, `lokr`, `full`).
    pub algo: crate::adapter::Algo,
    /// Plain LoRA factor shapes as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a_shape: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b_shape: Option<Vec<usize>>,
    /// Every stored tensor of the module with its shape (all algorithms).
    pub factors: Vec<FactorRow>,
    pub fan_in_fan_out: bool,
    pub dora: bool,
    pub bias: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spectrum: Option<SpectrumRow>,
}

#[derive(Debug, Serialize, Clone)]
pub struct FactorRow {
    pub key: String,
    pub shape: Vec<usize>,
}

#[derive(Debug, Serialize, Clone)]
pub struct SpectrumRow {
    pub singular_values: Vec<f32>,
    pub fro_norm: f64,
    pub rank90: usize,
    pub rank99: usize,
}

#[derive(Debug, Serialize)]
pub struct AdapterReport {
    pub path: String,
    pub format: Format,
    /// Who spelled the names and for which model ([`adapter::convention`]).
    pub convention: adapter::convention::Convention,
    pub base_model: Option<String>,
    pub use_rslora: bool,
    pub dora: bool,
    pub modules: Vec<ModuleRow>,
    pub modules_to_save: Vec<String>,
    pub full_tensors: Vec<String>,
    pub parameters: usize,
    pub bytes: u64,
    pub metadata: BTreeMap<String, String>,
}

/// True when `path` is an adapter (PEFT folder, or a file with LoRA tensor names).
pub fn is_adapter(path: &Path) -> bool {
    if path.is_dir() {
        return path.join(adapter::formats::peft::WEIGHTS_NAME).exists();
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
            bias: m.bias.is_some(),
            spectrum,
        });
    }
    let bytes = a.source.as_ref().map(|s| s.header().data_len).unwrap_or(0);
    Ok(AdapterReport {
        path: a.path.display().to_string(),
        format: a.format,
        convention: adapter::convention::describe(a),
        base_model: a.base_model.clone(),
        use_rslora: a.use_rslora,
        dora: a.modules.iter().any(|m| m.dora_magnitude.is_some()),
        modules,
        modules_to_save: a.modules_to_save.clone(),
        full_tensors: a.full_tensors.iter().map(|f| f.name.clone()).collect(),
        parameters: a.parameter_count(),
        bytes,
        metadata: a.metadata.iter().cloned().collect(),
    })
}

/// Aligned columns; `right[i]` right-aligns column i.
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
