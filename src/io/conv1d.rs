//! Which weights of a transformers checkpoint are `pytorch_utils.Conv1D` layers (stored
//! `[in, out]`, the transpose of `nn.Linear`'s `[out, in]`), from its config.json alone: the one
//! place that knowledge lives, read by the PEFT layout rule (`fan_in_fan_out`) and by the
//! bitsandbytes scan (transformers quantizes a Conv1D weight transposed).
//!
//! Must not read tensors or guess: without a config.json naming a model, nothing is Conv1D.

use serde_json::Value;

/// transformers 5.24's model families with `pytorch_utils.Conv1D` layers (stored `[in, out]`).
pub const MODELS: &[&str] = &[
    "gpt2",
    "openai-gpt",
    "decision_transformer",
    "imagegpt",
    "clvp",
    "clvp_encoder",
    "clvp_decoder",
];

/// The names transformers 5.24 gives its `Conv1D` layers in the [`MODELS`] families (`c_attn`,
/// `q_attn`, `c_proj`, `c_fc` of gpt2, openai-gpt, imagegpt, decision_transformer, clvp); their
/// other linear layers (`lm_head`, `score`, clvp's `q_proj`…) are `nn.Linear`.
pub const LAYERS: &[&str] = &["c_attn", "q_attn", "c_proj", "c_fc"];

/// What a parsed config.json says about `Conv1D` layers: (it names some model at any depth, one of
/// the names is a [`MODELS`] family: a composite's `decoder`/`text_config` too, ViT-GPT2,
/// bert2gpt2).
pub fn families(config: &Value) -> (bool, bool) {
    fn walk(v: &Value, found: &mut (bool, bool)) {
        match v {
            Value::Object(o) => {
                if let Some(t) = o.get("model_type").and_then(Value::as_str) {
                    found.0 = true;
                    found.1 |= MODELS.contains(&t);
                }
                o.values().for_each(|v| walk(v, found));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let mut found = (false, false);
    walk(config, &mut found);
    found
}

/// Whether module `module` (a dotted path, `….c_attn`) is named as one of the [`LAYERS`].
pub fn is_layer_name(module: &str) -> bool {
    LAYERS.contains(&module.rsplit('.').next().unwrap_or(module))
}

/// `v` (`rows × cols`, row-major) transposed.
pub fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for (r, row) in v.chunks_exact(cols.max(1)).enumerate().take(rows) {
        for (c, &x) in row.iter().enumerate() {
            out[c * rows + r] = x;
        }
    }
    out
}
