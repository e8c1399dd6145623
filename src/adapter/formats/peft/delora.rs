//! Reading PEFT DeLoRA folders (`peft_type` DELORA; Bini et al., "Decoupling Angles and Strength
//! in Low-rank Adaptation", ICLR 2026; PEFT 0.21.2 `tuners/delora/`) into the one adapter model
//! as plain LoRA modules. Never writes.
//!
//! Each module stores `delora_A` [r, in], `delora_B` [out, r], `delora_lambda` [1] and the
//! buffer `delora_w_norm` [in] (the base weight's column norms at initialisation, saved with
//! the adapter), and PEFT merges `W0 + ΔW` with
//! `ΔW = B·diag(λ / r / (‖Aᵢ‖·‖Bⁱ‖))·A ⊙ w_norm` (each column j times `w_norm[j]`; the norms
//! clamped below at 1e-4; `layer.py` `_compute_delta`). So the module is the LoRA `B·A′` with
//! `A′[i, j] = λ / r / (‖Aᵢ‖·‖Bⁱ‖) · A[i, j] · w_norm[j]` (computed in f64, rounded once), scale 1.

use super::assemble::{assemble, stored_full};
use super::config::{stored_f32, PeftConfig, PREFIX};
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, LoraModule};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const SUFFIXES: [&str; 4] = [".delora_A", ".delora_B", ".delora_lambda", ".delora_w_norm"];

/// A stored tensor's key and shape.
type Entry = (String, Vec<usize>);

/// Reads a PEFT DeLoRA adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let mut parts: BTreeMap<String, [Option<Entry>; 4]> = BTreeMap::new();
    let mut full = Vec::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        let hit = SUFFIXES
            .iter()
            .enumerate()
            .find_map(|(i, s)| rel.strip_suffix(s).map(|m| (m, i)));
        let Some((module, i)) = hit else {
            if rel.contains("delora_") {
                return Err(bad(format!("tensor `{key}`: not a DeLoRA tensor")));
            }
            full.push(stored_full(rel.to_owned(), t));
            continue;
        };
        let slot = &mut parts.entry(module.to_owned()).or_default()[i];
        if slot.is_some() {
            return Err(bad(format!("tensor `{key}` is given twice")));
        }
        *slot = Some((key.to_owned(), t.shape.clone()));
    }
    let mut modules = Vec::with_capacity(parts.len());
    for (name, [a, b, l, n]) in parts {
        let (
            Some((akey, ashape)),
            Some((bkey, bshape)),
            Some((lkey, lshape)),
            Some((nkey, nshape)),
        ) = (a, b, l, n)
        else {
            return Err(bad(format!(
                "module `{name}`: DeLoRA needs delora_A, delora_B, delora_lambda and delora_w_norm"
            )));
        };
        let (r, k, d) = match (&ashape[..], &bshape[..], &lshape[..], &nshape[..]) {
            ([r, k], [d, rb], [1], [kn]) if r == rb && k == kn && *r > 0 && *k > 0 && *d > 0 => {
                (*r, *k, *d)
            }
            _ => {
                return Err(bad(format!(
                    "module `{name}`: delora_A {ashape:?}, delora_B {bshape:?}, delora_lambda {lshape:?} and delora_w_norm {nshape:?} are not [r, in], [out, r], [1] and [in]"
                )))
            }
        };
        let a = stored_f32(&file, &akey)?;
        let b = stored_f32(&file, &bkey)?;
        let lambda = stored_f32(&file, &lkey)?[0] as f64;
        let w_norm = stored_f32(&file, &nkey)?;
        let norm = |x: &mut dyn Iterator<Item = f32>| {
            x.map(|v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt()
                .max(1e-4)
        };
        let mut folded = vec![0f32; r * k];
        for i in 0..r {
            let an = norm(&mut a[i * k..(i + 1) * k].iter().copied());
            let bn = norm(&mut (0..d).map(|o| b[o * r + i]));
            let c = lambda / r as f64 / (an * bn);
            for j in 0..k {
                folded[i * k + j] = (c * a[i * k + j] as f64 * w_norm[j] as f64) as f32;
            }
        }
        modules.push(LoraModule::linear_unit_scale(
            name,
            (d, k, r),
            (
                Data::Owned(Arc::new(folded)),
                Data::Stored {
                    key: bkey,
                    transpose: false,
                },
            ),
            false,
        ));
    }
    assemble(path, file, &cfg, modules, full)
}
