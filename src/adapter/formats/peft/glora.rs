//! Reading PEFT GLoRA folders (`peft_type` GLORA; Chavan et al., "One-for-All: Generalized LoRA
//! for Parameter-Efficient Fine-tuning", 2023; PEFT 0.21.2 `tuners/glora/`) into the one adapter
//! model. Never writes. (LyCORIS' GLoRA, `W0·a1·a2 + b1·b2`, is another algorithm: `lycoris.rs`.)
//!
//! Each module stores five paths `glora_A` … `glora_E` (`layer.py` `update_layer`), each as the
//! config's `config_A_B` / `config_C` / `config_D_E` makes it: `lora` (`.Xd` [out, r] and `.Xu`
//! [r, in]), `vector` (`.X`, [out, 1] for A/B, [in, 1] for C, [out] for D/E), `constant` (`.X`
//! [1]) or `none` (a zero buffer `.zeros`, saved too). PEFT merges `W' = W0 + W0 ⊙ A + B`
//! (`GloraLayer.merge`, [`Factors::Hadamard`]) and, where the base has a bias,
//! `b' = b0 + b0·D + E + W0·C`; on a base without a bias C, D and E are `none`.
//!
//! lorakit merges the weight. A module whose C, D or E holds anything but zeros changes the bias
//! through `W0·C`, which lorakit does not merge yet: it is refused, naming the tensor.

use super::assemble::{assemble, stored_full};
use super::config::{stored_f32, PeftConfig, PREFIX};
use crate::adapter::algo::{Factors, HadamardPart, HadamardTuner};
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, LoraModule};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::collections::BTreeMap;
use std::path::Path;

/// The leaves a GLoRA path may hold, by name.
const LEAVES: [&str; 4] = ["Xd", "Xu", "X", "zeros"];

/// Reads a PEFT GLoRA adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    // module → path letter (A…E) → leaf → key.
    let mut modules_map: BTreeMap<String, BTreeMap<char, BTreeMap<&str, String>>> = BTreeMap::new();
    let mut full = Vec::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        let Some(pos) = rel.find(".glora_") else {
            if rel.contains("glora_") {
                return Err(bad(format!("tensor `{key}`: not a GLoRA tensor")));
            }
            full.push(stored_full(rel.to_owned(), t));
            continue;
        };
        let (module, rest) = (&rel[..pos], &rel[pos + ".glora_".len()..]);
        let parsed = rest.split_once('.').and_then(|(p, leaf)| {
            let p = p
                .chars()
                .next()
                .filter(|c| "ABCDE".contains(*c) && p.len() == 1)?;
            Some((p, LEAVES.into_iter().find(|l| *l == leaf)?))
        });
        let Some((letter, leaf)) = parsed.filter(|_| !module.is_empty()) else {
            return Err(bad(format!(
                "tensor `{key}`: not a GLoRA tensor (glora_A…glora_E with .Xd, .Xu, .X or .zeros)"
            )));
        };
        let slot = modules_map
            .entry(module.to_owned())
            .or_default()
            .entry(letter)
            .or_default();
        if slot.insert(leaf, key.to_owned()).is_some() {
            return Err(bad(format!("tensor `{key}` is given twice")));
        }
    }
    let shape = |k: &str| file.view(k).map(|v| v.shape.to_vec());
    let mut modules = Vec::with_capacity(modules_map.len());
    for (name, paths) in modules_map {
        let missing = |p: char| bad(format!("module `{name}`: GLoRA needs glora_{p}"));
        let one = |p: char| -> InputResult<&BTreeMap<&str, String>> {
            let leaves = paths.get(&p).ok_or_else(|| missing(p))?;
            match leaves.len() {
                1 => Ok(leaves),
                2 if leaves.contains_key("Xd") && leaves.contains_key("Xu") => Ok(leaves),
                _ => Err(bad(format!(
                    "module `{name}`: glora_{p} holds {:?}, not one of Xd+Xu, X or zeros",
                    leaves.keys().collect::<Vec<_>>()
                ))),
            }
        };
        // The bias paths: refused unless zero (see the module header).
        for p in ['C', 'D', 'E'] {
            for key in one(p)?.values() {
                let v = stored_f32(&file, key)?;
                if v.iter().any(|&x| x != 0.0) {
                    return Err(bad(format!(
                        "tensor `{key}`: GLoRA's bias terms (b' = b0 + b0·D + E + W0·C) are not zero; lorakit merges GLoRA's weight but not its bias yet"
                    )));
                }
            }
        }
        // Sizes the paths give (0 where only constants: the base gives them).
        let (mut out, mut inp, mut rank) = (0usize, 0usize, 0usize);
        let mut part = |p: char| -> InputResult<HadamardPart> {
            let leaves = one(p)?;
            let stored = |k: &String| Data::Stored {
                key: k.clone(),
                transpose: false,
            };
            let fix = |what: &str, got: usize, dim: &mut usize, key: &String| {
                if *dim != 0 && *dim != got {
                    return Err(bad(format!(
                        "tensor `{key}`: {what} {got} differs from the module's other paths ({dim})"
                    )));
                }
                *dim = got;
                Ok(())
            };
            if let (Some(xd), Some(xu)) = (leaves.get("Xd"), leaves.get("Xu")) {
                let (sd, su) = (shape(xd)?, shape(xu)?);
                match (&sd[..], &su[..]) {
                    ([d, r], [r2, k]) if r == r2 && *r > 0 && *d > 0 && *k > 0 => {
                        fix("rows", *d, &mut out, xd)?;
                        fix("columns", *k, &mut inp, xu)?;
                        rank = rank.max(*r);
                        return Ok(HadamardPart::LowRank {
                            b: stored(xd),
                            a: stored(xu),
                            rank: *r,
                        });
                    }
                    _ => {
                        return Err(bad(format!(
                            "module `{name}`: glora_{p}.Xd {sd:?} and glora_{p}.Xu {su:?} are not [out, r] and [r, in]"
                        )))
                    }
                }
            }
            if let Some(x) = leaves.get("X") {
                return match shape(x)?[..] {
                    [1] => Ok(HadamardPart::Scalar(stored(x))),
                    [d, 1] if d > 0 => {
                        fix("rows", d, &mut out, x)?;
                        Ok(HadamardPart::Rows(stored(x)))
                    }
                    ref s => Err(bad(format!(
                        "tensor `{x}`: shape {s:?} is neither [1] (constant) nor [out, 1] (vector)"
                    ))),
                };
            }
            let z = &leaves["zeros"];
            match shape(z)?[..] {
                [d, k] if d > 0 && k > 0 => {
                    fix("rows", d, &mut out, z)?;
                    fix("columns", k, &mut inp, z)?;
                    // PEFT adds the buffer as loaded: zero unless the file says otherwise.
                    Ok(if stored_f32(&file, z)?.iter().all(|&x| x == 0.0) {
                        HadamardPart::Zero
                    } else {
                        HadamardPart::Dense(stored(z))
                    })
                }
                ref s => Err(bad(format!("tensor `{z}`: shape {s:?} is not [out, in]"))),
            }
        };
        let mul = part('A')?;
        let add = part('B')?;
        modules.push(LoraModule::peft_linear(
            name,
            (out, inp, rank.max(1)),
            1.0,
            Factors::Hadamard {
                mul,
                add,
                tuner: HadamardTuner::Glora,
            },
            false,
        ));
    }
    assemble(path, file, &cfg, modules, full)
}
