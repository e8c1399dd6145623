//! The rules of the PEFT tuners [`super::Factors::OnBase`] carries ([`BaseRule`], PEANuT's
//! [`Activation`]): data only, the leaf `on_base.rs` computes from.
//!
//! Must not compute anything from the values.

/// Which PEFT tuner a [`super::Factors::OnBase`] module is, with what its config fixes. The module's
/// tensors, in order, are given per variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BaseRule {
    /// `tuners/beft/layer.py` `Linear.merge`: `b' = b0 + beft_bias`, the weight unchanged. No
    /// tensors here: `beft_bias` is the module's bias.
    Beft,
    /// `tuners/deft/layer.py` `get_delta_weight`: `ΔW = Q·(scale·R − rightᵀ·W0)`, or
    /// `−Q·rightᵀ·W0` with `para`; tensors `deft_P` d×r, then (without `para`) `deft_R` r×k.
    Deft {
        /// `decomposition_method = "qr"`: `Q = right` = the reduced QR factor of P; "relu":
        /// `Q = P`, `right = relu(P)`.
        qr: bool,
        para: bool,
        /// `alpha / r` when `alpha` is set and not 0, else 1 (`update_layer`).
        scale: f64,
    },
    /// `tuners/peanut/layer.py` `_compute_delta_weight`: from `X = W0ᵀ` (k×d),
    /// `H = act(X·Aᵀ)`, `depth` encoders `H = act(H·Eᵢᵀ)` (each input kept), `depth` decoders
    /// `H = act(H·Dᵢᵀ) + kept[depth−1−i]`, `ΔW = scaling·(H·Bᵀ)ᵀ`; tensors `peanut_A` r×d,
    /// `peanut_B` d×r, the encoders then the decoders r×r.
    Peanut {
        depth: usize,
        act: Activation,
        scaling: f64,
    },
    /// `tuners/supertuning/layer.py` `Linear.merge`: `values[i]` added at flat position
    /// `indices[i]` of W0 (`scatter_add`: a repeated position sums), plus `lora_scale·B·A`
    /// when `r` is set; tensors `values` [n], the positions as 2n f32 (each `p / 2²⁴`, then each
    /// `p mod 2²⁴`, exact; empty when not saved), then `lora_A` r×k and `lora_B` d×r.
    Supertuning {
        /// `alpha / r` of the optional LoRA.
        lora_scale: Option<f64>,
        /// `sparsity`: PEFT builds `int(d·k·(1 − sparsity))` values and refuses another count.
        sparsity: f64,
        /// How many values the file holds.
        count: usize,
        /// Where the values go: the saved positions, or PEFT's `torch.topk` over |W0| when the
        /// folder has none.
        positions: SuperPositions,
    },
    /// `tuners/adamss/layer.py` `get_delta_weight`, `get_delta_bias` with one subspace (its rows
    /// are all of W0's, in order): `[ΔW | Δb] = B·A·newB`; tensors `adamss_B.0` d×q,
    /// `adamss_A.0` q×r, `adamss_newB` r×`cols`, `cols` = k + 1 where the base has a bias (the
    /// last column is Δb, the module's bias), k where it has none.
    Adamss { cols: usize },
}

/// Super-Tuning's positions ([`BaseRule::Supertuning`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SuperPositions {
    /// Saved in `supertuning_indices`; the largest one (it must lie inside W0).
    Saved { max_index: u64 },
    /// Not saved (`save_precomputed_indices` false): PEFT's `update_layer` recomputes them on
    /// load as `torch.topk(W0.abs().flatten(), n, largest=select_top)` (sorted: `values[i]`
    /// goes to the i-th largest, or smallest, |W0|).
    Topk { largest: bool },
}

/// The activations of `transformers.activations.ACT2FN` PEANuT's `act_fn` may name that lorakit
/// computes (`activations.py`, transformers 5.24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// `gelu`, `gelu_python`: `x·Φ(x)` with the exact erf.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_python_tanh`: the tanh approximation.
    GeluTanh,
    /// `gelu_fast`: `0.5x(1 + tanh(0.7978845608·x·(1 + 0.044715x²)))`.
    GeluFast,
    /// `gelu_10`: `gelu` clipped to [−10, 10].
    Gelu10,
    /// `quick_gelu`: `x·σ(1.702x)`.
    QuickGelu,
    /// `silu`, `swish`.
    Silu,
    Sigmoid,
    Tanh,
    /// `linear`: the identity.
    Linear,
    Relu6,
    /// `relu2`: `relu(x)²`.
    Relu2,
    /// `leaky_relu`: `nn.LeakyReLU()`, slope 0.01.
    LeakyRelu,
}

impl Activation {
    /// The activation `act_fn` names, if lorakit computes it.
    pub fn parse(name: &str) -> Option<Activation> {
        Some(match name {
            "relu" => Activation::Relu,
            "gelu" | "gelu_python" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_python_tanh" => Activation::GeluTanh,
            "gelu_fast" => Activation::GeluFast,
            "gelu_10" => Activation::Gelu10,
            "quick_gelu" => Activation::QuickGelu,
            "silu" | "swish" => Activation::Silu,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "linear" => Activation::Linear,
            "relu6" => Activation::Relu6,
            "relu2" => Activation::Relu2,
            "leaky_relu" => Activation::LeakyRelu,
            _ => return None,
        })
    }
}
