//! The VFIO backend a VM gets its devices through: the legacy group/container API
//! (`/dev/vfio/vfio` + `/dev/vfio/<group>`) or iommufd (`/dev/iommu` + the per-device cdev
//! `/dev/vfio/devices/vfioN`, kernel 6.6+ with `CONFIG_IOMMUFD` and
//! `CONFIG_VFIO_DEVICE_CDEV`, QEMU 9+ with `-object iommufd`).
//!
//! [`BackendFacts`] is what the host kernel and the QEMU binary offer; [`choose`] is the
//! pure decision (`auto`: iommufd when both have it).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use vfioctl_common::{Bdf, SysRoot};

use super::error::SharedError;

/// The backend in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VfioBackend {
    /// `/dev/vfio/<group>` through a VFIO container.
    Group,
    /// `/dev/iommu` plus `/dev/vfio/devices/vfioN`.
    Iommufd,
}

impl fmt::Display for VfioBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VfioBackend::Group => "group",
            VfioBackend::Iommufd => "iommufd",
        })
    }
}

/// What the user asked for (`--vfio-backend`, profile `vfio_backend`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// iommufd when the kernel and QEMU both have it, else groups.
    #[default]
    Auto,
    /// Legacy VFIO groups (`/dev/vfio/<group>`), always.
    Group,
    /// iommufd with VFIO device cdevs; an error when the kernel or QEMU lacks it.
    Iommufd,
}

/// A `--vfio-backend` value that is none of auto, group, iommufd.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: expected auto, group or iommufd")]
pub struct UnknownBackend {
    /// The value as given.
    pub input: String,
}

impl FromStr for BackendChoice {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "group" => Ok(BackendChoice::Group),
            "iommufd" => Ok(BackendChoice::Iommufd),
            _ => Err(UnknownBackend { input: s.into() }),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Group => "group",
            BackendChoice::Iommufd => "iommufd",
        })
    }
}

/// What the host kernel and QEMU offer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct BackendFacts {
    /// `/dev/iommu` exists (`CONFIG_IOMMUFD`, module iommufd loaded).
    pub dev_iommu: bool,
    /// The VFIO device cdev class exists (`/sys/class/vfio-dev`: `CONFIG_VFIO_DEVICE_CDEV`)
    /// or `/dev/vfio/devices/` holds nodes.
    pub vfio_cdev: bool,
    /// `/dev/vfio/vfio` exists (the legacy container API).
    pub vfio_container: bool,
    /// QEMU lists the `iommufd` object; `None` when no QEMU was probed.
    pub qemu_iommufd: Option<bool>,
}

impl BackendFacts {
    /// Read the kernel side under `root`; probe `qemu` when given.
    pub fn gather(root: &SysRoot, qemu: Option<&Path>) -> BackendFacts {
        BackendFacts {
            dev_iommu: root.exists_nofollow("/dev/iommu"),
            // The class exists on every 6.x kernel; the cdevs only with
            // CONFIG_VFIO_DEVICE_CDEV, which gives the devices a number (`dev`) and the
            // /dev/vfio/devices directory.
            vfio_cdev: root.is_dir("/dev/vfio/devices")
                || root.list_opt("/sys/class/vfio-dev").is_ok_and(|v| {
                    v.iter()
                        .any(|n| root.exists(format!("/sys/class/vfio-dev/{n}/dev")))
                }),
            vfio_container: root.exists_nofollow("/dev/vfio/vfio"),
            qemu_iommufd: qemu.map(qemu_has_iommufd),
        }
    }

    /// The kernel offers iommufd for VFIO devices.
    pub fn kernel_iommufd(&self) -> bool {
        self.dev_iommu && self.vfio_cdev
    }

    /// What is missing for iommufd, in words; `None` when nothing is.
    pub fn iommufd_missing(&self) -> Option<String> {
        let mut m = Vec::new();
        if !self.dev_iommu {
            m.push("no /dev/iommu (kernel without CONFIG_IOMMUFD, or module iommufd not loaded)");
        }
        if !self.vfio_cdev {
            m.push("no VFIO device cdevs (/sys/class/vfio-dev: kernel without CONFIG_VFIO_DEVICE_CDEV, 6.6+)");
        }
        match self.qemu_iommufd {
            Some(false) => m.push("QEMU has no iommufd object (QEMU 9 or later has it)"),
            None => m.push("QEMU not probed"),
            Some(true) => {}
        }
        (!m.is_empty()).then(|| m.join("; "))
    }
}

/// `qemu -object help` lists `iommufd` (QEMU built with it, 8.2+; vfioctl asks 9+ of users
/// because hotplug with iommufd settled there). A QEMU that cannot run says no.
pub fn qemu_has_iommufd(qemu: &Path) -> bool {
    std::process::Command::new(qemu)
        .args(["-object", "help"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "iommufd")
        })
}

