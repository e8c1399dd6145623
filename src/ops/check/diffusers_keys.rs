//! How diffusers 0.42.1 reads a kohya-named UNet module (`lora_unet_…`) and a text encoder's
//! LoRA keys, transcribed, so that `check --target diffusers` can tell which modules land nowhere
//! and which files it refuses. Owns only those string transcriptions and the UNet's module-name
//! vocabulary; the rules that use them are data in `rules/others.rs` (`diffusers.unet_key`,
//! `diffusers.te_type`, `diffusers.te_key`, `diffusers.te_rank`), evaluated in `facts.rs`.
//!
//! diffusers converts a file whose every key starts with `lora_unet_`/`lora_te_`/`lora_te1_`/
//! `lora_te2_` (`loaders/lora_pipeline.py` `StableDiffusionLoraLoaderMixin.lora_state_dict`) with
//! `loaders/lora_conversion_utils.py` `_convert_unet_lora_key`: every `_` becomes `.`, a fixed
//! list of replacements restores the UNet's own underscored names, and an SDXL rule drops the
//! last `.N` of any name containing `emb` (meant for sgm's `emb_layers.1`). The result, after
//! `utils/state_dict_utils.py` `convert_unet_state_dict_to_peft` (`.processor.` → `.`,
//! `to_out_lora` → `to_out.0`), is looked up as a module path; a path the UNet lacks is skipped
//! with "unexpected keys" and nothing of it is applied. diffusers' own `convert_state_dict_to_kohya`
//! writes `add_embedding.linear_1`/`linear_2` as `lora_unet_add_embedding_linear_1`/`_2`, which
//! come back as `add.embedding.linear` (checked on the sweep's SD 1.x and SDXL UNets: of every
//! Linear/Conv2d module, only those two; `fixtures/gen/check_diffusers_sweep.py`).
//!
//! A text encoder's keys (`loaders/lora_base.py` `_load_lora_into_text_encoder`, after its
//! component prefix is removed) go through `utils/state_dict_utils.py`
//! `convert_state_dict_to_diffusers` and then `convert_state_dict_to_peft`; each infers the
//! keys' type from a marker (`to_out_lora`, `.lora_A.weight`, `lora_linear_layer`) and raises
//! "Could not automatically infer state dict type" when none is there, and each renames only the
//! patterns of its table. So a PEFT-named encoder LoRA without a q/k/v/out_proj module (only
//! `fc1`/`fc2`/`text_projection`) is refused, as is a kohya one (`lora_te…`, renamed by
//! `lora_conversion_utils.py` `_convert_text_encoder_lora_key`) with neither `out_proj` nor an
//! MLP module; a kohya one with an MLP module but no `out_proj` keeps its attention keys as
//! `…to_q_lora.down.weight`, which no layer has (skipped). Run on the sweep's cases.
//!
//! The transformer pipelines convert other trainers' names themselves (`lora_pipeline.py`
//! `FluxLoraLoaderMixin`, `WanLoraLoaderMixin`, `QwenImageLoraLoaderMixin` `lora_state_dict`):
//! a file whose every module is named in BFL Flux's or Wan's original layout (kohya
//! `lora_unet_double_blocks_0_img_attn_qkv`, musubi `lora_unet_blocks_0_self_attn_q`, ComfyUI's
//! `diffusion_model.…`, XLabs' processors read as their layers), or carries Qwen-Image's
//! `lora_unet_transformer_blocks_…` / `diffusion_model.transformer_blocks.…`, is theirs, not the
//! SD converter's ([`transformer_converted`]). kohya Flux modules outside the blocks are renamed
//! by `_convert_sd_scripts_to_ai_toolkit` without the `transformer.` prefix (`lora_unet_img_in` →
//! `x_embedder`, `…final_layer_linear` → `proj_out`) and then filtered out with the other keys
//! of no component ([`flux_kohya_dropped`]; loads 0 of them in `check_diffusers_formats_sweep.py`).
//!
//! Flux.2's, HunyuanVideo's and Z-Image's own loaders are `diffusers_pipelines.rs`.
//!
//! Must not decide severities (the rule does); reads only tensor names, never tensor data.

