//! The LoRA-family algorithms a module can carry, and the exact `ΔW` of each.
//!
//! Every algorithm is read from its producer's own layout and rebuilt the way the loaders people
//! use rebuild it: ComfyUI `comfy/weight_adapter/{lora,loha,lokr}.py` `calculate_weight` and
//! `base.py` (`tucker_weight`, `tucker_weight_from_conv`), which agree with the forward of
//! LyCORIS `lycoris/modules/{locon,loha,lokr,full}.py` (Yeh et al. 2024, "Navigating
//! Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation").
//!
//! Shapes are canonical and row-major: `d` output features, `k = in · kh · kw` input features
//! (kernel area `kk = kh · kw`, 1 for linear layers). The rebuilt `ΔW` is accumulated in f64 and
//! rounded once to f32, scale included.

use super::Data;

/// The factors of one module, by algorithm.
#[derive(Debug, Clone)]
pub enum Factors {
    /// LoRA / LoCon: `ΔW = scale · B·A`, `A` r×k (`lora_down`, `lora_A`), `B` d×r (`lora_up`,
    /// `lora_B`).
    Lora { a: Data, b: Data },
    /// LoCon with a CP/Tucker conv core (`lora_mid`, LyCORIS `use_tucker`): `up` d×r, `mid`
    /// r×r×kk, `down` r×in; `ΔW[o, i, s] = scale · Σₘₙ up[o,m]·mid[m,n,s]·down[n,i]` (ComfyUI
    /// `tucker_weight_from_conv`, einsum `m n ..., i m, n j -> i j ...`).
    LoraTucker { up: Data, mid: Data, down: Data },
    /// LoHa (Hyeon-Woo et al. 2022, FedPara): `ΔW = scale · (w1a·w1b) ⊙ (w2a·w2b)`, `w1a`/`w2a`
    /// d×r, `w1b`/`w2b` r×k. With Tucker cores (`hada_t1`, `hada_t2`, r×r×kk) each half is
    /// `Σᵢⱼ t[i,j,s]·wb[j,q]·wa[i,p]` with `wa` r×d and `wb` r×in (ComfyUI `loha.py`, einsum
    /// `i j k l, j r, i p -> p r k l`).
    Loha {
        w1a: Data,
        w1b: Data,
        w2a: Data,
        w2b: Data,
        tucker: Option<(Data, Data)>,
    },
    /// LoKr (Kronecker product): `ΔW = scale · kron(w1, w2)`, `w1` a×c, `w2` b×(d'·kk) with
    /// `a·b = d` and `c·d' = in`; for a conv, `w1` is broadcast over the kernel (ComfyUI
    /// `lokr.py` unsqueezes it), so `ΔW[i₁b+i₂, (j₁d'+j₂)·kk+s] = w1[i₁,j₁]·w2[i₂, j₂·kk+s]`.
    Lokr {
        w1: KronHalf,
        w2: KronHalf,
        /// `(a, c)`.
        w1_shape: (usize, usize),
        /// `(b, d')` (without the kernel).
        w2_shape: (usize, usize),
    },
    /// Full-rank difference (`diff`, LyCORIS `full`): `ΔW = diff`, scale 1.
    Full { diff: Data },
    /// A norm layer's weight delta (`w_norm`, LyCORIS `modules/norms.py` `NormModule` with
    /// `train_norm`): `Δw = w_norm` on the 1-D weight of a LayerNorm/GroupNorm (d×1 here), scale
    /// 1; its `b_norm` is the module's bias delta. `get_diff_weight(multiplier)` scales both.
    Norm { w: Data },
    /// LyCORIS diagonal OFT (`modules/diag_oft.py` `DiagOFTModule`, `functional/diag_oft.py`
    /// `get_r`, `_diff_weight`): `oft_blocks` n×s×s (n·s = d), `Q = B − Bᵀ` per block, scaled
    /// down to Frobenius norm `constraint` when `‖Q‖ + 1e-8` exceeds it (`constraint = alpha · d`,
    /// `alpha` as stored; none when 0), the Cayley rotation `R = (I + Q)(I − Q)⁻¹`, and
    /// `W' = rescale ⊙ (blockdiag(R)ᵀ·W0)` (einsum `k n m, k n ... -> k m ...`: row `m` of a
    /// block is `Σₙ R[n,m]·W0[n]`), `rescale` d values (1 when absent). The update depends on W0.
    Oft {
        blocks: Data,
        rescale: Option<Data>,
        block_num: usize,
        block_size: usize,
        /// The Frobenius bound on `Q` (`alpha · d`); 0 for none.
        constraint: f64,
    },
    /// LyCORIS BOFT (`modules/boft.py` `ButterflyOFTModule`, `functional/boft.py`
    /// `_diff_weight`): `oft_blocks` m×n×b×b (n·b = d, b even), each block a Cayley rotation as
    /// in diag-OFT (one constraint over all of them, `alpha · d`); stage `i` permutes W0's rows
    /// (groups of `2^i·b/2` interleaved in pairs), applies `blockdiag(Rᵢ)·` (einsum
    /// `b i j, b j ... -> b i ...`, not transposed), and permutes back; `W' = rescale ⊙ W_m`.
    /// With a multiplier `s`, each stage's blocks are `s·R + (1 − s)·I`. Depends on W0.
    Boft {
        blocks: Data,
        rescale: Option<Data>,
        stages: usize,
        block_num: usize,
        block_size: usize,
        constraint: f64,
    },
    /// PEFT's OFT (`tuners/oft/layer.py` `OFTRotationModule.get_weight`, `Linear.merge`,
    /// `Conv2d.merge`): `oft_R.weight` r×n holds each block's strict upper triangle (row-major,
    /// `triu_indices(s, s, 1)`, `n = s(s−1)/2`); `Q = M − Mᵀ`, with `coft` each block's `Q`
    /// scaled to Frobenius norm `eps/√r` when above it (`_project_batch`); `R` by the
    /// Cayley–Neumann series `I + 2Q + 2Q² + … + 2Q^{t−2} + Q^{t−1}` (`t` terms) or exactly
    /// `(I − Q)(I + Q)⁻¹` (`torch.linalg.solve(I + Q, I − Q, left=False)`); `block_share` repeats one
    /// block. The rotation acts on the input side: `W' = W0·blockdiag(R)ᵀ` with W0 viewed as
    /// d×(in·kh·kw). Depends on W0.
    PeftOft {
        weight: Data,
        block_size: usize,
        /// Rows of `oft_R.weight` (1 with `block_share`).
        blocks: usize,
        block_share: bool,
        cayley: PeftCayley,
        /// `eps` of `coft`, when set.
        coft_eps: Option<f64>,
    },
    /// IA3: `w` broadcast over the output rows or the input channels (`on_input`). LyCORIS
    /// (`modules/ia3.py` `_ia3_weight`, [`Ia3Rule::Lycoris`]): `W' = W0 ⊙ (1 + w)`. PEFT
    /// (`tuners/ia3/layer.py` `merge`, [`Ia3Rule::Peft`]): `W' = W0 ⊙ w`, and on the output side
    /// the bias too, `b' = b0 ⊙ w`. Depends on W0.
    Ia3 {
        weight: Data,
        on_input: bool,
        rule: Ia3Rule,
    },
    /// LyCORIS GLoRA (`modules/glora.py` `_glora_weight`, ComfyUI `weight_adapter/glora.py`
    /// "new" layout): `ΔW = scale · (W0·a1·a2 + b1·b2)`, `a1` in×r, `a2` r×in (applied per
    /// kernel position: einsum `o i ..., i j -> o j ...`), `b1` d×r, `b2` r×k; scale
    /// `alpha / r`. Depends on W0.
    Glora {
        a1: Data,
        a2: Data,
        b1: Data,
        b2: Data,
        rank: usize,
    },
}

