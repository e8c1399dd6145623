//! mlx-lm adapters (Apple's `mlx_lm.lora`, mlx-lm 0.32.2): a folder of `adapters.safetensors`
//! and `adapter_config.json`, read into and written from the one adapter model.
//!
//! What mlx-lm writes and how it applies it (`tuner/lora.py`, `tuner/dora.py`,
//! `tuner/utils.py` `linear_to_lora_layers` / `load_adapters`, `tuner/trainer.py`):
//! - the config is `vars(args)` of the trainer: `fine_tune_type` (`lora`, `dora` or `full`;
//!   `load_adapters` reads a missing one as `lora`), `num_layers` (the last N blocks get adapter
//!   layers; -1 all of them), `lora_parameters` `{rank, scale, dropout, keys?}`;
//! - tensors are `tree_flatten(model.trainable_parameters())`: `{module}.lora_a` `[in, r]` and
//!   `{module}.lora_b` `[r, out]`, and with DoRA `{module}.m` `[out]`. `LoRALinear.fuse` adds
//!   `ΔW = scale · lora_bᵀ · lora_aᵀ`: the scale is not divided by the rank, and the canonical
//!   factors are `A = lora_aᵀ`, `B = lora_bᵀ` (read as transposed views of the file, no copy).
//!   An `nn.Embedding` (`LoRAEmbedding`: `lora_a [vocab, r]`, `lora_b [r, dims]`) adds
//!   `scale · lora_a · lora_b` to the `[vocab, dims]` table: the same factors on a base stored
//!   transposed, as PEFT's embedding LoRA. `DoRALinear.fuse` is PEFT's DoRA rule, the norm per
//!   output row;
//! - `full` saves every parameter of the trained blocks whole: full tensors that replace the
//!   base's.
//!
//! mlx-lm's checkpoint names are the Hugging Face ones for the Llama family (`sanitize` keeps
//! them), so a module name is the base's module path.
//!
//! Mixture-of-experts factors (`LoRASwitchLinear`, 3-D `[E, …]` on mlx-lm's stacked
//! `switch_mlp` weights) are read as one module per expert slice ([`experts`]).
//!
//! Refused, naming why: DoRA on an embedding or on experts, and a factor whose rank is not
//! `lora_parameters.rank` (`load_adapters` refuses it: its layers are built at that rank).
//!
//! Must not: know another format's names, or decide what a merge does with the modules.

use super::layout::{Facts, Holds, Layout, Shape, WriteArgs};
use super::peft::CONFIG_NAME;
use super::written::encoded;
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::formats::format::Format;
use crate::adapter::model::{Adapter, DoraRule, FullTensor, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::{Output, SafetensorsFile};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The tensor file of an mlx-lm adapter folder (`tuner/trainer.py` `adapter_file`).
pub const WEIGHTS_NAME: &str = "adapters.safetensors";

/// Whether `config` is mlx-lm's `adapter_config.json` rather than PEFT's: it has mlx-lm's own
/// fields and no `peft_type`.
pub fn is_config(config: &Value) -> bool {
    config.get("peft_type").is_none()
        && (config.get("lora_parameters").is_some() || config.get("fine_tune_type").is_some())
}

/// Whether a tensor name is an mlx-lm factor (`….lora_a`, `….lora_b`: lower case, no
/// `.weight`, which neither PEFT nor kohya write).
pub fn is_factor_name(name: &str) -> bool {
    name.ends_with(".lora_a") || name.ends_with(".lora_b")
}

/// How the blocks were trained (`fine_tune_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tune {
    Lora,
    Dora,
    Full,
}

/// The config fields the tensors are read with.
struct Config {
    tune: Tune,
    rank: usize,
    scale: f64,
    /// `lora_parameters.keys`: `None` is every Linear/Embedding inside a block.
    keys: Option<Vec<String>>,
    /// `num_layers`: block-relative keys are built in `model.layers[-max(num_layers, 0):]`.
    num_layers: i64,
}

