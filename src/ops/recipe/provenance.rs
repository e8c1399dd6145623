//! A recipe step's provenance: the record of its inputs' hashes and its outputs' sizes and
//! mtimes written after it runs, and the staleness rules that read it back (why a step must run
//! again). Must not: run commands or print; [`super`] does both.

use super::step::{Share, Step};
use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The step's own provenance record: `OUT/.lorakit-step{tag}.json` for a folder,
/// `OUT.lorakit-step{tag}.json` beside a file, the tag naming a part (`-part-I-of-N`) or a
/// finalize (`-finalize`) so that steps sharing an output never read each other's record.
pub(super) fn provenance_path(s: &Step, out: &Path) -> PathBuf {
    let name = format!(".lorakit-step{}.json", s.share.record_tag());
    if out.is_dir() {
        out.join(name)
    } else {
        let mut p = out.as_os_str().to_owned();
        p.push(&name[..]);
        PathBuf::from(p)
    }
}

/// A step's provenance record (of this or an older naming), never an input or output file.
pub(super) fn is_record(f: &Path) -> bool {
    f.file_name()
        .is_some_and(|n| n.to_string_lossy().contains(".lorakit-step"))
}

/// Version of the provenance record.
pub(super) const PROVENANCE_VERSION: u32 = 2;

/// What a finished step records beside its output: the command line, every input file with its
/// BLAKE3 content hash (and size and mtime, for `--trust-mtime`), and every output file's size
/// and mtime (an output edited since is rewritten).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub(super) struct Provenance {
    version: u32,
    argv: Vec<String>,
    inputs: Vec<FileRecord>,
    outputs: Vec<FileRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub(super) struct FileRecord {
    path: String,
    bytes: u64,
    mtime_ns: i128,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blake3: Option<String>,
}

/// How reruns decide that a step is up to date.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rerun {
    /// Run every step.
    pub force: bool,
    /// An input whose size and mtime match the record is taken as unchanged without hashing it.
    pub trust_mtime: bool,
}

pub(super) fn stat(path: &Path) -> Result<(u64, i128)> {
    let m = std::fs::metadata(path).map_err(|e| crate::error::InputError::io(path, e))?;
    let mtime_ns = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    Ok((m.len(), mtime_ns))
}

/// BLAKE3 of a file's content, memory-mapped and hashed on the rayon pool. The map is
/// lorakit's own (`io::mapped::map_input`), not blake3's `update_mmap_rayon`: a file truncated
/// while it is hashed raises SIGBUS in a noted map, reported as one line naming the file.
pub(super) fn content_hash(path: &Path) -> Result<String> {
    let file = crate::io::open_regular(path)?;
    let mut h = blake3::Hasher::new();
    if let Some(map) = crate::io::mapped::map_input(&file, path)
        .map_err(|e| crate::error::InputError::io(path, e))?
    {
        h.update_rayon(&map);
    }
    Ok(h.finalize().to_hex().to_string())
}

pub(super) fn files_of(paths: &[String]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(Path::new(p), &mut files);
    }
    files.sort();
    files.dedup();
    files
}

pub(super) fn record(path: &Path, hash: bool) -> Result<FileRecord> {
    let (bytes, mtime_ns) = stat(path)?;
    Ok(FileRecord {
        path: path.display().to_string(),
        bytes,
        mtime_ns,
        blake3: if hash {
            Some(content_hash(path)?)
        } else {
            None
        },
    })
}

/// The provenance of a step that has just run; `before`, its output's files as they were
/// before it ran.
pub(super) fn provenance(s: &Step, out: &Path, before: &[FileRecord]) -> Result<Provenance> {
    let mut outputs: Vec<FileRecord> = output_files(out)
        .iter()
        .map(|f| record(f, false))
        .collect::<Result<_>>()?;
    if s.share != Share::Whole {
        // A step sharing its output owns the files it created or rewrote.
        outputs.retain(|r| !before.contains(r));
    }
    let own: Vec<&str> = outputs.iter().map(|r| r.path.as_str()).collect();
    let inputs = input_files(s, out, &own)
        .iter()
        .map(|f| record(f, true))
        .collect::<Result<_>>()?;
    Ok(Provenance {
        version: PROVENANCE_VERSION,
        argv: s.argv.clone(),
        inputs,
        outputs,
    })
}

/// The files of an output (a file, or a folder's visible files).
pub(super) fn output_files(out: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    collect_files(out, &mut v);
    v.sort();
    v
}