/// How PEFT's OFT turns a skew-symmetric `Q` into a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftCayley {
    /// `use_cayley_neumann` with `num_cayley_neumann_terms` terms.
    Neumann(usize),
    /// The exact Cayley transform.
    Exact,
}

/// How an IA3 vector scales the base weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ia3Rule {
    /// LyCORIS: `W0 ⊙ (1 + w)` (initialised at 0).
    Lycoris,
    /// PEFT: `W0 ⊙ w` (initialised at 1), output-side vectors scale the bias as well.
    Peft,
}

/// One half of a LoKr product.
#[derive(Debug, Clone)]
pub enum KronHalf {
    /// Stored whole (`lokr_w1`, `lokr_w2`).
    Whole(Data),
    /// `a·b` (`lokr_wN_a` rows×r, `lokr_wN_b` r×cols).
    LowRank { a: Data, b: Data, rank: usize },
    /// Tucker (`lokr_t2` r×r×kk, `lokr_w2_a` r×rows, `lokr_w2_b` r×cols), only for `w2`.
    Tucker {
        t: Data,
        a: Data,
        b: Data,
        rank: usize,
    },
}

/// The algorithm of a module, as reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    Lora,
    /// LoCon with a Tucker core.
    #[serde(rename = "lora-tucker")]
    LoraTucker,
    Loha,
    Lokr,
    Full,
    /// A norm layer's weight and bias deltas (`w_norm`, `b_norm`).
    Norm,
    /// Diagonal (block-diagonal) OFT.
    #[serde(rename = "diag-oft")]
    DiagOft,
    Ia3,
    Glora,
    Boft,
    /// PEFT's OFT (`peft_type` OFT).
    #[serde(rename = "peft-oft")]
    PeftOft,
}

