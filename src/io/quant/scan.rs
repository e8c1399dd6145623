//! Recognising quantized weights from a checkpoint's headers: [`QuantMap::scan`] and one
//! `add_*` per producer format, each checking every companion tensor against the packing before
//! anything is read. It reads no tensor data except small state tensors (quant_state JSON,
//! `weight_shape`, the stored code book it checks).
//!
//! It must not dequantize or quantize (the per-format files do) and never guesses a layout the
//! headers and config.json do not state: an inconsistent one is an error naming the file.

use super::gptq::{self, Config as GptqConfig, Layout as GptqLayout};
use super::*;
use crate::io::header::TensorInfo;

/// `DTYPE [shape]` of a tensor, as the errors below quote it.
pub(super) fn typed(info: &TensorInfo) -> String {
    format!("{} {:?}", dtype::name(info.dtype), info.shape)
}

/// Checks that `scale`, a per-tensor scale of `weight`, is stored F32 `[]` (or `[1]`): the
/// refusal names it and says `stores` ("… stores X as F32 []"), or names `weight` as `missing`
/// when it is absent. ModelOpt's NVFP4 `weight_scale_2` and ComfyUI's.
pub(super) fn require_f32_scalar(
    ck: &Checkpoint,
    scale: &str,
    weight: &str,
    stores: &str,
    missing: impl FnOnce() -> String,
) -> InputResult<()> {
    match ck.info(scale) {
        Some(g) if g.dtype == Dtype::F32 && g.numel() == 1 && g.shape.len() <= 1 => Ok(()),
        Some(g) => Err(err(
            ck,
            scale,
            format!("is {}; {stores} as F32 []", typed(g)),
        )),
        None => Err(err(ck, weight, missing())),
    }
}

/// The error naming tensor `info`, whose message `msg` quotes its dtype (given by name).
pub(super) fn dtype_err(
    ck: &Checkpoint,
    info: &TensorInfo,
    msg: impl FnOnce(&str) -> String,
) -> InputError {
    err(ck, &info.name, msg(&dtype::name(info.dtype)))
}

const BNB4_SUFFIXES: [&str; 4] = ["absmax", "quant_map", "nested_absmax", "nested_quant_map"];

