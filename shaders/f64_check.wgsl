// f64_check.wgsl: runs the f64.wgsl operations on raw bit patterns so tests can compare them
// with the CPU's f64 over many inputs. Not used by any op. Registered as "f64_check".
//
// Bindings (group 0):
//   0 uniform              P     F64CheckParams { n, mode }
//   1 storage read         inp   array<u32>  mode 0: one f32 per word; mode 1: four words per
//                                case, the f64 bits (lo, hi) of x then of y
//   2 storage read_write   outp  array<u32>  two words (lo, hi) of the f64 result per case
// Modes: 0 f64_square_f32(v), 1 f64_add_pos(x, y).
// Dispatch: one invocation per case, F64_CHECK_WG per workgroup, 2-D grid (see linear_id).

struct F64CheckParams {
    n: u32,
    mode: u32,
    _pad0: u32,
    _pad1: u32,
}

const F64_CHECK_WG: u32 = 256u;

@group(0) @binding(0) var<uniform> P: F64CheckParams;
@group(0) @binding(1) var<storage, read> inp: array<u32>;
@group(0) @binding(2) var<storage, read_write> outp: array<u32>;

@compute @workgroup_size(F64_CHECK_WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = linear_id(gid, nwg, F64_CHECK_WG);
    if (e >= P.n) {
        return;
    }
    var r: vec2<u32>;
    if (P.mode == 0u) {
        r = f64_square_f32(bitcast<f32>(inp[e]));
    } else {
        let x = vec2<u32>(inp[4u * e], inp[4u * e + 1u]);
        let y = vec2<u32>(inp[4u * e + 2u], inp[4u * e + 3u]);
        r = f64_add_pos(x, y);
    }
    outp[2u * e] = r.x;
    outp[2u * e + 1u] = r.y;
}
