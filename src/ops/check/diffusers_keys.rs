//! How diffusers 0.42.1 reads a kohya-named UNet module (`lora_unet_…`), transcribed, so that
//! `check --target diffusers` can tell which modules land nowhere. Owns only that string
//! transcription and the UNet's module-name vocabulary; the rule that uses it is data in
//! `rules/others.rs` (`diffusers.unet_key`), evaluated in `facts.rs`.
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
//! Must not look at tensor data or decide severities (the rule does).

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

/// For a kohya UNet module diffusers cannot place: the path it looks up instead (a component
/// no UNet module has). `None` for names without `lora_unet_` and names that land.
pub(super) fn lost_unet_module(name: &str) -> Option<String> {
    name.strip_prefix("lora_unet_")?;
    let path = unet_module_path(name);
    path.split('.')
        .any(|c| !(c.bytes().all(|b| b.is_ascii_digit()) || UNET_NAMES.contains(&c)))
        .then_some(path)
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
}
