//! Picking devices by selector (`0000:d0:00.0`, `10de:2206`, `10de:*`, `class:gpu`).

#![warn(missing_docs)]

use vfioctl_common::pci::{enumerate, PciDevice, PciError};
use vfioctl_common::{Bdf, Selector, SysRoot};

use crate::exit::{Diagnose, Exit};

/// Selecting devices failed.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    /// Reading a device failed.
    Pci(#[from] PciError),
    #[error("no PCI device matches {selector}")]
    /// A selector matched no device.
    NoMatch {
        /// The selector as the user wrote it.
        selector: String,
    },
}

impl Diagnose for SelectError {
    fn hint(&self) -> Option<String> {
        match self {
            SelectError::NoMatch { .. } => Some("list the devices with `vfioctl devices`".into()),
            _ => None,
        }
    }
    fn exit(&self) -> Exit {
        match self {
            SelectError::Pci(e) => e.exit(),
            SelectError::NoMatch { .. } => Exit::Usage,
        }
    }
}

/// Read `bdfs` (in that order). Reading sysfs is one small file at a time, system-call
/// bound; above a few dozen devices the list is split over the available cores.
pub fn read_many(root: &SysRoot, bdfs: &[Bdf]) -> Result<Vec<PciDevice>, PciError> {
    const PER_THREAD_MIN: usize = 64;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(bdfs.len().div_ceil(PER_THREAD_MIN))
        .max(1);
    if threads == 1 {
        return bdfs.iter().map(|b| PciDevice::read(root, *b)).collect();
    }
    let chunk = bdfs.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = bdfs
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|b| PciDevice::read(root, *b))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(bdfs.len());
        for h in handles {
            match h.join() {
                Ok(part) => out.extend(part?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(out)
    })
}

/// True when `dev` matches any of `selectors` (an empty list matches everything).
pub fn matches_any(selectors: &[Selector], dev: &PciDevice) -> bool {
    selectors.is_empty()
        || selectors
            .iter()
            .any(|s| s.matches(dev.bdf, dev.vendor, dev.device, dev.class))
}

/// Read the devices `selectors` name (all devices when empty), sorted by address.
///
/// A BDF that does not exist is [`PciError::NotFound`]; with `strict`, a vendor:device or
/// class selector that matches nothing is [`SelectError::NoMatch`] (a typo should not
/// look like an empty machine).
pub fn select(
    root: &SysRoot,
    selectors: &[Selector],
    strict: bool,
) -> Result<Vec<PciDevice>, SelectError> {
    let only_bdfs: Option<Vec<Bdf>> = (!selectors.is_empty())
        .then(|| {
            selectors
                .iter()
                .map(|s| match s {
                    Selector::Bdf { bdf } => Some(*bdf),
                    _ => None,
                })
                .collect()
        })
        .flatten();
    if let Some(mut bdfs) = only_bdfs {
        bdfs.sort();
        bdfs.dedup();
        return Ok(read_many(root, &bdfs)?);
    }
    let mut out = read_many(root, &enumerate(root)?)?;
    let total = out.len();
    out.retain(|d| matches_any(selectors, d));
    tracing::info!(
        "{}: {total} PCI devices, {} match {}",
        root.path("/sys/bus/pci/devices").display(),
        out.len(),
        if selectors.is_empty() {
            "(no selector: all)".to_string()
        } else {
            selectors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    for s in selectors {
        if let Selector::Bdf { bdf } = s {
            if !out.iter().any(|d| d.bdf == *bdf) {
                return Err(PciError::NotFound {
                    bdf: *bdf,
                    path: bdf.sysfs_path(),
                }
                .into());
            }
        } else if strict
            && !out
                .iter()
                .any(|d| s.matches(d.bdf, d.vendor, d.device, d.class))
        {
            return Err(SelectError::NoMatch {
                selector: s.to_string(),
            });
        }
    }
    Ok(out)
}
