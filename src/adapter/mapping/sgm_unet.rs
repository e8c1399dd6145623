//! sd-scripts' SDXL LoRA names on a diffusers-layout SDXL UNet (`unet/` of
//! `stabilityai/stable-diffusion-xl-base-1.0`).
//!
//! kohya sd-scripts trains SDXL on its own copy of the SGM UNet (`library/sdxl_original_unet.py`:
//! `input_blocks` / `middle_block` / `output_blocks`), so its files name modules
//! `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`. diffusers 0.42.1 loads them onto
//! its `UNet2DConditionModel` (`loaders/lora_conversion_utils.py`
//! `_maybe_map_sgm_blocks_to_diffusers` with the UNet config's `layers_per_block` = lpb, then
//! `_convert_unet_lora_key`), and [`diffusers_weights`] renames as it does:
//!
//! * `input_blocks.i.j` (i ≥ 1): block b = (i−1) div (lpb+1), layer l = (i−1) mod (lpb+1);
//!   j = 1 → `down_blocks.b.attentions.l`, j = 0 → `down_blocks.b.resnets.l`, and `…0.op` →
//!   `down_blocks.b.downsamplers.0.conv`;
//! * `middle_block.{0,1,2}` → `mid_block.{resnets.0, attentions.0, resnets.1}`;
//! * `output_blocks.i.j`: b = i div (lpb+1), l = i mod (lpb+1); j = 0, 1, 2 →
//!   `up_blocks.b.{resnets.l, attentions.l, upsamplers.0}`;
//! * in a resnet `in_layers.2` → `conv1`, `out_layers.3` → `conv2`, `emb_layers.1` →
//!   `time_emb_proj`, `skip_connection` → `conv_shortcut`; `time_embed.{0,2}` →
//!   `time_embedding.linear_{1,2}`, `label_emb.0.{0,2}` → `add_embedding.linear_{1,2}`,
//!   `input_blocks.0.0` → `conv_in`, `out.2` → `conv_out`.
//!
//! The rest of the name (inside an attention block: `transformer_blocks_0_attn1_to_q`) is matched
//! against the base's own paths with dots as underscores. lpb is read off the base (the resnets of
//! `down_blocks.0`), which is what the config states. Used only for a `lora_unet_` name the
//! ordinary matching placed nowhere, on a base with diffusers' UNet names (`conv_in.weight`,
//! `down_blocks.0.resnets.0.…`) at the root. Must not read tensor data.

use crate::adapter::formats::kohya;

/// The base weight(s) sd-scripts' SGM-named module `name` lands on in a diffusers UNet, as
/// diffusers renames it (module doc); `None` when the name is no SGM UNet name, the base no
/// diffusers UNet, or the renamed path names no base weight.
pub fn diffusers_weights<'a>(
    name: &str,
    kohya_name: bool,
    names: &[&'a str],
) -> Option<Vec<&'a str>> {
    if !kohya_name {
        return None;
    }
    let ("lora_unet", rest) = kohya::split_prefix(name)? else {
        return None;
    };
    if !names.contains(&"conv_in.weight") {
        return None;
    }
    let lpb = (0..)
        .take_while(|l| {
            let p = format!("down_blocks.0.resnets.{l}.");
            names.iter().any(|n| n.starts_with(&p))
        })
        .count();
    if lpb == 0 {
        return None;
    }
    let (path, tail) = diffusers_path(rest, lpb)?;
    let found: Vec<&str> = names
        .iter()
        .filter(|n| {
            n.strip_suffix(".weight")
                .and_then(|m| m.strip_prefix(path.as_str()))
                .is_some_and(|m| match &tail {
                    None => m.is_empty(),
                    Some(t) => m
                        .strip_prefix('.')
                        .is_some_and(|m| m.replace('.', "_") == *t),
                })
        })
        .copied()
        .collect();
    (!found.is_empty()).then_some(found)
}

/// The diffusers module path of SGM name `rest` (underscores) and what remains of the name below
/// it (underscores, matched against the base), `None` for a name outside the renames.
fn diffusers_path(rest: &str, lpb: usize) -> Option<(String, Option<String>)> {
    let whole = |p: &str| Some((p.to_owned(), None));
    match rest {
        "time_embed_0" => return whole("time_embedding.linear_1"),
        "time_embed_2" => return whole("time_embedding.linear_2"),
        "label_emb_0_0" => return whole("add_embedding.linear_1"),
        "label_emb_0_2" => return whole("add_embedding.linear_2"),
        "input_blocks_0_0" => return whole("conv_in"),
        "out_2" => return whole("conv_out"),
        _ => {}
    }
    let index = |s: &str| -> Option<(usize, String)> {
        let (i, t) = s.split_once('_').unwrap_or((s, ""));
        Some((i.parse().ok()?, t.to_owned()))
    };
    let (block, rest) = if let Some(r) = rest.strip_prefix("input_blocks_") {
        ("input", r)
    } else if let Some(r) = rest.strip_prefix("middle_block_") {
        ("middle", r)
    } else {
        ("output", rest.strip_prefix("output_blocks_")?)
    };
    let (i, rest) = index(rest)?;
    let (inner, tail) = match block {
        "middle" => {
            let inner = ["resnets.0", "attentions.0", "resnets.1"].get(i)?;
            return finish(format!("mid_block.{inner}"), &rest);
        }
        _ => index(&rest)?,
    };
    let kind = |j: usize| ["resnets", "attentions", "upsamplers"].get(j).copied();
    let path = if block == "input" {
        let (b, l) = (i.checked_sub(1)? / (lpb + 1), (i - 1) % (lpb + 1));
        if inner == 0 && tail == "op" {
            return whole(&format!("down_blocks.{b}.downsamplers.0.conv"));
        }
        match kind(inner)? {
            "upsamplers" => return None,
            k => format!("down_blocks.{b}.{k}.{l}"),
        }
    } else {
        let (b, l) = (i / (lpb + 1), i % (lpb + 1));
        match kind(inner)? {
            "upsamplers" => format!("up_blocks.{b}.upsamplers.0"),
            k => format!("up_blocks.{b}.{k}.{l}"),
        }
    };
    finish(path, &tail)
}

