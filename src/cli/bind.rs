//! `vfioctl bind`, `unbind`, `restore`: argument parsing and printing; the work is in
//! [`crate::bind`].
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use vfioctl_common::{Bdf, Selector};

use crate::bind::{self, plan::class_name, safety, BindError, Plan, Refusal, Role};
use crate::output::{emit, Table};
use crate::{Context, Exit, Failure};

/// `vfioctl bind` arguments.
#[derive(Debug, clap::Args)]
pub struct BindArgs {
    /// Devices to bind: 0000:d0:00.0, 10de:20b9, class:gpu.
    #[arg(required = true)]
    pub selectors: Vec<String>,
    /// Print the plan and every sysfs write, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not bind the other endpoints of the IOMMU group (fails if the group needs them).
    #[arg(long)]
    pub no_companions: bool,
    /// Driver to bind to: vfio-pci (default), a variant driver name, or `auto` to pick a
    /// variant from modules.alias.
    #[arg(long, default_value = "vfio-pci")]
    pub driver: String,
    /// Seconds to wait for an unbind or a probe before giving up and rolling back.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Override in-use refusals that can be overridden (never the root filesystem's disk).
    #[arg(long)]
    pub force: bool,
    /// Also write a boot-time override (/etc/driverctl.d/pci-<bdf>, driverctl's format).
    #[arg(long)]
    pub persist: bool,
}

/// `vfioctl unbind` arguments.
#[derive(Debug, clap::Args)]
pub struct UnbindArgs {
    /// Devices to give back (0000:d0:00.0, 10de:20b9, class:gpu); only devices the ledger
    /// says vfioctl bound, each to the driver it had before.
    #[arg(required = true)]
    pub selectors: Vec<String>,
    /// Also remove the boot-time override written by `bind --persist`.
    #[arg(long)]
    pub persist: bool,
    /// Seconds to wait for an unbind or a probe before giving up.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

/// `vfioctl restore` arguments.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Devices to restore (default with --all: every ledger entry).
    pub selectors: Vec<String>,
    /// Restore every device in the ledger.
    #[arg(long)]
    pub all: bool,
    /// Seconds to wait for an unbind or a probe before giving up.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

/// `bind --json` (and `bind --dry-run --json`).
#[derive(Serialize, schemars::JsonSchema)]
pub struct BindOutput<'a> {
    /// The plan: per IOMMU group, each member with its role and what happens to it.
    pub plan: &'a Plan,
    /// In-use findings that --force overrode.
    pub forced: Vec<Refusal>,
    /// The output is of a dry run (nothing was changed).
    pub dry_run: bool,
    /// --dry-run: every step `execute` would run, in order, as text.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<String>,
    /// --dry-run: the same steps, structured.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<bind::Step>,
    /// What was done (not with --dry-run, nor when there was nothing to do).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<bind::BindReport>,
}

fn print_plan(out: &mut dyn Write, plan: &Plan) -> std::io::Result<()> {
    let n = plan.to_bind().count();
    writeln!(
        out,
        "plan: {n} device(s) to bind in {} IOMMU group(s)",
        plan.groups.len()
    )?;
    for g in &plan.groups {
        writeln!(out, "  IOMMU group {}", g.group)?;
        let mut t = Table::new(&["", "device", "id", "class", "driver", "action", "why"]);
        for m in &g.members {
            let role = match m.role {
                Role::Selected => "selected",
                Role::Companion => "companion",
                Role::Bridge => "bridge",
            };
            let action = match m.target() {
                Some(to) => format!("{} -> {to}", m.driver.as_deref().unwrap_or("(none)")),
                None => "keep".into(),
            };
            t.row(vec![
                "   ".into(),
                m.bdf.to_string(),
                m.id.clone(),
                class_name(m.class).into(),
                format!(
                    "{}{}",
                    m.driver.as_deref().unwrap_or("-"),
                    m.driver_override
                        .as_ref()
                        .map(|o| format!(" (override {o})"))
                        .unwrap_or_default()
                ),
                action,
                format!("{role}: {}", m.reason),
            ]);
        }
        let mut buf = Vec::new();
        t.write(&mut buf)?;
        // Skip the header's blank first column alignment noise: print as is.
        out.write_all(&buf)?;
    }
    Ok(())
}

fn selectors(args: &[String]) -> Result<Vec<Selector>, Failure> {
    super::selectors(args, None)
}

impl BindArgs {
    /// The library's options for these arguments.
    pub fn options(&self) -> bind::PrepareOptions {
        bind::PrepareOptions {
            driver: self.driver.clone(),
            no_companions: self.no_companions,
            force: self.force,
            persist: self.persist,
            timeout: Duration::from_secs(self.timeout),
        }
    }
}

