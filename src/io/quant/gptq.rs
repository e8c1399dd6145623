//! Native GPTQ and AWQ checkpoints (`P.qweight`, `P.qzeros`, `P.scales`, GPTQ's `P.g_idx`) as
//! gptqmodel 7.7 and AutoAWQ 0.2.9 write and read them, for a linear weight `P.weight` of shape
//! `[out, in]`. Every rule below is from the producers' source:
//!
//! GPTQ (gptqmodel `nn_modules/qlinear/__init__.py` `PackableQuantLinear.pack_original` and
//! `dequantize_weight`; AutoGPTQ's layout, which gptqmodel keeps):
//! - `qweight` I32 `[⌈in·bits/32⌉, out]`: column `o` is a little-endian bit stream down the input
//!   dimension, code `i` at bit `i·bits` (3-bit codes straddle words: the 10+1+10+1+10 layout of
//!   `pack_original` is exactly that stream);
//! - `qzeros` I32 `[groups, ⌈out·bits/32⌉]`: row `g` a bit stream of the zero points along the
//!   output dimension;
//! - `scales` `[groups, out]` (F16, or BF16/F32); `g_idx` I32 `[in]`, the group of each input
//!   channel (a permutation's groups with act-order / `desc_act`; `i / group_size` without; absent
//!   in some checkpoints, then `i / group_size`);
//! - `w[o, i] = scales[g, o] · (q[i, o] − z[g, o])` with `g = g_idx[i]`, the product in the scale's
//!   dtype (`self.scales[g_idx] * (weight - zeros[g_idx])`: exact in f32, rounded once);
//! - checkpoint format `gptq` (v1, AutoGPTQ's and gptqmodel's default export) stores each zero
//!   minus one; gptqmodel's loader (`utils/model.py` `convert_gptq_v1_to_v2_format_module`) adds
//!   it back to the packed words, `+0x55555555` / `+0x11111111` / `+0x01010101` for 2/4/8 bits (a
//!   carry crosses into the next field where a stored field is all ones, as that addition does) and
//!   field by field modulo 8 for 3 bits (`model_dequant.py` `_correct_gptq_v1_qzeros`). Format
//!   `gptq_v2` stores the zeros as they are.
//!
//! AWQ GEMM (AutoAWQ `awq/modules/linear/gemm.py` `WQLinear_GEMM.from_linear`, `awq/utils/
//! packing_utils.py` `unpack_awq`/`reverse_awq_order`/`dequantize_gemm`; gptqmodel's
//! `quantization/awq/utils/packing_utils.py` is the same for 4 bits): 4-bit only;
//! `qweight` I32 `[in, out/8]` and `qzeros` I32 `[groups, out/8]` pack 8 output channels per word
//! in the interleaved order `[0, 2, 4, 6, 1, 3, 5, 7]` (nibble `k` of word `c` holds channel
//! `8c + ORDER[k]`); `scales` `[groups, out]`; `w[o, i] = (q − z) · s` in the scale's dtype with
//! group `i / (in / groups)`; no zero offset.
//!
//! Requantization (`merge --quant keep`) is round-to-nearest with the checkpoint's own scales,
//! zeros and g_idx (not a new GPTQ/AWQ calibration): the packers' formula `q = clamp(round((w +
//! z·s) / s), 0, 2^bits − 1)` in f32 (`pack_original`; AWQ's packer applies the same expression,
//! without the clamp, which lorakit adds), rounding half to even as `torch.round`. Only `qweight`
//! changes.
//!
//! Must not calibrate or choose what is stored: requantization reuses the checkpoint's scales,
//! zeros and `g_idx`, and `merge --quant` decides whether to requantize.

use crate::dtype::{self, Dtype};

/// AWQ's interleave: nibble `k` of a word holds output channel `ORDER[k]` of its eight.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Which producer layout a weight uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// GPTQ, `checkpoint_format` `gptq`: zeros stored minus one.
    GptqV1,
    /// GPTQ, `checkpoint_format` `gptq_v2`: zeros as they are.
    GptqV2,
    /// AWQ GEMM.
    Awq,
}

