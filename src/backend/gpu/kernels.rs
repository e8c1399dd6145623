//! The kernel registry: every WGSL kernel, its sources, entry point and binding layout, in one
//! place. Pipelines are compiled on first use and cached per [`GpuContext`](super::GpuContext).
//!
//! WGSL has no `#include`, so a kernel's source is the concatenation of its parts: always
//! `shaders/common.wgsl` (dtype codecs), then `shaders/gemm.wgsl` for the tiled-GEMM kernels or
//! `shaders/f64.wgsl` (software binary64) for the DoRA norms, then the kernel's own file. Each
//! file's header documents its bindings, layouts and formula.
//!
//! It holds no arithmetic and decides no work: the callers in `backend/gpu/` size the dispatches,
//! bind buffers and submit (this file only records a pass they describe); a kernel's numbers are
//! pinned by its test against the CPU code in `backend/`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const COMMON: &str = include_str!("../../../shaders/common.wgsl");
const GEMM: &str = include_str!("../../../shaders/gemm.wgsl");
const F64: &str = include_str!("../../../shaders/f64.wgsl");

/// The kind of one binding slot (all in bind group 0, numbered from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Uniform,
    Read,
    ReadWrite,
}

/// A registered kernel.
#[derive(Debug)]
pub(crate) struct KernelSpec {
    pub name: &'static str,
    /// Source parts, concatenated in order.
    pub sources: &'static [&'static str],
    pub entry: &'static str,
    /// Binding `i` of group 0 has kind `bindings[i]`.
    pub bindings: &'static [Slot],
}

use Slot::{Read, ReadWrite, Uniform};

/// A kernel whose own file is `shaders/<name>.wgsl`, after the shared `parts`, entry `main`.
macro_rules! kernel {
    ($name:literal, [$($part:expr),*], [$($slot:expr),*]) => {
        KernelSpec {
            name: $name,
            sources: &[$($part,)* include_str!(concat!("../../../shaders/", $name, ".wgsl"))],
            entry: "main",
            bindings: &[$($slot),*],
        }
    };
}

/// W = W0 + Σ scale·B·A (+ DoRA), see `shaders/merge.wgsl`.
pub(crate) const MERGE: KernelSpec = kernel!(
    "merge",
    [COMMON],
    [Uniform, Read, ReadWrite, Read, Read, Read, Read, ReadWrite]
);

/// The f64 sums of squares of DoRA's norms ‖W0 + δ‖, see `shaders/dora_norm.wgsl`.
pub(crate) const DORA_NORM: KernelSpec = kernel!(
    "dora_norm",
    [COMMON, F64],
    [Uniform, Read, Read, Read, Read, ReadWrite]
);

/// T = scale ⊙ X·Aᵀ, see `shaders/forward_shrink.wgsl`.
pub(crate) const FORWARD_SHRINK: KernelSpec = kernel!(
    "forward_shrink",
    [COMMON, GEMM],
    [Uniform, Read, Read, Read, ReadWrite]
);

/// Y = X·W0ᵀ + T·Bᵀ, see `shaders/forward_dense.wgsl`.
pub(crate) const FORWARD_DENSE: KernelSpec = kernel!(
    "forward_dense",
    [COMMON, GEMM],
    [Uniform, Read, Read, Read, Read, ReadWrite]
);

/// Y = (W − W0)·Ω, see `shaders/sketch.wgsl`.
pub(crate) const SKETCH: KernelSpec = kernel!(
    "sketch",
    [COMMON, GEMM],
    [Uniform, Read, Read, Read, ReadWrite]
);

/// Z += (W − W0)ᵀ·Q (or its split-K partial products), see `shaders/sketch_t.wgsl`.
pub(crate) const SKETCH_T: KernelSpec = kernel!(
    "sketch_t",
    [COMMON, GEMM],
    [Uniform, Read, Read, Read, ReadWrite, ReadWrite]
);

/// Z += the split-K partial products of [`SKETCH_T`], in split order (same file and bindings).
pub(crate) const SKETCH_T_REDUCE: KernelSpec = KernelSpec {
    name: "sketch_t_reduce",
    entry: "reduce",
    ..SKETCH_T
};

/// The dtype codecs on raw bits (tests only), see `shaders/convert.wgsl`.
pub(crate) const CONVERT: KernelSpec = kernel!("convert", [COMMON], [Uniform, Read, ReadWrite]);

/// The software f64 square and addition on raw bits (tests only), see `shaders/f64_check.wgsl`.
#[cfg(test)]
pub(crate) const F64_CHECK: KernelSpec =
    kernel!("f64_check", [COMMON, F64], [Uniform, Read, ReadWrite]);

