//! The one place that decides where a command's words go: the report on stdout (text, or JSON
//! with `--json`), status lines and warnings on stderr, and what `-q/--quiet` silences.
//!
//! Owns: stdout/stderr writes of every command, the `operation` key of JSON reports, and
//! broken-pipe handling (`| head` is not an error). Must not decide what a report says:
//! commands render their text, ops return `Serialize` reports. Progress bars are drawn here
//! too ([`progress`]: indicatif on stderr, TTY only, never with --quiet or --json); the library
//! only reports to the `crate::progress::Progress` trait.

use anyhow::Result;

/// Sets `-q/--quiet` for this process (once, before the command runs).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// `-q/--quiet`: nothing but errors (and JSON a script asked for with `--json`).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes a text report to stdout, unless `--quiet` or reports are captured ([`capture_reports`]);
/// a closed pipe (`| head`) is not an error.
pub fn print(s: &str) -> Result<()> {
    if QUIET.load(std::sync::atomic::Ordering::Relaxed) || capturing() {
        return Ok(());
    }
    print_always(s)
}

/// The reports of commands run while [`capture_reports`] runs (`run --json`: every step's report
/// goes into the run's one object, and no step writes to stdout). `None`: reports are printed.
static CAPTURED: std::sync::Mutex<Option<Vec<serde_json::Value>>> = std::sync::Mutex::new(None);

fn capturing() -> bool {
    CAPTURED.lock().map(|c| c.is_some()).unwrap_or(false)
}

/// Runs `f` with every report it makes kept (as its JSON object, `operation` first) instead of
/// printed, text reports dropped; returns `f`'s result and the reports in order.
pub fn capture_reports<T>(f: impl FnOnce() -> T) -> (T, Vec<serde_json::Value>) {
    if let Ok(mut c) = CAPTURED.lock() {
        *c = Some(Vec::new());
    }
    let r = f();
    let reports = CAPTURED
        .lock()
        .ok()
        .and_then(|mut c| c.take())
        .unwrap_or_default();
    (r, reports)
}

/// Writes `s` to stdout whatever `--quiet` says (requested JSON, completions, man pages).
pub(super) fn print_always(s: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// A command's report: JSON on stdout with `--json` (whatever `--quiet` says), else the text
/// `text` renders, unless `--quiet`. The text is rendered only when it is printed.
pub fn print_report<T: serde::Serialize>(
    json: bool,
    operation: &str,
    report: &T,
    text: impl FnOnce() -> String,
) -> Result<()> {
    if json || capturing() {
        print_json(operation, report)
    } else {
        print(&text())
    }
}

/// Whether this process printed a JSON report (so a later error adds no second object).
static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints a report as JSON (always, even with `--quiet`). Every report is an object whose first
/// key is `operation` (the command that made it): a report that does not name its operation
/// gets `operation`, and a list becomes `{"operation": …, "items": […]}`. That key is the one
/// way a script tells reports apart; the README's JSON section lists the shared vocabulary.
pub fn print_json<T: serde::Serialize>(operation: &str, v: &T) -> Result<()> {
    let value = with_operation(operation, serde_json::to_value(v)?);
    if let Ok(mut c) = CAPTURED.lock() {
        if let Some(kept) = c.as_mut() {
            kept.push(value);
            return Ok(());
        }
    }
    let mut s = serde_json::to_string_pretty(&value)?;
    s.push('\n');
    REPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
    print_always(&s)
}

/// What kind of failure an error is, decided by its type: the exit status and the `kind` of
/// the JSON error object. (Exit status 1, a check that failed, is a report, not an error.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Failure {
    /// The command line cannot run as typed: options that contradict each other or a value
    /// out of range, named by no file (a bare message or [`OptionError`]). Exit status 2.
    ///
    /// [`OptionError`]: crate::error::OptionError
    Usage,
    /// An input (or the destination) is wrong for the command: an [`InputError`] naming the
    /// file (malformed, missing, mismatched, an output onto an input). Exit status 2.
    ///
    /// [`InputError`]: crate::error::InputError
    Input,
    /// Writing the output failed (disk full, permissions, read-only file system, a folder that
    /// cannot be created): [`InputError::is_write_failure`]. Exit status 3.
    ///
    /// [`InputError::is_write_failure`]: crate::error::InputError::is_write_failure
    Output,
}

