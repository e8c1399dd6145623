//! The CPU backend's tests: every kernel against an f64 reference written from its definition,
//! and the grouped and in-place paths against the plain ones bit for bit.

use super::*;
use crate::backend::{Dora, Term};
use crate::dtype::Dtype;
use crate::linalg::rng::Xoshiro256PlusPlus as Rng;

fn uniform(seed: &mut Rng) -> f32 {
    // Uniform on [-0.5, 0.5), from the one seeded generator (linalg::rng).
    (seed.next_f64() - 0.5) as f32
}

/// f64 reference of the same formula, written from its definition on [`Dora`] and [`Term`].
fn reference(w0: &[f32], rows: usize, cols: usize, terms: &[Term]) -> Vec<f64> {
    let mut w: Vec<f64> = w0.iter().map(|&x| x as f64).collect();
    for t in terms {
        let delta: Vec<f64> = (0..rows * cols)
            .map(|p| {
                let (i, j) = (p / cols, p % cols);
                let v = match t.dense {
                    Some(d) => d[p] as f64,
                    None => (0..t.rank)
                        .map(|k| t.b[i * t.rank + k] as f64 * t.a[k * cols + j] as f64)
                        .sum::<f64>(),
                };
                v * t.scale as f64
            })
            .collect();
        match t.dora {
            None => w.iter_mut().zip(&delta).for_each(|(x, d)| *x += d),
            Some(d) => {
                // The normed feature of element p.
                let feat = |p: usize| match d.axis {
                    NormAxis::Rows => p / cols,
                    NormAxis::Cols => (p % cols) / d.group,
                };
                let mut norm = vec![0f64; d.magnitude.len()];
                for p in 0..rows * cols {
                    norm[feat(p)] += (w0[p] as f64 + delta[p]).powi(2);
                }
                for p in 0..rows * cols {
                    let f = feat(p);
                    let y =
                        d.magnitude[f] as f64 / (norm[f].sqrt() + d.eps as f64) * (w[p] + delta[p]);
                    w[p] += d.strength as f64 * (y - w[p]);
                }
            }
        }
    }
    w
}

