//! Reading PEFT folders: LoRA (with DoRA, biases, embeddings, full tensors), LoHa/LoKr, IA3 and
//! OFT, each by its `peft_type`, into the one adapter model (AdaLoRA in [`super::adalora`]).
//! Never writes.

use super::assemble::{assemble, split_by_suffix, stored_full};
use super::config::{one_line_regex_error, PeftConfig, PeftType, PREFIX};
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{scale_for, Adapter, DoraRule, FullTensor, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use regex::Regex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Default)]
struct Parts {
    a: Option<(String, Vec<usize>)>,
    b: Option<(String, Vec<usize>)>,
    embedding: bool,
    magnitude: Option<(String, Vec<usize>)>,
    bias: Option<(String, Vec<usize>)>,
    /// KaSA's learnable singular values `lora_diag` `[r]` (`KasaLinearVariant`).
    diag: Option<(String, Vec<usize>)>,
}

/// Reads a PEFT adapter whose tensors are in `file` and config at `config_path`.
pub fn read(path: &Path, file: SafetensorsFile, config_path: &Path) -> InputResult<Adapter> {
    let text = crate::io::read_json_file(config_path)?;
    let cfg = PeftConfig::parse(config_path, &text)?;
    match cfg.peft_type {
        PeftType::Lora => {}
        PeftType::Ia3 => return read_ia3(path, file, cfg),
        PeftType::Oft => return read_oft(path, file, cfg),
        PeftType::AdaLora => return super::adalora::read(path, file, cfg, config_path),
        PeftType::Loha | PeftType::Lokr => return read_lycoris(path, file, cfg),
        PeftType::Vera => return super::vera::read(path, file, cfg, &super::vera::VERA),
        PeftType::VbLora => return super::vblora::read(path, file, cfg),
        PeftType::LnTuning => return super::ln_tuning::read(path, file, cfg),
        PeftType::Hra => return super::hra::read(path, file, cfg),
        PeftType::Boft => return super::boft::read(path, file, cfg),
        PeftType::Delora => return super::delora::read(path, file, cfg),
        PeftType::Miss | PeftType::Bone => return super::miss::read(path, file, cfg),
        PeftType::Shira => return super::shira::read(path, file, cfg),
        PeftType::C3a => return super::c3a::read(path, file, cfg),
        PeftType::Gralora => return super::gralora::read(path, file, cfg),
        PeftType::RandLora => return super::randlora::read(path, file, cfg),
        PeftType::Road => return super::road::read(path, file, cfg),
        PeftType::Osf => return super::osf::read(path, file, cfg),
        PeftType::Hira => return super::hira::read(path, file, cfg),
        PeftType::Glora => return super::glora::read(path, file, cfg),
        PeftType::TinyLora => return super::tinylora::read(path, file, cfg),
        PeftType::Pvera => return super::vera::read(path, file, cfg, &super::pvera::PVERA),
        PeftType::UniLora => return super::unilora::read(path, file, cfg),
        PeftType::TrainableTokens => return super::tokens::read(path, file, cfg, config_path),
        PeftType::Frod => return super::frod::read(path, file, cfg),
        PeftType::Beft => return super::beft::read(path, file, cfg),
        PeftType::Deft => return super::deft::read(path, file, cfg),
        PeftType::Peanut => return super::peanut::read(path, file, cfg),
        PeftType::Supertuning => return super::supertuning::read(path, file, cfg),
        PeftType::Adamss => return super::adamss::read(path, file, cfg),
    }
    let fpath = file.path().to_path_buf();
    let kasa = super::init::base_residual(&cfg.raw) == Some(super::init::BaseResidual::Kasa);
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
        } else if let Some(m) = slot(".lora_diag").filter(|_| kasa) {
            set(&mut parts.entry(m).or_default().diag, entry)?;
        } else if super::init::ignored_training_tensor(&cfg.raw, rel)
            || super::saved_layers::quantized_base_copy(rel, t.dtype)
        {
            continue;
        } else if rel.contains(".lora_") {
            return Err(InputError::invalid(
                &fpath,
                format!("tensor `{key}`: unsupported LoRA tensor kind"),
            ));
        } else {
            // The trainable-token layer's base (`m.token_adapter.base_layer.weight`, saved for a
            // resized vocabulary) is `m`'s, like every `base_layer` copy (saved_layers.rs).
            let name = rel
                .replace(".token_adapter.base_layer.", ".")
                .replace(".base_layer.", ".");
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
            full.push(stored_full(name, t));
        }
    }
    super::saved_layers::drop_wrapper_copies(&file, &mut full)?;
    trainable_token_rows(&cfg, &mut full);
    let bd = BdLora::parse(&fpath, &cfg.raw)?;
    let wrapped = super::params::wrappers(&fpath, &cfg.raw, parts.keys().map(String::as_str))?;
    let mut modules = Vec::with_capacity(parts.len());
    for (name, p) in parts {
        let (Some((akey, ashape)), Some((bkey, bshape))) = (p.a, p.b) else {
            return Err(InputError::invalid(
                &fpath,
                format!("module `{name}`: has only one of lora_A / lora_B"),
            ));
        };
        // `target_parameters`: a ParamWrapper, one module per expert (peft/params.rs).
        if let Some(param) = wrapped.get(&name) {
            let stored = super::params::Stored {
                a: (&akey, &ashape),
                b: (&bkey, &bshape),
                embedding: p.embedding,
                magnitude: p.magnitude.is_some(),
                bias: p.bias.is_some(),
                block_diagonal: bd.as_ref().is_some_and(|bd| bd.side(&name).is_some()),
            };
            if let super::params::Expanded::Experts(m) =
                super::params::expand(&file, &cfg, &name, param, stored)?
            {
                modules.extend(m);
                continue;
            }
        }
        let blocks = match &bd {
            Some(bd) if !p.embedding => bd.side(&name),
            _ => None,
        };
        // A block-diagonal factor is stored as its diagonal blocks stacked, a `nblocks`-th of
        // its columns; the module is checked as the full factor it stands for.
        let (ashape_full, bshape_full) = match blocks {
            Some(BdSide::A) => (widen(&ashape, bd_blocks(&bd)), bshape.clone()),
            Some(BdSide::B) => (ashape.clone(), widen(&bshape, bd_blocks(&bd))),
            None => (ashape.clone(), bshape.clone()),
        };
        let diag = p.diag;
        let mut m = build_module(
            &fpath,
            &cfg,
            name,
            akey.clone(),
            ashape_full,
            bkey.clone(),
            bshape_full,
            p.embedding,
            p.magnitude,
            p.bias,
        )?;
        if let Some(side) = blocks {
            let (key, shape) = match side {
                BdSide::A => (&akey, &ashape),
                BdSide::B => (&bkey, &bshape),
            };
            let full = block_diagonal(&file, key, shape, bd_blocks(&bd))?;
            if let Factors::Lora { a, b } = &mut m.factors {
                *match side {
                    BdSide::A => a,
                    BdSide::B => b,
                } = Data::Owned(std::sync::Arc::new(full));
            }
        }
        if kasa {
            super::init::kasa_fold(&file, &mut m, diag)?;
        }
        modules.push(m);
    }
    assemble(path, file, &cfg, modules, full)
}

