//! [`TensorSpec`]: a tensor an output file will hold (name, dtype, shape), declared before any
//! of its bytes, so the header can be written first. A leaf that the output, its per-file
//! writers and every caller share; must not write or hold bytes.

use crate::dtype::{self, Dtype};

/// A tensor to be written: its name, dtype and shape, declared before any data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> Self {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
        }
    }

    pub fn byte_len(&self) -> u64 {
        dtype::byte_len(self.dtype, self.shape.iter().product()).expect("valid spec") as u64
    }
}
