//! ggml block formats to and from `f32`: the dequantizers of [`DEQUANTIZABLE`] and the
//! reference quantizers of [`QUANTIZABLE`].
//!
//! Each function is a per-block transcription of llama.cpp `gguf-py/gguf/quants.py`
//! (`dequantize_blocks` / `quantize_blocks` of `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`, `BF16`,
//! `Q2_K` … `Q6_K`), which in turn follow `ggml/src/ggml-quants.c` (`dequantize_row_*`,
//! `quantize_row_*_ref`); the K-quant quantizers, which gguf-py lacks, are in
//! [`super::kquant`] (ggml's `quantize_row_q*_K_ref`, evaluated lane-parallel; its scalar
//! transcription stays reachable through [`quantize_reference`]). The contract is bit-exactness with gguf-py in `f32`: every product
//! and sum is rounded to `f32` in the order numpy evaluates it (`d * q - m` is two roundings,
//! never a fused multiply-add), `f16` scales are widened exactly and narrowed with
//! round-to-nearest-even. The fixtures in `fixtures/gguf/` hold gguf-py's own results and the
//! tests compare bit for bit.
//!
//! [`DEQUANTIZABLE`]: super::types::DEQUANTIZABLE
//! [`QUANTIZABLE`]: super::types::QUANTIZABLE

use super::kquant;
use super::types::GgmlType;
use half::f16;

