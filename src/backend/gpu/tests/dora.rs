//! DoRA norms on the device: the software binary64 square and addition (`shaders/f64.wgsl`)
//! against the CPU's f64 on adversarial bit patterns, the norm sums against the reference order
//! (the same test body as the CPU's, `cpu::tests::assert_dora_sums_exact`), and DoRA merges
//! byte-identical to the CPU in every dtype.

use super::*;
use crate::backend::cpu::tests::assert_dora_sums_exact;
use kernels::F64_CHECK_WG;

/// Runs `shaders/f64_check.wgsl` in `mode` over `input` words; two result words per case.
fn f64_check(ctx: &GpuContext, mode: u32, input: &[u32], cases: usize) -> Vec<u64> {
    let words = run_words(
        ctx,
        &kernels::F64_CHECK,
        F64_CHECK_WG,
        mode,
        input,
        cases,
        2 * cases,
    );
    words
        .chunks_exact(2)
        .map(|w| w[0] as u64 | (w[1] as u64) << 32)
        .collect()
}

/// Same bits, or both NaN.
fn same(got: u64, want: f64) -> bool {
    got == want.to_bits() || (f64::from_bits(got).is_nan() && want.is_nan())
}

/// Fraction patterns that stress rounding: zero, one, all ones, the halfway bit alone and with
/// neighbours, alternating bits, and random ones.
fn fractions(bits: u32, seed: &mut Rng, random: usize) -> Vec<u64> {
    let all = (1u64 << bits) - 1;
    let half = 1u64 << (bits - 1);
    let mut v = vec![
        0,
        1,
        2,
        3,
        all,
        all - 1,
        half,
        half + 1,
        half - 1,
        0x5555_5555_5555_5555 & all,
        0xaaaa_aaaa_aaaa_aaaa & all,
    ];
    v.extend((0..random).map(|_| seed.next_u64() & all));
    v
}

#[test]
fn f64_add_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut seed = Rng::seed_from_u64(71);
    let fr = fractions(52, &mut seed, 3);
    // x's biased exponent: the extremes of the normal range, the range the sums of squares of
    // f32s live in (725 ..= ~1310), and 1 and 2 (next to the subnormals).
    let exps = [1u64, 2, 60, 725, 1023, 1278, 1310, 2045, 2046];
    // Alignment shifts: every one up to past the guard bits and the 64-bit word, then far.
    let shifts: Vec<u64> = (0..=70).chain([100, 1000, 2045]).collect();
    let mut pairs: Vec<(u64, u64)> = Vec::new();
    for &ex in &exps {
        for &d in &shifts {
            // ey = 0: y subnormal (its effective exponent is 1).
            let Some(ey) = ex.checked_sub(d) else {
                continue;
            };
            for &fx in &fr {
                for &fy in &fr {
                    let (x, y) = (ex << 52 | fx, ey << 52 | fy);
                    pairs.push((x, y));
                    if d % 7 == 3 {
                        pairs.push((y, x)); // either operand may be the larger
                    }
                }
            }
        }
    }
    // Zeros, subnormal pairs (including a carry into the normal range), the largest finite
    // values (overflow to +Inf), infinities and NaNs.
    let inf = f64::INFINITY.to_bits();
    let max = f64::MAX.to_bits();
    let sub = (1u64 << 52) - 1;
    for (x, y) in [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (sub, sub),
        (sub, 1),
        (sub, 1 << 51),
        (1 << 52, sub),
        (max, max),
        (max, 1u64 << 52 | 1 << 51),
        (max, 970 << 52),
        (max, 971 << 52),
        (inf, 0),
        (inf, max),
        (inf, inf),
        (inf, f64::NAN.to_bits()),
        (1 << 52, f64::NAN.to_bits()),
        (0x7ff0_0000_0000_0001, 0),
    ] {
        pairs.push((x, y));
    }
    let input: Vec<u32> = pairs
        .iter()
        .flat_map(|&(x, y)| [x as u32, (x >> 32) as u32, y as u32, (y >> 32) as u32])
        .collect();
    let got = f64_check(ctx, 1, &input, pairs.len());
    let mut ties = 0;
    for (&(x, y), &g) in pairs.iter().zip(&got) {
        let (fx, fy) = (f64::from_bits(x), f64::from_bits(y));
        let want = fx + fy;
        assert!(
            same(g, want),
            "{x:016x} + {y:016x} ({fx:e} + {fy:e}): gpu {g:016x}, cpu {:016x}",
            want.to_bits()
        );
        // A tie: the exact sum lies halfway between two f64s, i.e. its error is half an ulp.
        let (big, small) = if fx >= fy { (fx, fy) } else { (fy, fx) };
        if want.is_finite() && small != 0.0 {
            let err = (want - big) - small; // exact for a correctly rounded sum (Sterbenz/2Sum)
            let ulp = f64::from_bits(want.to_bits() + 1) - want;
            ties += (err.abs() * 2.0 == ulp) as usize;
        }
    }
    eprintln!("f64 add: {} cases, {ties} ties", pairs.len());
    assert!(ties > 1000, "only {ties} ties among the cases");
}

