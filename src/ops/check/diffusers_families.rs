//! How diffusers 0.42.1's Lumina 2, LTX-Video and HiDream pipelines read a LoRA file in their
//! trainers' names, transcribed for `check --target diffusers` (the loaders of Flux.2,
//! HunyuanVideo and Z-Image are `diffusers_pipelines.rs`, which asks here first).
//!
//! - `Lumina2LoraLoaderMixin.lora_state_dict` runs `_convert_non_diffusers_lumina2_lora_to_
//!   diffusers` when a key starts with `diffusion_model.`: it cuts 16 characters off every key,
//!   counts the distinct block indices of `noise_refiner.N.`, `context_refiner.N.` and
//!   `layers.N.` and pops, for each index below that count, `attention.qkv`, `attention.out`,
//!   `feed_forward.w1..3` (and `adaLN_modulation.1` outside the context refiner) as
//!   `lora_A/lora_B.weight` — a missing one raises `KeyError` —, splits the qkv's `lora_B` at
//!   `[2304, 768, 768]` (other rows: `RuntimeError`) and raises `ValueError` for any key left
//!   (an `.alpha`, the final layer, the embedders). A file with no `diffusion_model.` key keeps
//!   its names; only `transformer.` keys reach the model (kohya `lora_unet_` ones: nothing
//!   applied). Lumina 2 shares its original names with Z-Image; a file is Lumina 2's when a
//!   module of those names has its width, 2304 (Z-Image's is 3840).
//! - `LTXVideoLoraLoaderMixin` (`_convert_non_diffusers_ltxv_lora_to_diffusers`): with a
//!   `diffusion_model.` key, every key must have it (else `ValueError`), which it swaps for
//!   `transformer.`; it renames none of the original checkpoint's names (`patchify_proj`,
//!   `adaln_single.…`, which `convert_ltx_transformer_checkpoint_to_diffusers` makes `proj_in`,
//!   `time_embed.…`), so nothing of those is applied. Told by `patchify_proj`, a name only
//!   LTX's original layout has.
//! - `LTX2LoraLoaderMixin` (`_convert_non_diffusers_ltx2_lora_to_diffusers`): with a
//!   `diffusion_model.` key it keeps only the keys under it (others dropped without a word),
//!   renames `patchify_proj`, `audio_patchify_proj`, the adaLN embedders (`adaln_single`,
//!   `audio_adaln_single`, `av_ca_*_adaln_single`, `prompt_adaln_single`) to the model's names
//!   and prefixes `transformer.`. Told by a name only LTX-2 has (`audio_…`, `av_ca_…`,
//!   `audio_to_video_attn`), or a shared one on a base with `audio_proj_in`.
//! - `Flux3LoraLoaderMixin` (`_convert_non_diffusers_flux3_lora_to_diffusers`): with a
//!   `diffusion_model.` key, strips it where present, renames by string replacement
//!   (`content_mode_blocks.`, `single_blocks.`, `q_proj`, `attn_out`, `mlp_in`, …) and prefixes
//!   every key with `transformer.`. Told by the mode blocks or a single block's `q_proj`.
//! - `HiDreamImageLoraLoaderMixin` (`_convert_non_diffusers_hidream_lora_to_diffusers`): a key
//!   holding `diffusion_model` makes every key need to start with it (else `ValueError`); the
//!   rest are diffusers' own names. Told by `double_stream_blocks.` / `single_stream_blocks.`.
//!
//! - `FluxLoraLoaderMixin` sends a file with a `base_model` key (and no kohya, XLabs or BFL
//!   control key) to `_convert_fal_kontext_lora_to_diffusers`, which pops, as `lora_A/lora_B`,
//!   every module of FLUX.1's 19 double blocks (`img_mod.lin`, `txt_mod.lin`, `img_attn.qkv`,
//!   `txt_attn.qkv`, `img_mlp.0/2`, `txt_mlp.0/2`, `img_attn.proj`, `txt_attn.proj`), 38 single
//!   blocks (`modulation.lin`, `linear1`, `linear2`) and `final_layer.linear` under
//!   `base_model.model.` (a missing one: `KeyError`), splits `linear1`'s `lora_B` at
//!   `[3072, 3072, 3072, 12288]` and raises `ValueError` for any key left: only a complete
//!   FLUX.1-sized file loads. Told by BFL block names under `base_model.model.`.
//!
//! - Before fal's, `FluxLoraLoaderMixin` sends a file with a `query_norm.scale` key (and no
//!   kohya or XLabs key) to `_convert_bfl_flux_control_lora_to_diffusers` (BFL's FLUX.1
//!   Depth/Canny "-lora" files), which pops under their bare BFL names, as `lora_A/lora_B`
//!   (`.bias` where present), `time_in`, `vector_in`, `guidance_in` (when a key holds
//!   `guidance`), `txt_in`, `img_in`, every module of the 19 double and 38 single blocks, the
//!   final layer, and each block's q/k `norm.*.scale` (a missing one: `KeyError`), splits
//!   `linear1` at FLUX.1's widths and raises `ValueError` for any key left. A complete file
//!   loads: `img_in` wider than the model's `x_embedder` widens it with zero columns
//!   (`_maybe_expand_transformer_param_shape_or_error_`) and the norm scales overwrite the
//!   model's (`_load_norm_into_transformer`). Told by `query_norm.scale`, as diffusers tells it.
//!
//! Checked against diffusers' runs recorded by `fixtures/gen/diffusion8_fixtures.py`
//! (`fixtures/diffusion8/*/MANIFEST.json`; BFL control: `diffusion9_fixtures.py`). Must not decide severities (the rules in
//! `rules/others.rs` do); reads only tensor names and module shapes, never tensor data.

