//! Recognising compressed-tensors weights from the headers (the `weight_packed` formats): the
//! integer `pack-quantized` ([`packed`](super::packed)) and the float `nvfp4-pack-quantized` /
//! `mxfp4-pack-quantized` / `mxfp6-pack-quantized` ([`ct_fp4`](super::ct_fp4)), every companion checked against the
//! packing and the config's weight arguments before anything is read.
//!
//! Must not read tensor data beyond `weight_shape`; must not decide what a merge writes.

use super::ct_fp4::{self, Kind};
use super::scan::{dtype_err, typed};
use super::{err, packed, QuantMap, QuantTensor, Scheme};
use crate::dtype::{self, Dtype};
use crate::error::InputResult;
use crate::io::header::TensorInfo;
use crate::io::Checkpoint;

/// A `weight_shape` tensor's values (I64 or I32; empty for another dtype, which no shape equals).
fn shape_values(ck: &Checkpoint, name: &str) -> InputResult<Vec<i64>> {
    let v = ck.view(name)?;
    Ok(match v.dtype {
        Dtype::I64 => v
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
            .collect(),
        Dtype::I32 => v
            .data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4")).into())
            .collect(),
        _ => Vec::new(),
    })
}

/// Whether `scale` (of a `rows`x`cols` integer weight) is one per tensor, and its groups per
/// row: `[]`/`[1]` per tensor, `[rows, 1]` per row, `[rows, g]` with `g` dividing `cols`.
fn scale_groups(
    ck: &Checkpoint,
    scale: &TensorInfo,
    rows: usize,
    cols: usize,
) -> InputResult<(bool, usize)> {
    match scale.shape.as_slice() {
        [] | [1] => Ok((true, 1)),
        [r, g] if *r == rows && *g >= 1 && cols.is_multiple_of(*g) => Ok((false, *g)),
        s => Err(err(
            ck,
            &scale.name,
            format!("shape {s:?} is not [1], [{rows}, 1] or [{rows}, groups] with groups dividing {cols}"),
        )),
    }
}

/// `P.weight_g_idx` (llm-compressor's GPTQ `actorder: "group"`), where stored: I32 `[cols]`, each
/// value one of the `groups` scale columns, read and pushed onto `companions`. `None` where it is
/// absent or uninitialised (a `-1` in it: compressed-tensors then reads the columns in order,
/// `is_column_order = g_idx is None or -1 in g_idx`), or where it is exactly `c / group_size`.
fn group_index(
    ck: &Checkpoint,
    prefix: &str,
    cols: usize,
    groups: usize,
    per_tensor: bool,
    companions: &mut Vec<String>,
) -> InputResult<Option<Vec<u32>>> {
    let name = format!("{prefix}.weight_g_idx");
    let Some(info) = ck.info(&name) else {
        return Ok(None);
    };
    if info.dtype != Dtype::I32 || info.shape != [cols] {
        return Err(err(
            ck,
            &name,
            format!(
                "is {}; the group index of a weight of {cols} columns is I32 [{cols}]",
                typed(info)
            ),
        ));
    }
    if per_tensor {
        return Err(err(
            ck,
            &name,
            "is a group index beside one scale per tensor, which has no groups",
        ));
    }
    let v = ck.view(&name)?;
    let raw: Vec<i32> = v
        .data
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().expect("4")))
        .collect();
    companions.push(name.clone());
    if raw.contains(&-1) {
        return Ok(None);
    }
    let mut g = Vec::with_capacity(cols);
    for (i, &x) in raw.iter().enumerate() {
        if x < 0 || x as usize >= groups {
            return Err(err(
                ck,
                &name,
                format!(
                    "column {i} is in group {x}, not one of the {groups} groups of `{prefix}.weight_scale`"
                ),
            ));
        }
        g.push(x as u32);
    }
    let gs = cols / groups;
    let in_order = g.iter().enumerate().all(|(i, &x)| x as usize == i / gs);
    Ok((!in_order).then_some(g))
}

/// The quantization parameters compressed-tensors registers on a quantized Linear
/// (`quantization/lifecycle/initialize.py`), as a `dense` checkpoint stores them.
const DENSE_PARAMS: [&str; 10] = [
    "weight_scale",
    "weight_zero_point",
    "weight_g_idx",
    "weight_global_scale",
    "input_scale",
    "input_zero_point",
    "input_global_scale",
    "output_scale",
    "output_zero_point",
    "output_global_scale",
];

