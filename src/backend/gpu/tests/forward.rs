//! The fused low-rank forward against the CPU forward eval runs (`model/linear.rs`), within the
//! f32 dot-product bound (module header of `tests`).

use super::*;
use crate::model::linear::{Exec, Linear, Lora, Matrix, MatrixData};

/// `Y = X·W0ᵀ + Σ s·(X·Aᵀ)·Bᵀ` by the CPU code eval runs: a frozen [`Linear`] over the stored
/// `W0` with the adapters unmerged, forward on [`Exec::Cpu`].
fn eval_forward(x: &[f32], n: usize, w0: &StoredMatrix, ads: &[ForwardAdapter]) -> Vec<f32> {
    let data = MatrixData::Stored {
        bytes: w0.bytes,
        dtype: w0.dtype,
    };
    let lin: Linear<f32> = Linear {
        name: "forward test".into(),
        w: Matrix::new(data, w0.rows, w0.cols),
        bias: None,
        loras: ads
            .iter()
            .map(|a| Lora {
                source: "forward test".into(),
                a: a.a.to_vec(),
                b: a.b.to_vec(),
                rank: a.rank,
                scale: a.scale,
                bias: None,
                trainable: false,
            })
            .collect(),
        base0: None,
    };
    lin.forward(x, n, Exec::Cpu, false).unwrap().0
}

/// `S` for the error bound: the same forward on absolute values.
fn abs_forward(x: &[f32], n: usize, w0: &StoredMatrix, ads: &[ForwardAdapter]) -> Vec<f32> {
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
    eval_forward(&xa, n, &sm, &abs_ads)
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
    let what = format!("forward n{n} k{k} d{d} {dt:?} ranks {ranks:?}");
    let got = lora_forward(ctx, &x, n, &sm, &views).unwrap();
    let want = eval_forward(&x, n, &sm, &views);
    let s = abs_forward(&x, n, &sm, &views);
    let r_total: usize = ranks.iter().sum();
    assert_within_bound(&got, &want, &s, k + r_total, &what);
}

#[test]
fn forward_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut seed = Rng::seed_from_u64(41);
    for dt in DTYPES {
        for rank in [1, 8, 64] {
            check_forward(ctx, (37, 150, 77), dt, &[rank], &mut seed);
        }
        check_forward(ctx, (37, 150, 77), dt, &[1, 8, 64], &mut seed);
    }
    // No adapters at all, and a single row.
    check_forward(ctx, (5, 20, 9), Dtype::BF16, &[], &mut seed);
    check_forward(ctx, (1, 20, 9), Dtype::F16, &[8], &mut seed);
}

/// The GEMM's edges: every dimension at 1, odd, and one past a tile (`n` = 129 past the
/// 128-row workgroup tile, `d` = 65 past the 64-column one, `k` = 17 and 33 one past a step of 16
/// along the inner dimension), at ranks 1, 16, 64 and stacked.
#[test]
fn forward_edge_shapes_match_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut seed = Rng::seed_from_u64(43);
    let shapes = [
        (1, 1, 1),
        (3, 17, 65),
        (17, 65, 3),
        (65, 3, 17),
        (129, 33, 65),
    ];
    for (i, &shape) in shapes.iter().enumerate() {
        let dt = DTYPES[i % DTYPES.len()];
        for ranks in [&[1][..], &[16], &[64], &[1, 16, 64]] {
            check_forward(ctx, shape, dt, ranks, &mut seed);
        }
    }
}

#[test]
fn forward_tiled_matches_cpu() {
    let Some(ctx) = gpu_tiled() else { return };
    let mut seed = Rng::seed_from_u64(47);
    // W0 1100 × 24 (52–103 KiB, up to 12× the binding limit) split into row tiles, X (45 rows)
    // into two.
    for dt in DTYPES {
        check_forward(ctx, (45, 24, 1100), dt, &[1, 8, 64], &mut seed);
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
    assert_rank_64_refused(3, 100, |ads| lora_forward(ctx, &x, 2, &sm, ads));
}

/// A zero rank-64 adapter on a `d × k` weight: on the tiled context its stacked factors outgrow
/// a binding, so `forward` must refuse it ([`GpuError::TooLarge`]) rather than answer wrongly.
fn assert_rank_64_refused(
    d: usize,
    k: usize,
    forward: impl Fn(&[ForwardAdapter]) -> Result<Vec<f32>, GpuError>,
) {
    let (a, b) = (vec![0f32; 64 * k], vec![0f32; d * 64]);
    let ads = [ForwardAdapter {
        a: &a,
        b: &b,
        rank: 64,
        scale: 1.0,
    }];
    assert!(matches!(forward(&ads), Err(GpuError::TooLarge { .. })));
}

/// A weight uploaded once ([`ResidentWeight`]) gives the same bits as uploading it on every
/// call, over several calls with different X and adapters, with and without row tiles; a rank
/// whose stacked B does not fit the resident tiles is an error, not a wrong answer.
#[test]
fn resident_weight_forward_equals_upload_per_call() {
    let mut seed = Rng::seed_from_u64(53);
    for (tiled, (n, k, d)) in [
        (false, (37usize, 150usize, 77usize)),
        (true, (45, 24, 1100)),
    ] {
        let Some(ctx) = (if tiled { gpu_tiled() } else { gpu() }) else {
            return;
        };
        for dt in DTYPES {
            let w0 = dtype::encode(dt, &rand(d * k, &mut seed));
            let sm = StoredMatrix {
                bytes: &w0,
                dtype: dt,
                rows: d,
                cols: k,
            };
            let resident = ResidentWeight::new(ctx, &sm).unwrap();
            for rank in [1, 3] {
                let x = rand(n * k, &mut seed);
                let (a, b) = (rand(rank * k, &mut seed), rand(d * rank, &mut seed));
                let ads = [ForwardAdapter {
                    a: &a,
                    b: &b,
                    rank,
                    scale: 0.75,
                }];
                let want = lora_forward(ctx, &x, n, &sm, &ads).unwrap();
                let got = lora_forward_resident(ctx, &x, n, &resident, &ads).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "tiled {tiled} {dt:?} rank {rank}");
            }
            if tiled {
                let x = vec![0f32; n * k];
                assert_rank_64_refused(d, k, |ads| {
                    lora_forward_resident(ctx, &x, n, &resident, ads)
                });
            }
            // Shapes are checked against the resident weight.
            assert!(matches!(
                lora_forward_resident(ctx, &[0.0; 3], 1, &resident, &[]),
                Err(GpuError::Shape(_))
            ));
        }
    }
}
