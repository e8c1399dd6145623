//! The lane-parallel searches against the scalar transcription, bit for bit, at every CPU level:
//! any lane that computes a different operation, order or branch than ggml's scalar code shows
//! as a different scale, min, level or byte here. (Both are checked against ggml's own bytes
//! in `io::gguf::tests`.)

use super::reference::{self, Fit};
use super::{lanes, quantize, quantize_reference};
use crate::backend::simd::{with_level, Level};
use crate::io::gguf::types::GgmlType;

/// xorshift64* in `[0, 1)`, seeded.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() * n as f64) as usize
    }
    fn normal(&mut self) -> f32 {
        ((self.next() + self.next() + self.next() + self.next() - 2.0) * 3f64.sqrt()) as f32
    }
}

/// One 16-value group of a kind chosen by `kind`: the cases where the scalar code branches
/// (flat and all-zero groups, the min clamp, ties, magnitudes at and past f16's range, tiny and
/// subnormal values), the cases where the lanes' cheaper rounding must give way to
/// `nearest_int`'s bit arithmetic (a NaN, an infinity, a range that overflows `f32`) or must
/// round a tie at `.5` to even, and noise at magnitudes 1e-8 … 1e8.
fn group(rng: &mut Rng, kind: usize) -> [f32; 16] {
    let mut g = [0f32; 16];
    let scale = 10f32.powi(rng.below(17) as i32 - 8);
    match kind {
        0 => {}
        1 => g
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = if i % 2 == 0 { -0.0 } else { 0.0 }),
        2 => g.fill(scale),
        3 => g.fill(-scale),
        4 => g[rng.below(16)] = scale * if rng.next() < 0.5 { 1.0 } else { -1.0 },
        5 => {
            g.iter_mut().for_each(|v| *v = rng.normal() * scale);
            let (a, b) = (rng.below(16), rng.below(16));
            (g[a], g[b]) = (scale * 4.0, -scale * 4.0);
        }
        6 => g
            .iter_mut()
            .for_each(|v| *v = rng.normal().abs() * scale + scale),
        7 => g
            .iter_mut()
            .for_each(|v| *v = -rng.normal().abs() * scale - scale),
        8 => g
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i as f32 - 8.0) * 0.5 * scale),
        9 => g
            .iter_mut()
            .for_each(|v| *v = (rng.below(9) as f32 - 4.0) * scale),
        10 => g.iter_mut().for_each(|v| *v = rng.normal() * 6e4),
        11 => g.iter_mut().for_each(|v| *v = rng.normal() * 1e30),
        12 => g.iter_mut().for_each(|v| *v = rng.normal() * 1e-38),
        13 => g.iter_mut().for_each(|v| *v = rng.normal() * 1e-16),
        14 => g.iter_mut().for_each(|v| {
            *v = if rng.next() < 0.8 {
                0.0
            } else {
                rng.normal() * scale
            }
        }),
        15 => {
            let vals = [scale, -scale, 0.5 * scale, 2.0 * scale];
            g.iter_mut().for_each(|v| *v = vals[rng.below(4)]);
        }
        16 => {
            g.iter_mut().for_each(|v| *v = rng.normal() * scale);
            g[rng.below(16)] = if rng.next() < 0.5 {
                f32::NAN
            } else {
                -f32::NAN
            };
        }
        17 => {
            g.iter_mut().for_each(|v| *v = rng.normal() * scale);
            g[rng.below(16)] = if rng.next() < 0.5 {
                f32::INFINITY
            } else {
                f32::NEG_INFINITY
            };
        }
        18 => g
            .iter_mut()
            .for_each(|v| *v = rng.normal().clamp(-1.0, 1.0) * 3e38),
        19 => {
            // Products `iscale · x` at `k + 0.5` (Q6_K's first candidate: `-32 / 32s · x`).
            let s = 2f32.powi(rng.below(40) as i32 - 20);
            g.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (i as f32 - 7.5) * s);
            g[rng.below(16)] = 32.0 * s;
        }
        _ => g.iter_mut().for_each(|v| *v = rng.normal() * scale),
    }
    g
}

