//! How diffusers 0.42.1's Anima, Krea 2, Ideogram 4, ACE-Step and MiniMax-H3 pipelines read a
//! LoRA file in their trainers' names (`loaders/lora_pipeline.py` `…LoraLoaderMixin.
//! lora_state_dict`, `loaders/lora_conversion_utils.py` `_convert_non_diffusers_{anima,krea2,
//! ideogram4,ace_step,minimax_h3}_lora_to_diffusers`), transcribed for `check --target diffusers`.
//!
//! - Anima (`AnimaLoraLoaderMixin`): with a `diffusion_model.` key, renames those keys
//!   (`blocks.` → `transformer_blocks.`, …) under `transformer.` (`llm_adapter.` under
//!   `text_conditioner.`) and passes the others; `load_lora_weights` then raises "Invalid LoRA
//!   checkpoint" for a key without `lora` (an `.alpha`, kept), and a module under neither
//!   component (kohya `lora_unet_…`, which it never converts) is applied nowhere.
//! - Krea 2 (`Krea2LoraLoaderMixin`): with a `diffusion_model.` or `base_model.model.` key, strips
//!   both and converts each `lora_A/lora_B.weight` of its tables; any key left (an `.alpha`,
//!   kohya's `lora_down`, a module outside the tables) raises "`state_dict` should be empty".
//! - Ideogram 4 (`Ideogram4LoraLoaderMixin`): with a `diffusion_model.` key or an
//!   `.attention.qkv.` key, pops per `layers.N` the `attention.qkv`, `attention.o`,
//!   `feed_forward.w1..3` and `adaln_modulation` pairs (kohya's `lora_down/lora_up` when the file
//!   has one, else `lora_A/lora_B`, with their `.alpha`); any key left raises.
//! - ACE-Step (`AceStepLoraLoaderMixin`): with a `q_proj`/`k_proj` key, strips
//!   `base_model.model.`, renames the attention projections and prefixes every key with
//!   `transformer.`: a module under another root lands nowhere.
//! - MiniMax-H3 (`MiniMaxH3LoraLoaderMixin`): with a key under `diffusion_model.`, `blocks.`,
//!   `token_refiner.blocks.`, `final_layer.` or `lora_unet_`, unflattens musubi's names (one that
//!   names no module raises), pops the modules of its tables and raises for any key left.
//! - ERNIE-Image (`ErnieImageLoraLoaderMixin`): renames `base_model.model.` to
//!   `diffusion_model.` and `diffusion_model.` to `transformer.` (its original names are the
//!   diffusers model's), so those modules land; a key without `lora` raises "Invalid LoRA
//!   checkpoint", and a module under another root lands nowhere (`fixtures/gen/
//!   diffusion12_fixtures.py`).
//!
//! A file under none of those conditions keeps its names: only `transformer.` keys reach the
//! model, a key without `lora` raises. Told by names only each model's original layout has
//! ([`family_of`]), or a `--base` of that model. Checked against diffusers' runs recorded by
//! `fixtures/gen/diffusion11_fixtures.py`. Must not decide severities (the rules in
//! `rules/others.rs` do); reads only tensor names, never tensor data.

use super::diffusers_keys::after_block;
use super::when::DiffusersModel;

/// A name after `diffusion_model.`/`base_model.model.`/`lora_unet_` (kohya: `_`), or the name.
fn tail(name: &str) -> (&str, char) {
    if let Some(t) = name.strip_prefix("lora_unet_") {
        return (t, '_');
    }
    let t = name
        .strip_prefix("diffusion_model.")
        .or_else(|| name.strip_prefix("base_model.model."))
        .unwrap_or(name);
    (t, '.')
}

/// `t` is `{pre}N{sep}{leaf}` (`pre` written with `.`) for one of `leaves`.
fn block_leaf(t: &str, pre: &str, sep: char, leaves: &[&str]) -> bool {
    let s = |x: &str| x.replace('.', &sep.to_string());
    after_block(t, &s(pre), sep).is_some_and(|r| leaves.iter().any(|l| r == s(l)))
}

