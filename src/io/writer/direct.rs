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
//! the buffer, whose start is always a multiple of [`ALIGN`] in the file; each full buffer is one
//! aligned `pwrite`. The last, partial buffer is written through the ordinary descriptor at
//! close, before the fsync that every output gets (`fsync` syncs the inode, direct writes
//! included). A file system that refuses a direct write (`EINVAL`), or writes part of a block,
//! gets the ordinary buffered path from there on, chosen per file; nothing else changes: the
//! same bytes, the same atomic commit. `LORAKIT_DIRECT_IO=0` turns it off (an A/B switch, and an
//! escape hatch).
//!
//! Must not: reorder or alter bytes, write a page twice through the two descriptors (the direct
//! writes cover whole pages below the buffer's start, the buffered tail only the pages above),
//! or leave the buffered descriptor's file offset wrong when it falls back.

use crate::error::{InputError, InputResult};
use std::fs::File;
use std::path::Path;

/// Alignment of the buffer's address, of every direct write's file offset and of its length:
/// 4 KiB covers the logical block size of every disk (512 or 4096 bytes).
pub const ALIGN: usize = 4096;

/// Size of the staging buffer: large enough that one `pwrite` keeps the disk's queue busy
/// (the block layer splits it), small beside the merge's own buffers.
const CAPACITY: usize = 8 << 20;

/// A page-aligned heap buffer of [`CAPACITY`] bytes.
struct Aligned {
    ptr: std::ptr::NonNull<u8>,
}

impl Aligned {
    fn layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(CAPACITY, ALIGN).expect("a valid layout")
    }

    fn new() -> Option<Aligned> {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        std::ptr::NonNull::new(p).map(|ptr| Aligned { ptr })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns CAPACITY initialised (zeroed) bytes for the life of `self`, and
        // `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), CAPACITY) }
    }

    fn as_ref(&self) -> &[u8] {
        // SAFETY: as in `as_mut`, shared.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), CAPACITY) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout()) }
    }
}

// SAFETY: `Aligned` owns its allocation exclusively (like a `Box<[u8]>`).
unsafe impl Send for Aligned {}

impl std::fmt::Debug for Aligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned({CAPACITY} bytes)")
    }
}

/// The direct-I/O side of one output file (see the module doc).
#[derive(Debug)]
pub(super) struct Direct {
    file: File,
    buf: Aligned,
    /// Bytes staged in `buf`.
    len: usize,
    /// File offset of `buf[0]` (a multiple of [`ALIGN`]).
    at: u64,
    /// Tests: direct writes at or past this offset are refused as a file system refuses them
    /// (`EINVAL`), to check the fall back to buffered writes.
    #[cfg(test)]
    pub(super) refuse_at: u64,
}

/// What became of bytes handed to [`Direct`].
pub(super) enum Staged {
    /// Staged or written directly.
    Done,
    /// The file system refused a direct write: the caller writes everything from this file
    /// offset on through its buffered descriptor (the bytes staged so far are already there).
    Refused,
}

impl Direct {
    /// A direct descriptor for `plain`'s file (the temporary file just created, still empty),
    /// or `None` where direct I/O is off, unsupported by the platform, or not worth it on this
    /// file system ([`local_disk`]), or refused by it.
    pub(super) fn open(plain: &File) -> Option<Direct> {
        if std::env::var_os("LORAKIT_DIRECT_IO").is_some_and(|v| v == "0") {
            return None;
        }
        Self::open_on(plain)
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
            file,
            buf: Aligned::new()?,
            len: 0,
            at: 0,
            #[cfg(test)]
            refuse_at: u64::MAX,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn open_on(_plain: &File) -> Option<Direct> {
        None
    }

    /// Appends `data`, writing each buffer as it fills. On a refusal the staged bytes are
    /// written through `plain` (at their offsets) and the rest of `data` is left to the caller:
    /// the count of `data`'s bytes taken is returned with it.
    pub(super) fn append(
        &mut self,
        plain: &File,
        dest: &Path,
        mut data: &[u8],
    ) -> InputResult<(usize, Staged)> {
        let total = data.len();
        while !data.is_empty() {
            let n = (CAPACITY - self.len).min(data.len());
            self.buf.as_mut()[self.len..self.len + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == CAPACITY {
                if let Staged::Refused = self.flush_full(plain, dest)? {
                    return Ok((total - data.len(), Staged::Refused));
                }
            }
        }
        Ok((total, Staged::Done))
    }

    /// Appends `len` bytes of `src` from `offset`, read straight into the buffer; the same
    /// contract as [`Self::append`] (the count is of bytes of `src` taken). `src_path` and
    /// `name` (the tensor) are for errors.
    pub(super) fn append_from(
        &mut self,
        plain: &File,
        dest: &Path,
        src: super::file::Extent,
        name: &str,
    ) -> InputResult<(u64, Staged)> {
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
                if let Staged::Refused = self.flush_full(plain, dest)? {
                    return Ok((done, Staged::Refused));
                }
            }
        }
        Ok((done, Staged::Done))
    }

