//! `check`'s arguments.
//!
//! Must not do any work: no I/O and no validation beyond what clap expresses; `commands/` maps
//! these to library options.

use crate::ops::check::Target;
use clap::{Args, ValueHint};
use std::path::PathBuf;

/// Will this adapter load, and apply every tensor, in vLLM, SGLang, LoRAX, llama.cpp,
/// diffusers, ComfyUI, PEFT?
///
/// Each target's rules were read from the loader's own source (the file and version are printed
/// with every finding, and listed in src/ops/check/rules.rs). Per target the verdict is LOADS,
/// LOADS WITH WARNINGS (loads and applies everything, given a server flag), or FAILS, with one
/// line per rule that fired: it refuses the adapter (DoRA in vLLM, lora_B.bias in llama.cpp, …)
/// or loads it and silently leaves part of it out or applies another scale (names vLLM never
/// matches, rank_pattern/alpha_pattern/rsLoRA ignored, layer types LoRAX drops, …).
///
/// With --base, every module is resolved against the base's real tensors (lorakit's one name
/// matcher): the report lists where each lands, and the rules about names, shapes, vocabulary
/// and tied embeddings are evaluated; without it they are listed as not evaluated.
///
/// Default targets: vllm, sglang, lorax, llama.cpp and peft for a causal-LM adapter; diffusers
/// and comfy for a kohya/LyCORIS file; peft and comfy for other PEFT folders.
///
/// Exit status: 0 when every target loads and applies everything, 1 otherwise, 2 for bad input
/// (an unreadable adapter or base, an unknown target).
///
/// Examples:
///   lorakit check fixtures/llama/adapters/dora --target vllm
///   lorakit check adapter/ --base meta-llama-3-8b/ --target vllm,llama.cpp
///   lorakit check lora.safetensors --target diffusers --target comfy --json
///   lorakit check adapter/ --base model/ --target vllm --fix --out fixed/
///   lorakit check dora/ --base model/ --target vllm --fix --dora-rank 16 --out plain/
///   lorakit check tokens/ --base model/ --target peft --fix --saved-tokens --out small/
///   lorakit check tokens/ --base model/ --target vllm --fix --saved-rank 16 --out lora/
///   lorakit check lokr.safetensors --target diffusers --fix --lower-rank 8 --out lora.safetensors
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CheckArgs {
    /// The adapter: a PEFT folder (or its adapter_model.safetensors) or a kohya/LyCORIS file.
    #[arg(value_hint = ValueHint::AnyPath)]
    pub adapter: PathBuf,

    /// Base model (file or Hugging Face folder) to resolve every module against.
    #[arg(long, value_hint = ValueHint::AnyPath)]
    pub base: Option<PathBuf>,

    /// Loader to check; repeat or give a comma list (default: those that apply to the adapter).
    #[arg(long = "target", value_enum, value_delimiter = ',')]
    pub targets: Vec<Target>,

    /// Write an adapter with the exact fixes applied (zero-padded ranks, per-module alphas
    /// folded into the factors, PEFT key prefixes, unmatched modules dropped with
    /// --drop-unmatched), then check it again. For diffusers/comfy only: a kohya single file with
    /// every scale folded into lora_up (alpha = rank).
    #[arg(long, requires = "out")]
    pub fix: bool,

    /// Where --fix writes the fixed adapter: a PEFT folder, or a kohya .safetensors file when
    /// every target is diffusers or comfy.
    #[arg(long, short = 'o', requires = "fix", value_hint = ValueHint::DirPath)]
    pub out: Option<PathBuf>,

    /// With --fix: drop modules that land on no base tensor (needs --base).
    #[arg(long, requires = "fix")]
    pub drop_unmatched: bool,

    /// With --fix: replace each DoRA module by the rank-R LoRA nearest to its effective update
    /// (SVD of f ⊙ (W0 + ΔW) − W0, needs --base); the error is reported per module.
    #[arg(long, value_name = "R", requires = "fix", requires = "base")]
    pub dora_rank: Option<usize>,

    /// With --fix: a saved embed_tokens/lm_head (modules_to_save) of which only some rows differ
    /// from the base becomes PEFT trainable tokens (trainable_token_indices and those rows;
    /// exact, needs --base). PEFT loads it; vLLM and llama.cpp refuse it (use --saved-rank).
    #[arg(long, requires = "fix", requires = "base")]
    pub saved_tokens: bool,

    /// With --fix: a saved embed_tokens/lm_head not turned into trainable tokens becomes a
    /// rank-R LoRA of its difference from the base (truncated SVD, needs --base); the error is
    /// reported per module. A saved tensor equal to the base is dropped.
    #[arg(long, value_name = "R", requires = "fix", requires = "base")]
    pub saved_rank: Option<usize>,

    /// With --fix for diffusers/comfy: lower LoKr/LoHa/full modules to rank-R LoRA (truncated
    /// SVD of their update; diffusers cannot load them); the error is reported per module.
    #[arg(long, value_name = "R", requires = "fix")]
    pub lower_rank: Option<usize>,

    /// With --fix: the largest relative Frobenius error ‖ΔW − B'·A'‖/‖ΔW‖ a --dora-rank,
    /// --saved-rank or --lower-rank rewrite may have. A module over it refuses the fix (exit 2,
    /// nothing written); without it every error is accepted and reported.
    #[arg(long, value_name = "E", requires = "fix")]
    pub tolerance: Option<f64>,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}