/// Anima's block modules (`_convert_non_diffusers_anima_lora_to_diffusers`' `rename_dict`).
const ANIMA_BLOCK: &[&str] = &[
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.output_proj",
    "cross_attn.q_proj",
    "cross_attn.k_proj",
    "cross_attn.v_proj",
    "cross_attn.output_proj",
    "mlp.layer1",
    "mlp.layer2",
    "adaln_modulation_self_attn.1",
    "adaln_modulation_self_attn.2",
    "adaln_modulation_cross_attn.1",
    "adaln_modulation_cross_attn.2",
    "adaln_modulation_mlp.1",
    "adaln_modulation_mlp.2",
];

/// Krea 2's module names (the converter's `attn_map`, `ff_map`, `standalone_map`).
fn krea2_module(t: &str) -> bool {
    const ATTN: [&str; 5] = ["wq", "wk", "wv", "wo", "gate"];
    const FF: [&str; 3] = ["gate", "up", "down"];
    let block = |rest: &str| {
        rest.strip_prefix("attn.")
            .is_some_and(|s| ATTN.contains(&s))
            || rest.strip_prefix("mlp.").is_some_and(|s| FF.contains(&s))
    };
    after_block(t, "blocks.", '.').is_some_and(block)
        || after_block(t, "txtfusion.layerwise_blocks.", '.').is_some_and(block)
        || after_block(t, "txtfusion.refiner_blocks.", '.').is_some_and(block)
        || [
            "first",
            "last.linear",
            "tmlp.0",
            "tmlp.2",
            "tproj.1",
            "txtmlp.1",
            "txtmlp.3",
            "txtfusion.projector",
        ]
        .contains(&t)
}

/// Ideogram 4's per-layer modules the converter pops.
const IDEOGRAM4_LAYER: &[&str] = &[
    "attention.qkv",
    "attention.o",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
    "adaln_modulation",
];

/// ERNIE-Image's per-layer modules no other model here names so (its attention is
/// `self_attention.to_q`, Z-Image's `attention.to_q`).
const ERNIE_LAYER: &[&str] = &[
    "self_attention.to_q",
    "self_attention.to_k",
    "self_attention.to_v",
    "self_attention.to_out.0",
    "mlp.linear_fc2",
];

/// MiniMax-H3's module names (the converter's `standalone_renames` and `block_specs`).
fn minimax_module(t: &str, sep: char) -> bool {
    const BLOCK: [&str; 4] = ["attn.qkv_proj", "attn.out_proj", "mlp.fc1", "mlp.fc2"];
    let s = |x: &str| x.replace('.', &sep.to_string());
    block_leaf(t, "blocks.", sep, &BLOCK)
        || block_leaf(t, "blocks.", sep, &["adaln_proj.linear"])
        || block_leaf(t, "token_refiner.blocks.", sep, &BLOCK)
        || [
            "video_patch_proj",
            "audio_patch_proj",
            "condition_proj",
            "time_embedder.proj_in",
            "time_embedder.proj_out",
            "final_layer.adaln_proj.linear",
            "final_layer.video_out",
            "final_layer.audio_out",
        ]
        .iter()
        .any(|x| t == s(x))
}

