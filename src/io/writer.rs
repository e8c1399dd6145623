//! The one streaming writer every command uses, and the one place outputs are committed.
//!
//! Tensors are written one at a time, in a declared order, into a temporary file in the
//! destination folder (`.NAME.lorakit-PID.tmp`); the header is written first from the declared
//! dtypes and shapes, so nothing needs to be held in memory but the tensor being written. On
//! [`Output::commit`] every file is flushed and fsynced, then renamed into place (an index last)
//! and the folder fsynced. Until then the destination is untouched: an error, a panic, SIGINT,
//! SIGTERM or a kill leaves either the old files or nothing, never a truncated one.
//!
//! Speed: where the file system takes it (Linux `O_DIRECT`), a file's bytes, tensors copied
//! unchanged from an input included, are written to the disk from one aligned buffer without
//! passing through the page cache (`direct.rs`: the buffered path's copy into fresh page-cache
//! pages was the merge's "writer stall"); elsewhere bytes already written are handed to the
//! kernel's writeback as a file grows (`WRITE_BEHIND`), so its one fsync waits only for the
//! tail, and tensors copied unchanged go file to file inside the kernel
//! ([`FileWriter::copy_tensor`]). [`pipelined`] writes a file on its own thread while the
//! caller computes the next tensor.
//!
//! All or nothing across files: before a file is replaced its old version is kept as a hard
//! link (`.NAME.lorakit-PID.old`); if any rename fails, every file this commit renamed is put
//! back and the links are removed. A dropped, uncommitted output removes its temporary files and
//! the folders it created ([`Output::create_dir_all`]); SIGINT/SIGTERM do the same through
//! [`cleanup_on_signal`]; leftovers of killed processes are swept on the next run.
//!
//! Two runs never write one destination at once: [`Output::lock`] takes an advisory lock
//! (`flock`) on the output folder, or on a lock file beside a single output file, and a second
//! writer fails at once with a clear error.
//!
//! Same inputs → byte-identical files: the header is serialised deterministically and no
//! timestamps are recorded.

use crate::dtype::Dtype;
use crate::error::{InputError, InputResult};
use crate::io::header;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod aliasing;
mod direct;
mod file;
mod pipe;
mod spec;
use aliasing::parent_of;
pub use aliasing::{check_removals, check_writes, resolved_target};
pub use direct::ALIGN as DIRECT_IO_ALIGN;
pub use file::{Extent, FileWriter, RawFile};
pub use pipe::{pipelined, Pipe, Sink};
pub use spec::TensorSpec;

/// A set of files being written, committed together.
#[derive(Debug, Default)]
pub struct Output {
    pending: Vec<(PathBuf, PathBuf)>,
    /// Files of an older layout that this commit removes (stale shards and index).
    stale: Vec<PathBuf>,
    /// Folders this output created, outermost first; removed again unless committed.
    created: Vec<PathBuf>,
    /// Held advisory locks (released on drop).
    locks: Vec<Lock>,
    bytes: u64,
}

/// Lock mode of [`Output::lock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// The only writer of the destination.
    Exclusive,
    /// One of several cooperating writers (`--part I/N` runs writing different files of one
    /// folder): shared among themselves, excluded by an exclusive writer.
    Shared,
}

#[derive(Debug)]
struct Lock {
    _file: File,
    /// A lock file this output created (removed on release); `None` for a locked folder.
    path: Option<PathBuf>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
            unregister(p);
        }
    }
}

impl Output {
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates `dir` and its missing parents. The folders created are removed again (when
    /// empty) if this output is dropped without a commit, or on SIGINT/SIGTERM.
    pub fn create_dir_all(&mut self, dir: &Path) -> InputResult<()> {
        let mut missing = Vec::new();
        let mut p = Some(dir);
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            match std::fs::symlink_metadata(d) {
                Ok(m) if m.is_dir() || std::fs::metadata(d).is_ok_and(|m| m.is_dir()) => break,
                Ok(_) => {
                    return Err(InputError::write(
                        d,
                        std::io::Error::other("exists and is not a folder"),
                    ))
                }
                Err(_) => missing.push(d.to_path_buf()),
            }
            p = d.parent();
        }
        for d in missing.into_iter().rev() {
            match std::fs::create_dir(&d) {
                Ok(()) => {
                    register(&d, Kind::Dir);
                    self.created.push(d);
                }
                // Another process made it in the meantime (parts of one split run start
                // together): it is theirs to clean up, and ours to use.
                Err(e)
                    if e.kind() == std::io::ErrorKind::AlreadyExists
                        && std::fs::metadata(&d).is_ok_and(|m| m.is_dir()) => {}
                Err(e) => return Err(InputError::write(&d, e)),
            }
        }
        Ok(())
    }

