//! Unit tests of the extraction numerics and planning.
//!
//! Must not compare against lorakit's own outputs: references are exact or f64 SVDs.

use super::*;
use crate::linalg::{self, Dense, LinearOperator, RsvdOptions};
use ndarray::{Array2, ArrayView2};

#[test]
fn host_delta_op_is_exact_and_thread_count_independent() {
    // 600 rows: three blocks, the last one partial.
    let a = linalg::rng::gaussian_matrix(600, 70, 1)
        .as_standard_layout()
        .into_owned();
    let x = linalg::rng::gaussian_matrix(70, 9, 2);
    let y = linalg::rng::gaussian_matrix(600, 9, 3);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let op = HostDeltaOp::new(a.view());
            (op.apply(x.view()), op.apply_t(y.view()))
        })
    };
    let (ax1, aty1) = run(1);
    let (ax3, aty3) = run(3);
    assert_eq!(ax1, ax3);
    assert_eq!(aty1, aty3);
    // Against f64 products.
    let check = |got: &Array2<f32>, l: ArrayView2<f32>, r: ArrayView2<f32>| {
        for i in 0..got.nrows() {
            for j in 0..got.ncols() {
                let (mut v, mut mag) = (0f64, 0f64);
                for k in 0..l.ncols() {
                    v += l[[i, k]] as f64 * r[[k, j]] as f64;
                    mag += (l[[i, k]] as f64 * r[[k, j]] as f64).abs();
                }
                assert!((got[[i, j]] as f64 - v).abs() <= 1e-5 * mag, "[{i}, {j}]");
            }
        }
    };
    check(&ax1, a.view(), x.view());
    check(&aty1, a.t(), y.view());
}

/// The closed-form residual against an f64 computation of `‖ΔW − U_k·S_k·V_kᵀ‖²` from the
/// factors, on a matrix with a slowly decaying spectrum plus noise (relative error ~0.3), and
/// the fallback for a nearly exact low-rank `ΔW`.
#[test]
fn closed_form_residual_matches_the_explicit_one() {
    let (m, n) = (300, 200);
    let low = |terms: usize| {
        let u = linalg::rng::gaussian_matrix(m, terms, 5);
        let mut v = linalg::rng::gaussian_matrix(terms, n, 6);
        for (j, mut row) in v.axis_iter_mut(ndarray::Axis(0)).enumerate() {
            row.mapv_inplace(|x| x / (j + 1) as f32);
        }
        linalg::dense::FAER.matmul(u.view(), v.view())
    };
    let noise = linalg::rng::gaussian_matrix(m, n, 7);
    let explicit = |d: &Array2<f32>, f: &Factorization| {
        let (b, a) = linalg::split_factors(&f.svd, f.rank);
        let mut r = 0f64;
        for i in 0..m {
            for j in 0..n {
                let p: f64 = (0..f.rank)
                    .map(|k| b[[i, k]] as f64 * a[[k, j]] as f64)
                    .sum();
                r += (d[[i, j]] as f64 - p).powi(2);
            }
        }
        r
    };
    let opts = RsvdOptions {
        oversample: 10,
        power_iters: 2,
        seed: 3,
    };
    // 40 terms + noise at rank 8: residual ~0.3; 8 terms + tiny noise: ~1e-6.
    for (terms, noise_std, expect_closed) in [(40, 0.05f32, true), (8, 1e-6, false)] {
        let d = &low(terms) + &noise.mapv(|x| x * noise_std);
        let d = d.as_standard_layout().into_owned();
        let norm_sq = linalg::frobenius_norm_sq(d.view());
        let op = HostDeltaOp::new(d.view());
        let f = factorize(&op, norm_sq, &RankRule::Fixed(8), false, &opts, 10);
        let want = explicit(&d, &f);
        match closed_form_residual_sq(&f, norm_sq) {
            Some(got) => {
                assert!(
                    expect_closed,
                    "noise {noise_std}: closed form where it cancels"
                );
                assert!(
                    (got - want).abs() <= 1e-4 * want,
                    "closed form {got} vs explicit {want}"
                );
            }
            None => {
                assert!(
                    !expect_closed,
                    "noise {noise_std}: explicit where closed is fine"
                );
                // Rightly: there the difference would be all rounding.
                let kept: f64 = f.svd.s[..f.rank].iter().map(|&x| x as f64 * x as f64).sum();
                let naive = norm_sq - kept;
                assert!((naive - want).abs() > 1e-2 * want, "{naive} vs {want}");
            }
        }
    }
}

#[test]
fn module_seed_depends_on_seed_and_name() {
    assert_eq!(module_seed(0, "a.weight"), module_seed(0, "a.weight"));
    assert_ne!(module_seed(0, "a.weight"), module_seed(1, "a.weight"));
    assert_ne!(module_seed(0, "a.weight"), module_seed(0, "b.weight"));
}

