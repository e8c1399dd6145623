//! The per-file writers of [`Output`](super::Output): [`FileWriter`] streams one safetensors file's
//! tensors in their declared order (with early writeback and kernel copies of untouched tensors);
//! [`RawFile`] is a non-safetensors output (GGUF). Both write through one [`Stream`] (buffered
//! writes, kernel copies, early writeback, the durable close), so the two cannot drift in how bytes
//! reach the disk. Committing, locking and cleanup stay in the parent module.

use super::direct::Direct;
use super::spec::TensorSpec;
use crate::dtype;
use crate::error::{InputError, InputResult};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A byte range of an open input file, the source of a kernel copy: what
/// [`FileWriter::copy_tensor`], [`RawFile::copy_from`] and [`Sink::copy_tensor`](super::Sink)
/// take, so the writers that copy (safetensors, GGUF, and the pipe in front of either) name
/// their source the same way instead of four loose arguments each. `path` is `file`'s, for
/// errors.
#[derive(Debug, Clone, Copy)]
pub struct Extent<'a> {
    pub file: &'a File,
    pub path: &'a Path,
    /// Offset of the first byte in `file`.
    pub offset: u64,
    /// Bytes from `offset`.
    pub len: u64,
}

/// Writes one safetensors file's tensors in their declared order.
#[derive(Debug)]
pub struct FileWriter<'o> {
    /// The [`Output`](super::Output)'s count of bytes written, which [`Self::finish`] adds to.
    pub(super) written: &'o mut u64,
    pub(super) tmp: PathBuf,
    pub(super) stream: Stream,
    pub(super) specs: Vec<TensorSpec>,
    pub(super) next: usize,
    pub(super) left: u64,
}

/// The temporary file behind one output file, written in order: buffered writes and kernel
/// copies, each followed by the early writeback hand-off ([`WriteBehind`]), and the durable
/// close. What [`FileWriter`] (safetensors, checked tensor by tensor) and [`RawFile`] (bytes
/// whose layout the caller owns) share; `dest`, the final path, is for errors.
#[derive(Debug)]
pub(super) struct Stream {
    dest: PathBuf,
    w: BufWriter<File>,
    bytes: u64,
    behind: WriteBehind,
    /// Where the file system takes them, every byte goes through direct I/O instead of `w`
    /// ([`Direct`]); `None` from the start, or from a refusal on.
    direct: Option<Direct>,
}

impl Stream {
    /// The final path of the file, for errors.
    pub(super) fn dest(&self) -> &Path {
        &self.dest
    }

    /// A stream into `file` (the temporary file of `dest`, just created): through direct I/O
    /// where the file system takes it ([`Direct`]), else through an 8 MiB buffer.
    pub(super) fn new(dest: &Path, file: File) -> Stream {
        Stream {
            dest: dest.to_path_buf(),
            direct: Direct::open(&file),
            w: BufWriter::with_capacity(8 << 20, file),
            bytes: 0,
            behind: WriteBehind::default(),
        }
    }

    /// Appends `data`.
    pub(super) fn write_all(&mut self, data: &[u8]) -> InputResult<()> {
        self.bytes += data.len() as u64;
        if let Some(d) = &mut self.direct {
            return d.append(self.w.get_ref(), &self.dest, data);
        }
        self.w
            .write_all(data)
            .map_err(|e| InputError::write(&self.dest, e))?;
        self.behind.after(&mut self.w, &self.dest, self.bytes)
    }

    /// Appends the bytes of `src`: written by direct I/O from maps of the input or read into
    /// its buffers ([`Direct::append_from`]), or copied by the kernel ([`kernel_copy`], with its read/write fallback); `name` is the
    /// tensor they hold.
    pub(super) fn copy(&mut self, name: &str, src: Extent) -> InputResult<()> {
        self.bytes += src.len;
        if let Some(d) = &mut self.direct {
            return d.append_from(self.w.get_ref(), &self.dest, src, name);
        }
        kernel_copy(&mut self.w, &self.dest, name, src)?;
        self.behind.after(&mut self.w, &self.dest, self.bytes)
    }

