//! Name helpers of the check rules: the layer index a loader reads from a module name, the
//! layer-wise kind of a name, which names diffusers' SD reader takes as kohya, an item's
//! subject and a number's short spelling. Must not: know the rules or the adapter; pure
//! functions of strings.

/// `layers.N.rest` → (`layers.*.rest`, N).
/// The N of the first `layers.N.` in a name, as SGLang's `get_layer_id` reads it (regex
/// `layers\.(\d+)\.`, python/sglang/srt/layers/utils/common.py:14 @0.5.23).
pub(super) fn layers_index(name: &str) -> Option<usize> {
    name.match_indices("layers.").find_map(|(at, m)| {
        let rest = &name[at + m.len()..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        (digits > 0 && rest[digits..].starts_with('.'))
            .then(|| rest[..digits].parse().ok())
            .flatten()
    })
}

pub(super) fn layer_kind(name: &str) -> Option<(String, usize)> {
    let parts: Vec<&str> = name.split('.').collect();
    let i = parts
        .iter()
        .position(|p| *p == "layers" || *p == "h" || *p == "blocks")?;
    let idx: usize = parts.get(i + 1)?.parse().ok()?;
    let mut k = parts.clone();
    k[i + 1] = "*";
    Some((k.join("."), idx))
}

/// diffusers' SD/SDXL reader converts kohya keys only when every key starts with one of these
/// (`lora_pipeline.py` `StableDiffusionLoraLoaderMixin.lora_state_dict`).
/// Names under a pipeline component (`unet.`, `text_encoder.`, `text_encoder_2.`,
/// `transformer.`: diffusers' own single files, `lora_base.py` prefix filter) are placed as they
/// are.
pub(super) fn is_sd_prefixed(name: &str) -> bool {
    is_kohya_sd_prefixed(name) || crate::adapter::formats::diffusers::has_component(name)
}

/// [`is_sd_prefixed`]'s kohya half: `lora_unet_`, `lora_te_`, `lora_te1_`, `lora_te2_`.
pub(super) fn is_kohya_sd_prefixed(name: &str) -> bool {
    matches!(
        crate::adapter::formats::kohya::split_prefix(name),
        Some(("lora_unet" | "lora_te" | "lora_te1" | "lora_te2", _))
    )
}

/// The module or key a finding's item is about: the item up to its first ` (` or `: `.
pub(super) fn item_subject(item: &str) -> &str {
    let end = [item.find(" ("), item.find(": ")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(item.len());
    &item[..end]
}

pub(super) fn short(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// A full tensor (or `… (modules_to_save)` item) of the model's `lm_head`.
pub(super) fn is_lm_head_tensor(name: &str) -> bool {
    name.starts_with("lm_head") || name.contains(".lm_head")
}
