//! Resolving adapter module names onto a base checkpoint's tensors.
//!
//! Every module must land on exactly one base tensor of matching shape; the [`Resolution`]
//! lists the ones that do not, each with its reason, so callers can refuse or warn — nothing is
//! dropped silently.
//!
//! PEFT modules (dotted paths, `base_model.model.` already removed) map to `{module}.weight`;
//! when the base was saved with a different root (e.g. `LlamaModel` without `model.`), a unique
//! tensor whose name and the expected name agree on a dotted suffix is accepted. kohya names
//! (`lora_te_text_model_encoder_layers_0_self_attn_q_proj`) are compared with the base's module
//! paths with dots replaced by underscores, exact first, then as an underscore-bounded suffix;
//! more than one candidate is an error (ambiguous), as underscores inside names make the
//! reverse mapping non-unique.
//!
//! An expert of a fused MoE parameter (`{param}[e/E]`, PEFT `target_parameters`,
//! [`super::formats::peft::params`]) maps to its expert's slice of the `[E, ·, ·]` tensor
//! `{param}` itself, exact name only.
//!
//! A kohya module's component prefix (`lora_unet_`, `lora_te1_`, `lora_te2_`, …) names a part of
//! a diffusion model; on a base that holds several parts (a single-file SD/SDXL/SD3/Flux
//! checkpoint, a diffusers-style file with `unet.`/`text_encoder.`/`text_encoder_2.`), a candidate
//! is kept only under a base root of that part ([`Component`], [`ROOTS`]), and a module whose only
//! matches lie under another part's root is unmatched with [`Unmatched::OtherComponent`] — never
//! merged into the other encoder because the shapes happen to agree. Bases without such roots, and
//! names without a known prefix, are matched as before.
//!
//! A module named in HF CLIP's layout whose component stores OpenCLIP's (an SDXL single file's
//! second encoder) lands on the OpenCLIP tensor ComfyUI renames to its name, q/k/v on a
//! [`RowSlice`] of the fused `in_proj_weight` ([`openclip`]).
//!
//! An ACE-Step 1.5 module named as ComfyUI's `ACEStep15` key map names it (`base_model.model.{k}`,
//! `lycoris_{k}`) lands on the decoder's `decoder.{k}.weight`, as ComfyUI puts it ([`ace_step15`]).
//!
//! sd-scripts' SDXL names (`lora_unet_input_blocks_4_1_…`, its SGM UNet) land on a diffusers
//! UNet as diffusers renames them ([`sgm_unet`]).
//!
//! The name matching itself (dotted paths, kohya names, `target_modules`) is [`names`]'s, and
//! merge, eval and train all match names through it rather than on their own.
//!
//! Must not read tensor data or decide what an unmatched module means (refuse or warn is the
//! caller's choice).

use super::model::{Adapter, LoraModule, ModuleKind};
use crate::io::Checkpoint;

mod ace_step15;
mod hf_renames;
pub mod layouts;
mod names;
mod openclip;
mod placement;
mod sgm_unet;

pub use hf_renames::{to_disk_names, DiskName, RuntimeNames};
pub use names::{
    dotted_candidates, dotted_suffix, dotted_suffix_agrees, is_kohya_name, kohya_candidates,
    kohya_index, target_matches, WeightNames,
};
pub use placement::{
    expected_shape, prefix_component, BaseComponents, Component, Part, Placement, Resolution,
    RowSlice, Unmatched, ROOTS,
};

/// Resolves every module and full tensor of `adapter` against `base`, its quantized weights
/// (if any) by their logical shapes. A base whose quantization cannot be read resolves on its
/// stored tensors; whatever reads its values reports why.
pub fn resolve(adapter: &Adapter, base: &Checkpoint) -> Resolution {
    let quant = crate::io::quant::QuantMap::scan(base).ok();
    resolve_in(adapter, base, quant.as_ref().filter(|q| !q.is_empty()))
}

/// [`resolve`] against a base whose quantized weights are described by `quant`: a quantized
/// weight is matched by its logical shape and counts as float (it is dequantized to be merged),
/// and its companion tensors (scales, code books) are never candidates.
pub fn resolve_in(
    adapter: &Adapter,
    base: &Checkpoint,
    quant: Option<&crate::io::quant::QuantMap>,
) -> Resolution {
    resolve_widened(adapter, base, quant, &std::collections::HashMap::new())
}