use super::when::DiffusersModel;

/// Lumina-Image-2.0's hidden width, the split the converter hard-codes (q 2304, k and v 768).
const LUMINA2_WIDTH: usize = 2304;
const LUMINA2_QKV_ROWS: usize = 2304 + 768 + 768;

/// The part of a key or module name after `diffusion_model.`.
fn dotted_tail(name: &str) -> Option<&str> {
    name.strip_prefix("diffusion_model.")
}

/// Whether a module of Lumina 2's (= Z-Image's) original names has Lumina 2's width: a fused
/// `attention.qkv` or `attention.out` reading 2304 features.
pub(super) fn lumina2_width(adapter: &crate::adapter::Adapter) -> bool {
    adapter.modules.iter().any(|m| {
        (m.name.ends_with("attention.qkv") || m.name.ends_with("attention_qkv"))
            && m.in_features == LUMINA2_WIDTH
            || (m.name.ends_with("attention.out") || m.name.ends_with("attention_out"))
                && m.in_features == LUMINA2_WIDTH
                && m.out_features == LUMINA2_WIDTH
    })
}

/// Whether a module of Z-Image's (= Lumina 2's) original names has Z-Image's width, 3840: a
/// fused `attention.qkv` or `attention.out` reading that many features.
pub(super) fn z_image_width(adapter: &crate::adapter::Adapter) -> bool {
    adapter.modules.iter().any(|m| {
        (m.name.ends_with("attention.qkv") || m.name.ends_with("attention_qkv"))
            && m.in_features == Z_IMAGE_WIDTH
            || (m.name.ends_with("attention.out") || m.name.ends_with("attention_out"))
                && m.in_features == Z_IMAGE_WIDTH
                && m.out_features == Z_IMAGE_WIDTH
    })
}

/// Z-Image-Turbo's hidden width (`ZImageTransformer2DModel` `dim`).
const Z_IMAGE_WIDTH: usize = 3840;

