//! PyTorch checkpoints as `torch.save` writes them (`adapter_model.bin`, `pytorch_model.bin`,
//! `.pt`): a zip archive (PyTorch ≥ 1.6) of `data.pkl`, the pickled state dict, and one stored
//! entry `data/KEY` per tensor storage, little-endian. lorakit reads such a file as it reads a
//! safetensors file: [`header`] builds the same validated [`Header`] (each tensor's dtype, shape
//! and absolute byte range inside its storage's entry), and the tensors are views of the file's
//! memory map, never copied or loaded whole.
//!
//! Why: PEFT saved `adapter_model.bin` by default before `safe_serialization` became its
//! default (PEFT 0.6 era), and many adapters on the Hub are only that file.
//!
//! Must not: run pickled code ([`pickle`] knows a fixed allowlist of globals, as
//! `torch.load(weights_only=True)` does), accept a tensor whose bytes are not one contiguous
//! row-major run inside its storage (a transposed or strided view: refused by name), a
//! big-endian archive, or a range outside its entry. The legacy pre-1.6 format (a bare pickle
//! stream with storages appended) is refused with what to do.

mod pickle;
mod zip;

use crate::dtype::Dtype;
use crate::io::header::{Header, TensorInfo};
use pickle::Val;
use std::fs::File;

/// The largest `data.pkl` read: a state dict's pickle is ~100 bytes per tensor.
const MAX_PICKLE: u64 = 256 << 20;

/// The dtype and element size of a typed storage class (`_rebuild_tensor_v2`) or of a dtype
/// global (`_rebuild_tensor_v3`, over an untyped storage).
fn storage_dtype(class: &str) -> Option<(Dtype, u64)> {
    Some(match class.strip_prefix("torch.")? {
        "FloatStorage" | "float32" => (Dtype::F32, 4),
        "HalfStorage" | "float16" => (Dtype::F16, 2),
        "BFloat16Storage" | "bfloat16" => (Dtype::BF16, 2),
        "DoubleStorage" | "float64" => (Dtype::F64, 8),
        "LongStorage" | "int64" => (Dtype::I64, 8),
        "IntStorage" | "int32" => (Dtype::I32, 4),
        "ShortStorage" | "int16" => (Dtype::I16, 2),
        "CharStorage" | "int8" => (Dtype::I8, 1),
        "ByteStorage" | "uint8" => (Dtype::U8, 1),
        "BoolStorage" | "bool" => (Dtype::BOOL, 1),
        "uint16" => (Dtype::U16, 2),
        "uint32" => (Dtype::U32, 4),
        "uint64" => (Dtype::U64, 8),
        "float8_e4m3fn" => (Dtype::F8_E4M3, 1),
        "float8_e5m2" => (Dtype::F8_E5M2, 1),
        "float8_e8m0fnu" => (Dtype::F8_E8M0, 1),
        "float8_e4m3fnuz" => (Dtype::F8_E4M3FNUZ, 1),
        "float8_e5m2fnuz" => (Dtype::F8_E5M2FNUZ, 1),
        _ => return None,
    })
}

