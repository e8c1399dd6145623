//! Element types: decoding stored tensors to `f32` for compute and encoding results back.
//!
//! Written once for every float dtype lorakit computes with (F32, F16, BF16, and F64 for reading).
//! Encoding rounds to nearest, ties to even, exactly once (the `half` crate's conversions), so a
//! merged bf16 tensor equals `round_bf16(f32 result)` bit for bit. Every other dtype (I8, U8,
//! F8_E4M3, …) is never converted: it is listed and copied through byte for byte.

pub use safetensors::Dtype;

/// Whether `x` is a finite f32 once rounded to it (a weight, alpha or frequency that scales
/// f32 values: one past f32's range is infinite there).
pub fn finite_in_f32(x: f64) -> bool {
    (x as f32).is_finite()
}

/// Whether lorakit can decode this dtype to `f32` for compute.
pub fn is_float_compute(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// Whether lorakit can encode `f32` results into this dtype.
pub fn is_float_storage(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// Size in bytes of `n` elements, or `None` on overflow or for sub-byte totals that do not
/// end on a byte boundary.
pub fn byte_len(dtype: Dtype, n: usize) -> Option<usize> {
    let bits = n.checked_mul(dtype.bitsize())?;
    (bits % 8 == 0).then_some(bits / 8)
}

/// Canonical name as it appears in safetensors headers (`"BF16"`, `"F8_E4M3"`).
pub fn name(dtype: Dtype) -> String {
    // Dtype's serde form is the header spelling.
    serde_json::to_value(dtype)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{dtype:?}"))
}

/// Parses a header dtype string; `None` for a dtype this build of safetensors does not know.
pub fn parse(s: &str) -> Option<Dtype> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

/// Decodes little-endian `bytes` of `dtype` into `out` (`out.len()` elements).
///
/// Panics if `dtype` is not a float compute dtype or the lengths disagree: callers validate
/// dtypes and shapes when the header is read, so a mismatch here is a bug, not bad input.
#[inline]
pub fn decode_into(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    fn each<const N: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn([u8; N]) -> f32) {
        assert_eq!(bytes.len(), out.len() * N);
        for (o, c) in out.iter_mut().zip(bytes.as_chunks::<N>().0) {
            *o = f(*c);
        }
    }
    match dtype {
        Dtype::F32 => each(bytes, out, f32::from_le_bytes),
        Dtype::F16 => each(bytes, out, |c| half::f16::from_le_bytes(c).to_f32()),
        // bf16 is the top half of an f32: widening is exact.
        Dtype::BF16 => each(bytes, out, |c| {
            f32::from_bits((u16::from_le_bytes(c) as u32) << 16)
        }),
        Dtype::F64 => each(bytes, out, |c| f64::from_le_bytes(c) as f32),
        other => panic!("decode_into: {other:?} is not a float compute dtype"),
    }
}

/// Decodes little-endian `bytes` of the float `dtype` into `out` in f64, exactly (every stored
/// float is an f64): F64 as stored, the others widened from [`decode_into`]'s f32.
pub fn decode_f64_into(dtype: Dtype, bytes: &[u8], out: &mut [f64]) {
    if dtype == Dtype::F64 {
        assert_eq!(bytes.len(), out.len() * 8);
        for (o, c) in out.iter_mut().zip(bytes.as_chunks::<8>().0) {
            *o = f64::from_le_bytes(*c);
        }
        return;
    }
    let mut row = vec![0f32; out.len()];
    decode_into(dtype, bytes, &mut row);
    for (o, x) in out.iter_mut().zip(row) {
        *o = f64::from(x);
    }
}

/// Decodes a whole tensor into a new `Vec<f32>`.
pub fn decode(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() * 8 / dtype.bitsize();
    let mut out = vec![0f32; n];
    decode_into(dtype, bytes, &mut out);
    out
}

/// `x` rounded to the nearest `dtype` value (ties to even, as [`encode`] rounds) and back to
/// f32; unchanged for F32 and every other dtype.
pub fn round_to(dtype: Dtype, x: f32) -> f32 {
    match dtype {
        Dtype::BF16 => half::bf16::from_f32(x).to_f32(),
        Dtype::F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// `f32` → bf16 bits, round to nearest, ties to even; a NaN stays a quiet NaN with its sign and
/// top payload bits. Bit for bit `half::bf16::from_f32`, written without branches so a loop over
/// a row vectorises (a tie rounds up exactly when the kept half is odd: adding `0x7fff + lsb`
/// carries into it).
#[inline(always)]
pub fn bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let rounded = (x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16) as u16;
    let nan = ((x >> 16) | 0x0040) as u16;
    if x & 0x7fff_ffff > 0x7f80_0000 {
        nan
    } else {
        rounded
    }
}

/// Encodes `values` as little-endian `dtype` into `out` (exactly `values.len()` elements long),
/// rounding to nearest, ties to even (`half`'s conversions; [`bf16_bits`] for BF16); for
/// kernels that write each block of rows straight into its place in the output tensor.
///
/// Panics if `dtype` is not a float storage dtype or the lengths disagree (a bug, as for
/// [`decode_into`]).
#[inline]
pub fn encode_to_slice(dtype: Dtype, values: &[f32], out: &mut [u8]) {
    fn each<const N: usize>(values: &[f32], out: &mut [u8], f: impl Fn(f32) -> [u8; N]) {
        assert_eq!(out.len(), values.len() * N, "encode_to_slice: lengths");
        for (o, v) in out.as_chunks_mut::<N>().0.iter_mut().zip(values) {
            *o = f(*v);
        }
    }
    match dtype {
        Dtype::F32 => each(values, out, f32::to_le_bytes),
        Dtype::F16 => each(values, out, |v| half::f16::from_f32(v).to_le_bytes()),
        Dtype::BF16 => each(values, out, |v| bf16_bits(v).to_le_bytes()),
        Dtype::F64 => each(values, out, |v| (v as f64).to_le_bytes()),
        other => panic!("encode_to_slice: {other:?} is not a float storage dtype"),
    }
}

/// Index of the first element of `bytes` (little-endian `dtype`) that is NaN or ±∞ *as
/// stored*: a finite `f32` result that rounds to ±∞ in F16 (|x| ≥ 65520) or BF16 is caught
/// here, where an `f32` check before encoding would pass it. `None` for non-float dtypes.
pub fn first_non_finite(dtype: Dtype, bytes: &[u8]) -> Option<usize> {
    // All-ones exponent = NaN or ±∞; the scans OR a flag so the loop vectorises and only a
    // tensor that has such an element is searched again for its position.
    fn scan<const N: usize>(bytes: &[u8], bad: impl Fn([u8; N]) -> bool) -> Option<usize> {
        let chunks = bytes.chunks_exact(N);
        let any = chunks
            .clone()
            .fold(false, |acc, c| acc | bad(c.try_into().expect("chunk")));
        if !any {
            return None;
        }
        chunks
            .clone()
            .position(|c| bad(c.try_into().expect("chunk")))
    }
    match dtype {
        Dtype::F32 => scan::<4>(bytes, |c| {
            u32::from_le_bytes(c) & 0x7f80_0000 == 0x7f80_0000
        }),
        Dtype::F16 => scan::<2>(bytes, |c| u16::from_le_bytes(c) & 0x7c00 == 0x7c00),
        Dtype::BF16 => scan::<2>(bytes, |c| u16::from_le_bytes(c) & 0x7f80 == 0x7f80),
        Dtype::F64 => scan::<8>(bytes, |c| {
            u64::from_le_bytes(c) & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000
        }),
        _ => None,
    }
}

/// Why an element is not finite in `dtype`, for error messages: `NaN`, or `±inf` with the
/// dtype's range when the value overflowed it.
pub fn non_finite_reason(dtype: Dtype, bytes: &[u8], index: usize) -> String {
    let size = dtype.bitsize() / 8;
    let v = bytes
        .get(index * size..(index + 1) * size)
        .map(|b| decode(dtype, b)[0])
        .unwrap_or(f32::NAN);
    let range = match dtype {
        Dtype::F16 => " (F16 holds at most ±65504: the result overflows it)",
        Dtype::BF16 => " (BF16 holds at most ±3.39e38)",
        _ => "",
    };
    if v.is_nan() {
        format!("NaN in {}", name(dtype))
    } else {
        format!("{v} in {}{range}", name(dtype))
    }
}

/// Encodes `values` as little-endian `dtype` into a new buffer.
pub fn encode(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * dtype.bitsize() / 8];
    encode_to_slice(dtype, values, &mut out);
    out
}

/// Round-to-nearest-even to bf16 and back, written out bit by bit (independent of `half`) so
/// tests can check the encoder against it.
pub fn round_bf16_reference(x: f32) -> f32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((bits | 0x0040_0000) & 0xFFFF_0000);
    }
    let lsb = (bits >> 16) & 1;
    let rounded = bits.wrapping_add(0x7FFF + lsb) & 0xFFFF_0000;
    f32::from_bits(rounded)
}