    /// The file offset after the bytes written so far (all of them, after a refusal).
    pub(super) fn written_to(&self) -> u64 {
        self.at + self.len as u64
    }

    /// One direct `pwrite` of `buf[from..to]` at its offset.
    fn write_direct(&self, from: usize, to: usize) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        #[cfg(test)]
        if self.at + from as u64 >= self.refuse_at {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.file
            .write_at(&self.buf.as_ref()[from..to], self.at + from as u64)
    }

    /// Writes the full buffer at `at` with one direct `pwrite` (repeated for a short write).
    fn flush_full(&mut self, plain: &File, dest: &Path) -> InputResult<Staged> {
        let mut off = 0usize;
        while off < CAPACITY {
            match self.write_direct(off, CAPACITY) {
                // A short direct write ends on a block boundary; go on from there.
                Ok(n) if n > 0 && n.is_multiple_of(ALIGN) => off += n,
                Ok(0) => {
                    return Err(InputError::write(
                        dest,
                        std::io::Error::new(std::io::ErrorKind::WriteZero, "no bytes written"),
                    ))
                }
                // A short write that ends inside a block: the whole blocks stand, the rest goes
                // through `plain` (so no byte is written through both descriptors).
                Ok(n) => return self.refuse(plain, dest, off + n / ALIGN * ALIGN),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EINVAL: this file system (or its block size) does not take these writes.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    return self.refuse(plain, dest, off)
                }
                Err(e) => return Err(InputError::write(dest, e)),
            }
        }
        self.at += CAPACITY as u64;
        self.len = 0;
        Ok(Staged::Done)
    }

    /// Writes the staged bytes from `from` on through `plain` at their offsets (the direct
    /// writes before them stand) and gives up direct I/O.
    fn refuse(&mut self, plain: &File, dest: &Path, from: usize) -> InputResult<Staged> {
        use std::os::unix::fs::FileExt;
        plain
            .write_all_at(&self.buf.as_ref()[from..self.len], self.at + from as u64)
            .map_err(|e| InputError::write(dest, e))?;
        self.at += self.len as u64;
        self.len = 0;
        Ok(Staged::Refused)
    }

    /// Writes what is staged: its whole pages directly, the partial last page through `plain`.
    /// Returns the file offset after the last byte.
    pub(super) fn finish(self, plain: &File, dest: &Path) -> InputResult<u64> {
        use std::os::unix::fs::FileExt;
        let whole = self.len / ALIGN * ALIGN;
        let mut from = 0usize;
        while from < whole {
            match self.write_direct(from, whole) {
                Ok(n) if n > 0 && n.is_multiple_of(ALIGN) => from += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
                    return Err(InputError::write(dest, e))
                }
                Ok(n) => {
                    // Short of a block (or nothing): the whole blocks stand, the rest goes
                    // through `plain`.
                    from += n / ALIGN * ALIGN;
                    break;
                }
                // Refused: the rest goes through `plain`.
                Err(_) => break,
            }
        }
        plain
            .write_all_at(&self.buf.as_ref()[from..self.len], self.at + from as u64)
            .map_err(|e| InputError::write(dest, e))?;
        Ok(self.at + self.len as u64)
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
