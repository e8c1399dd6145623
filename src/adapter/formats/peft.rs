//! Hugging Face PEFT LoRA adapters: `adapter_model.safetensors` + `adapter_config.json`.
//!
//! Key names follow PEFT `utils/save_and_load.py` (`get_peft_model_state_dict`): the adapter
//! name is removed and keys carry the `base_model.model.` prefix —
//! `{module}.lora_A.weight` `[r, in]` (conv: `[r, in, kh, kw]`), `{module}.lora_B.weight`
//! `[out, r]` (conv: `[out, r, 1, 1]`), `{module}.lora_B.bias` (`lora_bias`),
//! `{module}.lora_embedding_A` `[r, vocab]`, `{module}.lora_embedding_B` `[dim, r]`,
//! `{module}.lora_magnitude_vector` (DoRA), and any other tensor a full replacement
//! (`modules_to_save`, trained biases, `{module}.base_layer.weight` of saved embeddings).
//!
//! Rank and alpha per module follow PEFT `tuners/lora/model.py` `_create_and_replace`:
//! `rank_pattern` / `alpha_pattern` keys are matched against the module name with
//! `re.match(rf"(.*\.)?({key})$", name)`, first match in the config's order wins
//! (`utils/other.py` `get_pattern_key`); scale is `alpha/r`, or `alpha/√r` with `use_rslora`
//! (`layer.py` `update_layer`).

use crate::adapter::{
    scale_for, Adapter, Data, DoraRule, Factors, Format, FullTensor, LoraModule, ModuleKind,
};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use regex::Regex;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub const WEIGHTS_NAME: &str = "adapter_model.safetensors";
pub const CONFIG_NAME: &str = "adapter_config.json";
/// Prefix PEFT puts before module paths on disk.
pub const PREFIX: &str = "base_model.model.";

/// The PEFT tuners lorakit reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftType {
    Lora,
    /// `tuners/loha`: LyCORIS' LoHa under PEFT names, `scaling = alpha / r`.
    Loha,
    /// `tuners/lokr`: LyCORIS' LoKr under PEFT names, `scaling = alpha / r` always (unlike
    /// LyCORIS, whose scale is 1 when both Kronecker halves are whole).
    Lokr,
    /// `tuners/ia3`: one vector `ia3_l` per module, `W' = W0 ⊙ l` on the output rows, or on
    /// the input side for `feedforward_modules`; the bias scaled too on the output side.
    Ia3,
    /// `tuners/oft`: `oft_R.weight` per module, `W' = W0·blockdiag(R)ᵀ`.
    Oft,
}

/// The LoRA fields of `adapter_config.json` that lorakit reads (`alpha` for LoHa/LoKr).
#[derive(Debug, Clone)]
pub struct PeftConfig {
    pub peft_type: PeftType,
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub use_dora: bool,
    pub fan_in_fan_out: bool,
    pub rank_pattern: Vec<(String, usize)>,
    pub alpha_pattern: Vec<(String, f64)>,
    /// `rank_pattern` / `alpha_pattern` keys compiled once per adapter (same order).
    rank_re: Vec<Regex>,
    alpha_re: Vec<Regex>,
    pub target_modules: Value,
    pub modules_to_save: Vec<String>,
    pub bias: String,
    pub base_model: Option<String>,
    pub raw: Value,
}

