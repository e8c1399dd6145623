//! One orchestrator per subcommand: turn parsed arguments into library plans, run them, and
//! print the report (stdout) — progress and warnings go to stderr.

pub mod combine;
pub mod convert;
pub mod extract;
pub mod inspect;
pub mod merge;
pub mod resize;

use crate::cli::{Cli, Command};
use anyhow::Result;

/// Runs the parsed command line; the returned code is the process exit status on success
/// (1 = a check failed).
pub fn run(cli: Cli) -> Result<i32> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Merge(a) => merge::run(a, quiet),
        Command::Extract(a) => extract::run(a, quiet),
        Command::Resize(a) => resize::run(a, quiet),
        Command::Combine(a) => combine::run(a, quiet),
        Command::Convert(a) => convert::run(a, quiet),
    }
}

/// Writes `s` to stdout; a closed pipe (`| head`) is not an error.
pub fn print(s: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Prints `v` as pretty JSON with a trailing newline.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    print(&s)
}

/// A warning on stderr unless quiet.
pub fn warn(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("warning: {msg}");
    }
}
