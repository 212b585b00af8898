//! Binding devices to vfio-pci and giving them back (`vfioctl bind`, `unbind`, `restore`).
//!
//! | file | what |
//! |---|---|
//! | [`flow`] | the one bind flow: [`prepare`] (plan, in-use check, step list) for [`execute`] |
//! | [`plan`] | the pure group-aware planner (selected devices, companions, bridges) |
//! | [`safety`] | in-use rules: mounted disks, routed NICs, open GPU nodes, boot VGA |
//! | [`state`] | the per-device state machine (host driver -> unbound -> vfio -> restored) |
//! | [`apply`] | carrying out a plan with verification and whole-plan rollback; restore |
//! | [`ledger`] | the crash-safe record of what each device had before |
//! | [`driver`] | vfio variant choice from `modules.alias`, module loading |
//! | [`write`] | sysfs writes with a timeout (in a child, killed and reaped on timeout), the fault hook (`fault-injection` feature) |
//! | `sim` | a simulated kernel for fixture trees (`fault-injection` feature, tests only) |
//! | [`persist`] | boot-time overrides in driverctl's format |
//! | `timing` | phase times at debug level (`vfioctl -vv bind`) |

#![warn(missing_docs)]

pub mod apply;
pub mod driver;
pub mod error;
pub mod flow;
pub mod ledger;
pub mod persist;
pub mod plan;
pub mod safety;
#[cfg(feature = "fault-injection")]
pub mod sim;
pub mod state;
mod timing;
pub mod write;

pub use apply::{execute, restore, BindReport, RestoreReport};
pub use error::BindError;
pub use flow::{prepare, PrepareOptions, Prepared, Step};
pub use ledger::{Entry, Ledger};
pub use plan::{plan, Action, GroupPlan, Member, Plan, Role, SysWrite};
pub use safety::{assess, HostUse, Refusal, RefusalKind};
pub use state::{BindState, Tracker};

use std::collections::BTreeMap;

use vfioctl_common::{Bdf, PciDevice, Selector, SysRoot};

/// Resolve selectors to devices, in address order, without duplicates (the one selection
/// rule: [`vfioctl_common::pci::select`]).
pub fn select(root: &SysRoot, selectors: &[Selector]) -> Result<Vec<PciDevice>, BindError> {
    Ok(vfioctl_common::pci::select(root, selectors)?)
}

/// Everything the planner needs to see for `selected`: their group members and the
/// devices linked to them as consumers (and those devices' groups).
pub fn neighbourhood(
    root: &SysRoot,
    selected: &[PciDevice],
) -> Result<BTreeMap<Bdf, PciDevice>, BindError> {
    let mut known: BTreeMap<Bdf, PciDevice> = selected.iter().map(|d| (d.bdf, d.clone())).collect();
    let mut todo: Vec<Bdf> = selected
        .iter()
        .flat_map(|d| {
            d.iommu_group_peers
                .iter()
                .chain(d.consumers.iter())
                .copied()
        })
        .collect();
    while let Some(b) = todo.pop() {
        if known.contains_key(&b) {
            continue;
        }
        let d = PciDevice::read(root, b)?;
        todo.extend(d.iommu_group_peers.iter().copied());
        known.insert(b, d);
    }
    Ok(known)
}
