//! Writing a merged weight back in the format it was stored in (`merge --quant keep`): which
//! formats lorakit requantizes bit-exactly with their producer's rounding, and the stored bytes
//! each one changes. The format files hold the arithmetic; this file only dispatches.
//!
//! Must not read the adapter or decide the merge; must not write files (the merge's writer does).

use super::{bnb4, bnb4_dq, ct_fp4, fp8, gptq, int8, mlx, mlx_fp, packed};
use super::{QuantMap, QuantTensor, Requant, Scheme};
use crate::dtype::{self, Dtype};
use crate::io::Checkpoint;

impl QuantMap {
    /// Why lorakit cannot write `q` back in its own format bit-exactly, if it cannot.
    pub fn requantize_unsupported(&self, q: &QuantTensor) -> Option<String> {
        match &q.scheme {
            Scheme::Bnb4(_) => None,
            Scheme::BnbInt8 => None,
            Scheme::Packed(_) | Scheme::CtDense { .. } => None,
            Scheme::Gptq(_) => None,
            Scheme::Mlx(p) => p.requantize_unsupported(),
            Scheme::MlxFp(_) | Scheme::CtFp4(_) | Scheme::ModelOptFp4(_) => None,
            // comfy/ops.py `set_weight`: `requantize_from_float(weight, scale="recalculate",
            // stochastic_rounding=seed)`, ComfyUI's own way to write a patched weight back.
            Scheme::Comfy(p) => Some(format!("ComfyUI `{}` layers are written back with fresh scales (scale=\"recalculate\") and stochastic rounding from a seed (comfy/ops.py set_weight), which lorakit does not reproduce", p.format.name())),
            Scheme::Fp8 { .. } if self.modelopt_fp8_keep(q) => None,
            Scheme::Fp8 {
                format,
                scale,
                scale_dtype,
                layout,
            } => {
                let (rows, cols) = (q.shape[0], q.shape[1]);
                if self.fp8_ct_keep(q) || self.fp8_mx_keep(q) {
                    None
                } else if scale.ends_with(&format!(".{}", fp8::comfy::SCALE)) {
                    // comfy/ops.py `set_weight`: `QuantizedTensor.from_float(weight, ...,
                    // scale="recalculate", stochastic_rounding=seed)`.
                    Some("ComfyUI's scaled FP8 is written back with a fresh scale and stochastic rounding from a seed (comfy/ops.py set_weight), which lorakit does not reproduce".into())
                } else if *format != Dtype::F8_E4M3
                    || *scale_dtype != Dtype::F32
                    || !scale.ends_with("_scale_inv")
                {
                    Some("FP8 other than E4M3 with F32 weight_scale_inv blocks (transformers' Fp8Quantize) or compressed-tensors' per-channel / per-tensor / block weight_scale".into())
                } else if let Some((bm, bn)) = self
                    .config_block()
                    .ok()
                    .flatten()
                    .or(Some((layout.block_m, layout.block_n)))
                    .filter(|&(bm, bn)| !rows.is_multiple_of(bm) || !cols.is_multiple_of(bn))
                {
                    // Blocks that do not tile the weight, a weight smaller than one block (stored
                    // with one scale) included.
                    // DeepSeek-V3 publishes only its dequantizer (inference/kernel.py
                    // `weight_dequant`, masked to the valid region; fp8_cast_bf16.py, commit
                    // 9b4e9788e4a3a731f7567338ed15d3ec549ce03b); transformers 5.24's
                    // `Fp8Quantize._quantize_one` returns such a weight unquantized and its
                    // `Fp8Dequantize._dequantize_one` raises on it.
                    Some(format!(
                        "its {rows}x{cols} weight has partial {bm}x{bn} weight_scale_inv blocks, and no producer publishes how it scales a partial block (DeepSeek-V3's inference/kernel.py has only weight_dequant; transformers' Fp8Quantize leaves such weights unquantized)"
                    ))
                } else {
                    None
                }
            }
        }
    }

    /// `merged` (f32, the logical shape) quantized again as `q` was, with fresh scales as its
    /// producer computes them: the tensors that change, as (name, stored bytes). Code books and
    /// quant_state blobs do not change and are not returned. `how`: what PEFT hands a
    /// bitsandbytes 4-bit quantizer (ignored by the other formats).
    pub fn requantize(
        &self,
        ck: &Checkpoint,
        q: &QuantTensor,
        merged: &[f32],
        how: Requant,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        if let Some(why) = self.requantize_unsupported(q) {
            return Err(format!("cannot requantize {why}"));
        }
        match self.as_stored(q) {
            // A Conv1D weight: quantized as transformers stores it, [out, in].
            Some((stored, rows, cols)) => {
                let m = crate::io::conv1d::transpose(merged, cols, rows);
                self.requantize_stored(ck, &stored, &m, how)
            }
            None => self.requantize_stored(ck, q, merged, how),
        }
    }

