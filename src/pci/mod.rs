//! The PCI model (shared with the guest agent, in `vfioctl-common`) plus host-only
//! helpers: names from pci.ids, device selection and listing, and the fixture writer.
pub use vfioctl_common::pci::*;
pub use vfioctl_common::{Bdf, ClassFilter, Selector};

pub mod fixture;
