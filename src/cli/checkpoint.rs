//! The checkpoint commands' arguments: inspect, merge, diff.
//!
//! Must not do any work: no I/O and no validation beyond what clap expresses; `commands/` maps
//! these to library options.

use super::args::{CheckpointOutArgs, DeviceArgs};
use clap::{Args, ValueHint};
use std::path::PathBuf;

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
///   lorakit merge --base model/ --adapter a/ --exact-rounding --out merged/
///   lorakit merge --base flux/transformer --adapter depth-lora.safetensors --expand-base --out flux-depth/
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct MergeArgs {
    /// Base checkpoint: a .safetensors file or a Hugging Face model folder, or a GGUF model
    /// (llama.cpp; a split model by any of its parts), merged into one GGUF file. Into a GGUF
    /// base DoRA and lora bias merge too, and modules_to_save tensors replace token_embd/output;
    /// a bias the base lacks and a saved lm_head on a tied base (no output.weight) are refused;
    /// an lm_head LoRA on such a base merges into token_embd with --tied-embeddings shared.
    #[arg(long, value_hint = ValueHint::AnyPath)]
    pub base: PathBuf,

    /// Adapter (PEFT folder or file, or kohya file); repeat for several, applied in order.
    #[arg(long = "adapter", required = true, value_hint = ValueHint::AnyPath)]
    pub adapters: Vec<PathBuf>,

    /// Weight of each adapter, paired with --adapter in order (default 1.0 each).
    #[arg(long = "weight", allow_negative_numbers = true)]
    pub weights: Vec<f64>,

    #[command(flatten)]
    pub output: CheckpointOutArgs,

    /// GGUF bases only: the type of each merged tensor. `keep` (the default) requantizes it to
    /// its original type with ggml's reference quantizer, no importance matrix (F32, F16, BF16,
    /// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K; other types are refused,
    /// name another); `f32`, `f16`, `bf16`, `q8_0`, `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q2_k`,
    /// `q3_k`, `q4_k`, `q5_k`, `q6_k` store every merged tensor in that type. Untouched tensors
    /// are always copied byte for byte. With a Hugging Face base and an `--out` ending in
    /// `.gguf` (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Gemma3), the merged model is
    /// written as llama.cpp's convert_hf_to_gguf.py writes it, tokenizer included: 2-D weights
    /// in TYPE (default f16;
    /// rows that are not whole blocks of TYPE in llama-quantize's fallback type, reported per
    /// tensor), norms and 1-D tensors in F32.
    #[arg(long, value_name = "TYPE", value_parser = crate::merge::gguf::OutType::parse)]
    pub outtype: Option<crate::merge::gguf::OutType>,

    /// Hugging Face base written as GGUF only: the llama.cpp pre-tokenizer (`llama-bpe`,
    /// `qwen2`, …) of a BPE tokenizer.json whose hash convert_hf_to_gguf.py does not list
    /// (lorakit refuses it otherwise, as the script does). A listed hash must agree with it.
    #[arg(long, value_name = "NAME")]
    pub gguf_tokenizer_pre: Option<String>,

    /// Subtract the adapters instead of adding them.
    #[arg(long)]
    pub unmerge: bool,

    /// Store the correctly rounded W0 + Σ s·B·A (nearest, ties to even) instead of rounding
    /// PEFT's f32 sum: the result then depends on the inputs alone, not on threads, SIMD width
    /// or summation order. Runs on the CPU (f64 with an error bound; the rare undecided values
    /// exactly). Not with DoRA modules, f64 or quantized outputs, --as-trained-on, or GGUF bases.
    #[arg(long, conflicts_with = "as_trained_on")]
    pub exact_rounding: bool,

    /// Merge what matches and only warn about adapter modules that match no base tensor.
    #[arg(long)]
    pub allow_unmatched: bool,

    /// An adapter that changes the input embedding of a base whose lm_head is tied to it
    /// (tie_word_embeddings, no lm_head.weight stored): `refuse` (the default) names the tie;
    /// `shared` merges into the shared tensor and keeps the tie, as PEFT's merge_and_unload does
    /// on a tied model, so the output layer changes with the embedding.
    #[arg(long, value_enum, default_value_t = TiedArg::Refuse)]
    pub tied_embeddings: TiedArg,

    /// Widen a base weight that an adapter's lora_A reads with more input columns (a Flux
    /// control LoRA's x_embedder/img_in, which takes the latents and the control image's) with
    /// zero columns first, as diffusers' Flux loader does: W = [W0 | 0] + s·B·A, bias untouched.
    /// A widened x_embedder also sets in_channels in the base folder's config.json (and a null
    /// out_channels to the old in_channels, so the folder loads). Without it such a module is
    /// refused as a shape mismatch. Safetensors bases only; not with --unmerge or --part.
    #[arg(long, conflicts_with_all = ["unmerge", "part"])]
    pub expand_base: bool,

    /// QLoRA-correct merge into a full-precision base: merge into dequant(Q(W)), the weights a
    /// QLoRA adapter was trained against, instead of W (a plain merge adds the stray term
    /// W − dequant(Q(W))). Q is bitsandbytes' 4-bit quantizer, reproduced bit for bit: `nf4` or
    /// `fp4` (`BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=…)`). The summary
    /// reports, per merged tensor, ‖W − dequant(Q(W))‖ next to ‖s·B·A‖. `,double-quant`
    /// (bnb_4bit_use_double_quant) also quantizes the absmax as bitsandbytes does, with its
    /// dynamic 8-bit code map (`create_dynamic_map`) in blocks of 256.
    #[arg(long, value_name = "nf4|fp4[,double-quant]", value_parser = parse_as_trained_on, conflicts_with = "unmerge")]
    pub as_trained_on: Option<(crate::io::quant::bnb4::Kind, bool)>,

    /// A quantized base (bitsandbytes NF4/FP4/int8, FP8 with scales, GPTQ, AWQ, compressed-tensors):
    /// `keep` writes each merged weight quantized again in its format, bit-exact with the
    /// producer's quantizer (bitsandbytes NF4/FP4 with and without double quantization; FP8 E4M3
    /// in weight_scale_inv blocks with fresh scales as transformers' Fp8Quantize; GPTQ and AWQ by
    /// round-to-nearest with the checkpoint's own scales, zeros and g_idx, as their packers
    /// compute it: not a new calibration; compressed-tensors pack-quantized the same way with
    /// its scales and zero points, as its compressor rounds; compressed-tensors FP8 per channel,
    /// per tensor or per block (partial edge blocks included) with fresh min/max scales
    /// as its calculate_qparams), and copies every other tensor byte for byte,
    /// quantization_config kept; formats lorakit cannot requantize are refused before anything
    /// is written. `dequantize` writes every quantized weight as float (--dtype; keep
    /// = the dtype its library dequantizes to), drops the scales and removes
    /// quantization_config from config.json.
    #[arg(long, value_enum, default_value_t = QuantArg::Keep)]
    pub quant: QuantArg,

    /// Block size of --as-trained-on (bnb_4bit blocksize; bitsandbytes' default 64).
    #[arg(long, default_value_t = 64, requires = "as_trained_on", value_parser = parse_blocksize)]
    pub blocksize: usize,

    /// --as-trained-on: module names the QLoRA model was loaded with in
    /// `BitsAndBytesConfig(llm_int8_skip_modules=[…])`, left float (merged into W). Matched as
    /// transformers matches them (from the start up to a `.`, as a regex, or as a suffix). As in
    /// transformers, the list replaces the default skips: without it, lm_head (the output
    /// embedding), a top-level task head (the model's last module) and tied weights stay float,
    /// with it they are quantized unless listed. The model class's `_keep_in_fp32_modules` (T5's
    /// `wo`, …) stay float either way; embeddings and convolutions are never quantized.
    #[arg(
        long,
        value_name = "NAME,...",
        value_delimiter = ',',
        requires = "as_trained_on"
    )]
    pub as_trained_on_skip: Option<Vec<String>>,

    /// --as-trained-on: the dtype the QLoRA model was loaded in (`from_pretrained(…,
    /// dtype=torch.bfloat16)`). transformers casts W to it before bitsandbytes quantizes, and
    /// dequantizes to it: the merge quantizes W rounded to it and rounds the dequantization to
    /// it (a float layer merges into W rounded to it). Default: what transformers' own default
    /// (`dtype="auto"`) loads, config.json's `dtype`/`torch_dtype`, else the checkpoint's dtype;
    /// give it when the model was trained in another dtype (the usual recipe loads an f32
    /// checkpoint in bf16). Independent of --dtype, which only sets the output's dtype.
    #[arg(
        long,
        value_enum,
        value_name = "bf16|f16|f32",
        requires = "as_trained_on"
    )]
    pub trained_dtype: Option<TrainedDtypeArg>,

    #[command(flatten)]
    pub compute: DeviceArgs,

    /// Write only part I of N of the output files (file j goes to part j mod N + 1), for N
    /// jobs on N machines; then run `lorakit finalize OUT` once. The output is byte-identical to
    /// a single run. For a GGUF base, parts write the files of `--max-shard-size` (or the one
    /// file) and `finalize OUT.gguf` checks them.
    #[arg(long, value_name = "I/N", value_parser = crate::parts::parse_part)]
    pub part: Option<(usize, usize)>,

    /// Validate and print the plan (matched modules, files and bytes to write); write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--tied-embeddings` of merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TiedArg {
    /// Refuse an adapter that changes a tied embedding.
    Refuse,
    /// Merge into the shared tensor; the output keeps the tie.
    Shared,
}

