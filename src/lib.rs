//! lorakit: LoRA adapter files and model surgery.
//!
//! Data flows one way: command-line plan → [`io`] (memory-mapped reads) → [`backend`] (compute)
//! → [`io::writer`] (streamed, atomic writes), with [`adapter`] as the one model every adapter
//! format is read into and written from.

pub mod adapter;
pub mod algebra;
pub mod backend;
pub mod cli;
pub mod commands;
pub mod diff;
pub mod dtype;
pub mod error;
pub mod extract;
pub mod inspect;
pub mod io;
pub use lorakit_linalg as linalg;
pub mod merge;
pub mod model;
pub mod parts;
pub mod progress;
pub mod recipe;
pub mod train;
