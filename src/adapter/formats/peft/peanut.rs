//! Reading PEFT PEANuT folders (`peft_type` PEANUT; PEFT 0.21.2 `tuners/peanut/`) into the one
//! adapter model. Never writes.
//!
//! Each module stores `peanut_A.weight` [r, out], `peanut_B.weight` [out, r] and `depth`
//! encoders and decoders `peanut_encoders.{i}.weight`, `peanut_decoders.{i}.weight` [r, r]
//! (`layer.py` `update_layer`; the keys as `model.py` `_remove_adapter_name_from_key` writes
//! them), all built from the config's `r` and `depth`. PEFT merges `W' = W0 + ΔW` with ΔW a
//! small network of `act_fn` run over the base weight itself (`_compute_delta_weight`, see
//! [`BaseRule::Peanut`]), times `scaling`. Linear layers only (`model.py` `_create_new_module`).

use super::assemble::{assemble, stored_full};
use super::beft::{cfg_number, on_base_module, stored};
use super::config::{stored_f32, PeftConfig, PREFIX};
use crate::adapter::algo::{Activation, BaseRule};
use crate::adapter::model::Adapter;
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::collections::BTreeMap;
use std::path::Path;

/// One module's tensor keys: A, B, encoders and decoders by index.
#[derive(Default)]
struct Parts {
    a: Option<String>,
    b: Option<String>,
    enc: BTreeMap<usize, String>,
    dec: BTreeMap<usize, String>,
}

/// Reads a PEFT PEANuT adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let act_name = match cfg.raw.get("act_fn") {
        None | Some(serde_json::Value::Null) => "relu",
        Some(v) => v
            .as_str()
            .ok_or_else(|| bad("`act_fn` in adapter_config.json must be a string".into()))?,
    };
    let act = Activation::parse(act_name).ok_or_else(|| {
        bad(format!(
            "`act_fn` \"{act_name}\" in adapter_config.json is not one lorakit computes (relu, gelu, gelu_python, gelu_new, gelu_pytorch_tanh, gelu_python_tanh, gelu_fast, gelu_10, quick_gelu, silu, swish, sigmoid, tanh, linear, relu6, relu2, leaky_relu)"
        ))
    })?;
    let scaling = cfg_number(&fpath, &cfg, "scaling", Some(1.0))?.unwrap_or(1.0);
    let r = match cfg.raw.get("r") {
        None => 32,
        Some(_) => cfg.r,
    };
    let depth = match cfg.raw.get("depth") {
        None | Some(serde_json::Value::Null) => 0,
        Some(v) => v.as_u64().ok_or_else(|| {
            bad("`depth` in adapter_config.json must be a non-negative integer".into())
        })? as usize,
    };
    let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
    let mut full = Vec::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        let Some(at) = rel.find(".peanut_") else {
            full.push(stored_full(rel.to_owned(), t));
            continue;
        };
        let (module, role) = (&rel[..at], &rel[at + 1..]);
        let p = parts.entry(module.to_owned()).or_default();
        let index = |s: &str| {
            s.strip_suffix(".weight")
                .and_then(|i| i.parse::<usize>().ok())
        };
        let slot = match role {
            "peanut_A.weight" => &mut p.a,
            "peanut_B.weight" => &mut p.b,
            _ => {
                let (map, i) = match (
                    role.strip_prefix("peanut_encoders.").and_then(index),
                    role.strip_prefix("peanut_decoders.").and_then(index),
                ) {
                    (Some(i), _) => (&mut p.enc, i),
                    (_, Some(i)) => (&mut p.dec, i),
                    _ => {
                        return Err(bad(format!(
                            "tensor `{key}`: not a PEANuT tensor (peanut_A.weight, peanut_B.weight, peanut_encoders.N.weight, peanut_decoders.N.weight)"
                        )))
                    }
                };
                if map.insert(i, key.to_owned()).is_some() {
                    return Err(bad(format!("tensor `{key}` is given twice")));
                }
                continue;
            }
        };
        if slot.replace(key.to_owned()).is_some() {
            return Err(bad(format!("tensor `{key}` is given twice")));
        }
    }
    let shape = |k: &str| -> InputResult<Vec<usize>> { Ok(file.view(k)?.shape.to_vec()) };
    let mut modules = Vec::with_capacity(parts.len());
    for (name, p) in parts {
        let (Some(akey), Some(bkey)) = (p.a, p.b) else {
            return Err(bad(format!(
                "module `{name}`: PEANuT needs peanut_A.weight and peanut_B.weight"
            )));
        };
        let d = match (&shape(&akey)?[..], &shape(&bkey)?[..]) {
            ([ra, d], [db, rb]) if *ra == r && *rb == r && d == db && *d > 0 => *d,
            (sa, sb) => {
                return Err(bad(format!(
                    "module `{name}`: peanut_A {sa:?} and peanut_B {sb:?} are not [{r}, out] and [out, {r}] (`r` {r} in adapter_config.json)"
                )))
            }
        };
        // PEFT builds `depth` encoders and decoders: exactly 0..depth of each.
        for (what, map) in [("peanut_encoders", &p.enc), ("peanut_decoders", &p.dec)] {
            if !map.keys().copied().eq(0..depth) {
                return Err(bad(format!(
                    "module `{name}`: {what} holds indices {:?}, but `depth` {depth} in adapter_config.json builds 0..{depth}",
                    map.keys().collect::<Vec<_>>()
                )));
            }
        }
        let mut tensors = vec![stored(&akey), stored(&bkey)];
        for key in p.enc.values().chain(p.dec.values()) {
            if shape(key)? != [r, r] {
                return Err(bad(format!(
                    "tensor `{key}`: shape {:?} is not [{r}, {r}]",
                    shape(key)?
                )));
            }
            tensors.push(stored(key));
        }
        for key in [&akey, &bkey]
            .into_iter()
            .chain(p.enc.values())
            .chain(p.dec.values())
        {
            stored_f32(&file, key)?;
        }
        let rule = BaseRule::Peanut {
            depth,
            act,
            scaling,
        };
        modules.push(on_base_module(name, (d, 0, r), rule, tensors, false));
    }
    assemble(path, file, &cfg, modules, full)
}
