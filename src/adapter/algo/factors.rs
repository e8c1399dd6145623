//! The factors a module carries, by algorithm ([`Factors`]), and their labels ([`Algo`]): data
//! only, with the tensors each holds. The leaf of [`super`]; `delta.rs` and `base.rs` rebuild
//! `ΔW` from them.
//!
//! Must not compute anything from the values.

use super::base_rule::BaseRule;
use crate::adapter::data::Data;

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
    ///
    /// OneTrainer's OFT v2 (`PeftType.OFT_2`, Nerogar/OneTrainer @23df383
    /// `modules/module/oft_utils.py` `OFTRotationModule`, `modules/module/LoRAModule.py`
    /// `OFTModule`) is the same parametrisation written single-file (`{module}.oft_R.weight`), always
    /// 5 Neumann terms and no `coft`; with `scaled_oft` the weight is divided by `2·√(s−1)` before
    /// the Cayley map (`scaled`), and a conv's weight is rotated without the
    /// transpose (`einsum("ork,rkc->orc", W, R)`: `W' = W0·blockdiag(R)`, [`OftConv::Plain`]).
    PeftOft {
        weight: Data,
        block_size: usize,
        /// Rows of `oft_R.weight` (1 with `block_share`).
        blocks: usize,
        block_share: bool,
        cayley: PeftCayley,
        /// `eps` of `coft`, when set.
        coft_eps: Option<f64>,
        /// OneTrainer's Scaled OFT: `Q` from `weight / (2·√(s−1))`.
        scaled: bool,
        /// How a conv base is rotated.
        conv: OftConv,
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
    /// PEFT VeRA (Kopiczko et al. 2024; `tuners/vera/layer.py` `get_delta_weight`):
    /// `ΔW = (λ_b ⊙ vera_B[:d])·(λ_d ⊙ vera_A[:, :k])`, the shared projections sliced to the base
    /// layer's shape. `a` is r×K with `λ_d` folded in (K, the widest targeted layer's input,
    /// ≥ k), `b` d×r with `λ_b` folded in. The update needs the base's shape (`k`), not its
    /// values.
    Vera { a: Data, b: Data },
    /// PEFT HRA (Yuan et al. 2024; `tuners/hra/layer.py` `get_delta_weight`, `Linear.merge`):
    /// `W' = W0·H` with `u` k×r (`hra_u`) and `H = Π_{i<r} (I − 2·ûᵢûᵢᵀ)`, `ûᵢ = uᵢ/‖uᵢ‖`; with
    /// `apply_GS` (`gram_schmidt`) `H = I − 2·U·Uᵀ` for `U` the Gram–Schmidt orthonormalised
    /// columns of `u`. Depends on W0.
    Hra { u: Data, gram_schmidt: bool },
    /// PEFT BOFT (`tuners/boft/layer.py` `get_delta_weight`, `Linear.merge`):
    /// `W' = (W0·Mᵀ) ⊙ s` for the butterfly `M = M_{m−1}···M_0`, `M_i = P_i·blockdiag(R_i)·P_iᵀ`
    /// (`P_i` from `block_butterfly_perm`, the identity for i = 0, so one factor is
    /// `W0·blockdiag(R)ᵀ`), each block `R = (I − S)(I + S)⁻¹` for `S = (B − Bᵀ)/2` of the stored
    /// block `B` (`cayley_batch`), `s` one scale per output row (`boft_s`). `blocks` holds each
    /// block's strict upper triangle of `S` (as [`Factors::PeftOft`]'s weight), factor by
    /// factor, `scale` d values. Depends on W0.
    PeftBoft {
        blocks: Data,
        scale: Data,
        block_num: usize,
        block_size: usize,
        /// `boft_n_butterfly_factor`, m ≥ 1.
        butterfly: usize,
    },
    /// PEFT MiSS (`tuners/miss/layer.py` `get_delta_weight_miss`, `get_delta_weight`): `block`
    /// as [`MissMode`] lays it out; the base's input width (and for `mini` its rows) come from
    /// the base. Depends on W0 (`bat`) or on its shape.
    Miss { block: Data, mode: MissMode },
    /// PEFT SHiRA (`tuners/shira/layer.py` `get_delta_weight`): `ΔW` zero but at the saved
    /// positions, `ΔW[rows[i], cols[i]] += values[i]` (a sparse COO tensor added to the base,
    /// scaling 1). `indices` holds the n rows then the n columns (as f32, each below 2²⁴). The
    /// base gives the shape.
    Shira { values: Data, indices: Data },
    /// PEFT RandLoRA (`tuners/randlora/layer.py` `get_scaled_bases`, `get_delta_weight`): `a`
    /// R×m, m = min(d, k), the scaled bases `λ ⊙ randlora_A ⊙ γ` flattened over (r, bases);
    /// `b` M×R, the shared `randlora_B` [M, bases, r] flattened, M ≥ max(d, k). With `b′` its
    /// first max(d, k) rows, `ΔW = scale · b′·a` when k ≤ d and `scale · (b′·a)ᵀ` otherwise. The
    /// module's `out_features` holds m and `in_features` M (the file gives no more).
    RandLora { a: Data, b: Data },
    /// PEFT RoAd (`tuners/road/layer.py` `Linear.merge`, `_get_delta_weight`): `W' = R·W0` with
    /// `R` acting on the output rows in groups of `group` (h = group/2): row `i` at position `j`
    /// of its group is `cos[i]·W0[i] − sin[i]·W0[i+h]` for `j < h`, `cos[i]·W0[i] +
    /// sin[i]·W0[i−h]` otherwise (`cos`/`sin` d values, `α·cos θ` and `α·sin θ` laid out per
    /// row by the reader). The bias turns the same way. Depends on W0.
    Road { cos: Data, sin: Data, group: usize },
    /// PEFT OSF (`tuners/osf/layer.py` `get_delta_weight`): `u` d×n, `s` n, `v` n×k, the
    /// trained low singular triplets; `ΔW = u·diag(s)·v − W0_low`, `W0_low` the sum of W0's n
    /// smallest singular triplets (what PEFT's reload rebuilds from the base). Depends on W0.
    Osf { u: Data, s: Data, v: Data },
    /// PEFT HiRA and GLoRA (`tuners/hira/layer.py` `_merge`, `tuners/glora/layer.py` `merge`):
    /// `W' = W0 + W0 ⊙ M + N`, `M` and `N` each a [`HadamardPart`] (HiRA: `M = B·A`, no `N`).
    /// Depends on W0 (`super::hadamard`).
    Hadamard {
        mul: HadamardPart,
        add: HadamardPart,
        tuner: HadamardTuner,
    },
    /// PEFT FRoD ([`FrodParts`]).
    Frod(FrodParts),
    /// PEFT's BEFT, DEFT, PEANuT, Super-Tuning and AdaMSS (`on_base.rs`): `tensors` as `rule`
    /// lists them. Depends on W0 (or on its shape).
    OnBase {
        rule: super::base_rule::BaseRule,
        tensors: Vec<Data>,
    },
}

