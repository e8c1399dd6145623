//! GPU kernels against their CPU twins.
//!
//! Skip policy ([`context`]): with no wgpu adapter a test prints
//! `GPU TEST SKIPPED: no wgpu adapter: …` and passes, unless `LORAKIT_REQUIRE_GPU=1`, when it
//! fails. Any other context error fails. Two contexts are shared by all tests: the default one
//! and one whose bindings are capped at [`TILED_LIMIT`] bytes, so that every op on it tiles.
//!
//! Tolerances:
//! * merge: bit-identical bytes for F16/BF16 outputs (the kernel follows the CPU's operation
//!   order exactly and cannot contract to FMA); F32 outputs within 1 ulp (observed: identical).
//! * forward / sketch (different summation orders, tiled GEMM vs ndarray's SGEMM): the f32
//!   dot-product error bound for both sides, `|gpu − cpu| ≤ 2·γ·S` with `γ = (K + 2)·2⁻²⁴`, `K`
//!   the longest inner dimension and `S` the same product on absolute values (`|X|·|W0|ᵀ + …`),
//!   computed by the CPU twin on `|inputs|`. It is rigorous to first order and independent of
//!   the data's scale; random data lands far inside it.

use super::kernels::{self, CONVERT_WG};
use super::merge::{merge_tiles, merge_with};
use super::*;
use crate::backend::cpu_forward::{self, DeltaPair, ForwardAdapter, StoredMatrix, NO_ADAPTER};
use crate::backend::{cpu, Dora, MergeError, MergeJob, NormAxis, Term};
use crate::dtype;
use crate::linalg::rng::Xoshiro256PlusPlus as Rng;
use crate::linalg::{randomized_svd, LinearOperator, RsvdOptions};
use std::sync::OnceLock;

/// Binding cap of the tiling context: small enough that every tiling test splits its tensors.
const TILED_LIMIT: u64 = 8 << 10;
const DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];

/// The one place that decides between running, skipping and failing a GPU test.
fn context(
    slot: &'static OnceLock<Result<GpuContext, GpuError>>,
    make: fn() -> Result<GpuContext, GpuError>,
) -> Option<&'static GpuContext> {
    match slot.get_or_init(make) {
        Ok(ctx) => Some(ctx),
        Err(GpuError::NoAdapter(reason)) => {
            if std::env::var("LORAKIT_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("LORAKIT_REQUIRE_GPU=1 but no wgpu adapter: {reason}");
            }
            // Straight to the stderr handle: libtest captures eprintln! of passing tests.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "GPU TEST SKIPPED: no wgpu adapter: {reason}"
            );
            None
        }
        Err(e) => panic!("GPU context creation failed: {e}"),
    }
}

fn gpu() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Result<GpuContext, GpuError>> = OnceLock::new();
    context(&CTX, GpuContext::new)
}

fn gpu_tiled() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Result<GpuContext, GpuError>> = OnceLock::new();
    context(&CTX, || GpuContext::with_binding_limit(TILED_LIMIT))
}

fn uniform(seed: &mut Rng) -> f32 {
    // Uniform on [-0.5, 0.5), from the one seeded generator (linalg::rng).
    (seed.next_f64() - 0.5) as f32
}

fn rand(n: usize, seed: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| uniform(seed)).collect()
}

/// Distance in units in the last place between two finite f32s.
fn ulps(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        (if i < 0 { i32::MIN - i } else { i }) as i64
    };
    (key(a) - key(b)).unsigned_abs()
}

