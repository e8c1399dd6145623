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

fn gemm_accumulate(
    acc: ptr<function, array<f32, 16>>,
    phase: u32,
    row0: u32,
    col0: u32,
    depth: u32,
    lid: vec3<u32>,
    li: u32,
) {
    for (var p0 = 0u; p0 < depth; p0 += GEMM_TK) {
        for (var e = li; e < GEMM_TILE * GEMM_TK; e += GEMM_THREADS) {
            var m: u32;
            var p: u32;
            if (L_M_FASTEST) {
                m = e % GEMM_TILE;
                p = e / GEMM_TILE;
            } else {
                m = e / GEMM_TK;
                p = e % GEMM_TK;
            }
            sh_l[m * GEMM_LS + p] = load_l(phase, row0 + m, p0 + p);
            var n: u32;
            var q: u32;
            if (R_N_FASTEST) {
                n = e % GEMM_TILE;
                q = e / GEMM_TILE;
            } else {
                n = e / GEMM_TK;
                q = e % GEMM_TK;
            }
            sh_r[q * GEMM_RS + n] = load_r(phase, p0 + q, col0 + n);
        }
        workgroupBarrier();
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
