//! Products of a large row-major matrix `A` (`m×n`) with a skinny one (`l ≤ 128` columns):
//! `A·X` and `Aᵀ·Q`, the passes of the randomized range finder over `ΔW`
//! (Halko, Martinsson & Tropp 2011, Alg. 4.4: `2q + 2` of them per module).
//!
//! A general GEMM packs and tiles for square-ish shapes; here one operand is a few columns
//! wide, the work per element of `A` is `l` multiply-adds and the whole cost is one sweep
//! over `A`. `A·X` keeps a block of output rows in vector registers for the whole sweep,
//! broadcasting one element of `A` against a row of `X` (zero-padded to a multiple of 16
//! lanes); `Aᵀ·Q` streams rows of `A` and updates a block of `Qᵀ·A` held in cache.
//!
//! # Determinism
//! Every output element is one chain of fused multiply-adds over the inner index in
//! increasing order; vectorisation and threads only split the outputs. The result is therefore
//! the same bits for every thread count, every register blocking and every vector width
//! (AVX-512, AVX2, NEON, or the portable path, which uses `f32::mul_add`, a correctly
//! rounded FMA everywhere — in software, slowly, on x86 CPUs without FMA).
//!
//! Must not depend on the thread count for its results (fixed row blocks, fixed summation order).

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// Lanes per padded block of the skinny operand.
const LANES: usize = 16;
/// Widest skinny operand handled here (8 blocks of 16).
pub const MAX_COLS: usize = 8 * LANES;
/// Rows of `A·X` per parallel task: a multiple of every register blocking used below
/// (1, 2, 3, 4, 6, 8, 12, 24), so only the matrix's edge has a tail.
const TASK: usize = 96;

type Lane = [f32; LANES];

/// `A·X` for row-major `a` (`m×n`) and `x` (`n×l`, any layout), or `None` when `a` is not in
/// standard layout or `l` is 0 or above [`MAX_COLS`] (callers use a general GEMM then).
pub fn matmul(a: ArrayView2<f32>, x: ArrayView2<f32>) -> Option<Array2<f32>> {
    let (m, n) = a.dim();
    assert_eq!(x.nrows(), n, "skinny::matmul: inner dimensions differ");
    let l = x.ncols();
    let a = a.as_slice()?;
    if l == 0 || l > MAX_COLS || n == 0 {
        return None;
    }
    let nv = l.div_ceil(LANES);
    let xp = pad(x, nv);
    let mut out = Array2::<f32>::zeros((m, l));
    out.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut(TASK * l)
        .enumerate()
        .for_each(|(t, chunk)| {
            let r0 = t * TASK;
            let rows = chunk.len() / l;
            let a = &a[r0 * n..(r0 + rows) * n];
            dispatch(nv, a, n, &xp, l, chunk);
        });
    Some(out)
}

/// `Aᵀ·Q` for row-major `a` (`m×n`) and `q` (`m×l`, any layout), or `None` as for
/// [`matmul`].
///
/// Computed as `(Qᵀ·A)ᵀ`: rows of `A` are read contiguously, [`TN_ROWS`] at a time, and each
/// updates a `l × w` block of `Qᵀ·A` held in cache (`w` = [`TN_TASK`] columns per task), so `A`
/// is swept once, in order, with no packing (rows of `A` are often a power of two apart, which
/// makes column-wise walks fall into a few cache sets).
pub fn matmul_tn(a: ArrayView2<f32>, q: ArrayView2<f32>) -> Option<Array2<f32>> {
    let (m, n) = a.dim();
    assert_eq!(q.nrows(), m, "skinny::matmul_tn: inner dimensions differ");
    let l = q.ncols();
    let a = a.as_slice()?;
    if l == 0 || l > MAX_COLS || m == 0 {
        return None;
    }
    let q = q.as_standard_layout();
    let q = q.as_slice().expect("standard layout");
    let mut out = Array2::<f32>::zeros((n, l));
    out.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut(TN_TASK * l)
        .enumerate()
        .for_each(|(t, chunk)| {
            let j0 = t * TN_TASK;
            let w = chunk.len() / l;
            let wv = w.div_ceil(LANES);
            // (Qᵀ·A)[:, j0..j0+w] as lane blocks of 16 columns (zero-padded), row c at c·wv.
            let mut zt = vec![[0f32; LANES]; l * wv];
            dispatch_tn(a, n, m, j0, w, q, l, &mut zt);
            for (jj, dst) in chunk.chunks_exact_mut(l).enumerate() {
                for (c, d) in dst.iter_mut().enumerate() {
                    *d = zt[c * wv + jj / LANES][jj % LANES];
                }
            }
        });
    Some(out)
}

