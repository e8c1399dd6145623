//! ggml's reference K-quant quantizers (`Q2_K` … `Q6_K`), byte-exact with
//! `quantize_row_q*_K_ref`, in two evaluations of the same arithmetic: [`reference`], the
//! scalar transcription of `ggml-quants.c` (the readable one, and the contract's statement), and
//! [`lanes`], which runs the per-group scale searches of a super-block (where nearly all the
//! time goes) with one group per vector lane; on x86-64 with AVX2, `avx2` runs the `Q4_K`,
//! `Q5_K` and `Q6_K` searches written in AVX2 registers (the same operations per lane), and
//! with AVX-512F `avx512` runs all three at twice the width. All feed the same
//! packing code.
//!
//! [`quantize`] is what lorakit calls: the lane searches compiled per CPU level by
//! [`crate::backend::simd::multiversion!`] (every copy computes the same bits, see
//! [`crate::backend::simd`]), all but `Q6_K`'s capped at AVX2, which was measured faster, and
//! taking `avx2`'s searches where [`crate::backend::simd::level`] is at least AVX2 and
//! `avx512`'s searches where it is AVX-512 (their fallbacks: `avx2`, then the portable
//! [`lanes`]). It never
//! allocates per block. `kquant::tests` checks it against
//! [`reference`] bit for bit on random and adversarial super-blocks at every level;
//! `io::gguf::tests` checks both against ggml's own bytes (`fixtures/gguf/kquant.gguf`).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod lanes;
pub(super) mod reference;
#[cfg(test)]
mod tests;

use super::types::GgmlType;
use crate::backend::simd::multiversion;
use reference::Back;

/// Quantizes `values` (whole super-blocks) to the K type `ty`, appending to `out`, and where
/// `back` is given (as long as `values`) writes into it the values ggml's dequantizer reads
/// back from those bytes ([`reference::Back`]). Returns `false`, writing nothing, for a type
/// that is not a K-quant or a length that is not a multiple of 256 (or not `back`'s).
pub(super) fn quantize(ty: GgmlType, values: &[f32], out: &mut Vec<u8>, back: Back) -> bool {
    if !values.len().is_multiple_of(256) || back.as_ref().is_some_and(|b| b.len() != values.len()) {
        return false;
    }
    match ty {
        GgmlType::Q6_K => quantize_wide(ty, values, out, back),
        _ => quantize_avx2(ty, values, out, back),
    }
}

/// Super-block `k`'s 256 values of `back`.
#[inline(always)]
fn block<'a>(back: &'a mut Back, k: usize) -> Back<'a> {
    match back {
        Some(b) => Some(&mut b[256 * k..256 * k + 256]),
        None => None,
    }
}

multiversion! {
    /// [`quantize`] of `Q6_K`, at the CPU's widest level: its AVX-512 copy was measured faster
    /// than its AVX2 one (see [`quantize_avx2`]), and `avx2::q6_fit` (two `__m256`) faster than
    /// the portable lanes' AVX-512 copy (one `__m512`): one thread, Mvalues/s of its CPU time,
    /// 174–183 vs 166–168 on the same loaded machine. With AVX-512F, `avx512::q6_fits` (one
    /// `__m512` per super-block, two side by side) in turn: 175–183 → 210–212 (three
    /// interleaved runs of one binary, loaded machine).
    fn quantize_wide(ty: GgmlType, values: &[f32], out: &mut Vec<u8>, back: Back) -> bool {
        if ty != GgmlType::Q6_K {
            return false;
        }
        let mut back = back;
        #[cfg(target_arch = "x86_64")]
        if crate::backend::simd::level() >= crate::backend::simd::Level::Avx512 {
            // Written in AVX-512 registers (`avx512::q6_fits`): two super-blocks side by side,
            // the odd one last alone.
            let mut fits = [reference::Fit::default(); 2];
            let mut pairs = values.chunks_exact(512);
            let mut k = 0;
            for x in &mut pairs {
                // SAFETY: the CPU has AVX-512F (`level` is capped by `detected`).
                unsafe { avx512::q6_fits::<2>(x, &mut fits) };
                reference::q6_pack(&x[..256], fits[0], out, block(&mut back, k));
                reference::q6_pack(&x[256..], fits[1], out, block(&mut back, k + 1));
                k += 2;
            }
            let last = pairs.remainder();
            if !last.is_empty() {
                // SAFETY: as above.
                unsafe { avx512::q6_fits::<1>(last, &mut fits[..1]) };
                reference::q6_pack(last, fits[0], out, block(&mut back, k));
            }
            return true;
        }
        #[cfg(target_arch = "x86_64")]
        if crate::backend::simd::level() >= crate::backend::simd::Level::Avx2 {
            for (k, x) in values.chunks_exact(256).enumerate() {
                // SAFETY: the CPU has AVX2 (`level` is capped by `detected`).
                let fit = unsafe { avx2::q6_fit(x) };
                reference::q6_pack(x, fit, out, block(&mut back, k));
            }
            return true;
        }
        for (k, x) in values.chunks_exact(256).enumerate() {
            reference::q6_pack(x, lanes::q6_fit(x), out, block(&mut back, k));
        }
        true
    }
}

