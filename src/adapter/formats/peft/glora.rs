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
//! lorakit merges both: a module whose C, D or E holds anything but zeros carries them as its
//! `bias` (packed for `algo::glora_bias_delta`, which the merge applies with the base's `b0` and
//! `W0`).

use super::assemble::{assemble, stored_full};
use super::config::{stored_f32, PeftConfig, PREFIX};
use crate::adapter::algo::{Factors, HadamardPart, HadamardTuner};
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, LoraModule};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

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
    let [config_a_b, config_c, config_d_e] = path_config(&cfg, &fpath)?;
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
        // The bias paths, packed `[len C, len D, len E, C…, D…, E…]` for
        // `algo::glora_bias_delta`; none when all zero (a base without a bias has only zeros).
        let mut packed: Vec<f32> = Vec::new();
        let mut lens = [0f32; 3];
        for (slot, p) in ['C', 'D', 'E'].into_iter().enumerate() {
            let leaves = one(p)?;
            let v: Vec<f32> = match (leaves.get("Xd"), leaves.get("Xu")) {
                (Some(xd), Some(xu)) if p == 'C' => match (&shape(xd)?[..], &shape(xu)?[..]) {
                    // `GloraLoraPath(in, 1, r)`: C = Xd·Xu, [in, 1].
                    ([k, r], [r2, 1]) if r == r2 && *k > 0 => {
                        let (xd, xu) = (stored_f32(&file, xd)?, stored_f32(&file, xu)?);
                        (0..*k)
                            .map(|j| {
                                (0..*r)
                                    .map(|t| xd[j * r + t] as f64 * xu[t] as f64)
                                    .sum::<f64>() as f32
                            })
                            .collect()
                    }
                    (sd, su) => {
                        return Err(bad(format!(
                            "module `{name}`: glora_C.Xd {sd:?} and glora_C.Xu {su:?} are not [in, r] and [r, 1]"
                        )))
                    }
                },
                _ => {
                    let key = leaves
                        .get("X")
                        .or(leaves.get("zeros"))
                        .ok_or_else(|| bad(format!("module `{name}`: glora_{p} is not a vector, constant or zeros")))?;
                    let ok = match (p, &shape(key)?[..]) {
                        ('C', [k, 1]) => *k > 0,
                        ('D' | 'E', [n]) => *n > 0,
                        _ => false,
                    };
                    if !ok {
                        return Err(bad(format!(
                            "tensor `{key}`: shape {:?} is not {}",
                            shape(key)?,
                            if p == 'C' { "[in, 1]" } else { "[out] or [1]" }
                        )));
                    }
                    stored_f32(&file, key)?
                }
            };
            lens[slot] = v.len() as f32;
            packed.extend(v);
        }
        // A and B as `config_A_B` makes PEFT build them (`update_layer`): stored paths of
        // another kind or rank are refused by PEFT's load (hostile round 14).
        for p in ['A', 'B'] {
            let leaves = one(p)?;
            let stored_kind = match (leaves.get("Xd"), leaves.get("X"), leaves.get("zeros")) {
                (Some(xd), _, _) => {
                    let r = shape(xd)?.get(1).copied().unwrap_or(0);
                    if let Some(cr) = cfg.r_other_than(r) {
                        return Err(bad(format!(
                            "tensor `{xd}` has rank {r}, but `r` in adapter_config.json is {cr}: PEFT builds GLoRA's lora paths at r and refuses the file"
                        )));
                    }
                    "lora"
                }
                (_, Some(x), _) if shape(x)? == [1] => "constant",
                (_, Some(_), _) => "vector",
                (_, _, Some(_)) => "none",
                _ => "lora (Xu without Xd)",
            };
            if stored_kind != config_a_b {
                return Err(bad(format!(
                    "module `{name}`: glora_{p} is stored as a `{stored_kind}` path, but `config_A_B` in adapter_config.json is `{config_a_b}`: PEFT builds that path and refuses the file"
                )));
            }
        }
        // C, D and E likewise where PEFT built them (a base with a bias; `none` otherwise,
        // whatever the config says): a stored path of another kind is not what PEFT loads into
        // the layer it builds (hostile round 15).
        for (p, key, want) in [
            ('C', "config_C", config_c),
            ('D', "config_D_E", config_d_e),
            ('E', "config_D_E", config_d_e),
        ] {
            let leaves = one(p)?;
            let stored_kind = match (leaves.get("Xd"), leaves.get("X")) {
                (Some(_), _) => "lora",
                (_, Some(x)) if p != 'C' && shape(x)? == [1] => "constant",
                (_, Some(_)) => "vector",
                _ => "none",
            };
            if stored_kind != "none" && stored_kind != want {
                return Err(bad(format!(
                    "module `{name}`: glora_{p} is stored as a `{stored_kind}` path, but `{key}` in adapter_config.json is `{want}`: PEFT builds that path and does not load the stored one"
                )));
            }
        }
        let bias = packed
            .iter()
            .any(|&x| x != 0.0)
            .then(|| Data::Owned(Arc::new(lens.iter().copied().chain(packed).collect())));
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
            let Some(z) = leaves.get("zeros") else {
                return Err(bad(format!(
                    "module `{name}`: glora_{p} holds {:?}; a lora path needs both .Xd and .Xu",
                    leaves.keys().collect::<Vec<_>>()
                )));
            };
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
        // GLoRA's bias update (where the base has a bias) rides on the module.
        let mut module = LoraModule::peft_linear(
            name,
            (out, inp, rank.max(1)),
            1.0,
            Factors::Hadamard {
                mul,
                add,
                tuner: HadamardTuner::Glora,
            },
            false,
        );
        module.bias = bias;
        modules.push(module);
    }
    assemble(path, file, &cfg, modules, full)
}

/// `config_A_B`, `config_C` and `config_D_E`, each checked against the values GloraConfig's
/// `__post_init__` accepts (defaults `lora`, `lora`, `constant`); C, D and E are built only
/// where the base has a bias.
fn path_config(cfg: &PeftConfig, fpath: &Path) -> InputResult<[&'static str; 3]> {
    let mut kinds = ["lora", "lora", "constant"];
    for (i, (key, default, valid)) in [
        (
            "config_A_B",
            "lora",
            &["lora", "vector", "constant", "none"][..],
        ),
        ("config_C", "lora", &["lora", "vector", "none"][..]),
        (
            "config_D_E",
            "constant",
            &["vector", "constant", "none"][..],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let v = match cfg.raw.get(key) {
            None | Some(serde_json::Value::Null) => Some(default),
            Some(x) => x.as_str(),
        };
        let Some(v) = v.and_then(|v| valid.iter().copied().find(|x| *x == v)) else {
            return Err(InputError::invalid(
                fpath,
                format!(
                    "`{key}` {} in adapter_config.json is not one of {valid:?} (PEFT's GloraConfig refuses it)",
                    cfg.raw[key]
                ),
            ));
        };
        kinds[i] = v;
    }
    Ok(kinds)
}