/// The files a step reads. `finalize` reads its output: every file there, the parts' hidden
/// manifests and part files included (beside a file output: the hidden files next to it),
/// except the files it wrote itself (`own`) and provenance records, so that parts that ran
/// again since make it run again.
pub(super) fn input_files(s: &Step, out: &Path, own: &[&str]) -> Vec<PathBuf> {
    if s.share != Share::Finalize {
        return files_of(&s.inputs);
    }
    let mut v = Vec::new();
    let beside = |d: &Path, v: &mut Vec<PathBuf>| {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let hidden = e.file_name().to_string_lossy().starts_with('.');
            if hidden && e.path().is_file() {
                v.push(e.path());
            }
        }
    };
    collect_files(out, &mut v);
    if out.is_dir() {
        beside(out, &mut v);
    } else if let Some(d) = out.parent() {
        beside(
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            &mut v,
        );
    }
    v.retain(|f| !is_record(f) && !own.contains(&f.display().to_string().as_str()));
    v.sort();
    v.dedup();
    v
}

/// Why step `i` must run ([`stale`]), where steps sharing one output (the parts of a
/// `--part I/N` command and their `finalize`) run together: `finalize` consumes the parts'
/// manifests, so a part run again alone (its record lost, corrupt or forged) would leave an
/// output its finalize can no longer join, and a finalize run again alone finds no parts.
/// `runs[j]` for `j < i`: whether step `j` ran (or, planning, will run); evaluated when the
/// step's turn comes, as an earlier step may just have rewritten its inputs.
pub(super) fn why_run(i: usize, steps: &[Step], rerun: Rerun, runs: &[bool]) -> Option<String> {
    let s = &steps[i];
    stale(s, rerun).or_else(|| {
        let o = s.out.as_ref().filter(|_| s.share != Share::Whole)?;
        steps.iter().enumerate().find_map(|(j, t)| {
            let shared = j != i && t.share != Share::Whole && t.out.as_ref() == Some(o);
            let w = match j < i {
                true => runs[j].then(|| "runs".to_owned()),
                false => stale(t, rerun),
            };
            w.filter(|_| shared)
                .map(|w| format!("step `{}` of the same output {w}", t.name))
        })
    })
}

/// `None` when the step's output is up to date, else why it must run.
pub(super) fn stale(s: &Step, rerun: Rerun) -> Option<String> {
    if rerun.force {
        return Some("forced".into());
    }
    let Some(o) = &s.out else {
        return Some("no output to check".into());
    };
    let o = Path::new(o);
    if !o.exists() {
        return Some("no output yet".into());
    }
    let Some(rec) = std::fs::read(provenance_path(s, o))
        .ok()
        .and_then(|t| serde_json::from_slice::<Provenance>(&t).ok())
        .filter(|p| p.version == PROVENANCE_VERSION)
    else {
        return Some("no provenance record".into());
    };
    if rec.argv != s.argv {
        return Some("options changed".into());
    }
    let own: Vec<&str> = rec.outputs.iter().map(|r| r.path.as_str()).collect();
    let files = input_files(s, o, &own);
    if files.len() != rec.inputs.len()
        || files
            .iter()
            .zip(&rec.inputs)
            .any(|(f, r)| f.display().to_string() != r.path)
    {
        return Some("the input files changed".into());
    }
    for (f, r) in files.iter().zip(&rec.inputs) {
        let Ok((bytes, mtime_ns)) = stat(f) else {
            return Some(format!("{} cannot be read", f.display()));
        };
        if bytes != r.bytes {
            return Some(format!("{} changed", f.display()));
        }
        if rerun.trust_mtime && mtime_ns == r.mtime_ns {
            continue;
        }
        match content_hash(f) {
            Ok(h) if Some(&h) == r.blake3.as_ref() => {}
            _ => return Some(format!("{} changed", f.display())),
        }
    }
    // A step sharing its output checks the files it wrote; any other, every file there.
    let outs = match s.share {
        Share::Whole => output_files(o),
        _ => rec.outputs.iter().map(|r| PathBuf::from(&r.path)).collect(),
    };
    if outs.len() != rec.outputs.len()
        || outs.iter().zip(&rec.outputs).any(|(f, r)| {
            f.display().to_string() != r.path || stat(f).ok() != Some((r.bytes, r.mtime_ns))
        })
    {
        return Some("the output was modified".into());
    }
    None
}

/// The visible files at or below `p`. A folder reached through a symlink below `p` is not
/// entered (a link to an ancestor would never end; a file reached through a link, as in a
/// Hugging Face cache snapshot, counts), and only regular files count (no FIFOs or devices,
/// which a stat or hash could block on).
pub(super) fn collect_files(p: &Path, out: &mut Vec<PathBuf>) {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(p) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&path, out),
                Ok(t) if t.is_file() => out.push(path),
                Ok(t) if t.is_symlink() && path.metadata().is_ok_and(|m| m.is_file()) => {
                    out.push(path)
                }
                _ => {}
            }
        }
    }
    if p.is_dir() {
        walk(p, out);
    } else if p.metadata().is_ok_and(|m| m.is_file()) {
        out.push(p.to_path_buf());
    }
}

pub(super) fn bytes_of(paths: &[String]) -> u64 {
    let mut files = Vec::new();
    for p in paths {
        collect_files(Path::new(p), &mut files);
    }
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}
