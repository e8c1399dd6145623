//! The update of the algorithms that depend on the base weight (LyCORIS diag-OFT, BOFT, IA3,
//! GLoRA; PEFT OFT and IA3): `W' − W0` from the decoded `W0`, and the Cayley rotations they
//! share. Never lowers anything to LoRA (those updates have no fixed `ΔW`).

use super::delta::f64s;
use super::delta::Loaded;
use super::factors::{Factors, Ia3Rule, OftConv, PeftCayley};

/// `ΔW = W' − W0` (d×k canonical, row-major) of an update that depends on the base weight
/// ([`Factors::needs_base`]), from the base `w0` (d×k, f32 as stored), accumulated in f64 and
/// rounded once. `multiplier` is LyCORIS' own (`make_weight(scale=multiplier)` /
/// `get_diff_weight(multiplier)`): for OFT `ΔW = rescale ⊙ (m·(R − I))ᵀ·W0 + (rescale − 1) ⊙ W0`
/// per block (`diag_oft.py` `make_weight` with `diff=True`), for IA3 `ΔW = m · W0 ⊙ w`.
/// ComfyUI differs from LyCORIS' module here (`comfy/weight_adapter/oft.py`: its strength
/// multiplies the rotation twice, `rescale` is dropped and the constraint is `alpha`, not
/// `alpha · d`); at multiplier 1 without `rescale` or a binding constraint they agree. `conv`
/// says the base is a conv weight (OneTrainer rotates those untransposed, [`OftConv::Plain`]).
pub fn delta_from_base(
    l: &Loaded,
    w0: &[f32],
    (d, k): (usize, usize),
    conv: bool,
    multiplier: f64,
) -> Vec<f32> {
    let v = &l.values;
    let mut out = vec![0f32; d * k];
    match l.factors {
        Factors::Oft {
            block_num,
            block_size,
            constraint,
            rescale,
            ..
        } => {
            let (n, s) = (*block_num, *block_size);
            let rs = cayley_blocks(&v[0], n, s, *constraint);
            let rescale = rescale.as_ref().map(|_| &v[1]);
            for b in 0..n {
                let r = &rs[b * s * s..(b + 1) * s * s];
                for m in 0..s {
                    let row = b * s + m;
                    let c = rescale.map_or(1.0, |x| x[row] as f64);
                    let o = &mut out[row * k..(row + 1) * k];
                    for (j, o) in o.iter_mut().enumerate() {
                        let mut acc = 0f64;
                        for nn in 0..s {
                            let coef =
                                multiplier * (r[nn * s + m] - if nn == m { 1.0 } else { 0.0 });
                            acc += coef * w0[(b * s + nn) * k + j] as f64;
                        }
                        *o = (c * acc + (c - 1.0) * w0[row * k + j] as f64) as f32;
                    }
                }
            }
        }
        Factors::Ia3 { on_input, rule, .. } => {
            let w = &v[0];
            let per = if *on_input { k / w.len().max(1) } else { 1 };
            let shift = if *rule == Ia3Rule::Peft { 1.0 } else { 0.0 };
            for i in 0..d {
                for j in 0..k {
                    let s = if *on_input { w[j / per] } else { w[i] } as f64 - shift;
                    out[i * k + j] = (multiplier * w0[i * k + j] as f64 * s) as f32;
                }
            }
        }
        Factors::Boft {
            stages,
            block_num,
            block_size,
            constraint,
            rescale,
            ..
        } => {
            let (m, n, b) = (*stages, *block_num, *block_size);
            let rs = cayley_blocks(&v[0], m * n, b, *constraint);
            let mut x: Vec<f64> = f64s(w0);
            let mut y = vec![0f64; d * k];
            for i in 0..m {
                let g = (1usize << i) * (b / 2);
                // Row `p` of the permuted order is row `old(p)` of W (functional/boft.py:
                // unflatten(0, (-1, 2, g)).transpose(1, 2)), and goes back there after.
                let old = |p: usize| {
                    let (a, rem) = (p / (2 * g), p % (2 * g));
                    a * 2 * g + (rem % 2) * g + rem / 2
                };
                y.fill(0.0);
                for blk in 0..n {
                    let r = &rs[(i * n + blk) * b * b..(i * n + blk + 1) * b * b];
                    for ii in 0..b {
                        let dst = old(blk * b + ii) * k;
                        for jj in 0..b {
                            let id = if ii == jj { 1.0 } else { 0.0 };
                            let c = multiplier * r[ii * b + jj] + (1.0 - multiplier) * id;
                            if c == 0.0 {
                                continue;
                            }
                            let src = old(blk * b + jj) * k;
                            for j in 0..k {
                                y[dst + j] += c * x[src + j];
                            }
                        }
                    }
                }
                std::mem::swap(&mut x, &mut y);
            }
            let rescale = rescale.as_ref().map(|_| &v[1]);
            for row in 0..d {
                let c = rescale.map_or(1.0, |r| r[row] as f64);
                for j in 0..k {
                    out[row * k + j] = (c * x[row * k + j] - w0[row * k + j] as f64) as f32;
                }
            }
        }
        Factors::PeftOft {
            block_size,
            blocks,
            block_share,
            cayley,
            coft_eps,
            scaled,
            conv: rule,
            ..
        } => {
            let (s, nb) = (*block_size, *blocks);
            let rs = peft_oft_rotations(&v[0], nb, s, *cayley, *coft_eps, *scaled);
            // Row j of the rotated block is Σᵢ W0[i]·R[j,i] (`W0·Rᵀ`), or Σᵢ W0[i]·R[i,j]
            // (`W0·R`) for OneTrainer's conv.
            let plain = conv && *rule == OftConv::Plain;
            let (sj, si) = if plain { (1, s) } else { (s, 1) };
            let used = if *block_share { k / s } else { nb };
            for o in 0..d {
                let row = &w0[o * k..(o + 1) * k];
                let orow = &mut out[o * k..(o + 1) * k];
                for b in 0..used {
                    let r = if *block_share {
                        &rs[..s * s]
                    } else {
                        &rs[b * s * s..(b + 1) * s * s]
                    };
                    for j in 0..s {
                        let mut acc = 0f64;
                        for i in 0..s {
                            acc += row[b * s + i] as f64 * r[j * sj + i * si];
                        }
                        orow[b * s + j] = (multiplier * (acc - row[b * s + j] as f64)) as f32;
                    }
                }
            }
        }
        Factors::Glora { rank, .. } => {
            // m·γ·(W0·a1·a2 + b1·b2) with γ folded into `multiplier` by the caller.
            let (a1, a2, b1, b2) = (&v[0], &v[1], &v[2], &v[3]);
            let r = *rank;
            let cin = a1.len() / r;
            let kk = k / cin;
            // a = a1·a2 (cin×cin), then per row o and kernel position s:
            // ΔW[o, j·kk + s] = Σᵢ W0[o, i·kk + s]·a[i, j] + Σₜ b1[o,t]·b2[t, j·kk + s].
            let mut a = vec![0f64; cin * cin];
            for i in 0..cin {
                for t in 0..r {
                    let x = a1[i * r + t] as f64;
                    for j in 0..cin {
                        a[i * cin + j] += x * a2[t * cin + j] as f64;
                    }
                }
            }
            let mut acc = vec![0f64; k];
            for o in 0..d {
                acc.fill(0.0);
                for i in 0..cin {
                    for s in 0..kk {
                        let w = w0[o * k + i * kk + s] as f64;
                        if w == 0.0 {
                            continue;
                        }
                        for j in 0..cin {
                            acc[j * kk + s] += w * a[i * cin + j];
                        }
                    }
                }
                for t in 0..r {
                    let x = b1[o * r + t] as f64;
                    for (c, &y) in acc.iter_mut().zip(&b2[t * k..(t + 1) * k]) {
                        *c += x * y as f64;
                    }
                }
                for (out, &c) in out[o * k..(o + 1) * k].iter_mut().zip(&acc) {
                    *out = (multiplier * c) as f32;
                }
            }
        }
        _ => unreachable!("only W0-dependent updates are built from the base"),
    }
    out
}

