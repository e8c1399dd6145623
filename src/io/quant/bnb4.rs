//! bitsandbytes 4-bit (NF4 / FP4) weights as transformers saves them, and bitsandbytes' own
//! 4-bit quantizer, bit-exact with bitsandbytes 0.50 on CPU.
//!
//! On disk (transformers `save_pretrained` of a `Linear4bit`, i.e. `Params4bit` + bitsandbytes
//! `functional.py` `QuantState.as_dict(packed=True)`), for a weight `P.weight` of logical shape
//! `shape` (n elements):
//! - `P.weight`: ⌈n/2⌉ packed bytes, shape `[⌈n/2⌉, 1]`; element `2i` is the high nibble of byte
//!   `i`, element `2i+1` the low nibble (a pad nibble when n is odd);
//! - `P.weight.absmax`: one scale per block of `blocksize` consecutive elements (row-major), F32;
//!   with double quantization U8 codes into `nested_quant_map`;
//! - `P.weight.quant_map`: the 16-entry code book (`functional.py` `get_4bit_type`);
//! - with double quantization, `P.weight.nested_absmax` (F32, one per `nested_blocksize` absmax
//!   codes) and `P.weight.nested_quant_map` (F32[256], bitsandbytes' dynamic map);
//! - `P.weight.quant_state.bitsandbytes__nf4|fp4`: a U8 tensor holding the JSON
//!   `{"quant_type", "blocksize", "dtype", "shape"[, "nested_blocksize", "nested_dtype",
//!   "nested_offset"]}` (`utils.py` `pack_dict_to_tensor`).
//!
//! Dequantization (`dequantize_4bit`, CPU kernel and `backends/default/ops.py`
//! `_dequantize_4bit_compute`): `w[i] = code[q[i]] · absmax[i / blocksize]` in f32, where with
//! double quantization `absmax[j] = nested_code[qa[j]] · nested_absmax[j / nested_blocksize] +
//! offset` (`dequantize_blockwise`, then `absmax += offset`), all in f32; the result is rounded
//! once to the quant_state dtype.
//!
//! Quantization (`backends/default/ops.py` `quantize_4bit`, the kernel bitsandbytes runs on CPU):
//! per full block `absmax = max|a|`, `scaled = clamp(a · (1 / max(absmax, 1e-38)), -1, 1)`; a
//! trailing partial block stores `am = max(max|a|, 1e-38)` and uses `clamp(a / am, -1, 1)`; the
//! code index is `torch.bucketize(scaled, midpoints)` over the sorted code book's midpoints
//! (index = number of midpoints strictly below the value), mapped back through the code book's
//! stable argsort for FP4. Double quantization (`functional.py` `quantize_4bit` with
//! `compress_statistics`) of the absmax this returns is [`super::bnb4_dq`].
//!
//! Must not find the weights (that is `scan.rs`) nor choose the output dtype.

use crate::dtype::{self, Dtype};

/// The two 4-bit code books.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Nf4,
    Fp4,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nf4 => "nf4",
            Kind::Fp4 => "fp4",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "nf4" => Some(Kind::Nf4),
            "fp4" => Some(Kind::Fp4),
            _ => None,
        }
    }

    /// The code book in nibble order, as `get_4bit_type` builds it (f32; FP4 divided by 12).
    pub fn code(self) -> [f32; 16] {
        match self {
            Kind::Nf4 => NF4,
            Kind::Fp4 => {
                let mut c = [0f32; 16];
                for (o, v) in c.iter_mut().zip(FP4_RAW) {
                    // `data.div_(data.abs().max())`: an f32 division by 12.
                    *o = v / 12.0;
                }
                c
            }
        }
    }
}

/// bitsandbytes `get_4bit_type("nf4")` (the values of `create_normal_map`, hard-coded there),
/// spelled as bitsandbytes spells them; each rounds to the f32 torch stores.
#[allow(clippy::excessive_precision)]
const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// bitsandbytes `get_4bit_type("fp4")` before normalisation: 1 sign, 2 exponent, 1 mantissa
/// bit, listed in bit-pattern order. Nibble 8 is +0: the Python list spells it `-0`, an int.
const FP4_RAW: [f32; 16] = [
    0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0,
];

/// Block sizes `quantize_4bit` / `dequantize_4bit` accept.
pub const BLOCKSIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Double quantization of the absmax vector.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Nested {
    pub blocksize: usize,
    /// `nested_offset`, added back after dequantizing the absmax codes.
    pub offset: f32,
}

/// The parameters of one 4-bit weight, from its quant_state.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Params {
    pub kind: Kind,
    pub blocksize: usize,
    /// The dtype the weight had before quantizing (the dequantized dtype).
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub nested: Option<Nested>,
}

impl Params {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }
}

