//! The library's operations, each the same shape: options → a plan that validates everything
//! before anything is written → run → a serialisable report. Nothing here parses flags or
//! prints: the CLI (`crate::commands`) maps its arguments to options and renders reports.
//!
//! Base-model operations: [`merge`] (adapters into a checkpoint), [`extract`] (checkpoint pair →
//! adapter), [`diff`], [`inspect`], [`train`]; adapter algebra: [`resize`], [`combine`],
//! [`convert`], all writing through [`output`]; [`check`] judges an adapter against serving
//! loaders' rules; [`parts`] splits merge and extract across
//! processes (`--part I/N`) and [`recipe`] runs a TOML list of commands.

pub mod check;
pub mod combine;
pub mod convert;
pub mod diff;
pub mod eval;
pub mod extract;
pub mod inspect;
pub mod merge;
pub mod output;
pub mod parts;
pub mod rank;
pub mod recipe;
pub mod resize;
pub mod train;
