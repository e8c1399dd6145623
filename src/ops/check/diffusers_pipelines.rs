//! How diffusers 0.42.1's Flux.2, HunyuanVideo and Z-Image pipelines read a LoRA file in
//! their trainers' names, transcribed for `check --target diffusers`.
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

use super::diffusers_keys::{
    after_block, flux2_dotted_known, flux2_known, original_tail, sd3_original,
};
use super::when::DiffusersModel;

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
/// embedder and final layer, the caption embedder. Lumina 2's original names are the same: a
/// file at Lumina 2's width is read by its loader (`diffusers_families.rs`), any other as
/// Z-Image's.
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

/// Which of diffusers' Flux.2, HunyuanVideo, Z-Image, Lumina 2, LTX-Video and HiDream loaders
/// reads `adapter`, as far as its module names (and, for Lumina 2, widths) tell (module header):
/// one name of that model's original layout that no other layout has. `None` for any other file (a file of only names BFL Flux shares is read as Flux's;
/// SD3's original names have their own rule).
///
/// With `--base`, a file of only names BFL Flux and HunyuanVideo share ([`flux_hunyuan_video_shared`])
/// is HunyuanVideo's on a HunyuanVideo base (a `token_refiner.` tensor, either layout), and a
/// file of Lumina 2's (= Z-Image's) names is Lumina 2's on a diffusers Lumina 2 base
/// (`time_caption_embed.`), whatever its width.
pub(super) fn pipeline_of(
    adapter: &crate::adapter::Adapter,
    base: Option<&crate::io::Checkpoint>,
) -> Option<DiffusersModel> {
    let base_has = |mark: &str| base.is_some_and(|b| b.names().any(|n| n.contains(mark)));
    if sd3_original(adapter).is_some() {
        return None;
    }
    let tails: Vec<(&str, bool)> = adapter
        .modules
        .iter()
        .filter_map(|m| original_tail(&m.name))
        .collect();
    let any = |f: &dyn Fn(&str, bool) -> bool| tails.iter().any(|&(t, k)| f(t, k));
    // Lumina 2 names its modules as Z-Image does (`layers.N.attention.qkv`, `feed_forward.w1`)
    // and `Lumina2LoraLoaderMixin` converts them its own way (`diffusers_families.rs`); a file
    // at Lumina 2's width (2304; Z-Image's is 3840) is judged by Lumina 2's loader.
    let lumina2 =
        super::diffusers_families::lumina2_width(adapter) || base_has("time_caption_embed.");
    // HunyuanVideo's converter also takes the original names under `transformer.` (diffusers
    // strips it "to make sure both original and attempted diffusers loras work").
    let hv_transformer = adapter
        .modules
        .iter()
        .filter_map(|m| m.name.strip_prefix("transformer."))
        .any(|t| hunyuan_video_only(t, false));
    // A Flux.2 base (its shared modulations, the single blocks' fused projection) decides a
    // LoKr file or one of BFL names Flux shares (`diffusers_lokr.rs`).
    let flux2_base = base_has("double_stream_modulation_")
        || base_has("single_stream_modulation")
        || base_has(".to_qkv_mlp_proj.");
    let lokr = super::diffusers_lokr::lokr_file(adapter);
    if any(&|t, _| flux2_only(t))
        || super::diffusers_lokr::flux2_lokr_names(adapter)
        || (flux2_base && (lokr || !tails.is_empty()))
    {
        Some(DiffusersModel::Flux2)
    } else if any(&hunyuan_video_only)
        || hv_transformer
        || (!flux_hunyuan_video_shared(adapter).is_empty() && base_has("token_refiner."))
    {
        Some(DiffusersModel::HunyuanVideo)
    } else if let Some(model) = super::diffusers_converted::family_of(adapter, base) {
        // Ideogram 4 names its attention as Z-Image does (`layers.N.attention.qkv`) beside
        // names Z-Image lacks (`attention.o`, `adaln_modulation`).
        Some(model)
    } else if lokr && (base_has("all_x_embedder.") || base_has("cap_embedder.")) {
        // A LoKr file on a Z-Image base: `ZImageLoraLoaderMixin`'s LoKr branch
        // (`diffusers_lokr.rs` `z_image_findings`), whatever its names.
        Some(DiffusersModel::ZImage)
    } else if any(&z_image_only) && lumina2 {
        Some(DiffusersModel::Lumina2)
    } else if any(&z_image_only) {
        Some(DiffusersModel::ZImage)
    } else {
        super::diffusers_families::family_of(adapter, base_has("audio_proj_in"))
    }
}

