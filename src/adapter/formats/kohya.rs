//! kohya-ss sd-scripts LoRA files (`networks/lora.py`).
//!
//! Keys are `{prefix}_{module path with dots replaced by underscores}` followed by
//! `.lora_down.weight` (`A`: `[r, in]`, conv `[r, in, kh, kw]`), `.lora_up.weight` (`B`:
//! `[out, r]`, conv `[out, r, 1, 1]`) and `.alpha` (a scalar); prefixes `lora_unet`,
//! `lora_te`, `lora_te1`, `lora_te2`. The scale is `alpha / r`, and a missing `.alpha` means
//! `alpha = r` (scale 1), as in `networks/lora.py` `LoRAModule.__init__`. Underscored names are
//! resolved against a base model's tensor list by [`crate::adapter::mapping`].

use super::lycoris;
use crate::adapter::{Adapter, Data, DoraRule, Factors, Format, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::collections::BTreeMap;
use std::path::Path;

/// Known prefixes, longest first so `lora_te1_` is not read as `lora_te_` + `1…`.
pub const PREFIXES: &[&str] = &[
    "lora_unet",
    "lora_prior_unet",
    "lora_transformer",
    "lora_te1",
    "lora_te2",
    "lora_te3",
    "lora_te",
    "lycoris",
];

/// Reads a kohya-named file: plain LoRA or any LyCORIS algorithm lorakit applies
/// ([`super::lycoris`]). Every tensor must belong to a module; anything else is refused by name.
pub fn read(path: &Path, file: SafetensorsFile) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let mut parts: BTreeMap<String, lycoris::Parts> = BTreeMap::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        let Some((module, suffix)) = lycoris::split_key(key) else {
            if let Some(algo) = lycoris::unsupported(key) {
                return Err(InputError::invalid(
                    &fpath,
                    format!("tensor `{key}`: {algo} modules are not supported yet (lorakit applies LoRA, LoCon, LoHa, LoKr, full/diff and DoRA scales)"),
                ));
            }
            return Err(InputError::invalid(
                &fpath,
                format!("tensor `{key}`: not a LoRA/LyCORIS tensor (no known suffix such as .lora_down.weight, .hada_w1_a, .lokr_w1, .diff, .alpha)"),
            ));
        };
        if parts
            .entry(module.to_owned())
            .or_default()
            .insert(suffix, (t.name.clone(), t.shape.clone()))
            .is_some()
        {
            return Err(InputError::invalid(
                &fpath,
                format!("tensor `{key}`: given twice"),
            ));
        }
    }
    let modules = parts
        .iter()
        .map(|(name, p)| lycoris::module(&file, name, p))
        .collect::<InputResult<Vec<_>>>()?;
    let metadata = file.header().metadata.clone();
    Ok(Adapter {
        format: Format::Kohya,
        path: path.to_path_buf(),
        source: Some(file),
        modules,
        full_tensors: Vec::new(),
        base_model: None,
        use_rslora: false,
        use_dora: false,
        modules_to_save: Vec::new(),
        config: None,
        metadata,
    })
}

/// Splits a kohya module name into its prefix and the underscored module path.
pub fn split_prefix(name: &str) -> Option<(&'static str, &str)> {
    PREFIXES.iter().find_map(|p| {
        name.strip_prefix(p)
            .and_then(|r| r.strip_prefix('_'))
            .map(|r| (*p, r))
    })
}

/// Kohya name of a module path: `prefix` + `_` + path with dots replaced by underscores.
pub fn kohya_name(prefix: &str, module: &str) -> String {
    format!("{prefix}_{}", module.replace('.', "_"))
}

/// Writes `adapter` (names already resolved to dotted module paths, or kohya names) as a kohya
/// file, every tensor encoded as `dtype`; see [`write_with`].
pub fn write(
    adapter: &Adapter,
    prefix: &str,
    out: &Path,
    output: &mut crate::io::Output,
    dtype: crate::dtype::Dtype,
    extra_metadata: &[(String, String)],
) -> InputResult<()> {
    write_with(adapter, prefix, out, output, Some(dtype), extra_metadata)
}

/// Kohya alpha that gives module `m` its scale under kohya's `alpha / rank` rule: `alpha`
/// itself, or `scale · rank` for rsLoRA (kohya has no `√r` rule).
pub fn kohya_alpha(adapter: &Adapter, m: &LoraModule) -> f64 {
    if adapter.use_rslora {
        m.scale * m.rank as f64
    } else {
        m.alpha
    }
}