fn parse_config(path: &Path, raw: &Value) -> InputResult<Config> {
    let bad = |k: &str, why: &str| InputError::invalid(path, format!("`{k}` {why}"));
    if !raw.is_object() {
        return Err(InputError::invalid(path, "not a JSON object"));
    }
    let tune = match raw.get("fine_tune_type") {
        None => Tune::Lora,
        Some(Value::String(s)) if s == "lora" => Tune::Lora,
        Some(Value::String(s)) if s == "dora" => Tune::Dora,
        Some(Value::String(s)) if s == "full" => Tune::Full,
        Some(v) => {
            return Err(bad(
                "fine_tune_type",
                &format!("is {v}; mlx-lm trains `lora`, `dora` or `full`"),
            ))
        }
    };
    // load_adapters reads `config.num_layers` whatever the type (an AttributeError without it).
    let Some(num_layers) = raw.get("num_layers").and_then(Value::as_i64) else {
        return Err(bad(
            "num_layers",
            "is missing or not an integer (mlx-lm's load_adapters reads it)",
        ));
    };
    if tune == Tune::Full {
        return Ok(Config {
            tune,
            rank: 0,
            scale: 1.0,
            keys: None,
            num_layers,
        });
    }
    let params = raw
        .get("lora_parameters")
        .filter(|p| p.is_object())
        .ok_or_else(|| {
            bad(
                "lora_parameters",
                "is missing or not an object (mlx-lm reads rank and scale from it)",
            )
        })?;
    // linear_to_lora_layers: "LoRA config is missing required key 'scale'" (a PEFT-style
    // `alpha` is not read).
    let scale = match params.get("scale").and_then(Value::as_f64) {
        Some(s) if s.is_finite() => s,
        Some(_) | None => {
            return Err(bad(
                "lora_parameters.scale",
                "is missing or not a finite number (mlx-lm's ΔW = scale·lora_bᵀ·lora_aᵀ needs it; it has no alpha)",
            ))
        }
    };
    // linear_to_lora_layers reads config["rank"] and config["dropout"] (KeyError without).
    let rank = params
        .get("rank")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .and_then(|r| usize::try_from(r).ok())
        .ok_or_else(|| {
            bad(
                "lora_parameters.rank",
                "is missing or not a positive integer (mlx-lm builds its layers at it)",
            )
        })?;
    if !params.get("dropout").is_some_and(Value::is_number) {
        return Err(bad(
            "lora_parameters.dropout",
            "is missing or not a number (mlx-lm's linear_to_lora_layers reads it)",
        ));
    }
    let keys = match params.get("keys") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|k| k.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("lora_parameters.keys", "is not a list of module names"))?,
        ),
        Some(_) => return Err(bad("lora_parameters.keys", "is not a list of module names")),
    };
    Ok(Config {
        tune,
        rank,
        scale,
        keys,
        num_layers,
    })
}

/// A module inside a block: `(…layers.N, rest)` — `linear_to_lora_layers` matches `rest`
/// against `keys` in each block (`model.layers`), and full paths against `keys` in its pass
/// over `model.named_modules()`.
fn in_block(name: &str) -> Option<&str> {
    block_of(name).map(|(_, rest)| rest)
}

