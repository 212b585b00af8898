//! What can go wrong creating, listing or removing VFs and mediated devices, or choosing
//! the VFIO backend, with the identity of the thing that failed and the fix where known.

use vfioctl_common::{Bdf, PciError, SysError};

use crate::bind::BindError;
use crate::{Diagnose, Exit};

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The ledger (shared with `bind`) could not be read or written.
    #[error(transparent)]
    Ledger(#[from] BindError),
    #[error("{pf} has no SR-IOV capability (no sriov_totalvfs)")]
    NotSriov { pf: Bdf },
    #[error("{bdf} is virtual function {index} of {pf}, not a physical function")]
    IsVf { bdf: Bdf, pf: Bdf, index: u32 },
    #[error("{pf}: {count} VFs asked for, the device offers 1 to {total} (sriov_totalvfs)")]
    CountOutOfRange { pf: Bdf, count: u32, total: u32 },
    #[error("{pf} has no driver: the kernel enables VFs through the physical function's driver (sriov_configure)")]
    PfNoDriver { pf: Bdf },
    #[error("{pf} already has {num_vfs} VFs enabled{}", if *.by_vfioctl { " by vfioctl" } else { " (not by vfioctl)" })]
    VfsAlreadyEnabled {
        pf: Bdf,
        num_vfs: u32,
        by_vfioctl: bool,
    },
    #[error(
        "{pf}: {want} VFs asked for, {got} appeared within {secs} s; the VFs were disabled again"
    )]
    VfsDidNotAppear {
        pf: Bdf,
        want: u32,
        got: u32,
        secs: u64,
    },
    #[error("{pf}: {left} VFs still present {secs} s after sriov_numvfs was set to 0")]
    VfsDidNotGo { pf: Bdf, left: u32, secs: u64 },
    #[error("{pf}: VFs {} are still bound by vfioctl", list(.vfs))]
    VfsInUse { pf: Bdf, vfs: Vec<Bdf> },
    #[error("{pf}: its VFs were not created by vfioctl (not in the ledger)")]
    NotCreatedByVfioctl { pf: Bdf },
    #[error("{path}: write {value:?} did not finish within {secs} s")]
    Timeout {
        path: String,
        value: String,
        secs: u64,
    },
    #[error("{path}: write {value:?}")]
    Write {
        path: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{input:?} is not a mediated device parent name (a PCI address or a name without '/')"
    )]
    BadParent { input: String },
    #[error("{parent} is not a mediated device parent (no /sys/class/mdev_bus/{parent})")]
    NoMdevParent { parent: String },
    #[error("{parent} has no mdev type {type_id:?} (it offers: {})", .known.join(", "))]
    UnknownMdevType {
        parent: String,
        type_id: String,
        known: Vec<String>,
    },
    #[error("{parent}: mdev type {type_id} has no instances left (available_instances is 0)")]
    NoInstances { parent: String, type_id: String },
    #[error("{input:?} is not a UUID (8-4-4-4-12 hex digits)")]
    BadUuid { input: String },
    #[error("mediated device {uuid} already exists")]
    MdevExists { uuid: String },
    #[error("mediated device {uuid} did not appear within {secs} s of the create write")]
    MdevDidNotAppear { uuid: String, secs: u64 },
    #[error("no mediated device {uuid} (no /sys/bus/mdev/devices/{uuid})")]
    MdevNotFound { uuid: String },
    #[error("mediated device {uuid} is still present {secs} s after the remove write")]
    MdevDidNotGo { uuid: String, secs: u64 },
    #[error("mediated device {uuid} was not created by vfioctl (not in the ledger)")]
    MdevNotOurs { uuid: String },
    #[error("--vfio-backend iommufd: {missing}")]
    IommufdUnavailable { missing: String },
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