impl PeftConfig {
    /// Parses and checks the fields; `path` names the file in errors.
    pub fn parse(path: &Path, text: &[u8]) -> InputResult<PeftConfig> {
        let raw: Value = serde_json::from_slice(text)
            .map_err(|e| InputError::invalid(path, format!("not valid JSON: {e}")))?;
        let obj = raw
            .as_object()
            .ok_or_else(|| InputError::invalid(path, "not a JSON object"))?;
        let bad = |k: &str, why: &str| InputError::invalid(path, format!("`{k}` {why}"));
        let peft_type = match obj.get("peft_type").and_then(Value::as_str) {
            None | Some("LORA") => PeftType::Lora,
            Some("LOHA") => PeftType::Loha,
            Some("LOKR") => PeftType::Lokr,
            Some("IA3") => PeftType::Ia3,
            Some("OFT") => PeftType::Oft,
            Some(t) => {
                return Err(bad(
                    "peft_type",
                    &format!("is `{t}`; lorakit reads LORA, LOHA, LOKR, IA3 and OFT adapters"),
                ))
            }
        };
        // LoHa/LoKr configs call it `alpha` (`tuners/loha/config.py`, `tuners/lokr/config.py`).
        let alpha_key = match peft_type {
            PeftType::Lora => "lora_alpha",
            PeftType::Loha | PeftType::Lokr | PeftType::Ia3 | PeftType::Oft => "alpha",
        };
        let r = match obj.get("r") {
            Some(v) => {
                v.as_u64()
                    // OFT's `r` may be 0 (then `oft_block_size` decides).
                    .filter(|&r| r > 0 || peft_type == PeftType::Oft)
                    .ok_or_else(|| bad("r", "must be a positive integer"))? as usize
            }
            None => 8,
        };
        let lora_alpha = match obj.get(alpha_key) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(alpha_key, "must be a number"))?,
            None => 8.0,
        };
        let flag = |k: &str| -> InputResult<bool> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(bad(k, "must be true or false")),
            }
        };
        let pattern = |k: &str| -> InputResult<Vec<(String, f64)>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(key, v)| {
                        v.as_f64()
                            .map(|x| (key.clone(), x))
                            .ok_or_else(|| bad(k, &format!("value for `{key}` is not a number")))
                    })
                    .collect(),
                Some(_) => Err(bad(k, "must be an object")),
            }
        };
        let rank_pattern = pattern("rank_pattern")?
            .into_iter()
            .map(|(k, v)| {
                if v >= 1.0 && v.fract() == 0.0 {
                    Ok((k, v as usize))
                } else {
                    Err(bad(
                        "rank_pattern",
                        &format!("rank for `{k}` is not a positive integer"),
                    ))
                }
            })
            .collect::<InputResult<Vec<_>>>()?;
        let modules_to_save = match obj.get("modules_to_save") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad("modules_to_save", "must hold strings"))
                })
                .collect::<InputResult<_>>()?,
            Some(_) => return Err(bad("modules_to_save", "must be a list")),
        };
        let alpha_pattern = pattern("alpha_pattern")?;
        let compile = |k: &str, keys: Vec<&str>| -> InputResult<Vec<Regex>> {
            keys.into_iter()
                .map(|key| {
                    compile_pattern(key).map_err(|e| {
                        InputError::invalid(
                            path,
                            format!(
                                "`{k}` key {key:?} is not a valid regex: {}",
                                one_line_regex_error(&e)
                            ),
                        )
                    })
                })
                .collect()
        };
        let rank_re = compile(
            "rank_pattern",
            rank_pattern.iter().map(|(k, _)| k.as_str()).collect(),
        )?;
        let alpha_re = compile(
            "alpha_pattern",
            alpha_pattern.iter().map(|(k, _)| k.as_str()).collect(),
        )?;
        Ok(PeftConfig {
            peft_type,
            r,
            lora_alpha,
            use_rslora: flag("use_rslora")?,
            use_dora: flag("use_dora")?,
            fan_in_fan_out: flag("fan_in_fan_out")?,
            rank_pattern,
            alpha_pattern,
            rank_re,
            alpha_re,
            target_modules: obj.get("target_modules").cloned().unwrap_or(Value::Null),
            modules_to_save,
            bias: obj
                .get("bias")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_owned(),
            base_model: obj
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_owned),
            raw: raw.clone(),
        })
    }

    /// Rank configured for `module` (rank_pattern, else `r`).
    pub fn rank_for(&self, module: &str) -> InputResult<usize> {
        Ok(match first_match(&self.rank_re, module) {
            Some(i) => self.rank_pattern[i].1,
            None => self.r,
        })
    }

    /// Alpha configured for `module` (alpha_pattern, else `lora_alpha`).
    pub fn alpha_for(&self, module: &str) -> InputResult<f64> {
        Ok(match first_match(&self.alpha_re, module) {
            Some(i) => self.alpha_pattern[i].1,
            None => self.lora_alpha,
        })
    }
}

/// A `rank_pattern` / `alpha_pattern` key as PEFT's `get_pattern_key` matches it: the whole
/// module name, or a suffix of it starting after a dot.
pub fn compile_pattern(key: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
}

/// The regex crate's errors span several lines (the pattern, a caret, the message); the last
/// line is the message.
fn one_line_regex_error(e: &regex::Error) -> String {
    let s = e.to_string();
    s.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("invalid regex")
        .to_owned()
}

/// Index of the first compiled pattern matching `name` (first match wins, as in PEFT).
pub fn first_match(patterns: &[Regex], name: &str) -> Option<usize> {
    patterns.iter().position(|re| re.is_match(name))
}

#[derive(Default)]
struct Parts {
    a: Option<(String, Vec<usize>)>,
    b: Option<(String, Vec<usize>)>,
    embedding: bool,
    magnitude: Option<(String, Vec<usize>)>,
    bias: Option<(String, Vec<usize>)>,
}

