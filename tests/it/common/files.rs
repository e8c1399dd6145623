//! Temporary folders and what tests read back from folders: scratch outputs, listings and
//! file contents, copies, raw and truncated files, a small tmpfs, and the parts-against-one-
//! process comparison. Holds no expected value.

use super::{edit_json, finalize_args, fixture, run_ok};
use std::path::{Path, PathBuf};

/// A fresh temporary folder (deleted when dropped) and the path `name` inside it, where a test
/// writes its output: `let (dir, out) = scratch("out");`.
pub fn scratch(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join(name);
    (dir, path)
}

/// [`scratch`] for several paths: `let (dir, [a, b]) = scratch_all(["a", "b"]);`.
pub fn scratch_all<const N: usize>(names: [&str; N]) -> (tempfile::TempDir, [PathBuf; N]) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let paths = names.map(|n| dir.path().join(n));
    (dir, paths)
}

/// Files in a folder (names), sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The files of a folder, `(name, bytes)`, sorted by name.
pub fn folder_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let read = |n: String| {
        let bytes = std::fs::read(dir.join(&n)).unwrap();
        (n, bytes)
    };
    listing(dir).into_iter().map(read).collect()
}

/// Two [`folder_files`]: the same names, each with the same bytes (`what` names the case).
#[track_caller]
pub fn assert_same_files(got: &[(String, Vec<u8>)], want: &[(String, Vec<u8>)], what: &str) {
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(got), names(want), "{what}");
    for ((name, a), (_, b)) in got.iter().zip(want) {
        assert!(a == b, "{what}: {name} differs");
    }
}

/// `run(out, extra)` (a merge or an extraction into `out`, with `extra` flags) once whole into
/// `whole`, and as parts 1/2 and 2/2 (`--part`) into `split`, which `finalize` then completes:
/// both folders hold the same files, byte for byte ([`assert_same_files`]).
#[track_caller]
pub fn assert_parts_equal_one_process(
    whole: &Path,
    split: &Path,
    run: impl Fn(&Path, &[&str]),
    what: &str,
) {
    run(whole, &[]);
    for part in ["1/2", "2/2"] {
        run(split, &["--part", part]);
    }
    run_ok(finalize_args(split, &["-q"]));
    let what = format!("{what}: parts against one process");
    assert_same_files(&folder_files(split), &folder_files(whole), &what);
}

/// Waits until a lorakit temporary file exists under `dir` (the child is writing).
pub fn wait_for_temp(dir: &Path, child: &mut std::process::Child) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(30) {
        if listing(dir).iter().any(|f| f.ends_with(".tmp")) {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    false
}

/// Mounts a small tmpfs (root only). As root a failed mount is a failure, not a skip: CI runs
/// as root, so these tests always run there.
pub fn small_tmpfs(at: &Path, opts: &str) -> Option<impl Drop> {
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    std::fs::create_dir_all(at).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs", super::s(at)])
        .status()
        .is_ok_and(|st| st.success());
    if !ok {
        assert!(
            !root,
            "running as root, but mounting a tmpfs at {} failed",
            at.display()
        );
        eprintln!("TMPFS TEST SKIPPED: cannot mount a tmpfs here (needs root)");
        return None;
    }
    Some(Unmount(at.to_path_buf()))
}

/// Cuts the last `n` bytes off the file at `path` (a file cut short after it was written).
pub fn truncate_by(path: &Path, n: u64) {
    let len = std::fs::metadata(path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len - n).unwrap();
}

/// Writes a safetensors file from a raw header string and data length.
pub fn raw_file(dir: &Path, name: &str, header: &str, data: usize) -> PathBuf {
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.resize(bytes.len() + data, 0);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Copies the regular files of `src` (not its subfolders) into `dst`, created if missing.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// Copies fixture folder `rel` to `dir/name` and edits its `adapter_config.json` with `edit`.
pub fn edited_copy(
    dir: &Path,
    rel: &str,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let ad = dir.join(name);
    copy_dir(&fixture(rel), &ad);
    edit_json(ad.join("adapter_config.json"), edit);
    ad
}
