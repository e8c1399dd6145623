//! [`GpuContext`]: an adapter, its device and queue, the compiled-pipeline cache and the merge
//! rings, created once per run ([`GpuOptions`]) and passed to every op; and what it reports about
//! itself ([`GpuInfo`], [`GpuLimits`]). It also owns the common steps of every op: uploads,
//! uniforms, bind groups, dispatches within the device's limits, error scopes and readback.
//!
//! Must not know an op's formula or tiling: the op files (`merge`, `dora`, `sketch`, `forward`)
//! call into the context, never the reverse.

use super::adapter::{self, AdapterIdentity, AdapterSelector};
use super::error::GpuError;
use super::kernels::{self, record_pass, Kernel};
use super::layout::pad4;
use super::ring::Ring;
use wgpu::util::DeviceExt;

/// Options for [`GpuContext::with_options`].
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Upper bound on the bytes of any one binding (and buffer), below the device's own limits.
    /// Tests lower it to force tiling.
    pub binding_limit: Option<u64>,
    /// Bytes of base (or output) per streamed merge tile; [`DEFAULT_CHUNK_BYTES`] when `None`.
    pub chunk_bytes: Option<u64>,
    /// Which adapter: an index into [`list_adapters`](super::list_adapters) (all backends, wgpu's
    /// order) or a PCI bus id; the default adapter (high-performance preference, `WGPU_*`
    /// variables) when `None`.
    pub adapter: Option<AdapterSelector>,
    /// Which optional features to request (all those the adapter offers, by default).
    pub features: OptionalFeatures,
}

/// Which of [`OPTIONAL_FEATURES`] a context requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OptionalFeatures {
    /// Each one the adapter offers.
    #[default]
    WhereOffered,
    /// None (the baseline device; tests check that results do not depend on them).
    Off,
}

/// Features requested where the adapter offers them: timestamp queries (the benchmarks time
/// kernels with them), subgroup operations and f16 shader arithmetic. The last two are reported
/// by `gpu-info`; no kernel uses them, because each would change a sum's order or rounding that
/// the CPU fixes (README, GPU section).
pub const OPTIONAL_FEATURES: [(wgpu::Features, &str); 3] = [
    (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
    (wgpu::Features::SUBGROUP, "subgroups"),
    (wgpu::Features::SHADER_F16, "shader-f16"),
];

/// Base/output bytes per streamed merge tile: 64 MiB, the low end of what keeps a PCIe link
/// busy (tens of milliseconds per transfer) with two tiles in flight.
pub const DEFAULT_CHUNK_BYTES: u64 = 64 << 20;

/// Device limits relevant to lorakit's kernels.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuLimits {
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
}

/// What [`GpuContext::describe`] reports (for `lorakit gpu-info`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuInfo {
    #[serde(flatten)]
    pub adapter: AdapterIdentity,
    pub driver_info: String,
    /// Limits of the device as created (possibly lowered by [`GpuOptions`]).
    pub limits: GpuLimits,
    /// Largest binding lorakit uses; bigger tensors are tiled.
    pub tile_binding_bytes: u64,
    /// The [`OPTIONAL_FEATURES`] the device was created with (WebGPU names).
    pub features: Vec<&'static str>,
    /// `[min, max]` subgroup size, when the device has subgroups.
    pub subgroup_sizes: Option<[u32; 2]>,
}

/// An adapter, its device and queue, and the compiled pipelines: create once per run.
#[derive(Debug)]
pub struct GpuContext {
    // Kept alive for the device's lifetime.
    _instance: wgpu::Instance,
    pub(super) _adapter: wgpu::Adapter,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    max_binding: u64,
    chunk_bytes: u64,
    kernels: kernels::Cache,
    /// Idle merge rings (persistent device buffers), reused by later merges; a merge running
    /// concurrently with another takes its own.
    rings: std::sync::Mutex<Vec<Ring>>,
    /// Unique per context: a [`ResidentWeight`](super::ResidentWeight) records the context it was
    /// uploaded to.
    id: u64,
    /// Weights uploaded by [`ResidentWeight::new`](super::ResidentWeight::new) on this context
    /// (tests check eval uploads each weight once).
    resident_uploads: std::sync::atomic::AtomicU64,
}