/// Reads a PEFT adapter whose tensors are in `file` and config at `config_path`.
pub fn read(path: &Path, file: SafetensorsFile, config_path: &Path) -> InputResult<Adapter> {
    let text = crate::io::read_json_file(config_path)?;
    let cfg = PeftConfig::parse(config_path, &text)?;
    if cfg.peft_type == PeftType::Ia3 {
        return read_ia3(path, file, cfg);
    }
    if cfg.peft_type == PeftType::Oft {
        return read_oft(path, file, cfg);
    }
    if cfg.peft_type != PeftType::Lora {
        return read_lycoris(path, file, cfg);
    }
    let fpath = file.path().to_path_buf();
    let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
    let mut full = Vec::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        let slot = |suffix: &str| rel.strip_suffix(suffix).map(str::to_owned);
        let entry = (t.name.clone(), t.shape.clone());
        // One key per slot: `x.lora_A.weight` beside `base_model.model.x.lora_A.weight` defines
        // the module twice, and which one PEFT keeps depends on dict order, so it is refused.
        let set =
            |field: &mut Option<(String, Vec<usize>)>, entry: (String, Vec<usize>)| match field {
                Some((other, _)) => Err(InputError::invalid(
                    &fpath,
                    format!(
                        "tensors `{other}` and `{}` define the same adapter tensor twice",
                        entry.0
                    ),
                )),
                None => {
                    *field = Some(entry);
                    Ok(())
                }
            };
        if let Some(m) = slot(".lora_A.weight") {
            set(&mut parts.entry(m).or_default().a, entry)?;
        } else if let Some(m) = slot(".lora_B.weight") {
            set(&mut parts.entry(m).or_default().b, entry)?;
        } else if let Some(m) = slot(".lora_B.bias") {
            set(&mut parts.entry(m).or_default().bias, entry)?;
        } else if let Some(m) = slot(".lora_embedding_A") {
            let p = parts.entry(m).or_default();
            set(&mut p.a, entry)?;
            p.embedding = true;
        } else if let Some(m) = slot(".lora_embedding_B") {
            let p = parts.entry(m).or_default();
            set(&mut p.b, entry)?;
            p.embedding = true;
        } else if let Some(m) =
            slot(".lora_magnitude_vector").or_else(|| slot(".lora_magnitude_vector.weight"))
        {
            set(&mut parts.entry(m).or_default().magnitude, entry)?;
        } else if rel.contains(".lora_") {
            return Err(InputError::invalid(
                &fpath,
                format!("tensor `{key}`: unsupported LoRA tensor kind"),
            ));
        } else {
            let name = rel.replace(".base_layer.", ".");
            if let Some(other) = full.iter().find(|f: &&FullTensor| f.name == name) {
                let other_key = match &other.data {
                    Data::Stored { key, .. } => key.as_str(),
                    Data::Owned(_) => "?",
                };
                return Err(InputError::invalid(
                    &fpath,
                    format!("tensors `{other_key}` and `{key}` both replace base tensor `{name}`"),
                ));
            }
            full.push(FullTensor {
                name,
                data: Data::Stored {
                    key: key.to_owned(),
                    transpose: false,
                },
                shape: t.shape.clone(),
            });
        }
    }
    let mut modules = Vec::with_capacity(parts.len());
    for (name, p) in parts {
        let (Some((akey, ashape)), Some((bkey, bshape))) = (p.a, p.b) else {
            return Err(InputError::invalid(
                &fpath,
                format!("module `{name}`: has only one of lora_A / lora_B"),
            ));
        };
        let m = build_module(
            &fpath,
            &cfg,
            name,
            akey,
            ashape,
            bkey,
            bshape,
            p.embedding,
            p.magnitude,
            p.bias,
        )?;
        modules.push(m);
    }
    Ok(assemble(path, file, &cfg, modules, full))
}

/// Reads a PEFT LoHa or LoKr adapter: `base_model.model.{module}.hada_w1_a` … (the
/// ParameterDicts of `tuners/loha/layer.py` / `tuners/lokr/layer.py`, adapter name stripped on
/// save), the same layouts as LyCORIS' ([`super::lycoris::module`] reads and checks them), with
/// PEFT's rank, alpha and `scaling = alpha / r` from the config (`update_layer`).
fn read_lycoris(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    use super::lycoris;
    let fpath = file.path().to_path_buf();
    let mut parts: BTreeMap<String, lycoris::Parts> = BTreeMap::new();
    let mut full = Vec::new();
    let family = match cfg.peft_type {
        PeftType::Loha => "hada_",
        _ => "lokr_",
    };
    for t in file.tensors() {
        let key = t.name.as_str();
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        match lycoris::split_key(rel) {
            Some((module, role, lycoris::Naming::Kohya)) if role.starts_with(family) => {
                parts
                    .entry(module)
                    .or_default()
                    .insert(role, (t.name.clone(), t.shape.clone()));
            }
            Some(_) => {
                return Err(InputError::invalid(
                    &fpath,
                    format!(
                        "tensor `{key}`: not a {} tensor of this {:?} adapter",
                        family.trim_end_matches('_'),
                        cfg.peft_type
                    ),
                ))
            }
            None => full.push(FullTensor {
                name: rel.to_owned(),
                data: Data::Stored {
                    key: key.to_owned(),
                    transpose: false,
                },
                shape: t.shape.clone(),
            }),
        }
    }
    let mut modules = Vec::with_capacity(parts.len());
    for (name, p) in &parts {
        let mut m = lycoris::module(&file, name, p)?;
        let r = cfg.rank_for(name)?;
        let stored = match &m.factors {
            Factors::Lokr { w1, w2, .. } => [w1, w2].iter().find_map(|h| match h {
                crate::adapter::KronHalf::Whole(_) => None,
                crate::adapter::KronHalf::LowRank { rank, .. }
                | crate::adapter::KronHalf::Tucker { rank, .. } => Some(*rank),
            }),
            _ => Some(m.rank),
        };
        if stored.is_some_and(|s| s != r) {
            return Err(InputError::invalid(
                &fpath,
                format!(
                    "module `{name}`: adapter_config.json gives r = {r} but the factors have rank {}",
                    stored.unwrap_or(0)
                ),
            ));
        }
        m.rank = r;
        m.alpha = cfg.alpha_for(name)?;
        m.scale = scale_for(m.alpha, r, false);
        modules.push(m);
    }
    Ok(assemble(path, file, &cfg, modules, full))
}

