//! How diffusers 0.42.1 reads a kohya-named UNet module (`lora_unet_…`) and a text encoder's
//! LoRA keys, transcribed, so that `check --target diffusers` can tell which modules land nowhere
//! and which files it refuses. Owns only those string transcriptions and the UNet's module-name
//! vocabulary; the rules that use them are data in `rules/others.rs` (`diffusers.unet_key`,
//! `diffusers.te_type`, `diffusers.te_key`), evaluated in `facts.rs`.
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
//! Flux.2's, HunyuanVideo's and Z-Image's loaders (`Flux2LoraLoaderMixin`,
//! `HunyuanVideoLoraLoaderMixin`, `ZImageLoraLoaderMixin`) convert their trainers' names with
//! their own `lora_state_dict` converters; a file one of them reads is told by a name only that
//! model's original layout has ([`pipeline_of`]), and [`pipeline_findings`] transcribes what its
//! converter drops and where it raises (rules `diffusers.flux2_*`, `diffusers.hunyuan_video_*`,
//! `diffusers.z_image_*`; checked against diffusers' runs recorded by
//! `fixtures/gen/diffusers_loaders_fixtures.py`). A file of only names another model shares
//! (BFL Flux's blocks for Flux.2; Lumina 2's original names for Z-Image) is read as the first.
//!
//! Must not decide severities (the rule does); reads only tensor names, never tensor data.

use super::when::DiffusersModel;

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
fn original_tail(name: &str) -> Option<(&str, bool)> {
    match name.strip_prefix("lora_unet_") {
        Some(t) => Some((t, true)),
        None => name.strip_prefix("diffusion_model.").map(|t| (t, false)),
    }
}

/// `t` is `{pre}{digits}{sep}…`: the part after the separator.
fn after_block<'a>(t: &'a str, pre: &str, sep: char) -> Option<&'a str> {
    let rest = t.strip_prefix(pre)?;
    let n = rest.bytes().take_while(u8::is_ascii_digit).count();
    (n > 0).then_some(())?;
    rest[n..].strip_prefix(sep)
}

/// A name only Flux.2's original layout has (`convert_flux2_transformer_checkpoint_to_diffusers`:
/// the modulations shared by every block); its block names are BFL Flux's.
fn flux2_only(t: &str) -> bool {
    t.starts_with("double_stream_modulation_") || t.starts_with("single_stream_modulation")
}

/// A name only HunyuanVideo's original layout has (`convert_hunyuan_video_transformer_to_
/// diffusers`; BFL Flux writes `img_attn.qkv`, `img_mod.lin`, `img_mlp.0`, `modulation.lin`).
fn hunyuan_video_only(t: &str, kohya: bool) -> bool {
    let s = |x: &str| {
        if kohya {
            x.replace('.', "_")
        } else {
            x.to_owned()
        }
    };
    t.contains("individual_token_refiner")
        || ["img_mod.linear", "txt_mod.linear", "modulation.linear"]
            .iter()
            .any(|x| t.ends_with(&s(x)))
        || ["img_mlp.fc", "txt_mlp.fc"].iter().any(|x| t.contains(&s(x)))
        || [
            "txt_in.input_embedder",
            "txt_in.t_embedder",
            "txt_in.c_embedder",
            "time_in.mlp",
            "guidance_in.mlp",
            "img_in.proj",
        ]
        .iter()
        .any(|x| t.starts_with(&s(x)))
        // Dotted, the fused attention keeps its `_` (kohya Flux's `img_attn_qkv` is the same
        // string, so a kohya name alone does not tell).
        || (!kohya
            && ["img_attn_qkv", "txt_attn_qkv", "img_attn_proj", "txt_attn_proj"]
                .iter()
                .any(|x| t.contains(x)))
}

