//! Module-name matching: which of a base's weight tensors an adapter module name refers to. The
//! one matcher behind `lorakit merge` ([`super::resolve_in`]), `eval` and `train`
//! (`model::Model::attach`, `Model::module_slot`, `Model::select`), so that a name accepted by
//! one is accepted by all.
//!
//! * A dotted module path (PEFT, `base_model.model.` already removed) refers to `{path}.weight`,
//!   or, when the base was saved under another root (`LlamaModel` without `model.`), to the
//!   weights whose names agree with it on a dotted suffix ([`dotted_candidates`]).
//! * A kohya name (a kohya file's module without a dot: `lora_te_model_layers_0_self_attn_q_proj`)
//!   loses its prefix ([`kohya::split_prefix`]) and is compared with the base's module paths
//!   with `.` → `_`: exact first, then agreeing on an `_`-bounded suffix ([`kohya_candidates`]).
//!   Underscores inside names make the reverse mapping non-unique, so several candidates are
//!   possible; the caller reports them as ambiguous.
//! * A PEFT `target_modules` entry selects the paths it equals or ends with after a dot
//!   ([`target_matches`]).
//!
//! Must not look at shapes, dtypes, components or tensor data, nor decide what no candidate or
//! several mean: the callers (merge's resolution, the model's attachment) do.

use crate::adapter::formats::kohya;
use crate::adapter::formats::Format;
use std::collections::HashMap;

/// `long` equals `short` or ends with `.short`.
pub fn dotted_suffix(long: &str, short: &str) -> bool {
    long == short
        || (long.len() > short.len()
            && long.ends_with(short)
            && long.as_bytes()[long.len() - short.len() - 1] == b'.')
}

/// Whether `a` and `b` are equal or one ends with `.` + the other.
pub fn dotted_suffix_agrees(a: &str, b: &str) -> bool {
    dotted_suffix(a, b) || dotted_suffix(b, a)
}

/// Whether a PEFT `target_modules` entry selects module `path`: the whole path, or a suffix of
/// it that starts after a dot (`q_proj`, `self_attn.q_proj`), as PEFT's
/// `tuners/tuners_utils.py` `check_target_module_exists` matches a list (`key in
/// target_modules or key.endswith(f".{target_key}")`).
pub fn target_matches(path: &str, target: &str) -> bool {
    dotted_suffix(path, target)
}

/// Whether module `name` of an adapter in `format` is read as a kohya name (prefix, path with
/// underscores) rather than a dotted module path.
pub fn is_kohya_name(format: Format, name: &str) -> bool {
    !format.layout().names_are_paths() && !name.contains('.')
}

/// Exact name first; otherwise the names that agree with `want` on a dotted suffix, in the
/// order of `names`. When every such name is a dotted suffix of `want` and of the longest of
/// them, that longest one is the match: `want` carries a root the base lacks (a diffusers
/// file's `transformer.`), and stripping the least root is what the loader does — diffusers
/// 0.42.1 `loaders/peft.py` `load_lora_adapter` removes exactly `{prefix}.` and looks the rest up
/// as one module path. HunyuanVideo holds both `context_embedder.time_text_embed.text_embedder.
/// linear_2` and `time_text_embed.text_embedder.linear_2`; `transformer.context_embedder.…` is the
/// first, never the second.
pub fn dotted_candidates<'a>(want: &str, names: &[&'a str]) -> Vec<&'a str> {
    if let Some(n) = names.iter().find(|n| **n == want) {
        return vec![n];
    }
    let found: Vec<&'a str> = names
        .iter()
        .filter(|n| dotted_suffix_agrees(n, want))
        .copied()
        .collect();
    if let Some(&longest) = found.iter().max_by_key(|n| n.len()) {
        if found.len() > 1
            && found
                .iter()
                .all(|n| dotted_suffix(want, n) && dotted_suffix(longest, n))
        {
            return vec![longest];
        }
    }
    found
}

/// The index [`kohya_candidates`] reads: each `….weight` of `names` under its module path with
/// `.` → `_`.
pub fn kohya_index<'a>(names: &[&'a str]) -> HashMap<String, Vec<&'a str>> {
    let mut idx: HashMap<String, Vec<&'a str>> = HashMap::new();
    for n in names {
        if let Some(m) = n.strip_suffix(".weight") {
            idx.entry(m.replace('.', "_")).or_default().push(n);
        }
    }
    idx
}

/// The base weights a kohya (underscored, prefixed) module name can stand for, from `index`
/// ([`kohya_index`]). Exact match first, then names that agree on an `_`-separated suffix,
/// sorted.
pub fn kohya_candidates<'a>(name: &str, index: &HashMap<String, Vec<&'a str>>) -> Vec<&'a str> {
    let rest = kohya::split_prefix(name).map(|(_, r)| r).unwrap_or(name);
    if let Some(v) = index.get(rest) {
        return v.clone();
    }
    let mut out: Vec<&str> = index
        .iter()
        .filter(|(k, _)| {
            let (long, short) = if k.len() > rest.len() {
                (k.as_str(), rest)
            } else {
                (rest, k.as_str())
            };
            long.ends_with(short) && long.as_bytes()[long.len() - short.len() - 1] == b'_'
        })
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    out.sort();
    out
}

