//! What vfioctl created (VFs, mediated devices), recorded in the bind ledger
//! (`/var/lib/vfioctl/ledger.json`, same lock) so that `restore` removes exactly those.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use vfioctl_common::{Bdf, SysRoot};

use super::error::SharedError;
use super::{mdev, sriov};
use crate::bind::Ledger;

/// A PF whose VFs vfioctl enabled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SriovRecord {
    /// `sriov_numvfs` written.
    pub count: u32,
    /// `sriov_drivers_autoprobe` before (put back on removal).
    pub original_autoprobe: Option<bool>,
    /// False while the create is under way (recorded before the write).
    pub created: bool,
    /// Unix seconds.
    pub since: u64,
}

/// A mediated device vfioctl created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MdevRecord {
    /// The mdev parent (PCI address or parent name) it was created on.
    pub parent: String,
    /// The mdev type id written to (`mdev_supported_types/<type_id>/create`).
    pub type_id: String,
    /// False while the create is under way (recorded before the write).
    pub created: bool,
    /// Unix seconds.
    pub since: u64,
}

/// What `restore` removed of the things vfioctl created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct SharedRestoreReport {
    /// UUIDs of the mediated devices removed.
    pub mdevs_removed: Vec<String>,
    /// PFs whose VFs were disabled, with how many.
    pub vfs_removed: Vec<(Bdf, u32)>,
    /// What could not be removed, with why.
    pub failed: Vec<String>,
}

/// Remove every mediated device, then every PF's VFs, that the ledger says vfioctl
/// created. Run after the devices themselves were given back (`bind::restore`): a VF
/// still bound by vfioctl is refused and reported in `failed`.
pub fn restore_created(
    root: &SysRoot,
    timeout: Duration,
) -> Result<SharedRestoreReport, SharedError> {
    let mut ledger = Ledger::open(root)?;
    let mut out = SharedRestoreReport::default();
    let uuids: Vec<String> = ledger.data.mdevs.keys().cloned().collect();
    for u in uuids {
        match mdev::remove_locked(root, &mut ledger, &u, timeout, false) {
            Ok(()) => out.mdevs_removed.push(u),
            Err(e) => out.failed.push(format!("mdev {u}: {}", chain(&e))),
        }
    }
    let pfs: Vec<Bdf> = ledger.data.sriov.keys().copied().collect();
    for pf in pfs {
        match sriov::remove_locked(root, &mut ledger, pf, timeout, false) {
            Ok(r) => out.vfs_removed.push((pf, r.removed)),
            Err(SharedError::Pci(vfioctl_common::PciError::NotFound { .. })) => {
                // The PF itself is gone (hot-removed): nothing left to disable.
                ledger.data.sriov.remove(&pf);
                ledger.save()?;
            }
            Err(e) => out.failed.push(format!("{pf}: {}", chain(&e))),
        }
    }
    Ok(out)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
