//! Splitting one output over N independent processes (`--part i/N`) and joining them
//! (`finalize`).
//!
//! Output file `j` (0-based, in the plan's order) belongs to part `j mod N + 1`, so N jobs on N
//! machines — a Slurm array, a Kubernetes indexed Job — each write a deterministic share. Every
//! part computes the same plan from the same inputs and flags; each writes its files and a
//! manifest `.lorakit-part-I-of-N.json` holding the whole plan (file names and exact sizes, the
//! index document, the non-weight files to copy) and what it wrote. `finalize` checks that all N
//! manifests are present and agree, that every planned file exists with its planned size and a
//! valid header, then writes the copied files and the index (last, atomically) and removes the
//! manifests. The result is byte-identical to a single-process run.

use crate::error::{InputError, InputResult};
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
    /// (absolute source, destination name) of non-weight files to copy.
    pub extra: Vec<(String, String)>,
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
            let text = std::fs::read(e.path()).map_err(|err| InputError::io(e.path(), err))?;
            let m: Manifest = serde_json::from_slice(&text).map_err(|err| {
                InputError::invalid(e.path(), format!("not a lorakit part manifest: {err}"))
            })?;
            manifests.push((e.path(), m));
        }
    }
    manifests.sort_by_key(|(_, m)| m.part);
    let Some((first_path, first)) = manifests.first().cloned() else {
        bail!(InputError::invalid(
            dir,
            "no part manifests (.lorakit-part-I-of-N.json): run merge --part I/N first"
        ));
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
    let mut bytes = 0;
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
        check_header(&path)?;
        bytes += len;
    }
    let mut out = Output::new();
    let mut copied = Vec::new();
    for (src, dst) in &first.plan.extra {
        let data = std::fs::read(src).map_err(|e| InputError::io(src, e))?;
        out.small_file(&dir.join(dst), &data)?;
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

fn check_header(path: &Path) -> InputResult<()> {
    SafetensorsFile::open(path).map(|_| ())
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
