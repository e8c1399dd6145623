//! The one adapter model every format is read into and written from.
//!
//! An [`Adapter`] is a list of [`LoraModule`]s — per target module the factors `A` (r×k) and `B`
//! (d×r) with `ΔW = scale · B·A`, the rank, alpha and scale, the module kind (linear, embedding,
//! conv), whether the base stores the weight transposed (`fan_in_fan_out`, embeddings), an
//! optional DoRA magnitude and an optional `lora_B` bias — plus full tensors that replace base
//! tensors (`modules_to_save`). Factors are held in canonical orientation:
//! `A` is `rank × k_flat`, `B` is `d × rank`, with `k_flat = in·kh·kw` for convolutions.
//!
//! Formats ([`formats::peft`], [`formats::kohya`]) only translate names and layouts; every
//! command works on this model. [`mapping`] resolves module names onto a base checkpoint.

pub mod formats;
pub mod mapping;

use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file format an adapter was read from or is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Hugging Face PEFT: `adapter_model.safetensors` + `adapter_config.json`.
    Peft,
    /// kohya-ss sd-scripts: `lora_unet_…/lora_te_….lora_down.weight`, `.lora_up.weight`, `.alpha`.
    Kohya,
}

/// What kind of layer a module adapts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    Linear,
    Embedding,
    /// Convolution with the given kernel size (`[kh, kw]`, `[1, 1]` for pointwise).
    Conv {
        kernel: Vec<usize>,
    },
}

/// The one spelling of a module kind in reports: `linear`, `embedding`, `conv3x3`.
impl std::fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleKind::Linear => f.write_str("linear"),
            ModuleKind::Embedding => f.write_str("embedding"),
            ModuleKind::Conv { kernel } => {
                f.write_str("conv")?;
                for (i, k) in kernel.iter().enumerate() {
                    if i > 0 {
                        f.write_str("x")?;
                    }
                    write!(f, "{k}")?;
                }
                Ok(())
            }
        }
    }
}

/// Shared canonical values of a factor.
pub type Values = Arc<Vec<f32>>;

/// Where a factor's values come from: a tensor of the adapter file, or memory.
#[derive(Debug, Clone)]
pub enum Data {
    /// A tensor of [`Adapter::source`], stored in the format's own layout; `transpose` says the
    /// stored 2-D matrix is the transpose of the canonical one (PEFT embeddings).
    Stored { key: String, transpose: bool },
    /// Canonical row-major values.
    Owned(Arc<Vec<f32>>),
}

/// One adapted module.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// Module path in the base model with dots (`model.layers.0.self_attn.q_proj`). For kohya
    /// files read without a base, the underscored kohya name until [`mapping`] resolves it.
    pub name: String,
    pub kind: ModuleKind,
    pub rank: usize,
    pub alpha: f64,
    /// `ΔW = scale · B·A`: `alpha / rank`, or `alpha / √rank` with rsLoRA.
    pub scale: f64,
    /// `d` (output features) and `k_flat` (input features × kernel area).
    pub out_features: usize,
    pub in_features: usize,
    /// `A`, canonical `rank × in_features`.
    pub a: Data,
    /// `B`, canonical `out_features × rank`.
    pub b: Data,
    /// The base stores this weight transposed relative to `[out, in]`: GPT-2 Conv1D
    /// (`fan_in_fan_out`) and embeddings (`[vocab, dim]` with `ΔW = (B·A)ᵀ`).
    pub base_transposed: bool,
    /// DoRA magnitude, one per output feature.
    pub dora_magnitude: Option<Data>,
    /// `lora_B.bias` (PEFT `lora_bias`), added as `scale · bias` to the base bias.
    pub bias: Option<Data>,
}

/// A full tensor that replaces a base tensor (`modules_to_save`, trained biases, saved
/// embedding layers).
#[derive(Debug, Clone)]
pub struct FullTensor {
    /// Base tensor name (`lm_head.weight`).
    pub name: String,
    pub data: Data,
    pub shape: Vec<usize>,
}

/// A LoRA adapter in the internal model.
#[derive(Debug)]
pub struct Adapter {
    pub format: Format,
    /// File or folder it was read from.
    pub path: PathBuf,
    /// The safetensors file holding stored factors.
    pub source: Option<SafetensorsFile>,
    pub modules: Vec<LoraModule>,
    pub full_tensors: Vec<FullTensor>,
    /// `base_model_name_or_path` when recorded.
    pub base_model: Option<String>,
    pub use_rslora: bool,
    pub use_dora: bool,
    /// `modules_to_save` as configured (names, not tensors).
    pub modules_to_save: Vec<String>,
    /// The PEFT config as read (kept to carry unknown fields through conversions).
    pub config: Option<serde_json::Value>,
    /// `__metadata__` of the adapter file.
    pub metadata: Vec<(String, String)>,
}

