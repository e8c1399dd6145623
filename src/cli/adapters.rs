//! The adapter commands' arguments: resize, combine, convert.
//!
//! Must not do any work: no I/O and no validation beyond what clap expresses; `commands/` maps
//! these to library options.

use super::args::AdapterOutArgs;
use crate::adapter::Format;
use crate::ops::combine::{MajoritySign, Method};
use clap::{Args, ValueHint};
use std::path::PathBuf;

/// Combine several adapters into one, as PEFT's add_weighted_adapter does.
///
/// With weights wᵢ and scales sᵢ, per module:
///   cat          exact: A = [w₁s₁A₁; w₂s₂A₂; …], B = [B₁ B₂ …], rank Σ rᵢ, scale 1. Every
///                module gets rank Σᵢ max-rank(adapterᵢ), zero-padded where an adapter lacks
///                the module (PEFT pads to the Σ of the configs' r instead: the same ΔW, a
///                different count of zero rows where a rank_pattern differs from r;
///                --no-pad: each module's own Σ rᵢ).
///   svd          the exact sum Σ wᵢsᵢBᵢAᵢ re-compressed to --rank (default: the largest input
///                rank) by QR of the stacked factors and SVD of the small core — the d×k sum is
///                never formed; the best rank-R approximation. B = U·diag(σ), A = Vᵀ.
///   linear       PEFT's factor-wise sum: A = Σ sign(wᵢsᵢ)√|wᵢsᵢ|·Aᵢ, B = Σ √|wᵢsᵢ|·Bᵢ
///                (cross terms: an approximation; equal ranks needed).
///   ties         per side: keep the ⌊density·n⌋ largest |x| of each input, elect each entry's
///                sign from the pruned unweighted inputs (--majority-sign), average the weighted
///                entries of that sign.
///   dare_linear  keep each entry with probability density, rescale by 1/density, then linear.
///   dare_ties    DARE pruning, then ties' sign election and mean.
/// The DARE masks come from lorakit's seeded generator (--seed), not torch's: reproducible, and
/// distributed as PEFT's, but not PEFT's draws. Modules held by only some adapters combine those
/// that hold them. The result has scale 1 (r = alpha) and no rsLoRA. DoRA, lora bias and
/// modules_to_save adapters are refused.
///
/// Inputs are brought to one format first (--format, default the first adapter's; kohya → PEFT
/// needs --base or lorakit metadata, see convert).
///
/// Examples:
///   lorakit combine --adapter a/ --weight 0.7 --adapter b/ --weight -0.4 --method cat --out mix/
///   lorakit combine --adapter a/ --adapter b/ --method svd --rank 16 --out mix/
///   lorakit combine --adapter a/ --weight 0.6 --adapter b/ --weight 0.3 --method ties \
///       --density 0.5 --out mix/
///   lorakit combine --adapter a.safetensors --adapter b.safetensors --method dare_linear \
///       --density 0.3 --seed 7 --out mix.safetensors
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CombineArgs {
    /// Adapter to combine (PEFT folder or file, or kohya file); repeat for each.
    #[arg(long = "adapter", required = true, value_hint = ValueHint::AnyPath)]
    pub adapters: Vec<PathBuf>,

    /// Weight of each adapter, paired with --adapter in order: give one per adapter, or none
    /// (all 1.0). May be negative.
    #[arg(long = "weight", allow_negative_numbers = true)]
    pub weights: Vec<f64>,

    /// How to combine.
    #[arg(long, value_enum)]
    pub method: Method,

    /// svd: rank of the result (default: the largest input rank).
    #[arg(long, value_name = "R")]
    pub rank: Option<usize>,

    /// ties, dare_linear, dare_ties: fraction of entries kept, in (0, 1].
    #[arg(long, value_name = "D")]
    pub density: Option<f64>,

    /// dare_linear, dare_ties: seed of the random masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// ties, dare_ties: how each entry's sign is elected.
    #[arg(long, value_enum, default_value_t = MajoritySign::Total)]
    pub majority_sign: MajoritySign,

    /// cat: give each module the sum of its own inputs' ranks instead of PEFT's common rank.
    #[arg(long)]
    pub no_pad: bool,

    /// Output format (default: the first adapter's).
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    #[command(flatten)]
    pub output: AdapterOutArgs,
}