impl QuantMap {
    /// The tensors beside a compressed-tensors FP8 weight `weight` (scale `scale`) that its
    /// symmetric float scheme never writes, each refused naming it: a zero point, an NVFP4
    /// global scale, a `weight_shape` other than the weight's; and an MXFP8 weight (E8M0 `U8`
    /// scales) stored as E5M2, where compressed-tensors writes float8_e4m3fn only.
    pub(super) fn check_ct_fp8_companions(
        &self,
        ck: &Checkpoint,
        prefix: &str,
        weight: &str,
        scale: &str,
    ) -> InputResult<()> {
        let w = ck.info(weight).expect("listed");
        for (leaf, what) in [
            ("weight_zero_point", "a zero point"),
            ("weight_global_scale", "an NVFP4 global scale"),
        ] {
            let n = format!("{prefix}.{leaf}");
            if ck.contains(&n) {
                return Err(err(
                    ck,
                    &n,
                    format!("is {what} beside the FP8 weight `{weight}`, which compressed-tensors' symmetric FP8 never stores"),
                ));
            }
        }
        let shape_name = format!("{prefix}.weight_shape");
        if ck.contains(&shape_name) {
            let dims = shape_values(ck, &shape_name)?;
            let want: Vec<i64> = w.shape.iter().map(|&d| d as i64).collect();
            if dims != want {
                return Err(err(
                    ck,
                    &shape_name,
                    format!("says {dims:?}, the FP8 weight `{weight}` is {:?}", w.shape),
                ));
            }
        }
        if w.dtype == Dtype::F8_E5M2 && ck.info(scale).is_some_and(|s| s.dtype == Dtype::U8) {
            return Err(err(
                ck,
                weight,
                "is F8_E5M2 with E8M0 scales; compressed-tensors' MXFP8 weights are F8_E4M3",
            ));
        }
        Ok(())
    }

    /// `, format `F`` of a compressed-tensors config, for messages.
    pub(super) fn ct_format_note(&self) -> String {
        self.config
            .as_ref()
            .and_then(|c| c.get("format"))
            .and_then(serde_json::Value::as_str)
            .map(|f| format!(", format `{f}`"))
            .unwrap_or_default()
    }

    /// A compressed-tensors checkpoint saved uncompressed (`format: "dense"`, llm-compressor's
    /// `save_pretrained(save_compressed=False)`, `quantization_status` frozen): each float
    /// `P.weight` with a `P.weight_scale` is stored fake-quantized, and the loader's forward
    /// quantizes it again with the stored scales (compressed-tensors 0.20
    /// `quantization/lifecycle/forward.py` `set_forward_quantized`: `status < COMPRESSED`). The
    /// weight is read as it is; its quantization parameters are companions, copied where the
    /// model stays quantized and dropped with `quantization_config` where it is written as float.
    pub(super) fn add_ct_dense_all(
        &mut self,
        ck: &Checkpoint,
        names: &[String],
    ) -> InputResult<()> {
        let dense = self.method().as_deref() == Some("compressed-tensors")
            && self
                .config
                .as_ref()
                .and_then(|c| c.get("format"))
                .and_then(serde_json::Value::as_str)
                == Some("dense");
        if !dense {
            return Ok(());
        }
        for p in names.iter().filter_map(|n| n.strip_suffix(".weight_scale")) {
            let weight = format!("{p}.weight");
            let Some(w) = ck
                .info(&weight)
                .filter(|w| matches!(w.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16))
            else {
                continue;
            };
            if w.shape.len() != 2 {
                return Err(err(
                    ck,
                    &weight,
                    format!(
                        "is {} beside `{p}.weight_scale`: lorakit reads 2-D quantized weights only",
                        typed(w)
                    ),
                ));
            }
            let companions = DENSE_PARAMS
                .iter()
                .map(|leaf| format!("{p}.{leaf}"))
                .filter(|n| ck.contains(n))
                .collect();
            let args = self.ct_args(ck, p)?;
            let float = args.as_ref().and_then(|a| a.kind.as_deref()) == Some("float");
            let bits = args.as_ref().and_then(|a| a.num_bits).unwrap_or(8) as u32;
            let scheme = Scheme::CtDense {
                dtype: w.dtype,
                bits,
                float,
            };
            let shape = w.shape.clone();
            self.insert_stored_as_itself(ck, &weight, shape, scheme, companions)?;
        }
        Ok(())
    }

    /// Every `P.weight_packed` stored as U8 (FP4, FP6): recognised before the other formats, so its
    /// E4M3 scale is not taken for an FP8 weight.
    pub(super) fn add_ct_fp4_all(&mut self, ck: &Checkpoint, names: &[String]) -> InputResult<()> {
        for name in names {
            if let Some(p) = name.strip_suffix(".weight_packed") {
                if ck.info(name).is_some_and(|i| i.dtype == Dtype::U8) {
                    self.add_ct_fp4(ck, p, name)?;
                }
            }
        }
        Ok(())
    }

