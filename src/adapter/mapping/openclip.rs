//! CLIP text encoders stored in OpenCLIP's layout as targets of modules named in HF CLIP's.
//!
//! A single-file SDXL checkpoint stores its second encoder (OpenCLIP-G) as
//! `conditioner.embedders.1.model.transformer.resblocks.N.…` (SD2's `cond_stage_model.model.…`
//! and the refiner's `conditioner.embedders.0.model.…` likewise), while adapters name it in HF
//! CLIP's layout: kohya `lora_te2_text_model_encoder_layers_N_self_attn_q_proj`, diffusers
//! `text_encoder_2.text_model.encoder.layers.N.…`, ComfyUI `text_encoders.clip_g.transformer.…`.
//! The correspondence is ComfyUI's, which renames the checkpoint when it loads it
//! (`comfy/utils.py` @00728eb `transformers_convert`, called by `clip_text_transformers_convert`):
//! `attn.out_proj` ↔ `self_attn.out_proj`, `mlp.c_fc` ↔ `mlp.fc1`, `mlp.c_proj` ↔ `mlp.fc2`,
//! and the fused `attn.in_proj_weight` `[3d, d]` split into `self_attn.{q,k,v}_proj` = rows
//! `[0, d)`, `[d, 2d)`, `[2d, 3d)` (`shape_from = weights.shape[0] // 3`).
//!
//! lorakit does not rename the checkpoint: a q/k/v module lands on its [`RowSlice`] of
//! `in_proj_weight`, which the merge updates in place (as ComfyUI's `calculate_weight` in
//! `comfy/lora.py` @41444b5 patches a `weight.narrow(dim, start, size)` view when a patch key
//! carries an offset). The fused `in_proj_bias` is not sliced: a q/k/v module's `lora_B.bias`
//! finds no bias of its own and is reported unmatched.
//!
//! [`super::resolve_in`] asks here only for a module that the ordinary matching placed nowhere
//! (or only on another component's tensor), so every earlier match is unchanged. Must not read
//! tensor data.

use super::placement::{
    expected_shape, placed_on_rows, root_of, BaseComponents, Placement, RowSlice, Unmatched,
};
use crate::adapter::model::{LoraModule, ModuleKind};
use crate::dtype::Dtype;

/// HF CLIP module below `encoder.layers.N.` → (OpenCLIP tensor below `transformer.resblocks.N.`,
/// which third of it for q/k/v): `comfy/utils.py` @00728eb `transformers_convert`
/// (`resblock_to_replace` and the `in_proj_{weight,bias}` split). `ln_1`/`ln_2` are left out:
/// kohya and PEFT target only the Linear layers.
const MAP: &[(&str, &str, Option<usize>)] = &[
    ("self_attn.q_proj", "attn.in_proj_weight", Some(0)),
    ("self_attn.k_proj", "attn.in_proj_weight", Some(1)),
    ("self_attn.v_proj", "attn.in_proj_weight", Some(2)),
    ("self_attn.out_proj", "attn.out_proj.weight", None),
    ("mlp.fc1", "mlp.c_fc.weight", None),
    ("mlp.fc2", "mlp.c_proj.weight", None),
];

/// (layer, OpenCLIP tensor suffix, q/k/v index) of an HF CLIP layer module: a kohya name
/// (`…text_model_encoder_layers_N_self_attn_q_proj`) or a dotted one
/// (`…text_model.encoder.layers.N.self_attn.q_proj`).
fn parse(name: &str, kohya: bool) -> Option<(usize, &'static str, Option<usize>)> {
    let (marker, sep) = if kohya {
        ("text_model_encoder_layers_", '_')
    } else {
        ("text_model.encoder.layers.", '.')
    };
    let rest = &name[name.rfind(marker)? + marker.len()..];
    let (n, module) = rest.split_once(sep)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let layer = n.parse().ok()?;
    MAP.iter()
        .find(|(hf, _, _)| {
            if kohya {
                hf.replace('.', "_") == module
            } else {
                *hf == module
            }
        })
        .map(|&(_, t, qkv)| (layer, t, qkv))
}

/// Where module `m` (index `mi`) lands on an OpenCLIP-layout encoder of `names`: `None` when its
/// name is not an HF CLIP layer module or no OpenCLIP tensor of its component exists; an
/// [`Unmatched`] when the tensor exists but does not fit (ambiguous, wrong shape — the slice
/// would not be a third of the fused tensor —, not float). `kohya`: the name is underscored
/// with a component prefix ([`BaseComponents::filter`]); a dotted name keeps to its root's
/// component.
pub(super) fn place(
    mi: usize,
    m: &LoraModule,
    kohya: bool,
    names: &[&str],
    components: &BaseComponents,
    logical: &dyn Fn(&str) -> (Vec<usize>, Dtype),
) -> Option<Result<Placement, Unmatched>> {
    let (layer, tensor, qkv) = parse(&m.name, kohya)?;
    let tail = format!("transformer.resblocks.{layer}.{tensor}");
    let all: Vec<&str> = names
        .iter()
        .filter(|n| {
            n.strip_suffix(&tail)
                .is_some_and(|p| p.is_empty() || p.ends_with('.'))
        })
        .copied()
        .collect();
    let candidates = if kohya {
        components.filter(&m.name, all).ok()?
    } else {
        match root_of(&m.name) {
            Some((_, want, _)) => all
                .into_iter()
                .filter(|c| root_of(c).is_some_and(|(_, r, _)| components.admits(*want, *r)))
                .collect(),
            None => all,
        }
    };
    let weight = match candidates.as_slice() {
        [] => return None,
        [one] => one.to_string(),
        many => return Some(Err(Unmatched::ambiguous(m, many))),
    };
    let (found, dtype) = logical(&weight);
    let expected = expected_shape(m);
    let linear = matches!(m.kind, ModuleKind::Linear) && !m.base_transposed;
    let (fits, rows, expected) = match qkv {
        Some(i) => {
            // q, k and v are thirds of the fused rows; the module is one of them.
            let third = found.first().map_or(0, |r| r / 3);
            let fits =
                linear && found.len() == 2 && found[0] % 3 == 0 && expected == [third, found[1]];
            let rows = RowSlice {
                offset: i * third,
                len: third,
            };
            let fused = vec![m.out_features.saturating_mul(3), m.in_features];
            (fits, Some(rows), fused)
        }
        None => (found == expected, None, expected),
    };
    Some(placed_on_rows(
        m, mi, weight, fits, expected, found, dtype, rows,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hf_clip_layer_modules_only() {
        let k = |n| parse(n, true);
        assert_eq!(
            k("lora_te2_text_model_encoder_layers_11_self_attn_v_proj"),
            Some((11, "attn.in_proj_weight", Some(2)))
        );
        assert_eq!(
            k("lora_te2_text_model_encoder_layers_0_mlp_fc2"),
            Some((0, "mlp.c_proj.weight", None))
        );
        assert_eq!(k("lora_te2_text_model_encoder_layers_x_mlp_fc2"), None);
        assert_eq!(k("lora_te2_text_model_encoder_layers_+1_mlp_fc2"), None);
        assert_eq!(k("lora_te2_text_model_encoder_layers_0_layer_norm1"), None);
        assert_eq!(
            parse(
                "text_encoders.clip_g.transformer.text_model.encoder.layers.3.self_attn.k_proj",
                false
            ),
            Some((3, "attn.in_proj_weight", Some(1)))
        );
        assert_eq!(
            parse(
                "text_encoder_2.text_model.encoder.layers.3.self_attn_k_proj",
                false
            ),
            None
        );
    }
}
