//! A scenario's lifecycle as an explicit state machine.
//!
//! The forward path is `check -> bind -> vm-up -> plug -> validate -> unplug -> vm-down
//! -> restore`. Steps that do not apply are skipped: `bind`/`restore` without host
//! devices (emulated stand-ins), `plug`/`unplug` for cold plug (the device is on the QEMU
//! command line). When a step fails, the machine switches to *cleanup*: it runs only the
//! teardown steps (`unplug`, `vm-down`, `restore`) whose resource may be held, in order,
//! and it runs every one of them even when one of them fails. So whatever fails, the
//! devices are restored and the VM is gone.
//!
//! What "may be held" means: `restore` runs once `bind` was *attempted* (a bind that
//! failed half-way is rolled back by the bind module, and restore from the ledger is
//! idempotent); `vm-down` once `vm-up` was attempted (a QEMU that never answered may still
//! be running); `unplug` only after a successful `plug` (`vm-down` removes a device whose
//! plug failed half-way together with the VM).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One step of a scenario, in execution order.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Check the host and the scenario's inputs (devices, kernel, initrd, QEMU).
    Check,
    /// Bind the host devices to vfio-pci (skipped for emulated stand-ins).
    Bind,
    /// Start the VM and wait for the guest agent.
    VmUp,
    /// Hot-plug the devices over QMP (skipped for cold plug).
    Plug,
    /// Check the devices in the guest through its agent (nested: run the L1 guest's own passthrough).
    Validate,
    /// Hot-unplug the devices (skipped for cold plug).
    Unplug,
    /// Stop the VM.
    VmDown,
    /// Give the host devices back to their drivers (skipped for emulated stand-ins).
    Restore,
}

impl Step {
    /// Every step, in execution order.
    pub const ALL: [Step; 8] = [
        Step::Check,
        Step::Bind,
        Step::VmUp,
        Step::Plug,
        Step::Validate,
        Step::Unplug,
        Step::VmDown,
        Step::Restore,
    ];

    /// The step's name as plans, results and reports write it (`vm-up`).
    pub fn name(self) -> &'static str {
        match self {
            Step::Check => "check",
            Step::Bind => "bind",
            Step::VmUp => "vm-up",
            Step::Plug => "plug",
            Step::Validate => "validate",
            Step::Unplug => "unplug",
            Step::VmDown => "vm-down",
            Step::Restore => "restore",
        }
    }

    /// Steps that give back what an earlier step took.
    pub fn is_teardown(self) -> bool {
        matches!(self, Step::Unplug | Step::VmDown | Step::Restore)
    }

    /// Limits sized for TCG on a small machine; a plan's `timeouts` override them.
    pub fn default_timeout(self) -> Duration {
        Duration::from_secs(match self {
            Step::Check => 30,
            Step::Bind | Step::Restore => 60,
            Step::VmUp => 300,
            Step::Plug | Step::Unplug | Step::VmDown => 60,
            Step::Validate => 120,
        })
    }

    /// Whether the resource this teardown step gives back may be held when `failed`
    /// (a forward or teardown step) has just ended.
    fn may_hold(self, at: Step) -> bool {
        match self {
            Step::Unplug => at > Step::Plug && at < Step::Unplug,
            Step::VmDown => at >= Step::VmUp && at < Step::VmDown,
            Step::Restore => at >= Step::Bind && at < Step::Restore,
            _ => false,
        }
    }

    /// Teardown steps a scenario may legitimately not have (cold plug, no host device).
    fn skippable(self) -> bool {
        matches!(self, Step::Bind | Step::Plug | Step::Unplug | Step::Restore)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A step name that is none of the steps ([`Step`]'s `FromStr`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown step {input:?}; steps are check, bind, vm-up (or boot), plug, validate, unplug, vm-down, restore")]
pub struct UnknownStep {
    /// The name as written.
    pub input: String,
}

impl FromStr for Step {
    type Err = UnknownStep;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "check" => Step::Check,
            "bind" => Step::Bind,
            "vm-up" | "boot" => Step::VmUp,
            "plug" => Step::Plug,
            "validate" => Step::Validate,
            "unplug" => Step::Unplug,
            "vm-down" | "down" => Step::VmDown,
            "restore" => Step::Restore,
            other => {
                return Err(UnknownStep {
                    input: other.into(),
                })
            }
        })
    }
}

/// Where a scenario is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not started.
    Pending,
    /// On the forward path (teardown included when nothing failed).
    Running(Step),
    /// Tearing down after a failure.
    Cleanup(Step),
    /// Finished: every step that applies ran (or cleanup ended).
    Done,
}

