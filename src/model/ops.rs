//! The non-linear pieces of a Llama block and their backward passes, generic over [`Real`]:
//! RMSNorm, rotary embeddings, causal (optionally sliding-window) grouped-query attention, SwiGLU.
//!
//! Conventions follow transformers' eager Llama code: `RMSNorm(x) = w ⊙ (x · (mean(x²) + ε)^-½)`;
//! RoPE rotates the two halves of each head (`rotate_half`); attention scores are
//! `(Q·Kᵀ)·d^-½` with masked entries excluded, `softmax` per row, then `P·V`.
//!
//! Attention runs one task per (sequence, key/value head) on the rayon pool, each computing
//! the heads of its group; results are scattered in a fixed order, so outputs do not depend on
//! the thread count. The backward recomputes `P` from the saved per-row log-sum-exp instead of
//! storing the `T × T` probabilities.
//!
//! Must not depend on the thread count for its results (fixed task split and scatter order).

use super::scalar::{dot, gemm, max, multiversion, reduce_lanes, sum, MatView, Real};
use rayon::prelude::*;

/// Rows per rayon task in element-wise kernels.
const ROWS_PER_TASK: usize = 16;

/// Shape facts of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// Sequences and tokens per sequence.
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Keys at distance `≥ window` are masked (sliding-window attention).
    pub window: Option<usize>,
}

impl AttnShape {
    /// Keys query `i` sees: `lo..i + 1`.
    fn visible_range(&self, i: usize) -> (usize, usize) {
        let lo = self.window.map_or(0, |w| (i + 1).saturating_sub(w));
        (lo, i + 1)
    }

    #[cfg(test)]
    fn visible(&self, i: usize, j: usize) -> bool {
        let (lo, hi) = self.visible_range(i);
        (lo..hi).contains(&j)
    }
}

/// `y = w ⊙ (x · rstd)` per row, `rstd = (mean(x²) + ε)^-½`; returns `(y, rstd)`.
pub fn rmsnorm<T: Real>(x: &[T], h: usize, w: &[T], eps: f64) -> (Vec<T>, Vec<T>) {
    let n = x.len() / h;
    let mut y = vec![T::ZERO; x.len()];
    let mut rstd = vec![T::ZERO; n];
    let eps = T::from_f64(eps);
    let hn = T::from_f64(h as f64);
    y.par_chunks_mut(h * ROWS_PER_TASK)
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(h * ROWS_PER_TASK))
        .for_each(|((yc, rc), xc)| rmsnorm_rows(yc, rc, xc, w, h, hn, eps));
    (y, rstd)
}

multiversion! {
    fn rmsnorm_rows<T: Real>(yc: &mut [T], rc: &mut [T], xc: &[T], w: &[T], h: usize, hn: T, eps: T) {
        for ((yr, r), xr) in yc.chunks_mut(h).zip(rc.iter_mut()).zip(xc.chunks(h)) {
            let ss: T = dot(xr, xr);
            *r = T::ONE / (ss / hn + eps).sqrt();
            for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                *o = wv * (xv * *r);
            }
        }
    }
}

/// Backward of [`rmsnorm`]: `dx += r·g − x·r³·(Σ g⊙x)/h` with `g = w ⊙ dy`.
pub fn rmsnorm_backward<T: Real>(x: &[T], rstd: &[T], w: &[T], dy: &[T], h: usize, dx: &mut [T]) {
    let hn = T::from_f64(h as f64);
    dx.par_chunks_mut(h * ROWS_PER_TASK)
        .zip(x.par_chunks(h * ROWS_PER_TASK))
        .zip(dy.par_chunks(h * ROWS_PER_TASK))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .for_each(|(((dxc, xc), dyc), rc)| rmsnorm_backward_rows(dxc, xc, dyc, rc, w, h, hn));
}

