//! What an adapter format answers for the operations: the layout questions (is the output a
//! folder or one file, which files a write produces, which files a read touches, how modules
//! are named and what the file can hold) and the write itself. Each format implements
//! [`Layout`] in its own file (`peft/layout.rs`, `kohya.rs`); `formats/mod.rs` registers them
//! ([`super::Format::layout`]). The operations (`ops/`) ask a format these questions instead
//! of matching on [`super::Format`], so adding a format touches only `adapter/formats/`.
//!
//! Must not: read or write anything itself beyond what [`Layout::write`] is handed, decide an
//! operation's messages or options, or know another format's names.

use crate::adapter::model::Adapter;
use crate::dtype::Dtype;
use crate::error::InputResult;
use crate::io::Output;
use std::path::{Path, PathBuf};

/// How an adapter lies on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A folder of files (the output path names the folder).
    Folder,
    /// One file (the output path names it).
    File,
}

/// What a format can hold beside low-rank modules of linear and conv layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holds {
    /// Full tensors that replace base tensors (`modules_to_save`, changed tensors).
    pub full_tensors: bool,
    /// Low-rank modules of embedding layers.
    pub embeddings: bool,
    /// Modules of weights the base stores transposed (GPT-2 `Conv1D`, `fan_in_fan_out`).
    pub fan_in_fan_out: bool,
}

/// What a format is: names, shape and capacities, as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The format's name in reports, JSON and options: `peft`, `kohya`.
    pub name: &'static str,
    /// How messages name the format: `PEFT`, `kohya`.
    pub label: &'static str,
    /// Folder or single file.
    pub shape: Shape,
    /// Whether module names in the file are dotted module paths (PEFT). `false`: kohya names,
    /// `{prefix}_{path with . → _}`, which a write needs a prefix for and which read back as
    /// module paths only with a base or lorakit's metadata.
    pub names_are_paths: bool,
    /// Whether each module's alpha is stored as a one-value tensor (counted in the adapter's
    /// size).
    pub alpha_tensors: bool,
    /// What the format can hold.
    pub holds: Holds,
}

/// Where and how [`Layout::write`] writes: the output path, the dtype policy, the
/// `__metadata__`, the kohya prefix.
#[derive(Debug, Clone, Copy)]
pub struct WriteArgs<'a> {
    /// The adapter folder or file.
    pub out: &'a Path,
    /// `Some(d)` encodes every factor as `d`; `None` copies stored tensors byte for byte.
    pub dtype: Option<Dtype>,
    /// The `__metadata__` entries.
    pub metadata: &'a [(String, String)],
    /// The kohya prefix of dotted module names (formats whose names are paths ignore it).
    pub prefix: &'a str,
}

/// The per-format behaviour the operations ask for (see the module doc).
pub trait Layout: Sync {
    /// What the format is.
    fn facts(&self) -> &'static Facts;
    /// The files a write to `out` produces, in the order reports list them.
    fn files(&self, out: &Path) -> Vec<PathBuf>;
    /// The files besides the tensor file that reading an adapter at `path` (a folder or a
    /// file) touches: PEFT's `adapter_config.json`.
    fn read_paths(&self, path: &Path) -> Vec<PathBuf>;
    /// The name module `name` gets in the file, `prefix` being the kohya prefix of a write.
    fn written_name(&self, name: &str, prefix: &str) -> String;
    /// Refuses, naming the module, an adapter with a module the format has no form for.
    fn check_modules(&self, adapter: &Adapter) -> InputResult<()>;
    /// Folds into the factors any module scale the format cannot state, so that every module
    /// keeps its `ΔW`; returns the folded scale per module (module order).
    fn fold_scales(&self, adapter: &mut Adapter) -> InputResult<Vec<Option<f64>>>;
    /// Per module (module order): the rank and alpha the written file states.
    fn written_ranks_alphas(&self, adapter: &Adapter) -> InputResult<Vec<(usize, f64)>>;
    /// Adds to `meta` (the input's metadata and the provenance, in that order) what a file of
    /// this format written from `adapter` with `prefix` records besides.
    fn stamp_metadata(&self, adapter: &Adapter, prefix: &str, meta: &mut Vec<(String, String)>);
    /// Writes `adapter` into `output` (created and locked by the caller, committed by it), where
    /// and as `args` says.
    fn write(&self, adapter: &Adapter, output: &mut Output, args: WriteArgs) -> InputResult<()>;

    /// [`Facts::name`].
    fn name(&self) -> &'static str {
        self.facts().name
    }
    /// [`Facts::label`].
    fn label(&self) -> &'static str {
        self.facts().label
    }
    /// [`Facts::shape`].
    fn shape(&self) -> Shape {
        self.facts().shape
    }
    /// [`Facts::names_are_paths`].
    fn names_are_paths(&self) -> bool {
        self.facts().names_are_paths
    }
    /// [`Facts::alpha_tensors`].
    fn alpha_tensors(&self) -> bool {
        self.facts().alpha_tensors
    }
    /// [`Facts::holds`].
    fn holds(&self) -> Holds {
        self.facts().holds
    }

    /// Every path a write to `out` creates or replaces: the folder and its files, or the file.
    fn output_paths(&self, out: &Path) -> Vec<PathBuf> {
        match self.shape() {
            Shape::Folder => std::iter::once(out.to_path_buf())
                .chain(self.files(out))
                .collect(),
            Shape::File => self.files(out),
        }
    }

    /// The folder a write to `out` goes into (created when missing): the output folder itself,
    /// or the file's parent (`.` for a bare file name).
    fn folder(&self, out: &Path) -> PathBuf {
        match self.shape() {
            Shape::Folder => out.to_path_buf(),
            Shape::File => out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        }
    }
}
