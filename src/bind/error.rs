//! What can go wrong while binding, restoring or checking a device, with the identity of
//! the thing that failed and the fix where it is known.

use std::path::PathBuf;

use vfioctl_common::{Bdf, PciError, SysError, TransitionError};

use super::safety::Refusal;
use crate::{Diagnose, Exit};

/// Why a bind, unbind, restore or check of devices failed; its [`Diagnose`] impl gives
/// the hint and the exit code.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A selector matched no PCI device.
    #[error("no PCI device matches {selector}")]
    NoMatch {
        /// The selector as given.
        selector: String,
    },
    /// `--driver` names no usable driver.
    #[error("--driver {driver:?}: {reason}")]
    BadDriver {
        /// The value given.
        driver: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// `--timeout` is out of range (0, or more than a day).
    #[error("--timeout {secs}: {reason}")]
    BadTimeout {
        /// The value given, in seconds.
        secs: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Another vfioctl run bound the device while this one waited for the ledger lock.
    #[error("{bdf} was bound to {driver} by another vfioctl run (plan {plan}) while this one waited for the ledger lock; nothing was changed")]
    BoundByOtherRun {
        /// The device.
        bdf: Bdf,
        /// The driver it is now on.
        driver: String,
        /// The other run's plan id (its process id and time).
        plan: String,
    },
    /// A device's driver or `driver_override` changed while this run waited for the ledger lock,
    /// or does not read back as restored.
    #[error(
        "{bdf} changed while this run waited for the ledger lock ({what}); nothing was changed"
    )]
    Changed {
        /// The device.
        bdf: Bdf,
        /// What changed (driver, `driver_override`: before -> now).
        what: String,
    },
    /// A timed-out driver write is still blocked in the kernel; the device's state is unknown.
    #[error("{bdf}: the write of {value:?} to {path} is still blocked in the kernel (helper pid {pid}), so the device's final state is unknown; its ledger entry is kept")]
    WritePending {
        /// The device.
        bdf: Bdf,
        /// The sysfs file written (e.g. `/sys/bus/pci/drivers/<drv>/unbind`).
        path: String,
        /// The value written.
        value: String,
        /// The helper process still blocked in the write.
        pid: i32,
    },
    /// A step the device's state does not allow (a bug in vfioctl); nothing was written
    /// for it. The refusal is part of the message, not a source, like every machine's.
    #[error("{bdf}: {refused}")]
    Transition {
        /// The device.
        bdf: Bdf,
        /// The refused transition.
        refused: TransitionError<super::BindState>,
    },
    /// Reading a PCI device from sysfs failed.
    #[error(transparent)]
    Pci(#[from] PciError),
    /// The device has no IOMMU group: the IOMMU is off or unsupported.
    #[error("{bdf} has no IOMMU group: the IOMMU is off or not supported")]
    NoIommuGroup {
        /// The device.
        bdf: Bdf,
    },
    /// A PCI bridge was selected; bridges are never assigned.
    #[error("{bdf} is a bridge ({driver}); bridges cannot be assigned to a guest")]
    Bridge {
        /// The bridge.
        bdf: Bdf,
        /// Its driver (`no driver` when it has none).
        driver: String,
    },
    /// The group's other endpoints would have to move too, but `--no-companions` was given.
    #[error(
        "IOMMU group {group} is not viable without {companions}: every endpoint of a group must be unbound or on a vfio driver before the group can be used (--no-companions)"
    )]
    CompanionsRequired {
        /// The IOMMU group number.
        group: u32,
        /// The companions that would need moving, as `bdf (driver)`, comma-separated.
        companions: String,
    },
    /// The device has SR-IOV virtual functions enabled.
    #[error("{bdf} has {num_vfs} SR-IOV virtual functions enabled")]
    SriovActive {
        /// The physical function.
        bdf: Bdf,
        /// Its enabled VF count (`sriov_numvfs`).
        num_vfs: u32,
    },
    /// The in-use checks refused these devices (mounted disks, routed NICs, open nodes...).
    #[error("refused: {}", summary(.0))]
    Refused(Vec<Refusal>),
    /// The driver to bind to (or restore) is not available.
    #[error("driver {driver} is not available")]
    DriverMissing {
        /// The driver's name.
        driver: String,
        /// Why it is missing.
        #[source]
        reason: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `modprobe` of the target driver failed.
    #[error("`{command}` failed: {detail}")]
    Modprobe {
        /// The `modprobe` command line.
        command: String,
        /// Its stderr, or why it could not start.
        detail: String,
    },
    /// A sysfs write did not finish within `--timeout` (a driver's remove is blocked).
    #[error("{path}: write {value:?} did not finish within {secs} s (the kernel is blocked in the driver's remove){}", holders_text(.holders))]
    Timeout {
        /// The sysfs file written.
        path: String,
        /// The value written.
        value: String,
        /// The timeout, in seconds.
        secs: u64,
        /// Processes holding the device's nodes open (`comm (pid N) has NODE`).
        holders: Vec<String>,
    },
    /// A sysfs write failed.
    #[error("{path}: write {value:?}")]
    Write {
        /// The sysfs file.
        path: String,
        /// The value written.
        value: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// After a probe the device is not on the expected driver.
    #[error("{bdf}: the kernel accepted the probe but the device is on {} instead of {want}", .got.as_deref().unwrap_or("no driver"))]
    NotBound {
        /// The device.
        bdf: Bdf,
        /// The driver it should be on (`no driver` for driverless).
        want: String,
        /// The driver it is on, if any.
        got: Option<String>,
    },
    /// A VFIO device node did not appear after binding the whole group.
    #[error("IOMMU group {group}: {path} does not exist after binding every member")]
    NoGroupNode {
        /// The IOMMU group number.
        group: u32,
        /// The missing node: `/dev/vfio/<group>`, or a `/dev/vfio/devices/vfioN` cdev.
        path: String,
    },
    /// The device has a ledger entry from an interrupted run.
    #[error(
        "{bdf} has an unfinished ledger entry (state {state}); run `vfioctl restore {bdf}` first"
    )]
    Unfinished {
        /// The device.
        bdf: Bdf,
        /// The ledger entry's state ([`super::BindState`]).
        state: String,
    },
    /// The device is not in the ledger: vfioctl did not bind it, so it cannot restore it.
    #[error("{bdf} is not in the ledger: vfioctl did not bind it, so it does not know what to give it back to")]
    NotInLedger {
        /// The device.
        bdf: Bdf,
    },
    /// The ledger file or its lock could not be opened, read or written.
    #[error("ledger {}", path.display())]
    Ledger {
        /// The ledger or lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The ledger file is not valid JSON for the ledger format.
    #[error("ledger {}: {reason}", path.display())]
    LedgerCorrupt {
        /// The ledger file.
        path: PathBuf,
        /// The JSON error.
        reason: String,
    },
    /// A sysfs read or write under the root failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// A bind step failed and every device it touched was put back.
    #[error("bind failed and every device it touched was rolled back")]
    RolledBack {
        /// The failure that started the rollback.
        #[source]
        cause: Box<BindError>,
    },
    /// A bind step failed and putting devices back failed too.
    #[error("bind failed ({cause}) and the rollback failed too: {}", rollback.join("; "))]
    RollbackFailed {
        /// The failure that started the rollback.
        cause: Box<BindError>,
        /// What went wrong in the rollback, one line each.
        rollback: Vec<String>,
    },
    /// Restoring some devices failed (the others were restored).
    #[error("restore of {failed} device(s) failed: {}", details.join("; "))]
    RestoreFailed {
        /// How many devices failed.
        failed: usize,
        /// One `bdf: error` line per failed device.
        details: Vec<String>,
    },
}

