//! Splitting one output over N independent processes (`--part i/N`) and joining them
//! (`finalize`).
//!
//! **merge**:
//! Output file `j` (0-based, in the plan's order) belongs to part `j mod N + 1`, so N jobs on N
//! machines — a Slurm array, a Kubernetes indexed Job — each write a deterministic share. Every
//! part computes the same plan from the same inputs and flags; each writes its files and a
//! manifest `.lorakit-part-I-of-N.json` holding the whole plan (file names and exact sizes, the
//! index document, the non-weight files to copy) and what it wrote. `finalize` checks that all N
//! manifests are present and agree, that every planned file exists with its planned size and a
//! valid header, then writes the copied files and the index (last, atomically) and removes the
//! manifests. The result is byte-identical to a single-process run.
//!
//! **extract**: the output is one adapter, so parts split the modules instead of the files;
//! see the section on extract part files below.
//!
//! Must not trust a manifest: every planned file is checked against the plan this run computes, and
//! nothing is written or copied outside it.

use crate::error::{InputError, InputResult, Opt};
use crate::io::{Output, SafetensorsFile};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One planned output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFile {
    pub name: String,
    pub bytes: u64,
}

/// The whole output, identical in every part's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub files: Vec<PlannedFile>,
    pub index_name: Option<String>,
    /// The index document, written by `finalize`.
    pub index: Option<String>,
    /// (absolute source, destination path relative to the output folder) of non-weight files
    /// to copy.
    pub extra: Vec<(String, String)>,
    /// The base folder (absolute). `finalize` checks that the output's tensors are the base's
    /// and that `extra` is exactly the base's non-weight files, so an edited manifest cannot
    /// make it copy any other file.
    pub base: String,
    /// The base is quantized and the output writes it as float (`merge --quant dequantize`):
    /// the output's tensors are the base's logical weights (companions dropped, packed weights
    /// under their `….weight` names) and config.json is copied without `quantization_config`.
    #[serde(default)]
    pub dequantized: bool,
}

/// Version of the merge part manifest (2: the plan records the base folder).
pub const MANIFEST_VERSION: u32 = 2;

/// Whether `name` is a plain file name: not empty, no `/`, not `.` or `..`, no NUL. Every file
/// name taken from a manifest or an index must be one before it is joined to a folder.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Whether `rel` is a relative path of plain names (`1_Pooling/config.json`), never leaving
/// the folder it is joined to.
pub fn is_safe_relative(rel: &str) -> bool {
    !rel.is_empty() && rel.split('/').all(is_plain_name)
}

/// Refuses a manifest whose file names could reach outside the output folder.
fn check_manifest_names(path: &Path, m: &Manifest) -> InputResult<()> {
    let bad = |what: &str, name: &str| {
        Err(InputError::invalid(
            path,
            format!(
                "{what} {:?} is not a plain file name inside the output folder; the manifest is not lorakit's or was edited",
                name
            ),
        ))
    };
    for f in &m.plan.files {
        if !is_plain_name(&f.name) {
            return bad("planned file", &f.name);
        }
    }
    if let Some(n) = &m.plan.index_name {
        if !is_plain_name(n) || !n.ends_with(".json") {
            return bad("index name", n);
        }
    }
    for (_, dst) in &m.plan.extra {
        if !is_safe_relative(dst) {
            return bad("copied file", dst);
        }
    }
    for w in &m.written {
        if !is_plain_name(w) {
            return bad("written file", w);
        }
    }
    Ok(())
}

/// What one part wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub part: usize,
    pub parts: usize,
    pub plan: Plan,
    pub written: Vec<String>,
}

impl Manifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("json");
        v.push(b'\n');
        v
    }
}

/// Parses `i/N` (1 ≤ i ≤ N).
pub fn parse_part(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not of the form I/N (e.g. 2/8)"))?;
    let (i, n): (usize, usize) = (
        i.trim()
            .parse()
            .map_err(|_| format!("`{i}` is not a part number"))?,
        n.trim()
            .parse()
            .map_err(|_| format!("`{n}` is not a part count"))?,
    );
    if n == 0 || i == 0 || i > n {
        return Err(format!("part {i}/{n}: need 1 ≤ I ≤ N"));
    }
    Ok((i, n))
}

/// Whether output file `index` belongs to `part` (everything when not split).
pub fn owns(part: Option<(usize, usize)>, index: usize) -> bool {
    match part {
        None => true,
        Some((i, n)) => index % n == i - 1,
    }
}

