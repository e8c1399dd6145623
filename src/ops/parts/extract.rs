//! `extract --part I/N`: the part files each process writes, read back and joined by
//! `finalize`.
//!
//! An extraction writes one adapter, so its parts cannot each write a share of the output files.
//! Each part extracts its share of the modules (see `ExtractPlan::part_items`) into a part file:
//! a safetensors file whose tensors are the factors (`{j}.lora_A` `[rank, in]`, `{j}.lora_B`
//! `[out, rank]`, f32 holding values already rounded to the output dtype, j = plan index) and
//! whose `__metadata__` entry `lorakit.extract_part` holds an [`ExtractPart`]: the arguments
//! (absolute paths), the plan's tensor names, the inputs' size and mtime, and every tensor's
//! report. `finalize` rebuilds the plan from the arguments, checks every part against it and
//! assembles the adapter with the same code as a single run, so the bytes are identical.
//!
//! Must not trust a part file: every part is checked against the plan rebuilt from its
//! arguments and against the inputs as they are now.

use super::engine::{files_named, other_run, out_dir, Stamp};
use crate::error::InputError;
use crate::io::{Output, SafetensorsFile};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of the part-file layout.
pub const EXTRACT_PART_VERSION: u32 = 1;
/// `__metadata__` key of a part file.
pub const EXTRACT_PART_KEY: &str = "lorakit.extract_part";

/// The JSON header of an extract part file.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExtractPart {
    pub version: u32,
    pub part: usize,
    pub parts: usize,
    /// The `extract` arguments (paths absolute, `--part` and `--json` left out).
    pub args: serde_json::Value,
    /// Every planned tensor, in plan order.
    pub tensors: Vec<String>,
    pub inputs: Vec<Stamp>,
    /// Where this part computed (`cpu (2 threads)`, a GPU's name).
    pub device: String,
    /// Plan indices of this part's tensors, ascending.
    pub items: Vec<usize>,
    /// Their outcomes, in the same order (factors are the file's tensors).
    pub outcomes: Vec<crate::extract::Outcome>,
}

