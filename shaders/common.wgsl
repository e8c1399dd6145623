// common.wgsl: element-type codecs shared by every lorakit kernel.
//
// The kernel registry (src/backend/gpu/kernels.rs) prepends this file to each kernel's source;
// WGSL has no include mechanism. It declares no bindings.
//
// Stored tensors are bound as `array<u32>`: F32 one element per word; F16 and BF16 two per word,
// element e in bits 16·(e & 1) .. 16·(e & 1) + 15 of word e >> 1 (little-endian bytes, exactly
// the safetensors byte layout). WGSL has no bf16 type, so every conversion below is integer bit
// arithmetic, a line-by-line port of the `half` crate's software conversions
// (`f32_to_bf16`, `f32_to_f16_fallback`, `f16_to_f32_fallback`): round to nearest, ties to even,
// NaN quieted with its top payload bits kept, overflow to ±Inf, f16 subnormals produced and read.
// Working on bits also keeps the results independent of the device's float modes (denormal
// flushing, NaN canonicalisation).

// Element-type codes; must match `DtypeCode` in src/backend/gpu/mod.rs.
const DT_F32: u32 = 0u;
const DT_F16: u32 = 1u;
const DT_BF16: u32 = 2u;

// The 16-bit half of `word` that holds element `e` of a packed 16-bit array.
fn half_of(word: u32, e: u32) -> u32 {
    return (word >> ((e & 1u) * 16u)) & 0xffffu;
}

// IEEE binary16 bits → binary32 bits (exact; subnormals normalised, NaN quieted).
fn f16_to_f32_bits(h: u32) -> u32 {
    if ((h & 0x7fffu) == 0u) {
        return h << 16u; // signed zero
    }
    let half_sign = h & 0x8000u;
    let half_exp = h & 0x7c00u;
    let half_man = h & 0x03ffu;
    if (half_exp == 0x7c00u) {
        if (half_man == 0u) {
            return (half_sign << 16u) | 0x7f800000u;
        }
        return (half_sign << 16u) | 0x7fc00000u | (half_man << 13u);
    }
    let sign = half_sign << 16u;
    if (half_exp == 0u) {
        // Subnormal: normalise. Leading zeros counted within 16 bits.
        let e = (countLeadingZeros(half_man) - 16u) - 6u;
        let exp = (127u - 15u - e) << 23u;
        let man = (half_man << (14u + e)) & 0x7fffffu;
        return sign | exp | man;
    }
    let exp = u32(i32(half_exp >> 10u) - 15 + 127) << 23u;
    let man = half_man << 13u;
    return sign | exp | man;
}

// bfloat16 bits → binary32 bits (exact: bf16 is the top half of an f32).
fn bf16_to_f32_bits(h: u32) -> u32 {
    return h << 16u;
}

// binary32 bits → bfloat16 bits, round to nearest even (half::bf16::from_f32).
fn f32_to_bf16_bits(x: u32) -> u32 {
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return ((x >> 16u) | 0x0040u) & 0xffffu; // NaN: keep payload top, set quiet bit
    }
    let round_bit = 0x00008000u;
    if ((x & round_bit) != 0u && (x & (3u * round_bit - 1u)) != 0u) {
        return (x >> 16u) + 1u;
    }
    return x >> 16u;
}

// binary32 bits → binary16 bits, round to nearest even (half::f16::from_f32).
fn f32_to_f16_bits(x: u32) -> u32 {
    let sign = x & 0x80000000u;
    let exp = x & 0x7f800000u;
    let man = x & 0x007fffffu;
    if (exp == 0x7f800000u) {
        // Inf or NaN: NaN keeps its top payload bits and gets the quiet bit.
        let nan_bit = select(0x0200u, 0u, man == 0u);
        return (sign >> 16u) | 0x7c00u | nan_bit | (man >> 13u);
    }
    let half_sign = sign >> 16u;
    let half_exp = i32(exp >> 23u) - 127 + 15;
    if (half_exp >= 0x1f) {
        return half_sign | 0x7c00u; // overflow → ±Inf
    }
    if (half_exp <= 0) {
        // Subnormal result (or underflow to signed zero).
        if (14 - half_exp > 24) {
            return half_sign;
        }
        let m = man | 0x00800000u;
        var half_man = m >> u32(14 - half_exp);
        let round_bit = 1u << u32(13 - half_exp);
        if ((m & round_bit) != 0u && (m & (3u * round_bit - 1u)) != 0u) {
            half_man += 1u;
        }
        return half_sign | half_man;
    }
    let he = u32(half_exp) << 10u;
    let hm = man >> 13u;
    let round_bit = 0x00001000u;
    if ((man & round_bit) != 0u && (man & (3u * round_bit - 1u)) != 0u) {
        return (half_sign | he | hm) + 1u;
    }
    return half_sign | he | hm;
}

// A raw stored value → f32. `raw` is the whole word for F32, the 16-bit value otherwise.
fn decode_raw(raw: u32, dtype: u32) -> f32 {
    if (dtype == DT_F16) {
        return bitcast<f32>(f16_to_f32_bits(raw));
    }
    if (dtype == DT_BF16) {
        return bitcast<f32>(bf16_to_f32_bits(raw));
    }
    return bitcast<f32>(raw);
}

// f32 → 16-bit stored bits of `dtype` (F16 or BF16).
fn encode16(v: f32, dtype: u32) -> u32 {
    if (dtype == DT_F16) {
        return f32_to_f16_bits(bitcast<u32>(v));
    }
    return f32_to_bf16_bits(bitcast<u32>(v));
}

// Finite test on the bits (immune to compilers assuming no NaN/Inf).
fn is_finite_f32(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// Linear invocation index of a 1-D problem dispatched as a 2-D grid of `wg`-wide workgroups
// (a dimension holds at most 65535 workgroups).
fn linear_id(gid: vec3<u32>, nwg: vec3<u32>, wg: u32) -> u32 {
    return gid.x + gid.y * nwg.x * wg;
}
