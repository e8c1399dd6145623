//! The merge job every backend takes: [`MergeJob`] (a base tensor and its [`Term`]s, with
//! [`Dora`] magnitudes normed along a [`NormAxis`]), its shape validation, and [`MergeError`].
//!
//! A leaf so that the CPU and GPU backends, which run a job, and [`crate::backend::Engine`],
//! which chooses between them, all import it from here without importing each other. Must not
//! compute a merge or choose a backend.

use crate::dtype::Dtype;

/// A DoRA magnitude applied after the low-rank update (Liu et al. 2024):
/// `W ← W + strength · (f ⊙ (W + δ) − W)` with `f = m / (‖W0 + δ‖ + eps)`, the norm taken over the
/// *original* base weight `W0` plus this term's `δ`, `W` the weight so far (earlier terms
/// already added).
///
/// - PEFT (`tuners/lora/variants.py` `DoraLinearVariant.merge_unsafe`, `dora.py`
///   `get_weight_norm`): norm per output feature, `eps = 0`, `strength = 1` (a user weight scales
///   `δ` instead).
/// - LyCORIS `dora_scale` (`lycoris/functional/general.py` `_weight_decompose`): norm per output
///   row (`wd_on_out`) or per input channel over the output and kernel axes, `eps` = f32 machine
///   epsilon; a user weight blends as ComfyUI's `weight_decompose` does
///   (`comfy/weight_adapter/base.py`: `W + strength·(DoRA(W + δ) − W)`).
#[derive(Debug, Clone, Copy)]
pub struct Dora<'a> {
    /// One magnitude per normed feature: per row (`Rows`), or per group of `group` columns
    /// (`Cols`).
    pub magnitude: &'a [f32],
    /// Which axis of the stored matrix the norm is taken per.
    pub axis: NormAxis,
    /// Columns sharing one norm with [`NormAxis::Cols`] (a conv's kernel area for LyCORIS'
    /// per-input-channel norm; 1 otherwise).
    pub group: usize,
    /// Added to the norm before dividing.
    pub eps: f32,
    /// Blend of the decomposed weight into the weight so far (1: replace).
    pub strength: f32,
}

impl<'a> Dora<'a> {
    /// PEFT's DoRA: one magnitude per output feature along `axis`.
    pub fn peft(magnitude: &'a [f32], axis: NormAxis) -> Self {
        Dora {
            magnitude,
            axis,
            group: 1,
            eps: 0.0,
            strength: 1.0,
        }
    }
}

/// The stored-matrix axis that indexes normed features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormAxis {
    /// One norm per row (nn.Linear `[out, in]`, conv `[out, in·kh·kw]`): PEFT, LyCORIS
    /// `wd_on_out`.
    Rows,
    /// One norm per column or group of columns (GPT-2 Conv1D `[in, out]`, i.e. PEFT
    /// `fan_in_fan_out`; LyCORIS' per-input-channel norm).
    Cols,
}

/// One update `scale · B·A` (or `scale · D` for a dense `D`) on a `rows × cols` stored matrix.
#[derive(Debug, Clone, Copy)]
pub struct Term<'a> {
    /// `rows × rank`, row-major.
    pub b: &'a [f32],
    /// `rank × cols`, row-major.
    pub a: &'a [f32],
    pub rank: usize,
    /// A dense `rows × cols` update instead of `B·A` (LoHa, LoKr, Tucker and full modules,
    /// rebuilt by [`crate::adapter::algo::delta`]); `b`, `a` and `rank` are then unused.
    pub dense: Option<&'a [f32]>,
    /// Effective scale (adapter scale × user weight; negative to unmerge).
    pub scale: f32,
    pub dora: Option<Dora<'a>>,
    /// A plain term's `δ = scale·acc` rounded to this 16-bit dtype before it is added (PEFT
    /// 0.21.2 `lora.Embedding.merge`: `weight.data += get_delta_weight().to(orig_dtype)`);
    /// `None`: added in f32 (every other layer). Ignored on a DoRA term and by exact rounding.
    pub delta_dtype: Option<crate::dtype::Dtype>,
}

impl<'a> Term<'a> {
    /// A plain LoRA update `scale · B·A`: no dense update, no DoRA.
    pub fn low_rank(b: &'a [f32], a: &'a [f32], rank: usize, scale: f32) -> Self {
        Term {
            b,
            a,
            rank,
            dense: None,
            scale,
            dora: None,
            delta_dtype: None,
        }
    }

    /// The same update with DoRA's weight norm.
    pub fn with_dora(self, dora: Dora<'a>) -> Self {
        Term {
            dora: Some(dora),
            ..self
        }
    }
}

/// Merge of terms into one stored tensor: `W = W0 + Σₜ scaleₜ · Bₜ·Aₜ` with DoRA terms as
/// described on [`Dora`], computed in f32 and rounded once to `out_dtype`.
///
/// Arithmetic, element by element, which every backend follows exactly so that bf16/f16 outputs
/// are bit-identical across backends: `acc = Σₖ b[i,k]·a[k,j]` in ascending k, each product
/// rounded then added (no fused multiply-add), or `acc = D[i,j]` for a dense term;
/// `δ = scale·acc` (rounded to the term's `delta_dtype` when it has one); `w ← w + δ` term by
/// term.
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
    /// The sink of [`Engine::merge_to`](crate::backend::Engine::merge_to) failed; the caller
    /// holds its error (a full disk, a stopped writer) and returns that instead.
    #[error("the output stopped")]
    SinkStopped,
}

impl<'a> MergeJob<'a> {
    /// `w0` (`rows × cols` values of `in_dtype`) plus `terms`, written as `out_dtype`: the one
    /// spelling of a job, so callers that build many (tests over every dtype pair) stay short.
    pub fn new(
        w0: &'a [u8],
        in_dtype: Dtype,
        (rows, cols): (usize, usize),
        terms: &'a [Term<'a>],
        out_dtype: Dtype,
    ) -> Self {
        MergeJob {
            w0,
            in_dtype,
            rows,
            cols,
            terms,
            out_dtype,
        }
    }

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
            match t.dense {
                Some(d) if d.len() != n => {
                    return Err(MergeError::Shape(format!(
                        "term {i}: dense update has {} values for {}×{}",
                        d.len(),
                        self.rows,
                        self.cols
                    )))
                }
                Some(_) => {}
                None if t.b.len() != self.rows * t.rank || t.a.len() != t.rank * self.cols => {
                    return Err(MergeError::Shape(format!(
                        "term {i}: B has {} and A {} values for rank {} on {}×{}",
                        t.b.len(),
                        t.a.len(),
                        t.rank,
                        self.rows,
                        self.cols
                    )))
                }
                None => {}
            }
            if let Some(d) = t.dora {
                let want = match d.axis {
                    NormAxis::Rows => Some(self.rows),
                    NormAxis::Cols => (d.group > 0 && self.cols.is_multiple_of(d.group))
                        .then(|| self.cols / d.group),
                };
                if want != Some(d.magnitude.len()) {
                    return Err(MergeError::Shape(format!(
                        "term {i}: DoRA magnitude has {} values, which does not fit {}×{} normed along {:?} in groups of {}",
                        d.magnitude.len(),
                        self.rows,
                        self.cols,
                        d.axis,
                        d.group
                    )));
                }
            }
        }
        Ok(())
    }
}