/// PEFT IA3 (`tuners/ia3/model.py`, `layer.py`): `{module}.ia3_l` shaped `[out, 1]` (Linear),
/// `[1, in]` (feed-forward Linear), `[1, n, 1, …]` (Conv, `n` the output channels or, feed-forward,
/// the input channels). Feed-forward is `_check_target_module_feedforward`: a regex string
/// matched whole, or a list of names any of which the module name ends with. Merged as
/// `merge_and_unload` ([`crate::adapter::Ia3Rule::Peft`]); `fan_in_fan_out` is refused.
fn read_ia3(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    use crate::adapter::Ia3Rule;
    let fpath = file.path().to_path_buf();
    if cfg.fan_in_fan_out {
        return Err(InputError::invalid(
            &fpath,
            "IA3 with fan_in_fan_out (Conv1D bases) is not supported yet",
        ));
    }
    let ff_re: Option<Regex> = match cfg.raw.get("feedforward_modules") {
        Some(Value::String(p)) => Some(Regex::new(&format!("^(?:{p})$")).map_err(|e| {
            InputError::invalid(
                &fpath,
                format!(
                    "`feedforward_modules` {p:?} is not a valid regex: {}",
                    one_line_regex_error(&e)
                ),
            )
        })?),
        _ => None,
    };
    let ff_list: Vec<String> = match cfg.raw.get("feedforward_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    InputError::invalid(&fpath, "`feedforward_modules` must hold strings")
                })
            })
            .collect::<InputResult<_>>()?,
        None | Some(Value::Null) | Some(Value::String(_)) => Vec::new(),
        Some(_) => {
            return Err(InputError::invalid(
                &fpath,
                "`feedforward_modules` must be a list or a regex string",
            ))
        }
    };
    let mut modules = Vec::new();
    let mut full = Vec::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        let Some(name) = rel.strip_suffix(".ia3_l").filter(|n| !n.is_empty()) else {
            full.push(FullTensor {
                name: rel.to_owned(),
                data: Data::Stored {
                    key: key.to_owned(),
                    transpose: false,
                },
                shape: t.shape.clone(),
            });
            continue;
        };
        let ff = match &ff_re {
            Some(re) => re.is_match(name),
            None => ff_list.iter().any(|f| name.ends_with(f.as_str())),
        };
        let s = &t.shape;
        let bad = || {
            InputError::invalid(
                &fpath,
                format!(
                    "tensor `{key}`: shape {s:?} is not an IA3 vector ([out, 1], [1, in] or [1, n, 1, 1]; feed-forward: {ff})"
                ),
            )
        };
        let (n, kind) = match s.as_slice() {
            [d, 1] if !ff && *d > 0 => (*d, ModuleKind::Linear),
            [1, k] if ff && *k > 0 => (*k, ModuleKind::Linear),
            [1, n, rest @ ..] if !rest.is_empty() && rest.iter().all(|&x| x == 1) && *n > 0 => {
                (*n, ModuleKind::Conv { kernel: Vec::new() })
            }
            _ => return Err(bad()),
        };
        let weight = Data::Stored {
            key: key.to_owned(),
            transpose: false,
        };
        modules.push(LoraModule {
            name: name.to_owned(),
            kind,
            rank: 1,
            alpha: 1.0,
            scale: 1.0,
            out_features: if ff { 0 } else { n },
            in_features: if ff { n } else { 0 },
            bias: (!ff).then(|| weight.clone()),
            factors: Factors::Ia3 {
                weight,
                on_input: ff,
                rule: Ia3Rule::Peft,
            },
            base_transposed: false,
            dora_magnitude: None,
            dora_rule: crate::adapter::DoraRule::Peft,
        });
    }
    Ok(assemble(path, file, &cfg, modules, full))
}

