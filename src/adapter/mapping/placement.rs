//! What a resolution is made of — each module's [`Placement`] on a base tensor (or a
//! [`RowSlice`] of one), why a module found none ([`Unmatched`]), the shape a module needs
//! ([`expected_shape`]) — and the parts of a diffusion model a base's roots and a kohya prefix
//! name ([`Component`], [`BaseComponents`]). The leaf of [`super`] that `openclip.rs` builds on.
//!
//! Must not match names (that is `names.rs`) or read tensor data.

use super::names::dotted_suffix_agrees;
use crate::adapter::formats::kohya;
use crate::adapter::model::{LoraModule, ModuleKind};

/// Why a module or full tensor found no base tensor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Unmatched {
    NotFound {
        module: String,
        expected: String,
    },
    ShapeMismatch {
        module: String,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    Ambiguous {
        module: String,
        candidates: Vec<String>,
    },
    NotFloat {
        module: String,
        tensor: String,
        dtype: String,
    },
    /// The module's prefix names one component; its only name matches belong to another.
    OtherComponent {
        module: String,
        /// The prefix and the component it names (`lora_te2_ is the second text encoder`).
        component: String,
        /// The base tensors its name matches.
        candidates: Vec<String>,
        /// The component each candidate belongs to (`the first text encoder`).
        owners: Vec<String>,
    },
    /// The module lands on a tensor whose rows the model's two layouts order differently in
    /// some models and alike in others, and the base is none of the models lorakit knows.
    UnknownOrder {
        module: String,
        tensor: String,
        /// Which models order it which way.
        why: String,
    },
    /// The module fits the tensor's shape, but the peer whose layout the file declares would
    /// build another layer on it and not load the file's factors (a diffusers-saved PEFT LoKr
    /// on a Conv2d whose kernel the file's flattened factor hid).
    WouldNotLoad {
        module: String,
        tensor: String,
        why: String,
    },
    /// A GGUF base: llama.cpp names no tensor of `architecture` for the module (or a saved
    /// full tensor), so it has nothing to land on (`io/gguf/names.rs`).
    NoGgufName {
        module: String,
        architecture: String,
    },
}

impl Unmatched {
    /// `module` matches every one of `candidates`.
    pub fn ambiguous(module: &LoraModule, candidates: &[&str]) -> Unmatched {
        Unmatched::Ambiguous {
            module: module.name.clone(),
            candidates: candidates.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A shape mismatch of one of `modules`: the module's index, the base tensor, the shape the
    /// module needs and the one found. `None` for any other reason, or a module not in `modules`.
    pub fn shape_mismatch_in(
        &self,
        modules: &[LoraModule],
    ) -> Option<(usize, &String, &[usize], &[usize])> {
        let Unmatched::ShapeMismatch {
            module,
            tensor,
            expected,
            found,
        } = self
        else {
            return None;
        };
        let mi = modules.iter().position(|m| &m.name == module)?;
        Some((mi, tensor, expected, found))
    }
}

/// Module `mi` (`m`) on the rows `rows` of base tensor `weight` (`found`, `dtype`), once the
/// caller has worked out whether its shape `fits` (against `expected`): a shape or dtype that
/// does not take it is the module's [`Unmatched`] reason. What every rule placing a module on
/// a slice of a fused tensor ends with (`openclip.rs`, `layouts.rs`).
#[allow(clippy::too_many_arguments)]
pub fn placed_on_rows(
    m: &LoraModule,
    mi: usize,
    weight: String,
    fits: bool,
    expected: Vec<usize>,
    found: Vec<usize>,
    dtype: crate::dtype::Dtype,
    rows: Option<RowSlice>,
) -> Result<Placement, Unmatched> {
    if !fits {
        return Err(Unmatched::ShapeMismatch {
            module: m.name.clone(),
            tensor: weight,
            expected,
            found,
        });
    }
    if !crate::dtype::is_float_compute(dtype) {
        return Err(Unmatched::NotFloat {
            module: m.name.clone(),
            tensor: weight,
            dtype: crate::dtype::name(dtype),
        });
    }
    Ok(Placement {
        module: mi,
        weight,
        bias: None,
        rows,
        part: None,
    })
}

impl std::fmt::Display for Unmatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmatched::NoGgufName {
                module,
                architecture,
            } => write!(f, "`{module}`: no GGUF tensor name for it ({architecture})"),
            Unmatched::NotFound { module, expected } => {
                write!(f, "`{module}`: no base tensor `{expected}`")
            }
            Unmatched::ShapeMismatch {
                module,
                tensor,
                expected,
                found,
            } => {
                write!(f, "`{module}`: base tensor `{tensor}` has shape {found:?}, the adapter needs {expected:?}")
            }
            Unmatched::Ambiguous { module, candidates } => {
                write!(
                    f,
                    "`{module}`: ambiguous, matches {}",
                    candidates.join(", ")
                )
            }
            Unmatched::NotFloat {
                module,
                tensor,
                dtype,
            } => {
                write!(f, "`{module}`: base tensor `{tensor}` is {dtype}, lorakit merges only into F32/F16/BF16/F64")
            }
            Unmatched::OtherComponent {
                module,
                component,
                candidates,
                owners,
            } => {
                let found: Vec<String> = candidates
                    .iter()
                    .zip(owners)
                    .map(|(c, o)| format!("`{c}` belongs to {o}"))
                    .collect();
                write!(
                    f,
                    "`{module}`: {component}; the base's match {}",
                    found.join(", ")
                )
            }
            Unmatched::UnknownOrder {
                module,
                tensor,
                why,
            }
            | Unmatched::WouldNotLoad {
                module,
                tensor,
                why,
            } => {
                write!(f, "`{module}`: base tensor `{tensor}`: {why}")
            }
        }
    }
}

