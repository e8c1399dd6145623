//! Faults: kill -9 in the middle of a merge, a full disk, reruns. The destination holds either
//! the old file or nothing — never a truncated one — and a rerun is not tripped by leftovers.

use super::common::*;
use std::path::Path;
use std::time::Duration;

/// `merge` on the CPU, quiet, with the adapter at `weight`.
fn weighted_merge(base: &Path, ad: &Path, out: &Path, weight: &str) -> Vec<String> {
    merge_args(
        base,
        ad,
        out,
        &["--weight", weight, "--device", "cpu", "--quiet"],
    )
}

#[test]
fn kill_9_leaves_old_file_or_nothing_and_reruns_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ad) = big_case(dir.path(), 1024);
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("merged.safetensors");
    // The complete output of weight 2, to compare a finished run against.
    run_ok(weighted_merge(&base, &ad, &out, "2"));
    let new_bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    // The "old" file: weight 1.
    run_ok(weighted_merge(&base, &ad, &out, "1"));
    let old_bytes = std::fs::read(&out).unwrap();
    assert_ne!(old_bytes, new_bytes);
    // Kills that land while a temporary file is being written (the child is waited for until
    // one exists, then killed after a delay); a kill after the rename is not counted.
    let mut during_write = 0;
    for (i, delay_ms) in [0u64, 1, 3, 8, 20, 60].into_iter().enumerate() {
        // Half the runs start with no file at all.
        let had_old = i % 2 == 0;
        if !had_old {
            let _ = std::fs::remove_file(&out);
        } else if !out.exists() || std::fs::read(&out).unwrap() != old_bytes {
            std::fs::write(&out, &old_bytes).unwrap();
        }
        let mut child = bin()
            .args(weighted_merge(&base, &ad, &out, "2"))
            .spawn()
            .unwrap();
        let writing = wait_for_temp(&outdir, &mut child);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        let temp_left = listing(&outdir).iter().any(|f| f.ends_with(".tmp"));
        if writing && !status.success() && temp_left {
            during_write += 1;
        }
        match std::fs::read(&out) {
            Ok(bytes) => assert!(
                bytes == new_bytes || (had_old && bytes == old_bytes),
                "after kill at {delay_ms} ms the destination is neither the old nor the complete new file ({} bytes)",
                bytes.len()
            ),
            Err(_) => assert!(!had_old, "the old file vanished after a kill at {delay_ms} ms"),
        }
    }
    assert!(
        during_write >= 2,
        "only {during_write} kills landed while a temporary file was being written"
    );
    // A rerun succeeds, sweeps every temp file of the killed runs, and is byte-identical.
    run_ok(weighted_merge(&base, &ad, &out, "2"));
    assert_eq!(std::fs::read(&out).unwrap(), new_bytes);
    assert_eq!(
        listing(&outdir),
        vec!["merged.safetensors"],
        "temp files left behind"
    );
}

/// A destination on a 256 KiB tmpfs: the 360 KB merge cannot fit. One error line, non-zero
/// exit, nothing left on the small disk. Needs root (mount): skipped loudly otherwise, and a
/// failure when running as root (as CI does).
#[test]
fn full_disk_is_a_clear_error_with_no_partial_output() {
    let (_dir, mnt) = scratch("small");
    let Some(_guard) = small_tmpfs(&mnt, "size=256k") else {
        return;
    };
    let out = mnt.join("merged.safetensors");
    let err = unwritable_merge_error(&out);
    assert_mentions(&err, &["No space left on device", "merged.safetensors"]);
    assert!(
        listing(&mnt).is_empty(),
        "left on the full disk: {:?}",
        listing(&mnt)
    );
}

#[test]
fn kill_9_during_extract_leaves_nothing_or_the_complete_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ad) = big_case(dir.path(), 1024);
    let tuned = dir.path().join("tuned.safetensors");
    run_ok(weighted_merge(&base, &ad, &tuned, "1"));
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("adapter");
    let args = |out: &Path| -> Vec<String> {
        extract_args(
            &base,
            &tuned,
            out,
            &["--rank", "4", "--quiet", "--device", "cpu"],
        )
    };
    let complete = dir.path().join("complete");
    run_ok(args(&complete));
    let want = std::fs::read(complete.join("adapter_model.safetensors")).unwrap();
    let mut interrupted = 0;
    for delay_ms in [0u64, 10, 40, 120, 300] {
        let _ = std::fs::remove_dir_all(&out);
        let mut child = bin().args(args(&out)).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        match std::fs::read(out.join("adapter_model.safetensors")) {
            Ok(bytes) => assert!(
                bytes == want,
                "after kill at {delay_ms} ms the adapter is not the complete one"
            ),
            Err(_) => interrupted += 1,
        }
        // Never a config without its weights or the reverse.
        assert_eq!(
            out.join("adapter_config.json").exists(),
            out.join("adapter_model.safetensors").exists()
        );
    }
    assert!(interrupted >= 1, "no kill landed before extract finished");
    run_ok(args(&out));
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        want,
        "rerun is byte-identical"
    );
    assert_eq!(
        listing(&out),
        vec!["adapter_config.json", "adapter_model.safetensors"],
        "temp files left behind"
    );
}
