//! Reading PEFT HiRA folders (`peft_type` HIRA; Huang et al., "HiRA: Parameter-Efficient
//! Hadamard High-Rank Adaptation for Large Language Models", ICLR 2025; PEFT 0.21.2
//! `tuners/hira/`) into the one adapter model. Never writes.
//!
//! Each module stores `hira_A` [r, in] and `hira_B` [out, r] (`layer.py` `update_layer`; a Conv
//! `hira_A` [r, in, kh, kw] and `hira_B` [out, r, 1, 1], an Embedding `hira_embedding_A`
//! [r, num_embeddings] and `hira_embedding_B` [dim, r]), and PEFT merges
//! `W' = W0 + W0 ⊙ (B·A)` (`HiraLayer._merge`: `weight + base_weight * get_delta_weight()`),
//! no scale; the conv product is `B·A` over the flattened `in·kh·kw` (`_ConvNd.get_delta_weight`
//! convolves A with the 1×1 B), the embedding's is `(B·A)ᵀ`, and with `fan_in_fan_out` (GPT-2's
//! Conv1D) `B·A` is transposed to the stored weight ([`Factors::Hadamard`]). Everything is in
//! the saved folder.

use super::assemble::{assemble, paired_by_suffixes};
use super::config::PeftConfig;
use crate::adapter::algo::{Factors, HadamardPart, HadamardTuner};
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, LoraModule};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;

/// Reads a PEFT HiRA adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let (parts, mut full) = paired_by_suffixes(
        &file,
        [
            ".hira_A",
            ".hira_B",
            ".hira_embedding_A",
            ".hira_embedding_B",
        ],
        "hira_",
        &[],
        "HiRA tensor (hira_A, hira_B, hira_embedding_A, hira_embedding_B)",
    )?;
    // The copy of a targeted embedding's weight PEFT saves (`….base_layer.weight`, as LoRA's
    // reader names it): PEFT's reload loads it as the base layer's weight.
    for f in &mut full {
        f.name = f.name.replace(".base_layer.", ".");
    }
    let shape = |k: &str| file.view(k).map(|v| v.shape.to_vec());
    let mut modules = Vec::with_capacity(parts.len());
    for (name, slots) in parts {
        let (embedding, akey, bkey) = match slots {
            [Some(a), Some(b), None, None] => (false, a, b),
            [None, None, Some(a), Some(b)] => (true, a, b),
            _ => {
                return Err(bad(format!(
                    "module `{name}`: HiRA needs hira_A and hira_B (or hira_embedding_A and hira_embedding_B), one pair"
                )))
            }
        };
        let (a, b) = (shape(&akey)?, shape(&bkey)?);
        let r = a.first().copied().unwrap_or(0);
        let ok = a.len() >= 2
            && b.len() == a.len()
            && r > 0
            && b[1] == r
            && b[0] > 0
            && b[2..].iter().all(|&x| x == 1)
            && (!embedding || a.len() == 2);
        if !ok {
            return Err(bad(format!(
                "module `{name}`: tensors `{akey}` {a:?} and `{bkey}` {b:?} are not [r, in, …] and [out, r, 1, …]"
            )));
        }
        // PEFT builds hira_A/hira_B at the config's `r` and refuses stored factors of another
        // (hostile round 14). Not at `rank_pattern`'s: `_create_and_replace` looks the pattern
        // up, but `dispatch_default` (`layer.py`) builds every new module with
        // `hira_config.r` (PEFT 0.21.2), so a pattern only ever changes a second adapter's rank.
        let want = cfg.r;
        if want != r {
            return Err(bad(format!(
                "tensor `{akey}` has rank {r}, but `r` in adapter_config.json is {want}: PEFT builds HiRA's factors at r (its rank_pattern is not used for a new module) and refuses the file"
            )));
        }
        let k: usize = a[1..].iter().product();
        let stored = |key: &str, transpose| Data::Stored {
            key: key.to_owned(),
            transpose,
        };
        // The embedding's product is (B·A)ᵀ = Aᵀ·Bᵀ: [num_embeddings, dim].
        let (out, inp, mul) = if embedding {
            let part = HadamardPart::LowRank {
                b: stored(&akey, true),
                a: stored(&bkey, true),
                rank: r,
            };
            (k, b[0], part)
        } else {
            let part = HadamardPart::LowRank {
                b: stored(&bkey, false),
                a: stored(&akey, false),
                rank: r,
            };
            (b[0], k, part)
        };
        modules.push(LoraModule::peft_linear(
            name,
            (out, inp, r),
            1.0,
            Factors::Hadamard {
                mul,
                add: HadamardPart::Zero,
                tuner: HadamardTuner::Hira,
            },
            cfg.fan_in_fan_out && !embedding,
        ));
    }
    assemble(path, file, &cfg, modules, full)
}
