// merge.wgsl: W = W0 + Σₜ scaleₜ·Bₜ·Aₜ (DoRA terms: W ← fₜ·(W + δₜ)) on one tile of the matrix,
// written in the output dtype. Registered as kernel "merge" (src/backend/gpu/kernels.rs).
//
// Arithmetic per element (i, j), identical to the CPU reference `cpu::merge`:
//   w   = decode(W0[i, j])
//   for each term t:
//     acc = 0;  for k ascending: acc = acc + (b[i, k]·a[k, j])   -- product rounded, then added
//     δ   = scaleₜ·acc
//     w   = w + δ                      (plain term)
//     w   = fₜ·(w + δ)                 (DoRA term; fₜ = m/‖W0 + δₜ‖ of the row or column,
//                                       computed on the host in f32 from the f64 norm)
//   out[i, j] = encode(w)              (F32 bits, or F16/BF16 round to nearest even)
// No fused multiply-add: Vulkan, Metal and D3D compilers may contract `acc + b·a` into one FMA
// (naga 30 never emits SPIR-V NoContraction). Mesa llvmpipe (lavapipe) 22.3 was observed not to
// contract (test merge_has_no_fma_contraction); other drivers may. With NO_FMA_GUARD (default) every
// product and every scale·acc goes through `guard`, an XOR of its bits with `P.zero`, a uniform
// the host sets to 0: the compiler cannot see through a runtime integer op, so the multiply is
// rounded before the add. `acc` also starts from that runtime zero, so `0 + p` is not folded to
// `p` (which would turn +0 into -0 when p = -0). Results are therefore bit-identical to the CPU
// (f32 add and multiply are correctly rounded in Vulkan/Metal/D3D), except for intermediate
// values in the f32 subnormal range on devices that flush denormals.
//
// Bindings (group 0):
//   0 uniform              P       MergeParams
//   1 storage read         w0      array<u32>  tile of W0, rows×cols row-major, in_dtype packing
//   2 storage read_write   out     array<u32>  tile of the result, same layout, out_dtype packing
//   3 storage read         b       array<f32>  rows × r_total: the terms' B side by side
//   4 storage read         a       array<f32>  r_total × cols: the terms' A stacked
//   5 storage read         terms   array<u32>  TERM_WORDS per term: rank, column offset in b
//                                  (= row offset in a), scale (f32 bits), DoRA kind (0 none,
//                                  1 per row, 2 per column), offset of its factors, 3 unused
//   6 storage read         factors array<f32>  DoRA factors fₜ for this tile's rows or columns
//   7 storage read_write   flags   array<atomic<u32>>  [0] = smallest tile-linear index whose
//                                  result is NaN/Inf (host initialises it to 0xffffffff)
// Dispatch: one invocation per output word (F32: one element; F16/BF16: two), MERGE_WG per
// workgroup, 2-D grid (see linear_id). Every invocation checks its index against n_elems.

struct MergeParams {
    rows: u32,
    cols: u32,
    n_terms: u32,
    r_total: u32,
    in_dtype: u32,
    out_dtype: u32,
    zero: u32,
    n_elems: u32,
}

const MERGE_WG: u32 = 256u;
const TERM_WORDS: u32 = 8u;
const DORA_NONE: u32 = 0u;
const DORA_ROWS: u32 = 1u;

override NO_FMA_GUARD: bool = true;

@group(0) @binding(0) var<uniform> P: MergeParams;
@group(0) @binding(1) var<storage, read> w0: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> a: array<f32>;
@group(0) @binding(5) var<storage, read> terms: array<u32>;
@group(0) @binding(6) var<storage, read> factors: array<f32>;
@group(0) @binding(7) var<storage, read_write> flags: array<atomic<u32>>;

// Forces `x` to be materialised as a rounded f32 (see header).
fn guard(x: f32) -> f32 {
    if (NO_FMA_GUARD) {
        return bitcast<f32>(bitcast<u32>(x) ^ P.zero);
    }
    return x;
}

fn w0_at(e: u32) -> f32 {
    if (P.in_dtype == DT_F32) {
        return bitcast<f32>(w0[e]);
    }
    return decode_raw(half_of(w0[e >> 1u], e), P.in_dtype);
}

// The merged f32 value of tile element e = i·cols + j; records it if not finite.
fn merged(e: u32) -> f32 {
    let i = e / P.cols;
    let j = e % P.cols;
    var w = w0_at(e);
    for (var t = 0u; t < P.n_terms; t++) {
        let base = t * TERM_WORDS;
        let rank = terms[base];
        let off = terms[base + 1u];
        let scale = bitcast<f32>(terms[base + 2u]);
        let kind = terms[base + 3u];
        var acc = bitcast<f32>(P.zero);
        let b_row = i * P.r_total + off;
        for (var k = 0u; k < rank; k++) {
            acc = acc + guard(b[b_row + k] * a[(off + k) * P.cols + j]);
        }
        let d = guard(scale * acc);
        if (kind == DORA_NONE) {
            w = w + d;
        } else {
            let f = factors[terms[base + 4u] + select(j, i, kind == DORA_ROWS)];
            w = f * (w + d);
        }
    }
    if (!is_finite_f32(w)) {
        atomicMin(&flags[0], e);
    }
    return w;
}

@compute @workgroup_size(MERGE_WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let word = linear_id(gid, nwg, MERGE_WG);
    if (P.out_dtype == DT_F32) {
        if (word >= P.n_elems) {
            return;
        }
        out[word] = bitcast<u32>(merged(word));
        return;
    }
    let e0 = word * 2u;
    if (e0 >= P.n_elems) {
        return;
    }
    var packed = encode16(merged(e0), P.out_dtype);
    if (e0 + 1u < P.n_elems) {
        packed = packed | (encode16(merged(e0 + 1u), P.out_dtype) << 16u);
    }
    out[word] = packed;
}
