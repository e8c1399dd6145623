// dora_norm.wgsl: the f64 sums of squares behind DoRA's weight norms ‖W0 + δₜ‖, on one tile of
// the matrix, added in the CPU's order with the software f64 of f64.wgsl, so the norms are
// bit-identical to `cpu::dora_sums` (src/backend/cpu/mod.rs). Registered as kernel
// "dora_norm" (src/backend/gpu/kernels.rs); driven by src/backend/gpu/dora.rs.
//
// Per DoRA term t and element (i, j) of the tile, exactly as `cpu::dora_sums` computes it:
//   acc = 0;  for k ascending: acc = acc + (b[i, k]·a[k, j])   -- product rounded, then added
//   v   = decode(W0[i, j]) + (scaleₜ·acc)                      -- f32, product rounded
//   per row (kind 1):    sums[base + i] += v²  over the columns j in order
//   per column (kind 2): sums[base + j] += v²  over the rows i in order
// with v² exact and each += one correctly rounded f64 addition. Each sum carries `next`, the
// (matrix) column or row it adds next: one dispatch adds at most P.seg elements from there,
// and the host repeats the dispatch until the tile is walked, so no invocation runs more than
// about seg·(rank + 2) loop iterations (llvmpipe silently ends a shader's loops after 65535
// iterations in all, Mesa src/gallium/auxiliary/gallivm/lp_bld_limits.h
// LP_MAX_TGSI_LOOP_ITERATIONS; on hardware it bounds the serial work of one dispatch). The
// host submits the tiles in row-major order (row bands ascending, column tiles ascending
// within a band), so each row's sum runs over its columns in order and each column's over its
// rows in order, starting from the zeros the host writes: the CPU's order. Every product goes through `guard` (see
// merge.wgsl: an XOR with the runtime zero P.zero keeps the compiler from contracting
// `acc + b·a` or `x + s·acc` into a fused multiply-add).
//
// Bindings (group 0):
//   0 uniform              P      DoraParams
//   1 storage read         w0     array<u32>  W0 tile, rows × stride, in_dtype packing (as merge)
//   2 storage read         b      array<f32>  rows × r_total: the terms' B side by side
//   3 storage read         a      array<f32>  r_total × stride: the terms' A stacked
//   4 storage read         terms  array<u32>  TERM_WORDS per term: rank, column offset in b (=
//                                 row offset in a), scale (f32 bits), kind (0 not DoRA, 1 per
//                                 row, 2 per column), offset `base` of its sums in `sums`, 3
//                                 unused
//   5 storage read_write   sums   array<vec4<u32>>  per term, one per row (kind 1) or column
//                                 (kind 2) of this tile: (lo, hi) bits of the running f64 sum,
//                                 `next` (a row or column index of the matrix), 0. The host
//                                 copies them out of and back into the whole state per tile.
// Dispatch: one invocation per row (kind 1) or column (kind 2) of the tile, DORA_WG per
// workgroup on a 2-D grid (see linear_id); workgroup z = term index. Invocations past the tile
// return at once.

struct DoraParams {
    rows: u32,
    cols: u32,
    stride: u32,
    r_total: u32,
    in_dtype: u32,
    zero: u32,
    // The tile's first row and column in the matrix.
    r0: u32,
    c0: u32,
    // Most elements one invocation adds in one dispatch.
    seg: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const DORA_WG: u32 = 64u;
const DORA_TERM_WORDS: u32 = 8u;

@group(0) @binding(0) var<uniform> P: DoraParams;
@group(0) @binding(1) var<storage, read> w0: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> a: array<f32>;
@group(0) @binding(4) var<storage, read> terms: array<u32>;
@group(0) @binding(5) var<storage, read_write> sums: array<vec4<u32>>;

fn guard(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ P.zero);
}

// v = W0[i, j] + scale·Σₖ b[i, k]·a[k, j] of one term (see header).
fn value(i: u32, j: u32, rank: u32, off: u32, scale: f32) -> f32 {
    let e = i * P.stride + j;
    var x: f32;
    if (P.in_dtype == DT_F32) {
        x = bitcast<f32>(w0[e]);
    } else {
        x = decode_raw(half_of(w0[e >> 1u], e), P.in_dtype);
    }
    var acc = bitcast<f32>(P.zero);
    for (var k = 0u; k < rank; k++) {
        acc = acc + guard(b[i * P.r_total + off + k] * a[(off + k) * P.stride + j]);
    }
    return x + guard(scale * acc);
}

@compute @workgroup_size(DORA_WG)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let base = wid.z * DORA_TERM_WORDS;
    let kind = terms[base + 3u];
    let f = linear_id(vec3<u32>(gid.x, gid.y, 0u), nwg, DORA_WG);
    let rank = terms[base];
    let off = terms[base + 1u];
    let scale = bitcast<f32>(terms[base + 2u]);
    let at = terms[base + 4u];
    if (kind == 1u && f < P.rows) {
        let st = sums[at + f];
        var s = st.xy;
        let end = min(st.z + P.seg, P.c0 + P.cols);
        for (var j = st.z; j < end; j++) {
            s = f64_add_pos(s, f64_square_f32(value(f, j - P.c0, rank, off, scale)));
        }
        sums[at + f] = vec4<u32>(s, max(st.z, end), 0u);
    } else if (kind == 2u && f < P.cols) {
        let st = sums[at + f];
        var s = st.xy;
        let end = min(st.z + P.seg, P.r0 + P.rows);
        for (var i = st.z; i < end; i++) {
            s = f64_add_pos(s, f64_square_f32(value(i - P.r0, f, rank, off, scale)));
        }
        sums[at + f] = vec4<u32>(s, max(st.z, end), 0u);
    }
}
