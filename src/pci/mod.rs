//! The PCI model (shared with the guest agent, in `vfioctl-common`) plus host-only
//! helpers:
//!
//! - [`names`]: vendor, device and class names from pci.ids (lazy; numeric when absent);
//! - [`select`]: picking devices by BDF, vendor:device or class;
//! - [`list`]: `vfioctl devices` as JSON entries and as a table.
//!
//! The fixture trees the tests read are written by the `vfioctl-testkit` dev crate.

#![warn(missing_docs)]

pub use vfioctl_common::pci::*;
pub use vfioctl_common::{Bdf, ClassFilter, Selector};

pub mod list;
pub mod names;
pub mod select;

pub use list::{BarEntry, DeviceEntry};
pub use names::PciIds;
pub use select::{select, SelectError};
