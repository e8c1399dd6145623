//! Merging into a quantized GGUF model against the durable-copy floor (issue #17). Not a timed
//! test: run with `cargo bench --bench gguf` and read the figures.
//!
//! Needs the synthetic 7B-shaped Q4_K_M model and rank-16 q/v adapter of
//! `fixtures/gen/gguf_bench_7b.py` (≈ 3.8 GiB) in `$LORAKIT_GGUF_BENCH_DIR` (default
//! `/tmp/gguf_bench_7b`); the output (another ≈ 3.8 GiB) goes next to it and is deleted after.
//! Runs, `LORAKIT_BENCH_RUNS` times (default 1) and interleaved, the durable copy of the base
//! (`std::fs::copy`, which is `copy_file_range` on Linux, then fsync) and
//! `lorakit merge --base base-Q4_K_M.gguf --adapter adapter_r16 --out merged.gguf` (types kept:
//! every merged tensor requantized with ggml's reference Q4_K/Q6_K quantizer), and prints min
//! and median of each and their ratio; `LORAKIT_BENCH_BUFFERED=1` adds the same merge with the
//! writer's direct I/O off (`LORAKIT_DIRECT_IO=0`) to each run, an A/B in one session.
//!
//! `LORAKIT_GGUF_BENCH=quantizers` instead times the quantizers themselves on a synthetic input
//! (`LORAKIT_BENCH_VALUES` values, default 2²², of seeded Gaussian noise of weight-like scale
//! 0.02): per K type, the values per second of the scalar transcription of ggml
//! (`quant::quantize_reference`) and of the lane-parallel quantizer (`quant::quantize_into`,
//! at each CPU level this machine has) on one thread (per second of that thread's CPU time, so
//! that a loaded machine's preemptions do not count), and of `quant::quantize_par` on all cores
//! (wall time; best of `LORAKIT_BENCH_RUNS`, default 3), after checking that all give the same bytes;
//! `LORAKIT_BENCH_TYPES=Q4_K,Q6_K` limits it to those types.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

#[path = "support/mod.rs"]
mod support;
use support::remove_settled;

fn min_median(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2])
}

/// Seeded Gaussian noise (xorshift64*, sum of four uniforms), standard deviation `0.02`.
fn noise(n: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut u = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f64 / (1u64 << 24) as f64
    };
    (0..n)
        .map(|_| ((u() + u() + u() + u() - 2.0) * 3f64.sqrt() * 0.02) as f32)
        .collect()
}

/// Seconds of CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a live local the call writes.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn quantizers(runs: usize) {
    use lorakit::backend::simd::{detected, with_level, Level};
    use lorakit::io::gguf::{quant, GgmlType};
    let n: usize = std::env::var("LORAKIT_BENCH_VALUES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize << 22)
        .div_ceil(256)
        * 256;
    let x = noise(n);
    let levels: Vec<Level> = [Level::Baseline, Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|&l| l <= detected())
        .collect();
    println!(
        "{n} values, {} rayon threads, best of {runs}; Mvalues/s of one thread's CPU time, wall time for all cores",
        rayon::current_num_threads()
    );
    // One thread: timed in this thread's CPU time, so that other processes taking the cores
    // (a loaded machine) do not count; all cores: wall time.
    let best = |f: &mut dyn FnMut() -> Vec<u8>, cpu: bool| {
        let (mut t_min, mut bytes) = (f64::INFINITY, Vec::new());
        for _ in 0..runs {
            let (t, c) = (Instant::now(), thread_cpu());
            bytes = f();
            let s = match cpu {
                true => thread_cpu() - c,
                false => t.elapsed().as_secs_f64(),
            };
            t_min = t_min.min(s);
        }
        (n as f64 / t_min / 1e6, bytes)
    };
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q3_K,
        GgmlType::Q2_K,
    ]
    .into_iter()
    .filter(|t| {
        std::env::var("LORAKIT_BENCH_TYPES").map_or(true, |v| v.split(',').any(|n| n == t.name()))
    }) {
        let (slow, want) = best(
            &mut || {
                let mut v = Vec::new();
                assert!(quant::quantize_reference(ty, &x, &mut v));
                v
            },
            true,
        );
        let mut line = format!("{:5}  scalar reference {slow:7.2}", ty.name());
        for &level in &levels {
            let (fast, got) = best(
                &mut || {
                    with_level(level, || {
                        let mut v = Vec::new();
                        assert!(quant::quantize_into(ty, &x, &mut v));
                        v
                    })
                },
                true,
            );
            assert!(
                got == want,
                "{ty}: lanes at {level:?} and scalar bytes differ"
            );
            line += &format!("  lanes {level:?} {fast:7.2} ({:.2}×)", fast / slow);
        }
        let (par, got) = best(&mut || quant::quantize_par(ty, &x).unwrap(), false);
        assert!(got == want, "{ty}: parallel and scalar bytes differ");
        println!("{line}  lanes, all cores {par:7.2}");
    }
}