/// [`resolve_in`] with some base tensors taken at another shape than stored (`widened`: name →
/// shape), as a merge that zero-pads them first will hold them (`merge --expand-base`).
pub fn resolve_widened(
    adapter: &Adapter,
    base: &Checkpoint,
    quant: Option<&crate::io::quant::QuantMap>,
    widened: &std::collections::HashMap<String, Vec<usize>>,
) -> Resolution {
    let is_companion = |n: &str| quant.is_some_and(|q| q.companion_of(n).is_some());
    // (logical shape, dtype it is merged in) of a base tensor.
    let logical = |name: &str| -> (Vec<usize>, crate::dtype::Dtype) {
        match quant.and_then(|q| q.get(name)) {
            Some(t) => (t.shape.clone(), t.natural_dtype()),
            None => {
                let i = base.info(name).expect("candidate exists");
                (widened.get(name).unwrap_or(&i.shape).clone(), i.dtype)
            }
        }
    };
    // Candidates by weight name: a packed weight (`…weight_packed`) is matched as `…weight`.
    let names: Vec<&str> = base
        .names()
        .filter(|n| !is_companion(n))
        .map(|n| quant.map_or(n, |q| q.logical_name(n)))
        .collect();
    let index = WeightNames::new(names, adapter.format);
    let names = index.names();
    let components = BaseComponents::of(names);
    let mut res = Resolution::default();
    for (mi, m) in adapter.modules.iter().enumerate() {
        if let Some((param, _, n)) = super::formats::peft::params::parse_expert(&m.name) {
            // One expert of a fused `[E, ·, ·]` parameter: its slice (peft/params.rs).
            let expected = expected_shape(m);
            let found = names.contains(&param).then(|| logical(param));
            // Either orientation: which one PEFT used is the model class's (`is_transposed`),
            // decided with the base by `params::fit_to_base` before a merge.
            let swapped: Vec<usize> = expected.iter().rev().copied().collect();
            // mlx-lm's experts are on MLX `SwitchLinear` weights, always `[E, out, in]`.
            let either = adapter.format != crate::adapter::formats::format::Format::Mlx;
            let fits = |s: &[usize]| {
                s.len() == 3
                    && s[0] == n
                    && (s[1..] == expected[..] || either && s[1..] == swapped[..])
                    || n == 1 && s == expected.as_slice()
            };
            match found {
                None => res.unmatched.push(Unmatched::NotFound {
                    module: m.name.clone(),
                    expected: param.to_owned(),
                }),
                Some((s, _)) if !fits(&s) => res.unmatched.push(Unmatched::ShapeMismatch {
                    module: m.name.clone(),
                    tensor: param.to_owned(),
                    expected: [vec![n], expected].concat(),
                    found: s,
                }),
                Some((_, dt)) if !crate::dtype::is_float_compute(dt) => {
                    res.unmatched.push(Unmatched::NotFloat {
                        module: m.name.clone(),
                        tensor: param.to_owned(),
                        dtype: crate::dtype::name(dt),
                    })
                }
                Some(_) => res.modules.push(Placement {
                    module: mi,
                    weight: param.to_owned(),
                    bias: None,
                    rows: None,
                    part: None,
                }),
            }
            continue;
        }
        let kohya_name = is_kohya_name(adapter.format, &m.name);
        let found = index.module_candidates(adapter.format, &m.name);
        let candidates = if kohya_name {
            components.filter(&m.name, found)
        } else if found.is_empty() {
            let want = format!("{}.weight", m.name);
            let across = components.across_roots(&want, names);
            if across.is_empty() {
                Ok(layouts::other_denoiser_root(&want, names))
            } else {
                Ok(across)
            }
        } else {
            Ok(found)
        };
        // ACE-Step 1.5 on ComfyUI's layout (`ace_step15.rs`): the keys ComfyUI's ACEStep15
        // branch maps override every other match (it is the last branch of its key map); a bare
        // decoder path fills in only where nothing else matched.
        let candidates = match ace_step15::decoder_weights(&m.name, kohya_name, names) {
            Some((ace_step15::Form::ComfyKey, w)) => Ok(w),
            Some((ace_step15::Form::Bare, w)) if matches!(&candidates, Ok(c) if c.is_empty()) => {
                Ok(w)
            }
            _ => candidates,
        };
        // sd-scripts' SDXL names (SGM blocks) on a diffusers UNet, where nothing matched them.
        let candidates = match candidates {
            Ok(c) if c.is_empty() => {
                Ok(sgm_unet::diffusers_weights(&m.name, kohya_name, names).unwrap_or(c))
            }
            other => other,
        };
        // HF CLIP names on an OpenCLIP-layout encoder, where nothing of the module's own
        // component matched its name.
        let openclip = match &candidates {
            Ok(c) if !c.is_empty() => None,
            _ => openclip::place(mi, m, kohya_name, names, &components, &logical),
        };
        // A lone dotted-suffix candidate of another shape than the module's (MiniMax-H3's
        // `diffusion_model.time_embedder.proj_in` ends like its `proj_in`, and so does
        // musubi-tuner's `lora_unet_time_embedder_proj_in` as an underscore-bounded suffix)
        // yields to a layout row that places the module whole; a row that does not is no
        // reason to refuse.
        let suffix_misfit = matches!(&candidates, Ok(c) if c.len() == 1
                && c[0].strip_suffix(".weight") != Some(m.name.as_str())
                && logical(c[0]).0 != expected_shape(m));
        // A name in a model's original layout on its diffusers layout (BFL Flux, Wan), where
        // nothing matched its name.
        if openclip.is_none() && (suffix_misfit || matches!(&candidates, Ok(c) if c.is_empty())) {
            let placed = layouts::place(mi, m, kohya_name, names, &logical)
                .filter(|r| !suffix_misfit || r.is_ok());
            if res.record(placed) {
                continue;
            }
            // And the other way: a diffusers name on the original layout (a row slice of a
            // fused tensor, as OpenCLIP's q/k/v).
            let reverse = (!suffix_misfit)
                .then(|| layouts::place_on_original(mi, m, kohya_name, names, &logical))
                .flatten();
            if res.record(reverse.map(|r| r.map(std::iter::once))) {
                continue;
            }
        }
        let candidates = match (openclip, candidates) {
            (Some(Ok(p)), _) => {
                res.modules.push(p);
                continue;
            }
            (Some(Err(u)), _) | (None, Err(u)) => {
                res.unmatched.push(u);
                continue;
            }
            (None, Ok(c)) => c,
        };
        let weight = match candidates.as_slice() {
            [] => {
                res.unmatched.push(Unmatched::NotFound {
                    module: m.name.clone(),
                    expected: format!("{}.weight", m.name),
                });
                continue;
            }
            [one] => one.to_string(),
            many => {
                res.unmatched.push(Unmatched::Ambiguous {
                    module: m.name.clone(),
                    candidates: many.iter().map(|s| s.to_string()).collect(),
                });
                continue;
            }
        };
        let (found, found_dtype) = logical(&weight);
        let expected = expected_shape(m);
        let fits =
            found == expected || shape_fits_flat(m, &found) || fits_base_dependent(m, &found);
        if !fits {
            res.unmatched.push(Unmatched::ShapeMismatch {
                module: m.name.clone(),
                tensor: weight,
                expected,
                found,
            });
            continue;
        }
        if !crate::dtype::is_float_compute(found_dtype) {
            res.unmatched.push(Unmatched::NotFloat {
                module: m.name.clone(),
                tensor: weight,
                dtype: crate::dtype::name(found_dtype),
            });
            continue;
        }
        // A flattened LoKr factor on a conv: the kernel is known only here.
        let kernel: usize = found.get(2..).map_or(1, |k| k.iter().product());
        if let Some(why) = super::formats::kohya::peft_lokr_conv_misfit(adapter, m, kernel) {
            res.unmatched.push(Unmatched::WouldNotLoad {
                module: m.name.clone(),
                tensor: weight,
                why,
            });
            continue;
        }
        let bias = match &m.bias {
            None => None,
            Some(_) => {
                let b = format!("{}.bias", weight.strip_suffix(".weight").unwrap_or(&weight));
                // An unplaceable bias is reported on its own; the weight still lands, so
                // `--allow-unmatched` merges B·A and leaves the bias out (as listed).
                let peft_ia3 = matches!(
                    m.factors,
                    crate::adapter::algo::Factors::Ia3 {
                        rule: crate::adapter::algo::Ia3Rule::Peft,
                        ..
                    } | crate::adapter::algo::Factors::Road { .. }
                    // PEFT's GLoRA merges C, D and E only where the base has a bias
                    // (`GloraLayer.merge`: `if b0 is not None`).
                    | crate::adapter::algo::Factors::Hadamard { .. }
                );
                let bias_tensor = match m.factors {
                    crate::adapter::algo::Factors::OnBase {
                        rule: crate::adapter::algo::BaseRule::Beft,
                        ..
                    } => "beft_bias".to_owned(),
                    crate::adapter::algo::Factors::OnBase { .. } => {
                        "adamss_newB bias column".to_owned()
                    }
                    crate::adapter::algo::Factors::Hadamard { .. } => {
                        "glora_C/glora_D/glora_E bias terms".to_owned()
                    }
                    _ => "lora_B.bias".to_owned(),
                };
                // PEFT AdaMSS: adamss_newB has a bias column (in + 1 columns) exactly when the
                // base has a bias (`tuners/adamss/layer.py` `update_layer`).
                let adamss = match m.factors {
                    crate::adapter::algo::Factors::OnBase {
                        rule: crate::adapter::algo::BaseRule::Adamss { cols },
                        ..
                    } => Some((cols, found[1] + usize::from(base.info(&b).is_some()))),
                    _ => None,
                };
                match base.info(&b) {
                    _ if adamss.is_some_and(|(c, want)| c != want) => {
                        let (c, want) = adamss.expect("checked");
                        res.unmatched.push(Unmatched::ShapeMismatch {
                            module: format!(
                                "{}.adamss_newB (in + 1 columns where the base has a bias)",
                                m.name
                            ),
                            tensor: weight.clone(),
                            expected: vec![c],
                            found: vec![want],
                        });
                        None
                    }
                    None if adamss.is_some() => None,
                    // A GLoRA module of scalar terms gives no width: the weight's rows.
                    Some(i)
                        if i.shape.iter().product::<usize>()
                            == if m.out_features == 0 {
                                found[0]
                            } else {
                                m.out_features
                            } =>
                    {
                        Some(b)
                    }
                    // PEFT's IA3 scales the bias when there is one (`tuners/ia3/layer.py`), RoAd
                    // turns it (`tuners/road/layer.py`).
                    None if peft_ia3 => None,
                    Some(i) => {
                        res.unmatched.push(Unmatched::ShapeMismatch {
                            module: format!("{}.{bias_tensor}", m.name),
                            tensor: b,
                            expected: vec![m.out_features],
                            found: i.shape.clone(),
                        });
                        None
                    }
                    None => {
                        res.unmatched.push(Unmatched::NotFound {
                            module: format!("{}.{bias_tensor}", m.name),
                            expected: b,
                        });
                        None
                    }
                }
            }
        };
        res.modules.push(Placement {
            module: mi,
            weight,
            bias,
            rows: None,
            part: None,
        });
    }
    for (fi, f) in adapter.full_tensors.iter().enumerate() {
        // Trainable-token rows replace rows of their module's weight.
        let target = match (
            &f.rows,
            crate::adapter::formats::peft::tokens_module(&f.name),
        ) {
            (Some(_), Some(module)) => format!("{module}.weight"),
            _ => f.name.clone(),
        };
        let mut candidates = dotted_candidates(&target, names);
        // A kohya-named module's whole weight (ComfyUI's `{module}.set_weight`, read as
        // `{module}.weight`): placed as that module's factors would be.
        if let Some(stem) = target
            .strip_suffix(".weight")
            .filter(|m| f.rows.is_none() && is_kohya_name(adapter.format, m))
        {
            match components.filter(stem, index.module_candidates(adapter.format, stem)) {
                Ok(c) => candidates = c,
                Err(u) => {
                    res.unmatched.push(u);
                    continue;
                }
            }
        }
        if candidates.is_empty() && f.rows.is_none() {
            // A whole tensor named in BFL Flux's layout on its diffusers layout.
            candidates.extend(layouts::full_target(&target, names));
        }
        match candidates.as_slice() {
            [] => res.unmatched.push(Unmatched::NotFound {
                module: f.name.clone(),
                expected: f.name.clone(),
            }),
            [one] => {
                let (found, _) = logical(one);
                if !f.fits(&found) {
                    res.unmatched.push(Unmatched::ShapeMismatch {
                        module: f.name.clone(),
                        tensor: one.to_string(),
                        expected: f.shape.clone(),
                        found,
                    });
                } else {
                    res.full.push((fi, one.to_string()));
                }
            }
            many => res.unmatched.push(Unmatched::Ambiguous {
                module: f.name.clone(),
                candidates: many.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }
    res
}

/// OFT and IA3 files give only one side of the weight they adapt (OFT's and IA3's rows,
/// IA3 `on_input`'s input channels): any base weight of rank ≥ 2 with that side fits (a conv's
/// input channels are its second axis), a conv module only a conv weight (OFT without
/// `rescale` either).
fn fits_base_dependent(m: &LoraModule, found: &[usize]) -> bool {
    use crate::adapter::algo::Factors;
    // A Conv1D base (`fan_in_fan_out`) stores `[in, out]`: judge its logical `[out, in]`.
    let swapped;
    let found = match found {
        [i, o] if m.base_transposed => {
            swapped = [*o, *i];
            &swapped[..]
        }
        _ => found,
    };
    let conv = matches!(m.kind, ModuleKind::Conv { .. });
    // OFT without `rescale` does not say linear or conv either, nor does PEFT HRA's `hra_u`
    // [in·kh·kw, r] (PEFT's `HRAConv2d` reflects the flattened input side).
    let unknown = matches!(
        m.factors,
        Factors::Oft { rescale: None, .. }
            | Factors::Boft { rescale: None, .. }
            | Factors::PeftOft { .. }
            | Factors::Hra { .. }
    );
    let rank_ok = if unknown {
        found.len() >= 2
    } else if conv {
        found.len() > 2
    } else {
        found.len() == 2
    };
    rank_ok
        && match &m.factors {
            Factors::Oft { .. }
            | Factors::Boft { .. }
            | Factors::Ia3 {
                on_input: false, ..
            } => found[0] == m.out_features,
            Factors::Ia3 { on_input: true, .. } => found[1] == m.in_features,
            // PEFT OFT rotates the flattened input side (in·kh·kw).
            Factors::PeftOft {
                block_share: true,
                block_size,
                ..
            } => found[1..].iter().product::<usize>() % block_size == 0,
            Factors::PeftOft { .. } => found[1..].iter().product::<usize>() == m.in_features,
            // PEFT's HRA and BOFT Conv2d act on the flattened input side (in·kh·kw).
            Factors::Hra { .. } => found[1..].iter().product::<usize>() == m.in_features,
            Factors::Vera { .. } => found[0] == m.out_features && found[1] <= m.in_features,
            Factors::PeftBoft { .. } => {
                found[0] == m.out_features && found[1..].iter().product::<usize>() == m.in_features
            }
            // RoAd turns the output rows; any input width.
            Factors::Road { .. } => found[0] == m.out_features,
            Factors::Osf { .. } => found[0] == m.out_features && found[1] == m.in_features,
            Factors::Frod(_) => found.len() == 2 && found[1] == m.in_features,
            // HiRA on a Conv2d acts on the weight viewed as [out, in·kh·kw].
            Factors::Hadamard { .. } => {
                let k = found[1..].iter().product::<usize>();
                (m.out_features == 0 || found[0] == m.out_features)
                    && (m.in_features == 0 || k == m.in_features)
            }
            Factors::OnBase { .. } => {
                let fit = crate::adapter::algo::on_base_fits;
                fit(
                    &m.factors,
                    (m.out_features, m.in_features),
                    (found[0], found[1]),
                ) == Some(true)
            }
            Factors::Miss { .. } | Factors::Shira { .. } | Factors::RandLora { .. } => {
                let fit = crate::adapter::algo::peft_tuner_fits;
                fit(
                    &m.factors,
                    (m.out_features, m.in_features),
                    (found[0], found[1]),
                ) == Some(true)
            }
            _ => false,
        }
}

/// A Conv base can be stored `[out, in, kh, kw]` while a kohya/PEFT 1×1 conv adapter on a
/// linear-like layer stores 4-D factors: accept equal element layout `[out, in·kh·kw]`.
fn shape_fits_flat(m: &LoraModule, found: &[usize]) -> bool {
    match &m.kind {
        ModuleKind::Conv { kernel } if kernel.iter().all(|&k| k == 1) => {
            found.len() == 2 && found[0] == m.out_features && found[1] == m.in_features
        }
        // LyCORIS stores a LoHa conv's input side flattened (`hada_w1_b` is `[r, in·kh·kw]`),
        // and a module lowered from it to LoRA keeps that layout; ComfyUI reshapes every ΔW to
        // the base weight's shape (`lora.py` / `loha.py` `calculate_weight`: `.reshape(weight.shape)`),
        // so the flat layout is the conv's `[out, in·kh·kw]` (a 1×1 conv's `[out, in, 1, 1]`).
        ModuleKind::Linear => {
            found.len() > 2
                && found[0] == m.out_features
                && found[1..].iter().product::<usize>() == m.in_features
        }
        // A kernel that differs only in trailing 1s (PEFT's `use_effective_conv2d` LoHa/LoKr on
        // an nn.Conv1d stores Tucker cores `[r, r, k, 1]`; `get_delta_weight` reshapes ΔW to
        // the base's `[out, in, k]`): the same row-major values.
        ModuleKind::Conv { kernel } => {
            let trim = |k: &[usize]| -> Vec<usize> {
                let mut v = k.to_vec();
                while v.last() == Some(&1) {
                    v.pop();
                }
                v
            };
            found.len() > 2
                && found[0] == m.out_features
                && found[1..].iter().product::<usize>() == m.in_features
                && trim(kernel) == trim(&found[2..])
        }
        _ => false,
    }
}

/// Renames kohya modules to the dotted base module paths they resolved to, so the adapter
/// can be written as PEFT. Unresolved modules are left as they are (see the resolution), and so
/// are modules on a row slice (no module path names a third of `in_proj_weight`) or split over
/// several tensors.
pub fn rename_to_base(adapter: &mut Adapter, res: &Resolution) {
    for p in res.modules.iter().filter(|p| p.whole_in_order()) {
        let m = &mut adapter.modules[p.module];
        m.name = p
            .weight
            .strip_suffix(".weight")
            .unwrap_or(&p.weight)
            .to_owned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ComfyUI `model_lora_keys_clip` @41444b5: `t5_index` starts at 1, +1 for `clip_g`, +1 for
    /// `clip_l`, and with `clip_l` alone `lora_te2_` and `lora_te3_` both name the T5.
    #[test]
    fn t5_answers_to_the_prefix_comfyui_gives_it() {
        let t5 = "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight";
        let l = "text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight";
        let g = "text_encoders.clip_g.transformer.text_model.encoder.layers.0.mlp.fc1.weight";
        let ok = |names: &[&str], prefix: &str| {
            BaseComponents::of(names)
                .filter(
                    &format!("{prefix}_encoder_block_0_layer_0_SelfAttention_q"),
                    vec![t5],
                )
                .is_ok()
        };
        // SD3: clip_l, clip_g, t5xxl.
        assert!(ok(&[l, g, t5], "lora_te3"));
        assert!(!ok(&[l, g, t5], "lora_te2"));
        assert!(!ok(&[l, g, t5], "lora_te1"));
        // Flux: clip_l, t5xxl (OneTrainer writes lora_te2_; ComfyUI reads lora_te3_ too).
        assert!(ok(&[l, t5], "lora_te2"));
        assert!(ok(&[l, t5], "lora_te3"));
        assert!(!ok(&[l, t5], "lora_te1"));
        // T5 alone.
        assert!(ok(&[t5], "lora_te1"));
        assert!(!ok(&[t5], "lora_unet"));
    }

    #[test]
    fn unknown_prefixes_and_bases_without_encoders_keep_every_candidate() {
        let sdxl = BaseComponents::of(&["conditioner.embedders.0.transformer.x.weight"]);
        let c = vec!["conditioner.embedders.0.transformer.x.weight"];
        assert_eq!(sdxl.filter("x", c.clone()), Ok(c.clone()));
        assert_eq!(sdxl.filter("lora_te1_x", c.clone()), Ok(c.clone()));
        assert!(sdxl.filter("lora_te2_x", c.clone()).is_err());
        assert!(sdxl.filter("lora_unet_x", c.clone()).is_err());
        let gpt2 = BaseComponents::of(&["transformer.h.0.attn.c_attn.weight"]);
        let c = vec!["transformer.h.0.attn.c_attn.weight"];
        assert_eq!(gpt2.filter("lora_te_h_0_attn_c_attn", c.clone()), Ok(c));
    }
}