multiversion! {
    fn rmsnorm_backward_rows<T: Real>(dxc: &mut [T], xc: &[T], dyc: &[T], rc: &[T], w: &[T], h: usize, hn: T) {
        for (((dxr, xr), dyr), &r) in dxc
            .chunks_mut(h)
            .zip(xc.chunks(h))
            .zip(dyc.chunks(h))
            .zip(rc)
        {
            let dot: T = reduce_lanes(h, |j| xr[j] * dyr[j] * w[j]);
            let c = r * r * r * dot / hn;
            for (((o, &xv), &g), &wv) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
                *o += r * (g * wv) - xv * c;
            }
        }
    }
}

/// Rotary tables for positions `0..seq`: `cos`/`sin` `[seq × head_dim/2]`.
#[derive(Debug, Clone)]
pub struct Rope<T> {
    pub cos: Vec<T>,
    pub sin: Vec<T>,
    pub half: usize,
}

impl<T: Real> Rope<T> {
    /// As transformers: the angle `pos · inv_freq` is formed in the compute type (f32 for f32
    /// models), then its cosine and sine.
    pub fn new(inv_freq: &[f64], seq: usize) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in 0..seq {
            for &f in inv_freq {
                let angle = T::from_f64(p as f64) * T::from_f64(f);
                let a = angle.to_f64();
                cos.push(T::from_f64(a.cos()));
                sin.push(T::from_f64(a.sin()));
            }
        }
        Rope { cos, sin, half }
    }

    /// Rotates every head of `x` (`[batch·seq, heads·2·half]`) in place; `inverse` applies the
    /// transpose (the backward).
    pub fn apply(&self, x: &mut [T], seq: usize, heads: usize, inverse: bool) {
        self.rotate(x, heads, inverse, |i| i % seq);
    }

    /// Rotates the rows of one sequence at positions `pos0, pos0 + 1, …` (incremental decoding;
    /// the tables must cover them).
    pub fn apply_from(&self, x: &mut [T], pos0: usize, heads: usize) {
        self.rotate(x, heads, false, |i| pos0 + i);
    }

    fn rotate(
        &self,
        x: &mut [T],
        heads: usize,
        inverse: bool,
        pos: impl Fn(usize) -> usize + Sync,
    ) {
        let half = self.half;
        let hd = 2 * half;
        let row = heads * hd;
        x.par_chunks_mut(row).enumerate().for_each(|(i, r)| {
            let p = pos(i);
            let (c, s) = (
                &self.cos[p * half..(p + 1) * half],
                &self.sin[p * half..(p + 1) * half],
            );
            for head in r.chunks_mut(hd) {
                let (x1, x2) = head.split_at_mut(half);
                for j in 0..half {
                    let (a, b) = (x1[j], x2[j]);
                    if inverse {
                        x1[j] = a * c[j] + b * s[j];
                        x2[j] = b * c[j] - a * s[j];
                    } else {
                        x1[j] = a * c[j] - b * s[j];
                        x2[j] = b * c[j] + a * s[j];
                    }
                }
            }
        });
    }
}

/// Query rows per block in attention: a block's scores cover only the keys some row of it sees
/// (`lo` of its first row to its last row), so most of the masked upper triangle is skipped.
const Q_BLOCK: usize = 64;

/// Query blocks of a sequence: `(i0, i1, lo)` with rows `i0..i1` seeing keys within `lo..i1`.
fn q_blocks(s: &AttnShape) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    (0..s.seq).step_by(Q_BLOCK).map(move |i0| {
        let i1 = (i0 + Q_BLOCK).min(s.seq);
        (i0, i1, s.visible_range(i0).0)
    })
}

/// Row `i` of a block's scores `p` (`w` columns from key `blo`, first row `i0`): the entries
/// query `i` may not see are zeroed and the visible ones returned.
fn visible_row<'p, T: Real>(
    p: &'p mut [T],
    s: &AttnShape,
    i: usize,
    i0: usize,
    blo: usize,
    w: usize,
) -> &'p mut [T] {
    let row = &mut p[(i - i0) * w..(i - i0 + 1) * w];
    let (lo, hi) = s.visible_range(i);
    let (lo, hi) = (lo - blo, hi - blo);
    row[..lo].fill(T::ZERO);
    row[hi..].fill(T::ZERO);
    &mut row[lo..hi]
}

