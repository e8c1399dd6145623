//! The merge kernel and the 16-bit codecs against the CPU merge, bit for bit: tiles, FMA
//! contraction, signed zeros, special values, non-finite reports, limits.

use super::*;

#[test]
fn merge_matches_cpu_bit_for_bit() {
    let Some(ctx) = gpu() else { return };
    let mut seed = Rng::seed_from_u64(17);
    // 67 × 131: neither a multiple of the 256-wide workgroup nor even (the last 16-bit word is
    // half used).
    let (rows, cols) = (67, 131);
    let w0 = rand(rows * cols, &mut seed);
    let mag_r: Vec<f32> = (0..rows).map(|_| 1.0 + uniform(&mut seed)).collect();
    let mag_c: Vec<f32> = (0..cols).map(|_| 1.0 + uniform(&mut seed)).collect();
    let mut inexact = 0;
    for rank in [1, 8, 64] {
        let f1 = factors(rows, cols, rank, &mut seed);
        let f2 = factors(rows, cols, rank, &mut seed);
        let plain = f1.term(0.7);
        let unmerge = f2.term(-1.3);
        let dora_r = unmerge.with_dora(Dora::peft(&mag_r, NormAxis::Rows));
        let dora_c = plain.with_dora(Dora::peft(&mag_c, NormAxis::Cols));
        let sets = [
            ("plain", vec![plain]),
            ("plain+unmerge", vec![plain, unmerge]),
            ("dora rows", vec![dora_r]),
            ("plain+dora cols", vec![unmerge, dora_c]),
        ];
        inexact += assert_every_dtype_matches(ctx, &w0, (rows, cols), &sets, &format!("r{rank}"));
    }
    eprintln!("merge f32 outputs not bit-identical to the CPU: {inexact}");
}

/// Each named term set merged over `w0` from every dtype of [`DTYPES`] to every other, on the
/// GPU and the CPU ([`assert_merge_matches`]); returns how many f32 outputs were not
/// bit-identical.
fn assert_every_dtype_matches(
    ctx: &GpuContext,
    w0: &[f32],
    (rows, cols): (usize, usize),
    sets: &[(&str, Vec<Term>)],
    label: &str,
) -> usize {
    let mut inexact = 0;
    for in_dtype in DTYPES {
        let bytes = dtype::encode(in_dtype, w0);
        for out_dtype in DTYPES {
            for (name, terms) in sets {
                let job = MergeJob::new(&bytes, in_dtype, (rows, cols), terms, out_dtype);
                let what = format!("{label} {in_dtype:?}→{out_dtype:?} {name}");
                inexact += assert_merge_matches(ctx, &job, &what);
            }
        }
    }
    inexact
}

/// Edge shapes of the 2-D tiled kernel: column counts that are odd, below, at and just past
/// the 8-element vector and the 256-column workgroup tile, row counts around the 16-row tile,
/// and ranks 1, 3 (padded to a chunk of 4), 64 and 256 (several chunks of 8).
#[test]
fn merge_edge_shapes_match_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut seed = Rng::seed_from_u64(41);
    for &(rows, cols, rank) in &[
        (1usize, 1usize, 1usize),
        (3, 7, 3),
        (17, 9, 1),
        (16, 8, 64),
        (5, 255, 3),
        (33, 257, 256),
        (2, 513, 64),
        (31, 4099, 3),
    ] {
        let w0 = rand(rows * cols, &mut seed);
        let mag_r: Vec<f32> = (0..rows).map(|_| 1.0 + uniform(&mut seed)).collect();
        let mag_c: Vec<f32> = (0..cols).map(|_| 1.0 + uniform(&mut seed)).collect();
        let f1 = factors(rows, cols, rank, &mut seed);
        let f2 = factors(rows, cols, rank.div_ceil(2), &mut seed);
        let sets = [
            ("plain", vec![f1.term(0.7)]),
            ("two ranks", vec![f1.term(0.7), f2.term(-1.1)]),
            (
                "dora rows+cols",
                vec![
                    f2.term(0.9).with_dora(Dora::peft(&mag_r, NormAxis::Rows)),
                    f1.term(-0.4).with_dora(Dora::peft(&mag_c, NormAxis::Cols)),
                ],
            ),
        ];
        let label = format!("{rows}×{cols} r{rank}");
        assert_every_dtype_matches(ctx, &w0, (rows, cols), &sets, &label);
    }
}

