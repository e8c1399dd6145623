//! `lorakit extract` (to be written).

use anyhow::Result;

/// Placeholder: arguments of `lorakit extract`.
#[derive(Debug, clap::Args)]
pub struct ExtractArgs {}

pub fn run(_a: ExtractArgs, _quiet: bool) -> Result<i32> {
    anyhow::bail!("lorakit extract is not implemented yet")
}