// Capped at AVX2: on this project's machine (Xeon with AVX-512F/BW/VL, 2 loaded cores), lorakit
// at opt-level 3 with the dev-profile flags, `LORAKIT_GGUF_BENCH=quantizers` (one thread's CPU
// time, best of 5, three runs) gave in Mvalues/s AVX2 vs AVX-512: Q4_K 97–100 vs 84–90, Q5_K
// 82–86 vs 69–72, Q3_K 111–120 vs 100–106, Q2_K 114–117 vs 78–82; but Q6_K 157–172 vs 175–189,
// so Q6_K keeps the widest copy ([`quantize_wide`]). The bytes are the same at every level.
// The cap is on the compiled copy (the packs, vectorised by LLVM); the Q4_K/Q5_K search itself
// still takes `avx512` where `level()` is AVX-512 (see `KX512_B`).
multiversion! {
    cap(Avx2)
    /// [`quantize`] of every K type but `Q6_K`.
    fn quantize_avx2(ty: GgmlType, values: &[f32], out: &mut Vec<u8>, back: Back) -> bool {
        let mut back = back;
        // Plain loops, no closures: a closure (and the iterator method it is passed to) would be
        // a function of its own, compiled for the baseline instead of inside this copy.
        match ty {
            GgmlType::Q2_K => {
                for (k, x) in values.chunks_exact(256).enumerate() {
                    reference::q2_pack(x, lanes::q2_fit(x), out, block(&mut back, k));
                }
            }
            GgmlType::Q3_K => {
                for (k, x) in values.chunks_exact(256).enumerate() {
                    reference::q3_pack(x, lanes::q3_fit(x), out, block(&mut back, k));
                }
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                let (nmax, rmin, nstep) = if ty == GgmlType::Q4_K {
                    (15, -1.0, 20)
                } else {
                    (31, -0.5, 15)
                };
                let q4 = ty == GgmlType::Q4_K;
                // The super-blocks not searched yet: from `k`, `rest`.
                #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
                let (mut k, mut rest) = (0, values);
                #[cfg(target_arch = "x86_64")]
                if crate::backend::simd::level() >= crate::backend::simd::Level::Avx512 {
                    // Written in AVX-512 registers (`avx512`): `2 KX512_B` super-blocks at a
                    // time, the fewer left in AVX2 registers below.
                    let mut fits = [reference::Fit::default(); 2 * KX512_B];
                    let mut wide = values.chunks_exact(512 * KX512_B);
                    for x in &mut wide {
                        // SAFETY: the CPU has AVX-512F (`level` is capped by `detected`).
                        unsafe { avx512::kx_fits::<KX512_B>(x, nmax, rmin, nstep, &mut fits) };
                        for (h, &fit) in fits.iter().enumerate() {
                            let one = &x[256 * h..256 * h + 256];
                            kx_pack(q4, one, fit, out, block(&mut back, k + h));
                        }
                        k += 2 * KX512_B;
                    }
                    rest = wide.remainder();
                }
                #[cfg(target_arch = "x86_64")]
                if crate::backend::simd::level() >= crate::backend::simd::Level::Avx2 {
                    // Written in AVX2 registers (`avx2`): two super-blocks side by side, the odd
                    // one last alone.
                    let mut pairs = rest.chunks_exact(512);
                    for x in &mut pairs {
                        // SAFETY: the CPU has AVX2 (`level` is capped by `detected`).
                        let [a, b] = unsafe { avx2::kx_fits::<2>(x, nmax, rmin, nstep) };
                        kx_pack(q4, &x[..256], a, out, block(&mut back, k));
                        kx_pack(q4, &x[256..], b, out, block(&mut back, k + 1));
                        k += 2;
                    }
                    let last = pairs.remainder();
                    if !last.is_empty() {
                        // SAFETY: as above.
                        let [fit] = unsafe { avx2::kx_fits::<1>(last, nmax, rmin, nstep) };
                        kx_pack(q4, last, fit, out, block(&mut back, k));
                    }
                    return true;
                }
                // Two super-blocks at a time (sixteen lanes), the odd one last in eight.
                let mut pairs = rest.chunks_exact(512);
                for x in &mut pairs {
                    let [a, b] = lanes::kx_fit2(x, nmax, rmin, nstep);
                    kx_pack(q4, &x[..256], a, out, block(&mut back, k));
                    kx_pack(q4, &x[256..], b, out, block(&mut back, k + 1));
                    k += 2;
                }
                let last = pairs.remainder();
                if !last.is_empty() {
                    let fit = lanes::kx_fit(last, nmax, rmin, nstep);
                    kx_pack(q4, last, fit, out, block(&mut back, k));
                }
            }
            _ => return false,
        }
        true
    }
}