/// A module placed on a base tensor.
#[derive(Debug, Clone)]
pub struct Placement {
    pub module: usize,
    /// Base weight tensor.
    pub weight: String,
    /// Base bias tensor (when the module has a `lora_B` bias).
    pub bias: Option<String>,
    /// The rows of `weight` the module updates (q, k or v of a fused `in_proj_weight`); `None`:
    /// the whole tensor.
    pub rows: Option<RowSlice>,
    /// The rows of the module's own ΔW this tensor receives, in the tensor's row order (one of
    /// diffusers' split `to_q`/`to_k`/`to_v` of a module on BFL Flux's fused `img_attn.qkv`, or
    /// the final adaLN's halves swapped, [`super::layouts`]); `None`: all of them, in order. A
    /// split module has one placement per split tensor.
    pub part: Option<Part>,
}

impl Placement {
    /// Whether the module's ΔW is the whole tensor, row for row: no [`RowSlice`] of a fused
    /// tensor and no [`Part`] (a split or reordered module). Code that reads a module's base
    /// weight as its own `[out, in]` (DoRA norms, PiSSA's residual) needs this.
    pub fn whole_in_order(&self) -> bool {
        self.rows.is_none() && self.part.is_none()
    }

    /// Where the module lands, for a message: `tensor` or `tensor (rows …)`.
    pub fn describe(&self) -> String {
        match (&self.rows, &self.part) {
            (Some(r), _) => format!("`{}` (rows {}..{})", self.weight, r.offset, r.end()),
            (None, Some(p)) => format!("`{}` (the module's {p})", self.weight),
            (None, None) => format!("`{}`", self.weight),
        }
    }
}

/// Rows of a module's ΔW, gathered in order to make the rows of one base tensor: `[(B·A)[s] for
/// s in slices]` concatenated, `= B[s…]·A`. One slice is a split tensor's share of a fused
/// module; two halves in the other order are BFL Flux's `final_layer.adaLN_modulation.1` (shift
/// rows, then scale) on diffusers' `norm_out.linear` (scale, then shift) and back, which
/// diffusers' `swap_scale_shift` (`loaders/lora_conversion_utils.py` 0.42.1, applied to
/// `lora_up` only) and ComfyUI's `flux_to_diffusers` (`comfy/utils.py`, the weight function of
/// a patch) do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part(pub Vec<RowSlice>);

impl Part {
    /// The module's `out` rows with their two halves swapped; `None` for an odd `out`.
    pub fn halves_swapped(out: usize) -> Option<Part> {
        let h = out / 2;
        (out.is_multiple_of(2) && h > 0).then(|| {
            Part(vec![
                RowSlice { offset: h, len: h },
                RowSlice { offset: 0, len: h },
            ])
        })
    }

