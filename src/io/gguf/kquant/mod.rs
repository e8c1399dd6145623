//! ggml's reference K-quant quantizers (`Q2_K` … `Q6_K`), byte-exact with
//! `quantize_row_q*_K_ref`, in two evaluations of the same arithmetic: [`reference`], the
//! scalar transcription of `ggml-quants.c` (the readable one, and the contract's statement), and
//! [`lanes`], which runs the per-group scale searches of a super-block (where nearly all the
//! time goes) with one group per vector lane. Both feed the same packing code.
//!
//! [`quantize`] is what lorakit calls: the lane searches compiled per CPU level by
//! [`crate::backend::simd::multiversion!`] (every copy computes the same bits, see
//! [`crate::backend::simd`]). It never allocates per block. `kquant::tests` checks it against
//! [`reference`] bit for bit on random and adversarial super-blocks at every level;
//! `io::gguf::tests` checks both against ggml's own bytes (`fixtures/gguf/kquant.gguf`).

mod lanes;
pub(super) mod reference;
#[cfg(test)]
mod tests;

use super::types::GgmlType;
use crate::backend::simd::multiversion;

multiversion! {
    /// Quantizes `values` (whole super-blocks) to the K type `ty`, appending to `out`. Returns
    /// `false`, writing nothing, for a type that is not a K-quant or a length that is not a
    /// multiple of 256.
    pub(super) fn quantize(ty: GgmlType, values: &[f32], out: &mut Vec<u8>) -> bool {
        if !values.len().is_multiple_of(256) {
            return false;
        }
        // Plain loops, no closures: a closure (and the iterator method it is passed to) would be
        // a function of its own, compiled for the baseline instead of inside this copy.
        match ty {
            GgmlType::Q2_K => {
                for x in values.chunks_exact(256) {
                    reference::q2_pack(x, lanes::q2_fit(x), out);
                }
            }
            GgmlType::Q3_K => {
                for x in values.chunks_exact(256) {
                    reference::q3_pack(x, lanes::q3_fit(x), out);
                }
            }
            GgmlType::Q4_K => {
                for x in values.chunks_exact(256) {
                    reference::q4_pack(x, lanes::kx_fit(x, 15, -1.0, 20), out);
                }
            }
            GgmlType::Q5_K => {
                for x in values.chunks_exact(256) {
                    reference::q5_pack(x, lanes::kx_fit(x, 31, -0.5, 15), out);
                }
            }
            GgmlType::Q6_K => {
                for x in values.chunks_exact(256) {
                    reference::q6_pack(x, lanes::q6_fit(x), out);
                }
            }
            _ => return false,
        }
        true
    }
}

/// [`quantize`] through the scalar [`reference`] transcription.
pub(super) fn quantize_reference(ty: GgmlType, values: &[f32], out: &mut Vec<u8>) -> bool {
    if !values.len().is_multiple_of(256) {
        return false;
    }
    let blocks = values.chunks_exact(256);
    match ty {
        GgmlType::Q2_K => blocks.for_each(|x| reference::q2_k(x, out)),
        GgmlType::Q3_K => blocks.for_each(|x| reference::q3_k(x, out)),
        GgmlType::Q4_K => blocks.for_each(|x| reference::q4_k(x, out)),
        GgmlType::Q5_K => blocks.for_each(|x| reference::q5_k(x, out)),
        GgmlType::Q6_K => blocks.for_each(|x| reference::q6_k(x, out)),
        _ => return false,
    }
    true
}
