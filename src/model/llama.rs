//! The Llama-family causal LM: loading from a checkpoint, attaching adapters (unmerged, or merged
//! in memory), the forward pass, and the backward pass to trainable LoRA factors.
//!
//! Block (transformers `LlamaDecoderLayer`, also Mistral and Qwen2):
//! `h = x + o_proj(attn(rope(q_proj(n₁)), rope(k_proj(n₁)), v_proj(n₁)))`, `n₁ = RMSNorm₁(x)`;
//! `y = h + down_proj(silu(gate_proj(n₂)) ⊙ up_proj(n₂))`, `n₂ = RMSNorm₂(h)`; after the last
//! layer `logits = lm_head(RMSNorm(y))`. Every projection is a [`Linear`] (slot `7·layer + i`
//! for q, k, v, o, gate, up, down; `lm_head` last).
//!
//! Adapters: LoRA on any of these linear layers is applied unmerged through the low-rank path;
//! embedding LoRA is applied unmerged at the lookup (`E[t] + s·B·A[:, t]`). DoRA modules, and
//! everything when merging is asked for, are merged in memory into an f32 copy of the weight by
//! the same kernel as `lorakit merge` (`backend::cpu::merge`); `modules_to_save` tensors replace
//! the model's own. The loss is transformers' causal-LM loss: the mean cross-entropy of the
//! next-token targets given.
//!
//! Must not hold a second copy of the decoder block: full, training and KV-cached forwards all run
//! `layer_forward`. The model's parts and slot numbering are `llama/structure.rs`'s (a leaf this
//! file and `llama/attach.rs` share); attaching adapters is `llama/attach.rs`'s.

use super::config::ModelConfig;
use super::linear::{Exec, Linear, LoraGrad, LoraTape, Matrix, MatrixData};
use super::ops::{
    attention, attention_backward, attention_incremental, rmsnorm, rmsnorm_backward, swiglu,
    swiglu_backward, AttnShape, Rope,
};
use super::scalar::Real;
use crate::dtype;
use crate::error::{InputError, InputResult};
use crate::io::Checkpoint;
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod attach;
mod structure;
pub use attach::Attached;
pub use structure::{EmbedLora, Layer, Model};

/// Projection names inside a layer, in slot order.
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;

/// Target value meaning "no prediction at this position".
pub const NO_TARGET: u32 = u32::MAX;

/// In-memory tensors (name → shape, f32 values), for synthetic models.
pub type MemoryTensors = BTreeMap<String, (Vec<usize>, Arc<Vec<f32>>)>;

/// Where a model's tensors come from.
#[derive(Debug, Clone, Copy)]
pub enum Weights<'c> {
    Checkpoint(&'c Checkpoint),
    Memory(&'c MemoryTensors),
}

impl<'c> Weights<'c> {
    fn path(&self) -> PathBuf {
        match self {
            Weights::Checkpoint(c) => c.root.clone(),
            Weights::Memory(_) => PathBuf::from("<memory>"),
        }
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            Weights::Checkpoint(c) => c.info(name).map(|i| i.shape.clone()),
            Weights::Memory(m) => m.get(name).map(|(s, _)| s.clone()),
        }
    }

    fn data(&self, name: &str) -> InputResult<MatrixData<'c>> {
        match self {
            Weights::Checkpoint(c) => {
                let v = c.view(name)?;
                if !dtype::is_float_compute(v.dtype) {
                    return Err(InputError::invalid(
                        &c.root,
                        format!(
                            "tensor `{name}`: dtype {} is not a float type",
                            dtype::name(v.dtype)
                        ),
                    ));
                }
                Ok(MatrixData::Stored {
                    bytes: v.data,
                    dtype: v.dtype,
                })
            }
            Weights::Memory(m) => Ok(MatrixData::Owned(m[name].1.clone())),
        }
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> InputResult<Matrix<'c>> {
        match self.shape(name) {
            None => Err(InputError::invalid(
                self.path(),
                format!("tensor `{name}` is missing"),
            )),
            Some(s) if s != [rows, cols] => Err(InputError::invalid(
                self.path(),
                format!("tensor `{name}` has shape {s:?}, the config needs [{rows}, {cols}]"),
            )),
            Some(_) => Ok(Matrix::new(self.data(name)?, rows, cols)),
        }
    }

    fn vector<T: Real>(&self, name: &str, len: usize) -> InputResult<Vec<T>> {
        let m = self.matrix_1d(name, len)?;
        Ok(m.rows_as::<T>(0, 1).into_owned())
    }

    fn matrix_1d(&self, name: &str, len: usize) -> InputResult<Matrix<'c>> {
        match self.shape(name) {
            None => Err(InputError::invalid(
                self.path(),
                format!("tensor `{name}` is missing"),
            )),
            Some(s) if s != [len] => Err(InputError::invalid(
                self.path(),
                format!("tensor `{name}` has shape {s:?}, the config needs [{len}]"),
            )),
            Some(_) => Ok(Matrix::new(self.data(name)?, 1, len)),
        }
    }
}

