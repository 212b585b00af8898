//! One PCI device as sysfs shows it.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::{self, ConfigHeader};
use super::resource::{self, Bar, BarKind};
use crate::bdf::Bdf;
use crate::sysroot::{SysDir, SysError, SysRoot};

/// Reading a device failed.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// No such device in sysfs.
    #[error("PCI device {bdf} not found: no {path}; list devices with `vfioctl devices`")]
    NotFound {
        /// The address asked for.
        bdf: Bdf,
        /// The sysfs path that is missing.
        path: String,
    },
    #[error("PCI device {bdf}: reading sysfs")]
    /// Reading one of the device's sysfs files failed.
    Sys {
        /// The device.
        bdf: Bdf,
        #[source]
        /// The failed read.
        source: SysError,
    },
    #[error("PCI device {bdf}: malformed {file}: {reason}")]
    /// A sysfs file of the device holds something unexpected.
    Malformed {
        /// The device.
        bdf: Bdf,
        /// The file's name.
        file: &'static str,
        /// What is wrong with its contents.
        reason: String,
    },
    #[error("listing PCI devices")]
    /// Listing `/sys/bus/pci/devices` failed.
    List {
        #[source]
        /// The failed listing.
        source: SysError,
    },
}

/// PCIe link state (current and maximum), from `current_link_speed` & co.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// `current_link_speed` (`16.0 GT/s PCIe`).
    pub current_speed: Option<String>,
    /// `current_link_width` (lanes).
    pub current_width: Option<u32>,
    /// `max_link_speed`.
    pub max_speed: Option<String>,
    /// `max_link_width` (lanes).
    pub max_width: Option<u32>,
}

impl Link {
    /// True when the link trained below what both ends can do (a GPU at x8 or 2.5 GT/s).
    pub fn degraded(&self) -> bool {
        let w = matches!((self.current_width, self.max_width), (Some(c), Some(m)) if c < m);
        let s = matches!((&self.current_speed, &self.max_speed), (Some(c), Some(m)) if c != m);
        w || s
    }
}

/// SR-IOV physical function state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sriov {
    /// `sriov_totalvfs`: how many VFs the device offers.
    pub total_vfs: u32,
    /// `sriov_numvfs`: how many are enabled.
    pub num_vfs: u32,
}

/// A BAR covered by the Resizable BAR capability (`resourceN_resize`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizableBar {
    /// The BAR number.
    pub index: u8,
    /// Supported sizes in bytes, smallest first (bit n of the file = 2^(n+20) bytes).
    pub sizes: Vec<u64>,
}

/// Everything vfioctl knows about one PCI function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDevice {
    /// The device's address.
    pub bdf: Bdf,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Subsystem vendor id, when the device has one.
    pub subsystem_vendor: Option<u16>,
    /// Subsystem device id, when the device has one.
    pub subsystem_device: Option<u16>,
    /// 24-bit class code (`0x030200` = 3D controller).
    pub class: u32,
    /// Revision id.
    pub revision: Option<u8>,
    /// Bound driver (`nvidia`, `vfio-pci`, `pcieport`), from the `driver` link.
    pub driver: Option<String>,
    /// `driver_override`, `None` when unset (the kernel prints `(null)`).
    pub driver_override: Option<String>,
    /// The IOMMU group, `None` without an IOMMU.
    pub iommu_group: Option<u32>,
    /// Other members of the IOMMU group (this device excluded), sorted.
    pub iommu_group_peers: Vec<Bdf>,
    /// Bridges above this device, nearest first (root port last).
    pub parents: Vec<Bdf>,
    /// The sysfs device directory (host-absolute, symlinks resolved).
    pub sysfs_path: PathBuf,
    /// A PCI Express function (it has the PCIe capability).
    pub is_pcie: bool,
    /// A PCI-to-PCI bridge (header type 1), root ports included.
    pub is_bridge: bool,
    /// The device has more than one function.
    pub multifunction: bool,
    /// The PCIe link, for PCIe functions whose sysfs shows it.
    pub link: Option<Link>,
    /// `numa_node` as the kernel shows it (`-1`: no node), `None` when absent.
    pub numa_node: Option<i32>,
    /// Enabled reset methods in order; `None` when the device has none (no `reset_method`).
    pub reset_methods: Option<Vec<String>>,
    /// `boot_vga`: the firmware's console GPU.
    pub boot_vga: Option<bool>,
    /// SR-IOV state, for physical functions.
    pub sriov: Option<Sriov>,
    /// `D0`, `D3hot`, `D3cold`, ...
    pub power_state: Option<String>,
    /// `d3cold_allowed`.
    pub d3cold_allowed: Option<bool>,
    /// BARs the Resizable BAR capability covers.
    pub resizable_bars: Vec<ResizableBar>,
    /// BARs 0-5: assigned ones from `resource`, plus BARs that config space shows but that
    /// were never assigned (`assigned: false`).
    pub bars: Vec<Bar>,
    /// A vfio driver owns the device (`vfio-dev/` exists: vfio-pci or a variant driver).
    pub vfio_dev: bool,
    /// Devices linked as consumers (`consumer:pci:<bdf>`): NVIDIA links a GPU's HDA
    /// function this way.
    pub consumers: Vec<Bdf>,
}