/// Reads the tensor table of the `torch.save` zip archive `file` (`file_len` bytes). Errors
/// are one line, naming the tensor where there is one.
pub fn header(file: &File, file_len: u64) -> Result<Header, String> {
    use std::os::unix::fs::FileExt;
    let entries = zip::entries(file, file_len)?;
    let mut pickles = entries.iter().filter(|e| {
        e.name.ends_with("/data.pkl") && e.name.matches('/').count() == 1 || e.name == "data.pkl"
    });
    let (Some(pkl), None) = (pickles.next(), pickles.next()) else {
        return Err(
            "a zip archive without exactly one `data.pkl`: not a torch.save checkpoint".into(),
        );
    };
    let prefix = &pkl.name[..pkl.name.len() - "data.pkl".len()];
    if let Some(order) = entries
        .iter()
        .find(|e| e.name == format!("{prefix}byteorder"))
    {
        let mut b = vec![0u8; order.len.min(16) as usize];
        file.read_exact_at(&mut b, order.start)
            .map_err(|e| format!("reading byteorder: {e}"))?;
        if b != b"little" {
            return Err(format!(
                "a checkpoint saved with byte order `{}`; lorakit reads little-endian ones",
                String::from_utf8_lossy(&b)
            ));
        }
    }
    if pkl.len > MAX_PICKLE {
        return Err(format!(
            "a data.pkl of {} bytes (over {MAX_PICKLE})",
            pkl.len
        ));
    }
    let mut data = vec![0u8; pkl.len as usize];
    file.read_exact_at(&mut data, pkl.start)
        .map_err(|e| format!("reading data.pkl: {e}"))?;
    let root = pickle::load(&data).map_err(|e| format!("data.pkl: {e}"))?;
    let dict = match &root {
        Val::Dict(d, _) => d.clone(),
        _ => return Err("data.pkl holds no dict of tensors".into()),
    };
    // A training checkpoint's `{"state_dict": {...}, "epoch": …}` (Lightning, sd-scripts'
    // `.ckpt`), or `{"model": …}` / `{"module": …}` (DeepSpeed, many trainers): the nested state
    // dict, when the top level holds no tensor itself.
    let has_tensor = |d: &[(Val, Val)]| d.iter().any(|(_, v)| matches!(v, Val::Tensor(_)));
    let dict = if has_tensor(&dict) {
        dict
    } else {
        ["state_dict", "model", "module"]
            .iter()
            .find_map(|key| {
                dict.iter().find_map(|(k, v)| match (k, v) {
                    (Val::Str(k), Val::Dict(d, _)) if &**k == *key && has_tensor(d) => {
                        Some(d.clone())
                    }
                    _ => None,
                })
            })
            .ok_or_else(|| {
                let keys: Vec<String> = dict
                    .iter()
                    .filter_map(|(k, _)| match k {
                        Val::Str(k) => Some(format!("`{k}`")),
                        _ => None,
                    })
                    .take(8)
                    .collect();
                format!(
                    "data.pkl holds no tensor at its top level nor under `state_dict`, `model` or `module` (keys: {})",
                    keys.join(", ")
                )
            })?
    };
    let storages: std::collections::HashMap<&str, &zip::Entry> = entries
        .iter()
        .filter_map(|e| {
            e.name
                .strip_prefix(prefix)
                .and_then(|n| n.strip_prefix("data/"))
                .map(|k| (k, e))
        })
        .collect();
    let mut tensors = Vec::with_capacity(dict.len());
    let mut seen = std::collections::HashSet::new();
    for (k, v) in dict.iter() {
        let (Val::Str(name), Val::Tensor(t)) = (k, v) else {
            // Counters and other non-tensor entries of a training checkpoint.
            continue;
        };
        let name = name.to_string();
        if !seen.insert(name.clone()) {
            return Err(format!("tensor `{name}` appears twice in data.pkl"));
        }
        let bad = |msg: String| format!("tensor `{name}`: {msg}");
        let (dtype, esize) = storage_dtype(&t.class).ok_or_else(|| {
            bad(format!(
                "its element type `{}` is not one lorakit reads",
                t.class
            ))
        })?;
        let entry = storages.get(&*t.key).ok_or_else(|| {
            bad(format!(
                "its storage `data/{}` is not in the archive",
                t.key
            ))
        })?;
        // The record must hold what the persistent id says, as torch.load checks ("record
        // size … does not match"): otherwise a range could run over other entries' headers.
        let stated = t
            .storage_numel
            .checked_mul(if t.untyped { 1 } else { esize })
            .ok_or_else(|| bad("its storage size overflows".into()))?;
        if entry.len != stated {
            return Err(bad(format!(
                "its storage `data/{}` holds {} bytes, the pickle says {stated}",
                t.key, entry.len
            )));
        }
        let numel = if t.size.contains(&0) {
            // No element: any strides (torch's contiguous ones use max(size, 1)).
            0
        } else {
            // Contiguous row-major: each stride the product of the sizes after it (a dimension
            // of size 1 may carry any stride).
            let mut want = 1u64;
            for (&s, &st) in t.size.iter().zip(&t.stride).rev() {
                if s != 1 && st != want {
                    return Err(bad(format!(
                        "stored as a strided view (size {:?}, stride {:?}), not one contiguous run; save a .contiguous() copy",
                        t.size, t.stride
                    )));
                }
                want = want
                    .checked_mul(s)
                    .ok_or_else(|| bad("its size overflows".into()))?;
            }
            want
        };
        let range = t
            .offset
            .checked_add(numel)
            .and_then(|e| e.checked_mul(esize))
            .filter(|&e| e <= entry.len)
            .ok_or_else(|| {
                bad(format!(
                    "elements {}..{} lie outside its storage of {} bytes",
                    t.offset,
                    t.offset.saturating_add(numel),
                    entry.len
                ))
            })?;
        let shape = t
            .size
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad("its size overflows".into())))
            .collect::<Result<Vec<_>, _>>()?;
        tensors.push(TensorInfo {
            name,
            dtype,
            shape,
            start: entry.start + t.offset * esize,
            end: entry.start + range,
        });
    }
    drop_tied_lm_head(&mut tensors);
    Ok(Header::from_tensors(Vec::new(), tensors, 0, file_len))
}

/// transformers < 5 saved a tied model's `.bin` with both names of the shared weight
/// (`torch.save` keeps aliases; only its safetensors path removes them): an `lm_head.weight`
/// that is exactly another tensor's bytes (same range, dtype, shape) is the tie itself, and is
/// dropped as the safetensors save drops it, so that the model reads as its safetensors twin
/// (an embedding LoRA with `--tied-embeddings shared` merges once).
fn drop_tied_lm_head(tensors: &mut Vec<TensorInfo>) {
    let same = |a: &TensorInfo, b: &TensorInfo| {
        a.start == b.start && a.end == b.end && a.dtype == b.dtype && a.shape == b.shape
    };
    let tied: Vec<String> = tensors
        .iter()
        .filter(|t| t.name.ends_with("lm_head.weight"))
        .filter(|t| tensors.iter().any(|o| o.name != t.name && same(o, t)))
        .map(|t| t.name.clone())
        .collect();
    tensors.retain(|t| !tied.contains(&t.name));
}

#[cfg(test)]
mod tests;