/// Gradients of every trainable adapter, by slot.
#[derive(Debug, Clone)]
pub struct Grads<T> {
    pub slots: Vec<Option<LoraGrad<T>>>,
}

impl<T: Real> Grads<T> {
    /// Σ of squared entries (f64).
    pub fn sum_sq(&self) -> f64 {
        self.slots
            .iter()
            .flatten()
            .flat_map(|g| g.a.iter().chain(&g.b))
            .map(|&v| v.to_f64() * v.to_f64())
            .sum()
    }
}

/// Shape and rotary tables of one forward/backward pass.
struct Pass<T> {
    batch: usize,
    seq: usize,
    rope: Rope<T>,
}

impl<T: Real> Pass<T> {
    /// `batch` sequences of `seq` new tokens, with rotary tables for the first `positions`
    /// positions (`seq`, or more when earlier positions sit in a KV cache).
    fn new(inv_freq: &[f64], batch: usize, seq: usize, positions: usize) -> Self {
        Pass {
            batch,
            seq,
            rope: Rope::new(inv_freq, positions),
        }
    }
}

/// How a decoder block attends: over the pass's own `batch × seq` positions (training and the
/// full forward), or — one sequence — its `seq` new positions after `p0` already in the
/// layer's KV cache (incremental decoding; the new keys and values are appended).
enum Attend<'a, T> {
    Full,
    Cached {
        kv: &'a mut (Vec<T>, Vec<T>),
        p0: usize,
    },
}

/// What one layer's backward needs from its forward.
struct LayerTape<T> {
    x: Vec<T>,
    rstd1: Vec<T>,
    h1: Vec<T>,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    att: Vec<T>,
    lse: Vec<T>,
    x2: Vec<T>,
    rstd2: Vec<T>,
    h2: Vec<T>,
    g: Vec<T>,
    u: Vec<T>,
    m: Vec<T>,
    t: [LoraTape<T>; 7],
}

/// Rotated keys and values of the positions seen so far, per layer (`[len, kv_heads·head_dim]`
/// each): incremental decoding with [`Model::logits_cached`].
#[derive(Debug, Clone, Default)]
pub struct KvCache<T> {
    layers: Vec<(Vec<T>, Vec<T>)>,
    len: usize,
}