/// Super-blocks whose sixteen 16-value groups each take an independent kind (so the lanes of
/// one super-block take different branches), then the same with every group of one kind.
fn superblocks(n: usize) -> Vec<f32> {
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
    let mut x = Vec::with_capacity(256 * (n + 2 * 20));
    for _ in 0..n {
        for _ in 0..16 {
            let kind = rng.below(28);
            x.extend_from_slice(&group(&mut rng, kind));
        }
    }
    for kind in 0..20 {
        for _ in 0..16 {
            x.extend_from_slice(&group(&mut rng, kind));
        }
        // The same group repeated: every lane equal.
        let g = group(&mut rng, kind);
        (0..16).for_each(|_| x.extend_from_slice(&g));
    }
    x
}

fn same_fit(ty: GgmlType, i: usize, lanes: &Fit, scalar: &Fit, x: &[f32]) {
    let bits = |v: &[f32; 16]| v.map(f32::to_bits);
    assert_eq!(
        (bits(&lanes.scales), bits(&lanes.mins), lanes.l),
        (bits(&scalar.scales), bits(&scalar.mins), scalar.l),
        "{ty} super-block {i}: input {x:?}"
    );
}

#[test]
fn lane_searches_equal_the_scalar_transcription_bit_for_bit_at_every_level() {
    use GgmlType::*;
    let x = superblocks(160);
    for level in [Level::Baseline, Level::Avx2, Level::Avx512] {
        for (i, b) in x.chunks_exact(256).enumerate() {
            with_level(level, || {
                same_fit(Q2_K, i, &lanes::q2_fit(b), &reference::q2_fit(b), b);
                same_fit(Q3_K, i, &lanes::q3_fit(b), &reference::q3_fit(b), b);
                let (l4, s4) = (
                    lanes::kx_fit(b, 15, -1.0, 20),
                    reference::kx_fit(b, 15, -1.0, 20),
                );
                same_fit(Q4_K, i, &l4, &s4, b);
                let (l5, s5) = (
                    lanes::kx_fit(b, 31, -0.5, 15),
                    reference::kx_fit(b, 31, -0.5, 15),
                );
                same_fit(Q5_K, i, &l5, &s5, b);
                same_fit(Q6_K, i, &lanes::q6_fit(b), &reference::q6_fit(b), b);
            });
        }
        for (i, b) in x.chunks_exact(512).enumerate() {
            with_level(level, || {
                for (ty, nmax, rmin, nstep) in [(Q4_K, 15, -1.0, 20), (Q5_K, 31, -0.5, 15)] {
                    let two = lanes::kx_fit2(b, nmax, rmin, nstep);
                    for (k, fit) in two.iter().enumerate() {
                        let one = &b[256 * k..256 * k + 256];
                        let want = reference::kx_fit(one, nmax, rmin, nstep);
                        same_fit(ty, 2 * i + k, fit, &want, one);
                    }
                }
            });
        }
        // An odd number of super-blocks: Q4_K/Q5_K's last one takes the eight-lane path.
        let odd = &x[..x.len() - 256];
        assert_eq!(odd.len() / 256 % 2, 1);
        for ty in [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K] {
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            assert!(with_level(level, || quantize(ty, odd, &mut fast, None)));
            assert!(quantize_reference(ty, odd, &mut slow));
            let ts = ty.type_size();
            for (i, (f, s)) in fast.chunks(ts).zip(slow.chunks(ts)).enumerate() {
                assert_eq!(f, s, "{ty} at {level:?}, super-block {i}");
            }
            assert_eq!(fast.len(), slow.len(), "{ty}");
        }
    }
}

#[test]
fn the_adversarial_set_reaches_the_branches_it_is_for() {
    // A guard on the generator: without flat, zero and clamped-min groups the comparison above
    // would not exercise the lanes' selects.
    let x = superblocks(160);
    let groups: Vec<&[f32]> = x.chunks_exact(16).collect();
    assert!(groups.iter().any(|g| g.iter().all(|&v| v == 0.0)));
    assert!(groups
        .iter()
        .any(|g| g[0] != 0.0 && g.iter().all(|&v| v == g[0])));
    assert!(groups.iter().any(|g| g.iter().all(|&v| v > 0.0)));
    assert!(groups.iter().any(|g| g.iter().any(|v| v.abs() > 65504.0)));
    assert!(groups
        .iter()
        .any(|g| g.iter().any(|&v| v != 0.0 && v.abs() < f32::MIN_POSITIVE)));
    assert!(groups.iter().any(|g| g.iter().any(|v| v.is_nan())));
    assert!(groups.iter().any(|g| g.iter().any(|v| v.is_infinite())));
    assert!(groups.iter().any(|g| {
        let (lo, hi) = g
            .iter()
            .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
        (hi - lo).is_infinite() && lo.is_finite() && hi.is_finite()
    }));
    // Mixed super-blocks: some hold both a flat or zero group and a noisy one.
    let mixed = x.chunks_exact(256).any(|b| {
        let gs: Vec<&[f32]> = b.chunks_exact(16).collect();
        gs.iter().any(|g| g.iter().all(|&v| v == g[0])) && gs.iter().any(|g| g[0] != g[1])
    });
    assert!(mixed);
}

