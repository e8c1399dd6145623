//! Argument groups several commands share, and the one way a library enum becomes a flag value.
//!
//! Owns: the `--device` group, the adapter-output group of resize/combine/convert, size
//! parsing, and the `clap::ValueEnum` impls of library types ([`value_enum!`]). The library
//! (`ops/`, `adapter/`, `backend/`) never depends on clap: it defines plain enums with their
//! own `name()`, and this file says how each is spelled on the command line. Must not hold
//! logic beyond parsing: commands turn these values into library options.

use crate::adapter::formats::kohya;
use crate::adapter::Format;
use crate::backend::{Device, Engine};
use crate::ops::check::Target;
use crate::ops::combine::{MajoritySign, Method};
use crate::ops::convert::ConvertTo;
use crate::ops::extract::EmbeddingMode;
use crate::ops::train::Schedule;
use clap::{Args, ValueHint};
use std::path::PathBuf;

/// Implements `clap::ValueEnum` for a library enum: each variant's flag spelling, its aliases
/// and its `--help` line. Written here rather than derived there so the library stays free of
/// clap (orphan rules allow it: the enums live in this crate).
macro_rules! value_enum {
    ($ty:ty { $($variant:ident => $name:literal $([$($alias:literal),+])? : $help:literal),+ $(,)? }) => {
        impl clap::ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$(<$ty>::$variant),+]
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(match self {
                    $(<$ty>::$variant => clap::builder::PossibleValue::new($name)
                        $($(.alias($alias))+)?
                        .help($help)),+
                })
            }
        }
    };
}

value_enum!(Device {
    Auto => "auto": "A hardware GPU when one exists (never a software one such as lavapipe), else the CPU",
    Cpu => "cpu": "The CPU (the reference implementation)",
    Gpu => "gpu": "A GPU through wgpu (Vulkan, Metal, DX12), software ones included; an error when none exists",
});

value_enum!(Format {
    Peft => "peft": "Hugging Face PEFT: adapter_model.safetensors + adapter_config.json",
    Kohya => "kohya": "kohya-ss sd-scripts: one .safetensors file (lora_down / lora_up / alpha)",
    Mlx => "mlx": "Apple's mlx-lm: adapters.safetensors (lora_a / lora_b) + adapter_config.json (lora_parameters)",
});

value_enum!(ConvertTo {
    Peft => "peft": "Hugging Face PEFT: adapter_model.safetensors + adapter_config.json",
    Kohya => "kohya": "kohya-ss sd-scripts: one .safetensors file (lora_down / lora_up / alpha)",
    Gguf => "gguf": "A llama.cpp LoRA adapter (.gguf, for llama-cli --lora); needs --base (a GGUF model or a Hugging Face folder) for the architecture",
    Diffusers => "diffusers": "A diffusers single file (pytorch_lora_weights.safetensors): COMPONENT.MODULE.lora_A.weight with the LoraConfig in lora_adapter_metadata; --prefix names the component (unet, transformer, text_encoder) when the names carry none",
    Lycoris => "lycoris": "LyCORIS' own file (every algorithm under its LyCORIS names, .alpha per module; prefix lycoris_ as create_lycoris_from_weights looks up, or the component's kohya prefix)",
    Mlx => "mlx": "Apple's mlx-lm (mlx_lm.generate/fuse --adapter-path): adapters.safetensors + adapter_config.json; one rank (smaller ones padded with zeros) and one scale (others folded into B) per file",
    Comfy => "comfy" ["comfyui"]: "The file ComfyUI loads natively: LyCORIS names with the component's kohya prefix (lora_unet_, lora_te_/lora_te1_/lora_te2_, lora_transformer_)",
});

value_enum!(DtypeChoice {
    Keep => "keep": "The input's dtype",
    F32 => "f32" ["float32", "float"]: "float32",
    F16 => "f16" ["float16", "half"]: "float16",
    Bf16 => "bf16" ["bfloat16"]: "bfloat16",
});

value_enum!(EmbeddingMode {
    Lora => "lora": "Low-rank, in PEFT's embedding layout (lora_embedding_A/B)",
    Full => "full": "The tuned embedding stored in full (modules_to_save)",
    Skip => "skip": "Left out (reported)",
});

value_enum!(Method {
    Cat => "cat": "Exact: concatenate the factors (rank = Σ rᵢ)",
    Svd => "svd": "Exact sum re-compressed by SVD to --rank",
    Linear => "linear": "PEFT's factor-wise weighted sum (equal ranks)",
    Ties => "ties": "TIES: magnitude pruning, sign election, disjoint mean (equal ranks)",
    DareLinear => "dare_linear" ["dare-linear"]: "DARE: random pruning with rescaling, then linear (equal ranks)",
    DareTies => "dare_ties" ["dare-ties"]: "DARE pruning, then TIES sign election and disjoint mean (equal ranks)",
});

value_enum!(Target {
    Vllm => "vllm": "vLLM (PEFT folders; vllm/lora/)",
    Sglang => "sglang": "SGLang (python/sglang/srt/lora/)",
    Lorax => "lorax": "LoRAX (server/lorax_server/adapters/)",
    LlamaCpp => "llama.cpp" ["llamacpp", "llama_cpp", "gguf"]: "llama.cpp (convert_lora_to_gguf.py, llama-adapter)",
    Diffusers => "diffusers": "diffusers pipelines' load_lora_weights",
    Comfy => "comfy" ["comfyui"]: "ComfyUI (comfy/lora.py)",
    Peft => "peft": "PEFT PeftModel.from_pretrained",
});

