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
//! and median of each and their ratio.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn min_median(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2])
}

fn main() {
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
    let (mut copies, mut merges) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        std::fs::copy(&base, &copy).unwrap();
        std::fs::File::open(&copy).unwrap().sync_all().unwrap();
        copies.push(t.elapsed().as_secs_f64());
        std::fs::remove_file(&copy).unwrap();

        let t = Instant::now();
        let st = Command::new(env!("CARGO_BIN_EXE_lorakit"))
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
        merges.push(t.elapsed().as_secs_f64());
        std::fs::remove_file(&out).unwrap();
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
}
