//! The updates of PEFT's VeRA, HRA and BOFT ([`Factors::Vera`], [`Factors::Hra`],
//! [`Factors::PeftBoft`]) from the base weight `W0` (d×k, row-major, f32 as stored): `W' − W0`
//! times LyCORIS' `multiplier`, accumulated in f64 and rounded once: the base-dependent updates
//! beside [`super::base::delta_from_base`], asked first by the one caller that has checked the
//! shapes (`Adapter::delta_from_base`).
//!
//! Must not know file layouts or key names.

use super::base::peft_oft_rotations;
use super::delta::Loaded;
use super::factors::{Factors, PeftCayley};

/// `m·(W' − W0)` of a VeRA, HRA or BOFT module; `None` for any other algorithm.
pub fn delta(l: &Loaded, w0: &[f32], (d, k): (usize, usize), m: f64) -> Option<Vec<f32>> {
    let v = &l.values;
    Some(match l.factors {
        Factors::Vera { .. } => vera(&v[0], &v[1], (d, k), m),
        Factors::Hra { gram_schmidt, .. } => hra(&v[0], w0, (d, k), *gram_schmidt, m),
        Factors::PeftBoft {
            block_num,
            block_size,
            ..
        } => boft(&v[0], &v[1], w0, (d, k), (*block_num, *block_size), m),
        _ => return None,
    })
}

/// `ΔW[i, j] = m · Σₜ b[i,t]·a[t,j]` for `j < k`: `a` r×K (K ≥ k, PEFT's `vera_A[:, :k]`), `b`
/// d×r (PEFT's `vera_B[:d]`), the λ vectors folded in by the reader.
fn vera(a: &[f32], b: &[f32], (d, k): (usize, usize), m: f64) -> Vec<f32> {
    let r = b.len() / d.max(1);
    let wide = a.len() / r.max(1);
    let mut out = vec![0f32; d * k];
    let mut acc = vec![0f64; k];
    for i in 0..d {
        acc.fill(0.0);
        for t in 0..r {
            let x = b[i * r + t] as f64;
            for (c, &y) in acc.iter_mut().zip(&a[t * wide..t * wide + k]) {
                *c += x * y as f64;
            }
        }
        for (o, &c) in out[i * k..(i + 1) * k].iter_mut().zip(&acc) {
            *o = (m * c) as f32;
        }
    }
    out
}

/// HRA: `W0·H − W0`, `u` k×r. Without Gram–Schmidt the reflections apply in PEFT's order
/// (`weight = weight − 2·weight·uᵢ·uᵢᵀ` for i = 0…r−1, so `W0·H` is W0 reflected by û₀ first);
/// with it, `H = I − 2·U·Uᵀ` for the modified Gram–Schmidt `U` of `get_delta_weight`.
fn hra(u: &[f32], w0: &[f32], (d, k): (usize, usize), gs: bool, m: f64) -> Vec<f32> {
    let r = u.len() / k.max(1);
    let col = |i: usize| -> Vec<f64> { (0..k).map(|j| u[j * r + i] as f64).collect() };
    let unit = |mut x: Vec<f64>| {
        let n = x.iter().map(|y| y * y).sum::<f64>().sqrt();
        x.iter_mut().for_each(|y| *y /= n);
        x
    };
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(r);
    for i in 0..r {
        let mut x = col(i);
        if gs {
            for w in &basis {
                let p: f64 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
                x.iter_mut().zip(w).for_each(|(y, w)| *y -= p * w);
            }
        }
        basis.push(unit(x));
    }
    let mut out = vec![0f32; d * k];
    let mut row = vec![0f64; k];
    for o in 0..d {
        let w = &w0[o * k..(o + 1) * k];
        row.iter_mut().zip(w).for_each(|(x, &y)| *x = y as f64);
        if gs {
            // W0·(I − 2·U·Uᵀ): every projection taken from W0's own row.
            let coefs: Vec<f64> = basis
                .iter()
                .map(|b| b.iter().zip(w).map(|(x, &y)| x * y as f64).sum())
                .collect();
            for (b, c) in basis.iter().zip(coefs) {
                row.iter_mut().zip(b).for_each(|(x, y)| *x -= 2.0 * c * y);
            }
        } else {
            for b in &basis {
                let c: f64 = b.iter().zip(&row).map(|(x, y)| x * y).sum();
                row.iter_mut().zip(b).for_each(|(x, y)| *x -= 2.0 * c * y);
            }
        }
        for ((o, x), &y) in out[o * k..(o + 1) * k].iter_mut().zip(&row).zip(w) {
            *o = (m * (x - y as f64)) as f32;
        }
    }
    out
}

/// BOFT: row `o` of `W'` is `s[o]·(W0[o]·blockdiag(R)ᵀ)`, each `R` the exact Cayley transform of
/// the skew block whose upper triangle `blocks` holds.
fn boft(
    blocks: &[f32],
    scale: &[f32],
    w0: &[f32],
    (d, k): (usize, usize),
    (n, s): (usize, usize),
    m: f64,
) -> Vec<f32> {
    let rs = peft_oft_rotations(blocks, n, s, PeftCayley::Exact, None, false);
    let mut out = vec![0f32; d * k];
    for o in 0..d {
        let row = &w0[o * k..(o + 1) * k];
        let c = scale[o] as f64;
        for b in 0..n {
            let r = &rs[b * s * s..(b + 1) * s * s];
            for j in 0..s {
                let acc: f64 = (0..s).map(|i| row[b * s + i] as f64 * r[j * s + i]).sum();
                out[o * k + b * s + j] = (m * (c * acc - row[b * s + j] as f64)) as f32;
            }
        }
    }
    out
}