/// PEFT OFT (`tuners/oft/config.py`, `layer.py`): `{module}.oft_R.weight` [r, s(s−1)/2] (the
/// block size `s` follows from it: PEFT adjusts `r`/`oft_block_size` per layer), with the config's
/// `use_cayley_neumann` (default true), `num_cayley_neumann_terms` (5), `coft` (false), `eps`
/// (6e-5) and `block_share` (false). Merged as `merge_and_unload`; `fan_in_fan_out` is refused.
fn read_oft(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    use crate::adapter::PeftCayley;
    let fpath = file.path().to_path_buf();
    let bad = |k: &str, why: &str| InputError::invalid(&fpath, format!("`{k}` {why}"));
    if cfg.fan_in_fan_out {
        return Err(bad(
            "fan_in_fan_out",
            "is true: OFT on Conv1D bases is not supported yet",
        ));
    }
    let flag = |k: &str, default: bool| -> InputResult<bool> {
        match cfg.raw.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(bad(k, "must be true or false")),
        }
    };
    let neumann = flag("use_cayley_neumann", true)?;
    let coft = flag("coft", false)?;
    let block_share = flag("block_share", false)?;
    let terms = match cfg.raw.get("num_cayley_neumann_terms") {
        None | Some(Value::Null) => 5,
        Some(v) => v.as_u64().filter(|t| (1..=64).contains(t)).ok_or_else(|| {
            bad(
                "num_cayley_neumann_terms",
                "must be an integer from 1 to 64",
            )
        })? as usize,
    };
    let eps = match cfg.raw.get("eps") {
        None | Some(Value::Null) => 6e-5,
        Some(v) => v
            .as_f64()
            .filter(|e| e.is_finite() && *e >= 0.0)
            .ok_or_else(|| bad("eps", "must be a non-negative number"))?,
    };
    let cayley = if neumann {
        PeftCayley::Neumann(terms)
    } else {
        PeftCayley::Exact
    };
    let mut modules = Vec::new();
    let mut full = Vec::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        let rel = key.strip_prefix(PREFIX).unwrap_or(key);
        let Some(name) = rel.strip_suffix(".oft_R.weight").filter(|n| !n.is_empty()) else {
            full.push(FullTensor {
                name: rel.to_owned(),
                data: Data::Stored {
                    key: key.to_owned(),
                    transpose: false,
                },
                shape: t.shape.clone(),
            });
            continue;
        };
        let s_of = |n: usize| (2..=4096usize).find(|s| s * (s - 1) / 2 == n);
        let (r, s) = match t.shape.as_slice() {
            [r, n] if *r > 0 => match s_of(*n) {
                Some(s) => (*r, s),
                None => {
                    return Err(InputError::invalid(
                        &fpath,
                        format!(
                        "tensor `{key}`: {n} values per block is not s(s−1)/2 for a block size s"
                    ),
                    ))
                }
            },
            other => {
                return Err(InputError::invalid(
                    &fpath,
                    format!(
                        "tensor `{key}`: shape {other:?} is not an OFT rotation [blocks, s(s−1)/2]"
                    ),
                ))
            }
        };
        if block_share && r != 1 {
            return Err(InputError::invalid(
                &fpath,
                format!("tensor `{key}`: block_share stores one block, this has {r}"),
            ));
        }
        modules.push(LoraModule {
            name: name.to_owned(),
            kind: ModuleKind::Linear,
            rank: r,
            alpha: 1.0,
            scale: 1.0,
            out_features: 0,
            in_features: if block_share { 0 } else { r * s },
            bias: None,
            factors: Factors::PeftOft {
                weight: Data::Stored {
                    key: key.to_owned(),
                    transpose: false,
                },
                block_size: s,
                blocks: r,
                block_share,
                cayley,
                coft_eps: coft.then_some(eps),
            },
            base_transposed: false,
            dora_magnitude: None,
            dora_rule: crate::adapter::DoraRule::Peft,
        });
    }
    Ok(assemble(path, file, &cfg, modules, full))
}

/// The adapter every PEFT reader returns: its modules and full tensors, the config's base model,
/// `modules_to_save` and raw JSON, and rsLoRA / DoRA as a LoRA config states them (the other
/// tuners have neither).
fn assemble(
    path: &Path,
    file: SafetensorsFile,
    cfg: &PeftConfig,
    modules: Vec<LoraModule>,
    full: Vec<FullTensor>,
) -> Adapter {
    let lora = cfg.peft_type == PeftType::Lora;
    Adapter {
        format: Format::Peft,
        path: path.to_path_buf(),
        metadata: file.header().metadata.clone(),
        source: Some(file),
        modules,
        full_tensors: full,
        base_model: cfg.base_model.clone(),
        use_rslora: lora && cfg.use_rslora,
        use_dora: lora && cfg.use_dora,
        modules_to_save: cfg.modules_to_save.clone(),
        config: Some(cfg.raw.clone()),
        namings: Vec::new(),
    }
}

