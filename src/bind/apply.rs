//! Carrying out a plan against sysfs, verifying every step, rolling the whole plan back on
//! any failure; and putting devices back from the ledger (`unbind`, `restore`).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use vfioctl_common::{Bdf, PciDevice, SysRoot};

use super::driver::{self, Loaded};
use super::error::BindError;
use super::ledger::{Entry, Ledger};
use super::persist;
use super::plan::{Member, Plan};
use super::safety;
use super::state::{BindState, Tracker};
use super::write::{fault_point, write_timed, TimedError};

#[derive(Clone, Debug)]
pub struct Options {
    /// Limit for each write that can block in the kernel (unbind, probe, bind).
    pub timeout: Duration,
    /// Write a boot-time override for each bound device.
    pub persist: bool,
}

/// What happened to one device.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceOutcome {
    pub bdf: Bdf,
    pub from: Option<String>,
    pub to: String,
    pub state: BindState,
    pub history: Vec<BindState>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BindReport {
    pub loaded: Vec<Loaded>,
    pub devices: Vec<DeviceOutcome>,
    /// `/dev/vfio/<group>` per bound group.
    pub group_nodes: Vec<String>,
    pub persisted: Vec<String>,
    pub warnings: Vec<String>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn timed(
    root: &SysRoot,
    abs: &str,
    value: &str,
    timeout: Duration,
    holders: impl FnOnce() -> Vec<String>,
) -> Result<(), BindError> {
    write_timed(root, abs, value, timeout).map_err(|e| match e {
        TimedError::Timeout => BindError::Timeout {
            path: abs.to_string(),
            value: value.to_string(),
            secs: timeout.as_secs(),
            holders: holders(),
        },
        TimedError::Io(source) => BindError::Write {
            path: abs.to_string(),
            value: value.to_string(),
            source,
        },
    })
}

fn write_override(root: &SysRoot, bdf: Bdf, value: Option<&str>) -> Result<(), BindError> {
    let abs = format!("{}/driver_override", bdf.sysfs_path());
    // An empty write never reaches the store function; "\n" clears the override.
    let v = value.unwrap_or("\n");
    super::write::write_attr(root, &abs, v).map_err(|source| BindError::Write {
        path: abs,
        value: v.to_string(),
        source,
    })
}

fn current_driver(root: &SysRoot, bdf: Bdf) -> Result<Option<String>, BindError> {
    Ok(root.link_name(format!("{}/driver", bdf.sysfs_path()))?)
}

fn holders(root: &SysRoot, bdf: Bdf) -> Vec<String> {
    match PciDevice::read(root, bdf) {
        Ok(d) => safety::holders_of(root, &d),
        Err(_) => Vec::new(),
    }
}

/// Unbind `bdf` from whatever it is on, with the timeout.
fn unbind_current(root: &SysRoot, bdf: Bdf, timeout: Duration) -> Result<(), BindError> {
    if let Some(d) = current_driver(root, bdf)? {
        timed(
            root,
            &format!("/sys/bus/pci/drivers/{d}/unbind"),
            &bdf.to_string(),
            timeout,
            || holders(root, bdf),
        )?;
    }
    Ok(())
}

/// Bind one device: override, unbind, probe, verify. The tracker follows every step.
fn bind_one(
    root: &SysRoot,
    m: &Member,
    to: &str,
    timeout: Duration,
    t: &mut Tracker,
) -> Result<(), BindError> {
    let bdf = m.bdf;
    write_override(root, bdf, Some(to))?;
    t.go(BindState::OverrideWritten);
    tracing::debug!("{bdf}: override written");
    fault_point("override");
    unbind_current(root, bdf, timeout)?;
    t.go(BindState::Unbound);
    tracing::debug!("{bdf}: unbound");
    fault_point("unbind");
    let probe = timed(
        root,
        "/sys/bus/pci/drivers_probe",
        &bdf.to_string(),
        timeout,
        || holders(root, bdf),
    );
    t.go(BindState::Probed);
    tracing::debug!("{bdf}: probed");
    fault_point("probe");
    // drivers_probe returns success even when no driver bound; the `driver` link is the
    // truth. If the probe did not bind, ask the driver directly: its bind write returns
    // the real error.
    let mut got = current_driver(root, bdf)?;
    if got.as_deref() != Some(to) {
        let direct = timed(
            root,
            &format!("/sys/bus/pci/drivers/{to}/bind"),
            &bdf.to_string(),
            timeout,
            Vec::new,
        );
        got = current_driver(root, bdf)?;
        if got.as_deref() != Some(to) {
            tracing::debug!("{bdf}: probe {probe:?}, direct bind {direct:?}");
            if let Err(e @ BindError::Timeout { .. }) = probe {
                return Err(e);
            }
            return Err(BindError::NotBound {
                bdf,
                want: to.into(),
                got,
            });
        }
    }
    t.go(BindState::OnVfio);
    tracing::debug!("{bdf}: verified on {to}");
    Ok(())
}

/// Put one device back to `original_driver` + `original_override`, verified.
pub fn restore_device(
    root: &SysRoot,
    bdf: Bdf,
    e: &Entry,
    timeout: Duration,
    t: &mut Tracker,
) -> Result<(), BindError> {
    t.go(BindState::RollingBack);
    let r = (|| {
        let dev = PciDevice::read(root, bdf)?;
        if dev.driver_override != e.original_override {
            write_override(root, bdf, e.original_override.as_deref())?;
        }
        if dev.driver == e.original_driver {
            return Ok(());
        }
        unbind_current(root, bdf, timeout)?;
        let Some(orig) = &e.original_driver else {
            return Ok(());
        };
        let bdf_s = bdf.to_string();
        let direct = match driver::driver_dir(root, orig) {
            Some(dir) => timed(
                root,
                &format!("/sys/bus/pci/drivers/{dir}/bind"),
                &bdf_s,
                timeout,
                || holders(root, bdf),
            ),
            None => Err(BindError::DriverMissing {
                driver: orig.clone(),
                reason: "its driver directory is gone (module unloaded?)".into(),
            }),
        };
        if direct.is_err() || current_driver(root, bdf)?.as_deref() != Some(orig.as_str()) {
            tracing::debug!(
                "{bdf}: direct bind to {orig}: {direct:?}; falling back to drivers_probe"
            );
            timed(root, "/sys/bus/pci/drivers_probe", &bdf_s, timeout, || {
                holders(root, bdf)
            })?;
        }
        let got = current_driver(root, bdf)?;
        if got.as_deref() != Some(orig.as_str()) {
            return Err(BindError::NotBound {
                bdf,
                want: orig.clone(),
                got,
            });
        }
        Ok(())
    })();
    t.go(if r.is_ok() {
        BindState::Restored
    } else {
        BindState::Failed
    });
    r
}

/// Group node check: `/dev/vfio/<group>` (legacy container API), or the device cdev
/// `/dev/vfio/devices/vfioN` on kernels built without the group interface.
fn group_node(root: &SysRoot, group: u32, members: &[Bdf]) -> Result<String, BindError> {
    let p = format!("/dev/vfio/{group}");
    if root.exists_nofollow(&p) {
        return Ok(p);
    }
    for b in members {
        for n in root.list_opt(format!("{}/vfio-dev", b.sysfs_path()))? {
            let c = format!("/dev/vfio/devices/{n}");
            if root.exists_nofollow(&c) {
                return Ok(c);
            }
        }
    }
    Err(BindError::NoGroupNode { group, path: p })
}

/// Carry out `plan`. On any failure every device already touched is put back, and the
/// error is [`BindError::RolledBack`] (or [`BindError::RollbackFailed`]).
pub fn execute(root: &SysRoot, plan: &Plan, opts: &Options) -> Result<BindReport, BindError> {
    let mut ledger = Ledger::open(root)?;
    tracing::debug!("ledger locked");
    let members: Vec<&Member> = plan.to_bind().collect();
    for m in &members {
        if let Some(e) = ledger.get(&m.bdf) {
            return Err(BindError::Unfinished {
                bdf: m.bdf,
                state: e.state.to_string(),
            });
        }
    }
    let mut loaded = Vec::new();
    for d in plan.drivers() {
        loaded.push(driver::ensure_loaded(root, &d)?);
    }
    let resolve = |want: &str| -> (String, bool) {
        let l = loaded.iter().find(|l| {
            l.driver() == want
                || l.driver() == want.replace('_', "-")
                || l.driver() == want.replace('-', "_")
        });
        match l {
            Some(l) => (l.driver().to_string(), l.by_vfioctl()),
            None => (want.to_string(), false),
        }
    };
    let plan_id = format!("{}-{}", now(), std::process::id());
    for m in &members {
        let (to, by_us) = resolve(m.target().unwrap_or_default());
        ledger.record(
            m.bdf,
            Entry {
                original_driver: m.driver.clone(),
                original_override: m.driver_override.clone(),
                target_driver: to,
                iommu_group: plan
                    .groups
                    .iter()
                    .find(|g| g.members.iter().any(|x| x.bdf == m.bdf))
                    .map(|g| g.group),
                module_loaded_by_vfioctl: by_us,
                sriov_numvfs: m.sriov_numvfs,
                state: BindState::HostDriver,
                persisted: false,
                since: now(),
                plan: plan_id.clone(),
            },
        );
    }
    ledger.save()?;
    tracing::debug!("ledger recorded");

    let mut done: Vec<(Bdf, Tracker)> = Vec::new();
    let mut failure: Option<BindError> = None;
    for m in &members {
        let to = ledger
            .get(&m.bdf)
            .map(|e| e.target_driver.clone())
            .unwrap_or_default();
        let mut t = Tracker::new();
        let r = bind_one(root, m, &to, opts.timeout, &mut t);
        done.push((m.bdf, t));
        if let Err(e) = r {
            failure = Some(e);
            break;
        }
    }
    let mut group_nodes = Vec::new();
    if failure.is_none() {
        for g in &plan.groups {
            if !g.members.iter().any(|m| m.target().is_some()) {
                continue;
            }
            let bdfs: Vec<Bdf> = g.members.iter().map(|m| m.bdf).collect();
            match group_node(root, g.group, &bdfs) {
                Ok(p) => group_nodes.push(p),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
    }

    if let Some(cause) = failure {
        let mut errors = Vec::new();
        for (bdf, t) in done.iter_mut().rev() {
            let entry = ledger.get(bdf).cloned().expect("recorded above");
            match restore_device(root, *bdf, &entry, opts.timeout, t) {
                Ok(()) => {
                    ledger.remove(bdf);
                }
                Err(e) => {
                    ledger.set_state(bdf, BindState::Failed);
                    errors.push(format!("{bdf}: {e}"));
                }
            }
        }
        // Devices recorded but never touched.
        for m in &members {
            if !done.iter().any(|(b, _)| *b == m.bdf) {
                ledger.remove(&m.bdf);
            }
        }
        ledger.save()?;
        return Err(if errors.is_empty() {
            BindError::RolledBack {
                cause: Box::new(cause),
            }
        } else {
            BindError::RollbackFailed {
                cause: Box::new(cause),
                rollback: errors,
            }
        });
    }

    let mut persisted = Vec::new();
    let mut warnings = Vec::new();
    if opts.persist {
        for (bdf, _) in &done {
            let to = ledger
                .get(bdf)
                .map(|e| e.target_driver.clone())
                .unwrap_or_default();
            let p = persist::write(root, *bdf, &to)?;
            persisted.push(p);
            if let Some(e) = ledger.data.devices.get_mut(bdf) {
                e.persisted = true;
            }
        }
        if let Some(w) = persist::warning(root) {
            warnings.push(w);
        }
    }
    for (bdf, _) in &done {
        ledger.set_state(bdf, BindState::OnVfio);
    }
    ledger.save()?;
    tracing::debug!("ledger updated");
    Ok(BindReport {
        loaded,
        devices: done
            .into_iter()
            .map(|(bdf, t)| {
                let e = ledger.get(&bdf).cloned().expect("recorded");
                DeviceOutcome {
                    bdf,
                    from: e.original_driver,
                    to: e.target_driver,
                    state: t.state(),
                    history: t.history().to_vec(),
                }
            })
            .collect(),
        group_nodes,
        persisted,
        warnings,
    })
}

/// What `restore`/`unbind` did to one device.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreOutcome {
    pub bdf: Bdf,
    /// The driver it was given back to (`None`: left driverless, as it was).
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    pub state: BindState,
    pub error: Option<String>,
    pub persist_removed: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub devices: Vec<RestoreOutcome>,
    pub unloaded: Vec<String>,
}

/// Put back the ledger entries for `bdfs` (all entries when `None`), clearing each entry
/// that was restored. `remove_persist` also deletes boot-time overrides.
pub fn restore(
    root: &SysRoot,
    bdfs: Option<&[Bdf]>,
    timeout: Duration,
    remove_persist: bool,
) -> Result<RestoreReport, BindError> {
    let mut ledger = Ledger::open(root)?;
    let targets: Vec<Bdf> = match bdfs {
        Some(b) => {
            for x in b {
                if ledger.get(x).is_none() {
                    return Err(BindError::NotInLedger { bdf: *x });
                }
            }
            b.to_vec()
        }
        None => ledger.bdfs(),
    };
    let mut out = Vec::new();
    let mut modules: BTreeSet<String> = BTreeSet::new();
    for bdf in targets.iter().rev() {
        let e = ledger.get(bdf).cloned().expect("checked");
        // A recorded device is somewhere between HostDriver (recorded, bind under way:
        // any step may have happened) and OnVfio, or Failed from an earlier attempt.
        let mut t = Tracker::at(match e.state {
            BindState::HostDriver => BindState::OverrideWritten,
            s => s,
        });
        let r = restore_device(root, *bdf, &e, timeout, &mut t);
        let mut persist_removed = None;
        if r.is_ok() {
            if remove_persist || e.persisted {
                persist_removed = persist::remove(root, *bdf)?;
            }
            if e.module_loaded_by_vfioctl {
                modules.insert(e.target_driver.clone());
            }
            ledger.remove(bdf);
        } else {
            ledger.set_state(bdf, BindState::Failed);
        }
        out.push(RestoreOutcome {
            bdf: *bdf,
            driver: e.original_driver.clone(),
            driver_override: e.original_override.clone(),
            state: t.state(),
            error: r.err().map(|e| e.to_string()),
            persist_removed,
        });
        ledger.save()?;
    }
    // Unload what vfioctl loaded, once nothing of the ledger is left on it and no other
    // device uses it (real host only).
    let mut unloaded = Vec::new();
    if root.is_host() {
        for m in modules {
            let still = ledger.data.devices.values().any(|e| e.target_driver == m);
            let users = root
                .list_opt(format!("/sys/bus/pci/drivers/{m}"))?
                .iter()
                .any(|n| n.parse::<Bdf>().is_ok());
            if !still && !users {
                let module = m.replace('-', "_");
                let ok = std::process::Command::new("modprobe")
                    .args(["-r", &module])
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    unloaded.push(module);
                }
            }
        }
    }
    out.reverse();
    let failed: Vec<String> = out
        .iter()
        .filter_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.bdf)))
        .collect();
    if !failed.is_empty() {
        return Err(BindError::RestoreFailed {
            failed: failed.len(),
            details: failed,
        });
    }
    Ok(RestoreReport {
        devices: out,
        unloaded,
    })
}