/// Convert an adapter between the PEFT, kohya, LyCORIS, ComfyUI, mlx-lm and llama.cpp GGUF forms,
/// exactly.
///
/// Factors are copied byte for byte (unless --dtype asks otherwise) and every module keeps its
/// exact scale: PEFT → kohya writes each module's alpha (scale·rank for rsLoRA, since kohya's
/// scale is always alpha/rank); kohya → PEFT writes the kohya alphas, with alpha_pattern /
/// rank_pattern where modules differ. kohya names lost the dots of module paths, so kohya →
/// PEFT needs --base, the model the adapter is for (each module must land on exactly one base
/// tensor of matching shape; an ambiguous name is an error) — except for a kohya file lorakit
/// wrote from PEFT, whose metadata holds the module paths and the PEFT config: converting it
/// back restores the original config and per-module alphas. File metadata is kept.
///
/// PEFT output is a folder (adapter_model.safetensors + adapter_config.json); kohya output is
/// one .safetensors file. DoRA, lora bias, embedding, fan_in_fan_out modules and
/// modules_to_save tensors have no kohya form and are refused.
///
/// LyCORIS algorithms: --to lycoris writes LyCORIS' own file (every algorithm, prefix lycoris_
/// as create_lycoris_from_weights looks up, or the component's kohya prefix); --to comfy the
/// same file with the prefixes ComfyUI maps (lora_unet_, lora_te_/lora_te1_/lora_te2_,
/// lora_transformer_). LoHa and LoKr also go to PEFT's own LOHA/LOKR folders and back, factors
/// byte for byte; a LoKr split no single PEFT decompose_factor gives is refused by module. A
/// PEFT LoKr with both halves whole and alpha ≠ r has no LyCORIS alpha: its scale is folded
/// into lokr_w1 (reported).
///
/// mlx-lm (Apple's mlx_lm.lora: adapters.safetensors + adapter_config.json) is read as any
/// other format; --to mlx writes one rank per file (smaller ranks padded with zeros) and one
/// scale (other modules' scales folded into their lora_b), which mlx_lm.fuse and
/// mlx_lm.generate --adapter-path apply exactly.
///
/// Examples:
///   lorakit convert fixtures/kohya/adapters/te_peft --to kohya --out te.safetensors
///   lorakit convert fixtures/kohya/te_lora.safetensors --to peft --base fixtures/kohya/te_base \
///       --out te_peft/
///   lorakit convert te.safetensors --to peft --out back/        # lorakit-written: no --base needed
///   lorakit convert a/ --to kohya --prefix lora_te1 --dtype f16 --out a.safetensors --json
///   lorakit convert lora.safetensors --to diffusers --base unet/ --out pytorch_lora_weights.safetensors
///   lorakit convert fixtures/pipeline_sd1/kohya.safetensors --to diffusers \
///       --base fixtures/pipeline_sd1 --out sd1_lora.safetensors    # UNet + text encoder modules
///   lorakit convert fixtures/peft_lycoris/loha --to lycoris --out loha.safetensors
///   lorakit convert loha.safetensors --to peft --out loha_peft/    # back to PEFT LOHA, exact
///   lorakit convert fixtures/lycoris/loha.safetensors --to comfy --out loha_comfy.safetensors
///   lorakit convert fixtures/mlx/peft_mixed --to mlx --out for_mlx/   # mlx_lm.generate --adapter-path
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ConvertArgs {
    /// Adapter to convert: a PEFT or mlx-lm folder (or its .safetensors) or a kohya file.
    #[arg(value_hint = ValueHint::AnyPath)]
    pub adapter: PathBuf,

    /// Output format: peft, kohya, gguf (a llama.cpp LoRA adapter: --base names the model,
    /// a GGUF file or a Hugging Face folder, for its architecture; per-module scales that
    /// llama.cpp's one alpha per file cannot express are folded into B), or diffusers (the
    /// single file `pipe.load_lora_weights` reads: COMPONENT.MODULE.lora_A.weight with each
    /// component's LoraConfig in `lora_adapter_metadata`; the component comes from the names,
    /// their kohya prefix, or --prefix as a kohya prefix: lora_unet → unet (transformer for a
    /// model that is not a UNet: sd-scripts' Flux and SD3), lora_te → text_encoder, lora_te2 →
    /// text_encoder_2, lora_transformer → transformer; --base may be one component's folder or
    /// the whole pipeline folder, with model_index.json, each module resolved on its component).
    #[arg(long, value_enum)]
    pub to: crate::ops::convert::ConvertTo,

    #[command(flatten)]
    pub output: AdapterOutArgs,
}

