//! PEFT `target_parameters`: LoRA on an `nn.Parameter` itself (`lora.ParamWrapper`, PEFT 0.21.2
//! `tuners/lora/layer.py` lines 2335–2721), the way fused MoE experts are fine-tuned.
//!
//! Owns three things, and nothing else: which saved module is which wrapped parameter, the
//! expansion of an expert-stacked parameter into one ordinary low-rank module per expert, and
//! fitting those modules to a base checkpoint's layout before a merge. Never writes.
//!
//! **On disk.** One wrapper per parameter; several parameters of one module nest the wrappers,
//! the parameter registered first innermost (`tuners_utils.py` `_inject_parameters` walks
//! `named_parameters(recurse=False)` in registration order and wraps the current module each
//! time). The saved keys are `{module}{.base_layer × d}.lora_A.weight` / `.lora_B.weight`, the
//! outermost (last registered) wrapper at depth 0 — checked on the files
//! `fixtures/gen/peft_moe_fixtures.py` writes. Which parameter sits at which depth is therefore
//! the order the model class registers them in, which the files do not record: lorakit takes it
//! from transformers 5.24.0 (every experts class with several 3-D parameters registers them as
//! `gate_up_proj`, `gate_up_proj_bias`, `down_proj`, `down_proj_bias`, or `up_proj`, `down_proj`;
//! [`REGISTRATION`]) and refuses a nesting it cannot order.
//!
//! **Math.** A parameter `[E, d1, d2]` gets `lora_A` `[r·E, in]` and `lora_B` `[out, r·E]`, with
//! `(in, out) = (d1, d2)` when the experts module is `is_transposed` (stored `[E, in, out]`) and
//! `(d2, d1)` otherwise (`_get_in_out_features`, `update_layer`'s swap). `get_delta_weight`
//! reshapes A to `(E, r, in)` (expert the slowest axis of A's rows) and B to `(out, r, E)` (expert
//! the fastest axis of B's columns) and adds `einsum("o r e, e r i -> e i o" | "e o i") · scaling`,
//! scaling `alpha/r` or `alpha/√r` with r and alpha from `rank_pattern` / `alpha_pattern` matched
//! against `{module}.{parameter}`. So expert `e` gets the plain LoRA update
//! `ΔW_e = s · B_e·A_e` with `A_e = A[e·r .. (e+1)·r, :]` and `B_e[:, k] = B[:, k·E + e]`, stored
//! transposed when the experts are: [`expand`] makes one [`LoraModule`] per expert
//! (named [`expert_name`]), and the merge adds each to its expert's slice of the tensor with the
//! arithmetic of any LoRA term. A 2-D parameter (`E = 1`) is `Linear.get_delta_weight`, `B·A`.
//!
//! **Layout.** Whether a square `[E, n, n]` parameter is transposed is in the model class alone
//! (`is_transposed`, which transformers 5.24.0 sets only through
//! `@use_experts_implementation(is_transposed=True)`: gpt_oss, openai_privacy_filter, aria —
//! [`TRANSPOSED_MODEL_TYPES`]); lorakit reads the base's `config.json` `model_type` for it, and
//! takes the side lengths when they differ. transformers also saves many MoE models with one
//! tensor per expert (its `conversion_mapping.py` `qwen2_moe` and `mixtral` converters:
//! `experts.{e}.gate_proj`/`up_proj` concatenated on the output axis into `gate_up_proj`,
//! `experts.{e}.down_proj` stacked into `down_proj`; Mixtral's `block_sparse_moe.experts.{e}.w1`/
//! `w3`/`w2`): [`fit_to_base`] turns each expert's module into the plain modules of those
//! tensors, splitting `B_e`'s rows.
//!
//! PEFT itself refuses `lora_dropout`, `fan_in_fan_out`, `lora_bias` and DoRA on a ParamWrapper
//! (`ParamWrapper.__init__`); so does lorakit, and it refuses BD-LoRA and embedding factors there.

