//! What the benchmarks share (included with `#[path]`; not a bench target of its own).

use std::os::fd::AsRawFd;
use std::path::Path;

/// Removes `path` (if it is there) and commits its file system (`syncfs`), outside every timed
/// region. On a file system mounted with online `discard` (this project's machine: ext4,
/// `discard`) the blocks of a removed file are discarded at the next journal commit; without
/// this, that commit lands inside whichever job is timed next (the durable copy after a merge's
/// output is removed, the merge after the copy's) and stalls its writes: the merges' bimodal
/// medians of issue #15. `LORAKIT_BENCH_SETTLE=0` only removes the file (the former behaviour,
/// for an A/B of this).
pub fn remove_settled(path: &Path) {
    let _ = std::fs::remove_file(path);
    if std::env::var("LORAKIT_BENCH_SETTLE").as_deref() == Ok("0") {
        return;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let f = std::fs::File::open(dir).expect("the output folder opens");
    // SAFETY: `f` is an open descriptor for the duration of the call.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    assert_eq!(rc, 0, "syncfs: {}", std::io::Error::last_os_error());
}