/// A name only Z-Image's original (Tongyi) layout has among the layouts lorakit knows: the
/// refiners, the main `layers.N.attention|feed_forward|adaLN_modulation`, the patch-keyed
/// embedder and final layer, the caption embedder. Lumina 2's original names are the same (its
/// own loader, `Lumina2LoraLoaderMixin`, is not modelled): such a file is read as Z-Image's.
fn z_image_only(t: &str, kohya: bool) -> bool {
    let sep = if kohya { '_' } else { '.' };
    let s = |x: &str| x.replace('.', &sep.to_string());
    [
        "noise_refiner.",
        "context_refiner.",
        "all_x_embedder",
        "all_final_layer",
        "cap_embedder.",
    ]
    .iter()
    .any(|x| t.starts_with(&s(x)))
        || after_block(t, &s("layers."), sep).is_some_and(|r| {
            ["attention", "feed_forward", "adaLN_modulation"]
                .iter()
                .any(|x| r.starts_with(x))
        })
}

/// Which of diffusers' Flux.2, HunyuanVideo and Z-Image loaders reads `adapter`, as far as its
/// module names tell (module header): one name of that model's original layout that no other
/// layout has. `None` for any other file (a file of only names BFL Flux shares is read as Flux's;
/// SD3's original names have their own rule).
pub(super) fn pipeline_of(adapter: &crate::adapter::Adapter) -> Option<DiffusersModel> {
    if sd3_original(adapter).is_some() {
        return None;
    }
    let tails: Vec<(&str, bool)> = adapter
        .modules
        .iter()
        .filter_map(|m| original_tail(&m.name))
        .collect();
    let any = |f: &dyn Fn(&str, bool) -> bool| tails.iter().any(|&(t, k)| f(t, k));
    if any(&|t, _| flux2_only(t)) {
        Some(DiffusersModel::Flux2)
    } else if any(&hunyuan_video_only) {
        Some(DiffusersModel::HunyuanVideo)
    } else if any(&z_image_only) {
        Some(DiffusersModel::ZImage)
    } else {
        None
    }
}

/// What the loader of `model` does with `adapter` (module header): `(refused, dropped)`, each
/// item `module or key (why)`. Refused: keys that make `load_lora_weights` raise; dropped:
/// modules it loads nothing of. Empty when `pipeline_of(adapter)` is not `model`.
pub(super) fn pipeline_findings(
    adapter: &crate::adapter::Adapter,
    model: DiffusersModel,
) -> (Vec<String>, Vec<String>) {
    if pipeline_of(adapter) != Some(model) {
        return (vec![], vec![]);
    }
    let keys: Vec<&str> = adapter
        .source
        .as_ref()
        .map(|f| f.tensors().iter().map(|t| t.name.as_str()).collect())
        .unwrap_or_default();
    match model {
        DiffusersModel::Flux2 => flux2_findings(adapter, &keys),
        DiffusersModel::HunyuanVideo => hunyuan_video_findings(adapter, &keys),
        DiffusersModel::ZImage => z_image_findings(adapter, &keys),
    }
}

/// The module `name` of `adapter` with its down key (`lora_A` side), if it is a LoRA.
fn down_key(m: &crate::adapter::LoraModule) -> Option<&str> {
    match m.factors.lora() {
        Some((crate::adapter::Data::Stored { key, .. }, _)) => Some(key),
        _ => None,
    }
}

/// `_convert_kohya_flux2_lora_to_diffusers`' kohya module names (after `lora_unet_`).
fn flux2_kohya_known(t: &str) -> bool {
    let double = [
        "img_attn_proj",
        "img_attn_qkv",
        "txt_attn_proj",
        "txt_attn_qkv",
        "img_mlp_0",
        "img_mlp_2",
        "txt_mlp_0",
        "txt_mlp_2",
    ];
    after_block(t, "double_blocks_", '_').is_some_and(|r| double.contains(&r))
        || after_block(t, "single_blocks_", '_')
            .is_some_and(|r| ["linear1", "linear2"].contains(&r))
        || [
            "img_in",
            "txt_in",
            "time_in_in_layer",
            "time_in_out_layer",
            "final_layer_linear",
        ]
        .contains(&t)
}

/// `_convert_non_diffusers_flux2_lora_to_diffusers`' module paths (after `diffusion_model.`).
fn flux2_dotted_known(t: &str) -> bool {
    let double = [
        "img_attn.qkv",
        "txt_attn.qkv",
        "img_attn.proj",
        "txt_attn.proj",
        "img_mlp.0",
        "img_mlp.2",
        "txt_mlp.0",
        "txt_mlp.2",
    ];
    after_block(t, "double_blocks.", '.').is_some_and(|r| double.contains(&r))
        || after_block(t, "single_blocks.", '.')
            .is_some_and(|r| ["linear1", "linear2"].contains(&r))
        || [
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
        ]
        .contains(&t)
}

