//! The adapter model itself: [`Adapter`], its [`LoraModule`]s and [`FullTensor`]s, and what is
//! computed from them alone (values read from the adapter's own file, `ΔW` per module, finiteness,
//! parameter counts). See [`super`] for what the model is; what needs a format's code (opening
//! a file, the files a read touches, the PEFT config's rules) is in `adapter/mod.rs`.
//!
//! Must not depend on a format's reader or writer, or on an operation: it sits below them.

use super::algo::{self, Factors};
use super::data::{Data, Values};
use super::formats::format::Format;
use super::formats::lycoris::keys::Naming;
use super::formats::peft::config::CONFIG_NAME;
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::PathBuf;
use std::sync::Arc;

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

impl ModuleKind {
    /// The kind of a module whose weight (or a factor of it) is `[out, in, k…]`: linear with
    /// two dimensions, a convolution with kernel `k…` with more.
    pub fn of_shape(shape: &[usize]) -> ModuleKind {
        if shape.len() > 2 {
            ModuleKind::Conv {
                kernel: shape[2..].to_vec(),
            }
        } else {
            ModuleKind::Linear
        }
    }
}

/// One adapted module.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// Module path in the base model with dots (`model.layers.0.self_attn.q_proj`). For kohya
    /// files read without a base, the underscored kohya name until [`mapping`](crate::adapter::mapping) resolves it.
    pub name: String,
    pub kind: ModuleKind,
    pub rank: usize,
    pub alpha: f64,
    /// `ΔW = scale · B·A`: `alpha / rank`, or `alpha / √rank` with rsLoRA.
    pub scale: f64,
    /// `d` (output features) and `k_flat` (input features × kernel area).
    pub out_features: usize,
    pub in_features: usize,
    /// The factors, by algorithm ([`Factors::Lora`]: `A` canonical `rank × in_features`, `B`
    /// `out_features × rank`).
    pub factors: Factors,
    /// The base stores this weight transposed relative to `[out, in]`: GPT-2 Conv1D
    /// (`fan_in_fan_out`) and embeddings (`[vocab, dim]` with `ΔW = (B·A)ᵀ`).
    pub base_transposed: bool,
    /// DoRA magnitude: one per output feature (PEFT), or LyCORIS' `dora_scale` (per output
    /// feature or per input channel, see [`DoraRule`]).
    pub dora_magnitude: Option<Data>,
    /// How the DoRA magnitude is applied.
    pub dora_rule: DoraRule,
    /// `lora_B.bias` (PEFT `lora_bias`), added as `scale · bias` to the base bias.
    pub bias: Option<Data>,
}

impl LoraModule {
    /// A module on a Linear layer at scale 1 with no DoRA magnitude or bias (PEFT's DoRA rule):
    /// the form of PEFT tuners whose own scaling is folded into the factors as they are read,
    /// or that have none (VeRA, UniLoRA, HiRA, …). `alpha` is only recorded.
    pub fn peft_linear(
        name: String,
        (out_features, in_features, rank): (usize, usize, usize),
        alpha: f64,
        factors: Factors,
        base_transposed: bool,
    ) -> LoraModule {
        LoraModule {
            name,
            kind: ModuleKind::Linear,
            rank,
            alpha,
            scale: 1.0,
            out_features,
            in_features,
            factors,
            base_transposed,
            dora_magnitude: None,
            dora_rule: DoraRule::Peft,
            bias: None,
        }
    }

    /// A plain LoRA module on a Linear layer at scale 1 (`alpha = r`), with no DoRA or bias: the
    /// form of tuners whose own scaling is folded into the factors as they are read (PEFT's
    /// VB-LoRA, DeLoRA).
    pub fn linear_unit_scale(
        name: String,
        dims: (usize, usize, usize),
        (a, b): (Data, Data),
        base_transposed: bool,
    ) -> LoraModule {
        let alpha = dims.2 as f64;
        Self::peft_linear(name, dims, alpha, Factors::Lora { a, b }, base_transposed)
    }
}