    /// Folders [`Self::create_dir_all`] created, outermost first (for the summary).
    pub fn created_dirs(&self) -> Vec<String> {
        self.created
            .iter()
            .map(|d| d.display().to_string())
            .collect()
    }

    /// Takes the advisory lock of destination `dest`: a folder is locked itself, a file through
    /// `.NAME.lorakit.lock` beside it (removed again on release). Fails at once, with the
    /// destination named, when another lorakit process holds it.
    pub fn lock(&mut self, dest: &Path, mode: LockMode) -> InputResult<()> {
        use std::os::unix::io::AsRawFd;
        let (file, path) = if dest.is_dir() {
            (
                File::open(dest).map_err(|e| InputError::write(dest, e))?,
                None,
            )
        } else {
            let name = dest
                .file_name()
                .ok_or_else(|| InputError::invalid(dest, "output path has no file name"))?
                .to_string_lossy()
                .into_owned();
            let p = parent_of(dest).join(format!(".{name}.lorakit.lock"));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&p)
                .map_err(|e| InputError::write(&p, e))?;
            (f, Some(p))
        };
        let op = match mode {
            LockMode::Exclusive => libc::LOCK_EX,
            LockMode::Shared => libc::LOCK_SH,
        } | libc::LOCK_NB;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            let e = std::io::Error::last_os_error();
            let in_use = e.kind() == std::io::ErrorKind::WouldBlock;
            // Not ours to remove: the holder created it.
            drop(file);
            return Err(if in_use {
                InputError::write(
                    dest,
                    std::io::Error::other(
                        "another lorakit process is writing this output (advisory lock held); wait for it or choose another output path",
                    ),
                )
            } else {
                InputError::write(dest, e)
            });
        }
        if let Some(p) = &path {
            register(p, Kind::File);
        }
        self.locks.push(Lock { _file: file, path });
        Ok(())
    }

    /// Files of an older layout in the destination that this commit removes after the new
    /// files are in place (and restores if the commit fails).
    pub fn remove_on_commit(&mut self, stale: Vec<PathBuf>) {
        self.stale.extend(stale);
    }

    /// Starts a safetensors file at `path` holding exactly `specs`, in that order.
    pub fn safetensors(
        &mut self,
        path: &Path,
        metadata: &[(String, String)],
        specs: Vec<TensorSpec>,
    ) -> InputResult<FileWriter<'_>> {
        let tmp = self.start(path)?;
        let mut stream = file::Stream::new(path, create_new(&tmp, path)?);
        let triples: Vec<(String, Dtype, Vec<usize>)> = specs
            .iter()
            .map(|s| (s.name.clone(), s.dtype, s.shape.clone()))
            .collect();
        stream.write_all(&header::serialize(metadata, &triples))?;
        Ok(FileWriter {
            written: &mut self.bytes,
            tmp,
            stream,
            specs,
            next: 0,
            left: 0,
        })
    }

    /// Starts a file whose bytes the caller produces in order (a GGUF file: its own header and
    /// tensor layout), streamed into the temporary file and renamed into place at commit like
    /// every other output.
    pub fn raw_file(&mut self, path: &Path) -> InputResult<RawFile<'_>> {
        let tmp = self.start(path)?;
        let stream = file::Stream::new(path, create_new(&tmp, path)?);
        Ok(RawFile {
            written: &mut self.bytes,
            stream,
        })
    }

    /// Adds a small whole file (JSON, copied config) to the set.
    pub fn small_file(&mut self, path: &Path, contents: &[u8]) -> InputResult<()> {
        let tmp = self.start(path)?;
        let mut f = create_new(&tmp, path)?;
        f.write_all(contents)
            .and_then(|_| f.sync_all())
            .map_err(|e| InputError::write(path, e))?;
        self.bytes += contents.len() as u64;
        Ok(())
    }

    /// A temporary path for `dest` that the caller fills itself (a plotting library writing
    /// its own file); it is renamed into place with the rest at commit, or removed.
    pub fn external_file(&mut self, dest: &Path) -> InputResult<PathBuf> {
        self.start(dest)
    }

    /// Registers `dest` and returns its temporary path.
    fn start(&mut self, dest: &Path) -> InputResult<PathBuf> {
        if let Ok(m) = std::fs::metadata(dest) {
            if m.is_dir() {
                return Err(InputError::write(
                    dest,
                    std::io::Error::other("is a folder; a file goes here"),
                ));
            }
        }
        let tmp = temp_path(dest, "tmp")?;
        register(&tmp, Kind::File);
        self.pending.push((tmp.clone(), dest.to_path_buf()));
        Ok(tmp)
    }

    /// Bytes written so far (headers included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Renames every file into place in the order they were started (so an index started last
    /// lands last), removes the stale files, and fsyncs the folders. On any failure every file
    /// already renamed is put back as it was (its old version restored, or removed if it is
    /// new), so the destination holds the old output or, for a new one, nothing.
    pub fn commit(mut self) -> InputResult<u64> {
        let pending = std::mem::take(&mut self.pending);
        let stale = std::mem::take(&mut self.stale);
        // (dest, hard link to its old version) for every path this commit changed.
        let mut done: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
        let result = (|| -> InputResult<()> {
            for (tmp, dest) in &pending {
                let backup = keep_old(dest)?;
                if let Err(e) = std::fs::rename(tmp, dest) {
                    if let Some(b) = backup {
                        let _ = std::fs::remove_file(&b);
                        unregister(&b);
                    }
                    return Err(InputError::write(dest, e));
                }
                unregister(tmp);
                done.push((dest.clone(), backup));
            }
            for p in &stale {
                if pending.iter().any(|(_, d)| d == p) || std::fs::symlink_metadata(p).is_err() {
                    continue;
                }
                let backup = keep_old(p)?;
                std::fs::remove_file(p).map_err(|e| InputError::write(p, e))?;
                done.push((p.clone(), backup));
            }
            Ok(())
        })();
        if let Err(e) = result {
            for (dest, backup) in done.iter().rev() {
                match backup {
                    Some(b) => {
                        let _ = std::fs::rename(b, dest);
                        unregister(b);
                    }
                    None => {
                        let _ = std::fs::remove_file(dest);
                    }
                }
            }
            // Drop removes the temporary files still pending and the folders created.
            self.pending = pending;
            return Err(e);
        }
        for (_, backup) in &done {
            if let Some(b) = backup {
                let _ = std::fs::remove_file(b);
                unregister(b);
            }
        }
        let mut dirs = HashSet::new();
        for (_, dest) in &pending {
            dirs.insert(parent_of(dest).to_path_buf());
        }
        for d in dirs {
            if let Ok(f) = File::open(&d) {
                let _ = f.sync_all();
            }
        }
        for d in std::mem::take(&mut self.created) {
            unregister(&d);
        }
        Ok(self.bytes)
    }
}