/// Asserts the GPU merge equals the CPU merge: same error, or same bytes (F16/BF16) / ≤ 1 ulp
/// (F32). Returns the number of F32 elements that were not bit-identical.
fn assert_merge_matches(ctx: &GpuContext, job: &MergeJob, what: &str) -> usize {
    let want = cpu::merge(job);
    let got = merge(ctx, job);
    match (want, got) {
        (Ok(w), Ok(g)) => {
            assert_eq!(w.len(), g.len(), "{what}: output length");
            if job.out_dtype == Dtype::F32 {
                let (w, g) = (dtype::decode(Dtype::F32, &w), dtype::decode(Dtype::F32, &g));
                let mut inexact = 0;
                for (i, (a, b)) in w.iter().zip(&g).enumerate() {
                    let u = ulps(*a, *b);
                    assert!(
                        u <= 1,
                        "{what}: element {i}: cpu {a:e} gpu {b:e} ({u} ulps)"
                    );
                    inexact += (u != 0) as usize;
                }
                inexact
            } else {
                if let Some(i) = w.iter().zip(&g).position(|(a, b)| a != b) {
                    let e = i / 2;
                    panic!(
                        "{what}: element {e} (row {}, col {}) differs: cpu {:02x?} gpu {:02x?}",
                        e / job.cols,
                        e % job.cols,
                        &w[e * 2..e * 2 + 2],
                        &g[e * 2..e * 2 + 2]
                    );
                }
                0
            }
        }
        (Err(w), Err(g)) => {
            assert_eq!(format!("{w:?}"), format!("{g:?}"), "{what}: errors differ");
            0
        }
        (w, g) => panic!(
            "{what}: cpu {:?} but gpu {:?}",
            w.map(|_| ()),
            g.map(|_| ())
        ),
    }
}

struct Factors {
    b: Vec<f32>,
    a: Vec<f32>,
    rank: usize,
}

fn factors(rows: usize, cols: usize, rank: usize, seed: &mut Rng) -> Factors {
    Factors {
        b: rand(rows * rank, seed),
        a: rand(rank * cols, seed),
        rank,
    }
}

impl Factors {
    fn term(&self, scale: f32) -> Term<'_> {
        Term {
            b: &self.b,
            a: &self.a,
            rank: self.rank,
            scale,
            dora: None,
        }
    }
}

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
        let dora_r = Term {
            dora: Some(Dora {
                magnitude: &mag_r,
                axis: NormAxis::Rows,
            }),
            ..unmerge
        };
        let dora_c = Term {
            dora: Some(Dora {
                magnitude: &mag_c,
                axis: NormAxis::Cols,
            }),
            ..plain
        };
        let sets: [(&str, Vec<Term>); 4] = [
            ("plain", vec![plain]),
            ("plain+unmerge", vec![plain, unmerge]),
            ("dora rows", vec![dora_r]),
            ("plain+dora cols", vec![unmerge, dora_c]),
        ];
        for in_dtype in DTYPES {
            let bytes = dtype::encode(in_dtype, &w0);
            for out_dtype in DTYPES {
                for (name, terms) in &sets {
                    let job = MergeJob {
                        w0: &bytes,
                        in_dtype,
                        rows,
                        cols,
                        terms,
                        out_dtype,
                    };
                    inexact += assert_merge_matches(
                        ctx,
                        &job,
                        &format!("r{rank} {in_dtype:?}→{out_dtype:?} {name}"),
                    );
                }
            }
        }
    }
    eprintln!("merge f32 outputs not bit-identical to the CPU: {inexact}");
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
            Term {
                dora: Some(Dora {
                    magnitude: &mag_c,
                    axis: NormAxis::Cols,
                }),
                ..f2.term(-0.75)
            },
            Term {
                dora: Some(Dora {
                    magnitude: &mag_r,
                    axis: NormAxis::Rows,
                }),
                ..f1.term(1.5)
            },
        ];
        let (tr, tc) = merge_tiles(rows, cols, 4, 3 * rank, 1, 1, TILED_LIMIT).unwrap();
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
            let job = MergeJob {
                w0: &bytes,
                in_dtype,
                rows,
                cols,
                terms: &terms,
                out_dtype,
            };
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
        let job = MergeJob {
            w0: &bytes,
            in_dtype: Dtype::BF16,
            rows,
            cols,
            terms: &terms,
            out_dtype,
        };
        assert_merge_matches(ctx, &job, &format!("embedding → {out_dtype:?}"));
    }
}

