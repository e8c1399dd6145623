//! How an operation says how far it got, without deciding how that looks.
//!
//! Owns: the [`Progress`] trait the library's long loops report to, and [`Reporter`], the
//! handle an operation's options carry (silent by default, so library callers and tests see
//! nothing). Must not draw anything: the CLI's `commands/printer.rs` supplies the terminal bars
//! (indicatif, stderr, TTY only, never with --quiet or --json).

use std::sync::Arc;

/// What a bar counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    /// Modules, steps, windows.
    Items,
}

/// One running task. Called from worker threads, hence `Sync`; finished when dropped.
pub trait Progress: Send + Sync {
    fn inc(&self, n: u64);
    fn set_position(&self, _pos: u64) {}
    fn set_message(&self, _msg: String) {}
    /// Runs `f` (which prints) with the bar out of the way.
    fn suspend(&self, f: &mut dyn FnMut()) {
        f()
    }
    /// A line for whoever watches this task (printed above the bar); dropped when nobody does.
    fn note(&self, _line: &str) {}
}

/// A task nobody watches.
pub struct Silent;

impl Progress for Silent {
    fn inc(&self, _n: u64) {}
}

type Start = dyn Fn(&'static str, u64, Unit) -> Box<dyn Progress> + Send + Sync;

/// Starts the tasks of one run: silent unless the caller gave a way to show them.
#[derive(Clone, Default)]
pub struct Reporter(Option<Arc<Start>>);

impl Reporter {
    /// Tasks shown by `start(what, total, unit)`.
    pub fn new(
        start: impl Fn(&'static str, u64, Unit) -> Box<dyn Progress> + Send + Sync + 'static,
    ) -> Self {
        Reporter(Some(Arc::new(start)))
    }

    /// A task of `total` units.
    pub fn start(&self, what: &'static str, total: u64, unit: Unit) -> Box<dyn Progress> {
        match &self.0 {
            Some(f) => f(what, total, unit),
            None => Box::new(Silent),
        }
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Reporter(shown)"
        } else {
            "Reporter(silent)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Count(Arc<AtomicU64>);
    impl Progress for Count {
        fn inc(&self, n: u64) {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A shown reporter hands every increment to the caller's task; the default one drops them.
    #[test]
    fn reporter_is_silent_unless_given_a_task() {
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        let r = Reporter::new(move |what, total, unit| {
            assert_eq!((what, total, unit), ("merging", 10, Unit::Bytes));
            Box::new(Count(s.clone()))
        });
        let task = r.start("merging", 10, Unit::Bytes);
        task.inc(3);
        task.inc(4);
        assert_eq!(seen.load(Ordering::Relaxed), 7);
        Reporter::default().start("merging", 10, Unit::Bytes).inc(5);
        assert_eq!(seen.load(Ordering::Relaxed), 7);
    }
}
