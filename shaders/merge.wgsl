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
// The rank loop runs in chunks of RK (a pipeline-overridable constant, so the inner loop has a
// compile-time trip count and unrolls); a chunk past a term's rank is padded with b = a = 0 in
// workgroup memory, whose product +0 leaves `acc` unchanged (acc starts at +0 and a sum of
// round-to-nearest adds is −0 only when both addends are −0, so acc is never −0).
// No fused multiply-add: Vulkan, Metal and D3D compilers may contract `acc + b·a` into one FMA
// (naga 30 never emits SPIR-V NoContraction). Mesa llvmpipe (lavapipe) 22.3 was observed not to
// contract (test merge_has_no_fma_contraction); other drivers may. With NO_FMA_GUARD (default) every
// product and every scale·acc goes through `guard`, an XOR of its bits with `P.zero`, a uniform
// the host sets to 0: the compiler cannot see through a runtime integer op, so the multiply is
// rounded before the add. `acc` also starts from that runtime zero, so `0 + p` is not folded to
// `p` (which would turn +0 into -0 when p = -0). Results are therefore bit-identical to the CPU
// (f32 add and multiply are correctly rounded in Vulkan/Metal/D3D), except for intermediate
// values in the f32 subnormal range on devices that flush denormals (Metal always does, and its
// default fast-math may reassociate: see README "GPU").
//
// Layout: the tile is `rows × cols` elements stored with a row stride of `stride` elements
// (`cols` rounded up to VEC = 8), so that every row starts on a 16-byte boundary and each
// invocation reads and writes its 8 consecutive elements with vec4<u32> loads/stores (one for
// 16-bit dtypes, two for F32). Columns cols..stride of W0 are ignored, those of out are
// unspecified.
//
// Bindings (group 0):
//   0 uniform              P       MergeParams
//   1 storage read         w0      array<vec4<u32>>  W0 tile, rows × stride, in_dtype packing
//   2 storage read_write   out     array<vec4<u32>>  result tile, same layout, out_dtype packing
//   3 storage read         b       array<f32>  rows × r_total: the terms' B side by side
//   4 storage read         a       array<vec4<f32>>  r_total × stride: the terms' A stacked
//   5 storage read         terms   array<u32>  TERM_WORDS per term: rank, column offset in b
//                                  (= row offset in a), scale (f32 bits), DoRA kind (0 none,
//                                  1 per row, 2 per column), offset of its factors, 3 unused
//   6 storage read         factors array<f32>  DoRA factors fₜ for this tile's rows or columns
//   7 storage read_write   flags   array<atomic<u32>>  [0] = smallest tile-linear index
//                                  i·cols + j whose result is NaN/Inf (host sets 0xffffffff)
// Dispatch: workgroups of TX × TY = 32 × 8 invocations, each covering TILE_R = 16 rows ×
// TILE_C = 256 columns (an invocation: 2 rows × 8 columns); grid (⌈stride/256⌉, ⌈rows/16⌉).
// The A rows (RK × 256) and B columns (16 × RK) a workgroup needs are staged in workgroup
// memory once per chunk of the rank loop and read as vec4. No per-element division: an
// invocation's row and column come from its workgroup and local ids. Every invocation
// bound-checks its rows and columns (and still reaches every barrier).

struct MergeParams {
    rows: u32,
    cols: u32,
    n_terms: u32,
    r_total: u32,
    in_dtype: u32,
    out_dtype: u32,
    zero: u32,
    stride: u32,
}

const TERM_WORDS: u32 = 8u;
const DORA_NONE: u32 = 0u;
const DORA_ROWS: u32 = 1u;
const TX: u32 = 32u;
const TY: u32 = 8u;
const VEC: u32 = 8u;
const RPT: u32 = 2u;
const TILE_C: u32 = 256u; // TX · VEC
const TILE_R: u32 = 16u; // TY · RPT
const RK_MAX: u32 = 8u;

override NO_FMA_GUARD: bool = true;
// Rank-chunk length, 1 ≤ RK ≤ RK_MAX (the host picks the smallest of 1, 4, 8 covering the
// largest term rank, so rank 1 does no padded work).
override RK: u32 = 8u;

@group(0) @binding(0) var<uniform> P: MergeParams;
@group(0) @binding(1) var<storage, read> w0: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> terms: array<u32>;
@group(0) @binding(6) var<storage, read> factors: array<f32>;
@group(0) @binding(7) var<storage, read_write> flags: array<atomic<u32>>;

// A chunk: RK_MAX rows of TILE_C columns, as vec4 (64 per row). B chunk: TILE_R rows of RK_MAX.
var<workgroup> a_s: array<vec4<f32>, 512>; // RK_MAX · TILE_C / 4
var<workgroup> b_s: array<f32, 128>; // TILE_R · RK_MAX

// Forces `x` to be materialised as a rounded f32 (see header).
fn guard(x: f32) -> f32 {
    if (NO_FMA_GUARD) {
        return bitcast<f32>(bitcast<u32>(x) ^ P.zero);
    }
    return x;
}

// The 8 decoded W0 values of row `row` from column `col0` (a multiple of 8).
fn load8(row: u32, col0: u32) -> array<f32, 8> {
    var v: array<f32, 8>;
    if (P.in_dtype == DT_F32) {
        let q = (row * P.stride + col0) >> 2u;
        let lo = w0[q];
        let hi = w0[q + 1u];
        for (var c = 0u; c < 4u; c++) {
            v[c] = bitcast<f32>(lo[c]);
            v[4u + c] = bitcast<f32>(hi[c]);
        }
    } else {
        let q = w0[(row * P.stride + col0) >> 3u];
        for (var c = 0u; c < 4u; c++) {
            v[2u * c] = decode_raw(q[c] & 0xffffu, P.in_dtype);
            v[2u * c + 1u] = decode_raw(q[c] >> 16u, P.in_dtype);
        }
    }
    return v;
}

