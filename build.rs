//! `lorakit --version`'s long text. (The OpenBLAS check for feature `lapack` lives in
//! `crates/linalg/build.rs`, the crate that links it.)

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    version();
}

/// `lorakit --version`: the version, the git revision built (when built from a checkout) and
/// the compiled-in features.
fn version() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let rev = git(&["rev-parse", "--short=10", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    // Rerun when HEAD moves; only paths that exist (a missing one would rerun every build).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        for p in ["HEAD", "refs/heads"] {
            let p = Path::new(&dir).join(p);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    let mut features = vec!["gpu (wgpu: vulkan, metal, dx12)"];
    if std::env::var_os("CARGO_FEATURE_LAPACK").is_some() {
        features.push("lapack (OpenBLAS)");
    }
    println!(
        "cargo:rustc-env=LORAKIT_LONG_VERSION={} (rev {rev}{}; features: {})",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
        if dirty { ", modified" } else { "" },
        features.join(", ")
    );
}
