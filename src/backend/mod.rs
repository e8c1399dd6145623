//! Compute backends behind one op API: the CPU backend ([`cpu`]) is always built and is the
//! reference; the GPU backend (`gpu`, WGSL through wgpu) implements the same ops and is tested
//! against it.
//!
//! Ops work on row-major `f32` factors and raw stored bytes of the base tensor, and return the
//! encoded output bytes, so that the CPU and GPU paths round identically.
//!
//! Owns the one CPU/GPU switch ([`Engine`]). Must not read or write files, nor know which operation
//! calls it; no other module chooses between CPU and GPU.
//! The job both backends run ([`MergeJob`], its terms and [`MergeError`]) is the leaf `job.rs`,
//! so [`cpu`] and [`gpu`] import it without importing this switch.

pub mod cpu;
pub mod cpu_forward;
pub mod gpu;
pub mod job;
pub mod profile;
pub mod simd;

use crate::dtype::Dtype;
pub use job::{Dora, MergeError, MergeJob, NormAxis, Term};

/// Where the matrix products of a model's forward run (`model::linear` takes it): the CPU, or
/// the f32 forwards of frozen layers on a GPU (the rest on the CPU). [`Engine::exec`] gives it;
/// it lives here so that the backend never imports the model code.
#[derive(Debug, Clone, Copy, Default)]
pub enum Exec<'g> {
    #[default]
    Cpu,
    /// f32 forwards of frozen layers on the GPU (the rest on the CPU).
    Gpu(&'g gpu::GpuContext),
}

/// How a merge rounds `W0 + Σ s·B·A` to the output dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rounding {
    /// The f32 arithmetic of [`MergeJob`], rounded once: PEFT's arithmetic (which rounds its
    /// f32 sum the same way), bit-identical on every backend.
    #[default]
    F32,
    /// The exact value rounded once, to nearest even ([`cpu::exact`]): a function of the
    /// operands alone, whatever the threads, SIMD width or order of summation. CPU only; DoRA
    /// terms and f64 outputs are refused.
    Exact,
}

/// A merge's output as [`Engine::merge_to`] hands it over.
#[derive(Debug)]
pub enum Piece<'a> {
    /// The whole tensor, computed on the host.
    Whole(Vec<u8>),
    /// The next row-major bytes of a tensor streamed from the device (borrowed from its
    /// mapped readback: copy what must outlive the call).
    Part(&'a [u8]),
}

/// Which backend runs an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The GPU when one exists, else the CPU.
    #[default]
    Auto,
    Cpu,
    Gpu,
}

/// The backend chosen for a run: created once (instance, device, queue, cached pipelines),
/// shared by every op of the run.
#[derive(Debug)]
pub enum Engine {
    Cpu,
    Gpu(Box<gpu::GpuContext>),
}

/// Why `--device auto` chose the backend it chose (see [`decide_auto`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "choice")]
pub enum AutoChoice {
    /// The probe merge was faster on the GPU and byte-identical to the CPU's.
    Gpu { gpu_s: f64, cpu_s: f64 },
    /// No adapter, or it could not be opened.
    NoAdapter { reason: String },
    /// A software adapter (wgpu device type `Cpu`: lavapipe, SwiftShader, WARP): it runs the
    /// kernels on the same CPU cores, slower than the CPU backend.
    Software { name: String },
    /// The driver rejected a kernel when all were compiled up front.
    KernelRejected { error: String },
    /// The probe merge differed from the CPU's bytes (a driver that contracts to FMA or
    /// flushes denormals despite the guards, e.g. Metal fast-math): never used silently.
    NotBitIdentical { name: String },
    /// The probe merge was not faster on the GPU (host link, integrated GPU, busy device).
    Slower { gpu_s: f64, cpu_s: f64 },
    /// The probe itself failed on the device.
    ProbeFailed { error: String },
}

/// Timings of the `--device auto` probe: one merge of a [`PROBE_ROWS`] × [`PROBE_COLS`] bf16
/// tensor (8 MiB in, 8 MiB out) with a rank-16 term, end to end (upload, kernel, readback) on
/// the GPU and on the CPU backend, best of [`PROBE_RUNS`] after a warm-up each.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub gpu_s: f64,
    pub cpu_s: f64,
    /// The GPU's output bytes equal the CPU's.
    pub identical: bool,
}

pub const PROBE_ROWS: usize = 4096;
pub const PROBE_COLS: usize = 1024;
pub const PROBE_RUNS: usize = 3;

