//! Carrying out a plan against sysfs, verifying every step, rolling the whole plan back on
//! any failure; and putting devices back from the ledger (`unbind`, `restore`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use vfioctl_common::pci::PciError;
use vfioctl_common::{Bdf, PciDevice, SysRoot};

use super::driver::{self, Loaded};
use super::error::BindError;
use super::flow::{Prepared, Step};
use super::ledger::{Entry, Ledger};
use super::persist;
use super::safety;
use super::state::{BindState, Tracker};
use super::timing::Laps;
use super::write::{self, fault_point, write_timed, TimedError};

/// What happened to one device.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DeviceOutcome {
    /// The device.
    pub bdf: Bdf,
    /// Its original driver (`None`: driverless).
    pub from: Option<String>,
    /// The driver it was bound to.
    pub to: String,
    /// Its final state (`on-vfio` after a successful bind).
    pub state: BindState,
    /// Every state it went through, in order.
    pub history: Vec<BindState>,
}

/// What [`execute`] did.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct BindReport {
    /// How each target driver was made available.
    pub loaded: Vec<Loaded>,
    /// Every device moved, in plan order.
    pub devices: Vec<DeviceOutcome>,
    /// `/dev/vfio/<group>` per bound group.
    pub group_nodes: Vec<String>,
    /// Boot-time override files written (`/etc/driverctl.d/pci-<bdf>`).
    pub persisted: Vec<String>,
    /// Things to know that did not stop the bind (e.g. driverctl not installed).
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
        TimedError::Timeout { pending: Some(pid) } => match value.parse::<Bdf>() {
            Ok(bdf) => BindError::WritePending {
                bdf,
                path: abs.to_string(),
                value: value.to_string(),
                pid,
            },
            Err(_) => BindError::Timeout {
                path: abs.to_string(),
                value: value.to_string(),
                secs: timeout.as_secs(),
                holders: holders(),
            },
        },
        TimedError::Timeout { pending: None } => BindError::Timeout {
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

/// A device's `driver` and `driver_override` as they are now.
struct Binding {
    driver: Option<String>,
    driver_override: Option<String>,
}

/// Read back what a plan was made against: [`PciDevice`]'s `driver` and
/// `driver_override`, read and normalized as [`PciDevice::read`] reads them, and nothing
/// else. Telling whether someone moved a device needs no config space, BARs or link
/// state; under TCG the whole device read cost 1.5-3 ms more per device.
fn binding_now(root: &SysRoot, bdf: Bdf) -> Result<Binding, BindError> {
    let link = bdf.sysfs_path();
    let sys = |source| BindError::from(PciError::Sys { bdf, source });
    let dir = match root.open_dir(&link) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Err(PciError::NotFound { bdf, path: link }.into()),
        Err(e) => return Err(sys(e)),
    };
    let driver = dir.link_name("driver").map_err(sys)?;
    let driver_override = dir
        .read_attr_opt("driver_override")
        .map_err(sys)?
        .filter(|s| s != "(null)" && !s.is_empty());
    Ok(Binding {
        driver,
        driver_override,
    })
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

/// A write for `bdf` still blocked in the kernel, if any.
fn pending_for(bdf: Bdf) -> Option<BindError> {
    let b = bdf.to_string();
    write::pending()
        .into_iter()
        .find(|p| p.value == b)
        .map(|p| BindError::WritePending {
            bdf,
            path: p.path,
            value: p.value,
            pid: p.pid,
        })
}

/// Put one device back to `original_driver` + `original_override`, then re-read both
/// and report `Restored` only when that is what the device shows. A device with a write
/// still blocked in the kernel is not touched: its state is not known yet.
/// `fault` names the fault points (`rollback` or `restore`) and `n` the device's ordinal.
pub fn restore_device(
    root: &SysRoot,
    bdf: Bdf,
    e: &Entry,
    timeout: Duration,
    t: &mut Tracker,
    fault: &str,
    n: usize,
) -> Result<(), BindError> {
    t.go(BindState::RollingBack)?;
    let r = (|| {
        if let Some(p) = pending_for(bdf) {
            return Err(p);
        }
        let dev = PciDevice::read(root, bdf)?;
        if dev.driver_override != e.original_override {
            write_override(root, bdf, e.original_override.as_deref())?;
            fault_point(&format!("{fault}-override"), n);
        }
        if dev.driver != e.original_driver {
            unbind_current(root, bdf, timeout)?;
            fault_point(&format!("{fault}-unbind"), n);
            if let Some(orig) = &e.original_driver {
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
                fault_point(&format!("{fault}-bind"), n);
                if direct.is_err() || current_driver(root, bdf)?.as_deref() != Some(orig.as_str()) {
                    tracing::debug!(
                        "{bdf}: direct bind to {orig}: {direct:?}; falling back to drivers_probe"
                    );
                    timed(root, "/sys/bus/pci/drivers_probe", &bdf_s, timeout, || {
                        holders(root, bdf)
                    })?;
                    fault_point(&format!("{fault}-probe"), n);
                }
            }
        }
        // The final state, read back: what is reported is what the device shows.
        let now = PciDevice::read(root, bdf)?;
        if now.driver != e.original_driver {
            return Err(BindError::NotBound {
                bdf,
                want: e
                    .original_driver
                    .clone()
                    .unwrap_or_else(|| "no driver".into()),
                got: now.driver,
            });
        }
        if now.driver_override != e.original_override {
            return Err(BindError::Changed {
                bdf,
                what: format!(
                    "driver_override reads {:?} after restoring {:?}",
                    now.driver_override, e.original_override
                ),
            });
        }
        Ok(())
    })();
    t.go(if r.is_ok() {
        BindState::Restored
    } else {
        BindState::Failed
    })?;
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

/// The state of one `execute` run.
struct Run<'a> {
    p: &'a Prepared,
    loaded: Vec<Loaded>,
    /// Devices touched, in order, with their trackers.
    done: Vec<(Bdf, Tracker)>,
    /// Result of each device's probe write (a timeout there explains a failed verify).
    probes: BTreeMap<Bdf, Result<(), BindError>>,
    group_nodes: Vec<String>,
    persisted: Vec<String>,
    plan_id: String,
}

impl Run<'_> {
    fn ordinal(&self, bdf: Bdf) -> usize {
        self.p
            .plan
            .to_bind()
            .position(|m| m.bdf == bdf)
            .map_or(1, |i| i + 1)
    }

    fn tracker(&mut self, bdf: Bdf) -> &mut Tracker {
        if !self.done.iter().any(|(b, _)| *b == bdf) {
            self.done.push((bdf, Tracker::new(bdf)));
        }
        &mut self
            .done
            .iter_mut()
            .find(|(b, _)| *b == bdf)
            .expect("pushed above")
            .1
    }

    /// The driver name as registered (after a module load it may be spelt `_`).
    fn resolve(&self, want: &str) -> String {
        self.loaded
            .iter()
            .find(|l| {
                l.driver() == want
                    || l.driver() == want.replace('_', "-")
                    || l.driver() == want.replace('-', "_")
            })
            .map(|l| l.driver().to_string())
            .unwrap_or_else(|| want.to_string())
    }

    fn step(&mut self, step: &Step, ledger: &mut Ledger) -> Result<(), BindError> {
        let root = &self.p.root;
        let timeout = self.p.opts.timeout;
        match step {
            Step::LoadModule { driver: d, .. } => {
                let l = driver::ensure_loaded(root, d)?;
                self.loaded.push(l);
            }
            Step::RecordLedger { persist } => {
                for m in self.p.plan.to_bind() {
                    let to = self.resolve(m.target().unwrap_or_default());
                    let by_us = self
                        .loaded
                        .iter()
                        .any(|l| l.driver() == to && l.by_vfioctl());
                    ledger.record(
                        m.bdf,
                        Entry {
                            original_driver: m.driver.clone(),
                            original_override: m.driver_override.clone(),
                            target_driver: to,
                            iommu_group: self
                                .p
                                .plan
                                .groups
                                .iter()
                                .find(|g| g.members.iter().any(|x| x.bdf == m.bdf))
                                .map(|g| g.group),
                            module_loaded_by_vfioctl: by_us,
                            sriov_numvfs: m.sriov_numvfs,
                            state: BindState::HostDriver,
                            persisted: *persist,
                            since: now(),
                            plan: self.plan_id.clone(),
                        },
                    );
                }
                ledger.save()?;
                tracing::debug!("ledger recorded");
            }
            Step::Override { bdf, to } => {
                let to = self.resolve(to);
                write_override(root, *bdf, Some(&to))?;
                self.tracker(*bdf).go(BindState::OverrideWritten)?;
            }
            Step::Unbind { bdf, .. } => {
                // Whatever it is on now (the plan was checked against it under the lock).
                unbind_current(root, *bdf, timeout)?;
                self.tracker(*bdf).go(BindState::Unbound)?;
            }
            Step::Probe { bdf } => {
                if self.tracker(*bdf).state() == BindState::OverrideWritten {
                    // A driverless device: nothing was unbound.
                    self.tracker(*bdf).go(BindState::Unbound)?;
                }
                let r = timed(
                    root,
                    "/sys/bus/pci/drivers_probe",
                    &bdf.to_string(),
                    timeout,
                    || holders(root, *bdf),
                );
                if let Err(e @ BindError::WritePending { .. }) = r {
                    return Err(e);
                }
                self.probes.insert(*bdf, r);
                self.tracker(*bdf).go(BindState::Probed)?;
            }
            Step::BindDirect { bdf, to } => {
                // drivers_probe returns success even when no driver bound; the `driver`
                // link is the truth. If the probe did not bind, ask the driver directly:
                // its bind write returns the real error.
                let to = self.resolve(to);
                if current_driver(root, *bdf)?.as_deref() != Some(to.as_str()) {
                    let direct = timed(
                        root,
                        &format!("/sys/bus/pci/drivers/{to}/bind"),
                        &bdf.to_string(),
                        timeout,
                        Vec::new,
                    );
                    if let Err(e @ BindError::WritePending { .. }) = direct {
                        return Err(e);
                    }
                    tracing::debug!("{bdf}: direct bind: {direct:?}");
                }
            }
            Step::Verify { bdf, to } => {
                let to = self.resolve(to);
                let got = current_driver(root, *bdf)?;
                if got.as_deref() != Some(to.as_str()) {
                    if let Some(Err(e @ BindError::Timeout { .. })) = self.probes.remove(bdf) {
                        return Err(e);
                    }
                    return Err(BindError::NotBound {
                        bdf: *bdf,
                        want: to,
                        got,
                    });
                }
                self.tracker(*bdf).go(BindState::OnVfio)?;
                tracing::debug!("{bdf}: verified on {to}");
            }
            Step::GroupNode { group } => {
                let bdfs: Vec<Bdf> = self
                    .p
                    .plan
                    .groups
                    .iter()
                    .filter(|g| g.group == *group)
                    .flat_map(|g| g.members.iter().map(|m| m.bdf))
                    .collect();
                let n = group_node(root, *group, &bdfs)?;
                self.group_nodes.push(n);
                // On a kernel with VFIO device cdevs (iommufd), each bound function's
                // /dev/vfio/devices/vfioN must exist too: that is what an iommufd VM opens.
                for n in crate::shared::backend::verify_cdevs(root, &bdfs)? {
                    if !self.group_nodes.contains(&n) {
                        self.group_nodes.push(n);
                    }
                }
            }
            Step::Persist { bdf, to } => {
                let to = self.resolve(to);
                let p = persist::write(root, *bdf, &to)?;
                self.persisted.push(p);
            }
            Step::LedgerDone => {
                for (bdf, _) in &self.done {
                    ledger.set_state(bdf, BindState::OnVfio);
                }
                ledger.save()?;
                tracing::debug!("ledger updated");
            }
        }
        Ok(())
    }

    /// Put back every device touched, newest first; remove the entries of those restored
    /// and of those never touched, keep the others as `failed`; remove boot-time overrides
    /// this run wrote.
    fn rollback(&mut self, cause: BindError, ledger: &mut Ledger) -> BindError {
        let root = &self.p.root;
        let timeout = self.p.opts.timeout;
        // Writes still blocked in the kernel get a last chance to finish before the
        // devices are read back.
        let _ = write::wait_pending(write::KILL_GRACE);
        let mut errors = Vec::new();
        let order: Vec<Bdf> = self.done.iter().rev().map(|(b, _)| *b).collect();
        for bdf in order {
            let n = self.ordinal(bdf);
            let Some(entry) = ledger.get(&bdf).cloned() else {
                continue;
            };
            let t = self.tracker(bdf);
            match restore_device(root, bdf, &entry, timeout, t, "rollback", n) {
                Ok(()) => {
                    if entry.persisted {
                        if let Err(e) = persist::remove(root, bdf) {
                            errors.push(format!("{bdf}: {e}"));
                        }
                    }
                    ledger.remove(&bdf);
                }
                Err(e) => {
                    ledger.set_state(&bdf, BindState::Failed);
                    errors.push(format!("{bdf}: {e}"));
                }
            }
        }
        // Devices recorded but never touched.
        for m in self.p.plan.to_bind() {
            if !self.done.iter().any(|(b, _)| *b == m.bdf) {
                if let Some(e) = ledger.remove(&m.bdf) {
                    if e.persisted {
                        let _ = persist::remove(root, m.bdf);
                    }
                }
            }
        }
        if let Err(e) = ledger.save() {
            errors.push(format!("saving the ledger: {e}"));
        }
        fault_point("rollback-ledger", 1);
        if errors.is_empty() {
            BindError::RolledBack {
                cause: Box::new(cause),
            }
        } else {
            BindError::RollbackFailed {
                cause: Box::new(cause),
                rollback: errors,
            }
        }
    }
}