/// Runs a one-element f32 merge with and without the FMA guard; returns (guarded, unguarded).
fn fma_probe(ctx: &GpuContext, w0: f32, b: &[f32], a: &[f32], scale: f32) -> (u32, u32) {
    let bytes = dtype::encode(Dtype::F32, &[w0]);
    let terms = [Term {
        b,
        a,
        rank: b.len(),
        scale,
        dora: None,
    }];
    let job = MergeJob {
        w0: &bytes,
        in_dtype: Dtype::F32,
        rows: 1,
        cols: 1,
        terms: &terms,
        out_dtype: Dtype::F32,
    };
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
        ctx.describe().name,
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
    let terms = [Term {
        b: &b,
        a: &a,
        rank: 1,
        scale: 1.0,
        dora: None,
    }];
    for out_dtype in DTYPES {
        let job = MergeJob {
            w0: &bytes,
            in_dtype: Dtype::BF16,
            rows: 1,
            cols: 2,
            terms: &terms,
            out_dtype,
        };
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
    let terms = [Term {
        b: &zeros_b,
        a: &zeros_a,
        rank: 1,
        scale: 1.0,
        dora: None,
    }];
    for out_dtype in [Dtype::F16, Dtype::BF16] {
        let job = MergeJob {
            w0: &bytes,
            in_dtype: Dtype::F32,
            rows: 1,
            cols: vals.len(),
            terms: &terms,
            out_dtype,
        };
        assert_merge_matches(ctx, &job, &format!("special values → {out_dtype:?}"));
    }
}

#[test]
fn merge_reports_first_non_finite() {
    let Some(ctx) = gpu() else { return };
    // The CPU module's own case.
    let w0 = dtype::encode(Dtype::F32, &[1.0, 2.0, 3.0, 4.0]);
    let b = [1.0f32, f32::INFINITY];
    let a = [1.0f32, 1.0];
    let terms = [Term {
        b: &b,
        a: &a,
        rank: 1,
        scale: 1.0,
        dora: None,
    }];
    let job = MergeJob {
        w0: &w0,
        in_dtype: Dtype::F32,
        rows: 2,
        cols: 2,
        terms: &terms,
        out_dtype: Dtype::F32,
    };
    assert_eq!(
        merge(ctx, &job).unwrap_err(),
        MergeError::NonFinite {
            row: 1,
            col: 0,
            value: f32::INFINITY
        }
    );

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
        let job = MergeJob {
            w0: &w0,
            in_dtype: Dtype::F16,
            rows,
            cols,
            terms: &terms,
            out_dtype,
        };
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
    let job = MergeJob {
        w0: &w0,
        in_dtype: Dtype::F64,
        rows: 1,
        cols: 2,
        terms: &[],
        out_dtype: Dtype::F32,
    };
    assert!(matches!(merge(ctx, &job), Err(MergeError::Gpu(_))));
    let job = MergeJob {
        w0: &w0,
        in_dtype: Dtype::F32,
        rows: 1,
        cols: 2,
        terms: &[],
        out_dtype: Dtype::F32,
    };
    assert!(matches!(merge(ctx, &job), Err(MergeError::Shape(_))));
    let empty = MergeJob {
        w0: &[],
        in_dtype: Dtype::BF16,
        rows: 0,
        cols: 5,
        terms: &[],
        out_dtype: Dtype::F32,
    };
    assert_eq!(merge(ctx, &empty).unwrap(), Vec::<u8>::new());
}

#[test]
fn merge_tile_plan_respects_limits() {
    for &(rows, cols, es, r, dr, dc, limit) in &[
        (150usize, 300usize, 4u64, 24usize, 1usize, 1usize, 8192u64),
        (3001, 48, 2, 8, 0, 0, 8192),
        (10, 100_000, 2, 64, 0, 2, 1 << 20),
        (100_000, 4096, 2, 16, 1, 0, 128 << 20),
    ] {
        let (tr, tc) = merge_tiles(rows, cols, es, r, dr, dc, limit).unwrap();
        let (tr64, tc64) = (tr as u64, tc as u64);
        assert!(tr >= 1 && tc >= 1 && tr <= rows && tc <= cols);
        assert!(tr64 * tc64 * es <= limit, "tile");
        assert!(
            tr64 * r as u64 * 4 <= limit && r as u64 * tc64 * 4 <= limit,
            "factors"
        );
        assert!(
            (dr as u64 * tr64 + dc as u64 * tc64) * 4 <= limit,
            "dora factors"
        );
    }
    assert!(matches!(
        merge_tiles(4, 4, 4, 1 << 20, 0, 0, 1 << 20),
        Err(GpuError::TooLarge { .. })
    ));
}

#[test]
fn codecs_match_half_crate() {
    let Some(ctx) = gpu() else { return };
    let kernel = ctx.kernel(&kernels::CONVERT, &[]).unwrap();
    let run = |mode: u32, input: &[u32]| -> Vec<u32> {
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        struct P {
            n: u32,
            mode: u32,
            pad: [u32; 2],
        }
        ctx.scoped(|| {
            let p = ctx.uniform(
                "convert params",
                &P {
                    n: input.len() as u32,
                    mode,
                    pad: [0; 2],
                },
            );
            let inp = ctx.upload("convert in", bytemuck::cast_slice(input));
            let out = ctx.output("convert out", input.len() as u64 * 4);
            let mut enc = ctx.encoder();
            ctx.dispatch(
                &mut enc,
                &kernel,
                &[&p, &inp, &out],
                ctx.grid_1d(input.len() as u64, CONVERT_WG),
            );
            let bytes = ctx.submit_and_read(enc, &[(&out, input.len() as u64 * 4)])?;
            Ok(bytemuck::pod_collect_to_vec(&bytes[0]))
        })
        .unwrap()
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

/// `S` for the error bound: the same forward on absolute values.
fn abs_forward(
    x: &[f32],
    n: usize,
    w0: &StoredMatrix,
    ads: &[ForwardAdapter],
    idx: Option<&[u32]>,
) -> Vec<f32> {
    let xa: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let wa: Vec<f32> = dtype::decode(w0.dtype, w0.bytes)
        .iter()
        .map(|v| v.abs())
        .collect();
    let wb = dtype::encode(Dtype::F32, &wa);
    let sm = StoredMatrix {
        bytes: &wb,
        dtype: Dtype::F32,
        ..*w0
    };
    let abs_f: Vec<(Vec<f32>, Vec<f32>)> = ads
        .iter()
        .map(|a| {
            (
                a.a.iter().map(|v| v.abs()).collect(),
                a.b.iter().map(|v| v.abs()).collect(),
            )
        })
        .collect();
    let abs_ads: Vec<ForwardAdapter> = ads
        .iter()
        .zip(&abs_f)
        .map(|(a, (aa, bb))| ForwardAdapter {
            a: aa,
            b: bb,
            rank: a.rank,
            scale: a.scale.abs(),
        })
        .collect();
    match idx {
        None => cpu_forward::lora_forward(&xa, n, &sm, &abs_ads).unwrap(),
        Some(i) => cpu_forward::bgmv_forward(&xa, n, &sm, &abs_ads, i).unwrap(),
    }
}

/// `|got − want| ≤ 2·(depth + 2)·2⁻²⁴·S` element by element.
fn assert_within_bound(got: &[f32], want: &[f32], s: &[f32], depth: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let gamma = 2.0 * (depth as f64 + 2.0) * 2f64.powi(-24);
    let mut worst = 0f64;
    for (i, ((g, w), s)) in got.iter().zip(want).zip(s).enumerate() {
        let err = (*g as f64 - *w as f64).abs();
        let tol = gamma * *s as f64 + 1e-30;
        assert!(
            err <= tol,
            "{what}: element {i}: gpu {g} cpu {w}, |diff| {err:e} > {tol:e}"
        );
        worst = worst.max(err / tol);
    }
    assert!(worst < 1.0);
}

struct Adapters {
    f: Vec<(Vec<f32>, Vec<f32>, usize, f32)>,
}

impl Adapters {
    fn new(d: usize, k: usize, ranks: &[usize], seed: &mut Rng) -> Self {
        let scales = [0.5f32, -1.25, 2.0, 0.125];
        Adapters {
            f: ranks
                .iter()
                .enumerate()
                .map(|(i, &r)| (rand(r * k, seed), rand(d * r, seed), r, scales[i % 4]))
                .collect(),
        }
    }

    fn views(&self) -> Vec<ForwardAdapter<'_>> {
        self.f
            .iter()
            .map(|(a, b, r, s)| ForwardAdapter {
                a,
                b,
                rank: *r,
                scale: *s,
            })
            .collect()
    }
}

/// GPU vs CPU forward for `X` `n × k` and `W0` `d × k` (`shape = (n, k, d)`).
fn check_forward(
    ctx: &GpuContext,
    (n, k, d): (usize, usize, usize),
    dt: Dtype,
    ranks: &[usize],
    bgmv: bool,
    seed: &mut Rng,
) {
    let x = rand(n * k, seed);
    let w0 = dtype::encode(dt, &rand(d * k, seed));
    let sm = StoredMatrix {
        bytes: &w0,
        dtype: dt,
        rows: d,
        cols: k,
    };
    let ads = Adapters::new(d, k, ranks, seed);
    let views = ads.views();
    let idx: Vec<u32> = (0..n as u32)
        .map(|i| {
            if i % (ranks.len() as u32 + 1) == ranks.len() as u32 {
                NO_ADAPTER
            } else {
                i % (ranks.len() as u32 + 1)
            }
        })
        .collect();
    let what = format!(
        "{} n{n} k{k} d{d} {dt:?} ranks {ranks:?}",
        if bgmv { "bgmv" } else { "forward" }
    );
    let (got, want) = if bgmv {
        (
            bgmv_forward(ctx, &x, n, &sm, &views, &idx).unwrap(),
            cpu_forward::bgmv_forward(&x, n, &sm, &views, &idx).unwrap(),
        )
    } else {
        (
            lora_forward(ctx, &x, n, &sm, &views).unwrap(),
            cpu_forward::lora_forward(&x, n, &sm, &views).unwrap(),
        )
    };
    let s = abs_forward(&x, n, &sm, &views, bgmv.then_some(&idx[..]));
    let r_total: usize = ranks.iter().sum();
    assert_within_bound(&got, &want, &s, k + r_total, &what);
}

#[test]
fn forward_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut seed = Rng::seed_from_u64(41);
    for dt in DTYPES {
        for rank in [1, 8, 64] {
            check_forward(ctx, (37, 150, 77), dt, &[rank], false, &mut seed);
        }
        check_forward(ctx, (37, 150, 77), dt, &[1, 8, 64], false, &mut seed);
    }
    // No adapters at all, and a single row.
    check_forward(ctx, (5, 20, 9), Dtype::BF16, &[], false, &mut seed);
    check_forward(ctx, (1, 20, 9), Dtype::F16, &[8], false, &mut seed);
}

#[test]
fn bgmv_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut seed = Rng::seed_from_u64(43);
    for dt in DTYPES {
        check_forward(ctx, (37, 150, 77), dt, &[1, 8, 64], true, &mut seed);
    }
    let x = [0f32; 4];
    let w0 = dtype::encode(Dtype::F32, &[0.0; 4]);
    let sm = StoredMatrix {
        bytes: &w0,
        dtype: Dtype::F32,
        rows: 2,
        cols: 2,
    };
    let (a, b) = ([0f32; 2], [0f32; 2]);
    let ads = [ForwardAdapter {
        a: &a,
        b: &b,
        rank: 1,
        scale: 1.0,
    }];
    assert!(matches!(
        bgmv_forward(ctx, &x, 2, &sm, &ads, &[0, 1]),
        Err(GpuError::Shape(_))
    ));
    assert!(bgmv_forward(ctx, &x, 2, &sm, &ads, &[NO_ADAPTER, 0]).is_ok());
}

