//! Direct I/O for an output file (Linux `O_DIRECT`): bytes staged in one page-aligned buffer
//! and written to the disk from it, not copied into page-cache pages first.
//!
//! Why (issue #15): on the project's machine a buffered write plus fsync of 640 MiB ran at
//! 0.28–1.5 GB/s from one run to the next (`dd … conv=fsync`), while the same bytes written
//! with `O_DIRECT` ran at 1.4–1.6 GB/s every time (`dd … oflag=direct`): the slow runs spend
//! their time in the kernel's copy into freshly allocated page-cache pages
//! (`copy_folio_from_iter_atomic`), the "writer stall" of the merge bench. A merge's output is
//! written once and not read back by lorakit, so the page cache gains nothing from holding it;
//! skipping it also leaves the cache to the base being read (a 7B checkpoint and its merge do
//! not both fit in memory).
//!
//! How: a second descriptor of the same open temporary file (reopened through `/proc/self/fd`,
//! so a path swapped meanwhile cannot redirect it), with `O_DIRECT`, on local disk file systems
//! only ([`local_disk`]: not NFS, SMB or FUSE, where it costs a round trip per write, nor tmpfs).
//! Every byte the stream appends, including tensors copied unchanged from an input (read with
//! `pread` into the buffer: one copy, as `copy_file_range` makes into the page cache), goes into
//! an 8 MiB buffer whose start is always a multiple of [`ALIGN`] in the file; each full buffer
//! goes to the file's I/O thread, which writes it with aligned `pwrite`s while the next one is
//! filled ([`BUFFERS`] in all, so reading, computing and the disk overlap). The last, partial
//! buffer is written through the ordinary descriptor at close, after the thread is done and
//! before the fsync that every output gets (`fsync` syncs the inode, direct writes included).
//! A file system that refuses a direct write (`EINVAL`), or writes part of a block, gets the
//! ordinary descriptor from there on, chosen per file; nothing else changes: the same bytes,
//! the same atomic commit. `LORAKIT_DIRECT_IO=0` turns it off (an A/B switch, and an escape
//! hatch).
//!
//! Copies without the copy (issue #17): where a copied extent's source offset and its place in
//! the output agree modulo [`ALIGN`] (a GGUF merge pads its header so that they do, see
//! `io::gguf::writer::page_padding`), the bytes up to the output's next page boundary are
//! staged as above, the staged buffer goes to the I/O thread as it stands (whole pages), and
//! then the extent's whole pages go to the I/O thread as read-only shared maps of the input
//! ([`Mapped`], at most [`CAPACITY`] bytes each, owned by the message until written), written
//! with `O_DIRECT` straight from the input's page-cache pages (the kernel pins them for the
//! transfer): no `pread` copy. Only the partial page at the end is staged again. Extents under
//! [`MAP_MIN`] whole pages, or whose offsets disagree, or that a map is refused for, are staged
//! as before. `LORAKIT_DIRECT_MAP=0` stages every copy (the A/B switch of this path alone).
//!
//! Must not: reorder or alter bytes, write a page twice through the two descriptors (the direct
//! writes, staged or mapped, cover whole pages below the staging buffer's start, the buffered
//! tail only the pages above), or leave the buffered descriptor's file offset wrong when it
//! falls back; nor unmap an input's pages before the write that reads them has returned.

use crate::error::{InputError, InputResult};
use std::fs::File;
use std::path::Path;

/// Alignment of the buffer's address, of every direct write's file offset and of its length:
/// 4 KiB covers the logical block size of every disk (512 or 4096 bytes).
pub const ALIGN: usize = 4096;

/// Size of each staging buffer: large enough that one `pwrite` keeps the disk's queue busy
/// (the block layer splits it), small beside the merge's own buffers.
const CAPACITY: usize = 8 << 20;

/// Buffers per file: one being filled while up to `BUFFERS - 1` are written by the I/O thread,
/// so reading and computing overlap the disk (a synchronous write per buffer left the writer
/// waiting on the disk between its reads: measured slower than the page cache's write-behind
/// on the 0.62 GB merge).
const BUFFERS: usize = 3;

/// The fewest whole pages of a copied extent worth writing from a map of the input rather than
/// staging (1 MiB): below it, the map and unmap calls and the early hand-off of a part-filled
/// buffer cost about what the copy saves.
const MAP_MIN: u64 = 1 << 20;

/// A page-aligned buffer of [`CAPACITY`] bytes (an anonymous memory mapping).
struct Aligned {
    ptr: std::ptr::NonNull<u8>,
}