/// `Flux2LoraLoaderMixin.lora_state_dict`: a file with any `.lora_down.weight` key goes to
/// `_convert_kohya_flux2_lora_to_diffusers`, which converts the LoRA modules of its table
/// ([`flux2_kohya_known`]) and drops every other key with a warning ("Unsupported keys for Kohya
/// Flux2 LoRA conversion": the modulations, `guidance_in`, the final `adaLN_modulation`, any
/// `diffusion_model.` name, any LyCORIS module). Else a file with a `diffusion_model.` key goes
/// to `_convert_non_diffusers_flux2_lora_to_diffusers`, which cuts `diffusion_model.` off every
/// key, converts the `lora_A/lora_B.weight` of its table ([`flux2_dotted_known`]), passes names
/// already under `transformer_blocks.`/`single_transformer_blocks.` and raises "`original_state_
/// dict` should be empty" for any other key (`.alpha` among them); `load_lora_weights` then
/// raises "Invalid adapter checkpoint" for a passed key without `lora`.
fn flux2_findings(adapter: &crate::adapter::Adapter, keys: &[&str]) -> (Vec<String>, Vec<String>) {
    if keys.iter().any(|k| k.contains(".lora_down.weight")) {
        let dropped = adapter
            .modules
            .iter()
            .filter(|m| {
                let kohya = m
                    .name
                    .strip_prefix("lora_unet_")
                    .is_some_and(flux2_kohya_known);
                let down = down_key(m) == Some(format!("{}.lora_down.weight", m.name).as_str());
                !(kohya && down)
            })
            .map(|m| {
                format!(
                    "{} (no name of the kohya Flux.2 converter: dropped)",
                    m.name
                )
            })
            .collect();
        return (vec![], dropped);
    }
    if keys.iter().any(|k| k.contains(".lokr_"))
        || !keys.iter().any(|k| k.starts_with("diffusion_model."))
    {
        return (vec![], vec![]);
    }
    let refused = keys
        .iter()
        .filter(|k| {
            let Some(rest) = k.strip_prefix("diffusion_model.") else {
                return true;
            };
            if [
                "single_transformer_blocks.",
                "transformer_blocks.",
                "sformer_blocks.",
            ]
            .iter()
            .any(|p| rest.starts_with(p))
            {
                return !rest.contains("lora");
            }
            let path = rest
                .strip_suffix(".lora_A.weight")
                .or_else(|| rest.strip_suffix(".lora_B.weight"));
            !path.is_some_and(flux2_dotted_known)
        })
        .map(|k| format!("{k} (left unconverted: ValueError)"))
        .collect();
    (refused, vec![])
}

