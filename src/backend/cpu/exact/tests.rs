//! Exact rounding against an integer reference: every operand split into `m·2ᵉ` (i128 `m`),
//! the sum formed exactly in fixed point, and rounded to nearest even with integer shifts — no
//! floating-point arithmetic, so nothing in common with the kernel's f64 bound or its
//! expansions. The tensors sit on rounding midpoints of the output dtype, exactly or a tiny
//! distance above or below, with large terms that cancel exactly on top (so an f32 or plain f64
//! evaluation lands on the wrong side).

use super::*;
use crate::backend::{cpu, Dora, NormAxis, Term};
use crate::linalg::rng::Xoshiro256PlusPlus as Rng;

/// `x = m·2ᵉ` with `m` odd (or zero).
fn split(x: f64) -> (i128, i32) {
    if x == 0.0 {
        return (0, 0);
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = (bits & ((1 << 52) - 1)) as i128;
    let (mut m, mut e) = if exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1 << 52), exp - 1075)
    };
    let tz = m.trailing_zeros();
    m >>= tz;
    e += tz as i32;
    (if x < 0.0 { -m } else { m }, e)
}

/// The exact sum of products of f64 operands, as `M·2^lsb` in i128 (panics if the test's data
/// do not fit: a test bug, not a kernel one).
fn exact_sum(products: &[Vec<f64>]) -> (i128, i32) {
    let parts: Vec<(i128, i32)> = products
        .iter()
        .map(|p| {
            p.iter().fold((1i128, 0i32), |(m, e), &x| {
                let (mx, ex) = split(x);
                (m.checked_mul(mx).expect("product fits"), e + ex)
            })
        })
        .filter(|(m, _)| *m != 0)
        .collect();
    let lsb = parts.iter().map(|p| p.1).min().unwrap_or(0);
    let sum = parts.iter().fold(0i128, |acc, &(m, e)| {
        let shift = (e - lsb) as u32;
        assert!(
            shift < 126 && m.unsigned_abs() < 1u128 << (126 - shift),
            "fits i128"
        );
        acc.checked_add(m << shift).expect("sum fits")
    });
    (sum, lsb)
}

/// `M·2^lsb` rounded to `p` bits with least normal exponent `emin`, ties to even; ∞ past `max`.
fn round_reference(m: i128, lsb: i32, p: i32, emin: i32, max: f64) -> f64 {
    if m == 0 {
        return 0.0;
    }
    let a = m.unsigned_abs();
    let top = 127 - a.leading_zeros() as i32;
    let qe = (top + lsb).max(emin) - p + 1;
    let shift = qe - lsb;
    let n: u128 = if shift <= 0 {
        a << (-shift)
    } else if shift > 127 {
        0
    } else {
        let (fl, rem, half) = (a >> shift, a & ((1 << shift) - 1), 1u128 << (shift - 1));
        if rem > half || (rem == half && fl & 1 == 1) {
            fl + 1
        } else {
            fl
        }
    };
    let v = n as f64 * 2f64.powi(qe.min(0)) * 2f64.powi(qe.max(0));
    let v = if v > max { f64::INFINITY } else { v };
    if m < 0 {
        -v
    } else {
        v
    }
}

struct Case {
    dtype: Dtype,
    rows: usize,
    cols: usize,
    w0: Vec<u8>,
    b: Vec<f32>,
    a: Vec<f32>,
    rank: usize,
    scale: f32,
}

/// (p, emin, max, bits → value, exponent field range, mantissa bits) of an output dtype.
type FormatInfo = (i32, i32, f64, fn(u32) -> f64, (u32, u32), u32);

fn format_of(d: Dtype) -> FormatInfo {
    match d {
        Dtype::BF16 => (
            8,
            -126,
            f32::from_bits(0x7f7f_0000) as f64,
            |b| f32::from_bits(b << 16) as f64,
            (118, 131),
            7,
        ),
        // Exponent field 0 included: f16 subnormals.
        Dtype::F16 => (
            11,
            -14,
            65504.0,
            |b| half::f16::from_bits(b as u16).to_f64(),
            (0, 18),
            10,
        ),
        _ => (
            24,
            -126,
            f32::MAX as f64,
            |b| f32::from_bits(b) as f64,
            (118, 131),
            23,
        ),
    }
}

