//! `merge --base MODEL.gguf --part I/N` and `finalize` of its parts.
//!
//! As for safetensors outputs ([`crate::parts`]), output file `j` (0-based, in the plan's
//! order: one file, or the `-0000I-of-0000N.gguf` files of `--max-shard-size`) belongs to part
//! `j mod N + 1`; each part computes the same plan, writes exactly the bytes a single run
//! writes for its files (the GGUF merge has no per-part state: metadata, tensor order, offsets
//! and quantizers are those of the one plan), and a manifest `.OUT.lorakit-part-I-of-N.json`
//! beside the output. A GGUF output has no index and no copied files, so `finalize OUT` only
//! checks — that all N manifests are present and were planned by the same run (one digest of
//! the metadata, tensors, files and input stamps), that the inputs have not changed since,
//! that every planned file exists with the size its part recorded and opens as one GGUF model
//! holding exactly the planned tensors — and then removes the manifests. On any failure it
//! writes and removes nothing.
//!
//! Must not trust a manifest: file names must be plain names, files are checked against the
//! plan every manifest agrees on, and nothing is written from a manifest's content.

use crate::error::{InputError, InputResult, Opt};
use crate::io::gguf::writer::OutTensor;
use crate::io::gguf::GgufModel;
use crate::io::writer::LockMode;
use crate::parts::{files_named, is_plain_name, out_dir, stamps, Stamp};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of the GGUF part manifest.
pub const GGUF_MANIFEST_VERSION: u32 = 1;

/// `[name, type, ggml dims]` of one planned tensor.
pub type PlannedTensor = (String, String, Vec<u64>);

/// The whole output, identical in every part's manifest of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GgufPartPlan {
    /// The output path's file name (`--out`).
    pub out: String,
    /// The output files in order: names and the `[name, type, ggml dims]` of their tensors.
    pub files: Vec<(String, Vec<PlannedTensor>)>,
    /// Size and mtime of every input (base parts, adapter files) when the part ran.
    pub inputs: Vec<Stamp>,
    /// blake3 of the metadata entries (raw bytes, provenance included), the tensors, the files
    /// and the inputs: equal for the parts of one run only.
    pub digest: String,
}

/// What one part wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GgufManifest {
    pub version: u32,
    pub part: usize,
    pub parts: usize,
    pub plan: GgufPartPlan,
    /// `(file name, bytes)` of the files this part wrote.
    pub written: Vec<(String, u64)>,
}

/// The manifest path of part `i` of `n` of output `out`.
pub fn manifest_path(out: &Path, i: usize, n: usize) -> PathBuf {
    out_dir(out).join(format!("{}{i}-of-{n}.json", manifest_prefix(out)))
}

fn manifest_prefix(out: &Path) -> String {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.lorakit-part-")
}

/// The manifests of GGUF output `out`, sorted by name.
pub fn find_manifests(out: &Path) -> Vec<PathBuf> {
    files_named(&out_dir(out), &manifest_prefix(out), ".json")
}

/// The plan of one run: `entries` the metadata of the first file (raw bytes), `layout` the
/// output files with their tensors, `inputs` every file read.
pub fn part_plan(
    out: &Path,
    entries: &[Vec<u8>],
    layout: &[(PathBuf, &[OutTensor])],
    inputs: &[PathBuf],
) -> InputResult<GgufPartPlan> {
    let files: Vec<(String, Vec<PlannedTensor>)> = layout
        .iter()
        .map(|(p, ts)| {
            let name = p
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let ts = ts
                .iter()
                .map(|t| (t.name.clone(), t.ty.name().to_owned(), t.dims.clone()))
                .collect();
            (name, ts)
        })
        .collect();
    let inputs = stamps(inputs)?;
    let mut h = blake3::Hasher::new();
    for e in entries {
        h.update(&(e.len() as u64).to_le_bytes());
        h.update(e);
    }
    h.update(
        serde_json::to_string(&(&files, &inputs))
            .expect("json")
            .as_bytes(),
    );
    Ok(GgufPartPlan {
        out: out
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        files,
        inputs,
        digest: h.finalize().to_hex().to_string(),
    })
}

impl GgufManifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("json");
        v.push(b'\n');
        v
    }
}

/// What `finalize` of a GGUF output did.
#[derive(Debug, Serialize)]
pub struct GgufFinalizeReport {
    pub out: String,
    pub parts: usize,
    pub files: Vec<String>,
    pub tensor_count: usize,
    pub bytes: u64,
}

