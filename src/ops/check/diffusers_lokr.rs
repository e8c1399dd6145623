//! How diffusers 0.42.1's Flux.2 loader reads a LoKr file, transcribed for `check --target
//! diffusers`.
//!
//! `Flux2LoraLoaderMixin.lora_state_dict` (`loaders/lora_pipeline.py`) sends a file with a
//! `.lokr_` key (and no kohya `.lora_down.weight`) to one of three converters
//! (`loaders/lora_conversion_utils.py` 2781-2931): `lycoris_` names to
//! `_convert_lycoris_flux2_lokr_to_diffusers` (block sub-paths of `_LYCORIS_FLUX2_SUBPATH_MAP`
//! only), `diffusion_model.` (or PEFT's `base_model.model.`) BFL names to
//! `_convert_non_diffusers_flux2_lokr_to_diffusers` (the LoRA converter's table, qkv onto the
//! fused `to_qkv` the loader makes), other names without `transformer.` to
//! `_convert_non_diffusers_lokr_to_diffusers`. Each bakes `alpha/r` into `lokr_w1` and raises on
//! a key it leaves; PEFT's LoKr tuner then applies ΔW = w1 ⊗ w2 exactly
//! (`utils/peft_utils.py` `_create_lokr_config`), except where it rebuilds a module with a
//! factor whole that the file decomposes or the other way round ([`rebuilt`]). Checked against
//! diffusers' runs recorded by `fixtures/gen/diffusion10_fixtures.py`.
//!
//! Must not decide severities (the rule does); reads only tensor names and shapes.

use super::diffusers_keys::after_block;

/// `_LOKR_SUFFIXES`: the factor keys the converters move (no Tucker `lokr_t2`).
const LOKR_SUFFIXES: [&str; 6] = [
    "lokr_w1",
    "lokr_w1_a",
    "lokr_w1_b",
    "lokr_w2",
    "lokr_w2_a",
    "lokr_w2_b",
];

/// `_LYCORIS_FLUX2_SUBPATH_MAP`'s keys.
const LYCORIS_SUBPATHS: [&str; 14] = [
    "attn_to_q",
    "attn_to_k",
    "attn_to_v",
    "attn_to_out_0",
    "attn_to_add_out",
    "attn_add_q_proj",
    "attn_add_k_proj",
    "attn_add_v_proj",
    "attn_to_qkv_mlp_proj",
    "attn_to_out",
    "ff_linear_in",
    "ff_linear_out",
    "ff_context_linear_in",
    "ff_context_linear_out",
];

/// Sub-paths only Flux.2's diffusers transformer has (Flux.1's blocks use `ff.net.0.proj` and
/// single blocks without `attn.to_out`), `_` form.
const FLUX2_ONLY_SUBPATHS: [&str; 5] = [
    "attn_to_qkv_mlp_proj",
    "ff_linear_in",
    "ff_linear_out",
    "ff_context_linear_in",
    "ff_context_linear_out",
];

fn keys_of(adapter: &crate::adapter::Adapter) -> Vec<(&str, &[usize])> {
    adapter
        .source
        .as_ref()
        .map(|f| {
            f.tensors()
                .iter()
                .map(|t| (t.name.as_str(), t.shape.as_slice()))
                .collect()
        })
        .unwrap_or_default()
}

/// A file the Flux.2 loader reads as LoKr: a `.lokr_` key and no kohya `.lora_down.weight`.
pub(super) fn lokr_file(adapter: &crate::adapter::Adapter) -> bool {
    let keys = keys_of(adapter);
    keys.iter().any(|(k, _)| k.contains(".lokr_"))
        && !keys.iter().any(|(k, _)| k.contains(".lora_down.weight"))
}

/// `^lycoris_((?:single_)?transformer_blocks)_(\d+)_(.+)$` on a module name: (single, sub-path).
fn lycoris_block(name: &str) -> Option<(bool, &str)> {
    let t = name.strip_prefix("lycoris_")?;
    let single = t.starts_with("single_transformer_blocks_");
    let t = t.strip_prefix("single_").unwrap_or(t);
    Some((single, after_block(t, "transformer_blocks_", '_')?))
}