/// LTX-Video's, HiDream's or (fal, BFL control) Flux's loader, as far as the names tell (module
/// header); `None` otherwise.
pub(super) fn family_of(
    adapter: &crate::adapter::Adapter,
    ltx2_base: bool,
) -> Option<DiffusersModel> {
    let tails = || adapter.modules.iter().filter_map(|m| dotted_tail(&m.name));
    let keys = keys_of(adapter);
    let has = |s: &str| keys.iter().any(|k| k.contains(s));
    let fal = has("base_model")
        && !has(".lora_down.weight")
        && !has("processor")
        && !has("query_norm.scale")
        && adapter.modules.iter().any(|m| {
            m.name.starts_with("base_model.model.double_blocks.")
                || m.name.starts_with("base_model.model.single_blocks.")
        });
    // `FluxLoraLoaderMixin.lora_state_dict`'s order: kohya (`.lora_down.weight`), XLabs
    // (`processor`), then BFL control (`query_norm.scale`), then fal.
    let bfl_control = has("query_norm.scale") && !has(".lora_down.weight") && !has("processor");
    if bfl_control {
        Some(DiffusersModel::FluxControl)
    } else if fal {
        Some(DiffusersModel::FluxFal)
    } else if tails().any(flux3_only) {
        Some(DiffusersModel::Flux3)
    } else if tails().any(ltx2_only) {
        Some(DiffusersModel::Ltx2)
    } else if tails().any(|t| t.starts_with("patchify_proj")) {
        // LTX-Video's, unless the base is LTX-2 (whose loader renames these names too).
        Some(if ltx2_base {
            DiffusersModel::Ltx2
        } else {
            DiffusersModel::LtxVideo
        })
    } else if adapter.modules.iter().any(|m| {
        let t = dotted_tail(&m.name).unwrap_or(&m.name);
        let t = t.strip_prefix("transformer.").unwrap_or(t);
        t.starts_with("double_stream_blocks.") || t.starts_with("single_stream_blocks.")
    }) {
        Some(DiffusersModel::HiDream)
    } else {
        None
    }
}

/// A module path (after `diffusion_model.`) only LTX-2 has: its audio stream and the
/// audio-video cross-attention (`LTX2VideoTransformer3DModel`, the originals
/// `_convert_non_diffusers_ltx2_lora_to_diffusers` renames).
fn ltx2_only(t: &str) -> bool {
    t.starts_with("audio_")
        || t.starts_with("av_ca_")
        || [
            ".audio_attn",
            ".audio_to_video_attn.",
            ".video_to_audio_attn.",
            ".audio_ff.",
        ]
        .iter()
        .any(|x| t.contains(x))
}

/// A module path (after `diffusion_model.`) only Flux.3's original layout has: its mode blocks,
/// or a single block's `q_proj`/`k_proj`/`v_proj`/`attn_out`/`mlp_in`/`mlp_out` (BFL Flux and
/// Flux.2 write `linear1`/`linear2` there).
fn flux3_only(t: &str) -> bool {
    t.starts_with("content_mode_blocks.")
        || t.starts_with("txt_mode_blocks.")
        || super::diffusers_keys::after_block(t, "single_blocks.", '.').is_some_and(|r| {
            [
                "q_proj", "k_proj", "v_proj", "attn_out", "mlp_in", "mlp_out",
            ]
            .contains(&r)
        })
}

/// `(refused, dropped)` for a loader that, once a file has a `diffusion_model.` key, keeps only
/// the modules under it (and those under `kept`): the others are dropped, each said by `why`.
fn outside_diffusion_model(
    adapter: &crate::adapter::Adapter,
    keys: &[&str],
    kept: &[&str],
    why: impl Fn(&str) -> String,
) -> (Vec<String>, Vec<String>) {
    if !keys.iter().any(|k| k.starts_with("diffusion_model.")) {
        return (vec![], vec![]);
    }
    let dropped = adapter
        .modules
        .iter()
        .map(|m| m.name.as_str())
        .filter(|n| !n.starts_with("diffusion_model.") && !kept.iter().any(|p| n.starts_with(p)))
        .map(why)
        .collect();
    (vec![], dropped)
}

/// `(refused, dropped)` for Flux.3's loader (module header): with a `diffusion_model.` key it
/// prefixes every key with `transformer.` after stripping that, so a module under any other
/// root (`transformer.`) lands nowhere; the rest all land.
pub(super) fn flux3_findings(
    adapter: &crate::adapter::Adapter,
    keys: &[&str],
) -> (Vec<String>, Vec<String>) {
    outside_diffusion_model(adapter, keys, &[], |n| {
        format!("{n} (renamed `transformer.{n}`: no such module)")
    })
}

/// `(refused, dropped)` for LTX-2's loader (module header): with a `diffusion_model.` key, the
/// modules of other keys (it keeps only those; `text_embedding_projection.` ones go to the
/// connectors), which it drops without a word; the renamed rest all land.
pub(super) fn ltx2_findings(
    adapter: &crate::adapter::Adapter,
    keys: &[&str],
) -> (Vec<String>, Vec<String>) {
    outside_diffusion_model(adapter, keys, &["text_embedding_projection."], |n| {
        format!("{n} (not under `diffusion_model.`: dropped)")
    })
}