/// `HunyuanVideoLoraLoaderMixin.lora_state_dict` converts a file only when a key contains
/// `img_attn_qkv` (`_convert_hunyuan_video_lora_to_diffusers`: `transformer.`/`diffusion_model.`
/// cut off, renames by substring, `transformer.` put back). There it chunks every key of a fused
/// `qkv` (`img_attn_qkv`, `txt_attn_qkv`, the token refiner's `self_attn_qkv`) in three, and a
/// 0-d `.alpha` raises "chunk expects at least a 1-dimensional tensor" (RuntimeError); nothing
/// renames kohya's `lora_down/lora_up`, so with them `load_lora_adapter` finds no `lora_B` key
/// and `get_peft_kwargs` raises (IndexError); an `.alpha` key elsewhere lacks `lora` and
/// `load_lora_weights` raises "Invalid LoRA checkpoint". A file it does not convert is read as
/// is: a key without `lora` (a dotted `.alpha`) raises the same, and otherwise `lora_unet_` and
/// `diffusion_model.` names fall under no `transformer.` prefix and nothing of them is applied.
fn hunyuan_video_findings(
    adapter: &crate::adapter::Adapter,
    keys: &[&str],
) -> (Vec<String>, Vec<String>) {
    let converted = keys.iter().any(|k| k.contains("img_attn_qkv"));
    let fused = |k: &str| {
        k.contains("img_attn_qkv")
            || k.contains("txt_attn_qkv")
            || (k.contains("txt_in") && k.contains("self_attn_qkv"))
    };
    let each = |f: &dyn Fn(&str) -> bool, why: &str| -> Vec<String> {
        keys.iter()
            .filter(|k| f(k))
            .map(|k| format!("{k} ({why})"))
            .collect()
    };
    if converted {
        let chunked = each(
            &|k| fused(k) && k.ends_with(".alpha"),
            "a 0-d tensor chunked in three: RuntimeError",
        );
        if !chunked.is_empty() {
            return (chunked, vec![]);
        }
        let kohya = each(
            &|k| k.ends_with(".lora_up.weight"),
            "lora_up is not renamed: no lora_B key, IndexError in get_peft_kwargs",
        );
        if !kohya.is_empty() {
            return (kohya, vec![]);
        }
        let no_lora = |k: &str| k.strip_prefix("lora_unet_").is_none() && k.ends_with(".alpha");
        return (each(&no_lora, "no `lora` in the key: ValueError"), vec![]);
    }
    let no_lora = each(&|k| !k.contains("lora"), "no `lora` in the key: ValueError");
    if !no_lora.is_empty() {
        return (no_lora, vec![]);
    }
    let dropped = adapter
        .modules
        .iter()
        .filter(|m| original_tail(&m.name).is_some())
        .map(|m| format!("{} (not converted: under no `transformer.` prefix)", m.name))
        .collect();
    (vec![], dropped)
}

/// `_convert_non_diffusers_z_image_lora_to_diffusers`' `convert_key` of a kohya module path (the
/// part after `lora_unet_`): every `_` becomes `.` but inside `to_q`/`to_k`/`to_v`/`to_out`/
/// `feed_forward`, then its `zimage_module_name_fixups` give seven names their `_` back.
fn z_image_kohya_path(t: &str) -> String {
    let parts: Vec<&str> = t.split('_').collect();
    let mut merged: Vec<String> = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let pair = parts.get(i..i + 2);
        let protected = pair.is_some_and(|p| {
            matches!(
                (p[0], p[1]),
                ("to", "q") | ("to", "k") | ("to", "v") | ("to", "out") | ("feed", "forward")
            )
        });
        if protected {
            merged.push(format!("{}_{}", parts[i], parts[i + 1]));
            i += 2;
        } else {
            merged.push(parts[i].to_owned());
            i += 1;
        }
    }
    let mut n = format!("{}.", merged.join("."));
    for (dotted, underscored) in [
        ("context.refiner.", "context_refiner."),
        ("noise.refiner.", "noise_refiner."),
        ("adaLN.modulation.", "adaLN_modulation."),
        ("all.final.layer.", "all_final_layer."),
        ("all.x.embedder.", "all_x_embedder."),
        ("cap.embedder.", "cap_embedder."),
        ("t.embedder.", "t_embedder."),
    ] {
        n = n.replace(dotted, underscored);
    }
    n.pop();
    n
}

/// Whether `path` is a Linear module of diffusers' `ZImageTransformer2DModel`
/// (`models/transformers/transformer_z_image.py` 0.42.1, listed from `named_modules()` of the
/// tiny model of `fixtures/gen/diffusers_loaders_fixtures.py`).
fn z_image_module(path: &str) -> bool {
    let patch = |p: &str| {
        p.split_once('-').is_some_and(|(a, b)| {
            [a, b]
                .iter()
                .all(|x| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit()))
        })
    };
    let block = |r: &str, norm: bool| {
        [
            "attention.to_q",
            "attention.to_k",
            "attention.to_v",
            "attention.to_out.0",
            "feed_forward.w1",
            "feed_forward.w2",
            "feed_forward.w3",
        ]
        .contains(&r)
            || (norm && r == "adaLN_modulation.0")
    };
    after_block(path, "layers.", '.').is_some_and(|r| block(r, true))
        || after_block(path, "noise_refiner.", '.').is_some_and(|r| block(r, true))
        || after_block(path, "context_refiner.", '.').is_some_and(|r| block(r, false))
        || path.strip_prefix("all_x_embedder.").is_some_and(patch)
        || path.strip_prefix("all_final_layer.").is_some_and(|r| {
            r.split_once('.').is_some_and(|(p, leaf)| {
                patch(p) && ["linear", "adaLN_modulation.1"].contains(&leaf)
            })
        })
        || ["cap_embedder.1", "t_embedder.mlp.0", "t_embedder.mlp.2"].contains(&path)
}

