//! The PCI model (shared with the guest agent, in `vfioctl-common`) plus host-only
//! helpers: names from pci.ids and device listing.
pub use vfioctl_common::pci::*;
pub use vfioctl_common::{Bdf, ClassFilter, Selector};
