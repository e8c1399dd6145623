//! What a compressed-tensors `quantization_config` says about one weight, to check against the
//! tensors lorakit reads the layout from. The scan infers bits, groups and symmetry from the
//! stored shapes; a config that contradicts them (another width, strategy or group size) is a
//! file that compressed-tensors itself would load differently or not at all, so it is refused
//! naming config.json, never silently read one way.
//!
//! Matching follows compressed-tensors `src/compressed_tensors/utils/match.py` (commit
//! 72a6c65276cae2cf8e7867c95cb47f2d1d19ad55): `ignore` first; a target `re:P` matches a module
//! name when Python's `re.match(P, name)` does (anchored at the start only), any other target
//! when it equals the name (`_match_name`) or names a class of the module (`_match_class`).
//! lorakit has no module classes: a target that starts with an upper-case letter (`Linear`) is
//! taken as a class every quantized Linear has. The weight arguments are
//! `quantization/quant_args.py` `QuantizationArgs` (`num_bits`, `strategy`, `group_size`,
//! `symmetric`, `block_structure`, `type`).
//!
//! Must not decide the layout: it only reports what the config claims; `scan` compares.

use serde_json::Value;

/// The `weights` arguments of the one config group whose targets select a module.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightArgs {
    /// The config group's key (`group_0`), for messages.
    pub group: String,
    pub num_bits: Option<u64>,
    pub strategy: Option<String>,
    pub group_size: Option<i64>,
    pub symmetric: Option<bool>,
    pub block: Option<(usize, usize)>,
    /// `type`: `int` or `float` (`QuantizationType`; any other value fails its validator).
    pub kind: Option<String>,
    /// `scale_dtype` (`torch.uint8` for the E8M0 scales of the MX schemes), where given.
    pub scale_dtype: Option<String>,
}

/// The weight arguments `config` (a `quantization_config`) gives module `module` (its weight's
/// name without `.weight`): `Ok(None)` when the config is not compressed-tensors', has no
/// `config_groups`, ignores the module, or when no group or more than one selects it (nothing
/// to compare). `Err` is a malformed config, the message without the file name.
pub fn weight_args(config: Option<&Value>, module: &str) -> Result<Option<WeightArgs>, String> {
    let Some(c) = config else { return Ok(None) };
    if c.get("quant_method").and_then(Value::as_str) != Some("compressed-tensors") {
        return Ok(None);
    }
    if let Some(ignore) = c.get("ignore") {
        let list = ignore
            .as_array()
            .ok_or("quantization_config.ignore is not a list")?;
        for t in list {
            let t = t
                .as_str()
                .ok_or("quantization_config.ignore holds a non-string")?;
            // Ignored, or a pattern lorakit cannot evaluate: nothing to compare.
            if matches(t, module)? != Some(false) {
                return Ok(None);
            }
        }
    }
    let Some(groups) = c.get("config_groups") else {
        return Ok(None);
    };
    let groups = groups
        .as_object()
        .ok_or("quantization_config.config_groups is not an object")?;
    let mut found = Vec::new();
    for (key, g) in groups {
        let targets = g
            .get("targets")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("config_groups `{key}`: `targets` is not a list"))?;
        let mut hit = false;
        for t in targets {
            let t = t
                .as_str()
                .ok_or_else(|| format!("config_groups `{key}`: a target is not a string"))?;
            match matches(t, module).map_err(|e| format!("config_groups `{key}`: {e}"))? {
                Some(m) => hit |= m,
                // A pattern lorakit cannot evaluate: which group holds the module is unknown.
                None => return Ok(None),
            }
        }
        if hit {
            found.push((key, g));
        }
    }
    let [(key, g)] = found.as_slice() else {
        return Ok(None);
    };
    let Some(w) = g.get("weights").filter(|w| !w.is_null()) else {
        return Ok(None);
    };
    let bad = |field: &str, what: &str| format!("config_groups `{key}`: weights.{field} {what}");
    let num_bits = match w.get("num_bits") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|b| (1..=8).contains(b))
                .ok_or_else(|| bad("num_bits", &format!("{v} is not a width of 1 to 8 bits")))?,
        ),
    };
    let strategy = match w.get("strategy") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            // compressed-tensors lowercases it (`quant_args.py` `validate_strategy`).
            v.as_str()
                .ok_or_else(|| bad("strategy", "is not a string"))?
                .to_ascii_lowercase(),
        ),
    };
    let group_size = match w.get("group_size") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| bad("group_size", &format!("{v} is not an integer")))?,
        ),
    };
    if strategy.as_deref() == Some("group") && group_size.is_none_or(|g| g <= 0) {
        return Err(bad(
            "group_size",
            "must be a positive size for strategy `group`",
        ));
    }
    let symmetric = match w.get("symmetric") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_bool()
                .ok_or_else(|| bad("symmetric", "is not a boolean"))?,
        ),
    };
    let block = match w.get("block_structure") {
        None | Some(Value::Null) => None,
        // A list `[m, n]`, or the string `"MxN"` compressed-tensors still accepts
        // (`validate_block_structure`).
        Some(v) => match block_sizes(v) {
            Some((m, n)) if m > 0 && n > 0 => Some((m as usize, n as usize)),
            _ => return Err(bad("block_structure", "is not two positive sizes")),
        },
    };
    let kind = match w.get("type") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            // compressed-tensors lowercases it (`quant_args.py` `validate_type`).
            v.as_str()
                .map(str::to_ascii_lowercase)
                .filter(|t| matches!(t.as_str(), "int" | "float"))
                .ok_or_else(|| bad("type", &format!("{v} is neither \"int\" nor \"float\"")))?,
        ),
    };
    let scale_dtype = match w.get("scale_dtype") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| bad("scale_dtype", "is not a string"))?
                .to_owned(),
        ),
    };
    Ok(Some(WeightArgs {
        group: (*key).clone(),
        num_bits,
        strategy,
        group_size,
        symmetric,
        block,
        kind,
        scale_dtype,
    }))
}

