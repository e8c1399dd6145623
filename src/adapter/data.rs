//! Where a factor's values live ([`Data`]: a tensor of the adapter file, or memory), shared
//! canonical values ([`Values`]) and the row-major transpose the formats' layouts need. The leaf
//! under the adapter model and the algorithms.
//!
//! Must not read a file (the adapter does, [`super::Adapter::values`]).

use std::sync::Arc;

/// Shared canonical values of a factor.
pub type Values = Arc<Vec<f32>>;

/// Where a factor's values come from: a tensor of the adapter file, or memory.
#[derive(Debug, Clone)]
pub enum Data {
    /// A tensor of [`Adapter::source`](crate::adapter::Adapter::source), stored in the format's own layout; `transpose` says the
    /// stored 2-D matrix is the transpose of the canonical one (PEFT embeddings).
    Stored { key: String, transpose: bool },
    /// Canonical row-major values.
    Owned(Arc<Vec<f32>>),
}

/// Row-major transpose of an `r × c` matrix.
pub fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    out
}
