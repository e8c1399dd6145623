//! Writing LoHa and LoKr modules as PEFT's own LOHA / LOKR folders, so that PEFT rebuilds every
//! module with the same parameters and the same scale.
//!
//! PEFT names the tensors as LyCORIS does (`{module}.hada_w1_a`, `.lokr_w2_b`, …, under
//! `base_model.model.`) with the same layouts (`tuners/loha/layer.py` and
//! `tuners/lokr/layer.py` `create_adapter_parameters`: flattened conv factors, Tucker cores
//! `[r, r, kh, kw]` with `w_a`/`w_b` as `[r, out]`/`[r, in]`), so factors are copied byte for
//! byte. What PEFT does *not* read from the file is the structure: `update_layer` rebuilds it
//! from the config, and a mismatch fails to load. So the config must reproduce, per module:
//!
//! * LoHa: rank `r` (`rank_pattern`), Tucker cores exactly on the convs with a kernel larger
//!   than 1×1 (`use_effective_conv2d`, one flag for the folder); scale `alpha / r`.
//! * LoKr (`tuners/lokr/layer.py` `update_layer`): the Kronecker split from
//!   `factorization(dim, decompose_factor)` (one factor for the folder), `w1` whole unless
//!   `decompose_both and r < max(a, c)/2`, `w2` whole iff `r ≥ max(b, d')/2`, Tucker as for
//!   LoHa; scale `alpha / r` always, where LyCORIS uses 1 for a module with both halves whole —
//!   such a module is written with `r` = the largest half dimension and `alpha = r`.
//!
//! A module PEFT cannot rebuild (DoRA scale, a split no single `decompose_factor` gives, Tucker on
//! some convs only, LoHa and LoKr mixed) is refused by name: there is no PEFT folder that holds it.
//!
//! Must not: write tensors or the config (`write.rs` does, from the plan made here) or read a folder.

use crate::adapter::algo::{Factors, KronHalf};
use crate::adapter::model::{Adapter, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};

/// The folder-wide settings a PEFT LOHA / LOKR config needs, chosen so that PEFT's
/// `update_layer` rebuilds every module's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LycorisPeft {
    /// `"LOHA"` or `"LOKR"`.
    pub peft_type: &'static str,
    pub use_effective_conv2d: bool,
    /// LoKr only.
    pub decompose_both: bool,
    /// LoKr only (`-1`: PEFT's square-root split).
    pub decompose_factor: i64,
    /// Per module (module order): the `r` and `alpha` PEFT is given.
    pub ranks: Vec<usize>,
    pub alphas: Vec<f64>,
}

/// PEFT's `factorization` (`tuners/lokr/layer.py`): `(m, n)`, `m·n = dim`, with `m = factor`
/// when it divides `dim` (not swapped, unlike LyCORIS' `functional/general.py`, which returns the
/// smaller first — so some LyCORIS splits have no PEFT factor), else the divisor pair closest to
/// `factor` (or √dim for −1) with `m ≤ n`.
pub fn factorization(dim: usize, factor: i64) -> (usize, usize) {
    if factor > 0 && dim.is_multiple_of(factor as usize) {
        return (factor as usize, dim / factor as usize);
    }
    let factor = if factor == -1 { dim } else { factor as usize };
    let (mut m, mut n) = (1usize, dim);
    let mut length = m + n;
    while m < n {
        let mut new_m = m + 1;
        while !dim.is_multiple_of(new_m) {
            new_m += 1;
        }
        let new_n = dim / new_m;
        if new_m + new_n > length || new_m > factor {
            break;
        }
        m = new_m;
        n = new_n;
        length = m + n;
    }
    if m > n {
        (n, m)
    } else {
        (m, n)
    }
}

fn kernel_of(m: &LoraModule) -> Vec<usize> {
    match &m.kind {
        ModuleKind::Conv { kernel } => kernel.clone(),
        _ => Vec::new(),
    }
}

fn refuse(adapter: &Adapter, m: &LoraModule, why: &str) -> InputError {
    InputError::invalid(
        &adapter.path,
        format!(
            "module `{}` ({}): a PEFT {} folder cannot hold it: {why}",
            m.name,
            m.factors.algo(),
            match m.factors {
                Factors::Lokr { .. } => "LOKR",
                _ => "LOHA",
            }
        ),
    )
}