pub fn manifest_name(i: usize, n: usize) -> String {
    format!(".lorakit-part-{i}-of-{n}.json")
}

/// The folder the output files go to.
pub fn out_dir(first_file: &Path) -> PathBuf {
    match first_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether `dir` holds merge part manifests.
pub fn has_merge_manifests(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(".lorakit-part-") && n.ends_with(".json")
        })
}

/// What `finalize` did.
#[derive(Debug, Serialize)]
pub struct FinalizeReport {
    pub out: String,
    pub parts: usize,
    pub files_checked: usize,
    pub bytes: u64,
    pub index: Option<String>,
    pub copied: Vec<String>,
}

/// Checks all parts of `dir` and writes the index and copied files.
pub fn finalize(dir: &Path) -> Result<FinalizeReport> {
    let mut manifests: Vec<(PathBuf, Manifest)> = Vec::new();
    for e in std::fs::read_dir(dir)
        .map_err(|e| InputError::io(dir, e))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".lorakit-part-") && name.ends_with(".json") {
            let text = crate::io::read_json_file(&e.path())?;
            let m: Manifest = serde_json::from_slice(&text).map_err(|err| {
                InputError::invalid(e.path(), format!("not a lorakit part manifest: {err}"))
            })?;
            if m.version != MANIFEST_VERSION {
                bail!(InputError::invalid(
                    e.path(),
                    format!(
                        "part manifest version {} (this lorakit writes {MANIFEST_VERSION}): rerun the parts",
                        m.version
                    )
                ));
            }
            check_manifest_names(&e.path(), &m)?;
            manifests.push((e.path(), m));
        }
    }
    manifests.sort_by_key(|(_, m)| m.part);
    let Some((first_path, first)) = manifests.first().cloned() else {
        bail!(InputError::option(dir, |o| {
            format!(
            "no part manifests (.lorakit-part-I-of-N.json) or extract part files: run merge or extract with {} first",
            o.set(Opt::Part, "I/N")
        )
        }));
    };
    let n = first.parts;
    for (p, m) in &manifests {
        if m.parts != n || m.plan != first.plan || m.version != first.version {
            bail!(InputError::invalid(
                p,
                format!(
                    "part {}/{} was planned differently from {} (different inputs or flags)",
                    m.part,
                    m.parts,
                    first_path.display()
                )
            ));
        }
    }
    let present: Vec<usize> = manifests.iter().map(|(_, m)| m.part).collect();
    let missing: Vec<String> = (1..=n)
        .filter(|i| !present.contains(i))
        .map(|i| format!("{i}/{n}"))
        .collect();
    if !missing.is_empty() {
        bail!(InputError::invalid(
            dir,
            format!("parts not finished: {}", missing.join(", "))
        ));
    }
    if n == 0 || first.part == 0 || manifests.iter().any(|(_, m)| m.part > n) {
        bail!(InputError::invalid(
            &first_path,
            "part numbers out of range"
        ));
    }
    let mut bytes = 0;
    let mut out_names: Vec<String> = Vec::new();
    for (j, f) in first.plan.files.iter().enumerate() {
        let owner = j % n + 1;
        let path = dir.join(&f.name);
        let len = std::fs::metadata(&path).map(|m| m.len()).map_err(|e| {
            InputError::invalid(
                &path,
                format!("planned output of part {owner}/{n} is missing: {e}"),
            )
        })?;
        if len != f.bytes {
            bail!(InputError::invalid(
                &path,
                format!(
                    "is {len} bytes, the plan says {} (part {owner}/{n})",
                    f.bytes
                )
            ));
        }
        let f = SafetensorsFile::open(&path)?;
        out_names.extend(f.tensors().iter().map(|t| t.name.clone()));
        bytes += len;
    }
    // The copied files must be exactly the recorded base's non-weight files, and the base must
    // be the checkpoint the parts wrote: nothing else can be copied into the output.
    let base = crate::io::Checkpoint::open(&first.plan.base).map_err(|e| {
        InputError::invalid(
            &first_path,
            format!("the base folder the manifest records cannot be opened: {e}"),
        )
    })?;
    let mut base_names: Vec<String> = if first.plan.dequantized {
        let q = crate::io::quant::QuantMap::scan(&base)?;
        base.names()
            .filter(|n| q.companion_of(n).is_none())
            .map(|n| q.logical_name(n).to_owned())
            .collect()
    } else {
        base.names().map(str::to_owned).collect()
    };
    base_names.sort();
    out_names.sort();
    if base_names != out_names {
        bail!(InputError::invalid(
            &first_path,
            format!(
                "the output's tensors are not those of the recorded base {}; the manifest was edited or the base changed",
                first.plan.base
            )
        ));
    }
    let expected = crate::merge::copied_files(&base, dir)?;
    if expected != first.plan.extra {
        bail!(InputError::invalid(
            &first_path,
            format!(
                "the files to copy are not the non-weight files of the recorded base {}; the manifest was edited or the base changed",
                first.plan.base
            )
        ));
    }
    let mut out = Output::new();
    out.lock(dir, crate::io::writer::LockMode::Exclusive)?;
    let mut copied = Vec::new();
    for (src, dst) in &first.plan.extra {
        let mut data = crate::io::read_whole_file(Path::new(src))?;
        if first.plan.dequantized && dst == "config.json" {
            // As the single-process merge writes it (`write_finals`).
            data = crate::merge::without_quantization_config(data);
        }
        let d = dir.join(dst);
        if let Some(parent) = d.parent() {
            out.create_dir_all(parent)?;
        }
        out.small_file(&d, &data)?;
        copied.push(dst.clone());
    }
    if let (Some(name), Some(doc)) = (&first.plan.index_name, &first.plan.index) {
        out.small_file(&dir.join(name), doc.as_bytes())?;
    }
    out.commit()?;
    for (p, _) in &manifests {
        std::fs::remove_file(p).map_err(|e| InputError::io(p, e))?;
    }
    Ok(FinalizeReport {
        out: dir.display().to_string(),
        parts: n,
        files_checked: first.plan.files.len(),
        bytes,
        index: first.plan.index_name.clone(),
        copied,
    })
}