/// PEFT FRoD (`tuners/frod/layer.py` `get_delta_weight`): `v` the shared k×k `frod_V` of
/// the module's category, `lambda` k values (`frod_lambda_l`), `positions` the n rows then the n
/// columns of the sparse `S` (as f32, each below 2²⁴), `values` its n values; `U` comes from W0
/// (`super::frod`). Depends on W0.
#[derive(Debug, Clone)]
pub struct FrodParts {
    pub v: Data,
    pub lambda: Data,
    pub positions: Data,
    pub values: Data,
}

/// One d×k term of [`Factors::Hadamard`], broadcast as PEFT's GLoRA paths are
/// (`GloraLoraPath`, `GloraVectorPath`, `GloraScalarPath`, `GloraEmptyPath`).
#[derive(Debug, Clone)]
pub enum HadamardPart {
    /// No term (GLoRA's `none` with its zero buffer).
    Zero,
    /// One value for every entry (`constant`).
    Scalar(Data),
    /// One value per output row (`vector`, `(out, 1)` broadcast over the columns).
    Rows(Data),
    /// A whole d×k matrix (a `none` buffer that is not zero).
    Dense(Data),
    /// `b·a`, `b` d×r, `a` r×k (`lora`: `Xd @ Xu`; HiRA's `hira_B @ hira_A`).
    LowRank { b: Data, a: Data, rank: usize },
}

/// Which PEFT tuner a [`Factors::Hadamard`] came from (its label in reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HadamardTuner {
    Hira,
    Glora,
}