/// Reads a PEFT LoHa or LoKr adapter: `base_model.model.{module}.hada_w1_a` … (the
/// ParameterDicts of `tuners/loha/layer.py` / `tuners/lokr/layer.py`, adapter name stripped on
/// save), the same layouts as LyCORIS' ([`super::lycoris::module`] reads and checks them), with
/// PEFT's rank, alpha and `scaling = alpha / r` from the config (`update_layer`).
fn read_lycoris(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    use crate::adapter::formats::lycoris;
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
            None => full.push(stored_full(rel.to_owned(), t)),
        }
    }
    let mut modules = Vec::with_capacity(parts.len());
    for (name, p) in &parts {
        let mut m = lycoris::module(&file, name, p)?;
        let w2_shape = p.get("lokr_w2").map_or(&[][..], |(_, s)| &s[..]);
        let peft_kron = super::lycoris::peft_kron_dense(&file, &m, w2_shape)?;
        let r = cfg.rank_for(name)?;
        let stored = match &m.factors {
            Factors::Lokr { w1, w2, .. } => [w1, w2].iter().find_map(|h| match h {
                crate::adapter::algo::KronHalf::Whole(_) => None,
                crate::adapter::algo::KronHalf::LowRank { rank, .. }
                | crate::adapter::algo::KronHalf::Tucker { rank, .. } => Some(*rank),
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
        if let Some(dense) = peft_kron {
            // PEFT's kron of a 3-D or 5-D `lokr_w2` is no LyCORIS Kronecker product: held
            // as the dense ΔW / scale it is.
            m.factors = Factors::Full {
                diff: Data::Owned(std::sync::Arc::new(dense)),
            };
        }
        m.rank = r;
        m.alpha = cfg.alpha_for(name)?;
        m.scale = scale_for(m.alpha, r, false);
        modules.push(m);
    }
    assemble(path, file, &cfg, modules, full)
}

/// PEFT IA3 (`tuners/ia3/model.py`, `layer.py`): `{module}.ia3_l` shaped `[out, 1]` (Linear),
/// `[1, in]` (feed-forward Linear), `[1, n, 1, …]` (Conv, `n` the output channels or, feed-forward,
/// the input channels). Feed-forward is `_check_target_module_feedforward`: a regex string
/// matched whole, or a list of names any of which the module name ends with. Merged as
/// `merge_and_unload` ([`crate::adapter::algo::Ia3Rule::Peft`]). With `fan_in_fan_out` (GPT-2's
/// `Conv1D`, weights stored `[in, out]`) the vector keeps its logical shape (PEFT's
/// `_get_in_out_features` reads a Conv1D's sides that way) and `merge` transposes it onto the
/// stored weight (`layer.py`: `transpose(ia3_l, fan_in_fan_out)`), as for LoRA.
fn read_ia3(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    use crate::adapter::algo::Ia3Rule;
    let fpath = file.path().to_path_buf();
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
    let (named, full) = split_by_suffix(&file, ".ia3_l");
    for (name, t) in named {
        let key = t.name.as_str();
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
        let base_transposed = cfg.fan_in_fan_out && kind == ModuleKind::Linear;
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
            base_transposed,
            dora_magnitude: None,
            dora_rule: crate::adapter::model::DoraRule::Peft,
        });
    }
    assemble(path, file, &cfg, modules, full)
}