/// `ZImageLoraLoaderMixin.lora_state_dict` converts a file with an `.alpha`, `lora_unet_`,
/// `diffusion_model.` or `default.` key (`_convert_non_diffusers_z_image_lora_to_diffusers`;
/// LoKr files aside). kohya names become [`z_image_kohya_path`] with `.lora.down.weight` keys,
/// whose fused `qkv` it splits into `to_q/to_k/to_v` (skipped beside split keys) and whose bare
/// `out` it renames `to_out.0` (skipped beside one); dotted `lora_down` names keep their path but
/// a final `.out` (→ `to_out.0`); `lora_A` names keep theirs. A path that is no module of the
/// model ([`z_image_module`]: the original `x_embedder`, `final_layer.*`, a dotted `qkv`) loads
/// nothing. A key the conversion leaves behind raises "`state_dict` should be empty" (ValueError):
/// a LyCORIS module's, the `.alpha` of a `lora_A`-named `out` (renamed `to_out.0.alpha`, looked
/// up as `out.alpha`).
fn z_image_findings(
    adapter: &crate::adapter::Adapter,
    keys: &[&str],
) -> (Vec<String>, Vec<String>) {
    if keys.iter().any(|k| k.contains(".lokr_")) {
        return (vec![], vec![]);
    }
    let kohya_file = keys.iter().any(|k| k.starts_with("lora_unet_"));
    let mut dotted_kohya: Vec<String> = Vec::new();
    if kohya_file {
        dotted_kohya = adapter
            .modules
            .iter()
            .filter_map(|m| m.name.strip_prefix("lora_unet_").map(z_image_kohya_path))
            .collect();
    }
    let (mut refused, mut dropped) = (Vec::new(), Vec::new());
    for m in &adapter.modules {
        let Some(down) = down_key(m) else {
            refused.push(format!(
                "{} ({}: left unconverted, ValueError)",
                m.name,
                m.factors.algo()
            ));
            continue;
        };
        let a_form = down.ends_with(".lora_A.weight");
        let tail = m.name.strip_prefix("diffusion_model.").unwrap_or(&m.name);
        let paths: Vec<String> = match m.name.strip_prefix("lora_unet_").filter(|_| kohya_file) {
            Some(t) => {
                let p = z_image_kohya_path(t);
                let split = |block: &str, leaves: &[&str]| {
                    leaves
                        .iter()
                        .any(|l| dotted_kohya.contains(&format!("{block}.{l}")))
                };
                if let Some(block) = p.strip_suffix(".qkv") {
                    if split(block, &["to_q", "to_k", "to_v"]) {
                        vec![]
                    } else {
                        ["to_q", "to_k", "to_v"]
                            .iter()
                            .map(|l| format!("{block}.{l}"))
                            .collect()
                    }
                } else if let Some(block) = p.strip_suffix(".out") {
                    if split(block, &["to_out.0"]) {
                        vec![]
                    } else {
                        vec![format!("{block}.to_out.0")]
                    }
                } else {
                    vec![p]
                }
            }
            None if a_form => {
                let alpha = format!("{}.alpha", m.name);
                if tail.ends_with(".out") && keys.contains(&alpha.as_str()) {
                    refused.push(format!(
                        "{alpha} (renamed `….to_out.0.alpha`, looked up as `….out.alpha`: left, ValueError)"
                    ));
                }
                vec![tail.to_owned()]
            }
            None => match tail.strip_suffix(".out") {
                Some(block) => vec![format!("{block}.to_out.0")],
                None => vec![tail.to_owned()],
            },
        };
        if paths.is_empty() || !paths.iter().all(|p| z_image_module(p)) {
            let read = if paths.is_empty() {
                "skipped beside its split modules".to_owned()
            } else {
                format!("read as `{}`", paths.join("`, `"))
            };
            dropped.push(format!("{} ({read}: no module of Z-Image)", m.name));
        }
    }
    (refused, dropped)
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
/// their type (diffusers raises), else per key whether it ends as PEFT's `….lora_A.weight`
/// (a key that does not is skipped as unexpected).
pub(super) fn text_encoder_keys(keys: &[String]) -> Result<Vec<bool>, ()> {
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
        .map(|k| convert(k, table).ends_with(".lora_A.weight"))
        .collect())
}

