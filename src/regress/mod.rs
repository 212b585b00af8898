//! The nightly regression matrix: plan files, the scenario lifecycle, scheduling,
//! results, reports, history and regression detection, and fleet manifests.
//!
//! | file | what |
//! |---|---|
//! | `plan.rs` | the plan TOML model and its validation |
//! | `step.rs` | the scenario lifecycle state machine (with the cleanup path) |
//! | `schedule.rs` | which scenarios may run together (`--jobs`, device exclusivity) |
//! | `exec.rs` | the executor: runs scenarios through a `Backend`, times every step |
//! | `lab.rs` | the real backend over the library (host, bind, vm, agent) |
//! | `nested.rs` | the nested-passthrough scenario: L1 initramfs with QEMU inside, L1 script, verdict |
//! | `results.rs` | results JSON model, outcome judging, exit code |
//! | `history.rs` | the history directory and regression detection |
//! | `junit.rs`, `html.rs` | JUnit XML and the static HTML report |
//! | `k8s.rs`, `collect.rs` | fleet Jobs for Kubernetes and merging their results |

#![warn(missing_docs)]

pub mod collect;
pub mod exec;
pub mod history;
pub mod html;
pub mod junit;
pub mod k8s;
pub mod lab;
pub mod nested;
pub mod plan;
pub mod results;
pub mod schedule;
pub mod step;
mod testdata;

pub use plan::{DeviceSpec, Expect, Firmware, Kind, Plan, PlanError, PlugMode, Reserve, Scenario};
pub use results::{Outcome, RunResults};
pub use step::{Machine, Shape, State, Step};