/// Every name component (other than indices) of a Linear/Conv2d module path of diffusers'
/// `UNet2DConditionModel` as SD 1.x/2.x and SDXL configure it (`models/unets/
/// unet_2d_condition.py`, `unet_2d_blocks.py`, `resnet.py`, `attention.py`, `embeddings.py`,
/// diffusers 0.42.1; listed from `named_modules()` of the SD 1.x and SDXL UNets of
/// `check_diffusers_sweep.py`). A converted path with a component outside it is no module.
const UNET_NAMES: &[&str] = &[
    "add_embedding",
    "attentions",
    "attn1",
    "attn2",
    "conv",
    "conv1",
    "conv2",
    "conv_in",
    "conv_out",
    "conv_shortcut",
    "down_blocks",
    "downsamplers",
    "ff",
    "linear_1",
    "linear_2",
    "mid_block",
    "net",
    "proj",
    "proj_in",
    "proj_out",
    "resnets",
    "time_emb_proj",
    "time_embedding",
    "to_k",
    "to_out",
    "to_q",
    "to_v",
    "transformer_blocks",
    "up_blocks",
    "upsamplers",
];

/// `_convert_unet_lora_key`'s unconditional replacements, in its order.
const RENAMES: &[(&str, &str)] = &[
    ("input.blocks.0.0", "conv_in"),
    ("out.2", "conv_out"),
    ("input.blocks", "down_blocks"),
    ("down.blocks", "down_blocks"),
    ("middle.block", "mid_block"),
    ("mid.block", "mid_block"),
    ("output.blocks", "up_blocks"),
    ("up.blocks", "up_blocks"),
    ("transformer.blocks", "transformer_blocks"),
    ("to.q.lora", "to_q_lora"),
    ("to.k.lora", "to_k_lora"),
    ("to.v.lora", "to_v_lora"),
    ("to.out.0.lora", "to_out_lora"),
    ("proj.in", "proj_in"),
    ("proj.out", "proj_out"),
    ("emb.layers", "time_emb_proj"),
    ("conv.in", "conv_in"),
    ("conv.out", "conv_out"),
    ("time.embed.0", "time_embedding.linear_1"),
    ("time.embed.2", "time_embedding.linear_2"),
    ("label.emb.0.0", "add_embedding.linear_1"),
    ("label.emb.0.2", "add_embedding.linear_2"),
    ("time.embedding.linear.1", "time_embedding.linear_1"),
    ("time.embedding.linear.2", "time_embedding.linear_2"),
];

