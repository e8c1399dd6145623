//! With feature `lapack`, checks that OpenBLAS can be linked before anything is compiled, so a
//! machine without it gets one clear message at once instead of a linker error after the whole
//! build. Without the feature this does nothing.
//!
//! Must not change what is compiled: it only checks the link and fails early.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=OPENBLAS_DIR");
    if std::env::var_os("CARGO_FEATURE_LAPACK").is_some() {
        check_openblas();
    }
}

fn check_openblas() {
    let mut dirs: Vec<String> = vec![
        "/usr/lib".into(),
        "/usr/lib64".into(),
        "/usr/local/lib".into(),
        "/usr/lib/x86_64-linux-gnu".into(),
        "/usr/lib/aarch64-linux-gnu".into(),
        "/usr/lib/x86_64-linux-gnu/openblas-pthread".into(),
        "/usr/lib/aarch64-linux-gnu/openblas-pthread".into(),
        "/opt/homebrew/opt/openblas/lib".into(),
        "/usr/local/opt/openblas/lib".into(),
    ];
    for var in ["OPENBLAS_DIR", "LIBRARY_PATH", "LD_LIBRARY_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            for d in std::env::split_paths(&v) {
                dirs.push(d.join("lib").display().to_string());
                dirs.push(d.display().to_string());
            }
        }
    }
    let found = dirs.iter().any(|d| {
        ["libopenblas.so", "libopenblas.a", "libopenblas.dylib"]
            .iter()
            .any(|f| Path::new(d).join(f).exists())
    });
    if !found {
        eprintln!(
            "\nerror: feature `lapack` links OpenBLAS, and no libopenblas was found (looked in {}).\n\
             Install it first (Debian/Ubuntu: `apt-get install libopenblas-dev`; macOS: `brew install openblas`),\n\
             or set OPENBLAS_DIR, or build without `--features lapack` (faer serves every routine).\n",
            dirs.join(", ")
        );
        std::process::exit(1);
    }
}