#[test]
fn merge_matches_f64_reference_for_every_variant() {
    let mut seed = Rng::seed_from_u64(7);
    let (rows, cols) = (37, 53);
    let w0: Vec<f32> = (0..rows * cols).map(|_| uniform(&mut seed)).collect();
    let mk = |r: usize, seed: &mut Rng| -> (Vec<f32>, Vec<f32>) {
        (
            (0..rows * r).map(|_| uniform(seed)).collect(),
            (0..r * cols).map(|_| uniform(seed)).collect(),
        )
    };
    let (b1, a1) = mk(3, &mut seed);
    let (b2, a2) = mk(5, &mut seed);
    let mag_r: Vec<f32> = (0..rows).map(|_| 1.0 + uniform(&mut seed)).collect();
    let mag_c: Vec<f32> = (0..cols).map(|_| 1.0 + uniform(&mut seed)).collect();
    let plain = Term::low_rank(&b1, &a1, 3, 0.7);
    let neg = Term::low_rank(&b2, &a2, 5, -1.3);
    let dora_r = neg.with_dora(Dora::peft(&mag_r, NormAxis::Rows));
    let dora_c = plain.with_dora(Dora::peft(&mag_c, NormAxis::Cols));
    // LyCORIS: a dense update (a LoHa/LoKr ΔW) with its DoRA norm per group of columns
    // (a conv's input channel over its kernel), eps, and a blend weight (ComfyUI strength).
    let dense: Vec<f32> = (0..rows * cols).map(|_| uniform(&mut seed)).collect();
    let (cols_g, group) = (cols - cols % 4, 4);
    let mag_g: Vec<f32> = (0..cols_g / group)
        .map(|_| 1.0 + uniform(&mut seed))
        .collect();
    let w0_g: Vec<f32> = (0..rows * cols_g).map(|_| uniform(&mut seed)).collect();
    let dense_g: Vec<f32> = (0..rows * cols_g).map(|_| uniform(&mut seed)).collect();
    let lyco = |magnitude, axis, group, strength| Dora {
        magnitude,
        axis,
        group,
        eps: f32::EPSILON,
        strength,
    };
    let dense_rows = Term {
        dense: Some(&dense),
        dora: Some(lyco(&mag_r, NormAxis::Rows, 1, 0.6)),
        ..plain
    };
    let dense_plain = Term {
        dense: Some(&dense),
        scale: 0.3,
        dora: None,
        ..plain
    };
    let grouped = Term {
        b: &[],
        a: &[],
        rank: 0,
        delta_dtype: None,
        dense: Some(&dense_g),
        scale: 1.1,
        dora: Some(lyco(&mag_g, NormAxis::Cols, group, 1.0)),
    };
    let grouped_blend = Term {
        dora: Some(lyco(&mag_g, NormAxis::Cols, group, -0.4)),
        ..grouped
    };
    let cases: Vec<(&[f32], usize, Vec<Term>)> = vec![
        (&w0, cols, vec![plain]),
        (&w0, cols, vec![plain, neg]),
        (&w0, cols, vec![dora_r]),
        (&w0, cols, vec![plain, dora_c]),
        (&w0, cols, vec![dora_c, dora_r]),
        (&w0, cols, vec![dense_plain, dense_rows]),
        (&w0_g, cols_g, vec![grouped]),
        (&w0_g, cols_g, vec![grouped_blend]),
    ];
    for (w0, cols, terms) in cases {
        let bytes = dtype::encode(Dtype::F32, w0);
        let job = MergeJob::new(&bytes, Dtype::F32, (rows, cols), &terms, Dtype::F32);
        let got = dtype::decode(Dtype::F32, &merge(&job).unwrap());
        let want = reference(w0, rows, cols, &terms);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{g} vs {w}"
            );
        }
    }
}

#[test]
fn bf16_output_is_rounded_f32_result() {
    let mut seed = Rng::seed_from_u64(3);
    let (rows, cols, r) = (130, 70, 4);
    let w0: Vec<f32> = (0..rows * cols).map(|_| uniform(&mut seed)).collect();
    let b: Vec<f32> = (0..rows * r).map(|_| uniform(&mut seed)).collect();
    let a: Vec<f32> = (0..r * cols).map(|_| uniform(&mut seed)).collect();
    let w0_bf = dtype::encode(Dtype::BF16, &w0);
    let terms = [Term::low_rank(&b, &a, r, 0.25)];
    let job = MergeJob::new(&w0_bf, Dtype::BF16, (rows, cols), &terms, Dtype::F32);
    let f32_out = merge(&job).unwrap();
    let bf_out = merge(&MergeJob {
        out_dtype: Dtype::BF16,
        ..job
    })
    .unwrap();
    let f32_vals = dtype::decode(Dtype::F32, &f32_out);
    let bf_vals = dtype::decode(Dtype::BF16, &bf_out);
    for (x, y) in f32_vals.iter().zip(&bf_vals) {
        assert_eq!(dtype::round_bf16_reference(*x).to_bits(), y.to_bits());
    }
}

/// `dora_sums` written from its definition, one plain sequential loop per row or column:
/// the reference both backends' sums must equal bit for bit.
fn reference_sums(job: &MergeJob) -> Vec<Option<Vec<f64>>> {
    let (rows, cols) = (job.rows, job.cols);
    let w = dtype::decode(job.in_dtype, job.w0);
    let sq = |t: &Term, i: usize, j: usize| -> f64 {
        let mut acc = 0f32;
        for k in 0..t.rank {
            acc += t.b[i * t.rank + k] * t.a[k * cols + j];
        }
        let v = (w[i * cols + j] + t.scale * acc) as f64;
        v * v
    };
    job.terms
        .iter()
        .map(|t| {
            Some(match t.dora?.axis {
                NormAxis::Rows => (0..rows)
                    .map(|i| (0..cols).fold(0f64, |s, j| s + sq(t, i, j)))
                    .collect(),
                NormAxis::Cols => (0..cols)
                    .map(|j| (0..rows).fold(0f64, |s, i| s + sq(t, i, j)))
                    .collect(),
            })
        })
        .collect()
}