impl std::fmt::Display for Algo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algo::Lora => "lora",
            Algo::LoraTucker => "lora-tucker",
            Algo::Loha => "loha",
            Algo::Lokr => "lokr",
            Algo::Full => "full",
            Algo::Norm => "norm",
            Algo::DiagOft => "diag-oft",
            Algo::Ia3 => "ia3",
            Algo::Glora => "glora",
            Algo::Boft => "boft",
            Algo::PeftOft => "peft-oft",
        })
    }
}

impl Factors {
    pub fn algo(&self) -> Algo {
        match self {
            Factors::Lora { .. } => Algo::Lora,
            Factors::LoraTucker { .. } => Algo::LoraTucker,
            Factors::Loha { .. } => Algo::Loha,
            Factors::Lokr { .. } => Algo::Lokr,
            Factors::Full { .. } => Algo::Full,
            Factors::Norm { .. } => Algo::Norm,
            Factors::Oft { .. } => Algo::DiagOft,
            Factors::Ia3 { .. } => Algo::Ia3,
            Factors::Glora { .. } => Algo::Glora,
            Factors::Boft { .. } => Algo::Boft,
            Factors::PeftOft { .. } => Algo::PeftOft,
        }
    }

    /// The update is a function of the base weight itself (OFT's rotation `R·W0`, IA3's
    /// `W0 ⊙ w`), not a fixed `ΔW`: it is built by [`delta_from_base`] with the base at hand,
    /// and cannot be lowered to LoRA or undone from the merged weights alone.
    pub fn needs_base(&self) -> bool {
        matches!(
            self,
            Factors::Oft { .. }
                | Factors::Boft { .. }
                | Factors::PeftOft { .. }
                | Factors::Ia3 { .. }
                | Factors::Glora { .. }
        )
    }

    /// The plain LoRA factors `(A, B)`, when the module is plain LoRA.
    pub fn lora(&self) -> Option<(&Data, &Data)> {
        match self {
            Factors::Lora { a, b } => Some((a, b)),
            _ => None,
        }
    }

    /// Every tensor of the module, in a fixed order.
    pub fn data(&self) -> Vec<&Data> {
        every_tensor!(self, data)
    }

    /// Mutable access to every tensor (same order as [`Self::data`]).
    pub fn data_mut(&mut self) -> Vec<&mut Data> {
        every_tensor!(self, data_mut)
    }
}