fn parse_hex<T: TryFrom<u64>>(s: &str) -> Option<T> {
    let h = s.trim().strip_prefix("0x").unwrap_or(s.trim());
    u64::from_str_radix(h, 16)
        .ok()
        .and_then(|v| T::try_from(v).ok())
}

/// The sizes a `resourceN_resize` file offers, smallest first: bit n means 2^(n+20)
/// bytes. Bits 44 and up would be 2^64 bytes or more, which no BAR can be (the kernel's
/// mask is 36 bits today): ignored, as is text that is not a hex number.
pub fn resize_sizes(text: &str) -> Vec<u64> {
    let bits = parse_hex::<u64>(text).unwrap_or(0);
    (0..44u32)
        .filter(|b| bits & (1u64 << b) != 0)
        .filter_map(|b| 1u64.checked_shl(b + 20))
        .collect()
}

/// Every PCI device under `/sys/bus/pci/devices`, sorted by address. Entries that are not
/// addresses are ignored.
pub fn enumerate(root: &SysRoot) -> Result<Vec<Bdf>, PciError> {
    let names = root
        .list("/sys/bus/pci/devices")
        .map_err(|source| PciError::List { source })?;
    let mut out: Vec<Bdf> = names.iter().filter_map(|n| n.parse().ok()).collect();
    out.sort();
    Ok(out)
}

/// The device's real directory (`/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0`),
/// host-absolute. `/sys/bus/pci/devices/<bdf>` is a relative symlink into `/sys/devices`
/// whose components are plain directories, so one `readlink` and a lexical join give
/// what `realpath` gives with a `readlink` per component; anything else is resolved.
fn sysfs_device_path(root: &SysRoot, dir: &str) -> Result<PathBuf, SysError> {
    let link = Path::new(dir);
    if let Ok(target) = std::fs::read_link(root.path(link)) {
        if target.is_relative() {
            let mut out = link.parent().map(Path::to_path_buf).unwrap_or_default();
            for c in target.components() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(p) => out.push(p),
                    _ => {}
                }
            }
            return Ok(out);
        }
    }
    root.canonicalize(dir)
}

/// Members of IOMMU group `group`, sorted.
pub fn iommu_group_members(root: &SysRoot, group: u32) -> Result<Vec<Bdf>, SysError> {
    let names = root.list(format!("/sys/kernel/iommu_groups/{group}/devices"))?;
    let mut v: Vec<Bdf> = names.iter().filter_map(|n| n.parse().ok()).collect();
    v.sort();
    Ok(v)
}

/// Driver names that own a device for DMA purposes and leave its group usable by VFIO
/// (`driver_managed_dma`): vfio-pci and its variants, pci-stub, pcieport.
pub fn is_vfio_driver(name: &str) -> bool {
    name == "vfio-pci" || name == "vfio_pci" || name.contains("vfio")
}

