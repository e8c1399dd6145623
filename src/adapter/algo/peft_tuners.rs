//! The updates of PEFT's VeRA, HRA, BOFT, MiSS, SHiRA, RandLoRA and RoAd ([`Factors::Vera`],
//! [`Factors::Hra`], [`Factors::PeftBoft`], [`Factors::Miss`], [`Factors::Shira`],
//! [`Factors::RandLora`], [`Factors::Road`]) from the base weight `W0` (d×k, row-major, f32 as stored): `W' − W0`
//! times LyCORIS' `multiplier`, accumulated in f64 and rounded once: the base-dependent updates
//! beside [`super::base::delta_from_base`], asked first by the one caller that has checked the
//! shapes (`Adapter::delta_from_base`).
//!
//! Must not know file layouts or key names.

use super::base::peft_oft_rotations;
use super::delta::Loaded;
use super::factors::{Factors, MissMode, PeftCayley};

/// Whether a base weight d×k fits a MiSS or SHiRA module whose file gives only bounds
/// (`out`/`inp`: the module's `out_features`/`in_features`, see [`Factors::Miss`] and
/// [`Factors::Shira`]); `None` for any other algorithm.
pub fn base_fits(f: &Factors, (out, inp): (usize, usize), (d, k): (usize, usize)) -> Option<bool> {
    Some(match f {
        // PEFT: `r ≤ in_features` (`update_layer`); a remainder of k mod r is allowed.
        Factors::Miss {
            mode: MissMode::Plain,
            ..
        } => d == out && k >= inp,
        Factors::Miss {
            mode: MissMode::Mini { mini_r },
            ..
        } => d > 0 && d.is_multiple_of(*mini_r) && k >= inp,
        // `bat` cuts W0 into r×r blocks (`reset_bat_parameters` requires both sides divisible).
        Factors::Miss {
            mode: MissMode::Bat,
            ..
        } => d == out && k > 0 && k.is_multiple_of(inp),
        // Every saved index inside the base (`sparse_coo_tensor` of size (out, in)).
        Factors::Shira { .. } => d >= out && k >= inp,
        // `out` is min(d, k) (γ's width), `inp` the rows of the shared randlora_B.
        Factors::RandLora { .. } => d.min(k) == out && d.max(k) <= inp,
        _ => return None,
    })
}

/// `m·(W' − W0)` of a VeRA, HRA, BOFT, MiSS or SHiRA module; `None` for any other algorithm.
pub fn delta(l: &Loaded, w0: &[f32], (d, k): (usize, usize), m: f64) -> Option<Vec<f32>> {
    let v = &l.values;
    Some(match l.factors {
        Factors::Vera { .. } => vera(&v[0], &v[1], (d, k), m),
        Factors::Hra { gram_schmidt, .. } => hra(&v[0], w0, (d, k), *gram_schmidt, m),
        Factors::PeftBoft {
            block_num,
            block_size,
            butterfly,
            ..
        } => boft(
            &v[0],
            &v[1],
            w0,
            (d, k),
            (*block_num, *block_size, *butterfly),
            m,
        ),
        Factors::Miss { mode, .. } => miss(&v[0], w0, (d, k), *mode, m),
        Factors::Shira { .. } => shira(&v[0], &v[1], (d, k), m),
        Factors::RandLora { .. } => randlora(&v[0], &v[1], (d, k), m),
        Factors::Road { group, .. } => road(&v[0], &v[1], w0, (d, k), *group, m),
        Factors::Osf { .. } => osf(&v[0], &v[1], &v[2], w0, (d, k), m),
        Factors::Hadamard { .. } => return super::hadamard::delta(l, w0, (d, k), m),
        Factors::Frod(_) => return super::frod::delta(l, w0, (d, k), m),
        _ => return None,
    })
}