use super::config::PeftConfig;
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{scale_for, Adapter, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::{Checkpoint, SafetensorsFile};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// Registration order of the expert parameters of transformers 5.24.0's experts classes (all 72
/// classes with several `[num_experts, …]` parameters register them in this relative order).
pub const REGISTRATION: &[&str] = &[
    "gate_up_proj",
    "gate_up_proj_bias",
    "up_proj",
    "down_proj",
    "down_proj_bias",
];

/// `model_type`s whose experts classes are `is_transposed` (stored `[E, in, out]`) in
/// transformers 5.24.0 (`@use_experts_implementation(is_transposed=True)`); every other class
/// has PEFT's default `getattr(base_layer, "is_transposed", False)`.
pub const TRANSPOSED_MODEL_TYPES: &[&str] = &["gpt_oss", "openai_privacy_filter", "aria"];

/// The name of expert `e` of `n` of parameter `param` (`model.layers.0.mlp.experts.gate_up_proj[3/4]`).
pub fn expert_name(param: &str, e: usize, n: usize) -> String {
    format!("{param}[{e}/{n}]")
}

/// `(parameter, expert, experts)` of an [`expert_name`].
pub fn parse_expert(name: &str) -> Option<(&str, usize, usize)> {
    let (param, rest) = name.strip_suffix(']')?.rsplit_once('[')?;
    let (e, n) = rest.split_once('/')?;
    let (e, n) = (e.parse().ok()?, n.parse().ok()?);
    (e < n && !param.is_empty()).then_some((param, e, n))
}

/// The parameters `target_parameters` may select on module `module` (PEFT: the key
/// `{module}.{param}` of a parameter the module has equals a target or ends with `.{target}`),
/// each once: `(named, bare)`. A dotted target (`gate.weight`, `mlp.experts.down_proj`) names
/// the module, so it selects its parameter here; a bare one (`down_proj`, as PEFT's own
/// `all-linear` expansion for MoE models writes them) selects that parameter on every module
/// that has one, which the adapter file does not say: it is only a candidate.
fn targeted_params(raw: &Value, module: &str) -> (Vec<String>, Vec<String>) {
    let Some(list) = raw.get("target_parameters").and_then(Value::as_array) else {
        return (Vec::new(), Vec::new());
    };
    let (mut named, mut bare): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for t in list.iter().filter_map(Value::as_str) {
        match t.rsplit_once('.') {
            Some((_, p)) => {
                let key = format!("{module}.{p}");
                if (key == t || key.ends_with(&format!(".{t}"))) && !named.iter().any(|x| x == p) {
                    named.push(p.to_owned());
                }
            }
            None if !bare.iter().any(|x| x == t) => bare.push(t.to_owned()),
            None => {}
        }
    }
    bare.retain(|p| !named.contains(p));
    (named, bare)
}

/// Which saved module names of a PEFT LoRA file are ParamWrappers, and of which parameter
/// (`{module}.{param}`): PEFT's nesting resolved as the module header describes. Modules the
/// config's `target_parameters` does not select are left out (ordinary `target_modules`).
///
/// A module holding `k` nested wrappers wraps `k` of the parameters [`targeted_params`] finds:
/// all of them when they are `k`; the named ones when those are `k` (the bare targets name
/// parameters of other modules, e.g. the experts' `down_proj` beside the router's
/// `gate.weight`); none when the module holds one wrapper, no target names it and several bare
/// ones could (an ordinary `target_modules` module: PEFT refuses to wrap a parameter of a module
/// it already adapted, `_inject_parameters`). Anything else is refused.
pub fn wrappers<'a>(
    path: &Path,
    raw: &Value,
    names: impl Iterator<Item = &'a str>,
) -> InputResult<BTreeMap<String, String>> {
    let mut depths: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for n in names {
        let (mut module, mut d) = (n, 0);
        while let Some(m) = module.strip_suffix(".base_layer") {
            (module, d) = (m, d + 1);
        }
        depths.entry(module.to_owned()).or_default().insert(d);
    }
    let mut out = BTreeMap::new();
    for (module, ds) in depths {
        let (named, bare) = targeted_params(raw, &module);
        let nested = ds.iter().any(|&d| d > 0);
        let k = ds.len();
        let all = || named.iter().chain(&bare).cloned().collect::<Vec<_>>();
        let mut params = if named.len() == k {
            named.clone()
        } else if named.len() + bare.len() == k || nested || !named.is_empty() {
            all()
        } else {
            Vec::new()
        };
        if params.is_empty() {
            if nested {
                return Err(InputError::invalid(path, format!("module `{module}`: nested `.base_layer` adapter tensors, but `target_parameters` selects no parameter of it")));
            }
            continue;
        }
        let err = |m: String| InputError::invalid(path, format!("module `{module}`: {m}"));
        if k != params.len() || ds.iter().next_back() != Some(&(params.len() - 1)) {
            return Err(err(format!(
                "`target_parameters` selects {} parameter(s) ({}) but the file holds {} nested ParamWrapper(s)",
                params.len(),
                params.join(", "),
                k
            )));
        }
        if params.len() > 1 {
            let rank = |p: &str| REGISTRATION.iter().position(|r| *r == p);
            if let Some(p) = params.iter().find(|p| rank(p).is_none()) {
                return Err(err(format!("cannot tell which nested ParamWrapper holds `{p}`: PEFT nests them in the model class's registration order, which lorakit knows only for {}", REGISTRATION.join(", "))));
            }
            params.sort_by_key(|p| rank(p));
        }
        let n = params.len();
        for d in ds {
            let name = format!("{module}{}", ".base_layer".repeat(d));
            // Depth 0 is the outermost wrapper: the parameter registered last.
            out.insert(name, format!("{module}.{}", params[n - 1 - d]));
        }
    }
    Ok(out)
}

