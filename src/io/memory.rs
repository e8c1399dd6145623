//! A failed allocation as one error line naming the input being read: the binary's global
//! allocator ([`ReportingAlloc`], `System` underneath) reports a null from the system allocator
//! (an address-space or memory limit, `ulimit -v`) as `error: PATH: tensor `NAME`: out of
//! memory …`, removes what the run had begun writing (the clean-up the binary sets with
//! [`set_cleanup`]: `io::writer::cleanup_on_abort`) and exits
//! 2, instead of Rust's `memory allocation of N bytes failed` (which names nothing) and an abort.
//!
//! The "input being read" is a context the readers set: [`note_file`] when an input is opened
//! (`io::file::open_regular`, every input goes through it), [`note_tensor`] when a tensor's
//! bytes are borrowed (`SafetensorsFile::view_info`, `GgufFile::view`). It is kept per thread
//! (the thread that fails names what *it* was reading) and once for the process (for a worker
//! thread that read nothing itself: the latest input any thread noted).
//!
//! Allocations the code makes fallible on purpose (`try_reserve`, to turn a size no memory can
//! hold into an error naming the file) run inside [`fallible`]: there a null is returned to the
//! caller as before.
//!
//! Must not: cost anything on a successful allocation (the wrapper only looks at the result;
//! the context is written per opened file and per tensor view, never per allocation); allocate,
//! lock or free on the failure path (it runs where the allocator itself failed): it reads
//! fixed-size buffers and calls `write`, `unlink`, `rmdir` and `_exit` only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};

/// The longest path and tensor name kept (longer ones are cut, marked with `…`).
const PATH_MAX: usize = 1024;
const NAME_MAX: usize = 256;

/// What a thread (or the process) was reading: a path and a tensor name, as bytes.
struct Context {
    path: [u8; PATH_MAX],
    path_len: usize,
    path_cut: bool,
    name: [u8; NAME_MAX],
    name_len: usize,
    name_cut: bool,
}

impl Context {
    const EMPTY: Context = Context {
        path: [0; PATH_MAX],
        path_len: 0,
        path_cut: false,
        name: [0; NAME_MAX],
        name_len: 0,
        name_cut: false,
    };

    fn set_path(&mut self, p: &[u8]) {
        let n = p.len().min(PATH_MAX);
        self.path[..n].copy_from_slice(&p[..n]);
        self.path_len = n;
        self.path_cut = n < p.len();
        self.name_len = 0;
        self.name_cut = false;
    }

    fn set_name(&mut self, t: &[u8]) {
        let n = t.len().min(NAME_MAX);
        self.name[..n].copy_from_slice(&t[..n]);
        self.name_len = n;
        self.name_cut = n < t.len();
    }
}

thread_local! {
    /// This thread's context (const-initialised, no destructor: reading it never allocates).
    static THREAD: RefCell<Context> = const { RefCell::new(Context::EMPTY) };
    /// Depth of [`fallible`] sections on this thread.
    static FALLIBLE: Cell<u32> = const { Cell::new(0) };
}

/// The process's latest context, written under [`GLOBAL_BUSY`] (taken with one
/// compare-exchange; a writer that finds it taken skips the update, a reporter that finds it
/// taken names no file rather than read a half-written one).
struct Global(std::cell::UnsafeCell<Context>);
// SAFETY: every access holds GLOBAL_BUSY (see `with_global`).
unsafe impl Sync for Global {}
static GLOBAL: Global = Global(std::cell::UnsafeCell::new(Context::EMPTY));
static GLOBAL_BUSY: AtomicBool = AtomicBool::new(false);

fn with_global<R>(f: impl FnOnce(&mut Context) -> R) -> Option<R> {
    if GLOBAL_BUSY
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return None;
    }
    // SAFETY: GLOBAL_BUSY is held, so no other reference to the context exists.
    let r = f(unsafe { &mut *GLOBAL.0.get() });
    GLOBAL_BUSY.store(false, Ordering::Release);
    Some(r)
}

