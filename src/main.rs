//! The `lorakit` binary: parse, run, and turn an error into one line on stderr and an exit code
//! (0 ok, 1 check failed, 2 bad usage or input, 3 the output could not be written).
//!
//! Must not do work: parsing is `cli`'s, running `commands`', and the error line, its kind
//! (hence the exit code) and the JSON error object of a `--json` run `commands::printer`'s.

use clap::Parser;
use lorakit::cli::Cli;
use lorakit::commands::printer;
use std::process::ExitCode;

/// A failed allocation (a memory or address-space limit) is one line naming the input being
/// read, the run's temporary files removed and exit 2 (`io::memory`), not Rust's
/// "memory allocation of N bytes failed" and an abort.
#[global_allocator]
static ALLOC: lorakit::io::memory::ReportingAlloc = lorakit::io::memory::ReportingAlloc;

fn main() -> ExitCode {
    quiet_mesa();
    lorakit::io::memory::set_cleanup(lorakit::io::writer::cleanup_on_abort);
    clean_up_on_signals();
    clean_up_on_abort();
    if let Err(code) = start_worker_threads() {
        return code;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let json = lorakit::commands::json_operation(&cli);
    let result = lorakit::commands::run(cli);
    if lorakit::io::writer::signal_taken() {
        // The signal thread is removing this run's temporary files and then ends the process
        // by the signal; a write its clean-up broke must not exit 3 first with "cannot write".
        wait_for_the_signal();
    }
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            let line = printer::error_line(&e);
            let failure = printer::Failure::of(&e);
            eprintln!("error: {line}");
            if let Some(operation) = json {
                printer::print_error_json(operation, &line, failure);
            }
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Starts rayon's global pool (RAYON_NUM_THREADS or one worker per core, as rayon's default)
/// before any input is read. Built lazily on the first parallel loop, a worker that could not be
/// started there (its stack not mapped under `ulimit -v`: EAGAIN) made rayon panic in the middle
/// of a run ("The global thread pool has not been initialized", hostile round 10); rayon tries
/// once per process, so a failure here is the one line, exit 2, before anything is opened.
fn start_worker_threads() -> Result<(), ExitCode> {
    match rayon::ThreadPoolBuilder::new().build_global() {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!(
                "error: cannot start the worker threads: {e} (the process's memory or address-space limit, e.g. ulimit -v)"
            );
            Err(ExitCode::from(2))
        }
    }
}

/// Parks the main thread until the signal thread ends the process by its signal (it raises
/// it right after the clean-up); `_exit` with the shell's 128 + signal status if it has not
/// after 10 s.
fn wait_for_the_signal() -> ! {
    for _ in 0..1000 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: _exit ends the process at once; nothing is left to flush on this path.
    unsafe { libc::_exit(128 + libc::SIGTERM) }
}

/// A command line clap refuses: like every other error, one line on stderr and exit 2 (clap's
/// own rendering adds a usage block and a tip, up to six lines). Help and version requests
/// print as clap prints them. The line is the first paragraph of clap's message, its lines
/// joined (`the following required arguments were not provided: --adapter <ADAPTERS>, …`).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or_default();
    let mut line = String::new();
    for (i, l) in first
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let sep = match i {
            0 => "",
            1 if line.ends_with(':') => " ",
            _ => ", ",
        };
        line.push_str(sep);
        line.push_str(l);
    }
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    // clap's suggestion for a mistyped flag or command (`tip: a similar argument exists:
    // '--out'`) is what the user needs most; it stays on the line.
    let tips: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("tip:"))
        .collect();
    let tip = match tips.as_slice() {
        [] => String::new(),
        t => format!("; {}", t.join("; ")),
    };
    eprintln!("error: {line}{tip} (see --help)");
    ExitCode::from(2)
}

/// Two signals that end the process without the clean-up of [`clean_up_on_signals`]:
/// * SIGXFSZ (a write past `ulimit -f`) is ignored, so the write fails with `EFBIG` and the
///   error is reported like any other (one line naming the output, exit 3, the temporary file
///   removed) instead of the process dying with its temporary file and lock left behind;
/// * SIGABRT (Rust aborts on a stack overflow; or one sent by `kill -ABRT`; a failed
///   allocation is reported by `ALLOC` before Rust could abort) removes the temporary files,
///   lock files and created folders, then the process dies by SIGABRT (`SA_RESETHAND`: the
///   default action again).
fn clean_up_on_abort() {
    extern "C" fn on_abort(_: libc::c_int) {
        lorakit::io::writer::cleanup_on_abort();
        // A SIGABRT sent by another process (not `abort`) must end the run too: pending until
        // this handler returns, then taken with the default action.
        // SAFETY: raise is async-signal-safe.
        unsafe { libc::raise(libc::SIGABRT) };
    }
    // SAFETY: plain libc calls on a local, zero-initialised sigaction; the handler only calls
    // async-signal-safe functions (see `cleanup_on_abort`).
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_abort as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_RESETHAND;
        libc::sigaction(libc::SIGABRT, &sa, std::ptr::null_mut());
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction =
            on_bus as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        // Not SA_RESETHAND: threads reading other pages of the file fault at the same time,
        // and a reset would let the second kill the process before the first reports.
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

/// SIGBUS: a read of a memory-mapped input past its end, after another process truncated it
/// (README: inputs must not change while lorakit runs). Where the address lies in an input's
/// map, the temporary files are removed and the run ends like a bad input: one line naming the
/// file (`io::mapped::report_fault`), exit 2, reported once however many threads fault. Any
/// other SIGBUS takes the default action.
extern "C" fn on_bus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t (SA_SIGINFO); the calls below are
    // async-signal-safe (unlink, rmdir, write, _exit, raise).
    static FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
    unsafe {
        if !FIRST.swap(false, std::sync::atomic::Ordering::SeqCst) {
            // Another thread is reporting and ends the process.
            loop {
                libc::pause();
            }
        }
        let addr = (*info).si_addr() as usize;
        lorakit::io::writer::cleanup_on_abort();
        if lorakit::io::mapped::report_fault(addr) {
            libc::_exit(2);
        }
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
        libc::raise(libc::SIGBUS);
    }
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

/// SIGINT, SIGTERM and SIGHUP remove this run's temporary files, lock files and the folders it
/// created, then end the process by the same signal (so the shell sees 130 for Ctrl-C).
///
/// The signals are blocked in every thread (the mask is set here, before any thread exists,
/// and threads inherit it) and taken by one thread in `sigwait`, where ordinary code may run:
/// the clean-up locks a mutex and removes files, which a signal handler could not do safely.
/// kill -9 cannot be caught: it leaves the old output or nothing, plus temporary files that the
/// next run sweeps.
fn clean_up_on_signals() {
    // SAFETY: plain libc calls on a local, zero-initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        let set_copy = set;
        let spawned = std::thread::Builder::new()
            .name("lorakit-signals".into())
            .spawn(move || {
                let mut sig: libc::c_int = 0;
                if libc::sigwait(&set_copy, &mut sig) == 0 {
                    lorakit::io::writer::cleanup_on_signal();
                    // Die by the signal itself: default action, unblocked, raised here.
                    libc::signal(sig, libc::SIG_DFL);
                    let mut one: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut one);
                    libc::sigaddset(&mut one, sig);
                    libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
                    libc::raise(sig);
                    libc::_exit(128 + sig);
                }
            });
        if spawned.is_err() {
            // No thread to take them: let the signals act as before.
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}