impl Failure {
    /// The kind of `e`, from the typed errors of its chain: a write failure anywhere makes it
    /// [`Failure::Output`], else any [`crate::error::InputError`] [`Failure::Input`].
    pub fn of(e: &anyhow::Error) -> Failure {
        use crate::error::InputError;
        let inputs = || e.chain().filter_map(|c| c.downcast_ref::<InputError>());
        if inputs().any(InputError::is_write_failure) {
            Failure::Output
        } else if inputs().next().is_some() {
            Failure::Input
        } else {
            Failure::Usage
        }
    }

    /// The process exit status of this failure.
    pub fn exit_code(self) -> u8 {
        match self {
            Failure::Usage | Failure::Input => 2,
            Failure::Output => 3,
        }
    }
}

/// A failed `--json` command's one object on stdout, for scripts that parse stdout:
/// `{"operation", "error": {"message", "exit_code", "kind"}}`, `message` the line stderr got
/// (after `error: `). Nothing when this process already printed a JSON report (a report is
/// the one object), nor on a closed pipe.
pub fn print_error_json(operation: &str, message: &str, failure: Failure) {
    if REPORTED.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    #[derive(serde::Serialize)]
    struct Error<'a> {
        message: &'a str,
        exit_code: u8,
        kind: Failure,
    }
    #[derive(serde::Serialize)]
    struct Failed<'a> {
        error: Error<'a>,
    }
    let report = Failed {
        error: Error {
            message,
            exit_code: failure.exit_code(),
            kind: failure,
        },
    };
    // The error line is already on stderr; a stdout that cannot take this has nothing to add.
    let _ = print_json(operation, &report);
}

fn with_operation(operation: &str, v: serde_json::Value) -> serde_json::Value {
    use serde_json::{Map, Value};
    let mut out = Map::new();
    match v {
        Value::Object(m) => {
            let own = m.get("operation").cloned();
            out.insert(
                "operation".into(),
                own.unwrap_or_else(|| Value::String(operation.into())),
            );
            out.extend(m.into_iter().filter(|(k, _)| k != "operation"));
        }
        other => {
            out.insert("operation".into(), Value::String(operation.into()));
            out.insert("items".into(), other);
        }
    }
    Value::Object(out)
}

/// The one line printed for a failed command (after `error: `): the error's chain joined by
/// `: ` as anyhow's `{:#}` joins it, with the options an [`OptionError`] names spelled as the
/// flags they came from ([`crate::cli::flags::spell`]), control characters escaped.
///
/// [`OptionError`]: crate::error::OptionError
pub fn error_line(e: &anyhow::Error) -> String {
    use crate::error::{InputError, OptionError};
    let spell = &crate::cli::flags::spell;
    let parts: Vec<String> = e
        .chain()
        .map(|c| {
            if let Some(o) = c.downcast_ref::<OptionError>() {
                o.render(spell)
            } else if let Some(i) = c.downcast_ref::<InputError>() {
                i.render(spell)
            } else {
                c.to_string()
            }
        })
        .collect();
    crate::error::one_line(&parts.join(": "))
}

/// A fraction in `[0, 1]` (energy kept) as people read it in every text report: a percentage
/// with two decimals, more where two would round a fraction below 1 up to `100.00%`
/// (`0.9999996` → `99.99996%`, at most six decimals). JSON keeps the fraction.
pub fn percent(fraction: f64) -> String {
    let p = 100.0 * fraction;
    (2..=6)
        .map(|d| format!("{p:.d$}%"))
        .find(|s| fraction >= 1.0 || !s.starts_with("100."))
        .unwrap_or_else(|| format!("{p:.6}%"))
}

