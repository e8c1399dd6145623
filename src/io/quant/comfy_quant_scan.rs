//! Recognising ComfyUI's `comfy_quant` layers from the headers and their markers, and reading one
//! weight with its scales ([`comfy_quant`](super::comfy_quant) holds the layouts and their math).
//!
//! Must not guess a format from shapes or dtypes, and reads no tensor data except the markers and
//! the scales of the weight at hand.

use super::comfy_quant::{
    blocked_shape, dequantize, format_of, Format, Params, LAYER_TENSORS, MARKER,
};
use super::scan::{require_f32_scalar, typed};
use super::{err, QuantMap, QuantTensor, Scheme};
use crate::dtype::{self, Dtype};
use crate::error::InputResult;
use crate::io::Checkpoint;

/// The most bytes a marker's JSON may have (ComfyUI's are a few dozen).
const MAX_MARKER_BYTES: u64 = 1 << 16;

/// The model dtype of a ComfyUI checkpoint: config.json's `dtype` (or `torch_dtype`) where the
/// folder has one, else bf16 (`comfy/ops.py` `mixed_precision_ops(compute_dtype=torch.bfloat16)`).
fn model_dtype(ck: &Checkpoint) -> Dtype {
    let config = crate::io::read_json_file(&ck.folder().join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    dtype::of_config_or_bf16(config.as_ref())
}

impl QuantMap {
    /// Every layer with a `P.comfy_quant` marker: its tensors claimed (no other format reads
    /// them as its own); a format lorakit reads is checked and recorded, any other refused as a
    /// format lorakit does not read.
    pub(super) fn add_comfy_quant_all(
        &mut self,
        ck: &Checkpoint,
        names: &[String],
    ) -> InputResult<()> {
        let suffix = format!(".{MARKER}");
        let mut dtype = None;
        for name in names {
            let Some(p) = name.strip_suffix(&suffix) else {
                continue;
            };
            let info = ck.info(name).expect("listed");
            if info.dtype != Dtype::U8
                || info.shape.len() != 1
                || info.byte_len() > MAX_MARKER_BYTES
            {
                return Err(err(
                    ck,
                    name,
                    format!(
                        "is {}; ComfyUI's quantization marker is a small 1-D U8 tensor of JSON bytes",
                        typed(info)
                    ),
                ));
            }
            let format = format_of(ck.view(name)?.data).map_err(|m| err(ck, name, m))?;
            let weight = format!("{p}.weight");
            if !ck.contains(&weight) {
                return Err(err(
                    ck,
                    name,
                    format!("marks `{weight}` as ComfyUI `{format}` but there is no such tensor"),
                ));
            }
            self.claim_comfy_layer(ck, p);
            let pre = format!("{p}.pre_quant_scale");
            let why = match Format::parse(&format) {
                Some(_) if ck.contains(&pre) => format!(
                    "is ComfyUI's `{format}` with `{pre}` (ModelOpt AWQ input smoothing, applied to the layer's input), which lorakit does not read"
                ),
                Some(f) => {
                    let d = *dtype.get_or_insert_with(|| model_dtype(ck));
                    self.add_comfy(ck, p, f, d)?;
                    continue;
                }
                None => format!(
                    "is ComfyUI's `{format}` quantization (`{name}`), which lorakit does not read (it reads float8_e4m3fn, float8_e5m2, nvfp4 and mxfp8)"
                ),
            };
            self.push_unsupported(Some(weight.clone()), err(ck, &weight, why));
        }
        Ok(())
    }

    /// One layer of a format lorakit reads, every tensor checked against the layout.
    fn add_comfy(&mut self, ck: &Checkpoint, p: &str, f: Format, dtype: Dtype) -> InputResult<()> {
        let weight = format!("{p}.weight");
        let scale = format!("{p}.weight_scale");
        let marker = format!("{p}.{MARKER}");
        let w = ck.info(&weight).expect("present");
        let (data_dtype, pack) = match f {
            Format::Float8E4m3 | Format::Mxfp8 => (Dtype::F8_E4M3, 1),
            Format::Float8E5m2 => (Dtype::F8_E5M2, 1),
            Format::Nvfp4 => (Dtype::U8, 2),
        };
        let (rows, cols) = match w.shape[..] {
            [r, c] if w.dtype == data_dtype && r > 0 && c > 0 => (r, c * pack),
            _ => {
                return Err(err(
                    ck,
                    &weight,
                    format!(
                        "is {}; ComfyUI `{}` stores a 2-D {} matrix",
                        typed(w),
                        f.name(),
                        dtype::name(data_dtype)
                    ),
                ))
            }
        };
        if !cols.is_multiple_of(f.group()) {
            return Err(err(
                ck,
                &weight,
                format!(
                    "has {cols} columns; ComfyUI `{}` scales blocks of {} (comfy_kitchen pads to them)",
                    f.name(),
                    f.group()
                ),
            ));
        }
        let s = ck.info(&scale).ok_or_else(|| {
            err(
                ck,
                &weight,
                format!("is ComfyUI `{}` without `{scale}`", f.name()),
            )
        })?;
        // ComfyUI views a U8 block scale as the scale dtype (`pop_scale(…, dtype)`).
        let (scale_ok, want) = match f {
            Format::Float8E4m3 | Format::Float8E5m2 => (
                matches!(s.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) && s.numel() == 1,
                "one float".to_string(),
            ),
            Format::Nvfp4 | Format::Mxfp8 => {
                let sd = if f == Format::Nvfp4 {
                    Dtype::F8_E4M3
                } else {
                    Dtype::F8_E8M0
                };
                let shape = blocked_shape(rows, cols / f.group());
                (
                    (s.dtype == Dtype::U8 || s.dtype == sd) && s.shape == shape,
                    format!(
                        "{} {shape:?} (one per {} elements of the {rows}x{cols} weight, in cuBLAS' tile order padded to 128 rows and 4 columns)",
                        dtype::name(sd),
                        f.group()
                    ),
                )
            }
        };
        if !scale_ok {
            return Err(err(
                ck,
                &scale,
                format!("is {}; ComfyUI `{}` stores {want}", typed(s), f.name()),
            ));
        }
        let mut companions = vec![scale];
        if f == Format::Nvfp4 {
            let global = format!("{p}.weight_scale_2");
            require_f32_scalar(
                ck,
                &global,
                &weight,
                "ComfyUI `nvfp4` stores the per-tensor scale",
                || format!("is ComfyUI `nvfp4` without `{global}`"),
            )?;
            companions.push(global);
        }
        companions.push(marker);
        let input = format!("{p}.input_scale");
        if ck.contains(&input) {
            companions.push(input);
        }
        self.insert(
            ck,
            QuantTensor {
                name: weight.clone(),
                stored: weight,
                shape: vec![rows, cols],
                scheme: Scheme::Comfy(Params {
                    format: f,
                    rows,
                    cols,
                    dtype,
                }),
                companions,
            },
        )
    }

    /// A ComfyUI weight dequantized; a scale or value that is not finite in the model's dtype
    /// is refused naming the tensor that holds it.
    pub(super) fn dequantize_comfy(
        &self,
        ck: &Checkpoint,
        q: &QuantTensor,
        p: &Params,
    ) -> InputResult<Vec<f32>> {
        let scale = ck.view(&q.companions[0])?;
        let global = match p.format {
            Format::Mxfp8 => 1.0,
            Format::Nvfp4 => dtype::decode(Dtype::F32, ck.view(&q.companions[1])?.data)[0],
            _ => dtype::decode(scale.dtype, scale.data)[0],
        };
        let holder = match p.format {
            Format::Nvfp4 => &q.companions[1],
            _ => &q.companions[0],
        };
        if !global.is_finite() || !dtype::round_to(p.dtype, global).is_finite() {
            return Err(err(
                ck,
                holder,
                format!(
                    "is {global}, not a finite scale in {}",
                    dtype::name(p.dtype)
                ),
            ));
        }
        let data = ck.view(&q.stored)?.data;
        let v = dequantize(p, data, scale.data, global);
        super::all_finite(
            ck,
            q,
            &q.companions[0],
            (p.cols, p.dtype),
            v,
            " (a NaN code or scale, or an overflow)",
        )
    }

    /// Marks the layer `p`'s weight, marker and scales as taken, so no other format's scan
    /// reads them.
    fn claim_comfy_layer(&mut self, ck: &Checkpoint, p: &str) {
        for s in ["weight", MARKER].into_iter().chain(LAYER_TENSORS) {
            let n = format!("{p}.{s}");
            if ck.contains(&n) {
                self.claimed.insert(n);
            }
        }
    }
}
