//! The life of one device during `bind`, `unbind` and `restore`, as an explicit state
//! machine (Cloud Hypervisor's `VmState::valid_transition` is the model).
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

    /// Whether `self -> to` is a step the binder may take.
    pub fn valid_transition(self, to: BindState) -> bool {
        use BindState::*;
        matches!(
            (self, to),
            (HostDriver, OverrideWritten)
                | (OverrideWritten, Unbound)
                | (Unbound, Probed)
                | (Probed, OnVfio)
                | (OverrideWritten | Unbound | Probed | OnVfio, RollingBack)
                // restore/unbind of a verified binding goes through RollingBack too;
                // a failed restore can be retried.
                | (Failed, RollingBack)
                | (RollingBack, Restored)
                | (RollingBack, Failed)
        )
    }

    /// `Restored` or `Failed`: no further step.
    pub fn is_terminal(self) -> bool {
        matches!(self, BindState::Restored | BindState::Failed)
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

/// A device's state with its transitions checked. An invalid transition is a bug in the
/// binder, so it panics in debug builds and is logged in release builds.
#[derive(Clone, Debug)]
pub struct Tracker {
    state: BindState,
    history: Vec<BindState>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// A device on its host driver (`HostDriver`), the start of a bind.
    pub fn new() -> Self {
        Self {
            state: BindState::HostDriver,
            history: vec![BindState::HostDriver],
        }
    }
    /// Resume tracking a device known to be in `state` (from the ledger).
    pub fn at(state: BindState) -> Self {
        Self {
            state,
            history: vec![state],
        }
    }
    /// The current state.
    pub fn state(&self) -> BindState {
        self.state
    }
    /// Every state so far, the first one included.
    pub fn history(&self) -> &[BindState] {
        &self.history
    }
    /// Move to `to` and record it (an invalid transition panics in debug builds, is logged in release).
    pub fn go(&mut self, to: BindState) {
        let ok = self.state.valid_transition(to);
        debug_assert!(ok, "invalid bind transition {} -> {}", self.state, to);
        if !ok {
            tracing::error!("invalid bind transition {} -> {}", self.state, to);
        }
        self.state = to;
        self.history.push(to);
    }
}

#[cfg(test)]
mod tests {
    use super::BindState::{self, *};

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
    fn tracker_records_history() {
        let mut t = super::Tracker::new();
        for s in [
            OverrideWritten,
            Unbound,
            Probed,
            OnVfio,
            RollingBack,
            Restored,
        ] {
            t.go(s);
        }
        assert_eq!(t.history().len(), 7);
        assert!(t.state().is_terminal());
        assert_eq!(OnVfio.to_string(), "on-vfio");
    }
}