/// Notes that this thread now reads `path` (no tensor yet).
pub fn note_file(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let p = path.as_os_str().as_bytes();
    let _ = THREAD.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.set_path(p);
        }
    });
    with_global(|g| g.set_path(p));
}

/// Notes that this thread now reads tensor `name` of `path`.
pub fn note_tensor(path: &std::path::Path, name: &str) {
    use std::os::unix::ffi::OsStrExt;
    let p = path.as_os_str().as_bytes();
    let _ = THREAD.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.set_path(p);
            c.set_name(name.as_bytes());
        }
    });
    with_global(|g| {
        g.set_path(p);
        g.set_name(name.as_bytes());
    });
}

/// Runs `f` with failed allocations returned to their caller (a null from the allocator, an
/// `Err` from `try_reserve`) instead of reported: for the allocations the code checks itself.
pub fn fallible<T>(f: impl FnOnce() -> T) -> T {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            let _ = FALLIBLE.try_with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
    let _ = FALLIBLE.try_with(|d| d.set(d.get() + 1));
    let _depth = Depth;
    f()
}

/// The binary's global allocator: `System`, and a failed allocation outside [`fallible`]
/// reported as one line naming the input being read, then the run's temporary files removed
/// and exit 2.
pub struct ReportingAlloc;

// SAFETY: every call is forwarded to `System` unchanged; only a null result is looked at.
unsafe impl GlobalAlloc for ReportingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if p.is_null() {
            failed(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            failed(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            failed(new_size);
        }
        p
    }
}

/// A null from the system allocator: returns (the caller gets the null) inside [`fallible`],
/// otherwise reports and ends the process.
#[cold]
#[inline(never)]
fn failed(size: usize) {
    if FALLIBLE.try_with(|d| d.get() > 0).unwrap_or(false) {
        return;
    }
    out_of_memory(size)
}

/// What [`out_of_memory`] runs after its line, before `_exit(2)`: the binary sets the writer's
/// `io::writer::cleanup_on_abort` (a hook, so that this leaf module, which the writer uses,
/// does not import it). Null: nothing.
static CLEANUP: std::sync::atomic::AtomicPtr<()> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Sets the clean-up a failed allocation runs before the process exits (see [`CLEANUP`]); it
/// must be async-signal-safe in spirit: no allocation, no blocking lock.
pub fn set_cleanup(f: fn()) {
    CLEANUP.store(f as *mut (), Ordering::SeqCst);
}

/// Reports a failed allocation of `size` bytes as the allocator does and ends the process
/// (exit 2): for a fallible allocation that failed where the caller cannot go on, e.g. while
/// it held a lock the clean-up needs (`io::writer`'s registry of temporary files).
#[cold]
pub fn out_of_memory(size: usize) -> ! {
    static FIRST: AtomicBool = AtomicBool::new(true);
    if !FIRST.swap(false, Ordering::SeqCst) {
        // Another thread is reporting and ends the process.
        loop {
            // SAFETY: pause(2) is async-signal-safe and allocates nothing.
            unsafe { libc::pause() };
        }
    }
    let mut line = Line::new();
    line.push(b"error: ");
    let named = THREAD
        .try_with(|c| match c.try_borrow() {
            Ok(c) if c.path_len > 0 => {
                line.context(&c);
                true
            }
            _ => false,
        })
        .unwrap_or(false);
    if !named {
        with_global(|g| {
            if g.path_len > 0 {
                line.context(g);
            }
        });
    }
    line.push(b"out of memory: an allocation of ");
    line.number(size);
    line.push(
        b" bytes failed (the process's memory or address-space limit, e.g. ulimit -v); \
          nothing was written\n",
    );
    line.write_stderr();
    let cleanup = CLEANUP.load(Ordering::SeqCst);
    if !cleanup.is_null() {
        // SAFETY: the only non-null value is the `fn()` stored by `set_cleanup`.
        let f: fn() = unsafe { std::mem::transmute::<*mut (), fn()>(cleanup) };
        f();
    }
    // SAFETY: _exit(2) is async-signal-safe; nothing is flushed or destroyed.
    unsafe { libc::_exit(2) }
}

