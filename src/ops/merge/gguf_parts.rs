//! `merge --base MODEL.gguf --part I/N` and `finalize` of its parts: the GGUF merge output as a
//! [`SplitOutput`] of the generic parts machinery ([`crate::parts`]).
//!
//! As for safetensors outputs, output file `j` (0-based, in the plan's order: one file, or the
//! `-0000I-of-0000N.gguf` files of `--max-shard-size`) belongs to part `j mod N + 1`; each part
//! computes the same plan, writes exactly the bytes a single run writes for its files (the GGUF
//! merge has no per-part state: metadata, tensor order, offsets and quantizers are those of the
//! one plan), and a manifest `.OUT.lorakit-part-I-of-N.json` beside the output. What is GGUF's
//! own: the plan (one digest of the metadata, tensors, files and input stamps, so the parts of
//! one run agree and no other), the sizes (each part records what it wrote), and the contents
//! check — the inputs have not changed since, and the files open as one GGUF model holding
//! exactly the planned tensors. A GGUF output has no index and no copied files, so `finalize
//! OUT` only checks and then removes the manifests; on any failure it writes and removes
//! nothing.
//!
//! Must not trust a manifest: file names must be plain names, files are checked against the
//! plan every manifest agrees on, and nothing is written from a manifest's content.
//!
//! [`layout`] and [`write_files`] are the one place GGUF merge outputs are laid out and written
//! (a GGUF base merged, [`super::gguf`], and a Hugging Face base written as GGUF,
//! [`super::gguf_hf`]): files, split keys, the part's share and its manifest.

use crate::error::{InputError, InputResult, Opt};
use crate::io::gguf::writer::{
    kv_i32, kv_u16, page_padding, part_path, split_parts, GgufWriter, OutTensor,
};
use crate::io::gguf::GgufModel;
use crate::io::writer::{pipelined, Extent, LockMode};
use crate::parts::{is_plain_name, out_dir, stamps, unsafe_name, PartManifest, SplitOutput, Stamp};
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
    crate::parts::planned_writes(&GgufParts::new(out), files, part)
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
    /// Per tensor, its offset in the input it is copied from byte for byte (`None` where it is
    /// computed; empty where none is copied): each file's header is padded so that these line
    /// up with their sources' pages ([`page_padding`]).
    pub copied: &'a [Option<u64>],
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
/// type, in order, or the input range to copy them from (the one `o.copied` announced, for the
/// header's page padding to line it up). Each file is written on the
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
        let copied = o.copied.get(range.clone()).unwrap_or(&[]);
        entries.extend(page_padding(
            &entries,
            &o.tensors[range.clone()],
            o.alignment,
            copied,
        ));
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
                    } => pipe.copy_tensor(
                        name,
                        Extent {
                            file,
                            path,
                            offset: at,
                            len,
                        },
                    )?,
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
        let plan = part_plan(o.out, o.entries, &layout, o.inputs)?;
        let written = wrote
            .iter()
            .map(|(p, b)| {
                let name = p.file_name().expect("planned").to_string_lossy();
                (name.into_owned(), *b)
            })
            .collect();
        crate::parts::write_manifest(&GgufParts::new(o.out), output, (i, n), plan, written)?;
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

/// A GGUF part manifest: what one part wrote (`(file name, bytes)` of each file) and the plan.
pub type GgufManifest = PartManifest<GgufPartPlan, (String, u64)>;

/// The manifest path of part `i` of `n` of output `out`.
pub fn manifest_path(out: &Path, i: usize, n: usize) -> PathBuf {
    crate::parts::manifest_path(&GgufParts::new(out), i, n)
}

/// The manifests of GGUF output `out`, sorted by name.
pub fn find_manifests(out: &Path) -> Vec<PathBuf> {
    crate::parts::find_manifests(&GgufParts::new(out))
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

/// What `finalize` of a GGUF output did.
#[derive(Debug, Serialize)]
pub struct GgufFinalizeReport {
    pub out: String,
    pub parts: usize,
    pub files: Vec<String>,
    pub tensor_count: usize,
    pub bytes: u64,
}

/// Checks every part of GGUF output `out` and removes the manifests.
pub fn finalize(out: &Path) -> Result<GgufFinalizeReport> {
    crate::parts::finalize_parts(&GgufParts::new(out))
}

/// The GGUF merge output `out` (its first file's path, as `--out` names it).
pub struct GgufParts<'a> {
    out: &'a Path,
}

impl<'a> GgufParts<'a> {
    pub fn new(out: &'a Path) -> Self {
        GgufParts { out }
    }
}

impl SplitOutput for GgufParts<'_> {
    type Plan = GgufPartPlan;
    type Written = (String, u64);
    type Report = GgufFinalizeReport;
    const VERSION: u32 = GGUF_MANIFEST_VERSION;

    fn out(&self) -> &Path {
        self.out
    }

    fn dir(&self) -> PathBuf {
        out_dir(self.out)
    }

    /// `.OUT.lorakit-part-`: several GGUF outputs may share a folder.
    fn manifest_prefix(&self) -> String {
        let name = self
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!(".{name}.lorakit-part-")
    }

    fn none_found(&self) -> InputError {
        InputError::option(self.out, |o| {
            format!(
                "no GGUF part manifests (.NAME.lorakit-part-I-of-N.json) beside it: run merge with {} first",
                o.set(Opt::Part, "I/N")
            )
        })
    }

    fn planned_files(plan: &GgufPartPlan) -> Vec<&str> {
        plan.files.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn written_name(w: &(String, u64)) -> &str {
        &w.0
    }

    /// What the owner recorded writing.
    fn planned_bytes(plan: &GgufPartPlan, j: usize, m: &GgufManifest) -> Option<u64> {
        let name = &plan.files.get(j)?.0;
        m.written.iter().find(|(w, _)| w == name).map(|&(_, b)| b)
    }

    fn check_names(path: &Path, plan: &GgufPartPlan) -> InputResult<()> {
        if !is_plain_name(&plan.out) {
            return Err(unsafe_name(path, "output", &plan.out));
        }
        Ok(())
    }

    /// The inputs must be those the parts read.
    fn check_inputs(&self, manifest: &Path, plan: &GgufPartPlan) -> Result<()> {
        let paths: Vec<PathBuf> = plan.inputs.iter().map(|s| PathBuf::from(&s.path)).collect();
        let now = stamps(&paths)?;
        if let Some((was, _)) = plan.inputs.iter().zip(&now).find(|(a, b)| a != b) {
            bail!(InputError::invalid(
                manifest,
                format!(
                    "input {} changed (size or mtime) since the parts ran; rerun them",
                    was.path
                )
            ));
        }
        Ok(())
    }

    /// One GGUF model (split keys consistent) holding exactly the planned tensors.
    fn finish(
        &self,
        manifest: &Path,
        first: &GgufManifest,
        _: &mut crate::io::Output,
        bytes: u64,
    ) -> Result<GgufFinalizeReport> {
        let plan = &first.plan;
        let Some((first_file, _)) = plan.files.first() else {
            bail!(InputError::invalid(
                manifest,
                "its plan names no output file"
            ));
        };
        let model = GgufModel::open(self.dir().join(first_file))?;
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
        Ok(GgufFinalizeReport {
            out: self.out.display().to_string(),
            parts: first.parts,
            files: plan.files.iter().map(|(f, _)| f.clone()).collect(),
            tensor_count: want.len(),
            bytes,
        })
    }
}