/// `path` and the rest of the name below it, a resnet's SGM layer names renamed.
fn finish(path: String, tail: &str) -> Option<(String, Option<String>)> {
    if path.contains(".resnets.") {
        let layer = match tail {
            "in_layers_2" => "conv1",
            "out_layers_3" => "conv2",
            "emb_layers_1" => "time_emb_proj",
            "skip_connection" => "conv_shortcut",
            _ => return None,
        };
        return Some((format!("{path}.{layer}"), None));
    }
    Some((path, (!tail.is_empty()).then(|| tail.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A diffusers SDXL-like UNet with lpb 2 (two blocks: down 0 without attention).
    const BASE: &[&str] = &[
        "conv_in.weight",
        "conv_out.weight",
        "time_embedding.linear_1.weight",
        "add_embedding.linear_2.weight",
        "down_blocks.0.resnets.0.conv1.weight",
        "down_blocks.0.resnets.1.conv2.weight",
        "down_blocks.0.downsamplers.0.conv.weight",
        "down_blocks.1.resnets.1.time_emb_proj.weight",
        "down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q.weight",
        "down_blocks.1.attentions.1.proj_in.weight",
        "mid_block.attentions.0.transformer_blocks.1.ff.net.0.proj.weight",
        "mid_block.resnets.1.conv_shortcut.weight",
        "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_out.0.weight",
        "up_blocks.0.upsamplers.0.conv.weight",
        "up_blocks.1.resnets.0.conv1.weight",
    ];

    #[test]
    fn sgm_names_land_where_diffusers_puts_them() {
        let w = |n: &str| diffusers_weights(n, true, BASE).map(|v| v[0]);
        for (sgm, want) in [
            ("lora_unet_input_blocks_0_0", "conv_in.weight"),
            ("lora_unet_out_2", "conv_out.weight"),
            ("lora_unet_time_embed_0", "time_embedding.linear_1.weight"),
            ("lora_unet_label_emb_0_2", "add_embedding.linear_2.weight"),
            (
                "lora_unet_input_blocks_1_0_in_layers_2",
                "down_blocks.0.resnets.0.conv1.weight",
            ),
            (
                "lora_unet_input_blocks_2_0_out_layers_3",
                "down_blocks.0.resnets.1.conv2.weight",
            ),
            (
                "lora_unet_input_blocks_3_0_op",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "lora_unet_input_blocks_5_0_emb_layers_1",
                "down_blocks.1.resnets.1.time_emb_proj.weight",
            ),
            (
                "lora_unet_input_blocks_5_1_transformer_blocks_0_attn1_to_q",
                "down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q.weight",
            ),
            (
                "lora_unet_input_blocks_5_1_proj_in",
                "down_blocks.1.attentions.1.proj_in.weight",
            ),
            (
                "lora_unet_middle_block_1_transformer_blocks_1_ff_net_0_proj",
                "mid_block.attentions.0.transformer_blocks.1.ff.net.0.proj.weight",
            ),
            (
                "lora_unet_middle_block_2_skip_connection",
                "mid_block.resnets.1.conv_shortcut.weight",
            ),
            (
                "lora_unet_output_blocks_2_1_transformer_blocks_0_attn2_to_out_0",
                "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_out.0.weight",
            ),
            (
                "lora_unet_output_blocks_2_2_conv",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "lora_unet_output_blocks_3_0_in_layers_2",
                "up_blocks.1.resnets.0.conv1.weight",
            ),
        ] {
            assert_eq!(w(sgm), Some(want), "{sgm}");
        }
        // Not SGM names, not renamed, or no such base weight.
        for other in [
            "lora_unet_down_blocks_0_resnets_0_conv1",
            "lora_te1_text_model_encoder_layers_0_mlp_fc1",
            "lora_unet_input_blocks_1_0_in_layers_0",
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            "lora_unet_middle_block_3_proj_in",
        ] {
            assert_eq!(w(other), None, "{other}");
        }
        // A base with another layout (the SGM single file itself) is left alone.
        let sgm = ["model.diffusion_model.input_blocks.0.0.weight"];
        assert_eq!(
            diffusers_weights("lora_unet_input_blocks_0_0", true, &sgm),
            None
        );
    }
}