/// The PEFT LOHA / LOKR settings for `adapter`, or `None` when it holds no LoHa or LoKr module.
/// Errors name the first module PEFT could not rebuild.
pub fn plan(adapter: &Adapter) -> InputResult<Option<LycorisPeft>> {
    let Some(first) = adapter
        .modules
        .iter()
        .find(|m| matches!(m.factors, Factors::Loha { .. } | Factors::Lokr { .. }))
    else {
        return Ok(None);
    };
    let lokr = matches!(first.factors, Factors::Lokr { .. });
    for m in &adapter.modules {
        let same = matches!(
            (&m.factors, lokr),
            (Factors::Lokr { .. }, true) | (Factors::Loha { .. }, false)
        );
        if !same {
            return Err(refuse(
                adapter,
                m,
                &format!(
                    "a PEFT folder has one peft_type, and `{}` is {}",
                    first.name,
                    first.factors.algo()
                ),
            ));
        }
        if m.dora_magnitude.is_some() {
            return Err(refuse(
                adapter,
                m,
                "PEFT's LoHa/LoKr have no weight decomposition (dora_scale)",
            ));
        }
        // PEFT's `make_kron` unsqueezes `w1` only for a 4-D `w2` ([`peft_kron_dense`]): a whole
        // `w2` with a 1-D or 3-D kernel (Conv1d, Conv3d) would be multiplied otherwise.
        let kernel = kernel_of(m).len();
        if matches!(
            &m.factors,
            Factors::Lokr {
                w2: KronHalf::Whole(_),
                ..
            }
        ) && kernel != 0
            && kernel != 2
        {
            return Err(refuse(
                adapter,
                m,
                "PEFT's LoKr multiplies a whole w2 of a Conv1d/Conv3d layer with w1 otherwise than LyCORIS (torch.kron of a 2-D w1 against the kernel dims): it would not apply this ΔW",
            ));
        }
        if m.bias.is_some() || m.base_transposed || m.kind == ModuleKind::Embedding {
            return Err(refuse(
                adapter,
                m,
                "PEFT's LoHa/LoKr take only linear and conv layers without a bias delta",
            ));
        }
    }
    // Tucker on every conv with a kernel > 1×1, or on none.
    let tucker_of = |m: &LoraModule| match &m.factors {
        Factors::Loha { tucker, .. } => tucker.is_some(),
        Factors::Lokr { w2, .. } => matches!(w2, KronHalf::Tucker { .. }),
        _ => false,
    };
    let spatial = |m: &LoraModule| kernel_of(m).iter().any(|&k| k != 1);
    let effective = adapter.modules.iter().any(tucker_of);
    if let Some(m) = adapter
        .modules
        .iter()
        .find(|m| spatial(m) && tucker_of(m) != effective)
    {
        return Err(refuse(
            adapter,
            m,
            "PEFT's use_effective_conv2d (Tucker cores) is one setting for every conv with a kernel larger than 1x1, and this module differs from the others",
        ));
    }
    if !lokr {
        let ranks: Vec<usize> = adapter.modules.iter().map(|m| m.rank).collect();
        for m in &adapter.modules {
            if (m.scale - m.alpha / m.rank as f64).abs() > 0.0 {
                return Err(refuse(
                    adapter,
                    m,
                    "its scale is not alpha / r, the only rule PEFT's LoHa has",
                ));
            }
        }
        return Ok(Some(LycorisPeft {
            peft_type: "LOHA",
            use_effective_conv2d: effective,
            decompose_both: false,
            decompose_factor: -1,
            ranks,
            alphas: adapter.modules.iter().map(|m| m.alpha).collect(),
        }));
    }
    // LoKr: find one (decompose_both, decompose_factor) under which PEFT rebuilds every module.
    let decompose_both = adapter.modules.iter().any(|m| {
        matches!(
            &m.factors,
            Factors::Lokr {
                w1: KronHalf::LowRank { .. },
                ..
            }
        )
    });
    let mut candidates: Vec<i64> = vec![-1];
    for m in &adapter.modules {
        if let Factors::Lokr {
            w1_shape: (a, c),
            w2_shape: (b, _),
            ..
        } = m.factors
        {
            let kk: usize = kernel_of(m).iter().product::<usize>().max(1);
            for f in [a, c, b, m.in_features / kk / c.max(1)] {
                if !candidates.contains(&(f as i64)) {
                    candidates.push(f as i64);
                }
            }
        }
    }
    let mut last_err = None;
    for &factor in &candidates {
        match lokr_settings(adapter, factor, decompose_both) {
            Ok((ranks, alphas)) => {
                return Ok(Some(LycorisPeft {
                    peft_type: "LOKR",
                    use_effective_conv2d: effective,
                    decompose_both,
                    decompose_factor: factor,
                    ranks,
                    alphas,
                }))
            }
            Err(e) => last_err = last_err.or(Some(e)),
        }
    }
    // The first refusal, under PEFT's default factor; the others were tried too.
    let e = last_err.expect("at least one candidate");
    let tried: Vec<String> = candidates.iter().map(|f| f.to_string()).collect();
    Err(InputError::invalid(
        &adapter.path,
        format!(
            "{} (and no other decompose_factor fits every module: tried {})",
            e.kind,
            tried.join(", ")
        ),
    ))
}