fn encode_bits(d: Dtype, bits: &[u32]) -> Vec<u8> {
    match d {
        Dtype::F32 => bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
        _ => bits
            .iter()
            .flat_map(|&b| (b as u16).to_le_bytes())
            .collect(),
    }
}

/// Every element is the midpoint above |W0| (or between W0 and its neighbour away from zero),
/// plus `δ ∈ {−t, 0, +t}` per row with `t = 2⁻³⁰·q`, plus `g_i·z_j − g_i·z_j` with `z_j ≈ 2¹²`
/// on the rows with noise: rank 4, `s` a power of two so every factor is an exact f32.
fn midpoint_case(d: Dtype, seed: u64, scale: f32) -> Case {
    let (_, _, _, value, (e_lo, e_hi), mbits) = format_of(d);
    let mut rng = Rng::seed_from_u64(seed);
    let (rows, cols, rank) = (30usize, 41usize, 4usize);
    let s = scale as f64;
    let mut bits = vec![0u32; rows * cols];
    let mut a = vec![0f32; rank * cols];
    let sign_bit = 1u32 << (mbits + if d == Dtype::F32 { 8 } else { mbits_exp(d) });
    for j in 0..cols {
        let e = e_lo + (rng.next_u64() % (e_hi - e_lo) as u64) as u32;
        let neg = rng.next_u64() % 2 == 1;
        let mut q = 0.0;
        for i in 0..rows {
            let m = (rng.next_u64() % ((1u64 << mbits) - 1)) as u32;
            let b = (e << mbits) | m | if neg { sign_bit } else { 0 };
            bits[i * cols + j] = b;
            // The gap to the next value away from zero: one step of the integer encoding.
            q = (value(b + 1) - value(b)).abs();
        }
        let h = if neg { -q / 2.0 } else { q / 2.0 };
        a[j] = (h / s) as f32;
        a[cols + j] = (q * 2f64.powi(-20) / s) as f32;
        let z = (4096.0 * (1.0 + rng.next_f64())) as f32;
        a[2 * cols + j] = z;
        a[3 * cols + j] = -z;
        assert_eq!(a[j] as f64 * s, h, "exact factor");
    }
    let mut b = vec![0f32; rows * rank];
    for i in 0..rows {
        b[i * rank] = 1.0;
        b[i * rank + 1] = [0.0, 2f32.powi(-10), -(2f32.powi(-10))][i % 3];
        // Rows 0–2 of every 6 without the cancelling noise, rows 3–5 with it.
        let g = if i % 6 < 3 {
            0.0
        } else {
            (0.5 + rng.next_f64() / 2.0) as f32
        };
        b[i * rank + 2] = g;
        b[i * rank + 3] = g;
    }
    Case {
        dtype: d,
        rows,
        cols,
        w0: encode_bits(d, &bits),
        b,
        a,
        rank,
        scale,
    }
}

fn mbits_exp(d: Dtype) -> u32 {
    match d {
        Dtype::BF16 => 8,
        _ => 5,
    }
}

/// Random factors (full 24-bit mantissas) on a random base: almost every element on the fast
/// path.
fn random_case(d: Dtype, seed: u64) -> Case {
    let mut rng = Rng::seed_from_u64(seed);
    let (rows, cols, rank) = (67usize, 53usize, 7usize);
    let mut f = |lo: f64| -> f32 {
        let x = (lo + (1.0 - lo) * rng.next_f64()) as f32;
        if rng.next_u64().is_multiple_of(2) {
            x
        } else {
            -x
        }
    };
    let w0: Vec<f32> = (0..rows * cols).map(|_| f(0.01)).collect();
    let b = (0..rows * rank).map(|_| f(1.0 / 16.0)).collect();
    let a = (0..rank * cols).map(|_| f(1.0 / 16.0)).collect();
    Case {
        dtype: d,
        rows,
        cols,
        w0: dtype::encode(d, &w0),
        b,
        a,
        rank,
        scale: 0.75,
    }
}

