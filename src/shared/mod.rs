//! Shared GPUs: SR-IOV virtual functions, mediated devices (vGPU) and the VFIO backend
//! (legacy groups or iommufd) a VM gets them through.
//!
//! | file | what |
//! |---|---|
//! | [`sriov`] | `vfioctl vf list/create/remove`: PF state, VF creation and removal, ledger |
//! | [`mdev`] | `vfioctl mdev types/create/list/remove`: mediated device types and instances |
//! | [`backend`] | iommufd vs VFIO groups: what the host kernel and QEMU offer, the choice |
//! | [`readiness`] | `check`'s SR-IOV readiness and NVIDIA per-VF vGPU type checks |
//! | [`lab`] | the SR-IOV nested lab scenario: QEMU arguments, L1 script, verdict |
//! | [`ledger`] | what vfioctl created (VFs, mdevs), kept in the bind ledger, and `restore` |
//! | [`stack`] | lab stacks (system QEMU 7.2 + 6.1, modern QEMU 10 + 6.12) and the versions reports record |
//! | [`error`] | [`SharedError`] |
//!
//! Every sysfs access goes through the [`SysRoot`](vfioctl_common::SysRoot), so the same
//! code runs against fixture trees (`--root`) and inside lab guests.

#![warn(missing_docs)]

pub mod backend;
pub mod error;
pub mod lab;
pub mod ledger;
pub mod mdev;
pub mod readiness;
pub mod sriov;
pub mod stack;

pub use backend::{BackendChoice, BackendFacts, VfioBackend};
pub use error::SharedError;
pub use ledger::{restore_created, MdevRecord, SharedRestoreReport, SriovRecord};
pub use mdev::{MdevDevice, MdevType, MdevUuid};
pub use sriov::{PfStatus, VfInfo};
