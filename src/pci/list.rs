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
    pub index: u8,
    pub start: Option<String>,
    pub size: Option<u64>,
    pub size_human: Option<String>,
    pub is_64bit: bool,
    pub prefetchable: bool,
    pub io: bool,
    pub assigned: bool,
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct LinkEntry {
    pub current_speed: Option<String>,
    pub current_width: Option<u32>,
    pub max_speed: Option<String>,
    pub max_width: Option<u32>,
    pub degraded: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct SriovEntry {
    pub total_vfs: u32,
    pub num_vfs: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ResizableEntry {
    pub index: u8,
    pub sizes: Vec<String>,
}

/// One device in `vfioctl devices --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct DeviceEntry {
    pub bdf: Bdf,
    #[schemars(with = "crate::output::pci_id::Id16Schema")]
    pub vendor: String,
    #[schemars(with = "crate::output::pci_id::Id16Schema")]
    pub device: String,
    pub vendor_name: Option<String>,
    pub device_name: Option<String>,
    #[schemars(with = "crate::output::pci_id::ClassSchema")]
    pub class: String,
    pub class_name: Option<String>,
    #[schemars(with = "Option<crate::output::pci_id::Id16Schema>")]
    pub subsystem_vendor: Option<String>,
    #[schemars(with = "Option<crate::output::pci_id::Id16Schema>")]
    pub subsystem_device: Option<String>,
    pub revision: Option<String>,
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    pub iommu_group: Option<u32>,
    pub iommu_group_peers: Vec<Bdf>,
    pub parents: Vec<Bdf>,
    pub is_bridge: bool,
    pub is_pcie: bool,
    pub numa_node: Option<i32>,
    pub link: Option<LinkEntry>,
    pub reset_methods: Option<Vec<String>>,
    pub boot_vga: Option<bool>,
    pub power_state: Option<String>,
    pub d3cold_allowed: Option<bool>,
    pub sriov: Option<SriovEntry>,
    pub resizable_bars: Vec<ResizableEntry>,
    pub bars: Vec<BarEntry>,
}

impl DeviceEntry {
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