/// [`in_block`] with the block's index.
fn block_of(name: &str) -> Option<(u64, &str)> {
    let mut from = 0;
    while let Some(i) = name[from..].find("layers.") {
        let at = from + i;
        let after = &name[at + "layers.".len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if (at == 0 || name.as_bytes()[at - 1] == b'.')
            && digits > 0
            && after.as_bytes().get(digits) == Some(&b'.')
        {
            let index = after[..digits].parse().unwrap_or(u64::MAX);
            return Some((index, &after[digits + 1..]));
        }
        from = at + 1;
    }
    None
}

/// Why mlx-lm builds no adapter layer for module `name` under `keys` (its load_adapters then
/// refuses the module's tensors as "not an adapter parameter in the model"), or `None`.
fn unbuilt(name: &str, keys: Option<&[String]>) -> Option<String> {
    let rest = in_block(name);
    match keys {
        Some(keys) if keys.iter().any(|k| k == name || Some(k.as_str()) == rest) => None,
        Some(_) => Some("lora_parameters.keys does not name it".into()),
        None if rest.is_some() => None,
        None => Some(
            "it is outside the blocks and lora_parameters has no keys (mlx-lm then adapts block layers only)"
                .into(),
        ),
    }
}

/// Why a module built through a block-relative key (not its full path in `keys`) lies outside
/// `model.layers[-max(num_layers, 0):]` (`linear_to_lora_layers`), or `None`. The model has at
/// least `last + 1` blocks (the file adapts block `last`), so block `i < last + 1 − num_layers`
/// is outside whatever the model's count (found by the hostile round 11: `num_layers: 1` over a
/// file adapting two blocks merged both, where load_adapters refuses the first).
fn outside_last_blocks(
    name: &str,
    keys: Option<&[String]>,
    num_layers: i64,
    last: Option<&(u64, String)>,
) -> Option<String> {
    let (i, _) = block_of(name)?;
    let n = u64::try_from(num_layers).ok().filter(|&n| n > 0)?;
    if keys.is_some_and(|k| k.iter().any(|k| k == name)) {
        return None;
    }
    let (last, last_module) = last?;
    let first = last.checked_add(1)?.checked_sub(n)?;
    (i < first).then(|| {
        format!(
            "num_layers is {num_layers}: mlx-lm adapts only the last {num_layers} block(s), and block {i} is not among them since the file also adapts `{last_module}` (block {last})"
        )
    })
}

/// Whether module `name` is an embedding table: the attribute names mlx-lm 0.32.2's models
/// give an `nn.Embedding` (`grep "= nn.Embedding" models/*.py`), whose LoRA is
/// `LoRAEmbedding`. Linears with similar names (gpt_neox's `embed_out`) are not.
fn is_embedding(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    matches!(
        last,
        "embed_tokens"
            | "wte"
            | "wpe"
            | "word_embeddings"
            | "embeddings"
            | "tok_embeddings"
            | "embedding"
            | "embed_tokens_per_layer"
            | "token_embeddings"
            | "position_embedding_table"
            | "embed_in"
            | "embed"
    )
}

/// The experts of a `LoRASwitchLinear` (mlx-lm's MoE layers over the stacked `switch_mlp`
/// weights `[E, out, in]`): `lora_a` `[E, r, in]` and `lora_b` `[E, out, r]`, and `fuse` adds
/// `scale · lora_b[e] · lora_a[e]` to expert `e` (`tuner/lora.py` `LoRASwitchLinear.fuse`).
/// One module per expert, on the slice `[e]` of `{module}.weight`, as PEFT's fused-parameter
/// experts are ([`super::peft::params::expert_name`]).
fn experts(
    file: &SafetensorsFile,
    name: &str,
    (ka, sa): (&str, &[usize]),
    (kb, sb): (&str, &[usize]),
    cfg: &Config,
) -> Result<Vec<LoraModule>, String> {
    let (n, r, in_f, out_f) = match (sa, sb) {
        ([n, r, i], [n2, o, r2]) if n == n2 && r == r2 && *n > 0 && *r > 0 && *i > 0 && *o > 0 => {
            (*n, *r, *i, *o)
        }
        _ => {
            return Err(format!(
                "module `{name}`: lora_a {sa:?} and lora_b {sb:?} are not a LoRASwitchLinear's `[E, r, in]` and `[E, out, r]`"
            ))
        }
    };
    if r != cfg.rank {
        return Err(format!(
            "module `{name}` has rank {r}, but lora_parameters.rank is {}: mlx-lm builds every adapter layer at that rank and refuses the file",
            cfg.rank
        ));
    }
    let values = |k: &str| super::peft::params::values(file, k).map_err(|e| e.to_string());
    let (a, b) = (values(ka)?, values(kb)?);
    let param = format!("{name}.weight");
    Ok((0..n)
        .map(|e| LoraModule {
            name: super::peft::params::expert_name(&param, e, n),
            kind: ModuleKind::Linear,
            rank: r,
            alpha: cfg.scale * r as f64,
            scale: cfg.scale,
            out_features: out_f,
            in_features: in_f,
            factors: Factors::Lora {
                a: Data::Owned(Arc::new(a[e * r * in_f..(e + 1) * r * in_f].to_vec())),
                b: Data::Owned(Arc::new(b[e * out_f * r..(e + 1) * out_f * r].to_vec())),
            },
            base_transposed: false,
            dora_magnitude: None,
            dora_rule: DoraRule::Peft,
            bias: None,
        })
        .collect())
}

/// Reads an mlx-lm adapter: `file` (`adapters.safetensors` or a checkpoint
/// `NNNNNNN_adapters.safetensors`) with its `config` (`adapter_config.json`).
pub fn read(path: &Path, file: SafetensorsFile, config: &Path) -> InputResult<Adapter> {
    let raw: Value = serde_json::from_slice(&crate::io::read_json_file(config)?)
        .map_err(|e| InputError::invalid(config, format!("not valid JSON: {e}")))?;
    let cfg = parse_config(config, &raw)?;
    let fpath = file.path().to_path_buf();
    let err = |msg: String| InputError::invalid(&fpath, msg);
    let mut full_tensors = Vec::new();
    // module → (lora_a, lora_b, m) tensor names and shapes.
    type Part = Option<(String, Vec<usize>)>;
    let mut parts: BTreeMap<String, [Part; 3]> = BTreeMap::new();
    for t in file.tensors() {
        if cfg.tune == Tune::Full {
            full_tensors.push(FullTensor {
                name: t.name.clone(),
                data: Data::Stored {
                    key: t.name.clone(),
                    transpose: false,
                },
                shape: t.shape.clone(),
                rows: None,
            });
            continue;
        }
        let (module, leaf) = t.name.rsplit_once('.').unwrap_or(("", &t.name));
        let slot = match leaf {
            "lora_a" => 0,
            "lora_b" => 1,
            "m" if cfg.tune == Tune::Dora => 2,
            _ => {
                return Err(err(format!(
                    "tensor `{}` is not an mlx-lm {} parameter (`lora_a`, `lora_b`{}); mlx-lm's load_adapters refuses it too",
                    t.name,
                    if cfg.tune == Tune::Dora { "DoRA" } else { "LoRA" },
                    if cfg.tune == Tune::Dora { ", `m`" } else { "" }
                )))
            }
        };
        if module.is_empty() {
            return Err(err(format!("tensor `{}` names no module", t.name)));
        }
        parts.entry(module.to_owned()).or_default()[slot] = Some((t.name.clone(), t.shape.clone()));
    }
    // The model has at least this many blocks; mlx-lm's own count is not in the folder.
    let last_block = parts
        .keys()
        .filter_map(|n| block_of(n).map(|(i, _)| (i, n.clone())))
        .max();
    let mut modules = Vec::new();
    for (name, [a, b, m]) in parts {
        let (Some((ka, sa)), Some((kb, sb))) = (a, b) else {
            return Err(err(format!(
                "module `{name}` has only one of `lora_a` / `lora_b`"
            )));
        };
        if let Some(why) = unbuilt(&name, cfg.keys.as_deref()).or_else(|| {
            outside_last_blocks(
                &name,
                cfg.keys.as_deref(),
                cfg.num_layers,
                last_block.as_ref(),
            )
        }) {
            return Err(err(format!(
                "module `{name}`: mlx-lm builds no adapter layer for it ({why}) and refuses its tensors"
            )));
        }
        if sa.len() == 3 || sb.len() == 3 {
            if m.is_some() {
                return Err(err(format!(
                    "module `{name}`: DoRA on mixture-of-experts factors (mlx-lm has no DoRA switch layer)"
                )));
            }
            modules.extend(experts(&file, &name, (&ka, &sa), (&kb, &sb), &cfg).map_err(err)?);
            continue;
        }
        if sa.len() != 2 || sb.len() != 2 || sa[1] != sb[0] || sa.contains(&0) || sb[1] == 0 {
            return Err(err(format!(
                "module `{name}`: lora_a {sa:?} and lora_b {sb:?} are not `[in, r]` and `[r, out]` of one rank"
            )));
        }
        let (in_f, rank, out_f) = (sa[0], sa[1], sb[1]);
        if rank != cfg.rank {
            return Err(err(format!(
                "module `{name}` has rank {rank}, but lora_parameters.rank is {}: mlx-lm builds every adapter layer at that rank and refuses the file",
                cfg.rank
            )));
        }
        let embedding = is_embedding(&name);
        let magnitude = match m {
            None if cfg.tune == Tune::Dora => {
                return Err(err(format!(
                    "module `{name}` has no DoRA magnitude `m` (fine_tune_type is dora)"
                )))
            }
            None => None,
            Some((key, _)) if embedding => {
                return Err(err(format!(
                    "tensor `{key}`: DoRA on an embedding (DoRAEmbedding, the norm per table row) is not applied by lorakit"
                )))
            }
            Some((key, shape)) if shape != [out_f] => {
                return Err(err(format!(
                    "tensor `{key}` has shape {shape:?}, not [{out_f}] (one magnitude per output row)"
                )))
            }
            Some((key, _)) => Some(Data::Stored {
                key,
                transpose: false,
            }),
        };
        modules.push(LoraModule {
            name,
            kind: if embedding {
                ModuleKind::Embedding
            } else {
                ModuleKind::Linear
            },
            rank,
            alpha: cfg.scale * rank as f64,
            scale: cfg.scale,
            out_features: out_f,
            in_features: in_f,
            factors: Factors::Lora {
                a: Data::Stored {
                    key: ka,
                    transpose: true,
                },
                b: Data::Stored {
                    key: kb,
                    transpose: true,
                },
            },
            base_transposed: embedding,
            dora_magnitude: magnitude,
            dora_rule: DoraRule::Peft,
            bias: None,
        });
    }
    if modules.is_empty() && full_tensors.is_empty() {
        return Err(err("holds no adapter tensor".into()));
    }
    Ok(Adapter {
        source: Some(file),
        full_tensors,
        base_model: raw.get("model").and_then(Value::as_str).map(str::to_owned),
        use_dora: cfg.tune == Tune::Dora,
        config: Some(raw),
        ..Adapter::of_modules(Format::Mlx, path.to_path_buf(), modules)
    })
}

/// mlx-lm's [`Layout`].
pub struct Mlx;

impl Layout for Mlx {
    fn facts(&self) -> &'static Facts {
        &Facts {
            name: "mlx",
            label: "mlx-lm",
            shape: Shape::Folder,
            names_are_paths: true,
            alpha_tensors: false,
            holds: Holds {
                full_tensors: false,
                embeddings: true,
                fan_in_fan_out: false,
            },
        }
    }

    fn files(&self, out: &Path) -> Vec<PathBuf> {
        vec![out.join(WEIGHTS_NAME), out.join(CONFIG_NAME)]
    }

    fn read_paths(&self, path: &Path) -> Vec<PathBuf> {
        super::peft::Peft.read_paths(path)
    }

    fn written_name(&self, name: &str, _prefix: &str) -> String {
        name.to_owned()
    }

    /// mlx-lm's adapter layers are LoRA and DoRA on `nn.Linear` and `nn.Embedding`, with no
    /// bias term, and a LoRA file holds nothing else.
    fn check_modules(&self, adapter: &Adapter) -> InputResult<()> {
        let refuse = |what: String| {
            Err(InputError::invalid(
                &adapter.path,
                format!("{what}, which an mlx-lm adapter cannot hold"),
            ))
        };
        for m in &adapter.modules {
            let why = if !matches!(m.factors, Factors::Lora { .. }) {
                format!("is {}", m.factors.algo())
            } else if matches!(m.kind, ModuleKind::Conv { .. }) {
                "adapts a convolution".to_owned()
            } else if m.kind == ModuleKind::Linear && m.base_transposed {
                "adapts a weight stored transposed (fan_in_fan_out)".to_owned()
            } else if m.bias.is_some() {
                "has a lora_B bias".to_owned()
            } else if m.dora_magnitude.is_some()
                && (m.dora_rule != DoraRule::Peft || m.kind == ModuleKind::Embedding)
            {
                "has a DoRA magnitude mlx-lm's DoRALinear does not apply the same way".to_owned()
            } else {
                continue;
            };
            return refuse(format!("module `{}` {why}", m.name));
        }
        if let Some(f) = written_full(adapter).find(|f| f.rows.is_some()) {
            return refuse(format!(
                "full tensor `{}` holds only some rows (trainable tokens)",
                f.name
            ));
        }
        if let Some(f) = written_full(adapter).next() {
            if !adapter.modules.is_empty() {
                return refuse(format!(
                    "full tensor `{}` beside LoRA modules (mlx-lm's load_adapters takes only lora_a/lora_b/m then)",
                    f.name
                ));
            }
        }
        let dora = adapter
            .modules
            .iter()
            .filter(|m| m.dora_magnitude.is_some())
            .count();
        if dora != 0 && dora != adapter.modules.len() {
            return refuse(
                "a mix of DoRA and plain LoRA modules (fine_tune_type is one for the file)".into(),
            );
        }
        Ok(())
    }

    /// One `scale` per file: a module with another scale has it folded into its `B`.
    fn fold_scales(&self, adapter: &mut Adapter) -> InputResult<Vec<Option<f64>>> {
        let scale = common_scale(adapter);
        let mut folded = vec![None; adapter.modules.len()];
        #[allow(clippy::needless_range_loop)] // `adapter` is borrowed again inside (values)
        for i in 0..adapter.modules.len() {
            let m = &adapter.modules[i];
            if m.scale == scale {
                continue;
            }
            let f = m.scale / scale;
            let Some((_, b)) = m.factors.lora() else {
                continue;
            };
            // Its scale over the file's one scale.
            let scaled = adapter.scaled_values(b, f, &m.name, "lora_B")?;
            folded[i] = Some(m.scale);
            let m = &mut adapter.modules[i];
            if let Factors::Lora { b, .. } = &mut m.factors {
                *b = Data::Owned(Arc::new(scaled));
            }
            m.scale = scale;
            m.alpha = scale * m.rank as f64;
        }
        Ok(folded)
    }

    /// Every module at the file's one rank (the largest; smaller ones are padded with zeros)
    /// and one scale, stated as `alpha = scale · rank`.
    fn written_ranks_alphas(&self, adapter: &Adapter) -> InputResult<Vec<(usize, f64)>> {
        let rank = max_rank(adapter);
        let scale = common_scale(adapter);
        Ok(adapter
            .modules
            .iter()
            .map(|_| (rank, scale * rank as f64))
            .collect())
    }

    fn stamp_metadata(&self, _: &Adapter, _: &str, _: &mut Vec<(String, String)>) {}

    fn write(&self, adapter: &Adapter, output: &mut Output, args: WriteArgs) -> InputResult<()> {
        write(adapter, output, args)
    }
}