#[allow(clippy::too_many_arguments)]
fn build_module(
    fpath: &Path,
    cfg: &PeftConfig,
    name: String,
    akey: String,
    ashape: Vec<usize>,
    bkey: String,
    bshape: Vec<usize>,
    embedding: bool,
    magnitude: Option<(String, Vec<usize>)>,
    bias: Option<(String, Vec<usize>)>,
) -> InputResult<LoraModule> {
    let err = |msg: String| InputError::invalid(fpath, format!("module `{name}`: {msg}"));
    if ashape.len() < 2 || bshape.len() < 2 {
        return Err(err(format!(
            "lora_A {ashape:?} and lora_B {bshape:?} must have at least 2 dimensions"
        )));
    }
    let rank = ashape[0];
    let (kind, out_features, in_features) = if embedding {
        if ashape.len() != 2 || bshape.len() != 2 {
            return Err(err(format!(
                "embedding factors must be 2-D, got {ashape:?} and {bshape:?}"
            )));
        }
        (ModuleKind::Embedding, bshape[0], ashape[1])
    } else if ashape.len() == 2 {
        if bshape.len() != 2 {
            return Err(err(format!(
                "lora_B {bshape:?} is not 2-D like lora_A {ashape:?}"
            )));
        }
        (ModuleKind::Linear, bshape[0], ashape[1])
    } else {
        if bshape.len() != ashape.len() || bshape[2..].iter().any(|&d| d != 1) {
            return Err(err(format!(
                "conv lora_B {bshape:?} must be [out, r, 1, …] for lora_A {ashape:?}"
            )));
        }
        (
            ModuleKind::Conv {
                kernel: ashape[2..].to_vec(),
            },
            bshape[0],
            ashape[1..].iter().product(),
        )
    };
    if bshape[1] != rank {
        return Err(err(format!(
            "lora_A has rank {rank} {ashape:?} but lora_B has {} columns {bshape:?}",
            bshape[1]
        )));
    }
    let cfg_rank = cfg.rank_for(&name)?;
    if cfg_rank != rank {
        return Err(err(format!(
            "adapter_config.json gives r = {cfg_rank} but lora_A has {rank} rows (check r / rank_pattern)"
        )));
    }
    let alpha = cfg.alpha_for(&name)?;
    let base_transposed = embedding || cfg.fan_in_fan_out && kind == ModuleKind::Linear;
    let check_vec = |what: &str, e: &(String, Vec<usize>)| -> InputResult<Data> {
        let n: usize = e.1.iter().product();
        if n != out_features {
            return Err(err(format!(
                "{what} has {n} values {:?}, expected {out_features}",
                e.1
            )));
        }
        Ok(Data::Stored {
            key: e.0.clone(),
            transpose: false,
        })
    };
    let dora_magnitude = magnitude
        .as_ref()
        .map(|m| check_vec("lora_magnitude_vector", m))
        .transpose()?;
    if dora_magnitude.is_some() && embedding {
        return Err(err("DoRA on embedding layers is not supported".into()));
    }
    if cfg.use_dora && dora_magnitude.is_none() {
        return Err(err(
            "use_dora is set but the module has no lora_magnitude_vector".into(),
        ));
    }
    let bias = bias
        .as_ref()
        .map(|b| check_vec("lora_B.bias", b))
        .transpose()?;
    Ok(LoraModule {
        scale: scale_for(alpha, rank, cfg.use_rslora),
        name,
        kind,
        rank,
        alpha,
        out_features,
        in_features,
        factors: Factors::Lora {
            a: Data::Stored {
                key: akey,
                transpose: false,
            },
            b: Data::Stored {
                key: bkey,
                transpose: false,
            },
        },
        base_transposed,
        dora_magnitude,
        dora_rule: DoraRule::Peft,
        bias,
    })
}

/// Writes `adapter` as a PEFT folder (`adapter_model.safetensors`, `adapter_config.json`)
/// into `out` through `output`, every tensor encoded as `dtype`. `rank_pattern` /
/// `alpha_pattern` are emitted for modules whose rank or alpha differ from the most common one,
/// so PEFT rebuilds every module's shape and scale exactly.
pub fn write(
    adapter: &Adapter,
    out: &Path,
    output: &mut crate::io::Output,
    dtype: crate::dtype::Dtype,
    extra_metadata: &[(String, String)],
) -> InputResult<()> {
    write_with(adapter, out, output, Some(dtype), extra_metadata)
}