/// The model dtype config.json declares (`dtype` in transformers 5, else `torch_dtype`) when it
/// is float16 or float32, else bf16: what ModelOpt's and ComfyUI's float-scaled formats
/// dequantize into.
pub fn of_config_or_bf16(config: Option<&serde_json::Value>) -> Dtype {
    config
        .and_then(|c| {
            let d = c.get("dtype").or_else(|| c.get("torch_dtype"))?;
            match d.as_str()? {
                "float16" => Some(Dtype::F16),
                "float32" => Some(Dtype::F32),
                _ => None,
            }
        })
        .unwrap_or(Dtype::BF16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_encoding_rounds_to_nearest_even() {
        // Exhaustive over a strided sample of all f32 bit patterns, against the bit-level rule.
        let mut bits: u32 = 0;
        loop {
            let x = f32::from_bits(bits);
            if !x.is_nan() {
                let enc = encode(Dtype::BF16, &[x]);
                let back = decode(Dtype::BF16, &enc)[0];
                assert_eq!(
                    back.to_bits(),
                    round_bf16_reference(x).to_bits(),
                    "x = {x:e}"
                );
            }
            match bits.checked_add(65_521) {
                Some(b) => bits = b,
                None => break,
            }
        }
        // Exact ties: 1 + 2^-8 is halfway between 1 and 1 + 2^-7; ties go to the even one (1).
        let tie = f32::from_bits(0x3F80_8000);
        assert_eq!(decode(Dtype::BF16, &encode(Dtype::BF16, &[tie]))[0], 1.0);
        let tie_odd = f32::from_bits(0x3F81_8000);
        assert_eq!(
            decode(Dtype::BF16, &encode(Dtype::BF16, &[tie_odd]))[0].to_bits(),
            0x3F82_0000
        );
    }

    /// The branch-free rounding is `half`'s bit for bit: every upper half with the low halves
    /// that decide rounding (ties, just above and below, the extremes), NaNs included.
    #[test]
    fn bf16_bits_is_half_bit_for_bit() {
        for hi in 0..=0xffffu32 {
            for lo in [
                0u32, 1, 0x3fff, 0x7fff, 0x8000, 0x8001, 0xc000, 0xfffe, 0xffff,
            ] {
                let x = f32::from_bits(hi << 16 | lo);
                assert_eq!(
                    bf16_bits(x),
                    half::bf16::from_f32(x).to_bits(),
                    "{:#010x}",
                    x.to_bits()
                );
            }
        }
        let vals: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.37e-3).collect();
        for d in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
            let mut out = vec![0u8; vals.len() * d.bitsize() / 8];
            encode_to_slice(d, &vals, &mut out);
            assert_eq!(out, encode(d, &vals), "{d:?}");
        }
    }

    #[test]
    fn f16_round_trip_and_rounding() {
        let vals = [0.0f32, -0.0, 1.0, 65504.0, 1e-8, 0.333_333_34, -2.5];
        let back = decode(Dtype::F16, &encode(Dtype::F16, &vals));
        for (v, b) in vals.iter().zip(&back) {
            let expect = half::f16::from_f64(*v as f64).to_f32();
            assert_eq!(b.to_bits(), expect.to_bits());
        }
    }

    #[test]
    fn names_round_trip() {
        for d in [
            Dtype::F32,
            Dtype::BF16,
            Dtype::F8_E4M3,
            Dtype::I8,
            Dtype::U8,
        ] {
            assert_eq!(parse(&name(d)), Some(d));
        }
        assert_eq!(name(Dtype::F8_E4M3), "F8_E4M3");
        assert_eq!(parse("F7"), None);
    }
}