impl From<vfioctl_common::pci::SelectError> for BindError {
    fn from(e: vfioctl_common::pci::SelectError) -> Self {
        match e {
            vfioctl_common::pci::SelectError::NoMatch { selector } => {
                BindError::NoMatch { selector }
            }
            vfioctl_common::pci::SelectError::Pci(p) => BindError::Pci(p),
        }
    }
}

fn holders_text(h: &[String]) -> String {
    if h.is_empty() {
        "; no process has the device's nodes open".into()
    } else {
        format!("; held by {}", h.join(", "))
    }
}

fn summary(r: &[Refusal]) -> String {
    r.iter()
        .map(|r| format!("{}: {}", r.bdf, r.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Diagnose for BindError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            BindError::NoMatch { .. } => "list devices with `vfioctl devices`".into(),
            BindError::BadDriver { .. } => "pass --driver vfio-pci (the default), a vfio variant driver's name, or auto".into(),
            BindError::BadTimeout { .. } => "give the seconds an unbind may take, at least 1 (default 10)".into(),
            BindError::BoundByOtherRun { bdf, .. } => format!("`vfioctl unbind {bdf}` gives it back; binding it again is not needed"),
            BindError::Changed { .. } => "look at `vfioctl devices` and run the bind again".into(),
            BindError::WritePending { .. } => "wait for the driver to finish (see dmesg), then run `vfioctl restore --all`".into(),
            BindError::Pci(_) => "list devices with `vfioctl devices`".into(),
            BindError::NoIommuGroup { .. } => "enable VT-d/AMD-Vi in the firmware and add intel_iommu=on (Intel) to the kernel command line; `vfioctl check` tells which is missing".into(),
            BindError::Bridge { .. } => "select the endpoint behind the bridge; bridges stay on pcieport".into(),
            BindError::CompanionsRequired { .. } => "drop --no-companions to bind them too, or unbind them from their driver yourself".into(),
            BindError::SriovActive { bdf, .. } => format!("disable the VFs first: echo 0 > /sys/bus/pci/devices/{bdf}/sriov_numvfs"),
            BindError::Refused(r) => r
                .iter()
                .map(|r| r.release.clone())
                .collect::<Vec<_>>()
                .join("; "),
            BindError::DriverMissing { driver, .. } => format!("load it: modprobe {}", driver.replace('-', "_")),
            BindError::Modprobe { .. } => "check that the module exists for the running kernel and is not blacklisted (modprobe -c | grep vfio)".into(),
            BindError::Timeout { .. } => "close the processes named above (stop nvidia-persistenced, the display manager, CUDA jobs), then retry; the blocked write may still complete later, check with `vfioctl devices`".into(),
            BindError::NotBound { want, .. } => format!("check dmesg for {want} probe errors (BAR reservation by efifb/simpledrm, D3cold); the device was given back"),
            BindError::NoGroupNode { .. } => "is devtmpfs mounted on /dev and the vfio module loaded? check dmesg".into(),
            BindError::Unfinished { .. } => "`vfioctl restore --all` puts back every device of an interrupted run".into(),
            BindError::NotInLedger { .. } => "bind it with `vfioctl bind` first, or give it to a driver by hand".into(),
            BindError::Ledger { .. } | BindError::LedgerCorrupt { .. } => "fix or move /var/lib/vfioctl/ledger.json aside; it records the drivers to restore".into(),
            BindError::RolledBack { cause } => return cause.hint(),
            BindError::RollbackFailed { .. } => "run `vfioctl restore --all`, then check `vfioctl devices`".into(),
            BindError::RestoreFailed { .. } => "see dmesg; `vfioctl restore --all` can be run again".into(),
            BindError::Write { .. } | BindError::Sys(_) | BindError::Transition { .. } => return None,
        })
    }

    fn exit(&self) -> Exit {
        match self {
            BindError::NoMatch { .. }
            | BindError::BadDriver { .. }
            | BindError::BadTimeout { .. }
            | BindError::Bridge { .. }
            | BindError::CompanionsRequired { .. }
            | BindError::NotInLedger { .. } => Exit::Usage,
            BindError::Pci(e) => e.exit(),
            BindError::NoIommuGroup { .. } => Exit::CheckFailed,
            BindError::SriovActive { .. }
            | BindError::Refused(_)
            | BindError::BoundByOtherRun { .. }
            | BindError::Changed { .. }
            | BindError::Unfinished { .. } => Exit::Refused,
            BindError::WritePending { .. } => Exit::OperationFailed,
            BindError::RolledBack { .. } => Exit::OperationFailed,
            BindError::NotBound { .. }
            | BindError::Timeout { .. }
            | BindError::NoGroupNode { .. } => Exit::OperationFailed,
            _ => Exit::Infrastructure,
        }
    }
}