/// What [`expand`] made of a wrapper.
pub enum Expanded {
    /// A 2-D `weight` wrapped alone: an ordinary LoRA on `{module}.weight`, read as one.
    Plain,
    /// One module per expert.
    Experts(Vec<LoraModule>),
}

/// The stored tensors of one wrapper: `(key, shape)` of lora_A and lora_B, and whether the file
/// also holds what a ParamWrapper cannot have.
pub struct Stored<'a> {
    pub a: (&'a str, &'a [usize]),
    pub b: (&'a str, &'a [usize]),
    pub embedding: bool,
    pub magnitude: bool,
    pub bias: bool,
    pub block_diagonal: bool,
}

/// The wrapper `name` of parameter `param` as one LoRA module per expert (module header).
pub fn expand(
    file: &SafetensorsFile,
    cfg: &PeftConfig,
    name: &str,
    param: &str,
    s: Stored<'_>,
) -> InputResult<Expanded> {
    let fpath = file.path();
    let err = |m: String| {
        InputError::invalid(
            fpath,
            format!("module `{name}` (target parameter `{param}`): {m}"),
        )
    };
    let dropout = cfg.raw.get("lora_dropout").and_then(Value::as_f64);
    let refused = if dropout.is_some_and(|p| p != 0.0) {
        Some("lora_dropout != 0")
    } else if cfg.fan_in_fan_out {
        Some("fan_in_fan_out")
    } else if s.bias || cfg.raw.get("lora_bias") == Some(&Value::Bool(true)) {
        Some("lora_bias")
    } else if s.magnitude || cfg.use_dora {
        Some("DoRA")
    } else if s.embedding {
        Some("embedding factors")
    } else if s.block_diagonal {
        Some("BD-LoRA")
    } else {
        None
    };
    if let Some(what) = refused {
        return Err(err(format!(
            "a PEFT ParamWrapper does not work with {what} (PEFT 0.21.2 ParamWrapper.__init__); lorakit does not merge it either"
        )));
    }
    let (&[rows, inf], &[outf, cols]) = (s.a.1, s.b.1) else {
        return Err(err(format!(
            "lora_A {:?} and lora_B {:?} must be 2-D",
            s.a.1, s.b.1
        )));
    };
    let r = cfg.rank_for(param)?;
    if rows != cols || rows == 0 || !rows.is_multiple_of(r) {
        return Err(err(format!(
            "lora_A has {rows} rows and lora_B {cols} columns; a ParamWrapper stores r·experts of each (r = {r} from adapter_config.json r / rank_pattern)"
        )));
    }
    let n = rows / r;
    if n == 1 && param.ends_with(".weight") && !name.ends_with(".base_layer") {
        return Ok(Expanded::Plain);
    }
    let alpha = cfg.alpha_for(param)?;
    let scale = scale_for(alpha, r, cfg.use_rslora);
    let a = values(file, s.a.0)?;
    let b = values(file, s.b.0)?;
    let modules = (0..n)
        .map(|e| {
            let ae = a[e * r * inf..(e + 1) * r * inf].to_vec();
            let be: Vec<f32> = (0..outf)
                .flat_map(|o| (0..r).map(move |k| (o, k)))
                .map(|(o, k)| b[o * cols + k * n + e])
                .collect();
            expert_module(expert_name(param, e, n), r, alpha, scale, outf, inf, be, ae)
        })
        .collect();
    Ok(Expanded::Experts(modules))
}