/// `block_structure`'s two sizes: `[m, n]` of integers, or `"MxN"` as compressed-tensors 0.20
/// still reads it (`value.split("x")`, each part `int()`).
fn block_sizes(v: &Value) -> Option<(u64, u64)> {
    match v {
        Value::Array(a) => match a.as_slice() {
            [m, n] => Some((m.as_u64()?, n.as_u64()?)),
            _ => None,
        },
        Value::String(s) => {
            let (m, n) = s.split_once('x')?;
            Some((m.trim().parse().ok()?, n.trim().parse().ok()?))
        }
        _ => None,
    }
}

impl WeightArgs {
    /// How the config contradicts a packed integer weight as stored (`scale` its scale tensor),
    /// or `None` when it does not.
    pub fn contradicts_packed(
        &self,
        p: &super::packed::Params,
        packed: &str,
        scale: &str,
        scale_shape: &[usize],
    ) -> Option<String> {
        if let Some(b) = self.num_bits.filter(|&b| b != u64::from(p.bits)) {
            return Some(format!(
                "{b}-bit weights, the stored `{packed}` holds {}-bit ones",
                p.bits
            ));
        }
        if self.kind.as_deref() == Some("float") {
            return Some(format!(
                "float weights, the stored `{packed}` holds integer ones"
            ));
        }
        let rows = p.rows;
        let says = match (self.strategy.as_deref(), self.group_size) {
            (Some("tensor"), _) if !p.per_tensor => Some("one scale per tensor".to_string()),
            (Some("channel"), _) if p.per_tensor || p.groups != 1 => {
                Some(format!("one scale per row ([{rows}, 1])"))
            }
            (Some("group"), Some(g)) => {
                let n = p.cols.div_ceil(g as usize);
                (p.per_tensor || p.groups != n)
                    .then(|| format!("groups of {g} ([{rows}, {n}] scales)"))
            }
            // A grid of `m`x`n` blocks: the stored per-row groups are that grid only for `1`x`g`.
            (Some("block"), _) => match self.block {
                Some((m, n))
                    if !p.per_tensor
                        && rows.div_ceil(m) == rows
                        && p.cols.div_ceil(n) == p.groups =>
                {
                    None
                }
                Some((m, n)) => Some(format!("{m}x{n} blocks")),
                None => Some("blocks of no block_structure".to_string()),
            },
            _ => None,
        };
        if let Some(says) = says {
            return Some(format!("{says}, the stored `{scale}` is {scale_shape:?}"));
        }
        self.symmetric.filter(|&s| s != p.symmetric).map(|s| {
            let module = packed
                .strip_suffix(".weight_packed")
                .or_else(|| packed.strip_suffix(".weight"))
                .unwrap_or(packed);
            let zp = format!("{module}.weight_zero_point");
            let is = if p.symmetric { "missing" } else { "present" };
            format!("symmetric {s}, yet `{zp}` is {is}")
        })
    }

