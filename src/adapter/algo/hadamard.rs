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
