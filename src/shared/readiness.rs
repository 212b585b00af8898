//! `vfioctl check` for shared GPUs: SR-IOV readiness of a physical function (VFs, ARI,
//! ACS isolation), NVIDIA Ampere+ per-VF vGPU types (`nvidia/creatable_vgpu_types`,
//! `nvidia/current_vgpu_type`, NVIDIA's vendor-specific VFIO layout), mdev types of a
//! pre-Ampere parent, and which VFIO backend a VM will get.

use vfioctl_common::{Bdf, PciDevice, SysRoot};

use super::backend::{BackendFacts, VfioBackend};
use super::sriov;
use crate::host::{Check, Status};

fn check(id: &'static str, status: Status, message: impl Into<String>) -> Check {
    Check::new(id, status, message)
}

/// One entry of `creatable_vgpu_types` (`ID    : vGPU Name` table).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct VgpuType {
    /// The type id (the `ID` column).
    pub id: u32,
    /// The type name (the `vGPU Name` column).
    pub name: String,
}

/// Parse NVIDIA's `creatable_vgpu_types`: a header line `ID    : vGPU Name`, then one
/// `<id> : <name>` line per type the VF can take now (empty when none can).
pub fn parse_creatable(text: &str) -> Vec<VgpuType> {
    text.lines()
        .filter_map(|l| {
            let (id, name) = l.split_once(':')?;
            Some(VgpuType {
                id: id.trim().parse().ok()?,
                name: name.trim().to_string(),
            })
        })
        .collect()
}

/// ACS capability (extended capability 0x000d) control bits that isolate a port:
/// source validation, request and completion redirect, upstream forwarding.
const ACS_ISOLATING: u16 = 0x0001 | 0x0004 | 0x0008 | 0x0010;

/// ACS control of a function from its extended config space: `None` when the extended
/// space is not readable (not root, or a 256-byte fixture), `Some(None)` when it has no
/// ACS capability, `Some(Some(ctrl))` otherwise.
pub fn acs_control(config: &[u8]) -> Option<Option<u16>> {
    if config.len() < 0x104 {
        return None;
    }
    let mut off = 0x100usize;
    for _ in 0..64 {
        if off + 8 > config.len() {
            break;
        }
        let hdr = u32::from_le_bytes([
            config[off],
            config[off + 1],
            config[off + 2],
            config[off + 3],
        ]);
        if hdr == 0 || hdr == 0xffff_ffff {
            break;
        }
        if hdr & 0xffff == 0x000d {
            return Some(Some(u16::from_le_bytes([config[off + 6], config[off + 7]])));
        }
        let next = (hdr >> 20) as usize & 0xffc;
        if next < 0x100 {
            break;
        }
        off = next;
    }
    Some(None)
}

/// The SR-IOV and vGPU checks for one device; empty when it is not SR-IOV capable and
/// no mdev parent.
pub fn device_checks(root: &SysRoot, d: &PciDevice) -> Vec<Check> {
    let mut v = Vec::new();
    if let Ok(st) = sriov::status(root, d.bdf) {
        v.extend(sriov_checks(root, d, &st));
    }
    let parent = d.bdf.to_string();
    if root.exists(format!("/sys/class/mdev_bus/{parent}")) {
        if let Ok(types) = super::mdev::types(root, Some(&parent)) {
            let avail: u32 = types
                .iter()
                .filter_map(|t| t.available_instances)
                .max()
                .unwrap_or(0);
            v.push(if types.is_empty() {
                check(
                    "mdev-types",
                    Status::Warn,
                    "mediated device parent with no types",
                )
                .hint("is the vGPU manager (nvidia-vgpu-mgr) running? check dmesg")
            } else {
                check(
                    "mdev-types",
                    Status::Pass,
                    format!(
                        "mdev parent: {} types ({}), up to {avail} instances of one type",
                        types.len(),
                        types
                            .iter()
                            .take(3)
                            .map(|t| t.name.clone().unwrap_or_else(|| t.type_id.clone()))
                            .collect::<Vec<_>>()
                            .join(", ")
                            + if types.len() > 3 { ", ..." } else { "" }
                    ),
                )
            });
        }
    }
    v.into_iter()
        .map(|mut c| {
            c.device = Some(d.bdf);
            c
        })
        .collect()
}

