//! The nightly regression matrix: plan files, the scenario lifecycle, scheduling,
//! results, reports, history and regression detection, and fleet manifests.
//!
//! | file | what |
//! |---|---|
//! | `plan.rs` | the plan TOML model and its validation |
//! | `step.rs` | the scenario lifecycle state machine (with the cleanup path) |

pub mod exec;
pub mod history;
pub mod html;
pub mod junit;
pub mod plan;
pub mod results;
pub mod schedule;
pub mod step;
mod testdata;

pub use plan::{DeviceSpec, Expect, Firmware, Kind, Plan, PlanError, PlugMode, Reserve, Scenario};
pub use step::{Machine, Shape, State, Step};
