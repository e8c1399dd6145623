//! What `from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True))` does
//! to each base weight a QLoRA merge (`MergeOptions::as_trained_on`) touches, as transformers
//! 5.24 does it: whether bitsandbytes quantizes it, and the dtype it is loaded in first.
//!
//! - Quantized: only layers `integrations/bitsandbytes.py` `replace_with_bnb_linear` replaces
//!   (`nn.Linear` and `Conv1D`, never an `Embedding` or a convolution) whose module name
//!   `quantizers/quantizers_utils.py` `should_convert_module` does not match against
//!   `modules_to_not_convert` (quantizers/base.py `get_modules_to_not_convert`): the
//!   user's `llm_int8_skip_modules` if given, else `get_keys_to_not_convert` (tied keys, the last
//!   module, the output embedding); plus the model class's `_keep_in_fp32_modules` (a table
//!   generated from transformers' source, `bnb_keep_fp32.json`, by
//!   fixtures/gen/bnb_keep_fp32_table.py).
//! - Loaded in: the `dtype` of `from_pretrained` (`dtype="auto"`, transformers 5's default,
//!   is config.json's `dtype`/`torch_dtype`, else the checkpoint's), except f32 for
//!   `_keep_in_fp32_modules` under f16 and for `_keep_in_fp32_modules_strict` under f16/bf16
//!   (modeling_utils.py `_get_dtype_plan`, matched as `core_model_loading.py` matches it).
//!
//! The base's on-disk names stand for transformers' module names (they agree but for the
//! renamings of `conversion_mapping.py`); the last module is taken to be a top-level 2-D weight
//! (`lm_head`, `score`, `classifier`: a task head, registered after the base model), since a
//! checkpoint does not keep the registration order. A layer that subclasses `nn.Linear` (which
//! `replace_with_bnb_linear` leaves alone: `type(module) is nn.Linear`) is not known here.
//! Must not: read tensor data, compute, or decide anything about a merge but these two answers.

use crate::adapter::ModuleKind;
use crate::dtype::Dtype;
use crate::error::{InputError, InputResult, Opt};
use crate::io::Checkpoint;
use fancy_regex::Regex;
use serde_json::Value;

/// transformers 5.24's `_keep_in_fp32_modules` / `_keep_in_fp32_modules_strict` per class and per
/// `model_type` (fixtures/gen/bnb_keep_fp32_table.py).
const TABLE: &str = include_str!("bnb_keep_fp32.json");

/// One `modules_to_not_convert` entry: the pattern, transformers' match of it, and why it is there.
#[derive(Debug)]
struct Skip {
    /// The key as `full_name.endswith(key)` compares it.
    pattern: String,
    /// `re.match(rf"(?:{key}){boundary}", name)`.
    re: Regex,
    why: String,
}

/// Which weights transformers' bitsandbytes quantizer converts, and in which dtype it loads each.
#[derive(Debug)]
pub(crate) struct QloraScope {
    skips: Vec<Skip>,
    /// `_keep_in_fp32_modules` globs (f32 under an f16 load) and `_keep_in_fp32_modules_strict`
    /// ones (f32 under f16 or bf16), with their source.
    keep: Vec<String>,
    strict: Vec<String>,
    /// `from_pretrained`'s dtype: the option, else config.json's; `None`: each tensor's own.
    dtype: Option<Dtype>,
}

