//! The merge's ring: two slots of persistent device buffers that tiles stream through (while the
//! device works on one slot, the host fills or drains the other). The context keeps idle rings
//! between tensors ([`GpuContext::take_ring`](super::GpuContext)); `merge` grows their buffers
//! on demand.
//!
//! Plain data, a leaf: must not create buffers or know the merge's tiling.

/// Persistent device buffers of one ring slot; each grows to the largest tile seen.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(crate) w0: Option<wgpu::Buffer>,
    pub(crate) out: Option<wgpu::Buffer>,
    pub(crate) a: Option<wgpu::Buffer>,
    pub(crate) b: Option<wgpu::Buffer>,
    pub(crate) factors: Option<wgpu::Buffer>,
    pub(crate) terms: Option<wgpu::Buffer>,
    pub(crate) flags: Option<wgpu::Buffer>,
    pub(crate) params: Option<wgpu::Buffer>,
    /// MAP_READ copies of the output tile and of the flag word.
    pub(crate) readback: Option<wgpu::Buffer>,
    pub(crate) flag_readback: Option<wgpu::Buffer>,
}

/// Two slots: while the device works on one, the host fills or drains the other.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    pub(crate) slots: [Slot; 2],
}
