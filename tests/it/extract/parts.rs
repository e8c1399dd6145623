//! Split runs: `extract --part I/N` in separate processes, then `finalize`, equal one run.

use super::*;

/// Runs `extract` with `--part i/n` for every part at once, as n separate jobs would.
fn extract_parts(base: &Path, tuned: &Path, out: &Path, extra: &[&str], n: usize) {
    let children: Vec<_> = (1..=n)
        .map(|i| {
            let part = format!("{i}/{n}");
            let flags = [extra, &["--part", &part, "--quiet"]].concat();
            bin()
                .args(extract_args(base, tuned, out, &flags))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
}

#[test]
fn three_extract_parts_in_separate_processes_equal_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let tuned = llama_tuned_file(dir.path(), "llama/merged/rslora_all.safetensors");
    let base = fixture("llama/base");
    let (one, split) = (dir.path().join("one"), dir.path().join("split"));
    let flags = ["--energy", "0.9", "--max-rank", "6", "--dtype", "bf16"];
    let single = extract(&base, &tuned, &one, &flags);
    extract_parts(&base, &tuned, &split, &flags, 3);
    // Before finalize: only the three part files, no adapter.
    assert_eq!(
        listing(&split),
        (1..=3)
            .map(|i| format!(".lorakit-extract-part-{i}-of-3.safetensors"))
            .collect::<Vec<_>>()
    );
    // finalize refuses while a part is missing, and changes nothing.
    let p2 = split.join(".lorakit-extract-part-2-of-3.safetensors");
    let saved = std::fs::read(&p2).unwrap();
    std::fs::remove_file(&p2).unwrap();
    let err = one_line_error(&run_err(finalize_args(&split, &[])));
    assert!(err.contains("extract parts not finished: 2/3"), "{err}");
    assert_eq!(listing(&split).len(), 2);
    // A part run with other flags is refused by name, in the words of every split output.
    let flags = [&flags[..], &["--seed", "5", "--part", "2/3", "-q"]].concat();
    bin()
        .args(extract_args(&base, &tuned, &split, &flags))
        .status()
        .unwrap();
    let err = one_line_error(&run_err(finalize_args(&split, &[])));
    assert_mentions(
        &err,
        &[
            ".lorakit-extract-part-2-of-3.safetensors",
            "belongs to another run than",
        ],
    );
    std::fs::write(&p2, &saved).unwrap();
    let joined: Value = serde_json::from_str(&run_ok(finalize_args(&split, &["--json"]))).unwrap();
    assert_eq!(listing(&one), listing(&split), "part files removed");
    for f in listing(&one) {
        assert!(
            std::fs::read(one.join(&f)).unwrap() == std::fs::read(split.join(&f)).unwrap(),
            "{f} differs"
        );
    }
    // The summary of the joined run reports the same modules, ranks and errors.
    assert_eq!(module_ranks(&joined), module_ranks(&single));
    assert!(
        module_ranks(&single)
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1
    );
    for (a, b) in single["modules"]
        .as_array()
        .unwrap()
        .iter()
        .zip(joined["modules"].as_array().unwrap())
    {
        assert_eq!(a["rel_error"], b["rel_error"]);
        assert_eq!(a["energy_kept"], b["energy_kept"]);
    }
    assert_eq!(single["totals"], joined["totals"]);
}

#[test]
fn kohya_parts_beside_the_file_and_changed_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (base, tuned) = mixed_pair(dir.path());
    let flags = ["--rank", "2", "--format", "kohya", "--min-diff", "1e-4"];
    let one = dir.path().join("one.safetensors");
    let split = dir.path().join("split.safetensors");
    let single = extract(&base, &tuned, &one, &flags);
    extract_parts(&base, &tuned, &split, &flags, 2);
    assert!(!split.exists());
    assert!(dir
        .path()
        .join(".split.safetensors.lorakit-extract-part-1-of-2.safetensors")
        .exists());
    let joined: Value = serde_json::from_str(&run_ok(finalize_args(&split, &["--json"]))).unwrap();
    assert!(std::fs::read(&one).unwrap() == std::fs::read(&split).unwrap());
    for list in ["skipped", "changed_tensors"] {
        assert_eq!(single[list], joined[list], "{list}");
    }
    assert!(!listing(dir.path())
        .iter()
        .any(|f| f.contains("lorakit-extract-part")));

    // An input rewritten after the parts ran (same bytes, new mtime) is named.
    let again = dir.path().join("again.safetensors");
    extract_parts(&base, &tuned, &again, &flags, 2);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let bytes = std::fs::read(&tuned).unwrap();
    std::fs::remove_file(&tuned).unwrap();
    std::fs::write(&tuned, bytes).unwrap();
    let err = one_line_error(&run_err(finalize_args(&again, &[])));
    assert!(err.contains("tuned.safetensors changed"), "{err}");
    assert!(!again.exists());
    // Nothing to finalize: a clear error.
    let err = one_line_error(&run_err(finalize_args(
        &dir.path().join("none.safetensors"),
        &[],
    )));
    assert!(err.contains("nothing to finalize"), "{err}");
}