impl QloraScope {
    /// The scope of `base` loaded with `skip` as `llm_int8_skip_modules` and `dtype` (`None`:
    /// transformers' `dtype="auto"`); `defaults`: the module names `get_keys_to_not_convert`
    /// gives it (the output embedding, tied keys, the last module), with why, used when `skip`
    /// is not given.
    pub fn new(
        base: &Checkpoint,
        skip: Option<&[String]>,
        dtype: Option<Dtype>,
        defaults: Vec<(String, &'static str)>,
    ) -> InputResult<Self> {
        let config: Option<Value> = crate::io::read_json_file(&base.folder().join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok());
        let mut skips = Vec::new();
        let mut add = |pattern: &str, literal: bool, why: String| -> InputResult<()> {
            let src = if literal {
                regex_escape(pattern)
            } else {
                pattern.to_owned()
            };
            let re = Regex::new(&format!(r"^(?:{src})(?:(?<=\.)|(?=\.|$))")).map_err(|e| {
                let (p, e) = (pattern.to_owned(), e.to_string());
                InputError::option(&base.root, move |o| {
                    format!(
                        "{} skip pattern `{p}` is not a regular expression: {e}",
                        o.opt(Opt::AsTrainedOn)
                    )
                })
            })?;
            skips.push(Skip {
                pattern: pattern.to_owned(),
                re,
                why,
            });
            Ok(())
        };
        match skip {
            Some(list) => {
                for p in list {
                    add(
                        p,
                        false,
                        format!("in the skip list (llm_int8_skip_modules) as `{p}`"),
                    )?;
                }
            }
            None => {
                for (m, why) in defaults {
                    add(
                        &m,
                        true,
                        format!("{why} (transformers' get_keys_to_not_convert)"),
                    )?;
                }
            }
        }
        let (keep, strict, source) = keep_lists(config.as_ref());
        for k in &keep {
            add(k, false, format!("{source}'s _keep_in_fp32_modules `{k}`"))?;
        }
        let dtype = dtype.or_else(|| {
            let d = config.as_ref()?;
            let d = d.get("dtype").or_else(|| d.get("torch_dtype"))?;
            match d.as_str()? {
                "float32" => Some(Dtype::F32),
                "float16" => Some(Dtype::F16),
                "bfloat16" => Some(Dtype::BF16),
                _ => None,
            }
        });
        Ok(QloraScope {
            skips,
            keep,
            strict,
            dtype,
        })
    }

    /// Why transformers leaves base weight `name` (a layer of `kind`) float, or `None` when
    /// bitsandbytes quantizes it.
    pub fn not_quantized(&self, name: &str, kind: &ModuleKind, dims: usize) -> Option<String> {
        match kind {
            ModuleKind::Embedding => {
                return Some(
                    "an Embedding (bitsandbytes replaces nn.Linear and Conv1D only)".into(),
                )
            }
            ModuleKind::Conv { .. } => {
                return Some(
                    "a convolution (bitsandbytes replaces nn.Linear and Conv1D only)".into(),
                )
            }
            ModuleKind::Linear if dims != 2 => {
                return Some(format!(
                    "a {dims}-D weight (bitsandbytes quantizes 2-D Linear weights only)"
                ))
            }
            ModuleKind::Linear => {}
        }
        let module = name.strip_suffix(".weight").unwrap_or(name);
        // quantizers_utils.py `should_convert_module`: from the start up to a module boundary,
        // or as a suffix.
        self.skips
            .iter()
            .find(|s| s.re.is_match(module).unwrap_or(false) || module.ends_with(&s.pattern))
            .map(|s| s.why.clone())
    }

    /// The dtype transformers loads base weight `name` (stored as `stored`) in.
    pub fn load_dtype(&self, name: &str, stored: Dtype) -> Dtype {
        let d = self.dtype.unwrap_or(stored);
        // core_model_loading.py: the dtype plan's globs (`*` → `.*`) searched in the key.
        let hit = |globs: &[String]| {
            globs.iter().any(|g| {
                Regex::new(&g.replace('*', ".*"))
                    .ok()
                    .and_then(|r| r.is_match(name).ok())
                    .unwrap_or(false)
            })
        };
        match d {
            Dtype::F16 if hit(&self.keep) || hit(&self.strict) => Dtype::F32,
            Dtype::BF16 if hit(&self.strict) => Dtype::F32,
            d => d,
        }
    }
}

/// `re.escape` of a module name used as a pattern (transformers' own keys are regexes; a name
/// from the base is literal).
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = !(c.is_ascii_alphanumeric() || c == '_');
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// The keep lists of the config's architectures and of every `model_type` in it (nested
/// sub-configs included, as `post_init` gathers the children's), and the first that gives a
/// `_keep_in_fp32_modules` (named in the report).
fn keep_lists(config: Option<&Value>) -> (Vec<String>, Vec<String>, String) {
    let table: Value = serde_json::from_str(TABLE).expect("bnb_keep_fp32.json is valid JSON");
    let mut keys: Vec<(&str, String)> = Vec::new();
    if let Some(c) = config {
        for a in c
            .get("architectures")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            keys.push(("classes", a.to_owned()));
        }
        let mut stack = vec![c];
        while let Some(v) = stack.pop() {
            if let Some(o) = v.as_object() {
                if let Some(t) = o.get("model_type").and_then(Value::as_str) {
                    keys.push(("model_types", t.to_owned()));
                }
                stack.extend(o.values().filter(|x| x.is_object()));
            }
        }
    }
    let (mut keep, mut strict, mut from) = (Vec::new(), Vec::new(), Vec::new());
    for (kind, k) in keys {
        let Some(e) = table.get(kind).and_then(|t| t.get(&k)) else {
            continue;
        };
        let list = |f: &str| -> Vec<String> {
            e.get(f)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        };
        let (k1, s1) = (list("keep"), list("strict"));
        if !k1.is_empty() && from.is_empty() {
            from.push(k);
        }
        keep.extend(k1);
        strict.extend(s1);
    }
    for v in [&mut keep, &mut strict] {
        v.sort();
        v.dedup();
    }
    (keep, strict, from.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t5_keeps_wo_and_the_table_is_transformers_5_24() {
        let t: Value = serde_json::from_str(TABLE).unwrap();
        assert_eq!(t["transformers"], "5.24.0");
        let c = serde_json::json!({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"});
        let (keep, strict, from) = keep_lists(Some(&c));
        assert_eq!((keep, strict), (vec!["wo".to_string()], vec![]));
        assert_eq!(from, "T5ForConditionalGeneration");
    }

    #[test]
    fn escaped_names_match_only_themselves() {
        assert_eq!(regex_escape("model.lm_head"), r"model\.lm_head");
    }
}