// ---------------------------------------------------------------------------
// extract --part I/N
// ---------------------------------------------------------------------------
//
// An extraction writes one adapter, so its parts cannot each write a share of the output files.
// Each part extracts its share of the modules (see `ExtractPlan::part_items`) into a part file:
// a safetensors file whose tensors are the factors (`{j}.lora_A` `[rank, in]`, `{j}.lora_B`
// `[out, rank]`, f32 holding values already rounded to the output dtype, j = plan index) and
// whose `__metadata__` entry `lorakit.extract_part` holds an [`ExtractPart`]: the arguments
// (absolute paths), the plan's tensor names, the inputs' size and mtime, and every tensor's
// report. `finalize` rebuilds the plan from the arguments, checks every part against it and
// assembles the adapter with the same code as a single run, so the bytes are identical.

/// Version of the part-file layout.
pub const EXTRACT_PART_VERSION: u32 = 1;
/// `__metadata__` key of a part file.
pub const EXTRACT_PART_KEY: &str = "lorakit.extract_part";

/// Size and modification time of one input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub path: String,
    pub bytes: u64,
    pub mtime_ns: i128,
}

/// Stamps of `paths` (inputs of a split run: they must not change between parts).
pub fn stamps(paths: &[PathBuf]) -> InputResult<Vec<Stamp>> {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).map_err(|e| InputError::io(p, e))?;
            let mtime_ns = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128);
            Ok(Stamp {
                path: std::path::absolute(p)
                    .unwrap_or_else(|_| p.clone())
                    .display()
                    .to_string(),
                bytes: m.len(),
                mtime_ns,
            })
        })
        .collect()
}

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
    pub tensor_count: usize,
    pub module_count: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Where part `i` of `n` of an extraction to `out` goes: inside the adapter folder (PEFT), or
/// beside the adapter file (kohya).
pub fn extract_part_path(
    out: &Path,
    format: crate::adapter::Format,
    i: usize,
    n: usize,
) -> PathBuf {
    match format {
        crate::adapter::Format::Peft => {
            out.join(format!(".lorakit-extract-part-{i}-of-{n}.safetensors"))
        }
        crate::adapter::Format::Kohya => {
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

/// The files of `dir` whose names start with `prefix` and end with `suffix`, sorted.
pub fn files_named(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
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
            bail!(InputError::invalid(
                p,
                format!(
                    "part {}/{} was run with other arguments than {} (part {}/{n}); rerun the parts with the same flags",
                    h.part,
                    h.parts,
                    paths[0].display(),
                    first.part
                )
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_partition_the_files() {
        for n in 1..6 {
            for j in 0..17 {
                assert_eq!((1..=n).filter(|&i| owns(Some((i, n)), j)).count(), 1);
            }
        }
        assert_eq!(parse_part("2/3"), Ok((2, 3)));
        assert!(
            parse_part("0/3").is_err() && parse_part("4/3").is_err() && parse_part("3").is_err()
        );
    }
}