impl<T> KvCache<T> {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<'c, T: Real> Model<'c, T> {
    /// Builds the model from a checkpoint (or memory) and its config; checks every shape.
    pub fn load(src: Weights<'c>, config: ModelConfig) -> InputResult<Self> {
        let prefix = if src.shape("model.embed_tokens.weight").is_some() {
            "model."
        } else if src.shape("embed_tokens.weight").is_some() {
            ""
        } else {
            return Err(InputError::invalid(
                src.path(),
                "no `model.embed_tokens.weight`: not a Llama-family checkpoint",
            ));
        }
        .to_owned();
        let c = &config;
        let (h, nh, nkv, hd) = (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        );
        let embed = src.matrix(&format!("{prefix}embed_tokens.weight"), c.vocab_size, h)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let base = format!("{prefix}layers.{l}");
            let dims = [
                (nh * hd, h),
                (nkv * hd, h),
                (nkv * hd, h),
                (h, nh * hd),
                (c.intermediate_size, h),
                (c.intermediate_size, h),
                (h, c.intermediate_size),
            ];
            let mk = |i: usize| -> InputResult<Linear<'c, T>> {
                let name = format!("{base}.{}", PROJECTIONS[i]);
                let (d, k) = dims[i];
                let bias_name = format!("{name}.bias");
                let bias = match src.shape(&bias_name) {
                    Some(_) => Some(src.vector::<T>(&bias_name, d)?),
                    None => None,
                };
                Ok(Linear {
                    w: src.matrix(&format!("{name}.weight"), d, k)?,
                    name,
                    bias,
                    loras: Vec::new(),
                    base0: None,
                })
            };
            layers.push(Layer {
                input_norm: src.vector(&format!("{base}.input_layernorm.weight"), h)?,
                post_norm: src.vector(&format!("{base}.post_attention_layernorm.weight"), h)?,
                proj: [mk(0)?, mk(1)?, mk(2)?, mk(3)?, mk(4)?, mk(5)?, mk(6)?],
                window: c.sliding_windows[l],
            });
        }
        // transformers 5 `tie_weights` (`modeling_utils.py`, in `from_pretrained`): a missing
        // `lm_head.weight` is the embedding; a stored one equal to it is tied to it; one that
        // differs is kept, untied, whatever `tie_word_embeddings` says ("we will NOT tie them").
        let tied = match src.shape("lm_head.weight") {
            None => true,
            Some(_) if !c.tie_word_embeddings => false,
            Some(_) => {
                let lm = src.matrix("lm_head.weight", c.vocab_size, h)?;
                (0..c.vocab_size)
                    .all(|r| lm.rows_as::<f32>(r, r + 1) == embed.rows_as::<f32>(r, r + 1))
            }
        };
        let lm_w = if tied {
            embed.clone()
        } else {
            src.matrix("lm_head.weight", c.vocab_size, h)?
        };
        Ok(Model {
            norm: src.vector(&format!("{prefix}norm.weight"), h)?,
            lm_head: Linear {
                name: "lm_head".into(),
                w: lm_w,
                bias: None,
                loras: Vec::new(),
                base0: None,
            },
            embed,
            embed_base0: None,
            embed_loras: Vec::new(),
            layers,
            tied,
            inv_freq: config.inv_freq(),
            prefix,
            config,
        })
    }

    /// Embedding lookup with embedding adapters; every id must be below the vocabulary size.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Vec<T>> {
        let (vocab, h) = (self.config.vocab_size, self.config.hidden_size);
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            bail!("token id {bad} is not below the vocabulary size {vocab}");
        }
        let mut x = Vec::with_capacity(ids.len() * h);
        for &t in ids {
            x.extend_from_slice(&self.embed.rows_as::<T>(t as usize, t as usize + 1));
        }
        for l in &self.embed_loras {
            for (i, &t) in ids.iter().enumerate() {
                let col: Vec<T> = (0..l.rank).map(|r| l.a[r * vocab + t as usize]).collect();
                for (o, brow) in x[i * h..(i + 1) * h]
                    .iter_mut()
                    .zip(l.b.chunks_exact(l.rank))
                {
                    let s: T = brow.iter().zip(&col).map(|(&b, &c)| b * c).sum();
                    *o += l.scale * s;
                }
            }
        }
        Ok(x)
    }

    fn attn_shape(&self, batch: usize, seq: usize, l: usize) -> AttnShape {
        AttnShape {
            batch,
            seq,
            heads: self.config.num_attention_heads,
            kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
            window: self.layers[l].window,
        }
    }

    /// One decoder block (Llama: `x + Attn(RMSNorm(x))`, then `+ MLP(RMSNorm(·))`, SwiGLU),
    /// the one body behind the full forward, training (`keep`: the tape for backward) and
    /// KV-cached decoding ([`Attend::Cached`]).
    fn layer_forward(
        &self,
        l: usize,
        x: Vec<T>,
        pass: &Pass<T>,
        exec: Exec,
        keep: bool,
        attend: Attend<'_, T>,
    ) -> Result<(Vec<T>, Option<LayerTape<T>>)> {
        let (batch, seq, rope) = (pass.batch, pass.seq, &pass.rope);
        let c = &self.config;
        let layer = &self.layers[l];
        let (n, h) = (batch * seq, c.hidden_size);
        let (h1, rstd1) = rmsnorm(&x, h, &layer.input_norm, c.rms_norm_eps);
        let (mut q, tq) = layer.proj[Q].forward(&h1, n, exec, keep)?;
        let (mut k, tk) = layer.proj[K].forward(&h1, n, exec, keep)?;
        let (v, tv) = layer.proj[V].forward(&h1, n, exec, keep)?;
        let (att, lse) = match attend {
            Attend::Full => {
                rope.apply(&mut q, seq, c.num_attention_heads, false);
                rope.apply(&mut k, seq, c.num_key_value_heads, false);
                attention(&q, &k, &v, &self.attn_shape(batch, seq, l))
            }
            Attend::Cached { kv, p0 } => {
                debug_assert_eq!(batch, 1);
                rope.apply_from(&mut q, p0, c.num_attention_heads);
                rope.apply_from(&mut k, p0, c.num_key_value_heads);
                let (kc, vc) = kv;
                kc.extend_from_slice(&k);
                vc.extend_from_slice(&v);
                let shape = self.attn_shape(1, p0 + seq, l);
                (attention_incremental(&q, kc, vc, &shape, p0), Vec::new())
            }
        };
        let (mut x2, to) = layer.proj[O].forward(&att, n, exec, keep)?;
        for (o, &xv) in x2.iter_mut().zip(&x) {
            *o += xv;
        }
        let (h2, rstd2) = rmsnorm(&x2, h, &layer.post_norm, c.rms_norm_eps);
        let (g, tg) = layer.proj[GATE].forward(&h2, n, exec, keep)?;
        let (u, tu) = layer.proj[UP].forward(&h2, n, exec, keep)?;
        let m = swiglu(&g, &u);
        let (mut y, td) = layer.proj[DOWN].forward(&m, n, exec, keep)?;
        for (o, &xv) in y.iter_mut().zip(&x2) {
            *o += xv;
        }
        let tape = keep.then_some(LayerTape {
            x,
            rstd1,
            h1,
            q,
            k,
            v,
            att,
            lse,
            x2,
            rstd2,
            h2,
            g,
            u,
            m,
            t: [tq, tk, tv, to, tg, tu, td],
        });
        Ok((y, tape))
    }

    fn layer_backward(
        &self,
        l: usize,
        tp: LayerTape<T>,
        dy: Vec<T>,
        pass: &Pass<T>,
        grads: &mut Grads<T>,
    ) -> Vec<T> {
        let (batch, seq, rope) = (pass.batch, pass.seq, &pass.rope);
        let c = &self.config;
        let layer = &self.layers[l];
        let (n, h) = (batch * seq, c.hidden_size);
        macro_rules! g {
            ($i:expr) => {
                grads.slots[7 * l + $i].as_mut()
            };
        }
        // MLP
        let mut dm = vec![T::ZERO; n * c.intermediate_size];
        layer.proj[DOWN].backward(&tp.m, n, &dy, &tp.t[DOWN], &mut dm, g!(DOWN));
        let (dg, du) = swiglu_backward(&tp.g, &tp.u, &dm);
        drop(dm);
        let mut dh2 = vec![T::ZERO; n * h];
        layer.proj[GATE].backward(&tp.h2, n, &dg, &tp.t[GATE], &mut dh2, g!(GATE));
        layer.proj[UP].backward(&tp.h2, n, &du, &tp.t[UP], &mut dh2, g!(UP));
        let mut dx2 = dy;
        rmsnorm_backward(&tp.x2, &tp.rstd2, &layer.post_norm, &dh2, h, &mut dx2);
        // Attention
        let mut datt = vec![T::ZERO; tp.att.len()];
        layer.proj[O].backward(&tp.att, n, &dx2, &tp.t[O], &mut datt, g!(O));
        let (mut dq, mut dk, dv) = attention_backward(
            &tp.q,
            &tp.k,
            &tp.v,
            &tp.att,
            &tp.lse,
            &datt,
            &self.attn_shape(batch, seq, l),
        );
        rope.apply(&mut dq, seq, c.num_attention_heads, true);
        rope.apply(&mut dk, seq, c.num_key_value_heads, true);
        let mut dh1 = vec![T::ZERO; n * h];
        layer.proj[Q].backward(&tp.h1, n, &dq, &tp.t[Q], &mut dh1, g!(Q));
        layer.proj[K].backward(&tp.h1, n, &dk, &tp.t[K], &mut dh1, g!(K));
        layer.proj[V].backward(&tp.h1, n, &dv, &tp.t[V], &mut dh1, g!(V));
        let mut dx = dx2;
        rmsnorm_backward(&tp.x, &tp.rstd1, &layer.input_norm, &dh1, h, &mut dx);
        dx
    }

    fn check_batch(&self, ids: &[u32], batch: usize, seq: usize) -> Result<()> {
        if ids.len() != batch * seq || seq == 0 {
            bail!("{} token ids for {batch} sequences of {seq}", ids.len());
        }
        Ok(())
    }

    /// Final hidden states (after the last norm) of `batch` sequences of `seq` tokens.
    fn hidden(&self, ids: &[u32], batch: usize, seq: usize, exec: Exec) -> Result<Vec<T>> {
        self.check_batch(ids, batch, seq)?;
        let pass = Pass::new(&self.inv_freq, batch, seq, seq);
        let mut x = self.embed_tokens(ids)?;
        for l in 0..self.layers.len() {
            x = self
                .layer_forward(l, x, &pass, exec, false, Attend::Full)?
                .0;
        }
        Ok(rmsnorm(
            &x,
            self.config.hidden_size,
            &self.norm,
            self.config.rms_norm_eps,
        )
        .0)
    }

    /// Logits `[batch·seq, vocab]` of `batch` sequences of `seq` tokens (row-major ids), or with
    /// `last_only` those of each sequence's last position (`[batch, vocab]`).
    pub fn logits(
        &self,
        ids: &[u32],
        batch: usize,
        seq: usize,
        exec: Exec,
        last_only: bool,
    ) -> Result<Vec<T>> {
        let hf = self.hidden(ids, batch, seq, exec)?;
        let h = self.config.hidden_size;
        let (rows, hf) = if last_only {
            let mut v = Vec::with_capacity(batch * h);
            for b in 0..batch {
                let r = b * seq + seq - 1;
                v.extend_from_slice(&hf[r * h..(r + 1) * h]);
            }
            (batch, v)
        } else {
            (batch * seq, hf)
        };
        Ok(self.lm_head.forward(&hf, rows, exec, false)?.0)
    }

    /// Appends `ids` (one sequence, continuing the positions in `cache`) and returns the logits
    /// of the last of them (`[vocab]`): the same as [`Model::logits`] of the whole sequence with
    /// `last_only`, but each earlier position's keys and values are computed once.
    pub fn logits_cached(&self, ids: &[u32], cache: &mut KvCache<T>, exec: Exec) -> Result<Vec<T>> {
        if ids.is_empty() {
            bail!("no token ids");
        }
        let c = &self.config;
        let (n, h, p0) = (ids.len(), c.hidden_size, cache.len);
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![(Vec::new(), Vec::new()); self.layers.len()];
        }
        let pass = Pass::new(&self.inv_freq, 1, n, p0 + n);
        let mut x = self.embed_tokens(ids)?;
        for (l, kv) in cache.layers.iter_mut().enumerate() {
            x = self
                .layer_forward(l, x, &pass, exec, false, Attend::Cached { kv, p0 })?
                .0;
        }
        cache.len = p0 + n;
        let (hf, _) = rmsnorm(&x[(n - 1) * h..], h, &self.norm, c.rms_norm_eps);
        Ok(self.lm_head.forward(&hf, 1, exec, false)?.0)
    }

    /// Summed cross-entropy of `targets` (one per position, [`NO_TARGET`] to skip) and the
    /// number of targets, without gradients.
    pub fn loss_sum(
        &self,
        ids: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
        exec: Exec,
    ) -> Result<(f64, usize)> {
        let hf = self.hidden(ids, batch, seq, exec)?;
        let count = targets.iter().filter(|&&t| t != NO_TARGET).count();
        let s = self.head_loss(&hf, targets, T::ONE, None, exec)?;
        Ok((s, count))
    }

    /// Mean cross-entropy over the `targets` (one per position; [`NO_TARGET`] to skip), and its
    /// gradient with respect to every trainable adapter's factors.
    pub fn loss_and_grads(
        &self,
        ids: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<(f64, Grads<T>)> {
        self.check_batch(ids, batch, seq)?;
        if targets.len() != ids.len() {
            bail!("{} targets for {} positions", targets.len(), ids.len());
        }
        let count = targets.iter().filter(|&&t| t != NO_TARGET).count();
        if count == 0 {
            bail!("no targets in the batch");
        }
        let pass = Pass::new(&self.inv_freq, batch, seq, seq);
        let mut x = self.embed_tokens(ids)?;
        let mut tapes = Vec::with_capacity(self.layers.len());
        for l in 0..self.layers.len() {
            let (y, tape) = self.layer_forward(l, x, &pass, Exec::Cpu, true, Attend::Full)?;
            tapes.push(tape.expect("kept"));
            x = y;
        }
        let c = &self.config;
        let (hf, rstd) = rmsnorm(&x, c.hidden_size, &self.norm, c.rms_norm_eps);
        let mut grads = self.zero_grads();
        let mut dhf = vec![T::ZERO; hf.len()];
        let denom = T::from_f64(count as f64);
        let sum = self.head_loss(&hf, targets, denom, Some((&mut dhf, &mut grads)), Exec::Cpu)?;
        let mut dx = vec![T::ZERO; x.len()];
        rmsnorm_backward(&x, &rstd, &self.norm, &dhf, c.hidden_size, &mut dx);
        drop((hf, dhf, x));
        for l in (0..self.layers.len()).rev() {
            let tape = tapes.pop().expect("one per layer");
            dx = self.layer_backward(l, tape, dx, &pass, &mut grads);
        }
        Ok((sum / count as f64, grads))
    }

    /// Zero gradients for every trainable adapter.
    pub fn zero_grads(&self) -> Grads<T> {
        Grads {
            slots: (0..self.num_slots())
                .map(|s| self.linear(s).trainable().map(LoraGrad::zeros))
                .collect(),
        }
    }

    /// `lm_head` + cross-entropy over row chunks; with `back`, writes `dL/dhf` (of the summed
    /// loss divided by `denom`) and `lm_head`'s adapter gradient. Returns the summed loss.
    fn head_loss(
        &self,
        hf: &[T],
        targets: &[u32],
        denom: T,
        mut back: Option<(&mut [T], &mut Grads<T>)>,
        exec: Exec,
    ) -> Result<f64> {
        let (h, vocab) = (self.config.hidden_size, self.config.vocab_size);
        let n = hf.len() / h;
        // ~16 MB of logits per chunk, but at least 256 rows so a large vocabulary's weight is
        // not streamed once per handful of rows.
        let chunk = ((1usize << 22) / vocab).max(256).min(n.max(1));
        let slot = self.num_slots() - 1;
        let mut sum = 0f64;
        let mut r0 = 0;
        while r0 < n {
            let r1 = (r0 + chunk).min(n);
            let rows = r1 - r0;
            let x = &hf[r0 * h..r1 * h];
            if let Some(&t) = targets[r0..r1]
                .iter()
                .find(|&&t| t != NO_TARGET && t as usize >= vocab)
            {
                bail!("target id {t} is not below the vocabulary size {vocab}");
            }
            let (mut z, tape) = self.lm_head.forward(x, rows, exec, back.is_some())?;
            // Rows in parallel; their losses are summed in row order afterwards, so the sum does
            // not depend on the thread count.
            let grad = back.is_some();
            let mut losses = vec![0f64; rows];
            z.par_chunks_mut(vocab)
                .zip(losses.par_iter_mut())
                .zip(&targets[r0..r1])
                .for_each(|((zr, loss), &t)| *loss = softmax_row(zr, t, grad, denom));
            for (&l, &t) in losses.iter().zip(&targets[r0..r1]) {
                if t != NO_TARGET {
                    sum += l;
                }
            }
            if let Some((dhf, grads)) = back.as_mut() {
                self.lm_head.backward(
                    x,
                    rows,
                    &z,
                    &tape,
                    &mut dhf[r0 * h..r1 * h],
                    grads.slots[slot].as_mut(),
                );
            }
            r0 = r1;
        }
        Ok(sum)
    }
}