#[test]
fn quantize_refuses_what_is_not_a_whole_k_block() {
    let mut out = Vec::new();
    assert!(!quantize(GgmlType::Q4_K, &[0.0; 255], &mut out, None));
    assert!(!quantize(GgmlType::Q8_0, &[0.0; 256], &mut out, None));
    let mut back = [0f32; 256];
    assert!(!quantize(
        GgmlType::Q4_K,
        &[0.0; 512],
        &mut out,
        Some(&mut back)
    ));
    assert!(out.is_empty());
}

/// The values a pack hands back (`reference::Back`, what the merge measures its error on) are
/// those ggml's dequantizer reads from the packed bytes (`quant::dequantize_into`, checked
/// against gguf-py), bit for bit, for every K type at every level; and handing them back does
/// not change the bytes.
#[test]
fn packs_hand_back_the_dequantized_bytes_bit_for_bit() {
    use GgmlType::*;
    let x = superblocks(160);
    for level in [Level::Baseline, Level::Avx2, Level::Avx512] {
        for ty in [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K] {
            let (mut bytes, mut plain) = (Vec::new(), Vec::new());
            let mut back = vec![f32::NAN; x.len()];
            assert!(with_level(level, || quantize(
                ty,
                &x,
                &mut bytes,
                Some(&mut back)
            )));
            assert!(with_level(level, || quantize(ty, &x, &mut plain, None)));
            assert!(bytes == plain, "{ty} at {level:?}: bytes");
            let mut want = vec![0f32; x.len()];
            assert!(crate::io::gguf::quant::dequantize_into(
                ty, &bytes, &mut want
            ));
            for (i, (b, w)) in back.iter().zip(&want).enumerate() {
                assert_eq!(
                    b.to_bits(),
                    w.to_bits(),
                    "{ty} at {level:?}, value {i}: {b} vs {w}"
                );
            }
        }
    }
}

/// 32-value groups for the `Q4_K`/`Q5_K` search in AVX2 registers, beyond what `group` makes in
/// pairs: levels at `k + 0.5` for the first inverse scale (`x = s·i/2`, the max `15 s` or `31 s`
/// so that `iscale = 1/s`), one far outlier among equal values (a huge `iscale · (x - min)` once
/// the min moves), a lone NaN or infinity in one lane only, ranges near `f32::MAX`, and values
/// whose products straddle the float rounding's bound.
fn kx_group(rng: &mut Rng, kind: usize, nmax: i32) -> [f32; 32] {
    let mut g = [0f32; 32];
    let s = 2f32.powi(rng.below(30) as i32 - 15);
    match kind {
        0 => {
            g.iter_mut()
                .for_each(|v| *v = rng.below(2 * nmax as usize + 1) as f32 * 0.5 * s);
            g[rng.below(32)] = nmax as f32 * s;
        }
        1 => {
            g.fill(s);
            g[rng.below(32)] = s * 1e7 * if rng.next() < 0.5 { 1.0 } else { -1.0 };
        }
        2 => {
            g.iter_mut().for_each(|v| *v = rng.normal() * s);
            g[rng.below(32)] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.below(3)];
        }
        3 => g
            .iter_mut()
            .for_each(|v| *v = rng.normal().clamp(-1.0, 1.0) * 1.5e38),
        4 => {
            g.iter_mut().for_each(|v| *v = rng.normal() * s);
            g[rng.below(32)] = s * 2f32.powi(19 + rng.below(6) as i32);
        }
        5 => g.iter_mut().for_each(|v| *v = 1.0 + rng.normal() * 1e-7),
        _ => g.iter_mut().for_each(|v| *v = rng.normal() * s),
    }
    g
}