impl QuantMap {
    /// Reads `quantization_config` from the checkpoint's config.json (if any) and recognises every
    /// quantized weight from the headers. Errors on anything incomplete or inconsistent.
    pub fn scan(ck: &Checkpoint) -> InputResult<QuantMap> {
        // config.json, read once: `quantization_config`, ModelOpt's and MLX's settings.
        let config_json = read_config_json(ck);
        let mut map = QuantMap {
            config: config_json
                .as_ref()
                .and_then(|v| v.get("quantization_config"))
                .cloned(),
            ..QuantMap::default()
        };
        let config_block = map
            .config_block()
            .map_err(|m| InputError::invalid(ck.folder().join("config.json"), m))?;
        map.modelopt = super::modelopt::config_of(ck, config_json.as_ref())?;
        if let Some(e) = map.modelopt.as_ref().and_then(|c| c.refusal()) {
            // An algorithm lorakit does not read: each weight with a scale stands for it.
            map.push_unsupported(None, e);
            for p in ck.names().filter_map(|n| n.strip_suffix(".weight_scale")) {
                map.unsupported_weights.insert(format!("{p}.weight"), 0);
            }
            return Ok(map);
        }
        let gptq_config = GptqConfig::parse(map.config.as_ref());
        let mlx_config = super::mlx_scan::config_of(config_json.as_ref());
        let names: Vec<String> = ck.names().map(str::to_owned).collect();
        // FP8 weights are scaled ones when the config says so or when the checkpoint has FP8
        // scales at all: then a weight without its scale is an error, not a plain FP8 tensor.
        let fp8_scaled = matches!(
            map.method().as_deref(),
            Some("fp8" | "fbgemm_fp8" | "compressed-tensors")
        ) || names
            .iter()
            .any(|n| n.ends_with(".weight_scale_inv") || n.ends_with(".weight_scale"));
        // ComfyUI's legacy scaled FP8 (`fp8::comfy`): `P.scale_weight` beside `P.weight`. Its
        // FP8 weights without a scale are plain casts there too, so they do not make the
        // checkpoint `fp8_scaled`.
        let has_fp8_scale = |w: &str| {
            let p = w.strip_suffix(".weight").unwrap_or(w);
            ck.contains(&format!("{p}.weight_scale_inv"))
                || ck.contains(&format!("{p}.weight_scale"))
                || ck.contains(&format!("{w}_scale_inv"))
                || ck.contains(&format!("{p}.{}", fp8::comfy::SCALE))
        };
        for name in &names {
            if let Some(pos) = name.find(".quant_state.") {
                map.add_bnb4(ck, &name[..pos], name)?;
            }
        }
        // ComfyUI's marked layers first: their NVFP4 weights have ModelOpt's names and dtypes.
        map.add_comfy_quant_all(ck, &names)?;
        map.add_ct_fp4_all(ck, &names)?;
        map.add_ct_dense_all(ck, &names)?;
        map.add_modelopt_fp4_all(ck, &names)?;
        let mut markers = Vec::new();
        for name in &names {
            let info = ck.info(name).expect("listed");
            if map.stored.contains_key(name)
                || map.companions.contains_key(name)
                || map.claimed.contains(name)
            {
                continue; // an FP4 weight and its E4M3 scales, read or claimed above
            }
            if let Some(p) = name.strip_suffix(".SCB") {
                map.add_int8(ck, p, name)?;
            } else if fp8::comfy::is_marker(name) {
                markers.push(name.clone());
            } else if matches!(info.dtype, Dtype::F8_E4M3 | Dtype::F8_E5M2) {
                if fp8_scaled || has_fp8_scale(name) {
                    map.add_fp8(ck, name, config_block)?;
                }
                // Otherwise a plain FP8 tensor (a ComfyUI-style cast with no scales at all):
                // not a scaled quantization, copied as it is.
            } else if let Some(p) = name.strip_suffix(".weight").filter(|p| {
                info.dtype == Dtype::I8
                    && map.method().as_deref() == Some("compressed-tensors")
                    && ck.contains(&format!("{p}.weight_scale"))
            }) {
                // compressed-tensors `int-quantized` / `naive-quantized`: see `ct_scan.rs`.
                map.add_ct_int8(ck, p, name)?;
            } else if matches!(
                info.dtype,
                Dtype::F8_E4M3FNUZ
                    | Dtype::F8_E5M2FNUZ
                    | Dtype::F4
                    | Dtype::F6_E2M3
                    | Dtype::F6_E3M2
            ) {
                let e = dtype_err(ck, info, |d| {
                    format!("dtype {d} is a quantized format lorakit does not read")
                });
                map.push_unsupported(Some(name.clone()), e);
            } else if let Some(p) = name
                .strip_suffix(".weight")
                .filter(|p| info.dtype == Dtype::U32 && ck.contains(&format!("{p}.scales")))
            {
                // MLX (`mx.quantize`, mlx_lm.convert -q): see `mlx_scan.rs`.
                map.add_mlx(ck, mlx_config.as_ref(), p, name)?;
            } else if let Some(p) = name.strip_suffix(".weight_packed") {
                map.add_packed(ck, p, name)?;
            } else if let Some(p) = name.strip_suffix(".qweight") {
                match &gptq_config {
                    Ok(cfg) => map.add_gptq(ck, p, name, cfg)?,
                    Err(why) => {
                        map.push_unsupported(Some(format!("{p}.weight")), err(ck, name, why))
                    }
                }
            }
        }
        map.adopt_comfy_markers(markers);
        map.mark_conv1d(config_json.as_ref());
        // Companions whose weight was not recognised: a scale without its quantized weight.
        for name in &names {
            if map.companions.contains_key(name)
                || map.tensors.contains_key(name)
                || map.claimed.contains(name)
            {
                continue;
            }
            for suffix in BNB4_SUFFIXES {
                if let Some(w) = name.strip_suffix(&format!(".{suffix}")) {
                    if w.ends_with("weight") && ck.contains(w) {
                        return Err(err(
                            ck,
                            name,
                            format!("is a bitsandbytes `{suffix}` but `{w}` has no `{w}.quant_state.bitsandbytes__nf4|fp4`"),
                        ));
                    }
                }
            }
            if gptq_config.is_ok()
                && [".qzeros", ".scales", ".g_idx"]
                    .iter()
                    .any(|s| name.ends_with(s))
            {
                return Err(err(
                    ck,
                    name,
                    "is a GPTQ/AWQ companion but its `qweight` is missing",
                ));
            }
            // MLX scales/biases beside a weight that is not packed U32 (hostile round 12: an
            // I32/U8/F32 `P.weight` was copied by dequantize with its scales, or merged as float).
            if let Some(p) = name
                .strip_suffix(".scales")
                .or_else(|| name.strip_suffix(".biases"))
                .filter(|_| mlx_config.is_some())
            {
                let w = format!("{p}.weight");
                // (A packed U32 weight went to `add_mlx`, which reads it or says why not.)
                if let Some(info) = ck.info(&w).filter(|i| i.dtype != Dtype::U32) {
                    return Err(dtype_err(ck, info, |d| {
                        format!(
                            "is {d} {:?} beside MLX `{name}`: an MLX-quantized weight is packed uint32",
                            info.shape
                        )
                    }));
                }
            }
            if let Some(p) = name.strip_suffix(".weight_scale_2") {
                return Err(err(
                    ck,
                    name,
                    format!("is a ModelOpt NVFP4 global scale but `{p}.weight` is not a U8 NVFP4 weight with an F8_E4M3 `{p}.weight_scale`"),
                ));
            }
            // A scale beside a weight of another dtype (an I8 weight outside compressed-tensors,
            // a float one outside its `dense` format): a format lorakit does not read, listed
            // and copied as it is, not taken for FP8.
            let scaled = name
                .strip_suffix(".weight_scale_inv")
                .or_else(|| name.strip_suffix(".weight_scale"));
            if let Some(w) = scaled.map(|p| format!("{p}.weight")).filter(|w| {
                ck.info(w)
                    .is_some_and(|i| !matches!(i.dtype, Dtype::F8_E4M3 | Dtype::F8_E5M2))
            }) {
                let info = ck.info(&w).expect("present");
                let e = err(
                    ck,
                    name,
                    format!(
                        "is a scale of `{w}` ({}), a quantized format lorakit does not read{}",
                        typed(info),
                        map.method()
                            .map(|m| format!(" (quant_method `{m}`{})", map.ct_format_note()))
                            .unwrap_or_default()
                    ),
                );
                if !map.unsupported_weights.contains_key(&w) {
                    map.push_unsupported(Some(w), e);
                }
                continue;
            }
            if name.ends_with(".weight_scale_inv")
                || name.ends_with(".weight_scale")
                || name.ends_with(&format!(".{}", fp8::comfy::SCALE))
            {
                return Err(err(
                    ck,
                    name,
                    "is an FP8 scale but its weight is missing or not F8_E4M3/F8_E5M2",
                ));
            }
        }
        // A bitsandbytes checkpoint whose packed weight lost its state.
        if map.method().as_deref() == Some("bitsandbytes") {
            for name in &names {
                let info = ck.info(name).expect("listed");
                if name.ends_with("weight")
                    && matches!(info.dtype, Dtype::U8 | Dtype::I8)
                    && !map.tensors.contains_key(name)
                    && !map.companions.contains_key(name)
                {
                    return Err(dtype_err(ck, info, |d| {
                        format!(
                        "is {d} in a bitsandbytes checkpoint but has no quantization state (`.quant_state.bitsandbytes__nf4|fp4` and `.absmax`, or `SCB`)"
                    )
                    }));
                }
            }
        }
        if map.tensors.is_empty() {
            if let Some(m) = map.method() {
                if matches!(
                    m.as_str(),
                    "bitsandbytes"
                        | "fp8"
                        | "fbgemm_fp8"
                        | "compressed-tensors"
                        | "gptq"
                        | "awq"
                        | "modelopt"
                ) {
                    // A config that says quantized over float weights: nothing to dequantize.
                } else {
                    map.push_unsupported(None, InputError::invalid(
                        ck.folder().join("config.json"),
                        format!("quantization_config.quant_method `{m}` is not one lorakit reads (bitsandbytes, fp8, compressed-tensors, gptq, awq, modelopt)"),
                    ));
                }
            }
        }
        Ok(map)
    }

