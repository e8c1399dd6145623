//! The `lorakit` binary: parse, run, and turn an error into one line on stderr and an exit code
//! (0 ok, 1 check failed, 2 bad usage or input, 3 the output could not be written).

use clap::Parser;
use lorakit::cli::Cli;
use lorakit::error::InputError;
use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_mesa();
    let cli = Cli::parse();
    match lorakit::commands::run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("error: {e:#}");
            ExitCode::from(if is_output_failure(&e) { 3 } else { 2 })
        }
    }
}

/// Writing the output failed (disk full, permissions, I/O error on a temporary file): exit 3.
/// Everything else — bad usage, bad or mismatched input — is exit 2.
fn is_output_failure(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        if let Some(ie) = c.downcast_ref::<InputError>() {
            if let lorakit::error::InputErrorKind::Io(io) = &ie.kind {
                return ie.path.to_string_lossy().ends_with(".tmp")
                    || io.kind() == std::io::ErrorKind::StorageFull;
            }
        }
        false
    })
}

/// Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid or not set" on stderr when the GPU is
/// probed (as `--device auto` does) without one; give them a private one so stderr stays ours.
/// Runs first in `main`, before any thread exists.
fn quiet_mesa() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("lorakit-xdg-{uid}"));
        if std::fs::create_dir_all(&dir).is_ok()
            && std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok()
        {
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
    }
}
