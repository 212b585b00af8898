//! `vfioctl devices`: the listing as data (for `--json`) and as an lspci-like table.
//!
//! JSON conventions (stable): ids are lower-case hex strings without `0x` as lspci -n
//! prints them (`"vendor": "10de"`, `"class": "030200"`); addresses are `0x`-prefixed hex
//! strings (`"start": "0x222800000000"`, `null` when unassigned) because 64-bit addresses
//! do not survive JSON numbers in every reader; sizes are integers in bytes plus a
//! `size_human` string (`"32G"`).

use std::io::{self, Write};

use serde::Serialize;
use vfioctl_common::pci::{Bar, PciDevice};
use vfioctl_common::{units, Bdf};

use super::names::PciIds;
use crate::output::Table;

/// One BAR in the JSON listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct BarEntry {
    /// BAR number (0-5).
    pub index: u8,
    /// Start address, `0x`-prefixed hex; `null` when unassigned.
    pub start: Option<String>,
    /// Size in bytes; `null` when it cannot be read (never assigned).
    pub size: Option<u64>,
    /// The size for people (`32G`).
    pub size_human: Option<String>,
    /// A 64-bit memory BAR.
    pub is_64bit: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// An I/O BAR.
    pub io: bool,
    /// The kernel assigned an address range to this BAR.
    pub assigned: bool,
    /// Assigned at or above 4 GiB.
    pub above_4g: bool,
    /// `BAR1 32G 64b pref @0x222800000000`.
    pub summary: String,
}

impl From<&Bar> for BarEntry {
    fn from(b: &Bar) -> Self {
        Self {
            index: b.index,
            start: b.assigned.then(|| format!("{:#x}", b.start)),
            size: b.size,
            size_human: b.size.map(units::short),
            is_64bit: b.is_64bit,
            prefetchable: b.prefetchable,
            io: b.io,
            assigned: b.assigned,
            above_4g: b.above_4g,
            summary: b.summary(),
        }
    }
}

/// The PCIe link of a device (`vfioctl devices --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct LinkEntry {
    /// `current_link_speed` (`16.0 GT/s PCIe`).
    pub current_speed: Option<String>,
    /// `current_link_width`, in lanes.
    pub current_width: Option<u32>,
    /// `max_link_speed`.
    pub max_speed: Option<String>,
    /// `max_link_width`, in lanes.
    pub max_width: Option<u32>,
    /// The link trained below what both ends can do (a GPU at x8 or 2.5 GT/s).
    pub degraded: bool,
}

/// SR-IOV state of a physical function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct SriovEntry {
    /// `sriov_totalvfs`: the most VFs the device offers.
    pub total_vfs: u32,
    /// `sriov_numvfs`: the VFs enabled now.
    pub num_vfs: u32,
}

/// One BAR the Resizable BAR capability covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ResizableEntry {
    /// The BAR number.
    pub index: u8,
    /// The sizes it supports, smallest first, for people (`256M`, `32G`).
    pub sizes: Vec<String>,
}

/// One device in `vfioctl devices --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct DeviceEntry {
    /// The device's address.
    pub bdf: Bdf,
    /// Vendor id.
    #[schemars(with = "crate::output::pci_id::Id16Schema")]
    pub vendor: String,
    /// Device id.
    #[schemars(with = "crate::output::pci_id::Id16Schema")]
    pub device: String,
    /// The vendor's name from pci.ids, when known.
    pub vendor_name: Option<String>,
    /// The device's name from pci.ids, when known.
    pub device_name: Option<String>,
    /// 24-bit class code, 6 hex digits (`030200` = 3D controller).
    #[schemars(with = "crate::output::pci_id::ClassSchema")]
    pub class: String,
    /// The class's name from pci.ids, when known.
    pub class_name: Option<String>,
    /// Subsystem vendor id, when the device has one.
    #[schemars(with = "Option<crate::output::pci_id::Id16Schema>")]
    pub subsystem_vendor: Option<String>,
    /// Subsystem device id, when the device has one.
    #[schemars(with = "Option<crate::output::pci_id::Id16Schema>")]
    pub subsystem_device: Option<String>,
    /// Revision id, 2 hex digits.
    pub revision: Option<String>,
    /// The bound driver (`driver` link), `null` when none.
    pub driver: Option<String>,
    /// `driver_override`, `null` when unset.
    pub driver_override: Option<String>,
    /// The IOMMU group, `null` without an IOMMU.
    pub iommu_group: Option<u32>,
    /// Other members of the IOMMU group (this device excluded), sorted.
    pub iommu_group_peers: Vec<Bdf>,
    /// Bridges above this device, nearest first (root port last).
    pub parents: Vec<Bdf>,
    /// A PCI-to-PCI bridge (header type 1), root ports included.
    pub is_bridge: bool,
    /// A PCI Express function (it has the PCIe capability).
    pub is_pcie: bool,
    /// `numa_node` as the kernel shows it (`-1`: no node), `null` when absent.
    pub numa_node: Option<i32>,
    /// The PCIe link, for PCIe functions whose sysfs shows it.
    pub link: Option<LinkEntry>,
    /// Enabled reset methods in order; `null` when the device has none (no `reset_method`).
    pub reset_methods: Option<Vec<String>>,
    /// `boot_vga`: the firmware's console GPU.
    pub boot_vga: Option<bool>,
    /// `D0`, `D3hot`, `D3cold`, ...
    pub power_state: Option<String>,
    /// `d3cold_allowed`.
    pub d3cold_allowed: Option<bool>,
    /// SR-IOV state, for physical functions.
    pub sriov: Option<SriovEntry>,
    /// BARs the Resizable BAR capability covers.
    pub resizable_bars: Vec<ResizableEntry>,
    /// BARs 0-5: assigned ones, plus BARs that config space shows but that were never assigned.
    pub bars: Vec<BarEntry>,
}