impl Aligned {
    /// A fresh anonymous mapping: page-aligned, zeroed by the kernel page by page as it is
    /// first touched, so a small output costs only the pages it fills (a zeroed heap
    /// allocation is `memset` whole where the process keeps freed memory, see
    /// `model::retain_freed_memory`: 8 MiB resident per output file).
    fn new() -> Option<Aligned> {
        // SAFETY: a new private anonymous mapping; no existing memory is involved.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CAPACITY,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        std::ptr::NonNull::new(p.cast::<u8>()).map(|ptr| Aligned { ptr })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps CAPACITY initialised (zero-filled) bytes for the life of `self`,
        // and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), CAPACITY) }
    }

    fn as_ref(&self) -> &[u8] {
        // SAFETY: as in `as_mut`, shared.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), CAPACITY) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), CAPACITY) };
    }
}

// SAFETY: `Aligned` owns its allocation exclusively (like a `Box<[u8]>`).
unsafe impl Send for Aligned {}

impl std::fmt::Debug for Aligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned({CAPACITY} bytes)")
    }
}

/// Whole pages of an input file mapped read-only (`MAP_SHARED`: its page-cache pages
/// themselves), the source of one direct write; unmapped on drop, after the write.
struct Mapped {
    /// Start of the mapping (a multiple of the system's page size in the file).
    ptr: std::ptr::NonNull<u8>,
    /// Bytes mapped before the wanted ones (the file offset's distance from the page below it,
    /// where the system's page is larger than [`ALIGN`]).
    skip: usize,
    /// Bytes wanted, from `ptr + skip`.
    len: usize,
    /// The input's path, for errors.
    source: std::path::PathBuf,
}

impl Mapped {
    /// Maps `len` bytes of `file` from `offset`, or `None` where the system refuses (a file
    /// that cannot be mapped, the address space exhausted): the caller stages them instead.
    #[cfg(target_os = "linux")]
    fn new(file: &File, path: &Path, offset: u64, len: usize) -> Option<Mapped> {
        use std::os::unix::io::AsRawFd;
        // SAFETY: sysconf reads a constant of the system.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())?;
        let start = offset & !(page - 1);
        let skip = (offset - start) as usize;
        let at = libc::off_t::try_from(start).ok()?;
        // SAFETY: a new read-only shared mapping of an open descriptor (borrowed `File`); no
        // existing memory is involved. Its contents are the input's bytes under the inputs'
        // contract (`io::gguf::GgufFile::open`: no process rewrites or truncates an input while
        // lorakit runs; the caller has checked the range lies inside the file).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                skip + len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                at,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        std::ptr::NonNull::new(p.cast::<u8>()).map(|ptr| Mapped {
            ptr,
            skip,
            len,
            source: path.to_path_buf(),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn new(_file: &File, _path: &Path, _offset: u64, _len: usize) -> Option<Mapped> {
        None
    }

    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `skip + len` readable bytes for the life of `self`, all inside the
        // file (checked by the caller), whose contents do not change (the inputs' contract).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(self.skip), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.skip + self.len) };
    }
}

// SAFETY: `Mapped` owns its read-only mapping exclusively.
unsafe impl Send for Mapped {}

/// What the I/O thread writes at an offset: the first (whole-page) bytes of a staging buffer,
/// which it hands back, or an input's mapped pages.
enum Chunk {
    Staged(Aligned, usize),
    Mapped(Mapped),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Staged(b, n) => &b.as_ref()[..*n],
            Chunk::Mapped(m) => m.as_ref(),
        }
    }
}

/// The direct-I/O side of one output file (see the module doc): the buffer being filled, and
/// the thread that writes full ones, started with the first.
#[derive(Debug)]
pub(super) struct Direct {
    /// The `O_DIRECT` descriptor, until the I/O thread takes it.
    file: Option<File>,
    buf: Aligned,
    /// Bytes staged in `buf`.
    len: usize,
    /// File offset of `buf[0]` (a multiple of [`ALIGN`]).
    at: u64,
    io: Option<Io>,
    /// Whether copies with agreeing offsets are written from maps of the input (see the
    /// module doc; `LORAKIT_DIRECT_MAP=0` turns it off).
    map: bool,
    /// Tests: bytes sent to the I/O thread as mapped pages.
    #[cfg(test)]
    pub(super) mapped: u64,
    /// Tests: direct writes at or past this offset are refused as a file system refuses them
    /// (`EINVAL`), to check the fall back to buffered writes.
    #[cfg(test)]
    pub(super) refuse_at: u64,
}