/// `vfioctl bind`: plan the binding, refuse it or carry it out (or only print it with
/// `--dry-run`), and report.
pub fn run_bind(ctx: &Context, a: BindArgs) -> Result<Exit, Failure> {
    let sel = selectors(&a.selectors)?;
    let prepared = bind::prepare(&ctx.root, &sel, a.options())?;
    let plan = &prepared.plan;
    if !ctx.json {
        let mut o = std::io::stdout().lock();
        let _ = print_plan(&mut o, plan);
        for r in &prepared.forced {
            let _ = writeln!(
                o,
                "warning: --force: {}: {} (would be refused: {})",
                r.bdf, r.reason, r.release
            );
        }
    }
    if !prepared.blocking.is_empty() {
        return Err(BindError::Refused(prepared.blocking.clone()).into());
    }

    if a.dry_run {
        if !ctx.root.is_host() && ctx.notes() {
            for s in &prepared.steps {
                if let bind::Step::LoadModule { describe, .. } = s {
                    eprintln!(
                        "note: `{describe}` is not run for --root {}: vfioctl loads no module into the running kernel for another root",
                        ctx.root.root().display()
                    );
                }
            }
        }
        let v = BindOutput {
            plan,
            forced: prepared.forced.clone(),
            dry_run: true,
            writes: prepared.steps.iter().map(|s| s.to_string()).collect(),
            steps: prepared.steps.clone(),
            result: None,
        };
        emit(ctx, &v, |o| {
            if v.writes.is_empty() {
                return writeln!(
                    o,
                    "nothing to do: every device is already on a vfio driver or needs none"
                );
            }
            writeln!(o, "dry run: would do, in order:")?;
            for w in &v.writes {
                writeln!(o, "  {w}")?;
            }
            writeln!(o, "nothing was changed")
        })
        .map_err(|e| Failure::new(Exit::Infrastructure, e))?;
        return Ok(Exit::Ok);
    }
    if plan.is_noop() {
        let v = BindOutput {
            plan,
            forced: prepared.forced.clone(),
            dry_run: false,
            writes: vec![],
            steps: vec![],
            result: None,
        };
        emit(ctx, &v, |o| {
            writeln!(
                o,
                "nothing to do: every device is already on a vfio driver or needs none"
            )
        })
        .map_err(|e| Failure::new(Exit::Infrastructure, e))?;
        return Ok(Exit::Ok);
    }

    let report = bind::execute(&prepared)?;
    let v = BindOutput {
        plan,
        forced: prepared.forced.clone(),
        dry_run: false,
        writes: vec![],
        steps: vec![],
        result: Some(report),
    };
    emit(ctx, &v, |o| {
        let r = v.result.as_ref().expect("set");
        for l in &r.loaded {
            if let bind::driver::Loaded::Modprobe { module, .. } = l {
                writeln!(o, "loaded module {module}")?;
            }
        }
        for d in &r.devices {
            writeln!(
                o,
                "{}: {} -> {} (verified)",
                d.bdf,
                d.from.as_deref().unwrap_or("(none)"),
                d.to
            )?;
        }
        for n in &r.group_nodes {
            writeln!(o, "{n} ready")?;
        }
        for p in &r.persisted {
            writeln!(o, "boot-time override written: {p}")?;
        }
        for w in &r.warnings {
            writeln!(o, "warning: {w}")?;
        }
        Ok(())
    })
    .map_err(|e| Failure::new(Exit::Infrastructure, e))?;
    Ok(Exit::Ok)
}

/// Ledger entries matching the selectors (BDFs directly; ids and classes through sysfs).
fn ledger_matches(ctx: &Context, args: &[String]) -> Result<Vec<Bdf>, Failure> {
    let sel = selectors(args)?;
    let ledger = bind::Ledger::peek(&ctx.root)?.unwrap_or_default();
    for s in &sel {
        if let Selector::Bdf { bdf } = s {
            if !ledger.devices.contains_key(bdf) {
                return Err(BindError::NotInLedger { bdf: *bdf }.into());
            }
        }
    }
    let known: Vec<Bdf> = ledger.devices.keys().copied().collect();
    Ok(
        vfioctl_common::pci::select_among(&ctx.root, &sel, &known, "in the ledger")
            .map_err(BindError::from)?,
    )
}

/// `unbind --json` and `restore --json`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct RestoreOutput<'a> {
    /// Each device given back, with its outcome, and the modules unloaded (its fields
    /// appear at the top level).
    #[serde(flatten)]
    pub devices: &'a bind::RestoreReport,
    /// What vfioctl had created (VFs, mdevs) and `restore --all` removed (only with
    /// `--all`, and only when there was something).
    #[serde(skip_serializing_if = "is_nothing")]
    pub created: &'a crate::shared::SharedRestoreReport,
}

fn is_nothing(c: &&crate::shared::SharedRestoreReport) -> bool {
    **c == crate::shared::SharedRestoreReport::default()
}