/// [`write`] with a dtype policy: `Some(d)` encodes every tensor as `d`; `None` copies stored
/// tensors byte for byte in their own dtype and writes owned values as F32 (see [`encoded`]).
/// `extra_metadata` follows `"format": "pt"` in `__metadata__` (a `format` entry in it is
/// dropped, so the key is never written twice).
pub fn write_with(
    adapter: &Adapter,
    out: &Path,
    output: &mut crate::io::Output,
    dtype: Option<crate::dtype::Dtype>,
    extra_metadata: &[(String, String)],
) -> InputResult<()> {
    use crate::io::TensorSpec;
    output.create_dir_all(out)?;
    let mut specs = Vec::new();
    let mut payload: Vec<Vec<u8>> = Vec::new();
    let mut push =
        |name: String, shape: Vec<usize>, (dt, bytes): (crate::dtype::Dtype, Vec<u8>)| {
            specs.push(TensorSpec::new(name, dt, shape));
            payload.push(bytes);
        };
    for m in &adapter.modules {
        let (ka, kb) = if m.kind == ModuleKind::Embedding {
            (
                format!("{PREFIX}{}.lora_embedding_A", m.name),
                format!("{PREFIX}{}.lora_embedding_B", m.name),
            )
        } else {
            (
                format!("{PREFIX}{}.lora_A.weight", m.name),
                format!("{PREFIX}{}.lora_B.weight", m.name),
            )
        };
        let (ashape, bshape) = factor_shapes(m);
        let Some((a, b)) = m.factors.lora() else {
            return Err(InputError::invalid(
                &adapter.path,
                format!(
                    "module `{}` is {}: a PEFT LoRA folder holds only LoRA factors",
                    m.name,
                    m.factors.algo()
                ),
            ));
        };
        push(ka, ashape, encoded(adapter, a, dtype)?);
        push(kb, bshape, encoded(adapter, b, dtype)?);
        if let Some(d) = &m.bias {
            push(
                format!("{PREFIX}{}.lora_B.bias", m.name),
                vec![m.out_features],
                encoded(adapter, d, dtype)?,
            );
        }
        if let Some(d) = &m.dora_magnitude {
            push(
                format!("{PREFIX}{}.lora_magnitude_vector", m.name),
                vec![m.out_features],
                encoded(adapter, d, dtype)?,
            );
        }
    }
    for f in &adapter.full_tensors {
        push(
            full_tensor_key(adapter, f),
            f.shape.clone(),
            encoded(adapter, &f.data, dtype)?,
        );
    }
    // Deterministic order: sorted by name, as PEFT's own files are.
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by(|&i, &j| specs[i].name.cmp(&specs[j].name));
    if let Some(w) = order
        .windows(2)
        .find(|w| specs[w[0]].name == specs[w[1]].name)
    {
        return Err(InputError::invalid(
            &adapter.path,
            format!("tensor `{}` would be written twice", specs[w[0]].name),
        ));
    }
    let specs: Vec<TensorSpec> = order.iter().map(|&i| specs[i].clone()).collect();
    let mut meta = vec![("format".to_string(), "pt".to_string())];
    meta.extend(
        extra_metadata
            .iter()
            .filter(|(k, _)| k != "format")
            .cloned(),
    );
    let weights = out.join(WEIGHTS_NAME);
    let mut w = output.safetensors(&weights, &meta, specs.clone())?;
    for (spec, &i) in specs.iter().zip(&order) {
        w.write_tensor(&spec.name, &payload[i])?;
    }
    w.finish()?;
    let cfg = config_json(adapter);
    let mut text = serde_json::to_vec_pretty(&cfg).expect("json");
    text.push(b'\n');
    output.small_file(&out.join(CONFIG_NAME), &text)
}

/// The key a full tensor is saved under. A saved embedding layer (read from
/// `{module}.base_layer.weight`, the copy of the base weight PEFT saves for a targeted
/// embedding) keeps that key, also when its values were taken into memory: PEFT loads it into the
/// LoRA layer's base layer, and lorakit's merge uses it as `W0` rather than as a replacement.
/// Anything else is `base_model.model.{name}` (`modules_to_save`).
pub fn full_tensor_key(adapter: &Adapter, f: &FullTensor) -> String {
    if let Data::Stored { key, .. } = &f.data {
        if key.contains(".base_layer.") {
            return key.clone();
        }
    }
    let saved_layer = adapter.modules.iter().find(|m| {
        m.kind == ModuleKind::Embedding && f.name.strip_suffix(".weight") == Some(m.name.as_str())
    });
    match saved_layer {
        Some(m) if matches!(f.data, Data::Owned(_)) => {
            format!("{PREFIX}{}.base_layer.weight", m.name)
        }
        _ => format!("{PREFIX}{}", f.name),
    }
}

/// On-disk shapes of a module's `A` and `B` (conv: `[r, in, kh, kw]` and `[out, r, 1, 1]`;
/// kohya uses the same layouts).
pub fn factor_shapes(m: &LoraModule) -> (Vec<usize>, Vec<usize>) {
    match &m.kind {
        ModuleKind::Conv { kernel } => {
            let mut ash = vec![
                m.rank,
                m.in_features / kernel.iter().product::<usize>().max(1),
            ];
            ash.extend(kernel);
            let mut bsh = vec![m.out_features, m.rank];
            bsh.extend(kernel.iter().map(|_| 1));
            (ash, bsh)
        }
        _ => (vec![m.rank, m.in_features], vec![m.out_features, m.rank]),
    }
}

/// The dtype and bytes a tensor is written with. A stored tensor (not transposed) whose dtype
/// is kept (`dtype` is `None` or its own) is copied byte for byte, so a conversion changes no
/// factor; anything else is encoded from its canonical `f32` values into `dtype` (F32 when
/// `None`). Values are checked to be finite either way.
pub fn encoded(
    adapter: &Adapter,
    data: &Data,
    dtype: Option<crate::dtype::Dtype>,
) -> InputResult<(crate::dtype::Dtype, Vec<u8>)> {
    let values = adapter.values(data)?;
    if let (
        Data::Stored {
            key,
            transpose: false,
        },
        Some(src),
    ) = (data, adapter.source.as_ref())
    {
        let view = src.view(key)?;
        if dtype.is_none_or(|d| d == view.dtype) && crate::dtype::is_float_storage(view.dtype) {
            return Ok((view.dtype, view.data.to_vec()));
        }
    }
    let dt = dtype.unwrap_or(crate::dtype::Dtype::F32);
    Ok((dt, crate::dtype::encode(dt, &values)))
}

