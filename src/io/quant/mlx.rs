//! MLX's affine quantization (`mx.quantize(w, group_size, bits)`, what `mlx_lm.convert -q`
//! writes for every `QuantizedLinear` and `QuantizedEmbedding`), read and written as MLX 0.32
//! computes it on its CPU backend.
//!
//! On disk, for a module `P` with a `[rows, cols]` weight:
//! - `P.weight` U32 `[rows, cols·bits/32]`: each row a little-endian bit stream, element `i` at bit
//!   `i·bits` (3-, 5- and 6-bit codes split across words), an unsigned code `q ∈ [0, 2^bits − 1]`;
//! - `P.scales`, `P.biases` `[rows, cols/group_size]` in the model's float dtype `T`.
//!
//! The group size and bit width are not in the tensors (`gs·bits` is all the shapes tell): they
//! come from config.json's `quantization` (`group_size`, `bits`, `mode`, and per-module entries
//! keyed by the module path, which mlx-lm's mixed recipes and `quant_predicate` write; mlx-lm's
//! `load_model` reads them in that order).
//!
//! Dequantization (mlx/ops.cpp `affine_dequantize`, the CPU fallback): `q·s` then `+ b`, each an
//! operation in `T` (for bf16/f16 computed in f32 and rounded to `T`, exact in f32 before that
//! rounding for ≤ 8-bit codes). Quantization (mlx/backend/cpu/quantized.cpp `quantize`): per
//! group, in f32, `scale = max((max − min)/(2^bits − 1), 1e-7)`, negated unless `|min| > |max|`;
//! `edge` the end of larger magnitude; `q0 = rint(edge/scale)`; where `q0 ≠ 0`, `scale = edge/q0`
//! and `bias = edge` (else 0); codes `clamp(rint((w − bias)/scale), 0, 2^bits − 1)` with the f32
//! scale and bias, which are then stored rounded to `T`.
//!
//! Must not choose what is stored beyond that rule; `merge --quant` decides whether to requantize.

use super::packed::{element, put};
use crate::dtype::{self, Dtype};

/// Parameters of one MLX-quantized weight, checked against every tensor's shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Params {
    pub bits: u32,
    pub group_size: usize,
    pub rows: usize,
    pub cols: usize,
    /// The dtype of the scales and biases: the model's, which dequantization returns.
    pub dtype: Dtype,
}

/// The bit widths and group sizes `mx.quantize` accepts (mlx/ops.cpp `affine_quantize`).
pub(super) const BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
const GROUP_SIZES: [usize; 3] = [32, 64, 128];

impl Params {
    /// Why `mx.quantize` cannot write this weight again, if it cannot (it takes group sizes
    /// 32, 64 and 128 only).
    pub fn requantize_unsupported(&self) -> Option<String> {
        (!GROUP_SIZES.contains(&self.group_size)).then(|| {
            format!(
                "MLX affine groups of {} (mx.quantize takes group sizes 32, 64 and 128)",
                self.group_size
            )
        })
    }
}

/// Dequantizes to f32, each value already rounded to `p.dtype` as MLX computes it.
pub fn dequantize(p: &Params, packed: &[u8], scales: &[u8], biases: &[u8]) -> Vec<f32> {
    let s = dtype::decode(p.dtype, scales);
    let b = dtype::decode(p.dtype, biases);
    let row_bytes = p.cols * p.bits as usize / 8;
    let groups = p.cols / p.group_size;
    let round = |x: f32| dtype::round_to(p.dtype, x);
    let mut out = Vec::with_capacity(p.rows * p.cols);
    for r in 0..p.rows {
        let row = &packed[r * row_bytes..(r + 1) * row_bytes];
        for c in 0..p.cols {
            let g = r * groups + c / p.group_size;
            let q = element(row, c, p.bits) as f32;
            // `multiply(w, scales)` then `add(…, biases)`: two operations, each rounded.
            out.push(round(round(q * s[g]) + b[g]));
        }
    }
    out
}