fn main() {
    let runs_env = std::env::var("LORAKIT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if std::env::var("LORAKIT_GGUF_BENCH").as_deref() == Ok("quantizers") {
        quantizers(runs_env.unwrap_or(3).max(1));
        return;
    }
    let dir = std::env::var_os("LORAKIT_GGUF_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/gguf_bench_7b"));
    let runs: usize = std::env::var("LORAKIT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let (base, adapter) = (dir.join("base-Q4_K_M.gguf"), dir.join("adapter_r16"));
    if !base.exists() || !adapter.exists() {
        eprintln!(
            "{} is missing: run `python fixtures/gen/gguf_bench_7b.py {}` first",
            base.display(),
            dir.display()
        );
        return;
    }
    let len = std::fs::metadata(&base).unwrap().len();
    let (copy, out) = (dir.join("copy.gguf"), dir.join("merged.gguf"));
    let (mut copies, mut merges, mut buffered) = (Vec::new(), Vec::new(), Vec::new());
    let buffered_too = std::env::var("LORAKIT_BENCH_BUFFERED").is_ok_and(|v| v == "1");
    let merge = |direct: bool| {
        let t = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lorakit"));
        if !direct {
            cmd.env("LORAKIT_DIRECT_IO", "0");
        }
        let st = cmd
            .args(["merge", "--base"])
            .arg(&base)
            .arg("--adapter")
            .arg(&adapter)
            .arg("--out")
            .arg(&out)
            .arg("--quiet")
            .status()
            .unwrap();
        assert!(st.success());
        let s = t.elapsed().as_secs_f64();
        remove_settled(&out);
        s
    };
    for _ in 0..runs {
        let t = Instant::now();
        std::fs::copy(&base, &copy).unwrap();
        std::fs::File::open(&copy).unwrap().sync_all().unwrap();
        copies.push(t.elapsed().as_secs_f64());
        remove_settled(&copy);

        merges.push(merge(true));
        if buffered_too {
            buffered.push(merge(false));
        }
    }
    let ((cmin, cmed), (mmin, mmed)) = (min_median(&copies), min_median(&merges));
    let gib = len as f64 / (1u64 << 30) as f64;
    println!("base {gib:.2} GiB, {runs} run(s)");
    println!("durable copy  min {cmin:.2} s  median {cmed:.2} s");
    println!("merge (keep)  min {mmin:.2} s  median {mmed:.2} s");
    println!(
        "merge / copy  {:.2}× (min)  {:.2}× (median)",
        mmin / cmin,
        mmed / cmed
    );
    if !buffered.is_empty() {
        let (bmin, bmed) = min_median(&buffered);
        println!(
            "merge, buffered I/O (LORAKIT_DIRECT_IO=0)  min {bmin:.2} s  median {bmed:.2} s; / copy {:.2}× (min)  {:.2}× (median)",
            bmin / cmin,
            bmed / cmed
        );
    }
}