/// Scaled scores `S = (Q_h[i0..i1]·K_g[lo..i1]ᵀ)·scale` of one head of one sequence, into `sc`
/// (`(i1 − i0) × (i1 − lo)`).
#[allow(clippy::too_many_arguments)]
fn block_scores<T: Real>(
    q: &[T],
    k: &[T],
    s: &AttnShape,
    b: usize,
    h: usize,
    g: usize,
    (i0, i1, lo): (usize, usize, usize),
    sc: &mut Vec<T>,
) {
    let (t, hd) = (s.seq, s.head_dim);
    let (qrow, krow) = (s.heads * hd, s.kv_heads * hd);
    let (mb, w) = (i1 - i0, i1 - lo);
    let qv = MatView::strided(&q[(b * t + i0) * qrow + h * hd..], mb, hd, qrow);
    let kv = MatView::strided(&k[(b * t + lo) * krow + g * hd..], w, hd, krow);
    sc.clear();
    sc.resize(mb * w, T::ZERO);
    gemm(sc, w, qv, kv.t(), false);
    let scale = T::from_f64(1.0 / (hd as f64).sqrt());
    for v in sc.iter_mut() {
        *v *= scale;
    }
}

/// Attention forward: returns the head outputs `[batch·seq, heads·head_dim]` and the per-row
/// log-sum-exp of the scores `[batch·seq, heads]` (for the backward).
pub fn attention<T: Real>(q: &[T], k: &[T], v: &[T], s: &AttnShape) -> (Vec<T>, Vec<T>) {
    let (t, hd, nh) = (s.seq, s.head_dim, s.heads);
    let gs = nh / s.kv_heads;
    let krow = s.kv_heads * hd;
    let tasks: Vec<(usize, usize)> = (0..s.batch)
        .flat_map(|b| (0..s.kv_heads).map(move |g| (b, g)))
        .collect();
    let parts: Vec<Vec<(Vec<T>, Vec<T>)>> = tasks
        .par_iter()
        .map(|&(b, g)| {
            let mut p = Vec::new();
            (g * gs..(g + 1) * gs)
                .map(|h| {
                    let mut o = vec![T::ZERO; t * hd];
                    let mut lse = vec![T::ZERO; t];
                    for blk in q_blocks(s) {
                        let (i0, i1, blo) = blk;
                        let w = i1 - blo;
                        block_scores(q, k, s, b, h, g, blk, &mut p);
                        for (i, lse_i) in lse.iter_mut().enumerate().take(i1).skip(i0) {
                            let vis = visible_row(&mut p, s, i, i0, blo, w);
                            let mx = max(vis);
                            for x in vis.iter_mut() {
                                *x -= mx;
                            }
                            T::exp_slice(vis);
                            let se: T = sum(vis);
                            for x in vis.iter_mut() {
                                *x /= se;
                            }
                            *lse_i = mx + se.ln();
                        }
                        let vv = MatView::strided(&v[(b * t + blo) * krow + g * hd..], w, hd, krow);
                        gemm(
                            &mut o[i0 * hd..],
                            hd,
                            MatView::new(&p, i1 - i0, w),
                            vv,
                            false,
                        );
                    }
                    (o, lse)
                })
                .collect()
        })
        .collect();
    let mut out = vec![T::ZERO; s.batch * t * nh * hd];
    let mut lse = vec![T::ZERO; s.batch * t * nh];
    for (&(b, g), heads) in tasks.iter().zip(parts) {
        for (hi, (o, l)) in heads.into_iter().enumerate() {
            let h = g * gs + hi;
            for i in 0..t {
                let r = b * t + i;
                out[r * nh * hd + h * hd..r * nh * hd + (h + 1) * hd]
                    .copy_from_slice(&o[i * hd..(i + 1) * hd]);
                lse[r * nh + h] = l[i];
            }
        }
    }
    (out, lse)
}

