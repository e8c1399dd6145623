//! GPU figures, one step per run, for `scripts/gpu-bench.sh` (which carries this binary, built
//! beforehand, to a machine with a GPU and runs each step under a timeout). Not a timed test.
//!
//! Usage: `gpu [STEP [ARGS]]`; each step prints progress on stderr and one JSON object on the
//! last line of stdout. Sizes are exact as given; the script passes small ones for a dry run.
//!
//! * `info`: the adapter (name, backend, device type, vendor id), limits, timestamp support.
//! * `copy MIB`: the copy kernel over MIB MiB: the device's achievable memory bandwidth.
//! * `transfer MIB`: host→device and device→host rates of MIB MiB.
//! * `merge-kernel ROWS COLS RANK`: the merge kernel alone (bf16, device-resident buffers),
//!   GB/s moved and the fraction of the copy kernel's bandwidth when `COPY_GBS` is set.
//! * `e2e ROWS COLS RANK`: the streamed GPU merge of a ROWS×COLS bf16 tensor from host memory to
//!   a sink, beside the CPU merge of the same job; byte-identical check, seconds, and the peak
//!   resident memory each adds (`VmHWM`, reset through `/proc/self/clear_refs`).
//! * `cli-merge ROWS COLS RANK LORAKIT`: the `merge` command itself (binary LORAKIT) on a
//!   ROWS×COLS bf16 base file with a rank-RANK PEFT adapter, written to `$TMPDIR`: `--device
//!   gpu` (mmap → upload ring → device → readback → writer, streamed) and `--device cpu`,
//!   seconds and peak RSS (`ru_maxrss` from `wait4`) of each, and whether the two output files
//!   are byte-identical. The temporary files are removed.
//! * `dora ROWS COLS RANK`: a DoRA merge (per-row norms summed on the device, then the merge)
//!   of a ROWS×COLS bf16 tensor, GPU and CPU, best of 2 each, and whether the bytes are equal.
//! * `forward N D RANK`: the low-rank forward (`Y = X·W0ᵀ + s·(X·Aᵀ)·Bᵀ`) of N rows on a D×D
//!   bf16 weight, GPU (incl. upload and readback) and CPU.
//! * `gemm-kernel N D RANK`: the forward's dense kernel alone (the tiled GEMM, `X·W0ᵀ + T·Bᵀ`
//!   on device-resident buffers, D×D bf16 W0), GFLOP/s from timestamp queries where available.
//! * `sketch D L`: `(W − W0)·Ω` and `(W − W0)ᵀ·Q` with L columns on D×D bf16 pairs, GPU and
//!   CPU.
//!
//! Without a step (`cargo bench --bench gpu`): `info`, `copy 64`, `transfer 64`,
//! `merge-kernel 2048 2048 16`, `e2e 2048 2048 16`, `forward 128 2048 16`, `sketch 2048 16`.
//! On a software adapter (lavapipe) every GPU figure is a CPU figure in disguise.