/// Super-blocks of eight `kx_group`s of independent kinds, then of one kind each.
fn kx_superblocks(n: usize, nmax: i32) -> Vec<f32> {
    let mut rng = Rng(0x0DDB_1A5E_5BAD_5EED ^ nmax as u64);
    let mut x = Vec::new();
    for _ in 0..n {
        for _ in 0..8 {
            let kind = rng.below(9);
            x.extend_from_slice(&kx_group(&mut rng, kind, nmax));
        }
    }
    for kind in 0..6 {
        for _ in 0..8 {
            x.extend_from_slice(&kx_group(&mut rng, kind, nmax));
        }
    }
    x
}

/// The `Q4_K`/`Q5_K` search in AVX2 registers (`avx2::kx_fits`, one super-block and two side by
/// side), and `Q6_K`'s (`avx2::q6_fit`), equal the scalar transcription bit for bit on the adversarial sets: `superblocks`' and
/// `kx_superblocks`'. Not run on a CPU without AVX2 (it says so).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_searches_equal_the_scalar_transcription_bit_for_bit() {
    use super::avx2;
    use GgmlType::*;
    if crate::backend::simd::detected() < Level::Avx2 {
        eprintln!("no AVX2 on this CPU: avx2::kx_fits not tested");
        return;
    }
    for (ty, nmax, rmin, nstep) in [(Q4_K, 15, -1.0, 20), (Q5_K, 31, -0.5, 15)] {
        let mut x = superblocks(160);
        x.extend(kx_superblocks(160, nmax));
        for (i, b) in x.chunks_exact(256).enumerate() {
            // SAFETY: the CPU has AVX2 (checked above).
            let [got] = unsafe { avx2::kx_fits::<1>(b, nmax, rmin, nstep) };
            if nmax == 15 {
                // SAFETY: as above.
                let q6 = unsafe { avx2::q6_fit(b) };
                same_fit(Q6_K, i, &q6, &reference::q6_fit(b), b);
            }
            same_fit(ty, i, &got, &reference::kx_fit(b, nmax, rmin, nstep), b);
        }
        // Pairs, offset by one super-block so that each one is searched beside two others.
        for start in [0, 256] {
            for (i, b) in x[start..].chunks_exact(512).enumerate() {
                // SAFETY: as above.
                let two = unsafe { avx2::kx_fits::<2>(b, nmax, rmin, nstep) };
                for (k, fit) in two.iter().enumerate() {
                    let one = &b[256 * k..256 * k + 256];
                    let want = reference::kx_fit(one, nmax, rmin, nstep);
                    same_fit(ty, start / 256 + 2 * i + k, fit, &want, one);
                }
            }
        }
    }
}

