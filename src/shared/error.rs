//! What can go wrong creating, listing or removing VFs and mediated devices, or choosing
//! the VFIO backend, with the identity of the thing that failed and the fix where known.

use vfioctl_common::{Bdf, PciError, SysError};

use crate::bind::BindError;
use crate::{Diagnose, Exit};

/// Every failure of the shared-GPU commands (`vf`, `mdev`, `--vfio-backend`); each variant
/// names the device, path or id involved, [`Diagnose`] adds the fix and the exit code.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// A PCI device is not there or its sysfs files could not be read.
    #[error(transparent)]
    Pci(#[from] PciError),
    /// A sysfs (or fixture tree) read, list or link lookup failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The ledger (shared with `bind`) could not be read or written.
    #[error(transparent)]
    Ledger(#[from] BindError),
    /// The function has no SR-IOV capability (no `sriov_totalvfs`).
    #[error("{pf} has no SR-IOV capability (no sriov_totalvfs)")]
    NotSriov {
        /// The function asked for.
        pf: Bdf,
    },
    /// The address given as a physical function is a VF (it has a `physfn` link).
    #[error("{bdf} is virtual function {index} of {pf}, not a physical function")]
    IsVf {
        /// The address given.
        bdf: Bdf,
        /// Its physical function.
        pf: Bdf,
        /// N of the PF's `virtfnN` link to it.
        index: u32,
    },
    /// `--count` is 0 or above what the device offers (`sriov_totalvfs`).
    #[error("{pf}: {count} VFs asked for, the device offers 1 to {total} (sriov_totalvfs)")]
    CountOutOfRange {
        /// The physical function.
        pf: Bdf,
        /// The VF count asked for.
        count: u32,
        /// `sriov_totalvfs`: the most VFs the device offers.
        total: u32,
    },
    /// The PF is bound to no driver, so nothing can enable its VFs (`sriov_configure`).
    #[error("{pf} has no driver: the kernel enables VFs through the physical function's driver (sriov_configure)")]
    PfNoDriver {
        /// The physical function.
        pf: Bdf,
    },
    /// The PF already has VFs enabled (`sriov_numvfs` is not 0).
    #[error("{pf} already has {num_vfs} VFs enabled{}", if *.by_vfioctl { " by vfioctl" } else { " (not by vfioctl)" })]
    VfsAlreadyEnabled {
        /// The physical function.
        pf: Bdf,
        /// `sriov_numvfs`: the VFs enabled now.
        num_vfs: u32,
        /// The ledger says vfioctl created them.
        by_vfioctl: bool,
    },
    /// Fewer VFs than asked for appeared before the timeout; they were disabled again.
    #[error(
        "{pf}: {want} VFs asked for, {got} appeared within {secs} s; the VFs were disabled again"
    )]
    VfsDidNotAppear {
        /// The physical function.
        pf: Bdf,
        /// The VF count asked for.
        want: u32,
        /// The VFs that had appeared (sysfs directory present) when the wait ended.
        got: u32,
        /// The timeout, in seconds.
        secs: u64,
    },
    /// VFs were still present after `sriov_numvfs` was set to 0 and the timeout passed.
    #[error("{pf}: {left} VFs still present {secs} s after sriov_numvfs was set to 0")]
    VfsDidNotGo {
        /// The physical function.
        pf: Bdf,
        /// The VFs still present.
        left: u32,
        /// The timeout, in seconds.
        secs: u64,
    },
    /// Removal refused: some of the PF's VFs are still bound by vfioctl (in the bind ledger).
    #[error("{pf}: VFs {} are still bound by vfioctl", list(.vfs))]
    VfsInUse {
        /// The physical function.
        pf: Bdf,
        /// The VFs still in the bind ledger.
        vfs: Vec<Bdf>,
    },
    /// Removal refused without `--force`: the ledger has no record of vfioctl creating the VFs.
    #[error("{pf}: its VFs were not created by vfioctl (not in the ledger)")]
    NotCreatedByVfioctl {
        /// The physical function.
        pf: Bdf,
    },
    /// A sysfs write did not return within the timeout (the driver is blocked).
    #[error("{path}: write {value:?} did not finish within {secs} s")]
    Timeout {
        /// The sysfs attribute written.
        path: String,
        /// The value written.
        value: String,
        /// The timeout, in seconds.
        secs: u64,
    },
    /// A sysfs write failed.
    #[error("{path}: write {value:?}")]
    Write {
        /// The sysfs attribute written.
        path: String,
        /// The value written.
        value: String,
        /// The error the write returned.
        #[source]
        source: std::io::Error,
    },
    /// The mdev parent given is neither a PCI address nor a name without '/'.
    #[error(
        "{input:?} is not a mediated device parent name (a PCI address or a name without '/')"
    )]
    BadParent {
        /// What the user gave.
        input: String,
    },
    /// The device is not a mediated device parent (not under `/sys/class/mdev_bus`).
    #[error("{parent} is not a mediated device parent (no /sys/class/mdev_bus/{parent})")]
    NoMdevParent {
        /// The parent name given.
        parent: String,
    },
    /// The parent does not offer the mdev type asked for.
    #[error("{parent} has no mdev type {type_id:?} (it offers: {})", .known.join(", "))]
    UnknownMdevType {
        /// The mdev parent.
        parent: String,
        /// The type asked for.
        type_id: String,
        /// The types the parent offers.
        known: Vec<String>,
    },
    /// The mdev type's `available_instances` is 0.
    #[error("{parent}: mdev type {type_id} has no instances left (available_instances is 0)")]
    NoInstances {
        /// The mdev parent.
        parent: String,
        /// The mdev type.
        type_id: String,
    },
    /// A mediated device UUID given (e.g. `--uuid`) is not a UUID.
    #[error("{input:?} is not a UUID (8-4-4-4-12 hex digits)")]
    BadUuid {
        /// What the user gave.
        input: String,
    },
    /// A mediated device with this UUID already exists.
    #[error("mediated device {uuid} already exists")]
    MdevExists {
        /// The UUID asked for.
        uuid: String,
    },
    /// The mediated device did not show up in sysfs within the timeout after `create`.
    #[error("mediated device {uuid} did not appear within {secs} s of the create write")]
    MdevDidNotAppear {
        /// The UUID written to `create`.
        uuid: String,
        /// The timeout, in seconds.
        secs: u64,
    },
    /// No mediated device with this UUID.
    #[error("no mediated device {uuid} (no /sys/bus/mdev/devices/{uuid})")]
    MdevNotFound {
        /// The UUID asked for.
        uuid: String,
    },
    /// The mediated device was still present within the timeout after `remove`.
    #[error("mediated device {uuid} is still present {secs} s after the remove write")]
    MdevDidNotGo {
        /// The mediated device's UUID.
        uuid: String,
        /// The timeout, in seconds.
        secs: u64,
    },
    /// Removal refused without `--force`: the ledger has no record of vfioctl creating it.
    #[error("mediated device {uuid} was not created by vfioctl (not in the ledger)")]
    MdevNotOurs {
        /// The mediated device's UUID.
        uuid: String,
    },
    /// `--vfio-backend iommufd` was asked for but the host kernel or QEMU lacks it.
    #[error("--vfio-backend iommufd: {missing}")]
    IommufdUnavailable {
        /// What is missing (`/dev/iommu`, VFIO device cdevs, QEMU iommufd support), `; `-separated.
        missing: String,
    },
}