#[inline(always)]
fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantizes `data` (whole blocks of `ty`) into `out` (`data.len() / type_size * block`
/// values). Returns `false`, writing nothing, for a type lorakit cannot dequantize or a length
/// that does not match; callers check [`GgmlType::can_dequantize`] first and report the type.
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> bool {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if !ty.can_dequantize() || !data.len().is_multiple_of(ts) || data.len() / ts * bs != out.len() {
        return false;
    }
    let blocks = data.chunks_exact(ts).zip(out.chunks_exact_mut(bs));
    match ty {
        GgmlType::F32 => {
            for (b, o) in blocks {
                o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, o) in blocks {
                o[0] = h(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (b, o) in blocks {
                o[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        GgmlType::Q8_0 => blocks.for_each(|(b, o)| q8_0(b, o)),
        GgmlType::Q4_0 => blocks.for_each(|(b, o)| q4_0(b, o)),
        GgmlType::Q4_1 => blocks.for_each(|(b, o)| q4_1(b, o)),
        GgmlType::Q5_0 => blocks.for_each(|(b, o)| q5_0(b, o)),
        GgmlType::Q5_1 => blocks.for_each(|(b, o)| q5_1(b, o)),
        GgmlType::Q2_K => blocks.for_each(|(b, o)| q2_k(b, o)),
        GgmlType::Q3_K => blocks.for_each(|(b, o)| q3_k(b, o)),
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => dequantize_k(ty, data, out),
        GgmlType::IQ4_NL => blocks.for_each(|(b, o)| iq4_nl(b, o)),
        GgmlType::IQ4_XS => blocks.for_each(|(b, o)| iq4_xs(b, o)),
        _ => return false,
    }
    true
}

/// Blocks per parallel work item of [`dequantize_par`].
const PAR_BLOCKS: usize = 4096;

/// Values measured at a time by [`quantize_part_measured`]: a multiple of every block size (1,
/// 32, 256).
const SUB: usize = 1 << 12;

/// Values per parallel work item of [`quantize_par`]: 256 K-quant super-blocks, a few
/// milliseconds of work, so that a tensor spreads over all cores evenly; also the size of the
/// GGUF merge's fused row chunks (`ops::merge::gguf_band`).
pub(crate) const PAR_VALUES: usize = 1 << 16;

/// [`dequantize_into`] over the cores (blocks are independent, so the result is identical).
pub fn dequantize_par(ty: GgmlType, data: &[u8], out: &mut [f32]) -> bool {
    use rayon::prelude::*;
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if !ty.can_dequantize() || !data.len().is_multiple_of(ts) || data.len() / ts * bs != out.len() {
        return false;
    }
    out.par_chunks_mut(PAR_BLOCKS * bs)
        .zip(data.par_chunks(PAR_BLOCKS * ts))
        .all(|(o, d)| dequantize_into(ty, d, o))
}

/// [`quantize_into`] over the cores (blocks are independent and the parts are concatenated in
/// order, so the bytes are identical whatever the number of threads).
pub fn quantize_par(ty: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    use rayon::prelude::*;
    let bs = ty.block_size();
    if !ty.can_quantize() || !values.len().is_multiple_of(bs) {
        return None;
    }
    let parts: Vec<Option<Vec<u8>>> = values
        .par_chunks((PAR_VALUES / bs).max(1) * bs)
        .map(|c| {
            let mut v = Vec::new();
            quantize_into(ty, c, &mut v).then_some(v)
        })
        .collect();
    let parts: Option<Vec<Vec<u8>>> = parts.into_iter().collect();
    Some(parts?.concat())
}

/// The error of storing values in a type: sums over `e = |Q(v) − v|` in f64, with `Q(v)` the
/// stored bytes dequantized ([`quantize_par_measured`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoredError {
    /// Σ e².
    pub sq_err: f64,
    /// Σ v².
    pub sq_val: f64,
    /// max e.
    pub max_abs: f64,
    /// Index of the first stored value that is not finite (an overflow of the type).
    pub first_bad: Option<usize>,
}

impl StoredError {
    /// These sums followed by `next`'s, whose values start at index `at`.
    pub fn then(self, next: StoredError, at: usize) -> StoredError {
        StoredError {
            sq_err: self.sq_err + next.sq_err,
            sq_val: self.sq_val + next.sq_val,
            max_abs: self.max_abs.max(next.max_abs),
            first_bad: self.first_bad.or(next.first_bad.map(|i| i + at)),
        }
    }

    /// `‖Q(v) − v‖_F / ‖v‖_F` (the absolute `‖Q(v) − v‖_F` where `v` is all zeros).
    pub fn rel_fro(&self) -> f64 {
        if self.sq_val > 0.0 {
            (self.sq_err / self.sq_val).sqrt()
        } else {
            self.sq_err.sqrt()
        }
    }
}

/// [`quantize_par`] appending to `out`, and the [`StoredError`] of what it stored. Each
/// parallel part quantizes and measures a few thousand values at a time while they are in
/// cache (issue #17: a separate pass over the tensor afterwards cost a sixth of a 7B Q4_K_M
/// merge's CPU time); the K-quants hand back the stored values as they pack them
/// ([`quantize_measured`]), the other types are dequantized from their bytes. The sums are per
/// part in eight fixed f64 lanes, folded in order, so they do not depend on the number of
/// threads. `None` as for [`quantize_par`].
pub fn quantize_par_measured(
    ty: GgmlType,
    values: &[f32],
    out: &mut Vec<u8>,
) -> Option<StoredError> {
    use rayon::prelude::*;
    let bs = ty.block_size();
    if !ty.can_quantize() || !values.len().is_multiple_of(bs) {
        return None;
    }
    let part = (PAR_VALUES / bs).max(1) * bs;
    let parts: Vec<Option<(Vec<u8>, StoredError)>> = values
        .par_chunks(part)
        .map_init(Vec::new, |back, c| quantize_part_measured(ty, c, back))
        .collect();
    out.reserve(values.len() / bs * ty.type_size());
    let mut total = StoredError::default();
    for (i, p) in parts.into_iter().enumerate() {
        let (q, e) = p?;
        out.extend_from_slice(&q);
        total = total.then(e, i * part);
    }
    Some(total)
}

/// One part of [`quantize_par_measured`] on the calling thread: `c` (whole blocks) quantized
/// and measured a few thousand values at a time, `back` the caller's reusable buffer of stored
/// values. `None` for a type that cannot be written.
pub(crate) fn quantize_part_measured(
    ty: GgmlType,
    c: &[f32],
    back: &mut Vec<f32>,
) -> Option<(Vec<u8>, StoredError)> {
    let bs = ty.block_size();
    if !ty.can_quantize() || !c.len().is_multiple_of(bs) {
        return None;
    }
    let sub_bytes = SUB / bs * ty.type_size();
    let mut q = Vec::with_capacity(c.len() / SUB * sub_bytes + sub_bytes);
    let mut e = StoredError::default();
    for (i, v) in c.chunks(SUB).enumerate() {
        // Every value is overwritten: zeroed only when the length changes.
        if back.len() != v.len() {
            back.clear();
            back.resize(v.len(), 0f32);
        }
        if !quantize_measured(ty, v, &mut q, back) {
            return None;
        }
        e = e.then(error_sums(back, v), i * SUB);
    }
    Some((q, e))
}

/// [`quantize_into`], writing into `back` (as long as `values`) the values the stored bytes
/// dequantize to ([`dequantize_into`]'s bits): the K-quants as they pack them (from the same
/// stored scales and levels, `kquant::reference::Back`), the other types by dequantizing the
/// bytes just written.
fn quantize_measured(ty: GgmlType, values: &[f32], out: &mut Vec<u8>, back: &mut [f32]) -> bool {
    match ty {
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            out.reserve(values.len() / 256 * ty.type_size());
            kquant::quantize(ty, values, out, Some(back))
        }
        _ => {
            let at = out.len();
            quantize_into(ty, values, out) && dequantize_into(ty, &out[at..], back)
        }
    }
}

crate::backend::simd::multiversion! {
    /// The [`StoredError`] of `back` (stored values) against `v`: eight fixed lanes, summed in
    /// lane order at the end, so every CPU level gives the same bits. Stored values that are
    /// not finite are looked for only where some lane's `Σ e²` is not finite, not checked per
    /// value: such a `q` makes its `e` an infinity or a NaN, which stays one through additions
    /// of non-negative numbers, while finite `e² ≤ (2·f32::MAX)²` never overflow an f64 sum; the
    /// scan then finds the first one (none where only a `v` was not finite, as before).
    fn error_sums(back: &[f32], v: &[f32]) -> StoredError {
        let (mut num, mut den, mut mx) = ([0f64; 8], [0f64; 8], [0f64; 8]);
        let (qs, xs) = (back.chunks_exact(8), v.chunks_exact(8));
        let (qr, xr) = (qs.remainder(), xs.remainder());
        #[cfg(target_arch = "x86_64")]
        let done = if crate::backend::simd::level() >= crate::backend::simd::Level::Avx2 {
            // SAFETY: the CPU has AVX2 (`level` is capped by `detected`).
            unsafe { lanes_avx2(back, v, &mut num, &mut den, &mut mx) };
            true
        } else {
            false
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = false;
        if !done {
            for (q, x) in qs.zip(xs) {
                for l in 0..8 {
                    let (q, x) = (q[l] as f64, x[l] as f64);
                    let e = (q - x).abs();
                    num[l] += e * e;
                    den[l] += x * x;
                    mx[l] = if e > mx[l] { e } else { mx[l] };
                }
            }
        }
        for (l, (q, x)) in qr.iter().zip(xr).enumerate() {
            let (q, x) = (*q as f64, *x as f64);
            let e = (q - x).abs();
            num[l] += e * e;
            den[l] += x * x;
            mx[l] = if e > mx[l] { e } else { mx[l] };
        }
        let bad = num.iter().any(|s| !s.is_finite());
        let fold = |a: [f64; 8]| ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
        StoredError {
            sq_err: fold(num),
            sq_val: fold(den),
            max_abs: mx.iter().fold(0f64, |m, &x| m.max(x)),
            first_bad: bad.then(|| back.iter().position(|q| !q.is_finite())).flatten(),
        }
    }
}

/// The whole groups of eight of [`error_sums`] in AVX2 registers: lane `l` of the sums is lane
/// `l` of two `__m256d` halves, and each lane does the portable loop's operations in its order
/// (`e = |q − x|` in f64, `Σ e²`, `Σ x²`, `max` as `if e > m { e } else { m }`, which is
/// `_mm256_max_pd(e, m)` exactly, NaN included), so the bits are the same. Written out because
/// LLVM vectorised the portable loop into 128-bit shuffles and stack spills (6 % of a 7B GGUF
/// merge's CPU).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lanes_avx2(back: &[f32], v: &[f32], num: &mut [f64; 8], den: &mut [f64; 8], mx: &mut [f64; 8]) {
    use std::arch::x86_64::*;
    let n = back.len().min(v.len()) / 8 * 8;
    let abs = _mm256_castsi256_pd(_mm256_set1_epi64x(i64::MAX));
    let load = |a: &[f64; 8], h: usize| {
        // SAFETY: four f64 inside `a`.
        unsafe { _mm256_loadu_pd(a.as_ptr().add(4 * h)) }
    };
    let (mut n0, mut n1) = (load(num, 0), load(num, 1));
    let (mut d0, mut d1) = (load(den, 0), load(den, 1));
    let (mut m0, mut m1) = (load(mx, 0), load(mx, 1));
    let mut i = 0;
    while i < n {
        // SAFETY: `i + 8 <= n <= len` of both slices.
        let (q, x) = unsafe { (back.as_ptr().add(i), v.as_ptr().add(i)) };
        let (q0, q1, x0, x1) = unsafe {
            (
                _mm256_cvtps_pd(_mm_loadu_ps(q)),
                _mm256_cvtps_pd(_mm_loadu_ps(q.add(4))),
                _mm256_cvtps_pd(_mm_loadu_ps(x)),
                _mm256_cvtps_pd(_mm_loadu_ps(x.add(4))),
            )
        };
        let e0 = _mm256_and_pd(_mm256_sub_pd(q0, x0), abs);
        let e1 = _mm256_and_pd(_mm256_sub_pd(q1, x1), abs);
        n0 = _mm256_add_pd(n0, _mm256_mul_pd(e0, e0));
        n1 = _mm256_add_pd(n1, _mm256_mul_pd(e1, e1));
        d0 = _mm256_add_pd(d0, _mm256_mul_pd(x0, x0));
        d1 = _mm256_add_pd(d1, _mm256_mul_pd(x1, x1));
        m0 = _mm256_max_pd(e0, m0);
        m1 = _mm256_max_pd(e1, m1);
        i += 8;
    }
    let store = |a: &mut [f64; 8], h: usize, r: __m256d| {
        // SAFETY: four f64 inside `a`.
        unsafe { _mm256_storeu_pd(a.as_mut_ptr().add(4 * h), r) }
    };
    store(num, 0, n0);
    store(num, 1, n1);
    store(den, 0, d0);
    store(den, 1, d1);
    store(mx, 0, m0);
    store(mx, 1, m1);
}

/// The type a weight whose rows hold `row` values is written in when `ty` is asked for:
/// `ty` where the rows are whole blocks; else llama-quantize's `tensor_type_fallback`
/// (src/llama-quant.cpp of the llama.cpp tree vendored by llama-cpp-python 0.3.36): Q2_K and
/// Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, a 32-block type stays; and F16 where
/// that type's blocks do not fit either (which is also convert_hf_to_gguf.py's fallback for
/// its own types, gguf-py's `QuantError`).
pub fn fallback(ty: GgmlType, row: usize) -> GgmlType {
    if row.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let to = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        t => t,
    };
    if row.is_multiple_of(to.block_size()) {
        to
    } else {
        GgmlType::F16
    }
}

/// `quants.py` `Q8_0.dequantize_blocks`: `x * d`.
fn q8_0(b: &[u8], o: &mut [f32]) {
    let d = h(b, 0);
    for (j, v) in o.iter_mut().enumerate() {
        *v = f32::from(b[2 + j] as i8) * d;
    }
}

/// The 4-bit value of element `j` of a 32-element block whose nibbles start at `qs`: the low
/// nibbles hold elements 0..16, the high nibbles 16..32.
fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    }
}

/// `Q4_0`: `d * (q - 8)`.
fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = h(b, 0);
    for (j, v) in o.iter_mut().enumerate() {
        *v = d * f32::from(nibble(&b[2..], j) as i8 - 8);
    }
}

