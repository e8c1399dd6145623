//! Resolving adapter module names onto a base checkpoint's tensors.
//!
//! Every module must land on exactly one base tensor of matching shape; the [`Resolution`]
//! lists the ones that do not, each with its reason, so callers can refuse or warn — nothing is
//! dropped silently.
//!
//! PEFT modules (dotted paths, `base_model.model.` already removed) map to `{module}.weight`;
//! when the base was saved with a different root (e.g. `LlamaModel` without `model.`), a unique
//! tensor whose name and the expected name agree on a dotted suffix is accepted. kohya names
//! (`lora_te_text_model_encoder_layers_0_self_attn_q_proj`) are compared with the base's module
//! paths with dots replaced by underscores, exact first, then as an underscore-bounded suffix;
//! more than one candidate is an error (ambiguous), as underscores inside names make the
//! reverse mapping non-unique.
//!
//! An expert of a fused MoE parameter (`{param}[e/E]`, PEFT `target_parameters`,
//! [`super::formats::peft::params`]) maps to its expert's slice of the `[E, ·, ·]` tensor
//! `{param}` itself, exact name only.
//!
//! Must not read tensor data or decide what an unmatched module means (refuse or warn is the
//! caller's choice); merge, eval and train all match names through it rather than on their own.

use super::formats::kohya;
use super::{Adapter, Format, LoraModule, ModuleKind};
use crate::io::Checkpoint;
use std::collections::HashMap;

/// Why a module or full tensor found no base tensor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Unmatched {
    NotFound {
        module: String,
        expected: String,
    },
    ShapeMismatch {
        module: String,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    Ambiguous {
        module: String,
        candidates: Vec<String>,
    },
    NotFloat {
        module: String,
        tensor: String,
        dtype: String,
    },
}

impl std::fmt::Display for Unmatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmatched::NotFound { module, expected } => {
                write!(f, "`{module}`: no base tensor `{expected}`")
            }
            Unmatched::ShapeMismatch {
                module,
                tensor,
                expected,
                found,
            } => {
                write!(f, "`{module}`: base tensor `{tensor}` has shape {found:?}, the adapter needs {expected:?}")
            }
            Unmatched::Ambiguous { module, candidates } => {
                write!(
                    f,
                    "`{module}`: ambiguous, matches {}",
                    candidates.join(", ")
                )
            }
            Unmatched::NotFloat {
                module,
                tensor,
                dtype,
            } => {
                write!(f, "`{module}`: base tensor `{tensor}` is {dtype}, lorakit merges only into F32/F16/BF16/F64")
            }
        }
    }
}

/// A module placed on a base tensor.
#[derive(Debug, Clone)]
pub struct Placement {
    pub module: usize,
    /// Base weight tensor.
    pub weight: String,
    /// Base bias tensor (when the module has a `lora_B` bias).
    pub bias: Option<String>,
}

/// Where each module and full tensor of an adapter goes in a base.
#[derive(Debug, Clone, Default)]
pub struct Resolution {
    pub modules: Vec<Placement>,
    /// (index into `full_tensors`, base tensor name).
    pub full: Vec<(usize, String)>,
    pub unmatched: Vec<Unmatched>,
}

/// Shape the base must store for `m` (a norm layer's is 1-D; for the W0-dependent OFT and IA3
/// the side the file does not give is 0, see [`fits_base_dependent`]).
pub fn expected_shape(m: &LoraModule) -> Vec<usize> {
    if matches!(m.factors, crate::adapter::Factors::Norm { .. }) {
        return vec![m.out_features];
    }
    match &m.kind {
        ModuleKind::Conv { kernel } => {
            let mut s = vec![
                m.out_features,
                m.in_features / kernel.iter().product::<usize>().max(1),
            ];
            s.extend(kernel);
            s
        }
        _ if m.base_transposed => vec![m.in_features, m.out_features],
        _ => vec![m.out_features, m.in_features],
    }
}