#[test]
fn forward_tiled_matches_cpu() {
    let Some(ctx) = gpu_tiled() else { return };
    let mut seed = Rng::seed_from_u64(47);
    // W0 1100 × 24 (52–103 KiB, up to 12× the binding limit) split into row tiles, X (45 rows)
    // into two.
    for dt in DTYPES {
        check_forward(ctx, (45, 24, 1100), dt, &[1, 8, 64], false, &mut seed);
        check_forward(ctx, (45, 24, 1100), dt, &[1, 8, 64], true, &mut seed);
    }
    // The stacked A (not tiled) over the limit is an error, not a wrong answer.
    let x = vec![0f32; 2 * 100];
    let w0 = dtype::encode(Dtype::F32, &vec![0f32; 3 * 100]);
    let sm = StoredMatrix {
        bytes: &w0,
        dtype: Dtype::F32,
        rows: 3,
        cols: 100,
    };
    let (a, b) = (vec![0f32; 64 * 100], vec![0f32; 3 * 64]);
    let ads = [ForwardAdapter {
        a: &a,
        b: &b,
        rank: 64,
        scale: 1.0,
    }];
    assert!(matches!(
        lora_forward(ctx, &x, 2, &sm, &ads),
        Err(GpuError::TooLarge { .. })
    ));
}