/// `Q4_1`: `d * q + m`.
fn q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (h(b, 0), h(b, 2));
    for (j, v) in o.iter_mut().enumerate() {
        *v = d * f32::from(nibble(&b[4..], j)) + m;
    }
}

/// The 5-bit value of element `j`: its nibble plus bit `j` of the little-endian `qh` word.
fn five(qh: &[u8], qs: &[u8], j: usize) -> u8 {
    let hbit = (u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]) >> j) & 1;
    nibble(qs, j) | ((hbit as u8) << 4)
}

/// `Q5_0`: `d * (q - 16)`.
fn q5_0(b: &[u8], o: &mut [f32]) {
    let d = h(b, 0);
    for (j, v) in o.iter_mut().enumerate() {
        *v = d * f32::from(five(&b[2..6], &b[6..], j) as i8 - 16);
    }
}

/// `Q5_1`: `d * q + m`.
fn q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (h(b, 0), h(b, 2));
    for (j, v) in o.iter_mut().enumerate() {
        *v = d * f32::from(five(&b[4..8], &b[8..], j)) + m;
    }
}

/// `Q2_K` (84 bytes: 16 scale bytes, 64 bytes of 2-bit values, `d`, `dmin`): element
/// `i = 128h + 32s + l` is bits `2s..2s+2` of `qs[32h + l]`, in group `i / 16` whose scale is
/// `d * (sc & 15)` and offset `dmin * (sc >> 4)`.
fn q2_k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (h(b, 80), h(b, 82));
    for (i, v) in o.iter_mut().enumerate() {
        let (hh, s, l) = (i / 128, (i % 128) / 32, i % 32);
        let q = (qs[32 * hh + l] >> (2 * s)) & 3;
        let sc = scales[i / 16];
        let dl = d * f32::from(sc & 0xF);
        let ml = dmin * f32::from(sc >> 4);
        *v = dl * f32::from(q) - ml;
    }
}

