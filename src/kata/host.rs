//! What Kata will plug for the selected devices: their IOMMU groups, which functions take
//! a PCIe port, and whether the groups can be handed over at all.
//!
//! Kata passes a whole IOMMU group (`GetAllVFIODevicesFromIOMMUGroup`), skipping host
//! bridges (0x0600) and PCI-PCI bridges (0x0604) (`checkIgnorePCIClass`), and gives
//! **every PCIe function its own root port** (bus `rp<N>`, `PCIeDevicesPerPort`).
//! [`select`] does the I/O; [`Selection::from_devices`] is the pure check.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use vfioctl_common::pci::enumerate;
use vfioctl_common::{Bdf, PciDevice, Selector, SysRoot};

use super::error::{Holder, KataError};
use crate::vm::ports::DeviceBars;

/// A BAR this large (or larger) does not fit below 4 GiB: the guest must map it in
/// 64-bit MMIO space, which is what "large PCI bar devices" in Kata's docs and issues
/// (#835, #1704, runtime#2432) are about.
pub const LARGE_BAR: u64 = 4 << 30;

/// One function of a selected group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Function {
    /// The function's PCI address.
    pub bdf: Bdf,
    /// `vendor:device`, lower-case hex as lspci -n prints it.
    pub id: String,
    /// 4 lower-case hex digits (see `crate::output::pci_id`).
    #[serde(serialize_with = "crate::output::pci_id::id16")]
    #[schemars(with = "crate::output::pci_id::Id16Schema")]
    pub vendor: u16,
    /// 6 lower-case hex digits.
    #[serde(serialize_with = "crate::output::pci_id::class")]
    #[schemars(with = "crate::output::pci_id::ClassSchema")]
    pub class: u32,
    /// The host driver it is bound to (None: no driver).
    pub driver: Option<String>,
    /// Named with --gpu (or picked by default), not just a group companion.
    pub selected: bool,
    /// A PCI Express function (has the PCIe capability); conventional PCI otherwise.
    pub pcie: bool,
    /// Host or PCI-PCI bridge: Kata skips it, it takes no port.
    pub bridge: bool,
    /// Sum of the 64-bit prefetchable BARs.
    pub pref64_bytes: u64,
    /// The largest BAR.
    pub largest_bar: u64,
    /// The BARs as the VM's root-port sizing sees them.
    pub bars: DeviceBars,
    /// The upstream port of the host PCIe switch this function sits behind (its parent
    /// is a switch downstream port, whose parent is the upstream port), if any.
    pub switch: Option<Bdf>,
}

impl Function {
    fn from_device(d: &PciDevice, selected: bool) -> Self {
        let (pref64, _) = d.bar_totals();
        Function {
            bdf: d.bdf,
            id: d.id(),
            vendor: d.vendor,
            class: d.class,
            driver: d.driver.clone(),
            selected,
            pcie: d.is_pcie,
            bridge: is_skipped_bridge(d),
            pref64_bytes: pref64,
            largest_bar: d.bars.iter().filter_map(|b| b.size).max().unwrap_or(0),
            bars: DeviceBars::from_pci(d),
            switch: host_switch(d),
        }
    }

    /// A display controller (PCI class 0x03).
    pub fn is_gpu(&self) -> bool {
        self.class >> 16 == 0x03
    }

    /// Takes its own PCIe port in the VM.
    pub fn takes_port(&self) -> bool {
        self.pcie && !self.bridge
    }

    /// Its largest BAR is at least [`LARGE_BAR`] (4 GiB).
    pub fn large_bar(&self) -> bool {
        self.largest_bar >= LARGE_BAR
    }
}

/// The switch upstream port above `d`: `parents` is nearest first with the root port
/// last, so a function behind a switch has [downstream, upstream, ..., root port].
fn host_switch(d: &PciDevice) -> Option<Bdf> {
    (d.parents.len() >= 3).then(|| d.parents[1])
}

/// Kata's `checkIgnorePCIClass`: host bridges and PCI-PCI bridges stay on the host.
fn is_skipped_bridge(d: &PciDevice) -> bool {
    matches!(d.class >> 8, 0x0600 | 0x0604) || d.is_bridge
}

