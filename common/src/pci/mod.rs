//! The PCI device model read from sysfs.
//!
//! Pure parsers for the kernel's text and binary formats live in [`resource`] and
//! [`config`]; [`device`] reads one device through a [`SysRoot`](crate::SysRoot) and
//! combines them. Host and guest use the same code.

pub mod config;
pub mod device;
pub mod resource;
pub mod select;

pub use config::{ConfigBar, ConfigHeader};
pub use device::{enumerate, iommu_group_members, Link, PciDevice, PciError, ResizableBar, Sriov};
pub use resource::{Bar, BarKind, ResourceLine};
pub use select::{select, select_among, SelectError};

/// `include/linux/ioport.h` flags exposed in `resource` ("so don't move them").
pub mod flags {
    pub const IO: u64 = 0x0000_0100;
    pub const MEM: u64 = 0x0000_0200;
    pub const TYPE_BITS: u64 = 0x0000_1f00;
    pub const PREFETCH: u64 = 0x0000_2000;
    pub const READONLY: u64 = 0x0000_4000;
    pub const SIZEALIGN: u64 = 0x0004_0000;
    pub const MEM_64: u64 = 0x0010_0000;
    pub const WINDOW: u64 = 0x0020_0000;
    pub const DISABLED: u64 = 0x1000_0000;
    pub const UNSET: u64 = 0x2000_0000;
}