use lorakit::backend::cpu_forward::{self, DeltaPair, ForwardAdapter, StoredMatrix};
use lorakit::backend::gpu::{self, bench, GpuContext};
use lorakit::backend::{cpu, Dora, MergeJob, NormAxis, Term};
use lorakit::dtype::{self, Dtype};
use lorakit::model::linear::{Exec, Linear, Lora, Matrix, MatrixData};
use serde_json::{json, Value};
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn best_of<T>(n: usize, mut f: impl FnMut() -> Res<T>) -> Res<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..n {
        let t = Instant::now();
        std::hint::black_box(f()?);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Ordinary values in ±0.05 from a fixed xorshift.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

fn bf16(n: usize, seed: u64) -> Vec<u8> {
    // In pieces, so a multi-GiB base never exists as f32.
    let mut out = Vec::with_capacity(n * 2);
    let piece = 1 << 22;
    let mut done = 0;
    while done < n {
        let m = piece.min(n - done);
        out.extend_from_slice(&dtype::encode(Dtype::BF16, &values(m, seed ^ done as u64)));
        done += m;
    }
    out
}

/// (current, peak) resident set in bytes, from /proc/self/status (Linux); zeros elsewhere.
fn rss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak resident set to the current one (Linux ≥ 4.0); false where it cannot.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn arg(args: &[String], i: usize, what: &str) -> Res<usize> {
    args.get(i)
        .ok_or_else(|| format!("missing {what}"))?
        .parse()
        .map_err(|e| format!("{what}: {e}").into())
}

/// The default adapter; `LORAKIT_GPU_CHUNK_BYTES` sets the merge chunk, as it does for the
/// CLI (the dry run streams a small tensor in several 1 MiB tiles with it).
fn ctx() -> Res<GpuContext> {
    let chunk_bytes = std::env::var("LORAKIT_GPU_CHUNK_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    Ok(GpuContext::with_options(&gpu::GpuOptions {
        chunk_bytes,
        ..gpu::GpuOptions::default()
    })?)
}

fn info() -> Res<Value> {
    let c = ctx()?;
    c.compile_all()?;
    let i = c.describe();
    eprintln!(
        "adapter {} ({}, {})",
        i.adapter.name, i.adapter.backend, i.adapter.device_type
    );
    Ok(json!({
        "adapter": i,
        "timestamps": bench::has_timestamps(&c),
        "adapters": gpu::list_adapters(),
    }))
}

fn copy(mib: usize) -> Res<Value> {
    let c = ctx()?;
    let bytes = (mib as u64) << 20;
    let t = bench::copy_kernel(&c, bytes, 10)?;
    let secs = t.device_s.unwrap_or(t.wall_s);
    let gbs = 2.0 * bytes as f64 / secs / 1e9;
    eprintln!("copy kernel {mib} MiB: {:.3} ms, {gbs:.1} GB/s", secs * 1e3);
    Ok(json!({"bytes": bytes, "timing": t, "gb_per_s": gbs,
              "timed_by": if t.device_s.is_some() { "timestamps" } else { "wall clock" }}))
}

fn transfer(mib: usize) -> Res<Value> {
    let c = ctx()?;
    let bytes = (mib as u64) << 20;
    let (up, down) = bench::transfer(&c, bytes, 5)?;
    let (u, d) = (bytes as f64 / up / 1e9, bytes as f64 / down / 1e9);
    eprintln!("transfer {mib} MiB: up {u:.2} GB/s, down {d:.2} GB/s");
    Ok(json!({"bytes": bytes, "up_s": up, "down_s": down, "up_gb_per_s": u, "down_gb_per_s": d}))
}

