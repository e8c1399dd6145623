//! `config.json` of a Llama-family causal LM: LlamaForCausalLM, MistralForCausalLM and
//! Qwen2ForCausalLM (same block; Qwen2 has q/k/v biases, Mistral and Qwen2 sliding windows).
//!
//! Both spellings of the rotary settings are read: transformers ≥ 5 writes
//! `"rope_parameters": {"rope_theta": …, "rope_type": …, …}`, older files a top-level `rope_theta`
//! and an optional `rope_scaling` object. Rope types `default`, `linear` and `llama3` are
//! supported; others (`dynamic`, `yarn`, `longrope`, …) are refused with a clear error.
//!
//! Must not guess a setting the file does not give: unsupported rope types are refused.

use crate::error::{InputError, InputResult};
use serde_json::Value;
use std::path::Path;

/// How rotary frequencies are derived (`rope_type`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// `inv_freq[i] = θ^(−2i/d)`.
    Default,
    /// Positions divided by `factor` (`inv_freq / factor`).
    Linear { factor: f64 },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The architecture facts lorakit's forward needs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    /// `lm_head` shares `embed_tokens` (also assumed when the checkpoint has no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// Per layer: attend only to the last `w` positions (`i − j < w`), or everything before.
    pub sliding_windows: Vec<Option<usize>>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl ModelConfig {
    /// A warning when `what` (a length of `positions` positions) goes past the
    /// `max_position_embeddings` the model was trained for: its rotary positions extrapolate
    /// there, so a perplexity, a generation or a training step that uses them says little
    /// about the model (`None` within it).
    pub fn past_context(&self, positions: usize, what: &str) -> Option<String> {
        let max = self.max_position_embeddings;
        (positions > max).then(|| {
            format!(
                "{what} of {positions} is past the model's max_position_embeddings ({max}): positions past {max} are extrapolated"
            )
        })
    }

    /// Reads `config.json` from a model folder.
    pub fn from_folder(dir: &Path) -> InputResult<ModelConfig> {
        let path = dir.join("config.json");
        let text = crate::io::read_json_file(&path)?;
        Self::parse(&path, &text)
    }

    /// [`Self::from_folder`] for checkpoint `ck`, then [`Self::check_tensors`] against it.
    pub fn for_checkpoint(ck: &crate::io::Checkpoint) -> InputResult<ModelConfig> {
        let c = Self::from_folder(ck.folder())?;
        c.check_tensors(&ck.folder().join("config.json"), ck)?;
        Ok(c)
    }

    /// Parses `config.json` text; errors name the key.
    pub fn parse(path: &Path, text: &[u8]) -> InputResult<ModelConfig> {
        let bad = |msg: String| InputError::invalid(path, msg);
        let v: Value = serde_json::from_slice(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let model_type = obj
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("llama")
            .to_owned();
        if !matches!(model_type.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(bad(format!(
                "model_type `{model_type}` is not supported (llama, mistral, qwen2)"
            )));
        }
        let uint = |k: &str| -> InputResult<usize> {
            obj.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| {
                    bad(format!(
                        "key `{k}` is missing or not a non-negative integer"
                    ))
                })
        };
        // Sizes are bounded before anything is sized by them (a hostile `num_hidden_layers` of
        // 1e18 must be an error, not an allocation); `check_tensors` then holds them to the
        // tensors actually present.
        let uint = |k: &str| -> InputResult<usize> {
            let v = uint(k)?;
            let limit = match k {
                "num_hidden_layers" | "num_attention_heads" | "num_key_value_heads" => 1 << 12,
                "vocab_size" => 1 << 24,
                _ => 1 << 22,
            };
            if v > limit {
                return Err(bad(format!(
                    "`{k}` is {v}, beyond any model lorakit can load (at most {limit})"
                )));
            }
            Ok(v)
        };
        // A float setting given in the file must be a finite number above zero (`rms_norm_eps`
        // may be zero: RMSNorm is then plain `x / rms(x)`); a negative epsilon or rope base
        // would turn every loss into NaN rather than fail.
        let positive = |k: &str, v: &Value, zero_ok: bool| -> InputResult<f64> {
            match v.as_f64() {
                Some(x) if x.is_finite() && (x > 0.0 || (zero_ok && x == 0.0)) => Ok(x),
                _ => Err(bad(format!(
                    "`{k}` is {v}, not a finite number {}",
                    if zero_ok { "≥ 0" } else { "> 0" }
                ))),
            }
        };
        let opt_uint = |k: &str| -> Option<usize> {
            obj.get(k)
                .and_then(Value::as_u64)
                .map(|x| usize::try_from(x).unwrap_or(usize::MAX))
        };
        let hidden_size = uint("hidden_size")?;
        let num_attention_heads = uint("num_attention_heads")?;
        let num_key_value_heads = opt_uint("num_key_value_heads").unwrap_or(num_attention_heads);
        let head_dim = opt_uint("head_dim").unwrap_or(hidden_size / num_attention_heads.max(1));
        if head_dim > 1 << 16 {
            return Err(bad(format!(
                "`head_dim` {head_dim} is beyond any model lorakit can load"
            )));
        }
        let num_hidden_layers = uint("num_hidden_layers")?;
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || num_attention_heads % num_key_value_heads != 0
        {
            return Err(bad(format!(
                "num_attention_heads {num_attention_heads} is not a positive multiple of num_key_value_heads {num_key_value_heads}"
            )));
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad(format!(
                "head_dim {head_dim} must be even and positive"
            )));
        }
        let act = obj
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(bad(format!(
                "hidden_act `{act}` is not supported (silu only)"
            )));
        }
        // Rotary settings as transformers 5 reads them (`modeling_rope_utils.py`
        // `convert_rope_params_to_dict`): `rope_parameters = rope_scaling or rope_parameters`
        // (a non-empty `rope_scaling` wins), `rope_theta` from that dict, else the top level,
        // else 10000; `rope_type`, else the older `type`, else `default`. A value of another
        // JSON type is refused: transformers fails on it, and reading past it would be a guess.
        let truthy = |v: &Value| match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(t) => !t.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        };
        let (rope_key, rope_val) = match obj.get("rope_scaling").filter(|v| truthy(v)) {
            Some(v) => ("rope_scaling", Some(v)),
            None => (
                "rope_parameters",
                obj.get("rope_parameters").filter(|v| !v.is_null()),
            ),
        };
        let rope_obj = match rope_val {
            None => None,
            Some(Value::Object(o)) => Some(o),
            Some(other) => {
                return Err(bad(format!(
                    "`{rope_key}` is {other}, not an object of rope settings"
                )))
            }
        };
        let rope_theta = rope_obj
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| obj.get("rope_theta"))
            .map_or(Ok(10000.0), |v| positive("rope_theta", v, false))?;
        let rope_type = match rope_obj.and_then(|r| r.get("rope_type").or_else(|| r.get("type"))) {
            None => "default",
            Some(Value::String(t)) => t.as_str(),
            Some(other) => {
                return Err(bad(format!(
                    "`{rope_key}.rope_type` is {other}, not a rope type name"
                )))
            }
        };
        let rget = |k: &str| -> InputResult<f64> {
            match rope_obj.and_then(|r| r.get(k)) {
                None => Err(bad(format!("rope `{rope_type}` needs `{rope_key}.{k}`"))),
                Some(v) => positive(&format!("{rope_key}.{k}"), v, false),
            }
        };
        let rope_scaling = match rope_type {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: rget("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: rget("factor")?,
                low_freq_factor: rget("low_freq_factor")?,
                high_freq_factor: rget("high_freq_factor")?,
                original_max_position_embeddings: rget("original_max_position_embeddings")?,
            },
            other => {
                return Err(bad(format!(
                    "rope_type `{other}` is not supported (default, linear, llama3)"
                )))
            }
        };
        // Sliding windows: explicit `layer_types`, else the model type's rule.
        let window = opt_uint("sliding_window");
        let mut sliding_windows = vec![None; num_hidden_layers];
        if let Some(types) = obj.get("layer_types").and_then(Value::as_array) {
            if types.len() != num_hidden_layers {
                return Err(bad(format!(
                    "layer_types has {} entries for {num_hidden_layers} layers",
                    types.len()
                )));
            }
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    Some("full_attention") => {}
                    Some("sliding_attention") => {
                        sliding_windows[i] = Some(window.ok_or_else(|| {
                            bad(
                                "layer_types has sliding_attention but sliding_window is not set"
                                    .into(),
                            )
                        })?)
                    }
                    other => {
                        return Err(bad(format!("layer_types[{i}] {other:?} is not supported")))
                    }
                }
            }
        } else {
            match model_type.as_str() {
                "mistral" => sliding_windows = vec![window; num_hidden_layers],
                "qwen2" => {
                    let on = obj
                        .get("use_sliding_window")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    let from = opt_uint("max_window_layers").unwrap_or(num_hidden_layers);
                    if on {
                        for (i, w) in sliding_windows.iter_mut().enumerate() {
                            if i >= from {
                                *w = window;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let token_id = |k: &str| -> Option<u32> {
            match obj.get(k) {
                Some(Value::Number(n)) => n.as_u64().map(|x| x as u32),
                Some(Value::Array(a)) => a.first().and_then(Value::as_u64).map(|x| x as u32),
                _ => None,
            }
        };
        let config = ModelConfig {
            model_type,
            hidden_size,
            intermediate_size: uint("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: uint("vocab_size")?,
            rms_norm_eps: obj
                .get("rms_norm_eps")
                .map_or(Ok(1e-6), |v| positive("rms_norm_eps", v, true))?,
            rope_theta,
            rope_scaling,
            max_position_embeddings: opt_uint("max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: obj
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            sliding_windows,
            bos_token_id: token_id("bos_token_id"),
            eos_token_id: token_id("eos_token_id"),
        };
        // Settings each finite and positive can still overflow (a `rope_theta` of 1e-300 to the
        // power −2i/d): every rotary frequency must be a finite positive f32, or every logit
        // would be NaN.
        if let Some(f) = config
            .inv_freq()
            .into_iter()
            .find(|&f| !(f > 0.0 && crate::dtype::finite_in_f32(f)))
        {
            return Err(bad(format!(
                "rope_theta {:e} with rope `{}` gives a rotary frequency of {f:e}, not a finite positive number",
                config.rope_theta, rope_type
            )));
        }
        Ok(config)
    }

    /// Holds the config to the checkpoint's tensors before a model is built from it: the
    /// embedding is `[vocab_size, hidden_size]`, layer `num_hidden_layers − 1` exists and
    /// `num_hidden_layers` does not, and layer 0's projections have the shapes the head counts
    /// and `intermediate_size` give. One line naming the key and the tensor otherwise.
    pub fn check_tensors(&self, config_path: &Path, ck: &crate::io::Checkpoint) -> InputResult<()> {
        let bad = |msg: String| InputError::invalid(config_path, msg);
        let shape = |name: &str| ck.info(name).map(|i| i.shape.clone());
        let want = |name: &str, expect: Vec<usize>, keys: &str| -> InputResult<()> {
            match shape(name) {
                Some(s) if s == expect => Ok(()),
                Some(s) => Err(bad(format!(
                    "{keys} give tensor `{name}` shape {expect:?}, the checkpoint has {s:?}"
                ))),
                None => Err(bad(format!(
                    "the checkpoint has no tensor `{name}` ({keys})"
                ))),
            }
        };
        let h = self.hidden_size;
        want(
            "model.embed_tokens.weight",
            vec![self.vocab_size, h],
            "vocab_size and hidden_size",
        )?;
        let has_layer = |l: usize| {
            let p = format!("model.layers.{l}.");
            ck.names().any(|n| n.starts_with(&p))
        };
        if self.num_hidden_layers == 0
            || !has_layer(self.num_hidden_layers - 1)
            || has_layer(self.num_hidden_layers)
        {
            let present = (0..).take_while(|&l| has_layer(l)).count();
            return Err(bad(format!(
                "`num_hidden_layers` is {}, the checkpoint has {present} layers",
                self.num_hidden_layers
            )));
        }
        let p = "model.layers.0";
        want(
            &format!("{p}.self_attn.q_proj.weight"),
            vec![self.num_attention_heads * self.head_dim, h],
            "num_attention_heads and head_dim",
        )?;
        want(
            &format!("{p}.self_attn.k_proj.weight"),
            vec![self.num_key_value_heads * self.head_dim, h],
            "num_key_value_heads and head_dim",
        )?;
        want(
            &format!("{p}.mlp.gate_proj.weight"),
            vec![self.intermediate_size, h],
            "intermediate_size",
        )
    }

    /// Inverse rotary frequencies (`head_dim / 2` of them) in f64, as transformers'
    /// `ROPE_INIT_FUNCTIONS` compute them.
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d as f64))
            .collect();
        match &self.rope_scaling {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        }
    }

    /// Number of query heads sharing one key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_rope_spellings() {
        let p = Path::new("config.json");
        let v5 = br#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":128,
            "rope_parameters":{"rope_theta":500000.0,"rope_type":"default"}}"#;
        let c = ModelConfig::parse(p, v5).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_scaling, RopeScaling::Default);
        let v4 = br#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"vocab_size":128,"rope_theta":1000.0,
            "rope_scaling":{"type":"linear","factor":4.0}}"#;
        let c = ModelConfig::parse(p, v4).unwrap();
        assert_eq!(c.rope_theta, 1000.0);
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 4.0 });
        let yarn = br#"{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"vocab_size":128,"rope_parameters":{"rope_type":"yarn","factor":4.0}}"#;
        let e = ModelConfig::parse(p, yarn).unwrap_err().to_string();
        assert!(e.contains("yarn"), "{e}");
        let gelu = br#"{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"vocab_size":128,"hidden_act":"gelu"}"#;
        assert!(ModelConfig::parse(p, gelu).is_err());
    }

    #[test]
    fn sliding_window_rules() {
        let p = Path::new("config.json");
        let m = br#"{"model_type":"mistral","hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"vocab_size":128,"sliding_window":4}"#;
        assert_eq!(
            ModelConfig::parse(p, m).unwrap().sliding_windows,
            vec![Some(4), Some(4)]
        );
        let q = br#"{"model_type":"qwen2","hidden_size":32,"intermediate_size":64,"num_hidden_layers":3,
            "num_attention_heads":4,"vocab_size":128,"sliding_window":4,"use_sliding_window":true,
            "max_window_layers":1}"#;
        assert_eq!(
            ModelConfig::parse(p, q).unwrap().sliding_windows,
            vec![None, Some(4), Some(4)]
        );
        let lt = br#"{"model_type":"qwen2","hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"vocab_size":128,"sliding_window":4,
            "layer_types":["sliding_attention","full_attention"]}"#;
        assert_eq!(
            ModelConfig::parse(p, lt).unwrap().sliding_windows,
            vec![Some(4), None]
        );
    }
}