    fn add_bnb4(&mut self, ck: &Checkpoint, weight: &str, state: &str) -> InputResult<()> {
        let kind_str = state
            .rsplit_once(".quant_state.")
            .map(|(_, k)| k)
            .unwrap_or_default();
        let kind = kind_str
            .strip_prefix("bitsandbytes__")
            .and_then(bnb4::Kind::parse)
            .ok_or_else(|| {
                err(
                    ck,
                    state,
                    format!("unknown bitsandbytes quant_state `{kind_str}` (lorakit reads bitsandbytes__nf4 and bitsandbytes__fp4)"),
                )
            })?;
        let winfo = ck.info(weight).ok_or_else(|| {
            err(
                ck,
                state,
                format!("quant_state without its weight `{weight}`"),
            )
        })?;
        let blob = ck.view(state)?;
        if blob.dtype != Dtype::U8 || blob.data.len() > 1 << 16 {
            return Err(err(ck, state, "quant_state is not a small U8 JSON blob"));
        }
        let p = bnb4::parse_quant_state(blob.data, kind).map_err(|m| err(ck, state, m))?;
        let n = p.numel();
        if winfo.byte_len() != n.div_ceil(2) as u64 {
            return Err(err(
                ck,
                weight,
                format!(
                    "holds {} bytes but its quant_state shape {:?} ({n} elements) packs into {}",
                    winfo.byte_len(),
                    p.shape,
                    n.div_ceil(2)
                ),
            ));
        }
        let need = |suffix: &str| -> InputResult<&crate::io::header::TensorInfo> {
            let c = format!("{weight}.{suffix}");
            ck.info(&c).ok_or_else(|| {
                err(
                    ck,
                    weight,
                    format!("bitsandbytes 4-bit weight without `{c}`"),
                )
            })
        };
        let check = |suffix: &str, d: Dtype, count: usize| -> InputResult<()> {
            let i = need(suffix)?;
            if i.dtype != d || i.numel() != count {
                return Err(err(
                    ck,
                    &i.name,
                    format!(
                        "is {} but the quant_state needs {} with {count} elements",
                        typed(i),
                        dtype::name(d)
                    ),
                ));
            }
            Ok(())
        };
        let blocks = p.blocks();
        let mut companions = vec![
            state.to_owned(),
            format!("{weight}.absmax"),
            format!("{weight}.quant_map"),
        ];
        check("quant_map", Dtype::F32, 16)?;
        match &p.nested {
            None => {
                check("absmax", Dtype::F32, blocks)?;
                for s in ["nested_absmax", "nested_quant_map"] {
                    if ck.contains(&format!("{weight}.{s}")) {
                        return Err(err(
                            ck,
                            weight,
                            format!("has `{s}` but its quant_state has no double quantization"),
                        ));
                    }
                }
            }
            Some(nq) => {
                check("absmax", Dtype::U8, blocks)?;
                check("nested_absmax", Dtype::F32, blocks.div_ceil(nq.blocksize))?;
                check("nested_quant_map", Dtype::F32, 256)?;
                companions.push(format!("{weight}.nested_absmax"));
                companions.push(format!("{weight}.nested_quant_map"));
            }
        }
        // The stored code book must be the one bitsandbytes dequantizes with (its kernels use
        // their own table, not the stored one): a different one means the state lies.
        let qm = dtype::decode(Dtype::F32, ck.view(&format!("{weight}.quant_map"))?.data);
        let code = p.kind.code();
        if qm.iter().zip(code).any(|(a, b)| a.to_bits() != b.to_bits()) {
            return Err(err(
                ck,
                &format!("{weight}.quant_map"),
                format!("is not bitsandbytes' {} code book", p.kind.name()),
            ));
        }
        let shape = p.shape.clone();
        self.insert_stored_as_itself(ck, weight, shape, Scheme::Bnb4(p), companions)
    }