/// Per module `(r, alpha)` when PEFT, given `factor` and `decompose_both`, rebuilds every LoKr
/// module as it is.
fn lokr_settings(
    adapter: &Adapter,
    factor: i64,
    decompose_both: bool,
) -> InputResult<(Vec<usize>, Vec<f64>)> {
    let mut ranks = Vec::new();
    let mut alphas = Vec::new();
    for m in &adapter.modules {
        let Factors::Lokr {
            w1,
            w2,
            w1_shape: (a, c),
            w2_shape: (b, _),
        } = &m.factors
        else {
            unreachable!("checked by plan")
        };
        // In channels from the module (a flattened conv `lokr_w2_b` states `d'·kh·kw` as its
        // width, so the reader's `w2_shape` may carry the kernel).
        let kk: usize = kernel_of(m).iter().product::<usize>().max(1);
        let (out, inn) = (a * b, m.in_features / kk);
        let dd = &(inn / c);
        let (out_l, out_k) = factorization(out, factor);
        let (in_m, in_n) = factorization(inn, factor);
        if (out_l, out_k, in_m, in_n) != (*a, *b, *c, *dd) {
            return Err(refuse(
                adapter,
                m,
                &format!(
                    "its Kronecker split ({a}x{c} ⊗ {b}x{dd}) is not PEFT's factorization of {out}x{inn} with decompose_factor {factor} ({out_l}x{in_m} ⊗ {out_k}x{in_n})"
                ),
            ));
        }
        let half_rank = |h: &KronHalf| match h {
            KronHalf::Whole(_) => None,
            KronHalf::LowRank { rank, .. } | KronHalf::Tucker { rank, .. } => Some(*rank),
        };
        // Candidate (r, alpha) pairs with PEFT's scale alpha / r equal to the module's.
        let candidates: Vec<(usize, f64)> = match (half_rank(w1), half_rank(w2)) {
            (Some(r1), Some(r2)) if r1 != r2 => {
                return Err(refuse(
                    adapter,
                    m,
                    "its two halves have different ranks; PEFT has one r per module",
                ))
            }
            (Some(r), _) | (None, Some(r)) => {
                if m.alpha / r as f64 != m.scale {
                    return Err(refuse(adapter, m, "its scale is not alpha / r"));
                }
                vec![(r, m.alpha)]
            }
            // Both whole, read from PEFT: its own r and alpha.
            (None, None) if m.rank > 0 && m.alpha / m.rank as f64 == m.scale => {
                vec![(m.rank, m.alpha)]
            }
            // Both whole at LyCORIS' scale 1: alpha = r. The stored alpha first (so the file
            // written back is the same), else the largest half dimension (both stay whole).
            (None, None) if m.scale == 1.0 => {
                let big = (*a).max(*c).max(*b).max(*dd);
                let mut v = Vec::new();
                if m.alpha >= 1.0 && m.alpha.fract() == 0.0 && m.alpha <= big as f64 {
                    v.push((m.alpha as usize, m.alpha));
                }
                v.push((big, big as f64));
                v
            }
            (None, None) => {
                return Err(refuse(
                    adapter,
                    m,
                    "both halves are whole and its scale is neither 1 nor alpha / r",
                ))
            }
        };
        let builds = |r: usize| {
            let use_w1 = !(decompose_both && (r as f64) < (*a.max(c) as f64) / 2.0);
            let use_w2 = (r as f64) >= (*b.max(dd) as f64) / 2.0;
            (use_w1, use_w2)
        };
        let want = (
            matches!(w1, KronHalf::Whole(_)),
            matches!(w2, KronHalf::Whole(_)),
        );
        let Some(&(r, alpha)) = candidates.iter().find(|(r, _)| builds(*r) == want) else {
            let (r, _) = candidates[0];
            let (use_w1, use_w2) = builds(r);
            return Err(refuse(
                adapter,
                m,
                &format!(
                    "PEFT at r = {r}{} would make w1 {} and w2 {}",
                    if decompose_both {
                        " with decompose_both"
                    } else {
                        ""
                    },
                    if use_w1 { "whole" } else { "decomposed" },
                    if use_w2 { "whole" } else { "decomposed" }
                ),
            ));
        };
        ranks.push(r);
        alphas.push(alpha);
    }
    Ok((ranks, alphas))
}