    /// How the config contradicts an FP8 weight of `rows` rows whose scale `scale` tiles it as
    /// `layout`, or `None`.
    pub fn contradicts_fp8(
        &self,
        rows: usize,
        cols: usize,
        layout: &super::fp8::Layout,
        scale: &str,
        scale_shape: &[usize],
        scale_dtype: crate::dtype::Dtype,
    ) -> Option<String> {
        // The stored weight is FP8 (float8_e4m3fn / e5m2): 8 bits, whatever else the config says.
        if let Some(b) = self.num_bits.filter(|&b| b != 8) {
            return Some(format!(
                "{b}-bit weights, the stored FP8 weight holds 8-bit ones"
            ));
        }
        if self.kind.as_deref() == Some("int") {
            return Some("integer weights, the stored FP8 weight holds float ones".to_string());
        }
        if self.symmetric == Some(false) {
            // compressed-tensors then loads a `weight_zero_point` the FP8 weight does not have.
            return Some(
                "asymmetric weights (a zero point), the stored FP8 weight has none".into(),
            );
        }
        // MXFP8's E8M0 scales are `torch.uint8` (compressed-tensors 0.20 `is_mx`); float
        // scales under that config, or E8M0 bytes under another scale dtype, are another scheme.
        let e8m0 = scale_dtype == crate::dtype::Dtype::U8;
        if let Some(d) = self.scale_dtype.as_deref() {
            if (d == "torch.uint8") != e8m0 {
                return Some(format!(
                    "scale_dtype `{d}`, the stored `{scale}` is {}",
                    crate::dtype::name(scale_dtype)
                ));
            }
        }
        let one = layout.grid_rows == 1 && layout.grid_cols == 1;
        let says = match self.strategy.as_deref() {
            Some("tensor") if !one => Some("one scale per tensor".to_string()),
            Some("channel") if layout.grid_rows != rows || layout.grid_cols != 1 => {
                Some(format!("one scale per row ([{rows}, 1])"))
            }
            // The grid the blocks make (`ceil`, as compressed-tensors sizes it): a weight smaller
            // than one block holds one scale.
            Some("block") => self
                .block
                .filter(|&(m, n)| {
                    m == 0
                        || n == 0
                        || (rows.div_ceil(m), cols.div_ceil(n))
                            != (layout.grid_rows, layout.grid_cols)
                })
                .map(|(m, n)| format!("{m}x{n} blocks")),
            // Groups along a row: `[rows, ceil(cols / group_size)]` scales.
            Some("group") => self
                .group_size
                .filter(|&g| {
                    g <= 0
                        || (rows, cols.div_ceil(g as usize)) != (layout.grid_rows, layout.grid_cols)
                })
                .map(|g| format!("groups of {g}")),
            _ => None,
        }?;
        Some(format!("{says}, the stored `{scale}` is {scale_shape:?}"))
    }

    /// The one-line error for a contradiction: config.json, the group and the module.
    pub fn refusal(
        &self,
        ck: &crate::io::Checkpoint,
        module: &str,
        contradiction: String,
    ) -> crate::error::InputError {
        crate::error::InputError::invalid(
            ck.folder().join("config.json"),
            format!(
                "config_groups `{}` gives `{module}` {contradiction}",
                self.group
            ),
        )
    }
}

/// `_match_name` or (for a capitalised target) `_match_class`, as described in the module doc.
/// `Ok(None)`: a `re:` pattern using what Python's `re` has and Rust's `regex` lacks
/// (look-around, back-references, conditionals), whose answer lorakit cannot compute; such a
/// config is valid for compressed-tensors, so it must not be refused. `Err`: a pattern that is
/// no regular expression in either.
fn matches(target: &str, module: &str) -> Result<Option<bool>, String> {
    if let Some(p) = target.strip_prefix("re:") {
        return match regex::Regex::new(&format!("^(?:{p})")) {
            Ok(re) => Ok(Some(re.is_match(module))),
            Err(_) if python_only(p) => Ok(None),
            Err(_) => Err(format!("target `{target}` is not a regular expression")),
        };
    }
    Ok(Some(
        target == module || target.starts_with(|c: char| c.is_ascii_uppercase()),
    ))
}

