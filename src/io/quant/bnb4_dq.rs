//! bitsandbytes double quantization (`quantize_4bit(..., compress_statistics=True)`), bit for bit
//! with bitsandbytes 0.50.2 on CPU and torch 2.15:
//!
//! - `offset = absmax.mean()`: torch's CPU `mean` is `sum(x) / n` (`ReduceOps.cpp` `mean_out`), and
//!   its float `sum` is the cascade of `aten/src/ATen/native/cpu/SumKernel.cpp` (`cascade_sum` →
//!   `vectorized_inner_sum` → `row_sum` / `multi_row_sum`) over 8-lane vectors (the width of
//!   `Vectorized<float>` that kernel is built with on x86 AVX2 and AVX-512 alike, and on the
//!   default and NEON builds): [`torch_mean`] follows it operation for operation. Measured on the
//!   fixtures: equal to torch on AVX2 and AVX-512 for every length tried (1 to 70000) on one
//!   thread. From 32768 elements on, torch splits the sum over its intra-op threads (a two-pass
//!   reduction whose chunks depend on the thread count); lorakit reproduces one thread
//!   (`torch.set_num_threads(1)`): with 2 threads torch's mean of a 33000-vector differed by
//!   1 ulp (`fixtures/quant/MANIFEST_nf4_dq.json`).
//! - `quantize_blockwise(absmax - offset, blocksize=256)` runs bitsandbytes' CPU C kernel
//!   (`csrc/cpu_ops.cpp` `quantize_cpu_impl` / `avx2_quantize_8bit_block`, "bit-exact with the
//!   scalar path"): per block `am = max|x|`, `v = x · (1/am)` clamped to [−1, 1], index
//!   `trunc(((v + 1) · 0.5) · 65535 + 0.5)` into a 65536-entry table built by
//!   `build_quantize_lut` from the code's midpoints `0.5 · (c[i] + c[i+1])` (entry `i` holds the
//!   number of midpoints below `−1 + 2i/65535`): [`quantize_blockwise`]. It is not always the
//!   nearest code (the table has 65536 bins), which is why a nearest-code search does not
//!   reproduce it.
//! - the quant_state JSON records the new `nested_offset` as Python's `json.dumps` spells the
//!   f32 widened to a double ([`python_repr`]).

/// torch's float32 CPU `sum` of a contiguous vector on one thread.
pub fn torch_sum(x: &[f32]) -> f32 {
    const V: usize = 8;
    let n = x.len();
    if n >= V {
        let vecs = n / V;
        let lanes = row_sum(vecs, [0f32; V], |i| {
            let mut v = [0f32; V];
            v.copy_from_slice(&x[i * V..(i + 1) * V]);
            v
        });
        let mut acc = 0f32;
        for &t in &x[vecs * V..] {
            acc += t;
        }
        for l in lanes {
            acc += l;
        }
        acc
    } else {
        row_sum(n, 0f32, |i| x[i])
    }
}

/// `x.mean()` of a float32 vector: the sum divided by the count (one thread; see the module doc).
pub fn torch_mean(x: &[f32]) -> f32 {
    torch_sum(x) / x.len() as f32
}

/// Element-wise addition of the accumulators (`Vectorized<float>` lanes or plain floats).
trait Acc: Copy {
    fn add(self, o: Self) -> Self;
}

impl Acc for f32 {
    fn add(self, o: f32) -> f32 {
        self + o
    }
}

impl Acc for [f32; 8] {
    fn add(self, o: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|k| self[k] + o[k])
    }
}

