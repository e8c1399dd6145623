//! The command line: every clap definition, documented. Doc comments here are the `--help` text.
//!
//! Owns: the `Cli` and `Command` types, one `…Args` struct per subcommand (one file per
//! command family), and the groups several commands share ([`args`]). Must not do any work:
//! turning these into library options, running them and printing happens in `commands/`, and
//! nothing below `ops/` sees a clap type or a flag name.

mod adapters;
pub mod args;
mod check;
mod checkpoint;
mod extract;
pub mod flags;
mod model;

pub use adapters::{CombineArgs, ConvertArgs, ResizeArgs};
pub use args::{parse_size, AdapterOutArgs, CheckpointOutArgs, DeviceArgs};
pub use check::CheckArgs;
pub use checkpoint::{
    DequantizeArgs, DiffArgs, InspectArgs, MergeArgs, QuantArg, TiedArg, TrainedDtypeArg,
};
pub use extract::ExtractArgs;
pub use model::{EvalArgs, TrainArgs};

/// `--device` values are the backend's own [`crate::backend::Device`].
pub type DeviceArg = crate::backend::Device;

use clap::{Args, Parser, Subcommand, ValueHint};
use std::path::PathBuf;

/// lorakit — LoRA adapter files and model surgery.
///
/// Inspect checkpoints (safetensors, GGUF, quantized) and adapters (PEFT, kohya, LyCORIS,
/// diffusers, GGUF, mlx-lm), merge adapters into them exactly as the adapter's own library applies it
/// (PEFT's merge_and_unload, LyCORIS, diffusers), extract, resize, combine, convert, and check
/// whether an adapter loads in vLLM, llama.cpp, diffusers and friends. Files are memory-mapped
/// and outputs are streamed and written atomically.
///
/// Exit status: 0 success, 1 a check failed (diff, check), 2 bad usage or bad input, 3 the output
/// could not be written (disk full, I/O error).
#[derive(Debug, Parser)]
#[command(
    name = "lorakit",
    version,
    long_version = env!("LORAKIT_LONG_VERSION"),
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Print nothing but errors: no report, no progress, no warnings (JSON asked for with
    /// --json is still printed).
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Inspect(InspectArgs),
    Merge(MergeArgs),
    Dequantize(DequantizeArgs),
    Extract(ExtractArgs),
    Resize(ResizeArgs),
    Combine(CombineArgs),
    Convert(ConvertArgs),
    Eval(EvalArgs),
    Train(TrainArgs),
    Diff(DiffArgs),
    Check(CheckArgs),
    Finalize(FinalizeArgs),
    Run(RunArgs),
    Completions(CompletionsArgs),
    Man(ManArgs),
    GpuInfo(GpuInfoArgs),
}

/// Show the GPU adapter wgpu finds (name, backend, device type, driver, limits).
///
/// Exits 2 when no adapter exists. `--device auto` uses a hardware GPU when one exists and never a
/// software one (lavapipe); `--device gpu` uses whatever this command shows.
///
/// Examples:
///   lorakit gpu-info
///   lorakit gpu-info --json
///   lorakit gpu-info --gpu-index 1
///   lorakit gpu-info --gpu-index pci:0000:65:00.0
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct GpuInfoArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,

    /// Describe the adapter with this index (as listed under "adapters"), or this PCI bus id
    /// (pci:0000:65:00.0), instead of the default.
    #[arg(long, value_name = "N|pci:ID")]
    pub gpu_index: Option<crate::backend::gpu::AdapterSelector>,
}

/// Join the parts of a `merge --part I/N` or `extract --part I/N` output.
///
/// merge: checks that every part is present, planned identically and complete (sizes and
/// headers), then writes the copied non-weight files and the index, last.
/// extract: reads the part files (.lorakit-extract-part-I-of-N.safetensors in the adapter
/// folder, or beside a kohya file), checks that all N are present, ran with the same flags on
/// unchanged inputs, and hold the modules the plan gives them; then writes the adapter
/// (byte-identical to a single run), prints the extract summary and removes the part files.
///
/// Examples:
///   for i in 1 2 3; do lorakit merge --base m/ --adapter a/ --out out/ --part $i/3 & done; wait
///   lorakit finalize out/
///   for i in 1 2 3 4; do lorakit extract --base b/ --tuned t/ --rank 16 --out a/ --part $i/4 & done; wait
///   lorakit finalize a/
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct FinalizeArgs {
    /// The output the parts wrote to: the merge output folder (or `OUT.gguf` of a GGUF
    /// merge), the PEFT adapter folder, or the kohya adapter file of the extract.
    #[arg(value_hint = ValueHint::AnyPath)]
    pub out: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run a recipe: a TOML file of named steps whose inputs are files or earlier outputs.
///
/// Steps are any lorakit command. Everything is validated before any work starts: each step's arguments, that every input
/// exists or is written by an earlier step, and for merges the whole plan (adapter ↔ base
/// matching). A step is skipped when its output exists with the same provenance: the same
/// command line and inputs with the same BLAKE3 content hashes (recorded beside the output),
/// output files untouched since. The format is described in the README; see examples/.
///
/// Examples:
///   lorakit run examples/merge-and-check.toml --dry-run
///   lorakit run examples/merge-and-check.toml
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RunArgs {
    /// The recipe file.
    #[arg(value_hint = ValueHint::FilePath)]
    pub recipe: PathBuf,
    /// Validate and print the plan (bytes each step reads and writes); run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object: the plan (with --dry-run), or after the run the plan and every
    /// step's report (`reports`, in the order the steps ran) and the exit code.
    #[arg(long)]
    pub json: bool,
    /// Run every step, up to date or not.
    #[arg(long)]
    pub force: bool,
    /// Take an input whose size and modification time match the record as unchanged without
    /// hashing it again (faster reruns over very large checkpoints).
    #[arg(long)]
    pub trust_mtime: bool,
}

/// Print a shell completion script.
///
/// Examples:
///   lorakit completions bash > /etc/bash_completion.d/lorakit
///   lorakit completions zsh > "${fpath[1]}/_lorakit"
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Print a man page (roff), generated from these definitions: lorakit(1), or lorakit-COMMAND(1).
///
/// With COMMAND, the page of that subcommand.
///
/// Examples:
///   lorakit man > lorakit.1 && man ./lorakit.1
///   for c in inspect merge extract; do lorakit man $c > lorakit-$c.1; done
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ManArgs {
    /// The subcommand whose page to print (merge, extract, …).
    pub command: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