/// `--trained-dtype` of merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainedDtypeArg {
    /// torch.bfloat16.
    Bf16,
    /// torch.float16.
    F16,
    /// torch.float32.
    F32,
}

/// `--quant` of merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantArg {
    /// Requantize the merged weights in the base's format.
    Keep,
    /// Write the quantized weights as float.
    Dequantize,
}

/// Parses `nf4`, `fp4`, `nf4,double-quant`.
fn parse_as_trained_on(s: &str) -> Result<(crate::io::quant::bnb4::Kind, bool), String> {
    let mut parts = s.split(',');
    let kind = parts.next().unwrap_or_default();
    let kind = crate::io::quant::bnb4::Kind::parse(kind)
        .ok_or_else(|| format!("`{kind}` is not nf4 or fp4"))?;
    let mut double = false;
    for p in parts {
        match p {
            "double-quant" | "dq" => double = true,
            other => return Err(format!("`{other}` is not `double-quant`")),
        }
    }
    Ok((kind, double))
}

/// A bitsandbytes 4-bit block size.
fn parse_blocksize(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if crate::io::quant::bnb4::BLOCKSIZES.contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} is not a bitsandbytes block size (32, 64, 128, … 4096)"
        ))
    }
}

/// Write a quantized checkpoint back to floating point.
///
/// Recognises bitsandbytes 4-bit (NF4/FP4, with or without double quantization, any
/// bnb_4bit_quant_storage) and LLM.int8 weights as transformers saves them; FP8
/// (F8_E4M3/F8_E5M2) weights with `weight_scale_inv` (per 128×128 block, DeepSeek/Qwen FP8) or
/// `weight_scale` (per tensor, channel or compressed-tensors block); GPTQ (v1/v2) and AWQ (GEMM)
/// `qweight` with their scales, zeros and g_idx; compressed-tensors pack-quantized. Each weight
/// is dequantized exactly as its library does (bit for bit in f32) and rounded once to the
/// output dtype; the companion tensors (absmax, quant_map, quant_state, SCB, scales) are
/// dropped; every other tensor is copied byte for byte. The output mirrors the input (a file
/// for a file, the same shards for a folder) and config.json is copied without its
/// `quantization_config`. A layout lorakit cannot read (another GPTQ/AWQ packing, MX formats)
/// is refused naming the tensor.
///
/// Examples:
///   lorakit dequantize model-bnb-4bit/ --out model-f16/ --dtype f16
///   lorakit dequantize deepseek-fp8/ --out deepseek-bf16/ --dtype bf16 --max-shard-size 5GB
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DequantizeArgs {
    /// The quantized checkpoint: a .safetensors file or a Hugging Face model folder.
    #[arg(value_hint = ValueHint::AnyPath)]
    pub model: PathBuf,

    #[command(flatten)]
    pub output: CheckpointOutArgs,

    /// Validate and print the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Compare two checkpoints tensor by tensor; exit 0 when they agree, 1 when they do not.
///
/// For each tensor: present in one only, dtype/shape differences, max absolute difference and
/// relative Frobenius difference ‖A − B‖/‖B‖ (f64). Float tensors pass when the relative
/// difference is ≤ --tolerance (default 0: values must be equal) and, with --max-abs, every
/// element is within it; float tensors in different dtypes (F32/F16/BF16/F64) are compared by
/// value and the dtype change is reported. Other dtypes must be byte-identical. A tensor in one
/// checkpoint only fails unless --common; another shape always fails.
///
/// The default tolerance 0 demands equal values. One bf16 rounding of an f32 tensor differs by
/// up to 2⁻⁹ ≈ 2e-3 relative per element (≈ 1.1e-3 relative Frobenius for random data), so
/// compare a bf16 merge with its f32 reference at --tolerance 4e-3.
///
/// Examples:
///   lorakit diff merged/ reference/                     # exact
///   lorakit diff merged.safetensors ref.safetensors --tolerance 1e-6
///   lorakit diff a/ b/ --json | jq '.tensors[] | select(.pass | not)'
///   lorakit diff merged/ changed-only.safetensors --common --tolerance 1e-6
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DiffArgs {
    /// First checkpoint (file or folder, or a repo id in the local Hugging Face cache).
    #[arg(value_hint = ValueHint::AnyPath)]
    pub a: PathBuf,
    /// Second checkpoint, the reference of the relative difference.
    #[arg(value_hint = ValueHint::AnyPath)]
    pub b: PathBuf,
    /// Largest accepted relative Frobenius difference per float tensor.
    #[arg(long, default_value_t = 0.0)]
    pub tolerance: f64,
    /// Largest accepted absolute difference of any element.
    #[arg(long)]
    pub max_abs: Option<f64>,
    /// Judge only the tensors both hold (a reference with just the changed tensors).
    #[arg(long)]
    pub common: bool,
    /// List every tensor, not only those that fail.
    #[arg(long)]
    pub all: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}