/// The text-encoder modules of `adapter` (a single file) as `_load_lora_into_text_encoder` takes
/// them: `(refused, skipped)`, each item `module (why)`. Kohya names (`lora_te…`) count only in a
/// file diffusers converts (`sd_prefixed`: every key has an SD prefix); diffusers names
/// (`text_encoder.…`, `text_encoder_2.…`) are read from their stored `lora_A` key.
pub(super) fn text_encoder_findings(
    adapter: &crate::adapter::Adapter,
    sd_prefixed: bool,
) -> (Vec<String>, Vec<String>) {
    use crate::adapter::Data;
    use std::collections::BTreeMap;
    // component → (module name, key as diffusers converts it)
    let mut groups: BTreeMap<&str, Vec<(&str, String)>> = BTreeMap::new();
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
                groups.entry(comp).or_default().push((&m.name, k));
            }
            continue;
        }
        for comp in ["text_encoder", "text_encoder_2"] {
            if let Some(rest) = key.strip_prefix(comp).and_then(|r| r.strip_prefix('.')) {
                groups
                    .entry(comp)
                    .or_default()
                    .push((&m.name, rest.to_owned()));
            }
        }
    }
    let (mut refused, mut skipped) = (Vec::new(), Vec::new());
    for (comp, mods) in groups {
        let keys: Vec<String> = mods.iter().map(|(_, k)| k.clone()).collect();
        match text_encoder_keys(&keys) {
            Err(()) => refused.extend(mods.iter().map(|(n, _)| {
                format!("{n} ({comp}: no q/k/v/out_proj key to infer the state dict type from)")
            })),
            Ok(landed) => skipped.extend(
                mods.iter()
                    .zip(landed)
                    .filter(|(_, l)| !l)
                    .map(|((n, k), _)| format!("{n} (kept as `{k}`)")),
            ),
        }
    }
    (refused, skipped)
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
    fn z_image_kohya_names_come_back_as_diffusers_reads_them() {
        // Paths printed by diffusers 0.42.1's `_convert_non_diffusers_z_image_lora_to_diffusers`
        // itself for `lora_unet_{name}.lora_down/.lora_up.weight` (rank 3).
        for (name, path, module) in [
            ("layers_0_attention_to_q", "layers.0.attention.to_q", true),
            ("layers_0_feed_forward_w1", "layers.0.feed_forward.w1", true),
            (
                "noise_refiner_0_adaLN_modulation_0",
                "noise_refiner.0.adaLN_modulation.0",
                true,
            ),
            (
                "all_final_layer_2-1_adaLN_modulation_1",
                "all_final_layer.2-1.adaLN_modulation.1",
                true,
            ),
            ("all_x_embedder_2-1", "all_x_embedder.2-1", true),
            ("cap_embedder_1", "cap_embedder.1", true),
            ("t_embedder_mlp_0", "t_embedder.mlp.0", true),
            ("x_embedder", "x.embedder", false),
            (
                "final_layer_adaLN_modulation_1",
                "final.layer.adaLN_modulation.1",
                false,
            ),
        ] {
            assert_eq!(z_image_kohya_path(name), path, "{name}");
            assert_eq!(z_image_module(path), module, "{path}");
        }
        // The fused qkv and the bare out are split / renamed after the path (context_refiner.0.
        // attention.to_q/to_k/to_v, layers.1.attention.to_out.0 there).
        assert_eq!(
            z_image_kohya_path("context_refiner_0_attention_qkv"),
            "context_refiner.0.attention.qkv"
        );
        assert!(!z_image_module("context_refiner.0.adaLN_modulation.0"));
    }

    #[test]
    fn text_encoder_keys_as_diffusers_reads_them() {
        let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
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