/// The one test body of the DoRA sums on every backend: `sums` (a backend's `dora_sums`)
/// equals [`reference_sums`] bit for bit (NaN for NaN) on jobs built to make the f64
/// additions round often: base values over a wide dynamic range (f32 subnormals to 2⁶⁰
/// for F32 bases), infinities and NaNs, plain terms between DoRA terms of either axis,
/// shapes not multiples of any block or workgroup. Returns how many sums it compared.
pub(crate) fn assert_dora_sums_exact(
    sums: &dyn Fn(&MergeJob) -> Vec<Option<Vec<f64>>>,
    what: &str,
) -> usize {
    let mut seed = Rng::seed_from_u64(61);
    let mut compared = 0;
    // The last two: sums over 40 000 elements, longer than one GPU dispatch may walk.
    for &(rows, cols, rank) in &[
        (37usize, 53usize, 5usize),
        (1, 300, 1),
        (300, 1, 3),
        (67, 131, 20),
        (2, 40_000, 2),
        (40_000, 2, 2),
    ] {
        for in_dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            // Exponents the stored dtype holds (f16: 2⁻²⁴ .. 2¹⁵).
            let (lo, hi) = match in_dtype {
                Dtype::F16 => (-24, 12),
                _ => (-140, 60),
            };
            let mut w0: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    let e = lo + (seed.next_f64() * (hi - lo) as f64) as i32;
                    uniform(&mut seed) * 2f32.powi(e)
                })
                .collect();
            if rows * cols > 100 {
                w0[7] = f32::INFINITY;
                w0[rows * cols - 3] = f32::NAN;
            }
            let bytes = dtype::encode(in_dtype, &w0);
            let mk = |r: usize, seed: &mut Rng| -> (Vec<f32>, Vec<f32>) {
                (
                    (0..rows * r).map(|_| uniform(seed)).collect(),
                    (0..r * cols).map(|_| uniform(seed) * 1e-3).collect(),
                )
            };
            let (b1, a1) = mk(rank, &mut seed);
            let (b2, a2) = mk(rank + 2, &mut seed);
            let mag_r = vec![1f32; rows];
            let mag_c = vec![1f32; cols];
            let terms = [
                Term::low_rank(&b1, &a1, rank, 0.7),
                Term::low_rank(&b2, &a2, rank + 2, -1.3)
                    .with_dora(Dora::peft(&mag_r, NormAxis::Rows)),
                Term::low_rank(&b1, &a1, rank, 3.0).with_dora(Dora::peft(&mag_c, NormAxis::Cols)),
            ];
            let job = MergeJob::new(&bytes, in_dtype, (rows, cols), &terms, Dtype::F32);
            let (got, want) = (sums(&job), reference_sums(&job));
            assert_eq!(got.len(), want.len(), "{what}: terms");
            for (ti, (g, w)) in got.iter().zip(&want).enumerate() {
                let (g, w) = match (g, w) {
                    (None, None) => continue,
                    (Some(g), Some(w)) => (g, w),
                    _ => panic!("{what}: term {ti}: DoRA or not"),
                };
                assert_eq!(g.len(), w.len(), "{what}: term {ti}: sums");
                for (f, (x, y)) in g.iter().zip(w).enumerate() {
                    assert!(
                        x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                        "{what}: {rows}×{cols} r{rank} {in_dtype:?} term {ti} feature {f}: \
                         {x:e} ({:016x}) vs reference {y:e} ({:016x})",
                        x.to_bits(),
                        y.to_bits()
                    );
                }
                compared += g.len();
            }
        }
    }
    compared
}