/// The most common nonzero module scale (ties: the smallest), 1 when there is none.
fn common_scale(adapter: &Adapter) -> f64 {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for m in adapter.modules.iter().filter(|m| m.scale != 0.0) {
        *counts.entry(m.scale.to_bits()).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| {
            a.1.cmp(&b.1)
                .then(f64::from_bits(b.0).total_cmp(&f64::from_bits(a.0)))
        })
        .map_or(1.0, |(s, _)| f64::from_bits(s))
}

/// The full tensors a write keeps: not the copy of the base weight PEFT saves beside an
/// embedding LoRA ([`Adapter::is_saved_base_copy`]), which mlx-lm takes from the model itself.
fn written_full(adapter: &Adapter) -> impl Iterator<Item = &FullTensor> {
    adapter
        .full_tensors
        .iter()
        .filter(|f| !adapter.is_saved_base_copy(f))
}

fn max_rank(adapter: &Adapter) -> usize {
    adapter.modules.iter().map(|m| m.rank).max().unwrap_or(0)
}

/// Writes `adapter` as an mlx-lm folder: factors transposed to mlx-lm's `[in, r]` / `[r, out]`,
/// every module at the largest rank (zero rows and columns added: the same ΔW), one scale
/// (another module's scale folded into its `lora_b` here, whether or not
/// [`Layout::fold_scales`] ran: `resize` and `extract` write without it), and as `keys` the
/// modules' full paths, which `linear_to_lora_layers` matches in its pass over
/// `model.named_modules()`: it builds exactly these layers (block-relative keys would build one
/// in every block, and an extra DoRA layer rescales weights the adapter never touched).
/// `num_layers` is then unused; -1 ("all", as mlx-lm's `--num-layers` documents).
fn write(adapter: &Adapter, output: &mut Output, args: WriteArgs) -> InputResult<()> {
    use crate::io::TensorSpec;
    Mlx.check_modules(adapter)?;
    let out = args.out;
    output.create_dir_all(out)?;
    let rank = max_rank(adapter);
    let scale = common_scale(adapter);
    let dora = adapter.modules.iter().any(|m| m.dora_magnitude.is_some());
    let mut tensors: BTreeMap<String, (Vec<usize>, crate::dtype::Dtype, Vec<u8>)> = BTreeMap::new();
    let dt = args.dtype.unwrap_or(crate::dtype::Dtype::F32);
    for m in &adapter.modules {
        let (a, b) = adapter.factors(m).map(|(b, a)| (a, b))?;
        let b = if m.scale == scale {
            b
        } else {
            let Some((_, bd)) = m.factors.lora() else {
                unreachable!("check_modules: LoRA only")
            };
            Arc::new(adapter.scaled_values(bd, m.scale / scale, &m.name, "lora_B")?)
        };
        let r = m.rank;
        // lora_a [in, rank] = Aᵀ padded; lora_b [rank, out] = Bᵀ padded.
        let mut la = vec![0f32; m.in_features * rank];
        for i in 0..r {
            for j in 0..m.in_features {
                la[j * rank + i] = a[i * m.in_features + j];
            }
        }
        let mut lb = vec![0f32; rank * m.out_features];
        for o in 0..m.out_features {
            for i in 0..r {
                lb[i * m.out_features + o] = b[o * r + i];
            }
        }
        let enc = |v: &[f32]| crate::dtype::encode(dt, v);
        tensors.insert(
            format!("{}.lora_a", m.name),
            (vec![m.in_features, rank], dt, enc(&la)),
        );
        tensors.insert(
            format!("{}.lora_b", m.name),
            (vec![rank, m.out_features], dt, enc(&lb)),
        );
        if let Some(d) = &m.dora_magnitude {
            let (mdt, bytes) = encoded(adapter, d, args.dtype)?;
            tensors.insert(format!("{}.m", m.name), (vec![m.out_features], mdt, bytes));
        }
    }
    for f in written_full(adapter) {
        let (fdt, bytes) = encoded(adapter, &f.data, args.dtype)?;
        tensors.insert(f.name.clone(), (f.shape.clone(), fdt, bytes));
    }
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, (shape, dt, _))| TensorSpec::new(n.clone(), *dt, shape.clone()))
        .collect();
    let mut meta = vec![("format".to_string(), "mlx".to_string())];
    meta.extend(args.metadata.iter().filter(|(k, _)| k != "format").cloned());
    let mut w = output.safetensors(&out.join(WEIGHTS_NAME), &meta, specs)?;
    for (name, (_, _, bytes)) in &tensors {
        w.write_tensor(name, bytes)?;
    }
    w.finish()?;
    let mut keys: Vec<String> = adapter.modules.iter().map(|m| m.name.clone()).collect();
    keys.sort();
    keys.dedup();
    let tune = if adapter.modules.is_empty() && written_full(adapter).next().is_some() {
        "full"
    } else if dora {
        "dora"
    } else {
        "lora"
    };
    let mut cfg = serde_json::Map::new();
    cfg.insert("fine_tune_type".into(), json!(tune));
    cfg.insert("num_layers".into(), json!(-1));
    if tune != "full" {
        cfg.insert(
            "lora_parameters".into(),
            json!({"rank": rank, "scale": scale, "dropout": 0.0, "keys": keys}),
        );
    }
    if let Some(b) = &adapter.base_model {
        cfg.insert("model".into(), json!(b));
    }
    let mut text = serde_json::to_vec_pretty(&Value::Object(cfg)).expect("json");
    text.push(b'\n');
    output.small_file(&out.join(CONFIG_NAME), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_selected_as_linear_to_lora_layers_selects_them() {
        assert_eq!(
            in_block("model.layers.12.self_attn.q_proj"),
            Some("self_attn.q_proj")
        );
        assert_eq!(in_block("model.embed_tokens"), None);
        assert_eq!(in_block("model.layers.x.mlp"), None);
        assert_eq!(in_block("model.sublayers.1.mlp"), None);
        let keys = [
            "self_attn.q_proj".to_owned(),
            "model.embed_tokens".to_owned(),
        ];
        assert_eq!(
            unbuilt("model.layers.3.self_attn.q_proj", Some(&keys)),
            None
        );
        assert_eq!(unbuilt("model.embed_tokens", Some(&keys)), None);
        assert!(unbuilt("model.layers.3.self_attn.v_proj", Some(&keys)).is_some());
        assert_eq!(unbuilt("model.layers.3.mlp.up_proj", None), None);
        assert!(unbuilt("lm_head", None).is_some());
    }

    #[test]
    fn configs_are_told_apart() {
        assert!(is_config(
            &json!({"lora_parameters": {"rank": 8, "scale": 20.0}})
        ));
        assert!(is_config(&json!({"fine_tune_type": "full"})));
        assert!(!is_config(
            &json!({"peft_type": "LORA", "fine_tune_type": "lora"})
        ));
        assert!(!is_config(&json!({"r": 8})));
    }
}