    /// One FP4 or FP6 weight `P.weight_packed`, every companion checked against the packing.
    fn add_ct_fp4(&mut self, ck: &Checkpoint, prefix: &str, packed_name: &str) -> InputResult<()> {
        let pk = ck.info(packed_name).expect("listed").clone();
        let [rows, bytes] = pk.shape[..] else {
            return Err(err(
                ck,
                packed_name,
                format!(
                    "is {}, not a 2-D U8 matrix of packed FP4/FP6 codes",
                    typed(&pk)
                ),
            ));
        };
        let scale_name = format!("{prefix}.weight_scale");
        let Some(scale) = ck.info(&scale_name).cloned() else {
            return Err(err(
                ck,
                packed_name,
                format!("is packed FP4/FP6 (U8) without `{scale_name}`"),
            ));
        };
        let args = self.ct_args(ck, prefix)?;
        let kind = match scale.dtype {
            Dtype::F8_E4M3 => Kind::Nvfp4,
            // MXFP4 and MXFP6 both store E8M0 bytes per 32: the config's `num_bits` tells them
            // apart, else the packing (2 codes a byte or 4 in 3 bytes) that fits the scales.
            Dtype::U8 => match args.as_ref().and_then(|a| a.num_bits) {
                Some(6) => Kind::Mxfp6,
                Some(_) => Kind::Mxfp4,
                None => {
                    let fits = |k: Kind| {
                        k.cols_of_packed(bytes)
                            .is_some_and(|c| scale.shape == [rows, c / k.group_size()])
                    };
                    if fits(Kind::Mxfp6) && !fits(Kind::Mxfp4) {
                        Kind::Mxfp6
                    } else {
                        Kind::Mxfp4
                    }
                }
            },
            _ => {
                return Err(dtype_err(ck, &scale, |d| {
                    format!("is {d}: a packed FP4/FP6 `weight_packed` takes an F8_E4M3 scale per 16 (NVFP4) or a U8 E8M0 exponent per 32 (MXFP4, MXFP6)")
                }))
            }
        };
        let gs = kind.group_size();
        let Some(cols) = kind.cols_of_packed(bytes) else {
            return Err(err(
                ck,
                packed_name,
                format!(
                    "is {}; MXFP6 packs four codes in three bytes, and {bytes} bytes a row is not a multiple of 3",
                    typed(&pk)
                ),
            ));
        };
        if rows == 0 || cols == 0 || !cols.is_multiple_of(gs) || scale.shape != [rows, cols / gs] {
            return Err(err(
                ck,
                &scale_name,
                format!(
                    "is {}; {} scales of a {rows}x{cols} weight (from `{packed_name}` {:?}) are {:?} [{rows}, {cols}/{gs}] with {gs} dividing {cols}",
                    typed(&scale),
                    kind.name().to_uppercase(),
                    pk.shape,
                    kind.scale_dtype(),
                ),
            ));
        }
        let mut companions = vec![scale_name];
        let global_name = format!("{prefix}.weight_global_scale");
        match (kind, ck.info(&global_name)) {
            (Kind::Nvfp4, Some(g)) if g.dtype == Dtype::F32 && g.shape == [1] => {
                companions.push(global_name)
            }
            (Kind::Nvfp4, Some(g)) => {
                return Err(err(
                    ck,
                    &global_name,
                    format!(
                        "is {}; compressed-tensors stores the NVFP4 global scale as F32 [1]",
                        typed(g)
                    ),
                ))
            }
            (Kind::Nvfp4, None) => {
                return Err(err(
                    ck,
                    packed_name,
                    format!("is NVFP4 (E4M3 scales) without `{global_name}`"),
                ))
            }
            (Kind::Mxfp4 | Kind::Mxfp6, Some(_)) => {
                return Err(err(
                    ck,
                    &global_name,
                    format!(
                        "stands beside {} (E8M0 scales), which has no global scale",
                        kind.name().to_uppercase()
                    ),
                ))
            }
            (Kind::Mxfp4 | Kind::Mxfp6, None) => {}
        }
        let zp = format!("{prefix}.weight_zero_point");
        if ck.contains(&zp) {
            return Err(err(
                ck,
                &zp,
                "is a zero point of an FP4/FP6 weight; compressed-tensors quantizes them symmetrically only",
            ));
        }
        let shape_name = format!("{prefix}.weight_shape");
        if ck.contains(&shape_name) {
            // Not written for FP4/FP6; where present it must agree with the packing.
            let dims = shape_values(ck, &shape_name)?;
            if dims != [rows as i64, cols as i64] {
                return Err(err(
                    ck,
                    &shape_name,
                    format!(
                        "says {dims:?}, the {} `{packed_name}` packs [{rows}, {cols}]",
                        kind.name().to_uppercase()
                    ),
                ));
            }
            companions.push(shape_name);
        }
        let input = format!("{prefix}.input_global_scale");
        if ck.contains(&input) {
            companions.push(input);
        }
        if let Some(a) = args {
            let strategy = match kind {
                Kind::Nvfp4 => "tensor_group",
                Kind::Mxfp4 | Kind::Mxfp6 => "group",
            };
            let bits = u64::from(kind.bits());
            let c = if a.num_bits.is_some_and(|b| b != bits) {
                Some(format!("{}-bit weights", a.num_bits.unwrap_or(0)))
            } else if a.group_size.is_some_and(|g| g != gs as i64) {
                Some(format!("groups of {}", a.group_size.unwrap_or(0)))
            } else if a.strategy.as_deref().is_some_and(|s| s != strategy) {
                Some(format!(
                    "strategy `{}`",
                    a.strategy.as_deref().unwrap_or("")
                ))
            } else if a.kind.as_deref() == Some("int") {
                // compressed-tensors reads an `int` scheme as pack-quantized (hostile round 14).
                Some("integer weights".to_string())
            } else if a.symmetric == Some(false) {
                // An asymmetric scheme has a zero point, which FP4 never stores.
                Some("asymmetric weights (a zero point)".to_string())
            } else {
                None
            };
            if let Some(c) = c {
                let c = format!(
                    "{c}, the stored `{packed_name}` is {} ({bits}-bit, groups of {gs}, strategy `{strategy}`)",
                    kind.name().to_uppercase()
                );
                return Err(a.refusal(ck, prefix, c));
            }
        }
        self.insert(
            ck,
            QuantTensor {
                name: format!("{prefix}.weight"),
                stored: packed_name.to_owned(),
                shape: vec![rows, cols],
                scheme: Scheme::CtFp4(ct_fp4::Params { kind, rows, cols }),
                companions,
            },
        )
    }