#[test]
fn f64_square_of_f32_is_exact() {
    let Some(ctx) = gpu() else { return };
    let mut seed = Rng::seed_from_u64(73);
    // Every f32 exponent (0: subnormals) with both signs and the stress fractions, a stride
    // through all 2³² patterns, and the specials.
    let mut input: Vec<u32> = Vec::new();
    for e in 0u32..=255 {
        for f in fractions(23, &mut seed, 8) {
            for sign in [0, 1u32 << 31] {
                input.push(sign | e << 23 | f as u32);
            }
        }
    }
    input.extend((0..=u32::MAX).step_by(65_537));
    input.extend([0x7fc0_0000, 0xffc0_0001, 0x7f80_0001, 0x8000_0000, 1]);
    let got = f64_check(ctx, 0, &input, input.len());
    for (&u, &g) in input.iter().zip(&got) {
        let want = cpu::dora_square(f32::from_bits(u));
        assert!(
            same(g, want),
            "{u:08x}²: gpu {g:016x}, cpu {:016x}",
            want.to_bits()
        );
    }
}

/// The device's sums equal the reference on one context per tiling: whole tensors, 4 KiB
/// streamed chunks, and 8 KiB bindings (row and column tiles: the order across tiles).
#[test]
fn dora_sums_match_reference_bit_for_bit() {
    for (name, ctx) in [
        ("whole", gpu()),
        ("chunked", gpu_chunked()),
        ("tiled", gpu_tiled()),
        ("no optional features", gpu_plain()),
    ] {
        let Some(ctx) = ctx else { return };
        let n = assert_dora_sums_exact(&|job| dora_sums(ctx, job).unwrap(), &format!("gpu {name}"));
        assert!(n > 1000, "{n} sums compared");
    }
}

/// DoRA merges with norms on the device are byte-identical to the CPU's in every dtype pair,
/// F32 included (the 1-ulp allowance of `assert_merge_matches` is not used), with wide-range
/// bases whose norms round often, on tiled and untiled contexts.
#[test]
fn dora_merge_is_byte_identical_to_cpu() {
    let mut seed = Rng::seed_from_u64(79);
    let (rows, cols) = (45, 70);
    let w0: Vec<f32> = (0..rows * cols)
        .map(|_| uniform(&mut seed) * 2f32.powi((seed.next_f64() * 20.0) as i32 - 10))
        .collect();
    let f = factors(rows, cols, 6, &mut seed);
    let mag_r: Vec<f32> = (0..rows).map(|_| 1.0 + uniform(&mut seed)).collect();
    let mag_g: Vec<f32> = (0..cols / 5).map(|_| 1.0 + uniform(&mut seed)).collect();
    // LoCon's per-input-channel norm: groups of 5 columns.
    let grouped = Dora {
        group: 5,
        eps: f32::EPSILON,
        ..Dora::peft(&mag_g, NormAxis::Cols)
    };
    let terms = [
        f.term(0.4),
        f.term(-0.9).with_dora(Dora::peft(&mag_r, NormAxis::Rows)),
        f.term(1.7).with_dora(grouped),
    ];
    for ctx in [gpu(), gpu_tiled(), gpu_plain()] {
        let Some(ctx) = ctx else { return };
        for in_dtype in DTYPES {
            let bytes = dtype::encode(in_dtype, &w0);
            for out_dtype in DTYPES {
                let job = MergeJob::new(&bytes, in_dtype, (rows, cols), &terms, out_dtype);
                let want = cpu::merge(&job).unwrap();
                let got = merge(ctx, &job).unwrap();
                assert!(got == want, "{in_dtype:?}→{out_dtype:?}: bytes differ");
            }
        }
    }
}