    /// Rows the tensor receives (the sum of the slices).
    pub fn rows(&self) -> usize {
        self.0.iter().fold(0usize, |n, s| n.saturating_add(s.len))
    }

    /// One past the last module row any slice reads.
    pub fn end(&self) -> usize {
        self.0.iter().map(|s| s.end()).max().unwrap_or(0)
    }

    /// The slices' rows of a row-major matrix of `width` columns (`B`, or a dense ΔW), in the
    /// part's order. Panics if a slice is past `m`'s rows (checked when the plan was made).
    pub fn gather<T: Copy>(&self, m: &[T], width: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(self.rows().saturating_mul(width));
        for s in &self.0 {
            out.extend_from_slice(&m[s.offset * width..s.end() * width]);
        }
        out
    }
}

impl From<RowSlice> for Part {
    fn from(s: RowSlice) -> Part {
        Part(vec![s])
    }
}

impl std::fmt::Display for Part {
    /// `rows 4..8` or `rows 4..8, 0..4`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s: Vec<String> = self
            .0
            .iter()
            .map(|s| format!("{}..{}", s.offset, s.end()))
            .collect();
        write!(f, "rows {}", s.join(", "))
    }
}

/// Rows `[offset, offset + len)` along the first axis of a base tensor: the part of it one
/// module updates, whose `[len, ·]` shape is the module's `[out, in]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RowSlice {
    pub offset: usize,
    pub len: usize,
}

impl RowSlice {
    /// One past the last row (saturating: a hostile offset never wraps).
    pub fn end(self) -> usize {
        self.offset.saturating_add(self.len)
    }

    /// Whether two targets on one tensor share a row (`None`: the whole tensor).
    pub fn overlap(a: Option<Self>, b: Option<Self>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => a.offset < b.end() && b.offset < a.end(),
            _ => true,
        }
    }
}

/// Where each module and full tensor of an adapter goes in a base.
#[derive(Debug, Clone, Default)]
pub struct Resolution {
    pub modules: Vec<Placement>,
    /// (index into `full_tensors`, base tensor name).
    pub full: Vec<(usize, String)>,
    pub unmatched: Vec<Unmatched>,
}

impl Resolution {
    /// Records one layout's answer for a module: its placements, or why it has none. `false`
    /// (nothing recorded) where the layout had no answer and the next one is asked.
    pub(crate) fn record(
        &mut self,
        answer: Option<Result<impl IntoIterator<Item = Placement>, Unmatched>>,
    ) -> bool {
        match answer {
            Some(Ok(ps)) => self.modules.extend(ps),
            Some(Err(u)) => self.unmatched.push(u),
            None => return false,
        }
        true
    }
}

/// Shape the base must store for `m` (a norm layer's is 1-D; for the W0-dependent OFT and IA3
/// the side the file does not give is 0, see [`fits_base_dependent`]).
pub fn expected_shape(m: &LoraModule) -> Vec<usize> {
    if matches!(m.factors, crate::adapter::algo::Factors::Norm { .. }) {
        return vec![m.out_features];
    }
    match &m.kind {
        ModuleKind::Conv { kernel } => {
            let mut s = vec![
                m.out_features,
                m.in_features / kernel.iter().product::<usize>().max(1),
            ];
            s.extend(kernel);
            s
        }
        _ if m.base_transposed => vec![m.in_features, m.out_features],
        _ => vec![m.out_features, m.in_features],
    }
}

/// A part of a diffusion model, as a kohya prefix or a base checkpoint's root names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The UNet, MMDiT or Flux transformer.
    Denoiser,
    /// The n-th text encoder (1-based), as `lora_te{n}_` counts them.
    TextEncoder(u8),
    /// A T5 encoder stored under its own name (`text_encoders.t5xxl.`): which `lora_te{n}_` it is
    /// depends on the CLIP encoders beside it ([`BaseComponents`]).
    T5,
}

