//! The bind planner: pure logic over [`PciDevice`] values.
//!
//! The kernel lets a VFIO group be used only when every member is unbound or on a driver
//! that manages DMA itself (`driver_managed_dma`, Linux 5.19+): vfio-pci and its variants,
//! pci-stub, and pcieport for bridges. So per IOMMU group:
//!
//! - a **selected** device goes to the target driver unless it is already on a vfio driver
//!   (a driverless or pci-stub device is moved too: QEMU needs a vfio driver on the device
//!   it assigns);
//! - every other **endpoint** of the group that is on a host driver is a **companion**
//!   (the GPU's HDA function, its USB-C controller) and goes with it; driverless, vfio and
//!   pci-stub companions stay as they are;
//! - endpoints linked as `consumer:pci:` of a selected device (NVIDIA links the HDA function
//!   this way) are companions even in another group;
//! - **bridges** stay where they are (pcieport is DMA-managed; vfio-pci cannot drive them).

use std::collections::BTreeMap;

use serde::Serialize;
use vfioctl_common::pci::device::is_vfio_driver;
use vfioctl_common::{Bdf, PciDevice};

use super::error::BindError;

/// Why a device is in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Named by a selector.
    Selected,
    /// Another endpoint of a selected device's IOMMU group, or linked to it as a consumer.
    Companion,
    /// A PCI bridge in the group; it stays where it is.
    Bridge,
}

/// What happens to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Move to `to` (override, unbind, probe, verify).
    Bind {
        /// The target driver (vfio-pci or a vfio variant).
        to: String,
    },
    /// Leave as is.
    Keep,
}

/// One device of a group and what the plan does with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Member {
    /// The device's PCI address.
    pub bdf: Bdf,
    /// `vendor:device`, lower-case hex as lspci -n prints it.
    pub id: String,
    /// Class code, 6 lower-case hex digits (see `crate::output::pci_id`).
    #[serde(serialize_with = "crate::output::pci_id::class")]
    #[schemars(with = "crate::output::pci_id::ClassSchema")]
    pub class: u32,
    /// Why it is in the plan.
    pub role: Role,
    /// The driver it is on now (`None`: driverless).
    pub driver: Option<String>,
    /// Its `driver_override` now (`None`: unset).
    pub driver_override: Option<String>,
    /// `sriov_numvfs` (PFs only), recorded in the ledger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sriov_numvfs: Option<u32>,
    /// What happens to it.
    #[serde(flatten)]
    pub action: Action,
    /// Why this role and action, for people.
    pub reason: String,
}

impl Member {
    /// The driver it will be moved to, `None` when it is kept.
    pub fn target(&self) -> Option<&str> {
        match &self.action {
            Action::Bind { to } => Some(to),
            Action::Keep => None,
        }
    }
}

/// The plan for one IOMMU group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct GroupPlan {
    /// The IOMMU group number.
    pub group: u32,
    /// Its members: selected first, then companions, then bridges, by address.
    pub members: Vec<Member>,
}

/// The whole plan, one entry per IOMMU group involved, by group number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Plan {
    /// The groups, in group-number order.
    pub groups: Vec<GroupPlan>,
}

/// One sysfs write the binder makes, in order, for `--dry-run`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct SysWrite {
    /// The sysfs file.
    pub path: String,
    /// The value written to it.
    pub value: String,
}

impl std::fmt::Display for SysWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "echo {} > {}", self.value, self.path)
    }
}

impl Plan {
    /// Devices that will be moved, in plan order.
    pub fn to_bind(&self) -> impl Iterator<Item = &Member> {
        self.groups
            .iter()
            .flat_map(|g| g.members.iter())
            .filter(|m| m.target().is_some())
    }

    /// Nothing to move: every device is already where the plan wants it.
    pub fn is_noop(&self) -> bool {
        self.to_bind().next().is_none()
    }

    /// The target drivers the plan needs (for module loading).
    pub fn drivers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .to_bind()
            .filter_map(|m| m.target())
            .map(String::from)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Every sysfs write a bind makes, in order (the verification reads are not listed).
    pub fn writes(&self) -> Vec<SysWrite> {
        let mut out = Vec::new();
        for m in self.to_bind() {
            out.extend(bind_writes(
                m.bdf,
                m.driver.as_deref(),
                m.target().unwrap_or_default(),
            ));
        }
        out
    }
}

/// The three writes of the Kata guide for one device.
pub fn bind_writes(bdf: Bdf, current: Option<&str>, to: &str) -> Vec<SysWrite> {
    let mut out = vec![SysWrite {
        path: format!("/sys/bus/pci/devices/{bdf}/driver_override"),
        value: to.to_string(),
    }];
    if let Some(d) = current {
        out.push(SysWrite {
            path: format!("/sys/bus/pci/drivers/{d}/unbind"),
            value: bdf.to_string(),
        });
    }
    out.push(SysWrite {
        path: "/sys/bus/pci/drivers_probe".into(),
        value: bdf.to_string(),
    });
    out
}

fn on_vfio(d: &PciDevice) -> bool {
    d.vfio_dev || d.driver.as_deref().is_some_and(is_vfio_driver)
}

