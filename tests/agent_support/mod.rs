//! The agent test helpers live in the test kit; this re-export keeps `mod agent_support;`
//! working for tests written before they moved. New tests use the test kit.
#![allow(dead_code, unused_imports)]

pub use vfioctl_testkit::build::static_agent;
pub use vfioctl_testkit::lab::LocalAgent;
pub use vfioctl_testkit::prereq::{lab_dir as lab, repo as workspace};
