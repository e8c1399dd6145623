// forward_dense.wgsl: the dense half and the "expand" half of a LoRA forward, fused:
//   Y[i, o] = Σ_p X[i, p]·W0[o, p]  +  Σ_c T[i, c]·B[o, c]
// i.e. Y = X·W0ᵀ + T·Bᵀ for one (row tile of X) × (row tile of W0) block, with T from
// forward_shrink (scale and adapter selection already applied) and B the adapters' B side by
// side (d × r_total). Both products run through gemm.wgsl (phase 0 and phase 1) into the same
// accumulators, so Y is written once. W0 is read in its stored dtype. Registered as
// "forward_dense".
//
// Bindings (group 0):
//   0 uniform              P    DenseParams
//   1 storage read         x    array<f32>  n × k
//   2 storage read         w0   array<u32>  d × k in w0_dtype packing (see common.wgsl)
//   3 storage read         t    array<f32>  n × r_total
//   4 storage read         b    array<f32>  d × r_total
//   5 storage read_write   y    array<f32>  n × d
// Dispatch: (⌈d / GEMM_TILE_N⌉, ⌈n / GEMM_TILE_M⌉) workgroups of gemm.wgsl's
// 16×16 shape (128 × 64 results).

struct DenseParams {
    n: u32,
    k: u32,
    d: u32,
    r_total: u32,
    w0_dtype: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: DenseParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w0: array<u32>;
@group(0) @binding(3) var<storage, read> t: array<f32>;
@group(0) @binding(4) var<storage, read> b: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const L_M_FASTEST: bool = false; // X[i, p] at i·k + p; T[i, c] at i·r_total + c
const R_N_FASTEST: bool = false; // W0[o, p] at o·k + p; B[o, c] at o·r_total + c

fn w0_at(e: u32) -> f32 {
    if (P.w0_dtype == DT_F32) {
        return bitcast<f32>(w0[e]);
    }
    return decode_raw(half_of(w0[e >> 1u], e), P.w0_dtype);
}

fn load_l(phase: u32, m: u32, p: u32) -> f32 {
    if (m >= P.n) {
        return 0.0;
    }
    if (phase == 0u) {
        if (p < P.k) {
            return x[m * P.k + p];
        }
    } else if (p < P.r_total) {
        return t[m * P.r_total + p];
    }
    return 0.0;
}

fn load_r(phase: u32, p: u32, o: u32) -> f32 {
    if (o >= P.d) {
        return 0.0;
    }
    if (phase == 0u) {
        if (p < P.k) {
            return w0_at(o * P.k + p);
        }
    } else if (p < P.r_total) {
        return b[o * P.r_total + p];
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
    var acc: array<f32, GEMM_ACC>;
    gemm_accumulate(&acc, 0u, row0, col0, P.k, lid, li);
    gemm_accumulate(&acc, 1u, row0, col0, P.r_total, lid, li);
    for (var i = 0u; i < MICRO_M; i++) {
        let r = gemm_row(row0, lid, i);
        for (var j = 0u; j < MICRO_N; j++) {
            let o = gemm_col(col0, lid, j);
            if (r < P.n && o < P.d) {
                y[r * P.d + o] = acc[i * MICRO_N + j];
            }
        }
    }
}