/// Build the plan. `selected` are the devices the user named; `known` holds every device
/// the planner may need to look at (all members of their groups and their `consumer:`
/// devices). `target` gives the driver for each device that has to move.
pub fn plan(
    selected: &[Bdf],
    known: &BTreeMap<Bdf, PciDevice>,
    target: &dyn Fn(&PciDevice) -> String,
    no_companions: bool,
) -> Result<Plan, BindError> {
    let mut groups: BTreeMap<u32, BTreeMap<Bdf, Member>> = BTreeMap::new();
    let get = |b: &Bdf| -> Result<&PciDevice, BindError> {
        known
            .get(b)
            .ok_or(BindError::Pci(vfioctl_common::PciError::NotFound {
                bdf: *b,
                path: b.sysfs_path(),
            }))
    };
    let member = |d: &PciDevice, role: Role, action: Action, reason: String| Member {
        bdf: d.bdf,
        id: d.id(),
        class: d.class,
        role,
        driver: d.driver.clone(),
        driver_override: d.driver_override.clone(),
        sriov_numvfs: d.sriov.as_ref().map(|s| s.num_vfs),
        action,
        reason,
    };

    for b in selected {
        let d = get(b)?;
        if d.is_bridge {
            return Err(BindError::Bridge {
                bdf: d.bdf,
                driver: d.driver.clone().unwrap_or_else(|| "no driver".into()),
            });
        }
        let group = d
            .iommu_group
            .ok_or(BindError::NoIommuGroup { bdf: d.bdf })?;
        if let Some(s) = &d.sriov {
            if s.num_vfs > 0 && !on_vfio(d) {
                return Err(BindError::SriovActive {
                    bdf: d.bdf,
                    num_vfs: s.num_vfs,
                });
            }
        }
        let (action, reason) = if on_vfio(d) {
            (
                Action::Keep,
                format!("already on {}", d.driver.as_deref().unwrap_or("vfio")),
            )
        } else {
            (
                Action::Bind { to: target(d) },
                "named on the command line".to_string(),
            )
        };
        groups
            .entry(group)
            .or_default()
            .insert(d.bdf, member(d, Role::Selected, action, reason));
    }

    // Companions: the rest of each group, then linked consumers.
    let mut linked: Vec<(Bdf, Bdf)> = Vec::new();
    for b in selected {
        let d = get(b)?;
        for c in &d.consumers {
            linked.push((*c, d.bdf));
        }
    }
    let group_ids: Vec<u32> = groups.keys().copied().collect();
    let mut extra: Vec<(u32, Bdf, String)> = Vec::new();
    for g in group_ids {
        let first = *groups[&g]
            .keys()
            .next()
            .expect("group has a selected member");
        let d = get(&first)?;
        for peer in &d.iommu_group_peers {
            extra.push((g, *peer, format!("same IOMMU group {g}")));
        }
    }
    for (c, of) in linked {
        let cd = get(&c)?;
        let g = cd.iommu_group.ok_or(BindError::NoIommuGroup { bdf: c })?;
        extra.push((g, c, format!("linked consumer of {of}")));
    }
    for (g, b, why) in extra {
        let d = get(&b)?;
        let members = groups.entry(g).or_default();
        if let Some(m) = members.get_mut(&b) {
            if m.role == Role::Companion && !m.reason.contains(&why) {
                m.reason = format!("{}, {why}", m.reason);
            }
            continue;
        }
        let m = if d.is_bridge {
            let reason = match d.driver.as_deref() {
                None => "bridge without a driver".to_string(),
                Some("pcieport") => "bridge on pcieport (DMA-managed, stays)".to_string(),
                Some(other) => {
                    format!("bridge on {other} (left alone: vfio-pci cannot drive bridges)")
                }
            };
            member(d, Role::Bridge, Action::Keep, reason)
        } else if d.driver.is_none() {
            member(
                d,
                Role::Companion,
                Action::Keep,
                format!("{why}; no driver"),
            )
        } else if on_vfio(d) {
            member(
                d,
                Role::Companion,
                Action::Keep,
                format!(
                    "{why}; already on {}",
                    d.driver.as_deref().unwrap_or("vfio")
                ),
            )
        } else if d.driver.as_deref() == Some("pci-stub") {
            member(
                d,
                Role::Companion,
                Action::Keep,
                format!("{why}; pci-stub is DMA-managed (driver_managed_dma)"),
            )
        } else {
            member(d, Role::Companion, Action::Bind { to: target(d) }, why)
        };
        members.insert(b, m);
    }

    let plan = Plan {
        groups: groups
            .into_iter()
            .map(|(group, m)| {
                let mut members: Vec<Member> = m.into_values().collect();
                // Selected first, then companions, then bridges; by address within a role.
                members.sort_by_key(|m| (m.role as u8, m.bdf));
                GroupPlan { group, members }
            })
            .collect(),
    };

    if no_companions {
        for g in &plan.groups {
            let needed: Vec<String> = g
                .members
                .iter()
                .filter(|m| m.role == Role::Companion && m.target().is_some())
                .map(|m| format!("{} ({})", m.bdf, m.driver.as_deref().unwrap_or("?")))
                .collect();
            if !needed.is_empty() {
                return Err(BindError::CompanionsRequired {
                    group: g.group,
                    companions: needed.join(", "),
                });
            }
        }
    }
    Ok(plan)
}

/// A short class name for tables.
pub fn class_name(class: u32) -> &'static str {
    match class >> 8 {
        0x0300 => "VGA",
        0x0302 => "3D",
        0x0380 => "display",
        0x0403 => "HD audio",
        0x0401 => "audio",
        0x0200 => "ethernet",
        0x0207 => "infiniband",
        0x0108 => "NVMe",
        0x0106 => "SATA",
        0x0c03 => "USB",
        0x0c80 => "serial bus",
        0x0604 => "PCI bridge",
        0x0600 => "host bridge",
        0x0680 => "bridge",
        _ => match class >> 16 {
            0x01 => "storage",
            0x02 => "network",
            0x03 => "display",
            0x04 => "multimedia",
            0x06 => "bridge",
            0x0c => "serial bus",
            _ => "device",
        },
    }
}