#[allow(clippy::too_many_arguments)]
fn expert_module(
    name: String,
    rank: usize,
    alpha: f64,
    scale: f64,
    out_features: usize,
    in_features: usize,
    b: Vec<f32>,
    a: Vec<f32>,
) -> LoraModule {
    let factors = Factors::Lora {
        a: Data::Owned(Arc::new(a)),
        b: Data::Owned(Arc::new(b)),
    };
    let dims = (out_features, in_features, rank);
    LoraModule {
        scale,
        ..LoraModule::peft_linear(name, dims, alpha, factors, false)
    }
}

/// A factor's values in f32, refused when not a finite float tensor.
pub(crate) fn values(file: &SafetensorsFile, key: &str) -> InputResult<Vec<f32>> {
    let view = file.view(key)?;
    let err = |m: String| InputError::invalid(file.path(), format!("tensor `{key}`: {m}"));
    if !crate::dtype::is_float_compute(view.dtype) {
        return Err(err(format!(
            "dtype {} is not a float type",
            crate::dtype::name(view.dtype)
        )));
    }
    let v = view.to_f32();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(err(format!(
            "value {} at flat index {i} is not finite",
            v[i]
        )));
    }
    Ok(v)
}

/// `(module path rename on disk, fused parameter, per-expert tensors)`.
type SplitLayout = (
    Option<(&'static str, &'static str)>,
    &'static str,
    &'static [&'static str],
);

/// The per-expert tensors transformers saves a fused parameter as, by converter
/// (`conversion_mapping.py`, transformers 5.24.0): the module path on disk (Mixtral renames
/// `.mlp.` to `.block_sparse_moe.`), and the tensors under `experts.{e}.` whose rows,
/// concatenated, are the fused `[out, in]` slice.
const SPLIT_LAYOUTS: &[SplitLayout] = &[
    (None, "gate_up_proj", &["gate_proj", "up_proj"]),
    (None, "down_proj", &["down_proj"]),
    (
        Some((".mlp.", ".block_sparse_moe.")),
        "gate_up_proj",
        &["w1", "w3"],
    ),
    (Some((".mlp.", ".block_sparse_moe.")), "down_proj", &["w2"]),
];

