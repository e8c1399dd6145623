//! Writing PEFT folders (`adapter_model.safetensors` + `adapter_config.json`) from the adapter
//! model. Never reads a config; the reader is [`super::read`].

use super::config::{CONFIG_NAME, PREFIX, WEIGHTS_NAME};
use crate::adapter::data::Data;
use crate::adapter::formats::written::{encoded, factor_shapes, stored_shape};
use crate::adapter::model::{Adapter, FullTensor, ModuleKind};
use crate::error::{InputError, InputResult};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

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

/// [`write()`] with a dtype policy: `Some(d)` encodes every tensor as `d`; `None` copies stored
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
    // PEFT 0.21.2 refuses a LoRA config without targets ("No `target_modules` passed but also
    // no `target_parameters` found"), so trainable-token rows alone have no LoRA folder.
    if adapter.modules.is_empty() && adapter.full_tensors.iter().any(|f| f.rows.is_some()) {
        return Err(InputError::invalid(
            &adapter.path,
            "the adapter holds trainable-token rows and no LoRA module: a PEFT LoRA folder needs a target module beside `trainable_token_indices` (PEFT refuses one without), so it is not written",
        ));
    }
    output.create_dir_all(out)?;
    let mut specs = Vec::new();
    let mut payload: Vec<Vec<u8>> = Vec::new();
    let mut push =
        |name: String, shape: Vec<usize>, (dt, bytes): (crate::dtype::Dtype, Vec<u8>)| {
            specs.push(TensorSpec::new(name, dt, shape));
            payload.push(bytes);
        };
    let lyc = super::lycoris::plan(adapter)?;
    for m in adapter.modules.iter().filter(|_| lyc.is_some()) {
        for (suffix, data, canonical) in crate::adapter::formats::lycoris::tensors(m) {
            let shape = stored_shape(adapter, data, canonical);
            push(
                format!("{PREFIX}{}.{suffix}", m.name),
                shape,
                encoded(adapter, data, dtype)?,
            );
        }
    }
    for m in adapter.modules.iter().filter(|_| lyc.is_none()) {
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
    let cfg = match &lyc {
        Some(l) => lycoris_config_json(adapter, l),
        None => config_json(adapter),
    };
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

/// The most common value of `vals` (ties: the smallest string), and full-name pattern entries
/// for the modules that differ (PEFT matches `(.*\.)?(key)$`, so an escaped full path matches
/// only itself).
fn common_and_patterns(
    adapter: &Adapter,
    ranks: &[usize],
    alphas: &[f64],
) -> (usize, f64, Map<String, Value>, Map<String, Value>) {
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
    let r: usize = most_common(ranks.iter().map(|r| r.to_string()).collect())
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let alpha: f64 = most_common(alphas.iter().map(|&a| fmt_num(a)).collect())
        .and_then(|s| s.parse().ok())
        .unwrap_or(r as f64);
    let mut rank_pattern = Map::new();
    let mut alpha_pattern = Map::new();
    let names: Vec<&str> = adapter.modules.iter().map(|m| m.name.as_str()).collect();
    for ((m, &mr), &ma) in adapter.modules.iter().zip(ranks).zip(alphas) {
        if mr != r {
            rank_pattern.insert(pattern_key(&m.name, &names), json!(mr));
        }
        if fmt_num(ma) != fmt_num(alpha) {
            alpha_pattern.insert(pattern_key(&m.name, &names), num_value(ma));
        }
    }
    (r, alpha, rank_pattern, alpha_pattern)
}

/// The `rank_pattern` / `alpha_pattern` key for module `name` among the adapter's `names`: the
/// name itself, as PEFT and the trainers write keys, where PEFT's `get_pattern_key`
/// (`utils/other.py` 0.21.2: `re.match(rf"(.*\.)?({key})$", module)`) takes it for no other
/// module — its characters are letters, digits, `_`, `-` and `.`, and no other name is matched
/// by it with `.` read as any character (`blocks.1.0.x` would match `blocks.100.x`) — else
/// the name with every metacharacter escaped, which matches only itself. Tools that match keys
/// by suffix instead of by regex (serving stacks' own config readers) read the plain form.
fn pattern_key(name: &str, names: &[&str]) -> String {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    let only_itself = || {
        regex::Regex::new(&format!(r"^(.*\.)?({name})$")).is_ok_and(|re| {
            names
                .iter()
                .all(|other| *other == name || !re.is_match(other))
        })
    };
    if plain && only_itself() {
        name.to_owned()
    } else {
        regex::escape(name)
    }
}

/// `adapter_config.json` of a PEFT LOHA / LOKR folder (`tuners/loha/config.py`,
/// `tuners/lokr/config.py`): `r`/`alpha` with full-name patterns, full-name `target_modules`,
/// and the folder-wide settings [`super::lycoris::plan`] chose. Fields of a config of the same
/// type read with the adapter are carried over.
pub fn lycoris_config_json(adapter: &Adapter, l: &super::lycoris::LycorisPeft) -> Value {
    let (r, alpha, rank_pattern, alpha_pattern) = common_and_patterns(adapter, &l.ranks, &l.alphas);
    let mut targets: Vec<String> = adapter.modules.iter().map(|m| m.name.clone()).collect();
    targets.sort();
    let mut cfg = match adapter.config.as_ref().and_then(Value::as_object) {
        Some(orig) if orig.get("peft_type").and_then(Value::as_str) == Some(l.peft_type) => {
            orig.clone()
        }
        _ => Map::new(),
    };
    let mut set = |k: &str, v: Value| {
        cfg.insert(k.to_owned(), v);
    };
    set("peft_type", json!(l.peft_type));
    set("r", json!(r));
    set("alpha", num_value(alpha));
    set("rank_pattern", Value::Object(rank_pattern));
    set("alpha_pattern", Value::Object(alpha_pattern));
    set("target_modules", json!(targets));
    set("use_effective_conv2d", json!(l.use_effective_conv2d));
    if l.peft_type == "LOKR" {
        set("decompose_both", json!(l.decompose_both));
        set("decompose_factor", json!(l.decompose_factor));
    }
    finish_config(
        cfg,
        adapter,
        [
            ("rank_dropout", json!(0.0)),
            ("module_dropout", json!(0.0)),
            ("init_weights", json!(true)),
            ("inference_mode", json!(true)),
            ("modules_to_save", Value::Null),
            ("task_type", Value::Null),
        ],
    )
}

/// The fields of PEFT 0.21.2's `PeftConfigMixin`/`PeftConfig` (`config.py`) that a LoRA config
/// shares with every other tuner's and that mean the same there.
const PEFT_CONFIG_KEYS: [&str; 6] = [
    "auto_mapping",
    "base_model_name_or_path",
    "inference_mode",
    "peft_version",
    "revision",
    "task_type",
];

/// Builds `adapter_config.json` for `adapter`: the most common rank and alpha as `r` /
/// `lora_alpha`, exceptions as full-name `rank_pattern` / `alpha_pattern` entries.
pub fn config_json(adapter: &Adapter) -> Value {
    let ranks: Vec<usize> = adapter.modules.iter().map(|m| m.rank).collect();
    let alphas: Vec<f64> = adapter.modules.iter().map(|m| m.alpha).collect();
    let (r, alpha, rank_pattern, alpha_pattern) = common_and_patterns(adapter, &ranks, &alphas);
    // Full module names: PEFT matches list entries exactly or as a dotted suffix, so every
    // adapted module and nothing else is targeted.
    let mut targets: Vec<String> = adapter.modules.iter().map(|m| m.name.clone()).collect();
    targets.sort();
    let orig = adapter.config.as_ref().and_then(Value::as_object);
    // Another tuner's config (TinyLoRA's `u`, `weight_tying`; AdaLoRA's `target_r`…): only the
    // keys every PEFT config has are carried into the LoRA config, and the targets are the
    // modules' full names.
    let foreign = orig
        .and_then(|c| c.get("peft_type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t != "LORA");
    let keep_targets = !foreign
        && orig
            .and_then(|c| c.get("target_modules"))
            .is_some_and(|t| !t.is_null());
    let fifo = adapter
        .modules
        .iter()
        .any(|m| m.base_transposed && m.kind == ModuleKind::Linear);
    let mut cfg = match orig {
        Some(orig) if foreign => orig
            .iter()
            .filter(|(k, _)| PEFT_CONFIG_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(orig) => {
            let mut cfg = orig.clone();
            // BD-LoRA's block-diagonal factors were expanded into the full ones when read
            // (`read.rs`, `BdLora`); left set, the flag makes PEFT build the compact layers
            // and refuse the full factors (size mismatch). PEFT's default is None.
            if let Some(v) = cfg.get_mut("use_bdlora").filter(|v| v.is_object()) {
                *v = Value::Null;
            }
            cfg
        }
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
    // Trainable-token rows (a LoRA folder's or a TRAINABLE_TOKENS folder's), saved under
    // `{module}.token_adapter.trainable_tokens_delta`: PEFT loads them only for the modules
    // `trainable_token_indices` names (`tuners/lora/config.py`; a dict, module name → ids).
    let tokens: Map<String, Value> = adapter
        .full_tensors
        .iter()
        .filter_map(|f| Some((super::config::tokens_module(&f.name)?, f.rows.as_ref()?)))
        .map(|(m, rows)| (m.to_owned(), json!(rows)))
        .collect();
    if !tokens.is_empty() {
        set("trainable_token_indices", Value::Object(tokens));
    }
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
    finish_config(
        cfg,
        adapter,
        [
            ("bias", json!("none")),
            ("lora_dropout", json!(0.0)),
            ("inference_mode", json!(true)),
            ("init_lora_weights", json!(true)),
            ("task_type", Value::Null),
        ],
    )
}

/// The end of every config this module writes: `base_model_name_or_path` from the adapter,
/// `defaults` for the keys still missing (PEFT's own defaults), keys sorted (deterministic).
fn finish_config<const N: usize>(
    mut cfg: Map<String, Value>,
    adapter: &Adapter,
    defaults: [(&str, Value); N],
) -> Value {
    cfg.insert(
        "base_model_name_or_path".to_owned(),
        adapter
            .base_model
            .as_ref()
            .map_or(Value::Null, |s| json!(s)),
    );
    for (k, v) in defaults {
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
    use super::pattern_key;

    #[test]
    fn pattern_keys_are_the_plain_name_unless_peft_would_read_it_for_another_module() {
        let names = [
            "model.layers.1.self_attn.q_proj",
            "model.layers.11.self_attn.q_proj",
            "down_blocks.1.0.attn",
            "down_blocks.100.attn",
            "te+1.fc",
        ];
        // The plain name: no other name is `(.*\.)?(key)$` with `.` as any character.
        assert_eq!(
            pattern_key(names[0], &names),
            "model.layers.1.self_attn.q_proj"
        );
        assert_eq!(
            pattern_key(names[1], &names),
            "model.layers.11.self_attn.q_proj"
        );
        assert_eq!(pattern_key(names[3], &names), "down_blocks.100.attn");
        // `down_blocks.1.0.attn` read as a regex also matches `down_blocks.100.attn`.
        assert_eq!(pattern_key(names[2], &names), r"down_blocks\.1\.0\.attn");
        // A metacharacter in the name is always escaped.
        assert_eq!(pattern_key(names[4], &names), r"te\+1\.fc");
        // Whatever the key, PEFT's rule selects exactly the module it was written for.
        for n in names {
            let key = pattern_key(n, &names);
            let re = regex::Regex::new(&format!(r"^(.*\.)?({key})$")).unwrap();
            let hits: Vec<&str> = names.iter().copied().filter(|o| re.is_match(o)).collect();
            assert_eq!(hits, [n], "{key}");
        }
    }
}