    pub(super) fn add_packed(
        &mut self,
        ck: &Checkpoint,
        prefix: &str,
        packed_name: &str,
    ) -> InputResult<()> {
        let pk = ck.info(packed_name).expect("listed");
        let need = |suffix: &str| {
            let n = format!("{prefix}.{suffix}");
            ck.info(&n).cloned().ok_or_else(|| {
                err(
                    ck,
                    packed_name,
                    format!("compressed-tensors packed weight without `{n}`"),
                )
            })
        };
        let shape_info = need("weight_shape")?;
        let scale = need("weight_scale")?;
        if pk.dtype != Dtype::I32 || pk.shape.len() != 2 {
            return Err(err(
                ck,
                packed_name,
                format!("is {}, not a 2-D I32 matrix", typed(pk)),
            ));
        }
        let sv = ck.view(&shape_info.name)?;
        let dims: Vec<i64> = match sv.dtype {
            Dtype::I64 => sv
                .data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                .collect(),
            Dtype::I32 => sv
                .data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
                .collect(),
            _ => Vec::new(),
        };
        let (rows, cols) = match dims.as_slice() {
            [r, c]
                if *r > 0
                    && *c > 0
                    && (*r as u64)
                        .checked_mul(*c as u64)
                        .is_some_and(|n| n < 1 << 40) =>
            {
                (*r as usize, *c as usize)
            }
            _ => {
                return Err(dtype_err(ck, &shape_info, |d| {
                    format!("is not two positive sizes (got {dims:?} as {d})")
                }))
            }
        };
        if pk.shape[0] != rows {
            return Err(err(
                ck,
                packed_name,
                format!("has {} rows but weight_shape says {rows}", pk.shape[0]),
            ));
        }
        let bits = packed::infer_bits(cols, pk.shape[1]).ok_or_else(|| {
            err(
                ck,
                packed_name,
                format!(
                    "{} words per row do not pack {cols} elements at any width of 1..8 bits (or at more than one)",
                    pk.shape[1]
                ),
            )
        })?;
        if !dtype::is_float_compute(scale.dtype) || scale.dtype == Dtype::F64 {
            return Err(dtype_err(ck, &scale, |d| {
                format!("scale dtype {d} is not F32, F16 or BF16")
            }));
        }
        let (per_tensor, groups) = scale_groups(ck, &scale, rows, cols)?;
        let zp_name = format!("{prefix}.weight_zero_point");
        let symmetric = !ck.contains(&zp_name);
        let mut companions = vec![shape_info.name.clone(), scale.name.clone()];
        if !symmetric {
            let z = ck.info(&zp_name).expect("present");
            let want = [packed::words(rows, bits), groups];
            if per_tensor || z.dtype != Dtype::I32 || z.shape != want {
                return Err(err(
                    ck,
                    &zp_name,
                    format!(
                        "is {}; a packed zero point of {bits}-bit {rows}x{cols} in {groups} group(s) is I32 {want:?}",
                        typed(z)
                    ),
                ));
            }
            companions.push(zp_name);
        }
        let g_idx = group_index(ck, prefix, cols, groups, per_tensor, &mut companions)?;
        let params = packed::Params {
            bits,
            rows,
            cols,
            groups,
            per_tensor,
            symmetric,
            scale_dtype: scale.dtype,
            storage: packed::Storage::Packed,
            g_idx,
        };
        self.insert_ct_int(ck, prefix, packed_name, params, &scale, companions)
    }

