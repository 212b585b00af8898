//! The bind use case as one library flow: [`prepare`] reads the host, plans, checks what
//! is in use and lists every step; [`execute`](super::execute) runs exactly those steps.
//! The CLI (`vfioctl bind`), `vfioctl vm plug --bind` and the regression runner all call
//! these two; the dry run prints the same [`Step`] list that `execute` runs.

use std::time::Duration;

use serde::Serialize;
use vfioctl_common::{Bdf, PciDevice, Selector, SysRoot};

use super::error::BindError;
use super::plan::{plan, Plan};
use super::safety::{self, Refusal};
use super::timing::Laps;
use super::{driver, ledger, neighbourhood, persist};

/// What the caller asks for.
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// `vfio-pci`, a variant driver's name, or `auto` (a variant from `modules.alias`).
    pub driver: String,
    /// Refuse instead of binding the other endpoints of a group.
    pub no_companions: bool,
    /// Override the in-use refusals that can be overridden.
    pub force: bool,
    /// Write boot-time overrides (`/etc/driverctl.d`).
    pub persist: bool,
    /// Limit for each write that can block in the kernel.
    pub timeout: Duration,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            driver: "vfio-pci".into(),
            no_companions: false,
            force: false,
            persist: false,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The longest `--timeout` accepted (a day).
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// One step of a bind, in the order [`execute`](super::execute) runs them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Make the target driver available (`modprobe` on the real host).
    LoadModule {
        /// The target driver.
        driver: String,
        /// The command, for people: `modprobe <module>`.
        describe: String,
    },
    /// Record every device's original driver and override (and the boot-time overrides
    /// to come) in the ledger, before any other side effect.
    RecordLedger {
        /// Boot-time overrides will be written too (`--persist`).
        persist: bool,
    },
    /// `echo <to> > driver_override`.
    Override {
        /// The device.
        bdf: Bdf,
        /// The target driver written to `driver_override`.
        to: String,
    },
    /// `echo <bdf> > drivers/<from>/unbind`.
    Unbind {
        /// The device.
        bdf: Bdf,
        /// The driver it is unbound from.
        from: String,
    },
    /// `echo <bdf> > drivers_probe`.
    Probe {
        /// The device.
        bdf: Bdf,
    },
    /// `echo <bdf> > drivers/<to>/bind`, only when the probe left it elsewhere.
    BindDirect {
        /// The device.
        bdf: Bdf,
        /// The target driver.
        to: String,
    },
    /// The `driver` link must name `to`.
    Verify {
        /// The device.
        bdf: Bdf,
        /// The driver it must be on.
        to: String,
    },
    /// `/dev/vfio/<group>` (or the device's vfio cdev) must exist.
    GroupNode {
        /// The IOMMU group number.
        group: u32,
    },
    /// `echo <to> > /etc/driverctl.d/pci-<bdf>`.
    Persist {
        /// The device.
        bdf: Bdf,
        /// The driver named in the override file.
        to: String,
    },
    /// Mark every device `on-vfio` in the ledger.
    LedgerDone,
}

impl Step {
    /// The fault-injection name of the step.
    pub fn name(&self) -> &'static str {
        match self {
            Step::LoadModule { .. } => "modprobe",
            Step::RecordLedger { .. } => "ledger",
            Step::Override { .. } => "override",
            Step::Unbind { .. } => "unbind",
            Step::Probe { .. } => "probe",
            Step::BindDirect { .. } => "bind",
            Step::Verify { .. } => "verify",
            Step::GroupNode { .. } => "group-node",
            Step::Persist { .. } => "persist",
            Step::LedgerDone => "ledger-done",
        }
    }

    /// The device the step is about, if any.
    pub fn bdf(&self) -> Option<Bdf> {
        match self {
            Step::Override { bdf, .. }
            | Step::Unbind { bdf, .. }
            | Step::Probe { bdf }
            | Step::BindDirect { bdf, .. }
            | Step::Verify { bdf, .. }
            | Step::Persist { bdf, .. } => Some(*bdf),
            _ => None,
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::LoadModule { describe, .. } => f.write_str(describe),
            Step::RecordLedger { persist } => write!(
                f,
                "write {}/ledger.json (original driver and override of each device{})",
                ledger::DIR,
                if *persist {
                    ", and the boot-time overrides to come"
                } else {
                    ""
                }
            ),
            Step::Override { bdf, to } => {
                write!(f, "echo {to} > /sys/bus/pci/devices/{bdf}/driver_override")
            }
            Step::Unbind { bdf, from } => {
                write!(f, "echo {bdf} > /sys/bus/pci/drivers/{from}/unbind")
            }
            Step::Probe { bdf } => write!(f, "echo {bdf} > /sys/bus/pci/drivers_probe"),
            Step::BindDirect { bdf, to } => write!(
                f,
                "echo {bdf} > /sys/bus/pci/drivers/{to}/bind (only if the probe left it elsewhere)"
            ),
            Step::Verify { bdf, to } => {
                write!(f, "check /sys/bus/pci/devices/{bdf}/driver is {to}")
            }
            Step::GroupNode { group } => write!(f, "check /dev/vfio/{group} exists"),
            Step::Persist { bdf, to } => write!(f, "echo {to} > {}", persist::path(*bdf)),
            Step::LedgerDone => write!(
                f,
                "write {}/ledger.json (every device on-vfio)",
                ledger::DIR
            ),
        }
    }
}