fn merge_kernel(rows: usize, cols: usize, rank: usize) -> Res<Value> {
    let c = ctx()?;
    let t = bench::merge_kernel(&c, rows, cols, rank, 10)?;
    let secs = t.device_s.unwrap_or(t.wall_s);
    let moved = 2.0 * (rows * cols * 2) as f64;
    let gbs = moved / secs / 1e9;
    let of_copy = std::env::var("COPY_GBS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .map(|v| gbs / v);
    eprintln!(
        "merge kernel {rows}×{cols} r{rank}: {:.3} ms, {gbs:.1} GB/s{}",
        secs * 1e3,
        of_copy.map_or(String::new(), |f| format!(", {:.0} % of copy", f * 100.0))
    );
    Ok(
        json!({"rows": rows, "cols": cols, "rank": rank, "timing": t, "gb_per_s": gbs,
              "fraction_of_copy": of_copy,
              "timed_by": if t.device_s.is_some() { "timestamps" } else { "wall clock" }}),
    )
}

fn gemm_kernel(n: usize, d: usize, rank: usize) -> Res<Value> {
    let c = ctx()?;
    let t = bench::gemm_kernel(&c, n, d, d, rank, 10)?;
    let secs = t.device_s.unwrap_or(t.wall_s);
    let gflops = 2.0 * n as f64 * d as f64 * (d + rank) as f64 / secs / 1e9;
    eprintln!(
        "gemm kernel n={n} {d}² r{rank}: {:.3} ms, {gflops:.0} GFLOP/s",
        secs * 1e3
    );
    Ok(
        json!({"n": n, "d": d, "rank": rank, "timing": t, "gflop_per_s": gflops,
              "timed_by": if t.device_s.is_some() { "timestamps" } else { "wall clock" }}),
    )
}

fn e2e(rows: usize, cols: usize, rank: usize) -> Res<Value> {
    let c = ctx()?;
    let w0 = bf16(rows * cols, 7);
    let a = values(rank * cols, 11);
    let b = values(rows * rank, 13);
    let terms = [Term {
        b: &b,
        a: &a,
        rank,
        dense: None,
        scale: 0.5,
        dora: None,
        delta_dtype: None,
    }];
    let job = MergeJob {
        w0: &w0,
        in_dtype: Dtype::BF16,
        rows,
        cols,
        terms: &terms,
        out_dtype: Dtype::BF16,
    };
    let tensor = (rows * cols * 2) as u64;
    // The CPU first: its output is the reference the GPU's pieces are compared with as they
    // arrive (a memcmp, so the GPU's time is its own).
    let peak_ok = reset_peak();
    let (rss_cpu, _) = rss();
    let t = Instant::now();
    let want = cpu::merge(&job)?;
    let cpu_s = t.elapsed().as_secs_f64();
    let (_, cpu_peak) = rss();
    eprintln!("cpu e2e {rows}×{cols} r{rank}: {cpu_s:.3} s");
    // Warm-up on a one-row job compiles the pipeline and sizes nothing large.
    gpu::merge(
        &c,
        &MergeJob {
            rows: 1,
            w0: &w0[..cols * 2],
            terms: &[],
            ..job
        },
    )?;
    reset_peak();
    let (rss_gpu, _) = rss();
    let mut at = 0usize;
    let mut same = true;
    let mut pieces = 0usize;
    let t = Instant::now();
    gpu::merge_into(&c, &job, &mut |piece| {
        same &= want.get(at..at + piece.len()) == Some(piece);
        at += piece.len();
        pieces += 1;
        Ok(())
    })?;
    let gpu_s = t.elapsed().as_secs_f64();
    let (_, gpu_peak) = rss();
    eprintln!(
        "gpu e2e: {gpu_s:.3} s in {pieces} pieces, identical: {}",
        same && at == want.len()
    );
    Ok(
        json!({"rows": rows, "cols": cols, "rank": rank, "tensor_bytes": tensor,
              "chunk_bytes": c.chunk_bytes(), "pieces": pieces,
              "gpu_s": gpu_s, "cpu_s": cpu_s, "identical": same && at == want.len(),
              "gpu_gb_per_s": 2.0 * tensor as f64 / gpu_s / 1e9,
              "cpu_gb_per_s": 2.0 * tensor as f64 / cpu_s / 1e9,
              "gpu_peak_rss_added": peak_ok.then(|| gpu_peak.saturating_sub(rss_gpu)),
              "cpu_peak_rss_added": peak_ok.then(|| cpu_peak.saturating_sub(rss_cpu)),
              "threads": rayon::current_num_threads()}),
    )
}

fn dora(rows: usize, cols: usize, rank: usize) -> Res<Value> {
    let c = ctx()?;
    let (w0, a, b) = (
        bf16(rows * cols, 7),
        values(rank * cols, 11),
        values(rows * rank, 13),
    );
    let mag: Vec<f32> = values(rows, 31).iter().map(|v| 1.0 + v.abs()).collect();
    let terms = [Term::low_rank(&b, &a, rank, 0.5).with_dora(Dora::peft(&mag, NormAxis::Rows))];
    let job = MergeJob::new(&w0, Dtype::BF16, (rows, cols), &terms, Dtype::BF16);
    let identical = gpu::merge(&c, &job)? == cpu::merge(&job)?;
    let g = best_of(2, || Ok(gpu::merge(&c, &job)?))?;
    let cpu = best_of(2, || Ok(cpu::merge(&job)?))?;
    eprintln!("dora {rows}×{cols} r{rank}: gpu {g:.3} s, cpu {cpu:.3} s, identical: {identical}");
    Ok(
        json!({"rows": rows, "cols": cols, "rank": rank, "gpu_s": g, "cpu_s": cpu,
              "identical": identical, "gpu_includes": "base uploaded twice, readback"}),
    )
}

fn forward(n: usize, d: usize, rank: usize) -> Res<Value> {
    let c = ctx()?;
    let w0 = bf16(d * d, 3);
    let a = values(rank * d, 5);
    let b = values(d * rank, 9);
    let x = values(n * d, 17);
    let stored = StoredMatrix {
        bytes: &w0,
        dtype: Dtype::BF16,
        rows: d,
        cols: d,
    };
    let fa = [ForwardAdapter {
        a: &a,
        b: &b,
        rank,
        scale: 0.5,
    }];
    let flops = 2.0 * n as f64 * d as f64 * (d + 2 * rank) as f64;
    let g = best_of(3, || Ok(gpu::lora_forward(&c, &x, n, &stored, &fa)?))?;
    // The CPU side is the forward eval runs: a frozen layer with the adapter unmerged.
    let lin: Linear<f32> = Linear {
        name: "bench".into(),
        w: Matrix::new(
            MatrixData::Stored {
                bytes: &w0,
                dtype: Dtype::BF16,
            },
            d,
            d,
        ),
        bias: None,
        loras: vec![Lora {
            source: "bench".into(),
            a: a.clone(),
            b: b.clone(),
            rank,
            scale: 0.5,
            bias: None,
            trainable: false,
        }],
        base0: None,
    };
    let cpu = best_of(3, || Ok(lin.forward(&x, n, Exec::Cpu, false)?))?;
    eprintln!(
        "forward n={n} {d}²: gpu {:.3} ms, cpu {:.3} ms",
        g * 1e3,
        cpu * 1e3
    );
    Ok(
        json!({"n": n, "d": d, "rank": rank, "gpu_s": g, "cpu_s": cpu,
              "gpu_gflop_per_s": flops / g / 1e9, "cpu_gflop_per_s": flops / cpu / 1e9,
              "gpu_includes": "W0 upload and readback"}),
    )
}

fn sketch(d: usize, l: usize) -> Res<Value> {
    let c = ctx()?;
    let w = bf16(d * d, 19);
    let w0 = bf16(d * d, 23);
    let m = |bytes| StoredMatrix {
        bytes,
        dtype: Dtype::BF16,
        rows: d,
        cols: d,
    };
    let pair = DeltaPair {
        w: m(&w),
        w0: m(&w0),
    };
    let omega = values(d * l, 29);
    let g = best_of(3, || Ok(gpu::delta_sketch(&c, &pair, &omega, l)?))?;
    let cpu = best_of(3, || Ok(cpu_forward::delta_sketch(&pair, &omega, l)?))?;
    // The transposed product (split-K over W's rows), Q the same shape as Ω.
    let gt = best_of(3, || Ok(gpu::delta_sketch_t(&c, &pair, &omega, l)?))?;
    let cpu_t = best_of(3, || Ok(cpu_forward::delta_sketch_t(&pair, &omega, l)?))?;
    eprintln!(
        "sketch {d}² l={l}: gpu {:.3} ms, cpu {:.3} ms; transposed gpu {:.3} ms, cpu {:.3} ms",
        g * 1e3,
        cpu * 1e3,
        gt * 1e3,
        cpu_t * 1e3
    );
    Ok(
        json!({"d": d, "l": l, "gpu_s": g, "cpu_s": cpu, "gpu_t_s": gt, "cpu_t_s": cpu_t,
              "gpu_includes": "upload and readback"}),
    )
}

/// A safetensors file of `(name, dtype, shape, bytes)` tensors, each written from `fill(offset,
/// len)` in pieces of at most 64 MiB, so a multi-GiB tensor is never whole in memory.
fn write_st(
    path: &std::path::Path,
    tensors: &[(&str, &str, Vec<usize>, usize)],
    fill: &dyn Fn(usize, usize, usize) -> Vec<u8>,
) -> Res<()> {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (name, dt, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            json!({"dtype": dt, "shape": shape, "data_offsets": [off, off + bytes]}),
        );
        off += bytes;
    }
    let mut h = serde_json::to_vec(&Value::Object(header))?;
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&(h.len() as u64).to_le_bytes())?;
    f.write_all(&h)?;
    for (t, (_, _, _, bytes)) in tensors.iter().enumerate() {
        let mut done = 0;
        while done < *bytes {
            let n = (64usize << 20).min(bytes - done);
            f.write_all(&fill(t, done, n))?;
            done += n;
        }
    }
    f.into_inner().map_err(|e| e.to_string())?.sync_all()?;
    Ok(())
}

