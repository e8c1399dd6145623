//! Recognising NVIDIA ModelOpt NVFP4 weights from the headers and reading or writing one weight
//! with its stored scales ([`modelopt`](super::modelopt) holds the format and its math; ModelOpt
//! FP8 weights are recognised by `scan.rs` as FP8 per-tensor ones and only written back here).
//!
//! Must not choose scales and must not read tensor data beyond the scales of the weight at hand.

use super::modelopt::{block_scales, dequantize, requantize, requantize_fp8, Params, GROUP};
use super::scan::{require_f32_scalar, typed};
use super::{err, QuantMap, QuantTensor, Scheme};
use crate::dtype::{self, Dtype};
use crate::error::InputResult;
use crate::io::Checkpoint;

impl QuantMap {
    /// Every `P.weight_scale` stored as F8_E4M3 beside a U8 `P.weight`: under a ModelOpt config
    /// a ModelOpt NVFP4 weight, recognised before the FP8 weights (its E4M3 scale is not one).
    /// Without one the pair says NVFP4 but not whose packing: ComfyUI's (`comfy_quant.rs`, whose
    /// marked layers were claimed before) stores the same names and dtypes with the other nibble
    /// order and swizzled scales, so an unmarked pair outside a ModelOpt export is refused.
    pub(super) fn add_modelopt_fp4_all(
        &mut self,
        ck: &Checkpoint,
        names: &[String],
    ) -> InputResult<()> {
        for name in names {
            let Some(p) = name.strip_suffix(".weight_scale") else {
                continue;
            };
            let w = format!("{p}.weight");
            if self.claimed.contains(&w)
                || ck.info(name).is_none_or(|i| i.dtype != Dtype::F8_E4M3)
                || ck.info(&w).is_none_or(|i| i.dtype != Dtype::U8)
            {
                continue;
            }
            if self.modelopt.is_some() {
                self.add_modelopt_fp4(ck, p, &w)?;
                continue;
            }
            for s in ["weight", "weight_scale", "weight_scale_2", "input_scale"] {
                let n = format!("{p}.{s}");
                if ck.contains(&n) {
                    self.claimed.insert(n);
                }
            }
            let e = err(
                ck,
                &w,
                format!(
                    "is U8 beside an F8_E4M3 `{name}`: NVFP4, but neither a ModelOpt config (hf_quant_config.json, or config.json quant_method modelopt) nor a ComfyUI `{p}.comfy_quant` says whose packing, and the two differ"
                ),
            );
            self.push_unsupported(Some(w), e);
        }
        Ok(())
    }

    fn add_modelopt_fp4(&mut self, ck: &Checkpoint, prefix: &str, weight: &str) -> InputResult<()> {
        if let Some(e) = self
            .modelopt
            .as_ref()
            .and_then(|c| c.contradiction(prefix, "NVFP4"))
        {
            return Err(e);
        }
        let w = ck.info(weight).expect("listed").clone();
        let [rows, half] = w.shape[..] else {
            return Err(err(
                ck,
                weight,
                format!("is {}, not a 2-D U8 matrix of NVFP4 pairs", typed(&w)),
            ));
        };
        let cols = 2 * half;
        let scale_name = format!("{prefix}.weight_scale");
        let scale = ck.info(&scale_name).expect("listed");
        if rows == 0
            || cols == 0
            || !cols.is_multiple_of(GROUP)
            || scale.shape != [rows, cols / GROUP]
        {
            return Err(err(
                ck,
                &scale_name,
                format!(
                    "is {}; the NVFP4 scales of a {rows}x{cols} weight (from `{weight}` {:?}) are F8_E4M3 [{rows}, {cols}/16] with 16 dividing {cols}",
                    typed(scale),
                    w.shape
                ),
            ));
        }
        let global = format!("{prefix}.weight_scale_2");
        require_f32_scalar(
            ck,
            &global,
            weight,
            "ModelOpt stores the NVFP4 global scale",
            || format!("is NVFP4 (U8 pairs, E4M3 `{scale_name}`) without `{global}`"),
        )?;
        let pre = format!("{prefix}.pre_quant_scale");
        if ck.contains(&pre) {
            return Err(err(
                ck,
                &pre,
                "is an AWQ pre_quant_scale (ModelOpt NVFP4_AWQ), which lorakit does not read",
            ));
        }
        let mut companions = vec![scale_name, global];
        let input = format!("{prefix}.input_scale");
        if ck.contains(&input) {
            companions.push(input);
        }
        let dtype = self.modelopt.as_ref().map_or(Dtype::BF16, |c| c.dtype);
        self.insert(
            ck,
            QuantTensor {
                name: weight.to_owned(),
                stored: weight.to_owned(),
                shape: vec![rows, cols],
                scheme: Scheme::ModelOptFp4(Params { rows, cols, dtype }),
                companions,
            },
        )
    }

