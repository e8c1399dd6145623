//! Reading one module of a kohya-named file: its tensors (by LyCORIS suffix) checked against
//! each other and turned into a [`LoraModule`] with its [`Factors`] and scale. Never writes.

use super::keys::Parts;
use super::scalar::read_scalar;
use crate::adapter::algo::{self, Factors, KronHalf};
use crate::adapter::data::Data;
use crate::adapter::model::{scale_for, DoraRule, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;

/// Every algorithm's tensor roles (the kohya/LyCORIS suffixes), by family name: a module's
/// tensors must all come from one.
pub(super) const FAMILIES: &[(&str, &[&str])] = &[
    (
        "LoRA",
        &["lora_down.weight", "lora_up.weight", "lora_mid.weight"],
    ),
    (
        "LoHa",
        &[
            "hada_w1_a",
            "hada_w1_b",
            "hada_w2_a",
            "hada_w2_b",
            "hada_t1",
            "hada_t2",
        ],
    ),
    (
        "LoKr",
        &[
            "lokr_w1",
            "lokr_w1_a",
            "lokr_w1_b",
            "lokr_w2",
            "lokr_w2_a",
            "lokr_w2_b",
            "lokr_t2",
        ],
    ),
    ("full", &["diff", "diff_b"]),
    ("norm", &["w_norm", "b_norm"]),
    ("OFT", &["oft_blocks", "rescale"]),
    ("OFT v2", &["oft_R.weight", "oft_R.scaled_oft"]),
    ("IA3", &["weight", "on_input"]),
    (
        "GLoRA",
        &[
            "a1.weight",
            "a2.weight",
            "b1.weight",
            "b2.weight",
            "bm.weight",
        ],
    ),
];

/// Builds the module `name` from its tensors.
pub fn module(file: &SafetensorsFile, name: &str, parts: &Parts) -> InputResult<LoraModule> {
    let fpath = file.path();
    let err = |msg: String| InputError::invalid(fpath, format!("module `{name}`: {msg}"));
    let has = |s: &str| parts.contains_key(s);
    let present: Vec<&str> = FAMILIES
        .iter()
        .filter(|(_, keys)| keys.iter().any(|k| has(k)))
        .map(|(f, _)| *f)
        .collect();
    let family = match present.as_slice() {
        [one] => *one,
        [] => {
            return Err(err(format!(
                "has only {} and no factors",
                parts.keys().copied().collect::<Vec<_>>().join(", ")
            )))
        }
        many => {
            return Err(err(format!(
                "mixes the tensors of {} in one module",
                many.join(" and ")
            )))
        }
    };
    let get = |s: &str| -> InputResult<(Data, &Vec<usize>)> {
        let (key, shape) = parts.get(s).ok_or_else(|| {
            let missing =
                super::keys::sibling_key(parts, s).unwrap_or_else(|| format!("{name}.{s}"));
            err(format!("{family} module has no `{missing}`"))
        })?;
        if shape.contains(&0) {
            return Err(InputError::invalid(
                fpath,
                format!("tensor `{key}`: shape {shape:?} has a zero dimension"),
            ));
        }
        // Every factor is a matrix or more; bias diffs, DoRA and OFT scales, norm-layer and IA3
        // vectors may be less.
        if shape.len() < 2
            && !matches!(
                s,
                "diff_b"
                    | "dora_scale"
                    | "lora_magnitude_vector"
                    | "w_norm"
                    | "b_norm"
                    | "weight"
                    | "on_input"
                    | "rescale"
            )
        {
            return Err(InputError::invalid(
                fpath,
                format!("tensor `{key}`: shape {shape:?} has fewer than 2 dimensions, which no factor has"),
            ));
        }
        Ok((
            Data::Stored {
                key: key.clone(),
                transpose: false,
            },
            shape,
        ))
    };
    let bad_shape = |what: &str, s: &[usize], want: String| {
        err(format!("{what} has shape {s:?}, expected {want}"))
    };
    let alpha = match parts.get("alpha") {
        Some((k, shape)) => {
            if shape.iter().product::<usize>() != 1 {
                return Err(InputError::invalid(
                    fpath,
                    format!("tensor `{k}`: alpha must be a scalar, shape is {shape:?}"),
                ));
            }
            let v = read_scalar(file, k)?;
            if !v.is_finite() {
                return Err(InputError::invalid(
                    fpath,
                    format!("tensor `{k}`: alpha is not finite"),
                ));
            }
            Some(v)
        }
        None => None,
    };
    // (factors, kind, out, in_flat, rank, alpha, scale)
    let (factors, kind, out, k, rank, alpha_v, scale);
    match family {
        "LoRA" => {
            let (down, ds) = get("lora_down.weight")?;
            let (up, us) = get("lora_up.weight")?;
            // A conv's `lora_up` is [out, r, 1, 1], or [out, r] as LyCORIS' DyLoRA writes it
            // (`lycoris/modules/dylora.py` `custom_state_dict` concatenates 2-D up blocks);
            // ComfyUI reads both the same way (`weight_adapter/lora.py`: `mat1.flatten(start_dim=1)`).
            let up_fits = us.len() == ds.len() || (us.len() == 2 && ds.len() > 2);
            if ds.len() < 2 || !up_fits || us[1] != ds[0] {
                return Err(err(format!(
                    "lora_down {ds:?} and lora_up {us:?} do not fit together"
                )));
            }
            let r = ds[0];
            if us[2..].iter().any(|&x| x != 1) {
                return Err(bad_shape(
                    "conv lora_up",
                    us,
                    format!("[{}, {r}, 1, 1]", us[0]),
                ));
            }
            out = us[0];
            rank = r;
            match parts.get("lora_mid.weight") {
                None => {
                    kind = ModuleKind::of_shape(ds);
                    k = ds[1..].iter().product();
                    factors = Factors::Lora { a: down, b: up };
                }
                Some(_) => {
                    let (mid, ms) = get("lora_mid.weight")?;
                    // Conv1d/2d/3d alike (LyCORIS `LoConModule` with `use_tucker` builds the
                    // core as the layer's conv: `[r, r, k…]`, down/up 1×…×1).
                    if ds.len() < 3 || ds[2..].iter().any(|&x| x != 1) {
                        return Err(bad_shape(
                            "lora_down (with lora_mid)",
                            ds,
                            format!("[{r}, in, 1, 1]"),
                        ));
                    }
                    if ms.len() != ds.len() || ms[0] != r || ms[1] != r {
                        return Err(bad_shape("lora_mid", ms, format!("[{r}, {r}, kh, kw]")));
                    }
                    kind = ModuleKind::Conv {
                        kernel: ms[2..].to_vec(),
                    };
                    k = ds[1] * ms[2..].iter().product::<usize>();
                    factors = Factors::LoraTucker { up, mid, down };
                }
            }
            alpha_v = alpha.unwrap_or(r as f64);
            scale = scale_for(alpha_v, r, false);
        }
        "LoHa" => {
            let (w1a, s1a) = get("hada_w1_a")?;
            let (w1b, s1b) = get("hada_w1_b")?;
            let (w2a, s2a) = get("hada_w2_a")?;
            let (w2b, s2b) = get("hada_w2_b")?;
            let tucker = match (has("hada_t1"), has("hada_t2")) {
                (false, false) => None,
                (true, true) => Some((get("hada_t1")?, get("hada_t2")?)),
                _ => return Err(err("has only one of hada_t1 / hada_t2".into())),
            };
            match tucker {
                None => {
                    // w1a d×r, w1b r×k (a conv's k already flattened by LyCORIS; ComfyUI
                    // reshapes to the weight's shape). OneTrainer keeps a conv's factors as the
                    // up/down conv weights they are (@23df383 `LoHaModule`: `hada_w1_b, hada_w1_a =
                    // create_layer()`, so w1a is [d, r, 1, 1] and w1b [r, in, kh, kw]), the same
                    // values in the same order; its `make_weight` flattens both. ComfyUI's
                    // `weight_adapter/loha.py` (@17adbb5) multiplies them with `torch.mm`, which
                    // raises on 4-D factors: it never applies such a module
                    // (tests/it/lycoris/onetrainer_comfy.rs).
                    let r = s1b[0];
                    let (d, kf) = (s1a[0], s1b[1..].iter().product::<usize>());
                    let up_ok = s1a.len() == 2
                        || (s1a.len() == s1b.len() && s1a[2..].iter().all(|&x| x == 1));
                    let ok = up_ok
                        && s1a[1] == r
                        && s2a == s1a
                        && s2b[0] == r
                        && s2b[1..].iter().product::<usize>() == kf
                        && s1b.len() == s2b.len();
                    if !ok {
                        return Err(err(format!(
                            "hada_w1_a {s1a:?}, hada_w1_b {s1b:?}, hada_w2_a {s2a:?} and hada_w2_b {s2b:?} do not form two d×r·r×k products of one shape"
                        )));
                    }
                    kind = ModuleKind::of_shape(s1b);
                    out = d;
                    k = kf;
                    rank = r;
                }
                Some(((_, t1s), (_, t2s))) => {
                    // wa r×d, wb r×in, t r×r×kh×kw.
                    let r = s1a[0];
                    let ok = s1a.len() == 2
                        && s1b.len() == 2
                        && s1b[0] == r
                        && s2a == s1a
                        && s2b == s1b
                        && t1s.len() >= 3
                        && t1s[0] == r
                        && t1s[1] == r
                        && t2s == t1s;
                    if !ok {
                        return Err(err(format!(
                            "Tucker LoHa shapes do not fit: hada_w1_a {s1a:?}, hada_w1_b {s1b:?}, hada_w2_a {s2a:?}, hada_w2_b {s2b:?}, hada_t1 {t1s:?}, hada_t2 {t2s:?} (expected [r, out], [r, in], [r, r, kernel…])"
                        )));
                    }
                    kind = ModuleKind::Conv {
                        kernel: t1s[2..].to_vec(),
                    };
                    out = s1a[1];
                    k = s1b[1] * t1s[2..].iter().product::<usize>();
                    rank = r;
                }
            }
            alpha_v = alpha.unwrap_or(rank as f64);
            scale = scale_for(alpha_v, rank, false);
            factors = Factors::Loha {
                w1a,
                w1b,
                w2a,
                w2b,
                tucker: tucker.map(|((t1, _), (t2, _))| (t1, t2)),
            };
        }
        "LoKr" => {
            let half = |n: u8| -> InputResult<(KronHalf, usize, usize, Vec<usize>)> {
                let whole = format!("lokr_w{n}");
                let (sa, sb) = (format!("lokr_w{n}_a"), format!("lokr_w{n}_b"));
                let tkey = format!("lokr_t{n}");
                match (has(&whole), has(&sa), has(&sb)) {
                    (true, false, false) => {
                        let (w, s) = get(&whole)?;
                        if s.len() < 2 || (n == 1 && s.len() != 2) {
                            return Err(bad_shape(&whole, s, "[rows, cols(, kh, kw)]".into()));
                        }
                        Ok((KronHalf::Whole(w), s[0], s[1], s[2..].to_vec()))
                    }
                    (false, true, true) => {
                        let (a, s_a) = get(&sa)?;
                        let (b, s_b) = get(&sb)?;
                        if has(&tkey) {
                            let (t, ts) = get(&tkey)?;
                            let r = s_a[0];
                            let ok = s_a.len() == 2
                                && s_b.len() == 2
                                && s_b[0] == r
                                && ts.len() == 4
                                && ts[0] == r
                                && ts[1] == r;
                            if !ok {
                                return Err(err(format!(
                                    "Tucker LoKr shapes do not fit: {sa} {s_a:?}, {sb} {s_b:?}, {tkey} {ts:?} (expected [r, rows], [r, cols], [r, r, kh, kw])"
                                )));
                            }
                            Ok((
                                KronHalf::Tucker { t, a, b, rank: r },
                                s_a[1],
                                s_b[1],
                                ts[2..].to_vec(),
                            ))
                        } else {
                            let r = s_b[0];
                            if s_a.len() != 2
                                || s_a[1] != r
                                || s_b.len() < 2
                                || (n == 1 && s_b.len() != 2)
                            {
                                return Err(err(format!(
                                    "{sa} {s_a:?} and {sb} {s_b:?} do not multiply"
                                )));
                            }
                            Ok((
                                KronHalf::LowRank { a, b, rank: r },
                                s_a[0],
                                s_b[1],
                                s_b[2..].to_vec(),
                            ))
                        }
                    }
                    _ => Err(err(format!("needs `{whole}` or both `{sa}` and `{sb}`"))),
                }
            };
            if has("lokr_t1") {
                return Err(err("has lokr_t1, which no producer writes".into()));
            }
            let (w1, a1, c1, _) = half(1)?;
            let (w2, b2, d2, kernel) = half(2)?;
            if has("lokr_t2") && !matches!(w2, KronHalf::Tucker { .. }) {
                return Err(err("has lokr_t2 but no lokr_w2_a / lokr_w2_b".into()));
            }
            kind = if kernel.is_empty() {
                ModuleKind::Linear
            } else {
                ModuleKind::Conv {
                    kernel: kernel.clone(),
                }
            };
            out = a1 * b2;
            k = c1 * d2 * kernel.iter().product::<usize>();
            let (r, s) = algo::lokr_scale(&w1, &w2, alpha);
            rank = r;
            scale = s;
            alpha_v = alpha.unwrap_or(if r == 0 { 1.0 } else { r as f64 });
            factors = Factors::Lokr {
                w1,
                w2,
                w1_shape: (a1, c1),
                w2_shape: (b2, d2),
            };
        }
        "norm" => {
            // LyCORIS `modules/norms.py`: `w_norm` and `b_norm` both [d] (the norm's weight
            // and bias deltas); no alpha, scale 1.
            let (w, ws) = get("w_norm")?;
            if ws.len() != 1 {
                return Err(bad_shape("w_norm", ws, "[d]".into()));
            }
            kind = ModuleKind::Linear;
            out = ws[0];
            k = 1;
            rank = 1;
            alpha_v = 1.0;
            scale = 1.0;
            factors = Factors::Norm { w };
        }
        "OFT" => {
            let (blocks, bs) = get("oft_blocks")?;
            // 3-D: diag-OFT; 4-D: BOFT (LyCORIS `DiagOFTModule.algo_check` /
            // `ButterflyOFTModule.algo_check` tell them apart the same way).
            let boft = bs.len() == 4;
            let sq = bs.len() >= 3 && bs[bs.len() - 1] == bs[bs.len() - 2];
            if !(bs.len() == 3 || boft) || !sq {
                return Err(bad_shape(
                    "oft_blocks (OFT/BOFT)",
                    bs,
                    "[blocks, size, size] or [stages, blocks, size, size]".into(),
                ));
            }
            let (n, sz) = (bs[bs.len() - 3], bs[bs.len() - 2]);
            if boft {
                // Stage i pairs rows 2^i·size/2 apart within groups of 2^i·size.
                let stages = bs[0];
                let fits = sz % 2 == 0
                    && stages < usize::BITS as usize
                    && (0..stages).all(|i| n % (1usize << i) == 0);
                if !fits {
                    return Err(bad_shape(
                        "oft_blocks (BOFT)",
                        bs,
                        "[stages, blocks, size, size] with an even size and blocks divisible by 2^(stages-1)".into(),
                    ));
                }
            }
            out = n * sz;
            let rescale = match parts.get("rescale") {
                None => None,
                Some(_) => {
                    let (r, rs) = get("rescale")?;
                    // LyCORIS' `rescale` is `[out, 1, …]` (one axis per weight axis): a flat
                    // `[out]` would broadcast along the input side of a square weight.
                    if rs.len() < 2 || rs[0] != out || rs[1..].iter().any(|&x| x != 1) {
                        return Err(bad_shape("rescale", rs, format!("[{out}, 1, …]")));
                    }
                    Some((r, rs.len()))
                }
            };
            // The base's input side is not in the file: any [d, …] weight fits (see
            // `mapping::expected_shape`); a 4-D rescale says the layer is a conv.
            // (its kernel is not in the file either: `conv` with no kernel size).
            kind = match rescale {
                Some((_, n)) if n > 2 => ModuleKind::Conv { kernel: Vec::new() },
                _ => ModuleKind::Linear,
            };
            k = 0;
            rank = n;
            // LyCORIS `DiagOFTModule.make_module_from_state_dict`: constraint = alpha, then
            // `self.constraint = constraint * out_dim`; no alpha is ComfyUI's `alpha = 0`.
            alpha_v = alpha.unwrap_or(0.0);
            scale = 1.0;
            let (rescale, constraint) = (rescale.map(|(r, _)| r), alpha_v * out as f64);
            factors = if boft {
                Factors::Boft {
                    blocks,
                    rescale,
                    stages: bs[0],
                    block_num: n,
                    block_size: sz,
                    constraint,
                }
            } else {
                Factors::Oft {
                    blocks,
                    rescale,
                    block_num: n,
                    block_size: sz,
                    constraint,
                }
            };
        }
        "OFT v2" => {
            // OneTrainer @23df383 `OFTModule` / `OFTRotationModule`: `oft_R.weight` [r, s(s−1)/2]
            // (r = in·kh·kw / s; one row when `block_share`, which the file does not record: a
            // single row is read as shared, the same rotation when the base has one block), and
            // the `scaled_oft` flag. Always 5 Cayley–Neumann terms; no alpha, rescale or coft.
            // ComfyUI does not load these files at all: its `weight_adapter/oft.py` (@3684cff) and
            // `boft.py` (@204e96f) read only `oft_blocks`, so every `oft_R` key is "not loaded".
            // Its diag-OFT also differs in kind: the exact Cayley map `(I+Q)(I−Q)⁻¹` (not the
            // 5-term series, which is not exactly orthogonal, so no `oft_blocks` reproduces it),
            // applied to the output rows (`einsum("k n m, k n ... -> k m ...")`), blocks tiling
            // the output side, an `alpha` norm constraint.
            let (weight, ws) = get("oft_R.weight")?;
            let s_of = |n: usize| (2..=4096usize).find(|s| s * (s - 1) / 2 == n);
            let (r, sz) = match ws.as_slice() {
                [r, n] if s_of(*n).is_some() => (*r, s_of(*n).unwrap_or(0)),
                _ => {
                    let key = parts.get("oft_R.weight").map_or("", |(k, _)| k.as_str());
                    return Err(InputError::invalid(
                        fpath,
                        format!("tensor `{key}`: shape {ws:?} is not an OFT rotation [blocks, s(s−1)/2] for a block size s"),
                    ));
                }
            };
            let scaled = match parts.get("oft_R.scaled_oft") {
                None => false,
                Some((key, shape)) => {
                    if shape.iter().product::<usize>() != 1 {
                        return Err(InputError::invalid(
                            fpath,
                            format!(
                                "tensor `{key}`: scaled_oft must be a scalar, shape is {shape:?}"
                            ),
                        ));
                    }
                    match read_scalar(file, key)? {
                        0.0 => false,
                        1.0 => true,
                        x => {
                            return Err(InputError::invalid(
                                fpath,
                                format!(
                                    "tensor `{key}`: scaled_oft must be true or false, found {x}"
                                ),
                            ))
                        }
                    }
                }
            };
            if alpha.is_some() {
                return Err(err(
                    "OFT v2 module has an alpha, which OneTrainer never writes".into(),
                ));
            }
            let block_share = r == 1;
            // The base's output side and kernel are not in the file (any [d, …] weight whose
            // flattened input side the blocks tile fits).
            kind = ModuleKind::Linear;
            out = 0;
            k = if block_share { 0 } else { r * sz };
            rank = r;
            alpha_v = 1.0;
            scale = 1.0;
            factors = Factors::PeftOft {
                weight,
                block_size: sz,
                blocks: r,
                block_share,
                cayley: algo::PeftCayley::Neumann(5),
                coft_eps: None,
                scaled,
                conv: algo::OftConv::Plain,
            };
        }
        "GLoRA" => {
            if has("bm.weight") {
                return Err(err(
                    "GLoRA with a Tucker core (bm.weight) is not supported yet".into(),
                ));
            }
            let (a1, s1) = get("a1.weight")?;
            let (a2, s2) = get("a2.weight")?;
            let (b1, t1) = get("b1.weight")?;
            let (b2, t2) = get("b2.weight")?;
            // LyCORIS `GLoRAModule`: a1 [in, r], a2 [r, in], b1 [out, r], b2 [r, in(, kh, kw)];
            // a conv's a1, a2, b1 are 1×1 convs ([…, 1, 1]).
            let ones = |s: &[usize]| s[2..].iter().all(|&x| x == 1);
            let (cin, r) = (
                s1.first().copied().unwrap_or(0),
                s1.get(1).copied().unwrap_or(0),
            );
            let ok = s1.len() >= 2
                && s2.len() == s1.len()
                && t1.len() == s1.len()
                && t2.len() == s1.len()
                && ones(s1)
                && ones(s2)
                && ones(t1)
                && s2[..2] == [r, cin]
                && t1[1] == r
                && t2[..2] == [r, cin];
            if !ok {
                return Err(err(format!(
                    "GLoRA shapes do not fit: a1.weight {s1:?}, a2.weight {s2:?}, b1.weight {t1:?}, b2.weight {t2:?} (expected [in, r], [r, in], [out, r], [r, in(, kh, kw)])"
                )));
            }
            kind = ModuleKind::of_shape(t2);
            out = t1[0];
            k = t2[1..].iter().product();
            rank = r;
            // `alpha = lora_dim if alpha is None or alpha == 0`; scale alpha / r.
            alpha_v = match alpha {
                Some(a) if a != 0.0 => a,
                _ => r as f64,
            };
            scale = scale_for(alpha_v, r, false);
            factors = Factors::Glora {
                a1,
                a2,
                b1,
                b2,
                rank: r,
            };
        }
        "IA3" => {
            let (weight, ws) = get("weight")?;
            let (okey, oshape) = parts
                .get("on_input")
                .ok_or_else(|| err(format!("IA3 module has no `{name}.on_input`")))?;
            if oshape.iter().product::<usize>() != 1 {
                return Err(InputError::invalid(
                    fpath,
                    format!("tensor `{okey}`: on_input must be a scalar, shape is {oshape:?}"),
                ));
            }
            let on_input = match read_scalar(file, okey)? {
                0.0 => false,
                1.0 => true,
                x => {
                    return Err(InputError::invalid(
                        fpath,
                        format!("tensor `{okey}`: on_input must be 0 or 1, found {x}"),
                    ))
                }
            };
            // LyCORIS `IA3Module`: [dim] on a linear, [1, dim, 1, …] on a conv.
            let n = match ws.as_slice() {
                [n] => *n,
                [1, n, rest @ ..] if !rest.is_empty() && rest.iter().all(|&x| x == 1) => *n,
                _ => {
                    return Err(bad_shape(
                        "weight (IA3)",
                        ws,
                        "[dim] or [1, dim, 1, 1]".into(),
                    ))
                }
            };
            kind = if ws.len() > 1 {
                ModuleKind::Conv { kernel: Vec::new() }
            } else {
                ModuleKind::Linear
            };
            // The other side is not in the file (any base weight of matching rows or
            // input channels fits).
            (out, k) = if on_input { (0, n) } else { (n, 0) };
            rank = 1;
            alpha_v = 1.0;
            scale = 1.0;
            factors = Factors::Ia3 {
                weight,
                on_input,
                rule: algo::Ia3Rule::Lycoris,
            };
        }
        _ => {
            let (diff, ds) = get("diff")?;
            if ds.len() < 2 {
                return Err(bad_shape("diff", ds, "[out, in(, kh, kw)]".into()));
            }
            kind = ModuleKind::of_shape(ds);
            out = ds[0];
            k = ds[1..].iter().product();
            rank = out.min(k);
            alpha_v = 1.0;
            scale = 1.0;
            factors = Factors::Full { diff };
        }
    }
    if rank == 0 && !matches!(factors, Factors::Lokr { .. }) {
        return Err(err("rank is 0".into()));
    }
    let bias_role = if family == "norm" { "b_norm" } else { "diff_b" };
    let bias = match parts.get(bias_role) {
        Some(_) => {
            let (b, bs) = get(bias_role)?;
            if bs.as_slice() != [out] {
                return Err(bad_shape(bias_role, bs, format!("[{out}]")));
            }
            Some(b)
        }
        None => None,
    };
    let (dora_magnitude, dora_rule) =
        match (parts.get("dora_scale"), parts.get("lora_magnitude_vector")) {
            (None, None) => (None, DoraRule::Peft),
            (Some(_), Some(_)) => {
                return Err(err(
                    "has both dora_scale and lora_magnitude_vector (two DoRA magnitudes)".into(),
                ))
            }
            (None, Some(_)) => {
                // PEFT's magnitude, one value per output row ([out], or [1, out, 1, 1] on a conv as
                // OneTrainer's `dora_scale_to_peft_magnitude` shapes it), merged by PEFT's rule as
                // diffusers loads it (PEFT DoRA exists for LoRA factors only).
                let (d, s) = get("lora_magnitude_vector")?;
                let n: usize = s.iter().product();
                if n != out || s.iter().filter(|&&x| x != 1).count() > 1 {
                    return Err(bad_shape(
                        "lora_magnitude_vector",
                        s,
                        format!("[{out}] or [1, {out}, 1, …]"),
                    ));
                }
                if !matches!(factors, Factors::Lora { .. }) {
                    return Err(err(format!(
                        "lora_magnitude_vector on a {} module (PEFT's DoRA is LoRA only)",
                        factors.algo()
                    )));
                }
                (Some(d), DoraRule::Peft)
            }
            (Some(_), None) => {
                let (d, s) = get("dora_scale")?;
                let n: usize = s.iter().product();
                // [out, 1, …] norms per output row (LyCORIS wd_on_out, the default); [1, in, …]
                // per input channel, over the output and kernel axes (a flattened LoHa conv does
                // not say its kernel, so `in` is any divisor of k with the kernel area k/in). A
                // 1×… vector on a 1-output module is read as per output.
                // LyCORIS' parameter has one axis per weight axis (≥ 2): a flat `[n]` is neither
                // layout (ComfyUI's `weight_decompose` would broadcast it along the other side).
                let per_input = if s.len() < 2 {
                    return Err(bad_shape(
                        "dora_scale",
                        s,
                        format!("[{out}, 1, …] or [1, in, …] with in dividing {k}"),
                    ));
                } else if s[0] == out && n == out {
                    false
                } else if s.len() >= 2 && s[0] == 1 && s[1] == n && k.is_multiple_of(n) {
                    true
                } else {
                    return Err(bad_shape(
                        "dora_scale",
                        s,
                        format!("[{out}, 1, …] or [1, in, …] with in dividing {k}"),
                    ));
                };
                if !matches!(
                    factors,
                    Factors::Lora { .. }
                        | Factors::LoraTucker { .. }
                        | Factors::Loha { .. }
                        | Factors::Lokr { .. }
                ) {
                    return Err(err(format!("dora_scale on a {} module", factors.algo())));
                }
                (Some(d), DoraRule::Lycoris { per_input })
            }
        };
    Ok(LoraModule {
        name: name.to_owned(),
        kind,
        rank,
        alpha: alpha_v,
        scale,
        out_features: out,
        in_features: k,
        factors,
        base_transposed: false,
        dora_magnitude,
        dora_rule,
        bias,
    })
}