/// What one part wrote.
#[derive(Debug, Clone, Serialize)]
pub struct PartReport {
    pub part: usize,
    pub parts: usize,
    pub path: String,
    /// The files this part wrote (its part file), as every report lists them.
    pub files: Vec<String>,
    pub tensor_count: usize,
    pub module_count: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Where part `i` of `n` of an extraction to `out` goes: inside the adapter folder (PEFT), or
/// beside the adapter file (kohya), by the format's [`crate::adapter::formats::Shape`].
pub fn extract_part_path(
    out: &Path,
    format: crate::adapter::Format,
    i: usize,
    n: usize,
) -> PathBuf {
    use crate::adapter::formats::Shape;
    match format.layout().shape() {
        Shape::Folder => out.join(format!(".lorakit-extract-part-{i}-of-{n}.safetensors")),
        Shape::File => {
            let name = out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out_dir(out).join(format!(
                ".{name}.lorakit-extract-part-{i}-of-{n}.safetensors"
            ))
        }
    }
}

/// The extract part files for output `out` (a PEFT folder or a kohya file), sorted by name.
pub fn find_extract_parts(out: &Path) -> Vec<PathBuf> {
    let (dir, prefix) = if out.is_dir() {
        (out.to_path_buf(), ".lorakit-extract-part-".to_string())
    } else {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (out_dir(out), format!(".{name}.lorakit-extract-part-"))
    };
    files_named(&dir, &prefix, ".safetensors")
}

/// Writes one part file (atomically) from `header` and the outcomes of its tensors.
pub fn write_extract_part(
    path: &Path,
    mut header: ExtractPart,
    mut outcomes: Vec<crate::extract::Outcome>,
) -> Result<PartReport> {
    use crate::io::TensorSpec;
    let mut specs = Vec::new();
    let mut data: Vec<Vec<u8>> = Vec::new();
    let mut modules = 0;
    for (&j, o) in header.items.iter().zip(outcomes.iter_mut()) {
        if let Some(lr) = o.low_rank.as_mut() {
            modules += 1;
            let r = lr.report.rank;
            specs.push(TensorSpec::new(
                format!("{j}.lora_A"),
                crate::dtype::Dtype::F32,
                vec![r, lr.in_features],
            ));
            data.push(crate::dtype::encode(
                crate::dtype::Dtype::F32,
                &std::mem::take(&mut lr.a),
            ));
            specs.push(TensorSpec::new(
                format!("{j}.lora_B"),
                crate::dtype::Dtype::F32,
                vec![lr.out_features, r],
            ));
            data.push(crate::dtype::encode(
                crate::dtype::Dtype::F32,
                &std::mem::take(&mut lr.b),
            ));
        }
    }
    let tensors = header.items.len();
    header.outcomes = outcomes;
    let meta = vec![(
        EXTRACT_PART_KEY.to_string(),
        serde_json::to_string(&header)?,
    )];
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let mut out = Output::new();
    out.create_dir_all(&out_dir(path))?;
    out.lock(path, crate::io::writer::LockMode::Exclusive)?;
    let mut w = out.safetensors(path, &meta, specs)?;
    for (name, d) in names.iter().zip(&data) {
        w.write_tensor(name, d)?;
    }
    w.finish()?;
    let bytes = out.commit()?;
    Ok(PartReport {
        part: header.part,
        parts: header.parts,
        path: path.display().to_string(),
        files: vec![path.display().to_string()],
        tensor_count: tensors,
        module_count: modules,
        bytes,
        seconds: 0.0,
    })
}

/// Reads part files: each one's header and file, validated as safetensors.
pub fn read_extract_parts(paths: &[PathBuf]) -> Result<Vec<(ExtractPart, SafetensorsFile)>> {
    if paths.is_empty() {
        bail!("no extract part files");
    }
    let mut v = Vec::new();
    for p in paths {
        let f = SafetensorsFile::open(p)?;
        let text = f.header().metadata_value(EXTRACT_PART_KEY).ok_or_else(|| {
            InputError::invalid(
                p,
                format!("not a lorakit extract part file (no {EXTRACT_PART_KEY} metadata)"),
            )
        })?;
        let h: ExtractPart = serde_json::from_str(text)
            .map_err(|e| InputError::invalid(p, format!("not a lorakit extract part file: {e}")))?;
        if h.version != EXTRACT_PART_VERSION {
            bail!(InputError::invalid(
                p,
                format!(
                    "part file version {} (this lorakit writes {EXTRACT_PART_VERSION}): rerun the parts",
                    h.version
                )
            ));
        }
        v.push((h, f));
    }
    Ok(v)
}

/// Checks the parts against each other and against the plan rebuilt from their arguments
/// (`tensors`, the inputs' `stamps`, and each part's share `share(part)`), and returns every
/// planned tensor's outcome in plan order, factors read back from the part files.
pub fn join_extract_parts(
    parts: Vec<(ExtractPart, SafetensorsFile)>,
    paths: &[PathBuf],
    tensors: &[String],
    stamps: &[Stamp],
    share: impl Fn((usize, usize)) -> Vec<usize>,
) -> Result<Vec<crate::extract::Outcome>> {
    let (first, _) = &parts[0];
    let n = first.parts;
    let mut by_part: Vec<Option<usize>> = vec![None; n];
    for (k, ((h, _), p)) in parts.iter().zip(paths).enumerate() {
        if h.parts != n || h.args != first.args {
            bail!(other_run(p, (h.part, h.parts), &paths[0]));
        }
        if h.part == 0 || h.part > n {
            bail!(InputError::invalid(
                p,
                format!("part {}/{n} is out of range", h.part)
            ));
        }
        if let Some(other) = by_part[h.part - 1] {
            bail!(InputError::invalid(
                p,
                format!("part {}/{n} is also in {}", h.part, paths[other].display())
            ));
        }
        by_part[h.part - 1] = Some(k);
        if h.tensors != tensors {
            bail!(InputError::invalid(
                p,
                "was planned over other tensors than the inputs hold now (the checkpoints changed since the part ran)"
            ));
        }
        if h.inputs != stamps {
            let changed = h
                .inputs
                .iter()
                .zip(stamps)
                .find(|(a, b)| a != b)
                .map_or_else(|| "the input list".to_string(), |(a, _)| a.path.clone());
            bail!(InputError::invalid(
                p,
                format!(
                    "input {changed} changed (size or mtime) since this part ran; rerun the parts"
                )
            ));
        }
        if h.items != share((h.part, n)) || h.outcomes.len() != h.items.len() {
            bail!(InputError::invalid(
                p,
                format!(
                    "part {}/{n} does not hold the tensors the plan gives it",
                    h.part
                )
            ));
        }
    }
    let missing: Vec<String> = (1..=n)
        .filter(|i| by_part[i - 1].is_none())
        .map(|i| format!("{i}/{n}"))
        .collect();
    if !missing.is_empty() {
        bail!(InputError::invalid(
            out_dir(&paths[0]),
            format!("extract parts not finished: {}", missing.join(", "))
        ));
    }
    let mut slots: Vec<Option<crate::extract::Outcome>> =
        (0..tensors.len()).map(|_| None).collect();
    for ((h, f), p) in parts.into_iter().zip(paths) {
        for (j, mut o) in h.items.into_iter().zip(h.outcomes) {
            if let Some(lr) = o.low_rank.as_mut() {
                let r = lr.report.rank;
                let read = |key: String, shape: [usize; 2]| -> Result<Vec<f32>> {
                    let info = f.info(&key).ok_or_else(|| {
                        InputError::invalid(p, format!("tensor `{key}` is missing"))
                    })?;
                    if info.shape != shape || info.dtype != crate::dtype::Dtype::F32 {
                        bail!(InputError::invalid(
                            p,
                            format!(
                                "tensor `{key}`: expected f32 {shape:?}, found {} {:?}",
                                crate::dtype::name(info.dtype),
                                info.shape
                            )
                        ));
                    }
                    Ok(f.read_f32(&key)?)
                };
                lr.a = read(format!("{j}.lora_A"), [r, lr.in_features])?;
                lr.b = read(format!("{j}.lora_B"), [lr.out_features, r])?;
                if let Some(bad) = lr.a.iter().chain(&lr.b).find(|x| !x.is_finite()) {
                    bail!(InputError::invalid(
                        p,
                        format!("tensor `{j}.lora_A`/`{j}.lora_B` holds {bad}")
                    ));
                }
            }
            match slots.get_mut(j) {
                Some(s @ None) => *s = Some(o),
                _ => bail!(InputError::invalid(
                    p,
                    format!("tensor index {j} is not this part's")
                )),
            }
        }
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(j, o)| {
            o.ok_or_else(|| {
                anyhow::anyhow!(InputError::invalid(
                    out_dir(&paths[0]),
                    format!("no part holds tensor `{}`", tensors[j])
                ))
            })
        })
        .collect()
}