/// PEFT OFT's rotations (see [`Factors::PeftOft`]), `nb` blocks of s×s in f64, from `vec`
/// (nb × s(s−1)/2), divided by `2·√(s−1)` first when `scaled` (OneTrainer's Scaled OFT).
pub fn peft_oft_rotations(
    vec: &[f32],
    nb: usize,
    s: usize,
    cayley: PeftCayley,
    coft_eps: Option<f64>,
    scaled: bool,
) -> Vec<f64> {
    // OneTrainer's Scaled OFT (`OFTRotationModule.forward`): `weight / (2·√(s−1))`.
    let divisor = if scaled {
        2.0 * ((s - 1) as f64).sqrt()
    } else {
        1.0
    };
    let n = s * (s - 1) / 2;
    let mut q = vec![0f64; nb * s * s];
    for b in 0..nb {
        let mut t = 0;
        for i in 0..s {
            for j in i + 1..s {
                let x = vec[b * n + t] as f64 / divisor;
                q[(b * s + i) * s + j] = x;
                q[(b * s + j) * s + i] = -x;
                t += 1;
            }
        }
    }
    if let Some(eps) = coft_eps {
        // `_project_batch`: eps / √(blocks), per block.
        let e = eps / (nb as f64).sqrt();
        for qb in q.chunks_exact_mut(s * s) {
            let norm = qb.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > e {
                qb.iter_mut().for_each(|x| *x *= e / norm);
            }
        }
    }
    match cayley {
        PeftCayley::Exact => {
            let neg: Vec<f64> = q.iter().map(|x| -x).collect();
            cayley_of_skew(&neg, nb, s)
        }
        PeftCayley::Neumann(terms) => {
            let mut r = vec![0f64; nb * s * s];
            let mul = |a: &[f64], b: &[f64]| {
                let mut c = vec![0f64; s * s];
                for i in 0..s {
                    for t in 0..s {
                        let x = a[i * s + t];
                        for j in 0..s {
                            c[i * s + j] += x * b[t * s + j];
                        }
                    }
                }
                c
            };
            for b in 0..nb {
                let qb = &q[b * s * s..(b + 1) * s * s];
                let rb = &mut r[b * s * s..(b + 1) * s * s];
                for i in 0..s {
                    rb[i * s + i] = 1.0;
                }
                // `_cayley_batch`: I + 2Q for 2 terms; for t ≥ 3, I + 2Q + … + 2Q^{L−1} + Q^L
                // with L = max(3, t − 1) (its loop `range(3, t − 1)` adds nothing below 5).
                if terms >= 2 {
                    for (x, y) in rb.iter_mut().zip(qb) {
                        *x += 2.0 * y;
                    }
                }
                if terms >= 3 {
                    let last = (terms - 1).max(3);
                    let mut p = qb.to_vec();
                    for power in 2..=last {
                        p = mul(&p, qb);
                        let c = if power == last { 1.0 } else { 2.0 };
                        for (x, y) in rb.iter_mut().zip(&p) {
                            *x += c * y;
                        }
                    }
                }
            }
            r
        }
    }
}