super::scalar::multiversion! {
    /// Cross-entropy of one row of logits `zr` against target `t` (0 for [`NO_TARGET`]); with
    /// `grad`, `zr` becomes `(softmax − onehot)/denom` (zero for [`NO_TARGET`]).
    pub(super) fn softmax_row<T: Real>(zr: &mut [T], t: u32, grad: bool, denom: T) -> f64 {
        if t == NO_TARGET {
            if grad {
                zr.fill(T::ZERO);
            }
            return 0.0;
        }
        let mx = super::scalar::max(zr);
        for v in zr.iter_mut() {
            *v -= mx;
        }
        let zt = zr[t as usize];
        T::exp_slice(zr);
        let se: T = super::scalar::sum(zr);
        let lse = se.ln();
        if grad {
            // softmax − onehot, over the count of targets
            let k = T::ONE / (se * denom);
            for v in zr.iter_mut() {
                *v *= k;
            }
            zr[t as usize] -= T::ONE / denom;
        }
        (lse - zt).to_f64()
    }
}

/// Opens a model folder (or a `.safetensors` file beside a `config.json`): the checkpoint and
/// its config.
pub fn open(path: &Path) -> Result<(Checkpoint, ModelConfig)> {
    let ck = Checkpoint::open(path)?;
    let config = ModelConfig::for_checkpoint(&ck)?;
    Ok((ck, config))
}