/// PEFT's LoKr `ΔW / scale` where it is not LyCORIS' Kronecker product: a whole `lokr_w2` of
/// other than 2 or 4 dims (an `nn.Conv1d`'s `[b, d', k]`, an `nn.Conv3d`'s 5-D one).
/// `tuners/lokr/layer.py` `make_kron` (0.21.2) unsqueezes `w1` only for a 4-D `w2`; for the
/// others `torch.kron` prepends ones to `w1` (`[1, a, c]` against `[b, d', k]`) and
/// `get_delta_weight` reshapes the `[b, a·d', c·k]` result to the base weight's shape, so that
/// `ΔW[o, i, τ] = w2[o / a, i / c, τ] · w1[o % a, i % c]` — the halves swapped against LyCORIS'
/// `w1[o / b, i / d'] · w2[o % b, i % d', τ]`. Returns the dense values in the base weight's
/// row-major layout (what the reshape keeps), `None` for every other module.
pub(super) fn peft_kron_dense(
    file: &crate::io::SafetensorsFile,
    m: &LoraModule,
    w2_shape: &[usize],
) -> InputResult<Option<Vec<f32>>> {
    let Factors::Lokr {
        w1,
        w2: KronHalf::Whole(w2),
        w1_shape: (a, c),
        ..
    } = &m.factors
    else {
        return Ok(None);
    };
    if w2_shape.len() == 2 || w2_shape.len() == 4 {
        return Ok(None);
    }
    let stored = |d: &crate::adapter::data::Data| -> InputResult<Vec<f32>> {
        match d {
            crate::adapter::data::Data::Stored { key, .. } => super::config::stored_f32(file, key),
            crate::adapter::data::Data::Owned(v) => Ok(v.to_vec()),
        }
    };
    let (a, c) = (*a, *c);
    let w1: Vec<f64> = match w1 {
        KronHalf::Whole(x) => stored(x)?.into_iter().map(f64::from).collect(),
        KronHalf::LowRank { a: x, b: y, rank } => {
            let (x, y) = (stored(x)?, stored(y)?);
            let mut w = vec![0f64; a * c];
            for i in 0..a {
                for j in 0..c {
                    w[i * c + j] = (0..*rank)
                        .map(|t| f64::from(x[i * rank + t]) * f64::from(y[t * c + j]))
                        .sum();
                }
            }
            w
        }
        KronHalf::Tucker { .. } => return Ok(None),
    };
    let w2 = stored(w2)?;
    // torch.kron: `w1` as [1, …, 1, a, c] against `w2`'s dims; result dim j = s1[j]·s2[j].
    let n = w2_shape.len();
    let mut s1 = vec![1usize; n];
    s1[n - 2] = a;
    s1[n - 1] = c;
    let dims: Vec<usize> = (0..n).map(|j| s1[j] * w2_shape[j]).collect();
    let total: usize = dims.iter().product();
    let mut out = vec![0f32; total];
    let mut idx = vec![0usize; n];
    for o in out.iter_mut() {
        let (mut i1, mut i2) = (0usize, 0usize);
        for j in 0..n {
            i1 = i1 * s1[j] + idx[j] / w2_shape[j];
            i2 = i2 * w2_shape[j] + idx[j] % w2_shape[j];
        }
        *o = (w1[i1] * f64::from(w2[i2])) as f32;
        for j in (0..n).rev() {
            idx[j] += 1;
            if idx[j] < dims[j] {
                break;
            }
            idx[j] = 0;
        }
    }
    Ok(Some(out))
}
