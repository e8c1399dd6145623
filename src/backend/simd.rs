//! CPU-feature dispatch: the one way a CPU kernel picks a compiled copy for the CPU it runs on.
//!
//! `multiversion!` compiles a function's body three times on x86-64 — for AVX-512F, for
//! AVX2 + FMA, and for the baseline (SSE2) — and calls the widest copy that [`level`] allows;
//! elsewhere it is the plain function. The CPU is asked once ([`detected`], shared with
//! `crates/linalg`'s kernels); nothing else calls `is_x86_feature_detected!`.
//!
//! Every copy computes the same bits: the operations and their order are the source's, and Rust
//! never reassociates float arithmetic or contracts `a·b + c` into a fused multiply-add (the
//! `fma` feature only makes an explicit `mul_add` one instruction, with the same, single
//! rounding). Kernels written for this keep that property by using fixed lane counts (arrays of
//! accumulators) rather than whatever width the compiler picks. Tests compare the copies bit
//! for bit through [`with_baseline_kernels`].
//!
//! The wide copies are safe `#[target_feature]` functions (Rust ≥ 1.86); calling one is
//! `unsafe` only because the CPU must have the feature, which the one `unsafe` block in the
//! macro states and [`detected`] guarantees.

use std::cell::Cell;

/// The levels and the one detection live in `crates/linalg` ([`crate::linalg::cpu`]), whose own
/// kernels choose by the same answer.
pub use crate::linalg::cpu::{detected, Level};

thread_local! {
    static CAP: Cell<Level> = const { Cell::new(Level::Avx512) };
}

/// The level kernels called on this thread use: [`detected`], capped by
/// [`with_baseline_kernels`] / [`with_level`].
#[inline]
pub fn level() -> Level {
    detected().min(CAP.with(|c| c.get()))
}

/// Runs `f` with the kernels called on this thread (not on rayon's workers) capped at `cap`.
/// Nests, and restores the previous cap even if `f` panics.
#[doc(hidden)]
pub fn with_level<R>(cap: Level, f: impl FnOnce() -> R) -> R {
    struct Restore(Level);
    impl Drop for Restore {
        fn drop(&mut self) {
            CAP.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CAP.with(|c| c.replace(cap)));
    f()
}

/// Runs `f` with the kernels called on this thread taking their baseline copy, so tests can
/// compare the copies bit for bit.
#[doc(hidden)]
pub fn with_baseline_kernels<R>(f: impl FnOnce() -> R) -> R {
    with_level(Level::Baseline, f)
}

/// Defines a function whose body is compiled for each [`Level`] and dispatched on [`level`].
/// Accepts `fn name(args) -> ret { … }` and one type parameter with one bound
/// (`fn name<T: Real>(…)`); arguments are plain identifiers. A leading `cap(Avx2)` caps the
/// dispatch of that one function at a level, for a kernel measured faster there than in the
/// CPU's widest copy (the measurement goes in a comment at the cap).
macro_rules! multiversion {
    (@at ($level:expr) $(#[$m:meta])* $vis:vis fn $name:ident $(<$t:ident: $bound:path>)? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$t: $bound>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body $(<$t: $bound>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                fn avx512 $(<$t: $bound>)? ($($arg: $ty),*) $(-> $ret)? {
                    body $(::<$t>)? ($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2 $(<$t: $bound>)? ($($arg: $ty),*) $(-> $ret)? {
                    body $(::<$t>)? ($($arg),*)
                }
                match $level {
                    // SAFETY: the level (`level()`, capped or not) is at most `detected()`,
                    // which is `Avx512` only when the running CPU reports AVX-512F and `Avx2`
                    // only when it reports AVX2
                    // and FMA: the features these copies are compiled for.
                    $crate::backend::simd::Level::Avx512 => {
                        return unsafe { avx512 $(::<$t>)? ($($arg),*) }
                    }
                    $crate::backend::simd::Level::Avx2 => {
                        return unsafe { avx2 $(::<$t>)? ($($arg),*) }
                    }
                    $crate::backend::simd::Level::Baseline => {}
                }
            }
            body $(::<$t>)? ($($arg),*)
        }
    };
    (cap($cap:ident) $($rest:tt)*) => {
        $crate::backend::simd::multiversion!(@at ($crate::backend::simd::level().min($crate::backend::simd::Level::$cap)) $($rest)*);
    };
    ($(#[$m:meta])* $vis:vis fn $($rest:tt)*) => {
        $crate::backend::simd::multiversion!(@at ($crate::backend::simd::level()) $(#[$m])* $vis fn $($rest)*);
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    multiversion! {
        /// Eight fixed lanes of f32 products summed in f64: the copies must agree bit for bit.
        fn lanes(x: &[f32], y: &[f32]) -> f64 {
            let mut acc = [0f64; 8];
            for (xs, ys) in x.chunks_exact(8).zip(y.chunks_exact(8)) {
                for l in 0..8 {
                    acc[l] += (xs[l] * ys[l]) as f64 + (xs[l] as f64).mul_add(ys[l] as f64, 1.0);
                }
            }
            acc.iter().sum()
        }
    }

    #[test]
    fn every_level_gives_the_same_bits_and_the_cap_nests() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos()).collect();
        let wide = lanes(&x, &y);
        for cap in [Level::Baseline, Level::Avx2, Level::Avx512] {
            let got = with_level(cap, || {
                assert_eq!(level(), detected().min(cap));
                lanes(&x, &y)
            });
            assert_eq!(got.to_bits(), wide.to_bits(), "{cap:?}");
        }
        with_baseline_kernels(|| {
            with_level(Level::Avx512, || assert_eq!(level(), detected()));
            assert_eq!(level(), Level::Baseline);
        });
        assert_eq!(level(), detected());
    }
}
