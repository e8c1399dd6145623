//! Reading PEFT AdaLoRA folders (`peft_type` ADALORA; Zhang et al., "Adaptive Budget Allocation
//! for Parameter-Efficient Fine-Tuning", ICLR 2023; PEFT 0.21.2 `tuners/adalora/`) into the one
//! adapter model as plain LoRA modules. Never writes.
//!
//! Each module stores `lora_A` [r, in], `lora_E` [r, 1] (the learned singular values) and
//! `lora_B` [out, r], and PEFT merges `ΔW = B·(A ⊙ E)·scaling / (ranknum + 1e-5)`
//! (`layer.py` `get_delta_weight`), where `scaling` is `lora_alpha` itself (not divided by the
//! rank; the rank when `lora_alpha` is 0) and `ranknum` is `init_r`, the rank every module starts
//! with (`model.py` `_create_and_replace`; it is not saved, and a reload restores it after
//! resizing: `resize_modules_by_rank_pattern`). Training prunes singular triplets
//! (`update_and_allocate`); `save_pretrained` writes the kept ones per module into the config's
//! `rank_pattern` (lists of booleans, unlike LoRA's integers) and only their rows and columns into
//! the file, so each module has its own rank, possibly 0 (empty tensors: no update at all).
//!
//! So a module here is the LoRA `B · A′` with `A′ = A ⊙ E` (row i of A times `E[i]`, the f32
//! product torch computes) and `scale = scaling / f32(init_r + 1e-5)`; `alpha` is stored as
//! `scale · rank`, the alpha a LoRA of that rank would need. Modules pruned to rank 0 are left
//! out (PEFT's merge adds nothing for them). AdaLoRA wraps Linear layers only, and GPT-2's
//! Conv1D with `fan_in_fan_out`.

use super::config::{PeftConfig, PREFIX};
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, DoraRule, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// One module's three tensors: key and shape.
#[derive(Default)]
struct Triplet {
    a: Option<(String, Vec<usize>)>,
    e: Option<(String, Vec<usize>)>,
    b: Option<(String, Vec<usize>)>,
}

/// Reads a PEFT AdaLoRA adapter whose tensors are in `file` and config (`cfg`) at
/// `config_path` (see the module header).
pub(super) fn read(
    path: &Path,
    file: SafetensorsFile,
    cfg: PeftConfig,
    config_path: &Path,
) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let init_r = match cfg.raw.get("init_r") {
        // `AdaLoraConfig.init_r`'s default.
        None | Some(serde_json::Value::Null) => 12,
        Some(v) => v.as_u64().filter(|&r| r > 0).ok_or_else(|| {
            InputError::invalid(
                config_path,
                format!("`init_r` is {v}, not a positive integer"),
            )
        })? as usize,
    };
    let scaling = if cfg.lora_alpha > 0.0 {
        cfg.lora_alpha
    } else {
        init_r as f64
    };
    // `self.ranknum[adapter] + 1e-5`: an f32 parameter plus a Python float, in f32.
    let scale = scaling / (init_r as f32 + 1e-5f32) as f64;
    let mut parts: BTreeMap<String, Triplet> = BTreeMap::new();
    let mut full = Vec::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        let entry = (key.to_owned(), t.shape.clone());
        let slot = |suffix: &str| rel.strip_suffix(suffix).map(str::to_owned);
        let (module, field) = if let Some(m) = slot(".lora_A") {
            (m, 0)
        } else if let Some(m) = slot(".lora_E") {
            (m, 1)
        } else if let Some(m) = slot(".lora_B") {
            (m, 2)
        } else if rel.contains(".lora_") {
            return Err(bad(format!(
                "tensor `{key}`: not an AdaLoRA tensor (lora_A, lora_E, lora_B)"
            )));
        } else {
            full.push(super::assemble::stored_full(
                rel.replace(".base_layer.", "."),
                t,
            ));
            continue;
        };
        let p = parts.entry(module).or_default();
        let f = match field {
            0 => &mut p.a,
            1 => &mut p.e,
            _ => &mut p.b,
        };
        if f.is_some() {
            return Err(bad(format!("tensor `{key}` is given twice")));
        }
        *f = Some(entry);
    }
    let mut modules = Vec::with_capacity(parts.len());
    for (name, p) in parts {
        let err = |msg: String| bad(format!("module `{name}`: {msg}"));
        let (Some((akey, ashape)), Some((ekey, eshape)), Some((bkey, bshape))) = (p.a, p.e, p.b)
        else {
            return Err(err("AdaLoRA needs lora_A, lora_E and lora_B".into()));
        };
        let (rank, in_features, out_features) = match (&ashape[..], &eshape[..], &bshape[..]) {
            ([r, k], [re, 1], [d, rb]) if r == re && r == rb && *k > 0 && *d > 0 => (*r, *k, *d),
            _ => {
                return Err(err(format!(
                    "lora_A {ashape:?}, lora_E {eshape:?} and lora_B {bshape:?} are not [r, in], [r, 1] and [out, r]"
                )))
            }
        };
        if rank > init_r {
            return Err(err(format!(
                "rank {rank} is above init_r = {init_r} (AdaLoRA only prunes)"
            )));
        }
        if rank == 0 {
            continue;
        }
        let a = super::config::stored_f32(&file, &akey)?;
        let e = super::config::stored_f32(&file, &ekey)?;
        let folded: Vec<f32> = a
            .chunks_exact(in_features)
            .zip(&e)
            .flat_map(|(row, &s)| row.iter().map(move |&x| x * s))
            .collect();
        modules.push(LoraModule {
            scale,
            alpha: scale * rank as f64,
            name,
            kind: ModuleKind::Linear,
            rank,
            out_features,
            in_features,
            factors: Factors::Lora {
                a: Data::Owned(Arc::new(folded)),
                b: Data::Stored {
                    key: bkey,
                    transpose: false,
                },
            },
            base_transposed: cfg.fan_in_fan_out,
            dora_magnitude: None,
            dora_rule: DoraRule::Peft,
            bias: None,
        });
    }
    super::assemble::assemble(path, file, &cfg, modules, full)
}