/// The modules of Lumina 2's (= Z-Image's) original names in a file read as Z-Image's whose
/// widths tell neither model (no module at Lumina 2's 2304 or Z-Image's 3840 features): the
/// two checkpoints name their modules alike (`convert_lumina2_to_diffusers`,
/// `convert_z_image_transformer_checkpoint_to_diffusers`: `layers.N.attention.qkv`,
/// `feed_forward.w1`, `final_layer.`, `x_embedder.`), so only a width or a `--base` decides
/// which loader reads the file. Empty otherwise.
pub(super) fn lumina2_or_z_image(adapter: &crate::adapter::Adapter) -> Vec<String> {
    if pipeline_of(adapter, None) != Some(DiffusersModel::ZImage)
        || super::diffusers_families::z_image_width(adapter)
    {
        return Vec::new();
    }
    adapter
        .modules
        .iter()
        .filter(|m| original_tail(&m.name).is_some_and(|(t, k)| z_image_only(t, k)))
        .map(|m| m.name.clone())
        .collect()
}

/// The modules of `adapter` when every one is named as BFL Flux and HunyuanVideo both name a
/// module (else empty): kohya's `lora_unet_double_blocks_N_{img,txt}_attn_{qkv,proj}` (Flux's
/// `img_attn.qkv` and HunyuanVideo's `img_attn_qkv` are one string with `_`),
/// `single_blocks_N_linear1/2`, `final_layer_linear`, `final_layer_adaLN_modulation_1`, and
/// their dotted forms where the two layouts agree (`single_blocks.N.linear1`, `final_layer.…`).
/// Flux's loader converts such a file; HunyuanVideo's renames no kohya `lora_down` (it raises)
/// and converts no file without an `img_attn_qkv` key (nothing applied). Without `--base` the
/// file is judged as Flux's and the rule `diffusers.flux_or_hunyuan_video` names them.
pub(super) fn flux_hunyuan_video_shared(adapter: &crate::adapter::Adapter) -> Vec<String> {
    let shared = |t: &str, kohya: bool| {
        let sep = if kohya { '_' } else { '.' };
        let s = |x: &str| x.replace('.', &sep.to_string());
        let double = after_block(t, &s("double_blocks."), sep).is_some_and(|r| {
            kohya
                && [
                    "img_attn_qkv",
                    "img_attn_proj",
                    "txt_attn_qkv",
                    "txt_attn_proj",
                ]
                .contains(&r)
        });
        let single = after_block(t, &s("single_blocks."), sep)
            .is_some_and(|r| r == "linear1" || r == "linear2");
        double || single || t == s("final_layer.linear") || t == s("final_layer.adaLN_modulation.1")
    };
    let all = !adapter.modules.is_empty()
        && adapter
            .modules
            .iter()
            .all(|m| original_tail(&m.name).is_some_and(|(t, k)| shared(t, k)));
    if all {
        adapter.modules.iter().map(|m| m.name.clone()).collect()
    } else {
        Vec::new()
    }
}

/// What the loader of `model` does with `adapter` (module header): `(refused, dropped)`, each
/// item `module or key (why)`. Refused: keys that make `load_lora_weights` raise; dropped:
/// modules it loads nothing of. Empty when `pipeline_of(adapter)` is not `model`.
pub(super) fn pipeline_findings(
    adapter: &crate::adapter::Adapter,
    base: Option<&crate::io::Checkpoint>,
    model: DiffusersModel,
) -> (Vec<String>, Vec<String>) {
    if pipeline_of(adapter, base) != Some(model) {
        return (vec![], vec![]);
    }
    let keys: Vec<&str> = adapter.adapter_keys();
    match model {
        DiffusersModel::Flux2 => flux2_findings(adapter, &keys),
        DiffusersModel::HunyuanVideo => hunyuan_video_findings(adapter, &keys),
        DiffusersModel::ZImage => z_image_findings(adapter, &keys),
        DiffusersModel::Lumina2 => super::diffusers_families::lumina2_findings(adapter, &keys),
        DiffusersModel::LtxVideo => super::diffusers_families::ltx_video_findings(adapter, &keys),
        DiffusersModel::Ltx2 => super::diffusers_families::ltx2_findings(adapter, &keys),
        DiffusersModel::Flux3 => super::diffusers_families::flux3_findings(adapter, &keys),
        DiffusersModel::HiDream => super::diffusers_families::hidream_findings(&keys),
        DiffusersModel::FluxFal => super::diffusers_families::fal_kontext_findings(adapter, &keys),
        DiffusersModel::FluxControl => {
            super::diffusers_families::flux_control_findings(adapter, &keys)
        }
        DiffusersModel::Anima
        | DiffusersModel::Krea2
        | DiffusersModel::Ideogram4
        | DiffusersModel::AceStep
        | DiffusersModel::MiniMaxH3
        | DiffusersModel::ErnieImage => super::diffusers_converted::findings(adapter, &keys, model),
    }
}