/// One IOMMU group Kata will pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Group {
    /// The IOMMU group number (`/dev/vfio/<number>`).
    pub number: u32,
    /// Every function of the group, bridges included, in address order.
    pub functions: Vec<Function>,
}

/// The selected devices and their groups, checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Selection {
    /// The IOMMU groups of the selected devices, by number.
    pub groups: Vec<Group>,
    /// Functions of the groups still on a host driver: the file does not depend on the
    /// driver (BARs and groups do), so it is written, and these must be bound to
    /// vfio-pci before a container starts.
    pub unbound: Vec<Holder>,
}

/// Functions that share one host PCIe switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct SharedSwitch {
    /// The switch's upstream port on the host.
    pub upstream: Bdf,
    /// The port-taking functions of the selection behind it (two or more).
    pub functions: Vec<Bdf>,
}

impl Selection {
    /// Check the groups of `selected` among `devices` (every device of those groups must
    /// be in `devices`). A selected device or non-bridge companion on a host driver is
    /// listed in `unbound` (a warning: `vfioctl bind` it before starting containers); a
    /// bridge on a driver other than pcieport (or none) makes the group not viable.
    pub fn from_devices(devices: &[PciDevice], selected: &[Bdf]) -> Result<Self, KataError> {
        let by_bdf: BTreeMap<Bdf, &PciDevice> = devices.iter().map(|d| (d.bdf, d)).collect();
        let mut groups: BTreeMap<u32, Vec<Function>> = BTreeMap::new();
        let mut unbound = Vec::new();
        let chosen: BTreeSet<Bdf> = selected.iter().copied().collect();
        for &bdf in &chosen {
            let d = by_bdf.get(&bdf).ok_or(KataError::NoMatch {
                selector: bdf.to_string(),
            })?;
            let group = d.iommu_group.ok_or(KataError::NoIommuGroup { bdf })?;
            if groups.contains_key(&group) {
                continue;
            }
            let mut members = vec![bdf];
            members.extend(d.iommu_group_peers.iter().copied());
            members.sort();
            let mut functions = Vec::new();
            let mut bad = Vec::new();
            for m in members {
                let Some(md) = by_bdf.get(&m) else {
                    continue;
                };
                let f = Function::from_device(md, chosen.contains(&m));
                if f.bridge {
                    if !md.is_vfio_safe() {
                        bad.push(Holder {
                            bdf: m,
                            driver: md.driver.clone(),
                        });
                    }
                } else {
                    if let Some(b) = md.unassigned_bars().next() {
                        return Err(KataError::UnassignedBar {
                            bdf: m,
                            bar: b.index,
                        });
                    }
                    if !md.driver.as_deref().is_some_and(is_vfio_pci) {
                        unbound.push(Holder {
                            bdf: m,
                            driver: md.driver.clone(),
                        });
                    }
                }
                functions.push(f);
            }
            if !bad.is_empty() {
                return Err(KataError::GroupNotViable {
                    group,
                    bdf,
                    others: bad,
                });
            }
            groups.insert(group, functions);
        }
        Ok(Selection {
            groups: groups
                .into_iter()
                .map(|(number, functions)| Group { number, functions })
                .collect(),
            unbound,
        })
    }

    /// Host PCIe switches under which two or more port-taking functions of the selection
    /// sit (GPUs that talk peer-to-peer through the switch).
    pub fn shared_switches(&self) -> Vec<SharedSwitch> {
        let mut by: BTreeMap<Bdf, Vec<Bdf>> = BTreeMap::new();
        for f in self.port_functions() {
            if let Some(up) = f.switch {
                by.entry(up).or_default().push(f.bdf);
            }
        }
        by.into_iter()
            .filter(|(_, v)| v.len() >= 2)
            .map(|(upstream, functions)| SharedSwitch {
                upstream,
                functions,
            })
            .collect()
    }

    /// The `vfioctl bind` commands for the functions still on a host driver, one per
    /// IOMMU group (binding one function binds its whole group).
    pub fn bind_commands(&self) -> Vec<String> {
        self.groups
            .iter()
            .filter(|g| {
                g.functions
                    .iter()
                    .any(|f| self.unbound.iter().any(|h| h.bdf == f.bdf))
            })
            .filter_map(|g| {
                let f = g
                    .functions
                    .iter()
                    .find(|f| f.selected && !f.bridge)
                    .or_else(|| g.functions.iter().find(|f| !f.bridge))?;
                Some(format!("sudo vfioctl bind {}", f.bdf))
            })
            .collect()
    }

