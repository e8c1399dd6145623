//! The model commands' arguments: eval, train.
//!
//! Must not do any work: no I/O and no validation beyond what clap expresses; `commands/` maps
//! these to library options.

use super::args::DeviceArgs;
use crate::ops::train::Schedule;
use clap::{ArgGroup, Args, ValueHint};
use std::path::PathBuf;

/// Evaluate a Llama-family model with LoRA adapters: loss, perplexity, logits, generation.
///
/// Runs LlamaForCausalLM (also Mistral and Qwen2) from a Hugging Face folder (config.json +
/// safetensors, single or sharded; f32, f16 or bf16 weights computed in f32, memory-mapped) with
/// every --adapter applied UNMERGED through the low-rank path, y = x·W0ᵀ + s·(x·Aᵀ)·Bᵀ, on any
/// linear layer (q, k, v, o, gate, up, down, lm_head) and on the embedding; DoRA modules are
/// merged into an in-memory copy of their weight; --merged merges everything in memory instead.
/// Logits equal transformers' + PEFT's to float rounding.
///
/// Loss: the mean next-token cross-entropy, as transformers computes it with labels = input ids.
/// --text and --prompt are tokenized (tokenizer.json of the model folder, or --tokenizer) and
/// scored in windows of --seq-len tokens moved by --stride (transformers' perplexity recipe,
/// summed exactly over tokens): a window scores the tokens after the last one already scored,
/// except its own first token, which has no context there (so with --stride = --seq-len each
/// window's first token is not scored). --input-ids rows are scored whole, one sequence each.
///
/// Examples:
///   lorakit eval --model fixtures/llama/base --adapter fixtures/llama/adapters/qv_r8 \
///       --input-ids fixtures/llama/logits.safetensors --logits /tmp/logits.safetensors
///   lorakit eval --model fixtures/llama/base --tokenizer fixtures/text/tokenizer.json \
///       --text fixtures/text/tiny.txt --seq-len 32 --json
///   lorakit eval --model model/ --adapter a/ --text wiki.txt --seq-len 1024 --stride 512
///   lorakit eval --model model/ --adapter a/ --prompt "The keeper of the" --generate 40
///   lorakit eval --model model/ --adapter a/ --weight 0.5 --adapter b/ --text test.jsonl
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
#[command(group(ArgGroup::new("input").required(true).args(["text", "prompt", "input_ids"])))]
pub struct EvalArgs {
    /// Base model: a Hugging Face folder (config.json + model.safetensors or shards).
    #[arg(long, value_hint = ValueHint::DirPath)]
    pub model: PathBuf,

    /// LoRA adapter (PEFT folder or file, kohya file); repeat for several, all applied at once.
    #[arg(long = "adapter", value_hint = ValueHint::AnyPath)]
    pub adapters: Vec<PathBuf>,

    /// Weight of each adapter, paired with --adapter in order (default 1.0 each).
    #[arg(long = "weight", allow_negative_numbers = true)]
    pub weights: Vec<f64>,

    /// Merge the adapters into in-memory f32 copies of the weights (as `lorakit merge` would)
    /// instead of applying them through the low-rank path.
    #[arg(long)]
    pub merged: bool,

    /// Text to score: plain UTF-8, or .jsonl with a "text" field per line (each record gets
    /// the tokenizer's BOS and is followed by the config's EOS).
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub text: Option<PathBuf>,

    /// A prompt to score, and to continue with --generate.
    #[arg(long, value_name = "STR")]
    pub prompt: Option<String>,

    /// Token ids: a safetensors file with an integer tensor `input_ids` [batch, seq] (I64 or
    /// I32); each row is one sequence. Needs no tokenizer.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub input_ids: Option<PathBuf>,

    /// Tokenizer: a tokenizer.json (or a folder holding one), or `bytes` (UTF-8 bytes as ids);
    /// default: tokenizer.json in the model folder.
    #[arg(long, value_name = "FILE|bytes")]
    pub tokenizer: Option<String>,

    /// Tokens per window for --text and --prompt.
    #[arg(long, default_value_t = 1024)]
    pub seq_len: usize,

    /// Window step for --text (default: --seq-len, windows do not overlap). A smaller stride
    /// gives scored tokens more context, at more cost.
    #[arg(long)]
    pub stride: Option<usize>,

    /// Sequences (windows or input_ids rows) per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,

    /// Write the logits as a safetensors file with the f32 tensor `logits` [batch, seq, vocab]
    /// (for --input-ids, or a --text/--prompt that fits one window).
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub logits: Option<PathBuf>,

    /// Greedy-decode N tokens after --prompt (stops early at EOS) and print them.
    #[arg(long, value_name = "N")]
    pub generate: Option<usize>,

