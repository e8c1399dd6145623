//! `merge --expand-base` ([`ExpandBase::ZeroPad`]): base weights an adapter reads wider than
//! they are stored, widened with zero columns before ΔW is added, as diffusers 0.42.1's Flux
//! loader does for a control LoRA (`loaders/lora_pipeline.py`
//! `FluxLoraLoaderMixin._maybe_expand_transformer_param_shape_or_error_`): a weight `[out, in]`
//! whose `lora_A` reads `in′ > in` columns becomes `[W0 | 0]` of shape `[out, in′]`, its bias
//! untouched, and the merged value is `[W0 | 0] + s·B·A`. Rows are never added (diffusers would
//! widen the bias-less rows too, which no published control LoRA asks for; lorakit refuses it).
//!
//! Where the widened weight is Flux's `x_embedder.weight`, diffusers also sets the model's
//! `in_channels` to `in′` (`_MODULE_NAME_TO_ATTRIBUTE_MAP_FLUX`); its `setattr` reaches only the
//! in-memory config attribute, so its own `save_pretrained` writes the old `in_channels` beside
//! the wider weight and `from_pretrained` then refuses the folder (size mismatch,
//! `fixtures/gen/diffusion12_fixtures.py`). lorakit writes the config the merged weights need:
//! `in_channels` = `in′`, and where `out_channels` is `null` or absent (the model took
//! `out_channels = in_channels`) the old `in_channels`, so `proj_out` keeps its width; every other
//! byte of config.json as the base has it.
//!
//! Must not widen a quantized weight, a row slice or split of a fused tensor, or anything
//! without the option; must not write (the plan holds the rewritten config.json).

use super::model::{Action, ExpandBase, MergeOptions, UnmatchedReport, WeightedAdapter};
use crate::adapter::mapping::{self, Part, RowSlice, Unmatched};
use crate::dtype::Dtype;
use crate::error::{InputError, Opt, OptNames};
use crate::io::Checkpoint;
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The tensor diffusers maps to the config's `in_channels` (`_MODULE_NAME_TO_ATTRIBUTE_MAP_FLUX`).
const X_EMBEDDER: &str = "x_embedder.weight";

/// A shape mismatch that zero columns resolve: the same rows, more columns, a float 2-D weight.
fn columns_only(u: &Unmatched, quant: &crate::io::quant::QuantMap) -> Option<(String, usize)> {
    match u {
        Unmatched::ShapeMismatch {
            module,
            tensor,
            expected,
            found,
        } if !module.ends_with(".lora_B.bias")
            && quant.get(tensor).is_none()
            && expected.len() == 2
            && found.len() == 2
            && expected[0] == found[0]
            && expected[1] > found[1] =>
        {
            Some((tensor.clone(), expected[1]))
        }
        _ => None,
    }
}

/// The base weights the adapters read wider than stored, at the width they read, with
/// [`ExpandBase::ZeroPad`] (none without it). Two adapters that read one weight at two widths
/// are refused.
pub(super) fn widenings(
    adapters: &[WeightedAdapter],
    base: &Checkpoint,
    quant: &crate::io::quant::QuantMap,
    options: &MergeOptions,
) -> Result<HashMap<String, Vec<usize>>> {
    let mut widened: HashMap<String, Vec<usize>> = HashMap::new();
    if options.expand_base != ExpandBase::ZeroPad {
        return Ok(widened);
    }
    if options.unmerge || options.part.is_some() {
        bail!(crate::error::OptionError::new(|o| {
            format!(
            "{} widens the base before a merge: it is not combined with an unmerge (the stored width is not recoverable from a merged model) or a part of a run (parts do not rewrite config.json)",
            o.opt(Opt::ExpandBase)
        )
        }));
    }
    for wa in adapters {
        let res = mapping::resolve_in(&wa.adapter, base, Some(quant));
        for u in &res.unmatched {
            let Some((tensor, cols)) = columns_only(u, quant) else {
                continue;
            };
            let Some(rows) = base.info(&tensor).map(|i| i.shape[0]) else {
                continue;
            };
            match widened.get(&tensor) {
                Some(s) if s[1] != cols => bail!(InputError::invalid(
                    &wa.adapter.path,
                    format!(
                        "base tensor `{tensor}` is widened to {} columns by an earlier adapter, this one reads {cols}",
                        s[1]
                    )
                )),
                _ => {
                    widened.insert(tensor, vec![rows, cols]);
                }
            }
        }
    }
    Ok(widened)
}