#[test]
fn embedding_names() {
    for n in [
        "model.embed_tokens",
        "transformer.wte",
        "transformer.wpe",
        "bert.embeddings.word_embeddings",
        "shared",
    ] {
        assert!(is_embedding_module(n), "{n}");
    }
    for n in [
        "gpt_neox.embed_out",
        "model.layers.0.self_attn.q_proj",
        "lm_head",
    ] {
        assert!(!is_embedding_module(n), "{n}");
    }
}

/// The [`DeltaOperators`] of an [`Engine`](crate::backend::Engine) route as
/// `Engine::delta_operator` documents. The host copy of `ΔW` handed in is a zero sentinel, so the
/// products show which operator ran: the CPU engine, and the GPU engine on F64 tensors (which the
/// kernels do not read), give the sentinel's zeros; the GPU engine on BF16 tensors forms
/// `W − W0` from the stored bytes, compared with the f64 products within the f32 dot-product
/// bound `2·γ·S`, `γ = (K + 2)·2⁻²⁴`, `S` the products on absolute values (the GPU tests' bound).
/// The GPU half runs, skips or fails under the GPU tests' one policy.
#[test]
fn engine_delta_operators_route_by_engine_and_dtype() {
    use crate::backend::Engine;
    use crate::dtype::{decode, encode};
    let (rows, cols, l) = (70, 33, 5);
    let w = linalg::rng::gaussian_matrix(rows, cols, 11);
    let w0 = linalg::rng::gaussian_matrix(rows, cols, 12);
    let x = linalg::rng::gaussian_matrix(cols, l, 13);
    let y = linalg::rng::gaussian_matrix(rows, l, 14);
    let zeros = Array2::<f32>::zeros((rows, cols));
    let std = |a: &Array2<f32>| a.as_standard_layout().iter().copied().collect::<Vec<f32>>();
    let (w, w0) = (std(&w), std(&w0));
    // (M·X, Mᵀ·Y) of one engine on tensors stored as `dtype`.
    let products = |engine: &Engine, dtype: Dtype| {
        let (wb, w0b) = (encode(dtype, &w), encode(dtype, &w0));
        let input = DeltaInput {
            name: "t.weight",
            rows,
            cols,
            w: &wb,
            w_dtype: dtype,
            w0: &w0b,
            w0_dtype: dtype,
            delta: zeros.view(),
        };
        let op = engine.operator(&input).unwrap();
        (op.apply(x.view()), op.apply_t(y.view()))
    };
    let is_zero =
        |(mx, mty): &(Array2<f32>, Array2<f32>)| mx.iter().chain(mty.iter()).all(|&v| v == 0.0);
    assert!(is_zero(&products(&Engine::Cpu, Dtype::BF16)), "cpu engine");
    let Some(ctx) = crate::backend::gpu::tests::fresh_gpu() else {
        return;
    };
    let gpu = Engine::Gpu(Box::new(ctx));
    assert!(is_zero(&products(&gpu, Dtype::F64)), "gpu engine, f64");
    let (mx, mty) = products(&gpu, Dtype::BF16);
    // f64 references from the stored bf16 values.
    let (wd, w0d) = (
        decode(Dtype::BF16, &encode(Dtype::BF16, &w)),
        decode(Dtype::BF16, &encode(Dtype::BF16, &w0)),
    );
    let m = |i: usize, k: usize| wd[i * cols + k] as f64 - w0d[i * cols + k] as f64;
    let check =
        |got: &Array2<f32>, n: usize, inner: usize, entry: &dyn Fn(usize, usize) -> (f64, f64)| {
            let gamma = (inner + 2) as f64 * 2f64.powi(-24);
            let mut nonzero = false;
            for i in 0..n {
                for j in 0..l {
                    let (want, abs) = entry(i, j);
                    let err = (got[[i, j]] as f64 - want).abs();
                    assert!(
                        err <= 2.0 * gamma * abs,
                        "[{i}, {j}]: {} vs {want}",
                        got[[i, j]]
                    );
                    nonzero |= want != 0.0;
                }
            }
            assert!(nonzero, "the reference products are not all zero");
        };
    check(&mx, rows, cols, &|i, j| {
        (0..cols).fold((0.0, 0.0), |(s, a), k| {
            let p = m(i, k) * x[[k, j]] as f64;
            (s + p, a + p.abs())
        })
    });
    check(&mty, cols, rows, &|k, j| {
        (0..rows).fold((0.0, 0.0), |(s, a), i| {
            let p = m(i, k) * y[[i, j]] as f64;
            (s + p, a + p.abs())
        })
    });
}