/// Runs `lorakit ARGS` and returns (seconds, peak RSS in bytes) from `wait4`. This process
/// holds no large buffer when it spawns, so the child's high-water mark (which Linux seeds from
/// the parent's at a vfork'd exec) is its own.
fn run_measured(lorakit: &str, args: &[&str]) -> Res<(f64, u64)> {
    let t = Instant::now();
    #[allow(clippy::zombie_processes)] // reaped by the wait4 below
    let child = std::process::Command::new(lorakit)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 fills it for this child only.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    if pid != child.id() as i32 {
        return Err(std::io::Error::last_os_error().into());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(format!("lorakit {args:?} failed (status {status})").into());
    }
    Ok((t.elapsed().as_secs_f64(), ru.ru_maxrss as u64 * 1024))
}

fn cli_merge(rows: usize, cols: usize, rank: usize, lorakit: &str) -> Res<Value> {
    let dir = tempfile::tempdir()?;
    let base = dir.path().join("base.safetensors");
    let n = rows * cols;
    write_st(
        &base,
        &[("big.weight", "BF16", vec![rows, cols], 2 * n)],
        &|_, at, len| {
            let v = values(len / 2, 7 ^ (at as u64 / 2));
            dtype::encode(Dtype::BF16, &v)
        },
    )?;
    let ad = dir.path().join("adapter");
    std::fs::create_dir(&ad)?;
    write_st(
        &ad.join("adapter_model.safetensors"),
        &[
            (
                "base_model.model.big.lora_A.weight",
                "F32",
                vec![rank, cols],
                4 * rank * cols,
            ),
            (
                "base_model.model.big.lora_B.weight",
                "F32",
                vec![rows, rank],
                4 * rows * rank,
            ),
        ],
        &|t, at, len| {
            let v = values(len / 4, (11 + 2 * t as u64) ^ (at as u64 / 4));
            dtype::encode(Dtype::F32, &v)
        },
    )?;
    std::fs::write(
        ad.join("adapter_config.json"),
        format!(
            r#"{{"peft_type":"LORA","r":{rank},"lora_alpha":{},"target_modules":["big"]}}"#,
            2 * rank
        ),
    )?;
    let mut fig = json!({"rows": rows, "cols": cols, "rank": rank, "tensor_bytes": 2 * n});
    let mut outs = Vec::new();
    for device in ["gpu", "cpu"] {
        let out = dir.path().join(format!("{device}.safetensors"));
        let (b, a, o) = (
            base.display().to_string(),
            ad.display().to_string(),
            out.display().to_string(),
        );
        let args = [
            "merge",
            "--base",
            &b,
            "--adapter",
            &a,
            "--out",
            &o,
            "--device",
            device,
            "--quiet",
        ];
        let (s, peak) = run_measured(lorakit, &args)?;
        eprintln!(
            "cli merge --device {device}: {s:.3} s, peak RSS {} MiB",
            peak >> 20
        );
        fig[format!("{device}_s")] = json!(s);
        fig[format!("{device}_peak_rss")] = json!(peak);
        fig[format!("{device}_gb_per_s")] = json!(4.0 * n as f64 / s / 1e9);
        outs.push(out);
    }
    // Compared in pieces (the files are GiBs).
    let identical = {
        use std::io::Read;
        let (mut g, mut c) = (
            std::fs::File::open(&outs[0])?,
            std::fs::File::open(&outs[1])?,
        );
        let (mut bg, mut bc) = (vec![0u8; 16 << 20], vec![0u8; 16 << 20]);
        loop {
            let ng = g.read(&mut bg)?;
            let mut nc = 0;
            while nc < ng {
                let k = c.read(&mut bc[nc..ng])?;
                if k == 0 {
                    break;
                }
                nc += k;
            }
            if ng != nc || bg[..ng] != bc[..nc] {
                break false;
            }
            if ng == 0 {
                break true;
            }
        }
    };
    eprintln!("cli merge: outputs identical: {identical}");
    fig["identical"] = json!(identical);
    Ok(fig)
}