fn sriov_checks(root: &SysRoot, d: &PciDevice, st: &sriov::PfStatus) -> Vec<Check> {
    let bdf = d.bdf;
    let mut v = Vec::new();
    let autoprobe = match st.drivers_autoprobe {
        Some(true) => "; drivers_autoprobe=1 (vf create turns it off)",
        Some(false) => "; drivers_autoprobe=0",
        None => "",
    };
    v.push(match (&st.driver, st.num_vfs) {
        (None, 0) => check("sriov-ready", Status::Warn, format!("{} VFs offered, but the PF has no driver to enable them", st.total_vfs)).hint("bind the PF to its own driver (igb, nvidia with the vGPU manager) before `vfioctl vf create`"),
        (Some(drv), 0) => check(
            "sriov-ready",
            Status::Pass,
            format!("{} VFs offered, none enabled; PF on {drv}{autoprobe}", st.total_vfs),
        ),
        (_, n) => check(
            "sriov-ready",
            Status::Pass,
            format!(
                "{n} of {} VFs enabled{}{autoprobe}",
                st.total_vfs,
                if st.created_by_vfioctl { " by vfioctl" } else { "" }
            ),
        ),
    });
    // ARI: more than 8 functions (PF + VFs) behind a downstream port need ARI forwarding,
    // else the VFs beyond function 7 cannot be addressed.
    let needs_ari = st.total_vfs >= 8 && !d.parents.is_empty();
    let ari = root
        .read_attr_opt(format!("{}/ari_enabled", bdf.sysfs_path()))
        .ok()
        .flatten();
    v.push(match (ari.as_deref(), needs_ari) {
        (Some("1"), _) => check("sriov-ari", Status::Pass, "ARI forwarding enabled on the PF's bus"),
        (Some(_), true) => check(
                "sriov-ari",
                Status::Warn,
                format!("ARI forwarding off on the PF's bus: of {} VFs only those within functions 0-7 are addressable", st.total_vfs),
            ).hint("enable ARI / SR-IOV support in the firmware setup (PCIe ARI Support)"),
        (Some(_), false) => check("sriov-ari", Status::Pass, "ARI off, not needed (at most 8 functions)"),
        (None, _) => check("sriov-ari", Status::Skip, "no ari_enabled attribute"),
    });
    // ACS: with VFs present, their IOMMU groups tell; before, the ports' ACS control.
    let vf_groups: Vec<Option<u32>> = st.vfs.iter().map(|x| x.iommu_group).collect();
    v.push(if !st.vfs.is_empty() {
        let own = vf_groups.iter().all(|g| {
            g.is_some_and(|g| {
                vfioctl_common::pci::device::iommu_group_members(root, g).is_ok_and(|m| m.len() == 1)
            })
        });
        if own {
            check("sriov-acs", Status::Pass, format!("each of the {} VFs is alone in its IOMMU group", st.vfs.len()))
        } else {
            check("sriov-acs", Status::Warn, "VFs share IOMMU groups: a VM must take a whole group").hint("enable ACS in the firmware setup, or pass all VFs of a group to one VM")
        }
    } else {
        let mut missing = Vec::new();
        let mut unknown = false;
        // The ports above the PF decide; ACS on the PF itself is optional (its VFs are
        // separated from each other by the PF's own ACS only for peer-to-peer).
        for b in d.parents.iter().copied() {
            match root
                .read_bytes(format!("{}/config", b.sysfs_path()))
                .ok()
                .as_deref()
                .and_then(acs_control)
            {
                None => unknown = true,
                Some(Some(ctrl)) if ctrl & ACS_ISOLATING == ACS_ISOLATING => {}
                Some(_) => missing.push(b),
            }
        }
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(Bdf::to_string).collect();
            check("sriov-acs", Status::Warn, format!("no isolating ACS on {}: VFs may share an IOMMU group", names.join(", "))).hint("enable ACS in the firmware setup")
        } else if unknown {
            check("sriov-acs", Status::Skip, "extended config space not readable (run as root); VF groups are known once VFs exist")
        } else {
            check("sriov-acs", Status::Pass, "isolating ACS on every port above the PF")
        }
    });
    // NVIDIA Ampere+ vGPU: per-VF type files (vendor-specific VFIO framework).
    if d.vendor == 0x10de && !st.vfs.is_empty() {
        let mut with_files = 0;
        let mut assigned = 0;
        let mut first: Option<(Bdf, Vec<VgpuType>)> = None;
        for vf in &st.vfs {
            let dir = format!("{}/nvidia", vf.bdf.sysfs_path());
            if let Ok(Some(t)) = root
                .read_string(format!("{dir}/creatable_vgpu_types"))
                .map(Some)
                .or_else(|e| if e.is_not_found() { Ok(None) } else { Err(e) })
            {
                with_files += 1;
                if first.is_none() {
                    first = Some((vf.bdf, parse_creatable(&t)));
                }
            }
            if vf.vgpu_type.is_some_and(|t| t != 0) {
                assigned += 1;
            }
        }
        v.push(match first {
            None => check("vgpu-types", Status::Warn, "NVIDIA PF with VFs but no nvidia/creatable_vgpu_types on them: no vGPU manager").hint("install and start NVIDIA's vGPU manager (nvidia-vgpu-mgr); it needs a vGPU-licensed host driver"),
            Some((vf, types)) => check(
                "vgpu-types",
                Status::Pass,
                format!(
                    "{with_files} VFs carry vGPU type files; {vf} can take {} types ({}); {assigned} VFs have a type set",
                    types.len(),
                    types.iter().take(3).map(|t| format!("{} {}", t.id, t.name)).collect::<Vec<_>>().join(", ")
                        + if types.len() > 3 { ", ..." } else { "" }
                ),
            ),
        });
    }
    v
}