/// `re.sub(r"\.\d+(?=\D*$)", "", s, count=1)`: removes the last run of digits when a `.`
/// precedes it (the lookahead admits only the last run, taken whole).
fn drop_last_index(s: &str) -> String {
    let b = s.as_bytes();
    let Some(end) = b.iter().rposition(u8::is_ascii_digit).map(|i| i + 1) else {
        return s.to_owned();
    };
    let start = b[..end]
        .iter()
        .rposition(|c| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    if start == 0 || b[start - 1] != b'.' {
        return s.to_owned();
    }
    format!("{}{}", &s[..start - 1], &s[end..])
}

/// The module path diffusers looks up for the kohya UNet module `name` (`lora_unet_…`, the
/// key's part before its first `.`): `_convert_unet_lora_key` of `{name}.lora_down.weight`, then
/// `convert_unet_state_dict_to_peft`'s renames, up to `.lora_A`.
pub(super) fn unet_module_path(name: &str) -> String {
    let key = format!("{name}.lora_down.weight");
    let mut n = key.replace("lora_unet_", "").replace('_', ".");
    for (from, to) in RENAMES {
        n = n.replace(from, to);
    }
    if n.contains("emb") && !n.contains("time.emb.proj") {
        n = drop_last_index(&n);
    }
    if n.contains(".in.") {
        n = n.replace("in.layers.2", "conv1");
    }
    if n.contains(".out.") {
        n = n.replace("out.layers.3", "conv2");
    }
    if n.contains("downsamplers") || n.contains("upsamplers") {
        n = n.replace("op", "conv");
    }
    if n.contains("skip") {
        n = n.replace("skip.connection", "conv_shortcut");
    }
    n = n
        .replace("time.emb.proj", "time_emb_proj")
        .replace("conv.shortcut", "conv_shortcut");
    if n.contains("transformer_blocks") && (n.contains("attn1") || n.contains("attn2")) {
        n = n
            .replace("attn1", "attn1.processor")
            .replace("attn2", "attn2.processor");
    }
    // convert_unet_state_dict_to_peft: KEYS_TO_ALWAYS_REPLACE, then the first UNET_TO_DIFFUSERS
    // pattern that occurs.
    n = n.replace(".processor.", ".");
    for (from, to) in [
        (".to_out_lora.down", ".to_out.0.lora_A"),
        (".to_q_lora.down", ".to_q.lora_A"),
        (".to_k_lora.down", ".to_k.lora_A"),
        (".to_v_lora.down", ".to_v.lora_A"),
        (".lora.down", ".lora_A"),
    ] {
        if n.contains(from) {
            n = n.replace(from, to);
            break;
        }
    }
    n.split_once(".lora_A")
        .map_or(n.clone(), |(m, _)| m.to_owned())
}

/// For a kohya UNet module diffusers cannot place: the path it looks up instead. A module counts
/// when the conversion changed its name beyond `_` ↔ `.` (the path with `.` → `_` is not the
/// kohya name) and the path has a component no UNet module has; a name diffusers keeps as it is
/// (`lora_unet_fc` → `fc`) may be a module of whatever the file was trained on, and sgm names
/// (`input_blocks_1_0_emb_layers_1` → `down_blocks.1.0.time_emb_proj`) are renamed on purpose.
/// `None` for names without `lora_unet_` and names that land.
pub(super) fn lost_unet_module(name: &str) -> Option<String> {
    let stem = name.strip_prefix("lora_unet_")?;
    let path = unet_module_path(name);
    let unknown = path
        .split('.')
        .any(|c| !(c.bytes().all(|b| b.is_ascii_digit()) || UNET_NAMES.contains(&c)));
    (unknown && path.replace('.', "_") != stem).then_some(path)
}

/// The modules of `adapter` when it is a file in SD3's original layout (a module under
/// `joint_blocks.N.`: kohya sd-scripts' `lora_sd3.py` names or ComfyUI's `diffusion_model.`),
/// with whether one of its keys lacks `lora` — what `SD3LoraLoaderMixin` (`lora_pipeline.py`
/// 0.42.1) decides on: its `lora_state_dict` converts no such names, `load_lora_weights` raises
/// "Invalid LoRA checkpoint" when a key lacks `lora` (`….alpha` under `diffusion_model.`), and
/// otherwise the keys fall under no `transformer.` / `text_encoder*.` prefix and nothing is
/// applied ("No LoRA keys associated … found"). `None` for any other file.
pub(super) fn sd3_original(adapter: &crate::adapter::Adapter) -> Option<(Vec<String>, bool)> {
    let sd3 = |n: &str| {
        n.starts_with("lora_unet_joint_blocks_")
            || n.starts_with("joint_blocks.")
            || n.contains(".joint_blocks.")
    };
    if !adapter.modules.iter().any(|m| sd3(&m.name)) {
        return None;
    }
    let names = adapter.modules.iter().map(|m| m.name.clone()).collect();
    let no_lora = adapter
        .source
        .as_ref()
        .is_some_and(|f| f.tensors().iter().any(|t| !t.name.contains("lora")));
    Some((names, no_lora))
}

/// The module names each loader reads, tested on the part after `lora_unet_` (kohya, `_`) or
/// `diffusion_model.` (ComfyUI, dotted).
pub(super) fn original_tail(name: &str) -> Option<(&str, bool)> {
    match name.strip_prefix("lora_unet_") {
        Some(t) => Some((t, true)),
        None => name.strip_prefix("diffusion_model.").map(|t| (t, false)),
    }
}

/// `t` is `{pre}{digits}{sep}…`: the part after the separator.
pub(super) fn after_block<'a>(t: &'a str, pre: &str, sep: char) -> Option<&'a str> {
    let rest = t.strip_prefix(pre)?;
    let n = rest.bytes().take_while(u8::is_ascii_digit).count();
    (n > 0).then_some(())?;
    rest[n..].strip_prefix(sep)
}

/// `_convert_non_diffusers_flux2_lora_to_diffusers`' module paths (after `diffusion_model.`).
pub(super) fn flux2_dotted_known(t: &str) -> bool {
    flux2_known(
        t,
        '.',
        &[
            "img_attn.qkv",
            "txt_attn.qkv",
            "img_attn.proj",
            "txt_attn.proj",
            "img_mlp.0",
            "img_mlp.2",
            "txt_mlp.0",
            "txt_mlp.2",
        ],
        &[
            "img_in",
            "txt_in",
            "time_in.in_layer",
            "time_in.out_layer",
            "guidance_in.in_layer",
            "guidance_in.out_layer",
            "final_layer.linear",
            "final_layer.adaLN_modulation.1",
            "single_stream_modulation.lin",
            "double_stream_modulation_img.lin",
            "double_stream_modulation_txt.lin",
        ],
    )
}

