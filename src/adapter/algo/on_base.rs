//! The updates of PEFT 0.21.2's BEFT, DEFT, PEANuT, Super-Tuning and AdaMSS ([`Factors::OnBase`],
//! one [`BaseRule`] each) from the base weight `W0` (d×k, row-major, canonical `[out, in]`):
//! `m·(W' − W0)` with `m` LyCORIS' multiplier, accumulated in f64 and rounded once, and whether
//! a base weight fits a module ([`fits`]). The readers in `formats/peft/{beft,deft,peanut,
//! supertuning,adamss}.rs` check the shapes of the stored tensors against each other; this file
//! trusts them and checks only what the base decides.
//!
//! Must not know file layouts or key names.

use super::base_rule::{Activation, BaseRule, SuperPositions};
use super::delta::Loaded;
use super::factors::Factors;

impl Activation {
    pub(super) fn apply(self, x: f64) -> f64 {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let gelu = |x: f64| 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2));
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Gelu => gelu(x),
            Activation::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            Activation::GeluFast => {
                0.5 * x * (1.0 + (x * 0.7978845608 * (1.0 + 0.044715 * x * x)).tanh())
            }
            Activation::Gelu10 => gelu(x).clamp(-10.0, 10.0),
            Activation::QuickGelu => x * sigmoid(1.702 * x),
            Activation::Silu => x * sigmoid(x),
            Activation::Sigmoid => sigmoid(x),
            Activation::Tanh => x.tanh(),
            Activation::Linear => x,
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Relu2 => x.max(0.0).powi(2),
            Activation::LeakyRelu => {
                if x >= 0.0 {
                    x
                } else {
                    0.01 * x
                }
            }
        }
    }
}