/// Resolves every module and full tensor of `adapter` against `base`.
pub fn resolve(adapter: &Adapter, base: &Checkpoint) -> Resolution {
    resolve_in(adapter, base, None)
}

/// [`resolve`] against a base whose quantized weights are described by `quant`: a quantized
/// weight is matched by its logical shape and counts as float (it is dequantized to be merged),
/// and its companion tensors (scales, code books) are never candidates.
pub fn resolve_in(
    adapter: &Adapter,
    base: &Checkpoint,
    quant: Option<&crate::io::quant::QuantMap>,
) -> Resolution {
    let is_companion = |n: &str| quant.is_some_and(|q| q.companion_of(n).is_some());
    // (logical shape, dtype it is merged in) of a base tensor.
    let logical = |name: &str| -> (Vec<usize>, crate::dtype::Dtype) {
        match quant.and_then(|q| q.get(name)) {
            Some(t) => (t.shape.clone(), t.natural_dtype()),
            None => {
                let i = base.info(name).expect("candidate exists");
                (i.shape.clone(), i.dtype)
            }
        }
    };
    // Candidates by weight name: a packed weight (`…weight_packed`) is matched as `…weight`.
    let names: Vec<&str> = base
        .names()
        .filter(|n| !is_companion(n))
        .map(|n| quant.map_or(n, |q| q.logical_name(n)))
        .collect();
    let kohya_index: HashMap<String, Vec<&str>> = if adapter.format == Format::Kohya {
        let mut idx: HashMap<String, Vec<&str>> = HashMap::new();
        for n in &names {
            if let Some(m) = n.strip_suffix(".weight") {
                idx.entry(m.replace('.', "_")).or_default().push(n);
            }
        }
        idx
    } else {
        HashMap::new()
    };
    let mut res = Resolution::default();
    for (mi, m) in adapter.modules.iter().enumerate() {
        if let Some((param, _, n)) = super::formats::peft::params::parse_expert(&m.name) {
            // One expert of a fused `[E, ·, ·]` parameter: its slice (peft/params.rs).
            let expected = expected_shape(m);
            let found = names.contains(&param).then(|| logical(param));
            // Either orientation: which one PEFT used is the model class's (`is_transposed`),
            // decided with the base by `params::fit_to_base` before a merge.
            let swapped: Vec<usize> = expected.iter().rev().copied().collect();
            let fits = |s: &[usize]| {
                s.len() == 3 && s[0] == n && (s[1..] == expected[..] || s[1..] == swapped[..])
                    || n == 1 && s == expected.as_slice()
            };
            match found {
                None => res.unmatched.push(Unmatched::NotFound {
                    module: m.name.clone(),
                    expected: param.to_owned(),
                }),
                Some((s, _)) if !fits(&s) => res.unmatched.push(Unmatched::ShapeMismatch {
                    module: m.name.clone(),
                    tensor: param.to_owned(),
                    expected: [vec![n], expected].concat(),
                    found: s,
                }),
                Some((_, dt)) if !crate::dtype::is_float_compute(dt) => {
                    res.unmatched.push(Unmatched::NotFloat {
                        module: m.name.clone(),
                        tensor: param.to_owned(),
                        dtype: crate::dtype::name(dt),
                    })
                }
                Some(_) => res.modules.push(Placement {
                    module: mi,
                    weight: param.to_owned(),
                    bias: None,
                }),
            }
            continue;
        }
        let candidates = if adapter.format == Format::Kohya && !m.name.contains('.') {
            kohya_candidates(&m.name, &kohya_index)
        } else {
            dotted_candidates(&format!("{}.weight", m.name), &names)
        };
        let weight = match candidates.as_slice() {
            [] => {
                res.unmatched.push(Unmatched::NotFound {
                    module: m.name.clone(),
                    expected: format!("{}.weight", m.name),
                });
                continue;
            }
            [one] => one.to_string(),
            many => {
                res.unmatched.push(Unmatched::Ambiguous {
                    module: m.name.clone(),
                    candidates: many.iter().map(|s| s.to_string()).collect(),
                });
                continue;
            }
        };
        let (found, found_dtype) = logical(&weight);
        let expected = expected_shape(m);
        let fits =
            found == expected || shape_fits_flat(m, &found) || fits_base_dependent(m, &found);
        if !fits {
            res.unmatched.push(Unmatched::ShapeMismatch {
                module: m.name.clone(),
                tensor: weight,
                expected,
                found,
            });
            continue;
        }
        if !crate::dtype::is_float_compute(found_dtype) {
            res.unmatched.push(Unmatched::NotFloat {
                module: m.name.clone(),
                tensor: weight,
                dtype: crate::dtype::name(found_dtype),
            });
            continue;
        }
        let bias = match &m.bias {
            None => None,
            Some(_) => {
                let b = format!("{}.bias", weight.strip_suffix(".weight").unwrap_or(&weight));
                // An unplaceable bias is reported on its own; the weight still lands, so
                // `--allow-unmatched` merges B·A and leaves the bias out (as listed).
                let peft_ia3 = matches!(
                    m.factors,
                    crate::adapter::Factors::Ia3 {
                        rule: crate::adapter::Ia3Rule::Peft,
                        ..
                    }
                );
                match base.info(&b) {
                    Some(i) if i.shape.iter().product::<usize>() == m.out_features => Some(b),
                    // PEFT's IA3 scales the bias when there is one (`tuners/ia3/layer.py`).
                    None if peft_ia3 => None,
                    Some(i) => {
                        res.unmatched.push(Unmatched::ShapeMismatch {
                            module: format!("{}.lora_B.bias", m.name),
                            tensor: b,
                            expected: vec![m.out_features],
                            found: i.shape.clone(),
                        });
                        None
                    }
                    None => {
                        res.unmatched.push(Unmatched::NotFound {
                            module: format!("{}.lora_B.bias", m.name),
                            expected: b,
                        });
                        None
                    }
                }
            }
        };
        res.modules.push(Placement {
            module: mi,
            weight,
            bias,
        });
    }
    for (fi, f) in adapter.full_tensors.iter().enumerate() {
        // Trainable-token rows replace rows of their module's weight.
        let target = match (
            &f.rows,
            crate::adapter::formats::peft::tokens_module(&f.name),
        ) {
            (Some(_), Some(module)) => format!("{module}.weight"),
            _ => f.name.clone(),
        };
        let candidates = dotted_candidates(&target, &names);
        match candidates.as_slice() {
            [] => res.unmatched.push(Unmatched::NotFound {
                module: f.name.clone(),
                expected: f.name.clone(),
            }),
            [one] => {
                let (found, _) = logical(one);
                if !f.fits(&found) {
                    res.unmatched.push(Unmatched::ShapeMismatch {
                        module: f.name.clone(),
                        tensor: one.to_string(),
                        expected: f.shape.clone(),
                        found,
                    });
                } else {
                    res.full.push((fi, one.to_string()));
                }
            }
            many => res.unmatched.push(Unmatched::Ambiguous {
                module: f.name.clone(),
                candidates: many.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }
    res
}

/// OFT and IA3 files give only one side of the weight they adapt (OFT's and IA3's rows,
/// IA3 `on_input`'s input channels): any base weight of rank ≥ 2 with that side fits (a conv's
/// input channels are its second axis), a conv module only a conv weight (OFT without
/// `rescale` either).
fn fits_base_dependent(m: &LoraModule, found: &[usize]) -> bool {
    use crate::adapter::Factors;
    let conv = matches!(m.kind, ModuleKind::Conv { .. });
    // OFT without `rescale` does not say linear or conv either.
    let unknown = matches!(
        m.factors,
        Factors::Oft { rescale: None, .. }
            | Factors::Boft { rescale: None, .. }
            | Factors::PeftOft { .. }
    );
    let rank_ok = if unknown {
        found.len() >= 2
    } else if conv {
        found.len() > 2
    } else {
        found.len() == 2
    };
    rank_ok
        && match &m.factors {
            Factors::Oft { .. }
            | Factors::Boft { .. }
            | Factors::Ia3 {
                on_input: false, ..
            } => found[0] == m.out_features,
            Factors::Ia3 { on_input: true, .. } => found[1] == m.in_features,
            // PEFT OFT rotates the flattened input side (in·kh·kw).
            Factors::PeftOft {
                block_share: true,
                block_size,
                ..
            } => found[1..].iter().product::<usize>() % block_size == 0,
            Factors::PeftOft { .. } => found[1..].iter().product::<usize>() == m.in_features,
            _ => false,
        }
}

/// A Conv base can be stored `[out, in, kh, kw]` while a kohya/PEFT 1×1 conv adapter on a
/// linear-like layer stores 4-D factors: accept equal element layout `[out, in·kh·kw]`.
fn shape_fits_flat(m: &LoraModule, found: &[usize]) -> bool {
    match &m.kind {
        ModuleKind::Conv { kernel } if kernel.iter().all(|&k| k == 1) => {
            found.len() == 2 && found[0] == m.out_features && found[1] == m.in_features
        }
        // LyCORIS stores a LoHa conv's input side flattened (`hada_w1_b` is `[r, in·kh·kw]`),
        // and a module lowered from it to LoRA keeps that layout; ComfyUI reshapes every ΔW to
        // the base weight's shape (`lora.py` / `loha.py` `calculate_weight`: `.reshape(weight.shape)`),
        // so the flat layout is the conv's `[out, in·kh·kw]` (a 1×1 conv's `[out, in, 1, 1]`).
        ModuleKind::Linear => {
            found.len() > 2
                && found[0] == m.out_features
                && found[1..].iter().product::<usize>() == m.in_features
        }
        _ => false,
    }
}

/// Exact name first; otherwise names that agree with `want` on a dotted suffix.
fn dotted_candidates<'a>(want: &str, names: &[&'a str]) -> Vec<&'a str> {
    if let Some(n) = names.iter().find(|n| **n == want) {
        return vec![n];
    }
    names
        .iter()
        .filter(|n| {
            let (long, short) = if n.len() > want.len() {
                (**n, want)
            } else {
                (want, **n)
            };
            long.ends_with(short) && long.as_bytes()[long.len() - short.len() - 1] == b'.'
        })
        .copied()
        .collect()
}