fn print_restore(
    ctx: &Context,
    r: &bind::RestoreReport,
    created: &crate::shared::SharedRestoreReport,
) -> Result<(), Failure> {
    let v = RestoreOutput {
        devices: r,
        created,
    };
    emit(ctx, &v, |o| {
        if r.devices.is_empty() && is_nothing(&created) {
            writeln!(o, "ledger is empty: nothing to restore")?;
        }
        for u in &created.mdevs_removed {
            writeln!(o, "mdev {u}: removed (vfioctl had created it)")?;
        }
        for (pf, n) in &created.vfs_removed {
            writeln!(o, "{pf}: {n} VFs removed (vfioctl had created them)")?;
        }
        for f in &created.failed {
            writeln!(o, "not removed: {f}")?;
        }
        for d in &r.devices {
            writeln!(
                o,
                "{}: back on {} (override {}), {}",
                d.bdf,
                d.driver.as_deref().unwrap_or("no driver"),
                d.driver_override.as_deref().unwrap_or("unset"),
                d.state
            )?;
            if d.gone {
                writeln!(
                    o,
                    "{}: no longer on the bus (hot-removed): ledger entry cleared",
                    d.bdf
                )?;
                continue;
            }
            if let Some(p) = &d.persist_removed {
                writeln!(o, "  removed {p}")?;
            }
        }
        for m in &r.unloaded {
            writeln!(o, "unloaded module {m} (vfioctl had loaded it)")?;
        }
        Ok(())
    })
    .map_err(|e| Failure::new(Exit::Infrastructure, e))
}

/// Refuse to take a device from vfio while a process (QEMU) has its group open.
fn vfio_in_use(ctx: &Context, bdfs: &[Bdf]) -> Result<(), Failure> {
    let ledger = bind::Ledger::peek(&ctx.root)?.unwrap_or_default();
    let mut nodes: BTreeMap<String, Bdf> = BTreeMap::new();
    for b in bdfs {
        if let Some(g) = ledger.devices.get(b).and_then(|e| e.iommu_group) {
            nodes.insert(format!("/dev/vfio/{g}"), *b);
        }
    }
    let set: BTreeSet<String> = nodes.keys().cloned().collect();
    let openers = safety::openers(&ctx.root, &set);
    if openers.is_empty() {
        return Ok(());
    }
    let refusals = openers
        .iter()
        .map(|o| Refusal {
            bdf: nodes[&o.node],
            kind: bind::RefusalKind::OpenDeviceNode,
            reason: format!("{} (pid {}) has {} open", o.comm, o.pid, o.node),
            release: "stop the VM using it (or device_del it over QMP) first".into(),
            forceable: false,
        })
        .collect();
    Err(BindError::Refused(refusals).into())
}

/// `vfioctl unbind`: give back the devices (and companions bound with them) vfioctl bound.
pub fn run_unbind(ctx: &Context, a: UnbindArgs) -> Result<Exit, Failure> {
    let mut bdfs = ledger_matches(ctx, &a.selectors)?;
    // The companions bound with them in the same plan and group go back too.
    let ledger = bind::Ledger::peek(&ctx.root)?.unwrap_or_default();
    let picked: Vec<(Option<u32>, String)> = bdfs
        .iter()
        .filter_map(|b| {
            ledger
                .devices
                .get(b)
                .map(|e| (e.iommu_group, e.plan.clone()))
        })
        .collect();
    for (b, e) in &ledger.devices {
        if picked
            .iter()
            .any(|(g, p)| *g == e.iommu_group && *p == e.plan)
            && !bdfs.contains(b)
        {
            bdfs.push(*b);
        }
    }
    bdfs.sort();
    vfio_in_use(ctx, &bdfs)?;
    let r = bind::restore(
        &ctx.root,
        Some(&bdfs),
        Duration::from_secs(a.timeout),
        a.persist,
    )?;
    print_restore(ctx, &r, &crate::shared::SharedRestoreReport::default())?;
    Ok(Exit::Ok)
}

/// `vfioctl restore`: give back the devices the ledger records (the selected ones, or all;
/// with `--all` also remove the VFs and mediated devices vfioctl created).
pub fn run_restore(ctx: &Context, a: RestoreArgs) -> Result<Exit, Failure> {
    let bdfs = if a.all {
        if !a.selectors.is_empty() {
            return Err(Failure::usage("give selectors or --all, not both"));
        }
        None
    } else if a.selectors.is_empty() {
        return Err(Failure::usage("name the devices to restore, or pass --all"));
    } else {
        Some(ledger_matches(ctx, &a.selectors)?)
    };
    let r = bind::restore(
        &ctx.root,
        bdfs.as_deref(),
        Duration::from_secs(a.timeout),
        false,
    )?;
    // With --all, what vfioctl created goes too (mdevs, then VFs), now that the devices
    // on them were given back.
    let created = if a.all {
        crate::shared::restore_created(&ctx.root, Duration::from_secs(a.timeout.max(30)))?
    } else {
        crate::shared::SharedRestoreReport::default()
    };
    print_restore(ctx, &r, &created)?;
    if !created.failed.is_empty() {
        return Err(Failure::new(
            Exit::OperationFailed,
            format!("restore: {}", created.failed.join("; ")),
        )
        .with_hint("`vfioctl vf list` / `vfioctl mdev list` show what is left; `vfioctl restore --all` can be run again"));
    }
    Ok(Exit::Ok)
}