/// Whether `p` uses a construct of Python's `re` that Rust's `regex` refuses by design.
fn python_only(p: &str) -> bool {
    ["(?=", "(?!", "(?<=", "(?<!", "(?P=", "(?("]
        .iter()
        .any(|c| p.contains(c))
        || p.as_bytes()
            .windows(2)
            .any(|w| w[0] == b'\\' && w[1].is_ascii_digit() && w[1] != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(groups: Value) -> Value {
        json!({"quant_method": "compressed-tensors", "ignore": ["lm_head"], "config_groups": groups})
    }

    #[test]
    fn selects_the_group_by_regex_name_or_class_and_honours_ignore() {
        let c = cfg(json!({
            "a": {"targets": ["re:.*q_proj$"], "weights": {"num_bits": 4, "strategy": "group", "group_size": 32}},
            "b": {"targets": ["model.layers.0.mlp.up_proj"], "weights": {"num_bits": 8, "strategy": "channel"}},
        }));
        let q = weight_args(Some(&c), "model.layers.3.self_attn.q_proj")
            .unwrap()
            .unwrap();
        assert_eq!(
            (q.group.as_str(), q.num_bits, q.group_size),
            ("a", Some(4), Some(32))
        );
        let u = weight_args(Some(&c), "model.layers.0.mlp.up_proj")
            .unwrap()
            .unwrap();
        assert_eq!(u.strategy.as_deref(), Some("channel"));
        // `re.match` is anchored at the start only: `q_proj$` alone does not select a full name.
        let c2 = cfg(json!({"a": {"targets": ["re:q_proj$"], "weights": {"num_bits": 4}}}));
        assert_eq!(
            weight_args(Some(&c2), "model.layers.0.self_attn.q_proj").unwrap(),
            None
        );
        let all = cfg(json!({"a": {"targets": ["Linear"], "weights": {"num_bits": 4}}}));
        assert!(weight_args(Some(&all), "model.layers.0.mlp.down_proj")
            .unwrap()
            .is_some());
        assert_eq!(weight_args(Some(&all), "lm_head").unwrap(), None);
    }

    #[test]
    fn a_malformed_config_is_an_error() {
        for bad in [
            json!({"quant_method": "compressed-tensors", "config_groups": []}),
            cfg(json!({"a": {"targets": ["re:("], "weights": {"num_bits": 4}}})),
            cfg(json!({"a": {"targets": ["Linear"], "weights": {"num_bits": 0}}})),
            cfg(
                json!({"a": {"targets": ["Linear"], "weights": {"strategy": "group", "group_size": 0}}}),
            ),
            cfg(json!({"a": {"targets": "Linear", "weights": {}}})),
        ] {
            assert!(
                weight_args(Some(&bad), "model.layers.0.mlp.down_proj").is_err(),
                "{bad}"
            );
        }
        // Python-only regex (look-behind, back-reference) in `ignore` or `targets`: valid for
        // compressed-tensors, unknown to lorakit, so nothing to compare rather than an error.
        let mut py = cfg(json!({"a": {"targets": ["Linear"], "weights": {"num_bits": 4}}}));
        py["ignore"] = json!(["lm_head", "re:.*(?<!_proj)$"]);
        assert_eq!(
            weight_args(Some(&py), "model.layers.0.mlp.down_proj").unwrap(),
            None
        );
        let py2 = cfg(json!({"a": {"targets": [r"re:(\w+)\.\1"], "weights": {"num_bits": 4}}}));
        assert_eq!(
            weight_args(Some(&py2), "model.layers.0.mlp.down_proj").unwrap(),
            None
        );
        // Not compressed-tensors, or nothing said: nothing to check.
        let gptq = json!({"quant_method": "gptq", "config_groups": []});
        assert_eq!(weight_args(Some(&gptq), "x").unwrap(), None);
        assert_eq!(weight_args(None, "x").unwrap(), None);
    }
}