/// The file's tensor names.
fn keys_of(adapter: &crate::adapter::Adapter) -> Vec<&str> {
    adapter.adapter_keys()
}

/// FLUX.1's block counts, width and `linear1` rows as fal's converter hard-codes them.
const FAL_DOUBLE: usize = 19;
const FAL_SINGLE: usize = 38;
const FAL_LINEAR1_ROWS: usize = 3 * 3072 + 12288;

/// FLUX.1's block modules in BFL's names, as both BFL-format converters (fal's Kontext, BFL's
/// control) pop them: every double block's ten, then every single block's three.
fn flux1_block_modules(prefix: &str) -> Vec<String> {
    const DOUBLE: [&str; 10] = [
        "img_mod.lin",
        "txt_mod.lin",
        "img_attn.qkv",
        "txt_attn.qkv",
        "img_mlp.0",
        "img_mlp.2",
        "txt_mlp.0",
        "txt_mlp.2",
        "img_attn.proj",
        "txt_attn.proj",
    ];
    let mut out = Vec::with_capacity(FAL_DOUBLE * DOUBLE.len() + FAL_SINGLE * 3);
    for i in 0..FAL_DOUBLE {
        out.extend(
            DOUBLE
                .iter()
                .map(|m| format!("{prefix}double_blocks.{i}.{m}")),
        );
    }
    for i in 0..FAL_SINGLE {
        out.extend(
            ["modulation.lin", "linear1", "linear2"]
                .iter()
                .map(|m| format!("{prefix}single_blocks.{i}.{m}")),
        );
    }
    out
}

/// The modules of `need` whose `lora_A` or `lora_B` weight the file lacks (the converters pop
/// both and raise `KeyError` on the first missing one).
fn missing_pairs<'a>(need: &'a [String], keys: &'a [&str]) -> impl Iterator<Item = &'a String> {
    need.iter().filter(|n| {
        ["lora_A", "lora_B"]
            .iter()
            .any(|ab| !keys.contains(&format!("{n}.{ab}.weight").as_str()))
    })
}

/// The first three missing names with `why`, then how many more (`what` they are).
fn first_missing(missing: &[String], why: &str, what: &str) -> Vec<String> {
    let mut out: Vec<String> = missing
        .iter()
        .take(3)
        .map(|n| format!("{n} (missing: KeyError; {why})"))
        .collect();
    if missing.len() > 3 {
        out.push(format!("{} more {what} (missing)", missing.len() - 3));
    }
    out
}

/// The keys a converter that raises `ValueError` on leftovers leaves (`converted` says which it
/// pops), as refusals.
fn left_unconverted<'a>(
    keys: &'a [&str],
    converted: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = String> + 'a {
    keys.iter()
        .filter(move |k| !converted(k))
        .map(|k| format!("{k} (left unconverted: ValueError)"))
}

/// A single block's `linear1` of other rows than FLUX.1's, which the converters `torch.split`.
fn linear1_refusal(m: &crate::adapter::LoraModule) -> Option<String> {
    (m.name.ends_with(".linear1") && m.out_features != FAL_LINEAR1_ROWS).then(|| {
        format!(
            "{} ({} rows, split at [3072, 3072, 3072, 12288]: RuntimeError)",
            m.name, m.out_features
        )
    })
}