/// How many `__m512` (each two super-blocks) `avx512::kx_fits` searches side by side: 2, so
/// that two independent chains of additions overlap. One thread's CPU time
/// (`LORAKIT_GGUF_BENCH=quantizers`, best of 5, loaded 2-core Xeon with AVX-512F/BW/DQ/VL, with
/// `avx512`'s first transpose), Mvalues/s of `Q4_K`, B = 1 / 2 / 3 against `avx2` in the same
/// run: 120.9–127.6 / 128.7–133.1 / 132.6–137.8 against 117.0–128.4; `Q5_K` 90.9–94.2 /
/// 102.3–104.4 / 99.1–102.3 against 96.3–103.0. 2 and 3 are alike; 2 is the smaller register
/// set.
#[cfg(target_arch = "x86_64")]
const KX512_B: usize = 2;

/// `Q4_K`'s pack or `Q5_K`'s, called directly: through a function pointer the pack was a
/// function of its own, compiled for the baseline and not vectorised (5 % of a 7B merge).
#[inline(always)]
fn kx_pack(q4: bool, x: &[f32], fit: reference::Fit, out: &mut Vec<u8>, back: Back) {
    if q4 {
        reference::q4_pack(x, fit, out, back);
    } else {
        reference::q5_pack(x, fit, out, back);
    }
}

/// [`quantize`] through the scalar [`reference`] transcription.
pub(super) fn quantize_reference(ty: GgmlType, values: &[f32], out: &mut Vec<u8>) -> bool {
    if !values.len().is_multiple_of(256) {
        return false;
    }
    use reference::*;
    let blocks = values.chunks_exact(256);
    match ty {
        GgmlType::Q2_K => blocks.for_each(|x| q2_pack(x, q2_fit(x), out, None)),
        GgmlType::Q3_K => blocks.for_each(|x| q3_pack(x, q3_fit(x), out, None)),
        GgmlType::Q4_K => blocks.for_each(|x| q4_pack(x, kx_fit(x, 15, -1.0, 20), out, None)),
        GgmlType::Q5_K => blocks.for_each(|x| q5_pack(x, kx_fit(x, 31, -0.5, 15), out, None)),
        GgmlType::Q6_K => blocks.for_each(|x| q6_pack(x, q6_fit(x), out, None)),
        _ => return false,
    }
    true
}