/// Run the steps of `p` in order. On any failure every device already touched is put
/// back, and the error is [`BindError::RolledBack`] (or [`BindError::RollbackFailed`]).
pub fn execute(p: &Prepared) -> Result<BindReport, BindError> {
    if !p.blocking.is_empty() {
        return Err(BindError::Refused(p.blocking.clone()));
    }
    let mut report = BindReport {
        loaded: Vec::new(),
        devices: Vec::new(),
        group_nodes: Vec::new(),
        persisted: Vec::new(),
        warnings: Vec::new(),
    };
    if p.plan.is_noop() {
        return Ok(report);
    }
    let root = &p.root;
    let mut laps = Laps::start("execute");
    // One write helper for the run's blocking writes (and a rollback's).
    let _writes = write::Session::begin();
    let mut ledger = Ledger::open(root)?;
    laps.lap("ledger lock and read");
    // The plan was read before the lock: check that nobody moved a device since.
    for m in p.plan.to_bind() {
        let now = binding_now(root, m.bdf)?;
        if let Some(e) = ledger.get(&m.bdf) {
            if e.state == BindState::OnVfio && now.driver.as_deref() == Some(&e.target_driver) {
                return Err(BindError::BoundByOtherRun {
                    bdf: m.bdf,
                    driver: e.target_driver.clone(),
                    plan: e.plan.clone(),
                });
            }
            return Err(BindError::Unfinished {
                bdf: m.bdf,
                state: e.state.to_string(),
            });
        }
        if now.driver != m.driver || now.driver_override != m.driver_override {
            return Err(BindError::Changed {
                bdf: m.bdf,
                what: format!(
                    "driver {} -> {}, override {} -> {}",
                    m.driver.as_deref().unwrap_or("none"),
                    now.driver.as_deref().unwrap_or("none"),
                    m.driver_override.as_deref().unwrap_or("unset"),
                    now.driver_override.as_deref().unwrap_or("unset"),
                ),
            });
        }
    }
    laps.lap("devices re-read under the lock");
    let mut run = Run {
        p,
        loaded: Vec::new(),
        done: Vec::new(),
        probes: BTreeMap::new(),
        group_nodes: Vec::new(),
        persisted: Vec::new(),
        plan_id: format!("{}-{}", now(), std::process::id()),
    };
    for step in &p.steps {
        if let Err(e) = run.step(step, &mut ledger) {
            return Err(run.rollback(e, &mut ledger));
        }
        let n = step.bdf().map_or(1, |b| run.ordinal(b));
        fault_point(step.name(), n);
        match step.bdf() {
            Some(b) => laps.lap(format_args!("{} {b}", step.name())),
            None => laps.lap(step.name()),
        }
    }
    if p.opts.persist {
        if let Some(w) = persist::warning(root) {
            report.warnings.push(w);
        }
    }
    report.devices = run
        .done
        .iter()
        .map(|(bdf, t)| {
            let e = ledger.get(bdf).cloned();
            DeviceOutcome {
                bdf: *bdf,
                from: e.as_ref().and_then(|e| e.original_driver.clone()),
                to: e.map(|e| e.target_driver).unwrap_or_default(),
                state: t.state(),
                history: t.history().to_vec(),
            }
        })
        .collect();
    report.loaded = run.loaded;
    report.group_nodes = run.group_nodes;
    report.persisted = run.persisted;
    Ok(report)
}

