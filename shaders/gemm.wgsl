// gemm.wgsl: tiled matrix-product core shared by the forward and sketch kernels.
//
// The registry prepends this file (after common.wgsl) to forward_shrink, forward_dense, sketch and
// sketch_t. `gemm_accumulate` adds Σ_{p < depth} L(m, p)·R(p, n) into a thread's MICRO×MICRO
// accumulators for the GEMM_TILE×GEMM_TILE block of the result whose top-left corner is
// (row0, col0). The including kernel defines
//   fn load_l(phase: u32, m: u32, p: u32) -> f32   -- left operand, 0 outside the matrix
//   fn load_r(phase: u32, p: u32, n: u32) -> f32   -- right operand, 0 outside the matrix
//   const L_M_FASTEST: bool  -- true when L(m, p) and L(m + 1, p) are adjacent in memory
//   const R_N_FASTEST: bool  -- true when R(p, n) and R(p, n + 1) are adjacent in memory
// so that neighbouring invocations load neighbouring words (coalesced global reads). `phase`
// lets one kernel run several products into the same accumulators (forward_dense: X·W0ᵀ, then
// T·Bᵀ).
//
// Workgroup: GEMM_WG_X × GEMM_WG_Y = 16 × 16 invocations. Invocation (x, y) owns the MICRO×MICRO
// block of result rows row0 + MICRO·y + i and columns col0 + MICRO·x + j for i, j < MICRO,
// accumulator index i·MICRO + j. Workgroup memory holds both tiles p-major with m (or n) fastest
// as vec4s: sh_l[p·GEMM_VS + m/4] and sh_r[p·GEMM_VS + n/4], GEMM_TK rows of GEMM_VS = 17 vec4s
// (16 plus one of padding), ~4.3 KiB each. So each step of p is two vec4 reads per invocation (its
// 4 rows of L, its 4 columns of R) for MICRO² = 16 multiply-adds, instead of 8 scalar reads; in a
// 32-lane subgroup the reads hit at most 16 distinct vec4s, consecutive or broadcast. The
// cooperative stores are scalar: with m (n) fastest in memory they are consecutive words; with
// p fastest the padded row stride (68 words) spreads 16 consecutive p over 8 banks instead of 1.
// Each step of GEMM_TK along p loads both tiles cooperatively (GEMM_TILE·GEMM_TK / 256 = 4 loads
// per invocation), then every invocation does GEMM_TK·MICRO² multiply-adds from workgroup memory.
// Every accumulator adds its products in ascending p, one product at a time, as before the vec4
// layout (which changed which invocation owns an element, not any sum's order or operands).
// Barriers sit in uniform control flow: `depth` must be uniform (it comes from the uniform params).

const GEMM_WG_X: u32 = 16u;
const GEMM_WG_Y: u32 = 16u;
const GEMM_THREADS: u32 = 256u; // GEMM_WG_X · GEMM_WG_Y
const MICRO: u32 = 4u;
const GEMM_TILE: u32 = 64u; // GEMM_WG_X · MICRO = GEMM_WG_Y · MICRO
const GEMM_TK: u32 = 16u;
const GEMM_VS: u32 = 17u; // GEMM_TILE / 4 + 1: padded row stride (in vec4s) of sh_l and sh_r

var<workgroup> sh_l: array<vec4<f32>, 272>; // GEMM_TK · GEMM_VS, element m at [p·GEMM_VS + m/4][m%4]
var<workgroup> sh_r: array<vec4<f32>, 272>; // GEMM_TK · GEMM_VS, element n at [p·GEMM_VS + n/4][n%4]

const GEMM_LOADS: u32 = 4u; // GEMM_TILE · GEMM_TK / GEMM_THREADS: loads per invocation per operand

// (m, p) of the left tile's element `e` in cooperative-load order (m fastest when L is stored so).
fn gemm_l_at(e: u32) -> vec2<u32> {
    if (L_M_FASTEST) {
        return vec2<u32>(e % GEMM_TILE, e / GEMM_TILE);
    }
    return vec2<u32>(e / GEMM_TK, e % GEMM_TK);
}

// (n, q) of the right tile's element `e` in cooperative-load order.
fn gemm_r_at(e: u32) -> vec2<u32> {
    if (R_N_FASTEST) {
        return vec2<u32>(e % GEMM_TILE, e / GEMM_TILE);
    }
    return vec2<u32>(e / GEMM_TK, e % GEMM_TK);
}

// This invocation's share of the tiles of step p0, read from global memory into registers:
// left values in [0, GEMM_LOADS), right values in [GEMM_LOADS, 2·GEMM_LOADS).
fn gemm_fetch(phase: u32, row0: u32, col0: u32, p0: u32, li: u32) -> array<f32, 8> {
    var v: array<f32, 8>;
    for (var s = 0u; s < GEMM_LOADS; s++) {
        let e = li + s * GEMM_THREADS;
        let l = gemm_l_at(e);
        v[s] = load_l(phase, row0 + l.x, p0 + l.y);
        let r = gemm_r_at(e);
        v[GEMM_LOADS + s] = load_r(phase, p0 + r.y, col0 + r.x);
    }
    return v;
}

fn gemm_store(v: array<f32, 8>, li: u32) {
    for (var s = 0u; s < GEMM_LOADS; s++) {
        let e = li + s * GEMM_THREADS;
        let l = gemm_l_at(e);
        sh_l[l.y * GEMM_VS + (l.x >> 2u)][l.x & 3u] = v[s];
        let r = gemm_r_at(e);
        sh_r[r.y * GEMM_VS + (r.x >> 2u)][r.x & 3u] = v[GEMM_LOADS + s];
    }
}

// Register-staged double buffering: the global reads of step p0 + GEMM_TK are issued before the
// multiply-adds of step p0 (their latency hides behind the arithmetic) and stored to workgroup
// memory after it. A second workgroup-memory buffer (one barrier per step instead of two) would
// need 2 · 8.5 KiB, over WebGPU's guaranteed 16 KiB of workgroup storage. Each accumulator still
// adds its products in ascending p, so the results are the same bits as the single-buffered loop.
fn gemm_accumulate(
    acc: ptr<function, array<f32, 16>>,
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
            let lv = sh_l[p * GEMM_VS + lid.y];
            let rv = sh_r[p * GEMM_VS + lid.x];
            for (var i = 0u; i < MICRO; i++) {
                for (var j = 0u; j < MICRO; j++) {
                    (*acc)[i * MICRO + j] += lv[i] * rv[j];
                }
            }
        }
        workgroupBarrier();
    }
}

// Result row / column owned by accumulator (i, j) of invocation `lid` in the block at (row0, col0).
fn gemm_row(row0: u32, lid: vec3<u32>, i: u32) -> u32 {
    return row0 + MICRO * lid.y + i;
}

fn gemm_col(col0: u32, lid: vec3<u32>, j: u32) -> u32 {
    return col0 + MICRO * lid.x + j;
}
