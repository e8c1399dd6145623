//! Merging adapters into a base checkpoint (and unmerging them), streamed tensor by tensor.
//!
//! Semantics are PEFT's `merge_and_unload` (`tuners/lora/layer.py` `get_delta_weight`, `merge`;
//! `variants.py` DoRA): `W = W0 + Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ` over adapters in the order given, with
//! `fan_in_fan_out` and embeddings transposed, convolutions flattened to `[out, in·kh·kw]`,
//! DoRA rescaled per output feature, `lora_B.bias` added to the base bias, and `modules_to_save`
//! tensors replacing the base's. Arithmetic is f32, rounded once to the output dtype.
//!
//! Planning ([`MergePlan::new`]) resolves every module against the base before anything is
//! written: unmatched modules are an error (or a listed warning with `allow_unmatched`), tied
//! embeddings touched by an adapter are refused, and an output that is an input is refused.
//! Executing ([`MergePlan::run`]) streams: untouched tensors are copied byte for byte by the
//! kernel (`copy_file_range`, never through user memory), merged tensors are computed from the memory map whose pages are then released, and
//! the output lands atomically (see [`crate::io::writer`]).

pub use crate::backend::Rounding;

/// Output dtype policy: the one `--dtype` of every writing command.
pub use crate::ops::output::DtypeChoice;

mod bnb_scope;
mod experts;
mod frod_base;
pub mod gguf;
mod gguf_band;
pub mod gguf_hf;
mod gguf_model;
pub mod gguf_parts;
mod gguf_whole;
mod layout;
mod model;
mod plan;
mod qalora;
pub(crate) mod residual;
mod run;
mod sequence;
mod slices;
mod tensor;
mod tied;
mod widen;
pub(crate) use layout::{copied_files, MODELOPT_CONFIG};
pub(crate) use model::{is_lm_head_name, tied_lm_head_resolution};
pub use model::{
    AdapterSummary, AsTrainedOn, DryRunFile, DryRunSummary, ExpandBase, MergeOptions, MergePlan,
    MergeRun, MergeSummary, QloraTensor, QuantOutput, TiedEmbeddings, UnmatchedReport,
    WeightedAdapter,
};
pub(crate) use run::without_quantization_config;