    /// [`Self::requantize`] of `merged` in `q`'s stored layout.
    fn requantize_stored(
        &self,
        ck: &Checkpoint,
        q: &QuantTensor,
        merged: &[f32],
        how: Requant,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        if matches!(q.scheme, Scheme::ModelOptFp4(_)) || self.modelopt_fp8_keep(q) {
            // The stored scales kept (`modelopt.rs`): only the weight changes.
            return self
                .requantize_modelopt(ck, q, merged)
                .map_err(|e| e.to_string());
        }
        Ok(match &q.scheme {
            Scheme::Bnb4(p) => {
                // PEFT 0.21.2's bnb merge (peft/tuners/lora/bnb.py `Linear4bit.merge`) quantizes
                // `w_data = dequantize_4bit(W) + get_delta_weight()` with `Params4bit`. The
                // adapter is f32 (PEFT's autocast_adapter_dtype, the default), so `w_data` is
                // the f32 sum even for a 16-bit quant_state, and bitsandbytes 0.50.2
                // (functional.py `quantize_4bit`: `QuantState(dtype=A.dtype)`) records
                // `"dtype": "float32"` in the new state: the merged values are quantized as
                // they are, and a 16-bit state's JSON says float32 afterwards, as PEFT's
                // `save_pretrained` writes it. A DoRA merge ([`Requant::InStateDtype`]) is cast
                // to the state's dtype first and keeps it.
                let in_state = how == Requant::InStateDtype && p.dtype != Dtype::F32;
                let rounded;
                let merged = if in_state {
                    rounded = dtype::decode(p.dtype, &dtype::encode(p.dtype, merged));
                    &rounded
                } else {
                    merged
                };
                let (packed, absmax) = bnb4::quantize(p.kind, p.blocksize, merged);
                let w = &q.name;
                let data = |n: &str| ck.view(n).map(|v| v.data).map_err(|e| e.to_string());
                let state = &q.companions[0];
                let as_f32 = |blob: Vec<u8>| -> Result<Vec<u8>, String> {
                    if p.dtype == Dtype::F32 || in_state {
                        return Ok(blob);
                    }
                    bnb4_dq::with_dtype_f32(&blob)
                        .ok_or_else(|| "its quant_state has no `dtype` to update".to_owned())
                };
                match &p.nested {
                    None => {
                        let mut out = vec![
                            (w.clone(), packed),
                            (format!("{w}.absmax"), dtype::encode(Dtype::F32, &absmax)),
                        ];
                        if p.dtype != Dtype::F32 && !in_state {
                            out.push((state.clone(), as_f32(data(state)?.to_vec())?));
                        }
                        out
                    }
                    Some(n) => {
                        // compress_statistics: offset = mean, absmax − offset in 8 bits with the
                        // stored dynamic code (see bnb4_dq).
                        let code =
                            dtype::decode(Dtype::F32, data(&format!("{w}.nested_quant_map"))?);
                        let (offset, codes, nabs) =
                            bnb4_dq::compress_statistics(&absmax, &code, n.blocksize);
                        let blob = bnb4_dq::with_offset(data(state)?, offset)
                            .ok_or("its quant_state has no nested_offset number to update")?;
                        vec![
                            (w.clone(), packed),
                            (format!("{w}.absmax"), codes),
                            (
                                format!("{w}.nested_absmax"),
                                dtype::encode(Dtype::F32, &nabs),
                            ),
                            (state.clone(), as_f32(blob)?),
                        ]
                    }
                }
            }
            Scheme::Fp8 {
                scale,
                scale_dtype,
                layout,
                ..
            } if self.fp8_ct_keep(q) => {
                let (bytes, s) =
                    fp8::quantize_ct(merged, q.shape[0], q.shape[1], layout, *scale_dtype);
                vec![
                    (q.name.clone(), bytes),
                    (scale.clone(), dtype::encode(*scale_dtype, &s)),
                ]
            }
            Scheme::Fp8 {
                scale,
                scale_dtype,
                layout,
                ..
            } if self.fp8_mx_keep(q) => {
                // Round to nearest with the stored E8M0 scales: only the weight changes.
                let s = fp8::scales_f32(
                    *scale_dtype,
                    ck.view(scale).map_err(|e| e.to_string())?.data,
                )
                .ok_or("its scales are not E8M0 bytes")?;
                vec![(
                    q.name.clone(),
                    fp8::requantize_mx(merged, q.shape[1], &s, layout),
                )]
            }
            Scheme::Fp8 { scale, layout, .. } => {
                let (bytes, inv) = fp8::quantize(
                    merged,
                    q.shape[0],
                    q.shape[1],
                    layout.block_m,
                    layout.block_n,
                );
                vec![
                    (q.name.clone(), bytes),
                    (scale.clone(), dtype::encode(Dtype::F32, &inv)),
                ]
            }
            Scheme::Gptq(p) => {
                // Round to nearest with the stored scales, zeros and g_idx: only qweight changes.
                let data = |n: &str| ck.view(n).map(|v| v.data).map_err(|e| e.to_string());
                let bytes =
                    gptq::requantize(p, merged, data(&q.companions[0])?, data(&q.companions[1])?);
                vec![(q.stored.clone(), bytes)]
            }
            Scheme::Mlx(p) => {
                // Fresh scales and biases, as mlx-lm's fuse quantizes the fused weight again
                // (`QuantizedLinear.from_linear` → `mx.quantize`).
                let (packed, scales, biases) = mlx::quantize(p, merged);
                vec![
                    (q.name.clone(), packed),
                    (q.companions[0].clone(), scales),
                    (q.companions[1].clone(), biases),
                ]
            }
            Scheme::MlxFp(p) => {
                // A fresh scale per group, as mlx-lm's fuse quantizes the fused weight again.
                let (packed, scales) = mlx_fp::quantize(p, merged);
                vec![(q.name.clone(), packed), (q.companions[0].clone(), scales)]
            }
            Scheme::ModelOptFp4(_) | Scheme::Comfy(_) => unreachable!("returned above"),
            Scheme::CtFp4(p) => {
                // Round to nearest with the stored scales: only weight_packed changes.
                let data = |n: usize| ck.view(&q.companions[n]).map(|v| v.data);
                let (s, _) = ct_fp4::group_scales_of(p, data(0).map_err(|e| e.to_string())?, data)
                    .map_err(|e| e.to_string())?;
                vec![(q.stored.clone(), ct_fp4::requantize(p, merged, &s))]
            }
            Scheme::CtDense { dtype, .. } => {
                // The merged float weight itself, the scales kept: the loader's forward
                // (compressed-tensors `set_forward_quantized`, status below COMPRESSED)
                // fake-quantizes it with them, as it fake-quantized the stored weight, and as
                // PEFT's merge into that model's `weight.data` runs.
                vec![(q.stored.clone(), dtype::encode(*dtype, merged))]
            }
            Scheme::BnbInt8 => {
                let (q8, scb) = int8::quantize(merged, q.shape[1]);
                vec![
                    (q.name.clone(), q8),
                    (q.companions[0].clone(), dtype::encode(Dtype::F32, &scb)),
                ]
            }
            Scheme::Packed(p) => {
                // Round to nearest with the stored scales, zero points and g_idx: only
                // weight_packed (or the I8 weight) changes.
                let data = |n: &str| ck.view(n).map(|v| v.data).map_err(|e| e.to_string());
                let zero = match p.symmetric {
                    true => None,
                    false => Some(data(q.companion("weight_zero_point"))?),
                };
                let bytes = packed::requantize(p, merged, data(q.companion("weight_scale"))?, zero);
                vec![(q.stored.clone(), bytes)]
            }
        })
    }
}

