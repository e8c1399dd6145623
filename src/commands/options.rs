//! The shared flag groups of several commands turned into library values: `--weight` per
//! `--adapter` (merge, eval), the rank rule (extract, resize), the adapter output options (resize,
//! combine). A leaf beside the commands that call it, so they need not reach back into
//! `commands/mod.rs`, which calls them.
//!
//! Must not read files, run an operation or print: it only maps and validates flag values, with
//! errors that name the flag the user typed.

use anyhow::Result;

/// `--weight` values paired with `--adapter` in order, checked once for merge and eval: at most
/// one per adapter, each finite in f32; missing ones are 1.0. Returns one weight per adapter.
pub(crate) fn adapter_weights(adapters: usize, weights: &[f64]) -> Result<Vec<f64>> {
    if weights.len() > adapters {
        anyhow::bail!(
            "{} --weight values for {} --adapter values; give at most one weight per adapter",
            weights.len(),
            adapters
        );
    }
    // Weights scale f32 values: one past f32's range is infinite there (as merge, which
    // computes in f32, and eval's forward would find only after the arithmetic).
    if let Some(w) = weights.iter().find(|w| !crate::dtype::finite_in_f32(**w)) {
        anyhow::bail!("--weight {w:e} is not a finite number in f32 (|w| ≤ 3.4e38)");
    }
    Ok((0..adapters)
        .map(|i| weights.get(i).copied().unwrap_or(1.0))
        .collect())
}

/// The rank rule of `extract` and `resize` from their flags, validated once
/// ([`RankRule::validate`]): `--rank N` alone is a fixed rank, `--energy` or `--sv-ratio` a
/// dynamic rule capped at `max_rank` (extract's `--max-rank`, resize's `--rank`; its flag is
/// `max_rank_flag`, used in errors).
pub(crate) fn rank_rule(
    rank: Option<usize>,
    energy: Option<f64>,
    sv_ratio: Option<f64>,
    max_rank: Option<usize>,
    max_rank_flag: &str,
) -> anyhow::Result<crate::ops::rank::RankRule> {
    use crate::ops::rank::{RankParam, RankRule};
    let rule = match (energy, sv_ratio, rank) {
        (Some(energy), _, _) => RankRule::Energy { energy, max_rank },
        (None, Some(ratio), _) => RankRule::SvRatio { ratio, max_rank },
        (None, None, Some(r)) => RankRule::Fixed(r),
        (None, None, None) => anyhow::bail!("give one of --rank, --energy, --sv-ratio"),
    };
    rule.validate().map_err(|e| {
        let flag = match e.param {
            RankParam::Rank => "--rank",
            RankParam::Energy => "--energy",
            RankParam::SvRatio => "--sv-ratio",
            RankParam::MaxRank => max_rank_flag,
        };
        anyhow::anyhow!("{flag} {}", e.problem)
    })?;
    Ok(rule)
}

/// The output options of `resize` and `combine` from their `--format` and shared output flags.
pub(crate) fn output_options(
    format: Option<crate::adapter::Format>,
    a: &crate::cli::AdapterOutArgs,
) -> crate::ops::output::OutputOptions {
    crate::ops::output::OutputOptions {
        format,
        out: a.out.clone(),
        base: a.base.clone(),
        dtype: a.dtype,
        prefix: a.prefix.clone(),
    }
}
