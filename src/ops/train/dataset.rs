//! Training data: a token stream cut into sequences of `seq_len`, batched deterministically
//! from the seed, with next-token targets.
//!
//! Must not depend on anything but the seed and the step for which sequences a batch holds.

use crate::error::{Opt, OptionError};
use crate::linalg::rng::SplitMix64;
use crate::model::NO_TARGET;
use anyhow::{bail, Result};

/// Tokens cut into sequences of `seq_len`.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub tokens: Vec<u32>,
    pub seq_len: usize,
}

impl Dataset {
    pub fn new(tokens: Vec<u32>, seq_len: usize) -> Result<Dataset> {
        if seq_len < 2 {
            bail!(OptionError::new(|o| format!(
                "{} must be at least 2",
                o.opt(Opt::SeqLen)
            )));
        }
        if tokens.len() < seq_len {
            let n = tokens.len();
            bail!(OptionError::new(move |o| format!(
                "the data has {n} tokens, fewer than one sequence of {}",
                o.set(Opt::SeqLen, seq_len)
            )));
        }
        Ok(Dataset { tokens, seq_len })
    }

    /// Evaluation data: any length of at least 2 tokens (a last partial sequence is scored).
    pub fn for_eval(tokens: Vec<u32>, seq_len: usize) -> Result<Dataset> {
        if seq_len < 2 || tokens.len() < 2 {
            bail!(OptionError::new(|o| format!(
                "evaluation data needs at least 2 tokens and {} at least 2",
                o.opt(Opt::SeqLen)
            )));
        }
        Ok(Dataset { tokens, seq_len })
    }

    /// Whole sequences.
    pub fn sequences(&self) -> usize {
        self.tokens.len() / self.seq_len
    }

    /// FNV-1a of the tokens and the sequence length (checked on resume).
    pub fn fingerprint(&self) -> String {
        let mut h = crate::linalg::rng::Fnv1a::new();
        for &t in self
            .tokens
            .iter()
            .chain(std::iter::once(&(self.seq_len as u32)))
        {
            h.feed(&t.to_le_bytes());
        }
        format!("{:016x}", h.finish())
    }

    /// Order of the sequences in epoch `e` (Fisher–Yates with a generator seeded by the seed
    /// and the epoch).
    fn order(&self, seed: u64, epoch: usize) -> Vec<usize> {
        let n = self.sequences();
        let mut v: Vec<usize> = (0..n).collect();
        let mut g = SplitMix64::new(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for i in (1..n).rev() {
            let j = (g.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }

    /// Ids and next-token targets of the batch of step `step`.
    /// The buffers are allocated fallibly: a batch past memory (where
    /// [`super::memory::check_step`] had no limit to check) is an error naming `--batch`.
    pub fn batch(&self, step: usize, batch: usize, seed: u64) -> Result<(Vec<u32>, Vec<u32>)> {
        let (n, t) = (self.sequences(), self.seq_len);
        let (mut ids, mut targets) = (Vec::new(), Vec::new());
        let len = batch.checked_mul(t);
        if len.is_none_or(|len| {
            crate::io::memory::fallible(|| {
                ids.try_reserve_exact(len).is_err() || targets.try_reserve_exact(len).is_err()
            })
        }) {
            bail!(OptionError::new(move |o| format!(
                "{} {batch} × {} {t}: the batch's tokens cannot be allocated",
                o.opt(Opt::Batch),
                o.opt(Opt::SeqLen)
            )));
        }
        let mut cache: Option<(usize, Vec<usize>)> = None;
        for j in 0..batch {
            let p = step * batch + j;
            let (e, i) = (p / n, p % n);
            if cache.as_ref().is_none_or(|(ce, _)| *ce != e) {
                cache = Some((e, self.order(seed, e)));
            }
            let s = cache.as_ref().expect("set").1[i];
            ids.extend_from_slice(&self.tokens[s * t..(s + 1) * t]);
        }
        next_targets_into(&ids, t, &mut targets);
        Ok((ids, targets))
    }

    /// Evaluation batches: consecutive sequences (and a last shorter one of ≥ 2 tokens), at
    /// most `batch` per batch, as (ids, targets, rows, len).
    pub fn eval_batches(&self, batch: usize) -> Vec<(Vec<u32>, Vec<u32>, usize, usize)> {
        let t = self.seq_len;
        let mut seqs: Vec<&[u32]> = self.tokens.chunks(t).collect();
        if seqs.last().is_some_and(|s| s.len() < 2) {
            seqs.pop();
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i < seqs.len() {
            let len = seqs[i].len();
            let mut j = i + 1;
            while j < seqs.len() && j - i < batch && seqs[j].len() == len {
                j += 1;
            }
            let ids: Vec<u32> = seqs[i..j].concat();
            let tg = next_targets(&ids, len);
            out.push((ids, tg, j - i, len));
            i = j;
        }
        out
    }
}

/// Next token within each sequence of `t`; the last position of each has none.
fn next_targets(ids: &[u32], t: usize) -> Vec<u32> {
    let mut tg = Vec::new();
    next_targets_into(ids, t, &mut tg);
    tg
}

/// [`next_targets`] into `tg` (its allocation reused).
fn next_targets_into(ids: &[u32], t: usize, tg: &mut Vec<u32>) {
    tg.clear();
    tg.resize(ids.len(), NO_TARGET);
    for (s, row) in ids.chunks(t).enumerate() {
        for p in 0..row.len().saturating_sub(1) {
            tg[s * t + p] = row[p + 1];
        }
    }
}