/// The streamed path: 4 KiB chunks cut a 300×515 tensor into dozens of row tiles that go
/// through the two-slot ring, and [`merge_into`] hands them out in pieces whose concatenation
/// is byte-identical to the CPU merge, none of them the whole tensor. A second, smaller tensor
/// on the same context reuses the (larger) ring buffers.
#[test]
fn merge_streams_many_chunks_byte_identical() {
    let Some(ctx) = gpu_chunked() else { return };
    let mut seed = Rng::seed_from_u64(43);
    for &(rows, cols, rank) in &[(300usize, 515usize, 16usize), (40, 64, 1)] {
        let w0 = dtype::encode(Dtype::BF16, &rand(rows * cols, &mut seed));
        let f = factors(rows, cols, rank, &mut seed);
        let mag: Vec<f32> = (0..rows).map(|_| 1.0 + uniform(&mut seed)).collect();
        let terms = [
            f.term(0.8),
            f.term(-0.3).with_dora(Dora::peft(&mag, NormAxis::Rows)),
        ];
        for out_dtype in DTYPES {
            let job = MergeJob::new(&w0, Dtype::BF16, (rows, cols), &terms, out_dtype);
            let want = cpu::merge(&job).unwrap();
            let mut got = Vec::new();
            let mut pieces = 0;
            let mut largest = 0;
            merge_into(ctx, &job, &mut |b| {
                got.extend_from_slice(b);
                pieces += 1;
                largest = largest.max(b.len());
                Ok(())
            })
            .unwrap();
            assert!(got == want, "{rows}×{cols} → {out_dtype:?}: bytes differ");
            // At least ⌈tensor / chunk⌉ tiles (more when rows are padded to the vector width and
            // handed out one by one), none larger than a chunk.
            let es = 2usize.max(out_dtype.bitsize() / 8);
            assert!(
                pieces >= (rows * cols * es).div_ceil(4096),
                "{pieces} pieces"
            );
            assert!(largest <= 4096, "a piece of {largest} bytes");
        }
    }
}

/// A sink error stops the merge and is returned as is.
#[test]
fn merge_into_returns_the_sink_error() {
    let Some(ctx) = gpu_chunked() else { return };
    let mut seed = Rng::seed_from_u64(47);
    let (rows, cols) = (100, 64);
    let w0 = dtype::encode(Dtype::F16, &rand(rows * cols, &mut seed));
    let f = factors(rows, cols, 4, &mut seed);
    let terms = [f.term(1.0)];
    let job = MergeJob::new(&w0, Dtype::F16, (rows, cols), &terms, Dtype::F16);
    let mut calls = 0;
    let err = merge_into(ctx, &job, &mut |_| {
        calls += 1;
        if calls == 3 {
            return Err(MergeError::Shape("disk full".into()));
        }
        Ok(())
    })
    .unwrap_err();
    assert_eq!(err, MergeError::Shape("disk full".into()));
    assert_eq!(calls, 3);
    // The context still merges correctly afterwards.
    assert_merge_matches(ctx, &job, "after a sink error");
}

#[test]
fn merge_tiled_matches_cpu() {
    let Some(ctx) = gpu_tiled() else { return };
    assert_eq!(ctx.max_binding(), TILED_LIMIT);
    let mut seed = Rng::seed_from_u64(29);
    let (rows, cols) = (150, 300);
    let w0 = rand(rows * cols, &mut seed);
    let mag_r: Vec<f32> = (0..rows).map(|_| 1.0 + uniform(&mut seed)).collect();
    let mag_c: Vec<f32> = (0..cols).map(|_| 1.0 + uniform(&mut seed)).collect();
    for rank in [1, 8, 64] {
        let f1 = factors(rows, cols, rank, &mut seed);
        let f2 = factors(rows, cols, rank, &mut seed);
        let terms = [
            f1.term(0.5),
            f2.term(-0.75).with_dora(Dora::peft(&mag_c, NormAxis::Cols)),
            f1.term(1.5).with_dora(Dora::peft(&mag_r, NormAxis::Rows)),
        ];
        let (tr, tc) = merge_tiles(rows, cols, 4, 3 * rank, 1, 1, TILED_LIMIT, 1 << 26).unwrap();
        // Row tiles always; column tiles too once the stacked A (3·rank × cols) outgrows a binding.
        assert!(
            tr < rows && (rank == 1 || tc < cols),
            "rank {rank}: tiles {tr}×{tc}"
        );
        for (in_dtype, out_dtype) in [
            (Dtype::BF16, Dtype::F16),
            (Dtype::F32, Dtype::BF16),
            (Dtype::F16, Dtype::F32),
        ] {
            let bytes = dtype::encode(in_dtype, &w0);
            let job = MergeJob::new(&bytes, in_dtype, (rows, cols), &terms, out_dtype);
            assert_merge_matches(
                ctx,
                &job,
                &format!("tiled r{rank} {in_dtype:?}→{out_dtype:?}"),
            );
        }
    }
}

