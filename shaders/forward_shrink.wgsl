// forward_shrink.wgsl: the "shrink" half of a LoRA forward (Punica SGMV style):
//   T[i, c] = scale[c] · Σ_p X[i, p]·A[c, p]
// for one row tile of X (n×k) against all adapters' A stacked (r_total×k). Column c of T belongs
// to one adapter; `scale` repeats that adapter's scale over its columns (every row uses every
// adapter: they are summed). The expand half is phase 1 of forward_dense. Registered as
// "forward_shrink".
//
// Bindings (group 0):
//   0 uniform              P          ShrinkParams
//   1 storage read         x          array<f32>  n × k, row-major
//   2 storage read         a          array<f32>  r_total × k (A of each adapter, stacked)
//   3 storage read         col_scale  array<f32>  r_total
//   4 storage read_write   t          array<f32>  n × r_total
// Dispatch: (⌈r_total / GEMM_TILE_N⌉, ⌈n / GEMM_TILE_M⌉) workgroups of gemm.wgsl's
// 16×16 shape (128 × 64 results).

struct ShrinkParams {
    n: u32,
    k: u32,
    r_total: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: ShrinkParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> col_scale: array<f32>;
@group(0) @binding(4) var<storage, read_write> t: array<f32>;

const L_M_FASTEST: bool = false; // X[m, p] at m·k + p
const R_N_FASTEST: bool = false; // A[c, p] at c·k + p

fn load_l(phase: u32, m: u32, p: u32) -> f32 {
    if (m < P.n && p < P.k) {
        return x[m * P.k + p];
    }
    return 0.0;
}

fn load_r(phase: u32, p: u32, c: u32) -> f32 {
    if (c < P.r_total && p < P.k) {
        return a[c * P.k + p];
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
    for (var i = 0u; i < MICRO_M; i++) {
        let r = gemm_row(row0, lid, i);
        if (r >= P.n) {
            continue;
        }
        for (var j = 0u; j < MICRO_N; j++) {
            let c = gemm_col(col0, lid, j);
            if (c >= P.r_total) {
                continue;
            }
            t[r * P.r_total + c] = col_scale[c] * acc[i * MICRO_N + j];
        }
    }
}