/// dst = src in vec4s: the bandwidth baseline of the benchmarks, see `shaders/copy.wgsl`.
pub(crate) const COPY: KernelSpec = kernel!("copy", [COMMON], [Uniform, Read, ReadWrite]);

/// Every registered kernel.
pub(crate) const ALL: &[&KernelSpec] = &[
    &MERGE,
    &DORA_NORM,
    &FORWARD_SHRINK,
    &FORWARD_DENSE,
    &SKETCH,
    &SKETCH_T,
    &SKETCH_T_REDUCE,
    &CONVERT,
    &COPY,
];

/// Merge kernel geometry (`VEC`, `TILE_C`, `TILE_R` in merge.wgsl): elements per invocation
/// along a row, and the columns × rows one workgroup covers.
pub(crate) const MERGE_VEC: usize = 8;
pub(crate) const MERGE_TILE_C: usize = 256;
pub(crate) const MERGE_TILE_R: usize = 16;
/// The merge kernel's rank-chunk specialisations (`RK` in merge.wgsl).
pub(crate) const MERGE_RK: [u32; 3] = [1, 4, 8];
/// Workgroup width of the 1-D convert kernel (must match `CONVERT_WG` in convert.wgsl).
#[cfg(test)]
pub(crate) const CONVERT_WG: u32 = 256;
/// Workgroup width of the DoRA norm kernel (`DORA_WG` in dora_norm.wgsl).
pub(crate) const DORA_WG: u32 = 64;
/// Workgroup width of the f64 check kernel (`F64_CHECK_WG` in f64_check.wgsl).
#[cfg(test)]
pub(crate) const F64_CHECK_WG: u32 = 256;
/// Workgroup width of sketch_t's split-K reduction (`SKETCH_REDUCE_WG` in sketch_t.wgsl).
pub(crate) const SKETCH_REDUCE_WG: u32 = 256;
/// Workgroup width of the copy kernel (`COPY_WG` in copy.wgsl).
pub(crate) const COPY_WG: u32 = 256;
/// Result rows × columns computed by one workgroup of the tiled-GEMM kernels (`GEMM_TILE_M`,
/// `GEMM_TILE_N` in gemm.wgsl): the grid's y dimension counts row blocks, x column blocks.
pub(crate) const GEMM_TILE_M: u32 = 128;
pub(crate) const GEMM_TILE_N: u32 = 64;

/// A compiled kernel: its pipeline and the bind group layout its bind groups are made against.
#[derive(Debug)]
pub(crate) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub slots: usize,
}

/// Compiled pipelines, keyed by kernel name and pipeline-overridable constants.
#[derive(Debug, Default)]
pub(crate) struct Cache(Mutex<HashMap<String, Arc<Kernel>>>);

impl Cache {
    /// The kernel cached under `spec`'s name and `constants`, or the one `compile` gives, then
    /// cached. The lock is held while compiling, so two threads never compile the same kernel.
    pub(crate) fn get_or_compile<E>(
        &self,
        spec: &KernelSpec,
        constants: &[(&str, f64)],
        compile: impl FnOnce() -> Result<Kernel, E>,
    ) -> Result<Arc<Kernel>, E> {
        let key = format!("{}{constants:?}", spec.name);
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = cache.get(&key) {
            return Ok(k.clone());
        }
        let kernel = Arc::new(compile()?);
        cache.insert(key, kernel.clone());
        Ok(kernel)
    }
}

/// Compiles `spec` with the given override constants on `device`.
pub(crate) fn compile(
    device: &wgpu::Device,
    spec: &KernelSpec,
    constants: &[(&str, f64)],
) -> Kernel {
    let source: String = spec.sources.concat();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(spec.name),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let entries: Vec<wgpu::BindGroupLayoutEntry> = spec
        .bindings
        .iter()
        .enumerate()
        .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match slot {
                    Slot::Uniform => wgpu::BufferBindingType::Uniform,
                    Slot::Read => wgpu::BufferBindingType::Storage { read_only: true },
                    Slot::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(spec.name),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(spec.name),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(spec.name),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(spec.entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    Kernel {
        pipeline,
        layout,
        slots: spec.bindings.len(),
    }
}

/// Records one dispatch of `kernel` over `groups` with `bind_group` in a compute pass of its
/// own, writing the pass's start and end timestamps where asked (the bench).
pub(crate) fn record_pass(
    encoder: &mut wgpu::CommandEncoder,
    kernel: &Kernel,
    bind_group: &wgpu::BindGroup,
    groups: (u32, u32, u32),
    timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: None,
        timestamp_writes,
    });
    pass.set_pipeline(&kernel.pipeline);
    pass.set_bind_group(0, bind_group, &[]);
    pass.dispatch_workgroups(groups.0, groups.1, groups.2);
}