impl HadamardPart {
    fn data(&self) -> Vec<&Data> {
        match self {
            HadamardPart::Zero => Vec::new(),
            HadamardPart::Scalar(x) | HadamardPart::Rows(x) | HadamardPart::Dense(x) => vec![x],
            HadamardPart::LowRank { b, a, .. } => vec![b, a],
        }
    }
    fn data_mut(&mut self) -> Vec<&mut Data> {
        match self {
            HadamardPart::Zero => Vec::new(),
            HadamardPart::Scalar(x) | HadamardPart::Rows(x) | HadamardPart::Dense(x) => vec![x],
            HadamardPart::LowRank { b, a, .. } => vec![b, a],
        }
    }
}

/// How a PEFT MiSS `miss_block` meets the base weight `W0` (d×k), `c` an input column and `o` an
/// output row (`config.init_weights` picks the mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissMode {
    /// `miss_block` r×d: `ΔW[o, c] = block[c mod r, o]`.
    Plain,
    /// `init_weights = "mini"`: `miss_block` r×mini_r repeated along the rows (d a multiple of
    /// mini_r): `ΔW[o, c] = block[c mod r, o mod mini_r]`.
    Mini { mini_r: usize },
    /// `init_weights = "bat"`: `miss_block` (d/r)×r×r; on each r×r block of W0 (rows of block
    /// `p`) `ΔW_blk = W0_blk·block[p] + block[p]`.
    Bat,
}

/// How PEFT's OFT turns a skew-symmetric `Q` into a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftCayley {
    /// `use_cayley_neumann` with `num_cayley_neumann_terms` terms.
    Neumann(usize),
    /// The exact Cayley transform.
    Exact,
}