    // --device: where the projections run (attention, norms and the loss always run on the CPU).
    #[command(flatten)]
    pub compute: DeviceArgs,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Train a LoRA adapter on a frozen Llama-family model (CPU) and save it as a PEFT folder.
///
/// The base (LlamaForCausalLM, Mistral, Qwen2; a Hugging Face folder, f32/f16/bf16 weights
/// computed in f32, memory-mapped) stays frozen; LoRA factors A and B on the --targets layers
/// are trained with a hand-written backward pass through every layer (RMSNorm, RoPE, causal
/// GQA attention, SwiGLU, lm_head, cross-entropy). Initialisation as PEFT: A Kaiming-uniform
/// (U(−1/√in, 1/√in)), B = 0, so step 0 computes the base model. Optimiser: torch's AdamW,
/// global-norm gradient clipping, linear warmup then cosine decay (transformers' schedule).
/// Deterministic for a seed, whatever the thread count.
///
/// Data: plain text, .jsonl ({"text": …} per line; each record gets BOS from the tokenizer and
/// the config's EOS after it) or a .safetensors file with `input_ids` (no tokenizer needed),
/// tokenized with the model folder's tokenizer.json (or --tokenizer), concatenated, cut into
/// sequences of --seq-len (the partial tail is dropped) and shuffled per epoch by --seed. The
/// loss is transformers' causal-LM loss with labels = inputs.
///
/// Output: --out gets adapter_model.safetensors + adapter_config.json (PEFT loads it with
/// PeftModel.from_pretrained; `lorakit merge` merges it) and trainer_state.json /
/// trainer_state.safetensors (step, options, Adam moments) for --resume. --save-every N writes
/// the same into OUT/checkpoint-N/. Each file is written atomically.
///
/// Examples:
///   lorakit train --model fixtures/llama/base --tokenizer fixtures/text/tokenizer.json \
///       --data fixtures/text/tiny.txt --seq-len 32 --steps 50 --lr 1e-2 --out /tmp/a
///   lorakit train --model model/ --data train.jsonl --targets q_proj,k_proj,v_proj,o_proj \
///       --rank 16 --alpha 32 --steps 1000 --lr 2e-4 --warmup 50 --out adapter/
///   lorakit train --model model/ --data train.jsonl --eval-data valid.jsonl --eval-every 100 \
///       --save-every 500 --steps 2000 --out adapter/
///   lorakit train --model model/ --data train.jsonl --steps 2000 \
///       --resume adapter/checkpoint-1000 --out adapter/
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct TrainArgs {
    /// Base model: a Hugging Face folder (config.json + model.safetensors or shards).
    #[arg(long, value_hint = ValueHint::DirPath)]
    pub model: PathBuf,

    /// Training data: text, .jsonl with a "text" field, or .safetensors with `input_ids`.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub data: PathBuf,

    /// Output adapter folder (PEFT layout, plus the trainer state).
    #[arg(long, short = 'o', value_hint = ValueHint::DirPath)]
    pub out: PathBuf,

    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,

    /// LoRA alpha (scale = alpha / r, or alpha / √r with --rslora); default: the rank.
    #[arg(long)]
    pub alpha: Option<f64>,

    /// rsLoRA scaling alpha / √r.
    #[arg(long)]
    pub rslora: bool,

    /// Layers to adapt, comma-separated: module names or dotted suffixes (q_proj, k_proj,
    /// v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head, layers.3.mlp.down_proj, …),
    /// matched as PEFT matches target_modules.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    pub targets: Vec<String>,

    /// Start from an existing PEFT adapter's factors (its modules, ranks and alphas replace
    /// --targets, --rank, --alpha, --rslora).
    #[arg(long, value_name = "ADAPTER", value_hint = ValueHint::AnyPath)]
    pub init_adapter: Option<PathBuf>,

    /// Optimiser steps (default: one pass over the data).
    #[arg(long)]
    pub steps: Option<usize>,

    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,

    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,

    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,

    /// Linear warmup steps (from 0 to --lr).
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,

    /// Decay after warmup, to 0 at the last step (constant: none).
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,

    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,

    /// Clip the global gradient norm to this value (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,

    /// Adam β₁.
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,

    /// Adam β₂.
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,

    /// Adam ε.
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,

    /// Seed of the initialisation and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Evaluate every N steps (and after the last) on --eval-data, or on the training data.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub eval_every: usize,

    /// Evaluation data (same formats as --data), scored in consecutive --seq-len sequences.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub eval_data: Option<PathBuf>,

    /// Save the adapter and trainer state to OUT/checkpoint-STEP every N steps.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub save_every: usize,

    /// Continue from a folder with a trainer state (OUT or OUT/checkpoint-N) to --steps.
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub resume: Option<PathBuf>,

    /// Tokenizer: a tokenizer.json (or a folder holding one), or `bytes`; default:
    /// tokenizer.json in the model folder.
    #[arg(long, value_name = "FILE|bytes")]
    pub tokenizer: Option<String>,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