impl PciDevice {
    /// Read one device. Attributes that a device lacks are `None`, not errors; a device
    /// that does not exist is [`PciError::NotFound`].
    pub fn read(root: &SysRoot, bdf: Bdf) -> Result<PciDevice, PciError> {
        let link = bdf.sysfs_path();
        let sys = |source| PciError::Sys { bdf, source };
        // One listing of the device directory tells which optional attributes exist, so
        // absent ones (resourceN_resize, sriov_*, boot_vga, ...) cost no failed open; on
        // a 1,024-device host this halves the system calls.
        let entries: HashSet<String> = match root.list(&link) {
            Ok(names) => names.into_iter().collect(),
            Err(e) if e.is_not_found() => return Err(PciError::NotFound { bdf, path: link }),
            Err(e) => return Err(sys(e)),
        };
        // Attributes are read from the real directory: opening through the
        // /sys/bus/pci/devices link would make the kernel follow it on every open.
        let sysfs_path = sysfs_device_path(root, &link).map_err(sys)?;
        let handle = root.open_dir(&sysfs_path).map_err(sys)?;
        let has = |name: &str| entries.contains(name);
        let attr = |name: &str| -> Result<Option<String>, PciError> {
            if !has(name) {
                return Ok(None);
            }
            handle.read_attr_opt(name).map_err(sys)
        };

        // The header only: nothing below needs more, and as root the whole file is 4 KiB of
        // config reads (a hardware access per dword; under TCG 1-2 ms per device).
        let cfg_bytes = match handle.read_prefix("config", config::HEADER_LEN) {
            Ok(b) => Some(b),
            Err(e) if e.is_not_found() || e.is_permission_denied() => None,
            Err(e) => return Err(sys(e)),
        };
        let header: Option<ConfigHeader> = cfg_bytes.as_deref().and_then(|b| config::parse(b).ok());

        let id = |name: &'static str, from_cfg: Option<u32>| -> Result<Option<u32>, PciError> {
            match attr(name)? {
                Some(s) => parse_hex::<u32>(&s).map(Some).ok_or(PciError::Malformed {
                    bdf,
                    file: name,
                    reason: format!("not a hex number: {s:?}"),
                }),
                None => Ok(from_cfg),
            }
        };
        let vendor =
            id("vendor", header.as_ref().map(|h| h.vendor.into()))?.ok_or(PciError::Malformed {
                bdf,
                file: "vendor",
                reason: "missing, and no config space to read it from".into(),
            })? as u16;
        let device = id("device", header.as_ref().map(|h| h.device.into()))?.unwrap_or(0) as u16;
        let class = id("class", header.as_ref().map(|h| h.class))?.unwrap_or(0);
        // Revision and subsystem ids are plain copies of config registers (the kernel reads
        // them from there once), so a readable type-0 header saves three opens per device.
        // Vendor, device and class stay on their sysfs files: quirks rewrite the class,
        // and an SR-IOV VF's config space reads 0xffff for its ids.
        let cfg_type0 = cfg_bytes.as_deref().filter(|b| {
            b.len() >= config::HEADER_LEN && header.as_ref().is_some_and(|h| h.header_type == 0)
        });
        let (subsystem_vendor, subsystem_device, revision) = match cfg_type0 {
            Some(b) => (
                Some(u16::from_le_bytes([b[0x2c], b[0x2d]])),
                Some(u16::from_le_bytes([b[0x2e], b[0x2f]])),
                Some(b[0x08]),
            ),
            None => (
                id("subsystem_vendor", None)?.map(|v| v as u16),
                id("subsystem_device", None)?.map(|v| v as u16),
                id("revision", header.as_ref().map(|h| h.revision.into()))?.map(|v| v as u8),
            ),
        };

        let driver = handle.link_name("driver").map_err(sys)?;
        let driver_override = attr("driver_override")?.filter(|s| s != "(null)" && !s.is_empty());
        let iommu_group = match handle.link_name("iommu_group").map_err(sys)? {
            Some(n) => Some(n.parse::<u32>().map_err(|_| PciError::Malformed {
                bdf,
                file: "iommu_group",
                reason: format!("link target {n:?} is not a group number"),
            })?),
            None => None,
        };
        let iommu_group_peers = match iommu_group {
            Some(g) => iommu_group_members(root, g)
                .map_err(sys)?
                .into_iter()
                .filter(|b| *b != bdf)
                .collect(),
            None => Vec::new(),
        };

        // Parents: every path component after the host bridge that is an address,
        // excluding the device itself; nearest first.
        let mut parents: Vec<Bdf> = sysfs_path
            .components()
            .filter_map(|c| c.as_os_str().to_str()?.parse::<Bdf>().ok())
            .filter(|b| *b != bdf)
            .collect();
        parents.reverse();

        let is_pcie = has("max_link_speed") || has("current_link_speed");
        let link = if is_pcie {
            let width = |n: &str| -> Result<Option<u32>, PciError> {
                Ok(attr(n)?.and_then(|s| s.parse().ok()))
            };
            Some(Link {
                current_speed: attr("current_link_speed")?,
                current_width: width("current_link_width")?,
                max_speed: attr("max_link_speed")?,
                max_width: width("max_link_width")?,
            })
        } else {
            None
        };

        let header_type = header.as_ref().map(|h| h.header_type);
        let is_bridge = header_type == Some(1) || class >> 8 == 0x0604;

        let numa_node = attr("numa_node")?.and_then(|s| s.parse().ok());
        let reset_methods = attr("reset_method")?
            .map(|s| s.split_whitespace().map(String::from).collect::<Vec<_>>());
        let boot_vga = attr("boot_vga")?.map(|s| s == "1");
        let sriov = match attr("sriov_totalvfs")? {
            Some(t) => Some(Sriov {
                total_vfs: t.parse().unwrap_or(0),
                num_vfs: attr("sriov_numvfs")?
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            }),
            None => None,
        };
        let power_state = attr("power_state")?;
        let d3cold_allowed = attr("d3cold_allowed")?.map(|s| s == "1");