    /// A compressed-tensors unpacked integer weight (`naive-quantized`, `int-quantized`:
    /// compressors/naive_quantized/base.py): I8 `P.weight` with `P.weight_scale` (per tensor,
    /// per row or per group, any float) and, asymmetric, an I8 `P.weight_zero_point` of the
    /// scale's shape; `P.weight_g_idx` as for pack-quantized. The width is the config's
    /// `num_bits` (8 where it says none: QuantizationArgs' default).
    pub(super) fn add_ct_int8(
        &mut self,
        ck: &Checkpoint,
        prefix: &str,
        weight: &str,
    ) -> InputResult<()> {
        let w = ck.info(weight).expect("listed").clone();
        let scale = ck
            .info(&format!("{prefix}.weight_scale"))
            .expect("checked by the caller")
            .clone();
        let [rows, cols] = w.shape[..] else {
            return Err(err(
                ck,
                weight,
                format!(
                    "is {}: lorakit reads 2-D compressed-tensors integer weights only",
                    typed(&w)
                ),
            ));
        };
        if rows == 0 || cols == 0 {
            return Err(err(
                ck,
                weight,
                format!("is {}, an empty weight", typed(&w)),
            ));
        }
        if !dtype::is_float_compute(scale.dtype) || scale.dtype == Dtype::F64 {
            return Err(dtype_err(ck, &scale, |d| {
                format!("scale dtype {d} is not F32, F16 or BF16")
            }));
        }
        let args = self.ct_args(ck, prefix)?;
        let bits = match args.as_ref().and_then(|a| a.num_bits) {
            Some(b) => b as u32,
            None => 8,
        };
        let (per_tensor, groups) = scale_groups(ck, &scale, rows, cols)?;
        let zp_name = format!("{prefix}.weight_zero_point");
        let symmetric = !ck.contains(&zp_name);
        let mut companions = vec![scale.name.clone()];
        if !symmetric {
            let z = ck.info(&zp_name).expect("present");
            if z.dtype != Dtype::I8 || z.numel() != scale.numel() || z.shape.len() > 2 {
                return Err(err(
                    ck,
                    &zp_name,
                    format!(
                        "is {}; the zero points of an I8 weight are I8 of its scale's shape {:?}",
                        typed(z),
                        scale.shape
                    ),
                ));
            }
            companions.push(zp_name);
        }
        let g_idx = group_index(ck, prefix, cols, groups, per_tensor, &mut companions)?;
        let params = packed::Params {
            bits,
            rows,
            cols,
            groups,
            per_tensor,
            symmetric,
            scale_dtype: scale.dtype,
            storage: packed::Storage::Int8,
            g_idx,
        };
        self.insert_ct_int(ck, prefix, weight, params, &scale, companions)
    }

    /// Checks `params` against the config's weight arguments, then records the weight.
    fn insert_ct_int(
        &mut self,
        ck: &Checkpoint,
        prefix: &str,
        stored: &str,
        params: packed::Params,
        scale: &TensorInfo,
        companions: Vec<String>,
    ) -> InputResult<()> {
        if let Some(a) = self.ct_args(ck, prefix)? {
            if let Some(c) = a.contradicts_packed(&params, stored, &scale.name, &scale.shape) {
                return Err(a.refusal(ck, prefix, c));
            }
        }
        self.insert(
            ck,
            QuantTensor {
                name: format!("{prefix}.weight"),
                stored: stored.to_owned(),
                shape: vec![params.rows, params.cols],
                scheme: Scheme::Packed(params),
                companions,
            },
        )
    }
}