/// The two weight-decomposition rules in the wild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DoraRule {
    /// PEFT `DoraLinearVariant.merge_unsafe`: `W' = m / ‖W0 + ΔW‖ ⊙ (W + ΔW)`, the norm per
    /// output feature.
    #[default]
    Peft,
    /// LyCORIS `functional/general.py` `_weight_decompose` (`dora_scale`):
    /// `W' = (W0 + ΔW) · s / (‖W0 + ΔW‖ + ε)`, ε = f32 machine epsilon, the norm per output row
    /// (`wd_on_out`, `dora_scale` shaped `[out, 1, …]`) or per input channel over the output and
    /// kernel axes (`dora_scale` shaped `[1, in, …]`, the only layout ComfyUI's
    /// `weight_decompose` handles).
    Lycoris { per_input: bool },
}

/// A full tensor that replaces a base tensor (`modules_to_save`, trained biases, saved
/// embedding layers).
#[derive(Debug, Clone)]
pub struct FullTensor {
    /// Base tensor name (`lm_head.weight`).
    pub name: String,
    pub data: Data,
    pub shape: Vec<usize>,
    /// `Some`: the tensor holds only these rows of the base tensor, in this order, and the
    /// others stay: PEFT's trainable tokens (`trainable_token_indices`,
    /// `tuners/trainable_tokens/layer.py`), merged by `index_copy` of the deltas into the
    /// embedding. `None`: it replaces the whole base tensor.
    pub rows: Option<Vec<usize>>,
}

impl FullTensor {
    /// A whole tensor `name` of the base replaced by the adapter file's stored tensor `key`.
    pub fn stored_whole(name: String, key: &str, shape: &[usize]) -> Self {
        FullTensor {
            name,
            data: Data::Stored {
                key: key.to_owned(),
                transpose: false,
            },
            shape: shape.to_vec(),
            rows: None,
        }
    }

    /// Whether this tensor can stand in for a base tensor of shape `base`: the same shape, or
    /// for [`Self::rows`] the same row length and every row index inside the base.
    pub fn fits(&self, base: &[usize]) -> bool {
        match &self.rows {
            None => base == self.shape.as_slice(),
            Some(rows) => {
                base.len() == self.shape.len()
                    && base[1..] == self.shape[1..]
                    && rows.iter().all(|&r| r < base[0])
            }
        }
    }
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
    /// How a single-file adapter spells its factors (sorted, each once); empty for PEFT folders
    /// and adapters lorakit built.
    pub namings: Vec<Naming>,
    /// PEFT modules whose tensors the file holds but its config does not select
    /// ([`super::formats::peft::targets`]): PEFT's loader drops them without a word. [`Adapter::open`]
    /// refuses such an adapter; [`Adapter::open_for_check`] keeps them for `check` to report.
    pub untargeted: Vec<String>,
    /// Textual-inversion embeddings bundled in a kohya file (`bundle_emb.{name}.{key}`, the
    /// A1111 bundle format HCP-Diffusion's `pack_to_bundle_lora` and sd-scripts users write):
    /// their keys. No weight update: A1111 loads them as embeddings, ComfyUI skips them ("lora
    /// key not loaded"), diffusers refuses the file; lorakit's operations leave them out, saying so.
    pub bundled_embeddings: Vec<String>,
}

impl Adapter {
    /// Whether full tensor `f` is the copy of the base weight PEFT saves beside a LoRA on an
    /// embedding or `lm_head` (`….base_layer.weight`, `EMBEDDING_LAYER_NAMES` in peft 0.21.2
    /// `utils/constants.py`), not a `modules_to_save` replacement: llama.cpp's converter skips
    /// it, and a GGUF target takes the base's own tensor.
    pub fn is_saved_base_copy(&self, f: &FullTensor) -> bool {
        self.modules.iter().any(|m| {
            (m.kind == ModuleKind::Embedding || m.name.rsplit('.').next() == Some("lm_head"))
                && f.name == format!("{}.weight", m.name)
        })
    }

    /// An adapter of `modules` and nothing else: no source file, full tensors, base model,
    /// config, metadata or namings, no rsLoRA or DoRA. Readers and operations set what they
    /// have on top (`Adapter { config, ..Adapter::of_modules(..) }`).
    pub fn of_modules(format: Format, path: PathBuf, modules: Vec<LoraModule>) -> Adapter {
        Adapter {
            format,
            path,
            source: None,
            modules,
            full_tensors: Vec::new(),
            base_model: None,
            use_rslora: false,
            use_dora: false,
            modules_to_save: Vec::new(),
            config: None,
            metadata: Vec::new(),
            namings: Vec::new(),
            untargeted: Vec::new(),
            bundled_embeddings: Vec::new(),
        }
    }