/// The loader of these six models that reads `adapter` (module header): a module name only
/// that model's original layout has, or a base of that model (`patch_embed.` and
/// `time_embed.t_embedder.` for Cosmos/Anima, `text_fusion.` for Krea 2, `llm_cond_proj.` for
/// Ideogram 4, `condition_embedder.` beside `proj_in_conv.` for ACE-Step, `audio_proj_in.`
/// beside `adaln_proj.linear.` for MiniMax-H3, `.adaLN_sa_ln.` for ERNIE-Image) and a file of
/// its original names. A file in diffusers' own names (`transformer.`) is none of them: every
/// loader applies it as named.
pub(super) fn family_of(
    adapter: &crate::adapter::Adapter,
    base: Option<&crate::io::Checkpoint>,
) -> Option<DiffusersModel> {
    let base_has = |mark: &str| base.is_some_and(|b| b.names().any(|n| n.contains(mark)));
    let any = |f: &dyn Fn(&str, char) -> bool| {
        adapter.modules.iter().any(|m| {
            let (t, sep) = tail(&m.name);
            f(t, sep)
        })
    };
    let anima = |t: &str, sep: char| {
        block_leaf(t, "blocks.", sep, ANIMA_BLOCK)
            || (sep == '.'
                && (t.starts_with("llm_adapter.")
                    || t.starts_with("final_layer.adaln_modulation.")
                    || t.starts_with("t_embedder.1.")
                    || t == "x_embedder.proj.1"))
    };
    let krea2 = |t: &str, sep: char| {
        sep == '.' && krea2_module(t) && !t.starts_with("blocks.")
            || block_leaf(
                t,
                "blocks.",
                sep,
                &["attn.wq", "attn.wk", "attn.wv", "attn.wo", "attn.gate"],
            )
    };
    let ideogram4 =
        |t: &str, sep: char| block_leaf(t, "layers.", sep, &["attention.o", "adaln_modulation"]);
    let ace_step = |t: &str, sep: char| {
        block_leaf(
            t,
            "layers.",
            sep,
            &[
                "cross_attn.q_proj",
                "cross_attn.k_proj",
                "cross_attn.v_proj",
                "cross_attn.o_proj",
            ],
        )
    };
    let minimax = |t: &str, sep: char| {
        minimax_module(t, sep) && !block_leaf(t, "blocks.", sep, &["mlp.fc1", "mlp.fc2"])
    };
    if any(&anima)
        || (base_has("time_embed.t_embedder.")
            && base_has("patch_embed.")
            && any(&|t, s| t.starts_with(&format!("blocks{s}"))))
    {
        Some(DiffusersModel::Anima)
    } else if any(&krea2) || (base_has("text_fusion.") && any(&|t, _| krea2_module(t))) {
        Some(DiffusersModel::Krea2)
    } else if any(&minimax)
        || (base_has(".adaln_proj.linear.") && base_has("audio_proj_in.") && any(&minimax_module))
    {
        Some(DiffusersModel::MiniMaxH3)
    } else if any(&ideogram4) && !base_has("all_x_embedder.")
        || base_has("llm_cond_proj.")
            && any(&|t, s| after_block(t, &format!("layers{s}"), s).is_some())
    {
        Some(DiffusersModel::Ideogram4)
    } else if any(&ace_step) || (base_has("condition_embedder.") && base_has("proj_in_conv.")) {
        Some(DiffusersModel::AceStep)
    } else if any(&|t, sep| sep == '.' && block_leaf(t, "layers.", sep, ERNIE_LAYER))
        || (base_has(".adaLN_sa_ln.") && any(&|t, s| s == '.' && t.starts_with("layers.")))
    {
        Some(DiffusersModel::ErnieImage)
    } else {
        None
    }
}

