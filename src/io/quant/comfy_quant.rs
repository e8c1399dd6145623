//! ComfyUI's own quantized checkpoints: a layer `P` whose `P.weight` is quantized carries a U8
//! tensor `P.comfy_quant` holding the JSON bytes `{"format": F, …}` (ComfyUI `comfy/ops.py`
//! `_quantized_weight_state_dict` writes it, `_load_quantized_module` reads it; the formats are
//! `comfy/quant_ops.py` `QUANT_ALGOS`, Comfy-Org/ComfyUI 0271a469fe29524fafe5872b737123d65a63e5fc),
//! and the layout's tensors under `P.weight<suffix>` (comfy_kitchen `Layout.state_dict_tensors`).
//!
//! Its NVFP4 layers store the same names and dtypes as NVIDIA ModelOpt's (U8 `weight`, F8_E4M3
//! `weight_scale`, F32 `weight_scale_2`) but pack element 2j in the high nibble and keep the block
//! scales in cuBLAS' swizzled tile order, so the marker, not the dtypes, says which format a layer
//! is. This file recognises the marked layers; a format lorakit does not read stands for its weight
//! in [`QuantMap::unsupported`], so dequantizing or merging it is a one-line refusal naming the
//! file and the tensor, and `inspect` lists it.
//!
//! Must not guess a format from shapes or dtypes, and reads no tensor data except the markers.

use super::{err, QuantMap};
use crate::dtype::Dtype;
use crate::error::InputResult;
use crate::io::Checkpoint;

/// The marker's name after the layer prefix: `P.comfy_quant`.
pub const MARKER: &str = "comfy_quant";

/// The most bytes a marker's JSON may have (ComfyUI's are a few dozen).
const MAX_MARKER_BYTES: u64 = 1 << 16;

/// The tensors a marked layer may hold beside `P.weight` and its marker: every name
/// `_load_quantized_module` pops for some format, and the `QUANT_ALGOS` parameters.
const LAYER_TENSORS: [&str; 8] = [
    "weight_scale",
    "weight_scale_2",
    "input_scale",
    "pre_quant_scale",
    "weight_s_rel",
    "weight_s_channel",
    "weight_codebook",
    "weight_zeros",
];

/// The `format` a marker's bytes name, or why they name none.
pub fn format_of(bytes: &[u8]) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("is not the JSON of a ComfyUI quantization config: {e}"))?;
    match v.get("format").and_then(serde_json::Value::as_str) {
        Some(f) => Ok(f.to_owned()),
        None => Err(format!(
            "holds {v}, a ComfyUI quantization config without a string `format`"
        )),
    }
}

impl QuantMap {
    /// Every layer with a `P.comfy_quant` marker: its tensors claimed (no other format reads
    /// them as its own), and the layer refused as a format lorakit does not read.
    pub(super) fn add_comfy_quant_all(
        &mut self,
        ck: &Checkpoint,
        names: &[String],
    ) -> InputResult<()> {
        let suffix = format!(".{MARKER}");
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
                        super::scan::typed(info)
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
            let e = err(
                ck,
                &weight,
                format!(
                    "is ComfyUI's `{format}` quantization (`{name}`), which lorakit does not read"
                ),
            );
            self.push_unsupported(Some(weight), e);
        }
        Ok(())
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
