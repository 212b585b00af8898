//! SR-IOV virtual functions: `vfioctl vf list [PF]`, `vf create PF --count N`, `vf remove PF`.
//!
//! The kernel's interface, per physical function (PF) directory:
//! `sriov_totalvfs` (what the device offers), `sriov_numvfs` (write N to enable N VFs,
//! 0 to disable; a non-zero value can only be written while it is 0),
//! `sriov_drivers_autoprobe` (whether new VFs are probed by their host driver), and one
//! `virtfnN -> ../<vf bdf>` link per enabled VF; each VF has `physfn -> ../<pf bdf>`.
//!
//! Creating VFs meant for vfio-pci turns autoprobe off first, so no host driver grabs
//! them, and records the PF in the ledger *before* the write, so an interrupted run is
//! undone by `restore`. Binding the VFs is the bind planner's job (`vfioctl bind <vf>`):
//! each VF is a PCI function with its own IOMMU group when ACS isolates it.

use std::time::{Duration, Instant};

use serde::Serialize;
use vfioctl_common::pci::enumerate;
use vfioctl_common::{Bdf, PciDevice, SysRoot};

use super::error::SharedError;
use super::ledger::SriovRecord;
use crate::bind::write::{write_timed, TimedError};
use crate::bind::Ledger;

/// One virtual function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct VfInfo {
    /// The VF's PCI address.
    pub bdf: Bdf,
    /// N of the PF's `virtfnN` link.
    pub index: u32,
    /// The VF's IOMMU group number (`iommu_group` link).
    pub iommu_group: Option<u32>,
    /// The driver the VF is bound to, if any.
    pub driver: Option<String>,
    /// NVIDIA Ampere+ vGPU on this VF (`nvidia/current_vgpu_type`): the type id, 0 = none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vgpu_type: Option<u32>,
}

/// A physical function and its VFs (`vf list --json`, one object per PF).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PfStatus {
    /// The PF's PCI address.
    pub pf: Bdf,
    /// 4 lower-case hex digits (see `crate::output::pci_id`).
    #[serde(serialize_with = "crate::output::pci_id::id16")]
    #[schemars(with = "crate::output::pci_id::Id16Schema")]
    pub vendor: u16,
    #[serde(serialize_with = "crate::output::pci_id::id16")]
    #[schemars(with = "crate::output::pci_id::Id16Schema")]
    /// The PF's device id: 4 lower-case hex digits.
    pub device: u16,
    /// The PF's own driver (which enables the VFs).
    pub driver: Option<String>,
    /// `sriov_totalvfs`: the most VFs the device offers.
    pub total_vfs: u32,
    /// `sriov_numvfs`: the VFs enabled now.
    pub num_vfs: u32,
    /// `sriov_drivers_autoprobe`: new VFs are probed by their host driver.
    pub drivers_autoprobe: Option<bool>,
    /// `sriov_vf_device`: the VFs' device id.
    #[serde(serialize_with = "crate::output::pci_id::opt_id16")]
    #[schemars(with = "Option<crate::output::pci_id::Id16Schema>")]
    pub vf_device: Option<u16>,
    /// vfioctl created the VFs (the ledger records the PF).
    pub created_by_vfioctl: bool,
    /// The enabled VFs, by index.
    pub vfs: Vec<VfInfo>,
}

fn pf_dir(pf: Bdf) -> String {
    pf.sysfs_path()
}

fn parse_u32(s: &str) -> Option<u32> {
    s.trim().parse().ok()
}

fn read_u32(root: &SysRoot, abs: &str) -> Result<Option<u32>, SharedError> {
    Ok(root.read_attr_opt(abs)?.as_deref().and_then(parse_u32))
}

/// The VF's PF and index when `bdf` is a VF (`physfn` link).
pub fn physfn(root: &SysRoot, bdf: Bdf) -> Result<Option<(Bdf, u32)>, SharedError> {
    let Some(pf) = root.link_name(format!("{}/physfn", bdf.sysfs_path()))? else {
        return Ok(None);
    };
    let Ok(pf) = pf.parse::<Bdf>() else {
        return Ok(None);
    };
    let index = virtfns(root, pf)?
        .into_iter()
        .find(|(_, b)| *b == bdf)
        .map(|(i, _)| i)
        .unwrap_or(0);
    Ok(Some((pf, index)))
}

