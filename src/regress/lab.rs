//! The real backend: every step through the library's own APIs.
//!
//! | step | library call |
//! |---|---|
//! | check | host devices resolved through the PCI model (`SysRoot`), QEMU and the guest artefacts present |
//! | bind / restore | `vfioctl::bind` (ledger-backed; restore is idempotent) |
//! | vm-up / vm-down | `vfioctl::vm` lifecycle (QEMU, vsock, agent readiness) |
//! | plug / unplug | `vfioctl::vm` hotplug over QMP |
//! | validate | the guest agent's `validate` |
//!
//! Steps whose library is not in this build fail with an infrastructure error that says
//! so (exit 8), never with a fake success.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use vfioctl_common::pci::device::enumerate;
use vfioctl_common::{Bdf, PciDevice, SysRoot};

use super::exec::{Backend, StepCtx};
use super::plan::{DeviceSpec, Kind, Scenario};
use super::results::StepFailure;
use super::step::Step;
use crate::{Context, Exit};

/// A host device picked by a scenario, with its IOMMU group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    pub bdf: Bdf,
    pub group: Option<u32>,
}

/// Exclusivity keys from resolved host devices (pure): the IOMMU group when known (binding
/// takes the whole group), else the address.
pub fn keys_for(devices: &[HostDevice]) -> BTreeSet<String> {
    devices
        .iter()
        .map(|d| match d.group {
            Some(g) => format!("iommu-group:{g}"),
            None => format!("pci:{}", d.bdf),
        })
        .collect()
}

/// Resolve a scenario's host selectors against the host's PCI devices.
pub fn resolve(root: &SysRoot, sc: &Scenario) -> Result<Vec<HostDevice>, String> {
    let selectors: Vec<_> = sc
        .devices
        .iter()
        .filter_map(|d| match d {
            DeviceSpec::Host { selector } => Some(selector),
            DeviceSpec::Emulated { .. } => None,
        })
        .collect();
    if selectors.is_empty() {
        return Ok(Vec::new());
    }
    let all = enumerate(root).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for sel in selectors {
        let mut found = false;
        for bdf in &all {
            let Ok(dev) = PciDevice::read(root, *bdf) else {
                continue;
            };
            if sel.matches(dev.bdf, dev.vendor, dev.device, dev.class) {
                found = true;
                out.push(HostDevice {
                    bdf: dev.bdf,
                    group: dev.iommu_group,
                });
            }
        }
        if !found {
            return Err(format!("no PCI device matches {sel} on this host"));
        }
    }
    out.sort_by_key(|d| d.bdf);
    out.dedup();
    Ok(out)
}

/// Find an executable on `PATH` (or a path as given).
pub fn which(prog: &Path) -> Option<PathBuf> {
    if prog.components().count() > 1 {
        return prog.is_file().then(|| prog.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(prog))
            .find(|c| c.is_file())
    })
}

pub struct LabBackend {
    pub ctx: Context,
    pub qemu: PathBuf,
}

impl LabBackend {
    pub fn new(ctx: Context) -> Self {
        Self {
            ctx,
            qemu: PathBuf::from("qemu-system-x86_64"),
        }
    }
}

/// Per-scenario state.
pub struct LabSession {
    pub dir: PathBuf,
    pub host_devices: Vec<HostDevice>,
}

fn missing(what: &str, issue: &str) -> StepFailure {
    let mut f = StepFailure::new(
        Exit::Infrastructure,
        format!("{what} is not in this build of vfioctl ({issue})"),
    );
    f.hint = Some(format!(
        "build vfioctl from a tree where {issue} has landed"
    ));
    f
}

impl Backend for LabBackend {
    type Session = LabSession;

    fn skip_reason(&self, sc: &Scenario) -> Option<String> {
        if sc.kind == Kind::Nested {
            return Some(
                "nested passthrough needs the VM lifecycle and guest-side vfioctl, not in this build"
                    .into(),
            );
        }
        resolve(&self.ctx.root, sc).err()
    }

    fn keys(&self, sc: &Scenario) -> BTreeSet<String> {
        match resolve(&self.ctx.root, sc) {
            Ok(d) => keys_for(&d),
            // Unknown: serialize with every other host-device scenario.
            Err(_) => BTreeSet::from(["host-devices".to_string()]),
        }
    }

    fn session(&self, _sc: &Scenario, dir: &Path) -> LabSession {
        LabSession {
            dir: dir.to_path_buf(),
            host_devices: Vec::new(),
        }
    }

    fn step(
        &self,
        s: &mut LabSession,
        step: Step,
        ctx: &StepCtx,
    ) -> Result<Option<String>, StepFailure> {
        let sc = ctx.scenario;
        match step {
            Step::Check => {
                let qemu = which(&self.qemu).ok_or_else(|| {
                    let mut f = StepFailure::new(
                        Exit::Infrastructure,
                        format!("{} not found on PATH", self.qemu.display()),
                    );
                    f.hint = Some("install qemu-system-x86 (scripts/setup does)".into());
                    f
                })?;
                for (key, p) in [("kernel", &sc.kernel), ("initrd", &sc.initrd)] {
                    if let Some(p) = p {
                        if !p.is_file() {
                            return Err(StepFailure::new(
                                Exit::Usage,
                                format!(
                                    "scenario {}: {key} {} does not exist",
                                    sc.name,
                                    p.display()
                                ),
                            ));
                        }
                    }
                }
                s.host_devices =
                    resolve(&self.ctx.root, sc).map_err(|e| StepFailure::new(Exit::Usage, e))?;
                Ok(Some(format!(
                    "qemu {}; {} host device(s)",
                    qemu.display(),
                    s.host_devices.len()
                )))
            }
            Step::Bind | Step::Restore => Err(missing("vfioctl::bind", "issue bind")),
            Step::VmUp | Step::VmDown | Step::Plug | Step::Unplug => {
                if ctx.cleanup {
                    // Nothing was started by this build, so there is nothing to tear down.
                    return Ok(Some("nothing to tear down".into()));
                }
                Err(missing("the vfioctl::vm lifecycle", "issue vm"))
            }
            Step::Validate => Err(missing("the agent's validate", "issue agent")),
        }
    }

    fn leftovers(&self, _s: &mut LabSession) -> Vec<String> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_prefer_iommu_groups() {
        let d = [
            HostDevice {
                bdf: "0000:41:00.0".parse().unwrap(),
                group: Some(12),
            },
            HostDevice {
                bdf: "0000:41:00.1".parse().unwrap(),
                group: Some(12),
            },
            HostDevice {
                bdf: "0000:81:00.0".parse().unwrap(),
                group: None,
            },
        ];
        assert_eq!(
            keys_for(&d).into_iter().collect::<Vec<_>>(),
            ["iommu-group:12", "pci:0000:81:00.0"]
        );
    }
}
