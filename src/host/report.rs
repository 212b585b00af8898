//! One `vfioctl check` run: host checks, then each selected device's checks.

use std::io::{self, Write};

use serde::Serialize;
use vfioctl_common::{ClassFilter, Selector, SysRoot};

use super::facts::{all_bdfs, DeviceFacts, HostFacts};
use super::verdict::{device_checks, host_checks, Check, Status};
use crate::pci::list::names_for;
use crate::pci::{select, PciIds, SelectError};

/// Counts per status and the overall verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Summary {
    /// Number of checks that passed.
    pub pass: usize,
    /// Number of checks that warned (the run still succeeds).
    pub warn: usize,
    /// Number of checks that failed (`vfioctl check` exits 1).
    pub fail: usize,
    /// Number of checks that did not apply here.
    pub skip: usize,
    /// The devices checked.
    pub devices: Vec<vfioctl_common::Bdf>,
    /// True when no check failed.
    pub ok: bool,
}

/// What `vfioctl check --json` prints.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct CheckReport {
    /// Every verdict: host checks first, then each device's checks in turn.
    pub checks: Vec<Check>,
    /// Counts per status and the overall verdict.
    pub summary: Summary,
    /// Device names for the human output (not in JSON).
    #[serde(skip)]
    pub names: Vec<(vfioctl_common::Bdf, String)>,
}

impl CheckReport {
    /// Whether any check failed (the command then exits 1).
    pub fn failed(&self) -> bool {
        self.summary.fail > 0
    }

    /// The report for people: host checks, then one block per device, then the summary.
    pub fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut current: Option<Option<vfioctl_common::Bdf>> = None;
        for c in &self.checks {
            if current != Some(c.device) {
                match c.device {
                    None => writeln!(out, "host")?,
                    Some(b) => {
                        let name = self
                            .names
                            .iter()
                            .find(|(x, _)| *x == b)
                            .map(|(_, n)| n.as_str())
                            .unwrap_or("");
                        writeln!(out, "\ndevice {b} {name}")?;
                    }
                }
                current = Some(c.device);
            }
            writeln!(
                out,
                "  {:<4}  {:<20} {}",
                c.status.as_str(),
                c.id,
                c.message
            )?;
            if let (Some(h), true) = (&c.hint, matches!(c.status, Status::Warn | Status::Fail)) {
                writeln!(out, "        {:<20} hint: {h}", "")?;
            }
        }
        let s = &self.summary;
        writeln!(
            out,
            "\nsummary: {} pass, {} warn, {} fail, {} skip: {}",
            s.pass,
            s.warn,
            s.fail,
            s.skip,
            if s.ok { "ready" } else { "NOT READY" }
        )
    }
}

/// Run the host checks and the device checks for the devices `selectors` pick (every
/// display controller, class 0x03, when empty), narrowed to `class` when given. `qemu`,
/// when given, is probed for the iommufd object (the `vfio-backend` check).
pub fn run_checks(
    root: &SysRoot,
    selectors: &[Selector],
    class: Option<ClassFilter>,
    vm_memory: Option<u64>,
    qemu: Option<&std::path::Path>,
) -> Result<CheckReport, SelectError> {
    let host = HostFacts::gather(root);
    let mut checks = host_checks(&host, vm_memory);
    // Which VFIO backend (groups or iommufd) a VM would get; QEMU only when named.
    let backend = crate::shared::BackendFacts::gather(root, qemu);
    checks.push(crate::shared::readiness::backend_check(&backend));

    let all = if root.exists("/sys/bus/pci/devices") {
        all_bdfs(root)?
    } else {
        Vec::new()
    };
    let default_class = selectors.is_empty() && class.is_none();
    let mut devs = if all.is_empty() && selectors.is_empty() {
        Vec::new()
    } else {
        select(root, selectors, true)?
    };
    if default_class {
        devs.retain(|d| ClassFilter::Gpu.matches(d.class));
    }
    if let Some(c) = class {
        devs.retain(|d| c.matches(d.class));
    }
    tracing::info!(
        "selected {} device(s) for device checks ({}): {:?}",
        devs.len(),
        if default_class {
            "default: class 0x03 display controllers".to_string()
        } else {
            format!("selectors {selectors:?}, class {class:?}")
        },
        devs.iter().map(|d| d.bdf.to_string()).collect::<Vec<_>>()
    );
    if devs.is_empty() {
        let what = match class {
            Some(c) if !default_class => format!("no selected device of class {c:?}"),
            _ if default_class => "no display controller (class 0x03) found".to_string(),
            _ => "no device selected".to_string(),
        };
        checks.push(Check {
            id: "devices",
            status: Status::Skip,
            device: None,
            message: format!("{what}: no device checks ran"),
            hint: Some("name a device: vfioctl check 0000:01:00.0 (see vfioctl devices)".into()),
        });
    }
    let ids: PciIds = names_for(root, &devs);
    let mut names = Vec::new();
    let mut summary = Summary::default();
    for dev in devs {
        names.push((
            dev.bdf,
            format!(
                "{} {}",
                ids.vendor_label(dev.vendor),
                ids.device_label(dev.vendor, dev.device)
            ),
        ));
        summary.devices.push(dev.bdf);
        // SR-IOV readiness, NVIDIA per-VF vGPU types, mdev types (shared GPUs).
        let shared = crate::shared::readiness::device_checks(root, &dev);
        let f = DeviceFacts::gather(root, dev, &all)?;
        checks.extend(device_checks(&f, &host));
        checks.extend(shared);
    }
    for c in &checks {
        let on = c.device.map(|b| format!(" {b}")).unwrap_or_default();
        match c.status {
            Status::Fail | Status::Warn => tracing::info!(
                "verdict {}{on}: {} because {}{}",
                c.id,
                c.status.as_str(),
                c.message,
                c.hint
                    .as_deref()
                    .map(|h| format!(" (fix: {h})"))
                    .unwrap_or_default()
            ),
            _ => tracing::info!(
                "verdict {}{on}: {} because {}",
                c.id,
                c.status.as_str(),
                c.message
            ),
        }
        match c.status {
            Status::Pass => summary.pass += 1,
            Status::Warn => summary.warn += 1,
            Status::Fail => summary.fail += 1,
            Status::Skip => summary.skip += 1,
        }
    }
    summary.ok = summary.fail == 0;
    Ok(CheckReport {
        checks,
        summary,
        names,
    })
}