/// Fits the expert modules of `adapter` to `base` before a merge: on a fused parameter
/// `{module}.{param}` each expert module learns whether the base stores it transposed (module
/// header, **Layout**) and stays (the merge adds it to its expert's slice); on a base saved one
/// tensor per expert it becomes the plain modules of those tensors. The expert count must be
/// the base's. Expert modules that fit neither are left for the name matcher to report.
pub fn fit_to_base(adapter: &mut Adapter, base: &Checkpoint) -> InputResult<()> {
    // A 2-D parameter wrapped alone is read as a plain module (`Expanded::Plain`); on a Mixtral
    // base (saved under `.block_sparse_moe.`, transformers' `mixtral` converter renaming it to
    // `.mlp.` on load) the router `mlp.gate.weight` that PEFT's `all-linear` expansion targets
    // is on disk as `block_sparse_moe.gate.weight`.
    for m in &mut adapter.modules {
        if parse_expert(&m.name).is_some() || base.contains(&format!("{}.weight", m.name)) {
            continue;
        }
        if let Some((from, to)) = SPLIT_LAYOUTS.iter().find_map(|l| l.0) {
            let renamed = m.name.replacen(from, to, 1);
            if renamed != m.name && base.contains(&format!("{renamed}.weight")) {
                m.name = renamed;
            }
        }
    }
    if !adapter
        .modules
        .iter()
        .any(|m| parse_expert(&m.name).is_some())
    {
        return Ok(());
    }
    let model_type = model_type(base);
    let path = adapter.path.clone();
    // mlx-lm's experts (`LoRASwitchLinear`) are on MLX's `SwitchLinear` weights, always
    // `[E, out, in]`; the resolution checks the (logical) shape.
    let mlx = adapter.format == crate::adapter::formats::format::Format::Mlx;
    let mut out = Vec::with_capacity(adapter.modules.len());
    for mut m in std::mem::take(&mut adapter.modules) {
        let Some((param, e, n)) = parse_expert(&m.name).map(|(p, e, n)| (p.to_owned(), e, n))
        else {
            out.push(m);
            continue;
        };
        if mlx {
            out.push(m);
            continue;
        }
        let param = param.as_str();
        let err = |msg: String| InputError::invalid(&path, format!("module `{}`: {msg}", m.name));
        if let Some(info) = base.info(param) {
            let base_n = if info.shape.len() == 3 {
                info.shape[0]
            } else {
                1
            };
            if base_n != n {
                return Err(err(format!(
                    "the adapter has {n} expert(s) (lora_A rows / r) but base tensor `{param}` {:?} has {base_n}",
                    info.shape
                )));
            }
            let t = transposed(&info.shape, &m, model_type.as_deref())
                .map_err(|why| err(format!("base tensor `{param}` {:?}: {why}", info.shape)))?;
            m.base_transposed = t;
            out.push(m);
            continue;
        }
        match split_of(base, param, e, n) {
            Some(parts) => out.extend(split(&m, parts).map_err(err)?),
            None => out.push(m),
        }
    }
    adapter.modules = out;
    Ok(())
}

/// What the base's config.json says about `Conv1D` layers ([`crate::io::conv1d::families`]);
/// `None` without a config.json that parses.
fn conv1d_families(base: &Checkpoint) -> Option<(bool, bool)> {
    Some(crate::io::conv1d::families(&base_config(base)?))
}

/// Sets the Linear modules' layout as PEFT 0.21.2 builds their layers on `base`, whatever the
/// adapter's `fan_in_fan_out` says (`tuners/lora/layer.py` `dispatch_default`: on an
/// `nn.Linear` target the flag is reset to false, on a `Conv1D` target forced to true, each with
/// a warning). With no Conv1D family named in the base's config.json every Linear module is
/// untransposed ([`linear_fan_in_fan_out_reset`]); in a Conv1D family a module named as one of
/// the family's [`crate::io::conv1d::LAYERS`] is transposed (a `fan_in_fan_out: false` file, as trainers
/// other than PEFT save one: GPT-2's square `attn.c_proj` was merged untransposed), every other
/// Linear module is not: those are `nn.Linear` (`lm_head`, `score`, clvp's `q_proj`, a
/// bert2gpt2 encoder's square `query`, which PEFT merges untransposed though the file it saves
/// says `fan_in_fan_out: true`, the flag its last Conv1D target left); without a config.json
/// naming the model the flag is kept (lorakit cannot tell the layer types). Expert parameters
/// keep their own layout.
pub(crate) fn fan_in_fan_out_as_peft(adapter: &mut Adapter, base: &Checkpoint) {
    match conv1d_families(base) {
        Some((true, false)) => linear_fan_in_fan_out_reset(adapter),
        Some((true, true)) => {
            for m in adapter.modules.iter_mut() {
                if m.kind == ModuleKind::Linear && parse_expert(&m.name).is_none() {
                    m.base_transposed = crate::io::conv1d::is_layer_name(&m.name);
                }
            }
        }
        _ => {}
    }
}