/// What `restore`/`unbind` did to one device.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct RestoreOutcome {
    /// The device.
    pub bdf: Bdf,
    /// The driver it was given back to (`None`: left driverless, as it was).
    pub driver: Option<String>,
    /// The `driver_override` it was given back (`None`: unset).
    pub driver_override: Option<String>,
    /// Its state after the restore (`restored` on success, `failed` when a step failed).
    pub state: BindState,
    /// Why its restore failed, if it did.
    pub error: Option<String>,
    /// The boot-time override file removed, if there was one.
    pub persist_removed: Option<String>,
    /// The device is no longer on the bus (hot-removed): nothing to give back, the entry
    /// was cleared.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gone: bool,
}

/// What [`restore`] did.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct RestoreReport {
    /// Every device handled, gone ones included.
    pub devices: Vec<RestoreOutcome>,
    /// Modules vfioctl had loaded and unloaded again (`modprobe -r`), once unused.
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
    let _writes = write::Session::begin();
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
    for (i, bdf) in targets.iter().rev().enumerate() {
        let n = i + 1;
        let Some(e) = ledger.get(bdf).cloned() else {
            continue;
        };
        // A recorded device is somewhere between HostDriver (recorded, bind under way:
        // any step may have happened) and OnVfio, or Failed from an earlier attempt.
        let mut t = Tracker::at(
            *bdf,
            match e.state {
                BindState::HostDriver => BindState::OverrideWritten,
                s => s,
            },
        );
        // A device that left the bus (hot-removed, or its slot powered off) has nothing
        // to give back; keeping its entry would block every later restore --all.
        if !root.exists_nofollow(bdf.sysfs_path()) && pending_for(*bdf).is_none() {
            let persist_removed = if e.persisted || remove_persist {
                persist::remove(root, *bdf)?
            } else {
                None
            };
            ledger.remove(bdf);
            ledger.save()?;
            out.push(RestoreOutcome {
                bdf: *bdf,
                driver: e.original_driver.clone(),
                driver_override: e.original_override.clone(),
                state: t.state(),
                error: None,
                persist_removed,
                gone: true,
            });
            fault_point("restore-ledger", n);
            continue;
        }
        let r = restore_device(root, *bdf, &e, timeout, &mut t, "restore", n);
        let mut persist_removed = None;
        if r.is_ok() {
            fault_point("restore-device", n);
            if remove_persist || e.persisted {
                persist_removed = persist::remove(root, *bdf)?;
                fault_point("restore-persist", n);
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
            gone: false,
        });
        ledger.save()?;
        fault_point("restore-ledger", n);
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
