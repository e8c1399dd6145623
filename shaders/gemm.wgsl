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
// Workgroup: GEMM_WG_X × GEMM_WG_Y = 16 × 16 invocations. Invocation (x, y) owns result rows
// row0 + y + 16·i and columns col0 + x + 16·j for i, j < MICRO, accumulator index i·MICRO + j.
// Workgroup memory: sh_l[GEMM_TILE][GEMM_TK] and sh_r[GEMM_TK][GEMM_TILE], ~4 KiB each, rows
// padded by one word (strides GEMM_LS = 17, GEMM_RS = 65) so that the cooperative stores, which
// walk m (or q) fastest when the operand is stored that way, hit 32 different banks instead of
// 2 (a stride of 16 words) or 1 (64 words); the reads were already conflict-free. Each step
// of GEMM_TK along p loads both tiles cooperatively (GEMM_TILE·GEMM_TK / 256 = 4 loads per
// invocation), then every invocation does GEMM_TK·MICRO² multiply-adds from workgroup memory.
// Barriers sit in uniform control flow: `depth` must be uniform (it comes from the uniform params).

const GEMM_WG_X: u32 = 16u;
const GEMM_WG_Y: u32 = 16u;
const GEMM_THREADS: u32 = 256u; // GEMM_WG_X · GEMM_WG_Y
const MICRO: u32 = 4u;
const GEMM_TILE: u32 = 64u; // GEMM_WG_X · MICRO = GEMM_WG_Y · MICRO
const GEMM_TK: u32 = 16u;
const GEMM_LS: u32 = 17u; // GEMM_TK + 1: padded row stride of sh_l
const GEMM_RS: u32 = 65u; // GEMM_TILE + 1: padded row stride of sh_r

var<workgroup> sh_l: array<f32, 1088>; // GEMM_TILE · GEMM_LS, index m·GEMM_LS + p
var<workgroup> sh_r: array<f32, 1040>; // GEMM_TK · GEMM_RS, index p·GEMM_RS + n

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
        sh_l[l.x * GEMM_LS + l.y] = v[s];
        let r = gemm_r_at(e);
        sh_r[r.y * GEMM_RS + r.x] = v[GEMM_LOADS + s];
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
            var lv: array<f32, 4>;
            var rv: array<f32, 4>;
            for (var i = 0u; i < MICRO; i++) {
                lv[i] = sh_l[(lid.y + GEMM_WG_Y * i) * GEMM_LS + p];
            }
            for (var j = 0u; j < MICRO; j++) {
                rv[j] = sh_r[p * GEMM_RS + lid.x + GEMM_WG_X * j];
            }
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
    return row0 + lid.y + GEMM_WG_Y * i;
}

fn gemm_col(col0: u32, lid: vec3<u32>, j: u32) -> u32 {
    return col0 + lid.x + GEMM_WG_X * j;
}
