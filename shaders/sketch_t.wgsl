// sketch_t.wgsl: Z += (W − W0)ᵀ·Q for one row tile of W and W0 (rows × k, stored dtypes) and the
// matching rows of Q (rows × l, f32); Z is k × l and accumulates over the row tiles (one dispatch
// per tile, in queue order). W − W0 is never formed: each loaded element is
// decode(W[i, p]) − decode(W0[i, p]) in f32. Registered as "sketch_t" (entry `main`) and
// "sketch_t_reduce" (entry `reduce`).
//
// Split-K over the tile's rows i (the inner dimension here), when P.splits > 1: workgroup z
// sums only i in [z·k_chunk, min((z + 1)·k_chunk, rows)) (k_chunk a multiple of GEMM_TK) and
// writes its partial product to slice z of `parts`; then `reduce`, a second dispatch ordered
// after it, adds the slices into Z in z order: z[e] = ((z[e] + parts₀[e]) + parts₁[e]) + ….
// The partition depends only on the shapes and the binding limit, so the result is
// deterministic. With P.splits = 1, `main` adds its product straight into Z.
//
// Bindings (group 0), for both entries:
//   0 uniform              P      SketchParams (rows = tile rows)
//   1 storage read         w      array<u32>  rows × k in w_dtype packing (see common.wgsl)
//   2 storage read         w0     array<u32>  rows × k in w0_dtype packing
//   3 storage read         q      array<f32>  rows × l
//   4 storage read_write   z      array<f32>  k × l, read and updated
//   5 storage read_write   parts  array<f32>  splits × k × l partial products (unused, any
//                                 4 bytes, when splits = 1)
// Dispatch: `main` (⌈l / GEMM_TILE_N⌉, ⌈k / GEMM_TILE_M⌉, splits) workgroups of gemm.wgsl's 16×16
// shape; `reduce` one invocation per element of Z, SKETCH_REDUCE_WG per workgroup (linear_id).

struct SketchParams {
    rows: u32,
    k: u32,
    l: u32,
    w_dtype: u32,
    w0_dtype: u32,
    k_chunk: u32,
    splits: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: SketchParams;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> w0: array<u32>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> z: array<f32>;
@group(0) @binding(5) var<storage, read_write> parts: array<f32>;

const SKETCH_REDUCE_WG: u32 = 256u;

// First row i of this workgroup's split (gemm_accumulate's p counts from it).
var<private> k_base: u32;

const L_M_FASTEST: bool = true; // (W − W0)ᵀ[j, i] at i·k + j
const R_N_FASTEST: bool = true; // Q[i, c] at i·l + c

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

fn load_l(phase: u32, j: u32, p: u32) -> f32 {
    let i = k_base + p;
    if (j < P.k && i < P.rows) {
        return delta_at(i * P.k + j);
    }
    return 0.0;
}

fn load_r(phase: u32, p: u32, c: u32) -> f32 {
    let i = k_base + p;
    if (i < P.rows && c < P.l) {
        return q[i * P.l + c];
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
    let depth = min(P.k_chunk, P.rows - k_base);
    let out0 = wg.z * P.k * P.l;
    var acc: array<f32, GEMM_ACC>;
    gemm_accumulate(&acc, 0u, row0, col0, depth, lid, li);
    for (var i = 0u; i < MICRO_M; i++) {
        let j = gemm_row(row0, lid, i);
        for (var jj = 0u; jj < MICRO_N; jj++) {
            let c = gemm_col(col0, lid, jj);
            if (j < P.k && c < P.l) {
                if (P.splits > 1u) {
                    parts[out0 + j * P.l + c] = acc[i * MICRO_N + jj];
                } else {
                    z[j * P.l + c] += acc[i * MICRO_N + jj];
                }
            }
        }
    }
}

@compute @workgroup_size(SKETCH_REDUCE_WG, 1, 1)
fn reduce(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let e = linear_id(gid, nwg, SKETCH_REDUCE_WG);
    let kl = P.k * P.l;
    if (e >= kl) {
        return;
    }
    var s = z[e];
    for (var sp = 0u; sp < P.splits; sp++) {
        s += parts[sp * kl + e];
    }
    z[e] = s;
}