impl DeviceEntry {
    /// The entry for `d`, with names from `ids`.
    pub fn new(d: &PciDevice, ids: &PciIds) -> Self {
        Self {
            bdf: d.bdf,
            vendor: format!("{:04x}", d.vendor),
            device: format!("{:04x}", d.device),
            vendor_name: ids.vendor_name(d.vendor).map(String::from),
            device_name: ids.device_name(d.vendor, d.device).map(String::from),
            class: format!("{:06x}", d.class),
            class_name: ids.class_name(d.class).map(String::from),
            subsystem_vendor: d.subsystem_vendor.map(|v| format!("{v:04x}")),
            subsystem_device: d.subsystem_device.map(|v| format!("{v:04x}")),
            revision: d.revision.map(|r| format!("{r:02x}")),
            driver: d.driver.clone(),
            driver_override: d.driver_override.clone(),
            iommu_group: d.iommu_group,
            iommu_group_peers: d.iommu_group_peers.clone(),
            parents: d.parents.clone(),
            is_bridge: d.is_bridge,
            is_pcie: d.is_pcie,
            numa_node: d.numa_node,
            link: d.link.as_ref().map(|l| LinkEntry {
                current_speed: l.current_speed.clone(),
                current_width: l.current_width,
                max_speed: l.max_speed.clone(),
                max_width: l.max_width,
                degraded: l.degraded(),
            }),
            reset_methods: d.reset_methods.clone(),
            boot_vga: d.boot_vga,
            power_state: d.power_state.clone(),
            d3cold_allowed: d.d3cold_allowed,
            sriov: d.sriov.as_ref().map(|s| SriovEntry {
                total_vfs: s.total_vfs,
                num_vfs: s.num_vfs,
            }),
            resizable_bars: d
                .resizable_bars
                .iter()
                .map(|r| ResizableEntry {
                    index: r.index,
                    sizes: r.sizes.iter().map(|s| units::short(*s)).collect(),
                })
                .collect(),
            bars: d.bars.iter().map(BarEntry::from).collect(),
        }
    }
}

/// Names for `devs`, loading only their vendors from pci.ids.
pub fn names_for(root: &vfioctl_common::SysRoot, devs: &[PciDevice]) -> PciIds {
    PciIds::load(root, devs.iter().map(|d| d.vendor))
}

/// The listing for people: one row per device.
pub fn write_table(out: &mut dyn Write, devs: &[PciDevice], ids: &PciIds) -> io::Result<()> {
    let mut t = Table::new(&["BDF", "ID", "CLASS", "DEVICE", "DRIVER", "GROUP", "BARS"]);
    for d in devs {
        let bars: Vec<String> = d.bars.iter().map(Bar::summary).collect();
        t.row(vec![
            d.bdf.to_string(),
            d.id(),
            ids.class_label(d.class),
            format!(
                "{} {}",
                ids.vendor_label(d.vendor),
                ids.device_label(d.vendor, d.device)
            ),
            d.driver.clone().unwrap_or_else(|| "-".into()),
            d.iommu_group
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into()),
            if bars.is_empty() {
                "-".into()
            } else {
                bars.join(", ")
            },
        ]);
    }
    if t.is_empty() {
        return writeln!(out, "no PCI devices matched");
    }
    t.write(out)
}