/// OSF: `m·(u·diag(s)·v − W0_low)` ([`Factors::Osf`]), `u` d×n, `v` n×k, `W0_low` the sum of
/// W0's n smallest singular triplets from an f64 SVD (PEFT's own is torch's f32
/// `torch.linalg.svd`; the low part does not depend on the signs of the vectors). A failed SVD
/// gives NaN, which the merge refuses naming the tensor.
fn osf(u: &[f32], s: &[f32], v: &[f32], w0: &[f32], (d, k): (usize, usize), m: f64) -> Vec<f32> {
    let n = s.len();
    let w = faer::Mat::<f64>::from_fn(d, k, |i, j| w0[i * k + j] as f64);
    let Ok((uw, sw, vw)) = super::svd::thin_svd(&w) else {
        return vec![f32::NAN; d * k];
    };
    let top = d.min(k) - n;
    let mut out = vec![0f32; d * k];
    let mut acc = vec![0f64; k];
    for i in 0..d {
        acc.fill(0.0);
        for t in 0..n {
            let x = u[i * n + t] as f64 * s[t] as f64;
            for (c, &y) in acc.iter_mut().zip(&v[t * k..(t + 1) * k]) {
                *c += x * y as f64;
            }
            let (ut, st) = (uw[(i, top + t)] * sw[top + t], top + t);
            for (j, c) in acc.iter_mut().enumerate() {
                *c -= ut * vw[(j, st)];
            }
        }
        for (o, &c) in out[i * k..(i + 1) * k].iter_mut().zip(&acc) {
            *o = (m * c) as f32;
        }
    }
    out
}

/// RoAd: `m·(R·W0 − W0)` ([`Factors::Road`]), row `i` of `R·W0` being `c[i]·W0[i] ∓ s[i]·W0[i±h]`
/// (minus with the row h below for the first half of its group, plus with the row h above for
/// the second), in f64.
pub fn road(
    c: &[f32],
    s: &[f32],
    w0: &[f32],
    (d, k): (usize, usize),
    g: usize,
    m: f64,
) -> Vec<f32> {
    let mut out = vec![0f32; d * k];
    let h = g / 2;
    for i in 0..d {
        let (partner, sign) = if i % g < h {
            (i + h, -1.0)
        } else {
            (i - h, 1.0)
        };
        let (ci, si) = (c[i] as f64, sign * s[i] as f64);
        let (row, other) = (&w0[i * k..(i + 1) * k], &w0[partner * k..(partner + 1) * k]);
        for ((o, &x), &y) in out[i * k..(i + 1) * k].iter_mut().zip(row).zip(other) {
            let turned = ci * x as f64 + si * y as f64;
            *o = (m * (turned - x as f64)) as f32;
        }
    }
    out
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

/// BOFT: row `o` of `W'` is `s[o]·(W0[o]·M_0ᵀ···M_{m−1}ᵀ)`, `x·M_iᵀ = x·P_i·blockdiag(R_i)ᵀ·P_iᵀ`
/// ([`butterfly_perm`]; `(x·P)[perm[j]] = x[j]`, `(y·Pᵀ)[j] = y[perm[j]]`), each `R` the exact
/// Cayley transform of the skew block whose upper triangle `blocks` holds.
fn boft(
    blocks: &[f32],
    scale: &[f32],
    w0: &[f32],
    (d, k): (usize, usize),
    (n, s, m_factors): (usize, usize, usize),
    m: f64,
) -> Vec<f32> {
    let rs = peft_oft_rotations(blocks, n * m_factors, s, PeftCayley::Exact, None, false);
    let perms: Vec<Vec<usize>> = (0..m_factors)
        .map(|i| butterfly_perm(k, n >> i, s / 2, m_factors - 1))
        .collect();
    let mut out = vec![0f32; d * k];
    let (mut x, mut u) = (vec![0f64; k], vec![0f64; k]);
    for o in 0..d {
        let row = &w0[o * k..(o + 1) * k];
        x.iter_mut().zip(row).for_each(|(x, &w)| *x = w as f64);
        for (f, perm) in perms.iter().enumerate() {
            for (j, &p) in perm.iter().enumerate() {
                u[p] = x[j];
            }
            let mut v = vec![0f64; k];
            for b in 0..n {
                let r = &rs[(f * n + b) * s * s..(f * n + b + 1) * s * s];
                for j in 0..s {
                    v[b * s + j] = (0..s).map(|i| u[b * s + i] * r[j * s + i]).sum();
                }
            }
            for (j, &p) in perm.iter().enumerate() {
                x[j] = v[p];
            }
        }
        let c = scale[o] as f64;
        for ((out, &x), &w) in out[o * k..(o + 1) * k].iter_mut().zip(&x).zip(row) {
            *out = (m * (c * x - w as f64)) as f32;
        }
    }
    out
}

/// PEFT's `BOFTLayer.block_butterfly_perm(n, b, r, n_butterfly_factor)`: the identity for one
/// factor; otherwise, within each of the `b` chunks of `n / b` entries, the runs of `r` taken
/// even runs first, then odd (`sort_block`). The reader has checked PEFT's divisibility rules
/// (`update_layer`), so every division here is exact.
pub fn butterfly_perm(n: usize, b: usize, r: usize, extra_factors: usize) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..n).collect();
    if extra_factors == 0 || b == 0 || r == 0 {
        return indices;
    }
    let size = n / b;
    let runs = size / r;
    let order: Vec<usize> = (0..runs)
        .step_by(2)
        .chain((1..runs).step_by(2))
        .flat_map(|pos| pos * r..pos * r + r)
        .collect();
    for chunk in indices.chunks_mut(size) {
        let old = chunk.to_vec();
        for (c, &o) in chunk.iter_mut().zip(&order) {
            *c = old[o];
        }
    }
    indices
}