/// A status line on stderr unless `--quiet`.
pub fn status(msg: &str) {
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{}", crate::error::one_line(msg));
    }
}

/// A warning on stderr unless quiet (one line, control characters escaped).
pub fn warn(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("warning: {}", crate::error::one_line(msg));
    }
}

/// The warning for adapters holding textual-inversion embeddings
/// ([`crate::adapter::Adapter::bundled_embeddings`]), which no operation applies.
pub fn warn_bundled<'a>(quiet: bool, adapters: impl Iterator<Item = &'a crate::adapter::Adapter>) {
    for w in adapters.filter_map(bundled_warning) {
        warn(quiet, &w);
    }
}

/// [`warn_bundled`]'s text for one adapter; `None` without bundled embeddings.
pub fn bundled_warning(a: &crate::adapter::Adapter) -> Option<String> {
    if a.bundled_embeddings.is_empty() {
        return None;
    }
    let names: std::collections::BTreeSet<&str> = a
        .bundled_embeddings
        .iter()
        .filter_map(|k| k.split('.').nth(1))
        .collect();
    Some(format!(
        "{}: {} bundled textual-inversion embedding tensor(s) ({}) are not weight updates and are left out (A1111 loads them as embeddings; ComfyUI skips them)",
        a.path.display(),
        a.bundled_embeddings.len(),
        names.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// [`warn_bundled`] for the adapters at `paths`, read for their keys only (an adapter that does
/// not open is the operation's to report, not this warning's). After the operation's plan
/// validated its inputs.
pub fn warn_bundled_at(quiet: bool, paths: &[std::path::PathBuf]) {
    let opened: Vec<crate::adapter::Adapter> = paths
        .iter()
        .filter(|p| p.is_file())
        .filter_map(|p| crate::adapter::Adapter::open_for_check(p).ok())
        .collect();
    warn_bundled(quiet, opened.iter());
}

/// Progress of a run: terminal bars on stderr when `shown` and stderr is a terminal, else
/// silent.
pub fn progress(shown: bool) -> crate::progress::Reporter {
    use std::io::IsTerminal;
    if !shown || is_quiet() || !std::io::stderr().is_terminal() {
        return crate::progress::Reporter::default();
    }
    crate::progress::Reporter::new(|what, total, unit| Box::new(Bar::new(what, total, unit)))
}

/// An indicatif bar on stderr, cleared when dropped.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(what: &'static str, total: u64, unit: crate::progress::Unit) -> Self {
        use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
        let template = match unit {
            crate::progress::Unit::Bytes => {
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
            }
            crate::progress::Unit::Items => "{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        };
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_message(what);
        Bar(pb)
    }
}

impl crate::progress::Progress for Bar {
    fn inc(&self, n: u64) {
        self.0.inc(n)
    }
    fn set_position(&self, pos: u64) {
        self.0.set_position(pos)
    }
    fn set_message(&self, msg: String) {
        self.0.set_message(msg)
    }
    fn suspend(&self, f: &mut dyn FnMut()) {
        self.0.suspend(f)
    }
    fn note(&self, line: &str) {
        self.0.suspend(|| eprintln!("{line}"))
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear()
    }
}

fn is_quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::percent;

    #[test]
    fn percent_shows_what_two_decimals_would_round_to_100() {
        assert_eq!(percent(0.5), "50.00%");
        assert_eq!(percent(0.123456), "12.35%");
        assert_eq!(percent(1.0), "100.00%");
        assert_eq!(percent(0.99996), "99.996%");
        assert_eq!(percent(0.9999996), "99.99996%");
        assert_eq!(percent(0.0), "0.00%");
    }
}
