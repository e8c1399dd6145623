//! What `convert` is asked ([`ConvertOptions`], the target [`ConvertTo`]) and the output check
//! every convert plan runs first. The leaf of `convert/` that both plans (`mod.rs`, `single.rs`)
//! build on.
//!
//! Must not open or write anything but what [`check_output`] checks.

use crate::adapter::{Adapter, Format};
use crate::error::InputResult;
use crate::io::Checkpoint;
use crate::ops::output::{self, DtypeChoice, WriteSpec};
use std::path::PathBuf;

/// What `convert` writes: an adapter format, or a llama.cpp GGUF adapter
/// ([`crate::adapter::formats::gguf`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvertTo {
    Peft,
    Kohya,
    Gguf,
    /// A diffusers single file ([`crate::adapter::formats::diffusers`]).
    Diffusers,
    /// LyCORIS' own single file (see the module doc).
    Lycoris,
    /// The single file ComfyUI reads natively (see the module doc).
    Comfy,
    /// An mlx-lm adapter folder ([`crate::adapter::formats::mlx`]).
    Mlx,
}

impl ConvertTo {
    /// The adapter format written, `None` for GGUF and diffusers single files.
    pub fn format(self) -> Option<Format> {
        match self {
            ConvertTo::Peft => Some(Format::Peft),
            ConvertTo::Mlx => Some(Format::Mlx),
            ConvertTo::Kohya | ConvertTo::Lycoris | ConvertTo::Comfy => Some(Format::Kohya),
            ConvertTo::Gguf | ConvertTo::Diffusers => None,
        }
    }
}

/// What to convert, as a Rust caller states it.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub adapter: PathBuf,
    pub to: ConvertTo,
    pub out: PathBuf,
    /// The model the adapter is for: restores dotted module paths of kohya names, and every
    /// module must land on it.
    pub base: Option<PathBuf>,
    pub dtype: DtypeChoice,
    /// kohya prefix for dotted names without a pipeline component (kohya-named targets).
    pub prefix: Option<String>,
}

/// Refuses an output that is an input (the adapter, its config, the base) before any work.
pub(super) fn check_output(
    spec: &WriteSpec,
    adapter: &Adapter,
    base: Option<&Checkpoint>,
) -> InputResult<()> {
    let mut inputs = output::adapter_inputs(adapter);
    if let Some(b) = base {
        inputs.extend(b.input_paths());
        inputs.push(b.root.clone());
    }
    output::check_output_fixed(spec, &inputs)
}