#[test]
fn merge_embedding_larger_than_binding_limit() {
    let Some(ctx) = gpu_tiled() else { return };
    let mut seed = Rng::seed_from_u64(31);
    // 3001 × 48 bf16 = 288 KiB, 36× the binding limit: row tiles.
    let (rows, cols) = (3001, 48);
    let bytes = dtype::encode(Dtype::BF16, &rand(rows * cols, &mut seed));
    assert!(bytes.len() as u64 > 30 * TILED_LIMIT);
    let f = factors(rows, cols, 8, &mut seed);
    let terms = [f.term(2.0)];
    for out_dtype in [Dtype::BF16, Dtype::F32] {
        let job = MergeJob::new(&bytes, Dtype::BF16, (rows, cols), &terms, out_dtype);
        assert_merge_matches(ctx, &job, &format!("embedding → {out_dtype:?}"));
    }
}

/// Runs a one-element f32 merge with and without the FMA guard; returns (guarded, unguarded).
fn fma_probe(ctx: &GpuContext, w0: f32, b: &[f32], a: &[f32], scale: f32) -> (u32, u32) {
    let bytes = dtype::encode(Dtype::F32, &[w0]);
    let terms = [Term::low_rank(b, a, b.len(), scale)];
    let job = MergeJob::new(&bytes, Dtype::F32, (1, 1), &terms, Dtype::F32);
    let cpu = cpu::merge(&job).unwrap();
    let guarded = merge_with(ctx, &job, true).unwrap();
    let plain = merge_with(ctx, &job, false).unwrap();
    let bits = |v: &[u8]| u32::from_le_bytes(v[..4].try_into().unwrap());
    assert_eq!(
        bits(&guarded),
        bits(&cpu),
        "guarded kernel differs from the CPU"
    );
    (bits(&guarded), bits(&plain))
}

#[test]
fn merge_has_no_fma_contraction() {
    let Some(ctx) = gpu() else { return };
    let a1 = 1.0 + 2f32.powi(-12); // a1² = 1 + 2⁻¹¹ + 2⁻²⁴: rounds (tie to even) to 1 + 2⁻¹¹
    let c = 1.0 + 2f32.powi(-11);
    // The probes do tell the two apart.
    assert_eq!(a1 * a1 - c, 0.0);
    assert_eq!(a1.mul_add(a1, -c), 2f32.powi(-24));
    // acc = (−1)·c + a1·a1: separately rounded 0, fused 2⁻²⁴.
    let (g1, p1) = fma_probe(ctx, 0.0, &[-1.0, a1], &[c, a1], 1.0);
    // w + scale·acc with w = −c, scale = acc = a1: separately rounded 0, fused 2⁻²⁴.
    let (g2, p2) = fma_probe(ctx, -c, &[a1], &[1.0], a1);
    assert_eq!((g1, g2), (0, 0));
    eprintln!(
        "FMA contraction without the guard on {}: Σ b·a {}, w + s·acc {}",
        ctx.describe().adapter.name,
        if p1 == 0 {
            "not contracted"
        } else {
            "CONTRACTED"
        },
        if p2 == 0 {
            "not contracted"
        } else {
            "CONTRACTED"
        },
    );
}