/// Whether a Flux.2 module path `t` (its parts joined by `sep`) is one a converter handles:
/// `double_blocks{sep}N{sep}` followed by one of `double`, `single_blocks{sep}N{sep}linear1` or
/// `linear2`, or one of the `top` level names. Each converter's lists are its own (the kohya
/// one knows fewer top-level modules).
pub(super) fn flux2_known(t: &str, sep: char, double: &[&str], top: &[&str]) -> bool {
    after_block(t, &format!("double_blocks{sep}"), sep).is_some_and(|r| double.contains(&r))
        || after_block(t, &format!("single_blocks{sep}"), sep)
            .is_some_and(|r| ["linear1", "linear2"].contains(&r))
        || top.contains(&t)
}

/// Whether a transformer pipeline's own converter reads every module of `adapter` (module
/// header): names in the original Flux/Wan layout (`crate::adapter::mapping::layouts`) beside
/// kohya CLIP-L modules, or a file with Qwen-Image's top-level `transformer_blocks` (or one of
/// its top-level `proj_out`, `norm_out.linear`, `time_text_embed.timestep_embedder.linear_1/2`)
/// under `lora_unet_` or `diffusion_model.` and every name under one of those prefixes.
pub(super) fn transformer_converted(adapter: &crate::adapter::Adapter) -> bool {
    use crate::adapter::mapping::{is_kohya_name, layouts};
    // Qwen-Image's blocks, or a top-level module its converter maps by name that no original
    // layout of another model has (`_convert_non_diffusers_qwen_lora_to_diffusers`
    // `top_level_modules`; its `img_in`/`txt_in` are BFL Flux's names too, so they do not tell).
    let qwen = |n: &str| {
        n.starts_with("lora_unet_transformer_blocks_")
            || n.starts_with("diffusion_model.transformer_blocks.")
            || original_tail(n).is_some_and(|(t, kohya)| {
                let t = if kohya {
                    t.to_owned()
                } else {
                    t.replace('.', "_")
                };
                [
                    "proj_out",
                    "norm_out_linear",
                    "time_text_embed_timestep_embedder_linear_1",
                    "time_text_embed_timestep_embedder_linear_2",
                ]
                .contains(&t.as_str())
            })
    };
    let prefixed = |n: &str| n.starts_with("lora_unet_") || n.starts_with("diffusion_model.");
    // Qwen-Image's loader also converts a PEFT-wrapped transformer's own state dict
    // (`transformer_blocks.0.img_mod.1.lora_A.default.weight`, no prefix: the `has_default`
    // branch strips `default.` and prefixes `transformer.`), told by a block module only
    // Qwen-Image has (`img_mod`, `txt_mod`, `img_mlp`, `txt_mlp`; diffusion8 fixtures).
    let default_keys = adapter.source.as_ref().is_some_and(|f| {
        let t = f.tensors();
        !t.is_empty() && t.iter().all(|x| x.name.contains("default."))
    });
    let qwen_block = |n: &str| {
        after_block(n, "transformer_blocks.", '.').is_some_and(|r| {
            ["img_mod.", "txt_mod.", "img_mlp.", "txt_mlp."]
                .iter()
                .any(|p| r.starts_with(p))
        })
    };
    if default_keys
        && adapter.modules.iter().any(|m| qwen_block(&m.name))
        && adapter
            .modules
            .iter()
            .all(|m| after_block(&m.name, "transformer_blocks.", '.').is_some())
    {
        return true;
    }
    let any_qwen = adapter.modules.iter().any(|m| qwen(&m.name));
    let original = |n: &str| layouts::targets(n, is_kohya_name(adapter.format, n)).is_some();
    // kohya Flux files carry CLIP-L modules (`lora_te1_…`) beside the transformer's; the Flux
    // converter passes them to the text encoder (`_convert_sd_scripts_to_ai_toolkit`).
    let encoder = |n: &str| n.starts_with("lora_te_") || n.starts_with("lora_te1_");
    adapter
        .modules
        .iter()
        .any(|m| original(&m.name) || qwen(&m.name))
        && adapter
            .modules
            .iter()
            .all(|m| original(&m.name) || (any_qwen && prefixed(&m.name)) || encoder(&m.name))
}

/// Whether diffusers' SD/SDXL kohya key rules read `a`: a kohya file that no transformer
/// pipeline converts itself ([`transformer_converted`]) and that is not in SD3's original layout
/// (which has its own rules). Moved from `facts.rs` (its 800-line guard).
pub(super) fn unet_key_rules_apply(a: &crate::adapter::Adapter) -> bool {
    a.format == crate::adapter::Format::Kohya
        && !transformer_converted(a)
        && sd3_original(a).is_none()
}