/// `virtfnN` links of a PF: (N, VF address), by N.
pub fn virtfns(root: &SysRoot, pf: Bdf) -> Result<Vec<(u32, Bdf)>, SharedError> {
    let dir = pf_dir(pf);
    let mut out = Vec::new();
    for name in root.list_opt(&dir)? {
        let Some(n) = name
            .strip_prefix("virtfn")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(target) = root.link_name(format!("{dir}/{name}"))? {
            if let Ok(b) = target.parse::<Bdf>() {
                out.push((n, b));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn vf_info(root: &SysRoot, index: u32, bdf: Bdf) -> Result<VfInfo, SharedError> {
    let dir = bdf.sysfs_path();
    let iommu_group = root
        .link_name(format!("{dir}/iommu_group"))?
        .and_then(|g| g.parse().ok());
    let driver = root.link_name(format!("{dir}/driver"))?;
    let vgpu_type = read_u32(root, &format!("{dir}/nvidia/current_vgpu_type"))?;
    Ok(VfInfo {
        bdf,
        index,
        iommu_group,
        driver,
        vgpu_type,
    })
}

/// The state of one PF. A VF address gives [`SharedError::IsVf`]; a function without
/// SR-IOV gives [`SharedError::NotSriov`].
pub fn status(root: &SysRoot, pf: Bdf) -> Result<PfStatus, SharedError> {
    let dev = PciDevice::read(root, pf)?;
    let dir = pf_dir(pf);
    let Some(total_vfs) = read_u32(root, &format!("{dir}/sriov_totalvfs"))? else {
        if let Some((p, index)) = physfn(root, pf)? {
            return Err(SharedError::IsVf {
                bdf: pf,
                pf: p,
                index,
            });
        }
        return Err(SharedError::NotSriov { pf });
    };
    let num_vfs = read_u32(root, &format!("{dir}/sriov_numvfs"))?.unwrap_or(0);
    let drivers_autoprobe = root
        .read_attr_opt(format!("{dir}/sriov_drivers_autoprobe"))?
        .map(|s| s == "1");
    let vf_device = root
        .read_attr_opt(format!("{dir}/sriov_vf_device"))?
        .and_then(|s| u16::from_str_radix(s.trim_start_matches("0x"), 16).ok());
    let vfs = virtfns(root, pf)?
        .into_iter()
        .map(|(i, b)| vf_info(root, i, b))
        .collect::<Result<Vec<_>, _>>()?;
    let created_by_vfioctl = Ledger::peek(root)?.is_some_and(|l| l.sriov.contains_key(&pf));
    Ok(PfStatus {
        pf,
        vendor: dev.vendor,
        device: dev.device,
        driver: dev.driver,
        total_vfs,
        num_vfs,
        drivers_autoprobe,
        vf_device,
        created_by_vfioctl,
        vfs,
    })
}

/// Every SR-IOV capable PF (devices with `sriov_totalvfs`), by address.
pub fn list(root: &SysRoot) -> Result<Vec<PfStatus>, SharedError> {
    let mut out = Vec::new();
    for b in enumerate(root)? {
        if root.exists(format!("{}/sriov_totalvfs", b.sysfs_path())) {
            out.push(status(root, b)?);
        }
    }
    Ok(out)
}

/// How `create` and `remove` behave.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long one sysfs write, and the wait for the VFs to appear or go, may take.
    pub timeout: Duration,
    /// Leave `sriov_drivers_autoprobe` on (the VFs go to their host driver). Off by
    /// default: VFs created by vfioctl are meant for vfio-pci.
    pub autoprobe: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            autoprobe: false,
        }
    }
}

/// One sysfs write, with the timeout, as a typed error.
pub(crate) fn write(
    root: &SysRoot,
    abs: &str,
    value: &str,
    t: Duration,
) -> Result<(), SharedError> {
    write_timed(root, abs, value, t).map_err(|e| match e {
        TimedError::Timeout { .. } => SharedError::Timeout {
            path: abs.into(),
            value: value.into(),
            secs: t.as_secs(),
        },
        TimedError::Io(source) => SharedError::Write {
            path: abs.into(),
            value: value.into(),
            source,
        },
    })
}

/// Poll `done` every 20 ms until it holds or `timeout` passes; the last value read.
pub(crate) fn wait_until<T>(
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, SharedError>,
    done: impl Fn(&T) -> bool,
) -> Result<(bool, T), SharedError> {
    let start = Instant::now();
    loop {
        let v = probe()?;
        if done(&v) {
            return Ok((true, v));
        }
        if start.elapsed() >= timeout {
            return Ok((false, v));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The sysfs writes `create` makes, in order, for the dry run and the docs.
pub fn create_writes(pf: Bdf, count: u32, autoprobe_off: bool) -> Vec<String> {
    let dir = pf_dir(pf);
    let mut v = Vec::new();
    if autoprobe_off {
        v.push(format!("echo 0 > {dir}/sriov_drivers_autoprobe"));
    }
    v.push(format!("echo {count} > {dir}/sriov_numvfs"));
    v
}

/// Enable `count` VFs on `pf`. The PF is recorded in the ledger before the write and the
/// VFs are waited for; when they do not all appear in time, the VFs are disabled again,
/// autoprobe is put back and the ledger entry dropped ([`SharedError::VfsDidNotAppear`]).
pub fn create(
    root: &SysRoot,
    pf: Bdf,
    count: u32,
    opts: &Options,
) -> Result<PfStatus, SharedError> {
    let before = status(root, pf)?;
    if count == 0 || count > before.total_vfs {
        return Err(SharedError::CountOutOfRange {
            pf,
            count,
            total: before.total_vfs,
        });
    }
    if before.num_vfs != 0 {
        return Err(SharedError::VfsAlreadyEnabled {
            pf,
            num_vfs: before.num_vfs,
            by_vfioctl: before.created_by_vfioctl,
        });
    }
    if before.driver.is_none() {
        return Err(SharedError::PfNoDriver { pf });
    }
    let dir = pf_dir(pf);
    let mut ledger = Ledger::open(root)?;
    ledger.data.sriov.insert(
        pf,
        SriovRecord {
            count,
            original_autoprobe: before.drivers_autoprobe,
            created: false,
            since: now(),
        },
    );
    ledger.save()?;

    let turn_off = !opts.autoprobe && before.drivers_autoprobe == Some(true);
    let r = (|| {
        if turn_off {
            write(
                root,
                &format!("{dir}/sriov_drivers_autoprobe"),
                "0",
                opts.timeout,
            )?;
        }
        write(
            root,
            &format!("{dir}/sriov_numvfs"),
            &count.to_string(),
            opts.timeout,
        )?;
        let (ok, got) = wait_until(
            opts.timeout,
            || {
                Ok(virtfns(root, pf)?
                    .iter()
                    .filter(|(_, b)| root.exists(b.sysfs_path()))
                    .count() as u32)
            },
            |n| *n >= count,
        )?;
        if !ok {
            return Err(SharedError::VfsDidNotAppear {
                pf,
                want: count,
                got,
                secs: opts.timeout.as_secs(),
            });
        }
        Ok(())
    })();
    match r {
        Ok(()) => {
            if let Some(rec) = ledger.data.sriov.get_mut(&pf) {
                rec.created = true;
            }
            ledger.save()?;
            drop(ledger);
            status(root, pf)
        }
        Err(e) => {
            // Undo: disable whatever appeared, put autoprobe back, forget the PF.
            let _ = write(root, &format!("{dir}/sriov_numvfs"), "0", opts.timeout);
            if turn_off {
                let _ = write(
                    root,
                    &format!("{dir}/sriov_drivers_autoprobe"),
                    "1",
                    opts.timeout,
                );
            }
            ledger.data.sriov.remove(&pf);
            ledger.save()?;
            Err(e)
        }
    }
}

/// What `remove` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct RemoveReport {
    /// The physical function.
    pub pf: Bdf,
    /// How many VFs were disabled (`sriov_numvfs` or the VFs listed before, the larger).
    pub removed: u32,
    /// `sriov_drivers_autoprobe` put back to this value.
    pub drivers_autoprobe: Option<bool>,
}

/// Disable the VFs of `pf` that vfioctl created (any VFs with `force`). Refused while a
/// VF is still in the bind ledger (bound by vfioctl): give it back first.
pub fn remove(
    root: &SysRoot,
    pf: Bdf,
    timeout: Duration,
    force: bool,
) -> Result<RemoveReport, SharedError> {
    let mut ledger = Ledger::open(root)?;
    remove_locked(root, &mut ledger, pf, timeout, force)
}

pub(crate) fn remove_locked(
    root: &SysRoot,
    ledger: &mut Ledger,
    pf: Bdf,
    timeout: Duration,
    force: bool,
) -> Result<RemoveReport, SharedError> {
    let st = status(root, pf)?;
    let rec = ledger.data.sriov.get(&pf).cloned();
    if rec.is_none() && !force {
        return Err(SharedError::NotCreatedByVfioctl { pf });
    }
    let held: Vec<Bdf> = st
        .vfs
        .iter()
        .map(|v| v.bdf)
        .filter(|b| ledger.data.devices.contains_key(b))
        .collect();
    if !held.is_empty() {
        return Err(SharedError::VfsInUse { pf, vfs: held });
    }
    let dir = pf_dir(pf);
    let removed = st.num_vfs.max(st.vfs.len() as u32);
    if st.num_vfs != 0 {
        write(root, &format!("{dir}/sriov_numvfs"), "0", timeout)?;
    }
    let (ok, left) = wait_until(
        timeout,
        || {
            Ok(virtfns(root, pf)?
                .iter()
                .filter(|(_, b)| root.exists(b.sysfs_path()))
                .count() as u32)
        },
        |n| *n == 0,
    )?;
    if !ok {
        return Err(SharedError::VfsDidNotGo {
            pf,
            left,
            secs: timeout.as_secs(),
        });
    }
    let autoprobe = rec.as_ref().and_then(|r| r.original_autoprobe);
    if let Some(orig) = autoprobe {
        if st.drivers_autoprobe != Some(orig) {
            write(
                root,
                &format!("{dir}/sriov_drivers_autoprobe"),
                if orig { "1" } else { "0" },
                timeout,
            )?;
        }
    }
    ledger.data.sriov.remove(&pf);
    ledger.save()?;
    Ok(RemoveReport {
        pf,
        removed,
        drivers_autoprobe: autoprobe.or(st.drivers_autoprobe),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_writes_turn_autoprobe_off_first() {
        let pf: Bdf = "0000:41:00.0".parse().unwrap();
        assert_eq!(
            create_writes(pf, 4, true),
            vec![
                "echo 0 > /sys/bus/pci/devices/0000:41:00.0/sriov_drivers_autoprobe",
                "echo 4 > /sys/bus/pci/devices/0000:41:00.0/sriov_numvfs",
            ]
        );
        assert_eq!(create_writes(pf, 2, false).len(), 1);
    }
}