/// A base's tensor names, indexed once for matching many module names against them.
#[derive(Debug, Clone)]
pub struct WeightNames<'a> {
    names: Vec<&'a str>,
    /// Built only for a kohya adapter (nothing else reads it).
    kohya: HashMap<String, Vec<&'a str>>,
}

impl<'a> WeightNames<'a> {
    /// Indexes `names` (every tensor of the base) for the modules of an adapter in `format`.
    pub fn new(names: Vec<&'a str>, format: Format) -> Self {
        let kohya = if !format.layout().names_are_paths() {
            kohya_index(&names)
        } else {
            HashMap::new()
        };
        WeightNames { names, kohya }
    }

    pub fn names(&self) -> &[&'a str] {
        &self.names
    }

    /// The base tensors module `name` of an adapter in `format` refers to (the weights a kohya
    /// name stands for, or the tensors a dotted path's `{path}.weight` names): none, one, or
    /// several (ambiguous).
    pub fn module_candidates(&self, format: Format, name: &str) -> Vec<&'a str> {
        if is_kohya_name(format, name) {
            kohya_candidates(name, &self.kohya)
        } else if format == Format::Mlx {
            // mlx-lm names its own model's modules; a family whose `sanitize` renames or
            // transposes weights (gpt2: `model.h.N` Linears on Wᵀ of Conv1D) must not land by a
            // dotted suffix on a Hugging Face checkpoint, where a square weight would take ΔW
            // untransposed. Exact names only.
            let want = format!("{name}.weight");
            self.names.iter().filter(|n| **n == want).copied().collect()
        } else {
            dotted_candidates(&format!("{name}.weight"), &self.names)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_suffixes_start_after_a_dot() {
        assert!(dotted_suffix("model.layers.0.self_attn.q_proj", "q_proj"));
        assert!(dotted_suffix(
            "model.layers.0.self_attn.q_proj",
            "self_attn.q_proj"
        ));
        assert!(dotted_suffix("q_proj", "q_proj"));
        assert!(!dotted_suffix(
            "model.layers.0.self_attn.q_proj",
            "attn.q_proj"
        ));
        assert!(!dotted_suffix("q_proj", "self_attn.q_proj"));
        assert!(dotted_suffix_agrees("q_proj", "self_attn.q_proj"));
        assert!(!dotted_suffix_agrees("a.q_proj", "b.q_proj"));
    }

    #[test]
    fn kohya_names_match_exact_first_then_an_underscore_bounded_suffix() {
        let names = [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.10.self_attn.q_proj.weight",
            "model.layers.0.self_attn.q_proj.bias",
            "lm_head.weight",
        ];
        let w = WeightNames::new(names.to_vec(), Format::Kohya);
        let k = |n: &str| w.module_candidates(Format::Kohya, n);
        assert_eq!(
            k("lora_te_model_layers_0_self_attn_q_proj"),
            [names[0]],
            "exact after the prefix"
        );
        assert_eq!(k("lora_unet_layers_10_self_attn_q_proj"), [names[1]]);
        assert_eq!(k("lora_te_lm_head"), [names[3]]);
        assert_eq!(k("lora_te_self_attn_q_proj"), [names[0], names[1]]);
        assert!(k("lora_te_attn_k_proj").is_empty());
        // A dotted name in a kohya file is a module path.
        assert_eq!(k("layers.0.self_attn.q_proj"), [names[0]]);
    }

    #[test]
    fn dotted_paths_match_exact_first_then_a_dotted_suffix_either_way() {
        let names = [
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
            "layers.0.mlp.down_proj.weight",
        ];
        let w = WeightNames::new(names.to_vec(), Format::Peft);
        let p = |n: &str| w.module_candidates(Format::Peft, n);
        assert_eq!(p("layers.0.mlp.down_proj"), [names[2]]);
        assert_eq!(p("model.layers.0.mlp.down_proj"), [names[0]]);
        assert_eq!(
            p("base.model.layers.1.mlp.down_proj"),
            [names[1]],
            "a longer root"
        );
        assert_eq!(p("mlp.down_proj"), names);
        // Under a root the base lacks, the longest agreeing path; a shorter want stays
        // ambiguous.
        let names = [
            "context_embedder.time_text_embed.text_embedder.linear_2.weight",
            "time_text_embed.text_embedder.linear_2.weight",
        ];
        let w = WeightNames::new(names.to_vec(), Format::Peft);
        let p = |n: &str| w.module_candidates(Format::Peft, n);
        assert_eq!(
            p("transformer.context_embedder.time_text_embed.text_embedder.linear_2"),
            [names[0]]
        );
        assert_eq!(
            p("transformer.time_text_embed.text_embedder.linear_2"),
            [names[1]]
        );
        assert_eq!(p("text_embedder.linear_2"), names);
        // A PEFT name without a dot is a top-level module, never read as a kohya name.
        assert!(p("mlp_down_proj").is_empty());
    }
}