/// PEFT OFT (`tuners/oft/config.py`, `layer.py`): `{module}.oft_R.weight` [r, s(s−1)/2] (the
/// block size `s` follows from it: PEFT adjusts `r`/`oft_block_size` per layer), with the config's
/// `use_cayley_neumann` (default true), `num_cayley_neumann_terms` (5), `coft` (false), `eps`
/// (6e-5) and `block_share` (false). Merged as `merge_and_unload`; `fan_in_fan_out` is refused.
fn read_oft(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    use crate::adapter::algo::PeftCayley;
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
    let (named, full) = split_by_suffix(&file, ".oft_R.weight");
    for (name, t) in named {
        let key = t.name.as_str();
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
        let factors = Factors::PeftOft {
            weight: Data::Stored {
                key: key.to_owned(),
                transpose: false,
            },
            block_size: s,
            blocks: r,
            block_share,
            cayley,
            coft_eps: coft.then_some(eps),
            scaled: false,
            conv: crate::adapter::algo::OftConv::Transposed,
        };
        let in_features = if block_share { 0 } else { r * s };
        let dims = (0, in_features, r);
        modules.push(LoraModule::peft_linear(
            name.to_owned(),
            dims,
            1.0,
            factors,
            false,
        ));
    }
    assemble(path, file, &cfg, modules, full)
}

