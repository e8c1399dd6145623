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
//!
//! Layers, lowest first: `data.rs` (where values live) → `algo/` (factors and `ΔW`) → `model.rs`
//! (the model) → `formats/`, `mapping/`, `convention.rs` → this file, the facade: re-exports and
//! what needs a format's code (opening a file, the files a read touches, the PEFT config's
//! rules). A child imports an item from the file that defines it, never through this file, so
//! no module here imports its parent.
//!
//! Must not know any file format's key names or layouts (those live in `formats/`, one file each)
//! nor any operation.

pub mod algo;
pub mod convention;
mod data;
pub mod formats;
pub mod mapping;
mod model;

pub use algo::{Algo, Factors, Ia3Rule, KronHalf, OftConv, PeftCayley};
pub use data::{transpose, Data, Values};
pub use formats::Format;
pub use model::{scale_for, Adapter, DoraRule, FullTensor, LoraModule, ModuleKind};

use crate::error::{InputError, InputResult, OptNames};
use std::path::{Path, PathBuf};

/// What the adapter needs a format's code for: opening a file (detecting its format), the files
/// a read touches, and the rules its PEFT config sets.
impl Adapter {
    /// Opens an adapter of any supported format (file or PEFT folder), detecting the format.
    /// Refuses a PEFT folder whose config does not select every module it holds: PEFT would
    /// load it without them, so it means one thing there and another by its tensors.
    pub fn open(path: impl AsRef<Path>) -> InputResult<Adapter> {
        let a = formats::open(path.as_ref())?;
        let Some(first) = a.untargeted.first() else {
            return Ok(a);
        };
        let m = a.modules.iter().find(|m| &m.name == first);
        let key = match m.and_then(|m| m.factors.data().first().copied()) {
            Some(Data::Stored { key, .. }) => key.clone(),
            _ => first.clone(),
        };
        let file = a
            .source
            .as_ref()
            .map_or(a.path.clone(), |s| s.path().to_path_buf());
        Err(InputError::invalid(
            file,
            format!(
                "tensor `{key}`: module `{first}` is not selected by adapter_config.json \
                 (target_modules / exclude_modules / layers_to_transform / modules_to_save){}; \
                 PEFT would load this adapter without it, silently{}. Make the config list every \
                 module the file holds, or remove the tensors",
                match a.untargeted.len() {
                    1 => String::new(),
                    n => format!(", nor are {} other modules", n - 1),
                },
                match a.config.as_ref().and_then(formats::peft::config_targets) {
                    Some(t) if t.tie_dropped(first) => " (`ensure_weight_tying` is set, but PEFT re-ties lm_head on load only where a saved target is named `embed_tokens` or `lm_head`, and this config's are not, as PEFT saves it for an embedding named otherwise such as GPT-2's `wte`)",
                    _ => "",
                }
            ),
        ))
    }

    /// [`Adapter::open`] without the refusal of [`Adapter::untargeted`] modules, for `check`,
    /// which reports them per loader (PEFT drops them; loaders that ignore the config do not).
    pub fn open_for_check(path: impl AsRef<Path>) -> InputResult<Adapter> {
        formats::open(path.as_ref())
    }

    /// A PEFT folder whose weights lorakit cannot read although PEFT loads it, as an adapter of
    /// no modules, with the reason ([`formats::open_unread`]); `None` for any other input. For
    /// `check`, after [`Adapter::open_for_check`] failed.
    pub fn open_unread(path: impl AsRef<Path>) -> InputResult<Option<(Adapter, String)>> {
        formats::open_unread(path.as_ref())
    }

    /// Every path reading this adapter touches (its folder or file, the tensor file, the
    /// config beside it), for [`crate::io::writer::check_writes`].
    pub fn input_paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.path.clone()];
        if let Some(src) = &self.source {
            v.push(src.path().to_path_buf());
        }
        v.extend(self.format.layout().read_paths(&self.path));
        v
    }

    /// The base weight PEFT rewrites for this adapter's Linear modules before adding their
    /// updates (PiSSA, OLoRA, KaSA; [`formats::peft::BaseResidual`]), from its config.
    pub fn base_residual(&self) -> Option<formats::peft::BaseResidual> {
        self.config.as_ref().and_then(formats::peft::base_residual)
    }

    /// The modules (indexes into `modules`) that a PEFT adapter's config selects only through
    /// `ensure_weight_tying` ([`formats::peft::targets::Targets::tie_only`]): PEFT wraps them
    /// only on a base that ties them to the input embedding, with the embedding's factors.
    /// Empty for other formats.
    pub fn tie_only_modules(&self) -> Vec<usize> {
        let targets = match self.config.as_ref() {
            Some(cfg) if self.format == Format::Peft => formats::peft::config_targets(cfg),
            _ => None,
        };
        let Some(targets) = targets else {
            return Vec::new();
        };
        (0..self.modules.len())
            .filter(|&i| targets.tie_only(&self.modules[i].name))
            .collect()
    }

    /// [`Adapter::base_residual`] where it applies to module `m`: PEFT's inits rewrite Linear
    /// layers only (Embedding and Conv layers never run them).
    pub fn residual_of(&self, m: &LoraModule) -> Option<formats::peft::BaseResidual> {
        self.base_residual()
            .filter(|_| m.kind == ModuleKind::Linear)
    }

    /// Refuses an adapter that PEFT adds to a rewritten base ([`Adapter::base_residual`]) for
    /// an operation `what` that would treat it as an update of the checkpoint's own weights
    /// (convert, resize, combine, eval, a GGUF merge); `lorakit merge` into a safetensors base
    /// applies it exactly.
    pub fn check_plain_base(&self, what: &str) -> InputResult<()> {
        let what = what.to_owned();
        self.check_plain_base_with(move |_| what.clone())
    }

    /// [`Adapter::check_plain_base`] where `what` names options of the operation (spelled by
    /// the front end, see [`crate::error::OptionError`]).
    pub fn check_plain_base_with(
        &self,
        what: impl Fn(&OptNames) -> String + Send + Sync + 'static,
    ) -> InputResult<()> {
        let Some(rule) = self.base_residual() else {
            return Ok(());
        };
        let label = rule.label();
        Err(InputError::option(self.config_file(), move |o| {
            format!(
                "{label}: PEFT adds this adapter to a base it rewrites from the checkpoint's weights, so {} would change its meaning; `lorakit merge` into a safetensors base applies it exactly, or save it with PEFT's `path_initial_model_for_weight_conversion` for a plain LoRA",
                what(o)
            )
        }))
    }

    /// Refuses an adapter whose config says its updates are not plain additions to the base's
    /// modules ([`formats::peft::merge_refusal`]), naming the config file.
    pub fn check_mergeable(&self) -> InputResult<()> {
        let Some(why) = self.config.as_ref().and_then(formats::peft::merge_refusal) else {
            return Ok(());
        };
        let file = self.config_file();
        Err(InputError::invalid(&file, why))
    }
}