/// `Q3_K` (110 bytes: 32-byte high-bit mask, 64 bytes of 2-bit values, 12 bytes of packed
/// 6-bit scales, `d`): element `i = 128h + 32s + l` takes bits `2s..` of `qs[32h + l]` and
/// subtracts 4 when bit `i / 32` of `hmask[l]` is clear; scale `j` is the low or high nibble of
/// byte `j % 8` plus two bits of byte `8 + j % 4`, minus 32.
fn q3_k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs, sc, d) = (&b[..32], &b[32..96], &b[96..108], h(b, 108));
    let mut dl = [0f32; 16];
    for (j, x) in dl.iter_mut().enumerate() {
        let lo = (sc[j % 8] >> (4 * (j / 8))) & 0x0F;
        let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 0x03;
        *x = d * f32::from((lo | (hi << 4)) as i8 - 32);
    }
    for (i, v) in o.iter_mut().enumerate() {
        let (hh, s, l) = (i / 128, (i % 128) / 32, i % 32);
        let ql = (qs[32 * hh + l] >> (2 * s)) & 3;
        let qh = ((hmask[l] >> (i / 32)) & 1) ^ 1;
        let q = ql as i8 - (qh << 2) as i8;
        *v = dl[i / 16] * f32::from(q);
    }
}

