//! Lifecycles as explicit state machines, and the one way they refuse a transition.
//!
//! A lifecycle (a VM's, a device's binding, a regression scenario's) is an enum that
//! implements [`StateMachine`]: its [`successors`](StateMachine::successors) are an
//! exhaustive `match` with no wildcard arm (Cloud Hypervisor's `VmState` is the model), so
//! a new state does not compile until its transitions are decided. Every machine checks a
//! move with [`StateMachine::check`] and refuses it with the same [`TransitionError`].

use std::fmt;

/// A lifecycle whose transitions are a fixed table.
pub trait StateMachine: Copy + Eq + fmt::Debug + fmt::Display + 'static {
    /// The machine's name in a refusal (`VM lifecycle`).
    const NAME: &'static str;

    /// The states this one may go to. Implement it as an exhaustive `match self` without
    /// a wildcard arm: that is what makes a new state fail to compile until its
    /// transitions are decided.
    fn successors(self) -> &'static [Self];

    /// Whether `self -> to` is in the table.
    fn valid_transition(self, to: Self) -> bool {
        self.successors().contains(&to)
    }

    /// `Ok` when `self -> to` is in the table, else the refusal.
    fn check(self, to: Self) -> Result<(), TransitionError<Self>> {
        if self.valid_transition(to) {
            Ok(())
        } else {
            Err(TransitionError {
                machine: Self::NAME,
                from: self,
                to,
            })
        }
    }
}

/// A transition the machine's table does not allow: a bug in the code that asked for it.
/// The error types that carry it add what it happened to (the VM, the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{machine}: cannot go from {from} to {to}")]
pub struct TransitionError<S: fmt::Debug + fmt::Display> {
    /// The machine's name ([`StateMachine::NAME`]).
    pub machine: &'static str,
    /// The state it is in.
    pub from: S,
    /// The state asked for.
    pub to: S,
}

/// Every pair of `all` outside the table, each with the refusal [`StateMachine::check`]
/// gives, after checking that `check` allows exactly the table's pairs and names the
/// machine and both states in each refusal. The one exhaustive check each machine's tests
/// run over its `ALL` (panics where `check` and `successors` disagree).
pub fn refusals<S: StateMachine>(all: &[S]) -> Vec<TransitionError<S>> {
    let mut refused = Vec::new();
    for &from in all {
        for &to in all {
            let allowed = from.successors().contains(&to);
            match from.check(to) {
                Ok(()) => assert!(allowed, "{}: {from} -> {to} is not in the table", S::NAME),
                Err(e) => {
                    assert!(!allowed, "{}: {from} -> {to} is in the table", S::NAME);
                    assert_eq!((e.machine, e.from, e.to), (S::NAME, from, to));
                    refused.push(e);
                }
            }
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A traffic light with a maintenance mode.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Light {
        Red,
        Green,
        Amber,
        Off,
    }

    impl Light {
        const ALL: [Light; 4] = [Light::Red, Light::Green, Light::Amber, Light::Off];
    }

    impl fmt::Display for Light {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Debug::fmt(self, f)
        }
    }

    impl StateMachine for Light {
        const NAME: &'static str = "light";
        fn successors(self) -> &'static [Light] {
            use Light::*;
            match self {
                Red => &[Green, Off],
                Green => &[Amber],
                Amber => &[Red],
                Off => &[],
            }
        }
    }

    #[test]
    fn check_follows_the_table_and_names_the_refusal() {
        let refused = refusals(&Light::ALL);
        // 16 pairs, 4 of them allowed.
        assert_eq!(refused.len(), 16 - 4);
        for e in &refused {
            assert!(!e.from.valid_transition(e.to));
            assert_eq!(e.machine, "light");
        }
        assert_eq!(
            Light::Off.check(Light::Red).unwrap_err().to_string(),
            "light: cannot go from Off to Red"
        );
    }
}