struct Pair {
    w: Vec<u8>,
    w0: Vec<u8>,
    wd: Dtype,
    w0d: Dtype,
    rows: usize,
    cols: usize,
}

impl Pair {
    fn new(rows: usize, cols: usize, wd: Dtype, w0d: Dtype, seed: &mut Rng) -> Self {
        let base = rand(rows * cols, seed);
        let tuned: Vec<f32> = base.iter().map(|v| v + 0.05 * uniform(seed)).collect();
        Pair {
            w: dtype::encode(wd, &tuned),
            w0: dtype::encode(w0d, &base),
            wd,
            w0d,
            rows,
            cols,
        }
    }

    fn view(&self) -> DeltaPair<'_> {
        DeltaPair {
            w: StoredMatrix {
                bytes: &self.w,
                dtype: self.wd,
                rows: self.rows,
                cols: self.cols,
            },
            w0: StoredMatrix {
                bytes: &self.w0,
                dtype: self.w0d,
                rows: self.rows,
                cols: self.cols,
            },
        }
    }

    /// `|W − W0|` as an F32 pair against zeros, for the error bound.
    fn abs(&self) -> Pair {
        let d: Vec<f32> = dtype::decode(self.wd, &self.w)
            .iter()
            .zip(dtype::decode(self.w0d, &self.w0))
            .map(|(a, b)| (a - b).abs())
            .collect();
        Pair {
            w: dtype::encode(Dtype::F32, &d),
            w0: vec![0; d.len() * 4],
            wd: Dtype::F32,
            w0d: Dtype::F32,
            rows: self.rows,
            cols: self.cols,
        }
    }
}