    /// A ModelOpt FP8 weight (an FP8 weight of a checkpoint with a ModelOpt config): the config
    /// must give its module `FP8`, and its scale be the per-tensor F32 `P.weight_scale` ModelOpt
    /// writes (`export/quant_utils.py`), not a grid the generic FP8 reader would tile by.
    pub(super) fn check_modelopt_fp8(
        &self,
        ck: &Checkpoint,
        prefix: &str,
        scale: &str,
    ) -> InputResult<()> {
        let Some(c) = self.modelopt.as_ref() else {
            return Ok(());
        };
        if let Some(e) = c.contradiction(prefix, "FP8") {
            return Err(e);
        }
        let s = ck.info(scale).expect("present");
        if !scale.ends_with(".weight_scale")
            || s.dtype != Dtype::F32
            || s.numel() != 1
            || s.shape.len() > 1
        {
            return Err(err(
                ck,
                scale,
                format!(
                    "is {}; ModelOpt FP8 stores one F32 [] `{prefix}.weight_scale` per weight",
                    typed(s)
                ),
            ));
        }
        Ok(())
    }

    /// An NVFP4 weight's block scales, each NaN, infinite or zero global scale and each NaN block
    /// scale refused naming its tensor.
    pub(super) fn modelopt_scales(
        &self,
        ck: &Checkpoint,
        q: &QuantTensor,
    ) -> InputResult<Vec<f32>> {
        let bytes = ck.view(&q.companions[0])?.data;
        let g = dtype::decode(Dtype::F32, ck.view(&q.companions[1])?.data)[0];
        if !g.is_finite() || g <= 0.0 {
            return Err(err(
                ck,
                &q.companions[1],
                format!("is {g} (a global scale must be finite and positive)"),
            ));
        }
        let s = block_scales(bytes, g);
        if let Some(i) = s.iter().position(|x| !x.is_finite()) {
            return Err(err(
                ck,
                &q.companions[0],
                format!(
                    "block {i} (byte {:#04x}) gives the scale {}",
                    bytes[i], s[i]
                ),
            ));
        }
        Ok(s)
    }

    /// An NVFP4 weight dequantized, a value that overflows the model's dtype refused.
    pub(super) fn dequantize_modelopt(
        &self,
        ck: &Checkpoint,
        q: &QuantTensor,
        p: &Params,
    ) -> InputResult<Vec<f32>> {
        let s = self.modelopt_scales(ck, q)?;
        let v = dequantize(p, ck.view(&q.stored)?.data, &s);
        super::all_finite(ck, q, &q.companions[0], (p.cols, p.dtype), v, "")
    }

    /// Whether `q` (an FP8 weight) is a ModelOpt FP8 one lorakit writes back with its stored
    /// per-tensor F32 `weight_scale`.
    pub(super) fn modelopt_fp8_keep(&self, q: &QuantTensor) -> bool {
        matches!(&q.scheme, Scheme::Fp8 { format: Dtype::F8_E4M3, scale, scale_dtype: Dtype::F32, layout }
            if self.modelopt.is_some()
                && scale.ends_with(".weight_scale")
                && layout.grid_rows == 1
                && layout.grid_cols == 1)
    }

    /// The tensors a keep-merge writes for a ModelOpt weight: only the weight changes.
    pub(super) fn requantize_modelopt(
        &self,
        ck: &Checkpoint,
        q: &QuantTensor,
        merged: &[f32],
    ) -> InputResult<Vec<(String, Vec<u8>)>> {
        let bytes = match &q.scheme {
            Scheme::ModelOptFp4(p) => requantize(p, merged, &self.modelopt_scales(ck, q)?),
            Scheme::Fp8 { scale, .. } => {
                let s = dtype::decode(Dtype::F32, ck.view(scale)?.data)[0];
                if !s.is_finite() || s <= 0.0 {
                    return Err(err(
                        ck,
                        scale,
                        format!("is {s} (a scale must be finite and positive)"),
                    ));
                }
                let d = self.modelopt.as_ref().map_or(Dtype::BF16, |c| c.dtype);
                requantize_fp8(merged, s, d)
            }
            _ => unreachable!("only ModelOpt weights"),
        };
        Ok(vec![(q.stored.clone(), bytes)])
    }
}
