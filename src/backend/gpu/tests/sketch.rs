//! The delta sketches `(W − W0)·Ω` and `(W − W0)ᵀ·Q` against the CPU (split-K on both), and
//! the device delta operator driving the randomized SVD.

use super::*;
use crate::backend::gpu::sketch::split_k;

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
    // Split-K: k = 1000 goes to 13 splits of 80 (the last 40), each a partial product added
    // on the host; the bound is the whole depth's.
    let p = Pair::new(30, 1000, Dtype::BF16, Dtype::F32, &mut seed);
    for l in [1, 24] {
        check_sketch(ctx, &p, l, &mut seed);
    }
    // Split-K of the transposed sketch: 1000 rows of W are its inner dimension, 13 splits of
    // 80, their partial products added into Z on the device in split order.
    assert_eq!(split_k(30, 1000, 24, ctx.max_binding()), (13, 80));
    let p = Pair::new(1000, 30, Dtype::F16, Dtype::BF16, &mut seed);
    for l in [1, 24] {
        check_sketch(ctx, &p, l, &mut seed);
        let q = rand(1000 * l, &mut seed);
        let z = delta_sketch_t(ctx, &p.view(), &q, l).unwrap();
        let again = delta_sketch_t(ctx, &p.view(), &q, l).unwrap();
        assert!(
            z.iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "split-K sketch_t is not deterministic"
        );
    }
}

/// The GEMM's edges in both sketches: 1, odd sizes, and one past a tile (129 output rows of
/// `(W − W0)ᵀ·Q` past the 128-row workgroup tile, l = 65 past the 64-column one), l = 1, 16, 64.
#[test]
fn sketch_edge_shapes_match_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut seed = Rng::seed_from_u64(67);
    for (rows, cols) in [(1, 1), (17, 65), (129, 3), (65, 129)] {
        let p = Pair::new(rows, cols, Dtype::BF16, Dtype::F32, &mut seed);
        for l in [1, 16, 64, 65] {
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
    // 600 × 8: row tiles of 256, 256 and 88 rows; the transposed sketch splits the first two
    // into 4 chunks of 64 (partial products within the 8 KiB binding) and not the last, so Z
    // accumulates split and unsplit tiles.
    let limit = ctx.max_binding();
    assert_eq!(split_k(8, 256, 8, limit), (4, 64));
    assert_eq!(split_k(8, 88, 8, limit).0, 1);
    let p = Pair::new(600, 8, Dtype::F32, Dtype::BF16, &mut seed);
    for l in [1, 8] {
        check_sketch(ctx, &p, l, &mut seed);
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

/// The split rule: chunks are multiples of 16, at least 64 (short products are not split), cover
/// `k` with no empty split, and the partial products fit the binding limit.
#[test]
fn split_k_covers_k_within_limits() {
    assert_eq!(split_k(30, 1000, 24, 1 << 30), (13, 80));
    assert_eq!(split_k(30, 40, 8, 1 << 30), (1, 48));
    for (rows, k, l, limit) in [
        (4096, 4096, 32, 1u64 << 31),
        (64, 100_000, 8, 1 << 31),
        (7, 333, 1, 1 << 31),
        (500, 40, 48, 8 << 10),
        (100, 5000, 64, 100 * 64 * 4 * 3),
    ] {
        let (splits, chunk) = split_k(rows, k, l, limit);
        assert!(chunk % 16 == 0 && splits >= 1, "{rows} {k} {l}");
        assert!(
            (splits - 1) * chunk < k && splits * chunk >= k,
            "{rows} {k} {l}"
        );
        assert!(splits == 1 || chunk >= 64, "{rows} {k} {l}");
        assert!(
            splits == 1 || (splits * rows * l * 4) as u64 <= limit,
            "{rows} {k} {l}"
        );
    }
}