/// A tensor of the file kept whole under `name`, read as stored (not transposed).
/// Gives each trainable-token tensor (`{module}.token_adapter.trainable_tokens_delta`) the rows
/// `trainable_token_indices` names for its module, where they fit it: one index per row of the
/// tensor, none repeated (`index_copy` with a repeated index keeps an unspecified one). Where
/// they do not, the tensor stays a whole-tensor replacement that matches no base tensor, which
/// `merge` reports as unmatched and `check` explains (`peft.trainable_tokens`).
fn trainable_token_rows(cfg: &PeftConfig, full: &mut [FullTensor]) {
    for f in full {
        let Some(module) = super::config::tokens_module(&f.name) else {
            continue;
        };
        let Some(ids) = super::config::token_indices(Some(&cfg.raw), module) else {
            continue;
        };
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if f.shape.len() == 2 && f.shape[0] == ids.len() && sorted.len() == ids.len() {
            f.rows = Some(ids.iter().map(|&i| i as usize).collect());
        }
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
    // DoRA on an embedding (PEFT 0.21.2 `tuners/lora/variants.py` `DoraEmbeddingVariant`,
    // `dora.py` `DoraEmbeddingLayer(fan_in_fan_out=True)`): the norm of `(W0 + ΔW)ᵀ` per row,
    // one per embedding dimension, which is a column of the stored `[vocab, dim]` weight; the
    // merge scales columns (`dora_factor.view(1, -1)`). `base_transposed` selects exactly that
    // column norm in the merges, as for a Conv1D module.
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

/// PEFT's BD-LoRA (`use_bdlora`, PEFT 0.21.2 `tuners/lora/variants.py` `BdLoraLinearVariant`,
/// `BlockDiagonalLinear`): in modules whose full name contains a `target_modules_bd_a` pattern
/// lora_A is block-diagonal, in those matching `target_modules_bd_b` lora_B is, with
/// `nblocks` blocks. The merge adds `scaling · B·A` of the full factors, so lorakit expands
/// the stored blocks into them when reading.
struct BdLora {
    a: Vec<String>,
    b: Vec<String>,
    nblocks: usize,
}

#[derive(Clone, Copy)]
enum BdSide {
    A,
    B,
}

impl BdLora {
    fn parse(path: &Path, raw: &Value) -> InputResult<Option<BdLora>> {
        let bad = |why: &str| {
            InputError::invalid(
                path.parent()
                    .unwrap_or(path)
                    .join(super::config::CONFIG_NAME),
                format!("`use_bdlora` {why}"),
            )
        };
        let cfg = match raw.get("use_bdlora") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
            Some(Value::Object(o)) => o,
            Some(_) => return Err(bad("must be an object (a saved BdLoraConfig)")),
        };
        let list = |k: &str| -> InputResult<Vec<String>> {
            match cfg.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(v) => v
                    .as_array()
                    .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_owned)).collect())
                    .ok_or_else(|| bad(&format!("`{k}` must be a list of strings"))),
            }
        };
        let nblocks =
            cfg.get("nblocks")
                .and_then(Value::as_u64)
                .filter(|&n| n >= 1)
                .ok_or_else(|| bad("`nblocks` must be a positive integer"))? as usize;
        Ok(Some(BdLora {
            a: list("target_modules_bd_a")?,
            b: list("target_modules_bd_b")?,
            nblocks,
        }))
    }

    /// Which factor of `module` is block-diagonal (PEFT: `pattern in target_name`, the full
    /// module name; a module matching both is an error in PEFT and is left plain here, where
    /// its shapes then fail to fit).
    fn side(&self, module: &str) -> Option<BdSide> {
        let hit = |p: &[String]| p.iter().any(|p| module.contains(p.as_str()));
        match (hit(&self.a), hit(&self.b)) {
            (true, false) => Some(BdSide::A),
            (false, true) => Some(BdSide::B),
            _ => None,
        }
    }
}

fn bd_blocks(bd: &Option<BdLora>) -> usize {
    bd.as_ref().map_or(1, |b| b.nblocks)
}

/// The full shape a stored block-diagonal factor stands for: `nblocks` times its columns.
fn widen(shape: &[usize], nblocks: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    if s.len() == 2 {
        s[1] *= nblocks;
    }
    s
}

/// `torch.block_diag(*torch.chunk(w, nblocks, dim=0))` of the stored `[rows, cols/nblocks]`
/// factor `key`, row-major `[rows, cols]`; the rows must split evenly (`BlockDiagonalLinear`
/// requires it).
fn block_diagonal(
    file: &SafetensorsFile,
    key: &str,
    shape: &[usize],
    nblocks: usize,
) -> InputResult<Vec<f32>> {
    let err = |m: String| InputError::invalid(file.path(), format!("tensor `{key}`: {m}"));
    if shape.len() != 2 || !shape[0].is_multiple_of(nblocks) {
        return Err(err(format!(
            "a block-diagonal factor [rows, cols/nblocks] with rows divisible by nblocks = {nblocks}, got {shape:?}"
        )));
    }
    let w = super::config::stored_f32(file, key)?;
    let (rows, bc) = (shape[0], shape[1]);
    let (br, cols) = (rows / nblocks, bc * nblocks);
    let mut full = vec![0f32; rows * cols];
    for r in 0..rows {
        let blk = r / br;
        full[r * cols + blk * bc..r * cols + (blk + 1) * bc]
            .copy_from_slice(&w[r * bc..(r + 1) * bc]);
    }
    Ok(full)
}