fn step(args: &[String]) -> Res<Value> {
    let name = args.first().map(String::as_str).unwrap_or("");
    let v = match name {
        "info" => info()?,
        "copy" => copy(arg(args, 1, "MIB")?)?,
        "transfer" => transfer(arg(args, 1, "MIB")?)?,
        "merge-kernel" => merge_kernel(
            arg(args, 1, "ROWS")?,
            arg(args, 2, "COLS")?,
            arg(args, 3, "RANK")?,
        )?,
        "e2e" => e2e(
            arg(args, 1, "ROWS")?,
            arg(args, 2, "COLS")?,
            arg(args, 3, "RANK")?,
        )?,
        "forward" => forward(
            arg(args, 1, "N")?,
            arg(args, 2, "D")?,
            arg(args, 3, "RANK")?,
        )?,
        "gemm-kernel" => gemm_kernel(
            arg(args, 1, "N")?,
            arg(args, 2, "D")?,
            arg(args, 3, "RANK")?,
        )?,
        "sketch" => sketch(arg(args, 1, "D")?, arg(args, 2, "L")?)?,
        "dora" => dora(
            arg(args, 1, "ROWS")?,
            arg(args, 2, "COLS")?,
            arg(args, 3, "RANK")?,
        )?,
        "cli-merge" => cli_merge(
            arg(args, 1, "ROWS")?,
            arg(args, 2, "COLS")?,
            arg(args, 3, "RANK")?,
            args.get(4).ok_or("missing LORAKIT")?,
        )?,
        other => return Err(format!("unknown step {other:?}").into()),
    };
    let mut v = v;
    v["step"] = json!(args.join(" "));
    Ok(v)
}

fn main() {
    // cargo bench passes `--bench`; steps are the other arguments.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let steps: Vec<Vec<String>> = if args.is_empty() {
        [
            "info",
            "copy 64",
            "transfer 64",
            "merge-kernel 2048 2048 16",
            "e2e 2048 2048 16",
            "forward 128 2048 16",
            "sketch 2048 16",
        ]
        .iter()
        .map(|s| s.split(' ').map(String::from).collect())
        .collect()
    } else {
        vec![args]
    };
    let mut failed = false;
    for s in &steps {
        match step(s) {
            Ok(v) => println!("{v}"),
            Err(e) => {
                eprintln!("step {:?} failed: {e}", s.join(" "));
                println!("{}", json!({"step": s.join(" "), "error": e.to_string()}));
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
