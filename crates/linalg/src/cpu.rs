//! The one detection of the CPU's vector instruction sets, shared by lorakit's kernels
//! (`lorakit::backend::simd`, which dispatches on it) and this crate's ([`crate::skinny`],
//! [`crate::householder`], [`crate::dense::clear_upper_vector_state`]). Nothing else in either
//! crate calls `is_x86_feature_detected!`.
//!
//! Must not: choose a kernel (callers map the level to their compiled copies).

use std::sync::OnceLock;

/// The instruction sets kernels are compiled for, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The target's baseline (SSE2 on x86-64; the only level elsewhere).
    Baseline,
    /// AVX2 and FMA (Haswell, Zen and later).
    Avx2,
    /// AVX-512F with FMA (Skylake-SP, Ice Lake, Zen 4 and later; every AVX-512 CPU has FMA).
    Avx512,
}

/// What the running CPU supports, detected once: `Avx512` only when it reports AVX-512F and
/// FMA, `Avx2` only when it reports AVX2 and FMA (the features the wide copies are compiled
/// with), else `Baseline`.
pub fn detected() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("fma") && has!("avx512f") {
                return Level::Avx512;
            }
            if has!("fma") && has!("avx2") {
                return Level::Avx2;
            }
        }
        Level::Baseline
    })
}