/// The CPU's sums follow the reference order whatever the thread count (the `Cols` sums
/// used to be split where rayon's work stealing split the rows).
#[test]
fn dora_sums_are_exact_and_thread_independent() {
    for threads in [1, 2, 3, 8] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let n =
            pool.install(|| assert_dora_sums_exact(&dora_sums, &format!("cpu, {threads} threads")));
        assert!(n > 1000, "{n} sums compared");
    }
}

#[test]
fn non_finite_is_reported_with_position() {
    assert_reports_first_non_finite(&merge);
}

/// The in-place f32 merge as [`merge`] through an F32 job: same bits (plain, dense and
/// several terms; [`merge`] splitting the rows into parallel blocks where [`BLOCK_ELEMS`] does,
/// the in-place merge taking them in one), the same first
/// non-finite position, and DoRA refused.
#[test]
fn in_place_f32_merge_is_the_f32_job_bit_for_bit() {
    let in_place = |job: &MergeJob| {
        let mut w = dtype::decode(Dtype::F32, job.w0);
        merge_f32_in_place(&mut w, job.rows, job.cols, job.terms)?;
        Ok(dtype::encode(Dtype::F32, &w))
    };
    assert_reports_first_non_finite(&in_place);
    let mut seed = Rng::seed_from_u64(11);
    let (rows, cols) = (300, 263);
    let mut vals = |n: usize| -> Vec<f32> { (0..n).map(|_| uniform(&mut seed)).collect() };
    let (w0, b1, a1, b2, a2, dense) = (
        vals(rows * cols),
        vals(rows * 3),
        vals(3 * cols),
        vals(rows * 16),
        vals(16 * cols),
        vals(rows * cols),
    );
    let plain = Term::low_rank(&b1, &a1, 3, 0.7);
    let neg = Term::low_rank(&b2, &a2, 16, -1.3);
    let dense = Term {
        dense: Some(&dense),
        scale: 0.3,
        ..plain
    };
    let bytes = dtype::encode(Dtype::F32, &w0);
    for terms in [vec![plain], vec![plain, neg, dense]] {
        let job = MergeJob::new(&bytes, Dtype::F32, (rows, cols), &terms, Dtype::F32);
        assert!(rows * cols > BLOCK_ELEMS);
        assert_eq!(in_place(&job).unwrap(), merge(&job).unwrap());
    }
    let mag = vec![1.0f32; rows];
    let dora = [plain.with_dora(Dora::peft(&mag, NormAxis::Rows))];
    let mut w = w0.clone();
    assert!(matches!(
        merge_f32_in_place(&mut w, rows, cols, &dora),
        Err(MergeError::Shape(_))
    ));
}

/// [`low_rank_rows`] is [`low_rank_row`] row by row, bit for bit: ranks 1, 3 and 16, widths
/// with and without a tail past the last column block, and a dense term.
#[test]
fn grouped_rows_are_the_single_row_product_bit_for_bit() {
    let mut seed = Rng::seed_from_u64(5);
    for (rank, cols) in [(1, 16), (3, 37), (16, 4 * ROW_COL_BLOCK + 5), (16, 7)] {
        let rows = 2 * ROW_GROUP + 1;
        let b: Vec<f32> = (0..rows * rank).map(|_| uniform(&mut seed)).collect();
        let a: Vec<f32> = (0..rank * cols).map(|_| uniform(&mut seed)).collect();
        let d: Vec<f32> = (0..rows * cols).map(|_| uniform(&mut seed)).collect();
        let low = Term::low_rank(&b, &a, rank, 1.0);
        let dense = Term {
            dense: Some(&d),
            ..low
        };
        for t in [low, dense] {
            for row in [0, ROW_GROUP, ROW_GROUP + 1] {
                let mut grouped = vec![f32::NAN; ROW_GROUP * cols];
                low_rank_rows::<ROW_GROUP>(&t, cols, row, &mut grouped);
                let mut single = vec![f32::NAN; cols];
                for (r, g) in grouped.chunks_exact(cols).enumerate() {
                    low_rank_row(&t, cols, row + r, &mut single);
                    let (g, s): (Vec<u32>, Vec<u32>) = (
                        g.iter().map(|x| x.to_bits()).collect(),
                        single.iter().map(|x| x.to_bits()).collect(),
                    );
                    assert_eq!(g, s, "rank {rank}, cols {cols}, row {}", row + r);
                }
            }
        }
    }
}