/// The I/O thread of one file: chunks go in order on `tx` with their offsets, staging buffers
/// come back empty on `back`; it ends with its first error (or whether it fell back to buffered
/// writes).
#[derive(Debug)]
struct Io {
    tx: std::sync::mpsc::SyncSender<(Chunk, u64)>,
    back: std::sync::mpsc::Receiver<Aligned>,
    /// Empty buffers not yet handed out (the ones never sent).
    spare: usize,
    thread: std::thread::JoinHandle<InputResult<bool>>,
}

impl Direct {
    /// A direct descriptor for `plain`'s file (the temporary file just created, still empty),
    /// or `None` where direct I/O is off, unsupported by the platform, or not worth it on this
    /// file system ([`local_disk`]), or refused by it.
    pub(super) fn open(plain: &File) -> Option<Direct> {
        if std::env::var_os("LORAKIT_DIRECT_IO").is_some_and(|v| v == "0") {
            return None;
        }
        let mut d = Self::open_on(plain)?;
        d.map = std::env::var_os("LORAKIT_DIRECT_MAP").is_none_or(|v| v != "0");
        Some(d)
    }

    /// [`Self::open`] without the switch. The second descriptor is opened through
    /// `/proc/self/fd`, which names the open file itself, not its path: a temporary path
    /// swapped for a link meanwhile cannot redirect the bytes (and the device and inode are
    /// checked to be `plain`'s).
    #[cfg(target_os = "linux")]
    pub(super) fn open_on(plain: &File) -> Option<Direct> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        use std::os::unix::io::AsRawFd;
        if !local_disk(plain) {
            return None;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", plain.as_raw_fd()))
            .ok()?;
        let (a, b) = (plain.metadata().ok()?, file.metadata().ok()?);
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return None;
        }
        Some(Direct {
            file: Some(file),
            buf: Aligned::new()?,
            len: 0,
            at: 0,
            io: None,
            map: true,
            #[cfg(test)]
            mapped: 0,
            #[cfg(test)]
            refuse_at: u64::MAX,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn open_on(_plain: &File) -> Option<Direct> {
        None
    }

    /// Appends `data`, handing each buffer to the I/O thread as it fills.
    pub(super) fn append(&mut self, plain: &File, dest: &Path, mut data: &[u8]) -> InputResult<()> {
        while !data.is_empty() {
            let n = (CAPACITY - self.len).min(data.len());
            self.buf.as_mut()[self.len..self.len + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == CAPACITY {
                self.send_staged(plain, dest)?;
            }
        }
        Ok(())
    }

    /// Appends `src`'s bytes: its whole pages from maps of the input where its offset agrees
    /// with the output's ([`Self::mappable`]), the rest read straight into the buffers
    /// (`pread`). `name` (the tensor) is for errors.
    pub(super) fn append_from(
        &mut self,
        plain: &File,
        dest: &Path,
        src: super::file::Extent,
        name: &str,
    ) -> InputResult<()> {
        let Some((head, pages)) = self.mappable(&src) else {
            return self.stage_from(plain, dest, src, name);
        };
        let part = |from: u64, to: u64| super::file::Extent {
            offset: src.offset + from,
            len: to - from,
            ..src
        };
        // Up to the output's next page boundary, staged; then the staged whole pages go first,
        // so that the staging buffer starts on the page after the mapped ones.
        self.stage_from(plain, dest, part(0, head), name)?;
        if self.len > 0 {
            self.send_staged(plain, dest)?;
        }
        let end = head + pages;
        let mut done = head;
        while done < end {
            let n = (end - done).min(CAPACITY as u64);
            // A map refused: the rest is staged, from a page boundary as the buffer expects.
            let Some(m) = Mapped::new(src.file, src.path, src.offset + done, n as usize) else {
                break;
            };
            self.send_mapped(plain, dest, m)?;
            done += n;
        }
        self.stage_from(plain, dest, part(done, src.len), name)
    }

    /// Where `src` can be written from maps of the input: its offset and the output's next
    /// byte agree modulo [`ALIGN`], and at least [`MAP_MIN`] whole pages follow the `head`
    /// bytes up to the output's next page boundary. Returns `(head, pages)`, the byte counts
    /// of the two. `None` too where the input is shorter than `src` (the staged read then
    /// reports it, naming the tensor).
    fn mappable(&self, src: &super::file::Extent) -> Option<(u64, u64)> {
        let at = self.at + self.len as u64;
        let align = ALIGN as u64;
        if !self.map || src.offset % align != at % align {
            return None;
        }
        let head = (align - at % align) % align;
        let pages = src.len.checked_sub(head)? / align * align;
        let end = src.offset.checked_add(src.len)?;
        (pages >= MAP_MIN && src.file.metadata().ok()?.len() >= end).then_some((head, pages))
    }

    /// Appends `src`'s bytes, read straight into the buffers (`pread`). `name` (the tensor) is
    /// for errors.
    fn stage_from(
        &mut self,
        plain: &File,
        dest: &Path,
        src: super::file::Extent,
        name: &str,
    ) -> InputResult<()> {
        use std::os::unix::fs::FileExt;
        let mut done = 0u64;
        while done < src.len {
            let n = ((CAPACITY - self.len) as u64).min(src.len - done) as usize;
            let slot = &mut self.buf.as_mut()[self.len..self.len + n];
            src.file
                .read_exact_at(slot, src.offset + done)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => InputError::io(
                        src.path,
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("file ends inside tensor `{name}`"),
                        ),
                    ),
                    _ => InputError::io(src.path, e),
                })?;
            self.len += n;
            done += n as u64;
            if self.len == CAPACITY {
                self.send_staged(plain, dest)?;
            }
        }
        Ok(())
    }