impl QuantMap {
    /// An FP8 weight whose fresh scales lorakit computes as compressed-tensors does
    /// ([`fp8::quantize_ct`]): E4M3 with a float `weight_scale` per channel, per tensor or in
    /// blocks (FP8_BLOCK; a grid of `⌈rows/bm⌉ × ⌈cols/bn⌉`, partial blocks at the edges
    /// included), in a `quant_method: compressed-tensors` checkpoint (fbgemm_fp8's per-row scales
    /// come from its GPU kernel and are not reproduced).
    fn fp8_ct_keep(&self, q: &QuantTensor) -> bool {
        let Scheme::Fp8 {
            format,
            scale,
            scale_dtype,
            layout,
        } = &q.scheme
        else {
            return false;
        };
        let (q_rows, q_cols) = (
            q.shape.first().copied().unwrap_or(0),
            q.shape.get(1).copied().unwrap_or(0),
        );
        let per_tensor = layout.grid_rows == 1 && layout.grid_cols == 1;
        let per_channel = layout.block_m == 1 && layout.grid_cols == 1;
        // Blocks over the weight, the last row and column of them partial where the block does
        // not divide it: llm-compressor zero-pads those for its observer, which changes no scale
        // (see `fp8::quantize_ct`).
        let blocks = layout.block_m > 0
            && layout.block_n > 0
            && q_rows.div_ceil(layout.block_m) == layout.grid_rows
            && q_cols.div_ceil(layout.block_n) == layout.grid_cols;
        self.method().as_deref() == Some("compressed-tensors")
            && *format == Dtype::F8_E4M3
            && scale.ends_with(".weight_scale")
            && matches!(scale_dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
            && (per_tensor || per_channel || blocks)
    }

    /// A compressed-tensors MXFP8 weight (`mxfp8-quantized`): E4M3 with a U8 E8M0
    /// `weight_scale` per 32 columns, requantized with its stored scales
    /// ([`fp8::requantize_mx`]).
    fn fp8_mx_keep(&self, q: &QuantTensor) -> bool {
        matches!(&q.scheme, Scheme::Fp8 { format: Dtype::F8_E4M3, scale, scale_dtype: Dtype::U8, layout }
            if self.method().as_deref() == Some("compressed-tensors")
                && scale.ends_with(".weight_scale")
                && layout.block_m == 1
                && layout.block_n == 32
                && q.shape.get(1).is_some_and(|&c| c == 32 * layout.grid_cols))
    }
}