/// Attention of `n` new query rows of one sequence, at positions `pos0..pos0 + n`, over the
/// (rotated) keys and values of positions `0..pos0 + n` (`s.seq = pos0 + n`): incremental
/// decoding with a key/value cache. Returns `[n, heads·head_dim]`.
pub fn attention_incremental<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    s: &AttnShape,
    pos0: usize,
) -> Vec<T> {
    let (hd, nh) = (s.head_dim, s.heads);
    let gs = nh / s.kv_heads;
    let (qrow, krow) = (nh * hd, s.kv_heads * hd);
    let scale = T::from_f64(1.0 / (hd as f64).sqrt());
    let mut out = vec![T::ZERO; q.len()];
    out.par_chunks_mut(qrow)
        .zip(q.par_chunks(qrow))
        .enumerate()
        .for_each(|(i, (orow, qr))| {
            let (lo, hi) = s.visible_range(pos0 + i);
            let mut p = vec![T::ZERO; hi - lo];
            for (h, (oh, qh)) in orow.chunks_mut(hd).zip(qr.chunks(hd)).enumerate() {
                let g = h / gs;
                for (j, x) in (lo..hi).zip(p.iter_mut()) {
                    *x = dot(qh, &k[j * krow + g * hd..j * krow + (g + 1) * hd]) * scale;
                }
                let mx = max(&p);
                for x in p.iter_mut() {
                    *x -= mx;
                }
                T::exp_slice(&mut p);
                let se = sum(&p);
                for x in p.iter_mut() {
                    *x /= se;
                }
                for (j, &pj) in (lo..hi).zip(&p) {
                    for (o, &vv) in oh.iter_mut().zip(&v[j * krow + g * hd..]) {
                        *o += pj * vv;
                    }
                }
            }
        });
    out
}

