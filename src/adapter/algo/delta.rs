//! The fixed `ΔW` of the algorithms whose update does not depend on the base weight (LoRA,
//! LoCon+Tucker, LoHa, LoKr, full, norm), rebuilt in f64 and rounded once; and the factor-space
//! views ([`product_form`], [`kron_halves`]) that let `resize` lower them without forming `d×k`.
//! Never reads a base weight (that is [`super::base`]).

use super::factors::{Factors, KronHalf};

/// `U[i, (q, s)] = Σⱼ t[i,j,s]·wb[j,q]`: the Tucker core contracted with its input-side factor,
/// `t` r1×r2×kk and `wb` r2×Q, giving r1×(Q·kk). With `wa` r1×P the rebuilt half is
/// `waᵀ·U`, i.e. `out[p, q, s] = Σᵢⱼ t[i,j,s]·wb[j,q]·wa[i,p]` (ComfyUI `tucker_weight`,
/// LyCORIS `rebuild_tucker`).
pub fn tucker_core(
    t: &[f32],
    wb: &[f32],
    (r1, r2, kk): (usize, usize, usize),
    q: usize,
) -> Vec<f64> {
    let mut u = vec![0f64; r1 * q * kk];
    for i in 0..r1 {
        for j in 0..r2 {
            for (qq, &w) in wb[j * q..(j + 1) * q].iter().enumerate() {
                let w = w as f64;
                for s in 0..kk {
                    u[(i * q + qq) * kk + s] += t[(i * r2 + j) * kk + s] as f64 * w;
                }
            }
        }
    }
    u
}

pub(super) fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// A d×R by R×k product held by its factors in f64, evaluated one row at a time.
struct Product {
    b: Vec<f64>,
    a: Vec<f64>,
    r: usize,
}

impl Product {
    fn row_into(&self, i: usize, k: usize, acc: &mut [f64]) {
        acc.fill(0.0);
        for (kk, &bik) in self.b[i * self.r..(i + 1) * self.r].iter().enumerate() {
            if bik == 0.0 {
                continue;
            }
            for (o, &x) in acc.iter_mut().zip(&self.a[kk * k..(kk + 1) * k]) {
                *o += bik * x;
            }
        }
    }
}

/// The values of every tensor of a module, in [`Factors::data`] order, with the shapes the reader
/// checked; what [`delta`] rebuilds `ΔW` from.
pub struct Loaded<'a> {
    pub factors: &'a Factors,
    pub values: Vec<crate::adapter::data::Values>,
}