/// Keeps the current version of `dest` (if any) as a hard link beside it, so a failed commit
/// can put it back. `None` when there is nothing to keep, or the file system has no hard links
/// (then that one file is replaced without a way back).
fn keep_old(dest: &Path) -> InputResult<Option<PathBuf>> {
    match std::fs::symlink_metadata(dest) {
        Err(_) => Ok(None),
        Ok(m) if m.is_dir() => Err(InputError::write(
            dest,
            std::io::Error::other("is a folder; a file goes here"),
        )),
        Ok(_) => {
            let b = temp_path(dest, "old")?;
            let _ = std::fs::remove_file(&b);
            match std::fs::hard_link(dest, &b) {
                Ok(()) => {
                    register(&b, Kind::File);
                    Ok(Some(b))
                }
                Err(_) => Ok(None),
            }
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // Locks first: a lock file inside a folder this output created must go before it.
        self.locks.clear();
        for (tmp, _) in &self.pending {
            let _ = std::fs::remove_file(tmp);
            unregister(tmp);
        }
        for d in self.created.iter().rev() {
            let _ = std::fs::remove_dir(d);
            unregister(d);
        }
    }
}

// ---------------------------------------------------------------------------
// What SIGINT/SIGTERM must remove
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
}

/// Temporary files, lock files and created folders of live outputs, in creation order, each
/// with its path as a C string made at registration (for [`cleanup_on_abort`], which must not
/// allocate).
static LIVE: Mutex<Vec<(PathBuf, Kind, Option<std::ffi::CString>)>> = Mutex::new(Vec::new());

