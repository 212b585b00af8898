//! Exit codes a nightly job can branch on, and the error type the command line prints.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success: everything checked passed (warnings allowed) |
//! | 1 | a check failed (`check`: a host or device check has status `fail`) |
//! | 2 | usage or input error (bad selector, BDF, flag, profile, missing file) |
//! | 3 | validation failed (the guest reports the device or driver is not right) |
//! | 4 | boot timeout: the guest (agent) did not become ready in time |
//! | 5 | regression: a scenario that passed before fails now |
//! | 6 | refused: a safety rule stopped an operation (device in use, boot VGA, ...) |
//! | 7 | operation failed and was rolled back (bind, plug, unplug) |
//! | 8 | infrastructure error (QEMU missing or crashed, I/O error, tool not installed) |
//! | 130 | interrupted by SIGINT (Ctrl-C): what the command started was torn down |
//! | 143 | terminated by SIGTERM: what the command started was torn down |

#![warn(missing_docs)]

use std::fmt;

/// A documented process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Exit {
    /// 0: success; everything checked passed (warnings allowed).
    Ok = 0,
    /// 1: a check failed (`check`: a host or device check has status `fail`).
    CheckFailed = 1,
    /// 2: usage or input error (bad selector, BDF, flag, profile, missing file).
    Usage = 2,
    /// 3: validation failed (the guest reports the device or driver is not right).
    ValidationFailed = 3,
    /// 4: boot timeout; the guest (agent) did not become ready in time.
    BootTimeout = 4,
    /// 5: regression; a scenario that passed before fails now.
    Regression = 5,
    /// 6: refused; a safety rule stopped an operation (device in use, boot VGA, ...).
    Refused = 6,
    /// 7: the operation failed and was rolled back (bind, plug, unplug).
    OperationFailed = 7,
    /// 8: infrastructure error (QEMU missing or crashed, I/O error, tool not installed).
    Infrastructure = 8,
    /// SIGINT: 128 + 2, what a shell reports for a process killed by it.
    Interrupted = 130,
    /// SIGTERM: 128 + 15.
    Terminated = 143,
}

impl Exit {
    /// The numeric process exit status (the table in this module's docs).
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

/// Library errors say what exit code they map to and, where the fix is known, a hint.
pub trait Diagnose: std::error::Error {
    /// A one-line fix ("add intel_iommu=on to the kernel command line").
    fn hint(&self) -> Option<String> {
        None
    }
    /// The exit code this error maps to; [`Exit::Infrastructure`] unless overridden.
    fn exit(&self) -> Exit {
        Exit::Infrastructure
    }
}

/// What a command returns when it fails: the error chain, a hint and the exit code.
pub struct Failure {
    /// The error; its `source()` chain is printed after it (see [`Failure::chain`]).
    pub error: Box<dyn std::error::Error + Send + Sync + 'static>,
    /// A one-line fix printed after the error, when one is known.
    pub hint: Option<String>,
    /// The process exit code the command ends with.
    pub exit: Exit,
}

impl Failure {
    /// A failure with this exit code and error, without a hint.
    pub fn new(exit: Exit, error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            error: error.into(),
            hint: None,
            exit,
        }
    }
    /// A usage or input error ([`Exit::Usage`]) with this message.
    pub fn usage(msg: impl fmt::Display) -> Self {
        Self::new(Exit::Usage, msg.to_string())
    }
    /// The same failure with `hint` as its one-line fix (replacing any earlier one).
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The error and its causes, outermost first. Every cause is kept: errors do not
    /// repeat their `#[source]` in their message (Cloud Hypervisor's rule), so nothing
    /// here is said twice, and no real cause is dropped for looking like another.
    pub fn chain(&self) -> Vec<String> {
        let mut out = vec![self.error.to_string()];
        let mut cur = self.error.source();
        while let Some(e) = cur {
            out.push(e.to_string());
            cur = e.source();
        }
        out
    }
}

impl<E: Diagnose + Send + Sync + 'static> From<E> for Failure {
    fn from(e: E) -> Self {
        let hint = e.hint();
        let exit = e.exit();
        Self {
            error: Box::new(e),
            hint,
            exit,
        }
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.chain().join(": "))
    }
}

impl Diagnose for vfioctl_common::PciError {
    fn exit(&self) -> Exit {
        match self {
            vfioctl_common::PciError::NotFound { .. } => Exit::Usage,
            _ => Exit::Infrastructure,
        }
    }
}

impl Diagnose for vfioctl_common::bdf::SelectorError {
    fn exit(&self) -> Exit {
        Exit::Usage
    }
}

impl Diagnose for vfioctl_common::BdfError {
    fn exit(&self) -> Exit {
        Exit::Usage
    }
}

impl Diagnose for vfioctl_common::SysError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message that names the device and a cause whose text happens to appear in it.
    #[derive(Debug, thiserror::Error)]
    #[error("0000:01:00.0: vfio-pci refused the device")]
    struct Refusal {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn every_cause_is_kept_even_when_an_outer_message_contains_its_text() {
        let f = Failure::new(
            Exit::OperationFailed,
            Refusal {
                source: std::io::Error::other("refused"),
            },
        );
        assert_eq!(
            f.chain(),
            vec!["0000:01:00.0: vfio-pci refused the device", "refused"]
        );
    }
}