/// kohya-named Flux modules outside the double/single blocks (`img_in`, `txt_in`, `time_in`,
/// `vector_in`, `guidance_in`, `final_layer`) of a file diffusers converts as kohya Flux: it
/// renames them with no `transformer.` prefix and drops them (module header).
pub(super) fn flux_kohya_dropped(adapter: &crate::adapter::Adapter) -> Vec<String> {
    let flux = |n: &str| {
        n.strip_prefix("lora_unet_")
            .or_else(|| n.strip_prefix("diffusion_model."))
            .is_some_and(|r| {
                // The blocks, or a module only BFL Flux has (`img_in`/`txt_in` are Qwen-Image's
                // names too, which its converter keeps).
                [
                    "double_blocks",
                    "single_blocks",
                    "time_in",
                    "vector_in",
                    "guidance_in",
                    "final_layer",
                ]
                .iter()
                .any(|p| r.starts_with(p))
            })
    };
    if !transformer_converted(adapter) || !adapter.modules.iter().any(|m| flux(&m.name)) {
        return Vec::new();
    }
    let globals = [
        "img_in",
        "txt_in",
        "time_in",
        "vector_in",
        "guidance_in",
        "final_layer",
    ];
    adapter
        .modules
        .iter()
        .filter(|m| {
            let rest = m
                .name
                .strip_prefix("lora_unet_")
                .or_else(|| m.name.strip_prefix("diffusion_model."));
            rest.is_some_and(|r| globals.iter().any(|g| r.starts_with(g)))
        })
        .map(|m| m.name.clone())
        .collect()
}

/// `utils/state_dict_utils.py` `convert_state_dict`: `KEYS_TO_ALWAYS_REPLACE`, then the first
/// pattern of `mapping` that occurs (down-projection entries only: the up ones mirror them).
fn convert(key: &str, mapping: &[(&str, &str)]) -> String {
    let key = key.replace(".processor.", ".");
    match mapping.iter().find(|(from, _)| key.contains(from)) {
        Some((from, to)) => key.replace(from, to),
        None => key,
    }
}

const PEFT_TO_DIFFUSERS: &[(&str, &str)] = &[
    (".q_proj.lora_A", ".q_proj.lora_linear_layer.down"),
    (".k_proj.lora_A", ".k_proj.lora_linear_layer.down"),
    (".v_proj.lora_A", ".v_proj.lora_linear_layer.down"),
    (".out_proj.lora_A", ".out_proj.lora_linear_layer.down"),
    ("to_k.lora_A", "to_k.lora.down"),
    ("to_q.lora_A", "to_q.lora.down"),
    ("to_v.lora_A", "to_v.lora.down"),
    ("to_out.0.lora_A", "to_out.0.lora.down"),
];
const DIFFUSERS_OLD_TO_DIFFUSERS: &[(&str, &str)] = &[
    (".to_q_lora.down", ".q_proj.lora_linear_layer.down"),
    (".to_k_lora.down", ".k_proj.lora_linear_layer.down"),
    (".to_v_lora.down", ".v_proj.lora_linear_layer.down"),
    (".to_out_lora.down", ".out_proj.lora_linear_layer.down"),
];
const DIFFUSERS_TO_PEFT: &[(&str, &str)] = &[
    (".q_proj.lora_linear_layer.down", ".q_proj.lora_A"),
    (".k_proj.lora_linear_layer.down", ".k_proj.lora_A"),
    (".v_proj.lora_linear_layer.down", ".v_proj.lora_A"),
    (".out_proj.lora_linear_layer.down", ".out_proj.lora_A"),
    (".lora_linear_layer.down", ".lora_A"),
    (
        "text_projection.lora.down.weight",
        "text_projection.lora_A.weight",
    ),
];
const DIFFUSERS_OLD_TO_PEFT: &[(&str, &str)] = &[
    (".to_q_lora.down", ".q_proj.lora_A"),
    (".to_k_lora.down", ".k_proj.lora_A"),
    (".to_v_lora.down", ".v_proj.lora_A"),
    (".to_out_lora.down", ".out_proj.lora_A"),
    (".lora_linear_layer.down", ".lora_A"),
];

