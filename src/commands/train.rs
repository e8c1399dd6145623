//! `lorakit train` (to be written).

use anyhow::Result;

/// Placeholder: arguments of `lorakit train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {}

pub fn run(_a: TrainArgs, _quiet: bool) -> Result<i32> {
    anyhow::bail!("lorakit train is not implemented yet")
}