/// The tensors of a [`Factors`] in their fixed order, as `&` or `&mut` (match ergonomics give
/// the borrow of the scrutinee), so [`Factors::data`] and [`Factors::data_mut`] cannot drift.
macro_rules! every_tensor {
    ($factors:expr, $half:ident) => {
        match $factors {
            Factors::Lora { a, b } => vec![a, b],
            Factors::LoraTucker { up, mid, down } => vec![up, mid, down],
            Factors::Loha {
                w1a,
                w1b,
                w2a,
                w2b,
                tucker,
            } => {
                let mut v = vec![w1a, w1b, w2a, w2b];
                if let Some((t1, t2)) = tucker {
                    v.push(t1);
                    v.push(t2);
                }
                v
            }
            Factors::Lokr { w1, w2, .. } => {
                let mut v = w1.$half();
                v.extend(w2.$half());
                v
            }
            Factors::Full { diff } => vec![diff],
            Factors::Norm { w } => vec![w],
            Factors::Oft {
                blocks, rescale, ..
            }
            | Factors::Boft {
                blocks, rescale, ..
            } => {
                let mut v = vec![blocks];
                v.extend(rescale);
                v
            }
            Factors::Ia3 { weight, .. } | Factors::PeftOft { weight, .. } => vec![weight],
            Factors::Glora { a1, a2, b1, b2, .. } => vec![a1, a2, b1, b2],
        }
    };
}
use every_tensor;

impl KronHalf {
    fn data(&self) -> Vec<&Data> {
        match self {
            KronHalf::Whole(w) => vec![w],
            KronHalf::LowRank { a, b, .. } => vec![a, b],
            KronHalf::Tucker { t, a, b, .. } => vec![t, a, b],
        }
    }
    fn data_mut(&mut self) -> Vec<&mut Data> {
        match self {
            KronHalf::Whole(w) => vec![w],
            KronHalf::LowRank { a, b, .. } => vec![a, b],
            KronHalf::Tucker { t, a, b, .. } => vec![t, a, b],
        }
    }
}

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