fn store8(row: u32, col0: u32, v: array<f32, 8>) {
    if (P.out_dtype == DT_F32) {
        let q = (row * P.stride + col0) >> 2u;
        out[q] = vec4<u32>(bitcast<u32>(v[0]), bitcast<u32>(v[1]), bitcast<u32>(v[2]), bitcast<u32>(v[3]));
        out[q + 1u] = vec4<u32>(bitcast<u32>(v[4]), bitcast<u32>(v[5]), bitcast<u32>(v[6]), bitcast<u32>(v[7]));
    } else {
        var w: vec4<u32>;
        for (var c = 0u; c < 4u; c++) {
            w[c] = encode16(v[2u * c], P.out_dtype) | (encode16(v[2u * c + 1u], P.out_dtype) << 16u);
        }
        out[(row * P.stride + col0) >> 3u] = w;
    }
}

@compute @workgroup_size(32, 8, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let lin = lid.y * TX + lid.x;
    let tile_c0 = wid.x * TILE_C;
    let tile_r0 = wid.y * TILE_R;
    let col0 = tile_c0 + lid.x * VEC;
    let lrow = lid.y * RPT;
    let col_ok = col0 < P.stride;

    var w: array<array<f32, 8>, 2>;
    for (var r = 0u; r < RPT; r++) {
        if (col_ok && tile_r0 + lrow + r < P.rows) {
            w[r] = load8(tile_r0 + lrow + r, col0);
        }
    }

    for (var t = 0u; t < P.n_terms; t++) {
        let base = t * TERM_WORDS;
        let rank = terms[base];
        let off = terms[base + 1u];
        let scale = bitcast<f32>(terms[base + 2u]);
        let kind = terms[base + 3u];
        let z = bitcast<f32>(P.zero);
        var acc: array<array<f32, 8>, 2>;
        for (var r = 0u; r < RPT; r++) {
            for (var c = 0u; c < VEC; c++) {
                acc[r][c] = z;
            }
        }
        for (var k0 = 0u; k0 < rank; k0 += RK) {
            // Stage A[off + k0 .. + RK, tile columns] as vec4 (zero past the rank or the
            // stride; the stride and the tile's first column are multiples of 8).
            for (var s = lin; s < RK * (TILE_C / 4u); s += TX * TY) {
                let kk = s / (TILE_C / 4u); // constant divisors: shifts
                let c4 = s % (TILE_C / 4u);
                var v = vec4<f32>(0.0);
                if (k0 + kk < rank && tile_c0 + c4 * 4u < P.stride) {
                    v = a[((off + k0 + kk) * P.stride + tile_c0) / 4u + c4];
                }
                a_s[kk * (TILE_C / 4u) + c4] = v;
            }
            // Stage B[tile rows, off + k0 .. + RK].
            for (var s = lin; s < TILE_R * RK; s += TX * TY) {
                let rr = s / RK;
                let kk = s % RK;
                var v = 0.0;
                if (k0 + kk < rank && tile_r0 + rr < P.rows) {
                    v = b[(tile_r0 + rr) * P.r_total + off + k0 + kk];
                }
                b_s[rr * RK_MAX + kk] = v;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < RK; kk++) {
                let a0 = a_s[kk * (TILE_C / 4u) + lid.x * 2u];
                let a1 = a_s[kk * (TILE_C / 4u) + lid.x * 2u + 1u];
                for (var r = 0u; r < RPT; r++) {
                    let bv = b_s[(lrow + r) * RK_MAX + kk];
                    acc[r][0] = acc[r][0] + guard(bv * a0.x);
                    acc[r][1] = acc[r][1] + guard(bv * a0.y);
                    acc[r][2] = acc[r][2] + guard(bv * a0.z);
                    acc[r][3] = acc[r][3] + guard(bv * a0.w);
                    acc[r][4] = acc[r][4] + guard(bv * a1.x);
                    acc[r][5] = acc[r][5] + guard(bv * a1.y);
                    acc[r][6] = acc[r][6] + guard(bv * a1.z);
                    acc[r][7] = acc[r][7] + guard(bv * a1.w);
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < RPT; r++) {
            let row = tile_r0 + lrow + r;
            for (var c = 0u; c < VEC; c++) {
                let d = guard(scale * acc[r][c]);
                if (kind == DORA_NONE) {
                    w[r][c] = w[r][c] + d;
                } else {
                    var fi = col0 + c;
                    if (kind == DORA_ROWS) {
                        fi = row;
                    }
                    var f = 0.0;
                    if (col_ok && row < P.rows) {
                        f = factors[terms[base + 4u] + fi];
                    }
                    w[r][c] = f * (w[r][c] + d);
                }
            }
        }
    }

    for (var r = 0u; r < RPT; r++) {
        let row = tile_r0 + lrow + r;
        if (col_ok && row < P.rows) {
            for (var c = 0u; c < VEC; c++) {
                if (col0 + c < P.cols && !is_finite_f32(w[r][c])) {
                    atomicMin(&flags[0], row * P.cols + col0 + c);
                }
            }
            store8(row, col0, w[r]);
        }
    }
}
