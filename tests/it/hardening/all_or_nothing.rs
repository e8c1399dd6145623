//! 3. All or nothing, nothing leaks: failed runs, older layouts, signals, a second writer,
//! unwritable destinations.

use super::*;

#[test]
fn created_folders_and_temp_files_never_outlive_a_failed_run() {
    let dir = tempfile::tempdir().unwrap();
    // Fails in the middle of the merge (F16 overflow), after the folders were created.
    let out = dir.path().join("a/b/c");
    let overflow = flags("--weight 1e9 --dtype f16 --device cpu");
    let line = merge_qv_r8_refused(&fixture("llama/base"), &out, &overflow);
    assert_mentions(&line, &["F16", "self_attn"]);
    assert!(
        listing(dir.path()).is_empty(),
        "left: {:?}",
        listing(dir.path())
    );
    // `--out new/` for a single-file base: a file inside the new folder, nothing in the cwd.
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let (base, qv) = ("llama/base/model.safetensors", "llama/adapters/qv_r8");
    let args = merge_fixtures_args(base, qv, Path::new("new/"), &["--quiet"]);
    ok_stdout(bin().current_dir(&cwd).args(args));
    assert_eq!(listing(&cwd), vec!["new"]);
    assert_eq!(listing(&cwd.join("new")), vec!["model.safetensors"]);
}

/// An `--out` folder holding an older sharded checkpoint opens as the new model afterwards:
/// the old index and its shards are gone, unrelated files stay.
#[test]
fn an_older_layout_in_the_output_folder_does_not_survive() {
    let (_dir, out) = scratch("out");
    merge_qv_r8_into(&fixture("llama/base_sharded"), &out, &["--quiet"]);
    assert!(out.join("model.safetensors.index.json").exists());
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    merge_qv_r8(&out, &["--quiet"]);
    assert_eq!(
        listing(&out),
        vec![
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "notes.txt"
        ]
    );
}

/// A ~100 MB f32 base and a rank-16 adapter: a merge runs long enough to be interrupted.
fn slow_case(dir: &Path) -> (PathBuf, PathBuf) {
    big_case(dir, 2048)
}

fn slow_merge(base: &Path, ad: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.args(merge_args(base, ad, out, &["--device", "cpu", "--quiet"]));
    c
}

#[test]
fn sigint_and_sigterm_mid_write_remove_temp_files_and_created_folders() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (base, ad) = slow_case(dir.path());
    let parent = dir.path().join("new");
    let out = parent.join("deeper/merged.safetensors");
    let mut during_write = 0;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut child = slow_merge(&base, &ad, &out).spawn().unwrap();
        let writing = wait_for_temp(&parent.join("deeper"), &mut child);
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        if writing {
            during_write += 1;
            assert_eq!(status.signal(), Some(sig), "dies by the signal: {status:?}");
        }
        assert!(
            !parent.exists(),
            "after signal {sig}: {:?} left",
            listing(&parent)
        );
    }
    assert_eq!(during_write, 2, "the signals did not land during a write");
}

#[test]
fn a_second_writer_of_the_same_output_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ad) = slow_case(dir.path());
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("merged.safetensors");
    let mut first = slow_merge(&base, &ad, &out).spawn().unwrap();
    assert!(
        wait_for_temp(&outdir, &mut first),
        "first merge never wrote"
    );
    let second = slow_merge(&base, &ad, &out).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "{err}");
    assert!(err.contains("another lorakit process"), "{err}");
    assert!(
        first.wait().unwrap().success(),
        "the first writer was disturbed"
    );
    // The result is the first run's, whole: equal to a fresh run.
    let fresh = dir.path().join("fresh.safetensors");
    run_ok(
        slow_merge(&base, &ad, &fresh)
            .get_args()
            .map(|a| a.to_owned())
            .collect::<Vec<_>>(),
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&fresh).unwrap());
    assert_eq!(listing(&outdir), vec!["merged.safetensors"]);
}

#[test]
fn unwritable_destinations_exit_3_naming_the_path() {
    let (_dir, ro) = scratch("ro");
    let Some(_guard) = small_tmpfs(&ro, "size=1m,ro") else {
        return;
    };
    for out in [
        ro.join("merged.safetensors"),
        ro.join("a/b/merged.safetensors"),
    ] {
        let err = unwritable_merge_error(&out);
        assert!(err.contains(s(&ro)), "names the path: {err}");
    }
    let res = run_err(inspect_args(
        &fixture("llama/adapters/qv_r8"),
        &["--plot", s(&ro.join("p.svg"))],
    ));
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(3), "{err}");
    assert!(err.contains("p.svg"), "{err}");
}
