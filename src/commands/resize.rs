//! `lorakit resize` (to be written).

use anyhow::Result;

/// Placeholder: arguments of `lorakit resize`.
#[derive(Debug, clap::Args)]
pub struct ResizeArgs {}

pub fn run(_a: ResizeArgs, _quiet: bool) -> Result<i32> {
    anyhow::bail!("lorakit resize is not implemented yet")
}