/// The float roundings of `avx2` and `avx512` (`min(max(p + M, M), M + nmax) - M`, and
/// `min(max(round(p), 0), nmax)`) equal ggml's bit
/// arithmetic (`nearest_int(p).clamp(0, nmax)`, the scalar transcription's) for every `p` within
/// its bound: the bound itself, ties at `k + 0.5` (to even), the last floats below integers,
/// signed zeros, and a sweep; and the bound is needed: past `2²² - 1` the two part.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_float_rounding_equals_nearest_int_within_its_bound() {
    use super::avx2::{level_fast0_exact, level_fast_exact, FAST_BOUND};
    use super::avx512;
    if crate::backend::simd::detected() < Level::Avx2 {
        eprintln!("no AVX2 on this CPU: avx2's rounding not tested");
        return;
    }
    let below = FAST_BOUND.next_down();
    let mut p = vec![
        FAST_BOUND,
        -FAST_BOUND,
        below,
        -below,
        below - 0.5,
        0.0,
        -0.0,
        -1e-30,
    ];
    for k in -40..40 {
        let k = k as f32;
        p.extend([
            k + 0.5,
            k - 0.5,
            k.next_down(),
            k.next_up(),
            (k + 0.5).next_up(),
        ]);
    }
    for e in 0..20 {
        let b = 2f32.powi(e);
        p.extend([
            b + 0.5,
            -b - 0.5,
            b.next_down(),
            -b.next_down(),
            b * 1.5 + 0.5,
        ]);
    }
    let mut rng = Rng(0xB0B0_CAFE);
    p.extend(
        (0..20_000).map(|_| (rng.next() as f32 * 2.0 - 1.0) * 2f32.powi(rng.below(21) as i32)),
    );
    // `avx512`'s copy where the CPU has it, sixteen lanes at a time.
    let wide = crate::backend::simd::detected() >= Level::Avx512;
    let check = |v: &[f32], fast: &[f32], exact: &[f32], lo: i32, hi: i32| {
        for j in 0..v.len() {
            let want = reference::nearest_int(v[j]).clamp(lo, hi) as f32;
            assert_eq!(exact[j].to_bits(), want.to_bits(), "exact, p = {}", v[j]);
            assert_eq!(fast[j].to_bits(), want.to_bits(), "fast, p = {}", v[j]);
        }
    };
    for (lo, hi) in [(0, 15), (0, 31), (-32, 31)] {
        for chunk in p.chunks(16) {
            let mut v = [0f32; 16];
            v[..chunk.len()].copy_from_slice(chunk);
            assert!(v.iter().all(|x| x.abs() <= FAST_BOUND));
            for h in v.chunks_exact(8) {
                let h: [f32; 8] = h.try_into().unwrap();
                // SAFETY: the CPU has AVX2 (checked above).
                let (fast, exact) = unsafe { level_fast_exact(h, lo, hi) };
                check(&h, &fast, &exact, lo, hi);
                if lo == 0 {
                    // SAFETY: as above.
                    let (fast, exact) = unsafe { level_fast0_exact(h, hi) };
                    check(&h, &fast, &exact, lo, hi);
                }
            }
            // `avx512`'s rounding serves `lo = 0` only: below, a `-0` survives the clamp.
            if wide && lo == 0 {
                // SAFETY: the CPU has AVX-512F (`wide`).
                let (fast, exact) = unsafe { avx512::level_fast_exact(v, lo, hi) };
                check(&v, &fast, &exact, lo, hi);
            }
        }
    }
    // Past the bound the float rounding is wrong: p + M rounds up to 2²⁴.
    let past = reference::nearest_int(4_194_303.5).clamp(0, 15) as f32;
    // SAFETY: as above.
    let (fast, exact) = unsafe { level_fast_exact([4_194_303.5; 8], 0, 15) };
    assert_eq!(exact[0], past);
    assert_ne!(fast[0], exact[0]);
    if wide {
        // SAFETY: as above.
        let (fast, exact) = unsafe { avx512::level_fast_exact([4_194_303.5; 16], 0, 15) };
        assert_eq!(exact[15], past);
        assert_ne!(fast[15], exact[15]);
    }
}

/// `avx2::within_bound` takes a lane to the float rounding only where the step's `p` at the
/// group's smallest and largest value are within the bound and the values finite: a lane at the
/// bound, past it below or above, an infinite or NaN inverse scale, a group with a NaN or an
/// infinity.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_search_rounds_in_floats_only_within_the_bound() {
    use super::avx2::{within_bound, FAST_BOUND};
    use std::arch::x86_64::*;
    if crate::backend::simd::detected() < Level::Avx2 {
        eprintln!("no AVX2 on this CPU: avx2::within_bound not tested");
        return;
    }
    // Lanes: iscale, min, data min, data max, finite; whether the lane is within.
    type Lane = (f32, f32, f32, f32, bool, bool);
    let lanes: [Lane; 8] = [
        (15.0, -1.0, -1.0, 1.0, true, true),
        (1.0, 0.0, -FAST_BOUND, FAST_BOUND, true, true),
        (1.0, 0.0, -FAST_BOUND, FAST_BOUND.next_up(), true, false),
        (2.0, 0.0, -FAST_BOUND, 1.0, true, false),
        (f32::INFINITY, -1.0, -1.0, 1.0, true, false),
        (f32::NAN, -1.0, -1.0, 1.0, true, false),
        (15.0, -1.0, -1.0, 1.0, false, false),
        (1.5e-29, -1e30, -1e30, 1e-30, true, true),
    ];
    let v = |f: fn(&Lane) -> f32| {
        let a: [f32; 8] = std::array::from_fn(|j| f(&lanes[j]));
        // SAFETY: eight f32 in `a`; the CPU has AVX2 (checked above).
        unsafe { _mm256_loadu_ps(a.as_ptr()) }
    };
    let finite = v(|l| if l.4 { f32::from_bits(u32::MAX) } else { 0.0 });
    // SAFETY: the CPU has AVX2 (checked above).
    let got = unsafe { within_bound(v(|l| l.0), v(|l| l.1), v(|l| l.2), v(|l| l.3), finite) };
    for (j, l) in lanes.iter().enumerate() {
        assert_eq!(got >> j & 1 == 1, l.5, "lane {j}: {l:?}");
    }
    if crate::backend::simd::detected() < Level::Avx512 {
        eprintln!("no AVX-512F on this CPU: avx512::within_bound not tested");
        return;
    }
    // `avx512`'s, sixteen lanes: the same cases, the upper eight in the reverse order.
    let at = |j: usize| &lanes[if j < 8 { j } else { 15 - j }];
    let v = |f: fn(&Lane) -> f32| {
        let a: [f32; 16] = std::array::from_fn(|j| f(at(j)));
        // SAFETY: sixteen f32 in `a`; the CPU has AVX-512F (checked above).
        unsafe { _mm512_loadu_ps(a.as_ptr()) }
    };
    let finite = (0..16).fold(0u16, |m, j| m | (u16::from(at(j).4) << j));
    // SAFETY: the CPU has AVX-512F (checked above).
    let got = unsafe {
        super::avx512::within_bound(v(|l| l.0), v(|l| l.1), v(|l| l.2), v(|l| l.3), finite)
    };
    for j in 0..16 {
        assert_eq!(
            got >> j & 1 == 1,
            at(j).5,
            "16 lanes, lane {j}: {:?}",
            at(j)
        );
    }
}

