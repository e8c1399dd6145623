//! `inspect` of a GGUF model (one file or a split set): what llama.cpp would load, from the
//! header alone: architecture, version, alignment, metadata with types, tensor types and counts,
//! and with `--tensors` every tensor's ggml type, shape (PyTorch order: ggml dims reversed) and
//! size.
//!
//! Must not read tensor data: the header alone.

use super::report::{DtypeStats, TensorRow};
pub use super::report::{GgufReport, MetadataRow};
use crate::io::gguf::{GgufModel, Value};
use std::collections::BTreeMap;

/// Arrays longer than this are summarised (`element_type`, `element_count`) instead of listed:
/// a vocabulary is tens of thousands of strings.
pub const MAX_LISTED: usize = 16;

fn row(v: &Value) -> MetadataRow {
    match v {
        Value::Array(et, items) => MetadataRow {
            ty: "ARRAY",
            element_type: Some(et.name()),
            element_count: Some(items.len()),
            value: None,
            values: (items.len() <= MAX_LISTED).then(|| v.to_json()),
        },
        _ => MetadataRow {
            ty: v.value_type().name(),
            element_type: None,
            element_count: None,
            value: Some(v.to_json()),
            values: None,
        },
    }
}

/// The report of an open model; `path` as the user gave it.
pub fn report(m: &GgufModel, path: &std::path::Path, tensors: bool) -> GgufReport {
    let h = m.header();
    let mut dtypes: BTreeMap<String, DtypeStats> = BTreeMap::new();
    let (mut params, mut bytes) = (0u64, 0u64);
    let mut unsupported = std::collections::BTreeSet::new();
    for (_, t) in m.tensors() {
        let s = dtypes.entry(t.ty.name().into()).or_insert(DtypeStats {
            tensor_count: 0,
            parameters: 0,
            bytes: 0,
        });
        s.tensor_count += 1;
        s.parameters += t.numel();
        s.bytes += t.bytes;
        params += t.numel();
        bytes += t.bytes;
        if !t.ty.can_dequantize() {
            unsupported.insert(t.ty.name().to_owned());
        }
    }
    let file_name = |p: &std::path::Path| {
        p.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    GgufReport {
        path: path.display().to_string(),
        layout: if m.files.len() > 1 { "split" } else { "file" },
        files: m.files.iter().map(|f| file_name(f.path())).collect(),
        version: h.version,
        architecture: m.architecture().map(str::to_owned),
        alignment: h.alignment,
        tensor_count: m.len(),
        parameters: params,
        bytes,
        dtypes,
        metadata: h
            .metadata
            .iter()
            .map(|kv| (kv.key.clone(), row(&kv.value)))
            .collect(),
        unsupported_types: unsupported.into_iter().collect(),
        tensors: tensors.then(|| {
            m.tensors()
                .map(|(f, t)| TensorRow {
                    name: t.name.clone(),
                    dtype: t.ty.name().into(),
                    shape: t.shape(),
                    bytes: t.bytes,
                    file: file_name(f.path()),
                })
                .collect()
        }),
    }
}
