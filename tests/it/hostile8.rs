//! The eighth hostile round (`fuzz/hostile_round.py`, `fuzz/hostile_cases_round8.py`: resource
//! limits, signals on every writing command, concurrent writers, inputs that change while read,
//! index and config lies not drawn before): each test is one violation that round found, failing
//! before its fix.

use super::common::*;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;

/// A merge whose output (6 × 2048×256 f32 = 12 MiB) passes a 1 MiB `ulimit -f`.
fn merge_under_file_size_limit(dir: &Path, out: &Path) -> std::process::Output {
    let (base, ad) = big_case(dir, 256);
    let mut c = bin();
    c.args(merge_args(&base, &ad, out, &["--device", "cpu", "--quiet"]));
    // SAFETY: setrlimit is async-signal-safe; the child only execs afterwards.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1 << 20,
                rlim_max: 1 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    c.output().unwrap()
}

/// A write past `ulimit -f` raised SIGXFSZ, whose default action killed the process: no error
/// line, exit by signal 25, and the temporary file (1 MiB of a 12 MiB output) and the lock file
/// left beside the output.
#[test]
fn a_write_past_the_file_size_limit_is_an_error_naming_the_output_not_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    for out in ["merged.safetensors", "merged"] {
        let out = dir.path().join("out").join(out);
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let p = merge_under_file_size_limit(dir.path(), &out);
        assert_eq!(
            p.status.signal(),
            None,
            "killed by a signal: {:?}",
            p.status
        );
        assert_eq!(p.status.code(), Some(3), "{:?}", p.status);
        let err = String::from_utf8_lossy(&p.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        let line = lines[0];
        assert!(line.starts_with("error: "), "{err}");
        assert_mentions(line, &[s(&out), "File too large"]);
        assert_eq!(
            listing(&dir.path().join("out")),
            Vec::<String>::new(),
            "{line}"
        );
    }
}

/// An abort (Rust's answer to a failed allocation under `ulimit -v`, or a SIGABRT from
/// elsewhere) ran no destructor: the temporary file, the lock file and the folders the run
/// created stayed. Now the SIGABRT handler removes them and the process still dies by SIGABRT.
#[test]
fn an_abort_mid_write_leaves_no_temporary_file_lock_or_created_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ad) = big_case(dir.path(), 2048);
    let parent = dir.path().join("new");
    let mut during_write = 0;
    for out in ["deeper/merged.safetensors", "deeper/merged"] {
        let out = parent.join(out);
        let mut child = spawn_cpu_merge(&base, &ad, &out, std::process::Stdio::null());
        let writing = wait_for_temp_in(&[out.parent().unwrap(), &out], &mut child);
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGABRT) };
        let status = child.wait().unwrap();
        if writing {
            during_write += 1;
            assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
        }
        assert!(
            !parent.exists(),
            "after SIGABRT: {:?} left",
            listing(&parent)
        );
    }
    assert_eq!(during_write, 2, "the signal did not land during a write");
}

/// Waits until a lorakit temporary file exists in one of `dirs` (the child is writing).
fn wait_for_temp_in(dirs: &[&Path], child: &mut std::process::Child) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(30) {
        if dirs
            .iter()
            .any(|d| listing(d).iter().any(|f| f.ends_with(".tmp")))
        {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    false
}

/// A base truncated by another process while a merge reads it through its memory map: the
/// next read of a page past the new end raised SIGBUS and the process died by it (exit by
/// signal 7, no error line, the temporary file and the lock left). Now: one line naming the
/// base, exit 2, nothing left beside the output; also when several merge threads fault at once
/// (the handler was first installed with SA_RESETHAND, and a second fault killed the process).
#[test]
fn an_input_truncated_while_mapped_is_an_error_naming_it_not_a_bus_error() {
    let dir = tempfile::tempdir().unwrap();
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let mut faulted = 0;
    for (i, out) in ["merged.safetensors", "merged", "m.safetensors", "m"]
        .iter()
        .enumerate()
    {
        let (base, ad) = big_case(dir.path(), 1024);
        let out = outdir.join(out);
        let mut child = spawn_cpu_merge(&base, &ad, &out, std::process::Stdio::piped());
        assert!(
            wait_for_temp_in(&[&outdir, &out], &mut child),
            "the merge never wrote"
        );
        std::thread::sleep(std::time::Duration::from_millis(50 + 150 * i as u64));
        let len = std::fs::metadata(&base).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&base)
            .unwrap()
            .set_len(len / 3)
            .unwrap();
        let p = child.wait_with_output().unwrap();
        assert_eq!(
            p.status.signal(),
            None,
            "killed by a signal: {:?}",
            p.status
        );
        let line = one_line_error(&p);
        assert_mentions(&line, &[s(&base)]);
        // Truncated before the map was made, the size check refuses the file instead.
        if line.contains("truncated or rewritten by another process") {
            faulted += 1;
        } else {
            assert_mentions(&line, &["file changed size while in use"]);
        }
        assert_eq!(listing(&outdir), Vec::<String>::new(), "{line}");
    }
    assert!(
        faulted >= 2,
        "only {faulted} truncation(s) landed while mapped"
    );
}

/// A CPU merge of `ad` into `base` at `out` running as a child, its stderr going to `stderr`.
fn spawn_cpu_merge(
    base: &Path,
    ad: &Path,
    out: &Path,
    stderr: std::process::Stdio,
) -> std::process::Child {
    bin()
        .args(merge_args(base, ad, out, &["--device", "cpu", "--quiet"]))
        .stderr(stderr)
        .spawn()
        .unwrap()
}