/// Builds `adapter_config.json` for `adapter`: the most common rank and alpha as `r` /
/// `lora_alpha`, exceptions as full-name `rank_pattern` / `alpha_pattern` entries.
pub fn config_json(adapter: &Adapter) -> Value {
    let most_common = |vals: Vec<String>| -> Option<String> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for v in vals {
            *counts.entry(v).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(k, _)| k)
    };
    let r: usize = most_common(adapter.modules.iter().map(|m| m.rank.to_string()).collect())
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let alpha: f64 = most_common(adapter.modules.iter().map(|m| fmt_num(m.alpha)).collect())
        .and_then(|s| s.parse().ok())
        .unwrap_or(r as f64);
    let mut rank_pattern = Map::new();
    let mut alpha_pattern = Map::new();
    for m in &adapter.modules {
        // Anchored full names: PEFT matches `(.*\.)?(key)$`, so a full path matches only itself.
        if m.rank != r {
            rank_pattern.insert(regex::escape(&m.name), json!(m.rank));
        }
        if fmt_num(m.alpha) != fmt_num(alpha) {
            alpha_pattern.insert(regex::escape(&m.name), num_value(m.alpha));
        }
    }
    // Full module names: PEFT matches list entries exactly or as a dotted suffix, so every
    // adapted module and nothing else is targeted.
    let mut targets: Vec<String> = adapter.modules.iter().map(|m| m.name.clone()).collect();
    targets.sort();
    let keep_targets = adapter
        .config
        .as_ref()
        .and_then(|c| c.get("target_modules"))
        .is_some_and(|t| !t.is_null());
    let fifo = adapter
        .modules
        .iter()
        .any(|m| m.base_transposed && m.kind == ModuleKind::Linear);
    let mut cfg = match adapter.config.as_ref().and_then(Value::as_object) {
        Some(orig) => orig.clone(),
        None => Map::new(),
    };
    let mut set = |k: &str, v: Value| {
        cfg.insert(k.to_owned(), v);
    };
    set("peft_type", json!("LORA"));
    set("r", json!(r));
    set("lora_alpha", num_value(alpha));
    if !keep_targets {
        set("target_modules", json!(targets));
    }
    set("rank_pattern", Value::Object(rank_pattern));
    set("alpha_pattern", Value::Object(alpha_pattern));
    set("use_rslora", json!(adapter.use_rslora));
    set(
        "use_dora",
        json!(adapter.modules.iter().any(|m| m.dora_magnitude.is_some())),
    );
    set("fan_in_fan_out", json!(fifo));
    set(
        "lora_bias",
        json!(adapter.modules.iter().any(|m| m.bias.is_some())),
    );
    set(
        "modules_to_save",
        if adapter.modules_to_save.is_empty() {
            Value::Null
        } else {
            json!(adapter.modules_to_save)
        },
    );
    set(
        "base_model_name_or_path",
        adapter
            .base_model
            .as_ref()
            .map_or(Value::Null, |s| json!(s)),
    );
    for (k, v) in [
        ("bias", json!("none")),
        ("lora_dropout", json!(0.0)),
        ("inference_mode", json!(true)),
        ("init_lora_weights", json!(true)),
        ("task_type", Value::Null),
    ] {
        cfg.entry(k.to_owned()).or_insert(v);
    }
    let mut sorted: Vec<(String, Value)> = cfg.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    Value::Object(sorted.into_iter().collect())
}

/// Integers as JSON integers (PEFT types `lora_alpha` as int), others as floats.
fn num_value(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

fn fmt_num(x: f64) -> String {
    format!("{x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matching_follows_peft() {
        let pattern_match = |keys: &[&str], n: &str| {
            let res: Vec<Regex> = keys.iter().map(|k| compile_pattern(k).unwrap()).collect();
            first_match(&res, n)
        };
        let keys = ["k_proj", "layers.1.self_attn.q_proj"];
        let m = |n: &str| pattern_match(&keys, n);
        assert_eq!(m("model.layers.0.self_attn.k_proj"), Some(0));
        assert_eq!(m("model.layers.1.self_attn.q_proj"), Some(1));
        assert_eq!(m("model.layers.0.self_attn.q_proj"), None);
        // Suffix must sit on a dot boundary: `xk_proj` is not `k_proj`.
        assert_eq!(m("model.layers.0.self_attn.xk_proj"), None);
        // First match wins.
        assert_eq!(
            pattern_match(&["q_proj", "self_attn.q_proj"], "a.self_attn.q_proj"),
            Some(0)
        );
    }
}