    /// Canonical values of every factor of `m`, in [`Factors::data`] order (what
    /// [`algo::Loaded`] takes).
    fn factor_values(&self, m: &LoraModule) -> InputResult<Vec<Arc<Vec<f32>>>> {
        m.factors
            .data()
            .into_iter()
            .map(|d| self.values(d))
            .collect()
    }

    /// The values of full tensor `fi` as the whole base tensor they replace: its own values, or
    /// for a row tensor the base's (`base`, called only then) with those rows overwritten.
    pub fn full_values(
        &self,
        fi: usize,
        base: impl FnOnce() -> InputResult<Vec<f32>>,
    ) -> InputResult<Arc<Vec<f32>>> {
        let f = &self.full_tensors[fi];
        let vals = self.values(&f.data)?;
        let Some(rows) = &f.rows else {
            return Ok(vals);
        };
        let mut whole = base()?;
        let width = f.shape[1..].iter().product::<usize>();
        for (i, &r) in rows.iter().enumerate() {
            whole[r * width..(r + 1) * width].copy_from_slice(&vals[i * width..(i + 1) * width]);
        }
        Ok(Arc::new(whole))
    }

    /// The file that names this adapter in config-level errors: its `adapter_config.json` for
    /// a folder, else the file itself.
    pub fn config_file(&self) -> PathBuf {
        if self.path.is_dir() {
            self.path.join(CONFIG_NAME)
        } else {
            self.path.clone()
        }
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
                    v = super::data::transpose(&v, r, c);
                }
                Ok(Arc::new(v))
            }
        }
    }

    /// The canonical values of factor `data` of module `module` times `s`, for a format that
    /// folds a scale it cannot state into a factor (kohya's whole LoKr `w1`, mlx-lm's `lora_b`);
    /// an error naming the module and `factor` where a product overflows f32.
    pub fn scaled_values(
        &self,
        data: &Data,
        s: f64,
        module: &str,
        factor: &str,
    ) -> InputResult<Vec<f32>> {
        let scaled: Vec<f32> = self
            .values(data)?
            .iter()
            .map(|&x| (x as f64 * s) as f32)
            .collect();
        if scaled.iter().any(|x| !x.is_finite()) {
            return Err(InputError::invalid(
                &self.path,
                format!("module `{module}`: {factor} times the scale {s} overflows f32"),
            ));
        }
        Ok(scaled)
    }

    /// Canonical `(B, A)` of a plain LoRA module (`B`: d×r, `A`: r×k); other algorithms are an
    /// error naming the module (they have no such factors).
    pub fn factors(&self, m: &LoraModule) -> InputResult<(Values, Values)> {
        match m.factors.lora() {
            Some((a, b)) => Ok((self.values(b)?, self.values(a)?)),
            None => Err(InputError::invalid(
                &self.path,
                format!(
                    "module `{}` is {}, not plain LoRA; this operation needs LoRA factors",
                    m.name,
                    m.factors.algo()
                ),
            )),
        }
    }

    /// `ΔW` of a module (canonical `out_features × in_features`, scale included), rebuilt in
    /// f64 and rounded once to f32 ([`algo::delta`]).
    pub fn delta(&self, m: &LoraModule) -> InputResult<Vec<f32>> {
        self.delta_scaled(m, m.scale)
    }

    /// `ΔW / scale` of a module: what a merge term multiplies by its own scale and weight.
    pub fn delta_unscaled(&self, m: &LoraModule) -> InputResult<Vec<f32>> {
        self.delta_scaled(m, 1.0)
    }

    /// `ΔW = f(W0)` of a module whose update depends on the base weight
    /// ([`Factors::needs_base`]), from the canonical base `w0` (d×k; `conv` when the base is a
    /// conv weight), with LyCORIS' `multiplier` ([`algo::delta_from_base`]).
    pub fn delta_from_base(
        &self,
        m: &LoraModule,
        w0: &[f32],
        (d, k): (usize, usize),
        conv: bool,
        multiplier: f64,
    ) -> InputResult<Vec<f32>> {
        let values = self.factor_values(m)?;
        let n = values.first().map_or(0, |v| v.len());
        let fits = match m.factors {
            Factors::Ia3 { on_input: true, .. } => n > 0 && k.is_multiple_of(n),
            Factors::Glora { .. } => d == m.out_features && k == m.in_features,
            Factors::PeftOft {
                block_share: true,
                block_size,
                ..
            } => k.is_multiple_of(block_size),
            Factors::PeftOft { .. } | Factors::Hra { .. } => k == m.in_features,
            // VeRA slices its shared `vera_A` [r, widest input] to the base's input.
            Factors::Vera { .. } => d == m.out_features && (1..=m.in_features).contains(&k),
            Factors::PeftBoft { .. } | Factors::Osf { .. } => {
                d == m.out_features && k == m.in_features
            }
            // FRoD's file gives the input width alone.
            Factors::Frod(_) => k == m.in_features,
            // A GLoRA module of per-row or scalar terms gives no input width (0), of scalars
            // alone no output width either.
            Factors::Hadamard { .. } => {
                (m.out_features == 0 || d == m.out_features)
                    && (m.in_features == 0 || k == m.in_features)
            }
            Factors::Miss { .. } | Factors::Shira { .. } | Factors::RandLora { .. } => {
                algo::peft_tuner_fits(&m.factors, (m.out_features, m.in_features), (d, k))
                    == Some(true)
            }
            Factors::OnBase { .. } => {
                algo::on_base_fits(&m.factors, (m.out_features, m.in_features), (d, k))
                    == Some(true)
            }
            _ => d == m.out_features,
        };
        if !fits || w0.len() != d * k {
            return Err(InputError::invalid(
                &self.path,
                format!(
                    "module `{}`: the base weight ({d}×{k}) does not fit this {} module",
                    m.name,
                    m.factors.algo()
                ),
            ));
        }
        if let Some(why) = algo::on_base_misfit(&m.factors, w0, (d, k)) {
            return Err(InputError::invalid(
                &self.path,
                format!("module `{}`: {why}", m.name),
            ));
        }
        let loaded = algo::Loaded {
            factors: &m.factors,
            values,
        };
        // GLoRA's scale (alpha / r) goes with the multiplier (OFT, IA3: scale 1).
        let s = multiplier * m.scale;
        Ok(algo::peft_tuner_delta(&loaded, w0, (d, k), s)
            .or_else(|| algo::on_base_delta(&loaded, w0, (d, k), s))
            .unwrap_or_else(|| algo::delta_from_base(&loaded, w0, (d, k), conv, s)))
    }

    fn delta_scaled(&self, m: &LoraModule, scale: f64) -> InputResult<Vec<f32>> {
        if m.factors.needs_base() {
            return Err(InputError::invalid(
                &self.path,
                format!(
                    "module `{}` is {}: its update depends on the base weight (W' = f(W0)), so it has no ΔW of its own; merge it into a base instead",
                    m.name,
                    m.factors.algo()
                ),
            ));
        }
        let (d, k) = (m.out_features as u128, m.in_features as u128);
        crate::io::memory::check_fits(
            &self.path,
            || format!("module `{}`: its dense ΔW ({d}×{k})", m.name),
            d * k * 4,
        )?;
        let values = self.factor_values(m)?;
        let kk = match &m.kind {
            ModuleKind::Conv { kernel } => kernel.iter().product::<usize>().max(1),
            _ => 1,
        };
        let loaded = algo::Loaded {
            factors: &m.factors,
            values,
        };
        Ok(algo::delta(
            &loaded,
            m.out_features,
            m.in_features,
            m.rank,
            kk,
            scale,
        ))
    }

    /// Number of stored values of a tensor.
    pub fn numel(&self, d: &Data) -> usize {
        match d {
            Data::Owned(v) => v.len(),
            Data::Stored { key, .. } => self
                .source
                .as_ref()
                .and_then(|s| s.info(key))
                .map_or(0, |i| i.numel()),
        }
    }

    /// Replaces stored data by owned values, so the adapter no longer needs its file.
    pub fn load_all(&mut self) -> InputResult<()> {
        let mut modules = std::mem::take(&mut self.modules);
        let loaded: InputResult<()> = (|| {
            for m in modules.iter_mut() {
                for d in m.factors.data_mut() {
                    *d = Data::Owned(self.values(d)?);
                }
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

    /// Refuses an adapter holding a NaN or ±∞ anywhere it would be applied (factors, DoRA
    /// magnitudes, biases, full tensors, scales), naming the file and the tensor. Stored
    /// tensors are scanned in their stored dtype ([`crate::dtype::first_non_finite`]) without
    /// decoding; the operations that read values refuse the same tensors as they read them
    /// ([`Adapter::values`]), this is for the ones that do not (`check`).
    pub fn check_finite(&self) -> InputResult<()> {
        for m in &self.modules {
            if !m.scale.is_finite() || !m.alpha.is_finite() {
                return Err(InputError::invalid(
                    self.config_file(),
                    format!(
                        "module `{}`: alpha {} gives scale {}, which is not finite",
                        m.name, m.alpha, m.scale
                    ),
                ));
            }
            let mut data = m.factors.data();
            data.extend(m.dora_magnitude.as_ref());
            data.extend(m.bias.as_ref());
            for d in data {
                self.data_finite(d, &m.name)?;
            }
        }
        for f in &self.full_tensors {
            self.data_finite(&f.data, &f.name)?;
        }
        Ok(())
    }

    /// The keys of the source file's adapter tensors: every tensor but the bundled embeddings
    /// ([`Adapter::bundled_embeddings`]), which loaders tell by their own rules.
    pub fn adapter_keys(&self) -> Vec<&str> {
        let bundled = |k: &str| self.bundled_embeddings.iter().any(|b| b == k);
        self.source
            .iter()
            .flat_map(|f| f.tensors().iter().map(|t| t.name.as_str()))
            .filter(|k| !bundled(k))
            .collect()
    }

    /// [`Adapter::check_finite`] of every tensor of the source file, whatever reads it (an
    /// adapter whose factors lorakit does not read, [`Adapter::open_unread`]): integer tensors
    /// hold no NaN.
    pub fn check_source_finite(&self) -> InputResult<()> {
        let keys: Vec<&str> = self
            .source
            .iter()
            .flat_map(|s| s.tensors().iter().map(|t| t.name.as_str()))
            .collect();
        self.check_stored_finite(&keys)
    }

    /// [`Adapter::check_finite`] of the stored tensors `keys` of the source file.
    pub fn check_stored_finite(&self, keys: &[&str]) -> InputResult<()> {
        for &key in keys {
            let d = Data::Stored {
                key: key.to_owned(),
                transpose: false,
            };
            self.data_finite(&d, key)?;
        }
        Ok(())
    }

    /// [`Adapter::check_finite`] of one tensor; `owner` names an owned one (it has no key).
    fn data_finite(&self, data: &Data, owner: &str) -> InputResult<()> {
        match data {
            Data::Owned(v) => match v.iter().position(|x| !x.is_finite()) {
                Some(i) => Err(InputError::invalid(
                    &self.path,
                    format!("`{owner}`: value {} at flat index {i} is not finite", v[i]),
                )),
                None => Ok(()),
            },
            Data::Stored { key, .. } => {
                let Some(src) = self.source.as_ref() else {
                    return Ok(());
                };
                let view = src.view(key)?;
                match crate::dtype::first_non_finite(view.dtype, view.data) {
                    Some(i) => Err(InputError::invalid(
                        src.path(),
                        format!(
                            "tensor `{key}`: value {} at flat index {i} is not finite",
                            crate::dtype::non_finite_reason(view.dtype, view.data, i)
                        ),
                    )),
                    None => Ok(()),
                }
            }
        }
    }

    /// Number of adapter parameters (factors, magnitudes, biases, full tensors).
    pub fn parameter_count(&self) -> usize {
        let m: usize = self
            .modules
            .iter()
            .map(|m| {
                m.factors
                    .data()
                    .into_iter()
                    .map(|d| self.numel(d))
                    .sum::<usize>()
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