#[test]
fn merge_signed_zero_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    // W0 = −0 and a product −1·0 = −0: the CPU's acc = 0 + (−0) = +0, so w = −0 + +0 = +0. A
    // compiler folding `0 + p` to `p` would give −0 (bf16 0x8000 instead of 0x0000).
    let bytes = dtype::encode(Dtype::BF16, &[-0.0, -0.0]);
    let b = [-1.0f32];
    let a = [0.0f32, -0.0];
    let terms = [Term::low_rank(&b, &a, 1, 1.0)];
    for out_dtype in DTYPES {
        let job = MergeJob::new(&bytes, Dtype::BF16, (1, 2), &terms, out_dtype);
        assert_merge_matches(ctx, &job, &format!("signed zero → {out_dtype:?}"));
        let plain = merge_with(ctx, &job, false).unwrap();
        if plain != cpu::merge(&job).unwrap() {
            eprintln!("without the guard, signed zeros differ from the CPU ({out_dtype:?})");
        }
    }
}

#[test]
fn merge_special_values_round_like_half() {
    let Some(ctx) = gpu() else { return };
    let vals: Vec<f32> = [
        0x477f_e000u32, // 65504, f16 max
        0x477f_efff,    // just below the f16 overflow threshold
        0x477f_f000,    // 65520: rounds to f16 inf (finite f32, so not an error)
        0xc77f_f000,    // −65520
        0x3880_0000,    // 2⁻¹⁴, f16 min normal
        0x3870_0000,    // f16 subnormal
        0x3380_0000,    // 2⁻²⁴, f16 min subnormal
        0x3300_0000,    // 2⁻²⁵: tie, rounds to 0
        0x3300_0001,    // just above: rounds to 2⁻²⁴
        0x3340_0000,    // 1.5·2⁻²⁵
        0x2edb_e6ff,    // 1e-10
        0x3f80_1000,    // f16 tie to even (down)
        0x3f80_3000,    // f16 tie to even (up)
        0x3f80_8000,    // bf16 tie to even (down)
        0x3f81_8000,    // bf16 tie to even (up)
        0x7f7f_ffff,    // f32 max: bf16 inf
        0x0000_0001,    // f32 subnormal
        0x8000_0000,    // −0
    ]
    .iter()
    .map(|&b| f32::from_bits(b))
    .collect();
    let bytes = dtype::encode(Dtype::F32, &vals);
    let zeros_b = [0.0f32];
    let zeros_a = vec![0.0f32; vals.len()];
    let terms = [Term::low_rank(&zeros_b, &zeros_a, 1, 1.0)];
    for out_dtype in [Dtype::F16, Dtype::BF16] {
        let job = MergeJob::new(&bytes, Dtype::F32, (1, vals.len()), &terms, out_dtype);
        assert_merge_matches(ctx, &job, &format!("special values → {out_dtype:?}"));
    }
}

#[test]
fn merge_reports_first_non_finite() {
    let Some(ctx) = gpu() else { return };
    // The CPU module's own case, the same body.
    cpu::tests::assert_reports_first_non_finite(&|job| merge(ctx, job));

    // Several bad rows spread over tiles: the first in row-major order wins.
    let Some(tiled) = gpu_tiled() else { return };
    let mut seed = Rng::seed_from_u64(37);
    let (rows, cols) = (200, 64);
    let w0 = dtype::encode(Dtype::F16, &rand(rows * cols, &mut seed));
    let mut f = factors(rows, cols, 2, &mut seed);
    f.b[150 * 2] = f32::INFINITY;
    f.b[90 * 2 + 1] = f32::NEG_INFINITY;
    f.a[cols] = 0.5; // (90, 0): −inf
    f.a[cols + 5] = 0.0; // (90, 5): −inf·0 = NaN
    let terms = [f.term(1.0)];
    for out_dtype in DTYPES {
        let job = MergeJob::new(&w0, Dtype::F16, (rows, cols), &terms, out_dtype);
        let err = merge(tiled, &job).unwrap_err();
        assert!(
            matches!(err, MergeError::NonFinite { row: 90, col: 0, value } if value == f32::NEG_INFINITY),
            "{err:?}"
        );
        assert_merge_matches(tiled, &job, "non-finite, tiled");
    }
}

#[test]
fn merge_rejects_unsupported_input() {
    let Some(ctx) = gpu() else { return };
    let w0 = dtype::encode(Dtype::F64, &[1.0, 2.0]);
    let job = MergeJob::new(&w0, Dtype::F64, (1, 2), &[], Dtype::F32);
    assert!(matches!(merge(ctx, &job), Err(MergeError::Gpu(_))));
    let job = MergeJob {
        in_dtype: Dtype::F32,
        ..job
    };
    assert!(matches!(merge(ctx, &job), Err(MergeError::Shape(_))));
    let empty = MergeJob::new(&[], Dtype::BF16, (0, 5), &[], Dtype::F32);
    assert_eq!(merge(ctx, &empty).unwrap(), Vec::<u8>::new());
}