/// A LoKr file whose module names only Flux.2's diffusers transformer has (LyCORIS' `_` names
/// or bare dotted paths): Flux.2's loader is the one that reads it.
pub(super) fn flux2_lokr_names(adapter: &crate::adapter::Adapter) -> bool {
    lokr_file(adapter)
        && adapter.modules.iter().any(|m| {
            if let Some((single, sub)) = lycoris_block(&m.name) {
                return FLUX2_ONLY_SUBPATHS.contains(&sub) || (single && sub == "attn_to_out");
            }
            let t = m.name.strip_prefix("transformer.").unwrap_or(&m.name);
            let dotted = |s: &str| s.replace('.', "_");
            after_block(t, "single_transformer_blocks.", '.')
                .is_some_and(|r| r == "attn.to_qkv_mlp_proj" || r == "attn.to_out")
                || after_block(t, "transformer_blocks.", '.')
                    .is_some_and(|r| FLUX2_ONLY_SUBPATHS.contains(&dotted(r).as_str()))
        })
}

/// The keys of a Flux.2 LoKr file that make `load_lora_weights` raise, each `key (why)`:
/// one its converter leaves ("These keys are not LyCORIS Flux2 LoKr keys", "`original_state_
/// dict` should be empty", "unexpected non-LoKr keys"), or one without `lora`/`lokr` after it
/// ("Invalid adapter checkpoint"), and a factorization no `decompose_factor` reproduces.
pub(super) fn flux2_refused(adapter: &crate::adapter::Adapter) -> Vec<String> {
    let keys = keys_of(adapter);
    let peft = keys.iter().any(|(k, _)| k.starts_with("base_model.model."));
    let names: Vec<String> = keys
        .iter()
        .map(|(k, _)| match k.strip_prefix("base_model.model.") {
            Some(t) if peft => format!("diffusion_model.{t}"),
            _ => (*k).to_owned(),
        })
        .collect();
    let lycoris = names.iter().any(|k| k.starts_with("lycoris_"));
    let bfl = !lycoris && names.iter().any(|k| k.starts_with("diffusion_model."));
    let bare = !lycoris && !bfl && !names.iter().any(|k| k.starts_with("transformer."));
    let mut out = Vec::new();
    for k in &names {
        // `_bake_lokr_alpha_` takes every `.alpha` first, except on `transformer.` names.
        if k.ends_with(".alpha") && (lycoris || bfl || bare) {
            continue;
        }
        let why = if lycoris {
            let ok = k.rsplit_once('.').is_some_and(|(module, _)| {
                lycoris_block(module).is_some_and(|(_, sub)| LYCORIS_SUBPATHS.contains(&sub))
            });
            (!ok).then_some("not a LyCORIS Flux2 LoKr key: ValueError")
        } else if bfl {
            let rest = k.strip_prefix("diffusion_model.").unwrap_or(k);
            let ok = rest.rsplit_once('.').is_some_and(|(path, suffix)| {
                LOKR_SUFFIXES.contains(&suffix) && super::diffusers_keys::flux2_dotted_known(path)
            });
            (!ok).then_some("left unconverted: ValueError")
        } else if bare {
            (!k.contains(".lokr_")).then_some("not a LoKr key: ValueError")
        } else {
            None
        };
        let why = why.or_else(|| {
            (!k.contains("lora") && !k.contains("lokr"))
                .then_some("no `lora`/`lokr` in the key: ValueError")
        });
        if let Some(why) = why {
            out.push(format!("{k} ({why})"));
        }
    }
    if out.is_empty() && decompose_factor(&lokr_modules(&keys)).is_none() {
        out.push(
            "the LoKr factor shapes (no `decompose_factor` gives every module's factorization: ValueError)"
                .to_owned(),
        );
    }
    out
}

/// One LoKr module's factor layout as `_create_lokr_config` reads it.
struct Lokr {
    name: String,
    /// (out_l, out_k), (in_m, in_n)
    out: (usize, usize),
    inp: (usize, usize),
    w1_whole: bool,
    w2_whole: bool,
    r: usize,
}