fn register(p: &Path, kind: Kind) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok();
    let entry = (p.to_path_buf(), kind, c);
    if let Ok(mut v) = LIVE.lock() {
        // The list grows fallibly: a failed allocation here is reported after the lock is
        // released, so that the report's clean-up (`cleanup_on_abort`) can take it.
        if crate::io::memory::fallible(|| v.try_reserve(1)).is_err() {
            let size = (v.len() + 1) * std::mem::size_of_val(&entry);
            drop(v);
            crate::io::memory::out_of_memory(size);
        }
        v.push(entry);
    }
}

fn unregister(p: &Path) {
    if let Ok(mut v) = LIVE.lock() {
        if let Some(i) = v.iter().rposition(|(q, _, _)| q == p) {
            v.remove(i);
        }
    }
}

/// Set once the signal thread has taken SIGINT, SIGTERM or SIGHUP: the process is ending by
/// that signal, so a write the clean-up broke (its temporary file removed under it) is not
/// reported as a failed write (exit 3) by the thread that was writing.
static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a terminating signal was taken (see [`cleanup_on_signal`]): the binary then waits
/// for the signal thread to end the process instead of printing its own result.
pub fn signal_taken() -> bool {
    SIGNALLED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Removes every temporary file, lock file and created folder of the outputs still being
/// written (newest first). Called by the binary's signal thread before it exits on SIGINT or
/// SIGTERM; an output's committed files are not touched (they are no longer registered).
pub fn cleanup_on_signal() {
    SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
    let live = match LIVE.lock() {
        Ok(mut v) => std::mem::take(&mut *v),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    for (p, kind, _) in live.iter().rev() {
        match kind {
            Kind::File => {
                let _ = std::fs::remove_file(p);
            }
            Kind::Dir => {
                let _ = std::fs::remove_dir(p);
            }
        }
    }
}

/// [`cleanup_on_signal`] for a process that is ending without destructors: an abort (a stack
/// overflow, a SIGABRT from elsewhere), a truncated input's map raising SIGBUS, a failed
/// allocation (`io::memory`), after which the temporary files, lock files and created folders
/// would stay. Called from the binary's SIGABRT and SIGBUS handlers and from the failed
/// allocation's report, on the faulting thread: it only unlinks
/// the registered paths through the C strings made at registration (no allocation, no free),
/// and does nothing if another thread holds the registry (the next run sweeps the temporary
/// files of dead processes, as after a kill).
pub fn cleanup_on_abort() {
    let live = match LIVE.try_lock() {
        Ok(v) => v,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for (_, kind, c) in live.iter().rev() {
        let Some(c) = c else { continue };
        // SAFETY: `c` is a NUL-terminated path owned by the registry, which is locked here;
        // unlink and rmdir are async-signal-safe.
        unsafe {
            match kind {
                Kind::File => libc::unlink(c.as_ptr()),
                Kind::Dir => libc::rmdir(c.as_ptr()),
            };
        }
    }
}

/// `.NAME.lorakit-PID.SUFFIX` beside `dest` (`tmp`: a file being written, `old`: the version a
/// commit replaces); sweeps leftovers of dead lorakit processes first.
fn temp_path(dest: &Path, suffix: &str) -> InputResult<PathBuf> {
    let name = dest
        .file_name()
        .ok_or_else(|| InputError::invalid(dest, "output path has no file name"))?
        .to_string_lossy()
        .into_owned();
    let dir = parent_of(dest);
    let prefix = format!(".{name}.lorakit-");
    if let Ok(rd) = std::fs::read_dir(dir) {
        for ent in rd.flatten() {
            let fname = ent.file_name().to_string_lossy().into_owned();
            if let Some(pid) = fname
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".tmp").or_else(|| r.strip_suffix(".old")))
            {
                let alive = pid
                    .parse::<u32>()
                    .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
                if !alive {
                    let _ = std::fs::remove_file(ent.path());
                }
            }
        }
    }
    Ok(dir.join(format!("{prefix}{}.{suffix}", std::process::id())))
}

fn create_new(p: &Path, dest: &Path) -> InputResult<File> {
    // A leftover of our own pid (an earlier output in this process) is ours to replace.
    let _ = std::fs::remove_file(p);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)
        .map_err(|e| InputError::write(dest, e))
}

#[cfg(test)]
mod tests;