/// The error line, built in a fixed buffer (no allocation).
struct Line {
    buf: [u8; PATH_MAX + NAME_MAX + 256],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; PATH_MAX + NAME_MAX + 256],
            len: 0,
        }
    }

    fn push(&mut self, b: &[u8]) {
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }

    /// `PATH: tensor `NAME`: ` (newlines in either shown as spaces: one line).
    fn context(&mut self, c: &Context) {
        self.push_clean(&c.path[..c.path_len]);
        if c.path_cut {
            self.push("…".as_bytes());
        }
        self.push(b": ");
        if c.name_len > 0 {
            self.push(b"tensor `");
            self.push_clean(&c.name[..c.name_len]);
            if c.name_cut {
                self.push("…".as_bytes());
            }
            self.push(b"`: ");
        }
    }

    fn push_clean(&mut self, b: &[u8]) {
        for &x in b {
            self.push(&[if x == b'\n' || x == b'\r' || x == 0 {
                b' '
            } else {
                x
            }]);
        }
    }

    fn number(&mut self, mut n: usize) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn write_stderr(&self) {
        let mut rest = &self.buf[..self.len];
        while !rest.is_empty() {
            // SAFETY: write(2) on stderr from a valid slice; async-signal-safe.
            let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                break;
            }
            rest = &rest[n as usize..];
        }
    }
}

/// The bytes this process can use at most: the machine's memory plus swap, or a cgroup v2/v1
/// limit below it. `None` where none of them can be read. (Not what is free now: page cache,
/// the maps of the inputs included, is reclaimable and counted as used.)
pub fn memory_limit() -> Option<u128> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let kb = |key: &str| {
            t.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<u128>().ok())
        };
        Some((kb("MemTotal:")? + kb("SwapTotal:").unwrap_or(0)) * 1024)
    });
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u128>().ok())
    .min();
    match (meminfo, cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    }
}

/// Refuses, naming `path` and `what`, a buffer of `bytes` larger than [`memory_limit`]: no run
/// could hold it (a small adapter file whose factors describe a huge dense ΔW), and with the
/// kernel's overcommit the allocation would succeed and the process be killed later, silently.
pub fn check_fits(
    path: &std::path::Path,
    what: impl FnOnce() -> String,
    bytes: u128,
) -> crate::error::InputResult<()> {
    match memory_limit() {
        Some(free) if bytes > free => Err(crate::error::InputError::invalid(
            path,
            format!(
                "{} needs {:.1} GiB, more than this machine's {:.1} GiB of memory and swap",
                what(),
                bytes as f64 / (1u64 << 30) as f64,
                free as f64 / (1u64 << 30) as f64
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_path_and_tensor_and_the_size() {
        let mut c = Context::EMPTY;
        c.set_path(b"dir/model.safetensors");
        c.set_name(b"w\nq");
        let mut l = Line::new();
        l.context(&c);
        l.number(0);
        l.push(b" ");
        l.number(18446744073709551615);
        assert_eq!(
            &l.buf[..l.len],
            b"dir/model.safetensors: tensor `w q`: 0 18446744073709551615"
        );
    }

    #[test]
    fn a_long_name_is_cut_and_marked() {
        let mut c = Context::EMPTY;
        c.set_path(b"p");
        c.set_name(&[b'x'; NAME_MAX + 5]);
        assert!(c.name_cut);
        assert_eq!(c.name_len, NAME_MAX);
    }

    #[test]
    fn fallible_sections_nest_and_end() {
        let depth = || FALLIBLE.with(|d| d.get());
        assert_eq!(depth(), 0);
        fallible(|| {
            assert_eq!(depth(), 1);
            fallible(|| assert_eq!(depth(), 2));
            assert_eq!(depth(), 1);
        });
        assert_eq!(depth(), 0);
    }
}
