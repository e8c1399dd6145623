//! The command line: what the user typed, documented. Doc comments here are the `--help` text.
//! Turning these into library plans happens in `commands/`.

use crate::backend::Device;
use crate::merge::DtypeChoice;
use clap::{Args, Parser, Subcommand, ValueEnum, ValueHint};
use std::path::PathBuf;

/// lorakit — LoRA adapter files and model surgery.
///
/// Inspect safetensors checkpoints and LoRA adapters (PEFT, kohya), merge adapters into base
/// checkpoints exactly as PEFT's merge_and_unload does, and more. Files are memory-mapped and
/// outputs are streamed and written atomically.
///
/// Exit status: 0 success, 1 a check failed (diff), 2 bad usage or bad input, 3 the output
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
    Extract(crate::commands::extract::ExtractArgs),
    Resize(crate::commands::resize::ResizeArgs),
    Combine(crate::commands::combine::CombineArgs),
    Convert(crate::commands::convert::ConvertArgs),
    Eval(crate::commands::eval::EvalArgs),
    Train(crate::commands::train::TrainArgs),
    Diff(crate::commands::diff::DiffArgs),
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
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct GpuInfoArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Show what a checkpoint or adapter holds.
///
/// PATH is a .safetensors file, a Hugging Face model folder (single file or sharded with
/// model.safetensors.index.json), a PEFT adapter folder, or a kohya LoRA file. Only headers are
/// read unless --spectrum is given. A Hugging Face cache snapshot folder works as a folder, and
/// a repo id (ORG/NAME or ORG/NAME@REVISION) is looked up in the local cache ($HF_HUB_CACHE, or
/// $HF_HOME/hub, or ~/.cache/huggingface/hub); nothing is ever downloaded. --tensors is for
/// checkpoints, --spectrum and --plot for adapters.
///
/// Examples:
///   lorakit inspect fixtures/llama/base --tensors
///   lorakit inspect meta-llama/Llama-3.2-1B           # from the local Hugging Face cache
///   lorakit inspect fixtures/llama/adapters/qv_r8 --spectrum --plot spectra.svg
///   lorakit inspect model.safetensors --json | jq .parameters
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct InspectArgs {
    /// File or folder to inspect, or a repo id in the local Hugging Face cache.
    #[arg(value_hint = ValueHint::AnyPath)]
    pub path: PathBuf,

    /// List every tensor (name, dtype, shape, bytes, file).
    #[arg(long)]
    pub tensors: bool,

    /// For adapters: singular values of s·B·A per module, effective rank at 90% and 99% energy
    /// and ‖ΔW‖_F (computed from the factors, never forming the d×k matrix).
    #[arg(long)]
    pub spectrum: bool,

    /// Draw the spectra to FILE (.svg or .png); implies --spectrum.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub plot: Option<PathBuf>,

    /// Print JSON instead of tables (schema in the README).
    #[arg(long)]
    pub json: bool,
}

/// Merge one or more LoRA adapters into a base checkpoint (or unmerge them).
///
/// W = W0 + Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ, exactly as PEFT's merge_and_unload (rsLoRA, rank/alpha patterns,
/// fan_in_fan_out, embeddings, conv, DoRA, lora bias, modules_to_save; kohya files too), computed
/// in f32 and rounded once to the output dtype. The output mirrors the base: a file for a file;
/// for a folder the same shards, a rewritten index, and every non-weight file (config.json,
/// tokenizer files) copied. Every adapter module must match exactly one base tensor of the right
/// shape, or nothing is written.
///
/// Examples:
///   lorakit merge --base fixtures/llama/base --adapter fixtures/llama/adapters/qv_r8 --out merged/
///   lorakit merge --base model/ --adapter a/ --weight 0.7 --adapter b/ --weight 0.3 --out out/ --dtype bf16
///   lorakit merge --base merged/ --adapter a/ --unmerge --out restored/
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct MergeArgs {
    /// Base checkpoint: a .safetensors file or a Hugging Face model folder.
    #[arg(long, value_hint = ValueHint::AnyPath)]
    pub base: PathBuf,

    /// Adapter (PEFT folder or file, or kohya file); repeat for several, applied in order.
    #[arg(long = "adapter", required = true, value_hint = ValueHint::AnyPath)]
    pub adapters: Vec<PathBuf>,

    /// Weight of each adapter, paired with --adapter in order (default 1.0 each).
    #[arg(long = "weight", allow_negative_numbers = true)]
    pub weights: Vec<f64>,

    /// Output: a file when the base is a file, a folder when the base is a folder.
    #[arg(long, short = 'o', value_hint = ValueHint::AnyPath)]
    pub out: PathBuf,

    /// Output dtype of float tensors; `keep` keeps each tensor's own (non-float tensors are
    /// always copied as they are).
    #[arg(long, value_enum, default_value_t = DtypeChoice::Keep)]
    pub dtype: DtypeChoice,

    /// Re-shard the output into files of at most SIZE (e.g. 5GB, 500MB, 2GiB), with Hugging
    /// Face shard names and index.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_shard_size: Option<u64>,

    /// Subtract the adapters instead of adding them.
    #[arg(long)]
    pub unmerge: bool,

    /// Merge what matches and only warn about adapter modules that match no base tensor.
    #[arg(long)]
    pub allow_unmatched: bool,

    /// Where to compute: auto uses a GPU when one exists, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,

    /// Write only part I of N of the output files (file j goes to part j mod N + 1), for N
    /// jobs on N machines; then run `lorakit finalize OUT` once. The output is byte-identical to
    /// a single run.
    #[arg(long, value_name = "I/N", value_parser = crate::parts::parse_part)]
    pub part: Option<(usize, usize)>,

    /// Validate and print the plan (matched modules, files and bytes to write); write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
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
    /// The output the parts wrote to: the merge output folder, the PEFT adapter folder, or
    /// the kohya adapter file of the extract.
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
    /// Print the plan as JSON (with --dry-run).
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

/// Print a man page (roff), generated from these definitions: lorakit(1), or with COMMAND the
/// page of that subcommand, lorakit-COMMAND(1).
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

/// `--device` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceArg {
    /// The GPU when one exists, else the CPU.
    Auto,
    /// The CPU (the reference implementation).
    Cpu,
    /// A GPU through wgpu (Vulkan, Metal, DX12); an error when none exists.
    Gpu,
}

impl From<DeviceArg> for Device {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Auto => Device::Auto,
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Gpu => Device::Gpu,
        }
    }
}

/// Parses sizes like `5GB`, `500MB`, `2GiB`, `1000` (bytes), as Hugging Face does (GB = 10⁹).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 5GB or 500MB"))?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        "TIB" => 1024f64.powi(4),
        u => {
            return Err(format!(
                "unknown size unit `{u}` (use B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let v = n * mult;
    if v < 1.0 {
        return Err(format!("size `{s}` must be at least 1 byte"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("100KB"), Ok(100_000));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("0").is_err());
    }
}
