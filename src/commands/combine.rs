//! `lorakit combine` (to be written).

use anyhow::Result;

/// Placeholder: arguments of `lorakit combine`.
#[derive(Debug, clap::Args)]
pub struct CombineArgs {}

pub fn run(_a: CombineArgs, _quiet: bool) -> Result<i32> {
    anyhow::bail!("lorakit combine is not implemented yet")
}