impl Component {
    fn describe(self) -> String {
        match self {
            Component::Denoiser => "the denoiser (UNet or transformer)".to_owned(),
            Component::TextEncoder(1) => "the first text encoder".to_owned(),
            Component::TextEncoder(2) => "the second text encoder".to_owned(),
            Component::TextEncoder(3) => "the third text encoder".to_owned(),
            Component::TextEncoder(n) => format!("text encoder {n}"),
            Component::T5 => "the T5 text encoder".to_owned(),
        }
    }
}

/// The component a kohya prefix names, after ComfyUI `comfy/lora.py` @41444b5:
/// `model_lora_keys_unet` maps `lora_unet_`, `lora_prior_unet_`, `lycoris_` and (SD3, Flux)
/// `lora_transformer_` onto `diffusion_model.` keys only; `model_lora_keys_clip` maps `lora_te_`
/// and `lora_te1_` onto `clip_l` / `clip_h` (and `lora_te_` onto `clip_g` when no `clip_l` is
/// present: the SDXL refiner, whose only encoder lorakit counts as the first), `lora_te2_` onto
/// `clip_g` beside `clip_l` (SDXL, SD3), `lora_te{n}_` onto `t5xxl` (see [`BaseComponents`]).
pub fn prefix_component(prefix: &str) -> Option<Component> {
    match prefix {
        "lora_unet" | "lora_prior_unet" | "lora_transformer" | "lycoris" => {
            Some(Component::Denoiser)
        }
        "lora_te" | "lora_te1" => Some(Component::TextEncoder(1)),
        "lora_te2" => Some(Component::TextEncoder(2)),
        "lora_te3" => Some(Component::TextEncoder(3)),
        _ => None,
    }
}

/// Roots under which a base checkpoint stores one component: (root, component, what it holds).
/// Single files: ComfyUI `comfy/supported_models.py` (read at 005e370; the SD/SDXL key maps
/// are unchanged since) `SD15.process_clip_state_dict` (`cond_stage_model.` → `clip_l.`),
/// `SD20` (`cond_stage_model.model.` → `clip_h.`), `SDXLRefiner` (`conditioner.embedders.0.model.`
/// → `clip_g.`), `SDXL` (`conditioner.embedders.0.transformer.text_model` → `clip_l.…`,
/// `conditioner.embedders.1.model.` → `clip_g.`, OpenCLIP names); SD3 and Flux files keep
/// ComfyUI's own names under `text_encoders.` (`text_encoder_key_prefix`; the `clip_l`/`clip_g`/
/// `t5xxl` names `model_lora_keys_clip` reads), every denoiser `model.diffusion_model.`.
/// diffusers-style names (`unet.`, `transformer.`, `text_encoder{,_2,_3}.`) count encoders as
/// the pipeline does and as ComfyUI maps diffusers LoRAs (`text_encoder_2.` ↔ `lora_te2_`).
pub const ROOTS: &[(&str, Component, &str)] = {
    use Component::{Denoiser as D, TextEncoder as Te, T5};
    &[
        ("model.diffusion_model.", D, "single-file denoiser"),
        ("diffusion_model.", D, "denoiser"),
        ("unet.", D, "diffusers UNet"),
        ("transformer.", D, "diffusers transformer"),
        ("prior.", D, "diffusers prior"),
        ("cond_stage_model.", Te(1), "SD1.x CLIP-L / SD2 OpenCLIP-H"),
        (
            "conditioner.embedders.0.",
            Te(1),
            "SDXL CLIP-L / refiner OpenCLIP-G",
        ),
        ("conditioner.embedders.1.", Te(2), "SDXL OpenCLIP-G"),
        ("text_encoders.clip_l.", Te(1), "CLIP-L"),
        ("text_encoders.clip_g.", Te(2), "CLIP-G"),
        ("text_encoders.t5xxl.", T5, "T5-XXL"),
        ("text_encoder.", Te(1), "diffusers text_encoder"),
        ("text_encoder_2.", Te(2), "diffusers text_encoder_2"),
        ("text_encoder_3.", Te(3), "diffusers text_encoder_3"),
    ]
};

/// The root of [`ROOTS`] a dotted name lies under.
pub(super) fn root_of(name: &str) -> Option<&'static (&'static str, Component, &'static str)> {
    ROOTS.iter().find(|(r, _, _)| name.starts_with(r))
}