impl State {
    /// Every state, for exhaustive tests.
    pub fn all() -> Vec<State> {
        let mut v = vec![State::Pending];
        v.extend(Step::ALL.iter().map(|s| State::Running(*s)));
        v.extend(
            Step::ALL
                .iter()
                .filter(|s| s.is_teardown())
                .map(|s| State::Cleanup(*s)),
        );
        v.push(State::Done);
        v
    }

    /// Whether `self -> to` can happen in some scenario (any plug mode, with or without
    /// host devices, any pattern of step failures).
    pub fn valid_transition(self, to: State) -> bool {
        use State::*;
        // Forward steps strictly between two steps may be skipped only if skippable.
        let gap_ok = |a: Step, b: Step| {
            Step::ALL
                .iter()
                .filter(|s| **s > a && **s < b)
                .all(|s| s.skippable())
        };
        // Teardown steps strictly between `a` and `b` that may be held at `at` may be
        // left out only if the scenario can lack them.
        let teardown_gap_ok = |at: Step, a: Step, b: Step| {
            Step::ALL
                .iter()
                .filter(|s| s.is_teardown() && **s > a && **s < b && s.may_hold(at))
                .all(|s| s.skippable())
        };
        match (self, to) {
            (Pending, Running(Step::Check)) => true,
            (Running(a), Running(b)) => b > a && gap_ok(a, b),
            // A failure jumps to the first teardown step that may be held.
            (Running(a), Cleanup(b)) => b.may_hold(a) && teardown_gap_ok(a, a, b),
            // Done after the last teardown step, or after a failure that held nothing.
            (Running(a), Done) => matches!(a, Step::Check | Step::VmDown | Step::Restore),
            (Cleanup(a), Cleanup(b)) => b > a && b.is_teardown() && teardown_gap_ok(a, a, b),
            (Cleanup(a), Done) => a == Step::VmDown || a == Step::Restore,
            _ => false,
        }
    }
}

/// Which steps a scenario has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Host devices to bind (and restore).
    pub bind: bool,
    /// Hot plug (plug and unplug steps); cold plug has neither.
    pub hot: bool,
}

impl Shape {
    /// Whether this scenario has `step`.
    pub fn applies(self, step: Step) -> bool {
        match step {
            Step::Bind | Step::Restore => self.bind,
            Step::Plug | Step::Unplug => self.hot,
            _ => true,
        }
    }
}

/// The lifecycle driver: ask [`Machine::state`] what to run, report the outcome with
/// [`Machine::finish`]; it decides the next step, including the cleanup path.
#[derive(Clone, Debug)]
pub struct Machine {
    shape: Shape,
    state: State,
    /// The first step that failed.
    failed: Option<Step>,
    /// The step whose end decides which teardown is needed (the failing forward step).
    failed_at: Option<Step>,
}

impl Machine {
    /// A machine at [`State::Pending`] for a scenario of this shape.
    pub fn new(shape: Shape) -> Self {
        Self {
            shape,
            state: State::Pending,
            failed: None,
            failed_at: None,
        }
    }

    /// Where the scenario is: the step to run now, or pending/done.
    pub fn state(&self) -> State {
        self.state
    }

    /// The first step that failed, if any.
    pub fn failed(&self) -> Option<Step> {
        self.failed
    }

    /// Whether the current step runs as part of cleanup after a failure.
    pub fn in_cleanup(&self) -> bool {
        matches!(self.state, State::Cleanup(_))
    }

    /// Leave `Pending`.
    pub fn start(&mut self) -> State {
        self.go(State::Running(Step::Check))
    }

    fn go(&mut self, to: State) -> State {
        debug_assert!(
            self.state.valid_transition(to),
            "invalid transition {:?} -> {to:?}",
            self.state
        );
        self.state = to;
        to
    }

    fn next_forward(&self, after: Step) -> State {
        Step::ALL
            .iter()
            .copied()
            .find(|s| *s > after && self.shape.applies(*s))
            .map(State::Running)
            .unwrap_or(State::Done)
    }

    fn next_cleanup(&self, after: Step, at: Step) -> State {
        Step::ALL
            .iter()
            .copied()
            .find(|s| *s > after && s.is_teardown() && self.shape.applies(*s) && s.may_hold(at))
            .map(State::Cleanup)
            .unwrap_or(State::Done)
    }

