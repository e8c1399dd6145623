//! bitsandbytes LLM.int8 weights as transformers saves them (`Linear8bitLt`): `P.weight` I8
//! `[out, in]`, `P.SCB` F32 `[out]` (the absmax of each row), and `P.weight_format` (a U8 scalar,
//! 0 = row-major; transformers `integrations/bitsandbytes.py`, bitsandbytes `utils.py`
//! `LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING`).
//!
//! Dequantization is bitsandbytes `_ops.py` `int8_vectorwise_dequant` (what transformers'
//! `dequantize_bnb_weight` calls): `A * stats.view(-1, 1) * 7.874015718698502e-3`, evaluated
//! left to right in f32, the constant (1/127) rounded to f32.

/// `7.874015718698502e-3` as torch applies it to an f32 tensor.
#[allow(clippy::excessive_precision)]
pub const INV_127: f32 = 7.874_015_718_698_502e-3;

/// Dequantizes a row-major `[rows, cols]` int8 weight with one scale per row.
pub fn dequantize(q: &[u8], scb: &[f32], cols: usize) -> Vec<f32> {
    q.chunks_exact(cols.max(1))
        .zip(scb)
        .flat_map(|(row, &s)| row.iter().map(move |&b| (b as i8 as f32) * s * INV_127))
        .collect()
}