/// PEFT resets `fan_in_fan_out` to false on an `nn.Linear` target, with a warning (PEFT 0.21.2
/// `tuners/lora/layer.py` `dispatch_default`, `ia3/model.py`, `adalora/model.py`): only
/// `Conv1D` layers store `[in, out]`. For a base with no Conv1D layer ([`fan_in_fan_out_as_peft`], or a
/// GGUF architecture other than `gpt2`), the Linear modules of a `fan_in_fan_out` adapter are
/// merged as PEFT merges them, untransposed (expert parameters keep their own layout).
pub(crate) fn linear_fan_in_fan_out_reset(adapter: &mut Adapter) {
    let fifo = adapter
        .config
        .as_ref()
        .and_then(|c| c.get("fan_in_fan_out"))
        .and_then(Value::as_bool)
        == Some(true);
    for m in adapter.modules.iter_mut().filter(|_| fifo) {
        if m.kind == ModuleKind::Linear && m.base_transposed && parse_expert(&m.name).is_none() {
            m.base_transposed = false;
        }
    }
}

/// The base's `config.json`, when it has one that parses.
fn base_config(base: &Checkpoint) -> Option<Value> {
    let text = std::fs::read(base.folder().join("config.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// `model_type` of the base's `config.json`, when it has one.
fn model_type(base: &Checkpoint) -> Option<String> {
    base_config(base)?
        .get("model_type")?
        .as_str()
        .map(str::to_owned)
}

/// Whether the base tensor `shape` stores the expert module `m` as `[in, out]` per expert.
fn transposed(shape: &[usize], m: &LoraModule, model_type: Option<&str>) -> Result<bool, String> {
    let (o, i) = (m.out_features, m.in_features);
    let (d1, d2) = match shape {
        [_, d1, d2] => (*d1, *d2),
        // PEFT: a 2-D parameter is `[out, in]` (`_get_in_out_features`), never swapped.
        [d1, d2] => {
            return if (*d1, *d2) == (o, i) {
                Ok(false)
            } else {
                Err(format!("the adapter needs [{o}, {i}]"))
            }
        }
        _ => return Err("a ParamWrapper adapts 2-D or 3-D parameters only".into()),
    };
    let plain = (d1, d2) == (o, i);
    let swapped = (d1, d2) == (i, o);
    match (plain, swapped) {
        (false, false) => Err(format!(
            "the adapter needs [E, {o}, {i}] or [E, {i}, {o}] (lora_B {o} rows, lora_A {i} columns)"
        )),
        (true, false) => Ok(false),
        (false, true) => Ok(true),
        (true, true) => match model_type {
            Some(t) => Ok(TRANSPOSED_MODEL_TYPES.contains(&t)),
            None => Err("square experts are stored [E, in, out] or [E, out, in] depending on the model class, and the base has no config.json `model_type` to tell which".into()),
        },
    }
}

/// The per-expert base tensors of expert `e` of `param` and their row counts, when the base
/// holds all `n` experts (and no more) in one of [`SPLIT_LAYOUTS`].
fn split_of(base: &Checkpoint, param: &str, e: usize, n: usize) -> Option<Vec<(String, usize)>> {
    let (module, p) = param.rsplit_once('.')?;
    SPLIT_LAYOUTS.iter().find_map(|(rename, fused, parts)| {
        if *fused != p {
            return None;
        }
        let module = match rename {
            Some((from, to)) if module.contains(from) => module.replacen(from, to, 1),
            Some(_) => return None,
            None => module.to_owned(),
        };
        let at = |e: usize, part: &str| format!("{module}.{e}.{part}.weight");
        let all = parts
            .iter()
            .all(|part| base.contains(&at(n - 1, part)) && !base.contains(&at(n, part)));
        if !all {
            return None;
        }
        parts
            .iter()
            .map(|part| {
                let name = at(e, part);
                let info = base.info(&name)?;
                (info.shape.len() == 2).then(|| (name.clone(), info.shape[0]))
            })
            .collect()
    })
}

/// An expert module as the plain modules of its per-expert tensors: each takes its rows of B.
fn split(m: &LoraModule, parts: Vec<(String, usize)>) -> Result<Vec<LoraModule>, String> {
    let total: usize = parts.iter().map(|p| p.1).sum();
    if total != m.out_features {
        return Err(format!(
            "the adapter's {} output rows are not the {total} rows of {}",
            m.out_features,
            parts
                .iter()
                .map(|p| format!("`{}`", p.0))
                .collect::<Vec<_>>()
                .join(" + ")
        ));
    }
    let Factors::Lora {
        a: Data::Owned(a),
        b: Data::Owned(b),
    } = &m.factors
    else {
        return Err("expert factors are not in memory".into());
    };
    let mut row = 0;
    Ok(parts
        .into_iter()
        .map(|(name, rows)| {
            let bp = b[row * m.rank..(row + rows) * m.rank].to_vec();
            row += rows;
            let module = name.strip_suffix(".weight").unwrap_or(&name).to_owned();
            expert_module(
                module,
                m.rank,
                m.alpha,
                m.scale,
                rows,
                m.in_features,
                bp,
                a.to_vec(),
            )
        })
        .collect())
}

/// Refuses to write `adapter` as `format` when it holds experts of a fused parameter: no
/// writer rebuilds PEFT's nested ParamWrapper tensors, and kohya, GGUF and diffusers files have
/// no form for them. lorakit merges such adapters, it does not rewrite them.
pub fn refuse_write(adapter: &Adapter, format: &str) -> InputResult<()> {
    match adapter.modules.iter().find(|m| parse_expert(&m.name).is_some()) {
        None => Ok(()),
        Some(m) => Err(InputError::invalid(
            &adapter.path,
            format!(
                "module `{}`: an expert of a fused MoE parameter (PEFT target_parameters, mlx-lm LoRASwitchLinear) cannot be written as {format}; lorakit merges such adapters but does not rewrite them",
                m.name
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resolve(cfg: Value, names: &[&str]) -> InputResult<BTreeMap<String, String>> {
        wrappers(Path::new("a.safetensors"), &cfg, names.iter().copied())
    }

    /// The nesting the fixtures' PEFT files show: the first registered parameter innermost,
    /// whatever order `target_parameters` lists them in.
    #[test]
    fn nesting_follows_registration_order() {
        let m = "model.layers.0.mlp.experts";
        for list in [
            json!(["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]),
            json!(["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]),
        ] {
            let w = resolve(
                json!({ "target_parameters": list }),
                &[
                    m,
                    &format!("{m}.base_layer"),
                    "model.layers.0.self_attn.q_proj",
                ],
            )
            .unwrap();
            assert_eq!(w[m], format!("{m}.down_proj"));
            assert_eq!(w[&format!("{m}.base_layer")], format!("{m}.gate_up_proj"));
            assert_eq!(w.len(), 2, "q_proj is an ordinary module");
        }
    }

    /// PEFT's `all-linear` MoE expansion (fixtures/sweep6/mixtral_all_linear): bare targets
    /// beside named ones select a parameter only where the file holds its wrapper.
    #[test]
    fn bare_targets_beside_named_ones() {
        let cfg = json!({ "target_parameters":
            ["gate_up_proj", "gate.weight", "down_proj", "mlp.experts.down_proj"] });
        let (m, g, q) = (
            "model.layers.0.mlp.experts",
            "model.layers.0.mlp.gate",
            "model.layers.0.self_attn.q_proj",
        );
        let w = resolve(cfg, &[m, &format!("{m}.base_layer"), g, q]).unwrap();
        assert_eq!(w[m], format!("{m}.down_proj"));
        assert_eq!(w[&format!("{m}.base_layer")], format!("{m}.gate_up_proj"));
        assert_eq!(w[g], format!("{g}.weight"));
        assert_eq!(w.len(), 3, "q_proj is an ordinary module");
    }

    #[test]
    fn unorderable_or_miscounted_nestings_are_refused() {
        let m = "layers.0.experts";
        let two = json!({ "target_parameters": ["experts.w_in", "experts.w_out"] });
        let e = resolve(two, &[m, &format!("{m}.base_layer")]).unwrap_err();
        assert!(e.to_string().contains("cannot tell"), "{e}");
        let one = json!({ "target_parameters": ["experts.gate_up_proj"] });
        let e = resolve(one, &[m, &format!("{m}.base_layer")]).unwrap_err();
        assert!(e.to_string().contains("2 nested"), "{e}");
    }

    #[test]
    fn expert_names_round_trip() {
        let n = expert_name("a.b.gate_up_proj", 3, 4);
        assert_eq!(parse_expert(&n), Some(("a.b.gate_up_proj", 3, 4)));
        assert_eq!(parse_expert("a.b[4/4]"), None);
        assert_eq!(parse_expert("a.b.weight"), None);
    }
}