    /// Hands the staged bytes (whole pages: the buffer full, or part-filled before mapped
    /// pages) to the I/O thread (starting it with the first) and takes an empty buffer: a
    /// spare, or the next the thread gives back (waiting for it while `BUFFERS - 1` are in
    /// flight). An error of the thread's ends the file.
    fn send_staged(&mut self, plain: &File, dest: &Path) -> InputResult<()> {
        debug_assert!(self.len > 0 && self.len.is_multiple_of(ALIGN));
        if self.io.is_none() {
            self.io = Some(self.start(plain, dest)?);
        }
        let io = self.io.as_mut().expect("started");
        let next = if io.spare > 0 {
            io.spare -= 1;
            match Aligned::new() {
                Some(b) => Some(b),
                // A mapping refused (ENOMEM: `ulimit -v`) is said as such, not as a writer
                // that stopped without a cause.
                None => {
                    let _ = self.stopped(dest);
                    return Err(InputError::write(
                        dest,
                        std::io::Error::new(
                            std::io::ErrorKind::OutOfMemory,
                            "out of memory: no 8 MiB buffer for the direct-I/O writer (the process's memory or address-space limit, e.g. ulimit -v)",
                        ),
                    ));
                }
            }
        } else {
            io.back.recv().ok()
        };
        let full = match next {
            Some(b) => std::mem::replace(&mut self.buf, b),
            None => return Err(self.stopped(dest)),
        };
        if io
            .tx
            .send((Chunk::Staged(full, self.len), self.at))
            .is_err()
        {
            return Err(self.stopped(dest));
        }
        self.at += self.len as u64;
        self.len = 0;
        Ok(())
    }

    /// Hands mapped whole pages to the I/O thread, to be written at the staging buffer's
    /// offset (nothing is staged: [`Self::append_from`] sent it first), which moves past them.
    fn send_mapped(&mut self, plain: &File, dest: &Path, m: Mapped) -> InputResult<()> {
        debug_assert!(self.len == 0 && m.len.is_multiple_of(ALIGN));
        if self.io.is_none() {
            self.io = Some(self.start(plain, dest)?);
        }
        let n = m.len as u64;
        let io = self.io.as_mut().expect("started");
        if io.tx.send((Chunk::Mapped(m), self.at)).is_err() {
            return Err(self.stopped(dest));
        }
        self.at += n;
        #[cfg(test)]
        {
            self.mapped += n;
        }
        Ok(())
    }

    /// The I/O thread's error, once it has stopped.
    fn stopped(&mut self, dest: &Path) -> InputError {
        let e = match self.io.take().map(|io| {
            drop(io.tx);
            io.thread.join()
        }) {
            Some(Ok(Err(e))) => return e,
            _ => std::io::Error::other("the direct-I/O writer stopped"),
        };
        InputError::write(dest, e)
    }