fn lokr_modules(keys: &[(&str, &[usize])]) -> Vec<Lokr> {
    let shape = |k: &str| keys.iter().find(|(n, _)| *n == k).map(|(_, s)| *s);
    let mut stems: Vec<&str> = keys
        .iter()
        .filter_map(|(k, _)| k.split_once(".lokr_").map(|(m, _)| m))
        .collect();
    stems.sort_unstable();
    stems.dedup();
    stems
        .into_iter()
        .filter_map(|m| {
            let s = |x: &str| shape(&format!("{m}.lokr_{x}")).filter(|s| s.len() == 2);
            let (w1, w1a, w1b) = (s("w1"), s("w1_a"), s("w1_b"));
            let (w2, w2a, w2b) = (s("w2"), s("w2_a"), s("w2_b"));
            let (out_l, in_m) = match (w1, w1a, w1b) {
                (Some(w), _, _) => (w[0], w[1]),
                (None, Some(a), Some(b)) => (a[0], b[1]),
                _ => return None,
            };
            let (out_k, in_n) = match (w2, w2a, w2b) {
                (Some(w), _, _) => (w[0], w[1]),
                (None, Some(a), Some(b)) => (a[0], b[1]),
                _ => return None,
            };
            let r = match (w2a, w1a, w2) {
                (Some(a), _, _) => a[1],
                (None, Some(a), _) => a[1],
                (None, None, Some(w)) => w[0].max(w[1]),
                _ => return None,
            };
            Some(Lokr {
                name: m.to_owned(),
                out: (out_l, out_k),
                inp: (in_m, in_n),
                w1_whole: w1.is_some(),
                w2_whole: w2.is_some(),
                r,
            })
        })
        .collect()
}

/// PEFT's `factorization(dimension, factor)` (`tuners/lokr/layer.py`).
fn factorization(dim: usize, factor: i64) -> (usize, usize) {
    if factor > 0 && dim.is_multiple_of(factor as usize) {
        return (factor as usize, dim / factor as usize);
    }
    let limit = if factor == -1 {
        dim
    } else {
        factor.max(0) as usize
    };
    let (mut m, mut n) = (1usize, dim);
    let length = m + n;
    while m < n {
        let mut new_m = m + 1;
        while !dim.is_multiple_of(new_m) {
            new_m += 1;
        }
        let new_n = dim / new_m;
        if new_m + new_n > length || new_m > limit {
            break;
        }
        (m, n) = (new_m, new_n);
    }
    (m.min(n), m.max(n))
}

/// `_create_lokr_config`'s search: the first candidate (every module's left output dimension,
/// ascending, then -1) under which `factorization` gives back every module's shapes.
fn decompose_factor(mods: &[Lokr]) -> Option<i64> {
    let mut cands: Vec<i64> = mods.iter().map(|m| m.out.0 as i64).collect();
    cands.sort_unstable();
    cands.dedup();
    cands.push(-1);
    cands.into_iter().find(|&f| {
        mods.iter().all(|m| {
            factorization(m.out.0 * m.out.1, f) == m.out
                && factorization(m.inp.0 * m.inp.1, f) == m.inp
        })
    })
}

/// The LoKr modules of a Flux.2 LoKr file that PEFT's `update_layer` rebuilds with another
/// layout than the file's (`use_w1 = not (decompose_both and r < max(out_l, in_m)/2)`,
/// `use_w2 = not (r < max(out_k, in_n)/2)`, r as `_create_lokr_config` infers it,
/// `decompose_both` if any key is `lokr_w1_a`): the file's factor is an unexpected key, PEFT's
/// stays uninitialised (diffusers 0.42.1 raised at the fuse, or applied ΔW = 0, on
/// `fixtures/diffusion10/flux2_lokr/`).
pub(super) fn rebuilt(adapter: &crate::adapter::Adapter) -> Vec<String> {
    let keys = keys_of(adapter);
    let mods = lokr_modules(&keys);
    let both = keys.iter().any(|(k, _)| k.contains(".lokr_w1_a"));
    let form = |whole: bool| if whole { "whole" } else { "decomposed" };
    mods.iter()
        .filter_map(|m| {
            // r < side/2, in integers: 2r < side.
            let w1 = !(both && 2 * m.r < m.out.0.max(m.inp.0));
            let w2 = 2 * m.r >= m.out.1.max(m.inp.1);
            (w1 != m.w1_whole || w2 != m.w2_whole).then(|| {
                format!(
                    "{} (w1 {}, w2 {} in the file; PEFT's LoKr at r={} builds w1 {}, w2 {}: not applied as stored)",
                    m.name,
                    form(m.w1_whole),
                    form(m.w2_whole),
                    m.r,
                    form(w1),
                    form(w2)
                )
            })
        })
        .collect()
}