#[test]
fn merge_tile_plan_respects_limits() {
    use crate::backend::gpu::merge_tiles::{stride_of, WORK_CAP};
    for &(rows, cols, es, r, dr, dc, limit, chunk) in &[
        (
            150usize,
            300usize,
            4u64,
            24usize,
            1usize,
            1usize,
            8192u64,
            1u64 << 26,
        ),
        (3001, 48, 2, 8, 0, 0, 8192, 1 << 26),
        (10, 100_000, 2, 64, 0, 2, 1 << 20, 1 << 26),
        (100_000, 4096, 2, 16, 1, 0, 128 << 20, 1 << 26),
        (100_000, 4097, 2, 16, 1, 0, 1 << 31, 64 << 20),
        (28672, 8192, 2, 256, 0, 0, 1 << 31, 256 << 20),
        (7, 131, 4, 3, 1, 1, 1 << 31, 4096),
    ] {
        let (tr, tc) = merge_tiles(rows, cols, es, r, dr, dc, limit, chunk).unwrap();
        // The device row stride: tc rounded up to the kernel's vector width.
        let s = stride_of(tc) as u64;
        let tr64 = tr as u64;
        assert!(tr >= 1 && tc >= 1 && tr <= rows && tc <= cols);
        assert!(tc == cols || tc % 8 == 0, "column tiles are whole vectors");
        assert!(tr64 * s * es <= limit, "tile");
        assert!(tr == 1 || tr64 * s * es <= chunk, "chunk");
        assert!(
            tr == 1 || tr64 * s * r.max(1) as u64 <= WORK_CAP,
            "work cap"
        );
        assert!(
            tr64 * r as u64 * 4 <= limit && r as u64 * s * 4 <= limit,
            "factors"
        );
        assert!(
            (dr as u64 * tr64 + dc as u64 * s) * 4 <= limit,
            "dora factors"
        );
    }
    assert!(matches!(
        merge_tiles(4, 4, 4, 1 << 20, 0, 0, 1 << 20, 1 << 26),
        Err(GpuError::TooLarge { .. })
    ));
}

#[test]
fn codecs_match_half_crate() {
    let Some(ctx) = gpu() else { return };
    let run = |mode: u32, input: &[u32]| -> Vec<u32> {
        let n = input.len();
        run_words(ctx, &kernels::CONVERT, CONVERT_WG, mode, input, n, n)
    };
    // A stride through all 2³² f32 patterns plus the edges (zeros, infinities, NaNs incl.
    // signalling ones, subnormals, f16 rounding boundaries).
    let mut f32s: Vec<u32> = (0..=u32::MAX).step_by(4099).collect();
    f32s.extend([
        0,
        0x8000_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0x7f80_0001,
        0xffbf_ffff,
        0x7fff_ffff,
        1,
        0x007f_ffff,
        0x477f_efff,
        0x477f_f000,
        0x3300_0000,
        0x3300_0001,
        0x387f_ffff,
        0x3f80_8000,
        0x3f81_8000,
        0x7f7f_ffff,
    ]);
    let bf = run(0, &f32s);
    let hf = run(1, &f32s);
    for (i, &x) in f32s.iter().enumerate() {
        let v = f32::from_bits(x);
        assert_eq!(
            bf[i],
            half::bf16::from_f32(v).to_bits() as u32,
            "bf16 of {x:#010x}"
        );
        assert_eq!(
            hf[i],
            half::f16::from_f32(v).to_bits() as u32,
            "f16 of {x:#010x}"
        );
    }
    let all16: Vec<u32> = (0..=0xffff).collect();
    let from_h = run(2, &all16);
    let from_b = run(3, &all16);
    for &h in &all16 {
        let want = half::f16::from_bits(h as u16).to_f32().to_bits();
        assert_eq!(from_h[h as usize], want, "f32 of f16 {h:#06x}");
        assert_eq!(from_b[h as usize], h << 16, "f32 of bf16 {h:#06x}");
    }
}
