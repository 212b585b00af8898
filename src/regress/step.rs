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
use vfioctl_common::{StateMachine, TransitionError};

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
    /// Every state: pending, each step forward, each teardown step in cleanup, done.
    pub const ALL: [State; 13] = [
        State::Pending,
        State::Running(Step::Check),
        State::Running(Step::Bind),
        State::Running(Step::VmUp),
        State::Running(Step::Plug),
        State::Running(Step::Validate),
        State::Running(Step::Unplug),
        State::Running(Step::VmDown),
        State::Running(Step::Restore),
        State::Cleanup(Step::Unplug),
        State::Cleanup(Step::VmDown),
        State::Cleanup(Step::Restore),
        State::Done,
    ];
}

/// `pending`, the step (`vm-up`), the step in cleanup (`vm-down (cleanup)`), `done`.
impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Pending => f.write_str("pending"),
            State::Running(s) => write!(f, "{s}"),
            State::Cleanup(s) => write!(f, "{s} (cleanup)"),
            State::Done => f.write_str("done"),
        }
    }
}

/// Every transition some scenario can make (any plug mode, with or without host devices,
/// any pattern of step failures); [`Machine`] never asks for another. Steps that do not
/// apply are skipped: `bind`/`restore` without host devices, `plug`/`unplug` for cold
/// plug. A failure jumps to the first teardown step whose resource may be held.
impl StateMachine for State {
    const NAME: &'static str = "scenario lifecycle";

    /// An exhaustive match, so a new step or state does not compile until its transitions
    /// are decided.
    fn successors(self) -> &'static [State] {
        use State::{Cleanup, Done, Pending, Running};
        use Step::*;
        match self {
            Pending => &[Running(Check)],
            // Done: the check failed, nothing is held.
            Running(Check) => &[Running(Bind), Running(VmUp), Done],
            // A failed bind is rolled back by the bind module; restore runs anyway.
            Running(Bind) => &[Running(VmUp), Cleanup(Restore)],
            // A QEMU that never answered may still run: vm-down.
            Running(VmUp) => &[Running(Plug), Running(Validate), Cleanup(VmDown)],
            // vm-down removes a device whose plug failed half-way with the VM.
            Running(Plug) => &[Running(Validate), Cleanup(VmDown)],
            // Unplug (forward or in cleanup) for hot plug only.
            Running(Validate) => &[
                Running(Unplug),
                Running(VmDown),
                Cleanup(Unplug),
                Cleanup(VmDown),
            ],
            Running(Unplug) => &[Running(VmDown), Cleanup(VmDown)],
            // Restore for host devices only.
            Running(VmDown) => &[Running(Restore), Cleanup(Restore), Done],
            Running(Restore) => &[Done],
            Cleanup(Unplug) => &[Cleanup(VmDown)],
            Cleanup(VmDown) => &[Cleanup(Restore), Done],
            Cleanup(Restore) => &[Done],
            // Not teardown steps: never cleanup states.
            Cleanup(Check | Bind | VmUp | Plug | Validate) => &[],
            Done => &[],
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
    pub fn start(&mut self) -> Result<State, TransitionError<State>> {
        self.go(State::Running(Step::Check))
    }

    /// Move to `to` if the table allows it; a refusal (a bug in the machine) changes
    /// nothing.
    fn go(&mut self, to: State) -> Result<State, TransitionError<State>> {
        self.state.check(to)?;
        self.state = to;
        Ok(to)
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

    /// Record the end of the current step and move on (pending and done stay where they
    /// are).
    pub fn finish(&mut self, ok: bool) -> Result<State, TransitionError<State>> {
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
            State::Pending | State::Done => return Ok(self.state),
        };
        self.go(next)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use vfioctl_common::state_machine::refusals;

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
        let mut cur = m.start().unwrap();
        edges.push((prev, cur));
        let mut i = 0;
        while cur != State::Done {
            visited.push(cur);
            prev = cur;
            cur = m.finish(fails & (1 << i) == 0).unwrap();
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
        for from in State::ALL {
            for to in State::ALL {
                assert_eq!(
                    from.valid_transition(to),
                    taken.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn every_pair_outside_the_table_is_refused() {
        // 169 pairs, 25 of them allowed.
        assert_eq!(refusals(&State::ALL).len(), 169 - 25);
        // The machine refuses the same way and stays where it was.
        let mut m = Machine::new(Shape {
            bind: true,
            hot: true,
        });
        let e = m.go(State::Done).unwrap_err();
        assert_eq!(
            e.to_string(),
            "scenario lifecycle: cannot go from pending to done"
        );
        assert_eq!(m.state(), State::Pending);
        m.start().unwrap();
        m.finish(true).unwrap();
        assert_eq!(m.finish(false), Ok(State::Cleanup(Step::Restore)));
        assert_eq!(
            m.go(State::Running(Step::VmUp)).unwrap_err().to_string(),
            "scenario lifecycle: cannot go from restore (cleanup) to vm-up"
        );
    }

    #[test]
    fn state_names() {
        let names: Vec<String> = State::ALL.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "pending",
                "check",
                "bind",
                "vm-up",
                "plug",
                "validate",
                "unplug",
                "vm-down",
                "restore",
                "unplug (cleanup)",
                "vm-down (cleanup)",
                "restore (cleanup)",
                "done"
            ]
        );
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
        m.start().unwrap();
        for _ in 0..4 {
            m.finish(true).unwrap(); // check bind vm-up plug
        }
        assert_eq!(m.state(), State::Running(Step::Validate));
        assert_eq!(m.finish(false), Ok(State::Cleanup(Step::Unplug)));
        assert!(m.in_cleanup());
        assert_eq!(m.finish(false), Ok(State::Cleanup(Step::VmDown)));
        assert_eq!(m.finish(true), Ok(State::Cleanup(Step::Restore)));
        assert_eq!(m.finish(true), Ok(State::Done));
        assert_eq!(m.failed(), Some(Step::Validate));
    }

    #[test]
    fn failing_check_holds_nothing() {
        let mut m = Machine::new(Shape {
            bind: true,
            hot: true,
        });
        m.start().unwrap();
        assert_eq!(m.finish(false), Ok(State::Done));
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