/// Which components a base holds, for keeping each prefix's matches inside its own component.
/// Active only when the base has a text-encoder root (a base without one has nothing a
/// text-encoder prefix could be confused with, and `transformer.` is also GPT-2's root).
#[derive(Debug, Clone, Default)]
pub struct BaseComponents {
    active: bool,
    /// The `lora_te{n}_` a `text_encoders.t5xxl.` encoder answers to (ComfyUI
    /// `model_lora_keys_clip` @41444b5: `t5_index` is one more than the CLIP encoders present,
    /// and with `clip_l` alone both 2 and 3 — OneTrainer's Flux files).
    t5: Vec<u8>,
}

impl BaseComponents {
    /// Reads the roots of `names`.
    pub fn of(names: &[&str]) -> Self {
        let has = |root: &str| names.iter().any(|n| n.starts_with(root));
        let active = ROOTS
            .iter()
            .any(|(r, c, _)| *c != Component::Denoiser && has(r));
        let (l, g) = (has("text_encoders.clip_l."), has("text_encoders.clip_g."));
        let t5 = match (l, g) {
            (true, false) => vec![2, 3],
            _ => vec![1 + l as u8 + g as u8],
        };
        BaseComponents { active, t5 }
    }

    /// Whether a module of component `want` may land under a root of component `root`.
    pub(super) fn admits(&self, want: Component, root: Component) -> bool {
        match (want, root) {
            (Component::TextEncoder(n), Component::T5) => self.t5.contains(&n),
            (a, b) => a == b,
        }
    }

    /// Base tensors for a dotted name under one component's root in another layout's root of
    /// the same component: `text_encoders.clip_l.transformer.text_model.…` (ComfyUI's names, as
    /// `model_lora_keys_clip` @41444b5 maps `text_encoders.{key}`) onto an SDXL single file's
    /// `conditioner.embedders.0.transformer.text_model.…`, diffusers' `text_encoder.text_model.…`
    /// likewise. The names below the roots must agree on a dotted suffix. Empty on an inactive
    /// base or a name under no root.
    pub(super) fn across_roots<'a>(&self, want: &str, names: &[&'a str]) -> Vec<&'a str> {
        // Text encoders only: denoiser layouts differ below their roots (`input_blocks` and
        // `down_blocks`), so a suffix there would be a guess.
        let Some((aroot, acomp, _)) =
            root_of(want).filter(|(_, c, _)| self.active && *c != Component::Denoiser)
        else {
            return Vec::new();
        };
        let rest = &want[aroot.len()..];
        names
            .iter()
            .filter(|n| {
                let Some((broot, bcomp, _)) = root_of(n) else {
                    return false;
                };
                broot != aroot
                    && self.admits(*acomp, *bcomp)
                    && dotted_suffix_agrees(&n[broot.len()..], rest)
            })
            .copied()
            .collect()
    }

    /// Keeps the `candidates` of kohya module `module` that lie under a root of its prefix's
    /// component; when there were some and none is left, the module is
    /// [`Unmatched::OtherComponent`]. Unknown prefixes and inactive bases keep every candidate.
    pub fn filter<'a>(
        &self,
        module: &str,
        candidates: Vec<&'a str>,
    ) -> Result<Vec<&'a str>, Unmatched> {
        let Some((prefix, want)) =
            kohya::split_prefix(module).and_then(|(p, _)| Some((p, prefix_component(p)?)))
        else {
            return Ok(candidates);
        };
        if !self.active || candidates.is_empty() {
            return Ok(candidates);
        }
        let kept: Vec<&str> = candidates
            .iter()
            .copied()
            .filter(|c| root_of(c).is_some_and(|(_, root, _)| self.admits(want, *root)))
            .collect();
        if !kept.is_empty() {
            return Ok(kept);
        }
        let owners = candidates
            .iter()
            .map(|c| match root_of(c) {
                Some((r, comp, what)) => format!("{} (`{r}`, {what})", comp.describe()),
                None => "no text encoder or denoiser (outside their roots)".to_owned(),
            })
            .collect();
        Err(Unmatched::OtherComponent {
            module: module.to_owned(),
            component: format!("`{prefix}_` is {}", want.describe()),
            candidates: candidates.iter().map(|c| c.to_string()).collect(),
            owners,
        })
    }
}
