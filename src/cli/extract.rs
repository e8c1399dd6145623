//! The extract command's arguments (also recorded in `--part` manifests, hence serde).
//!
//! Must not do any work: no I/O and no validation beyond what clap expresses; `commands/` maps
//! these to library options.

use crate::adapter::Format;
use crate::backend::Device;
use crate::ops::extract::EmbeddingMode;
use crate::ops::output::DtypeChoice;
use clap::{ArgGroup, Args, ValueHint};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Extract a LoRA adapter from a fine-tuned checkpoint: ΔW = W_tuned − W_base, low rank.
///
/// Per weight, ΔW is formed in f32 from the two memory-mapped checkpoints and factored by a
/// randomized SVD (Halko–Martinsson–Tropp 2011, Alg. 4.4 + 5.1: power iterations with QR
/// re-orthonormalisation; exact SVD when that is cheaper, or everywhere with --exact). The kept
/// triplets become B = U·√S, A = √S·Vᵀ, so alpha/r·B·A is the best rank-r approximation the SVD
/// found. The output is a PEFT adapter folder (loads with PeftModel.from_pretrained) or a kohya
/// file. Every module's rank, kept energy and relative error ‖ΔW − s·B·A‖_F/‖ΔW‖_F of the
/// factors as written are reported (from the spectrum when that is exact to ~1e-4, otherwise
/// computed explicitly).
///
/// Candidates are float tensors named *.weight with 2 or more dimensions in both checkpoints:
/// 2-D weights are taken as nn.Linear [out, in] (pass --fan-in-fan-out for GPT-2 Conv1D
/// [in, out]: a checkpoint cannot tell), embeddings (module name with `embed`, wte, wpe,
/// shared) follow --embeddings, more dimensions are convolutions [out, in, kh, kw]. Unchanged
/// modules are skipped and listed; other changed tensors (norms, biases) are reported and, with
/// --save-changed, stored whole (PEFT modules_to_save). A tensor in one checkpoint only, or with
/// a different shape or dtype, is an error unless --targets/--exclude leave it out.
///
/// Same inputs, options and --seed give byte-identical files.
///
/// Examples:
///   lorakit extract --base base/ --tuned tuned/ --rank 16 --out adapter/
///   lorakit extract --base base/ --tuned tuned/ --energy 0.9 --max-rank 64 --alpha 32 --out a/
///   lorakit extract --base b/ --tuned t/ --rank 8 --targets attn --format kohya --out k.safetensors
///   lorakit extract --base gpt2/ --tuned gpt2-ft/ --rank 8 --fan-in-fan-out --out a/ --json
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(verbatim_doc_comment)]
#[command(group(ArgGroup::new("rank_rule").required(true).args(["rank", "energy", "sv_ratio"])))]
pub struct ExtractArgs {
    /// Base checkpoint W0: a .safetensors file or a Hugging Face model folder.
    #[arg(long, value_hint = ValueHint::AnyPath)]
    pub base: PathBuf,

    /// Fine-tuned checkpoint W, same tensors as the base.
    #[arg(long, value_hint = ValueHint::AnyPath)]
    pub tuned: PathBuf,

    /// Output: a folder for --format peft, a .safetensors file for --format kohya.
    #[arg(long, short = 'o', value_hint = ValueHint::AnyPath)]
    pub out: PathBuf,

    /// Rank of every module (capped at min(out, in)).
    #[arg(long, value_name = "R")]
    pub rank: Option<usize>,

    /// Per module, the smallest rank keeping a fraction E of ‖ΔW‖²_F (0 < E ≤ 1), at most
    /// --max-rank. Singular values are f32: prefer 0.999999 to 1 for "all but rounding noise".
    #[arg(long, value_name = "E")]
    pub energy: Option<f64>,

    /// Per module, keep singular values > s_max/X (kohya resize_lora's sv_ratio), at most
    /// --max-rank.
    #[arg(long, value_name = "X")]
    pub sv_ratio: Option<f64>,

    /// Upper bound of the rank picked by --energy or --sv-ratio.
    #[arg(long, value_name = "N", default_value_t = 128, conflicts_with = "rank")]
    pub max_rank: usize,

