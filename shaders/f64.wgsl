// f64.wgsl: the two binary64 operations the DoRA norms need, in 32-bit integer arithmetic
// (WGSL has no f64 type and most devices none in hardware). Prepended after common.wgsl to the
// kernels that use it (src/backend/gpu/kernels.rs). Declares no bindings.
//
// A binary64 value is held as its IEEE 754 bits in a vec2<u32>(lo, hi): `lo` the low 32 bits,
// `hi` the sign, the 11-bit exponent and the top 20 fraction bits, i.e. the little-endian word
// order of an f64 in memory, so a buffer of them reads back on the host with f64::from_bits.
//
// * f64_square_f32(v): the f64 value v·v for an f32 v, exactly (as `(v as f64).powi(2)` on the
//   CPU, src/backend/cpu/mod.rs `dora_square`): the significand of v has at most 24 bits, its
//   square at most 48 ≤ 53, and for every finite f32 (subnormals included: 2⁻¹⁴⁹ squared is
//   2⁻²⁹⁸) the square lies in f64's normal range, so no rounding happens. ±Inf → +Inf, NaN → NaN.
// * f64_add_pos(x, y): x + y rounded to nearest, ties to even, for x, y ≥ +0 (sign bits clear):
//   the IEEE 754 addition the CPU's `f64 + f64` does, for that domain. Both operands of an
//   addition of non-negative values are aligned to the larger exponent; with three extra low
//   bits (guard, round, and a sticky bit collecting everything shifted out) the rounded result
//   is the correctly rounded sum (Goldberg, "What every computer scientist should know about
//   floating-point arithmetic", 1991, §"Guard digits"; the same scheme as Berkeley SoftFloat's
//   `softfloat_addMagsF64`, which shifts right "jamming" the lost bits into bit 0). Subnormal
//   and zero operands are handled; a sum past the largest finite f64 is +Inf; NaN in gives the
//   quiet NaN 0x7ff8000000000000 (the CPU's payload may differ: callers only test for NaN).
//
// Tested against the CPU's f64 on ties, carries, alignment shifts 0..70 and beyond, exponent
// extremes, subnormal f32 and f64 inputs and specials (src/backend/gpu/tests/dora.rs).

const F64_INF_HI: u32 = 0x7ff00000u;
const F64_NAN_HI: u32 = 0x7ff80000u;

// (h, l) << s for 0 ≤ s < 64 (WGSL shifts take their amount modulo 32, so each case apart).
fn u64_shl(v: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) {
        return v;
    }
    if (s >= 32u) {
        return vec2<u32>(0u, v.x << (s - 32u));
    }
    return vec2<u32>(v.x << s, (v.y << s) | (v.x >> (32u - s)));
}

// (h, l) >> s for s ≥ 0, with every bit shifted out OR'ed into bit 0 ("jamming").
fn u64_shr_jam(v: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) {
        return v;
    }
    if (s >= 64u) {
        return vec2<u32>(select(0u, 1u, (v.x | v.y) != 0u), 0u);
    }
    if (s >= 32u) {
        let t = s - 32u;
        var lost = v.x;
        var lo = v.y;
        if (t > 0u) {
            lost = lost | (v.y << (32u - t));
            lo = v.y >> t;
        }
        return vec2<u32>(lo | select(0u, 1u, lost != 0u), 0u);
    }
    let lost = v.x << (32u - s);
    let lo = (v.x >> s) | (v.y << (32u - s));
    return vec2<u32>(lo | select(0u, 1u, lost != 0u), v.y >> s);
}