/// `(refused, dropped)` of whichever of Anima's, Krea 2's, Ideogram 4's, ACE-Step's and MiniMax-H3's loaders reads `adapter` (with `base`, as
/// [`pipeline_of`] decides); empty for any other file.
pub(super) fn converted(
    adapter: &crate::adapter::Adapter,
    base: Option<&crate::io::Checkpoint>,
) -> (Vec<String>, Vec<String>) {
    match pipeline_of(adapter, base) {
        Some(model) if super::diffusers_converted::reads(model) => {
            pipeline_findings(adapter, base, model)
        }
        _ => (vec![], vec![]),
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
    flux2_known(
        t,
        '_',
        &[
            "img_attn_proj",
            "img_attn_qkv",
            "txt_attn_proj",
            "txt_attn_qkv",
            "img_mlp_0",
            "img_mlp_2",
            "txt_mlp_0",
            "txt_mlp_2",
        ],
        &[
            "img_in",
            "txt_in",
            "time_in_in_layer",
            "time_in_out_layer",
            "final_layer_linear",
        ],
    )
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
    if super::diffusers_lokr::lokr_file(adapter) {
        return (super::diffusers_lokr::flux2_refused(adapter), vec![]);
    }
    if !keys.iter().any(|k| k.starts_with("diffusion_model.")) {
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
        // PEFT's `lora_A` is chunked as its `lora_B` is (sweep7, against diffusers 0.42.1 on the
        // tiny model): `remap_txt_in_` splits the token refiner's `self_attn_qkv.lora_A` rows in
        // three (too few chunks: ValueError; else A of r/3 rows beside B of r columns: a size
        // mismatch on load), and `remap_norm_scale_shift_` swaps the halves of the final
        // modulation's `lora_A` rows beside `lora_B`'s (one row: ValueError; more: another ΔW).
        let mut refused = each(
            &|k| {
                k.contains("txt_in") && k.contains("self_attn_qkv") && k.ends_with(".lora_A.weight")
            },
            "lora_A's rows chunked in three like lora_B's: ValueError or a size mismatch on load",
        );
        let mut swapped = Vec::new();
        for m in &adapter.modules {
            let a = format!("{}.lora_A.weight", m.name);
            if m.name.ends_with("final_layer.adaLN_modulation.1") && keys.contains(&a.as_str()) {
                if m.rank == 1 {
                    refused.push(format!("{a} (one row chunked in two: ValueError)"));
                } else {
                    swapped.push(format!(
                        "{} (lora_A's rows swapped in halves like lora_B's: another ΔW)",
                        m.name
                    ));
                }
            }
        }
        if !refused.is_empty() {
            return (refused, vec![]);
        }
        let no_lora = |k: &str| k.strip_prefix("lora_unet_").is_none() && k.ends_with(".alpha");
        return (each(&no_lora, "no `lora` in the key: ValueError"), swapped);
    }
    let no_lora = each(&|k| !k.contains("lora"), "no `lora` in the key: ValueError");
    if !no_lora.is_empty() {
        return (no_lora, vec![]);
    }
    // Original names under `transformer.` are left as they are and name no module of the
    // diffusers model: where no module of the file is a diffusers path, PEFT's
    // `inject_adapter_in_model` raises NoMatchingPeftModuleError ("Target modules … not found in
    // the base model"); otherwise they are unexpected keys (sweep7 formats seed 31).
    let original = |t: &str| {
        crate::adapter::mapping::layouts::targets(t, false).is_some()
            || hunyuan_video_only(t, false)
    };
    let under_transformer: Vec<&str> = adapter
        .modules
        .iter()
        .filter_map(|m| m.name.strip_prefix("transformer."))
        .collect();
    if !under_transformer.is_empty()
        && under_transformer.len() == adapter.modules.len()
        && under_transformer.iter().all(|t| original(t))
    {
        let refused = adapter
            .modules
            .iter()
            .map(|m| format!("{} (not converted: no module of the model has this name, NoMatchingPeftModuleError)", m.name))
            .collect();
        return (refused, vec![]);
    }
    let unconverted_tf = adapter
        .modules
        .iter()
        .filter(|m| m.name.strip_prefix("transformer.").is_some_and(original))
        .map(|m| {
            format!(
                "{} (not converted: an unexpected key under `transformer.`)",
                m.name
            )
        });
    let dropped = adapter
        .modules
        .iter()
        .filter(|m| original_tail(&m.name).is_some())
        .map(|m| format!("{} (not converted: under no `transformer.` prefix)", m.name))
        .chain(unconverted_tf)
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
        return super::diffusers_lokr::z_image_findings(adapter, keys, z_image_module);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