impl Case {
    fn terms(&self) -> Vec<Term<'_>> {
        vec![Term::low_rank(&self.b, &self.a, self.rank, self.scale)]
    }

    fn job<'a>(&'a self, terms: &'a [Term<'a>]) -> MergeJob<'a> {
        MergeJob::new(
            &self.w0,
            self.dtype,
            (self.rows, self.cols),
            terms,
            self.dtype,
        )
    }

    /// The integer reference, element by element.
    fn reference(&self) -> Vec<f64> {
        let (p, emin, max, _, _, _) = format_of(self.dtype);
        let w0 = dtype::decode(self.dtype, &self.w0);
        let s = self.scale as f64;
        (0..self.rows * self.cols)
            .map(|n| {
                let (i, j) = (n / self.cols, n % self.cols);
                let mut products = vec![vec![w0[n] as f64]];
                for k in 0..self.rank {
                    products.push(vec![
                        s,
                        self.b[i * self.rank + k] as f64,
                        self.a[k * self.cols + j] as f64,
                    ]);
                }
                let (m, lsb) = exact_sum(&products);
                round_reference(m, lsb, p, emin, max)
            })
            .collect()
    }
}

fn values(d: Dtype, bytes: &[u8]) -> Vec<f64> {
    dtype::decode(d, bytes)
        .into_iter()
        .map(|x| x as f64)
        .collect()
}

fn assert_same(got: &[f64], want: &[f64], what: &str) {
    for (n, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: element {n}: {g:e} vs {w:e}"
        );
    }
}

#[test]
fn reference_rounds_known_values() {
    // The reference itself, on hand-checked bf16 cases: 1 + 2⁻⁸ is the midpoint of 1 and
    // 1 + 2⁻⁷ (tie → even 1); 1 + 3·2⁻⁸ ties to 1 + 2⁻⁶; a hair above a midpoint goes up.
    let r = |x: &[Vec<f64>]| {
        let (m, l) = exact_sum(x);
        round_reference(m, l, 8, -126, 3.0e38)
    };
    assert_eq!(r(&[vec![1.0], vec![2f64.powi(-8)]]), 1.0);
    assert_eq!(
        r(&[vec![1.0], vec![3.0, 2f64.powi(-8)]]),
        1.0 + 2f64.powi(-6)
    );
    assert_eq!(
        r(&[vec![1.0], vec![2f64.powi(-8)], vec![2f64.powi(-60)]]),
        1.0 + 2f64.powi(-7)
    );
    assert_eq!(r(&[vec![-1.0], vec![-(2f64.powi(-8))]]), -1.0);
}

#[test]
fn midpoints_round_exactly_for_every_output_dtype() {
    for d in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        for (seed, scale) in [(1, 0.5f32), (2, -2.0)] {
            let c = midpoint_case(d, seed, scale);
            let terms = c.terms();
            let want = c.reference();
            let (out, slow) = merge_counted(&c.job(&terms)).unwrap();
            assert_same(&values(d, &out), &want, &format!("{d:?} exact"));
            // Exact midpoints (a third of the elements) cannot be decided by the f64 bound.
            assert!(slow >= c.rows * c.cols / 3, "{d:?}: {slow} slow");
            // The f32 path on the same tensors: ties break on the f32 value, which does not
            // see δ, so it must disagree somewhere (else these tensors test nothing).
            let f32_out = values(d, &cpu::merge(&c.job(&terms)).unwrap());
            let wrong = f32_out.iter().zip(&want).filter(|(g, w)| g != w).count();
            assert!(wrong > 0, "{d:?}: the f32 path is right everywhere");
        }
    }
}

#[test]
fn random_tensors_match_the_reference_and_not_the_thread_count() {
    for d in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        let c = random_case(d, 11);
        let terms = c.terms();
        let want = c.reference();
        let mut outs = Vec::new();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (out, slow) = pool.install(|| merge_counted(&c.job(&terms)).unwrap());
            // Off the midpoints the f64 bound decides nearly everything.
            assert!(slow * 100 < c.rows * c.cols, "{d:?}: {slow} slow");
            outs.push(out);
        }
        assert_eq!(
            outs[0], outs[1],
            "{d:?}: output depends on the thread count"
        );
        assert_same(&values(d, &outs[0]), &want, &format!("{d:?} random"));
    }
}