/// Change the rank of every module of an adapter: the best low-rank approximation, exactly.
///
/// For each module ΔW = s·B·A the SVD comes from the factors (QR of B and Aᵀ, SVD of the small
/// r×r core; the d×k matrix is never formed) and the leading r′ singular triplets are kept:
/// B′ = U·diag(σ), A′ = Vᵀ (singular values in B, as kohya's resize_lora.py and PEFT's svd
/// combination). The scale is kept — alpha′ = alpha·r′/r (alpha·√(r′/r) with rsLoRA), kohya's
/// new_alpha = scale·new_rank — so s·B′·A′ is the best rank-r′ approximation of ΔW in Frobenius
/// and spectral norm. A module whose rank does not change is copied untouched. The report gives
/// per module the ranks, alphas and the energy kept (Σ kept σ² / Σ σ²).
///
/// Rank rules: --rank R (modules of lower rank are kept as they are); --energy E, the smallest
/// rank keeping a fraction E of ‖ΔW‖²_F; --sv-ratio X, kohya's sv_ratio (keep σ > σ₁/X). With
/// --energy or --sv-ratio, --rank caps the result. A zero module gets rank 1.
///
/// LyCORIS modules (LoHa, LoKr, LoCon with a Tucker core, full) become plain LoRA at the chosen
/// rank, for loaders that take only LoRA: through their exact SVD without forming d×k (LoHa's
/// rank-r² Khatri–Rao form; LoKr's Kronecker SVD, whose singular values are products of the
/// halves'), so the error reported per module is the Eckart–Young optimum.
///
/// Output: the input's format unless --format says otherwise (a PEFT folder with rank_pattern /
/// alpha_pattern for modules that differ, or a kohya file); metadata is kept (kohya's
/// ss_network_dim / ss_network_alpha updated as kohya's resize does). DoRA magnitudes, lora
/// biases and modules_to_save tensors are kept as they are (on a DoRA module the rank rule and
/// the error reported are those of s·B·A, not of the DoRA update).
///
/// Examples:
///   lorakit resize fixtures/llama/adapters/qv_r8 --rank 4 --out qv_r4/
///   lorakit resize lora.safetensors --energy 0.9 --rank 32 --out lora_small.safetensors
///   lorakit resize lora.safetensors --sv-ratio 20 --out small.safetensors --json
///   lorakit resize kohya.safetensors --rank 8 --format peft --base model/ --out r8/
///   lorakit resize lokr.safetensors --energy 0.99 --rank 64 --out lora.safetensors   # LoKr → LoRA
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
#[command(group(clap::ArgGroup::new("rule").required(true).multiple(true).args(["rank", "energy", "sv_ratio"])))]
#[command(group(clap::ArgGroup::new("dynamic").multiple(false).args(["energy", "sv_ratio"])))]
pub struct ResizeArgs {
    /// Adapter to resize: a PEFT folder (or its adapter_model.safetensors) or a kohya file.
    #[arg(value_hint = ValueHint::AnyPath)]
    pub adapter: PathBuf,

    /// New rank (with --energy or --sv-ratio: the largest rank allowed).
    #[arg(long, value_name = "R")]
    pub rank: Option<usize>,

    /// Keep the smallest rank whose singular values carry this fraction of ‖ΔW‖²_F (0 < E ≤ 1).
    #[arg(long, value_name = "E", conflicts_with = "sv_ratio")]
    pub energy: Option<f64>,

    /// kohya's sv_ratio rule: keep the singular values above σ_max / X (X ≥ 1).
    #[arg(long, value_name = "X")]
    pub sv_ratio: Option<f64>,

    /// With --energy or --sv-ratio: the largest rank allowed (extract's name for it; --rank
    /// says the same here).
    #[arg(long, value_name = "N", conflicts_with = "rank", requires = "dynamic")]
    pub max_rank: Option<usize>,

    /// Output format (default: the input's).
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    #[command(flatten)]
    pub output: AdapterOutArgs,
}
