//! What the `check --fix` writers share ([`super::fix`] for PEFT folders, [`super::packed`]
//! for fused and split projections, [`super::single_file`] for the diffusion loaders): the
//! options and the report, the output check made before any work, and the unit-scale LoRA every
//! rewrite leaves behind. A leaf: it uses none of those modules, so they do not import each
//! other in a circle.
//!
//! Must not: write files or decide a rewrite (the writers do).

use super::saved::{SavedOptions, SavedRewrite};
use crate::adapter::{Adapter, Data, Factors, Format};
use crate::error::InputResult;
use crate::io::Checkpoint;
use crate::ops::output::{self, WriteSpec, Written};
use std::path::PathBuf;
use std::sync::Arc;

/// Options of a fix.
#[derive(Debug, Clone)]
pub struct FixOptions {
    /// The PEFT folder to write.
    pub out: PathBuf,
    /// Remove modules and full tensors that land on no base tensor.
    pub drop_unmatched: bool,
    /// Replace every DoRA module by the plain LoRA of this rank closest to its effective
    /// update (needs the base).
    pub dora_rank: Option<usize>,
    /// Rewrite saved embeddings and heads (`modules_to_save`) into trainable tokens or LoRA
    /// ([`super::saved`]; needs the base).
    pub saved: SavedOptions,
    /// What to write: a PEFT folder, or a kohya single file for the diffusion loaders
    /// ([`super::single_file`]).
    pub form: FixForm,
    /// Kohya form: lower modules of other algorithms (LoKr, LoHa, …) to LoRA of this rank.
    pub lower_rank: Option<usize>,
    /// The largest relative Frobenius error an approximate rewrite (DoRA, a saved tensor or
    /// another algorithm made LoRA) may have; a larger one refuses the fix before anything is
    /// written. `None`: any (the error is reported).
    pub tolerance: Option<f64>,
}

impl FixOptions {
    /// The checks of the options alone, before any file is read: each rank at least 1, the
    /// tolerance a finite number ≥ 0 (a usage error, not one about an input).
    pub fn validate(&self) -> Result<(), crate::error::OptionError> {
        use crate::error::{Opt, OptionError};
        for (opt, rank) in [
            (Opt::DoraRank, self.dora_rank),
            (Opt::SavedRank, self.saved.rank),
            (Opt::LowerRank, self.lower_rank),
        ] {
            if rank == Some(0) {
                return Err(OptionError::new(move |o| {
                    format!("{} must be at least 1", o.opt(opt))
                }));
            }
        }
        if self.tolerance.is_some_and(|t| !(t >= 0.0 && t.is_finite())) {
            return Err(OptionError::new(|o| {
                format!("{} must be a finite number ≥ 0", o.opt(Opt::Tolerance))
            }));
        }
        Ok(())
    }
}

/// The form of the fixed adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FixForm {
    /// A PEFT folder (vLLM, SGLang, LoRAX, llama.cpp's converter, PEFT).
    #[default]
    Peft,
    /// A kohya single file (diffusers, ComfyUI).
    Kohya,
}

/// One module of another algorithm lowered to plain LoRA.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Lowered {
    pub module: String,
    /// Its algorithm before (`lokr`, `loha`, …).
    pub algo: String,
    pub rank: usize,
    /// `‖ΔW − B'·A'‖_F` (scale included).
    pub fro_error: f64,
    /// That over `‖ΔW‖_F`.
    pub rel_fro_error: f64,
}

/// One DoRA module turned into plain LoRA.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DoraToLora {
    pub module: String,
    pub rank: usize,
    /// `‖D − B'·A'‖_F`, `D` the effective DoRA update.
    pub fro_error: f64,
    /// `‖D − B'·A'‖_F / ‖D‖_F`.
    pub rel_fro_error: f64,
}

/// What a fix did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FixReport {
    pub out: String,
    /// The files written and their bytes (`files`, `bytes_written`).
    #[serde(flatten)]
    pub written: Written,
    /// The common rank every module has now.
    pub rank: usize,
    /// Modules renamed to their exact base tensor names (from → to).
    pub renamed: Vec<(String, String)>,
    /// Modules and full tensors removed (`drop_unmatched`).
    pub dropped: Vec<String>,
    /// Modules zero-padded to `rank` (name, old rank).
    pub padded: Vec<(String, usize)>,
    /// Packed modules split into the base's projections (packed name, parts).
    pub split: Vec<(String, Vec<String>)>,
    /// Projections fused into the base's packed module (packed name, the parts the adapter
    /// had; the others are zero rows).
    pub fused: Vec<(String, Vec<String>)>,
    /// DoRA modules replaced by plain LoRA (`dora_rank`), with the error of each.
    pub dora_to_lora: Vec<DoraToLora>,
    /// Saved embeddings and heads rewritten (`saved`), with the error of each LoRA.
    pub saved: Vec<SavedRewrite>,
    /// Modules of other algorithms lowered to LoRA (kohya form), with the error of each.
    pub lowered: Vec<Lowered>,
    /// One line per rewrite, for people.
    pub actions: Vec<String>,
}

/// Refuses the fix when one of its approximate rewrites — `(module, what it became, relative
/// Frobenius error)` — is over `tolerance` (the first such module, in the order given), so that a
/// script can ask for an exact-enough fix and get nothing rather than a worse adapter. A NaN error
/// is over every tolerance.
pub(super) fn within_tolerance<'a>(
    adapter: &Adapter,
    tolerance: Option<f64>,
    errors: impl IntoIterator<Item = (&'a str, String, f64)>,
) -> InputResult<()> {
    let Some(tol) = tolerance else {
        return Ok(());
    };
    for (module, what, rel) in errors {
        if rel.is_nan() || rel > tol {
            let module = module.to_owned();
            return Err(crate::error::InputError::option(&adapter.path, move |o| {
                format!(
                    "module `{module}`: its {what} is {rel:.3e} from the update (relative Frobenius norm), over {} {tol:e}; nothing written",
                    o.opt(crate::error::Opt::Tolerance)
                )
            }));
        }
    }
    Ok(())
}

/// The f32 output of a fix in `format`, refused before any work when `opts.out` is one of the
/// inputs (the adapter's files, the base's files or folder).
pub(super) fn checked_spec(
    format: Format,
    adapter: &Adapter,
    base: Option<&Checkpoint>,
    opts: &FixOptions,
) -> InputResult<WriteSpec> {
    let spec = WriteSpec {
        format,
        out: opts.out.clone(),
        dtype: Some(crate::dtype::Dtype::F32),
        kohya_prefix: None,
    };
    let mut inputs = output::adapter_inputs(adapter);
    if let Some(b) = base {
        inputs.extend(b.input_paths());
        inputs.push(b.root.clone());
    }
    output::check_output(&spec, &inputs)?;
    Ok(spec)
}

/// Replaces a module's factors with owned `a` [rank, in] and `b` [out, rank] whose product is
/// the whole ΔW: alpha = rank, so every loader's scale (alpha/r) is 1.
pub(super) fn set_unit_scale_lora(
    m: &mut crate::adapter::LoraModule,
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
) {
    m.factors = Factors::Lora {
        a: Data::Owned(Arc::new(a)),
        b: Data::Owned(Arc::new(b)),
    };
    m.rank = rank;
    m.alpha = rank as f64;
    m.scale = 1.0;
}