/// One GPTQ/AWQ weight, checked against every tensor's shape at scan.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Params {
    pub layout: Layout,
    pub bits: u32,
    pub in_features: usize,
    pub out_features: usize,
    pub groups: usize,
    /// The group of each input channel (GPTQ's `g_idx`, or `i / group_size`).
    #[serde(skip)]
    pub g_idx: Vec<u32>,
    /// `g_idx` is not `i / group_size` (act-order / desc_act).
    pub act_order: bool,
    /// The config's `sym` (informational: the stored zeros are used either way).
    pub sym: Option<bool>,
    pub scale_dtype: Dtype,
}

impl Params {
    pub fn maxq(&self) -> u32 {
        (1u32 << self.bits) - 1
    }

    /// The group size the g_idx implies without act-order (in / groups, rounded up).
    pub fn group_size(&self) -> usize {
        self.in_features.div_ceil(self.groups)
    }
}

/// Words needed for `n` codes of `bits` bits.
pub fn words(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(32)
}

fn word(data: &[u8], k: usize) -> u32 {
    data.get(4 * k..4 * k + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// Code `i` of a bit stream whose `k`-th word is `get(k)`.
fn stream_code(get: impl Fn(usize) -> u32, i: usize, bits: u32) -> u32 {
    let start = i * bits as usize;
    let (k, off) = (start / 32, (start % 32) as u32);
    let mut v = (get(k) as u64) >> off;
    if off + bits > 32 {
        v |= (get(k + 1) as u64) << (32 - off);
    }
    (v & ((1u64 << bits) - 1)) as u32
}

/// The zero points `[groups, out]` as the producer's loader sees them.
pub fn zeros(p: &Params, qzeros: &[u8]) -> Vec<u32> {
    let wpr = match p.layout {
        Layout::Awq => p.out_features / 8,
        _ => words(p.out_features, p.bits),
    };
    let mut z = Vec::with_capacity(p.groups * p.out_features);
    for g in 0..p.groups {
        let row = |k: usize| {
            let w = word(qzeros, g * wpr + k);
            match (p.layout, p.bits) {
                // gptqmodel's v1 → v2 conversion: one addition per packed word.
                (Layout::GptqV1, 2) => w.wrapping_add(0x5555_5555),
                (Layout::GptqV1, 4) => w.wrapping_add(0x1111_1111),
                (Layout::GptqV1, 8) => w.wrapping_add(0x0101_0101),
                _ => w,
            }
        };
        for o in 0..p.out_features {
            let v = match p.layout {
                Layout::Awq => awq_code(row(o / 8), o % 8),
                Layout::GptqV1 if p.bits == 3 => (stream_code(row, o, 3) + 1) & 7,
                _ => stream_code(row, o, p.bits),
            };
            z.push(v);
        }
    }
    z
}

/// Channel `j` (0..8) of an AWQ word.
fn awq_code(w: u32, j: usize) -> u32 {
    let k = AWQ_ORDER.iter().position(|&c| c == j).expect("0..8");
    (w >> (4 * k)) & 0xF
}

/// The codes `[out, in]` (the weight's orientation).
pub fn codes(p: &Params, qweight: &[u8]) -> Vec<u32> {
    let (inf, outf) = (p.in_features, p.out_features);
    let mut q = vec![0u32; outf * inf];
    match p.layout {
        Layout::Awq => {
            let wpr = outf / 8;
            for i in 0..inf {
                for o in 0..outf {
                    q[o * inf + i] = awq_code(word(qweight, i * wpr + o / 8), o % 8);
                }
            }
        }
        _ => {
            for o in 0..outf {
                let col = |k: usize| word(qweight, k * outf + o);
                for i in 0..inf {
                    q[o * inf + i] = stream_code(col, i, p.bits);
                }
            }
        }
    }
    q
}

/// Dequantizes to f32 `[out, in]`, each value already rounded to the scale dtype as the producer
/// computes it.
pub fn dequantize(p: &Params, qweight: &[u8], qzeros: &[u8], scales: &[u8]) -> Vec<f32> {
    let s = dtype::decode(p.scale_dtype, scales);
    let z = zeros(p, qzeros);
    let q = codes(p, qweight);
    let inf = p.in_features;
    q.iter()
        .enumerate()
        .map(|(k, &c)| {
            let (o, i) = (k / inf, k % inf);
            let g = p.g_idx[i] as usize * p.out_features + o;
            // (q − z) is exact in f32 and so is its product with a 16-bit scale: one rounding.
            dtype::round_to(p.scale_dtype, s[g] * (c as f32 - z[g] as f32))
        })
        .collect()
}

/// Round-to-nearest of `merged` (`[out, in]`, f32) with the stored scales, zeros and g_idx: the
/// new `qweight` bytes.
pub fn requantize(p: &Params, merged: &[f32], qzeros: &[u8], scales: &[u8]) -> Vec<u8> {
    let s = dtype::decode(p.scale_dtype, scales);
    let z = zeros(p, qzeros);
    let (inf, outf) = (p.in_features, p.out_features);
    let maxq = p.maxq() as f32;
    let code = |o: usize, i: usize| -> u32 {
        let g = p.g_idx[i] as usize * outf + o;
        let (s, z) = (s[g], z[g] as f32);
        // `torch.round((W + zeros * scales) / scales)` in f32, then `clamp_(0, maxq)`.
        let v = ((merged[o * inf + i] + z * s) / s).round_ties_even();
        if v.is_nan() {
            0
        } else {
            v.clamp(0.0, maxq) as u32
        }
    };
    let mut out = match p.layout {
        Layout::Awq => vec![0u32; inf * (outf / 8)],
        _ => vec![0u32; words(inf, p.bits) * outf],
    };
    match p.layout {
        Layout::Awq => {
            let wpr = outf / 8;
            for i in 0..inf {
                for c in 0..wpr {
                    for (k, &j) in AWQ_ORDER.iter().enumerate() {
                        out[i * wpr + c] |= code(8 * c + j, i) << (4 * k);
                    }
                }
            }
        }
        _ => {
            for o in 0..outf {
                for i in 0..inf {
                    let v = code(o, i) as u64;
                    let start = i * p.bits as usize;
                    let (k, off) = (start / 32, start % 32);
                    out[k * outf + o] |= (v << off) as u32;
                    if off + p.bits as usize > 32 {
                        out[(k + 1) * outf + o] |= (v >> (32 - off)) as u32;
                    }
                }
            }
        }
    }
    out.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// What `quantization_config` says about a GPTQ or AWQ checkpoint (gptqmodel `quantization/
/// config.py` `QuantizeConfig.to_dict` / `from_quant_config`: `bits`, `group_size`, `desc_act`,
/// `sym`, `format` or `checkpoint_format`, `pack_dtype`, `dynamic`; transformers `AwqConfig`:
/// `bits`/`w_bit`, `group_size`/`q_group_size`, `zero_point`, `version`).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub layout: Layout,
    pub bits: u32,
    /// `None` for `-1` (one group per output channel).
    pub group_size: Option<usize>,
    pub sym: Option<bool>,
    pub desc_act: bool,
}

impl Config {
    /// The config of a checkpoint whose weights are `qweight`s, or why lorakit does not read them
    /// (phrased for "tensor `…`: …").
    pub fn parse(config: Option<&serde_json::Value>) -> Result<Config, String> {
        let c = config.ok_or(
            "GPTQ/AWQ `qweight` without a quantization_config in config.json saying how it is packed",
        )?;
        let method = c.get("quant_method").and_then(|v| v.as_str()).unwrap_or("");
        let int = |keys: &[&str]| -> Option<i64> {
            keys.iter().find_map(|k| {
                let v = c.get(*k)?;
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
        };
        if !matches!(method.to_ascii_lowercase().as_str(), "gptq" | "awq") {
            return Err(format!(
                "GPTQ/AWQ `qweight` in a checkpoint whose quant_method is `{method}`, not gptq or awq"
            ));
        }
        let group_size = match int(&["group_size", "q_group_size"]) {
            Some(-1) => None,
            Some(g) if g > 0 => Some(g as usize),
            other => {
                return Err(format!(
                    "quantization_config group_size {} is not -1 or a positive size",
                    other.map_or("(missing)".to_string(), |g| g.to_string())
                ))
            }
        };
        let bits = int(&["bits", "w_bit"]).unwrap_or(0);
        match method.to_ascii_lowercase().as_str() {
            "gptq" => {
                let format = c
                    .get("format")
                    .or_else(|| c.get("checkpoint_format"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("gptq");
                let layout = match format {
                    "gptq" => Layout::GptqV1,
                    "gptq_v2" => Layout::GptqV2,
                    f => {
                        return Err(format!(
                            "GPTQ checkpoint format `{f}` is not one lorakit reads (gptq, gptq_v2)"
                        ))
                    }
                };
                if let Some(d) = c.get("pack_dtype").and_then(|v| v.as_str()) {
                    if d != "int32" {
                        return Err(format!(
                            "GPTQ pack_dtype `{d}` is not one lorakit reads (int32)"
                        ));
                    }
                }
                if c.get("dynamic")
                    .is_some_and(|d| !d.is_null() && d.as_object().is_none_or(|o| !o.is_empty()))
                {
                    return Err("GPTQ `dynamic` per-module overrides are not read yet".into());
                }
                if !matches!(bits, 2 | 3 | 4 | 8) {
                    return Err(format!("GPTQ bits {bits} is not 2, 3, 4 or 8 (the widths of the gptq/gptq_v2 layouts)"));
                }
                Ok(Config {
                    layout,
                    bits: bits as u32,
                    group_size,
                    sym: c.get("sym").and_then(|v| v.as_bool()),
                    desc_act: c.get("desc_act").and_then(|v| v.as_bool()).unwrap_or(false),
                })
            }
            "awq" => {
                let version = c.get("version").and_then(|v| v.as_str()).unwrap_or("gemm");
                if !version.eq_ignore_ascii_case("gemm") {
                    return Err(format!(
                        "AWQ version `{version}` is not one lorakit reads (gemm)"
                    ));
                }
                if bits != 4 {
                    return Err(format!(
                        "AWQ bits {bits} is not 4 (the only width of the GEMM layout)"
                    ));
                }
                Ok(Config {
                    layout: Layout::Awq,
                    bits: 4,
                    group_size,
                    sym: c.get("zero_point").and_then(|v| v.as_bool()).map(|z| !z),
                    desc_act: false,
                })
            }
            _ => unreachable!("checked above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(layout: Layout, bits: u32, inf: usize, outf: usize, groups: usize) -> Params {
        Params {
            layout,
            bits,
            in_features: inf,
            out_features: outf,
            groups,
            g_idx: (0..inf)
                .map(|i| (i / inf.div_ceil(groups)) as u32)
                .collect(),
            act_order: false,
            sym: None,
            scale_dtype: Dtype::F32,
        }
    }

    /// Requantizing a dequantized weight gives back its codes, for every layout and width
    /// (the pack is the unpack's inverse), and 3-bit codes cross word boundaries.
    #[test]
    fn pack_inverts_unpack() {
        for (layout, bits) in [
            (Layout::GptqV2, 2),
            (Layout::GptqV2, 3),
            (Layout::GptqV1, 4),
            (Layout::GptqV2, 8),
            (Layout::Awq, 4),
        ] {
            let (inf, outf, groups) = (64, 32, 2);
            let p = params(layout, bits, inf, outf, groups);
            let maxq = p.maxq();
            let codes_in: Vec<u32> = (0..inf * outf)
                .map(|k| (k as u32 * 7 + k as u32 / 5) % (maxq + 1))
                .collect();
            let zero_words = match layout {
                Layout::Awq => groups * outf / 8,
                _ => groups * words(outf, bits),
            };
            // v2/AWQ zeros of 0 everywhere; v1 stores zero − 1, all ones.
            let fill = if layout == Layout::GptqV1 {
                0xEEEE_EEEEu32
            } else {
                0
            };
            let qzeros: Vec<u8> = (0..zero_words).flat_map(|_| fill.to_le_bytes()).collect();
            assert!(zeros(&p, &qzeros).iter().all(|&z| z == 0 || fill != 0));
            let scales: Vec<u8> = (0..groups * outf)
                .flat_map(|_| 1f32.to_le_bytes())
                .collect();
            let w: Vec<f32> = codes_in
                .iter()
                .map(|&c| c as f32 - if fill != 0 { 15.0 } else { 0.0 })
                .collect();
            let packed = requantize(&p, &w, &qzeros, &scales);
            assert_eq!(codes(&p, &packed), codes_in, "{layout:?} {bits}");
            assert_eq!(dequantize(&p, &packed, &qzeros, &scales), w);
        }
    }
}