/// How an OFT v2 rotation meets a conv base (a linear one is `W0·blockdiag(R)ᵀ` for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OftConv {
    /// PEFT (`tuners/oft/layer.py` `Conv2d.merge`): `W0·blockdiag(R)ᵀ`, as a linear.
    Transposed,
    /// OneTrainer (`OFTModule.forward`, conv branch): `W0·blockdiag(R)`.
    Plain,
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
    /// PEFT's VeRA (`peft_type` VERA).
    Vera,
    /// PEFT's HRA (`peft_type` HRA).
    Hra,
    /// PEFT's BOFT (`peft_type` BOFT).
    #[serde(rename = "peft-boft")]
    PeftBoft,
    /// PEFT's MiSS (`peft_type` MISS).
    Miss,
    /// PEFT's SHiRA (`peft_type` SHIRA).
    Shira,
    /// PEFT's RandLoRA (`peft_type` RANDLORA).
    RandLora,
    /// PEFT's RoAd (`peft_type` ROAD).
    Road,
    /// PEFT's OSF (`peft_type` OSF).
    Osf,
    /// PEFT's HiRA (`peft_type` HIRA).
    Hira,
    /// PEFT's GLoRA (`peft_type` GLORA; not LyCORIS' [`Algo::Glora`]).
    #[serde(rename = "peft-glora")]
    PeftGlora,
    /// PEFT's FRoD (`peft_type` FROD).
    Frod,
    /// PEFT's BEFT, DEFT, PEANuT, Super-Tuning, AdaMSS (`peft_type` BEFT, …).
    Beft,
    Deft,
    Peanut,
    Supertuning,
    Adamss,
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
            Algo::Vera => "vera",
            Algo::Hra => "hra",
            Algo::PeftBoft => "peft-boft",
            Algo::Miss => "miss",
            Algo::Shira => "shira",
            Algo::RandLora => "randlora",
            Algo::Road => "road",
            Algo::Osf => "osf",
            Algo::Hira => "hira",
            Algo::PeftGlora => "peft-glora",
            Algo::Frod => "frod",
            Algo::Beft => "beft",
            Algo::Deft => "deft",
            Algo::Peanut => "peanut",
            Algo::Supertuning => "supertuning",
            Algo::Adamss => "adamss",
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
            Factors::Vera { .. } => Algo::Vera,
            Factors::Hra { .. } => Algo::Hra,
            Factors::PeftBoft { .. } => Algo::PeftBoft,
            Factors::Miss { .. } => Algo::Miss,
            Factors::Shira { .. } => Algo::Shira,
            Factors::RandLora { .. } => Algo::RandLora,
            Factors::Road { .. } => Algo::Road,
            Factors::Osf { .. } => Algo::Osf,
            Factors::Hadamard { tuner, .. } => match tuner {
                HadamardTuner::Hira => Algo::Hira,
                HadamardTuner::Glora => Algo::PeftGlora,
            },
            Factors::Frod(_) => Algo::Frod,
            Factors::OnBase { rule, .. } => match rule {
                BaseRule::Beft => Algo::Beft,
                BaseRule::Deft { .. } => Algo::Deft,
                BaseRule::Peanut { .. } => Algo::Peanut,
                BaseRule::Supertuning { .. } => Algo::Supertuning,
                BaseRule::Adamss { .. } => Algo::Adamss,
            },
        }
    }

    /// The update is built with the base at hand by
    /// [`delta_from_base`](super::base::delta_from_base): a function of the base weight itself
    /// (OFT's rotation `R·W0`, IA3's `W0 ⊙ w`), or (VeRA, SHiRA, RandLoRA,
    /// [`Self::delta_reads_base_values`] false) a ΔW from shared projections sliced to the base's
    /// shape, which the adapter does not record. Either way it cannot be lowered to LoRA from the
    /// adapter alone ([`Self::needs_base_why`]).
    pub fn needs_base(&self) -> bool {
        matches!(
            self,
            Factors::Oft { .. }
                | Factors::Boft { .. }
                | Factors::PeftOft { .. }
                | Factors::Ia3 { .. }
                | Factors::Glora { .. }
        ) || self.peft_only()
    }

    /// One of PEFT's own tuners that has no LyCORIS/kohya form (VeRA, HRA, PEFT's BOFT, MiSS,
    /// SHiRA, RandLoRA, RoAd, OSF, the Hadamard tuners, FRoD, the on-base rules): the kohya and
    /// LyCORIS writers refuse or skip them. Each [`needs_base`](Self::needs_base).
    pub fn peft_only(&self) -> bool {
        matches!(
            self,
            Factors::Vera { .. }
                | Factors::Hra { .. }
                | Factors::PeftBoft { .. }
                | Factors::Miss { .. }
                | Factors::Shira { .. }
                | Factors::RandLora { .. }
                | Factors::Road { .. }
                | Factors::Osf { .. }
                | Factors::Hadamard { .. }
                | Factors::Frod(_)
                | Factors::OnBase { .. }
        )
    }

    /// Of the [`Self::needs_base`] updates, those whose ΔW is built from the adapter alone, the
    /// base giving only its shape (VeRA's slices of the shared projections, SHiRA's scattered
    /// values, RandLoRA's slices of its shared bases): PEFT's `unmerge` subtracts the same
    /// `get_delta_weight` it added, so the merged weight minus ΔW is W0 again.
    pub fn delta_reads_base_values(&self) -> bool {
        self.needs_base()
            && !matches!(
                self,
                Factors::Vera { .. } | Factors::Shira { .. } | Factors::RandLora { .. }
            )
    }

    /// Why a [`Self::needs_base`] module has no ΔW of its own to lower to LoRA, for the
    /// refusals of `convert` and `resize`.
    pub fn needs_base_why(&self) -> &'static str {
        if self.delta_reads_base_values() {
            "its update depends on the base weight, so it has no fixed ΔW and cannot be lowered to LoRA"
        } else {
            "its ΔW comes from shared projections sliced to the base weight's shape, which the adapter does not record, so it cannot be lowered to LoRA without the base"
        }
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
            Factors::Vera { a, b } => vec![a, b],
            Factors::Hra { u, .. } => vec![u],
            Factors::PeftBoft { blocks, scale, .. } => vec![blocks, scale],
            Factors::Miss { block, .. } => vec![block],
            Factors::Shira { values, indices } => vec![values, indices],
            Factors::RandLora { a, b } => vec![a, b],
            Factors::Road { cos, sin, .. } => vec![cos, sin],
            Factors::Osf { u, s, v } => vec![u, s, v],
            Factors::Hadamard { mul, add, .. } => {
                let mut v = mul.$half();
                v.extend(add.$half());
                v
            }
            Factors::Frod(FrodParts {
                v,
                lambda,
                positions,
                values,
            }) => vec![v, lambda, positions, values],
            Factors::OnBase { tensors, .. } => tensors.into_iter().collect(),
        }
    };
}
use every_tensor;

impl KronHalf {
    pub(super) fn data(&self) -> Vec<&Data> {
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
