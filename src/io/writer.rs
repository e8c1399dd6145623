//! The one streaming writer every command uses, and the one place outputs are committed.
//!
//! Tensors are written one at a time, in a declared order, into a temporary file in the
//! destination folder (`.NAME.lorakit-PID.tmp`); the header is written first from the declared
//! dtypes and shapes, so nothing needs to be held in memory but the tensor being written. On
//! [`Output::commit`] every file is flushed and fsynced, then renamed into place (an index last)
//! and the folder fsynced. Until then the destination is untouched: an error, a panic, SIGINT,
//! SIGTERM or a kill leaves either the old files or nothing, never a truncated one.
//!
//! Speed: bytes already written are handed to the kernel's writeback as a file grows
//! (`WRITE_BEHIND`), so its one fsync waits only for the tail; tensors copied unchanged from
//! an input go file to file inside the kernel ([`FileWriter::copy_tensor`]); [`pipelined`]
//! writes a file on its own thread while the caller computes the next tensor.
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

use crate::dtype::{self, Dtype};
use crate::error::{InputError, InputResult};
use crate::io::header;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod aliasing;
mod pipe;
pub use aliasing::check_writes;
pub use pipe::{pipelined, Pipe};

/// A tensor to be written: its name, dtype and shape, declared before any data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> Self {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
        }
    }

    pub fn byte_len(&self) -> u64 {
        dtype::byte_len(self.dtype, self.shape.iter().product()).expect("valid spec") as u64
    }
}

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
    pub fn created_dirs(&self) -> &[PathBuf] {
        &self.created
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
                        "another lorakit process is writing this output (advisory lock held); wait for it or choose another --out",
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
        let file = create_new(&tmp, path)?;
        let mut w = BufWriter::with_capacity(8 << 20, file);
        let triples: Vec<(String, Dtype, Vec<usize>)> = specs
            .iter()
            .map(|s| (s.name.clone(), s.dtype, s.shape.clone()))
            .collect();
        let head = header::serialize(metadata, &triples);
        w.write_all(&head).map_err(|e| InputError::write(path, e))?;
        Ok(FileWriter {
            out: self,
            tmp,
            dest: path.to_path_buf(),
            w: Some(w),
            specs,
            next: 0,
            left: 0,
            bytes: head.len() as u64,
            behind: 0,
            flusher: None,
        })
    }

    /// Starts a file whose bytes the caller produces in order (a GGUF file: its own header and
    /// tensor layout), streamed into the temporary file and renamed into place at commit like
    /// every other output.
    pub fn raw_file(&mut self, path: &Path) -> InputResult<RawFile<'_>> {
        let tmp = self.start(path)?;
        let file = create_new(&tmp, path)?;
        Ok(RawFile {
            out: self,
            dest: path.to_path_buf(),
            w: Some(BufWriter::with_capacity(8 << 20, file)),
            bytes: 0,
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

/// Temporary files, lock files and created folders of live outputs, in creation order.
static LIVE: Mutex<Vec<(PathBuf, Kind)>> = Mutex::new(Vec::new());

fn register(p: &Path, kind: Kind) {
    if let Ok(mut v) = LIVE.lock() {
        v.push((p.to_path_buf(), kind));
    }
}

fn unregister(p: &Path) {
    if let Ok(mut v) = LIVE.lock() {
        if let Some(i) = v.iter().rposition(|(q, _)| q == p) {
            v.remove(i);
        }
    }
}

/// Removes every temporary file, lock file and created folder of the outputs still being
/// written (newest first). Called by the binary's signal thread before it exits on SIGINT or
/// SIGTERM; an output's committed files are not touched (they are no longer registered).
pub fn cleanup_on_signal() {
    let live = match LIVE.lock() {
        Ok(mut v) => std::mem::take(&mut *v),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    for (p, kind) in live.iter().rev() {
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

/// Writes one safetensors file's tensors in their declared order.
#[derive(Debug)]
pub struct FileWriter<'o> {
    out: &'o mut Output,
    tmp: PathBuf,
    dest: PathBuf,
    w: Option<BufWriter<File>>,
    specs: Vec<TensorSpec>,
    next: usize,
    left: u64,
    bytes: u64,
    /// Bytes before this offset have been handed to the kernel's writeback ([`WRITE_BEHIND`]).
    behind: u64,
    /// The thread that starts writeback of the ranges it is sent (created on first use).
    flusher: Option<Flusher>,
}

/// Starts the writeback of byte ranges of one file on its own thread:
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)` blocks while the disk's queue is full, and that
/// wait belongs beside the computation, not in it. Ends when its sender is dropped.
#[derive(Debug)]
struct Flusher {
    tx: std::sync::mpsc::Sender<(u64, u64)>,
    thread: std::thread::JoinHandle<()>,
}

impl Flusher {
    fn start(file: &File) -> std::io::Result<Flusher> {
        use std::os::unix::io::AsRawFd;
        let file = file.try_clone()?;
        let (tx, rx) = std::sync::mpsc::channel::<(u64, u64)>();
        let thread = std::thread::Builder::new()
            .name("lorakit-writeback".into())
            .spawn(move || {
                for (from, n) in rx {
                    // SAFETY: a hint about a byte range of a descriptor this thread owns (a
                    // duplicate); no memory is involved. Errors surface in the final fsync.
                    let _ = unsafe {
                        libc::sync_file_range(
                            file.as_raw_fd(),
                            from as libc::off64_t,
                            n as libc::off64_t,
                            libc::SYNC_FILE_RANGE_WRITE,
                        )
                    };
                }
            })?;
        Ok(Flusher { tx, thread })
    }

    /// Waits for the hand-offs already sent.
    fn stop(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// Once this many bytes are written past the last hand-off, they are handed to the kernel's
/// writeback (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: start writing, do not wait), so the
/// disk writes while the next tensors are computed and the final fsync only waits for the
/// tail. Without it nothing reaches the disk before the fsync (the kernel's own background
/// writeback starts at a share of RAM), and the fsync of a whole file is a wait with the CPU idle.
const WRITE_BEHIND: u64 = 32 << 20;

/// Chunk of the read/write fallback of [`FileWriter::copy_tensor`].
const COPY_CHUNK: usize = 8 << 20;

impl FileWriter<'_> {
    /// The declared tensors.
    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// Writes the whole of the next tensor, which must be `name`. Every tensor written whole is
    /// a result (merged, factored, converted, trained) and is checked in the dtype it is stored
    /// in: a NaN, or a finite value that overflowed F16/BF16 to ±∞, is an error naming the
    /// destination and the tensor. Only byte-for-byte copies of input tensors go through
    /// [`Self::begin`] / [`Self::write_chunk`] unchecked.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> InputResult<()> {
        self.begin(name)?;
        let dtype = self.specs[self.next - 1].dtype;
        if let Some(i) = dtype::first_non_finite(dtype, data) {
            return Err(InputError::invalid(
                &self.dest,
                format!(
                    "tensor `{name}`: element {i} is {}; nothing was written",
                    dtype::non_finite_reason(dtype, data, i)
                ),
            ));
        }
        self.write_chunk(data)
    }

    /// Starts the next tensor, which must be `name`; its bytes follow with [`Self::write_chunk`].
    pub fn begin(&mut self, name: &str) -> InputResult<()> {
        if self.left != 0 {
            let prev = &self.specs[self.next - 1].name;
            return Err(InputError::invalid(
                &self.tmp,
                format!("tensor `{prev}`: {} bytes short", self.left),
            ));
        }
        let spec = self.specs.get(self.next).ok_or_else(|| {
            InputError::invalid(
                &self.tmp,
                format!("tensor `{name}` was not declared for this file"),
            )
        })?;
        if spec.name != name {
            return Err(InputError::invalid(
                &self.tmp,
                format!("tensor `{name}` written where `{}` was declared", spec.name),
            ));
        }
        self.left = spec.byte_len();
        self.next += 1;
        Ok(())
    }

    /// Appends bytes to the current tensor.
    pub fn write_chunk(&mut self, data: &[u8]) -> InputResult<()> {
        if data.len() as u64 > self.left {
            let name = self
                .next
                .checked_sub(1)
                .map(|i| self.specs[i].name.as_str())
                .unwrap_or("?");
            return Err(InputError::invalid(
                &self.tmp,
                format!("tensor `{name}`: more bytes than its shape holds"),
            ));
        }
        self.left -= data.len() as u64;
        self.bytes += data.len() as u64;
        let w = self.w.as_mut().expect("open until finish");
        w.write_all(data)
            .map_err(|e| InputError::write(&self.dest, e))?;
        self.write_behind()
    }

    /// Writes the whole of the next tensor, which must be `name`, as the `len` bytes of `src`
    /// (at `src_path`) from `offset`, copied by the kernel (`copy_file_range(2)`: page cache
    /// to page cache, a reflink or a server-side copy where the file system offers one), not
    /// through user space. Where the kernel cannot (`EXDEV` across file systems on older or
    /// newer kernels, `ENOSYS`, `EOPNOTSUPP`, `EINVAL`, `EPERM` under a seccomp filter), the
    /// bytes are read and written in chunks instead. Unchecked like [`Self::write_chunk`]: only
    /// for byte-for-byte copies of input tensors.
    pub fn copy_tensor(
        &mut self,
        name: &str,
        src: &File,
        src_path: &Path,
        offset: u64,
        len: u64,
    ) -> InputResult<()> {
        use std::os::unix::fs::FileExt;
        use std::os::unix::io::AsRawFd;
        self.begin(name)?;
        if len != self.left {
            return Err(InputError::invalid(
                &self.tmp,
                format!(
                    "tensor `{name}`: {len} bytes copied where its shape holds {}",
                    self.left
                ),
            ));
        }
        let w = self.w.as_mut().expect("open until finish");
        w.flush().map_err(|e| InputError::write(&self.dest, e))?;
        let dst = w.get_ref();
        let mut done = 0u64;
        let mut kernel = true;
        while kernel && done < len {
            let mut off_in = libc::loff_t::try_from(offset + done)
                .map_err(|_| InputError::invalid(src_path, "offset out of range"))?;
            let want = (len - done).min(1 << 30) as usize;
            // SAFETY: both descriptors are open for the whole call (borrowed `File`s);
            // `off_in` points to a live local the kernel reads and advances; a null `off_out`
            // makes the kernel write at, and advance, `dst`'s own file offset, which is where
            // the flushed buffered writer left it. No user memory is written.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    dst.as_raw_fd(),
                    std::ptr::null_mut(),
                    want,
                    0,
                )
            };
            match n {
                n if n > 0 => done += n as u64,
                0 => {
                    return Err(InputError::io(
                        src_path,
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("file ends inside tensor `{name}`"),
                        ),
                    ))
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EINTR) => {}
                        Some(
                            libc::EXDEV
                            | libc::ENOSYS
                            | libc::EOPNOTSUPP
                            | libc::EINVAL
                            | libc::EPERM,
                        ) => kernel = false,
                        _ => return Err(InputError::write(&self.dest, e)),
                    }
                }
            }
        }
        if done < len {
            let mut buf = vec![0u8; COPY_CHUNK.min((len - done) as usize)];
            while done < len {
                let n = buf.len().min((len - done) as usize);
                src.read_exact_at(&mut buf[..n], offset + done)
                    .map_err(|e| InputError::io(src_path, e))?;
                w.write_all(&buf[..n])
                    .map_err(|e| InputError::write(&self.dest, e))?;
                done += n as u64;
            }
        }
        self.left = 0;
        self.bytes += len;
        self.write_behind()
    }

    /// Hands what was written since the last hand-off to the kernel's writeback once it is
    /// [`WRITE_BEHIND`] bytes or more (see there). A hint: errors are ignored here, and the
    /// fsync of [`Self::finish`] reports any that matter.
    fn write_behind(&mut self) -> InputResult<()> {
        if self.bytes - self.behind < WRITE_BEHIND {
            return Ok(());
        }
        let w = self.w.as_mut().expect("open until finish");
        w.flush().map_err(|e| InputError::write(&self.dest, e))?;
        if self.flusher.is_none() {
            // Without a thread (none can be made) the data simply waits for the fsync.
            self.flusher = Flusher::start(w.get_ref()).ok();
        }
        if let Some(f) = &self.flusher {
            let _ = f.tx.send((self.behind, self.bytes - self.behind));
        }
        self.behind = self.bytes;
        Ok(())
    }

    /// Flushes and fsyncs; the file is renamed into place when the [`Output`] commits.
    pub fn finish(mut self) -> InputResult<u64> {
        if self.next != self.specs.len() || self.left != 0 {
            let missing = self
                .specs
                .get(self.next)
                .map(|s| s.name.as_str())
                .unwrap_or("the last tensor");
            return Err(InputError::invalid(
                &self.tmp,
                format!("tensor `{missing}` was never written"),
            ));
        }
        let w = self.w.take().expect("open until finish");
        let file = w
            .into_inner()
            .map_err(|e| InputError::write(&self.dest, e.into_error()))?;
        if let Some(f) = self.flusher.take() {
            f.stop();
        }
        file.sync_all()
            .map_err(|e| InputError::write(&self.dest, e))?;
        self.out.bytes += self.bytes;
        Ok(self.bytes)
    }
}

/// A file of an [`Output`] written as a byte stream ([`Output::raw_file`]).
#[derive(Debug)]
pub struct RawFile<'o> {
    out: &'o mut Output,
    dest: PathBuf,
    w: Option<BufWriter<File>>,
    bytes: u64,
}

impl RawFile<'_> {
    pub fn write_all(&mut self, data: &[u8]) -> InputResult<()> {
        self.bytes += data.len() as u64;
        let w = self.w.as_mut().expect("open until finish");
        w.write_all(data)
            .map_err(|e| InputError::write(&self.dest, e))
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.bytes
    }

    /// Flushes and fsyncs; the file is renamed into place when the [`Output`] commits.
    pub fn finish(mut self) -> InputResult<u64> {
        let w = self.w.take().expect("open until finish");
        let file = w
            .into_inner()
            .map_err(|e| InputError::write(&self.dest, e.into_error()))?;
        file.sync_all()
            .map_err(|e| InputError::write(&self.dest, e))?;
        self.out.bytes += self.bytes;
        Ok(self.bytes)
    }
}

fn parent_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
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
mod tests {
    use super::*;

    /// Parts of one split run start together and create the same output folder: whoever
    /// loses the race uses the folder the other made (this failed with "File exists" in CI).
    #[test]
    fn concurrent_create_dir_all_of_one_folder_all_succeed() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join(format!("a{round}/b/c"));
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (t, b) = (target.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let mut out = Output::new();
                        b.wait();
                        let r = out.create_dir_all(&t).map_err(|e| e.to_string());
                        // Keep the folders: a dropped Output removes what it created.
                        std::mem::forget(out);
                        r
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
            assert!(target.is_dir());
        }
    }
    use crate::io::file::SafetensorsFile;

    #[test]
    fn writes_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.safetensors");
        let mut out = Output::new();
        let specs = vec![
            TensorSpec::new("x", Dtype::F32, vec![2]),
            TensorSpec::new("y", Dtype::U8, vec![3]),
        ];
        let mut w = out
            .safetensors(&dest, &[("k".into(), "v".into())], specs)
            .unwrap();
        w.write_tensor("x", &dtype::encode(Dtype::F32, &[1.0, 2.0]))
            .unwrap();
        w.begin("y").unwrap();
        w.write_chunk(&[7]).unwrap();
        w.write_chunk(&[8, 9]).unwrap();
        w.finish().unwrap();
        assert!(!dest.exists(), "nothing lands before commit");
        out.commit().unwrap();
        let f = SafetensorsFile::open(&dest).unwrap();
        assert_eq!(f.read_f32("x").unwrap(), vec![1.0, 2.0]);
        assert_eq!(f.view("y").unwrap().data, &[7, 8, 9]);
        assert_eq!(f.header().metadata_value("k"), Some("v"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1);
    }

    /// Tensors copied file to file by the kernel land byte for byte between written ones, a
    /// copy of the wrong length is refused, and the pipelined writer returns the body's error
    /// and leaves nothing behind.
    #[test]
    fn kernel_copies_and_the_pipelined_writer() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src.bin");
        let payload: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&src_path, &payload).unwrap();
        let src = File::open(&src_path).unwrap();
        let dest = dir.path().join("out.safetensors");
        let n = payload.len() - 100;
        let specs = vec![
            TensorSpec::new("a", Dtype::F32, vec![1]),
            TensorSpec::new("b", Dtype::U8, vec![n]),
            TensorSpec::new("c", Dtype::F32, vec![1]),
        ];
        let mut out = Output::new();
        let w = out.safetensors(&dest, &[], specs.clone()).unwrap();
        let one = dtype::encode(Dtype::F32, &[1.0]);
        pipelined(w, |p| {
            p.write_tensor("a", one.clone())?;
            p.copy_tensor("b", &src, &src_path, 100, n as u64)?;
            p.write_tensor("c", one.clone())
        })
        .unwrap();
        out.commit().unwrap();
        let f = SafetensorsFile::open(&dest).unwrap();
        assert_eq!(f.view("b").unwrap().data, &payload[100..]);
        assert_eq!(f.read_f32("c").unwrap(), vec![1.0]);

        let mut out = Output::new();
        let mut w = out.safetensors(&dest, &[], specs.clone()).unwrap();
        w.write_tensor("a", &one).unwrap();
        assert!(w.copy_tensor("b", &src, &src_path, 0, 10).is_err());
        drop(w);
        drop(out);
        let mut out = Output::new();
        let w = out.safetensors(&dest, &[], specs).unwrap();
        let err = pipelined(w, |p| {
            p.write_tensor("a", one.clone())?;
            anyhow::bail!("the body failed")
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "the body failed");
        drop(out);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 2, "src.bin and the first output only");
    }

    #[test]
    fn dropped_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.safetensors");
        {
            let mut out = Output::new();
            let mut w = out
                .safetensors(&dest, &[], vec![TensorSpec::new("x", Dtype::F32, vec![2])])
                .unwrap();
            w.write_tensor("x", &[0u8; 8]).unwrap();
            assert!(w.write_tensor("z", &[0u8; 8]).is_err());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A rename that fails part-way through a commit (here: the second destination became a
    /// folder after the output was planned) puts the first file back as it was and leaves no
    /// temporary or backup file.
    #[test]
    fn a_failed_commit_restores_every_file_it_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        std::fs::write(&a, b"old a").unwrap();
        let mut out = Output::new();
        out.small_file(&a, b"new a").unwrap();
        out.small_file(&b, b"new b").unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("keep"), b"x").unwrap();
        assert!(out.commit().is_err());
        assert_eq!(std::fs::read(&a).unwrap(), b"old a");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["a.json", "b.json"]);
        // And a commit that succeeds replaces the old file and leaves no backup.
        std::fs::remove_dir_all(&b).unwrap();
        let mut out = Output::new();
        out.small_file(&a, b"newer a").unwrap();
        out.commit().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"newer a");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_output_onto_input_or_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.safetensors");
        std::fs::write(&input, b"x").unwrap();
        let link = dir.path().join("link.safetensors");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let reads = std::slice::from_ref(&input);
        assert!(check_writes(reads, std::slice::from_ref(&input), &[]).is_err());
        assert!(check_writes(reads, &[link], &[]).is_err());
        let hard = dir.path().join("hard.safetensors");
        std::fs::hard_link(&input, &hard).unwrap();
        assert!(check_writes(reads, &[hard], &[]).is_err());
        let other = dir.path().join("sub/../in.safetensors");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(check_writes(reads, &[other], &[]).is_err());
        assert!(check_writes(reads, &[dir.path().join("new.safetensors")], &[]).is_ok());
        // A folder read stands for its entries; writing the folder itself is refused too.
        let folder = vec![dir.path().to_path_buf()];
        assert!(check_writes(&folder, &[], &folder).is_err());
        assert!(check_writes(&folder, &[dir.path().join("in.safetensors")], &[]).is_err());
        assert!(
            check_writes(&[], &[dir.path().join("sub")], &[]).is_err(),
            "folder where a file goes"
        );
    }
}
