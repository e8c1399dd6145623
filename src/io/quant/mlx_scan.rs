//! Recognising MLX-quantized weights from a checkpoint's headers and config.json's
//! `quantization` ([`QuantMap::add_mlx`], called by `scan.rs`): the group size and bits of each
//! module as mlx-lm's `load_model` picks them, checked against the packed weight and its
//! scales and biases, 2-D or with leading expert dimensions. Reads no tensor data; the formats
//! themselves are `mlx.rs` (affine) and `mlx_fp.rs` (mxfp4, nvfp4, mxfp8).

use super::mlx::{Params, BITS};
use super::mlx_fp;
use super::*;

/// config.json's MLX quantization settings: `quantization`, or `quantization_config` where a
/// converter wrote only that (mlx-lm writes both, the same dict).
pub(super) fn config_of(config_json: Option<&serde_json::Value>) -> Option<serde_json::Value> {
    let v = config_json?;
    v.get("quantization")
        .or_else(|| v.get("quantization_config"))
        .filter(|q| q.is_object())
        .cloned()
}

/// `(group_size, bits, mode)` for module `prefix`, as mlx-lm's `load_model` and MLX's
/// `nn.quantize` pick them: a per-module object is passed to `to_quantized` as it is (its own
/// `mode`, else affine; its own `group_size` and `bits`, else that mode's defaults: affine 64
/// and 4, mxfp4 32 and 4, nvfp4 16 and 4, mxfp8 32 and 8), never the top-level values; `true`
/// or no entry takes the top-level ones. `None` when the config leaves the module float
/// (`false`).
fn settings(cfg: &serde_json::Value, prefix: &str) -> Result<Option<(u64, u64, String)>, String> {
    let (entry, own) = match cfg.get(prefix) {
        Some(serde_json::Value::Bool(false)) => return Ok(None),
        Some(e @ serde_json::Value::Object(_)) => (e, true),
        Some(serde_json::Value::Bool(true)) | None => (cfg, false),
        Some(other) => {
            return Err(format!(
                "quantization.\"{prefix}\" is {other}, not an object or a boolean"
            ))
        }
    };
    let mode = entry
        .get("mode")
        .map(|m| m.as_str().map(str::to_owned).ok_or(m.to_string()))
        .transpose()
        .map_err(|m| format!("quantization.mode {m} is not a string"))?
        .unwrap_or_else(|| "affine".into());
    let (gs, bits) = match mode.as_str() {
        "mxfp4" => (32, 4),
        "nvfp4" => (16, 4),
        "mxfp8" => (32, 8),
        _ => (64, 4),
    };
    let num = |k: &str, default: u64| match entry.get(k) {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("quantization gives no integer `{k}` for `{prefix}`")),
        None if own => Ok(default),
        None => Err(format!(
            "quantization gives no integer `{k}` for `{prefix}`"
        )),
    };
    Ok(Some((num("group_size", gs)?, num("bits", bits)?, mode)))
}