fn list(v: &[Bdf]) -> String {
    v.iter().map(Bdf::to_string).collect::<Vec<_>>().join(", ")
}

impl Diagnose for SharedError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            SharedError::Pci(_) | SharedError::NotSriov { .. } => {
                "list SR-IOV capable functions with `vfioctl vf list`".into()
            }
            SharedError::Sys(_) | SharedError::Write { .. } => return None,
            SharedError::Ledger(e) => return e.hint(),
            SharedError::IsVf { pf, .. } => format!("name the physical function: vfioctl vf create {pf} --count N"),
            SharedError::CountOutOfRange { total, .. } => format!("--count 1..{total}"),
            SharedError::PfNoDriver { .. } => "bind the PF to its own driver first (igb, ixgbe, nvidia with sriov-manage, ...); vfio-pci enables VFs only with enable_sriov=1".into(),
            SharedError::VfsAlreadyEnabled { pf, by_vfioctl: true, .. } => format!("use them (`vfioctl vf list {pf}`), or `vfioctl vf remove {pf}` first"),
            SharedError::VfsAlreadyEnabled { pf, by_vfioctl: false, .. } => format!("they belong to someone else; disable them yourself (echo 0 > /sys/bus/pci/devices/{pf}/sriov_numvfs) if nothing uses them"),
            SharedError::VfsDidNotAppear { .. } => "check dmesg for the PF driver's SR-IOV errors (firmware limits, ARI off, not enough bus numbers or MMIO for the VF BARs)".into(),
            SharedError::VfsDidNotGo { .. } | SharedError::MdevDidNotGo { .. } => "a process may still hold a VF (a VM): stop it, check dmesg, then retry".into(),
            SharedError::VfsInUse { .. } => "give them back first: `vfioctl unbind <vf>` or `vfioctl restore --all`".into(),
            SharedError::NotCreatedByVfioctl { .. } | SharedError::MdevNotOurs { .. } => "pass --force to remove them anyway".into(),
            SharedError::Timeout { .. } => "the kernel is blocked in the driver; check dmesg, the write may still complete".into(),
            SharedError::BadParent { .. } | SharedError::NoMdevParent { .. } => "list parents and their types with `vfioctl mdev types`".into(),
            SharedError::UnknownMdevType { parent, .. } => format!("list them with `vfioctl mdev types {parent}`"),
            SharedError::NoInstances { .. } => "remove an instance of this parent (`vfioctl mdev list`), or pick a smaller type".into(),
            SharedError::BadUuid { .. } => "omit --uuid to get a random one, or give e.g. 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".into(),
            SharedError::MdevExists { .. } => "pick another --uuid, or omit it".into(),
            SharedError::MdevDidNotAppear { .. } => "check dmesg for the parent driver's errors (vGPU manager not running, license, no framebuffer left)".into(),
            SharedError::MdevNotFound { .. } => "list them with `vfioctl mdev list`".into(),
            SharedError::IommufdUnavailable { .. } => "use --vfio-backend group (or auto), or a kernel 6.6+ with CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV and QEMU 9+".into(),
        })
    }

    fn exit(&self) -> Exit {
        match self {
            SharedError::Pci(e) => e.exit(),
            SharedError::Ledger(e) => e.exit(),
            SharedError::NotSriov { .. }
            | SharedError::IsVf { .. }
            | SharedError::CountOutOfRange { .. }
            | SharedError::BadParent { .. }
            | SharedError::NoMdevParent { .. }
            | SharedError::UnknownMdevType { .. }
            | SharedError::BadUuid { .. }
            | SharedError::MdevNotFound { .. } => Exit::Usage,
            SharedError::PfNoDriver { .. } | SharedError::IommufdUnavailable { .. } => {
                Exit::CheckFailed
            }
            SharedError::VfsAlreadyEnabled { .. }
            | SharedError::VfsInUse { .. }
            | SharedError::NotCreatedByVfioctl { .. }
            | SharedError::MdevNotOurs { .. }
            | SharedError::NoInstances { .. }
            | SharedError::MdevExists { .. } => Exit::Refused,
            SharedError::VfsDidNotAppear { .. } | SharedError::MdevDidNotAppear { .. } => {
                Exit::OperationFailed
            }
            SharedError::VfsDidNotGo { .. }
            | SharedError::MdevDidNotGo { .. }
            | SharedError::Timeout { .. }
            | SharedError::Write { .. }
            | SharedError::Sys(_) => Exit::Infrastructure,
        }
    }
}
