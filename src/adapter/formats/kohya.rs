//! kohya-ss sd-scripts LoRA files (`networks/lora.py`).
//!
//! Keys are `{prefix}_{module path with dots replaced by underscores}` followed by
//! `.lora_down.weight` (`A`: `[r, in]`, conv `[r, in, kh, kw]`), `.lora_up.weight` (`B`:
//! `[out, r]`, conv `[out, r, 1, 1]`) and `.alpha` (a scalar); prefixes `lora_unet`,
//! `lora_te`, `lora_te1`, `lora_te2`. The scale is `alpha / r`, and a missing `.alpha` means
//! `alpha = r` (scale 1), as in `networks/lora.py` `LoRAModule.__init__`. Underscored names are
//! resolved against a base model's tensor list by [`crate::adapter::mapping`].

use crate::adapter::{scale_for, Adapter, Data, Format, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::collections::BTreeMap;
use std::path::Path;

/// Known prefixes, longest first so `lora_te1_` is not read as `lora_te_` + `1…`.
pub const PREFIXES: &[&str] = &["lora_unet", "lora_te1", "lora_te2", "lora_te3", "lora_te"];

#[derive(Default)]
struct Parts {
    down: Option<(String, Vec<usize>)>,
    up: Option<(String, Vec<usize>)>,
    alpha: Option<String>,
}

/// Reads a kohya LoRA file.
pub fn read(path: &Path, file: SafetensorsFile) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
    for t in file.tensors() {
        let key = t.name.as_str();
        let entry = (t.name.clone(), t.shape.clone());
        if let Some(m) = key.strip_suffix(".lora_down.weight") {
            parts.entry(m.to_owned()).or_default().down = Some(entry);
        } else if let Some(m) = key.strip_suffix(".lora_up.weight") {
            parts.entry(m.to_owned()).or_default().up = Some(entry);
        } else if let Some(m) = key.strip_suffix(".alpha") {
            if t.shape.iter().product::<usize>() != 1 {
                return Err(InputError::invalid(
                    &fpath,
                    format!(
                        "tensor `{key}`: alpha must be a scalar, shape is {:?}",
                        t.shape
                    ),
                ));
            }
            parts.entry(m.to_owned()).or_default().alpha = Some(t.name.clone());
        } else if key.contains(".hada_") || key.contains(".lokr_") {
            return Err(InputError::invalid(
                &fpath,
                format!("tensor `{key}`: LoHa/LoKr (LyCORIS) networks are not LoRA and are not supported"),
            ));
        } else if key.ends_with(".dora_scale") {
            return Err(InputError::invalid(
                &fpath,
                format!("tensor `{key}`: kohya DoRA is not supported"),
            ));
        } else {
            return Err(InputError::invalid(
                &fpath,
                format!("tensor `{key}`: not a kohya LoRA tensor"),
            ));
        }
    }
    let mut modules = Vec::new();
    for (name, p) in parts {
        let err = |msg: String| InputError::invalid(&fpath, format!("module `{name}`: {msg}"));
        let (Some((dkey, dshape)), Some((ukey, ushape))) = (p.down, p.up) else {
            return Err(err(
                "has only one of lora_down / lora_up (or only an alpha)".into(),
            ));
        };
        if dshape.len() < 2 || ushape.len() != dshape.len() {
            return Err(err(format!(
                "lora_down {dshape:?} and lora_up {ushape:?} do not fit together"
            )));
        }
        let rank = dshape[0];
        if ushape[1] != rank {
            return Err(err(format!(
                "lora_down has rank {rank} {dshape:?} but lora_up has {} columns {ushape:?}",
                ushape[1]
            )));
        }
        let kind = if dshape.len() == 2 {
            ModuleKind::Linear
        } else {
            if ushape[2..].iter().any(|&d| d != 1) {
                return Err(err(format!(
                    "conv lora_up {ushape:?} must be [out, r, 1, 1]"
                )));
            }
            ModuleKind::Conv {
                kernel: dshape[2..].to_vec(),
            }
        };
        let alpha = match &p.alpha {
            Some(k) => {
                let v = read_scalar(&file, k)?;
                if !v.is_finite() {
                    return Err(InputError::invalid(
                        &fpath,
                        format!("tensor `{k}`: alpha is not finite"),
                    ));
                }
                v
            }
            None => rank as f64,
        };
        if rank == 0 {
            return Err(err("rank is 0".into()));
        }
        modules.push(LoraModule {
            scale: scale_for(alpha, rank, false),
            name,
            kind,
            rank,
            alpha,
            out_features: ushape[0],
            in_features: dshape[1..].iter().product(),
            a: Data::Stored {
                key: dkey,
                transpose: false,
            },
            b: Data::Stored {
                key: ukey,
                transpose: false,
            },
            base_transposed: false,
            dora_magnitude: None,
            bias: None,
        });
    }
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
        if m.dora_magnitude.is_some()
            || m.bias.is_some()
            || m.kind == ModuleKind::Embedding
            || m.base_transposed
        {
            return Err(InputError::invalid(
                &adapter.path,
                format!("module `{}`: kohya format cannot hold DoRA, lora bias, embedding or fan_in_fan_out modules", m.name),
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
        let (dshape, ushape) = super::peft::factor_shapes(m);
        let alpha = kohya_alpha(adapter, m) as f32;
        specs.push(TensorSpec::new(format!("{base}.alpha"), Dtype::F32, vec![]));
        payload.push(alpha.to_le_bytes().to_vec());
        let (dt, bytes) = super::peft::encoded(adapter, &m.a, dtype)?;
        specs.push(TensorSpec::new(
            format!("{base}.lora_down.weight"),
            dt,
            dshape,
        ));
        payload.push(bytes);
        let (dt, bytes) = super::peft::encoded(adapter, &m.b, dtype)?;
        specs.push(TensorSpec::new(
            format!("{base}.lora_up.weight"),
            dt,
            ushape,
        ));
        payload.push(bytes);
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
fn read_scalar(file: &SafetensorsFile, key: &str) -> InputResult<f64> {
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