/// `utils::CeilLog2`.
fn ceil_log2(x: usize) -> usize {
    if x <= 2 {
        1
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

/// `row_sum`: four interleaved partial sums (`ilp_factor`), the tail added to the first.
fn row_sum<T: Acc>(size: usize, zero: T, load: impl Fn(usize) -> T) -> T {
    const ILP: usize = 4;
    let size_ilp = size / ILP;
    let mut ps = multi_row_sum::<T, ILP>(size_ilp, zero, |i, k| load(i * ILP + k));
    for i in size_ilp * ILP..size {
        ps[0] = ps[0].add(load(i));
    }
    for k in 1..ILP {
        ps[0] = ps[0].add(ps[k]);
    }
    ps[0]
}

/// `multi_row_sum`: a cascade of 4 levels of `2^level_power` additions each.
fn multi_row_sum<T: Acc, const R: usize>(
    size: usize,
    zero: T,
    load: impl Fn(usize, usize) -> T,
) -> [T; R] {
    const LEVELS: usize = 4;
    let level_power = 4.max(ceil_log2(size) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[zero; R]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                *a = a.add(load(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (hi, lo) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                *hi = hi.add(*lo);
                *lo = zero;
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            *a = a.add(load(i, k));
        }
        i += 1;
    }
    let [mut out, rest @ ..] = acc;
    for level in rest {
        for (o, v) in out.iter_mut().zip(level) {
            *o = o.add(v);
        }
    }
    out
}

/// bitsandbytes' CPU `quantize_blockwise` of `x` with the 256-entry `code`: the U8 codes and the
/// F32 absmax of each block.
pub fn quantize_blockwise(x: &[f32], code: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    const BINS: usize = 65536;
    let mid: Vec<f32> = code.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let mut lut = vec![0u8; BINS];
    let mut c = 0usize;
    for (i, l) in lut.iter_mut().enumerate() {
        let val = -1.0f32 + (2.0f32 * i as f32) / (BINS - 1) as f32;
        while c < mid.len() && mid[c] < val {
            c += 1;
        }
        *l = c as u8;
    }
    let mut codes = Vec::with_capacity(x.len());
    let mut absmax = Vec::with_capacity(x.len().div_ceil(blocksize));
    for block in x.chunks(blocksize) {
        // NaN lanes count as 0 (`avx2_abs_sanitized`).
        let am = block
            .iter()
            .fold(0f32, |m, v| if v.is_nan() { m } else { m.max(v.abs()) });
        absmax.push(am);
        if am == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        let inv = 1.0f32 / am;
        codes.extend(block.iter().map(|&v| {
            let v = (v * inv).clamp(-1.0, 1.0);
            let idx = ((v + 1.0) * 0.5) * (BINS - 1) as f32 + 0.5;
            lut[(idx as usize).min(BINS - 1)]
        }));
    }
    (codes, absmax)
}

/// The double quantization of a 4-bit weight's absmax: (offset, U8 codes, nested absmax).
pub fn compress_statistics(
    absmax: &[f32],
    code: &[f32],
    nested_blocksize: usize,
) -> (f32, Vec<u8>, Vec<f32>) {
    let offset = torch_mean(absmax);
    let shifted: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let (codes, nabs) = quantize_blockwise(&shifted, code, nested_blocksize);
    (offset, codes, nabs)
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on CPU (torch 2.15
/// `aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp` `linspace_kernel`): `step = (end − start)
/// / (steps − 1)` in f32; the first half `start + step·i`, the second `end − step·(steps − 1 − i)`,
/// each with one rounding (the kernel's multiply-add is fused: measured equal to torch on every
/// length `create_dynamic_map` uses, where two roundings differed on 24 of 134 values).
pub fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// bitsandbytes' `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`
/// (`functional.py`, 0.50.2): the 256-entry code of the nested absmax that
/// `quantize_4bit(..., compress_statistics=True)` uses. For `i` in 0..7, the midpoints of
/// `linspace(0.1, 1, 2^i + 1)` (f32 sums halved) times `10^(i − 6)` (a Python float, rounded to
/// f32 by torch's scalar multiply) and their negatives; then 0 and 1; sorted.
pub fn dynamic_map() -> Vec<f32> {
    let mut data = Vec::with_capacity(256);
    for i in 0..7i32 {
        let b = torch_linspace_f32(0.1, 1.0, (1usize << i) + 1);
        let scale = 10f64.powi(i - 6) as f32;
        for w in b.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-(scale * mean));
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    data
}

/// `dequantize_4bit(quantize_4bit(w, blocksize, compress_statistics=True, quant_type))` on a
/// float32 weight, as bitsandbytes computes it on load with `bnb_4bit_use_double_quant`: the 4-bit
/// codes and absmax of [`super::bnb4::quantize`], the absmax double-quantized with
/// [`dynamic_map`] in blocks of 256 ([`compress_statistics`]), then dequantized.
pub fn quantize_dequantize(kind: super::bnb4::Kind, blocksize: usize, w: &[f32]) -> Vec<f32> {
    use super::bnb4;
    use crate::dtype::{encode, Dtype};
    let (packed, absmax) = bnb4::quantize(kind, blocksize, w);
    let code = dynamic_map();
    let (offset, codes, nabs) = compress_statistics(&absmax, &code, 256);
    let p = bnb4::Params {
        kind,
        blocksize,
        dtype: Dtype::F32,
        shape: vec![w.len()],
        nested: Some(bnb4::Nested {
            blocksize: 256,
            offset,
        }),
    };
    let (nabs, code) = (encode(Dtype::F32, &nabs), encode(Dtype::F32, &code));
    bnb4::dequantize(
        &p,
        &bnb4::Parts {
            packed: &packed,
            absmax: &codes,
            nested_absmax: Some(&nabs),
            nested_code: Some(&code),
        },
    )
}

/// Python's `repr` of an f32 widened to a double (what `json.dumps` writes for
/// `QuantState.offset.item()`): the shortest digits that read back to the same double, fixed
/// notation for decimal exponents −4..16 (`0.0518`, `12.0`), scientific otherwise (`1e-05`).
pub fn python_repr(x: f32) -> String {
    let d = x as f64;
    if d == 0.0 {
        return if d.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits ("d.ddde-5") but for one case:
    // the double exactly halfway between two such digit strings (sweep7, quant seed 32 case 19:
    // 0.100223541259765625, an f32 with trailing zero bits), where Rust takes the upper one and
    // Python's dtoa (mode 0) the one with an even last digit (`…562`, not `…563`).
    let sci = format!("{d:e}");
    let (mant, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mant) = match mant.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mant),
    };
    let digits = tie_to_even(d.abs(), mant.chars().filter(|c| *c != '.').collect(), exp);
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        let s = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (a, b) = digits.split_at(point as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{s}")
    } else {
        let (a, b) = digits.split_at(1);
        let m = if b.is_empty() {
            a.to_string()
        } else {
            format!("{a}.{b}")
        };
        format!(
            "{sign}{m}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

/// `digits` (the shortest round-trip digits of `d > 0` at decimal exponent `exp`) with a tie
/// broken as Python's dtoa breaks it: where `d` is exactly halfway between the digit string and
/// its neighbour (the exact expansion is the shorter digits followed by a single 5), the one whose
/// last digit is even where both read back to `d`. An f32 widened to a double has a finite expansion of at most 112
/// significant digits, all of which `{:.120e}` prints exactly.
fn tie_to_even(d: f64, digits: String, exp: i32) -> String {
    let exact = format!("{d:.120e}");
    let Some((m, e)) = exact.split_once('e') else {
        return digits;
    };
    if e.parse::<i32>().ok() != Some(exp) {
        return digits;
    }
    let exact: Vec<u8> = m.bytes().filter(|c| *c != b'.').collect();
    let n = digits.len();
    let (head, tail) = exact.split_at(n.min(exact.len()));
    let halfway = tail.first() == Some(&b'5') && tail[1..].iter().all(|c| *c == b'0');
    let last = digits.as_bytes()[n - 1];
    if !halfway || (last - b'0').is_multiple_of(2) {
        return digits;
    }
    // The even neighbour: the truncated expansion where Rust rounded up, else one more in the
    // last digit (unless that carries); taken only where it reads back to `d` too (not so below
    // a power of two, whose lower gap is half as wide: 2^-24 stays `5.960464477539063e-08`).
    let even = if digits.as_bytes() != head {
        head.to_vec()
    } else if last == b'9' {
        return digits;
    } else {
        let mut up = digits.clone().into_bytes();
        up[n - 1] += 1;
        up
    };
    let even = String::from_utf8(even).expect("ascii digits");
    let reads_back = format!("{}.{}e{exp}", &even[..1], &even[1..]).parse::<f64>() == Ok(d);
    if reads_back {
        even
    } else {
        digits
    }
}

/// The quant_state JSON blob with its `nested_offset` number replaced by `offset` spelled as
/// Python spells it; every other byte kept. `None` when the blob has no such number.
pub fn with_offset(blob: &[u8], offset: f32) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(blob).ok()?;
    let key = "\"nested_offset\":";
    let at = text.find(key)? + key.len();
    let rest = &text[at..];
    let start = at + (rest.len() - rest.trim_start().len());
    let len = text[start..]
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')))
        .unwrap_or(text.len() - start);
    if len == 0 {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..start]);
    out.push_str(&python_repr(offset));
    out.push_str(&text[start + len..]);
    Some(out.into_bytes())
}

/// The quant_state JSON blob with its `"dtype"` value (not `"nested_dtype"`) replaced by
/// `"float32"`, every other byte kept: the state `quantize_4bit` records for an f32 input
/// (bitsandbytes 0.50.2 functional.py, `QuantState(…, dtype=A.dtype)`, spelled by
/// `QuantState.as_dict` as `str(dtype).strip("torch.")`). `None` when the blob has no such key.
pub fn with_dtype_f32(blob: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(blob).ok()?;
    let key = "\"dtype\": \"";
    let at = text.match_indices(key).map(|(i, _)| i).find(|&i| {
        // The top-level key, not the tail of `"nested_dtype"`.
        matches!(text[..i].trim_end().chars().last(), Some('{' | ','))
    })? + key.len();
    let len = text[at..].find('"')?;
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..at]);
    out.push_str("float32");
    out.push_str(&text[at + len..]);
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_rewritten_to_float32_only_at_the_top_level_key() {
        let blob = br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4], "nested_dtype": "float32"}"#;
        assert_eq!(
            with_dtype_f32(blob).unwrap(),
            br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [4], "nested_dtype": "float32"}"#
        );
        assert_eq!(with_dtype_f32(br#"{"nested_dtype": "float16"}"#), None);
    }

    #[test]
    #[allow(clippy::excessive_precision)]
    fn python_float_repr() {
        for (x, want) in [
            (0.05182970315217972f32, "0.05182970315217972"),
            (1e-5, "9.999999747378752e-06"),
            (0.5, "0.5"),
            (12.0, "12.0"),
            (-0.0001, "-9.999999747378752e-05"),
            (0.001, "0.0010000000474974513"),
            (3.0e16, "3.000000081769267e+16"),
        ] {
            assert_eq!(python_repr(x), want, "{x}");
        }
        let blob = br#"{"quant_type": "nf4", "nested_offset": 0.05182970315217972, "x": 1}"#;
        assert_eq!(
            with_offset(blob, 0.5).unwrap(),
            br#"{"quant_type": "nf4", "nested_offset": 0.5, "x": 1}"#
        );
    }

    /// CPython's repr of f32s widened to doubles (fixtures/gen/sweep7_fixtures.py: every value
    /// halfway between two shortest digit strings among 20,000 drawn, and 300 others).
    #[test]
    fn python_float_repr_breaks_ties_to_even() {
        let text = include_str!("../../../fixtures/sweep7/python_repr.txt");
        let mut n = 0;
        for line in text.lines() {
            let (bits, want) = line.split_once(' ').expect("bits repr");
            let x = f32::from_bits(u32::from_str_radix(bits, 16).expect("hex bits"));
            assert_eq!(python_repr(x), want, "{bits}");
            n += 1;
        }
        assert_eq!(n, 823);
    }

    #[test]
    fn cascade_levels() {
        assert_eq!(
            (ceil_log2(1), ceil_log2(3), ceil_log2(4), ceil_log2(5)),
            (1, 2, 2, 3)
        );
        // Exact small sums are exact in any order.
        let x: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        assert_eq!(
            torch_sum(&x),
            x.iter().map(|&v| v as f64).sum::<f64>() as f32
        );
    }
}