impl QuantMap {
    /// An MLX-quantized weight `P.weight` (U32 with `P.scales`): checked against config.json's
    /// `quantization` and the companions' shapes and dtypes, then recorded: affine here, the
    /// floating-point modes (mxfp4, nvfp4, mxfp8: `U8` scales, no biases) by `add_mlx_fp`;
    /// an unknown mode is recorded as not read.
    pub(super) fn add_mlx(
        &mut self,
        ck: &Checkpoint,
        cfg: Option<&serde_json::Value>,
        prefix: &str,
        weight: &str,
    ) -> InputResult<()> {
        let scales = format!("{prefix}.scales");
        let biases = format!("{prefix}.biases");
        let config = ck.folder().join("config.json");
        let Some(cfg) = cfg else {
            // Only `group_size · bits` follows from the shapes: not read, copied where kept.
            let e = err(ck, weight, format!(
                "is MLX-quantized (packed uint32 with `{scales}`) but config.json has no `quantization` to give its group size and bits"
            ));
            self.push_unsupported(Some(weight.to_owned()), e);
            return Ok(());
        };
        let (group_size, bits, mode) = match settings(cfg, prefix) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(err(ck, weight, format!(
                    "is packed uint32 with `{scales}` but config.json's quantization.\"{prefix}\" is false (not quantized)"
                )))
            }
            Err(m) => return Err(InputError::invalid(config, m)),
        };
        if let Some(fp) = mlx_fp::Mode::parse(&mode) {
            return self.add_mlx_fp(ck, prefix, weight, fp, (group_size, bits));
        }
        if mode != "affine" {
            let e = err(ck, weight, format!(
                "is MLX-quantized in mode `{mode}`, which lorakit does not read (affine, mxfp4, nvfp4 and mxfp8 only): use mlx_lm.convert --dequantize or mlx_lm.fuse"
            ));
            self.push_unsupported(Some(weight.to_owned()), e);
            return Ok(());
        }
        let w = ck.info(weight).expect("listed");
        let s = ck.info(&scales).expect("checked by the caller");
        let b = ck.info(&biases).ok_or_else(|| {
            err(
                ck,
                weight,
                format!("is MLX affine-quantized but `{biases}` is missing"),
            )
        })?;
        // Checked as read (u64): a cast first would take 2^32 + 4 bits for 4 (hostile round 12).
        let (Some(bits), Some(group_size)) = (
            u32::try_from(bits).ok().filter(|b| BITS.contains(b)),
            usize::try_from(group_size).ok().filter(|&g| g > 0),
        ) else {
            return Err(InputError::invalid(config, format!(
                "quantization for `{prefix}`: bits {bits} and group_size {group_size} are not an MLX affine quantization (bits 2, 3, 4, 5, 6, 8)"
            )));
        };
        let Some((lead, rows, words)) = packed_dims(&w.shape) else {
            self.push_unsupported(Some(weight.to_owned()), not_a_matrix(ck, weight, w));
            return Ok(());
        };
        if !matches!(s.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) || b.dtype != s.dtype {
            return Err(err(
                ck,
                &scales,
                format!(
                    "is {} with `{biases}` {}: MLX affine scales and biases are one float dtype",
                    typed_of(s),
                    typed_of(b)
                ),
            ));
        }
        let row_bits = row_bits(ck, weight, w, words)?;
        let cols = row_bits / bits as usize;
        let groups = cols / group_size;
        let want = [&lead[..], &[groups]].concat();
        if !row_bits.is_multiple_of(bits as usize)
            || !cols.is_multiple_of(group_size)
            || s.shape != want
            || b.shape != s.shape
        {
            return Err(err(ck, &scales, format!(
                "is {} but `{weight}` {} at {bits} bits in groups of {group_size} (config.json) needs {want:?}",
                typed_of(s),
                typed_of(w),
            )));
        }
        let p = Params {
            bits,
            group_size,
            rows,
            cols,
            dtype: s.dtype,
        };
        self.insert_stored_as_itself(
            ck,
            weight,
            [&lead[..], &[cols]].concat(),
            Scheme::Mlx(p),
            vec![scales, biases],
        )
    }
}

