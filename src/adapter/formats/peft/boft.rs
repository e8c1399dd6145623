//! Reading PEFT BOFT folders (`peft_type` BOFT; Liu et al., "Parameter-Efficient Orthogonal
//! Finetuning via Butterfly Factorization", ICLR 2024; PEFT 0.21.2 `tuners/boft/`) into the one
//! adapter model. Never writes.
//!
//! Each module stores `boft_R` [m, n, b, b] (m butterfly factors of n blocks of b×b) and
//! `boft_s` [out, 1] ([1, out] on a Conv2d). PEFT's merge (`layer.py` `Linear.merge`, `get_delta_weight`) is
//! `W' = (P·blockdiag(R)·Pᵀ·W0ᵀ)ᵀ ⊙ s` with `R = cayley_batch(boft_R)` = `(I − S)(I + S)⁻¹`,
//! `S = (B − Bᵀ)/2` per block. Without PEFT's CUDA extension (`fbd_cuda`) `update_layer` forces
//! `boft_n_butterfly_factor` to 1, so m = 1 and the permutation `P` is the identity: the rotation
//! is PEFT OFT's exact Cayley one on `S` and `W' = (W0·blockdiag(R)ᵀ) ⊙ s` ([`Factors::PeftBoft`]).
//! A file with m > 1 was trained with the extension: its factors compose with PEFT's
//! `block_butterfly_perm` permutations (`algo::butterfly_perm`), checked against PEFT's own merge
//! with the extension's block diagonal done in torch (fixtures/gen/gaps14_fixtures.py). On a
//! Conv2d (`Conv2d.merge`) the one-factor rotation acts on the weight viewed as
//! [out, in·kh·kw]; several factors there, and `fan_in_fan_out`, are refused.

use super::assemble::{all_present, assemble, paired_by_suffixes};
use super::config::{stored_f32, PeftConfig};
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, DoraRule, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;
use std::sync::Arc;

/// Reads a PEFT BOFT adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    if cfg.fan_in_fan_out {
        return Err(bad(
            "`fan_in_fan_out` is true: BOFT on Conv1D bases is not supported yet".into(),
        ));
    }
    let (parts, full) = paired_by_suffixes(
        &file,
        [".boft_R", ".boft_s"],
        "boft_",
        &[],
        "BOFT tensor (boft_R, boft_s)",
    )?;
    let shape = |k: &str| file.info(k).map(|t| t.shape.clone()).unwrap_or_default();
    let mut modules = Vec::with_capacity(parts.len());
    for (name, keys) in parts {
        let [rkey, skey] = all_present(&file, &name, keys, "BOFT needs boft_R and boft_s")?;
        let (m, n, b) = match shape(&rkey)[..] {
            // b = 1 is allowed by PEFT: each 1×1 rotation is the identity (W' = W0 ⊙ s).
            [m, n, b, b2] if m > 0 && n > 0 && b > 0 && b == b2 => (m, n, b),
            ref s => {
                return Err(bad(format!(
                    "tensor `{rkey}`: shape {s:?} is not [m, n, b, b]"
                )))
            }
        };
        if m > 1 {
            // m factors: written by PEFT with its CUDA extension (`fbd_cuda`; without it
            // `update_layer` sets the factor to 1 and cannot load this tensor), which builds
            // the permutations from the config's `boft_n_butterfly_factor` under these rules.
            let factor = cfg
                .raw
                .get("boft_n_butterfly_factor")
                .and_then(serde_json::Value::as_u64);
            let e = m - 1;
            let why = if factor != Some(m as u64) {
                Some(format!(
                    "adapter_config.json has boft_n_butterfly_factor {}",
                    factor.map_or("missing".into(), |f| f.to_string())
                ))
            } else if !n.is_multiple_of(2) || !b.is_multiple_of(2) {
                Some("PEFT needs an even block count and block size with several factors".into())
            } else if e >= usize::BITS as usize || !n.is_multiple_of(1usize << e) {
                Some(format!(
                    "PEFT needs the block count to be a multiple of 2^{e}"
                ))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(bad(format!(
                    "tensor `{rkey}` holds {m} butterfly factors of {n} blocks of {b}, but {why}: PEFT refuses it"
                )));
            }
        }
        // PEFT builds boft_R from the config (`update_layer`: exactly one of boft_block_size
        // and boft_block_num set, the other derived; one butterfly factor, as on a CPU, gives the
        // leading 1) and refuses a state dict of another shape (hostile round 11).
        let field = |k: &str| cfg.raw.get(k).and_then(serde_json::Value::as_u64);
        let (size, num) = (field("boft_block_size"), field("boft_block_num"));
        let why = match (size.unwrap_or(0), num.unwrap_or(0)) {
            (0, 0) => Some("sets neither boft_block_size nor boft_block_num".to_owned()),
            (s, m) if s != 0 && m != 0 => Some(format!(
                "sets both boft_block_size {s} and boft_block_num {m}"
            )),
            (s, _) if s != 0 && s != b as u64 => Some(format!("has boft_block_size {s}")),
            (_, m) if m != 0 && m != n as u64 => Some(format!("has boft_block_num {m}")),
            // `boft_n_butterfly_factor` is not compared for one factor: PEFT without its CUDA
            // extension (any CPU) sets it to 1 in `update_layer` and loads the one-factor
            // `boft_R` whatever the config says; several are checked above.
            _ => None,
        };
        if let Some(why) = why {
            return Err(bad(format!(
                "tensor `{rkey}` holds {n} blocks of {b}, but adapter_config.json {why}: PEFT builds boft_R from the config and refuses the file"
            )));
        }
        let (d, kind) = match shape(&skey)[..] {
            [d, 1] if d > 0 => (d, ModuleKind::Linear),
            // PEFT's Conv2d keeps boft_s as [1, out] (`Conv2d.update_layer`) and transposes it
            // in `get_delta_weight`; its rotation acts on the flattened in·kh·kw side.
            [1, d] if d > 0 && m == 1 => (d, ModuleKind::Conv { kernel: Vec::new() }),
            [1, _] => {
                return Err(bad(format!(
                    "tensor `{rkey}`: {m} butterfly factors on a Conv2d, which lorakit has not compared with PEFT; it merges them on Linear layers"
                )))
            }
            ref s => {
                return Err(bad(format!(
                    "tensor `{skey}`: shape {s:?} is not [out, 1] (Linear) or [1, out] (Conv2d)"
                )))
            }
        };
        // `cayley_batch`: S = 0.5·(B − Bᵀ) in f32 (exact halving), kept as its strict upper
        // triangle in `triu_indices(b, b, 1)` order, the layout PEFT OFT's rotation reads.
        let raw = stored_f32(&file, &rkey)?;
        let mut upper = Vec::with_capacity(n * b * (b - 1) / 2);
        for blk in raw.chunks_exact(b * b) {
            for i in 0..b {
                for j in i + 1..b {
                    upper.push(0.5 * (blk[i * b + j] - blk[j * b + i]));
                }
            }
        }
        modules.push(LoraModule {
            name,
            kind,
            rank: n,
            alpha: 1.0,
            scale: 1.0,
            out_features: d,
            in_features: n * b,
            bias: None,
            factors: Factors::PeftBoft {
                blocks: Data::Owned(Arc::new(upper)),
                scale: Data::Stored {
                    key: skey,
                    transpose: false,
                },
                block_num: n,
                block_size: b,
                butterfly: m,
            },
            base_transposed: false,
            dora_magnitude: None,
            dora_rule: DoraRule::Peft,
        });
    }
    assemble(path, file, &cfg, modules, full)
}