    /// A stream with the direct side given (tests: `None`, or one set to refuse).
    #[cfg(test)]
    pub(super) fn with_direct(dest: &Path, file: File, direct: Option<Direct>) -> Stream {
        Stream {
            direct,
            ..Stream::new(dest, file)
        }
    }

    /// Whether bytes go through direct I/O (tests).
    #[cfg(test)]
    pub(super) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Bytes of copies written from maps of their input so far (tests).
    #[cfg(test)]
    pub(super) fn mapped_bytes(&self) -> u64 {
        self.direct.as_ref().map_or(0, |d| d.mapped)
    }

    /// Flushes, waits for the writeback hand-offs already made and fsyncs the file: the end of
    /// every output file, safetensors or not. Returns the bytes written.
    pub(super) fn close(self) -> InputResult<u64> {
        self.close_reporting().map(|(bytes, _)| bytes)
    }

    /// [`Self::close`], and whether direct writes were refused on the way (tests).
    pub(super) fn close_reporting(mut self) -> InputResult<(u64, bool)> {
        let file = self
            .w
            .into_inner()
            .map_err(|e| InputError::write(&self.dest, e.into_error()))?;
        let mut refused = false;
        if let Some(d) = self.direct.take() {
            refused = d.finish(&file, &self.dest)?.1;
        }
        self.behind.stop();
        file.sync_all()
            .map_err(|e| InputError::write(&self.dest, e))?;
        Ok((self.bytes, refused))
    }
}

/// Early writeback of one file ([`WRITE_BEHIND`]).
#[derive(Debug, Default)]
pub(super) struct WriteBehind {
    /// Bytes before this offset have been handed to the kernel's writeback.
    behind: u64,
    /// The thread that starts writeback of the ranges it is sent (created on first use).
    flusher: Option<Flusher>,
}

impl WriteBehind {
    /// Hands what was written since the last hand-off (the file holds `bytes` bytes) to the
    /// kernel's writeback once it is [`WRITE_BEHIND`] bytes or more. A hint: errors are
    /// ignored here, and the final fsync reports any that matter.
    fn after(&mut self, w: &mut BufWriter<File>, dest: &Path, bytes: u64) -> InputResult<()> {
        if bytes - self.behind < WRITE_BEHIND {
            return Ok(());
        }
        w.flush().map_err(|e| InputError::write(dest, e))?;
        if self.flusher.is_none() {
            // Without a thread (none can be made) the data simply waits for the fsync.
            self.flusher = Flusher::start(w.get_ref()).ok();
        }
        // Up to the last whole page only: a partly written page sent to writeback would make
        // the next write into it wait for that I/O (stable pages).
        let end = bytes & !(PAGE - 1);
        if let Some(f) = &self.flusher {
            let _ = f.tx.send((self.behind, end - self.behind));
        }
        self.behind = end;
        Ok(())
    }

    /// Waits for the hand-offs already sent (before the fsync).
    fn stop(&mut self) {
        if let Some(f) = self.flusher.take() {
            f.stop();
        }
    }
}

