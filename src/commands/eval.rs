//! `lorakit eval` (to be written).

use anyhow::Result;

/// Placeholder: arguments of `lorakit eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {}

pub fn run(_a: EvalArgs, _quiet: bool) -> Result<i32> {
    anyhow::bail!("lorakit eval is not implemented yet")
}