    /// Every function of every group, in group order.
    pub fn functions(&self) -> impl Iterator<Item = &Function> {
        self.groups.iter().flat_map(|g| g.functions.iter())
    }

    /// The functions that take a PCIe port, in group order.
    pub fn port_functions(&self) -> Vec<&Function> {
        self.functions().filter(|f| f.takes_port()).collect()
    }

    /// How many PCIe ports the VM needs: one per function that [takes a port](Function::takes_port).
    pub fn ports_needed(&self) -> u32 {
        self.port_functions().len() as u32
    }

    /// Conventional PCI functions: Kata puts them behind a pci-bridge, not on a port.
    pub fn non_pcie(&self) -> Vec<&Function> {
        self.functions().filter(|f| !f.pcie && !f.bridge).collect()
    }

    /// The IOMMU group numbers, in order.
    pub fn group_numbers(&self) -> Vec<u32> {
        self.groups.iter().map(|g| g.number).collect()
    }

    /// The functions with a [large BAR](Function::large_bar).
    pub fn large_bar_functions(&self) -> Vec<&Function> {
        self.functions().filter(|f| f.large_bar()).collect()
    }

    /// GPUs with a large BAR: what Kata's NVIDIA template sizes memory and timeouts for.
    pub fn large_gpus(&self) -> Vec<&Function> {
        self.functions()
            .filter(|f| f.is_gpu() && f.large_bar())
            .collect()
    }

    /// Any NVIDIA (vendor 0x10de) GPU among the functions.
    pub fn has_nvidia_gpu(&self) -> bool {
        self.functions().any(|f| f.is_gpu() && f.vendor == 0x10de)
    }

    /// `0000:01:00.0, 0000:01:00.1` for messages.
    pub fn describe_ports(&self) -> String {
        self.port_functions()
            .iter()
            .map(|f| f.bdf.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn is_vfio_pci(driver: &str) -> bool {
    vfioctl_common::pci::device::is_vfio_driver(driver)
}

/// Read the devices named by `selectors` (default: every GPU bound to vfio-pci) and
/// their group companions through `root`, then check them.
pub fn select(root: &SysRoot, selectors: &[Selector]) -> Result<Selection, KataError> {
    let all = enumerate(root)?;
    let mut devices = BTreeMap::new();
    for bdf in &all {
        let mut d = PciDevice::read(root, *bdf)?;
        // Kata's IsPCIeDevice(): the config space is larger than 256 bytes (the extended
        // space only PCIe has). The file's size tells it without reading it (reads past
        // 64 bytes need root). Link attributes (the model's test) count too, for trees
        // captured with a truncated config file.
        if let Ok(m) = std::fs::metadata(root.path(format!("{}/config", bdf.sysfs_path()))) {
            d.is_pcie |= m.len() > 256;
        }
        devices.insert(*bdf, d);
    }
    let mut chosen = BTreeSet::new();
    if selectors.is_empty() {
        // Without --gpu: the GPUs already on vfio-pci (what the user prepared).
        let gpus: Vec<&PciDevice> = devices.values().filter(|d| d.is_gpu()).collect();
        for d in &gpus {
            if d.driver.as_deref().is_some_and(is_vfio_pci) {
                chosen.insert(d.bdf);
            }
        }
        if chosen.is_empty() {
            return Err(KataError::NoDevices {
                gpus: gpus
                    .iter()
                    .map(|d| Holder {
                        bdf: d.bdf,
                        driver: d.driver.clone(),
                    })
                    .collect(),
            });
        }
    } else {
        for s in selectors {
            let hits: Vec<Bdf> = devices
                .values()
                .filter(|d| s.matches(d.bdf, d.vendor, d.device, d.class))
                .map(|d| d.bdf)
                .collect();
            if hits.is_empty() {
                return Err(KataError::NoMatch {
                    selector: s.to_string(),
                });
            }
            chosen.extend(hits);
        }
    }
    let list: Vec<PciDevice> = devices.into_values().collect();
    let chosen: Vec<Bdf> = chosen.into_iter().collect();
    Selection::from_devices(&list, &chosen)
}