/// `Q4_K.get_scale_min`: the eight 6-bit scales and mins packed in 12 bytes.
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[4 + j] & 0x3F;
        sc[4 + j] = (s[8 + j] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
    (sc, mn)
}

crate::backend::simd::multiversion! {
    /// The `Q4_K`, `Q5_K` and `Q6_K` blocks of [`dequantize_into`] (lengths checked there),
    /// compiled per CPU level: a plain loop over blocks, each block's loops over runs of one
    /// scale, so that they vectorise (issue #17: the per-element index arithmetic made these
    /// a tenth of a 7B merge's CPU time). The arithmetic and its order are the per-element
    /// formula's, so the bits are gguf-py's at every level.
    fn dequantize_k(ty: GgmlType, data: &[u8], out: &mut [f32]) {
        let (bs, ts) = (ty.block_size(), ty.type_size());
        for (b, o) in data.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
            match ty {
                GgmlType::Q4_K => q4_k(b, o),
                GgmlType::Q5_K => q5_k(b, o),
                _ => q6_k(b, o),
            }
        }
    }
}

/// `Q4_K` (144 bytes: `d`, `dmin`, 12 scale bytes, 128 bytes of nibbles): element
/// `i = 64c + 32s + l` is nibble `s` of `qs[32c + l]`, in sub-block `i / 32 = 2c + s`:
/// `d·sc[sb] · q − dmin·mn[sb]`.
#[inline(always)]
fn q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (h(b, 0), h(b, 2));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    let qs = &b[16..144];
    for (sb, o) in o.chunks_exact_mut(32).enumerate() {
        let (c, s) = (sb / 2, sb % 2);
        let dd = d * f32::from(sc[sb]);
        let dm = dmin * f32::from(mn[sb]);
        for (v, q) in o.iter_mut().zip(&qs[32 * c..32 * c + 32]) {
            *v = dd * f32::from((q >> (4 * s)) & 0x0F) - dm;
        }
    }
}