/// Modules a Flux.2 file's `diffusion_model.` converters (LoRA and LoKr) apply as another ΔW:
/// `final_layer.adaLN_modulation.1` renamed to `norm_out.linear` without the halves' swap the
/// model and its checkpoint converter make (shift, scale → scale, shift).
pub(super) fn final_unswapped(adapter: &crate::adapter::Adapter) -> Vec<String> {
    let keys = keys_of(adapter);
    if keys.iter().any(|(k, _)| k.contains(".lora_down.weight")) {
        return Vec::new(); // the kohya converter drops it (`diffusers.flux2_dropped`)
    }
    adapter
        .modules
        .iter()
        .filter(|m| {
            m.name == "diffusion_model.final_layer.adaLN_modulation.1"
                || m.name == "base_model.model.final_layer.adaLN_modulation.1"
        })
        .map(|m| {
            format!(
                "{} (renamed to norm_out.linear without the shift/scale swap: another ΔW)",
                m.name
            )
        })
        .collect()
}

/// `(refused, dropped)` for a LoKr file in `ZImageLoraLoaderMixin.lora_state_dict`: with a
/// `diffusion_model.` or `.alpha` key, `_convert_non_diffusers_lokr_to_diffusers` strips
/// `diffusion_model.`, bakes the alphas into `lokr_w1` (`_bake_lokr_alpha_`), raises "unexpected
/// non-LoKr keys" for any other key and puts every key under `transformer.` as it stands:
/// diffusers paths land; the original fused `attention.qkv` or LyCORIS' flattened
/// `lycoris_layers_0_attention_to_q` name no module of the model (`is_module`), and where none
/// of the file's does, PEFT raises NoMatchingPeftModuleError (fixtures/diffusion11/z_image_lokr).
/// A file without either keeps its names: only `transformer.` ones reach the model.
pub(super) fn z_image_findings(
    adapter: &crate::adapter::Adapter,
    keys: &[&str],
    is_module: fn(&str) -> bool,
) -> (Vec<String>, Vec<String>) {
    let converted = keys
        .iter()
        .any(|k| k.starts_with("diffusion_model.") || k.ends_with(".alpha"));
    if converted {
        let other: Vec<String> = keys
            .iter()
            .filter(|k| !k.ends_with(".alpha") && !k.contains(".lokr_"))
            .map(|k| format!("{k} (not a LoKr key: ValueError)"))
            .collect();
        if !other.is_empty() {
            return (other, vec![]);
        }
    }
    let path = |name: &str| -> Option<String> {
        if converted {
            Some(
                name.strip_prefix("diffusion_model.")
                    .unwrap_or(name)
                    .to_owned(),
            )
        } else {
            name.strip_prefix("transformer.").map(str::to_owned)
        }
    };
    let lands = |name: &str| path(name).is_some_and(|p| is_module(&p));
    let missing: Vec<&str> = adapter
        .modules
        .iter()
        .map(|m| m.name.as_str())
        .filter(|n| !lands(n))
        .collect();
    if converted && !missing.is_empty() && missing.len() == adapter.modules.len() {
        let refused = missing
            .iter()
            .map(|n| {
                format!("{n} (no module of the model has this path: NoMatchingPeftModuleError)")
            })
            .collect();
        return (refused, vec![]);
    }
    let dropped = missing
        .iter()
        .map(|n| format!("{n} (no module of the model has this path: nothing applied)"))
        .collect();
    (vec![], dropped)
}

/// The LoKr modules the loader of `model` rebuilds with other factors
/// (`diffusers.flux2_lokr_rebuilt`): empty for every loader but Flux.2's.
pub(super) fn misapplied(
    adapter: &crate::adapter::Adapter,
    model: super::when::DiffusersModel,
) -> Vec<String> {
    if model != super::when::DiffusersModel::Flux2 || !lokr_file(adapter) {
        return Vec::new();
    }
    rebuilt(adapter)
}

#[cfg(test)]
mod tests {
    use super::factorization;

    #[test]
    fn factorization_is_peft_s() {
        // PEFT's docstring examples (`tuners/lokr/layer.py` factorization).
        assert_eq!(factorization(256, -1), (16, 16));
        assert_eq!(factorization(128, -1), (8, 16));
        assert_eq!(factorization(127, -1), (1, 127));
        assert_eq!(factorization(128, 4), (4, 32));
    }
}