/// A planned bind: what will move, what was found in use, and the steps.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The root the host was read from (`/`, or a `--root` fixture or snapshot).
    pub root: SysRoot,
    /// The group-aware plan.
    pub plan: Plan,
    /// In-use findings that `force` overrode.
    pub forced: Vec<Refusal>,
    /// In-use findings that stop the bind; [`execute`](super::execute) refuses while any.
    pub blocking: Vec<Refusal>,
    /// Every step [`execute`](super::execute) runs, in order (empty when nothing moves).
    pub steps: Vec<Step>,
    /// The options it was prepared with.
    pub opts: PrepareOptions,
}

fn check_options(o: &PrepareOptions) -> Result<(), BindError> {
    let d = &o.driver;
    let bad = |reason| {
        Err(BindError::BadDriver {
            driver: d.clone(),
            reason,
        })
    };
    if d.is_empty() {
        return bad("empty: name the driver to bind to");
    }
    if d.len() > 64 {
        return bad("longer than any kernel driver name (64 characters)");
    }
    if !d
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return bad("a driver name has only letters, digits, '_' and '-'");
    }
    if o.timeout.is_zero() {
        return Err(BindError::BadTimeout {
            secs: 0,
            reason: "every write would time out before the kernel could answer",
        });
    }
    if o.timeout.as_secs() > MAX_TIMEOUT_SECS {
        return Err(BindError::BadTimeout {
            secs: o.timeout.as_secs(),
            reason: "longer than a day",
        });
    }
    Ok(())
}

/// Read the host, plan the bind of `selectors`, assess what is in use, and list the
/// steps. Changes nothing.
pub fn prepare(
    root: &SysRoot,
    selectors: &[Selector],
    opts: PrepareOptions,
) -> Result<Prepared, BindError> {
    check_options(&opts)?;
    let mut laps = Laps::start("prepare");
    let selected = vfioctl_common::pci::select(root, selectors)?;
    laps.lap("select");
    let known = neighbourhood(root, &selected)?;
    tracing::debug!("read {} device(s)", known.len());
    laps.lap("group neighbourhood");
    let want = opts.driver.clone();
    let target = |d: &PciDevice| -> String {
        let name = if want == "auto" {
            driver::auto_driver(root, d.bdf)
        } else {
            want.clone()
        };
        // The spelling the kernel registered (vfio_pci vs vfio-pci), when loaded.
        driver::driver_dir(root, &name).unwrap_or(name)
    };
    let bdfs: Vec<Bdf> = selected.iter().map(|d| d.bdf).collect();
    let plan = plan(&bdfs, &known, &target, opts.no_companions)?;
    laps.lap("plan");

    // In-use safety for every device that will lose its driver.
    let losing: Vec<&PciDevice> = plan
        .to_bind()
        .filter(|m| m.driver.is_some())
        .filter_map(|m| known.get(&m.bdf))
        .collect();
    let usage = safety::HostUse::scan(root, &losing);
    laps.lap("in-use scan");
    let findings: Vec<Refusal> = losing
        .iter()
        .flat_map(|d| safety::assess(d, &usage))
        .collect();
    let (forced, blocking): (Vec<Refusal>, Vec<Refusal>) = findings
        .into_iter()
        .partition(|r| opts.force && r.forceable);

    let mut steps = Vec::new();
    if !plan.is_noop() {
        for d in plan.drivers() {
            if let Some(describe) = driver::describe_load(root, &d) {
                steps.push(Step::LoadModule {
                    driver: d,
                    describe,
                });
            }
        }
        steps.push(Step::RecordLedger {
            persist: opts.persist,
        });
        for m in plan.to_bind() {
            let to = m.target().unwrap_or_default().to_string();
            steps.push(Step::Override {
                bdf: m.bdf,
                to: to.clone(),
            });
            if let Some(from) = &m.driver {
                steps.push(Step::Unbind {
                    bdf: m.bdf,
                    from: from.clone(),
                });
            }
            steps.push(Step::Probe { bdf: m.bdf });
            steps.push(Step::BindDirect {
                bdf: m.bdf,
                to: to.clone(),
            });
            steps.push(Step::Verify { bdf: m.bdf, to });
        }
        for g in &plan.groups {
            if g.members.iter().any(|m| m.target().is_some()) {
                steps.push(Step::GroupNode { group: g.group });
            }
        }
        if opts.persist {
            for m in plan.to_bind() {
                steps.push(Step::Persist {
                    bdf: m.bdf,
                    to: m.target().unwrap_or_default().to_string(),
                });
            }
        }
        steps.push(Step::LedgerDone);
    }
    laps.lap("in-use rules and step list");
    Ok(Prepared {
        root: root.clone(),
        plan,
        forced,
        blocking,
        steps,
        opts,
    })
}