/// `Q5_K` (176 bytes: `d`, `dmin`, 12 scale bytes, 32 bytes of high bits, 128 bytes of
/// nibbles): as `Q4_K` plus bit `i / 32` of `qh[i % 32]` as the fifth bit.
#[inline(always)]
fn q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (h(b, 0), h(b, 2));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (sb, o) in o.chunks_exact_mut(32).enumerate() {
        let (c, s) = (sb / 2, sb % 2);
        let dd = d * f32::from(sc[sb]);
        let dm = dmin * f32::from(mn[sb]);
        for ((v, q), hb) in o.iter_mut().zip(&qs[32 * c..32 * c + 32]).zip(qh) {
            let q = ((q >> (4 * s)) & 0x0F) | (((hb >> sb) & 1) << 4);
            *v = dd * f32::from(q) - dm;
        }
    }
}

/// `Q6_K` (210 bytes: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 signed scales,
/// `d`): element `i = 128h + 64s + l` (l < 64) takes nibble `s` of `ql[64h + l]`; element
/// `i = 128h + 32t + m` (m < 32) takes bits `2t..` of `qh[32h + m]`; minus 32, times
/// `d * scale[i / 16]` (one scale per run of 16, inside which `s` and `t` are constant).
#[inline(always)]
fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, scales, d) = (&b[..128], &b[128..192], &b[192..208], h(b, 208));
    for (g, o) in o.chunks_exact_mut(16).enumerate() {
        let (hh, r) = (g / 8, 16 * (g % 8));
        let dl = d * f32::from(scales[g] as i8);
        let lo = &ql[64 * hh + r % 64..][..16];
        let hi = &qh[32 * hh + r % 32..][..16];
        let (ls, hs) = (4 * (r / 64), 2 * (r / 32));
        for ((v, lo), hi) in o.iter_mut().zip(lo).zip(hi) {
            let q = (((lo >> ls) & 0x0F) | (((hi >> hs) & 0x03) << 4)) as i8 - 32;
            *v = dl * f32::from(q);
        }
    }
}

/// ggml's `kvalues_iq4nl`: the 16 levels of the non-linear 4-bit types (gguf-py
/// `IQ4_NL.kvalues`).
const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// 32 values of levels `qs` (16 bytes: element `j < 16` the low nibble of byte `j`, element
/// `16 + j` its high nibble), each `d · kvalues[q]`.
#[inline(always)]
fn iq4_run(qs: &[u8], d: f32, o: &mut [f32]) {
    for (j, &q) in qs[..16].iter().enumerate() {
        o[j] = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0F)]);
        o[j + 16] = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
    }
}

/// `IQ4_NL` (18 bytes: `d`, 16 bytes of levels), as gguf-py's `IQ4_NL.dequantize_blocks` and
/// ggml's `dequantize_row_iq4_nl`.
#[inline(always)]
fn iq4_nl(b: &[u8], o: &mut [f32]) {
    iq4_run(&b[2..18], h(b, 0), o);
}