fn check_sketch(ctx: &GpuContext, p: &Pair, l: usize, seed: &mut Rng) {
    let (m, k) = (p.rows, p.cols);
    let omega = rand(k * l, seed);
    let q = rand(m * l, seed);
    let what = format!("sketch {m}×{k} {:?}−{:?} l{l}", p.wd, p.w0d);
    let pair = p.view();
    let abs = p.abs();
    let abs_o: Vec<f32> = omega.iter().map(|v| v.abs()).collect();
    let abs_q: Vec<f32> = q.iter().map(|v| v.abs()).collect();
    let y = delta_sketch(ctx, &pair, &omega, l).unwrap();
    let y_cpu = cpu_forward::delta_sketch(&pair, &omega, l).unwrap();
    let s = cpu_forward::delta_sketch(&abs.view(), &abs_o, l).unwrap();
    assert_within_bound(&y, &y_cpu, &s, k, &what);
    let z = delta_sketch_t(ctx, &pair, &q, l).unwrap();
    let z_cpu = cpu_forward::delta_sketch_t(&pair, &q, l).unwrap();
    let s = cpu_forward::delta_sketch_t(&abs.view(), &abs_q, l).unwrap();
    assert_within_bound(&z, &z_cpu, &s, m, &format!("{what} (transposed)"));
}