/// Attention backward: from `dO` (`[batch·seq, heads·head_dim]`) and the forward's inputs and
/// outputs, returns `(dQ, dK, dV)` (before the inverse rotation).
pub fn attention_backward<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    lse: &[T],
    d_o: &[T],
    s: &AttnShape,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (t, hd, nh) = (s.seq, s.head_dim, s.heads);
    let gs = nh / s.kv_heads;
    let (qrow, krow) = (nh * hd, s.kv_heads * hd);
    let scale = T::from_f64(1.0 / (hd as f64).sqrt());
    let tasks: Vec<(usize, usize)> = (0..s.batch)
        .flat_map(|b| (0..s.kv_heads).map(move |g| (b, g)))
        .collect();
    type Part<T> = (Vec<Vec<T>>, Vec<T>, Vec<T>);
    let parts: Vec<Part<T>> = tasks
        .par_iter()
        .map(|&(b, g)| {
            let mut dk = vec![T::ZERO; t * hd];
            let mut dv = vec![T::ZERO; t * hd];
            let mut dqs = Vec::with_capacity(gs);
            let (mut p, mut ds) = (Vec::new(), Vec::new());
            for h in g * gs..(g + 1) * gs {
                let mut dq = vec![T::ZERO; t * hd];
                for blk in q_blocks(s) {
                    let (i0, i1, blo) = blk;
                    let (mb, w) = (i1 - i0, i1 - blo);
                    let qv = MatView::strided(&q[(b * t + i0) * qrow + h * hd..], mb, hd, qrow);
                    let dov = MatView::strided(&d_o[(b * t + i0) * qrow + h * hd..], mb, hd, qrow);
                    let kv = MatView::strided(&k[(b * t + blo) * krow + g * hd..], w, hd, krow);
                    let vv = MatView::strided(&v[(b * t + blo) * krow + g * hd..], w, hd, krow);
                    // P = exp(S − lse) on visible entries.
                    block_scores(q, k, s, b, h, g, blk, &mut p);
                    for i in i0..i1 {
                        let l = lse[(b * t + i) * nh + h];
                        let vis = visible_row(&mut p, s, i, i0, blo, w);
                        for x in vis.iter_mut() {
                            *x -= l;
                        }
                        T::exp_slice(vis);
                    }
                    // dV += Pᵀ·dO
                    gemm(
                        &mut dv[blo * hd..],
                        hd,
                        MatView::new(&p, mb, w).t(),
                        dov,
                        true,
                    );
                    // dP = dO·Vᵀ; dS = P ⊙ (dP − rowsum(dO ⊙ O)) · scale
                    ds.clear();
                    ds.resize(mb * w, T::ZERO);
                    gemm(&mut ds, w, dov, vv.t(), false);
                    for i in i0..i1 {
                        let r = (b * t + i) * qrow + h * hd;
                        let dsum: T = dot(&d_o[r..r + hd], &o[r..r + hd]);
                        let row = (i - i0) * w..(i - i0 + 1) * w;
                        for (d, &pv) in ds[row.clone()].iter_mut().zip(&p[row]) {
                            *d = pv * (*d - dsum) * scale;
                        }
                    }
                    // dQ = dS·K; dK += dSᵀ·Q
                    let dsv = MatView::new(&ds, mb, w);
                    gemm(&mut dq[i0 * hd..], hd, dsv, kv, false);
                    gemm(&mut dk[blo * hd..], hd, dsv.t(), qv, true);
                }
                dqs.push(dq);
            }
            (dqs, dk, dv)
        })
        .collect();
    let mut dq = vec![T::ZERO; q.len()];
    let mut dk = vec![T::ZERO; k.len()];
    let mut dv = vec![T::ZERO; v.len()];
    for (&(b, g), (dqs, dkg, dvg)) in tasks.iter().zip(parts) {
        for i in 0..t {
            let r = b * t + i;
            for (hi, dqh) in dqs.iter().enumerate() {
                let h = g * gs + hi;
                dq[r * qrow + h * hd..r * qrow + (h + 1) * hd]
                    .copy_from_slice(&dqh[i * hd..(i + 1) * hd]);
            }
            dk[r * krow + g * hd..r * krow + (g + 1) * hd]
                .copy_from_slice(&dkg[i * hd..(i + 1) * hd]);
            dv[r * krow + g * hd..r * krow + (g + 1) * hd]
                .copy_from_slice(&dvg[i * hd..(i + 1) * hd]);
        }
    }
    (dq, dk, dv)
}

/// `σ(g)` of a chunk, through the vectorised exponential.
#[inline(always)]
fn sigmoid_into<T: Real>(g: &[T], out: &mut Vec<T>) {
    out.clear();
    out.extend(g.iter().map(|&v| -v));
    T::exp_slice(out);
    for e in out.iter_mut() {
        *e = T::ONE / (T::ONE + *e);
    }
}

/// SwiGLU: `m = silu(g) ⊙ u`.
pub fn swiglu<T: Real>(g: &[T], u: &[T]) -> Vec<T> {
    let mut m = vec![T::ZERO; g.len()];
    m.par_chunks_mut(4096)
        .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
        .for_each(|(mc, (gc, uc))| swiglu_chunk(mc, gc, uc));
    m
}

multiversion! {
    fn swiglu_chunk<T: Real>(mc: &mut [T], gc: &[T], uc: &[T]) {
        let mut sg = Vec::with_capacity(gc.len());
        sigmoid_into(gc, &mut sg);
        for (((o, &gv), &uv), &s) in mc.iter_mut().zip(gc).zip(uc).zip(&sg) {
            *o = gv * s * uv;
        }
    }
}