/// Starts the writeback of byte ranges of one file on its own thread:
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)` blocks while the disk's queue is full, and that
/// wait belongs beside the computation, not in it. Ends when its sender is dropped.
#[derive(Debug)]
pub(super) struct Flusher {
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

/// The page size writeback works in (4 KiB on every platform lorakit builds for; a larger page
/// only makes the hint less precise).
const PAGE: u64 = 4096;

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
        self.write_result_chunk(data)
    }

    /// Appends the next bytes of a result tensor begun with [`Self::begin`] (one streamed in
    /// pieces, as a GPU merge reads it back), checked as [`Self::write_tensor`] checks a whole
    /// one: the element index in an error counts from the tensor's start.
    pub fn write_result_chunk(&mut self, data: &[u8]) -> InputResult<()> {
        let spec = &self.specs[self.next.checked_sub(1).expect("a tensor was begun")];
        let dtype = spec.dtype;
        if let Some(i) = dtype::first_non_finite(dtype, data) {
            let done = spec.byte_len().saturating_sub(self.left) * 8 / dtype.bitsize() as u64;
            return Err(InputError::invalid(
                &self.stream.dest,
                format!(
                    "tensor `{}`: element {} is {}; nothing was written",
                    spec.name,
                    done + i as u64,
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
        self.stream.write_all(data)
    }

    /// Writes the whole of the next tensor, which must be `name`, as the bytes of `src`, copied
    /// by the kernel, not through user space ([`kernel_copy`], with its read/write fallback).
    /// Unchecked like [`Self::write_chunk`]: only for byte-for-byte copies of input tensors.
    pub fn copy_tensor(&mut self, name: &str, src: Extent) -> InputResult<()> {
        self.begin(name)?;
        let len = src.len;
        if len != self.left {
            return Err(InputError::invalid(
                &self.tmp,
                format!(
                    "tensor `{name}`: {len} bytes copied where its shape holds {}",
                    self.left
                ),
            ));
        }
        self.stream.copy(name, src)?;
        self.left = 0;
        Ok(())
    }

    /// Flushes and fsyncs; the file is renamed into place when the [`Output`](super::Output)
    /// commits.
    pub fn finish(self) -> InputResult<u64> {
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
        let bytes = self.stream.close()?;
        *self.written += bytes;
        Ok(bytes)
    }
}

/// Appends the bytes of `src` to `w`'s file, copied by the
/// kernel (`copy_file_range(2)`: page cache to page cache, a reflink or a server-side copy
/// where the file system offers one), not through user space; `w` is flushed first and its
/// file offset advanced past the copy. Where the kernel cannot (`EXDEV` across file systems on
/// older or newer kernels, `ENOSYS`, `EOPNOTSUPP`, `EINVAL`, `EPERM` under a seccomp filter),
/// the bytes are read and written in chunks instead. `name` (the tensor) and `dest` are for
/// errors.
fn kernel_copy(w: &mut BufWriter<File>, dest: &Path, name: &str, src: Extent) -> InputResult<()> {
    let Extent {
        file: src,
        path: src_path,
        offset,
        len,
    } = src;
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    w.flush().map_err(|e| InputError::write(dest, e))?;
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
                        libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL | libc::EPERM,
                    ) => kernel = false,
                    _ => return Err(InputError::write(dest, e)),
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
                .map_err(|e| InputError::write(dest, e))?;
            done += n as u64;
        }
    }
    Ok(())
}

/// A file of an [`Output`](super::Output) written as a byte stream
/// ([`Output::raw_file`](super::Output::raw_file)), with the early writeback and kernel copies of
/// [`FileWriter`].
#[derive(Debug)]
pub struct RawFile<'o> {
    /// The [`Output`](super::Output)'s count of bytes written, which [`Self::finish`] adds to.
    pub(super) written: &'o mut u64,
    pub(super) stream: Stream,
}

impl RawFile<'_> {
    pub fn write_all(&mut self, data: &[u8]) -> InputResult<()> {
        self.stream.write_all(data)
    }

    /// Appends the bytes of `src`, copied by the kernel as [`FileWriter::copy_tensor`] copies
    /// (with its read/write fallback); `name` is the tensor they hold, for errors.
    pub fn copy_from(&mut self, name: &str, src: Extent) -> InputResult<()> {
        self.stream.copy(name, src)
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.stream.bytes
    }

    /// Flushes and fsyncs; the file is renamed into place when the [`Output`](super::Output)
    /// commits.
    pub fn finish(self) -> InputResult<u64> {
        let bytes = self.stream.close()?;
        *self.written += bytes;
        Ok(bytes)
    }
}
