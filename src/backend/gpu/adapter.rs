//! Which wgpu adapter a run opens: the list `lorakit gpu-info` prints ([`list_adapters`]), what
//! identifies one ([`AdapterIdentity`], PCI bus id included), and the user's choice among them
//! ([`AdapterSelector`]: `--gpu-index N` or `--gpu-index pci:DOMAIN:BUS:DEVICE.FUNCTION`).
//!
//! Selection never guesses: an index past the list, or a bus id no adapter reports, is a
//! [`GpuError::NoAdapter`] naming what exists. Nothing here creates a device.

use super::error::GpuError;

/// A PCI address `domain:bus:device.function`, as wgpu 30 reports it for Vulkan adapters
/// (`wgpu-hal-30.0.2/src/vulkan/adapter.rs`, `device_pci_bus_id`: `{:04x}:{:02x}:{:02x}.{}` from
/// `VK_EXT_pci_bus_info`, empty when the driver lacks the extension or reports bus and device 0,
/// as lavapipe does). Compared by value, so `0000:65:00.0`, `65:00.0` and nvidia-smi's
/// `00000000:65:00.0` are the same address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciBusId {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl std::str::FromStr for PciBusId {
    type Err = String;

    /// `[domain:]bus:device.function`, hexadecimal (function decimal 0–7), any case.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a PCI bus id like 0000:65:00.0");
        let (head, function) = s.trim().rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, device) = match parts[..] {
            [b, d] => ("0", b, d),
            [dom, b, d] => (dom, b, d),
            _ => return Err(bad()),
        };
        let hex = |t: &str, digits: usize| {
            (!t.is_empty() && t.len() <= digits && t.bytes().all(|c| c.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(t, 16).ok())
                .flatten()
                .ok_or_else(bad)
        };
        let device = hex(device, 2)?;
        let function = hex(function, 1)?;
        if device > 0x1f || function > 7 {
            return Err(bad());
        }
        Ok(PciBusId {
            domain: hex(domain, 8)?,
            bus: hex(bus, 2)? as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl std::fmt::Display for PciBusId {
    /// wgpu's spelling: `0000:65:00.0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// Which adapter to open, as `--gpu-index` takes it: a position in [`list_adapters`] (`1`) or a
/// PCI bus id (`pci:0000:65:00.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterSelector {
    Index(usize),
    Pci(PciBusId),
}

impl std::str::FromStr for AdapterSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("pci:") {
            Some(id) => id.parse().map(AdapterSelector::Pci),
            None => s.parse().map(AdapterSelector::Index).map_err(|_| {
                format!(
                    "`{s}` is neither an adapter index nor pci:<bus id> (e.g. pci:0000:65:00.0)"
                )
            }),
        }
    }
}

impl std::fmt::Display for AdapterSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdapterSelector::Index(i) => write!(f, "{i}"),
            AdapterSelector::Pci(id) => write!(f, "pci:{id}"),
        }
    }
}

impl AdapterSelector {
    /// The position in `listed` (each adapter's [`AdapterIdentity`], in enumeration order) this
    /// selector names; a one-line [`GpuError::NoAdapter`] listing what exists otherwise.
    pub fn position(&self, listed: &[AdapterIdentity]) -> Result<usize, GpuError> {
        match *self {
            AdapterSelector::Index(i) if i < listed.len() => Ok(i),
            AdapterSelector::Index(i) => Err(GpuError::NoAdapter(format!(
                "no adapter with index {i} ({} found; `lorakit gpu-info` lists them)",
                listed.len()
            ))),
            AdapterSelector::Pci(want) => listed
                .iter()
                .position(|a| a.pci_bus_id.parse::<PciBusId>() == Ok(want))
                .ok_or_else(|| {
                    let ids: Vec<String> = listed
                        .iter()
                        .enumerate()
                        .map(|(i, a)| match a.pci_bus_id.as_str() {
                            "" => format!("[{i}] none reported"),
                            id => format!("[{i}] {id}"),
                        })
                        .collect();
                    GpuError::NoAdapter(format!(
                        "no adapter at PCI bus id {want} (bus ids: {})",
                        if ids.is_empty() {
                            "no adapter found".to_owned()
                        } else {
                            ids.join(", ")
                        }
                    ))
                }),
        }
    }
}

/// What identifies a wgpu adapter, as both [`list_adapters`] and
/// [`super::GpuContext::describe`] report it (flattened into their JSON).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterIdentity {
    /// Adapter name, e.g. "llvmpipe (LLVM 15.0.7, 256 bits)".
    pub name: String,
    /// Graphics API: "vulkan", "metal", "dx12", "gl".
    pub backend: String,
    /// "DiscreteGpu", "IntegratedGpu", "VirtualGpu", "Cpu" or "Other".
    pub device_type: String,
    pub vendor: u32,
    pub device: u32,
    pub driver: String,
    /// PCI address (`0000:65:00.0`, what `--gpu-index pci:…` matches); empty when the driver
    /// reports none (see [`PciBusId`]).
    pub pci_bus_id: String,
}

impl From<&wgpu::AdapterInfo> for AdapterIdentity {
    fn from(i: &wgpu::AdapterInfo) -> Self {
        AdapterIdentity {
            name: i.name.clone(),
            backend: i.backend.to_string(),
            device_type: format!("{:?}", i.device_type),
            vendor: i.vendor,
            device: i.device,
            driver: i.driver.clone(),
            pci_bus_id: i.device_pci_bus_id.clone(),
        }
    }
}

/// One adapter wgpu can open, as listed by [`list_adapters`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterEntry {
    /// The index `--gpu-index` takes.
    pub index: usize,
    #[serde(flatten)]
    pub adapter: AdapterIdentity,
}

/// Every adapter of every backend wgpu was built with, in wgpu's enumeration order (stable for
/// one machine and driver set).
pub fn list_adapters() -> Vec<AdapterEntry> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .iter()
        .enumerate()
        .map(|(index, a)| AdapterEntry {
            index,
            adapter: AdapterIdentity::from(&a.get_info()),
        })
        .collect()
}

/// The adapter `selector` names, else the one `WGPU_ADAPTER_NAME` names, else wgpu's default
/// (high-performance preference unless `WGPU_POWER_PREF` says otherwise).
pub(crate) async fn pick_adapter(
    instance: &wgpu::Instance,
    selector: Option<AdapterSelector>,
) -> Result<wgpu::Adapter, GpuError> {
    if let Some(sel) = selector {
        let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
        let listed: Vec<AdapterIdentity> = adapters
            .iter()
            .map(|a| AdapterIdentity::from(&a.get_info()))
            .collect();
        let i = sel.position(&listed)?;
        return Ok(adapters
            .into_iter()
            .nth(i)
            .expect("position is in the list"));
    }
    if let Ok(want) = std::env::var("WGPU_ADAPTER_NAME") {
        let want = want.to_lowercase();
        let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&want))
            .ok_or_else(|| {
                GpuError::NoAdapter(format!(
                    "none named like WGPU_ADAPTER_NAME={want:?} among {names:?}"
                ))
            });
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
            ..Default::default()
        })
        .await
        .map_err(|e| GpuError::NoAdapter(e.to_string()))
}
