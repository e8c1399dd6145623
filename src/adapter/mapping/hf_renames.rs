//! The names transformers 5 gives a checkpoint's tensors when it loads them: the key renamings of
//! its `conversion_mapping.py` (`get_model_conversion_mapping`), applied to a base's on-disk names
//! as `core_model_loading.rename_source_key` applies them. transformers reverses them on save, so
//! files (and the hub) keep the old names (`language_model.model.layers.N…` of a LLaVA/Gemma-3,
//! `vit.encoder.layer.N.attention.attention.query` of a ViT, `text_model.…` of a CLIP text
//! encoder) while PEFT saves adapters under the runtime ones (`model.language_model.layers.N…`,
//! `vit.layers.N.attention.q_proj`, `encoder.…`).
//!
//! Owns: the table (`hf_renames.json`, generated from transformers 5.24 by
//! fixtures/gen/hf_renames_table.py: per model class the transforms its loader builds, scoped as
//! it scopes them; per `model_type`/class key the root-level list; each distinct list once) and
//! the forward renaming.
//! Must not: decide a placement (callers try a runtime name only when the literal name is
//! absent), or apply a `WeightConverter` (its tensors are split/fused at load: a name one
//! produces is reported, never placed).

use super::super::model::Adapter;
use crate::error::{InputError, InputResult};
use crate::io::Checkpoint;
use fancy_regex::Regex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// transformers 5.24's renamings per model class and per `conversion_mapping.py` key.
const TABLE: &str = include_str!("hf_renames.json");

fn table() -> &'static Value {
    static T: OnceLock<Value> = OnceLock::new();
    T.get_or_init(|| serde_json::from_str(TABLE).expect("hf_renames.json is valid JSON"))
}

/// One `WeightTransform` of the table.
struct Transform {
    /// `rename` (WeightRenaming, PrefixChange), `converter`, or `unsupported:<class>`.
    kind: String,
    scope: Option<String>,
    base_model_prefix: String,
    re: Regex,
    targets: Vec<String>,
    ops: Vec<String>,
}

impl Transform {
    fn parse(v: &Value) -> Option<Transform> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let list = |k: &str| -> Vec<String> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(Transform {
            kind: s("kind")?,
            scope: s("scope"),
            base_model_prefix: s("bmp").unwrap_or_default(),
            re: Regex::new(&s("re")?).ok()?,
            targets: list("targets"),
            ops: list("ops"),
        })
    }

    /// `WeightTransform.rename_source_key`: the renamed key, or `None` where it does not match.
    fn rename(&self, key: &str) -> Option<String> {
        let (prefix, rest) = match &self.scope {
            None => ("", key),
            Some(scope) => {
                let scope = if scope.is_empty() {
                    String::new()
                } else {
                    format!("{scope}.")
                };
                let bmp = if self.base_model_prefix.is_empty() {
                    String::new()
                } else {
                    format!("{}.", self.base_model_prefix)
                };
                let long = format!("{bmp}{scope}");
                if key.starts_with(&long) {
                    key.split_at(long.len())
                } else if key.starts_with(&scope) {
                    key.split_at(scope.len())
                } else {
                    return None;
                }
            }
        };
        let caps = self.re.captures(rest).ok()??;
        let whole = caps.get(0)?.as_str();
        // The first branch `(?P<gN>…)` that matched, and the group right inside it.
        let names: Vec<Option<&str>> = self.re.capture_names().collect();
        let index = names
            .iter()
            .enumerate()
            .find(|(i, n)| n.is_some_and(|n| n.starts_with('g')) && caps.get(*i).is_some())
            .map(|(i, _)| i)?;
        let mut replacement = self.targets.first()?.clone();
        if replacement.contains(r"\1") {
            let inner = caps.get(index + 1).map(|m| m.as_str()).unwrap_or("");
            replacement = replacement.replacen(r"\1", inner, 1);
        }
        // Python's `str.replace(match, replacement, 1)`: the first occurrence of the text.
        Some(format!("{prefix}{}", rest.replacen(whole, &replacement, 1)))
    }
}

/// What a runtime name is on disk.
#[derive(Debug, Clone, PartialEq)]
pub enum DiskName {
    /// The one on-disk tensor transformers loads under this name.
    Tensor(String),
    /// No single tensor: why (a converter splits or fuses it, or two tensors load as one name).
    Refused(String),
}

/// A base's runtime names (those that differ from the on-disk ones).
#[derive(Debug, Default)]
pub struct RuntimeNames {
    map: BTreeMap<String, DiskName>,
}

