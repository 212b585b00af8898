//! What can go wrong while binding, restoring or checking a device, with the identity of
//! the thing that failed and the fix where it is known.

use std::path::PathBuf;

use vfioctl_common::{Bdf, PciError, SysError};

use super::safety::Refusal;
use crate::{Diagnose, Exit};

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("no PCI device matches {selector}")]
    NoMatch { selector: String },
    #[error("--driver {driver:?}: {reason}")]
    BadDriver {
        driver: String,
        reason: &'static str,
    },
    #[error("--timeout {secs}: {reason}")]
    BadTimeout { secs: u64, reason: &'static str },
    #[error("{bdf} was bound to {driver} by another vfioctl run (plan {plan}) while this one waited for the ledger lock; nothing was changed")]
    BoundByOtherRun {
        bdf: Bdf,
        driver: String,
        plan: String,
    },
    #[error(
        "{bdf} changed while this run waited for the ledger lock ({what}); nothing was changed"
    )]
    Changed { bdf: Bdf, what: String },
    #[error("{bdf}: the write of {value:?} to {path} is still blocked in the kernel (helper pid {pid}), so the device's final state is unknown; its ledger entry is kept")]
    WritePending {
        bdf: Bdf,
        path: String,
        value: String,
        pid: i32,
    },
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error("{bdf} has no IOMMU group: the IOMMU is off or not supported")]
    NoIommuGroup { bdf: Bdf },
    #[error("{bdf} is a bridge ({driver}); bridges cannot be assigned to a guest")]
    Bridge { bdf: Bdf, driver: String },
    #[error(
        "IOMMU group {group} is not viable without {companions}: every endpoint of a group must be unbound or on a vfio driver before the group can be used (--no-companions)"
    )]
    CompanionsRequired { group: u32, companions: String },
    #[error("{bdf} has {num_vfs} SR-IOV virtual functions enabled")]
    SriovActive { bdf: Bdf, num_vfs: u32 },
    #[error("refused: {}", summary(.0))]
    Refused(Vec<Refusal>),
    #[error("driver {driver} is not available")]
    DriverMissing {
        driver: String,
        #[source]
        reason: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("`{command}` failed: {detail}")]
    Modprobe { command: String, detail: String },
    #[error("{path}: write {value:?} did not finish within {secs} s (the kernel is blocked in the driver's remove){}", holders_text(.holders))]
    Timeout {
        path: String,
        value: String,
        secs: u64,
        holders: Vec<String>,
    },
    #[error("{path}: write {value:?}")]
    Write {
        path: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{bdf}: the kernel accepted the probe but the device is on {} instead of {want}", .got.as_deref().unwrap_or("no driver"))]
    NotBound {
        bdf: Bdf,
        want: String,
        got: Option<String>,
    },
    #[error("IOMMU group {group}: {path} does not exist after binding every member")]
    NoGroupNode { group: u32, path: String },
    #[error(
        "{bdf} has an unfinished ledger entry (state {state}); run `vfioctl restore {bdf}` first"
    )]
    Unfinished { bdf: Bdf, state: String },
    #[error("{bdf} is not in the ledger: vfioctl did not bind it, so it does not know what to give it back to")]
    NotInLedger { bdf: Bdf },
    #[error("ledger {}", path.display())]
    Ledger {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger {}: {reason}", path.display())]
    LedgerCorrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("bind failed and every device it touched was rolled back")]
    RolledBack {
        #[source]
        cause: Box<BindError>,
    },
    #[error("bind failed ({cause}) and the rollback failed too: {}", rollback.join("; "))]
    RollbackFailed {
        cause: Box<BindError>,
        rollback: Vec<String>,
    },
    #[error("restore of {failed} device(s) failed: {}", details.join("; "))]
    RestoreFailed { failed: usize, details: Vec<String> },
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
            BindError::Write { .. } | BindError::Sys(_) => return None,
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
