//! No command writes onto what it reads: the one overwrite check, by canonical path and by
//! (device, inode).
//!
//! It decides nothing else about outputs (their layout and commit are `writer/`) and must not
//! create or remove anything while checking.

use crate::error::{InputError, InputResult};
use std::path::{Path, PathBuf};

/// The one overwrite check every command makes, with **all** the paths it reads and **all**
/// the paths it will write, before anything is written.
///
/// `reads` are files or folders; a folder stands for itself and every file directly inside
/// it (a base folder's config, tokenizer and shards are all inputs of a merge that copies
/// them). `files` are paths that will be written as files, `folders` paths that will be
/// written as folders. A write is refused when it is, or resolves to, a read — compared by
/// canonical path (symlinks followed, `..` resolved) and by (device, inode), so symlinks and
/// hard links to an input are caught — or when it exists as the wrong kind (a folder where a
/// file goes, a file where a folder goes, a FIFO, socket or device anywhere).
pub fn check_writes(reads: &[PathBuf], files: &[PathBuf], folders: &[PathBuf]) -> InputResult<()> {
    let reads = Reads::of(reads);
    let clash = |w: &Path| reads.clash(w);
    for (w, want_dir) in files
        .iter()
        .map(|f| (f, false))
        .chain(folders.iter().map(|d| (d, true)))
    {
        if let Some(r) = clash(w) {
            return Err(InputError::invalid(
                w,
                format!(
                    "output is also an input ({}); choose another output path",
                    r.display()
                ),
            ));
        }
        let pickle_name = w.extension().is_some_and(|e| {
            let e = e.to_string_lossy().to_ascii_lowercase();
            ["bin", "pt", "pth", "ckpt"].contains(&e.as_str())
        });
        if !want_dir && pickle_name {
            // lorakit writes safetensors; under a pickle's name torch.load, transformers and
            // ComfyUI would open it as a pickle and fail.
            return Err(InputError::invalid(
                w,
                "is a PyTorch pickle's name, but lorakit writes safetensors; name the output .safetensors",
            ));
        }
        if !want_dir && std::os::unix::ffi::OsStrExt::as_bytes(w.as_os_str()).ends_with(b"/") {
            // `--out k.safetensors/` for a one-file output: bad usage (exit 2), where the
            // file system's "Not a directory" would only come at write time (exit 3).
            return Err(InputError::invalid(
                w,
                "ends with `/`, but a file is written here; drop the slash",
            ));
        }
        match std::fs::metadata(w) {
            Ok(m) if m.is_dir() && !want_dir => {
                return Err(InputError::invalid(
                    w,
                    "is a folder; a file is written here",
                ))
            }
            // A FIFO, socket or device (`--out /dev/null` as root): the commit's rename would
            // replace it with a regular file, and a reader waiting on a FIFO would get nothing.
            Ok(m) if !m.is_dir() && !m.is_file() => {
                return Err(InputError::invalid(
                    w,
                    "is not a regular file (a FIFO, socket or device); outputs are written as new files, choose another output path",
                ))
            }
            Ok(m) if !m.is_dir() && want_dir => {
                return Err(InputError::invalid(
                    w,
                    "is a file; a folder is written here",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a commit that would remove one of `reads` (by canonical path or (device, inode), a
/// folder read standing for the files in it): a merge into a folder removes an older
/// checkpoint's shards and index there, which must never be the base or adapter it reads
/// (hostile round 16: a base or kohya file named like a shard inside `--out` was deleted).
pub fn check_removals(reads: &[PathBuf], removals: &[PathBuf]) -> InputResult<()> {
    let reads = Reads::of(reads);
    for rm in removals {
        if let Some(f) = reads.clash(rm) {
            return Err(InputError::invalid(
                rm,
                format!(
                    "the output folder holds an input ({}) that this run would remove as an older checkpoint's file; give the output a folder of its own",
                    f.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Every path a run reads, by (device, inode) and by canonical path, each with the path to name:
/// the reads themselves and the files directly inside a folder read (a subfolder — an output
/// folder placed inside a model folder — is not read unless it is listed itself).
struct Reads {
    ids: Vec<((u64, u64), PathBuf)>,
    canon: Vec<(PathBuf, PathBuf)>,
}

impl Reads {
    fn of(reads: &[PathBuf]) -> Reads {
        let mut r = Reads {
            ids: Vec::new(),
            canon: Vec::new(),
        };
        let mut add = |p: &Path| {
            if let Some(i) = file_id(p) {
                r.ids.push((i, p.to_path_buf()));
            }
            if let Some(c) = canonical_target(p) {
                r.canon.push((c, p.to_path_buf()));
            }
        };
        for read in reads {
            add(read);
            if std::fs::metadata(read).is_ok_and(|m| m.is_dir()) {
                if let Ok(rd) = std::fs::read_dir(read) {
                    for e in rd.flatten() {
                        if std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()) {
                            add(&e.path());
                        }
                    }
                }
            }
        }
        r
    }

    /// The read `p` is, or resolves to.
    fn clash(&self, p: &Path) -> Option<PathBuf> {
        if let Some(i) = file_id(p) {
            if let Some((_, r)) = self.ids.iter().find(|(j, _)| *j == i) {
                return Some(r.clone());
            }
        }
        let c = canonical_target(p)?;
        self.canon
            .iter()
            .find(|(d, _)| *d == c)
            .map(|(_, r)| r.clone())
    }
}

fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Where a write to `p` lands: its canonical form (for a path that may not exist yet, see
/// [`canonical_target`]); `None` when that cannot be told. For checks made before the
/// command that writes runs (a recipe comparing its steps' outputs with their inputs).
pub fn resolved_target(p: &Path) -> Option<PathBuf> {
    canonical_target(p)
}

/// Canonical form of a path that may not exist yet (its parent canonicalised), following a
/// symlink at the final component even when dangling.
fn canonical_target(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = std::fs::canonicalize(p) {
        return Some(c);
    }
    if let Ok(link) = std::fs::read_link(p) {
        let joined = if link.is_absolute() {
            link
        } else {
            parent_of(p).join(link)
        };
        return canonical_target(&joined);
    }
    if let Ok(parent) = std::fs::canonicalize(parent_of(p)) {
        return Some(parent.join(p.file_name()?));
    }
    lexical_below_existing(p)
}

/// Where `p` will land once the writer has created its missing folders: the longest prefix
/// of `p` that exists, canonicalised, then the remaining components applied lexically. They
/// name folders that do not exist yet, which the writer creates as plain folders, so a `..`
/// among them undoes the component before it (`new/../base` is `base` once `new` exists).
/// Without this, `--out new/../INPUT` could not be resolved before `new` was created and
/// escaped the check.
fn lexical_below_existing(p: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let comps: Vec<Component> = p.components().collect();
    let (mut base, rest) = (0..comps.len()).rev().find_map(|i| {
        let prefix: PathBuf = comps[..i].iter().collect();
        let prefix = if prefix.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            prefix
        };
        std::fs::canonicalize(&prefix)
            .ok()
            .map(|c| (c, &comps[i..]))
    })?;
    for c in rest {
        match c {
            Component::Normal(n) => base.push(n),
            Component::ParentDir => {
                base.pop();
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(base)
}

/// The folder `p` lives in: its parent, or `.` for a bare file name (where the output lock,
/// temporary files and link targets are resolved).
pub(super) fn parent_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}