impl RuntimeNames {
    /// The renamings transformers applies to `base` at load (its config.json `architectures[0]`
    /// class, else its `model_type`), applied to every tensor name of the base. Empty when the
    /// base has no config or transformers renames nothing for it.
    pub fn of(base: &Checkpoint) -> RuntimeNames {
        let Some(config) = std::fs::read(base.folder().join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_slice::<Value>(&t).ok())
        else {
            return RuntimeNames::default();
        };
        let arch = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str);
        let model_type = config.get("model_type").and_then(Value::as_str);
        Self::for_names(arch, model_type, base.names())
    }

    /// [`RuntimeNames::of`] on a list of on-disk tensor names.
    pub fn for_names<'n>(
        arch: Option<&str>,
        model_type: Option<&str>,
        names: impl Iterator<Item = &'n str>,
    ) -> RuntimeNames {
        let t = table();
        // Each distinct list is stored once (`lists`); classes and keys name its index.
        let list = arch
            .and_then(|a| t["by_class"].get(a).or_else(|| t["by_key"].get(a)))
            .or_else(|| model_type.and_then(|m| t["by_key"].get(m)))
            .and_then(Value::as_u64)
            .and_then(|i| t["lists"].get(usize::try_from(i).ok()?))
            .and_then(Value::as_array);
        let Some(list) = list else {
            return RuntimeNames::default();
        };
        let transforms: Vec<Transform> = list.iter().filter_map(Transform::parse).collect();
        let (renamings, converters): (Vec<&Transform>, Vec<&Transform>) =
            transforms.iter().partition(|t| t.kind != "converter");
        let mut map: BTreeMap<String, DiskName> = BTreeMap::new();
        for disk in names {
            // `apply_renamings` (every one, in turn; the stateful ones are not applied), then
            // at most one converter.
            let mut key = disk.to_owned();
            for r in renamings.iter().filter(|r| r.kind == "rename") {
                if let Some(k) = r.rename(&key) {
                    key = k;
                }
            }
            let converted = converters.iter().find_map(|c| {
                let first = c.rename(&key)?;
                let mut produced = vec![first];
                // A converter's other targets (Chunk: gate and up of one fused tensor).
                for t in c.targets.iter().skip(1) {
                    let other = Transform {
                        kind: String::new(),
                        scope: c.scope.clone(),
                        base_model_prefix: c.base_model_prefix.clone(),
                        re: c.re.clone(),
                        targets: vec![t.clone()],
                        ops: Vec::new(),
                    };
                    produced.extend(other.rename(&key));
                }
                Some((produced, c.ops.join("+")))
            });
            match converted {
                Some((produced, ops)) => {
                    for p in produced {
                        let why = format!(
                            "transformers loads it from base tensor `{disk}` through its `{ops}` converter (conversion_mapping.py), which lorakit does not reverse"
                        );
                        map.insert(p, DiskName::Refused(why));
                    }
                }
                None if key != disk => {
                    let entry = map.entry(key.clone());
                    match entry {
                        std::collections::btree_map::Entry::Vacant(v) => {
                            v.insert(DiskName::Tensor(disk.to_owned()));
                        }
                        std::collections::btree_map::Entry::Occupied(mut o) => {
                            let why = format!(
                                "transformers loads more than one base tensor under this name (`{disk}`, …)"
                            );
                            o.insert(DiskName::Refused(why));
                        }
                    }
                }
                None => {}
            }
        }
        RuntimeNames { map }
    }

    /// The on-disk tensor transformers loads as `runtime` (a full tensor name), if renamed.
    pub fn disk(&self, runtime: &str) -> Option<&DiskName> {
        self.map.get(runtime)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Renames the modules and full tensors of `adapter` whose `{name}.weight` (full tensor: name)
/// the base lacks, but which transformers loads from one base tensor under that name, to that
/// tensor's on-disk name: PEFT saved the adapter on the model transformers built, so it applies
/// these modules there. A name a converter produces is refused, naming the converter.
pub fn to_disk_names(adapter: &mut Adapter, base: &Checkpoint) -> InputResult<()> {
    let absent = |n: &str| !base.contains(n);
    let todo = adapter
        .modules
        .iter()
        .any(|m| absent(&format!("{}.weight", m.name)))
        || adapter.full_tensors.iter().any(|f| absent(&f.name));
    if !todo {
        return Ok(());
    }
    let runtime = RuntimeNames::of(base);
    if runtime.is_empty() {
        return Ok(());
    }
    let path = adapter.path.clone();
    let disk = |name: &str| -> InputResult<Option<String>> {
        match runtime.disk(name) {
            _ if !absent(name) => Ok(None),
            Some(DiskName::Tensor(d)) => Ok(Some(d.clone())),
            Some(DiskName::Refused(why)) => Err(InputError::invalid(
                &path,
                format!("`{name}` (the name transformers gives it at load): {why}"),
            )),
            None => Ok(None),
        }
    };
    for m in &mut adapter.modules {
        if let Some(d) = disk(&format!("{}.weight", m.name))? {
            if let Some(stem) = d.strip_suffix(".weight") {
                m.name = stem.to_owned();
            }
        }
    }
    for f in &mut adapter.full_tensors {
        if let Some(d) = disk(&f.name)? {
            f.name = d;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(arch: &str, model_type: &str, names: &[&str], runtime: &str) -> Option<DiskName> {
        RuntimeNames::for_names(Some(arch), Some(model_type), names.iter().copied())
            .disk(runtime)
            .cloned()
    }

    #[test]
    fn llava_text_layers_load_under_model_language_model() {
        let d = disk(
            "LlavaForConditionalGeneration",
            "llava",
            &["language_model.model.layers.0.self_attn.q_proj.weight"],
            "model.language_model.layers.0.self_attn.q_proj.weight",
        );
        assert_eq!(
            d,
            Some(DiskName::Tensor(
                "language_model.model.layers.0.self_attn.q_proj.weight".into()
            ))
        );
    }
}