/// Runs the `--device auto` probe on `ctx` (see [`Probe`]); tens of milliseconds on a discrete
/// GPU, about a second on lavapipe (where `auto` never runs it).
pub fn probe_merge(ctx: &gpu::GpuContext) -> Result<Probe, MergeError> {
    // A fixed xorshift fill: the values only need to be ordinary (no zeros, no specials).
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.25
    };
    let (rows, cols, rank) = (PROBE_ROWS, PROBE_COLS, 16);
    let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
    let w0 = crate::dtype::encode(Dtype::BF16, &w);
    drop(w);
    let b: Vec<f32> = (0..rows * rank).map(|_| next()).collect();
    let a: Vec<f32> = (0..rank * cols).map(|_| next()).collect();
    let terms = [Term::low_rank(&b, &a, rank, 0.5)];
    let job = MergeJob::new(&w0, Dtype::BF16, (rows, cols), &terms, Dtype::BF16);
    let time = |f: &dyn Fn() -> Result<Vec<u8>, MergeError>| -> Result<(f64, Vec<u8>), MergeError> {
        let out = f()?;
        let mut best = f64::INFINITY;
        for _ in 0..PROBE_RUNS {
            let t = std::time::Instant::now();
            std::hint::black_box(f()?);
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok((best, out))
    };
    let (gpu_s, g) = time(&|| gpu::merge(ctx, &job))?;
    let (cpu_s, c) = time(&|| cpu::merge(&job))?;
    Ok(Probe {
        gpu_s,
        cpu_s,
        identical: g == c,
    })
}

/// The `--device auto` rule, in order: an adapter must open; a software adapter is never used;
/// every kernel (and every merge specialisation) must compile; then the probe merge must be
/// byte-identical to the CPU's and faster. Measured on the machine itself, so a slow host link
/// or a small integrated GPU loses to the CPU, as it should; no real-GPU figure exists yet to
/// replace the probe with a fixed rule (README "GPU").
pub fn decide_auto(ctx: &gpu::GpuContext) -> AutoChoice {
    let info = ctx.describe().adapter;
    if info.device_type == "Cpu" {
        return AutoChoice::Software { name: info.name };
    }
    if let Err(e) = ctx.compile_all() {
        return AutoChoice::KernelRejected {
            error: e.to_string(),
        };
    }
    match probe_merge(ctx) {
        Err(e) => AutoChoice::ProbeFailed {
            error: e.to_string(),
        },
        Ok(p) if !p.identical => AutoChoice::NotBitIdentical { name: info.name },
        Ok(p) if p.gpu_s < p.cpu_s => AutoChoice::Gpu {
            gpu_s: p.gpu_s,
            cpu_s: p.cpu_s,
        },
        Ok(p) => AutoChoice::Slower {
            gpu_s: p.gpu_s,
            cpu_s: p.cpu_s,
        },
    }
}

impl Engine {
    /// Creates the engine for `device` on the default adapter; see [`Engine::with_gpu_index`].
    pub fn new(device: Device) -> anyhow::Result<Engine> {
        Self::with_gpu_index(device, None)
    }

    /// Creates the engine for `device`: `Gpu` fails with a clear error when no GPU adapter
    /// exists (or none has index `gpu_index`, as `lorakit gpu-info` lists them); `Auto` uses
    /// the GPU only when [`decide_auto`] says so (a hardware adapter whose kernels all compile
    /// and whose probe merge is bit-identical to and faster than the CPU's), the CPU otherwise
    /// (a software adapter such as lavapipe is never picked; ask for it with `--device gpu`).
    pub fn with_gpu_index(device: Device, gpu_index: Option<usize>) -> anyhow::Result<Engine> {
        let opts = gpu::GpuOptions {
            adapter: gpu_index.map(gpu::AdapterSelector::Index),
            ..gpu::GpuOptions::default()
        };
        Ok(Self::choose(device, &opts)?.0)
    }

