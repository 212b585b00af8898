//! vfioctl: GPU passthrough labs for Kata Containers and QEMU.
//!
//! The binary (`src/main.rs`) only calls [`cli::main`]; every capability is a module here:
//!
//! | module | what it does |
//! |---|---|
//! | [`pci`] | the PCI model (from `vfioctl-common`), pci.ids names, device listing |
//! | [`host`] | host readiness and per-device checks (`vfioctl check`) |
//! | [`bind`] | vfio-pci binding with group planning, ledger, restore, in-use safety |
//! | [`vm`] | VM profiles, QEMU command lines, root-port sizing, lifecycle, hotplug |
//! | [`qmp`] | the tolerant QMP client |
//! | [`agent`] | host side of the guest agent (transports, client) and `validate` |
//! | [`rootfs`] | initramfs / ext4 builder |
//! | [`kernel`] | guest kernel builds from `kernel-configs/` fragments, NVIDIA modules |
//! | [`kata`] | Kata `configuration.toml` generation and patching |
//! | [`regress`] | the nightly regression matrix and its reports |
//! | [`interrupt`] | SIGINT/SIGTERM for commands that start things (exit 130/143) |
//! | [`shared`] | shared GPUs: SR-IOV VFs, mediated devices (vGPU), iommufd vs groups |
//! | [`snapshot`] | `vfioctl snapshot`: what the commands read, captured for `--root` replay |
#![warn(missing_docs)]

pub use vfioctl_common as common;
pub use vfioctl_common::{Bdf, SysRoot};

pub mod agent;
pub mod bind;
pub mod cli;
pub mod context;
pub mod exit;
pub mod host;
pub mod interrupt;
pub mod kata;
pub mod kernel;
pub mod output;
pub mod pci;
pub mod qmp;
pub mod regress;
pub mod rootfs;
pub mod shared;
pub mod snapshot;
pub mod vm;

pub use context::Context;
pub use exit::{Diagnose, Exit, Failure};
