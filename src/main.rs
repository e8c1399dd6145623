//! The `lorakit` binary: parse, run, and turn an error into one line on stderr and an exit code
//! (0 ok, 1 check failed, 2 bad usage or input, 3 internal or output I/O error).

use clap::Parser;
use lorakit::cli::Cli;
use lorakit::error::InputError;
use std::process::ExitCode;

fn main() -> ExitCode {
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
            let input = e.chain().any(|c| c.downcast_ref::<InputError>().is_some());
            ExitCode::from(if input || is_usage(&e) { 2 } else { 3 })
        }
    }
}

/// Errors raised by argument checks in the commands (no file involved) are usage errors.
fn is_usage(e: &anyhow::Error) -> bool {
    e.chain().count() == 1 && e.downcast_ref::<std::io::Error>().is_none()
}