/// A 2×2 merge whose second row of B holds an infinity: `merge` (any backend's) must refuse
/// it at (1, 0), the first non-finite value in row-major order.
pub(crate) fn assert_reports_first_non_finite(
    merge: &dyn Fn(&MergeJob) -> Result<Vec<u8>, MergeError>,
) {
    let w0 = dtype::encode(Dtype::F32, &[1.0, 2.0, 3.0, 4.0]);
    let b = [1.0f32, f32::INFINITY];
    let a = [1.0f32, 1.0];
    let terms = [Term::low_rank(&b, &a, 1, 1.0)];
    let err = merge(&MergeJob::new(&w0, Dtype::F32, (2, 2), &terms, Dtype::F32)).unwrap_err();
    assert_eq!(
        err,
        MergeError::NonFinite {
            row: 1,
            col: 0,
            value: f32::INFINITY
        }
    );
}

/// A term with a `delta_dtype` adds its δ rounded to that dtype: the bf16 merge equals
/// `bf16(w0 + bf16(δ))` with δ the term's own f32 update (its merge into zeros), and differs
/// from the merge that adds the f32 δ (PEFT's `Embedding.merge` against `Linear.merge`).
#[test]
fn delta_dtype_rounds_the_update_before_the_add() {
    let mut seed = Rng::seed_from_u64(16);
    let (rows, cols, rank) = (19, 37, 3);
    let w0: Vec<f32> = (0..rows * cols).map(|_| uniform(&mut seed)).collect();
    let b: Vec<f32> = (0..rows * rank).map(|_| uniform(&mut seed)).collect();
    let a: Vec<f32> = (0..rank * cols).map(|_| uniform(&mut seed)).collect();
    let plain = Term::low_rank(&b, &a, rank, 0.03);
    let rounded = Term {
        delta_dtype: Some(Dtype::BF16),
        ..plain
    };
    let zeros = vec![0u8; rows * cols * 4];
    let delta = dtype::decode(
        Dtype::F32,
        &merge(&MergeJob::new(
            &zeros,
            Dtype::F32,
            (rows, cols),
            &[plain],
            Dtype::F32,
        ))
        .unwrap(),
    );
    let w0_bf16 = dtype::encode(Dtype::BF16, &w0);
    let w0_rounded = dtype::decode(Dtype::BF16, &w0_bf16);
    let want: Vec<f32> = w0_rounded
        .iter()
        .zip(&delta)
        .map(|(w, d)| w + dtype::round_to(Dtype::BF16, *d))
        .collect();
    let merged = |t: &[Term]| {
        merge(&MergeJob::new(
            &w0_bf16,
            Dtype::BF16,
            (rows, cols),
            t,
            Dtype::BF16,
        ))
        .unwrap()
    };
    let got = merged(&[rounded]);
    assert_eq!(got, dtype::encode(Dtype::BF16, &want));
    assert_ne!(got, merged(&[plain]));
    let mut w = w0_rounded.clone();
    merge_f32_in_place(&mut w, rows, cols, &[rounded]).unwrap();
    assert_eq!(w, want);
}
