// copy.wgsl: dst = src, 16 bytes per invocation. The memory-bandwidth baseline the merge
// kernel is measured against (scripts/gpu-bench.sh); not used by any op. Registered as "copy".
//
// Bindings (group 0):
//   0 uniform              P    CopyParams { n: vec4s to copy }
//   1 storage read         src  array<vec4<u32>>
//   2 storage read_write   dst  array<vec4<u32>>
// Dispatch: one invocation per vec4, COPY_WG per workgroup, 2-D grid (see linear_id); every
// invocation checks its index against n.

struct CopyParams {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const COPY_WG: u32 = 256u;

@group(0) @binding(0) var<uniform> P: CopyParams;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(COPY_WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg, COPY_WG);
    if (i < P.n) {
        dst[i] = src[i];
    }
}
