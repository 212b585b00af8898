//! Device selection: the one place where selectors (`0000:01:00.0`, `10de:*`,
//! `class:gpu`) become devices, and where "nothing matches" is decided.

use std::collections::BTreeMap;

use super::device::{enumerate, PciDevice, PciError};
use crate::bdf::{Bdf, Selector};
use crate::sysroot::SysRoot;

/// Selecting devices failed.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// A selector matched no device.
    #[error("no PCI device matches {selector}")]
    NoMatch {
        /// The selector as the user wrote it (with where it was looked for).
        selector: String,
    },
    /// Reading a device failed.
    #[error(transparent)]
    Pci(#[from] PciError),
}

/// Resolve `selectors` to devices, in address order, without duplicates. A BDF must
/// exist; an id or class selector must match at least one device.
pub fn select(root: &SysRoot, selectors: &[Selector]) -> Result<Vec<PciDevice>, SelectError> {
    let mut out: BTreeMap<Bdf, PciDevice> = BTreeMap::new();
    let mut all: Option<Vec<PciDevice>> = None;
    for s in selectors {
        if let Selector::Bdf { bdf } = s {
            let d = PciDevice::read(root, *bdf)?;
            out.insert(d.bdf, d);
            continue;
        }
        if all.is_none() {
            let mut v = Vec::new();
            for b in enumerate(root)? {
                v.push(PciDevice::read(root, b)?);
            }
            all = Some(v);
        }
        let mut hit = false;
        for d in all.iter().flatten() {
            if s.matches(d.bdf, d.vendor, d.device, d.class) {
                hit = true;
                out.insert(d.bdf, d.clone());
            }
        }
        if !hit {
            return Err(SelectError::NoMatch {
                selector: s.to_string(),
            });
        }
    }
    Ok(out.into_values().collect())
}

/// The subset of `candidates` that `selectors` pick (ids and classes read through sysfs;
/// candidates that can no longer be read match only by address).
pub fn select_among(
    root: &SysRoot,
    selectors: &[Selector],
    candidates: &[Bdf],
    where_: &str,
) -> Result<Vec<Bdf>, SelectError> {
    let mut out = std::collections::BTreeSet::new();
    for s in selectors {
        let mut hit = false;
        for b in candidates {
            let m = match s {
                Selector::Bdf { bdf } => bdf == b,
                _ => PciDevice::read(root, *b)
                    .map(|d| s.matches(d.bdf, d.vendor, d.device, d.class))
                    .unwrap_or(false),
            };
            if m {
                out.insert(*b);
                hit = true;
            }
        }
        if !hit {
            return Err(SelectError::NoMatch {
                selector: format!("{s} {where_}"),
            });
        }
    }
    Ok(out.into_iter().collect())
}
