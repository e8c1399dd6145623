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