fn read_manifest(p: &Path) -> Result<GgufManifest> {
    let text = crate::io::read_json_file(p)?;
    let m: GgufManifest = serde_json::from_slice(&text)
        .map_err(|e| InputError::invalid(p, format!("not a lorakit GGUF part manifest: {e}")))?;
    if m.version != GGUF_MANIFEST_VERSION {
        bail!(InputError::invalid(
            p,
            format!(
                "part manifest version {} (this lorakit writes {GGUF_MANIFEST_VERSION}): rerun the parts",
                m.version
            )
        ));
    }
    let names = m
        .plan
        .files
        .iter()
        .map(|(n, _)| n)
        .chain(m.written.iter().map(|(n, _)| n))
        .chain(std::iter::once(&m.plan.out));
    for n in names {
        if !is_plain_name(n) {
            bail!(InputError::invalid(
                p,
                format!("file {n:?} is not a plain file name beside the output; the manifest is not lorakit's or was edited")
            ));
        }
    }
    Ok(m)
}

/// Checks every part of GGUF output `out` and removes the manifests.
pub fn finalize(out: &Path) -> Result<GgufFinalizeReport> {
    let paths = find_manifests(out);
    let Some(first_path) = paths.first().cloned() else {
        bail!(InputError::option(out, |o| {
            format!(
            "no GGUF part manifests (.NAME.lorakit-part-I-of-N.json) beside it: run merge with {} first",
            o.set(Opt::Part, "I/N")
        )
        }));
    };
    let mut manifests = Vec::new();
    for p in &paths {
        manifests.push((p.clone(), read_manifest(p)?));
    }
    manifests.sort_by_key(|(_, m)| m.part);
    let first = manifests[0].1.clone();
    let n = first.parts;
    let mut seen = vec![false; n];
    for (p, m) in &manifests {
        if m.parts != n || m.plan != first.plan {
            bail!(InputError::invalid(
                p,
                format!(
                    "part {}/{} belongs to another run than {} (different inputs, flags or input files since)",
                    m.part,
                    m.parts,
                    first_path.display()
                )
            ));
        }
        if m.part == 0 || m.part > n || std::mem::replace(&mut seen[m.part - 1], true) {
            bail!(InputError::invalid(
                p,
                format!("part {}/{n} is out of range or twice", m.part)
            ));
        }
    }
    let missing: Vec<String> = (1..=n)
        .filter(|i| !seen[i - 1])
        .map(|i| format!("{i}/{n}"))
        .collect();
    if !missing.is_empty() {
        bail!(InputError::invalid(
            out,
            format!("parts not finished: {}", missing.join(", "))
        ));
    }
    let plan = &first.plan;
    // The inputs must be those the parts read.
    let now = stamps(
        &plan
            .inputs
            .iter()
            .map(|s| PathBuf::from(&s.path))
            .collect::<Vec<_>>(),
    )
    .map_err(anyhow::Error::from)?;
    if let Some((was, _)) = plan.inputs.iter().zip(&now).find(|(a, b)| a != b) {
        bail!(InputError::invalid(
            &first_path,
            format!(
                "input {} changed (size or mtime) since the parts ran; rerun them",
                was.path
            )
        ));
    }
    let dir = out_dir(out);
    let mut output = crate::io::Output::new();
    output.lock(out, LockMode::Exclusive)?;
    let mut bytes = 0;
    for (j, (name, _)) in plan.files.iter().enumerate() {
        let owner = j % n + 1;
        let (_, m) = &manifests[owner - 1];
        let path = dir.join(name);
        let Some(&(_, want)) = m.written.iter().find(|(w, _)| w == name) else {
            bail!(InputError::invalid(
                &manifests[owner - 1].0,
                format!("part {owner}/{n} does not record writing {name}, which the plan gives it")
            ));
        };
        let len = std::fs::metadata(&path).map(|m| m.len()).map_err(|e| {
            InputError::invalid(
                &path,
                format!("planned output of part {owner}/{n} is missing: {e}"),
            )
        })?;
        if len != want {
            bail!(InputError::invalid(
                &path,
                format!("is {len} bytes, part {owner}/{n} wrote {want}")
            ));
        }
        bytes += len;
    }
    // One GGUF model (split keys consistent) holding exactly the planned tensors.
    let model = GgufModel::open(dir.join(&plan.files[0].0))?;
    let got: Vec<PlannedTensor> = model
        .tensors()
        .map(|(_, t)| (t.name.clone(), t.ty.name().to_owned(), t.dims.clone()))
        .collect();
    let want: Vec<PlannedTensor> = plan
        .files
        .iter()
        .flat_map(|(_, ts)| ts.iter().cloned())
        .collect();
    if got != want || model.files.len() != plan.files.len() {
        bail!(InputError::invalid(
            model.files[0].path(),
            "its tensors are not those the parts planned; rerun the parts"
        ));
    }
    for (p, _) in &manifests {
        std::fs::remove_file(p).map_err(|e| InputError::io(p, e))?;
    }
    drop(output);
    Ok(GgufFinalizeReport {
        out: out.display().to_string(),
        parts: n,
        files: plan.files.iter().map(|(f, _)| f.clone()).collect(),
        tensor_count: want.len(),
        bytes,
    })
}
