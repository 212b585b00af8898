//! The lab harness lives in the test kit (`vfioctl_testkit::lab`); this re-export keeps
//! `mod common;` working for tests written before it moved. New tests use the test kit.
#![allow(unused_imports)]

pub use vfioctl_testkit::lab::{Harness, Lab, READY_MARKER};