/// The base weights a kohya (underscored, prefixed) module name can stand for, from `index`:
/// base weight names by their module path with `.` → `_`. Exact match first, then names that
/// agree on an `_`-separated suffix.
pub fn kohya_candidates<'a>(name: &str, index: &HashMap<String, Vec<&'a str>>) -> Vec<&'a str> {
    let rest = kohya::split_prefix(name).map(|(_, r)| r).unwrap_or(name);
    if let Some(v) = index.get(rest) {
        return v.clone();
    }
    let mut out: Vec<&str> = index
        .iter()
        .filter(|(k, _)| {
            let (long, short) = if k.len() > rest.len() {
                (k.as_str(), rest)
            } else {
                (rest, k.as_str())
            };
            long.ends_with(short) && long.as_bytes()[long.len() - short.len() - 1] == b'_'
        })
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    out.sort();
    out
}

/// Renames kohya modules to the dotted base module paths they resolved to, so the adapter
/// can be written as PEFT. Unresolved modules are left as they are (see the resolution).
pub fn rename_to_base(adapter: &mut Adapter, res: &Resolution) {
    for p in &res.modules {
        let m = &mut adapter.modules[p.module];
        m.name = p
            .weight
            .strip_suffix(".weight")
            .unwrap_or(&p.weight)
            .to_owned();
    }
}
