//! The binary as a process: what it draws on a terminal and not elsewhere, and how much memory
//! a merge really holds (the README's peak-RSS bound, measured on the child by `wait4`).

use super::common::*;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;

/// A pseudo-terminal pair (80 × 24): `(master, slave)`.
fn pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let ws = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds into the out-parameters; name and termios may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Runs `merge` of `base` + `adapter` into `out` with stderr on a pseudo-terminal; returns what
/// the terminal received.
fn merge_on_terminal(base: &Path, adapter: &Path, out: &Path, extra: &[&str]) -> String {
    let (master, slave) = pty();
    let mut child = bin()
        .args(merge_args(base, adapter, out, extra))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    // The parent's copy of the slave went into the Command and is closed once spawned, so the
    // master reads EIO when the child exits. Read while it runs (a full pty buffer would block).
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match f.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf
    });
    assert!(child.wait().unwrap().success());
    String::from_utf8_lossy(&reader.join().unwrap()).into_owned()
}

/// Progress bars are for people: drawn on a terminal, never written into a pipe or a log, and
/// not under `--quiet` or `--json`.
#[test]
fn progress_bars_are_drawn_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let (base, adapter) = big_case(dir.path(), 1024);
    let tty = merge_on_terminal(&base, &adapter, &dir.path().join("a.safetensors"), &[]);
    // The bar's template ("{msg} [{bar}] {bytes}/{total_bytes} … eta {eta}"), redrawn in place.
    assert!(
        tty.contains("merging [") && tty.contains("eta") && tty.contains('\r'),
        "no progress bar on the terminal: {tty:?}"
    );
    for flags in [&["--quiet"][..], &["--json"]] {
        let out = dir
            .path()
            .join(format!("{}.safetensors", flags[0].trim_start_matches('-')));
        let tty = merge_on_terminal(&base, &adapter, &out, flags);
        assert!(
            !tty.contains("eta") && !tty.contains('\x1b'),
            "{flags:?}: a bar was drawn: {tty:?}"
        );
    }
    // Into a pipe: the summary only, no bar, no terminal control.
    let out = bin()
        .args(merge_args(
            &base,
            &adapter,
            &dir.path().join("p.safetensors"),
            &[],
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("eta") && !err.contains('\r') && !err.contains('\x1b'),
        "progress written into a pipe: {err:?}"
    );
}

/// README: a merge's peak resident memory is at most 3 × the largest tensor + 64 MB, whatever
/// the checkpoint's size. 24 f32 tensors of 8 MiB (192 MiB of base, a third of it merged) under a
/// bound of 88 MiB: a merge that held the base, or every merged tensor, would exceed it.
///
/// The figure is the merge process's `ru_maxrss` from `wait4`. It cannot be taken from a child
/// of this test process: std spawns with vfork, and Linux records the parent's memory
/// high-water mark into the child's at exec, so the child would show this process's peak
/// (the test's own buffers, other tests' memory). So the test re-runs itself as a small probe
/// process (`LORAKIT_RSS_PROBE`), which spawns the merge and prints its `ru_maxrss`; the probe's
/// own few MB can only raise the figure.
#[test]
fn merge_peak_rss_stays_within_the_documented_bound() {
    use safetensors::{tensor::TensorView, Dtype};
    if rss_probe() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (n, d, k, r) = (24usize, 2048usize, 1024usize, 16usize);
    let bytes = |len: usize, seed: usize| -> Vec<u8> {
        (0..len)
            .flat_map(|i| ((((i * 7 + seed) % 13) as f32) * 0.01).to_le_bytes())
            .collect()
    };
    let data: Vec<Vec<u8>> = (0..n).map(|t| bytes(d * k, t)).collect();
    let names: Vec<String> = (0..n).map(|t| format!("layers.{t}.proj.weight")).collect();
    let base = dir.path().join("base.safetensors");
    safetensors::serialize_to_file(
        names.iter().zip(&data).map(|(n, b)| {
            (
                n.as_str(),
                TensorView::new(Dtype::F32, vec![d, k], b).unwrap(),
            )
        }),
        None,
        &base,
    )
    .unwrap();
    drop(data);
    // Every third tensor is merged: layers 0, 3, 6, … (8 of 24).
    let merged: Vec<usize> = (0..n).step_by(3).collect();
    let ad = dir.path().join("adapter");
    let (a, b) = (bytes(r * k, 1), bytes(d * r, 2));
    let modules: Vec<String> = merged.iter().map(|t| format!("layers.{t}.proj")).collect();
    write_peft_adapter(
        &ad,
        r#"{"peft_type":"LORA","r":16,"lora_alpha":16,"target_modules":["proj"]}"#,
        &shared_lora_tensors(&modules, (&[r, k], &a), (&[d, r], &b)),
    );
    let out = dir.path().join("out.safetensors");
    let kib = peak_rss_kib(
        "it::process::merge_peak_rss_stays_within_the_documented_bound",
        &merge_args(&base, &ad, &out, &["--device", "cpu", "--quiet"]),
    );
    let largest = (d * k * 4) as u64;
    let bound = 3 * largest + (64 << 20);
    let peak = kib * 1024; // ru_maxrss is in KiB on Linux
    assert!(
        peak <= bound,
        "merge peak RSS {} MiB > 3 × largest tensor + 64 MiB = {} MiB",
        peak >> 20,
        bound >> 20
    );
    assert!(bound < std::fs::metadata(&base).unwrap().len());
    // It did merge: the output holds every tensor, the merged ones changed.
    let t = read(&out);
    assert_eq!(t.len(), n);
    let b0 = read(&base);
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            t[name].data == b0[name].data,
            !merged.contains(&i),
            "{name}"
        );
    }
}