#[test]
fn sketch_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut seed = Rng::seed_from_u64(53);
    for (wd, w0d) in [
        (Dtype::BF16, Dtype::BF16),
        (Dtype::F16, Dtype::F32),
        (Dtype::F32, Dtype::BF16),
        (Dtype::F32, Dtype::F16),
    ] {
        let p = Pair::new(90, 75, wd, w0d, &mut seed);
        for l in [1, 8, 64] {
            check_sketch(ctx, &p, l, &mut seed);
        }
    }
}

#[test]
fn sketch_tiled_matches_cpu() {
    let Some(ctx) = gpu_tiled() else { return };
    let mut seed = Rng::seed_from_u64(59);
    // 500 × 40: W and W0 are 40–80 KiB, 5–10× the binding limit.
    for (wd, w0d) in [(Dtype::BF16, Dtype::F16), (Dtype::F32, Dtype::F32)] {
        let p = Pair::new(500, 40, wd, w0d, &mut seed);
        for l in [1, 8, 48] {
            check_sketch(ctx, &p, l, &mut seed);
        }
    }
}

#[test]
fn delta_operator_drives_randomized_svd() {
    let (Some(ctx), Some(tiled)) = (gpu(), gpu_tiled()) else {
        return;
    };
    let mut seed = Rng::seed_from_u64(61);
    let (m, n, r) = (120, 90, 4);
    let base = rand(m * n, &mut seed);
    let b = rand(m * r, &mut seed);
    let a = rand(r * n, &mut seed);
    let tuned: Vec<f32> = (0..m * n)
        .map(|p| {
            base[p]
                + (0..r)
                    .map(|c| b[(p / n) * r + c] * a[c * n + p % n])
                    .sum::<f32>()
        })
        .collect();
    let (wb, w0b) = (
        dtype::encode(Dtype::F32, &tuned),
        dtype::encode(Dtype::F32, &base),
    );
    let pair = DeltaPair {
        w: StoredMatrix {
            bytes: &wb,
            dtype: Dtype::F32,
            rows: m,
            cols: n,
        },
        w0: StoredMatrix {
            bytes: &w0b,
            dtype: Dtype::F32,
            rows: m,
            cols: n,
        },
    };
    let opts = RsvdOptions::default();
    let want = randomized_svd(&pair, r, &opts);
    for c in [ctx, tiled] {
        let op = GpuDeltaOp::new(c, pair).unwrap();
        assert_eq!((op.rows(), op.cols()), (m, n));
        let got = randomized_svd(&op, r, &opts);
        assert!(op.take_error().is_none());
        for (g, w) in got.s.iter().zip(&want.s) {
            assert!(
                (g - w).abs() <= 1e-4 * want.s[0],
                "singular values {:?} vs {:?}",
                got.s,
                want.s
            );
        }
    }
}

#[test]
fn context_describes_itself_and_compiles_every_kernel() {
    let Some(ctx) = gpu() else { return };
    ctx.compile_all().unwrap();
    let info = serde_json::to_value(ctx.describe()).unwrap();
    for key in [
        "name",
        "backend",
        "device_type",
        "driver",
        "limits",
        "tile_binding_bytes",
    ] {
        assert!(info.get(key).is_some(), "{key} missing from {info}");
    }
    eprintln!("gpu: {info}");
    assert!(GpuContext::with_binding_limit(1).is_ok_and(|c| c.max_binding() == 256));
}
