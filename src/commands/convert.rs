//! `lorakit convert` (to be written).

use anyhow::Result;

/// Placeholder: arguments of `lorakit convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {}

pub fn run(_a: ConvertArgs, _quiet: bool) -> Result<i32> {
    anyhow::bail!("lorakit convert is not implemented yet")
}