fn u64_add(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

// v·v as f64 bits, exact (see header).
fn f64_square_f32(v: f32) -> vec2<u32> {
    let u = bitcast<u32>(v) & 0x7fffffffu;
    if (u == 0u) {
        return vec2<u32>(0u, 0u);
    }
    let e = u >> 23u;
    if (e == 0xffu) {
        return vec2<u32>(0u, select(F64_NAN_HI, F64_INF_HI, (u & 0x7fffffu) == 0u));
    }
    // v = m·2^q with m the integer significand (implicit bit set for normals).
    var m = u & 0x7fffffu;
    var q = -149;
    if (e != 0u) {
        m = m | 0x800000u;
        q = i32(e) - 150;
    }
    // p = m² < 2⁴⁸ as (hi, lo), from 16-bit halves m = mh·2¹⁶ + ml (mh < 2⁸).
    let mh = m >> 16u;
    let ml = m & 0xffffu;
    let cross = 2u * mh * ml; // < 2²⁵
    let ll = ml * ml; // < 2³²
    let lo = ll + (cross << 16u);
    let hi = mh * mh + (cross >> 16u) + select(0u, 1u, lo < ll);
    // Leading one at bit L (0 ≤ L ≤ 47): shift it to bit 52, the implicit bit (exact: L < 52).
    var lead = 31u - countLeadingZeros(lo);
    if (hi != 0u) {
        lead = 63u - countLeadingZeros(hi);
    }
    let p = u64_shl(vec2<u32>(lo, hi), 52u - lead);
    // value = p·2^(2q) = 1.f · 2^(L + 2q); biased exponent in 725 ..= 1278.
    let biased = u32(i32(lead) + 2 * q + 1023);
    return vec2<u32>(p.x, (p.y & 0xfffffu) | (biased << 20u));
}

// x + y, round to nearest even, for x, y ≥ +0 (see header).
fn f64_add_pos(x_in: vec2<u32>, y_in: vec2<u32>) -> vec2<u32> {
    var x = x_in;
    var y = y_in;
    let x_special = (x.y >> 20u) == 0x7ffu;
    let y_special = (y.y >> 20u) == 0x7ffu;
    if (x_special || y_special) {
        let x_nan = x_special && ((x.y & 0xfffffu) | x.x) != 0u;
        let y_nan = y_special && ((y.y & 0xfffffu) | y.x) != 0u;
        return vec2<u32>(0u, select(F64_INF_HI, F64_NAN_HI, x_nan || y_nan));
    }
    // x ≥ y (for non-negative values the bit patterns order as the values).
    if (y.y > x.y || (y.y == x.y && y.x > x.x)) {
        let t = x;
        x = y;
        y = t;
    }
    if ((y.x | y.y) == 0u) {
        return x;
    }
    let ex = x.y >> 20u;
    let ey = y.y >> 20u;
    if (ex == 0u) {
        // Both subnormal: the significands add exactly, and a carry into bit 52 is exactly the
        // smallest normal exponent, so the sum of the bit patterns is the sum.
        return u64_add(x, y);
    }
    // Significands with three extra low bits: x in [2⁵⁵, 2⁵⁶). A subnormal y has exponent 1
    // and no implicit bit.
    var xs = u64_shl(vec2<u32>(x.x, (x.y & 0xfffffu) | 0x100000u), 3u);
    var ys = vec2<u32>(y.x, y.y & 0xfffffu);
    var d = ex - 1u;
    if (ey != 0u) {
        ys.y = ys.y | 0x100000u;
        d = ex - ey;
    }
    ys = u64_shr_jam(u64_shl(ys, 3u), d);
    var s = u64_add(xs, ys); // < 2⁵⁷
    var e = ex;
    if (s.y >= 0x1000000u) {
        // Carry out of 2⁵⁶: one more bit goes, still jammed into the sticky bit.
        s = u64_shr_jam(s, 1u);
        e += 1u;
    }
    // Round to nearest, ties to even, on the three extra bits.
    let low = s.x & 7u;
    s = vec2<u32>((s.x >> 3u) | (s.y << 29u), s.y >> 3u);
    if (low > 4u || (low == 4u && (s.x & 1u) == 1u)) {
        s = u64_add(s, vec2<u32>(1u, 0u));
        if (s.y >= 0x200000u) {
            // Rounded up to 2⁵³: the significand is 2⁵² with the next exponent.
            s = vec2<u32>(0u, 0x100000u);
            e += 1u;
        }
    }
    if (e >= 0x7ffu) {
        return vec2<u32>(0u, F64_INF_HI);
    }
    return vec2<u32>(s.x, (s.y & 0xfffffu) | (e << 20u));
}
