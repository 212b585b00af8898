//! Test-only code of vfioctl (`publish = false`; a dev-dependency of the root crate, as
//! nextest's `fixture-data` and Cloud Hypervisor's `test_infra` are).
//!
//! - [`prereq`]: the one prerequisite mechanism of every lab test. A test that cannot run
//!   here for a missing prerequisite is never counted as passed: under
//!   `VFIOCTL_REQUIRE_LAB=1` it fails naming what is missing and the setup step that
//!   provides it; otherwise it skips loudly with one `VFIOCTL-SKIP` line.
//! - [`lab`]: the lab harness (the [`lab::Lab`], VM cleanup and kept logs in
//!   [`lab::Harness`], process groups, direct boots, busybox initramfs images);
//! - [`build`]: the static guest binaries, built from the checkout;
//! - [`fixture`]: the one sysfs/procfs fixture generator (every tree under
//!   `tests/fixtures/`, the benchmark's generated trees).

#![warn(missing_docs)]

pub mod build;
pub mod fixture;
pub mod lab;
pub mod prereq;

pub use prereq::{skip, Missing};
