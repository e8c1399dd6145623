//! Issue #14's structural rules, checked on the source tree so that they cannot regress
//! unnoticed (three two-file import cycles came back in one session before this test):
//! no import cycle between files (`scripts/import_cycles.py`, which defines what an edge is)
//! and no source file over 800 lines.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_import_cycle_between_source_files() {
    let out = match Command::new("python3")
        .arg(root().join("scripts/import_cycles.py"))
        .arg("--sccs")
        .arg(root().join("src"))
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIPPED: no python3 to run scripts/import_cycles.py ({e})");
            return;
        }
    };
    // The cycles on stdout, the counts on stderr.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let said = |line: &str| text.lines().any(|l| l == line);
    assert!(
        said("0 two-file cycles"),
        "import cycles between files (issue #14):\n{text}"
    );
    assert!(
        said("0 groups of three or more files in a cycle"),
        "longer import cycles (issue #14):\n{text}"
    );
}

#[test]
fn no_source_file_is_over_800_lines() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    assert!(files.len() > 100, "the source tree: {} files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 800).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these files (issue #14): {long:?}");
}