/// `ΔW` (d×k, canonical, scale included) of a module from its loaded values: each element is
/// accumulated in f64 and rounded once to f32. Rows are computed in parallel with f64 scratch of
/// one row, so the working memory is the f32 output plus the (small) factors.
///
/// `rank` is the module's rank (LoRA/LoHa inner dimension), `kk` its kernel area.
pub fn delta(l: &Loaded, d: usize, k: usize, rank: usize, kk: usize, scale: f64) -> Vec<f32> {
    use rayon::prelude::*;
    let v = &l.values;
    let mut out = vec![0f32; d * k];
    if d == 0 || k == 0 {
        return out;
    }
    // Every algorithm but LoKr and full is one product or the Hadamard product of two.
    let products: Vec<Product> = match l.factors {
        Factors::Lora { .. } => vec![Product {
            b: f64s(&v[1]),
            a: f64s(&v[0]),
            r: rank,
        }],
        Factors::LoraTucker { .. } => vec![Product {
            b: f64s(&v[0]),
            a: tucker_core(&v[1], &v[2], (rank, rank, kk), k / kk),
            r: rank,
        }],
        Factors::Loha { tucker: None, .. } => vec![
            Product {
                b: f64s(&v[0]),
                a: f64s(&v[1]),
                r: rank,
            },
            Product {
                b: f64s(&v[2]),
                a: f64s(&v[3]),
                r: rank,
            },
        ],
        Factors::Loha {
            tucker: Some(_), ..
        } => vec![
            Product {
                b: f64s(&crate::adapter::data::transpose(&v[0], rank, d)),
                a: tucker_core(&v[4], &v[1], (rank, rank, kk), k / kk),
                r: rank,
            },
            Product {
                b: f64s(&crate::adapter::data::transpose(&v[2], rank, d)),
                a: tucker_core(&v[5], &v[3], (rank, rank, kk), k / kk),
                r: rank,
            },
        ],
        Factors::Lokr { .. } => {
            // The dense halves as resize lowers them: one reading of the factors for both.
            let ((m1, _, c), (m2, b, n2)) = kron_halves(l, kk).expect("a LoKr module");
            out.par_chunks_mut(k).enumerate().for_each(|(row, o)| {
                let (i1, i2) = (row / b, row % b);
                let src = &m2[i2 * n2..(i2 + 1) * n2];
                for j1 in 0..c {
                    let x = m1[i1 * c + j1] * scale;
                    for (o, &y) in o[j1 * n2..(j1 + 1) * n2].iter_mut().zip(src) {
                        *o = (x * y) as f32;
                    }
                }
            });
            return out;
        }
        Factors::Full { .. } | Factors::Norm { .. } => {
            for (o, &x) in out.iter_mut().zip(v[0].iter()) {
                *o = (x as f64 * scale) as f32;
            }
            return out;
        }
        f => {
            debug_assert!(f.needs_base());
            unreachable!("W0-dependent updates are built by delta_from_base")
        }
    };
    out.par_chunks_mut(k).enumerate().for_each_init(
        || (vec![0f64; k], vec![0f64; k]),
        |(acc, tmp), (i, o)| {
            products[0].row_into(i, k, acc);
            for p in &products[1..] {
                p.row_into(i, k, tmp);
                for (x, &y) in acc.iter_mut().zip(tmp.iter()) {
                    *x *= y;
                }
            }
            for (o, &x) in o.iter_mut().zip(acc.iter()) {
                *o = (x * scale) as f32;
            }
        },
    );
    out
}

/// One LoKr half rebuilt as rows×(cols·kk) in f64 (small: the size of the half itself).
fn half(
    h: &KronHalf,
    v: &[crate::adapter::data::Values],
    rows: usize,
    cols: usize,
    kk: usize,
) -> Vec<f64> {
    let n = cols * kk;
    let dense = |p: Product| {
        let mut m = vec![0f64; rows * n];
        for (i, row) in m.chunks_exact_mut(n).enumerate() {
            p.row_into(i, n, row);
        }
        m
    };
    match h {
        KronHalf::Whole(_) => f64s(&v[0]),
        KronHalf::LowRank { rank, .. } => dense(Product {
            b: f64s(&v[0]),
            a: f64s(&v[1]),
            r: *rank,
        }),
        KronHalf::Tucker { rank, .. } => dense(Product {
            b: f64s(&crate::adapter::data::transpose(&v[1], *rank, rows)),
            a: tucker_core(&v[0], &v[2], (*rank, *rank, kk), cols),
            r: *rank,
        }),
    }
}