fn f64s(v: &[f32]) -> Vec<f64> {
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
    pub values: Vec<super::Values>,
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
                b: f64s(&super::transpose(&v[0], rank, d)),
                a: tucker_core(&v[4], &v[1], (rank, rank, kk), k / kk),
                r: rank,
            },
            Product {
                b: f64s(&super::transpose(&v[2], rank, d)),
                a: tucker_core(&v[5], &v[3], (rank, rank, kk), k / kk),
                r: rank,
            },
        ],
        Factors::Lokr {
            w1,
            w2,
            w1_shape: (a, c),
            w2_shape: (b, dd),
        } => {
            let n1 = w1.data().len();
            let m1 = half(w1, &v[..n1], *a, *c, 1);
            let m2 = half(w2, &v[n1..], *b, *dd, kk);
            let (b, c) = (*b, *c);
            let n2 = dd * kk;
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
        Factors::Oft { .. }
        | Factors::Boft { .. }
        | Factors::PeftOft { .. }
        | Factors::Ia3 { .. }
        | Factors::Glora { .. } => {
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
fn half(h: &KronHalf, v: &[super::Values], rows: usize, cols: usize, kk: usize) -> Vec<f64> {
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
            b: f64s(&super::transpose(&v[1], *rank, rows)),
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
                f64s(&super::transpose(&v[0], rank, d)),
                tucker_core(&v[4], &v[1], (rank, rank, kk), k / kk),
            ),
            (
                f64s(&super::transpose(&v[2], rank, d)),
                tucker_core(&v[5], &v[3], (rank, rank, kk), k / kk),
            ),
        ],
        Factors::Lokr { .. }
        | Factors::Full { .. }
        | Factors::Norm { .. }
        | Factors::Oft { .. }
        | Factors::Ia3 { .. }
        | Factors::Boft { .. }
        | Factors::PeftOft { .. }
        | Factors::Glora { .. } => return None,
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

/// `ΔW = W' − W0` (d×k canonical, row-major) of an update that depends on the base weight
/// ([`Factors::needs_base`]), from the base `w0` (d×k, f32 as stored), accumulated in f64 and
/// rounded once. `multiplier` is LyCORIS' own (`make_weight(scale=multiplier)` /
/// `get_diff_weight(multiplier)`): for OFT `ΔW = rescale ⊙ (m·(R − I))ᵀ·W0 + (rescale − 1) ⊙ W0`
/// per block (`diag_oft.py` `make_weight` with `diff=True`), for IA3 `ΔW = m · W0 ⊙ w`.
/// ComfyUI differs from LyCORIS' module here (`comfy/weight_adapter/oft.py`: its strength
/// multiplies the rotation twice, `rescale` is dropped and the constraint is `alpha`, not
/// `alpha · d`); at multiplier 1 without `rescale` or a binding constraint they agree. `kk` is the
/// kernel area, `k / kk` the input channels (IA3 `on_input`).
pub fn delta_from_base(l: &Loaded, w0: &[f32], d: usize, k: usize, multiplier: f64) -> Vec<f32> {
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
            ..
        } => {
            let (s, nb) = (*block_size, *blocks);
            let rs = peft_oft_rotations(&v[0], nb, s, *cayley, *coft_eps);
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
                            acc += row[b * s + i] as f64 * r[j * s + i];
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
/// (nb × s(s−1)/2).
pub fn peft_oft_rotations(
    vec: &[f32],
    nb: usize,
    s: usize,
    cayley: PeftCayley,
    coft_eps: Option<f64>,
) -> Vec<f64> {
    let n = s * (s - 1) / 2;
    let mut q = vec![0f64; nb * s * s];
    for b in 0..nb {
        let mut t = 0;
        for i in 0..s {
            for j in i + 1..s {
                let x = vec[b * n + t] as f64;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The core contraction against the einsum `i j s, j q, i p -> p q s` written as a plain
    /// quadruple loop.
    /// A Cayley rotation is orthogonal, and the constraint caps ‖Q‖.
    #[test]
    fn cayley_blocks_are_rotations() {
        let (n, s) = (2, 5);
        let blocks: Vec<f32> = (0..n * s * s)
            .map(|i| ((i as f32) * 0.61).sin() * 0.3)
            .collect();
        for constraint in [0.0, 0.1] {
            let r = cayley_blocks(&blocks, n, s, constraint);
            for b in 0..n {
                let rb = &r[b * s * s..(b + 1) * s * s];
                for i in 0..s {
                    for j in 0..s {
                        let dot: f64 = (0..s).map(|t| rb[t * s + i] * rb[t * s + j]).sum();
                        let want = if i == j { 1.0 } else { 0.0 };
                        assert!(
                            (dot - want).abs() < 1e-12,
                            "{constraint} {b} {i} {j}: {dot}"
                        );
                    }
                }
            }
        }
        // Bound binding: R close to I (‖R − I‖ ≈ 2‖Q‖ for small Q).
        let r = cayley_blocks(&blocks, n, s, 1e-3);
        let dev: f64 = (0..n)
            .flat_map(|b| (0..s).flat_map(move |i| (0..s).map(move |j| (b, i, j))))
            .map(|(b, i, j)| {
                let x = r[(b * s + i) * s + j] - if i == j { 1.0 } else { 0.0 };
                x * x
            })
            .sum::<f64>()
            .sqrt();
        assert!(dev < 2.1e-3 && dev > 1.9e-3, "{dev}");
    }

    #[test]
    fn tucker_core_and_its_output_factor_give_the_einsum() {
        let (r1, r2, kk, p, q) = (2, 3, 4, 5, 2);
        let f = |n: usize, s: f32| {
            (0..n)
                .map(|i| ((i as f32 + s) * 0.37).sin())
                .collect::<Vec<f32>>()
        };
        let (t, wa, wb) = (f(r1 * r2 * kk, 1.0), f(r1 * p, 2.0), f(r2 * q, 3.0));
        let u = tucker_core(&t, &wb, (r1, r2, kk), q);
        for pp in 0..p {
            for qq in 0..q {
                for s in 0..kk {
                    let mut want = 0f64;
                    for i in 0..r1 {
                        for j in 0..r2 {
                            want += t[(i * r2 + j) * kk + s] as f64
                                * wb[j * q + qq] as f64
                                * wa[i * p + pp] as f64;
                        }
                    }
                    let got: f64 = (0..r1)
                        .map(|i| wa[i * p + pp] as f64 * u[(i * q + qq) * kk + s])
                        .sum();
                    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
                }
            }
        }
    }
}