/// `lora_conversion_utils.py` `_convert_text_encoder_lora_key` of a kohya encoder module's
/// down key (`{name}.lora_down.weight`, `name` starting `lora_te_`, `lora_te1_` or `lora_te2_`).
pub(super) fn kohya_text_encoder_key(name: &str) -> String {
    let prefix = ["lora_te_", "lora_te1_", "lora_te2_"]
        .into_iter()
        .find(|p| name.starts_with(p))
        .unwrap_or("");
    let mut n = format!("{name}.lora_down.weight")
        .replace(prefix, "")
        .replace('_', ".");
    for (from, to) in [
        ("text.model", "text_model"),
        ("self.attn", "self_attn"),
        ("q.proj.lora", "to_q_lora"),
        ("k.proj.lora", "to_k_lora"),
        ("v.proj.lora", "to_v_lora"),
        ("out.proj.lora", "to_out_lora"),
        ("text.projection", "text_projection"),
    ] {
        n = n.replace(from, to);
    }
    if !(n.contains("self_attn") || n.contains("text_projection")) && n.contains("mlp") {
        n = n.replace(".lora.", ".lora_linear_layer.");
    }
    n
}

/// What `_load_lora_into_text_encoder` makes of one encoder's down keys (prefix removed):
/// `Err(())` when `convert_state_dict_to_diffusers` or `convert_state_dict_to_peft` cannot infer
/// their type (diffusers raises), else per key the module path when it ends as PEFT's
/// `{module}.lora_A.weight` (a key that does not is skipped as unexpected: `None`).
pub(super) fn text_encoder_keys(keys: &[String]) -> Result<Vec<Option<String>>, ()> {
    let any = |ks: &[String], m: &str| ks.iter().any(|k| k.contains(m));
    // convert_state_dict_to_diffusers
    let keys: Vec<String> = if any(keys, "to_out_lora") {
        keys.iter()
            .map(|k| convert(k, DIFFUSERS_OLD_TO_DIFFUSERS))
            .collect()
    } else if any(keys, ".lora_A.weight") {
        keys.iter().map(|k| convert(k, PEFT_TO_DIFFUSERS)).collect()
    } else if any(keys, "lora_linear_layer") {
        keys.to_vec()
    } else {
        return Err(());
    };
    // convert_state_dict_to_peft
    let table = if any(&keys, "to_out_lora") {
        DIFFUSERS_OLD_TO_PEFT
    } else if any(&keys, "lora_linear_layer") {
        DIFFUSERS_TO_PEFT
    } else {
        return Err(());
    };
    Ok(keys
        .iter()
        .map(|k| {
            convert(k, table)
                .strip_suffix(".lora_A.weight")
                .map(str::to_owned)
        })
        .collect())
}

/// The landed text-encoder modules whose rank diffusers 0.42.1 does not build. Without
/// `lora_adapter_metadata`, `_load_lora_into_text_encoder` (`loaders/lora_base.py`) records the
/// rank of only the modules named `….q_proj/k_proj/v_proj/out_proj/fc1/fc2`, in the encoder's
/// `named_modules()` order (per layer: CLIP's k, v, q, out_proj, then fc1, fc2), and
/// `utils/peft_utils.py` `get_peft_kwargs` makes the most common of them (the first on a tie)
/// `r`, the others a `rank_pattern`: any other module (`text_projection`) gets `r`, and a file
/// rank that differs makes transformers' `load_adapter` raise on the size mismatch (sweep10,
/// seed 61 case 33). Items: `(index, file rank, rank diffusers builds)`.
fn unbuilt_ranks(modules: &[Option<String>], ranks: &[usize]) -> Vec<(usize, usize, usize)> {
    const RANKED: [&str; 6] = ["k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2"];
    let place = |m: &str| -> Option<(usize, usize)> {
        let last = m.rsplit('.').next()?;
        let at = RANKED.iter().position(|r| *r == last)?;
        let layer = m
            .split(".layers.")
            .nth(1)
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Some((layer, at))
    };
    let mut ranked: Vec<((usize, usize), usize)> = modules
        .iter()
        .zip(ranks)
        .filter_map(|(m, &r)| Some((place(m.as_deref()?)?, r)))
        .collect();
    ranked.sort_by_key(|(at, _)| *at);
    // collections.Counter(...).most_common()[0][0]: the largest count, the first seen on a tie.
    let mut counts: Vec<(usize, usize)> = Vec::new();
    for (_, r) in &ranked {
        match counts.iter_mut().find(|(v, _)| v == r) {
            Some((_, n)) => *n += 1,
            None => counts.push((*r, 1)),
        }
    }
    let Some(max) = counts.iter().map(|(_, n)| *n).max() else {
        return vec![];
    };
    let r = counts
        .iter()
        .find(|(_, n)| *n == max)
        .map_or(0, |(v, _)| *v);
    modules
        .iter()
        .zip(ranks)
        .enumerate()
        .filter(|(_, (m, &fr))| m.as_deref().is_some_and(|m| place(m).is_none()) && fr != r)
        .map(|(i, (_, &fr))| (i, fr, r))
        .collect()
}