/// `(refused, dropped)` for fal's Kontext converter (module header): the modules it needs and
/// does not find (the first few, then how many more), `linear1` of other rows, and the keys it
/// leaves. Bias keys it pops are those its `in original_state_dict_keys` tests find (the
/// prefixed ones of the MLPs, projections, single-block modulation, `linear2` and final layer).
pub(super) fn fal_kontext_findings(
    adapter: &crate::adapter::Adapter,
    keys: &[&str],
) -> (Vec<String>, Vec<String>) {
    const P: &str = "base_model.model.";
    let mut need = flux1_block_modules(P);
    need.push(format!("{P}final_layer.linear"));
    let popped_bias = |k: &str| {
        k.strip_suffix(".lora_A.bias")
            .or_else(|| k.strip_suffix(".lora_B.bias"))
            .is_some_and(|m| {
                need.iter().any(|n| n == m)
                    && [
                        "mlp.0",
                        "mlp.2",
                        "attn.proj",
                        "modulation.lin",
                        "linear2",
                        "final_layer.linear",
                    ]
                    .iter()
                    .any(|s| m.ends_with(s))
            })
    };
    let missing: Vec<String> = missing_pairs(&need, keys).cloned().collect();
    let mut refused = first_missing(
        &missing,
        "fal's converter needs FLUX.1's 19 double and 38 single blocks",
        "modules",
    );
    refused.extend(adapter.modules.iter().filter_map(linear1_refusal));
    refused.extend(left_unconverted(keys, |k| {
        let module = k
            .strip_suffix(".lora_A.weight")
            .or_else(|| k.strip_suffix(".lora_B.weight"));
        module.is_some_and(|m| need.iter().any(|n| n == m)) || popped_bias(k)
    }));
    (refused, vec![])
}

/// `(refused, dropped)` for BFL's control converter (module header): the LoRA modules and norm
/// scales it pops and does not find (the first few, then how many more; `guidance_in` only when
/// a key holds `guidance`), `linear1` of other rows than FLUX.1's, and the keys it leaves. It
/// pops each module's `lora_A/lora_B` `.bias` where present.
pub(super) fn flux_control_findings(
    adapter: &crate::adapter::Adapter,
    keys: &[&str],
) -> (Vec<String>, Vec<String>) {
    let mut need: Vec<String> = [
        "time_in.in_layer",
        "time_in.out_layer",
        "vector_in.in_layer",
        "vector_in.out_layer",
        "txt_in",
        "img_in",
        "final_layer.linear",
        "final_layer.adaLN_modulation.1",
    ]
    .map(String::from)
    .into();
    if keys.iter().any(|k| k.contains("guidance")) {
        need.extend([
            "guidance_in.in_layer".into(),
            "guidance_in.out_layer".into(),
        ]);
    }
    need.extend(flux1_block_modules(""));
    let mut norms: Vec<String> = Vec::new();
    for i in 0..FAL_DOUBLE {
        norms.extend(["img_attn", "txt_attn"].iter().flat_map(|a| {
            ["query_norm", "key_norm"].map(|n| format!("double_blocks.{i}.{a}.norm.{n}.scale"))
        }));
    }
    for i in 0..FAL_SINGLE {
        norms.extend(
            ["query_norm", "key_norm"].map(|n| format!("single_blocks.{i}.norm.{n}.scale")),
        );
    }
    let missing: Vec<String> = missing_pairs(&need, keys)
        .chain(norms.iter().filter(|n| !keys.contains(&n.as_str())))
        .cloned()
        .collect();
    let mut refused = first_missing(
        &missing,
        "BFL's control converter needs FLUX.1's 19 double and 38 single blocks",
        "modules or norm scales",
    );
    refused.extend(
        adapter
            .modules
            .iter()
            .filter(|m| m.name.starts_with("single_blocks."))
            .filter_map(linear1_refusal),
    );
    refused.extend(left_unconverted(keys, |k| {
        let module = [
            "lora_A.weight",
            "lora_B.weight",
            "lora_A.bias",
            "lora_B.bias",
        ]
        .iter()
        .find_map(|s| k.strip_suffix(s)?.strip_suffix('.'));
        module.is_some_and(|m| need.iter().any(|n| n == m)) || norms.iter().any(|n| n == k)
    }));
    (refused, vec![])
}