#[test]
fn dense_terms_and_several_terms_are_exact() {
    let c = midpoint_case(Dtype::BF16, 5, 0.5);
    // The same update given as a dense term (s·Σₖ b·a formed exactly in f64, then split into
    // two f32 that sum to it: hi + lo) and as two low-rank halves.
    let n = c.rows * c.cols;
    let mut hi = vec![0f32; n];
    let mut lo = vec![0f32; n];
    for i in 0..c.rows {
        for j in 0..c.cols {
            let x: f64 = (0..2)
                .map(|k| c.b[i * c.rank + k] as f64 * c.a[k * c.cols + j] as f64)
                .sum();
            hi[i * c.cols + j] = x as f32;
            lo[i * c.cols + j] = (x - (x as f32) as f64) as f32;
            assert_eq!(hi[i * c.cols + j] as f64 + lo[i * c.cols + j] as f64, x);
        }
    }
    let dense = |d| Term {
        b: &[],
        a: &[],
        rank: 0,
        dense: Some(d),
        scale: c.scale,
        dora: None,
        delta_dtype: None,
    };
    let terms = [dense(&hi), dense(&lo)];
    let want = c.reference();
    // Only the first two components (the rest cancel exactly), so the reference stands.
    let out = merge(&c.job(&terms)).unwrap();
    assert_same(&values(Dtype::BF16, &out), &want, "dense");
}

#[test]
fn overflow_dora_and_f64_are_refused() {
    let w0 = dtype::encode(Dtype::F16, &[60000.0, 1.0]);
    let (b, a) = ([1.0f32], [10000.0f32, 0.0]);
    let t = [Term::low_rank(&b, &a, 1, 1.0)];
    let job = MergeJob::new(&w0, Dtype::F16, (1, 2), &t, Dtype::F16);
    assert!(matches!(
        merge(&job),
        Err(MergeError::NonFinite { row: 0, col: 0, value }) if value == f32::INFINITY
    ));
    let mag = [1.0f32];
    let dora = [t[0].with_dora(Dora::peft(&mag, NormAxis::Rows))];
    assert!(merge(&MergeJob {
        terms: &dora,
        ..job
    })
    .unwrap_err()
    .to_string()
    .contains("DoRA"));
    let w64 = dtype::encode(Dtype::F64, &[1.0, 1.0]);
    assert!(merge(&MergeJob {
        w0: &w64,
        in_dtype: Dtype::F64,
        out_dtype: Dtype::F64,
        ..job
    })
    .is_err());
}

#[test]
fn format_round_agrees_with_the_integer_reference() {
    let mut rng = Rng::seed_from_u64(9);
    for d in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        let fmt = Format::of(d).unwrap();
        let (p, emin, max, _, _, _) = format_of(d);
        for _ in 0..20_000 {
            // Random f64 over the dtype's range, subnormals and overflow included.
            let e = match d {
                Dtype::F16 => (rng.next_u64() % 50) as i32 - 30,
                _ => (rng.next_u64() % 300) as i32 - 160,
            };
            let x = (1.0 + rng.next_f64())
                * 2f64.powi(e)
                * if rng.next_u64().is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                };
            let (m, l) = split(x);
            assert_eq!(
                fmt.round(x).to_bits(),
                round_reference(m, l, p, emin, max).to_bits(),
                "{d:?} {x:e}"
            );
        }
    }
}

/// `Engine::merge_with(…, Rounding::Exact)` on a GPU engine runs the exact CPU kernel (the GPU's
/// f32 arithmetic cannot give it): same bytes as the CPU engine, and the midpoints right. Skips
/// loudly without a wgpu adapter, fails then with `LORAKIT_REQUIRE_GPU=1`.
#[test]
fn exact_rounding_on_a_gpu_engine_runs_on_the_cpu() {
    use crate::backend::{Engine, Rounding};
    // The GPU tests' one run/skip/fail policy.
    let Some(ctx) = crate::backend::gpu::tests::fresh_gpu() else {
        return;
    };
    let gpu = Engine::Gpu(Box::new(ctx));
    let c = midpoint_case(Dtype::BF16, 3, 0.5);
    let terms = c.terms();
    let job = c.job(&terms);
    let got = gpu.merge_with(&job, Rounding::Exact).unwrap();
    assert_eq!(got, Engine::Cpu.merge_with(&job, Rounding::Exact).unwrap());
    assert_same(
        &values(Dtype::BF16, &got),
        &c.reference(),
        "gpu engine, exact",
    );
}