/// erf in f64 to ~1e-15: the Maclaurin series below 2.5, `1 − erfc` by its continued fraction
/// (evaluated bottom-up, 60 levels) above; ±1 past 6.
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let v = if a < 2.5 {
        // erf(a) = 2/√π · Σ (−1)ⁿ a^(2n+1) / (n!·(2n+1))
        let (mut term, mut sum, a2) = (a, a, a * a);
        for n in 1..200 {
            term *= -a2 / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if a < 6.0 {
        // erfc(a) = e^(−a²)/√π · 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + …))))
        let mut f = a;
        for n in (1..=60).rev() {
            f = a + (n as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    } else {
        1.0
    };
    v.copysign(x)
}

/// Whether a base weight d×k fits a module whose reader gave `(out, inp)`
/// ([`crate::adapter::LoraModule`]'s `out_features`/`in_features`); `None` for any other
/// algorithm.
pub fn fits(f: &Factors, (out, inp): (usize, usize), (d, k): (usize, usize)) -> Option<bool> {
    let Factors::OnBase { rule, .. } = f else {
        return None;
    };
    Some(match *rule {
        BaseRule::Beft | BaseRule::Peanut { .. } => d == out,
        BaseRule::Deft { para, .. } => d == out && (para || k == inp),
        // The value count and positions are checked by [`misfit`], which says why.
        BaseRule::Supertuning { lora_scale, .. } => lora_scale.is_none() || (d == out && k == inp),
        BaseRule::Adamss { cols } => d == out && (k == cols || k + 1 == cols),
    })
}

/// Why a base weight d×k that [`fits`] a module's shape still does not take it, for the rules
/// whose fit is not a shape: Super-Tuning's value count (PEFT's `_num_trainable`,
/// `int(d·k·(1 − sparsity))` in f64 as Python computes it; PEFT refuses a file of another count),
/// its largest saved position (inside W0, or `scatter_add` fails), and, without saved
/// positions, a top-n of |W0| that ties decide ([`topk_positions`]).
pub fn misfit(f: &Factors, w0: &[f32], (d, k): (usize, usize)) -> Option<String> {
    let Factors::OnBase {
        rule:
            BaseRule::Supertuning {
                sparsity,
                count,
                positions,
                ..
            },
        ..
    } = *f
    else {
        return None;
    };
    let n = ((d * k) as f64 * (1.0 - sparsity)) as usize;
    if n != count {
        return Some(format!(
            "supertuning_values holds {count} values, but PEFT builds int({d}·{k}·(1 − {sparsity})) = {n} for this {d}×{k} weight and refuses the file"
        ));
    }
    match positions {
        SuperPositions::Saved { max_index } if max_index >= (d * k) as u64 => Some(format!(
            "supertuning_indices holds position {max_index}, past this {d}×{k} weight"
        )),
        SuperPositions::Saved { .. } => None,
        SuperPositions::Topk { largest } => topk_positions(w0, n, largest).err(),
    }
}

/// PEFT's `torch.topk(W0.abs().flatten(), n, largest)` positions, in its sorted order, when no
/// tie decides them. torch breaks ties among equal |W0| in an order it does not document, so
/// where two of the chosen n share a magnitude (which value goes where) or the n-th equals the
/// first one left out (which position is chosen) lorakit cannot tell PEFT's choice and says so,
/// as it does for a NaN.
pub fn topk_positions(w0: &[f32], n: usize, largest: bool) -> Result<Vec<usize>, String> {
    if let Some(p) = w0.iter().position(|x| x.is_nan()) {
        return Err(format!(
            "the base weight holds NaN at flat position {p}, so PEFT's torch.topk over |W0| (the positions not saved) has no defined order"
        ));
    }
    let mut order: Vec<usize> = (0..w0.len()).collect();
    let key = |i: usize| w0[i].abs();
    order.sort_by(|&a, &b| {
        let o = key(a).total_cmp(&key(b));
        if largest {
            o.reverse()
        } else {
            o
        }
    });
    let n = n.min(order.len());
    let chosen = &order[..n];
    // Neighbours among the chosen, and the last chosen with the first left out.
    let boundary = (n > 0).then(|| order.get(n).map(|&next| (order[n - 1], next)));
    let tie = chosen
        .windows(2)
        .map(|w| (w[0], w[1]))
        .chain(boundary.flatten())
        .find(|&(a, b)| key(a) == key(b));
    if let Some((a, b)) = tie {
        return Err(format!(
            "supertuning_indices is not saved and PEFT recomputes it by torch.topk over |W0|, but |W0| ties at flat positions {a} and {b} ({}), where torch's tie order decides the positions; save the adapter with save_precomputed_indices=True",
            key(a)
        ));
    }
    order.truncate(n);
    Ok(order)
}

/// `m·(W' − W0)` of a [`Factors::OnBase`] module; `None` for any other algorithm.
pub fn delta(l: &Loaded, w0: &[f32], (d, k): (usize, usize), m: f64) -> Option<Vec<f32>> {
    let Factors::OnBase { rule, .. } = l.factors else {
        return None;
    };
    let v: Vec<&[f32]> = l.values.iter().map(|x| &x[..]).collect();
    let dw = match *rule {
        BaseRule::Beft => vec![0f64; d * k],
        BaseRule::Deft { qr, para, scale } => deft(&v, w0, (d, k), qr, para, scale),
        BaseRule::Peanut {
            depth,
            act,
            scaling,
        } => peanut(&v, w0, (d, k), depth, act, scaling),
        BaseRule::Supertuning {
            lora_scale,
            positions,
            ..
        } => supertuning(&v, w0, (d, k), lora_scale, positions),
        BaseRule::Adamss { cols } => adamss(&v, (d, k), cols),
    };
    Some(dw.into_iter().map(|x| (x * m) as f32).collect())
}

/// `a` n×p times `b` p×q, row-major, in f64.
fn matmul(a: &[f64], b: &[f64], (n, p, q): (usize, usize, usize)) -> Vec<f64> {
    let mut out = vec![0f64; n * q];
    for i in 0..n {
        let row = &mut out[i * q..(i + 1) * q];
        for t in 0..p {
            let x = a[i * p + t];
            if x == 0.0 {
                continue;
            }
            for (o, &y) in row.iter_mut().zip(&b[t * q..(t + 1) * q]) {
                *o += x * y;
            }
        }
    }
    out
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `Q` d×r of the reduced QR decomposition `P = Q·R` as LAPACK's `geqrf` + `orgqr` (what
/// `torch.linalg.qr` calls) build it: Householder reflections with `dlarfg`'s signs
/// (`β = −sign(α)·‖(α, x)‖`, no reflection where `x` is zero), so each column's sign is
/// LAPACK's, not just the span. `r ≤ d`.
pub fn householder_q(p: &[f64], d: usize, r: usize) -> Vec<f64> {
    let mut a = p.to_vec();
    let mut refl: Vec<(f64, Vec<f64>)> = Vec::with_capacity(r);
    for j in 0..r.min(d) {
        let alpha = a[j * r + j];
        let xnorm = ((j + 1)..d)
            .map(|i| a[i * r + j] * a[i * r + j])
            .sum::<f64>()
            .sqrt();
        let mut v = vec![0f64; d];
        v[j] = 1.0;
        if xnorm == 0.0 {
            refl.push((0.0, v));
            continue;
        }
        let beta = -alpha.hypot(xnorm).copysign(alpha);
        let tau = (beta - alpha) / beta;
        let s = 1.0 / (alpha - beta);
        for i in (j + 1)..d {
            v[i] = a[i * r + j] * s;
        }
        for c in j..r {
            let dot: f64 = (j..d).map(|i| v[i] * a[i * r + c]).sum();
            for i in j..d {
                a[i * r + c] -= tau * v[i] * dot;
            }
        }
        refl.push((tau, v));
    }
    // Q = H₀·H₁·…·H_{r−1} applied to the first r columns of I, last reflection first.
    let mut q = vec![0f64; d * r];
    for j in 0..r {
        q[j * r + j] = 1.0;
    }
    for (tau, v) in refl.iter().rev() {
        if *tau == 0.0 {
            continue;
        }
        for c in 0..r {
            let dot: f64 = (0..d).map(|i| v[i] * q[i * r + c]).sum();
            for i in 0..d {
                q[i * r + c] -= tau * v[i] * dot;
            }
        }
    }
    q
}

fn deft(
    v: &[&[f32]],
    w0: &[f32],
    (d, k): (usize, usize),
    qr: bool,
    para: bool,
    s: f64,
) -> Vec<f64> {
    let r = v[0].len() / d;
    let p = f64s(v[0]);
    let (q, right) = if qr {
        let q = householder_q(&p, d, r);
        (q.clone(), q)
    } else {
        let relu = p.iter().map(|x| x.max(0.0)).collect();
        (p, relu)
    };
    // M = rightᵀ·W0 (r×k), then the injection s·R − M (or −M).
    let mut inner = vec![0f64; r * k];
    for o in 0..d {
        let row = &w0[o * k..(o + 1) * k];
        for t in 0..r {
            let x = right[o * r + t];
            if x == 0.0 {
                continue;
            }
            for (m, &w) in inner[t * k..(t + 1) * k].iter_mut().zip(row) {
                *m -= x * w as f64;
            }
        }
    }
    if !para {
        for (m, &x) in inner.iter_mut().zip(v[1]) {
            *m += s * x as f64;
        }
    }
    matmul(&q, &inner, (d, r, k))
}

fn peanut(
    v: &[&[f32]],
    w0: &[f32],
    (d, k): (usize, usize),
    depth: usize,
    act: Activation,
    scaling: f64,
) -> Vec<f64> {
    let r = v[0].len() / d;
    // Xᵀ·Aᵀ: row c of H is act(Σₒ W0[o, c]·A[t, o]).
    let at: Vec<f64> = (0..d * r)
        .map(|i| v[0][(i % r) * d + i / r] as f64)
        .collect();
    let x: Vec<f64> = (0..k * d).map(|i| w0[(i % d) * k + i / d] as f64).collect();
    let mut h = matmul(&x, &at, (k, d, r));
    h.iter_mut().for_each(|y| *y = act.apply(*y));
    // `layer(h)` of an r×r nn.Linear: h·Wᵀ.
    let layer = |h: &[f64], w: &[f32]| -> Vec<f64> {
        let wt: Vec<f64> = (0..r * r).map(|i| w[(i % r) * r + i / r] as f64).collect();
        let mut y = matmul(h, &wt, (k, r, r));
        y.iter_mut().for_each(|z| *z = act.apply(*z));
        y
    };
    let mut kept = Vec::with_capacity(depth);
    for e in &v[2..2 + depth] {
        let next = layer(&h, e);
        kept.push(std::mem::replace(&mut h, next));
    }
    for (i, dec) in v[2 + depth..2 + 2 * depth].iter().enumerate() {
        h = layer(&h, dec);
        for (y, z) in h.iter_mut().zip(&kept[depth - 1 - i]) {
            *y += z;
        }
    }
    // ΔW[o, c] = scaling · Σₜ H[c, t]·B[o, t].
    let b = v[1];
    let mut out = vec![0f64; d * k];
    for o in 0..d {
        for c in 0..k {
            let acc: f64 = (0..r).map(|t| h[c * r + t] * b[o * r + t] as f64).sum();
            out[o * k + c] = scaling * acc;
        }
    }
    out
}

fn supertuning(
    v: &[&[f32]],
    w0: &[f32],
    (d, k): (usize, usize),
    lora_scale: Option<f64>,
    positions: SuperPositions,
) -> Vec<f64> {
    let n = v[0].len();
    let mut out = vec![0f64; d * k];
    let at: Vec<usize> = match positions {
        SuperPositions::Saved { .. } => (0..n)
            .map(|i| (v[1][i] as u64 * (1 << 24) + v[1][n + i] as u64) as usize)
            .collect(),
        // Checked tie-free by `misfit` before any delta is built.
        SuperPositions::Topk { largest } => topk_positions(w0, n, largest).unwrap_or_default(),
    };
    for (&x, p) in v[0].iter().zip(at) {
        out[p] += x as f64;
    }
    if let Some(s) = lora_scale {
        let r = v[2].len() / k;
        let ba = matmul(&f64s(v[3]), &f64s(v[2]), (d, r, k));
        for (o, x) in out.iter_mut().zip(ba) {
            *o += s * x;
        }
    }
    out
}

fn adamss(v: &[&[f32]], (d, k): (usize, usize), cols: usize) -> Vec<f64> {
    let q = v[0].len() / d;
    let r = v[2].len() / cols;
    let ba = matmul(&f64s(v[0]), &f64s(v[1]), (d, q, r));
    let full = matmul(&ba, &f64s(v[2]), (d, r, cols));
    (0..d * k).map(|i| full[(i / k) * cols + i % k]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf against Python's `math.erf` (CPython's libm): the series, the continued fraction and
    /// the switch between them.
    #[test]
    fn erf_matches_python() {
        for (x, want) in [
            (0.1, 0.1124629160182849),
            (-0.7, -0.6778011938374184),
            (2.4, 0.999311486103355),
            (2.6, 0.9997639655834707),
            (4.0, 0.9999999845827421),
        ] {
            assert!((erf(x) - want).abs() < 1e-14, "erf({x}) = {}", erf(x));
        }
    }

    /// `householder_q` against `torch.linalg.qr(P)` in f64 for a 4×2 P (LAPACK's signs: the
    /// first column's is −sign(P[0, 0])).
    #[test]
    fn householder_q_has_lapack_signs() {
        let p = [1.0, 2.0, -3.0, 0.5, 0.0, 1.0, 4.0, -2.0];
        let q = householder_q(&p, 4, 2);
        let want = [
            -0.19611613513818393,
            -0.8596596516218825,
            0.588348405414552,
            0.13725658303206517,
            -0.0,
            -0.3756495956667051,
            -0.784464540552736,
            0.3178573501795199,
        ];
        for (g, w) in q.iter().zip(want) {
            assert!((g - w).abs() < 1e-14, "{q:?}");
        }
    }
}
