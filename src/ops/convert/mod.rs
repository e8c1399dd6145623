//! `convert`: rewriting an adapter in another format or naming, exactly. The operation shape is
//! [`ConvertOptions`] → [`ConvertPlan::new`] (opens the inputs and validates everything: the
//! output path, every module against the target, names against the base) → [`ConvertPlan::run`]
//! (writes atomically) → [`ConvertReport`]. Nothing is written when the plan is refused.
//!
//! Targets that hold adapter files ([`ConvertTo::format`]): PEFT folders (LoRA, or LoHa/LoKr as
//! PEFT's own LOHA/LOKR folders, [`crate::adapter::formats::peft::lycoris_plan`]), kohya files,
//! and two named forms of the kohya-named single file:
//!
//! * **lycoris** — LyCORIS' own file (`LycorisNetwork.save_weights`): every algorithm under its
//!   LyCORIS suffixes with its `.alpha`, module names `{prefix}_{path}` with the prefix
//!   `lycoris` that `create_lycoris_from_weights` looks up for a wrapped model
//!   (`lycoris/wrapper.py`, `LORA_PREFIX = "lycoris"`, `lora_name = f"{LORA_PREFIX}_{name}"`),
//!   or the kohya prefix of the pipeline component the name carries.
//! * **comfy** — the form ComfyUI reads natively for the model (`comfy/lora.py` @41444b5,
//!   `load_lora` reads every LyCORIS suffix of a key; `model_lora_keys_unet` maps
//!   `lora_unet_{diffusers or native path}` for every UNet, `lora_transformer_{path}` for SD3
//!   and Flux; `model_lora_keys_clip` maps `lora_te_`/`lora_te1_` (CLIP-L/H) and `lora_te2_`
//!   (CLIP-G beside CLIP-L)): the same file with the component's kohya prefix
//!   (`unet.` → `lora_unet_`, `text_encoder.` → `lora_te_`, or `lora_te1_` when a
//!   `text_encoder_2.` is present, `text_encoder_2.` → `lora_te2_`, `transformer.` →
//!   `lora_transformer_`), and for names without one the kohya default (`lora_te` for
//!   `text_model.` paths, else `lora_unet`).
//!
//! What each format is (folder or file, files written, names, alphas, the modules it holds, the
//! scales it cannot state) the plan asks the target's [`Layout`](crate::adapter::formats::Layout); nothing here matches on a
//! format. The renaming between formats stays here rather than in `adapter/formats/`: restoring
//! module paths from kohya names needs the base checkpoint ([`resolve_onto`]) or lorakit's
//! metadata, and a format must not open a base or know another format's names
//! (`names.rs` says how each direction works).
//!
//! Single files with their own writers: a diffusers file and a llama.cpp GGUF adapter
//! ([`DiffusersPlan`], [`GgufPlan`] in `single.rs`, the same shape).
//!
//! Exactness: factors are copied byte for byte (unless a dtype is asked for) and every module
//! keeps its scale. The one case where a target cannot state a scale is a LoKr module with both
//! halves whole whose scale is not 1 (PEFT's `alpha / r`): LyCORIS and ComfyUI use scale 1 for
//! it, so the scale is folded into `w1` (`s·w1`, rounded once) and the module is reported as
//! folded.

mod names;
mod options;
mod single;
mod unfold;

pub use names::{
    check_onto, prepare, resolve_onto, restore_from_metadata, NameSource, Prepared, NEEDS_BASE,
};
use options::check_output;
pub use options::{ConvertOptions, ConvertTo};
pub use single::{DiffusersConvertReport, DiffusersPlan, GgufConvertReport, GgufPlan};

use crate::adapter::formats::{diffusers, kohya};
use crate::adapter::{Adapter, Format};
use crate::error::{InputError, InputResult, Opt};
use crate::io::Checkpoint;
use crate::ops::output::{self, DtypeChoice, Provenance, WriteSpec, Written};

/// One module of a conversion.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleConvert {
    /// Name in the input file's terms (PEFT module path or kohya name).
    pub from: String,
    /// Name in the output file's terms.
    pub to: String,
    pub algo: crate::adapter::Algo,
    pub rank: usize,
    /// Alpha as the input stated it.
    pub alpha_in: f64,
    /// Alpha as written (kohya: `.alpha`, rounded to f32; PEFT LoHa/LoKr: the config's).
    pub alpha_out: f64,
    /// The module's scale, the same before and after.
    pub scale: f64,
    /// A scale the target cannot state was folded into a factor (LoKr `w1`), rounded once.
    pub folded: Option<f64>,
}

/// What `convert` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    pub operation: &'static str,
    pub input: String,
    pub out: String,
    pub from: Format,
    pub to: ConvertTo,
    pub base: Option<String>,
    /// kohya prefix used for dotted module paths (kohya-named output).
    pub prefix: Option<String>,
    pub names_from: NameSource,
    /// The PEFT config and alphas came back from lorakit metadata.
    pub config_restored: bool,
    pub dtype: DtypeChoice,
    pub modules: Vec<ModuleConvert>,
    /// `__metadata__` entries carried from the input.
    pub metadata_kept_count: usize,
    /// The files written and their bytes (`files`, `bytes_written`).
    #[serde(flatten)]
    pub written: Written,
}

/// A validated conversion, ready to write.
#[derive(Debug)]
pub struct ConvertPlan {
    opts: ConvertOptions,
    adapter: Adapter,
    spec: WriteSpec,
    from: Format,
    prep: Prepared,
    prefix: Option<String>,
    folded: Vec<Option<f64>>,
    /// Per module, the rank and alpha the output states ([`Layout::written_ranks_alphas`](crate::adapter::formats::Layout::written_ranks_alphas)).
    written: Vec<(usize, f64)>,
}