/// Source of [`GpuContext`] ids.
static NEXT_CONTEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Binding sizes are kept below 2 GiB so every element index of a binding fits a WGSL `u32`.
const INDEX_SAFE_BINDING: u64 = 1 << 31;

impl GpuContext {
    /// The pipeline for `spec` with the given override constants, compiled on first use.
    pub(crate) fn kernel(
        &self,
        spec: &kernels::KernelSpec,
        constants: &[(&str, f64)],
    ) -> Result<std::sync::Arc<Kernel>, GpuError> {
        self.kernels.get_or_compile(spec, constants, || {
            self.scoped(|| Ok(kernels::compile(&self.device, spec, constants)))
        })
    }

    /// Opens the default adapter (honouring `WGPU_BACKEND`, `WGPU_POWER_PREF` and
    /// `WGPU_ADAPTER_NAME`); [`GpuError::NoAdapter`] when there is none.
    pub fn new() -> Result<Self, GpuError> {
        Self::with_options(&GpuOptions::default())
    }

    /// Like [`GpuContext::new`], but `Ok(None)` when no adapter exists.
    pub fn try_new() -> Result<Option<Self>, GpuError> {
        match Self::new() {
            Ok(c) => Ok(Some(c)),
            Err(GpuError::NoAdapter(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A context whose bindings are at most `bytes` (rounded down to a multiple of 4, at least
    /// 256), so tensors larger than that are tiled.
    pub fn with_binding_limit(bytes: u64) -> Result<Self, GpuError> {
        Self::with_options(&GpuOptions {
            binding_limit: Some(bytes),
            ..GpuOptions::default()
        })
    }

    pub fn with_options(opts: &GpuOptions) -> Result<Self, GpuError> {
        pollster::block_on(Self::create(opts))
    }

    async fn create(opts: &GpuOptions) -> Result<Self, GpuError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = adapter::pick_adapter(&instance, opts.adapter).await?;
        let info = adapter.get_info();
        let mut limits = adapter.limits();
        if let Some(cap) = opts.binding_limit {
            let cap = (cap & !3).max(256);
            limits.max_storage_buffer_binding_size =
                limits.max_storage_buffer_binding_size.min(cap);
            limits.max_buffer_size = limits.max_buffer_size.min(cap);
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("lorakit"),
                required_features: match opts.features {
                    OptionalFeatures::WhereOffered => {
                        adapter.features()
                            & OPTIONAL_FEATURES
                                .iter()
                                .fold(wgpu::Features::empty(), |all, (f, _)| all | *f)
                    }
                    OptionalFeatures::Off => wgpu::Features::empty(),
                },
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::Device(e.to_string()))?;
        // Every op runs inside error scopes; anything that escapes them is reported, not a panic.
        device.on_uncaptured_error(std::sync::Arc::new(|e| {
            eprintln!("lorakit: uncaptured wgpu error: {e}")
        }));
        let limits = device.limits();
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(INDEX_SAFE_BINDING)
            & !3;
        Ok(GpuContext {
            _instance: instance,
            _adapter: adapter,
            device,
            queue,
            info,
            limits,
            max_binding,
            chunk_bytes: opts.chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES).max(4096) & !3,
            kernels: kernels::Cache::default(),
            rings: std::sync::Mutex::new(Vec::new()),
            id: NEXT_CONTEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            resident_uploads: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// One line for run summaries: `gpu (NAME, BACKEND)` (the engine's and extract's).
    pub fn label(&self) -> String {
        format!("gpu ({}, {})", self.info.name, self.info.backend)
    }

    /// Adapter, driver and limits, serialisable.
    pub fn describe(&self) -> GpuInfo {
        let l = &self.limits;
        GpuInfo {
            adapter: AdapterIdentity::from(&self.info),
            driver_info: self.info.driver_info.clone(),
            limits: GpuLimits {
                max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
                max_buffer_size: l.max_buffer_size,
                max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
                max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
                max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
                max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
            },
            tile_binding_bytes: self.max_binding,
            features: OPTIONAL_FEATURES
                .iter()
                .filter(|(f, _)| self.device.features().contains(*f))
                .map(|(_, name)| *name)
                .collect(),
            subgroup_sizes: self
                .device
                .features()
                .contains(wgpu::Features::SUBGROUP)
                .then_some([self.info.subgroup_min_size, self.info.subgroup_max_size]),
        }
    }

    /// Compiles every registered kernel (pipelines are otherwise compiled on first use); a shader
    /// the device's compiler rejects is reported here.
    pub fn compile_all(&self) -> Result<(), GpuError> {
        for spec in kernels::ALL {
            self.kernel(spec, &[])?;
        }
        // The merge kernel's rank-chunk specialisations, as merges request them.
        for rk in kernels::MERGE_RK {
            self.kernel(&kernels::MERGE, &[("RK", rk as f64)])?;
        }
        Ok(())
    }

    /// Bytes of base or output per streamed merge tile.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    pub(crate) fn take_ring(&self) -> Ring {
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        rings.pop().unwrap_or_default()
    }

    pub(crate) fn put_ring(&self, ring: Ring) {
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        rings.push(ring);
    }

    /// The largest buffer any kernel binds, in bytes (a multiple of 4).
    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    /// Most workgroups one dispatch dimension may have.
    pub(crate) fn max_groups(&self) -> u32 {
        self.limits.max_compute_workgroups_per_dimension.max(1)
    }

    /// Runs `f` inside validation / out-of-memory / internal error scopes; a captured wgpu error
    /// takes precedence over `f`'s own result (it is usually the cause).
    pub(crate) fn scoped<T>(&self, f: impl FnOnce() -> Result<T, GpuError>) -> Result<T, GpuError> {
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = f();
        // Scopes pop innermost first.
        let errors = [
            pollster::block_on(validation.pop()),
            pollster::block_on(oom.pop()),
            pollster::block_on(internal.pop()),
        ];
        match errors.into_iter().flatten().next() {
            Some(e) => Err(GpuError::Wgpu(e.to_string())),
            None => result,
        }
    }

    /// How many weights [`ResidentWeight::new`](super::ResidentWeight::new) has uploaded on this
    /// context.
    pub fn resident_uploads(&self) -> u64 {
        self.resident_uploads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn count_resident_upload(&self) {
        self.resident_uploads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Fails with [`GpuError::TooLarge`] when `bytes` exceeds one binding.
    pub(crate) fn check_binding(&self, what: &str, bytes: u64) -> Result<(), GpuError> {
        if bytes > self.max_binding {
            return Err(GpuError::TooLarge {
                what: what.to_owned(),
                bytes,
                limit: self.max_binding,
            });
        }
        Ok(())
    }

    /// A storage buffer holding `bytes` (padded to a multiple of 4, at least 4 bytes).
    pub(crate) fn upload(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let mut padded;
        let contents = if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
            padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
            &padded[..]
        } else {
            bytes
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A uniform buffer holding `value`.
    pub(crate) fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// A zero-filled storage buffer of at least `bytes` bytes (rounded up to a multiple of 4).
    pub(crate) fn output(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: pad4(bytes),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Records one dispatch of `kernel` with `buffers` bound to slots 0, 1, … in its own pass
    /// (passes are ordered, so a later dispatch sees an earlier one's writes).
    pub(crate) fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: &Kernel,
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32),
    ) {
        self.dispatch3(encoder, kernel, buffers, (groups.0, groups.1, 1));
    }

    /// [`Self::dispatch`] over a 3-D grid (split-K sketches use z).
    pub(crate) fn dispatch3(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: &Kernel,
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32, u32),
    ) {
        let bind_group = self.bind_group(kernel, buffers.iter().map(|b| b.as_entire_binding()));
        record_pass(encoder, kernel, &bind_group, groups, None);
    }

    /// [`GpuContext::dispatch`] with each binding limited to its first `len` bytes (for
    /// persistent buffers larger than the data of the current call).
    pub(crate) fn dispatch_ranges(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: &Kernel,
        buffers: &[(&wgpu::Buffer, u64)],
        groups: (u32, u32),
    ) {
        let bind_group = self.bind_ranges(kernel, buffers);
        record_pass(encoder, kernel, &bind_group, (groups.0, groups.1, 1), None);
    }

    /// A bind group of `kernel` with `resources` at slots 0, 1, ….
    fn bind_group<'r>(
        &self,
        kernel: &Kernel,
        resources: impl Iterator<Item = wgpu::BindingResource<'r>>,
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect();
        debug_assert_eq!(entries.len(), kernel.slots);
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &kernel.layout,
            entries: &entries,
        })
    }

    /// A bind group of `kernel` with each buffer bound to its first `len` bytes.
    pub(crate) fn bind_ranges(
        &self,
        kernel: &Kernel,
        buffers: &[(&wgpu::Buffer, u64)],
    ) -> wgpu::BindGroup {
        self.bind_group(
            kernel,
            buffers.iter().map(|&(buffer, len)| {
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: 0,
                    size: std::num::NonZeroU64::new(pad4(len)),
                })
            }),
        )
    }

    pub(crate) fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Workgroup grid for `invocations` one-dimensional invocations of width `wg`: x up to the
    /// per-dimension limit, the rest in y (kernels recover the index with `linear_id`).
    pub(crate) fn grid_1d(&self, invocations: u64, wg: u32) -> (u32, u32) {
        let groups = invocations.div_ceil(wg as u64).max(1);
        let max_x = self.limits.max_compute_workgroups_per_dimension.max(1) as u64;
        let x = groups.min(max_x);
        (x as u32, groups.div_ceil(x) as u32)
    }

    /// Submits `encoder` after appending copies of `sources` (buffer, byte length) to staging
    /// buffers, waits, and returns each source's first `len` bytes.
    pub(crate) fn submit_and_read(
        &self,
        mut encoder: wgpu::CommandEncoder,
        sources: &[(&wgpu::Buffer, u64)],
    ) -> Result<Vec<Vec<u8>>, GpuError> {
        // 1. Storage buffers cannot be mapped: copy each result into a MAP_READ staging buffer
        //    at the end of the same command buffer, after the dispatches that produce it.
        let staging: Vec<wgpu::Buffer> = sources
            .iter()
            .map(|&(src, len)| {
                let size = pad4(len);
                let st = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("staging"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.copy_buffer_to_buffer(src, 0, &st, 0, size);
                st
            })
            .collect();
        // 2. Submit the work; it runs asynchronously on the device.
        let submission = self.queue.submit([encoder.finish()]);
        // 3. Request a read mapping of each staging buffer; the callback fires from a device
        //    poll once the submission has finished.
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, st) in staging.iter().enumerate() {
            let tx = tx.clone();
            st.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send((i, r));
            });
        }
        drop(tx);
        // 4. Block until the submission completes and the map callbacks have run.
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let mut results: Vec<Option<Result<(), wgpu::BufferAsyncError>>> =
            vec![None; staging.len()];
        // A callback runs on whichever thread polls the device: when another thread sharing it
        // is polling at the same moment, ours can return before that thread has delivered the
        // callback. So wait on the channel itself (polling again between waits) up to a
        // deadline, rather than for a fixed number of polls.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut pending = staging.len();
        while pending > 0 {
            match rx.recv_timeout(std::time::Duration::from_millis(20)) {
                Ok((i, r)) => {
                    if results[i].replace(r).is_none() {
                        pending -= 1;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if std::time::Instant::now() >= deadline {
                        break;
                    }
                    self.device
                        .poll(wgpu::PollType::wait_indefinitely())
                        .map_err(|e| GpuError::Readback(e.to_string()))?;
                }
            }
        }
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    return Err(GpuError::Readback(format!(
                        "mapping staging buffer {i}: {e}"
                    )))
                }
                None => {
                    return Err(GpuError::Readback(format!(
                        "staging buffer {i} was never mapped"
                    )))
                }
            }
        }
        // 5. Copy the bytes out of each mapped range; the view must be dropped before unmap.
        let mut out = Vec::with_capacity(staging.len());
        for (st, &(_, len)) in staging.iter().zip(sources) {
            let view = st
                .slice(..)
                .get_mapped_range()
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            out.push(view[..len as usize].to_vec());
            drop(view);
            st.unmap();
        }
        Ok(out)
    }
}
