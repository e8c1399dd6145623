//! torch's CPU random numbers, as far as lorakit needs them to tell which seed made a saved
//! buffer: the generator `torch.Generator().manual_seed(seed)` (`at::mt19937`,
//! `aten/src/ATen/core/MT19937RNGEngine.h`: the standard MT19937 seeded with the low 32 bits)
//! and `torch.normal(mean, std, size, generator)` for 16 or more float32 values
//! (`aten/src/ATen/native/cpu/DistributionTemplates.h` `normal_fill`: every value first drawn
//! uniform as `(random() & (2²⁴ − 1)) · 2⁻²⁴`, then Box–Muller over blocks of 16, the last
//! partial block redrawn). torch's AVX2 path computes the same formula with its own log, sin
//! and cos, so values agree to a few ulps, not bit for bit: callers compare with a tolerance
//! and never merge these numbers, only identify a seed by them. Never reads files.

/// torch's CPU generator (`CPUGeneratorImpl::random`).
struct Mt19937 {
    state: [u32; 624],
    next: usize,
}

impl Mt19937 {
    fn new(seed: u64) -> Self {
        let mut state = [0u32; 624];
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..624 {
            state[j] = 1_812_433_253u32
                .wrapping_mul(state[j - 1] ^ (state[j - 1] >> 30))
                .wrapping_add(j as u32);
        }
        Self { state, next: 624 }
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.state[i] = v;
        }
        self.next = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.next >= 624 {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `uniform_real_distribution<float>(0, 1)`.
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32)
    }
}

/// `torch.normal(mean, std, size=(n,), generator=torch.Generator().manual_seed(seed))` in
/// float32; `None` below 16 values (torch then takes a serial path not reproduced here).
pub(super) fn normal(seed: u64, n: usize, mean: f32, std: f32) -> Option<Vec<f32>> {
    if n < 16 {
        return None;
    }
    let mut g = Mt19937::new(seed);
    let mut data: Vec<f32> = (0..n).map(|_| g.uniform_f32()).collect();
    let fill16 = |d: &mut [f32]| {
        for j in 0..8 {
            let (u1, u2) = (1.0 - d[j], d[j + 8]);
            let radius = (-2.0 * u1.ln()).sqrt();
            let theta = (2.0 * std::f64::consts::PI * u2 as f64) as f32;
            d[j] = radius * theta.cos() * std + mean;
            d[j + 8] = radius * theta.sin() * std + mean;
        }
    };
    for block in data.chunks_exact_mut(16) {
        fill16(block);
    }
    if !n.is_multiple_of(16) {
        let tail = &mut data[n - 16..];
        for x in tail.iter_mut() {
            *x = g.uniform_f32();
        }
        fill16(tail);
    }
    Some(data)
}

#[cfg(test)]
mod tests {
    /// Against torch 2.x: `torch.normal(0.0, 1/√2, (40,), generator=Generator().manual_seed(43))`
    /// (a tail block redrawn: 40 is not a multiple of 16).
    #[test]
    fn normal_matches_torch() {
        let v = super::normal(43, 40, 0.0, 1.0 / 2f32.sqrt()).unwrap();
        let want_head = [-0.011740527, -0.33007386, 1.4784878, 0.43480197, -0.3974616];
        let want_tail = [-0.67236537, 0.70767945, -0.38724464, -0.5469615, 0.06003002];
        for (got, want) in v[..5]
            .iter()
            .chain(&v[35..])
            .zip(want_head.iter().chain(&want_tail))
        {
            assert!((got - want).abs() <= 1e-6, "{got} vs torch {want}");
        }
        assert!(super::normal(43, 15, 0.0, 1.0).is_none());
    }
}