/// `IQ4_XS` (136 bytes: `d`, `scales_h` (u16), `scales_l` [4], levels [128]): sub-block `ib`'s
/// 6-bit scale is nibble `ib % 2` of `scales_l[ib / 2]` with bits `2 ib..` of `scales_h` above
/// it, minus 32; its 32 values `(d · scale) · kvalues[q]`, as gguf-py's
/// `IQ4_XS.dequantize_blocks` and ggml's `dequantize_row_iq4_xs`.
#[inline(always)]
fn iq4_xs(b: &[u8], o: &mut [f32]) {
    let d = h(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for (ib, o) in o.chunks_exact_mut(32).enumerate() {
        let lo = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F;
        let hi = ((scales_h >> (2 * ib)) & 0x03) as u8;
        let ls = (lo | (hi << 4)) as i8 - 32;
        iq4_run(&qs[16 * ib..], d * f32::from(ls), o);
    }
}

// ---------------------------------------------------------------------------------------------
// Quantizers
// ---------------------------------------------------------------------------------------------

/// Quantizes `values` (whole blocks of `ty`) to `ty`, appending to `out`. Returns `false`,
/// writing nothing, for a type without a reference quantizer or a length that is not a whole
/// number of blocks.
pub fn quantize_into(ty: GgmlType, values: &[f32], out: &mut Vec<u8>) -> bool {
    let bs = ty.block_size();
    if !ty.can_quantize() || !values.len().is_multiple_of(bs) {
        return false;
    }
    out.reserve(values.len() / bs * ty.type_size());
    match ty {
        GgmlType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&to_bf16(*v).to_le_bytes())),
        GgmlType::Q8_0 => values.chunks_exact(32).for_each(|b| quant_q8_0(b, out)),
        GgmlType::Q4_0 => values.chunks_exact(32).for_each(|b| quant_sym(b, 4, out)),
        GgmlType::Q5_0 => values.chunks_exact(32).for_each(|b| quant_sym(b, 5, out)),
        GgmlType::Q4_1 => values.chunks_exact(32).for_each(|b| quant_aff(b, 4, out)),
        GgmlType::Q5_1 => values.chunks_exact(32).for_each(|b| quant_aff(b, 5, out)),
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            return kquant::quantize(ty, values, out, None)
        }
        _ => return false,
    }
    true
}

/// [`quantize_into`] with the K-quants through their scalar transcription of ggml
/// (`kquant::reference`) instead of the lane-parallel search: the same bytes, several times
/// slower. For tests and `benches/gguf.rs`, which compare the two.
#[doc(hidden)]
pub fn quantize_reference(ty: GgmlType, values: &[f32], out: &mut Vec<u8>) -> bool {
    match ty {
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            out.reserve(values.len() / 256 * ty.type_size());
            kquant::quantize_reference(ty, values, out)
        }
        _ => quantize_into(ty, values, out),
    }
}

/// `quants.py` `BF16.quantize_blocks` (= ggml's `ggml_compute_fp32_to_bf16`): a NaN becomes a
/// quiet NaN with its sign and top payload bits; everything else rounds to nearest even.
pub fn to_bf16(x: f32) -> u16 {
    let mut n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    ((u64::from(n) + (0x7fff + u64::from((n >> 16) & 1))) >> 16) as u16
}

/// `quants.py` `np_roundf`: round half away from zero, computed as numpy does
/// (`sign(n) * (floor(|n|) + floor(2 * (|n| - floor(|n|))))`, in `f32`).
fn roundf(n: f32) -> f32 {
    let a = n.abs();
    let fl = a.floor();
    let b = fl + (2.0 * (a - fl)).floor();
    let sign = if n > 0.0 {
        1.0
    } else if n < 0.0 {
        -1.0
    } else {
        0.0
    };
    sign * b
}