/// Plain LoRA modules that read a widened weight at its stored width get zero columns in
/// `lora_A`, as diffusers' `_maybe_expand_lora_state_dict` pads them on every load beside a
/// control LoRA (`loaders/lora_pipeline.py`): their update is `[B·A | 0]`. Other factor kinds
/// stay unmatched (diffusers pads only `lora_A`).
pub(super) fn pad_narrow(
    adapters: &mut [WeightedAdapter],
    base: &Checkpoint,
    quant: &crate::io::quant::QuantMap,
    widened: &HashMap<String, Vec<usize>>,
) -> Result<()> {
    if widened.is_empty() {
        return Ok(());
    }
    for wa in adapters {
        let res = mapping::resolve_widened(&wa.adapter, base, Some(quant), widened);
        for u in &res.unmatched {
            let Some((m, tensor, expected, found)) = u.shape_mismatch_in(&wa.adapter.modules)
            else {
                continue;
            };
            let stored = base.info(tensor).map(|i| i.shape.clone());
            let narrow = widened.get(tensor).map(Vec::as_slice) == Some(found)
                && stored
                    .as_deref()
                    .is_some_and(|s| s.len() == 2 && expected == s);
            if !narrow {
                continue;
            }
            let crate::adapter::Factors::Lora { a, .. } = &wa.adapter.modules[m].factors else {
                continue;
            };
            let (rank, cols, wide) = (wa.adapter.modules[m].rank, expected[1], found[1]);
            let values = wa.adapter.values(a)?;
            let mut padded = vec![0f32; rank * wide];
            for (dst, src) in padded.chunks_exact_mut(wide).zip(values.chunks_exact(cols)) {
                dst[..cols].copy_from_slice(src);
            }
            let module = &mut wa.adapter.modules[m];
            if let crate::adapter::Factors::Lora { a, .. } = &mut module.factors {
                *a = crate::adapter::Data::Owned(std::sync::Arc::new(padded));
            }
            module.in_features = wide;
        }
    }
    Ok(())
}

/// Whether an unmatched module would land with the base widened (to name the option).
pub(super) fn widenable(
    unmatched: &[UnmatchedReport],
    quant: &crate::io::quant::QuantMap,
    options: &MergeOptions,
) -> bool {
    options.expand_base == ExpandBase::Refuse
        && unmatched
            .iter()
            .any(|u| columns_only(&u.detail, quant).is_some())
}

/// The sentence that names the option, after the list of unmatched modules.
pub(super) fn hint(o: &OptNames) -> String {
    format!(
        "; a base weight narrower than the adapter's lora_A (a Flux control LoRA's `x_embedder`) is widened with zero columns by {}, as diffusers' Flux loader does",
        o.opt(Opt::ExpandBase)
    )
}

/// Every widened tensor is merged whole: its terms are no row slice or split of it (refused
/// otherwise, naming the tensor).
pub(super) fn check_terms(
    widened: &HashMap<String, Vec<usize>>,
    actions: &HashMap<String, Action>,
    rows: &HashMap<(usize, usize), RowSlice>,
    splits: &HashMap<(usize, usize), HashMap<String, Part>>,
    base: &Checkpoint,
) -> Result<()> {
    let mut names: Vec<&String> = widened.keys().collect();
    names.sort();
    for n in names {
        let whole = match actions.get(n) {
            Some(Action::Merge(terms)) => terms
                .iter()
                .all(|t| !rows.contains_key(t) && !splits.contains_key(t)),
            _ => false,
        };
        if !whole {
            bail!(InputError::invalid(
                base.file_of(n).map(|f| f.path()).unwrap_or(&base.root),
                format!("tensor `{n}`: lorakit widens a weight only when modules update it whole, not a slice of it")
            ));
        }
    }
    Ok(())
}

/// `bytes` (`rows` × `cols` values of `dtype`) with `new_cols − cols` zero columns appended to
/// each row. Zero bytes are +0.0 in every float dtype.
pub(super) fn pad_columns(
    bytes: &[u8],
    dtype: Dtype,
    rows: usize,
    cols: usize,
    new_cols: usize,
) -> Vec<u8> {
    let size = crate::dtype::byte_len(dtype, 1).expect("float dtype");
    let (old, new) = (cols * size, new_cols * size);
    let mut out = vec![0u8; rows * new];
    for (dst, src) in out.chunks_exact_mut(new).zip(bytes.chunks_exact(old)) {
        dst[..old].copy_from_slice(src);
    }
    out
}

/// The base folder's config.json as the widening of `x_embedder.weight` rewrites it (see the
/// module doc): (its destination in the output, the bytes). `None` when `x_embedder` is not
/// widened or the base has no config.json (a lone .safetensors file).
pub(super) fn config(
    widened: &HashMap<String, Vec<usize>>,
    base: &Checkpoint,
    extra_files: &[(PathBuf, PathBuf)],
    out: &Path,
) -> Result<Option<(PathBuf, Vec<u8>)>> {
    let Some(shape) = widened.get(X_EMBEDDER) else {
        return Ok(None);
    };
    // The stored width, which `in_channels` must give (else the base itself does not load).
    let stored = base.info(X_EMBEDDER).map(|i| i.shape[1]);
    let dst = out.join("config.json");
    let Some((src, _)) = extra_files.iter().find(|(_, d)| *d == dst) else {
        return Ok(None);
    };
    let text = crate::io::read_whole_file(src)?;
    let edited = with_in_channels(&text, shape[1], stored)
        .map_err(|why| InputError::invalid(src, format!("`in_channels`: {why}")))?;
    Ok(Some((dst, edited)))
}