impl Adapter {
    /// Opens an adapter of any supported format (file or PEFT folder), detecting the format.
    pub fn open(path: impl AsRef<Path>) -> InputResult<Adapter> {
        formats::open(path.as_ref())
    }

    /// Every path reading this adapter touches (its folder or file, the tensor file, the
    /// config beside it), for [`crate::io::writer::check_writes`].
    pub fn input_paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.path.clone()];
        if let Some(src) = &self.source {
            v.push(src.path().to_path_buf());
        }
        if self.format == Format::Peft {
            if self.path.is_dir() {
                v.push(self.path.join(formats::peft::CONFIG_NAME));
            } else if let Some(p) = self.path.parent() {
                v.push(p.join(formats::peft::CONFIG_NAME));
            }
        }
        v
    }

    /// Canonical values of a factor.
    pub fn values(&self, data: &Data) -> InputResult<Arc<Vec<f32>>> {
        match data {
            Data::Owned(v) => Ok(v.clone()),
            Data::Stored { key, transpose } => {
                let src = self.source.as_ref().ok_or_else(|| {
                    InputError::invalid(
                        &self.path,
                        format!("tensor `{key}`: adapter has no backing file"),
                    )
                })?;
                let view = src.view(key)?;
                if !crate::dtype::is_float_compute(view.dtype) {
                    return Err(InputError::invalid(
                        src.path(),
                        format!(
                            "tensor `{key}`: dtype {} is not a float type",
                            crate::dtype::name(view.dtype)
                        ),
                    ));
                }
                let mut v = view.to_f32();
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(InputError::invalid(
                        src.path(),
                        format!(
                            "tensor `{key}`: value {} at flat index {i} is not finite",
                            v[i]
                        ),
                    ));
                }
                if *transpose {
                    let (r, c) = (view.shape[0], v.len() / view.shape[0].max(1));
                    v = self::transpose(&v, r, c);
                }
                Ok(Arc::new(v))
            }
        }
    }

    /// Canonical `(B, A)` of a module (`B`: d×r, `A`: r×k).
    pub fn factors(&self, m: &LoraModule) -> InputResult<(Values, Values)> {
        Ok((self.values(&m.b)?, self.values(&m.a)?))
    }

    /// Replaces stored data by owned values, so the adapter no longer needs its file.
    pub fn load_all(&mut self) -> InputResult<()> {
        let mut modules = std::mem::take(&mut self.modules);
        let loaded: InputResult<()> = (|| {
            for m in modules.iter_mut() {
                m.a = Data::Owned(self.values(&m.a)?);
                m.b = Data::Owned(self.values(&m.b)?);
                if let Some(d) = &m.dora_magnitude {
                    m.dora_magnitude = Some(Data::Owned(self.values(d)?));
                }
                if let Some(d) = &m.bias {
                    m.bias = Some(Data::Owned(self.values(d)?));
                }
            }
            Ok(())
        })();
        self.modules = modules;
        loaded?;
        let mut full = std::mem::take(&mut self.full_tensors);
        for f in full.iter_mut() {
            f.data = Data::Owned(self.values(&f.data)?);
        }
        self.full_tensors = full;
        Ok(())
    }

    /// Number of adapter parameters (factors, magnitudes, biases, full tensors).
    pub fn parameter_count(&self) -> usize {
        let m: usize = self
            .modules
            .iter()
            .map(|m| {
                m.rank * (m.in_features + m.out_features)
                    + m.dora_magnitude.as_ref().map_or(0, |_| m.out_features)
                    + m.bias.as_ref().map_or(0, |_| m.out_features)
            })
            .sum();
        m + self
            .full_tensors
            .iter()
            .map(|f| f.shape.iter().product::<usize>())
            .sum::<usize>()
    }

    pub fn module(&self, name: &str) -> Option<&LoraModule> {
        self.modules.iter().find(|m| m.name == name)
    }
}

/// PEFT's scale rule (`tuners/lora/layer.py` `update_layer`): `alpha/√r` with rsLoRA, else `alpha/r`.
pub fn scale_for(alpha: f64, rank: usize, rslora: bool) -> f64 {
    if rslora {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    }
}

/// Row-major transpose of an `r × c` matrix.
pub fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    out
}