/// In a probe run (see [`peak_rss_kib`]): runs lorakit with the probe's arguments, prints its
/// peak RSS and returns true, so the calling test returns at once.
pub(super) fn rss_probe() -> bool {
    let Some(args) = std::env::var_os("LORAKIT_RSS_PROBE") else {
        return false;
    };
    let args: Vec<String> = args
        .to_str()
        .unwrap()
        .split('\u{1f}')
        .map(str::to_owned)
        .collect();
    #[allow(clippy::zombie_processes)] // reaped by the wait4 below, which also gives its rusage
    let child = bin()
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 fills it for this child only.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert_eq!(
        pid,
        child.id() as i32,
        "{}",
        std::io::Error::last_os_error()
    );
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    println!("maxrss_kib={}", ru.ru_maxrss);
    true
}

/// Peak RSS (KiB) of `lorakit ARGS`, measured by a probe: the test binary re-runs `test` alone
/// with LORAKIT_RSS_PROBE set, and that small process spawns lorakit and reads its `ru_maxrss`
/// with wait4. (A direct child of this test process would report the test's own high-water mark:
/// std spawns with vfork, and Linux copies the parent's hiwater into the child at exec.)
fn peak_rss_kib(test: &str, args: &[String]) -> u64 {
    peak_rss_kib_env(test, args, &[])
}

/// [`peak_rss_kib`] with `env` set for lorakit (through the probe, which passes it on).
pub(super) fn peak_rss_kib_env(test: &str, args: &[String], env: &[(&str, &str)]) -> u64 {
    let probe = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("LORAKIT_RSS_PROBE", args.join("\u{1f}"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success(),
        "probe: {stdout} {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    // The harness prints "test … ... " before the probe's line.
    stdout
        .split("maxrss_kib=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_else(|| panic!("probe printed no figure: {stdout}"))
        .parse()
        .unwrap()
}

/// A 4096×4096 LoKr (two whole 64×64 halves) lowered to rank-16 LoRA never forms ΔW: the
/// process peaks below half of ΔW's 64 MiB in f32, and the result is the optimum (the Kronecker
/// SVD: its singular values are the products of the halves', checked here in f64).
#[test]
fn lowering_a_large_lokr_never_forms_the_full_matrix() {
    use safetensors::Dtype;
    if rss_probe() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let n = 64usize;
    let mut rng = lorakit::linalg::rng::Xoshiro256PlusPlus::seed_from_u64(0x9e37_79b9);
    let mut next = || (rng.next_f64() - 0.5) as f32;
    let w1: Vec<f32> = (0..n * n).map(|_| next()).collect();
    let w2: Vec<f32> = (0..n * n).map(|_| next()).collect();
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (b1, b2) = (bytes(&w1), bytes(&w2));
    let src = dir.path().join("big_lokr.safetensors");
    write_views(
        &src,
        &[
            ("lycoris_big.lokr_w1", Dtype::F32, &[n, n], &b1),
            ("lycoris_big.lokr_w2", Dtype::F32, &[n, n], &b2),
        ],
    );
    let out = dir.path().join("r16.safetensors");
    let args = resize_args(&src, &out, &["--rank", "16", "--quiet"]);
    let kib = peak_rss_kib(
        "it::process::lowering_a_large_lokr_never_forms_the_full_matrix",
        &args,
    );
    let full = (n * n * n * n * 4) as u64;
    assert!(
        kib * 1024 < full / 2,
        "peak RSS {} MiB, ΔW alone is {} MiB",
        kib >> 10,
        full >> 20
    );
    // The optimum: ‖ΔW‖² − Σ of the 16 largest σ₁ᵢ²σ₂ⱼ² from f64 SVDs of the halves, against
    // ‖ΔW − B·A‖² computed blockwise from the written factors (f64, no d×k buffer either).
    let t = read(&out);
    let (up, down) = (
        t["lycoris_big.lora_up.weight"].f32(),
        t["lycoris_big.lora_down.weight"].f32(),
    );
    let r = 16;
    assert_eq!(up.len(), n * n * r);
    let w64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let (_, s1, _) = super::reference::jacobi_svd(&w64(&w1), n, n);
    let (_, s2, _) = super::reference::jacobi_svd(&w64(&w2), n, n);
    let mut prods: Vec<f64> = s1
        .iter()
        .flat_map(|a| s2.iter().map(move |b| a * b))
        .collect();
    prods.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = prods.iter().map(|x| x * x).sum();
    let optimal = (total - prods[..r].iter().map(|x| x * x).sum::<f64>()).sqrt();
    let mut err2 = 0f64;
    for row in 0..n * n {
        let (i1, i2) = (row / n, row % n);
        for col in 0..n * n {
            let (j1, j2) = (col / n, col % n);
            let exact = w1[i1 * n + j1] as f64 * w2[i2 * n + j2] as f64;
            let approx: f64 = (0..r)
                .map(|t| up[row * r + t] as f64 * down[t * n * n + col] as f64)
                .sum();
            err2 += (exact - approx).powi(2);
        }
    }
    let err = err2.sqrt();
    assert!(
        err <= 1.001 * optimal,
        "error {err:e} vs the rank-16 optimum {optimal:e}"
    );
}
