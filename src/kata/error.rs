//! What can go wrong writing a Kata configuration, each with the key and the fix.

use std::path::PathBuf;

use vfioctl_common::{Bdf, PciError};

use super::version::{KataVersion, Runtime, Target, TargetError, VersionError};
use crate::{Diagnose, Exit};

/// A member of an IOMMU group and the driver it is on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Holder {
    /// The member's PCI address.
    pub bdf: Bdf,
    /// The host driver it is bound to (None: no driver).
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
    /// A Kata version string does not parse.
    #[error(transparent)]
    Version(#[from] VersionError),
    /// The Kata version and runtime together are not supported.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Both plug modes at once: `--hotplug` with `--coldplug`, or both keys set in the result.
    #[error("hot_plug_vfio and cold_plug_vfio cannot both be set: Kata rejects the file (\"only one of them can be set\")")]
    BothPlugModes,
    /// Cold plug asked of a Kata that does not cold-plug VFIO devices.
    #[error("{key} is not read by Kata {version} ({runtime}): cold plug of VFIO devices arrives in {since}{}", match runtime { Runtime::Go => "; before it Kata only hot-plugs them (hotplug_vfio_on_root_bus)", Runtime::Rs => " (kata-types DeviceInfo); older runtime-rs silently ignores the key and hot-plugs into pcie_root_port" })]
    ColdPlugUnsupported {
        /// The cold-plug key (`cold_plug_vfio`).
        key: &'static str,
        /// The target Kata version.
        version: KataVersion,
        /// The target runtime.
        runtime: Runtime,
        /// The first version of that runtime that reads the key.
        since: KataVersion,
    },
    /// No `--kata-version` and no Kata found on this host.
    #[error("which Kata release reads the file is unknown: {why}")]
    VersionUnknown {
        /// Why the version could not be decided.
        why: String,
    },
    /// No stored Kata template for the target's runtime and version.
    #[error("no Kata template is stored for {target} (stored: {stored})")]
    NoTemplate {
        /// The Kata version and runtime asked for.
        target: Target,
        /// The stored template versions for that runtime, comma-separated.
        stored: String,
    },
    /// The `--drop-in` directory cannot be listed, or a drop-in in it cannot be read or parsed.
    #[error("--drop-in {}: {why}", path.display())]
    DropIn {
        /// The `--drop-in` directory.
        path: PathBuf,
        /// What went wrong, with the file.
        why: String,
    },
    /// An artefact flag (`--kernel`, `--initrd`, `--image`) names no existing file.
    #[error("--{flag} {}: no such file", path.display())]
    Artefact {
        /// The flag without dashes: `kernel`, `initrd` or `image`.
        flag: &'static str,
        /// The path as given.
        path: PathBuf,
    },
    /// A `--gpu` selector matches no PCI device.
    #[error("--gpu {selector}: no PCI device matches")]
    NoMatch {
        /// The selector as given.
        selector: String,
    },
    /// No `--gpu` given and no GPU is on vfio-pci.
    #[error("no GPU is bound to vfio-pci{}", if gpus.is_empty() { String::new() } else { format!(" (GPUs: {})", list(gpus)) })]
    NoDevices {
        /// The host's GPUs and their drivers (empty: the host shows no GPU).
        gpus: Vec<Holder>,
    },
    /// A selected device has no IOMMU group: the IOMMU is off.
    #[error("{bdf} has no IOMMU group: the IOMMU is off")]
    NoIommuGroup {
        /// The selected device.
        bdf: Bdf,
    },
    /// A function of a selected group has a BAR the host firmware never assigned.
    #[error(
        "{bdf}: BAR{bar} was never assigned on the host, so QEMU cannot map it into the guest"
    )]
    UnassignedBar {
        /// The function with the unassigned BAR.
        bdf: Bdf,
        /// The BAR's index (0 - 5).
        bar: u8,
    },
    /// A bridge of a selected group is on a driver other than pcieport (or none).
    #[error("IOMMU group {group} of {bdf} is not viable: {} must be on vfio-pci too (Kata passes every function of the group)", list(others))]
    GroupNotViable {
        /// The IOMMU group number.
        group: u32,
        /// The selected device in that group.
        bdf: Bdf,
        /// The bridges of the group on a driver other than pcieport (or none).
        others: Vec<Holder>,
    },
    /// The functions need more PCIe ports than the target Kata creates.
    #[error("{key}: {functions} need {needed} PCIe ports (one per function), Kata {version} creates at most {max}")]
    TooManyPorts {
        /// The key that sets the port count (`pcie_root_port`, or the plug key on 3.2 - 3.5).
        key: &'static str,
        /// Ports needed: one per non-bridge PCIe function of the groups.
        needed: u32,
        /// The most ports the target Kata creates.
        max: u32,
        /// The target Kata version.
        version: KataVersion,
        /// The functions that take a port, comma-separated.
        functions: String,
    },
    /// `vfio_mode = "vfio"` with a group of several port-taking functions, which Kata splits.
    #[error("vfio_mode = \"vfio\" with IOMMU group {group} holding {functions}: Kata gives each function its own root port, so the guest sees them in separate groups and the agent refuses them (\"is not in guest IOMMU group\", #2900)")]
    VfioModeSplitsGroup {
        /// The IOMMU group number.
        group: u32,
        /// Its functions that take a port, comma-separated.
        functions: String,
    },
    /// Two keys of the result have values Kata refuses together.
    #[error("{key} = {value} together with {other} = {other_value}: {why}")]
    Conflict {
        /// The first key.
        key: &'static str,
        /// Its value in the result.
        value: String,
        /// The key it conflicts with.
        other: &'static str,
        /// That key's value in the result.
        other_value: String,
        /// Kata's rule that forbids the pair.
        why: &'static str,
    },
    /// The `--base` file cannot be read.
    #[error("reading --base {}", path.display())]
    BaseRead {
        /// The `--base` path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The `--base` file is not valid TOML.
    #[error("--base {}: not valid TOML: {message}", path.display())]
    BaseParse {
        /// The `--base` path.
        path: PathBuf,
        /// The TOML parser's message, on one line.
        message: String,
    },
    /// The `--base` file has no `[hypervisor.qemu]` table.
    #[error("--base {}: no [hypervisor.qemu] table: not a QEMU configuration (Cloud Hypervisor, Firecracker and Dragonball files use other tables)", path.display())]
    BaseNotQemu {
        /// The `--base` path.
        path: PathBuf,
    },
    /// A key vfioctl plans has a value of the wrong TOML type in the `--base` file.
    #[error("--base {}: [{table}] {key} is a {found}, Kata reads it as {expected}", path.display())]
    BaseKeyType {
        /// The `--base` path.
        path: PathBuf,
        /// The key's table, e.g. `hypervisor.qemu`.
        table: String,
        /// The key.
        key: String,
        /// The TOML type found in the file.
        found: &'static str,
        /// The TOML type Kata reads.
        expected: &'static str,
    },
    /// Writing the result (`--out`, or the drop-in and its directory) failed.
    #[error("writing {}", path.display())]
    Write {
        /// The file or directory being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Reading the host's PCI devices failed.
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
