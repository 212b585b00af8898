//! Host readiness and per-device checks (`vfioctl check`).
//!
//! - [`facts`]: reads what the checks look at (through the `SysRoot`) into plain data;
//! - [`verdict`]: pure functions from facts to [`Check`]s (pass / warn / fail / skip, each
//!   with the message naming what was seen and a hint naming the fix);
//! - [`report`]: the run over a host and its selected devices, printed or as JSON.

#![warn(missing_docs)]

pub mod facts;
pub mod report;
pub mod verdict;

pub use facts::{DeviceFacts, HostFacts};
pub use report::{run_checks, CheckReport, Summary};
pub use verdict::{device_checks, host_checks, Check, Status};
