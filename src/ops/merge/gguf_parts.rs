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
//!
//! [`layout`] and [`write_files`] are the one place GGUF merge outputs are laid out and written
//! (a GGUF base merged, [`super::gguf`], and a Hugging Face base written as GGUF,
//! [`super::gguf_hf`]): files, split keys, the part's share and its manifest.

use crate::error::{InputError, InputResult, Opt};
use crate::io::gguf::writer::{kv_i32, kv_u16, part_path, split_parts, GgufWriter, OutTensor};
use crate::io::gguf::GgufModel;
use crate::io::writer::{pipelined, LockMode};
use crate::parts::{files_named, is_plain_name, out_dir, stamps, Stamp};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// The output files of a GGUF output `out` holding `tensors` in order, and the tensor range of
/// each: `out` alone, or with `max_shard_size` gguf-py's `split_max_size` rule and
/// `-0000I-of-0000N.gguf` names.
pub fn layout(
    out: &Path,
    tensors: &[OutTensor],
    max_shard_size: Option<u64>,
) -> (Vec<PathBuf>, Vec<std::ops::Range<usize>>) {
    let parts = match max_shard_size {
        Some(max) => {
            let sizes: Vec<u64> = tensors.iter().map(OutTensor::bytes).collect();
            split_parts(&sizes, max)
        }
        None => std::iter::once(0..tensors.len()).collect(),
    };
    let files = if parts.len() == 1 {
        vec![out.to_path_buf()]
    } else {
        (0..parts.len())
            .map(|i| part_path(out, i, parts.len()))
            .collect()
    };
    (files, parts)
}

/// The files a run writes, and what `--part I/N` keeps of them: the planned files, plus the
/// manifest with a part.
pub fn planned_writes(out: &Path, files: &[PathBuf], part: Option<(usize, usize)>) -> Vec<PathBuf> {
    let mut v = files.to_vec();
    if let Some((i, n)) = part {
        v.push(manifest_path(out, i, n));
    }
    v
}

/// One GGUF output to write: [`write_files`]' input.
pub struct GgufOutput<'a> {
    /// `--out`.
    pub out: &'a Path,
    /// Every output tensor in order.
    pub tensors: &'a [OutTensor],
    /// The metadata of the first file (raw entries, provenance included).
    pub entries: &'a [Vec<u8>],
    /// The metadata every later file of a split output repeats (`general.alignment`).
    pub later_entries: &'a [Vec<u8>],
    pub alignment: u64,
    pub max_shard_size: Option<u64>,
    pub part: Option<(usize, usize)>,
    /// Every file read, for the manifest.
    pub inputs: &'a [PathBuf],
}

/// The bytes of one output tensor, as [`write_files`] takes them.
pub enum TensorData<'d> {
    /// Computed (or borrowed) bytes in the planned type.
    Bytes(std::borrow::Cow<'d, [u8]>),
    /// Copied byte for byte by the kernel: `len` bytes of `file` (at `path`) from offset `at`.
    Copy {
        file: &'d std::fs::File,
        path: &'d Path,
        at: u64,
        len: u64,
    },
}

impl<'d> From<std::borrow::Cow<'d, [u8]>> for TensorData<'d> {
    fn from(b: std::borrow::Cow<'d, [u8]>) -> Self {
        TensorData::Bytes(b)
    }
}

/// Writes the files of `o` this run owns (all of them, or part I's share and its manifest)
/// into `output`, which the caller commits; `data(i)` gives tensor `i`'s bytes in its planned
/// type, in order, or the input range to copy them from. Each file is written on the
/// pipelined writer thread ([`crate::io::writer::pipelined`]): `data(i + 1)` is computed while
/// tensor `i` and the copies before it are written. Part 1 holds the metadata, every file of a
/// split output its `split.*` keys (gguf-py's layout). Returns the files written with their
/// sizes.
pub fn write_files<'d, D: Into<TensorData<'d>>>(
    output: &mut crate::io::Output,
    o: &GgufOutput<'_>,
    mut data: impl FnMut(usize) -> Result<D>,
) -> Result<Vec<(PathBuf, u64)>> {
    let (files, parts) = layout(o.out, o.tensors, o.max_shard_size);
    // Parts of one run write side by side; `finalize` takes the lock exclusively.
    let mode = match o.part {
        Some(_) => LockMode::Shared,
        None => LockMode::Exclusive,
    };
    output.lock(o.out, mode)?;
    let mut wrote = Vec::new();
    for (pi, (path, range)) in files.iter().zip(&parts).enumerate() {
        if !crate::parts::owns(o.part, pi) {
            continue;
        }
        let mut entries = if pi == 0 {
            o.entries.to_vec()
        } else {
            o.later_entries.to_vec()
        };
        if files.len() > 1 {
            entries.push(kv_u16("split.no", pi as u16));
            entries.push(kv_u16("split.count", files.len() as u16));
            entries.push(kv_i32("split.tensors.count", o.tensors.len() as i32));
        }
        let file = output.raw_file(path)?;
        let w = GgufWriter::new(
            file,
            path,
            &entries,
            o.tensors[range.clone()].to_vec(),
            o.alignment,
        )?;
        let bytes = pipelined(w, |pipe| {
            for i in range.clone() {
                let name = &o.tensors[i].name;
                match data(i)?.into() {
                    TensorData::Bytes(Cow::Owned(v)) => pipe.write_tensor(name, v)?,
                    TensorData::Bytes(Cow::Borrowed(b)) => {
                        pipe.begin_tensor(name)?;
                        pipe.write_borrowed(b)?;
                    }
                    TensorData::Copy {
                        file,
                        path,
                        at,
                        len,
                    } => pipe.copy_tensor(name, file, path, at, len)?,
                }
            }
            Ok(())
        })?;
        wrote.push((path.clone(), bytes));
    }
    if let Some((i, n)) = o.part {
        let layout: Vec<(PathBuf, &[OutTensor])> = files
            .iter()
            .zip(&parts)
            .map(|(f, r)| (f.clone(), &o.tensors[r.clone()]))
            .collect();
        let manifest = GgufManifest {
            version: GGUF_MANIFEST_VERSION,
            part: i,
            parts: n,
            plan: part_plan(o.out, o.entries, &layout, o.inputs)?,
            written: wrote
                .iter()
                .map(|(p, b)| {
                    let name = p.file_name().expect("planned").to_string_lossy();
                    (name.into_owned(), *b)
                })
                .collect(),
        };
        output.small_file(&manifest_path(o.out, i, n), &manifest.to_bytes())?;
    }
    Ok(wrote)
}

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