impl ConvertPlan {
    /// The adapter being converted, as read.
    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    /// Opens the adapter (and base), and checks everything before anything is written: the
    /// output is no input, every module has a form in the target, names resolve.
    pub fn new(opts: ConvertOptions) -> InputResult<ConvertPlan> {
        let to = opts.to.format().ok_or_else(|| {
            InputError::invalid(
                &opts.adapter,
                "gguf and diffusers targets are written by their own writers (GgufPlan, DiffusersPlan), not a convert plan",
            )
        })?;
        let mut adapter = Adapter::open(&opts.adapter)?;
        let base = opts.base.as_deref().map(Checkpoint::open).transpose()?;
        // PiSSA / OLoRA / KaSA: written as the plain LoRA for the base's own weights, which
        // needs that base; without it the conversion would change the adapter's meaning.
        match (adapter.base_residual(), &base) {
            (Some(rule), Some(b)) => unfold::unfold_residual(&mut adapter, rule, b)?,
            (Some(_), None) => adapter.check_plain_base_with(|o| {
                format!(
                    "converting it without {} (which lorakit needs to write the plain LoRA PEFT's path_initial_model_for_weight_conversion would)",
                    o.opt(Opt::Base)
                )
            })?,
            (None, _) => {}
        }
        let spec = WriteSpec {
            format: to,
            out: opts.out.clone(),
            dtype: output::copy_dtype(opts.dtype),
            kohya_prefix: opts.prefix.clone(),
        };
        check_output(&spec, &adapter, base.as_ref())?;
        let layout = to.layout();
        layout.check_modules(&adapter)?;
        let from = adapter.format;
        let prep = prepare(&mut adapter, to, base.as_ref())?;
        let mut prefix = None;
        if !layout.names_are_paths() {
            component_prefixes(&mut adapter, opts.to);
            let p = match (&opts.prefix, opts.to) {
                (Some(p), _) => p.clone(),
                (None, ConvertTo::Lycoris) => "lycoris".to_owned(),
                (None, _) => output::default_kohya_prefix(&adapter).to_owned(),
            };
            prefix = Some(p);
        }
        let folded = layout.fold_scales(&mut adapter)?;
        let written = layout.written_ranks_alphas(&adapter)?;
        Ok(ConvertPlan {
            opts,
            adapter,
            spec: WriteSpec {
                kohya_prefix: prefix.clone(),
                ..spec
            },
            from,
            prep,
            prefix,
            folded,
            written,
        })
    }

    /// Writes the output (atomically) and reports per module what was written.
    pub fn run(self) -> InputResult<ConvertReport> {
        let to = self.spec.format;
        let prov = Provenance {
            operation: "convert",
            inputs: output::inputs_json(&[&self.opts.adapter], self.opts.base.as_deref()),
            params: serde_json::json!({
                "from": self.from, "to": self.opts.to, "prefix": self.prefix, "dtype": self.opts.dtype
            }),
        };
        let written = output::write_adapter(&self.adapter, &self.spec, &prov)?;
        let a = &self.adapter;
        let modules = a
            .modules
            .iter()
            .enumerate()
            .map(|(i, m)| ModuleConvert {
                from: self.prep.names_before[i].clone(),
                to: output::written_name(&m.name, to, self.prefix.as_deref().unwrap_or("")),
                algo: m.factors.algo(),
                rank: self.written[i].0,
                alpha_in: self.prep.alphas_before[i],
                alpha_out: self.written[i].1,
                scale: self.folded[i].unwrap_or(m.scale),
                folded: self.folded[i],
            })
            .collect();
        Ok(ConvertReport {
            operation: "convert",
            input: self.opts.adapter.display().to_string(),
            out: self.opts.out.display().to_string(),
            from: self.from,
            to: self.opts.to,
            base: self.opts.base.as_ref().map(|b| b.display().to_string()),
            prefix: self.prefix.clone(),
            names_from: self.prep.names_from,
            config_restored: self.prep.config_restored,
            dtype: self.opts.dtype,
            modules,
            metadata_kept_count: output::metadata_kept(a),
            written,
        })
    }
}

/// Gives dotted names that carry a pipeline component (`unet.`, `text_encoder.`,
/// `text_encoder_2.`, `transformer.`) the component's kohya prefix, as ComfyUI maps them
/// (module doc). `lycoris`, `comfy` and `kohya` (whose readers, ComfyUI's and diffusers', know
/// `lora_unet_down_blocks_…`, not `lora_unet_unet_down_blocks_…`: rev16c F1).
fn component_prefixes(adapter: &mut Adapter, to: ConvertTo) {
    if !matches!(to, ConvertTo::Lycoris | ConvertTo::Comfy | ConvertTo::Kohya) {
        return;
    }
    let two_encoders = adapter
        .modules
        .iter()
        .any(|m| m.name.starts_with("text_encoder_2."));
    for m in adapter.modules.iter_mut() {
        if kohya::split_prefix(&m.name).is_some() {
            continue;
        }
        let Some((component, rest)) = m.name.split_once('.') else {
            continue;
        };
        let Some(prefix) = diffusers::kohya_prefix_of_component(component, two_encoders) else {
            continue;
        };
        debug_assert!(diffusers::COMPONENTS.contains(&component));
        m.name = kohya::kohya_name(prefix, rest);
    }
}