    fn add_int8(&mut self, ck: &Checkpoint, prefix: &str, scb: &str) -> InputResult<()> {
        let weight = format!("{prefix}.weight");
        let w = ck.info(&weight).ok_or_else(|| {
            err(
                ck,
                scb,
                format!("bitsandbytes int8 scale without its weight `{weight}`"),
            )
        })?;
        let s = ck.info(scb).expect("listed");
        if w.dtype != Dtype::I8 || w.shape.len() != 2 {
            return Err(err(
                ck,
                &weight,
                format!(
                    "has an `SCB` scale but is {}, not a 2-D I8 matrix",
                    typed(w)
                ),
            ));
        }
        if s.dtype != Dtype::F32 || s.numel() != w.shape[0] {
            return Err(err(
                ck,
                scb,
                format!(
                    "is {} but `{weight}` has {} rows (one F32 per row needed)",
                    typed(s),
                    w.shape[0]
                ),
            ));
        }
        let mut companions = vec![scb.to_owned()];
        let fmt = format!("{prefix}.weight_format");
        if ck.contains(&fmt) {
            let v = ck.view(&fmt)?;
            if v.data.iter().any(|&b| b != 0) {
                return Err(err(
                    ck,
                    &fmt,
                    "is not 0 (row-major): lorakit reads row-major int8 weights only",
                ));
            }
            companions.push(fmt);
        }
        let shape = w.shape.clone();
        self.insert_stored_as_itself(ck, &weight, shape, Scheme::BnbInt8, companions)
    }

