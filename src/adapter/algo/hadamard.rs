//! The update of PEFT's HiRA and GLoRA ([`Factors::Hadamard`]) from the base weight `W0` (d×k,
//! row-major, f32 as stored): `m·(W0 ⊙ M + N)`, accumulated in f64 and rounded once.
//!
//! - HiRA (Huang et al., "HiRA: Parameter-Efficient Hadamard High-Rank Adaptation for Large
//!   Language Models", ICLR 2025; PEFT 0.21.2 `tuners/hira/layer.py` `HiraLayer._merge`):
//!   `W' = W0 + W0 ⊙ (B·A)`, `M = hira_B·hira_A`, no `N`, no scale.
//! - GLoRA (Chavan et al., "One-for-All: Generalized LoRA for Parameter-Efficient Fine-tuning",
//!   2023; PEFT 0.21.2 `tuners/glora/layer.py` `GloraLayer.merge`): `W' = W0 + W0 ⊙ A + B`, each
//!   of `A` and `B` a low-rank product `Xd·Xu`, a per-row column `(out, 1)`, one scalar, or the
//!   zero buffer of `none` ([`HadamardPart`]).
//!
//! Must not know file layouts or key names.

use super::delta::Loaded;
use super::factors::{Factors, HadamardPart};
use crate::adapter::data::Values;

/// `m·(W0 ⊙ M + N)` of a [`Factors::Hadamard`] module; `None` for any other algorithm.
pub fn delta(l: &Loaded, w0: &[f32], (d, k): (usize, usize), m: f64) -> Option<Vec<f32>> {
    let Factors::Hadamard { mul, add, .. } = l.factors else {
        return None;
    };
    let n_mul = part_len(mul);
    let (vm, va) = l.values.split_at(n_mul);
    let mut out = vec![0f32; d * k];
    let (mut rm, mut ra) = (vec![0f64; k], vec![0f64; k]);
    for i in 0..d {
        row(mul, vm, i, k, &mut rm);
        row(add, va, i, k, &mut ra);
        let w = &w0[i * k..(i + 1) * k];
        for (j, o) in out[i * k..(i + 1) * k].iter_mut().enumerate() {
            *o = (m * (w[j] as f64 * rm[j] + ra[j])) as f32;
        }
    }
    Some(out)
}

/// How many tensors a part holds (its share of [`Loaded::values`]).
fn part_len(p: &HadamardPart) -> usize {
    match p {
        HadamardPart::Zero => 0,
        HadamardPart::Scalar(_) | HadamardPart::Rows(_) | HadamardPart::Dense(_) => 1,
        HadamardPart::LowRank { .. } => 2,
    }
}

/// Row `i` (k values) of a part, in f64.
fn row(p: &HadamardPart, v: &[Values], i: usize, k: usize, out: &mut [f64]) {
    match p {
        HadamardPart::Zero => out.fill(0.0),
        HadamardPart::Scalar(_) => out.fill(v[0][0] as f64),
        HadamardPart::Rows(_) => out.fill(v[0][i] as f64),
        HadamardPart::Dense(_) => {
            for (o, &x) in out.iter_mut().zip(&v[0][i * k..(i + 1) * k]) {
                *o = x as f64;
            }
        }
        HadamardPart::LowRank { rank, .. } => {
            let (b, a) = (&v[0], &v[1]);
            out.fill(0.0);
            for t in 0..*rank {
                let x = b[i * rank + t] as f64;
                for (o, &y) in out.iter_mut().zip(&a[t * k..(t + 1) * k]) {
                    *o += x * y as f64;
                }
            }
        }
    }
}

/// GLoRA's bias (`GloraLayer.merge`: `b' = b0 + b0·D + E + (W0·C).squeeze(-1)`, every adapter
/// reading the original `b0` and `W0`): `m·(b0 ⊙ D + E + W0·C)` in f64, rounded once. `packed`
/// is the reader's `[len C, len D, len E, C…, D…, E…]` (C the input column `Xd·Xu`, `X` or the
/// zero buffer; D and E d values, or one for `constant`); `b0` d values, `w0` d×k. A base that
/// does not fit is an error naming the sizes.
pub fn glora_bias_delta(
    packed: &[f32],
    b0: &[f32],
    w0: &[f32],
    (d, k): (usize, usize),
    m: f64,
) -> Result<Vec<f32>, String> {
    let lens: Vec<usize> = packed.iter().take(3).map(|&x| x as usize).collect();
    let [nc, nd, ne] = lens[..] else {
        return Err("GLoRA bias terms are malformed".into());
    };
    let body = &packed[3..];
    if body.len() != nc + nd + ne {
        return Err("GLoRA bias terms are malformed".into());
    }
    let (c, rest) = body.split_at(nc);
    let (dv, ev) = rest.split_at(nd);
    if nc != k
        || b0.len() != d
        || w0.len() != d * k
        || ![1, d].contains(&nd)
        || ![1, d].contains(&ne)
    {
        return Err(format!(
            "glora_C holds {nc} values and glora_D/glora_E {nd}/{ne}, but the base weight is {d}×{k} with a bias of {}",
            b0.len()
        ));
    }
    let pick = |v: &[f32], i: usize| v[if v.len() == 1 { 0 } else { i }] as f64;
    Ok((0..d)
        .map(|i| {
            let wc: f64 = w0[i * k..(i + 1) * k]
                .iter()
                .zip(c)
                .map(|(&w, &c)| w as f64 * c as f64)
                .sum();
            (m * (b0[i] as f64 * pick(dv, i) + pick(ev, i) + wc)) as f32
        })
        .collect())
}