    /// Only these modules: a comma list of module names or dotted suffixes, as PEFT's
    /// target_modules (q_proj,v_proj matches model.layers.0.self_attn.q_proj), or re:REGEX
    /// (searched anywhere in the module name). Same syntax as train --targets.
    #[arg(long, value_name = "LIST")]
    pub targets: Option<String>,

    /// Leave out these modules or tensors (same syntax as --targets; matched against module
    /// and tensor names, e.g. embeddings.position_ids).
    #[arg(long, value_name = "LIST")]
    pub exclude: Option<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Peft)]
    pub format: Format,

    /// kohya key prefix (lora_unet, lora_te, lora_te1, lora_te2); the same flag as convert's.
    #[arg(long = "prefix", alias = "kohya-prefix", default_value = "lora_unet")]
    pub kohya_prefix: String,

    /// lora_alpha of every module (default: each module's rank, i.e. scale 1). With differing
    /// ranks the factors are rescaled so that ΔW = alpha/r·B·A holds for each module's r.
    #[arg(long, value_name = "A")]
    pub alpha: Option<f64>,

    /// Changed embeddings: low rank in PEFT's embedding layout, the tuned matrix whole
    /// (modules_to_save), or left out. Default: lora for peft, skip for kohya.
    #[arg(long, value_enum)]
    pub embeddings: Option<EmbeddingMode>,

    /// Full SVD of every ΔW instead of the randomized one (slow; for reference).
    #[arg(long)]
    pub exact: bool,

    /// Oversampling p of the randomized SVD (rank + p samples). Default: max(10, rank/2), where
    /// rank is the module's rank cap.
    #[arg(long, value_name = "P")]
    pub oversample: Option<usize>,

    /// Least power (subspace) iterations q of the randomized SVD. More are run while they still
    /// lower a module's error (its tail energy still falling by more than 1e-4 of itself), up
    /// to --max-power-iters; each module reports how many it ran.
    #[arg(long, value_name = "Q", default_value_t = 2)]
    pub power_iters: usize,

    /// Most power iterations (set it to --power-iters for a fixed count).
    #[arg(long, value_name = "Q", default_value_t = 10)]
    pub max_power_iters: usize,

    /// Seed of the random test matrices (combined with each tensor's name).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Skip modules whose ‖ΔW‖_F/‖W0‖_F is below X (listed as below_min_diff).
    #[arg(long, value_name = "X", default_value_t = 0.0)]
    pub min_diff: f64,

    /// Store changed tensors that are not extracted (norms, biases) whole: PEFT
    /// modules_to_save, or base_layer.bias with bias "lora_only" for biases of LoRA modules.
    #[arg(long)]
    pub save_changed: bool,

    /// 2-D weights are stored [in, out] (GPT-2 Conv1D), not [out, in] (nn.Linear).
    #[arg(long)]
    pub fan_in_fan_out: bool,

    /// Dtype of the written tensors (keep: the tuned checkpoint's, from its first 2-D float
    /// tensor).
    #[arg(long, value_enum, default_value_t = DtypeChoice::F32)]
    pub dtype: DtypeChoice,

    /// base_model_name_or_path written into adapter_config.json (default: --base as given).
    #[arg(long, value_name = "NAME")]
    pub base_model: Option<String>,

    /// Where the products of the randomized SVD run: gpu forms W − W0 on the device from the
    /// stored bytes (sketch kernels); auto uses a GPU when one exists.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,

    /// Extract only part I of N of the modules (a deterministic share, balanced by size) into
    /// a part file beside the output, for N jobs on N machines; then run `lorakit finalize
    /// OUT` once to write the adapter, byte-identical to a single run. Every part needs the
    /// same inputs (same paths) and flags.
    #[arg(long, value_name = "I/N", value_parser = crate::parts::parse_part)]
    #[serde(skip)]
    pub part: Option<(usize, usize)>,

    /// Validate and print the plan (tensors selected, low-rank candidates, files to write);
    /// compute and write nothing.
    #[arg(long)]
    #[serde(skip)]
    pub dry_run: bool,

    /// Print the summary as JSON on stdout.
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
}