    /// [`Engine::with_gpu_index`] with every GPU option (the adapter, and the chunk size and
    /// binding limit tests lower), also returning why `auto` chose (`None` for `cpu`/`gpu`).
    pub fn choose(
        device: Device,
        opts: &gpu::GpuOptions,
    ) -> anyhow::Result<(Engine, Option<AutoChoice>)> {
        match device {
            Device::Cpu => Ok((Engine::Cpu, None)),
            Device::Gpu => match gpu::GpuContext::with_options(opts) {
                Ok(ctx) => Ok((Engine::Gpu(Box::new(ctx)), None)),
                Err(e) => {
                    let e = e.to_string();
                    anyhow::bail!(crate::error::OptionError::new(move |o| format!(
                        "{}: {e}",
                        o.set(crate::error::Opt::Device, "gpu")
                    )))
                }
            },
            Device::Auto => {
                let ctx = match gpu::GpuContext::with_options(opts) {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        let reason = e.to_string();
                        return Ok((Engine::Cpu, Some(AutoChoice::NoAdapter { reason })));
                    }
                };
                let choice = decide_auto(&ctx);
                let engine = match choice {
                    AutoChoice::Gpu { .. } => Engine::Gpu(Box::new(ctx)),
                    _ => Engine::Cpu,
                };
                Ok((engine, Some(choice)))
            }
        }
    }

    /// See [`MergeJob`]. What the GPU kernel does not cover ([`gpu::merge_supports`]: F64
    /// tensors, dense terms, blended DoRA) is merged on the CPU.
    pub fn merge(&self, job: &MergeJob) -> Result<Vec<u8>, MergeError> {
        match self {
            Engine::Gpu(ctx) if gpu::merge_supports(job) => gpu::merge(ctx, job),
            _ => cpu::merge(job),
        }
    }

    /// [`Engine::merge`] with a choice of [`Rounding`]: exact rounding always runs on the CPU
    /// (the GPU kernel's f32 arithmetic cannot give it).
    pub fn merge_with(&self, job: &MergeJob, rounding: Rounding) -> Result<Vec<u8>, MergeError> {
        match rounding {
            Rounding::F32 => self.merge(job),
            Rounding::Exact => cpu::exact::merge(job),
        }
    }

    /// [`Engine::merge_with`] with the output handed to `sink` as it is produced. Where the GPU
    /// kernel covers the job ([`gpu::merge_supports`]) and the rounding is [`Rounding::F32`],
    /// the tensor streams through the device in chunks ([`gpu::merge_into`]): the base is read
    /// from `job.w0` (the memory map) straight into the upload ring, each chunk's readback is
    /// handed over as a [`Piece::Part`] in row-major order, and no whole-tensor buffer exists
    /// on the host. Everywhere else (the CPU engine, F64 tensors, dense terms, blended DoRA,
    /// exact rounding) the output is computed whole and handed over once as [`Piece::Whole`],
    /// moved, not copied. After an error the pieces already delivered are to be discarded; an
    /// error of the sink's own ends the merge and is returned as the sink gave it.
    pub fn merge_to(
        &self,
        job: &MergeJob,
        rounding: Rounding,
        sink: &mut dyn FnMut(Piece<'_>) -> Result<(), MergeError>,
    ) -> Result<(), MergeError> {
        match self {
            Engine::Gpu(ctx) if rounding == Rounding::F32 && gpu::merge_supports(job) => {
                gpu::merge_into(ctx, job, &mut |b| sink(Piece::Part(b)))
            }
            _ => sink(Piece::Whole(self.merge_with(job, rounding)?)),
        }
    }

    /// The operator `M = W − W0` whose products `M·X`, `Mᵀ·Y` an extraction's randomized SVD
    /// makes (`ops/extract`). On the GPU engine, for `W` and `W0` stored as F32/F16/BF16, the
    /// delta-sketch kernels form `W − W0` on the device from the stored bytes
    /// ([`gpu::GpuDeltaOp`]; a product that fails there falls back to its CPU twin), so only the
    /// skinny sketches cross the bus: results agree with the CPU's to rounding, not bit for bit
    /// (other summation order). Everywhere else (the CPU engine, F64 tensors) it is `host`, the
    /// caller's operator over its host copy of `ΔW`. Errs only when the GPU refuses the pair.
    pub fn delta_operator<'a>(
        &'a self,
        pair: cpu_forward::DeltaPair<'a>,
        host: Box<dyn crate::linalg::LinearOperator + 'a>,
    ) -> Result<Box<dyn crate::linalg::LinearOperator + 'a>, gpu::GpuError> {
        let read_on_gpu = |d: Dtype| matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16);
        match self {
            Engine::Gpu(ctx) if read_on_gpu(pair.w.dtype) && read_on_gpu(pair.w0.dtype) => {
                Ok(Box::new(gpu::GpuDeltaOp::new(ctx, pair)?))
            }
            _ => Ok(host),
        }
    }

    /// Where the low-rank forwards of eval run ([`Exec`]): the f32 forwards of frozen layers
    /// on the GPU engine's device, everything on the CPU otherwise.
    pub fn exec(&self) -> Exec<'_> {
        match self {
            Engine::Gpu(ctx) => Exec::Gpu(ctx),
            Engine::Cpu => Exec::Cpu,
        }
    }

    /// One-line description for summaries.
    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
            Engine::Gpu(ctx) => ctx.label(),
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self, Engine::Gpu(_))
    }
}