    /// Records a quantized weight stored under its own name.
    pub(super) fn insert_stored_as_itself(
        &mut self,
        ck: &Checkpoint,
        weight: &str,
        shape: Vec<usize>,
        scheme: Scheme,
        companions: Vec<String>,
    ) -> InputResult<()> {
        let q = QuantTensor {
            name: weight.to_owned(),
            stored: weight.to_owned(),
            shape,
            scheme,
            companions,
        };
        self.insert(ck, q)
    }

    fn add_fp8(
        &mut self,
        ck: &Checkpoint,
        weight: &str,
        config_block: Option<(usize, usize)>,
    ) -> InputResult<()> {
        let w = ck.info(weight).expect("listed");
        let prefix = weight.strip_suffix(".weight").unwrap_or(weight);
        // transformers names the scale `P.weight_scale_inv` for `P.weight`, `X_scale_inv` for
        // any other `X` (`Fp8Quantize._quantize_one`).
        let mut candidates = vec![
            format!("{prefix}.weight_scale_inv"),
            format!("{prefix}.weight_scale"),
            format!("{prefix}.{}", fp8::comfy::SCALE),
        ];
        if !weight.ends_with(".weight") {
            candidates.push(format!("{weight}_scale_inv"));
        }
        let present: Vec<&String> = candidates.iter().filter(|c| ck.contains(c)).collect();
        let scale = match present.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(dtype_err(ck, w, |d| {
                    format!(
                        "is {d} without a `{prefix}.weight_scale_inv` or `{prefix}.weight_scale`"
                    )
                }))
            }
            _ => {
                return Err(err(
                    ck,
                    weight,
                    format!(
                        "has more than one scale ({})",
                        present
                            .iter()
                            .map(|c| format!("`{c}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        };
        self.check_modelopt_fp8(ck, prefix, &scale)?;
        let comfy = scale.ends_with(&format!(".{}", fp8::comfy::SCALE));
        if comfy {
            let s = ck.info(&scale).expect("present");
            fp8::comfy::check(w.dtype, s.dtype, &s.shape).map_err(|m| err(ck, &scale, m))?;
        }
        if w.shape.len() != 2 {
            return Err(err(
                ck,
                weight,
                format!(
                    "FP8 weight of shape {:?}: lorakit reads 2-D FP8 weights only",
                    w.shape
                ),
            ));
        }
        let s = ck.info(&scale).expect("present");
        if fp8::scales_f32(s.dtype, &[]).is_none() {
            return Err(dtype_err(ck, s, |d| {
                format!("scale dtype {d} is not a float or E8M0")
            }));
        }
        // A compressed-tensors block strategy gives the tiling as `weight_block_size` does
        // (`block_structure`; its grid is `ceil(rows / bm) × ceil(cols / bn)`,
        // compressed-tensors 0.20 `quantization/lifecycle/initialize.py`), so a weight smaller
        // than one block has a single scale and a larger one is tiled by the config's blocks,
        // never by a block guessed from the grid.
        let ct = self.ct_args(ck, prefix)?;
        let ct_block = ct
            .as_ref()
            .filter(|a| a.strategy.as_deref() == Some("block"))
            .and_then(|a| a.block);
        let layout = fp8::layout(w.shape[0], w.shape[1], &s.shape, config_block.or(ct_block))
            .map_err(|m| err(ck, &scale, m))?;
        if let Some(a) = ct {
            if let Some(c) =
                a.contradicts_fp8(w.shape[0], w.shape[1], &layout, &scale, &s.shape, s.dtype)
            {
                return Err(a.refusal(ck, prefix, c));
            }
            self.check_ct_fp8_companions(ck, prefix, weight, &scale)?;
        }
        let mut companions = vec![scale.clone()];
        for extra in ["input_scale", "activation_scale", fp8::comfy::INPUT_SCALE] {
            let c = format!("{prefix}.{extra}");
            if ck.contains(&c) {
                companions.push(c);
            }
        }
        let shape = w.shape.clone();
        let scheme = Scheme::Fp8 {
            format: w.dtype,
            scale,
            scale_dtype: s.dtype,
            layout,
        };
        self.insert_stored_as_itself(ck, weight, shape, scheme, companions)
    }

    /// A GPTQ or AWQ weight `P.qweight` with `P.qzeros`, `P.scales` (and GPTQ's `P.g_idx`), every
    /// shape checked against the packing `gptq.rs` describes; g_idx is read (small) and each
    /// group index checked.
    fn add_gptq(
        &mut self,
        ck: &Checkpoint,
        prefix: &str,
        qname: &str,
        cfg: &GptqConfig,
    ) -> InputResult<()> {
        let awq = cfg.layout == GptqLayout::Awq;
        let kind = if awq { "AWQ" } else { "GPTQ" };
        let bits = cfg.bits;
        let need = |suffix: &str| -> InputResult<TensorInfo> {
            let n = format!("{prefix}.{suffix}");
            ck.info(&n)
                .cloned()
                .ok_or_else(|| err(ck, qname, format!("{kind} qweight without `{n}`")))
        };
        let qw = ck.info(qname).expect("listed").clone();
        let qz = need("qzeros")?;
        let sc = need("scales")?;
        for t in [&qw, &qz] {
            if t.dtype != Dtype::I32 || t.shape.len() != 2 {
                return Err(err(
                    ck,
                    &t.name,
                    format!("is {}, not a 2-D I32 matrix", typed(t)),
                ));
            }
        }
        if !matches!(sc.dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32) || sc.shape.len() != 2 {
            return Err(err(
                ck,
                &sc.name,
                format!("is {}, not a 2-D F16, BF16 or F32 matrix", typed(&sc)),
            ));
        }
        let gname = format!("{prefix}.g_idx");
        let g_info = ck.info(&gname).cloned();
        let shape_err = |t: &str, m: String| Err(err(ck, t, m));
        let (inf, outf) = if awq {
            (qw.shape[0], qw.shape[1] * 8)
        } else {
            let outf = qw.shape[1];
            let inf = match &g_info {
                Some(g) if g.dtype == Dtype::I32 && g.shape.len() == 1 => g.shape[0],
                Some(g) => {
                    return shape_err(
                        &gname,
                        format!("is {}, not a 1-D I32 vector", typed(g)),
                    )
                }
                None if (qw.shape[0] * 32).is_multiple_of(bits as usize) => {
                    qw.shape[0] * 32 / bits as usize
                }
                None => {
                    return shape_err(
                        qname,
                        format!(
                            "{} rows of 32 bits are not a whole number of {bits}-bit codes (and there is no g_idx giving in_features)",
                            qw.shape[0]
                        ),
                    )
                }
            };
            (inf, outf)
        };
        if inf == 0
            || outf == 0
            || (inf as u64)
                .checked_mul(outf as u64)
                .is_none_or(|n| n >= 1 << 40)
        {
            return shape_err(
                qname,
                format!("packs an empty or oversized {outf}x{inf} weight"),
            );
        }
        if !awq && qw.shape[0] != gptq::words(inf, bits) {
            return shape_err(
                qname,
                format!(
                    "has {} rows but {inf} input channels of {bits} bits pack into {}",
                    qw.shape[0],
                    gptq::words(inf, bits)
                ),
            );
        }
        // gptqmodel builds `qweight` as [in_features // pack_factor, out] (`TorchQuantLinear`),
        // so a g_idx whose length is not a whole number of words of codes (one entry short, say)
        // describes a layer no producer writes: the last word's codes would be dropped.
        if !awq && bits != 3 && !(inf * bits as usize).is_multiple_of(32) {
            return shape_err(
                &gname,
                format!(
                    "gives {inf} input channels, but {} rows of 32 bits hold {} {bits}-bit codes",
                    qw.shape[0],
                    qw.shape[0] * 32 / bits as usize
                ),
            );
        }
        if !awq && bits == 3 && (!inf.is_multiple_of(32) || !outf.is_multiple_of(32)) {
            return shape_err(
                qname,
                format!("3-bit GPTQ packs 32 codes per 3 words: {outf}x{inf} is not a multiple of 32 both ways"),
            );
        }
        let groups = if awq {
            sc.shape[0]
        } else {
            cfg.group_size.map_or(1, |g| inf.div_ceil(g))
        };
        let group_ok = if awq {
            groups > 0
                && inf.is_multiple_of(groups)
                && cfg.group_size.unwrap_or(inf) == inf / groups
        } else {
            true
        };
        if !group_ok || sc.shape != [groups, outf] {
            return shape_err(
                &sc.name,
                format!(
                    "has shape {:?}; {kind} {outf}x{inf} with group_size {} needs [{groups}, {outf}]",
                    sc.shape,
                    cfg.group_size.map_or("-1".to_string(), |g| g.to_string())
                ),
            );
        }
        let zwords = if awq {
            outf / 8
        } else {
            gptq::words(outf, bits)
        };
        if qz.shape != [groups, zwords] {
            return shape_err(
                &qz.name,
                format!(
                    "has shape {:?}; the zeros of {groups} group(s) x {outf} channels at {bits} bits pack into [{groups}, {zwords}]",
                    qz.shape
                ),
            );
        }
        let gs = inf.div_ceil(groups);
        let plain: Vec<u32> = (0..inf).map(|i| (i / gs) as u32).collect();
        let mut companions = vec![qz.name.clone(), sc.name.clone()];
        let g_idx = match g_info {
            Some(_) => {
                let v = ck.view(&gname)?;
                let mut g = Vec::with_capacity(inf);
                for (i, c) in v.data.chunks_exact(4).enumerate() {
                    let x = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    if x < 0 || x as usize >= groups {
                        return shape_err(
                            &gname,
                            format!("input channel {i} is in group {x}, not one of the {groups} groups of `{}`", sc.name),
                        );
                    }
                    g.push(x as u32);
                }
                companions.push(gname);
                g
            }
            None if cfg.desc_act => {
                return shape_err(
                    qname,
                    format!("desc_act (act-order) GPTQ weight without `{gname}`"),
                )
            }
            None => plain.clone(),
        };
        let act_order = g_idx != plain;
        self.insert(
            ck,
            QuantTensor {
                name: format!("{prefix}.weight"),
                stored: qname.to_owned(),
                shape: vec![outf, inf],
                scheme: Scheme::Gptq(gptq::Params {
                    layout: cfg.layout,
                    bits,
                    in_features: inf,
                    out_features: outf,
                    groups,
                    g_idx,
                    act_order,
                    sym: cfg.sym,
                    scale_dtype: sc.dtype,
                }),
                companions,
            },
        )
    }
}

/// The config.json next to the weights, if there is one and it reads as JSON.
fn read_config_json(ck: &Checkpoint) -> Option<serde_json::Value> {
    let path = ck.folder().join("config.json");
    if !path.is_file() {
        return None;
    }
    // Not this module's business: a config.json that cannot be read (a FIFO, over the size
    // limit) or is not JSON is reported by the readers that need it.
    let text = crate::io::read_json_file(&path).ok()?;
    serde_json::from_slice(&text).ok()
}
