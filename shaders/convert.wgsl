// convert.wgsl: runs the common.wgsl dtype codecs on raw bit patterns so tests can compare them
// with the `half` crate over many inputs. Not used by any op. Registered as "convert".
//
// Bindings (group 0):
//   0 uniform              P     ConvertParams { n, mode }
//   1 storage read         inp   array<u32>  one value per word (f32 bits, or 16-bit value)
//   2 storage read_write   outp  array<u32>  one result per word
// Modes: 0 f32 → bf16 bits, 1 f32 → f16 bits, 2 f16 → f32 bits, 3 bf16 → f32 bits.
// Dispatch: one invocation per value, CONVERT_WG per workgroup, 2-D grid (see linear_id).

struct ConvertParams {
    n: u32,
    mode: u32,
    _pad0: u32,
    _pad1: u32,
}

const CONVERT_WG: u32 = 256u;

@group(0) @binding(0) var<uniform> P: ConvertParams;
@group(0) @binding(1) var<storage, read> inp: array<u32>;
@group(0) @binding(2) var<storage, read_write> outp: array<u32>;

@compute @workgroup_size(CONVERT_WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = linear_id(gid, nwg, CONVERT_WG);
    if (e >= P.n) {
        return;
    }
    let v = inp[e];
    var r: u32;
    switch P.mode {
        case 0u: {
            r = f32_to_bf16_bits(v);
        }
        case 1u: {
            r = f32_to_f16_bits(v);
        }
        case 2u: {
            r = f16_to_f32_bits(v & 0xffffu);
        }
        default: {
            r = bf16_to_f32_bits(v & 0xffffu);
        }
    }
    outp[e] = r;
}