value_enum!(MajoritySign {
    Total => "total": "Sign of the sum of the pruned inputs",
    Frequency => "frequency": "Sign of the sum of their signs (majority vote)",
});

value_enum!(Schedule {
    Cosine => "cosine": "transformers get_cosine_schedule_with_warmup (half a cosine to 0)",
    Linear => "linear": "transformers get_linear_schedule_with_warmup",
    Constant => "constant": "transformers get_constant_schedule_with_warmup",
});

/// `--device`, for every command that computes.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Where to compute: auto uses a hardware GPU when one exists, else the CPU.
    /// auto also needs the GPU to pass a short probe merge (bit-identical to the CPU and faster).
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,

    /// Which GPU adapter: the index `lorakit gpu-info` lists, or its PCI bus id as
    /// pci:0000:65:00.0 (default: wgpu's high-performance choice).
    #[arg(long, value_name = "N|pci:ID")]
    pub gpu_index: Option<crate::backend::gpu::AdapterSelector>,
}

impl DeviceArgs {
    /// The backend for this run.
    ///
    /// Test and benchmark hook, not a user option: `LORAKIT_GPU_CHUNK_BYTES` sets the bytes of
    /// base per streamed GPU merge tile (default 64 MiB), so a test can stream a small fixture
    /// through many tiles of the ring without a tensor of hundreds of MiB.
    pub fn engine(&self) -> anyhow::Result<Engine> {
        let chunk_bytes = match std::env::var("LORAKIT_GPU_CHUNK_BYTES") {
            Ok(v) => Some(v.parse::<u64>().map_err(|_| {
                anyhow::anyhow!("LORAKIT_GPU_CHUNK_BYTES: `{v}` is not a number of bytes")
            })?),
            Err(_) => None,
        };
        let opts = crate::backend::gpu::GpuOptions {
            adapter: self.gpu_index,
            chunk_bytes,
            ..Default::default()
        };
        Ok(Engine::choose(self.device, &opts)?.0)
    }
}

/// Where and how an adapter is written, and how its summary is printed: shared by resize,
/// combine and convert (flattened last, so each command's `--help` lists these flags last).
#[derive(Debug, Clone, Args)]
pub struct AdapterOutArgs {
    /// Output: a folder for PEFT, a .safetensors file for kohya.
    #[arg(long, short = 'o', value_hint = ValueHint::AnyPath)]
    pub out: PathBuf,

    /// Base model (file or Hugging Face folder): restores PEFT module paths when a kohya
    /// adapter is written as PEFT, checks that every module lands on it, and gives modules the
    /// base's layout (a PEFT LoHa/LoKr stores a Conv2d's factors flat: resize needs the base to
    /// write the LoRA it lowers them to in PEFT's conv layout).
    #[arg(long, value_hint = ValueHint::AnyPath)]
    pub base: Option<PathBuf>,

    /// kohya prefix of module paths when writing kohya (default: lora_te when every module is
    /// under `text_model.`, else lora_unet).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(kohya::PREFIXES))]
    pub prefix: Option<String>,

    /// dtype of the written factors; keep = the input's (convert: each tensor copied byte for
    /// byte; combine: the first adapter's).
    #[arg(long, value_enum, default_value_t = DtypeChoice::Keep)]
    pub dtype: DtypeChoice,

    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

use crate::ops::output::DtypeChoice;

/// `--out`, `--dtype` and `--max-shard-size` of the commands that write a model checkpoint
/// (merge, dequantize): declared once, so both parse, default and document them alike.
#[derive(Debug, Clone, Args)]
pub struct CheckpointOutArgs {
    /// Output: a file when the input checkpoint (merge's base) is a file, a folder when it is
    /// a folder.
    #[arg(long, short = 'o', value_hint = ValueHint::AnyPath)]
    pub out: PathBuf,

    /// Output dtype of float tensors; `keep` keeps each tensor's own (non-float tensors are
    /// always copied as they are). Dequantized weights are written in it too; with `keep`, in
    /// the dtype their library dequantizes to (bitsandbytes 4-bit: the quant_state dtype;
    /// int8: f32; FP8: the scale's dtype).
    #[arg(long, value_enum, default_value_t = DtypeChoice::Keep)]
    pub dtype: DtypeChoice,

    /// Re-shard the output into files of at most SIZE (e.g. 5GB, 500MB, 2GiB), with Hugging
    /// Face shard names and index.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_shard_size: Option<u64>,
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
    use clap::ValueEnum;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("100KB"), Ok(100_000));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("0").is_err());
    }

    /// Every flag spelling round-trips, and aliases parse to the same variant.
    #[test]
    fn library_enums_parse_by_name_and_alias() {
        for m in Method::value_variants() {
            let name = m.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(Method::from_str(&name, false).unwrap(), *m);
            assert_eq!(name, m.name(), "flag spelling = the report's spelling");
        }
        assert_eq!(
            Method::from_str("dare-ties", false).unwrap(),
            Method::DareTies
        );
        assert_eq!(Device::from_str("gpu", false).unwrap(), Device::Gpu);
        assert_eq!(Format::from_str("kohya", false).unwrap(), Format::Kohya);
        assert!(Schedule::from_str("step", false).is_err());
    }
}