/// The host check that says which VFIO backend a VM will get.
pub fn backend_check(f: &BackendFacts) -> Check {
    let kernel = if f.kernel_iommufd() {
        "kernel: /dev/iommu and VFIO device cdevs"
    } else if f.dev_iommu {
        "kernel: /dev/iommu but no VFIO device cdevs"
    } else {
        "kernel: no /dev/iommu"
    };
    match f.qemu_iommufd {
        None => check(
            "vfio-backend",
            Status::Pass,
            format!(
                "{kernel}; QEMU not probed (--qemu PATH): vm up --vfio-backend auto uses {}",
                if f.kernel_iommufd() {
                    "iommufd if QEMU has it, else groups"
                } else {
                    "groups"
                }
            ),
        ),
        Some(q) => {
            let b =
                super::backend::choose(super::BackendChoice::Auto, f).unwrap_or(VfioBackend::Group);
            check(
                "vfio-backend",
                Status::Pass,
                format!(
                    "{kernel}; QEMU {} the iommufd object: vm up uses {b}",
                    if q { "has" } else { "lacks" }
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creatable_types_parse_nvidias_table() {
        let t = "ID    : vGPU Name\n557   : NVIDIA A100-1-5C\n558   : NVIDIA A100-2-10C\n";
        assert_eq!(
            parse_creatable(t),
            vec![
                VgpuType {
                    id: 557,
                    name: "NVIDIA A100-1-5C".into()
                },
                VgpuType {
                    id: 558,
                    name: "NVIDIA A100-2-10C".into()
                },
            ]
        );
        assert!(parse_creatable("ID    : vGPU Name\n").is_empty());
    }

    #[test]
    fn acs_walks_the_extended_list() {
        let mut c = vec![0u8; 4096];
        // AER at 0x100 -> ACS at 0x148, control = 0x001d.
        c[0x100..0x104].copy_from_slice(&(0x0001u32 | (1 << 16) | (0x148 << 20)).to_le_bytes());
        c[0x148..0x14c].copy_from_slice(&(0x000du32 | (1 << 16)).to_le_bytes());
        c[0x14e..0x150].copy_from_slice(&0x001du16.to_le_bytes());
        assert_eq!(acs_control(&c), Some(Some(0x001d)));
        assert_eq!(acs_control(&c[..256]), None);
        assert_eq!(acs_control(&vec![0u8; 4096]), Some(None));
    }
}