/// The Cayley rotations of LyCORIS `functional/diag_oft.py` `get_r`, in f64: `Q = B − Bᵀ` per
/// block (`blocks` n×s×s), all of `Q` scaled by `constraint / (‖Q‖_F + 1e-8)` when that norm
/// exceeds a positive `constraint`, then `R = (I + Q)(I − Q)⁻¹` per block (n×s×s out).
/// `I − Q` with `Q` skew-symmetric is always invertible (its eigenvalues are `1 − iλ`).
pub fn cayley_blocks(blocks: &[f32], n: usize, s: usize, constraint: f64) -> Vec<f64> {
    let mut q = vec![0f64; n * s * s];
    for b in 0..n {
        for i in 0..s {
            for j in 0..s {
                q[(b * s + i) * s + j] =
                    blocks[(b * s + i) * s + j] as f64 - blocks[(b * s + j) * s + i] as f64;
            }
        }
    }
    if constraint > 0.0 {
        let norm = q.iter().map(|x| x * x).sum::<f64>().sqrt() + 1e-8;
        if norm > constraint {
            let f = constraint / norm;
            q.iter_mut().for_each(|x| *x *= f);
        }
    }
    cayley_of_skew(&q, n, s)
}

/// `R = (I + Q)(I − Q)⁻¹` per block (`q` n×s×s skew-symmetric, f64).
fn cayley_of_skew(q: &[f64], n: usize, s: usize) -> Vec<f64> {
    let mut r = vec![0f64; n * s * s];
    for b in 0..n {
        let qb = &q[b * s * s..(b + 1) * s * s];
        // (I − Q)⁻¹ by Gauss–Jordan with partial pivoting on [I − Q | I].
        let mut a = vec![0f64; s * 2 * s];
        for i in 0..s {
            for j in 0..s {
                a[i * 2 * s + j] = if i == j { 1.0 } else { 0.0 } - qb[i * s + j];
            }
            a[i * 2 * s + s + i] = 1.0;
        }
        for c in 0..s {
            let p = (c..s)
                .max_by(|&x, &y| a[x * 2 * s + c].abs().total_cmp(&a[y * 2 * s + c].abs()))
                .expect("non-empty");
            if p != c {
                for j in 0..2 * s {
                    a.swap(p * 2 * s + j, c * 2 * s + j);
                }
            }
            let piv = a[c * 2 * s + c];
            for j in 0..2 * s {
                a[c * 2 * s + j] /= piv;
            }
            for i in 0..s {
                if i != c {
                    let f = a[i * 2 * s + c];
                    if f != 0.0 {
                        for j in 0..2 * s {
                            a[i * 2 * s + j] -= f * a[c * 2 * s + j];
                        }
                    }
                }
            }
        }
        let rb = &mut r[b * s * s..(b + 1) * s * s];
        for i in 0..s {
            for j in 0..s {
                let mut acc = 0f64;
                for t in 0..s {
                    let ipq = if i == t { 1.0 } else { 0.0 } + qb[i * s + t];
                    acc += ipq * a[t * 2 * s + s + j];
                }
                rb[i * s + j] = acc;
            }
        }
    }
    r
}