impl QuantMap {
    /// A weight in one of MLX's floating-point modes (`mx.quantize(mode="mxfp4"|"nvfp4"|
    /// "mxfp8")`): U8 scales, no biases, the group size and bits the mode requires (MLX's
    /// `fp_quantize` refuses others). A `P.global_scale` (nvfp4 with a tensor scale, which
    /// mlx-lm writes for MoE experts only) is not read: named, copied where kept.
    fn add_mlx_fp(
        &mut self,
        ck: &Checkpoint,
        prefix: &str,
        weight: &str,
        mode: mlx_fp::Mode,
        (group_size, bits): (u64, u64),
    ) -> InputResult<()> {
        let scales = format!("{prefix}.scales");
        let global = format!("{prefix}.global_scale");
        let name = mode.name();
        if group_size != mode.group_size() as u64 || bits != u64::from(mode.bits()) {
            return Err(InputError::invalid(
                ck.folder().join("config.json"),
                format!(
                    "quantization for `{prefix}`: {name} takes group size {} and {} bits (mx.quantize refuses others), not {group_size} and {bits}",
                    mode.group_size(),
                    mode.bits()
                ),
            ));
        }
        let w = ck.info(weight).expect("listed");
        let s = ck.info(&scales).expect("checked by the caller");
        if ck.contains(&global) {
            let e = err(ck, weight, format!(
                "has a `{global}` (an nvfp4 tensor scale, mlx-lm's MoE experts), which lorakit does not read"
            ));
            self.push_unsupported(Some(weight.to_owned()), e);
            return Ok(());
        }
        let Some((lead, rows, words)) = packed_dims(&w.shape) else {
            self.push_unsupported(Some(weight.to_owned()), not_a_matrix(ck, weight, w));
            return Ok(());
        };
        let biases = format!("{prefix}.biases");
        if ck.contains(&biases) {
            return Err(err(
                ck,
                &biases,
                format!("is present, but MLX {name} weights have no biases (mx.dequantize refuses them)"),
            ));
        }
        let cols = row_bits(ck, weight, w, words)? / mode.bits() as usize;
        let want = [&lead[..], &[cols / mode.group_size()]].concat();
        if s.dtype != Dtype::U8 || !cols.is_multiple_of(mode.group_size()) || s.shape != want {
            return Err(err(
                ck,
                &scales,
                format!(
                    "is {} but `{weight}` {} in {name} (groups of {}) needs U8 {want:?}",
                    typed_of(s),
                    typed_of(w),
                    mode.group_size(),
                ),
            ));
        }
        let p = mlx_fp::Params {
            mode,
            rows,
            cols,
            // `mx.dequantize`'s default output for these modes, which mlx-lm's fuse adds the
            // delta in and quantizes again from.
            dtype: Dtype::BF16,
        };
        self.insert_stored_as_itself(
            ck,
            weight,
            [&lead[..], &[cols]].concat(),
            Scheme::MlxFp(p),
            vec![scales],
        )
    }
}

/// A packed weight's leading dimensions (all but the last: `[rows]`, or `[E, rows]` for
/// mlx-lm's `QuantizedSwitchLinear` experts), their product (the rows `mx.quantize` saw, as it
/// quantizes the last axis in groups), and its words per row. `None` below two dimensions,
/// which `mx.quantize` refuses.
fn packed_dims(shape: &[usize]) -> Option<(Vec<usize>, usize, usize)> {
    let (&words, lead) = shape.split_last()?;
    if lead.is_empty() {
        return None;
    }
    let rows = lead.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    Some((lead.to_vec(), rows, words))
}

/// The bits in one packed row (`words · 32`), refused naming the weight where a header's
/// width of a zero-size tensor makes them overflow (hostile round 13: `[0, 2^62]` panicked).
fn row_bits(
    ck: &Checkpoint,
    weight: &str,
    w: &crate::io::header::TensorInfo,
    words: usize,
) -> InputResult<usize> {
    words.checked_mul(32).ok_or_else(|| {
        err(
            ck,
            weight,
            format!(
                "is {}: {words} words of 32 bits per row overflow the bit count",
                typed_of(w)
            ),
        )
    })
}

fn not_a_matrix(ck: &Checkpoint, weight: &str, w: &crate::io::header::TensorInfo) -> InputError {
    err(ck, weight, format!(
        "is {}, packed uint32 with scales but not a matrix (mx.quantize needs two dimensions or more)",
        typed_of(w)
    ))
}

fn typed_of(info: &crate::io::header::TensorInfo) -> String {
    format!("{} {:?}", dtype::name(info.dtype), info.shape)
}
