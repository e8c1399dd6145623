//! Compute backends behind one op API: the CPU backend ([`cpu`]) is always built and is the
//! reference; the GPU backend (`gpu`, WGSL through wgpu) implements the same ops and is tested
//! against it.
//!
//! Ops work on row-major `f32` factors and raw stored bytes of the base tensor, and return the
//! encoded output bytes, so that the CPU and GPU paths round identically.

pub mod cpu;
pub mod cpu_forward;
pub mod gpu;

use crate::dtype::Dtype;

/// A DoRA magnitude applied after the low-rank update (Liu et al. 2024; PEFT
/// `tuners/lora/variants.py` `DoraLinearVariant.merge_unsafe`, `dora.py` `get_weight_norm`):
/// `W ← (m / ‖W0 + ΔW‖) ⊙ (W + ΔW)`, the norm taken per output feature over the *original* base
/// weight `W0`, `W` the weight so far (earlier terms already added).
#[derive(Debug, Clone, Copy)]
pub struct Dora<'a> {
    /// One magnitude per output feature.
    pub magnitude: &'a [f32],
    /// Which axis of the stored matrix indexes output features.
    pub axis: NormAxis,
}

/// The stored-matrix axis that indexes output features (PEFT takes the L2 norm over the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormAxis {
    /// Output features are rows (nn.Linear `[out, in]`, conv `[out, in·kh·kw]`).
    Rows,
    /// Output features are columns (GPT-2 Conv1D `[in, out]`, i.e. `fan_in_fan_out`).
    Cols,
}

/// One low-rank update `scale · B·A` on a `rows × cols` stored matrix.
#[derive(Debug, Clone, Copy)]
pub struct Term<'a> {
    /// `rows × rank`, row-major.
    pub b: &'a [f32],
    /// `rank × cols`, row-major.
    pub a: &'a [f32],
    pub rank: usize,
    /// Effective scale (adapter scale × user weight; negative to unmerge).
    pub scale: f32,
    pub dora: Option<Dora<'a>>,
}

/// Merge of terms into one stored tensor: `W = W0 + Σₜ scaleₜ · Bₜ·Aₜ` with DoRA terms as
/// described on [`Dora`], computed in f32 and rounded once to `out_dtype`.
///
/// Arithmetic, element by element, which every backend follows exactly so that bf16/f16 outputs
/// are bit-identical across backends: `acc = Σₖ b[i,k]·a[k,j]` in ascending k, each product
/// rounded then added (no fused multiply-add); `δ = scale·acc`; `w ← w + δ` term by term.
#[derive(Debug, Clone, Copy)]
pub struct MergeJob<'a> {
    pub w0: &'a [u8],
    pub in_dtype: Dtype,
    pub rows: usize,
    pub cols: usize,
    pub terms: &'a [Term<'a>],
    pub out_dtype: Dtype,
}

/// Why a merge produced no output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    #[error("merged value at [{row}, {col}] is not finite ({value})")]
    NonFinite { row: usize, col: usize, value: f32 },
    #[error("{0}")]
    Shape(String),
    #[error("gpu: {0}")]
    Gpu(String),
}

impl MergeJob<'_> {
    /// Checks the factor and magnitude lengths against the declared shape.
    pub fn validate(&self) -> Result<(), MergeError> {
        let n = self
            .rows
            .checked_mul(self.cols)
            .ok_or_else(|| MergeError::Shape("size overflows".into()))?;
        if self.w0.len() * 8 != n * self.in_dtype.bitsize() {
            return Err(MergeError::Shape(format!(
                "base has {} bytes for {}×{}",
                self.w0.len(),
                self.rows,
                self.cols
            )));
        }
        for (i, t) in self.terms.iter().enumerate() {
            if t.b.len() != self.rows * t.rank || t.a.len() != t.rank * self.cols {
                return Err(MergeError::Shape(format!(
                    "term {i}: B has {} and A {} values for rank {} on {}×{}",
                    t.b.len(),
                    t.a.len(),
                    t.rank,
                    self.rows,
                    self.cols
                )));
            }
            if let Some(d) = t.dora {
                let want = match d.axis {
                    NormAxis::Rows => self.rows,
                    NormAxis::Cols => self.cols,
                };
                if d.magnitude.len() != want {
                    return Err(MergeError::Shape(format!(
                        "term {i}: DoRA magnitude has {} values, expected {want}",
                        d.magnitude.len()
                    )));
                }
            }
        }
        Ok(())
    }
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

impl Engine {
    /// Creates the engine for `device`: `Gpu` fails with a clear error when no GPU adapter
    /// exists; `Auto` uses a hardware GPU when one exists and the CPU otherwise (a software
    /// adapter such as lavapipe is slower than the CPU path, so `auto` never picks it; ask for
    /// it with `--device gpu`).
    pub fn new(device: Device) -> anyhow::Result<Engine> {
        match device {
            Device::Cpu => Ok(Engine::Cpu),
            Device::Gpu => match gpu::GpuContext::new() {
                Ok(ctx) => Ok(Engine::Gpu(Box::new(ctx))),
                Err(e) => anyhow::bail!("--device gpu: {e}"),
            },
            Device::Auto => Ok(match gpu::GpuContext::try_new() {
                Ok(Some(ctx)) if ctx.describe().device_type != "Cpu" => Engine::Gpu(Box::new(ctx)),
                _ => Engine::Cpu,
            }),
        }
    }

    /// See [`MergeJob`]. F64 tensors (no WGSL type) are merged on the CPU.
    pub fn merge(&self, job: &MergeJob) -> Result<Vec<u8>, MergeError> {
        match self {
            Engine::Gpu(ctx) if job.in_dtype != Dtype::F64 && job.out_dtype != Dtype::F64 => {
                gpu::merge(ctx, job)
            }
            _ => cpu::merge(job),
        }
    }

    /// One-line description for summaries.
    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
            Engine::Gpu(ctx) => {
                let i = ctx.describe();
                format!("gpu ({}, {})", i.name, i.backend)
            }
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self, Engine::Gpu(_))
    }
}