/// The text-encoder modules of `adapter` (a single file) as `_load_lora_into_text_encoder` takes
/// them: `(refused, skipped, rank not built)`, each item `module (why)`. Kohya names (`lora_te…`) count only in a
/// file diffusers converts (`sd_prefixed`: every key has an SD prefix); diffusers names
/// (`text_encoder.…`, `text_encoder_2.…`) are read from their stored `lora_A` key.
pub(super) fn text_encoder_findings(
    adapter: &crate::adapter::Adapter,
    sd_prefixed: bool,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    use crate::adapter::Data;
    use std::collections::BTreeMap;
    // component → (module name, key as diffusers converts it, rank)
    let mut groups: BTreeMap<&str, Vec<(&str, String, usize)>> = BTreeMap::new();
    for m in &adapter.modules {
        let Some((Data::Stored { key, .. }, _)) = m.factors.lora() else {
            continue;
        };
        let kohya = match crate::adapter::formats::kohya::split_prefix(&m.name) {
            Some(("lora_te" | "lora_te1", _)) => Some("text_encoder"),
            Some(("lora_te2", _)) => Some("text_encoder_2"),
            _ => None,
        };
        if let Some(comp) = kohya {
            if sd_prefixed {
                let k = kohya_text_encoder_key(&m.name);
                groups.entry(comp).or_default().push((&m.name, k, m.rank));
            }
            continue;
        }
        for comp in ["text_encoder", "text_encoder_2"] {
            if let Some(rest) = key.strip_prefix(comp).and_then(|r| r.strip_prefix('.')) {
                groups
                    .entry(comp)
                    .or_default()
                    .push((&m.name, rest.to_owned(), m.rank));
            }
        }
    }
    let metadata = adapter
        .metadata
        .iter()
        .any(|(k, _)| k == "lora_adapter_metadata");
    let (mut refused, mut skipped, mut unbuilt) = (Vec::new(), Vec::new(), Vec::new());
    for (comp, mods) in groups {
        let keys: Vec<String> = mods.iter().map(|(_, k, _)| k.clone()).collect();
        match text_encoder_keys(&keys) {
            Err(()) => refused.extend(mods.iter().map(|(n, _, _)| {
                format!("{n} ({comp}: no q/k/v/out_proj key to infer the state dict type from)")
            })),
            Ok(landed) => {
                if !metadata {
                    let ranks: Vec<usize> = mods.iter().map(|(_, _, r)| *r).collect();
                    unbuilt.extend(
                        unbuilt_ranks(&landed, &ranks)
                            .into_iter()
                            .map(|(i, fr, r)| {
                                format!(
                                    "{} ({comp}: rank {fr}, built with rank {r}: size mismatch)",
                                    mods[i].0
                                )
                            }),
                    );
                }
                skipped.extend(
                    mods.iter()
                        .zip(landed)
                        .filter(|(_, l)| l.is_none())
                        .map(|((n, k, _), _)| format!("{n} (kept as `{k}`)")),
                )
            }
        }
    }
    (refused, skipped, unbuilt)
}