/// Parses the quant_state JSON blob stored under `….quant_state.bitsandbytes__<kind>`.
/// Errors are phrased for "tensor `…`: quant_state …".
pub fn parse_quant_state(blob: &[u8], key_kind: Kind) -> Result<Params, String> {
    let v: serde_json::Value =
        serde_json::from_slice(blob).map_err(|e| format!("quant_state is not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("quant_state is not a JSON object")?;
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "quant_type"
                | "blocksize"
                | "dtype"
                | "shape"
                | "nested_blocksize"
                | "nested_dtype"
                | "nested_offset"
        ) {
            return Err(format!("quant_state has unknown key `{k}`"));
        }
    }
    let qt = obj
        .get("quant_type")
        .and_then(|v| v.as_str())
        .ok_or("quant_state has no string `quant_type`")?;
    let kind = Kind::parse(qt)
        .ok_or_else(|| format!("quant_state quant_type `{qt}` is not nf4 or fp4"))?;
    if kind != key_kind {
        return Err(format!(
            "quant_state says quant_type `{qt}` but is stored as bitsandbytes__{}",
            key_kind.name()
        ));
    }
    let blocksize = obj
        .get("blocksize")
        .and_then(|v| v.as_u64())
        .ok_or("quant_state has no integer `blocksize`")? as usize;
    if !BLOCKSIZES.contains(&blocksize) {
        return Err(format!(
            "quant_state blocksize {blocksize} is not one bitsandbytes uses (32..4096, powers of 2)"
        ));
    }
    let dtype = float_dtype(obj.get("dtype"), "dtype")?;
    let shape: Vec<usize> = obj
        .get("shape")
        .and_then(|v| v.as_array())
        .ok_or("quant_state has no array `shape`")?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect::<Option<_>>()
        .ok_or("quant_state `shape` is not a list of sizes")?;
    if shape.is_empty()
        || shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_none()
    {
        return Err(format!("quant_state shape {shape:?} is empty or overflows"));
    }
    let nested = match (
        obj.get("nested_blocksize"),
        obj.get("nested_offset"),
        obj.get("nested_dtype"),
    ) {
        (None, None, None) => None,
        (Some(b), Some(o), d) => {
            let blocksize = b
                .as_u64()
                .filter(|&b| (1..=1 << 20).contains(&b))
                .ok_or("quant_state `nested_blocksize` is not a positive integer")?
                as usize;
            let offset = o
                .as_f64()
                .filter(|o| o.is_finite())
                .ok_or("quant_state `nested_offset` is not a finite number")?;
            if d.is_some() && float_dtype(d, "nested_dtype")? != Dtype::F32 {
                return Err("quant_state `nested_dtype` is not float32".into());
            }
            // `torch.tensor(float(nested_offset))`: the double rounded to f32.
            Some(Nested {
                blocksize,
                offset: offset as f32,
            })
        }
        _ => return Err("quant_state has only some of `nested_blocksize`, `nested_offset`".into()),
    };
    Ok(Params {
        kind,
        blocksize,
        dtype,
        shape,
        nested,
    })
}

fn float_dtype(v: Option<&serde_json::Value>, key: &str) -> Result<Dtype, String> {
    match v.and_then(|v| v.as_str()) {
        Some("float32") => Ok(Dtype::F32),
        Some("float16") => Ok(Dtype::F16),
        Some("bfloat16") => Ok(Dtype::BF16),
        Some(other) => Err(format!(
            "quant_state `{key}` `{other}` is not float32, float16 or bfloat16"
        )),
        None => Err(format!("quant_state has no string `{key}`")),
    }
}

/// The inputs of a dequantization, already checked against each other by the caller.
pub struct Parts<'a> {
    pub packed: &'a [u8],
    /// F32 absmax, or U8 codes with double quantization.
    pub absmax: &'a [u8],
    pub nested_absmax: Option<&'a [u8]>,
    pub nested_code: Option<&'a [u8]>,
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    dtype::decode(Dtype::F32, bytes)
}

/// The per-block scales, undoing double quantization when present.
pub fn absmax(p: &Params, parts: &Parts<'_>) -> Vec<f32> {
    match &p.nested {
        None => f32s(parts.absmax),
        Some(n) => {
            let code = f32s(parts.nested_code.expect("checked"));
            let nabs = f32s(parts.nested_absmax.expect("checked"));
            parts
                .absmax
                .iter()
                .enumerate()
                .map(|(j, &q)| code[q as usize] * nabs[j / n.blocksize] + n.offset)
                .collect()
        }
    }
}

