//! The memory maps of input files, remembered so that a SIGBUS (the file was truncated by
//! another process while mapped: its pages past the new end can no longer be read) becomes one
//! error line naming the file instead of a silent death by signal.
//!
//! [`map_input`] makes such a map for a reader that has no header to check it against (the
//! recipe's BLAKE3 of an input), so that its SIGBUS is reported alike.
//!
//! Must not: allocate, lock or free in [`report_fault`], which runs in a signal handler; be used
//! for anything but reporting and making maps (the maps themselves belong to their readers).

use std::ffi::CString;
use std::path::Path;
use std::sync::Mutex;

/// (start address, length, the file's path as a C string), in mapping order. Entries are not
/// removed when a map is dropped: an address whose map was dropped and whose range a later map
/// reuses is found in the later entry first (the search is newest first), and anonymous memory
/// raises no SIGBUS.
static MAPS: Mutex<Vec<(usize, usize, CString)>> = Mutex::new(Vec::new());

/// Remembers that `path` is mapped at `bytes` (the map's whole range).
pub(crate) fn note(bytes: &[u8], path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    if let Ok(mut v) = MAPS.lock() {
        v.push((bytes.as_ptr() as usize, bytes.len(), c));
    }
}

/// Maps the whole of `file` (opened from `path`) read-only and notes the map.
///
/// # Safety contract
/// Mapping a file is only sound while no other process truncates or rewrites it; lorakit never
/// writes to a file it reads (outputs go to a temporary file renamed into place). Another
/// program truncating an input while it is mapped is outside the contract: the read of a page
/// past the new end raises SIGBUS, which the binary reports as one line naming `path`
/// ([`report_fault`]) instead of dying silently. Returns `None` for an empty file (which cannot
/// be mapped).
pub fn map_input(file: &std::fs::File, path: &Path) -> std::io::Result<Option<memmap2::Mmap>> {
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: see the contract above.
    let map = unsafe { memmap2::Mmap::map(file) }?;
    note(&map, path);
    Ok(Some(map))
}

/// Called by the binary's SIGBUS handler with the faulting address: where it lies in a mapped
/// input, writes `error: PATH: …` (one line) to stderr and returns true; false otherwise (or if
/// another thread holds the list). Async-signal-safe: `write` only, on the C strings made when
/// the maps were noted.
pub fn report_fault(addr: usize) -> bool {
    let maps = match MAPS.try_lock() {
        Ok(v) => v,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return false,
    };
    let Some((_, _, path)) = maps
        .iter()
        .rev()
        .find(|(start, len, _)| addr >= *start && addr - start < *len)
    else {
        return false;
    };
    let parts: [&[u8]; 3] = [
        b"error: ",
        path.as_bytes(),
        b": the file was truncated or rewritten by another process while lorakit read it \
          (SIGBUS); nothing was written\n",
    ];
    for part in parts {
        let mut rest = part;
        while !rest.is_empty() {
            // SAFETY: write(2) on stderr from a valid slice; async-signal-safe.
            let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                break;
            }
            rest = &rest[n as usize..];
        }
    }
    true
}