/// Modules of a diffusers file that `loaders/peft.py` `load_lora_adapter` (diffusers 0.42.1)
/// leaves unconverted: it renames a denoiser's keys from the older names (`to_q.lora.down`,
/// `.processor.to_q_lora.down`) to PEFT's only when the component's first key (safetensors
/// lists keys sorted) lacks `lora_A`. When that key is PEFT's, the modules spelled the older way
/// match no layer and are skipped. Text encoders take another path (`text_encoder_findings`).
pub(super) fn unconverted_old_names(adapter: &crate::adapter::Adapter) -> Vec<String> {
    use crate::adapter::Data;
    use std::collections::BTreeMap;
    // component → (every key, (module, its lora_A-side key))
    type Keys<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let mut comps: BTreeMap<&str, Keys> = BTreeMap::new();
    for m in &adapter.modules {
        let Some((Data::Stored { key: a, .. }, b)) = m.factors.lora() else {
            continue;
        };
        let Some((comp, _)) = a.split_once('.') else {
            continue;
        };
        if !matches!(comp, "unet" | "transformer" | "prior") {
            continue;
        }
        let e = comps.entry(comp).or_default();
        e.0.push(a);
        for d in [Some(b), m.dora_magnitude.as_ref(), m.bias.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Data::Stored { key, .. } = d {
                e.0.push(key);
            }
        }
        e.1.push((&m.name, a));
    }
    let mut out = Vec::new();
    for (_, (keys, modules)) in comps {
        if keys.iter().min().is_some_and(|k| k.contains("lora_A")) {
            out.extend(
                modules
                    .iter()
                    .filter(|(_, a)| !a.contains("lora_A"))
                    .map(|(n, a)| format!("{n} (`{a}` stays as it is)")),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_index_goes_only_after_a_dot() {
        assert_eq!(
            drop_last_index("add.embedding.linear.2.lora.down.weight"),
            "add.embedding.linear.lora.down.weight"
        );
        assert_eq!(
            drop_last_index("time_embedding.linear_1.x"),
            "time_embedding.linear_1.x"
        );
        assert_eq!(drop_last_index("a.12b.3"), "a.12b");
        assert_eq!(drop_last_index("abc"), "abc");
    }

    #[test]
    fn diffusers_and_sgm_names_come_back_as_diffusers_reads_them() {
        // Paths printed by diffusers 0.42.1 itself (`_convert_unet_lora_key` +
        // `convert_unet_state_dict_to_peft`) for these keys.
        for (name, path) in [
            (
                "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
            ),
            (
                "lora_unet_up_blocks_0_resnets_1_time_emb_proj",
                "up_blocks.0.resnets.1.time_emb_proj",
            ),
            (
                "lora_unet_time_embedding_linear_2",
                "time_embedding.linear_2",
            ),
            (
                "lora_unet_input_blocks_1_0_emb_layers_1",
                "down_blocks.1.0.time_emb_proj",
            ),
            ("lora_unet_label_emb_0_2", "add_embedding.linear_2"),
            ("lora_unet_add_embedding_linear_2", "add.embedding.linear"),
        ] {
            assert_eq!(unet_module_path(name), path, "{name}");
        }
        assert_eq!(
            lost_unet_module("lora_unet_add_embedding_linear_1").as_deref(),
            Some("add.embedding.linear")
        );
        assert_eq!(
            lost_unet_module("lora_unet_input_blocks_1_0_emb_layers_1"),
            None
        );
        assert_eq!(
            lost_unet_module("lora_te1_text_model_encoder_layers_0_mlp_fc1"),
            None
        );
    }

    #[test]
    fn text_encoder_keys_as_diffusers_reads_them() {
        let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let text_encoder_keys = |keys: &[String]| {
            super::text_encoder_keys(keys)
                .map(|v| v.iter().map(Option::is_some).collect::<Vec<_>>())
        };
        // PEFT names: fine beside a q/k/v/out_proj module, refused without one (sweep seed 1
        // case 42: text_projection + fc1, "Could not automatically infer state dict type").
        assert_eq!(
            text_encoder_keys(&k(&[
                "text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
                "text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
            ])),
            Ok(vec![true, true])
        );
        assert_eq!(
            text_encoder_keys(&k(&[
                "text_projection.lora_A.weight",
                "text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
            ])),
            Err(())
        );
        // kohya: q_proj alone is refused (case 33); with an MLP module but no out_proj the
        // attention key stays `to_q_lora.down`; with out_proj everything lands.
        let q = kohya_text_encoder_key("lora_te1_encoder_layers_0_self_attn_q_proj");
        assert_eq!(q, "encoder.layers.0.self_attn.to_q_lora.down.weight");
        let fc = kohya_text_encoder_key("lora_te_encoder_layers_0_mlp_fc1");
        assert_eq!(fc, "encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight");
        let out = kohya_text_encoder_key("lora_te2_text_model_encoder_layers_1_self_attn_out_proj");
        assert_eq!(
            out,
            "text_model.encoder.layers.1.self_attn.to_out_lora.down.weight"
        );
        assert_eq!(text_encoder_keys(std::slice::from_ref(&q)), Err(()));
        assert_eq!(
            text_encoder_keys(&[q.clone(), fc.clone()]),
            Ok(vec![false, true])
        );
        assert_eq!(text_encoder_keys(&[q, fc, out]), Ok(vec![true, true, true]));
    }
}
