// sketch.wgsl: Y = (W − W0)·Ω for one row tile of W and W0 (rows × k, each in its stored dtype)
// and Ω (k × l, f32), without forming W − W0 anywhere: each loaded element is
// decode(W[i, p]) − decode(W0[i, p]) in f32. Registered as "sketch".
//
// Split-K: workgroup z sums only p in [z·k_chunk, min((z + 1)·k_chunk, k)) (k_chunk a multiple of
// GEMM_TK) and writes its partial product to slice z of y; the host adds the slices in z order.
// A tall-thin sketch (l ≤ 64 columns) otherwise has only ⌈rows / 64⌉ workgroups, each walking all
// of k.
//
// Bindings (group 0):
//   0 uniform              P      SketchParams
//   1 storage read         w      array<u32>  rows × k in w_dtype packing (see common.wgsl)
//   2 storage read         w0     array<u32>  rows × k in w0_dtype packing
//   3 storage read         omega  array<f32>  k × l
//   4 storage read_write   y      array<f32>  splits × rows × l (one partial product per split)
// Dispatch: (⌈l / GEMM_TILE_N⌉, ⌈rows / GEMM_TILE_M⌉, splits) workgroups of gemm.wgsl's
// 16×16 shape (128 × 64 results).

struct SketchParams {
    rows: u32,
    k: u32,
    l: u32,
    w_dtype: u32,
    w0_dtype: u32,
    k_chunk: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: SketchParams;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> w0: array<u32>;
@group(0) @binding(3) var<storage, read> omega: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const L_M_FASTEST: bool = false; // (W − W0)[i, p] at i·k + p
const R_N_FASTEST: bool = true; // Ω[p, c] at p·l + c

// First p of this workgroup's split (gemm_accumulate's p counts from it).
var<private> k_base: u32;

fn delta_at(e: u32) -> f32 {
    var hi: f32;
    var lo: f32;
    if (P.w_dtype == DT_F32) {
        hi = bitcast<f32>(w[e]);
    } else {
        hi = decode_raw(half_of(w[e >> 1u], e), P.w_dtype);
    }
    if (P.w0_dtype == DT_F32) {
        lo = bitcast<f32>(w0[e]);
    } else {
        lo = decode_raw(half_of(w0[e >> 1u], e), P.w0_dtype);
    }
    return hi - lo;
}

fn load_l(phase: u32, i: u32, q: u32) -> f32 {
    let p = k_base + q;
    if (i < P.rows && p < P.k) {
        return delta_at(i * P.k + p);
    }
    return 0.0;
}

fn load_r(phase: u32, q: u32, c: u32) -> f32 {
    let p = k_base + q;
    if (p < P.k && c < P.l) {
        return omega[p * P.l + c];
    }
    return 0.0;
}

@compute @workgroup_size(GEMM_WG_X, GEMM_WG_Y, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row0 = wg.y * GEMM_TILE_M;
    let col0 = wg.x * GEMM_TILE_N;
    k_base = wg.z * P.k_chunk;
    let depth = min(P.k_chunk, P.k - k_base);
    let out0 = wg.z * P.rows * P.l;
    var acc: array<f32, GEMM_ACC>;
    gemm_accumulate(&acc, 0u, row0, col0, depth, lid, li);
    for (var i = 0u; i < MICRO_M; i++) {
        let r = gemm_row(row0, lid, i);
        for (var j = 0u; j < MICRO_N; j++) {
            let c = gemm_col(col0, lid, j);
            if (r < P.rows && c < P.l) {
                y[out0 + r * P.l + c] = acc[i * MICRO_N + j];
            }
        }
    }
}
