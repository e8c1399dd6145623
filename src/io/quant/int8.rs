//! bitsandbytes LLM.int8 weights as transformers saves them (`Linear8bitLt`): `P.weight` I8
//! `[out, in]`, `P.SCB` F32 `[out]` (the absmax of each row), and `P.weight_format` (a U8 scalar,
//! 0 = row-major; transformers `integrations/bitsandbytes.py`, bitsandbytes `utils.py`
//! `LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING`).
//!
//! Dequantization is bitsandbytes `_ops.py` `int8_vectorwise_dequant` (what transformers'
//! `dequantize_bnb_weight` calls): `A * stats.view(-1, 1) * 7.874015718698502e-3`, evaluated
//! left to right in f32, the constant (1/127) rounded to f32.
//!
//! Quantization is what `bnb.nn.Int8Params._quantize` does to a merged weight (PEFT's
//! `Linear8bitLt.merge`): cast to float16, then `int8_vectorwise_quant` (`backends/default/ops.py`,
//! threshold 0): `SCB = max|A|` per row (float16, widened to f32 exactly) and
//! `round(A * (127 / SCB))` in f32 (`127 / SCB` as torch evaluates a scalar over a tensor:
//! `(1 / SCB) · 127`), rounding half to even, as int8.
//!
//! Must not find the weights (that is `scan.rs`) nor choose the output dtype.

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

/// `Int8Params` quantization of a row-major `[rows, cols]` weight (f32): the I8 bytes and the F32
/// `SCB` per row. An all-zero row divides 0 by 0 in torch (NaN); its codes are 0.
pub fn quantize(w: &[f32], cols: usize) -> (Vec<u8>, Vec<f32>) {
    let mut q = Vec::with_capacity(w.len());
    let mut scb = Vec::with_capacity(w.len() / cols.max(1));
    for row in w.chunks_exact(cols.max(1)) {
        let a: Vec<f32> = row
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        let s = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        scb.push(s);
        // `127.0 / row_stats`, a Python float over a tensor: torch evaluates it as
        // `reciprocal(row_stats) * 127` (as fp8.rs notes for `448 / max`).
        let k = (1.0f32 / s) * 127.0;
        q.extend(a.iter().map(|&v| {
            let r = (v * k).round_ties_even();
            if r.is_nan() {
                0
            } else {
                r.clamp(-128.0, 127.0) as i8 as u8
            }
        }));
    }
    (q, scb)
}
