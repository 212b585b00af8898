//! What can go wrong writing a Kata configuration, each with the key and the fix.

use std::path::PathBuf;

use vfioctl_common::{Bdf, PciError};

use super::version::{KataVersion, Runtime, Target, TargetError, VersionError};
use crate::{Diagnose, Exit};

/// A member of an IOMMU group and the driver it is on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Holder {
    pub bdf: Bdf,
    pub driver: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({})",
            self.bdf,
            self.driver.as_deref().unwrap_or("no driver")
        )
    }
}

fn list(h: &[Holder]) -> String {
    h.iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `vfioctl kata config` errors. Usage errors exit 2; a host that cannot run the setup
/// (device not on vfio-pci, group not viable, too many ports, no IOMMU) exits 1.
#[derive(Debug, thiserror::Error)]
pub enum KataError {
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("hot_plug_vfio and cold_plug_vfio cannot both be set: Kata rejects the file (\"only one of them can be set\")")]
    BothPlugModes,
    #[error("{key} is not read by Kata {version} ({runtime}): cold plug of VFIO devices arrives in {since}{}", match runtime { Runtime::Go => "; before it Kata only hot-plugs them (hotplug_vfio_on_root_bus)", Runtime::Rs => " (kata-types DeviceInfo); older runtime-rs silently ignores the key and hot-plugs into pcie_root_port" })]
    ColdPlugUnsupported {
        key: &'static str,
        version: KataVersion,
        runtime: Runtime,
        since: KataVersion,
    },
    #[error("which Kata release reads the file is unknown: {why}")]
    VersionUnknown { why: String },
    #[error("no Kata template is stored for {target} (stored: {stored})")]
    NoTemplate { target: Target, stored: String },
    #[error("--drop-in {}: {why}", path.display())]
    DropIn { path: PathBuf, why: String },
    #[error("--{flag} {}: no such file", path.display())]
    Artefact { flag: &'static str, path: PathBuf },
    #[error("--gpu {selector}: no PCI device matches")]
    NoMatch { selector: String },
    #[error("no GPU is bound to vfio-pci{}", if gpus.is_empty() { String::new() } else { format!(" (GPUs: {})", list(gpus)) })]
    NoDevices { gpus: Vec<Holder> },
    #[error("{bdf} has no IOMMU group: the IOMMU is off")]
    NoIommuGroup { bdf: Bdf },
    #[error(
        "{bdf}: BAR{bar} was never assigned on the host, so QEMU cannot map it into the guest"
    )]
    UnassignedBar { bdf: Bdf, bar: u8 },
    #[error("IOMMU group {group} of {bdf} is not viable: {} must be on vfio-pci too (Kata passes every function of the group)", list(others))]
    GroupNotViable {
        group: u32,
        bdf: Bdf,
        others: Vec<Holder>,
    },
    #[error("{key}: {functions} need {needed} PCIe ports (one per function), Kata {version} creates at most {max}")]
    TooManyPorts {
        key: &'static str,
        needed: u32,
        max: u32,
        version: KataVersion,
        functions: String,
    },
    #[error("vfio_mode = \"vfio\" with IOMMU group {group} holding {functions}: Kata gives each function its own root port, so the guest sees them in separate groups and the agent refuses them (\"is not in guest IOMMU group\", #2900)")]
    VfioModeSplitsGroup { group: u32, functions: String },
    #[error("{key} = {value} together with {other} = {other_value}: {why}")]
    Conflict {
        key: &'static str,
        value: String,
        other: &'static str,
        other_value: String,
        why: &'static str,
    },
    #[error("reading --base {}", path.display())]
    BaseRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--base {}: not valid TOML: {message}", path.display())]
    BaseParse { path: PathBuf, message: String },
    #[error("--base {}: no [hypervisor.qemu] table: not a QEMU configuration (Cloud Hypervisor, Firecracker and Dragonball files use other tables)", path.display())]
    BaseNotQemu { path: PathBuf },
    #[error("--base {}: [{table}] {key} is a {found}, Kata reads it as {expected}", path.display())]
    BaseKeyType {
        path: PathBuf,
        table: String,
        key: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pci(#[from] PciError),
}

impl Diagnose for KataError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            KataError::Version(_) => "pass the version `kata-runtime --version` prints, e.g. --kata-version 3.6.0".into(),
            KataError::Target(TargetError::TooOld { .. }) => "upgrade to Kata 2.x or newer".into(),
            KataError::Target(TargetError::RsTooOld { .. }) => {
                "use --runtime go, or --kata-version 3.6 or newer".into()
            }
            KataError::BothPlugModes => "pass either --coldplug (Kata's supported NVIDIA mode) or --hotplug, not both".into(),
            KataError::ColdPlugUnsupported { since, .. } => format!(
                "drop --coldplug (hot plug into root ports), or upgrade Kata to {since} or newer and pass --kata-version"
            ),
            KataError::VersionUnknown { .. } => {
                "pass --kata-version with what `kata-runtime --version` (or `kata-ctl version`) prints on the Kata host, e.g. --kata-version 3.30.0".into()
            }
            KataError::NoTemplate { .. } => {
                "pass the installed configuration.toml with --base, or a --kata-version that has a template".into()
            }
            KataError::DropIn { .. } => {
                "pass the config.d directory beside the configuration.toml Kata loads, e.g. /opt/kata/share/defaults/kata-containers/config.d".into()
            }
            KataError::Artefact { flag, .. } => {
                format!("give the path of an existing file to --{flag} (build one with `vfioctl kernel build` / `vfioctl rootfs build`)")
            }
            KataError::NoMatch { .. } => {
                "list devices with `vfioctl devices`; a selector is 0000:01:00.0, 10de:2330 or class:gpu".into()
            }
            KataError::NoDevices { gpus } => match gpus.first() {
                Some(h) => format!("bind one first: `vfioctl bind {}`, or name devices with --gpu", h.bdf),
                None => "this host shows no GPU; list devices with `vfioctl devices`".into(),
            },
            KataError::NoIommuGroup { .. } => {
                "add intel_iommu=on (or amd_iommu=on) iommu=pt to the host kernel command line, and enable VT-d/AMD-Vi in the firmware".into()
            }
            KataError::UnassignedBar { .. } => {
                "enable Above 4G Decoding (and Resizable BAR support if offered) in the firmware setup, then check with `vfioctl check`".into()
            }
            KataError::GroupNotViable { bdf, .. } => format!(
                "`vfioctl bind {bdf}` binds the whole group; or move the card to a slot with its own group (ACS)"
            ),
            KataError::TooManyPorts { max, .. } => format!(
                "select fewer devices with --gpu (each PCIe function of their groups takes a port; at most {max})"
            ),
            KataError::VfioModeSplitsGroup { .. } => {
                "set [runtime] vfio_mode = \"guest-kernel\" in the base file, or pass only single-function groups".into()
            }
            KataError::Conflict { other, .. } => format!("remove {other} from the file or set it to its default"),
            KataError::BaseRead { .. } | KataError::BaseParse { .. } => {
                "pass Kata's configuration.toml, e.g. /opt/kata/share/defaults/kata-containers/configuration-qemu-nvidia-gpu.toml".into()
            }
            KataError::BaseNotQemu { .. } => {
                "pass a QEMU configuration (configuration-qemu*.toml)".into()
            }
            KataError::BaseKeyType { key, expected, .. } => {
                format!("fix {key} by hand to a {expected}, then run again")
            }
            KataError::Write { .. } => "check the directory exists and is writable".into(),
            KataError::Pci(_) => return None,
        })
    }

    fn exit(&self) -> Exit {
        match self {
            KataError::NoDevices { .. }
            | KataError::NoIommuGroup { .. }
            | KataError::UnassignedBar { .. }
            | KataError::VfioModeSplitsGroup { .. }
            | KataError::GroupNotViable { .. }
            | KataError::TooManyPorts { .. } => Exit::CheckFailed,
            KataError::Write { .. } | KataError::DropIn { .. } => Exit::Infrastructure,
            KataError::Pci(e) => e.exit(),
            _ => Exit::Usage,
        }
    }
}
