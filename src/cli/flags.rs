//! The flag that stands for each library option ([`Opt`]), so that an error the library words
//! with its own option names reaches the user with the flags they typed.
//!
//! Owns: the one map from [`Opt`] to a flag's spelling. Must not word any message: the
//! library words them ([`crate::error::OptionError`]), `commands::printer` prints them.

use crate::error::Opt;

/// The long flag of `o` (`Opt::SaveChanged` → `--save-changed`).
pub fn long(o: Opt) -> &'static str {
    match o {
        Opt::AdamEps => "--adam-eps",
        Opt::AllowUnmatched => "--allow-unmatched",
        Opt::Alpha => "--alpha",
        Opt::AsTrainedOn => "--as-trained-on",
        Opt::Base => "--base",
        Opt::Batch => "--batch",
        Opt::Beta1 => "--beta1",
        Opt::Beta2 => "--beta2",
        Opt::Adapter => "--adapter",
        Opt::Device => "--device",
        Opt::Density => "--density",
        Opt::DoraRank => "--dora-rank",
        Opt::Embeddings => "--embeddings",
        Opt::Exclude => "--exclude",
        Opt::ExpandBase => "--expand-base",
        Opt::Format => "--format",
        Opt::GgufTokenizerPre => "--gguf-tokenizer-pre",
        Opt::Generate => "--generate",
        Opt::GradClip => "--grad-clip",
        Opt::InitAdapter => "--init-adapter",
        Opt::InputIds => "--input-ids",
        Opt::Logits => "--logits",
        Opt::Lr => "--lr",
        Opt::MaxAbs => "--max-abs",
        Opt::MaxShardSize => "--max-shard-size",
        Opt::Method => "--method",
        Opt::Out => "--out",
        Opt::Outtype => "--outtype",
        Opt::PowerIters => "--power-iters",
        Opt::MaxPowerIters => "--max-power-iters",
        Opt::Part => "--part",
        Opt::Plot => "--plot",
        Opt::Prefix => "--prefix",
        Opt::Prompt => "--prompt",
        Opt::Quant => "--quant",
        Opt::Rank => "--rank",
        Opt::Rslora => "--rslora",
        Opt::SavedRank => "--saved-rank",
        Opt::LowerRank => "--lower-rank",
        Opt::SaveChanged => "--save-changed",
        Opt::Seed => "--seed",
        Opt::SeqLen => "--seq-len",
        Opt::Spectrum => "--spectrum",
        Opt::Steps => "--steps",
        Opt::Stride => "--stride",
        Opt::Targets => "--targets",
        Opt::Tensors => "--tensors",
        Opt::TiedEmbeddings => "--tied-embeddings",
        Opt::To => "--to",
        Opt::Tokenizer => "--tokenizer",
        Opt::Tolerance => "--tolerance",
        Opt::Tuned => "--tuned",
        Opt::Weight => "--weight",
        Opt::WeightDecay => "--weight-decay",
    }
}

/// `o` as typed on the command line: `--save-changed`, or with a value `--format kohya`.
/// The spelling [`crate::error::OptionError::render`] takes in the binary.
pub fn spell(o: Opt, value: Option<&str>) -> String {
    match value {
        None => long(o).to_string(),
        Some(v) => format!("{} {v}", long(o)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every option the library may name maps to a long flag that some subcommand really has.
    #[test]
    fn every_option_maps_to_a_real_flag() {
        let cli = super::super::Cli::command();
        let mut flags = std::collections::BTreeSet::new();
        for sub in cli.get_subcommands() {
            for a in sub.get_arguments() {
                if let Some(l) = a.get_long() {
                    flags.insert(format!("--{l}"));
                }
            }
        }
        let all = [
            Opt::AllowUnmatched,
            Opt::Alpha,
            Opt::AsTrainedOn,
            Opt::Base,
            Opt::Batch,
            Opt::Device,
            Opt::Density,
            Opt::DoraRank,
            Opt::Embeddings,
            Opt::Exclude,
            Opt::ExpandBase,
            Opt::Format,
            Opt::Generate,
            Opt::InputIds,
            Opt::Logits,
            Opt::Lr,
            Opt::MaxAbs,
            Opt::MaxPowerIters,
            Opt::MaxShardSize,
            Opt::Method,
            Opt::Out,
            Opt::Outtype,
            Opt::Part,
            Opt::Plot,
            Opt::PowerIters,
            Opt::Prefix,
            Opt::Prompt,
            Opt::Quant,
            Opt::Rank,
            Opt::Rslora,
            Opt::SaveChanged,
            Opt::Seed,
            Opt::SeqLen,
            Opt::Spectrum,
            Opt::Steps,
            Opt::Stride,
            Opt::Targets,
            Opt::Tensors,
            Opt::TiedEmbeddings,
            Opt::Tokenizer,
            Opt::GgufTokenizerPre,
            Opt::Tolerance,
            Opt::Tuned,
            Opt::Weight,
            Opt::AdamEps,
            Opt::Beta1,
            Opt::Beta2,
            Opt::GradClip,
            Opt::InitAdapter,
            Opt::To,
            Opt::WeightDecay,
        ];
        for o in all {
            assert!(flags.contains(long(o)), "{o:?}: {} is no flag", long(o));
            // The library name is the flag without dashes, in snake case.
            assert_eq!(long(o), format!("--{}", o.name().replace('_', "-")));
        }
    }
}