/// `text` (a diffusers config.json) with `in_channels` set to `width` and a `null` or absent
/// `out_channels` set to the old `in_channels`; every other byte unchanged. The old value must
/// be `stored`, the x_embedder's stored width (hostile round 13: an `in_channels` of 16 beside 4
/// columns wrote `out_channels` 16 for a 4-row proj_out, a model that does not load).
fn with_in_channels(text: &[u8], width: usize, stored: Option<usize>) -> Result<Vec<u8>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("config.json is not JSON: {e}"))?;
    let old = doc
        .get("in_channels")
        .and_then(|v| v.as_u64())
        .ok_or("config.json has no integer in_channels to widen")?;
    if let Some(cols) = stored.filter(|&c| c as u64 != old) {
        return Err(format!(
            "config.json gives in_channels {old} but `{X_EMBEDDER}` has {cols} columns (the base does not load as it stands)"
        ));
    }
    let s = std::str::from_utf8(text).map_err(|_| "config.json is not UTF-8")?;
    let (start, end) = value_span(s, "in_channels")?;
    let mut edited = format!("{}{width}{}", &s[..start], &s[end..]);
    match doc.get("out_channels") {
        Some(serde_json::Value::Null) => {
            let (start, end) = value_span(&edited, "out_channels")?;
            edited = format!("{}{old}{}", &edited[..start], &edited[end..]);
        }
        None => {
            // After the in_channels value, with its line's indentation.
            let (key, _) = value_span(&edited, "in_channels")?;
            let key = edited[..key].rfind("\"in_channels\"").expect("found");
            let indent = &edited[edited[..key].rfind('\n').map_or(0, |i| i + 1)..key];
            let (_, end) = value_span(&edited, "in_channels")?;
            let sep = if indent.trim().is_empty() && !indent.is_empty() {
                format!(",\n{indent}")
            } else {
                ", ".into()
            };
            edited = format!(
                "{}{sep}\"out_channels\": {old}{}",
                &edited[..end],
                &edited[end..]
            );
        }
        Some(_) => {}
    }
    let check: serde_json::Value = serde_json::from_str(&edited)
        .map_err(|e| format!("the rewritten config.json is not JSON: {e}"))?;
    if check.get("in_channels").and_then(|v| v.as_u64()) != Some(width as u64) {
        return Err("config.json names in_channels more than once".into());
    }
    Ok(edited.into_bytes())
}

/// The byte range of the value of the one key `"key"` in `s` (refused when it appears more than
/// once, or its value is not a number or null).
fn value_span(s: &str, key: &str) -> Result<(usize, usize), String> {
    let quoted = format!("\"{key}\"");
    let mut hits = s.match_indices(&quoted);
    let (at, _) = hits.next().ok_or(format!("config.json has no {key}"))?;
    if hits.next().is_some() {
        return Err(format!("config.json names {key} more than once"));
    }
    let rest = &s[at + quoted.len()..];
    let colon = rest.trim_start();
    let colon = colon
        .strip_prefix(':')
        .ok_or(format!("no `:` after {key}"))?;
    let value = colon.trim_start();
    let start = s.len() - value.len();
    let len = value
        .find(|c: char| c == ',' || c == '}' || c.is_whitespace())
        .unwrap_or(value.len());
    let token = &value[..len];
    if token != "null" && token.parse::<f64>().is_err() {
        return Err(format!("{key} is `{token}`, not a number"));
    }
    Ok((start, start + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_channels_is_rewritten_in_place_and_a_null_out_channels_keeps_the_old_width() {
        let text = b"{\n  \"a\": 1,\n  \"in_channels\": 4,\n  \"out_channels\": null,\n  \"z\": [1, 2]\n}\n";
        let got = String::from_utf8(with_in_channels(text, 8, Some(4)).unwrap()).unwrap();
        assert_eq!(
            got,
            "{\n  \"a\": 1,\n  \"in_channels\": 8,\n  \"out_channels\": 4,\n  \"z\": [1, 2]\n}\n"
        );
        let text = b"{\n  \"in_channels\": 64,\n  \"patch_size\": 1\n}";
        let got = String::from_utf8(with_in_channels(text, 128, Some(64)).unwrap()).unwrap();
        assert_eq!(
            got,
            "{\n  \"in_channels\": 128,\n  \"out_channels\": 64,\n  \"patch_size\": 1\n}"
        );
        let text = b"{\"in_channels\": 64, \"out_channels\": 64}";
        let got = String::from_utf8(with_in_channels(text, 128, Some(64)).unwrap()).unwrap();
        assert_eq!(got, "{\"in_channels\": 128, \"out_channels\": 64}");
        assert!(with_in_channels(b"{\"out_channels\": 4}", 8, None).is_err());
        assert!(with_in_channels(b"{\"in_channels\": 16}", 8, Some(4)).is_err());
    }

    #[test]
    fn columns_are_padded_with_zeros() {
        let w = crate::dtype::encode(Dtype::BF16, &[1.0, 2.0, 3.0, 4.0]);
        let p = pad_columns(&w, Dtype::BF16, 2, 2, 3);
        assert_eq!(
            crate::dtype::decode(Dtype::BF16, &p),
            vec![1.0, 2.0, 0.0, 3.0, 4.0, 0.0]
        );
    }
}
