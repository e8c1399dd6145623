//! lorakit: LoRA adapter files and model surgery.
//!
//! Data flows one way: command-line plan → [`io`] (memory-mapped reads) → [`backend`] (compute)
//! → [`io::writer`] (streamed, atomic writes), with [`adapter`] as the one model every adapter
//! format is read into and written from.
//!
//! Everything except `cli` and `commands` is the library: it must not depend on clap, print, or
//! spell a command-line flag; the binary (`main.rs`, `cli`, `commands`) is one front end over it.

pub mod adapter;
pub mod backend;
pub mod cli;
pub mod commands;
pub mod dtype;
pub mod error;
pub mod io;
pub use lorakit_linalg as linalg;
pub mod model;
pub mod ops;
pub mod progress;

// The operations keep their short paths (`lorakit::merge`, `crate::extract`, …).
pub use ops::{diff, extract, inspect, merge, parts, recipe, train};