    /// Record the end of the current step and move on.
    pub fn finish(&mut self, ok: bool) -> State {
        let next = match self.state {
            State::Running(s) if ok => self.next_forward(s),
            State::Running(s) => {
                self.failed = Some(s);
                self.failed_at = Some(s);
                self.next_cleanup(s, s)
            }
            State::Cleanup(s) => {
                if !ok && self.failed.is_none() {
                    self.failed = Some(s);
                }
                self.next_cleanup(s, self.failed_at.unwrap_or(s))
            }
            State::Pending | State::Done => return self.state,
        };
        self.go(next)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn shapes() -> Vec<Shape> {
        let mut v = Vec::new();
        for bind in [false, true] {
            for hot in [false, true] {
                v.push(Shape { bind, hot });
            }
        }
        v
    }

    /// Run the machine with step `i` (in execution order) failing iff bit `i` of `fails`.
    fn simulate(shape: Shape, fails: u32) -> (Vec<(State, State)>, Vec<State>) {
        let mut m = Machine::new(shape);
        let mut edges = Vec::new();
        let mut visited = vec![State::Pending];
        let mut prev = m.state();
        let mut cur = m.start();
        edges.push((prev, cur));
        let mut i = 0;
        while cur != State::Done {
            visited.push(cur);
            prev = cur;
            cur = m.finish(fails & (1 << i) == 0);
            edges.push((prev, cur));
            i += 1;
            assert!(i < 20, "machine does not terminate");
        }
        (edges, visited)
    }

    #[test]
    fn every_transition_pair_is_valid_iff_some_run_takes_it() {
        let mut taken = HashSet::new();
        for shape in shapes() {
            for fails in 0..(1u32 << 9) {
                for (a, b) in simulate(shape, fails).0 {
                    taken.insert((a, b));
                }
            }
        }
        for from in State::all() {
            for to in State::all() {
                assert_eq!(
                    from.valid_transition(to),
                    taken.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn cleanup_always_gives_back_what_was_taken() {
        for shape in shapes() {
            for fails in 0..(1u32 << 9) {
                let (_, visited) = simulate(shape, fails);
                let ran = |s: Step| {
                    visited
                        .iter()
                        .any(|v| *v == State::Running(s) || *v == State::Cleanup(s))
                };
                if ran(Step::Bind) {
                    assert!(
                        ran(Step::Restore),
                        "{shape:?} {fails:b}: bound, not restored"
                    );
                }
                if ran(Step::VmUp) {
                    assert!(ran(Step::VmDown), "{shape:?} {fails:b}: VM left running");
                }
                // Unplug runs after a successful plug unless the VM goes down anyway.
                assert!(visited.iter().all(|v| match v {
                    State::Running(s) | State::Cleanup(s) => shape.applies(*s),
                    _ => true,
                }));
            }
        }
    }

    #[test]
    fn happy_path_runs_every_applicable_step_in_order() {
        let m = |bind, hot| {
            simulate(Shape { bind, hot }, 0)
                .1
                .into_iter()
                .filter_map(|s| match s {
                    State::Running(s) => Some(s.name()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            m(true, true),
            "check bind vm-up plug validate unplug vm-down restore"
        );
        assert_eq!(m(false, true), "check vm-up plug validate unplug vm-down");
        assert_eq!(m(false, false), "check vm-up validate vm-down");
        assert_eq!(m(true, false), "check bind vm-up validate vm-down restore");
    }

    #[test]
    fn failure_in_validate_cleans_up_and_remembers_the_step() {
        let mut m = Machine::new(Shape {
            bind: true,
            hot: true,
        });
        m.start();
        for _ in 0..4 {
            m.finish(true); // check bind vm-up plug
        }
        assert_eq!(m.state(), State::Running(Step::Validate));
        assert_eq!(m.finish(false), State::Cleanup(Step::Unplug));
        assert!(m.in_cleanup());
        assert_eq!(m.finish(false), State::Cleanup(Step::VmDown));
        assert_eq!(m.finish(true), State::Cleanup(Step::Restore));
        assert_eq!(m.finish(true), State::Done);
        assert_eq!(m.failed(), Some(Step::Validate));
    }

    #[test]
    fn failing_check_holds_nothing() {
        let mut m = Machine::new(Shape {
            bind: true,
            hot: true,
        });
        m.start();
        assert_eq!(m.finish(false), State::Done);
    }

    #[test]
    fn step_names_parse_back() {
        for s in Step::ALL {
            assert_eq!(s.name().parse::<Step>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
        assert_eq!("boot".parse::<Step>().unwrap(), Step::VmUp);
        assert!("nope".parse::<Step>().is_err());
    }
}