    /// Starts the I/O thread: each chunk written at its offset with direct `pwrite`s, from a
    /// refusal (`EINVAL`, or a write that ends inside a block) on through a duplicate of
    /// `plain` (the whole blocks already written stand, so no byte goes through both). A
    /// mapped chunk is unmapped when its writes have returned; a write that cannot read its
    /// mapped pages (`EFAULT`: the input shrank since it was checked) is the input's error.
    fn start(&mut self, plain: &File, dest: &Path) -> InputResult<Io> {
        use std::os::unix::fs::FileExt;
        let direct = self.file.take().expect("started once");
        let plain = plain.try_clone().map_err(|e| InputError::write(dest, e))?;
        let out = dest.to_path_buf();
        #[cfg(test)]
        let refuse_at = self.refuse_at;
        #[cfg(not(test))]
        let refuse_at = u64::MAX;
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Chunk, u64)>(BUFFERS);
        let (back_tx, back) = std::sync::mpsc::sync_channel::<Aligned>(BUFFERS);
        let thread = std::thread::Builder::new()
            .name("lorakit-direct-io".into())
            .spawn(move || -> InputResult<bool> {
                let mut refused = false;
                for (chunk, at) in rx {
                    let failed = |e: std::io::Error| match &chunk {
                        Chunk::Mapped(m) if e.raw_os_error() == Some(libc::EFAULT) => {
                            InputError::io(
                                &m.source,
                                std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    "file ends inside a tensor being copied (changed while lorakit ran)",
                                ),
                            )
                        }
                        _ => InputError::write(&out, e),
                    };
                    let data = chunk.bytes();
                    let len = data.len();
                    let mut off = 0usize;
                    while !refused && off < len {
                        let r = if at + off as u64 >= refuse_at {
                            Err(std::io::Error::from_raw_os_error(libc::EINVAL))
                        } else {
                            direct.write_at(&data[off..], at + off as u64)
                        };
                        match r {
                            Ok(n) if n > 0 && n.is_multiple_of(ALIGN) => off += n,
                            Ok(0) => return Err(failed(std::io::ErrorKind::WriteZero.into())),
                            Ok(n) => {
                                off += n / ALIGN * ALIGN;
                                refused = true;
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => refused = true,
                            Err(e) => return Err(failed(e)),
                        }
                    }
                    if off < len {
                        plain
                            .write_all_at(&data[off..], at + off as u64)
                            .map_err(failed)?;
                    }
                    // The sender may have finished (its last buffer needs none back). A map is
                    // dropped (unmapped) here, its writes done.
                    if let Chunk::Staged(buf, _) = chunk {
                        let _ = back_tx.send(buf);
                    }
                }
                Ok(refused)
            })
            .map_err(|e| InputError::write(dest, e))?;
        Ok(Io {
            tx,
            back,
            spare: BUFFERS - 1,
            thread,
        })
    }

    /// Waits for the I/O thread, then writes what is staged (less than a buffer) through
    /// `plain`. Returns the file offset after the last byte and whether the file system
    /// refused direct writes on the way.
    pub(super) fn finish(mut self, plain: &File, dest: &Path) -> InputResult<(u64, bool)> {
        use std::os::unix::fs::FileExt;
        let mut refused = false;
        if let Some(io) = self.io.take() {
            drop(io.tx);
            refused = match io.thread.join() {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(InputError::write(
                        dest,
                        std::io::Error::other("the direct-I/O writer panicked"),
                    ))
                }
            };
        }
        plain
            .write_all_at(&self.buf.as_ref()[..self.len], self.at)
            .map_err(|e| InputError::write(dest, e))?;
        Ok((self.at + self.len as u64, refused))
    }
}

/// Whether `file` lies on a local disk file system where direct I/O skips the page cache and
/// nothing else (ext2/3/4, XFS, Btrfs, F2FS, bcachefs, and overlayfs, which hands direct I/O to
/// the file system beneath it in containers). Elsewhere it costs more than it saves: on NFS,
/// SMB or FUSE `O_DIRECT` makes every write a synchronous round trip and gives up server-side
/// copies, and tmpfs keeps its data in the page cache anyway.
#[cfg(target_os = "linux")]
fn local_disk(file: &File) -> bool {
    use std::os::unix::io::AsRawFd;
    const EXT: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const F2FS: i64 = 0xF2F5_2010;
    const BCACHEFS: i64 = 0xCA45_1A4E;
    const OVERLAYFS: i64 = 0x794C_7630;
    // SAFETY: `st` is a live local the call fills; the descriptor is open (borrowed `File`).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // `f_type`'s width differs between targets
    let t = st.f_type as i64;
    matches!(t, EXT | XFS | BTRFS | F2FS | BCACHEFS | OVERLAYFS)
}