/// `(refused, dropped)` for Lumina 2's loader (module header).
pub(super) fn lumina2_findings(
    adapter: &crate::adapter::Adapter,
    keys: &[&str],
) -> (Vec<String>, Vec<String>) {
    if !keys.iter().any(|k| k.starts_with("diffusion_model.")) {
        let dropped = adapter
            .modules
            .iter()
            .filter(|m| !m.name.starts_with("transformer."))
            .map(|m| {
                format!(
                    "{} (no `diffusion_model.` key: not converted, under no `transformer.` prefix)",
                    m.name
                )
            })
            .collect();
        return (vec![], dropped);
    }
    // `k[len("diffusion_model."):]` on every key, prefixed or not.
    let mut left: Vec<String> = keys
        .iter()
        .map(|k| k.get("diffusion_model.".len()..).unwrap_or("").to_owned())
        .collect();
    let mut refused = Vec::new();
    for (group, norm) in [
        ("noise_refiner", true),
        ("context_refiner", false),
        ("layers", true),
    ] {
        let count = block_count(&left, group);
        for i in 0..count {
            let mut leaves = vec![
                "attention.qkv",
                "attention.out",
                "feed_forward.w1",
                "feed_forward.w2",
                "feed_forward.w3",
            ];
            if norm {
                leaves.push("adaLN_modulation.1");
            }
            for leaf in leaves {
                for ab in ["lora_A", "lora_B"] {
                    let want = format!("{group}.{i}.{leaf}.{ab}.weight");
                    match left.iter().position(|k| *k == want) {
                        Some(at) => {
                            left.remove(at);
                        }
                        None => refused.push(format!("diffusion_model.{want} (missing: KeyError)")),
                    }
                }
                if leaf == "attention.qkv" {
                    let name = format!("diffusion_model.{group}.{i}.{leaf}");
                    if let Some(m) = adapter.modules.iter().find(|m| m.name == name) {
                        if m.out_features != LUMINA2_QKV_ROWS {
                            refused.push(format!(
                                "{name} ({} rows, split at [2304, 768, 768]: RuntimeError)",
                                m.out_features
                            ));
                        }
                    }
                }
            }
        }
    }
    refused.extend(
        left.iter()
            .map(|k| format!("diffusion_model.{k} (left unconverted: ValueError)")),
    );
    (refused, vec![])
}

/// `len({int(m.group(1)) for re.search(rf"{group}\.(\d+)\.", key)})`.
fn block_count(keys: &[String], group: &str) -> usize {
    let pat = format!("{group}.");
    let mut seen = std::collections::BTreeSet::new();
    for k in keys {
        // `re.search` takes the first place the pattern matches.
        for (at, _) in k.match_indices(&pat) {
            let rest = &k[at + pat.len()..];
            let n = rest.bytes().take_while(u8::is_ascii_digit).count();
            if n > 0 && rest[n..].starts_with('.') {
                seen.insert(rest[..n].to_owned());
                break;
            }
        }
    }
    seen.len()
}

/// `(refused, dropped)` for LTX-Video's loader (module header).
pub(super) fn ltx_video_findings(
    adapter: &crate::adapter::Adapter,
    keys: &[&str],
) -> (Vec<String>, Vec<String>) {
    if !keys.iter().any(|k| k.starts_with("diffusion_model.")) {
        return (vec![], vec![]);
    }
    let refused = keys
        .iter()
        .filter(|k| !k.starts_with("diffusion_model."))
        .map(|k| format!("{k} (no `diffusion_model.` prefix: ValueError)"))
        .collect();
    let dropped = adapter
        .modules
        .iter()
        .filter(|m| {
            dotted_tail(&m.name)
                .is_some_and(|t| t.starts_with("patchify_proj") || t.starts_with("adaln_single."))
        })
        .map(|m| format!("{} (the original checkpoint's name, not renamed: no module of LTX-Video; LTX-2's loader renames it)", m.name))
        .collect();
    (refused, dropped)
}

/// `(refused, dropped)` for HiDream's loader (module header).
pub(super) fn hidream_findings(keys: &[&str]) -> (Vec<String>, Vec<String>) {
    if !keys.iter().any(|k| k.contains("diffusion_model")) {
        return (vec![], vec![]);
    }
    let refused = keys
        .iter()
        .filter(|k| !k.starts_with("diffusion_model"))
        .map(|k| format!("{k} (not under `diffusion_model`: ValueError)"))
        .collect();
    (refused, vec![])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_counts_are_distinct_indices_as_the_converter_counts_them() {
        let keys: Vec<String> = [
            "layers.0.attention.qkv.lora_A.weight",
            "layers.0.attention.qkv.lora_B.weight",
            "layers.2.feed_forward.w1.lora_A.weight",
            "noise_refiner.1.attention.out.lora_A.weight",
            "x_embedder.lora_A.weight",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(block_count(&keys, "layers"), 2);
        assert_eq!(block_count(&keys, "noise_refiner"), 1);
        assert_eq!(block_count(&keys, "context_refiner"), 0);
    }
}
