//! ACE-Step 1.5 adapters on ComfyUI's layout of the model, where the DiT decoder sits under
//! `decoder.` beside the condition encoder (`encoder.lyric_encoder.…`, whose module paths repeat
//! the decoder's).
//!
//! ComfyUI `comfy/lora.py` `model_lora_keys_unet`, its `ACEStep15` branch (the last one, so it
//! overrides every earlier entry of the same key), builds its key map from the model's own state
//! dict: for EVERY `diffusion_model.decoder.{k}.weight` it maps `base_model.model.{k}` (the
//! official trainer's PEFT keys) and `lycoris_{k with . → _}` (LyCORIS/LoKr) onto that weight.
//! [`decoder_weights`] resolves a module name the same way, against the base's actual keys under
//! each root a ComfyUI checkpoint or a bare diffusion-model file uses (`model.diffusion_model.`,
//! `diffusion_model.`, none): attention, MLP, embedders alike, and a `lycoris_` name lands on the
//! decoder only, never on the encoder's module of the same path.
//!
//! Where two decoder weights flatten to one `lycoris_` name ComfyUI keeps the one last in its
//! state-dict order; lorakit does not know that order and reports the module ambiguous. Must not
//! read tensor data.

use crate::adapter::formats::kohya;

/// The roots a ComfyUI ACE-Step 1.5 decoder is stored under: a ComfyUI checkpoint's, the
/// model's own state dict's, a bare diffusion-model file's.
const ROOTS: &[&str] = &["model.diffusion_model.", "diffusion_model.", ""];

/// Which module names ComfyUI's map holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `base_model.model.{k}` or `lycoris_{k}`: the names the `ACEStep15` branch itself maps,
    /// which override any other match.
    ComfyKey,
    /// A bare `{k}` (the `base_model.model.` root removed, as a PEFT folder's names are): no
    /// ComfyUI key, taken only where nothing else matched.
    Bare,
}

/// The base weights module `name` lands on under ComfyUI's ACEStep15 key map, and which form
/// the name has; `None` when the name is no such key or the base holds no decoder weight of it.
/// More than one weight is ambiguous (two roots, or two paths with one `lycoris_` spelling).
pub fn decoder_weights<'a>(
    name: &str,
    kohya_name: bool,
    names: &[&'a str],
) -> Option<(Form, Vec<&'a str>)> {
    let (form, path): (Form, String) = if kohya_name {
        match kohya::split_prefix(name) {
            Some(("lycoris", rest)) => (Form::ComfyKey, rest.to_owned()),
            _ => return None,
        }
    } else if let Some(rest) = name.strip_prefix("base_model.model.") {
        (Form::ComfyKey, rest.to_owned())
    } else {
        (Form::Bare, name.to_owned())
    };
    let found: Vec<&str> = names
        .iter()
        .filter(|n| {
            ROOTS.iter().any(|root| {
                n.strip_prefix(root)
                    .and_then(|r| r.strip_prefix("decoder."))
                    .and_then(|r| r.strip_suffix(".weight"))
                    .is_some_and(|k| {
                        if kohya_name {
                            k.replace('.', "_") == path
                        } else {
                            k == path
                        }
                    })
            })
        })
        .copied()
        .collect();
    (!found.is_empty()).then_some((form, found))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &[&str] = &[
        "decoder.layers.0.self_attn.q_proj.weight",
        "decoder.layers.0.mlp.up_proj.weight",
        "decoder.proj_in.1.weight",
        "encoder.lyric_encoder.layers.0.self_attn.q_proj.weight",
    ];

    #[test]
    fn every_decoder_weight_is_mapped_as_comfyui_maps_it() {
        let w = |n, k| decoder_weights(n, k, BASE);
        assert_eq!(
            w("base_model.model.layers.0.mlp.up_proj", false),
            Some((Form::ComfyKey, vec!["decoder.layers.0.mlp.up_proj.weight"]))
        );
        assert_eq!(
            w("lycoris_layers_0_self_attn_q_proj", true),
            Some((
                Form::ComfyKey,
                vec!["decoder.layers.0.self_attn.q_proj.weight"]
            ))
        );
        assert_eq!(
            w("proj_in.1", false),
            Some((Form::Bare, vec!["decoder.proj_in.1.weight"]))
        );
        // No decoder weight of the path, another kohya prefix, the encoder's own path.
        assert_eq!(w("base_model.model.layers.1.mlp.up_proj", false), None);
        assert_eq!(w("lora_unet_layers_0_self_attn_q_proj", true), None);
        assert_eq!(
            w(
                "base_model.model.lyric_encoder.layers.0.self_attn.q_proj",
                false
            ),
            None
        );
        // One path under two roots is ambiguous.
        let two = [
            "decoder.proj_in.1.weight",
            "diffusion_model.decoder.proj_in.1.weight",
        ];
        assert_eq!(
            decoder_weights("lycoris_proj_in_1", true, &two)
                .unwrap()
                .1
                .len(),
            2
        );
    }
}
