//! What every command gets: where the host is (`--root`) and how to print.

#![warn(missing_docs)]

use std::path::PathBuf;

use vfioctl_common::SysRoot;

/// Per-invocation settings shared by every command.
#[derive(Clone, Debug)]
pub struct Context {
    /// Root under which `/sys`, `/proc`, `/dev`, `/etc`, `/lib/modules` and `/var/lib`
    /// are read and written (`--root`, `VFIOCTL_ROOT`; `/` on a real host).
    pub root: SysRoot,
    /// Print machine-readable JSON instead of tables (`--json`).
    pub json: bool,
    /// `-q`: nothing on stderr but errors (no progress, notes or warnings).
    pub quiet: bool,
}

impl Context {
    /// A context over `root`, printing JSON when `json` is set.
    pub fn new(root: SysRoot, json: bool) -> Self {
        Self {
            root,
            json,
            quiet: false,
        }
    }

    /// Whether progress and notes may go to stderr: not with `-q`, and only for a person
    /// at a terminal (`show_progress`).
    pub fn notes(&self) -> bool {
        !self.quiet
    }

    /// vfioctl's persistent state (the bind ledger), `/var/lib/vfioctl` under the root.
    pub fn state_dir(&self) -> PathBuf {
        self.root.path("/var/lib/vfioctl")
    }
}