/// `(refused, dropped)` for the loader of `model` (module header), one of these five.
pub(super) fn findings(
    adapter: &crate::adapter::Adapter,
    keys: &[&str],
    model: DiffusersModel,
) -> (Vec<String>, Vec<String>) {
    let starts = |p: &str| keys.iter().any(|k| k.starts_with(p));
    let converted = match model {
        DiffusersModel::Anima => starts("diffusion_model."),
        DiffusersModel::Krea2 => starts("diffusion_model.") || starts("base_model.model."),
        DiffusersModel::Ideogram4 => {
            starts("diffusion_model.") || keys.iter().any(|k| k.contains(".attention.qkv."))
        }
        DiffusersModel::AceStep => keys
            .iter()
            .any(|k| k.contains("q_proj") || k.contains("k_proj")),
        DiffusersModel::MiniMaxH3 => [
            "diffusion_model.",
            "blocks.",
            "token_refiner.blocks.",
            "final_layer.",
            "lora_unet_",
        ]
        .iter()
        .any(|p| starts(p)),
        DiffusersModel::ErnieImage => true,
        _ => return (vec![], vec![]),
    };
    let no_lora = || -> Vec<String> {
        keys.iter()
            .filter(|k| !k.contains("lora") && !k.contains("dora_scale"))
            .map(|k| format!("{k} (no `lora` in the key: ValueError, Invalid LoRA checkpoint)"))
            .collect()
    };
    let outside = |roots: &[&str], why: &str| -> Vec<String> {
        adapter
            .modules
            .iter()
            .filter(|m| !roots.iter().any(|r| m.name.starts_with(r)))
            .map(|m| format!("{} ({why})", m.name))
            .collect()
    };
    let unconverted = || {
        let refused = no_lora();
        if !refused.is_empty() {
            return (refused, vec![]);
        }
        (
            vec![],
            outside(
                &["transformer."],
                "not converted: under no `transformer.` prefix",
            ),
        )
    };
    if !converted {
        return unconverted();
    }
    match model {
        DiffusersModel::Anima => {
            let refused = no_lora();
            if !refused.is_empty() {
                return (refused, vec![]);
            }
            let roots = ["diffusion_model.", "transformer.", "text_conditioner."];
            (
                vec![],
                outside(&roots, "not converted: under no pipeline component"),
            )
        }
        DiffusersModel::Krea2 => {
            let left = keys
                .iter()
                .filter(|k| {
                    let t = k.strip_prefix("base_model.model.").unwrap_or(k);
                    let t = t.strip_prefix("diffusion_model.").unwrap_or(t);
                    let path = t
                        .strip_suffix(".lora_A.weight")
                        .or_else(|| t.strip_suffix(".lora_B.weight"));
                    !path.is_some_and(krea2_module)
                })
                .map(|k| {
                    format!("{k} (left unconverted: ValueError, `state_dict` should be empty)")
                })
                .collect();
            (left, vec![])
        }
        DiffusersModel::Ideogram4 => {
            let strip = ["diffusion_model.", "conditional_transformer."]
                .into_iter()
                .find(|p| starts(p));
            let kohya = keys.iter().any(|k| k.contains(".lora_down.weight"));
            let (down, up) = if kohya {
                (".lora_down.weight", ".lora_up.weight")
            } else {
                (".lora_A.weight", ".lora_B.weight")
            };
            let left = keys
                .iter()
                .filter(|k| {
                    let t = strip.and_then(|p| k.strip_prefix(p)).unwrap_or(k);
                    let path = [down, up, ".alpha"].iter().find_map(|s| t.strip_suffix(s));
                    !path.is_some_and(|p| block_leaf(p, "layers.", '.', IDEOGRAM4_LAYER))
                })
                .map(|k| {
                    format!("{k} (left unconverted: ValueError, `state_dict` should be empty)")
                })
                .collect();
            (left, vec![])
        }
        DiffusersModel::AceStep => {
            let refused = no_lora();
            if !refused.is_empty() {
                return (refused, vec![]);
            }
            let dropped = adapter
                .modules
                .iter()
                .filter(|m| {
                    let t = m.name.strip_prefix("base_model.model.").unwrap_or(&m.name);
                    ["diffusion_model.", "transformer.", "lora_unet_"]
                        .iter()
                        .any(|p| t.starts_with(p))
                })
                .map(|m| {
                    format!(
                        "{} (renamed `transformer.{}`: no such module)",
                        m.name, m.name
                    )
                })
                .collect();
            (vec![], dropped)
        }
        DiffusersModel::ErnieImage => {
            let refused = no_lora();
            if !refused.is_empty() {
                return (refused, vec![]);
            }
            let roots = ["base_model.model.", "diffusion_model.", "transformer."];
            (
                vec![],
                outside(&roots, "not renamed: under no `transformer.` prefix"),
            )
        }
        DiffusersModel::MiniMaxH3 => {
            let left = keys
                .iter()
                .filter(|k| {
                    let k = k.strip_prefix("diffusion_model.").unwrap_or(k);
                    let k = k
                        .replace(".lora_A.default.", ".lora_A.")
                        .replace(".lora_B.default.", ".lora_B.");
                    let (t, sep) = match k.strip_prefix("lora_unet_") {
                        Some(t) => (t.split_once('.').map_or(t, |(m, _)| m).to_owned(), '_'),
                        None => {
                            let path = [
                                ".lora_A.weight",
                                ".lora_B.weight",
                                ".lora_down.weight",
                                ".lora_up.weight",
                                ".alpha",
                            ]
                            .iter()
                            .find_map(|s| k.strip_suffix(s));
                            (path.unwrap_or("").to_owned(), '.')
                        }
                    };
                    !minimax_module(&t, sep)
                })
                .map(|k| format!("{k} (no MiniMax-H3 module of the converter: ValueError)"))
                .collect();
            (left, vec![])
        }
        _ => (vec![], vec![]),
    }
}

/// Whether `model` is one of the loaders this module transcribes.
pub(super) fn reads(model: DiffusersModel) -> bool {
    matches!(
        model,
        DiffusersModel::Anima
            | DiffusersModel::Krea2
            | DiffusersModel::Ideogram4
            | DiffusersModel::AceStep
            | DiffusersModel::MiniMaxH3
            | DiffusersModel::ErnieImage
    )
}
