//! What the vfioctl host tool and its guest agent share.
//!
//! - [`sysroot`]: the one seam through which every `/sys`, `/proc`, `/dev`, `/etc` and
//!   `/lib/modules` access goes, rooted at `/` on a real machine and at a fixture tree in tests.
//! - [`bdf`]: PCI addresses and device selectors.
//! - [`pci`]: the PCI device model read from sysfs (ids, driver, IOMMU group, BARs from
//!   `resource` and `config`, link, reset, power, SR-IOV, resizable BARs).
//! - [`proto`]: the versioned host <-> guest agent protocol.
//! - [`units`]: byte sizes as people write them (`32G`, `256M`).
//! - [`error`]: an error and its causes on one line.
//! - [`state_machine`]: lifecycles as exhaustive transition tables, and their one refusal.
//! - [`text`]: escaping of untrusted (guest) text for terminals, logs and XML.
//!
//! The guest agent links this crate too, so the guest lists its PCI devices with the very
//! parser the host uses, and the BARs on both sides can be compared field by field.

#![warn(missing_docs)]

pub mod bdf;
pub mod error;
pub mod pci;
pub mod proto;
pub mod state_machine;
pub mod sysroot;
pub mod text;
pub mod units;

pub use bdf::{Bdf, BdfError, ClassFilter, Selector};
pub use pci::{Bar, BarKind, PciDevice, PciError};
pub use state_machine::{StateMachine, TransitionError};
pub use sysroot::{SysDir, SysError, SysRoot};
