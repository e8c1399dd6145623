// gemm.wgsl: tiled matrix-product core shared by the forward and sketch kernels.
//
// The registry prepends this file (after common.wgsl) to forward_shrink, forward_dense, sketch and
// sketch_t. `gemm_accumulate` adds Σ_{p < depth} L(m, p)·R(p, n) into a thread's MICRO_M×MICRO_N
// accumulators for the GEMM_TILE_M×GEMM_TILE_N block of the result whose top-left corner is
// (row0, col0). The including kernel defines
//   fn load_l(phase: u32, m: u32, p: u32) -> f32   -- left operand, 0 outside the matrix
//   fn load_r(phase: u32, p: u32, n: u32) -> f32   -- right operand, 0 outside the matrix
//   const L_M_FASTEST: bool  -- true when L(m, p) and L(m + 1, p) are adjacent in memory
//   const R_N_FASTEST: bool  -- true when R(p, n) and R(p, n + 1) are adjacent in memory
// so that neighbouring invocations load neighbouring words (coalesced global reads). `phase`
// lets one kernel run several products into the same accumulators (forward_dense: X·W0ᵀ, then
// T·Bᵀ).
//
// Workgroup: GEMM_WG_X × GEMM_WG_Y = 16 × 16 invocations covering a GEMM_TILE_M × GEMM_TILE_N =
// 128 × 64 block. Invocation (x, y) owns the MICRO_M × MICRO_N = 8 × 4 register tile of result
// rows row0 + MICRO_M·y + i (i < 8) and columns col0 + MICRO_N·x + j (j < 4), accumulator index
// i·MICRO_N + j (GEMM_ACC = 32 accumulators). Rows get the larger side because the column count
// is the small one in three of the four products (the rank in the shrink, l in the sketches).
// Workgroup memory holds both tiles p-major with m (or n) fastest as vec4s: sh_l[p·GEMM_VS_L +
// m/4] and sh_r[p·GEMM_VS_R + n/4], GEMM_TK rows padded by one vec4 (GEMM_VS_L = 33, GEMM_VS_R =
// 17), 8.25 + 4.25 KiB. Each step of p is three vec4 reads per invocation (its 8 rows of L as two,
// its 4 columns of R as one) for 32 multiply-adds (the 4×4 tile did two for 16); in a 32-lane
// subgroup (two values of y) the L reads hit 4 consecutive vec4s and the R reads 16, consecutive
// or broadcast, so no bank conflicts. The cooperative stores are scalar: with m (n) fastest in
// memory they are consecutive words; with p fastest the padded row strides (132 and 68 words, both
// 4 mod 32) spread 16 consecutive p over 8 banks instead of 1.
// Each step of GEMM_TK along p loads both tiles cooperatively (GEMM_LOADS_L = 8 and GEMM_LOADS_R =
// 4 loads per invocation), then every invocation does GEMM_TK·GEMM_ACC multiply-adds from
// workgroup memory. Every accumulator adds its products in ascending p, one product at a time, as
// with the 4×4 tile (which element an invocation owns changed, not any sum's order or operands).
// Barriers sit in uniform control flow: `depth` must be uniform (it comes from the uniform params).

const GEMM_WG_X: u32 = 16u;
const GEMM_WG_Y: u32 = 16u;
const GEMM_THREADS: u32 = 256u; // GEMM_WG_X · GEMM_WG_Y
const MICRO_M: u32 = 8u; // result rows per invocation
const MICRO_N: u32 = 4u; // result columns per invocation
const GEMM_ACC: u32 = 32u; // MICRO_M · MICRO_N
const GEMM_TILE_M: u32 = 128u; // GEMM_WG_Y · MICRO_M
const GEMM_TILE_N: u32 = 64u; // GEMM_WG_X · MICRO_N
const GEMM_TK: u32 = 16u;
const GEMM_VS_L: u32 = 33u; // GEMM_TILE_M / 4 + 1: padded row stride (in vec4s) of sh_l
const GEMM_VS_R: u32 = 17u; // GEMM_TILE_N / 4 + 1: padded row stride (in vec4s) of sh_r

var<workgroup> sh_l: array<vec4<f32>, 528>; // GEMM_TK · GEMM_VS_L, m at [p·GEMM_VS_L + m/4][m%4]
var<workgroup> sh_r: array<vec4<f32>, 272>; // GEMM_TK · GEMM_VS_R, n at [p·GEMM_VS_R + n/4][n%4]

