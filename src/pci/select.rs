//! Picking devices by selector (`0000:d0:00.0`, `10de:2206`, `10de:*`, `class:gpu`).

use vfioctl_common::pci::{enumerate, PciDevice, PciError};
use vfioctl_common::{Bdf, Selector, SysRoot};

use crate::exit::{Diagnose, Exit};

/// Selecting devices failed.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error("no PCI device matches {selector}")]
    NoMatch { selector: String },
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
        return bdfs
            .into_iter()
            .map(|b| PciDevice::read(root, b).map_err(SelectError::from))
            .collect();
    }
    let mut out = Vec::new();
    for bdf in enumerate(root)? {
        let dev = PciDevice::read(root, bdf)?;
        if matches_any(selectors, &dev) {
            out.push(dev);
        }
    }
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