/// The `Q4_K`/`Q5_K` search in AVX-512 registers (`avx512::kx_fits`: two super-blocks per
/// register, one and two registers side by side, at every offset so that each super-block is
/// searched in each position beside others), and `Q6_K`'s (`avx512::q6_fits`, one and two
/// super-blocks), equal the scalar transcription bit for bit on the adversarial sets:
/// `superblocks`' and `kx_superblocks`'. Not run on a CPU without AVX-512F
/// (it says so).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_searches_equal_the_scalar_transcription_bit_for_bit() {
    use super::avx512;
    use GgmlType::*;
    if crate::backend::simd::detected() < Level::Avx512 {
        eprintln!("no AVX-512F on this CPU: avx512::kx_fits not tested");
        return;
    }
    for (ty, nmax, rmin, nstep) in [(Q4_K, 15, -1.0, 20), (Q5_K, 31, -0.5, 15)] {
        let mut x = superblocks(160);
        x.extend(kx_superblocks(160, nmax));
        let want: Vec<Fit> = x
            .chunks_exact(256)
            .map(|b| reference::kx_fit(b, nmax, rmin, nstep))
            .collect();
        let mut fits = [Fit::default(); 4];
        for start in 0..4 {
            for (i, b) in x[256 * start..].chunks_exact(1024).enumerate() {
                // SAFETY: the CPU has AVX-512F (checked above).
                unsafe { avx512::kx_fits::<2>(b, nmax, rmin, nstep, &mut fits) };
                for (k, fit) in fits.iter().enumerate() {
                    let at = start + 4 * i + k;
                    same_fit(ty, at, fit, &want[at], &b[256 * k..256 * k + 256]);
                }
            }
        }
        for start in 0..2 {
            for (i, b) in x[256 * start..].chunks_exact(512).enumerate() {
                // SAFETY: as above.
                unsafe { avx512::kx_fits::<1>(b, nmax, rmin, nstep, &mut fits[..2]) };
                for (k, fit) in fits[..2].iter().enumerate() {
                    let at = start + 2 * i + k;
                    same_fit(ty, at, fit, &want[at], &b[256 * k..256 * k + 256]);
                }
                // `Q6_K`'s search, one super-block per register, two side by side.
                // SAFETY: as above.
                unsafe { avx512::q6_fits::<2>(b, &mut fits[..2]) };
                for (k, fit) in fits[..2].iter().enumerate() {
                    let one = &b[256 * k..256 * k + 256];
                    same_fit(Q6_K, start + 2 * i + k, fit, &reference::q6_fit(one), one);
                }
            }
        }
        if nmax == 15 {
            for (i, b) in x.chunks_exact(256).enumerate() {
                // SAFETY: as above.
                unsafe { avx512::q6_fits::<1>(b, &mut fits[..1]) };
                same_fit(Q6_K, i, &fits[0], &reference::q6_fit(b), b);
            }
        }
    }
}