/// Writes `adapter` as a kohya file. Modules with a kohya prefix keep their name; dotted module
/// paths become `prefix_path_with_underscores` (two modules that would get the same kohya name
/// are an error). The scale is carried as `.alpha` ([`kohya_alpha`]), always stored as an F32
/// scalar so a half-precision file does not round it. `dtype`: `Some(d)` encodes every factor
/// as `d`; `None` copies stored factors byte for byte (see [`super::peft::encoded`]).
pub fn write_with(
    adapter: &Adapter,
    prefix: &str,
    out: &Path,
    output: &mut crate::io::Output,
    dtype: Option<crate::dtype::Dtype>,
    extra_metadata: &[(String, String)],
) -> InputResult<()> {
    use crate::dtype::Dtype;
    use crate::io::TensorSpec;
    let mut specs = Vec::new();
    let mut payload: Vec<Vec<u8>> = Vec::new();
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for m in &adapter.modules {
        let lycoris_dora = matches!(m.dora_rule, DoraRule::Lycoris { .. });
        let full = matches!(m.factors, Factors::Full { .. });
        if (m.dora_magnitude.is_some() && !lycoris_dora)
            || (m.bias.is_some() && !full)
            || m.kind == ModuleKind::Embedding
            || m.base_transposed
        {
            return Err(InputError::invalid(
                &adapter.path,
                format!("module `{}`: kohya format cannot hold PEFT DoRA, lora bias, embedding or fan_in_fan_out modules", m.name),
            ));
        }
        let base = match split_prefix(&m.name) {
            Some(_) => m.name.clone(),
            None => kohya_name(prefix, &m.name),
        };
        if let Some(other) = seen.insert(base.clone(), &m.name) {
            return Err(InputError::invalid(
                &adapter.path,
                format!(
                    "modules `{other}` and `{}` both become kohya module `{base}`",
                    m.name
                ),
            ));
        }
        if !full {
            let alpha = kohya_alpha(adapter, m) as f32;
            specs.push(TensorSpec::new(format!("{base}.alpha"), Dtype::F32, vec![]));
            payload.push(alpha.to_le_bytes().to_vec());
        }
        for (suffix, data, canonical) in lycoris::tensors(m) {
            // A stored tensor keeps the shape it was stored with (LyCORIS writes a LoHa conv's
            // `hada_w1_b` flattened, sd-scripts a conv's factors 4-D), so conversions are exact.
            let shape = match (data, adapter.source.as_ref()) {
                (
                    Data::Stored {
                        key,
                        transpose: false,
                    },
                    Some(src),
                ) => src.info(key).map_or(canonical.clone(), |i| i.shape.clone()),
                _ => canonical,
            };
            if shape.iter().product::<usize>() != adapter.numel(data) {
                return Err(InputError::invalid(
                    &adapter.path,
                    format!(
                        "module `{}`: {suffix} holds {} values, which does not fit shape {shape:?}",
                        m.name,
                        adapter.numel(data)
                    ),
                ));
            }
            let (dt, bytes) = super::peft::encoded(adapter, data, dtype)?;
            specs.push(TensorSpec::new(format!("{base}.{suffix}"), dt, shape));
            payload.push(bytes);
        }
    }
    if let Some(f) = adapter.full_tensors.first() {
        return Err(InputError::invalid(
            &adapter.path,
            format!("tensor `{}`: kohya format cannot hold full tensors (modules_to_save, saved embedding layers)", f.name),
        ));
    }
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by(|&i, &j| specs[i].name.cmp(&specs[j].name));
    let specs: Vec<TensorSpec> = order.iter().map(|&i| specs[i].clone()).collect();
    let mut w = output.safetensors(out, extra_metadata, specs.clone())?;
    for (spec, &i) in specs.iter().zip(&order) {
        w.write_tensor(&spec.name, &payload[i])?;
    }
    w.finish()?;
    Ok(())
}

/// Reads a one-element tensor of any numeric dtype as f64 (diffusers writes kohya alphas as
/// I64, kohya itself as F16/F32).
pub(crate) fn read_scalar(file: &SafetensorsFile, key: &str) -> InputResult<f64> {
    use crate::dtype::Dtype;
    let v = file.view(key)?;
    let d = v.data;
    let le = |n: usize| -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&d[..n]);
        b
    };
    Ok(match v.dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => v.to_f32()[0] as f64,
        Dtype::I64 => i64::from_le_bytes(le(8)) as f64,
        Dtype::I32 => i32::from_le_bytes(le(4)[..4].try_into().expect("4")) as f64,
        Dtype::I16 => i16::from_le_bytes([d[0], d[1]]) as f64,
        Dtype::I8 => d[0] as i8 as f64,
        Dtype::U8 => d[0] as f64,
        other => {
            return Err(InputError::invalid(
                file.path(),
                format!(
                    "tensor `{key}`: alpha has unsupported dtype {}",
                    crate::dtype::name(other)
                ),
            ))
        }
    })
}