const GEMM_LOADS_L: u32 = 8u; // GEMM_TILE_M · GEMM_TK / GEMM_THREADS: left loads per invocation
const GEMM_LOADS_R: u32 = 4u; // GEMM_TILE_N · GEMM_TK / GEMM_THREADS: right loads per invocation

// (m, p) of the left tile's element `e` in cooperative-load order (m fastest when L is stored so).
fn gemm_l_at(e: u32) -> vec2<u32> {
    if (L_M_FASTEST) {
        return vec2<u32>(e % GEMM_TILE_M, e / GEMM_TILE_M);
    }
    return vec2<u32>(e / GEMM_TK, e % GEMM_TK);
}

// (n, q) of the right tile's element `e` in cooperative-load order.
fn gemm_r_at(e: u32) -> vec2<u32> {
    if (R_N_FASTEST) {
        return vec2<u32>(e % GEMM_TILE_N, e / GEMM_TILE_N);
    }
    return vec2<u32>(e / GEMM_TK, e % GEMM_TK);
}

// This invocation's share of the tiles of step p0, read from global memory into registers:
// left values in [0, GEMM_LOADS_L), right values in [GEMM_LOADS_L, GEMM_LOADS_L + GEMM_LOADS_R).
fn gemm_fetch(phase: u32, row0: u32, col0: u32, p0: u32, li: u32) -> array<f32, 12> {
    var v: array<f32, 12>;
    for (var s = 0u; s < GEMM_LOADS_L; s++) {
        let l = gemm_l_at(li + s * GEMM_THREADS);
        v[s] = load_l(phase, row0 + l.x, p0 + l.y);
    }
    for (var s = 0u; s < GEMM_LOADS_R; s++) {
        let r = gemm_r_at(li + s * GEMM_THREADS);
        v[GEMM_LOADS_L + s] = load_r(phase, p0 + r.y, col0 + r.x);
    }
    return v;
}

fn gemm_store(v: array<f32, 12>, li: u32) {
    for (var s = 0u; s < GEMM_LOADS_L; s++) {
        let l = gemm_l_at(li + s * GEMM_THREADS);
        sh_l[l.y * GEMM_VS_L + (l.x >> 2u)][l.x & 3u] = v[s];
    }
    for (var s = 0u; s < GEMM_LOADS_R; s++) {
        let r = gemm_r_at(li + s * GEMM_THREADS);
        sh_r[r.y * GEMM_VS_R + (r.x >> 2u)][r.x & 3u] = v[GEMM_LOADS_L + s];
    }
}

// Register-staged double buffering: the global reads of step p0 + GEMM_TK are issued before the
// multiply-adds of step p0 (their latency hides behind the arithmetic) and stored to workgroup
// memory after it. Two workgroup-memory buffers (one barrier per step instead of two) would need
// 2 · 12.5 KiB, over WebGPU's guaranteed 16 KiB of workgroup storage; halving GEMM_TK to fit them
// would leave one barrier per 8 steps of p, the same count as two per 16. Each accumulator still
// adds its products in ascending p, so the results are the same bits as the single-buffered loop.
fn gemm_accumulate(
    acc: ptr<function, array<f32, GEMM_ACC>>,
    phase: u32,
    row0: u32,
    col0: u32,
    depth: u32,
    lid: vec3<u32>,
    li: u32,
) {
    var next = gemm_fetch(phase, row0, col0, 0u, li);
    for (var p0 = 0u; p0 < depth; p0 += GEMM_TK) {
        gemm_store(next, li);
        workgroupBarrier();
        if (p0 + GEMM_TK < depth) {
            next = gemm_fetch(phase, row0, col0, p0 + GEMM_TK, li);
        }
        for (var p = 0u; p < GEMM_TK; p++) {
            let l0 = sh_l[p * GEMM_VS_L + 2u * lid.y];
            let l1 = sh_l[p * GEMM_VS_L + 2u * lid.y + 1u];
            let rv = sh_r[p * GEMM_VS_R + lid.x];
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < MICRO_N; j++) {
                    (*acc)[i * MICRO_N + j] += l0[i] * rv[j];
                    (*acc)[(i + 4u) * MICRO_N + j] += l1[i] * rv[j];
                }
            }
        }
        workgroupBarrier();
    }
}

// Result row / column owned by accumulator (i, j) of invocation `lid` in the block at (row0, col0).
fn gemm_row(row0: u32, lid: vec3<u32>, i: u32) -> u32 {
    return row0 + MICRO_M * lid.y + i;
}

fn gemm_col(col0: u32, lid: vec3<u32>, j: u32) -> u32 {
    return col0 + MICRO_N * lid.x + j;
}
