//! Host snapshots: `vfioctl snapshot` captures exactly what vfioctl's commands read from a
//! host into a small tree (or `.tar.zst`) that `--root` replays.
//!
//! How: each command (`devices`, `check`, `bind --dry-run`, `vm plan`, `kata config`; see
//! [`run::plan`]) runs as its own process with its [`SysRoot`](vfioctl_common::SysRoot)
//! logging every path it touches ([`record`]); [`tree`] rebuilds those paths as Linux lays
//! them out (directories, relative sysfs links, file contents as read, names only for
//! listings and device nodes), [`redact`] removes identifiers, and MANIFEST says for each
//! entry which command used it and how. The snapshot then replays every command against
//! itself ([`replay`]) and reports whether each printed exactly what it printed live.
//!
//! Layout of a snapshot: `sys/`, `proc/`, `dev/`, `lib/modules/`, `usr/share/` (pci.ids),
//! whatever else was read, plus `MANIFEST` and `SNAPSHOT.json` (format, vfioctl version,
//! kernel, and every command with its exit status and output).

#![warn(missing_docs)]

pub mod archive;
mod error;
pub mod record;
pub mod redact;
pub mod replay;
pub mod run;
mod take;
pub mod tree;

pub use error::SnapshotError;
pub use record::FileLog;
pub use replay::{open, replay, Meta, Opened, Replayed};
pub use run::Recorded;
pub use take::{take, Options, Report};