/// `dequantize_4bit` in f32 (round to `p.dtype` when storing).
pub fn dequantize(p: &Params, parts: &Parts<'_>) -> Vec<f32> {
    use rayon::prelude::*;
    let code = p.kind.code();
    let absmax = absmax(p, parts);
    let mut out = vec![0f32; p.numel()];
    // One block per task; block sizes are even, so a block starts on a byte boundary.
    out.par_chunks_mut(p.blocksize)
        .zip(parts.packed.par_chunks(p.blocksize / 2))
        .zip(absmax.par_iter())
        .for_each(|((block, bytes), &a)| {
            for (pair, &byte) in block.chunks_mut(2).zip(bytes) {
                pair[0] = code[(byte >> 4) as usize] * a;
                if let Some(lo) = pair.get_mut(1) {
                    *lo = code[(byte & 0xF) as usize] * a;
                }
            }
        });
    out
}

/// The decision rule of `quantize_4bit`: midpoints of the sorted code book and the map from
/// sorted position back to the nibble (`_get_4bit_quantize_bounds`).
struct Bounds {
    mid: [f32; 15],
    order: [u8; 16],
}

impl Bounds {
    fn new(kind: Kind) -> Bounds {
        let code = kind.code();
        // `torch.argsort` on CPU is a stable sort: equal keys (FP4's two zeros) keep nibble order.
        let mut order: [u8; 16] = std::array::from_fn(|i| i as u8);
        order.sort_by(|&a, &b| code[a as usize].total_cmp_eq(&code[b as usize]));
        let mut mid = [0f32; 15];
        for (i, m) in mid.iter_mut().enumerate() {
            *m = (code[order[i] as usize] + code[order[i + 1] as usize]) / 2.0;
        }
        Bounds { mid, order }
    }

    /// `torch.bucketize(x, mid, right=False)`: how many midpoints are strictly below `x`.
    fn index(&self, x: f32) -> u8 {
        let pos = self.mid.iter().take_while(|&&m| m < x).count();
        self.order[pos]
    }
}

/// IEEE comparison where -0 == +0 (as torch's sort compares), NaN-free inputs.
trait CmpEq {
    fn total_cmp_eq(&self, other: &f32) -> std::cmp::Ordering;
}

impl CmpEq for f32 {
    fn total_cmp_eq(&self, other: &f32) -> std::cmp::Ordering {
        self.partial_cmp(other).unwrap_or(std::cmp::Ordering::Equal)
    }
}

/// bitsandbytes' `quantize_4bit` without double quantization: the packed bytes
/// (⌈n/2⌉) and the F32 absmax per block. `values` are the weight in f32 (exact from any source
/// dtype, as `A.reshape(-1).float()`).
pub fn quantize(kind: Kind, blocksize: usize, values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let bounds = Bounds::new(kind);
    let n = values.len();
    let full = n - n % blocksize;
    let mut absmax = Vec::with_capacity(n.div_ceil(blocksize));
    let mut q = Vec::with_capacity(n + 1);
    for block in values[..full].chunks_exact(blocksize) {
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let inv = 1.0 / am.max(1e-38);
        absmax.push(am);
        q.extend(
            block
                .iter()
                .map(|&v| bounds.index((v * inv).clamp(-1.0, 1.0))),
        );
    }
    if full < n {
        let rest = &values[full..];
        let am = rest.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-38);
        absmax.push(am);
        q.extend(
            rest.iter()
                .map(|&v| bounds.index((v / am).clamp(-1.0, 1.0))),
        );
    }
    if q.len() % 2 == 1 {
        // The pad element is a scaled 0.
        q.push(bounds.index(0.0));
    }
    let packed = q.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();
    (packed, absmax)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_books() {
        let fp4 = Kind::Fp4.code();
        assert_eq!(fp4[3], 1.0);
        assert_eq!(fp4[11], -1.0);
        assert_eq!(fp4[2], 8.0f32 / 12.0);
        // Sorted NF4 order is the identity; FP4's puts nibble 0 before nibble 8 (both +0).
        assert_eq!(
            Bounds::new(Kind::Nf4).order,
            std::array::from_fn(|i| i as u8)
        );
        let o = Bounds::new(Kind::Fp4).order;
        assert_eq!(&o[..9], &[11, 10, 13, 12, 15, 14, 9, 0, 8]);
    }

    #[test]
    fn quant_state_errors() {
        let ok =
            br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [64, 128]}"#;
        let p = parse_quant_state(ok, Kind::Nf4).unwrap();
        assert_eq!((p.numel(), p.blocks()), (8192, 128));
        for (blob, want) in [
            (&br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [64, 128]}"#[..], "stored as bitsandbytes__fp4"),
            (br#"{"quant_type": "fp4", "blocksize": 48, "dtype": "float32", "shape": [4]}"#, "blocksize 48"),
            (br#"{"quant_type": "fp4", "blocksize": 64, "dtype": "int8", "shape": [4]}"#, "`dtype` `int8`"),
            (br#"{"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [4], "nested_offset": 1.0}"#, "only some"),
            (br#"{"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [4], "x": 1}"#, "unknown key"),
            (b"[1]", "not a JSON object"),
        ] {
            let e = parse_quant_state(blob, Kind::Fp4).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}