/// `1 / d`, or 0 when `d` is 0 (`np.where(d == 0, 0, 1 / d)`).
fn inv(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Float to integer as numpy's `astype` does on x86-64 for in-range values (truncation); the
/// quantizers clip afterwards exactly as gguf-py does.
fn trunc_u8(x: f32) -> u8 {
    x.trunc() as i32 as u8
}

/// `Q8_0.quantize_blocks` (bit-exact with ggml's `quantize_row_q8_0_ref`):
/// `d = max|x| / 127`, `q = roundf(x / d)`.
fn quant_q8_0(b: &[f32], out: &mut Vec<u8>) {
    let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inv(d);
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    for &v in b {
        out.push(roundf(v * id) as i32 as i8 as u8);
    }
}

/// Packs 32 quantized values as `quants.py` does: the low nibbles of elements `j` and `j + 16`
/// share byte `j`; for 5 bits, the fifth bits go little-endian into a 4-byte `qh` before them.
fn pack(q: &[u8; 32], bits: u32, out: &mut Vec<u8>) {
    if bits == 5 {
        let mut qh = 0u32;
        for (j, &v) in q.iter().enumerate() {
            if v >> 4 != 0 {
                qh |= 1 << j;
            }
        }
        out.extend_from_slice(&qh.to_le_bytes());
    }
    for j in 0..16 {
        out.push((q[j] & 0x0F) | (q[j + 16] << 4));
    }
}

/// `Q4_0` / `Q5_0` `quantize_blocks`: the element of largest magnitude (the first one on a
/// tie) with its sign gives `d = max / -8` (`-16`); `q = min(trunc(x / d + 8.5), 15)`
/// (`16.5`, `31`).
fn quant_sym(b: &[f32], bits: u32, out: &mut Vec<u8>) {
    let mut max = 0f32;
    let mut amax = -1f32;
    for &v in b {
        // argmax keeps the first of equal maxima.
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let (div, add, top) = if bits == 4 {
        (-8f32, 8.5f32, 15u8)
    } else {
        (-16f32, 16.5f32, 31u8)
    };
    let d = max / div;
    let id = inv(d);
    let mut q = [0u8; 32];
    for (qi, &v) in q.iter_mut().zip(b) {
        *qi = trunc_u8(v * id + add).min(top);
    }
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    pack(&q, bits, out);
}

/// `Q4_1` / `Q5_1` `quantize_blocks`: `d = (max - min) / 15` (`31`),
/// `q = min(trunc((x - min) / d + 0.5), 15)`; `d` and `min` stored as f16.
///
/// Among equal extremes the later element wins, as numpy's `min`/`max` reductions give on
/// x86-64: this only shows for signed zeros (a block of ±0 stores `min` as the sign of its last
/// zero), and is pinned by the signed-zero block of `fixtures/gguf/quant.gguf`.
fn quant_aff(b: &[f32], bits: u32, out: &mut Vec<u8>) {
    let max = b[1..].iter().fold(b[0], |m, &v| if v >= m { v } else { m });
    let min = b[1..].iter().fold(b[0], |m, &v| if v <= m { v } else { m });
    let (levels, top) = if bits == 4 {
        (15f32, 15u8)
    } else {
        (31f32, 31u8)
    };
    let d = (max - min) / levels;
    let id = inv(d);
    let mut q = [0u8; 32];
    for (qi, &v) in q.iter_mut().zip(b) {
        *qi = trunc_u8((v - min) * id + 0.5).min(top);
    }
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    pack(&q, bits, out);
}

#[cfg(test)]
mod tests {
    use super::error_sums;
    use crate::backend::simd::{with_level, Level};
    use crate::linalg::rng::Xoshiro256PlusPlus as Rng;

    /// Every CPU level (the AVX2 intrinsics, the wide and the baseline portable loops) gives the
    /// same bits: random values, a length with a remainder, huge values, and stored values that
    /// are NaN or ±∞ (the first one found, as the portable loop finds it).
    #[test]
    fn every_level_gives_the_same_bits() {
        let mut rng = Rng::seed_from_u64(3);
        let n = 4096 + 5;
        let v: Vec<f32> = (0..n)
            .map(|_| (rng.next_f64() - 0.5) as f32 * 0.1)
            .collect();
        let mut cases: Vec<Vec<f32>> = Vec::new();
        let noisy: Vec<f32> = v
            .iter()
            .map(|x| x + (rng.next_f64() - 0.5) as f32 * 1e-3)
            .collect();
        cases.push(noisy.clone());
        let mut huge = noisy.clone();
        huge[17] = f32::MAX;
        huge[4099] = -f32::MAX;
        cases.push(huge);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut b = noisy.clone();
            b[1000] = bad;
            b[3000] = f32::NAN;
            cases.push(b);
        }
        let mut tail_bad = noisy.clone();
        tail_bad[n - 2] = f32::NAN;
        cases.push(tail_bad);
        for back in &cases {
            let got: Vec<_> = [Level::Baseline, Level::Avx2, Level::Avx512]
                .into_iter()
                .map(|l| {
                    let e = with_level(l, || error_sums(back, &v));
                    (
                        e.sq_err.to_bits(),
                        e.sq_val.to_bits(),
                        e.max_abs.to_bits(),
                        e.first_bad,
                    )
                })
                .collect();
            assert_eq!(got[0], got[1]);
            assert_eq!(got[0], got[2]);
            let first = back.iter().position(|q| !q.is_finite());
            assert_eq!(got[0].3, first);
        }
    }
}
