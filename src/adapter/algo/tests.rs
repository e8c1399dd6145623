//! Unit checks of the algorithm kernels against plain-loop references.

use super::*;

/// The core contraction against the einsum `i j s, j q, i p -> p q s` written as a plain
/// quadruple loop.
/// A Cayley rotation is orthogonal, and the constraint caps ‖Q‖.
#[test]
fn cayley_blocks_are_rotations() {
    let (n, s) = (2, 5);
    let blocks: Vec<f32> = (0..n * s * s)
        .map(|i| ((i as f32) * 0.61).sin() * 0.3)
        .collect();
    for constraint in [0.0, 0.1] {
        let r = cayley_blocks(&blocks, n, s, constraint);
        for b in 0..n {
            let rb = &r[b * s * s..(b + 1) * s * s];
            for i in 0..s {
                for j in 0..s {
                    let dot: f64 = (0..s).map(|t| rb[t * s + i] * rb[t * s + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!(
                        (dot - want).abs() < 1e-12,
                        "{constraint} {b} {i} {j}: {dot}"
                    );
                }
            }
        }
    }
    // Bound binding: R close to I (‖R − I‖ ≈ 2‖Q‖ for small Q).
    let r = cayley_blocks(&blocks, n, s, 1e-3);
    let dev: f64 = (0..n)
        .flat_map(|b| (0..s).flat_map(move |i| (0..s).map(move |j| (b, i, j))))
        .map(|(b, i, j)| {
            let x = r[(b * s + i) * s + j] - if i == j { 1.0 } else { 0.0 };
            x * x
        })
        .sum::<f64>()
        .sqrt();
    assert!(dev < 2.1e-3 && dev > 1.9e-3, "{dev}");
}

#[test]
fn tucker_core_and_its_output_factor_give_the_einsum() {
    let (r1, r2, kk, p, q) = (2, 3, 4, 5, 2);
    let f = |n: usize, s: f32| {
        (0..n)
            .map(|i| ((i as f32 + s) * 0.37).sin())
            .collect::<Vec<f32>>()
    };
    let (t, wa, wb) = (f(r1 * r2 * kk, 1.0), f(r1 * p, 2.0), f(r2 * q, 3.0));
    let u = tucker_core(&t, &wb, (r1, r2, kk), q);
    for pp in 0..p {
        for qq in 0..q {
            for s in 0..kk {
                let mut want = 0f64;
                for i in 0..r1 {
                    for j in 0..r2 {
                        want += t[(i * r2 + j) * kk + s] as f64
                            * wb[j * q + qq] as f64
                            * wa[i * p + pp] as f64;
                    }
                }
                let got: f64 = (0..r1)
                    .map(|i| wa[i * p + pp] as f64 * u[(i * q + qq) * kk + s])
                    .sum();
                assert!((got - want).abs() < 1e-12, "{got} vs {want}");
            }
        }
    }
}
