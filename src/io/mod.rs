//! Reading and writing safetensors checkpoints: validated headers ([`header`]), memory-mapped
//! files ([`file`]), single-file and sharded checkpoints ([`checkpoint`]), and the streaming,
//! atomic writer every command uses ([`writer`]); quantized weights inside checkpoints
//! ([`quant`]); GGUF files (llama.cpp) in [`gguf`]; which weights a transformers config stores as
//! `Conv1D` `[in, out]` ([`conv1d`]).
//!
//! Must not know adapters, models or operations: it reads and writes tensors and files only.

pub mod checkpoint;
pub mod conv1d;
pub mod file;
pub mod gguf;
pub mod header;
pub mod hub;
pub mod mapped;
pub mod memory;
pub mod quant;
pub mod torch;
pub mod writer;

pub use checkpoint::Checkpoint;
pub use file::{open_regular, read_json_file, read_whole_file, SafetensorsFile, TensorView};
pub use writer::{Output, TensorSpec};

/// A malformed GGUF file as the cause of an [`crate::error::InputError`]. Written here, not in
/// `error.rs`, so that the error types depend on no reader (no `error` ↔ `io::gguf` cycle).
impl From<gguf::header::GgufError> for crate::error::InputErrorKind {
    fn from(e: gguf::header::GgufError) -> Self {
        crate::error::InputErrorKind::Gguf(Box::new(e))
    }
}
