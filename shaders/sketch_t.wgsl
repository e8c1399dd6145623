// sketch_t.wgsl: Z += (W − W0)ᵀ·Q for one row tile of W and W0 (rows × k, stored dtypes) and the
// matching rows of Q (rows × l, f32); Z is k × l and accumulates over the row tiles (one dispatch
// per tile, in queue order). W − W0 is never formed: each loaded element is
// decode(W[i, p]) − decode(W0[i, p]) in f32. Registered as "sketch_t".
//
// Bindings (group 0):
//   0 uniform              P    SketchParams (rows = tile rows)
//   1 storage read         w    array<u32>  rows × k in w_dtype packing (see common.wgsl)
//   2 storage read         w0   array<u32>  rows × k in w0_dtype packing
//   3 storage read         q    array<f32>  rows × l
//   4 storage read_write   z    array<f32>  k × l, read and updated
// Dispatch: (⌈l / GEMM_TILE⌉, ⌈k / GEMM_TILE⌉) workgroups of gemm.wgsl's 16×16 shape.

struct SketchParams {
    rows: u32,
    k: u32,
    l: u32,
    w_dtype: u32,
    w0_dtype: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: SketchParams;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> w0: array<u32>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> z: array<f32>;

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

fn load_l(phase: u32, j: u32, i: u32) -> f32 {
    if (j < P.k && i < P.rows) {
        return delta_at(i * P.k + j);
    }
    return 0.0;
}

fn load_r(phase: u32, i: u32, c: u32) -> f32 {
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
    let row0 = wg.y * GEMM_TILE;
    let col0 = wg.x * GEMM_TILE;
    var acc: array<f32, 16>;
    gemm_accumulate(&acc, 0u, row0, col0, P.rows, lid, li);
    for (var i = 0u; i < MICRO; i++) {
        let j = gemm_row(row0, lid, i);
        for (var jj = 0u; jj < MICRO; jj++) {
            let c = gemm_col(col0, lid, jj);
            if (j < P.k && c < P.l) {
                z[j * P.l + c] += acc[i * MICRO + jj];
            }
        }
    }
}