/// An exact low-rank form `ΔW / scale = P·Q` (`P` d×R, `Q` R×k, row-major f32 rounded from f64)
/// of every algorithm built from products: LoRA (R = r), LoCon with a Tucker core (R = r,
/// `Q` = the core contracted with `down`), and LoHa (R = r², the row-wise Khatri–Rao form of the
/// Hadamard product: `(B₁A₁) ⊙ (B₂A₂) = (B₁ ⊙ᵣ B₂)·(A₁ ⊙꜀ A₂)` with
/// `P[i, p·r+q] = B₁[i,p]·B₂[i,q]` and `Q[p·r+q, j] = A₁[p,j]·A₂[q,j]`). `None` for LoKr and full
/// modules, which have no such form of small R ([`kron_halves`] serves LoKr).
pub fn product_form(
    l: &Loaded,
    d: usize,
    k: usize,
    rank: usize,
    kk: usize,
) -> Option<(Vec<f32>, Vec<f32>, usize)> {
    let v = &l.values;
    let f32s = |x: Vec<f64>| x.into_iter().map(|y| y as f32).collect::<Vec<f32>>();
    let halves: Vec<(Vec<f64>, Vec<f64>)> = match l.factors {
        Factors::Lora { .. } => return Some((v[1].to_vec(), v[0].to_vec(), rank)),
        Factors::LoraTucker { .. } => {
            return Some((
                v[0].to_vec(),
                f32s(tucker_core(&v[1], &v[2], (rank, rank, kk), k / kk)),
                rank,
            ))
        }
        Factors::Loha { tucker: None, .. } => {
            vec![(f64s(&v[0]), f64s(&v[1])), (f64s(&v[2]), f64s(&v[3]))]
        }
        Factors::Loha {
            tucker: Some(_), ..
        } => vec![
            (
                f64s(&crate::adapter::data::transpose(&v[0], rank, d)),
                tucker_core(&v[4], &v[1], (rank, rank, kk), k / kk),
            ),
            (
                f64s(&crate::adapter::data::transpose(&v[2], rank, d)),
                tucker_core(&v[5], &v[3], (rank, rank, kk), k / kk),
            ),
        ],
        // LoKr, full, norm and the W0-dependent updates (`Factors::needs_base`).
        _ => return None,
    };
    let (b1, a1) = &halves[0];
    let (b2, a2) = &halves[1];
    let big = rank * rank;
    let mut p = vec![0f32; d * big];
    for i in 0..d {
        for x in 0..rank {
            for y in 0..rank {
                p[i * big + x * rank + y] = (b1[i * rank + x] * b2[i * rank + y]) as f32;
            }
        }
    }
    let mut q = vec![0f32; big * k];
    for x in 0..rank {
        for y in 0..rank {
            let row = &mut q[(x * rank + y) * k..(x * rank + y + 1) * k];
            for (j, o) in row.iter_mut().enumerate() {
                *o = (a1[x * k + j] * a2[y * k + j]) as f32;
            }
        }
    }
    Some((p, q, big))
}

/// The two dense halves of a LoKr module, `ΔW / scale = kron(W₁, W₂)` with `W₁` a×c and `W₂`
/// b×(d'·kk) (a conv's `W₁` broadcast over the kernel is the same Kronecker product with `W₂`
/// flattened): `((W₁, a, c), (W₂, b, d'·kk))`. `None` for other algorithms.
#[allow(clippy::type_complexity)]
pub fn kron_halves(
    l: &Loaded,
    kk: usize,
) -> Option<((Vec<f64>, usize, usize), (Vec<f64>, usize, usize))> {
    let Factors::Lokr {
        w1,
        w2,
        w1_shape: (a, c),
        w2_shape: (b, dd),
    } = l.factors
    else {
        return None;
    };
    let n1 = w1.data().len();
    Some((
        (half(w1, &l.values[..n1], *a, *c, 1), *a, *c),
        (half(w2, &l.values[n1..], *b, *dd, kk), *b, dd * kk),
    ))
}

/// The LoKr scale rule of ComfyUI `lokr.py` `calculate_weight` (and LyCORIS `LokrModule`, which
/// stores `alpha = dim` when both halves are whole): `alpha / dim` where `dim` is the rank of the
/// decomposed half (`w2`'s when both are), 1 when both halves are stored whole or no alpha is
/// stored.
pub fn lokr_scale(w1: &KronHalf, w2: &KronHalf, alpha: Option<f64>) -> (usize, f64) {
    let rank_of = |h: &KronHalf| match h {
        KronHalf::Whole(_) => None,
        KronHalf::LowRank { rank, .. } | KronHalf::Tucker { rank, .. } => Some(*rank),
    };
    let dim = rank_of(w2).or_else(|| rank_of(w1));
    match (dim, alpha) {
        (Some(r), Some(a)) => (r, a / r as f64),
        (Some(r), None) => (r, 1.0),
        (None, _) => (0, 1.0),
    }
}