/// `merged` (f32, the logical shape) quantized as `mx.quantize` does: the packed weight, the
/// scales and the biases, as stored bytes. `merged` is first rounded to `p.dtype`: MLX quantizes
/// a weight of the model's dtype (mlx-lm's fuse adds the delta in it).
pub fn quantize(p: &Params, merged: &[f32]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let n_bins = ((1u32 << p.bits) - 1) as f32;
    let eps = 1e-7f32;
    let words = p.cols * p.bits as usize / 32;
    let groups = p.cols / p.group_size;
    let mut packed = Vec::with_capacity(4 * words * p.rows);
    let (mut scales, mut biases) = (
        Vec::with_capacity(p.rows * groups),
        Vec::with_capacity(p.rows * groups),
    );
    let mut group = vec![0f32; p.group_size];
    for r in 0..p.rows {
        let mut row = vec![0u32; words];
        for g in 0..groups {
            let at = r * p.cols + g * p.group_size;
            for (x, &m) in group.iter_mut().zip(&merged[at..at + p.group_size]) {
                *x = dtype::round_to(p.dtype, m);
            }
            // `std::max` / `std::min` against running values that start at ∓∞.
            let (mut w_min, mut w_max) = (f32::INFINITY, f32::NEG_INFINITY);
            for &x in &group {
                w_max = if w_max < x { x } else { w_max };
                w_min = if x < w_min { x } else { w_min };
            }
            let mask = w_min.abs() > w_max.abs();
            let spread = (w_max - w_min) / n_bins;
            let mut scale = if spread < eps { eps } else { spread };
            if !mask {
                scale = -scale;
            }
            let edge = if mask { w_min } else { w_max };
            let q0 = (edge / scale).round_ties_even();
            let mut bias = 0f32;
            if q0 != 0.0 {
                scale = edge / q0;
                bias = edge;
            }
            for (k, &x) in group.iter().enumerate() {
                let q = ((x - bias) / scale).round_ties_even();
                // `std::min(std::max(q, 0), n_bins)`; a NaN code casts to 0 (merged weights are
                // checked finite before they get here).
                let q = if q.is_nan() {
                    0.0
                } else {
                    q.max(0.0).min(n_bins)
                };
                put(&mut row, g * p.group_size + k, p.bits, q as u32);
            }
            scales.push(scale);
            biases.push(bias);
        }
        packed.extend(row.iter().flat_map(|w| w.to_le_bytes()));
    }
    (
        packed,
        dtype::encode(p.dtype, &scales),
        dtype::encode(p.dtype, &biases),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One recorded tensor: (part, dtype, shape, bytes).
    type Part = (String, Dtype, Vec<usize>, Vec<u8>);

    /// The `.x`, `.wq`, `.scales`, `.biases`, `.deq` tensors of each recorded case.
    fn cases() -> Vec<(String, Vec<Part>)> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/mlx_quant/quantize_cases.safetensors"
        );
        let bytes = std::fs::read(path).expect("fixture");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let mut by_case: std::collections::BTreeMap<String, Vec<_>> = Default::default();
        for (name, v) in st.tensors() {
            let (case, part) = name.rsplit_once('.').expect("case.part");
            let dt = match v.dtype() {
                safetensors::Dtype::F32 => Dtype::F32,
                safetensors::Dtype::BF16 => Dtype::BF16,
                safetensors::Dtype::F16 => Dtype::F16,
                _ => Dtype::U32,
            };
            by_case.entry(case.to_owned()).or_default().push((
                part.to_owned(),
                dt,
                v.shape().to_vec(),
                v.data().to_vec(),
            ));
        }
        by_case.into_iter().collect()
    }

    /// Every case `mx.quantize` / `mx.dequantize` recorded (3 dtypes × 6 bit widths × 3 group
    /// sizes, rows with a constant group, one sign only, tiny values and an outlier): lorakit's
    /// quantizer gives the same bytes and its dequantizer the same values.
    #[test]
    fn quantize_and_dequantize_equal_mlx_byte_for_byte() {
        let cases = cases();
        assert_eq!(cases.len(), 54);
        for (case, parts) in cases {
            let get = |p: &str| parts.iter().find(|t| t.0 == p).expect(p);
            let (_, dt, shape, x) = get("x");
            let mut it = case.split('_').skip(1);
            let bits: u32 = it.next().unwrap().parse().unwrap();
            let group_size: usize = it.next().unwrap().parse().unwrap();
            let p = Params {
                bits,
                group_size,
                rows: shape[0],
                cols: shape[1],
                dtype: *dt,
            };
            let x = dtype::decode(*dt, x);
            let (wq, s, b) = quantize(&p, &x);
            assert_eq!(wq, get("wq").3, "{case}: packed codes");
            assert_eq!(s, get("scales").3, "{case}: scales");
            assert_eq!(b, get("biases").3, "{case}: biases");
            let deq = dequantize(&p, &get("wq").3, &get("scales").3, &get("biases").3);
            assert_eq!(
                dtype::encode(*dt, &deq),
                get("deq").3,
                "{case}: dequantized"
            );
        }
    }
}