/// MiSS ([`MissMode`]). `Plain` and `Mini` add the block itself (PEFT's `W_blocks + miss_B`,
/// the columns past the last whole r-block taking `miss_B.T[:, :remainder]`, i.e. the same
/// `c mod r` rule); `Bat` adds `W0_blk·block[p] + block[p]` per r×r block (`get_delta_weight`:
/// `W.reshape(d/r, r, k/r, r).permute(2, 0, 1, 3) @ miss_B + miss_B`).
fn miss(block: &[f32], w0: &[f32], (d, k): (usize, usize), mode: MissMode, m: f64) -> Vec<f32> {
    let mut out = vec![0f32; d * k];
    match mode {
        MissMode::Plain | MissMode::Mini { .. } => {
            let width = match mode {
                MissMode::Mini { mini_r } => mini_r,
                _ => d,
            };
            let r = block.len() / width.max(1);
            for o in 0..d {
                for c in 0..k {
                    let x = block[(c % r) * width + o % width] as f64;
                    out[o * k + c] = (m * x) as f32;
                }
            }
        }
        MissMode::Bat => {
            let r = block.len() / d.max(1);
            for o in 0..d {
                let (p, oi) = (o / r, o % r);
                let blk = &block[p * r * r..(p + 1) * r * r];
                for c in 0..k {
                    let (kb, ci) = (c / r, c % r);
                    let prod: f64 = (0..r)
                        .map(|t| w0[o * k + kb * r + t] as f64 * blk[t * r + ci] as f64)
                        .sum();
                    out[o * k + c] = (m * (prod + blk[oi * r + ci] as f64)) as f32;
                }
            }
        }
    }
    out
}

/// SHiRA: the saved values at their saved positions (repeated positions summed, as torch adds
/// a sparse COO tensor to a dense one).
fn shira(values: &[f32], indices: &[f32], (d, k): (usize, usize), m: f64) -> Vec<f32> {
    let n = values.len();
    let mut acc = vec![0f64; d * k];
    for (i, &x) in values.iter().enumerate() {
        let (row, col) = (indices[i] as usize, indices[n + i] as usize);
        acc[row * k + col] += x as f64;
    }
    acc.into_iter().map(|x| (m * x) as f32).collect()
}

/// RandLoRA ([`Factors::RandLora`]): `a` R×min(d, k), `b` M×R; `ΔW = m·b′·a` (k ≤ d) or its
/// transpose, `b′` the first max(d, k) rows of `b`.
fn randlora(a: &[f32], b: &[f32], (d, k): (usize, usize), m: f64) -> Vec<f32> {
    let small = d.min(k);
    let rr = a.len() / small.max(1);
    let mut out = vec![0f32; d * k];
    for o in 0..d {
        for c in 0..k {
            // (row of b′, column of a): b′·a itself is max×min.
            let (big, low) = if k <= d { (o, c) } else { (c, o) };
            let x: f64 = (0..rr)
                .map(|p| b[big * rr + p] as f64 * a[p * small + low] as f64)
                .sum();
            out[o * k + c] = (m * x) as f32;
        }
    }
    out
}