/// Columns of `Aᵀ·Q` per parallel task.
const TN_TASK: usize = 512;
/// Rows of `A` per register block in [`matmul_tn`] (AVX-512; 4 elsewhere).
const TN_ROWS: usize = 16;

#[allow(clippy::too_many_arguments)]
fn dispatch_tn(
    a: &[f32],
    n: usize,
    m: usize,
    j0: usize,
    w: usize,
    q: &[f32],
    l: usize,
    zt: &mut [Lane],
) {
    match isa() {
        // SAFETY: `isa` detected the features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { tn_avx512(a, n, m, j0, w, q, l, zt) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { tn_avx2(a, n, m, j0, w, q, l, zt) },
        Isa::Portable => tn_rows::<4>(a, n, m, j0, w, q, l, zt),
    }
}

/// The instruction set the kernels run with (also [`super::householder`]'s).
#[derive(Clone, Copy)]
pub(crate) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

/// AVX-512 (with FMA), else AVX2 + FMA, else the portable path, by the one detection
/// ([`crate::cpu::detected`]).
pub(crate) fn isa() -> Isa {
    match crate::cpu::detected() {
        #[cfg(target_arch = "x86_64")]
        crate::cpu::Level::Avx512 => Isa::Avx512,
        #[cfg(target_arch = "x86_64")]
        crate::cpu::Level::Avx2 => Isa::Avx2,
        _ => Isa::Portable,
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
fn tn_avx512(
    a: &[f32],
    n: usize,
    m: usize,
    j0: usize,
    w: usize,
    q: &[f32],
    l: usize,
    zt: &mut [Lane],
) {
    tn_rows::<TN_ROWS>(a, n, m, j0, w, q, l, zt)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn tn_avx2(
    a: &[f32],
    n: usize,
    m: usize,
    j0: usize,
    w: usize,
    q: &[f32],
    l: usize,
    zt: &mut [Lane],
) {
    tn_rows::<4>(a, n, m, j0, w, q, l, zt)
}

/// All rows of `A`, `RB` at a time (then one at a time for the tail).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tn_rows<const RB: usize>(
    a: &[f32],
    n: usize,
    m: usize,
    j0: usize,
    w: usize,
    q: &[f32],
    l: usize,
    zt: &mut [Lane],
) {
    // Q's rows i..i+RB interleaved per column: qb[c] = [Q[i, c], …, Q[i+RB-1, c]].
    let mut qb = vec![[0f32; RB]; l];
    let mut i = 0;
    while i + RB <= m {
        for (c, dst) in qb.iter_mut().enumerate() {
            for (t, d) in dst.iter_mut().enumerate() {
                *d = q[(i + t) * l + c];
            }
        }
        tn_block::<RB>(a, n, i, j0, w, &qb, zt);
        i += RB;
    }
    while i < m {
        let q1: Vec<[f32; 1]> = q[i * l..(i + 1) * l].iter().map(|v| [*v]).collect();
        tn_block::<1>(a, n, i, j0, w, &q1, zt);
        i += 1;
    }
}

/// `zt[c, :] += Σ_{t<RB} Q[i+t, c] · A[i+t, j0..j0+w]`, one FMA at a time in `t` order
/// (`qb[c][t] = Q[i+t, c]`).
#[inline(always)]
fn tn_block<const RB: usize>(
    a: &[f32],
    n: usize,
    i: usize,
    j0: usize,
    w: usize,
    qb: &[[f32; RB]],
    zt: &mut [Lane],
) {
    let wv = w.div_ceil(LANES);
    let arows: [&[f32]; RB] = std::array::from_fn(|t| &a[(i + t) * n + j0..(i + t) * n + j0 + w]);
    for v in 0..wv {
        let lo = v * LANES;
        let av: [Lane; RB] = std::array::from_fn(|t| {
            let mut lane = [0f32; LANES];
            if lo + LANES <= w {
                lane.copy_from_slice(&arows[t][lo..lo + LANES]);
            } else {
                lane[..w - lo].copy_from_slice(&arows[t][lo..w]);
            }
            lane
        });
        for (qc, z) in qb.iter().zip(zt[v..].iter_mut().step_by(wv)) {
            let mut acc = *z;
            for t in 0..RB {
                for k in 0..LANES {
                    acc[k] = qc[t].mul_add(av[t][k], acc[k]);
                }
            }
            *z = acc;
        }
    }
}

/// `x` (`k×l`) as `k·nv` lanes, row by row, zero-padded to `nv·16` columns.
fn pad(x: ArrayView2<f32>, nv: usize) -> Vec<Lane> {
    let mut p = vec![[0f32; LANES]; x.nrows() * nv];
    for (row, dst) in x.rows().into_iter().zip(p.chunks_exact_mut(nv)) {
        for (c, v) in row.iter().enumerate() {
            dst[c / LANES][c % LANES] = *v;
        }
    }
    p
}

/// Picks the register blocking for `nv` lane blocks and the instruction set at run time.
fn dispatch(nv: usize, a: &[f32], n: usize, xp: &[Lane], l: usize, out: &mut [f32]) {
    macro_rules! by_nv {
        ($run:ident, $budget:expr) => {
            match nv {
                1 => $run::<1, { $budget / 1 }>(a, n, xp, l, out),
                2 => $run::<2, { $budget / 2 }>(a, n, xp, l, out),
                3 => $run::<3, { $budget / 3 }>(a, n, xp, l, out),
                4 => $run::<4, { $budget / 4 }>(a, n, xp, l, out),
                5 => $run::<5, { max1($budget / 5) }>(a, n, xp, l, out),
                6 => $run::<6, { max1($budget / 6) }>(a, n, xp, l, out),
                7 => $run::<7, { max1($budget / 7) }>(a, n, xp, l, out),
                _ => $run::<8, { max1($budget / 8) }>(a, n, xp, l, out),
            }
        };
    }
    match isa() {
        // 32 zmm registers: up to 24 accumulators (16 lanes each).
        // SAFETY: `isa` detected the features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { by_nv!(run_avx512, 24) },
        // 16 ymm registers, two per lane block: up to 6 lane blocks of accumulators.
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { by_nv!(run_avx2, 6) },
        Isa::Portable => by_nv!(run_portable, 8),
    }
}

const fn max1(x: usize) -> usize {
    if x == 0 {
        1
    } else {
        x
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn run_avx512<const NV: usize, const RB: usize>(
    a: &[f32],
    n: usize,
    xp: &[Lane],
    l: usize,
    out: &mut [f32],
) {
    run::<NV, RB>(a, n, xp, l, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<const NV: usize, const RB: usize>(
    a: &[f32],
    n: usize,
    xp: &[Lane],
    l: usize,
    out: &mut [f32],
) {
    run::<NV, RB>(a, n, xp, l, out)
}

fn run_portable<const NV: usize, const RB: usize>(
    a: &[f32],
    n: usize,
    xp: &[Lane],
    l: usize,
    out: &mut [f32],
) {
    run::<NV, RB>(a, n, xp, l, out)
}

/// Rows of `A·X` in blocks of `RB`, then one at a time for the tail, accumulated in whole lane
/// blocks (so the accumulators stay in registers) and copied to `out` at the end.
#[inline(always)]
fn run<const NV: usize, const RB: usize>(
    a: &[f32],
    n: usize,
    xp: &[Lane],
    l: usize,
    out: &mut [f32],
) {
    let outputs = out.len() / l;
    let mut acc = vec![[[0f32; LANES]; NV]; outputs];
    let mut o = 0;
    while o + RB <= outputs {
        let blk: &mut [[Lane; NV]; RB] = (&mut acc[o..o + RB]).try_into().expect("RB");
        ax_block::<NV, RB>(a, n, xp, blk, o);
        o += RB;
    }
    while o < outputs {
        let blk: &mut [[Lane; NV]; 1] = (&mut acc[o..o + 1]).try_into().expect("1");
        ax_block::<NV, 1>(a, n, xp, blk, o);
        o += 1;
    }
    for (dst, src) in out.chunks_exact_mut(l).zip(&acc) {
        for (c, d) in dst.iter_mut().enumerate() {
            *d = src[c / LANES][c % LANES];
        }
    }
}

/// `blk[r] = Σ_j A[o+r, j] · X[j, :]` for `r < RB`, each `NV` lane blocks wide.
#[inline(always)]
fn ax_block<const NV: usize, const RB: usize>(
    a: &[f32],
    n: usize,
    xp: &[Lane],
    blk: &mut [[Lane; NV]; RB],
    o: usize,
) {
    let mut acc = *blk;
    let arows: [&[f32]; RB] = std::array::from_fn(|r| &a[(o + r) * n..(o + r + 1) * n]);
    for (j, xj) in xp.chunks_exact(NV).enumerate().take(n) {
        let xj: &[Lane; NV] = xj.try_into().expect("NV lanes");
        for r in 0..RB {
            fma_row(&mut acc[r], arows[r][j], xj);
        }
    }
    *blk = acc;
}

#[inline(always)]
fn fma_row<const NV: usize>(acc: &mut [Lane; NV], s: f32, x: &[Lane; NV]) {
    for v in 0..NV {
        for t in 0..LANES {
            acc[v][t] = s.mul_add(x[v][t], acc[v][t]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::gaussian_matrix;

    /// f64 reference product.
    fn reference(a: ArrayView2<f32>, x: ArrayView2<f32>) -> Array2<f64> {
        a.mapv(f64::from).dot(&x.mapv(f64::from))
    }

    fn check(got: &Array2<f32>, want: &Array2<f64>, inner: usize) {
        assert_eq!(got.dim(), want.dim());
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        for (g, w) in got.iter().zip(want) {
            // f32 accumulation over `inner` terms.
            assert!(
                (f64::from(*g) - w).abs() <= 4.0 * inner as f64 * f64::from(f32::EPSILON) * scale,
                "{g} vs {w}"
            );
        }
    }

    #[test]
    fn products_match_f64_for_every_width_and_tail() {
        for &(m, n) in &[(1usize, 1usize), (7, 3), (130, 67), (67, 200)] {
            let a = gaussian_matrix(m, n, 1);
            for &l in &[1usize, 5, 16, 17, 26, 33, 48, 64, 65, 100, 128] {
                let x = gaussian_matrix(n, l, 2);
                let q = gaussian_matrix(m, l, 3);
                check(
                    &matmul(a.view(), x.view()).unwrap(),
                    &reference(a.view(), x.view()),
                    n,
                );
                check(
                    &matmul_tn(a.view(), q.view()).unwrap(),
                    &reference(a.t(), q.view()),
                    m,
                );
                // A transposed skinny operand (column-major view) gives the same bits.
                let xt = x.t().to_owned();
                assert_eq!(
                    matmul(a.view(), xt.t()).unwrap(),
                    matmul(a.view(), x.view()).unwrap()
                );
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        let a = gaussian_matrix(8, 8, 1);
        assert!(matmul(a.view(), gaussian_matrix(8, MAX_COLS + 1, 2).view()).is_none());
        assert!(matmul(a.t(), gaussian_matrix(8, 4, 2).view()).is_none());
        assert!(matmul_tn(a.view(), Array2::<f32>::zeros((8, 0)).view()).is_none());
    }

    /// Each output is one FMA chain in index order: compare with that chain written out.
    #[test]
    fn each_output_is_one_fma_chain_in_order() {
        let (m, n, l) = (70, 90, 26);
        let a = gaussian_matrix(m, n, 4);
        let x = gaussian_matrix(n, l, 5);
        let q = gaussian_matrix(m, l, 6);
        let y = matmul(a.view(), x.view()).unwrap();
        let z = matmul_tn(a.view(), q.view()).unwrap();
        for i in 0..m {
            for c in 0..l {
                let want = (0..n).fold(0f32, |s, j| a[[i, j]].mul_add(x[[j, c]], s));
                assert_eq!(y[[i, c]].to_bits(), want.to_bits());
            }
        }
        for j in 0..n {
            for c in 0..l {
                let want = (0..m).fold(0f32, |s, i| a[[i, j]].mul_add(q[[i, c]], s));
                assert_eq!(z[[j, c]].to_bits(), want.to_bits());
            }
        }
        // And the thread count does not matter.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| matmul_tn(a.view(), q.view()).unwrap()), z);
        assert_eq!(pool.install(|| matmul(a.view(), x.view()).unwrap()), y);
    }
}