/// Backward of [`swiglu`]: `(dg, du)`.
pub fn swiglu_backward<T: Real>(g: &[T], u: &[T], dm: &[T]) -> (Vec<T>, Vec<T>) {
    let mut dg = vec![T::ZERO; g.len()];
    let mut du = vec![T::ZERO; g.len()];
    dg.par_chunks_mut(4096)
        .zip(du.par_chunks_mut(4096))
        .zip(
            g.par_chunks(4096)
                .zip(u.par_chunks(4096))
                .zip(dm.par_chunks(4096)),
        )
        .for_each(|((dgc, duc), ((gc, uc), dmc))| swiglu_backward_chunk(dgc, duc, gc, uc, dmc));
    (dg, du)
}

multiversion! {
    fn swiglu_backward_chunk<T: Real>(dgc: &mut [T], duc: &mut [T], gc: &[T], uc: &[T], dmc: &[T]) {
        let mut sg = Vec::with_capacity(gc.len());
        sigmoid_into(gc, &mut sg);
        for i in 0..gc.len() {
            let (gv, uv, d, s) = (gc[i], uc[i], dmc[i], sg[i]);
            duc[i] = d * (gv * s);
            dgc[i] = d * uv * s * (T::ONE + gv * (T::ONE - s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::rng::Xoshiro256PlusPlus as Rng;

    /// The AVX-512 and baseline copies of the elementwise kernels give the same bits (on a CPU
    /// without AVX-512 both calls take the baseline copy and the test is trivially true).
    #[test]
    fn multiversioned_kernels_agree_bit_for_bit() {
        use super::super::scalar::with_baseline_kernels;
        let mut rng = crate::linalg::rng::Xoshiro256PlusPlus::seed_from_u64(3);
        let mut draw =
            |n: usize| -> Vec<f32> { (0..n).map(|_| (3.0 * rng.next_gaussian()) as f32).collect() };
        // h = 100: rows with a tail after the 32-lane reduction blocks.
        let (n, h) = (1003, 100);
        let (g, u, dm) = (draw(n), draw(n), draw(n));
        let run = |baseline: bool| {
            let go = || {
                let mut m = vec![0f32; n];
                swiglu_chunk(&mut m, &g, &u);
                let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
                swiglu_backward_chunk(&mut dg, &mut du, &g, &u, &dm);
                let rows = n / h;
                let (mut y, mut r) = (vec![0f32; rows * h], vec![0f32; rows]);
                rmsnorm_rows(&mut y, &mut r, &g[..rows * h], &u[..h], h, h as f32, 1e-6);
                let mut dx = vec![0f32; rows * h];
                rmsnorm_backward_rows(
                    &mut dx,
                    &g[..rows * h],
                    &dm[..rows * h],
                    &r,
                    &u[..h],
                    h,
                    h as f32,
                );
                [m, dg, du, y, r, dx].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
            };
            if baseline {
                with_baseline_kernels(go)
            } else {
                go()
            }
        };
        assert_eq!(run(true), run(false));
    }

    fn uniform(seed: &mut Rng) -> f64 {
        // Uniform on [-0.5, 0.5), from the one seeded generator (linalg::rng).
        seed.next_f64() - 0.5
    }

    /// Naive attention in f64 for one shape, as transformers' eager code computes it.
    fn naive(q: &[f64], k: &[f64], v: &[f64], s: &AttnShape) -> Vec<f64> {
        let (t, hd, nh, nkv) = (s.seq, s.head_dim, s.heads, s.kv_heads);
        let mut out = vec![0.0; s.batch * t * nh * hd];
        for b in 0..s.batch {
            for h in 0..nh {
                let g = h / (nh / nkv);
                for i in 0..t {
                    let sc: Vec<f64> = (0..t)
                        .map(|j| {
                            if !s.visible(i, j) {
                                return f64::NEG_INFINITY;
                            }
                            (0..hd)
                                .map(|d| {
                                    q[(b * t + i) * nh * hd + h * hd + d]
                                        * k[(b * t + j) * nkv * hd + g * hd + d]
                                })
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
                    for d in 0..hd {
                        out[(b * t + i) * nh * hd + h * hd + d] = (0..t)
                            .map(|j| {
                                (sc[j] - mx).exp() / z * v[(b * t + j) * nkv * hd + g * hd + d]
                            })
                            .sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_naive_with_gqa_and_window() {
        let mut seed = Rng::seed_from_u64(3);
        for window in [None, Some(2)] {
            let s = AttnShape {
                batch: 2,
                seq: 5,
                heads: 4,
                kv_heads: 2,
                head_dim: 4,
                window,
            };
            let (q, k, v) = random_qkv(&mut seed, &s, 1.0);
            forward_matches_naive(&q, &k, &v, &s);
        }
    }

    /// Random q and k with entries `qk_scale · U[-0.5, 0.5)` ([`uniform`]), v unscaled; drawn
    /// in that order.
    fn random_qkv(seed: &mut Rng, s: &AttnShape, qk_scale: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let nq = s.batch * s.seq * s.heads * s.head_dim;
        let nk = s.batch * s.seq * s.kv_heads * s.head_dim;
        let q: Vec<f64> = (0..nq).map(|_| qk_scale * uniform(seed)).collect();
        let k: Vec<f64> = (0..nk).map(|_| qk_scale * uniform(seed)).collect();
        let v: Vec<f64> = (0..nk).map(|_| uniform(seed)).collect();
        (q, k, v)
    }

    /// The forward against the naive one to 1e-12; returns its output and log-sum-exps.
    fn forward_matches_naive(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        s: &AttnShape,
    ) -> (Vec<f64>, Vec<f64>) {
        let (o, lse) = attention(q, k, v, s);
        let want = naive(q, k, v, s);
        for (a, b) in o.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        (o, lse)
    }

    /// Several query blocks (the last one partial), with and without a window that starts
    /// inside a block: the forward against the naive one, the backward against central
    /// differences of `Σ O ⊙ R`.
    #[test]
    fn blocked_attention_forward_and_backward() {
        let mut seed = Rng::seed_from_u64(11);
        for window in [None, Some(70)] {
            let s = AttnShape {
                batch: 1,
                seq: Q_BLOCK * 2 + 22,
                heads: 2,
                kv_heads: 1,
                head_dim: 4,
                window,
            };
            let (q, k, v) = random_qkv(&mut seed, &s, 2.0);
            let (nq, nk) = (q.len(), k.len());
            let r: Vec<f64> = (0..nq).map(|_| uniform(&mut seed)).collect();
            let (o, lse) = forward_matches_naive(&q, &k, &v, &s);
            let (dq, dk, dv) = attention_backward(&q, &k, &v, &o, &lse, &r, &s);
            let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
                naive(q, k, v, &s).iter().zip(&r).map(|(a, b)| a * b).sum()
            };
            let shifted = |which: usize, idx: usize, d: f64| {
                let mut x = [q.clone(), k.clone(), v.clone()];
                x[which][idx] += d;
                loss(&x[0], &x[1], &x[2])
            };
            let eps = 1e-5;
            for (which, idx) in [
                (0, 3),
                (0, nq - 1),
                (0, nq / 2 + 5),
                (1, 1),
                (1, nk - 2),
                (1, nk / 3),
                (2, 0),
                (2, nk - 1),
                (2, nk / 2 + 1),
            ] {
                let g = [&dq, &dk, &dv][which][idx];
                let fd = (shifted(which, idx, eps) - shifted(which, idx, -eps)) / (2.0 * eps);
                assert!((fd - g).abs() < 1e-7, "{which} {idx}: {fd} vs {g}");
            }
        }
    }

    #[test]
    fn rope_inverse_undoes_forward() {
        let rope = Rope::<f64>::new(&[1.0, 0.1], 3);
        let x: Vec<f64> = (0..2 * 3 * 2 * 4).map(|i| i as f64 * 0.1 - 1.0).collect();
        let mut y = x.clone();
        rope.apply(&mut y, 3, 2, false);
        assert!(y != x);
        rope.apply(&mut y, 3, 2, true);
        for (a, b) in y.iter().zip(&x) {
            assert!((a - b).abs() < 1e-12);
        }
    }
}