        let mut resizable_bars = Vec::new();
        for i in 0..6u8 {
            if let Some(s) = attr(&format!("resource{i}_resize"))? {
                resizable_bars.push(ResizableBar {
                    index: i,
                    sizes: resize_sizes(&s),
                });
            }
        }

        let bars = Self::read_bars(&handle, bdf, header.as_ref(), is_bridge)?;
        let vfio_dev = has("vfio-dev");
        let mut consumers: Vec<Bdf> = entries
            .iter()
            .filter_map(|n| n.strip_prefix("consumer:pci:")?.parse().ok())
            .collect();
        consumers.sort();

        Ok(PciDevice {
            bdf,
            vendor,
            device,
            subsystem_vendor,
            subsystem_device,
            class,
            revision,
            driver,
            driver_override,
            iommu_group,
            iommu_group_peers,
            parents,
            sysfs_path,
            is_pcie,
            is_bridge,
            multifunction: header.as_ref().is_some_and(|h| h.multifunction),
            link,
            numa_node,
            reset_methods,
            boot_vga,
            sriov,
            power_state,
            d3cold_allowed,
            resizable_bars,
            bars,
            vfio_dev,
            consumers,
        })
    }

    fn read_bars(
        dir: &SysDir,
        bdf: Bdf,
        header: Option<&ConfigHeader>,
        is_bridge: bool,
    ) -> Result<Vec<Bar>, PciError> {
        let text = match dir.read_bytes("resource") {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) if e.is_not_found() => String::new(),
            Err(e) => return Err(PciError::Sys { bdf, source: e }),
        };
        let lines = resource::parse(&text).map_err(|e| PciError::Malformed {
            bdf,
            file: "resource",
            reason: e.to_string(),
        })?;
        let nbars = if is_bridge { 2 } else { 6 };
        let mut bars: Vec<Bar> = lines
            .iter()
            .take(nbars)
            .enumerate()
            .filter_map(|(i, l)| Bar::from_line(i as u8, l))
            .collect();
        // BARs config space has but `resource` does not show: never assigned.
        if let Some(h) = header {
            for cb in &h.bars {
                if bars.iter().any(|b| b.index == cb.index) {
                    continue;
                }
                bars.push(Bar {
                    index: cb.index,
                    start: 0,
                    size: None,
                    kind: if cb.io {
                        BarKind::Io
                    } else if cb.is_64bit {
                        BarKind::Mem64
                    } else {
                        BarKind::Mem32
                    },
                    is_64bit: cb.is_64bit,
                    prefetchable: cb.prefetchable,
                    io: cb.io,
                    assigned: false,
                    above_4g: false,
                    flags: 0,
                });
            }
        }
        bars.sort_by_key(|b| b.index);
        Ok(bars)
    }

    /// A display controller (class 0x03).
    pub fn is_gpu(&self) -> bool {
        self.class >> 16 == 0x03
    }

    /// `vendor:device` as lspci -n prints it.
    pub fn id(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor, self.device)
    }

    /// BARs config space shows but the kernel never assigned.
    pub fn unassigned_bars(&self) -> impl Iterator<Item = &Bar> {
        self.bars.iter().filter(|b| !b.assigned)
    }

    /// True when the driver (if any) leaves the IOMMU group usable by VFIO: none,
    /// a vfio driver, pci-stub, or (for bridges) pcieport.
    pub fn is_vfio_safe(&self) -> bool {
        match self.driver.as_deref() {
            None => true,
            Some(d) => {
                is_vfio_driver(d)
                    || self.vfio_dev
                    || d == "pci-stub"
                    || (d == "pcieport" && self.is_bridge)
            }
        }
    }

    /// Sum of the sizes of 64-bit prefetchable BARs (what a root port's `pref64-reserve`
    /// must hold) and of 32-bit non-prefetchable memory BARs (`mem-reserve`).
    pub fn bar_totals(&self) -> (u64, u64) {
        let mut pref64 = 0;
        let mut mem32 = 0;
        for b in &self.bars {
            let size = b.size.unwrap_or(0);
            if b.is_64bit && b.prefetchable {
                pref64 = u64::saturating_add(pref64, size);
            } else if !b.io {
                mem32 = u64::saturating_add(mem32, size);
            }
        }
        (pref64, mem32)
    }
}
