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
    /// `IORESOURCE_IO`: an I/O port range.
    pub const IO: u64 = 0x0000_0100;
    /// `IORESOURCE_MEM`: a memory range.
    pub const MEM: u64 = 0x0000_0200;
    /// `IORESOURCE_TYPE_BITS`: the resource type mask.
    pub const TYPE_BITS: u64 = 0x0000_1f00;
    /// `IORESOURCE_PREFETCH`: prefetchable memory.
    pub const PREFETCH: u64 = 0x0000_2000;
    /// `IORESOURCE_READONLY`: read-only (expansion ROMs).
    pub const READONLY: u64 = 0x0000_4000;
    /// `IORESOURCE_SIZEALIGN`: aligned to its size.
    pub const SIZEALIGN: u64 = 0x0004_0000;
    /// `IORESOURCE_MEM_64`: a 64-bit memory range.
    pub const MEM_64: u64 = 0x0010_0000;
    /// `IORESOURCE_WINDOW`: a bridge window.
    pub const WINDOW: u64 = 0x0020_0000;
    /// `IORESOURCE_DISABLED`: disabled.
    pub const DISABLED: u64 = 0x1000_0000;
    /// `IORESOURCE_UNSET`: no address assigned.
    pub const UNSET: u64 = 0x2000_0000;
}