/// The backend for `choice` given `facts`: `auto` takes iommufd only when the kernel and
/// QEMU both have it; an explicit `iommufd` that cannot work is an error naming what is
/// missing.
pub fn choose(choice: BackendChoice, facts: &BackendFacts) -> Result<VfioBackend, SharedError> {
    match choice {
        BackendChoice::Group => Ok(VfioBackend::Group),
        BackendChoice::Auto => Ok(
            if facts.kernel_iommufd() && facts.qemu_iommufd == Some(true) {
                VfioBackend::Iommufd
            } else {
                VfioBackend::Group
            },
        ),
        BackendChoice::Iommufd => match facts.iommufd_missing() {
            None => Ok(VfioBackend::Iommufd),
            Some(missing) => Err(SharedError::IommufdUnavailable { missing }),
        },
    }
}

/// The device node a VM opens for `bdf` under `backend`: `/dev/vfio/<group>` or
/// `/dev/vfio/devices/vfioN` (from the device's `vfio-dev/vfioN`). `None` when the
/// device is not on a vfio driver (no group, no cdev).
pub fn device_node(root: &SysRoot, bdf: Bdf, backend: VfioBackend) -> Option<String> {
    node_of(root, &bdf.sysfs_path(), backend)
}

/// [`device_node`] for any VFIO device directory (a PCI function or an mdev).
pub fn node_of(root: &SysRoot, dir: &str, backend: VfioBackend) -> Option<String> {
    match backend {
        VfioBackend::Group => {
            let g = root.link_name(format!("{dir}/iommu_group")).ok()??;
            Some(format!("/dev/vfio/{g}"))
        }
        VfioBackend::Iommufd => {
            let n = root
                .list_opt(format!("{dir}/vfio-dev"))
                .ok()?
                .into_iter()
                .find(|n| n.starts_with("vfio"))?;
            Some(format!("/dev/vfio/devices/{n}"))
        }
    }
}

/// The device cdevs of `members` that a vfio driver owns (`vfio-dev/vfioN`), each checked
/// to exist as `/dev/vfio/devices/vfioN`; empty on kernels without VFIO device cdevs
/// (no `/sys/class/vfio-dev`). A missing node is [`BindError::NoGroupNode`] naming it.
pub fn verify_cdevs(
    root: &SysRoot,
    members: &[Bdf],
) -> Result<Vec<String>, crate::bind::BindError> {
    if !root.is_dir("/sys/class/vfio-dev") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for b in members {
        for n in root.list_opt(format!("{}/vfio-dev", b.sysfs_path()))? {
            // Without CONFIG_VFIO_DEVICE_CDEV (Debian's 6.12) the vfio-dev device exists
            // but has no device number (`dev`), and there is no node to wait for.
            if !root.exists(format!("{}/vfio-dev/{n}/dev", b.sysfs_path())) {
                continue;
            }
            let c = format!("/dev/vfio/devices/{n}");
            if !root.exists_nofollow(&c) {
                let group = root
                    .link_name(format!("{}/iommu_group", b.sysfs_path()))?
                    .and_then(|g| g.parse().ok())
                    .unwrap_or(0);
                return Err(crate::bind::BindError::NoGroupNode { group, path: c });
            }
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(iommu: bool, cdev: bool, qemu: Option<bool>) -> BackendFacts {
        BackendFacts {
            dev_iommu: iommu,
            vfio_cdev: cdev,
            vfio_container: true,
            qemu_iommufd: qemu,
        }
    }

    #[test]
    fn auto_takes_iommufd_only_when_kernel_and_qemu_both_have_it() {
        let modern = facts(true, true, Some(true));
        assert_eq!(
            choose(BackendChoice::Auto, &modern).unwrap(),
            VfioBackend::Iommufd
        );
        for old in [
            facts(false, false, Some(false)), // 6.1 + QEMU 7.2
            facts(true, true, Some(false)),   // 6.12 + QEMU 7.2
            facts(false, false, Some(true)),  // 6.1 + QEMU 10
            facts(true, true, None),          // QEMU not probed
        ] {
            assert_eq!(
                choose(BackendChoice::Auto, &old).unwrap(),
                VfioBackend::Group
            );
        }
        assert_eq!(
            choose(BackendChoice::Group, &modern).unwrap(),
            VfioBackend::Group
        );
    }

    #[test]
    fn explicit_iommufd_names_what_is_missing() {
        let e = choose(BackendChoice::Iommufd, &facts(false, true, Some(false))).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("/dev/iommu") && m.contains("QEMU has no iommufd"),
            "{m}"
        );
        assert!(!m.contains("vfio-dev"), "{m}");
    }

    #[test]
    fn choice_parses() {
        assert_eq!(
            "iommufd".parse::<BackendChoice>().unwrap(),
            BackendChoice::Iommufd
        );
        assert!("legacy".parse::<BackendChoice>().is_err());
    }
}
