//! The life of one device during `bind`, `unbind` and `restore`, as an explicit state
//! machine ([`StateMachine`]; Cloud Hypervisor's `VmState::valid_transition` is the
//! model).
//!
//! ```text
//! HostDriver --override--> OverrideWritten --unbind--> Unbound --probe--> Probed --verify--> OnVfio
//!                                                                                              |
//!                                                                               unbind/restore |
//!                                                                                              v
//!     OverrideWritten | Unbound | Probed | OnVfio --failure--> RollingBack --ok--> Restored
//!                                                                  \--error--> Failed
//! ```
//!
//! A device that starts driverless still passes through `Unbound` (there is nothing to
//! write there). `Restored` and `Failed` are terminal: `Failed` means the device is in a
//! state vfioctl could not undo, and the ledger entry stays for `vfioctl restore`.

use serde::{Deserialize, Serialize};
use vfioctl_common::{Bdf, StateMachine};

use super::error::BindError;

/// Where one device is in a bind, unbind or restore (the ledger records it as kebab-case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BindState {
    /// On its original (host) driver, or driverless, with its original override.
    HostDriver,
    /// `driver_override` names the target driver; still on the host driver.
    OverrideWritten,
    /// No driver bound (the unbind write returned).
    Unbound,
    /// `drivers_probe` (or `drivers/<drv>/bind`) was written; not yet verified.
    Probed,
    /// Verified: the `driver` link names the target vfio driver.
    OnVfio,
    /// Putting back the original override and driver.
    RollingBack,
    /// Back on the original driver with the original override (verified).
    Restored,
    /// A rollback or restore step failed; the ledger keeps the entry.
    Failed,
}

impl BindState {
    /// Every state, in diagram order.
    pub const ALL: [BindState; 8] = [
        BindState::HostDriver,
        BindState::OverrideWritten,
        BindState::Unbound,
        BindState::Probed,
        BindState::OnVfio,
        BindState::RollingBack,
        BindState::Restored,
        BindState::Failed,
    ];

    /// `Restored` or `Failed`: no further step.
    pub fn is_terminal(self) -> bool {
        matches!(self, BindState::Restored | BindState::Failed)
    }
}

/// The steps the binder may take; anything else is a bug and is refused.
impl StateMachine for BindState {
    const NAME: &'static str = "device binding";

    /// Where each state may go: an exhaustive match, so a new state does not compile until
    /// its transitions are decided.
    fn successors(self) -> &'static [BindState] {
        use BindState::*;
        match self {
            HostDriver => &[OverrideWritten],
            OverrideWritten => &[Unbound, RollingBack],
            Unbound => &[Probed, RollingBack],
            Probed => &[OnVfio, RollingBack],
            // restore/unbind of a verified binding goes through RollingBack too.
            OnVfio => &[RollingBack],
            RollingBack => &[Restored, Failed],
            Restored => &[],
            // A failed restore can be retried.
            Failed => &[RollingBack],
        }
    }
}

impl std::fmt::Display for BindState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// One device's state with its transitions checked. A transition the table does not
/// allow is a bug in the binder: [`Tracker::go`] refuses it ([`BindError::Transition`],
/// naming the device) and the state stays where it was.
#[derive(Clone, Debug)]
pub struct Tracker {
    bdf: Bdf,
    state: BindState,
    history: Vec<BindState>,
}

impl Tracker {
    /// `bdf` on its host driver (`HostDriver`), the start of a bind.
    pub fn new(bdf: Bdf) -> Self {
        Self::at(bdf, BindState::HostDriver)
    }
    /// Resume tracking `bdf`, known to be in `state` (from the ledger).
    pub fn at(bdf: Bdf, state: BindState) -> Self {
        Self {
            bdf,
            state,
            history: vec![state],
        }
    }
    /// The device tracked.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }
    /// The current state.
    pub fn state(&self) -> BindState {
        self.state
    }
    /// Every state so far, the first one included.
    pub fn history(&self) -> &[BindState] {
        &self.history
    }
    /// Move to `to` and record it, if the table allows it; a refusal changes nothing.
    pub fn go(&mut self, to: BindState) -> Result<(), BindError> {
        self.state
            .check(to)
            .map_err(|refused| BindError::Transition {
                bdf: self.bdf,
                refused,
            })?;
        self.state = to;
        self.history.push(to);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vfioctl_common::state_machine::refusals;
    use vfioctl_common::{Bdf, StateMachine};

    use super::super::error::BindError;
    use super::BindState::{self, *};
    use super::Tracker;

    fn bdf() -> Bdf {
        "0000:41:00.0".parse().unwrap()
    }

    /// Every pair, spelled out: the allowed ones are exactly this list.
    #[test]
    fn every_transition_pair() {
        let allowed = [
            (HostDriver, OverrideWritten),
            (OverrideWritten, Unbound),
            (Unbound, Probed),
            (Probed, OnVfio),
            (OverrideWritten, RollingBack),
            (Unbound, RollingBack),
            (Probed, RollingBack),
            (OnVfio, RollingBack),
            (Failed, RollingBack),
            (RollingBack, Restored),
            (RollingBack, Failed),
        ];
        let mut checked = 0;
        for from in BindState::ALL {
            for to in BindState::ALL {
                let want = allowed.contains(&(from, to));
                assert_eq!(
                    from.valid_transition(to),
                    want,
                    "{from} -> {to} should be {}",
                    if want { "allowed" } else { "refused" }
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 64);
    }

    #[test]
    fn terminal_states_have_no_way_out_but_retry() {
        for to in BindState::ALL {
            assert!(!Restored.valid_transition(to));
        }
        assert!(Failed.valid_transition(RollingBack));
    }

    #[test]
    fn every_pair_outside_the_table_is_refused() {
        let refused = refusals(&BindState::ALL);
        // 64 pairs, 11 of them allowed.
        assert_eq!(refused.len(), 64 - 11);
        for e in refused {
            // The tracker refuses it the same way, naming the device, and stays put.
            let mut t = Tracker::at(bdf(), e.from);
            match t.go(e.to) {
                Err(BindError::Transition { bdf: b, refused }) => {
                    assert_eq!((b, refused), (bdf(), e));
                }
                other => panic!("{} -> {}: {other:?}", e.from, e.to),
            }
            assert_eq!((t.state(), t.history()), (e.from, &[e.from][..]));
        }
        assert_eq!(
            Tracker::new(bdf()).go(OnVfio).unwrap_err().to_string(),
            "0000:41:00.0: device binding: cannot go from host-driver to on-vfio"
        );
    }

    #[test]
    fn tracker_records_history() {
        let mut t = Tracker::new(bdf());
        for s in [
            OverrideWritten,
            Unbound,
            Probed,
            OnVfio,
            RollingBack,
            Restored,
        ] {
            t.go(s).unwrap();
        }
        assert_eq!(t.history().len(), 7);
        assert!(t.state().is_terminal());
        assert_eq!(t.bdf(), bdf());
        assert_eq!(OnVfio.to_string(), "on-vfio");
    }
}
